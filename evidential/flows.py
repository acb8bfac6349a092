r"""
# Radial normalising flows

A **radial transform** (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015, Sec. A.2)
contracts or expands space around a reference point $\mathbf{z}_0$:
$$f(\mathbf{z}) = \mathbf{z} + \beta h(\alpha, r) (\mathbf{z} - \mathbf{z}_0), \qquad
  r = \lVert \mathbf{z} - \mathbf{z}_0 \rVert, \qquad h(\alpha, r) = \frac{1}{\alpha + r}.$$
Its Jacobian is $J = (1 + \beta h) I + \beta h'(r)\, \frac{(\mathbf{z} - \mathbf{z}_0)(\mathbf{z} - \mathbf{z}_0)^\top}{r}$
with $h' = -h^2$: a scaling by $1 + \beta h$ in the $D - 1$ directions orthogonal to $\mathbf{z} - \mathbf{z}_0$ and by
$1 + \beta h + \beta h' r$ along it, so
$$\log |\det J| = (D - 1) \log(1 + \beta h) + \log(1 + \beta h + \beta h' r).$$
$f$ is a bijection of $\mathbb{R}^D$ when $\alpha > 0$ and $\beta \ge -\alpha$; the parameters are
$\alpha = \text{softplus}(\alpha')$ and $\beta = -\alpha + \text{softplus}(\beta')$, which guarantee it.

A **flow** of $L$ transforms $f = f_L \circ \dots \circ f_1$ maps a latent $\mathbf{z}$ onto a standard normal; by
the change of variables its density is
$$\log p(\mathbf{z}) = \log \mathcal{N}(f(\mathbf{z}); \mathbf{0}, I) + \sum_{l=1}^L \log |\det J_{f_l}(\mathbf{z}_{l-1})|.$$
This is the direction of the Natural Posterior Network's code (`natpn/nn/flow/_base.py`, `transforms/radial.py`):
the flow is only ever evaluated on latents, never sampled, so no inverse is needed. Parameterisation and
initialisation ($\mathcal{U}(-1/\sqrt{D}, 1/\sqrt{D})$ for every parameter) are that code's, and Pyro's
`pyro.distributions.transforms.Radial` computes the same map.

Written here rather than taken from a library: zuko 1.6.0 has no radial (nor planar) transform, and Pyro's `Radial`
is one flow per module — the Posterior Network's one flow per class would be $K \cdot L$ modules called one after
the other each step, and pyro-ppl (a test-only dependency) would become a runtime one for a dozen lines. Here one
`RadialFlow` holds $F$ independent flows and evaluates all of them in one batched tensor operation per layer;
`tests/test_natpn.py` checks it against Pyro's `Radial` and its log-determinant against `torch.func.jacrev`.
"""
import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def radial_transform(z: torch.Tensor, reference: torch.Tensor, alpha_prime: torch.Tensor,
                     beta_prime: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    One radial transform of each of $F$ flows: `z` `[..., F, D]`, `reference` $\mathbf{z}_0$ `[F, D]`, $\alpha'$ and
    $\beta'$ `[F]` → $f(\mathbf{z})$ `[..., F, D]` and $\log |\det J_f(\mathbf{z})|$ `[..., F]`.
    """
    dim = z.shape[-1]
    # $\alpha = \text{softplus}(\alpha') > 0$, `[F, 1]`
    alpha = F.softplus(alpha_prime)[:, None]
    # $\beta = -\alpha + \text{softplus}(\beta') \ge -\alpha$: the transform stays invertible
    beta = -alpha + F.softplus(beta_prime)[:, None]
    # $\mathbf{z} - \mathbf{z}_0$ and $r = \lVert \mathbf{z} - \mathbf{z}_0 \rVert$
    diff = z - reference
    r = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
    # $h = 1 / (\alpha + r)$
    h = (alpha + r).reciprocal()
    beta_h = beta * h
    # $f(\mathbf{z}) = \mathbf{z} + \beta h (\mathbf{z} - \mathbf{z}_0)$
    y = z + beta_h * diff
    # $\log|\det J| = (D - 1) \log(1 + \beta h) + \log(1 + \beta h + \beta h' r)$, $h' = -h^2$
    log_det = (dim - 1) * torch.log1p(beta_h) + torch.log1p(beta_h - beta * h ** 2 * r)
    return y, log_det.squeeze(-1)


class RadialFlow(nn.Module):
    r"""
    $F$ independent flows of `n_layers` radial transforms on $\mathbb{R}^D$, each onto a standard normal:
    `log_prob(z)` gives $\log p_f(\mathbf{z})$ of every flow $f$ for latents `[N, D]` → `[N, F]`.
    """

    def __init__(self, dim: int, n_layers: int = 8, n_flows: int = 1):
        super().__init__()
        if dim < 1 or n_layers < 0 or n_flows < 1:
            raise ValueError(f"a radial flow needs dim >= 1, n_layers >= 0 and n_flows >= 1, "
                             f"got {dim}, {n_layers} and {n_flows}")
        self.dim = dim
        # $\mathbf{z}_0$, $\alpha'$, $\beta'$ of layer $l$ of flow $f$ at `[l, f]`
        self.reference = nn.Parameter(torch.empty(n_layers, n_flows, dim))
        self.alpha_prime = nn.Parameter(torch.empty(n_layers, n_flows))
        self.beta_prime = nn.Parameter(torch.empty(n_layers, n_flows))
        self.reset_parameters()

    @property
    def n_layers(self) -> int:
        return self.reference.shape[0]

    @property
    def n_flows(self) -> int:
        return self.reference.shape[1]

    def reset_parameters(self):
        # $\mathcal{U}(-1/\sqrt{D}, 1/\sqrt{D})$, as NatPN's `RadialTransform.reset_parameters`
        bound = 1 / math.sqrt(self.dim)
        for p in (self.reference, self.alpha_prime, self.beta_prime):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""Latents `[N, D]` → $f(\mathbf{z})$ of every flow `[N, F, D]` and $\sum_l \log|\det J_{f_l}|$ `[N, F]`."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"latents must have shape [N, {self.dim}], got {tuple(z.shape)}")
        z = z.unsqueeze(-2).expand(*z.shape[:-1], self.n_flows, self.dim)
        log_det = z.new_zeros(z.shape[:-1])
        for layer in range(self.n_layers):
            z, ld = radial_transform(z, self.reference[layer], self.alpha_prime[layer], self.beta_prime[layer])
            log_det = log_det + ld
        return z, log_det

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r"""$\log p_f(\mathbf{z}) = \log \mathcal{N}(f(\mathbf{z}); \mathbf{0}, I) + \sum_l \log|\det J_{f_l}|$, `[N, F]`."""
        y, log_det = self(z)
        # $\log \mathcal{N}(\mathbf{y}; \mathbf{0}, I) = -\frac{1}{2}(D \log 2\pi + \lVert \mathbf{y} \rVert^2)$
        base = -0.5 * (self.dim * math.log(2 * math.pi) + (y ** 2).sum(-1))
        return base + log_det
