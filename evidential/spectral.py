r"""
# Spectral normalisation with a coefficient — the smoothness of Deep Deterministic Uncertainty

DDU (Mukhoti et al., CVPR 2023, Sec. 4) bounds the Lipschitz constant of the feature extractor from above, so that
inputs close together get features close together (*smoothness*), by spectral normalisation with a coefficient
$c$ (the DDU code's `--coeff`, default 3): a layer's weight $W$ is used as

$$\tilde{W} = \frac{W}{\max\big(1,\ \hat\sigma(W) / c\big)},$$

so $\|\tilde{W}\|_2 \le c$, and a weight whose largest singular value $\hat\sigma$ is already at most $c$ is left as
it is ("soft" normalisation: `net/spectral_normalization/spectral_norm_fc.py` of the DDU code, `factor =
max(1, sigma / coeff)`; its convolution version adds $10^{-5}$ to the factor, left out here). PyTorch's
`torch.nn.utils.parametrizations.spectral_norm` always divides by $\hat\sigma$ (the case $c = 1$ with every
weight rescaled, even one whose norm is below 1); `SoftSpectralNorm` is that parametrization with only its last
line changed — it subclasses PyTorch's `_SpectralNorm` (private, but torch is pinned) to keep its power iteration,
its `_u` / `_v` buffers and their state-dict layout rather than rewrite them.

$\hat\sigma = u^\top W v$ comes from power iteration on the weight reshaped to a matrix `[out, in * kh * kw]`
(one step per training forward; none in `eval()` mode, which uses the stored $u, v$); PyTorch starts it with 15
steps.

**What the bound bounds, for a convolution.** The reshaped matrix $W_{\text{mat}}$ `[out, in * kh * kw]`, not
the convolution as a linear map of its input: the DDU code's `spectral_norm_conv` bounds that operator norm itself,
by power iteration through `conv2d` / `conv_transpose2d` on a fixed input size. The two are related: a
convolution is $W_{\text{mat}}$ applied to the unfolded input (im2col), and with stride $s$ each input pixel
appears in at most $\lceil k_h / s \rceil \lceil k_w / s \rceil$ patches, so

$$\|\text{conv}\|_2 \le \sqrt{\lceil k_h / s\rceil \lceil k_w / s\rceil}\ \|W_{\text{mat}}\|_2 \le
  \sqrt{\lceil k_h / s\rceil \lceil k_w / s\rceil}\ c$$

(`lipschitz_bound`): $5c$ for the LeNet's $5 \times 5$ convolutions, exactly $c$ for a $1 \times 1$ one (where the
DDU code, too, uses the matrix bound, "tight for 1x1 convolutions"). `tests/test_ddu.py` checks both.
"""
import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


class SoftSpectralNorm(_SpectralNorm):
    r"""PyTorch's spectral-norm parametrization with a coefficient: $W / \max(1, \hat\sigma / c)$ (module doc)."""

    def __init__(self, weight: torch.Tensor, coeff: float, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12):
        if not coeff > 0:
            raise ValueError(f"the spectral-norm coefficient must be > 0, got {coeff}")
        if weight.ndim < 2:
            raise ValueError(f"spectral normalisation needs a weight matrix, got {weight.ndim} dimension(s)")
        super().__init__(weight, n_power_iterations, dim, eps)
        self.coeff = float(coeff)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        r"""$\hat\sigma = u^\top W_{\text{mat}} v$ from the stored power-iteration vectors (no new step)."""
        return torch.vdot(self._u, torch.mv(self._reshape_weight_to_matrix(weight), self._v))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        weight_mat = self._reshape_weight_to_matrix(weight)
        if self.training:
            self._power_method(weight_mat, self.n_power_iterations)
        # cloned, as PyTorch's: the next forward updates the buffers in place, autograd may still need these
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        # $\hat\sigma = u^\top W v$
        sigma = torch.vdot(u, torch.mv(weight_mat, v))
        # $\tilde{W} = W / \max(1, \hat\sigma / c)$
        return weight / torch.clamp(sigma / self.coeff, min=1.0)


def soft_spectral_norm(module: nn.Module, coeff: float, n_power_iterations: int = 1, name: str = 'weight') -> nn.Module:
    """Registers `SoftSpectralNorm` on `module.<name>` (output dimension 1 for transposed convolutions, else 0, as
    `torch.nn.utils.parametrizations.spectral_norm`) and returns the module."""
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    parametrize.register_parametrization(
        module, name, SoftSpectralNorm(getattr(module, name), coeff, n_power_iterations, dim=1 if transposed else 0))
    return module


def constraint(module: nn.Module, name: str = 'weight') -> SoftSpectralNorm:
    """The `SoftSpectralNorm` of `module.<name>`; `LookupError` where there is none."""
    if parametrize.is_parametrized(module, name):
        for p in getattr(module.parametrizations, name):
            if isinstance(p, SoftSpectralNorm):
                return p
    raise LookupError(f"{type(module).__name__}.{name} has no soft spectral normalisation")


def lipschitz_bound(module: nn.Module, coeff: float) -> float:
    r"""The bound on the operator norm of `module` whose reshaped weight has $\|W_{\text{mat}}\|_2 \le c$: $c$ for a
    linear layer, $c \sqrt{\lceil k_h / s_h\rceil \lceil k_w / s_w\rceil}$ for a 2-d convolution (module doc)."""
    if isinstance(module, nn.Conv2d):
        (kh, kw), (sh, sw) = module.kernel_size, module.stride
        return coeff * math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw))
    if isinstance(module, nn.Linear):
        return coeff
    raise TypeError(f"no Lipschitz bound for {type(module).__name__}")
