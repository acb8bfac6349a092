r"""
# Natural Posterior Network: evidence from a density

Charpentier, Borchert, Zügner, Geisler & Günnemann, "Natural Posterior Network", ICLR 2022 (NatPN), and its code
([borchero/natural-posterior-network](https://github.com/borchero/natural-posterior-network)). An encoder maps an
input to a latent $\mathbf{z} \in \mathbb{R}^H$, a normalising flow gives its density, and the density *is* the
evidence: a latent where the training data was dense gets many pseudo-counts, one far from it gets none, so the
Dirichlet falls back to its prior Dir(1) — "I don't know" — far from the data without ever seeing outliers.

**Evidence.** With a flow per class (`density='class'`, the Posterior Network's form, Charpentier et al.,
NeurIPS 2020), each class's pseudo-count is its share of the training set times the class-conditional density,
scaled by NatPN's certainty budget $N_H$:
$$n_c = N_H \cdot N P(c) \cdot p(\mathbf{z} \mid c), \qquad \alpha_c = \alpha^\text{prior} + n_c, \quad \alpha^\text{prior} = 1.$$
With one flow (`density='shared'`, NatPN's own form) a linear layer predicts the class probabilities
$\boldsymbol\chi = \text{softmax}(W\mathbf{z} + \mathbf{b})$ and one density spreads over them,
$n_c = N_H \cdot p(\mathbf{z}) \cdot \chi_c$ (NatPN's `DirichletPrior.update`, $\alpha^\text{prior} = 1$ per class).
In both forms the total evidence is a density, $\sum_c n_c = N_H\, N\, p(\mathbf{z})$ (class) or $N_H\, p(\mathbf{z})$
(shared), so $u = K / S$ ranks inputs exactly as $p(\mathbf{z})$ does.

**Certainty budget** $N_H$ (`natpn/nn/scaler.py`): a density in $H$ dimensions is tiny or huge depending on $H$
(a standard normal's peak is $(2\pi)^{-H/2}$), so it is rescaled; `normal`, the paper's default,
$N_H = e^{\frac{1}{2} H \log 4\pi}$, gives a standard normal the same evidence at its mode in every dimension;
`exp-half` $e^{H/2}$, `exp` $e^H$, `constant` 1.

**Clamp.** NatPN clamps $\log n$ to $[-30, 30]$ in the forward pass and lets the gradient through unchanged
(`natpn/utils/clamp.py`): $e^{30} \approx 10^{13}$ pseudo-counts keep every Dirichlet quantity finite in float32.
Here the *total* $\log \sum_c n_c$ is clamped and the class shares $n_c / \sum_j n_j$ are kept, which is NatPN's
clamp for the shared form, and for the class form keeps $\hat{\mathbf{p}}$ where clamping each $n_c$ at $e^{30}$
would tie the classes that reach it.

**Loss** (NatPN's `BayesianLoss`): the expected cross-entropy under the posterior, minus a small bonus on its
entropy, which keeps the Dirichlet from sharpening where the data does not ask for it:
$$\mathcal{L} = \mathbb{E}_{\mathbf{p} \sim \text{Dir}(\boldsymbol\alpha)}[-\log p_y] - \lambda\, \mathbb{H}[\text{Dir}(\boldsymbol\alpha)]
  = \psi(S) - \psi(\alpha_y) - \lambda\, \mathbb{H}[\text{Dir}(\boldsymbol\alpha)],$$
$\lambda = 10^{-5}$ in the paper. The first term is `cross_entropy_bayes_risk` (Sensoy et al.'s Eq. 4).
"""
import math
from typing import Dict

import torch

from .losses import _one_hot, cross_entropy_bayes_risk

#: $\log N_H$ of each certainty budget for a latent of dimension $H$ (`natpn/nn/scaler.py`)
BUDGETS: Dict[str, object] = {
    'normal': lambda dim: 0.5 * math.log(4 * math.pi) * dim,
    'exp-half': lambda dim: 0.5 * dim,
    'exp': lambda dim: float(dim),
    'constant': lambda dim: 0.,
}

#: NatPN's bounds of the log-evidence, $\log n \in [-30, 30]$
LOG_EVIDENCE_BOUND = 30.


def log_certainty_budget(dim: int, budget: str = 'normal') -> float:
    r"""$\log N_H$ for a latent of dimension $H$ = `dim` (`normal`: $\frac{1}{2} H \log 4\pi$)."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown certainty budget {budget!r}; valid: {', '.join(BUDGETS)}")
    if dim < 1:
        raise ValueError(f"the latent dimension must be >= 1, got {dim}")
    return BUDGETS[budget](dim)


def clamp_preserve_gradients(x: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """`x` clamped to `[lower, upper]` in the forward pass, with the identity's gradient (NatPN's
    `clamp_preserve_gradients`): the loss still sees where the unclamped value would go."""
    return x + (x.clamp(min=lower, max=upper) - x).detach()


def total_log_evidence(log_evidence: torch.Tensor) -> torch.Tensor:
    r"""$\log \sum_c n_c$ from $\log n_c$ `[..., K]` → `[...]`, unclamped."""
    return torch.logsumexp(log_evidence, dim=-1)


def evidence_from_log(log_evidence: torch.Tensor, bound: float = LOG_EVIDENCE_BOUND) -> torch.Tensor:
    r"""
    Evidence $n_c$ `[..., K]` from $\log n_c$: the total $\log \sum_c n_c$ clamped to $[-b, b]$ with gradients kept,
    the class shares $\text{softmax}_c(\log n_c)$ unchanged:
    $$n_c = \text{softmax}_c(\log \mathbf{n}) \cdot \exp\big(\text{clamp}(\log \textstyle\sum_j n_j, -b, b)\big).$$
    Finite for any finite input, however large (the shares never exponentiate more than $e^0$).
    """
    total = total_log_evidence(log_evidence)
    # $\exp(\text{clamp}(\log \sum_j n_j))$ times the shares $n_c / \sum_j n_j$
    clamped = clamp_preserve_gradients(total, -bound, bound)
    return log_evidence.softmax(dim=-1) * clamped.exp().unsqueeze(-1)


def dirichlet_entropy(alpha: torch.Tensor) -> torch.Tensor:
    r"""
    $\mathbb{H}[\text{Dir}(\boldsymbol\alpha)] = \log B(\boldsymbol\alpha) + (S - K)\psi(S) - \sum_k (\alpha_k - 1)\psi(\alpha_k)$,
    `[..., K]` → `[...]`, by `torch.distributions.Dirichlet`, in float64: with $S \approx 10^{13}$ its terms are
    $\sim 10^{14}$ and cancel to a few units, which float32 would lose (NatPN's code switches to an asymptotic
    formula above $S = 10^4$ for the same reason). The result has the dtype of `alpha`.
    """
    return torch.distributions.Dirichlet(alpha.double(), validate_args=False).entropy().to(alpha.dtype)


def bayesian_loss(evidence: torch.Tensor, labels: torch.Tensor, entropy_weight: float = 1e-5) -> torch.Tensor:
    r"""
    NatPN's Bayesian loss with $\boldsymbol\alpha = \mathbf{n} + 1$, the mean over the batch of
    $\psi(S) - \psi(\alpha_y) - \lambda\, \mathbb{H}[\text{Dir}(\boldsymbol\alpha)]$ ($\lambda$ = `entropy_weight`),
    computed in float64 (with $S \approx e^{30}$, $\psi(S) - \psi(\alpha_y)$ is a difference of two values ~30 that
    float32 resolves only to ~2e-6); the result has the dtype of `evidence`.
    """
    if entropy_weight < 0:
        raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
    _one_hot(evidence, labels)  # checks the shapes
    e = evidence.double()
    # $\mathbb{E}_{\text{Dir}(\boldsymbol\alpha)}[-\log p_y] = \psi(S) - \psi(\alpha_y)$
    loss = cross_entropy_bayes_risk(e, labels)
    if entropy_weight > 0:
        # $-\lambda\, \mathbb{H}[\text{Dir}(\boldsymbol\alpha)]$
        loss = loss - entropy_weight * dirichlet_entropy(e + 1).mean()
    return loss.to(evidence.dtype)


def flow_nll(log_density: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""
    The flows' maximum-likelihood loss of NatPN's warm-up (`NaturalPosteriorNetworkFlowLightningModule`),
    $-\frac{1}{N}\sum_i \log p(\mathbf{z}_i \mid y_i)$ from $\log p(\mathbf{z} \mid c)$ `[N, K]` (a flow per class),
    or $-\frac{1}{N}\sum_i \log p(\mathbf{z}_i)$ from `[N, 1]` (one flow).
    """
    if log_density.dim() != 2 or labels.shape != log_density.shape[:1]:
        raise ValueError(f"log_density must be [N, F] and labels [N], got {tuple(log_density.shape)} and "
                         f"{tuple(labels.shape)}")
    if log_density.shape[-1] == 1:
        return -log_density.mean()
    return -log_density.gather(1, labels[:, None]).mean()
