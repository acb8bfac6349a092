r"""
# The Gaussian-process output layer of SNGP

Liu, Lin, Padhy, Tran, Bedrax-Weiss & Lakshminarayanan, "Simple and Principled Uncertainty Estimation with
Deterministic Deep Learning via Distance Awareness", NeurIPS 2020 (SNGP). A spectrally normalised body maps an
image to features $h$ (smooth and sensitive: `evidential.models.ddu`), and the dense output layer is replaced by
a Gaussian process with an RBF kernel over $h$, made finite by random Fourier features (Rahimi & Recht, 2007):

$$\Phi(h) = \sqrt{2 / D}\, \cos(W h + b), \quad W_{jl} \sim \mathcal{N}(0, 1 / \ell^2), \quad b_j \sim U(0, 2\pi),$$

$W$ and $b$ drawn once and fixed, so that $\mathbb{E}_{W, b}[\Phi(h)^\top \Phi(h')] = \exp(-\|h - h'\|^2 / (2\ell^2))$
(`RandomFourierFeatures`; the error of one draw shrinks as $1 / \sqrt{D}$). Optionally $h$ is layer-normalised
first (the reference code's `normalize_input`; its learned scale per dimension acts as a length-scale per
dimension). The GP is then a Bayesian linear model, logits $g_k(x) = \Phi(h)^\top \beta_k$ with prior
$\beta_k \sim \mathcal{N}(0, I)$:

* **training** finds the MAP $\hat\beta$ together with the body: cross-entropy plus the prior's ridge penalty
  $\frac{1}{2}\|\beta\|^2$ (the paper's Eq. 8; per image, $\|\beta\|^2 / (2N)$);
* **the Laplace approximation** of the posterior of $\beta$ has precision (Eq. 9)

  $$\hat\Sigma^{-1} = I + \sum_i w_i\, \Phi_i \Phi_i^\top, \qquad w_i = \hat p_i (1 - \hat p_i),$$

  accumulated over the training images of one pass over the data with the final weights (the paper's
  momentum-free update: reset at the start of the pass; `LaplacePrecision`). The paper gives one precision per
  class, $w_{ik} = \hat p_{ik}(1 - \hat p_{ik})$; here one covariance is shared by the $K$ classes, as in the
  reference code (edward2's `LaplaceRandomFeatureCovariance`) and TensorFlow's SNGP tutorial, with $\hat p_i$ the
  probability of the predicted class: for $K = 2$ every class's block is that one, and Eq. 9 is exact.
  `likelihood='gaussian'` is the reference code's default for multi-class outputs, $w_i = 1$, with a ridge
  $s$: $\hat\Sigma = s\,(s I + \sum_i \Phi_i \Phi_i^\top)^{-1}$, the posterior of $\beta$ under a Gaussian
  likelihood of variance $s$ (`ridge`; $s = 1$ is Eq. 9 with $w_i = 1$);
* **prediction**: the GP's predictive variance $\sigma^2(x) = \Phi(x)^\top \hat\Sigma\, \Phi(x)$ (near its prior
  value $\|\Phi(x)\|^2 \approx 1$ far from the training features, small near them: distance awareness), and the
  mean-field approximation of $\mathbb{E}[\text{softmax}(g)]$ for $g \sim \mathcal{N}(\hat g, \sigma^2 I)$
  (the paper's Sec. 3.2, after Lu et al. 2020, arXiv:2006.07584; $\lambda = \pi / 8$ is the probit
  approximation's):

  $$\hat p(y \mid x) = \text{softmax}\Big(\frac{\hat g(x)}{\sqrt{1 + \lambda \sigma^2(x)}}\Big), \quad \lambda = \pi / 8.$$

Written here rather than imported: the maintained implementations are TensorFlow's (edward2 and
uncertainty-baselines); in PyTorch, Lightning-UQ-Box's `SNGPClassification` is a LightningModule (it needs
`lightning`, `timm`, `kornia` and `huggingface_hub` beside torch, and resets and inverts the precision every epoch,
through its own spectral normalisation), the `SNGP` package on PyPI draws its Fourier features without the
$\sqrt{2/D}$ scale and spectrally normalises them, and gpytorch's `RFFKernel` is a kernel for exact GPs (cosine and
sine features, no Laplace posterior). What remains is a few lines of linear algebra, checked against the exact RBF
kernel, a direct computation of the precision, and `torch.linalg.inv` (`tests/test_sngp.py`).
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

#: $\lambda$ of the mean-field approximation: the probit approximation's $\pi / 8$ (the paper's Sec. 3.2)
MEAN_FIELD_FACTOR = math.pi / 8
#: The weights $w_i$ of the precision: `laplace` $\hat p_i (1 - \hat p_i)$ (Eq. 9), `gaussian` 1 (the reference code)
LIKELIHOODS = ('laplace', 'gaussian')


class CovarianceError(ValueError):
    """The accumulated precision cannot be inverted (not finite, or not positive definite), or holds no image."""


class RandomFourierFeatures(nn.Module):
    r"""$\Phi(h) = \sqrt{2/D} \cos(W h + b)$, $W$ `[D, d]` with entries $\mathcal{N}(0, 1/\ell^2)$, $b$ `[D]` uniform
    on $[0, 2\pi)$, drawn once from `generator` and kept as buffers (saved with the weights, never trained)."""

    def __init__(self, in_features: int, n_features: int = 1024, lengthscale: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if n_features < 1 or in_features < 1:
            raise ValueError(f"need at least one input and one random feature, got {in_features} and {n_features}")
        if not lengthscale > 0:
            raise ValueError(f"the length-scale must be > 0, got {lengthscale}")
        self.n_features, self.lengthscale = n_features, float(lengthscale)
        # $W_{jl} \sim \mathcal{N}(0, 1/\ell^2)$: the spectral density of the RBF kernel with length-scale $\ell$
        self.register_buffer('weight', torch.randn(n_features, in_features, generator=generator) / lengthscale)
        # $b_j \sim U(0, 2\pi)$
        self.register_buffer('bias', torch.rand(n_features, generator=generator) * (2 * math.pi))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # $\Phi(h) = \sqrt{2/D} \cos(W h + b)$
        return math.sqrt(2.0 / self.n_features) * torch.cos(F.linear(h, self.weight, self.bias))


class RandomFeatureGP(nn.Module):
    r"""The GP output layer: $h$ `[N, d]` → (layer norm) → $\Phi$ `[N, D]` → logits $\Phi^\top \beta$ `[N, K]` (no
    bias: the GP's prior mean is 0)."""

    def __init__(self, in_features: int, n_classes: int, n_features: int = 1024, lengthscale: float = 1.0,
                 layer_norm: bool = True, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.norm = nn.LayerNorm(in_features) if layer_norm else nn.Identity()
        self.features = RandomFourierFeatures(in_features, n_features, lengthscale, generator)
        self.beta = nn.Linear(n_features, n_classes, bias=False)

    def random_features(self, h: torch.Tensor) -> torch.Tensor:
        """$\\Phi(h)$ `[N, D]`."""
        return self.features(self.norm(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.beta(self.random_features(h))

    def ridge_penalty(self) -> torch.Tensor:
        r"""$\frac{1}{2}\|\beta\|^2$: $-\log$ of the prior $\mathcal{N}(0, I)$ of $\beta$, up to a constant."""
        return 0.5 * self.beta.weight.square().sum()


def laplace_weights(logits: torch.Tensor, likelihood: str = 'laplace') -> torch.Tensor:
    r"""$w_i$ `[N]` of each image's term $w_i \Phi_i \Phi_i^\top$ in the precision, from its logits `[N, K]`:
    $\hat p_i (1 - \hat p_i)$ with $\hat p_i = \max_k \text{softmax}(g_i)_k$ (`laplace`), or 1 (`gaussian`)."""
    if likelihood == 'gaussian':
        return torch.ones(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
    if likelihood != 'laplace':
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    p = logits.softmax(-1).amax(-1)
    # $w_i = \hat p_i (1 - \hat p_i)$
    return p * (1 - p)


class LaplacePrecision:
    r"""$\hat\Sigma^{-1} = s I + \sum_i w_i \Phi_i \Phi_i^\top$, accumulated batch by batch in float64 (module doc);
    `covariance()` inverts it once."""

    def __init__(self, n_features: int, ridge: float = 1.0, likelihood: str = 'laplace',
                 device: Optional[torch.device] = None):
        if not ridge > 0:
            raise ValueError(f"the ridge must be > 0, got {ridge}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        self.ridge, self.likelihood = float(ridge), likelihood
        # $s I$: the prior's precision (times the likelihood's variance $s$)
        self.matrix = torch.eye(n_features, dtype=torch.float64, device=device) * self.ridge
        self.n_images = 0

    @torch.no_grad()
    def add(self, phi: torch.Tensor, logits: torch.Tensor) -> None:
        """Adds the images of one batch: their random features `[N, D]` and logits `[N, K]` (not differentiated)."""
        w = laplace_weights(logits.detach().double(), self.likelihood)
        phi = phi.detach().double()
        # $\hat\Sigma^{-1} \leftarrow \hat\Sigma^{-1} + \Phi^\top \operatorname{diag}(w) \Phi$
        self.matrix.addmm_(phi.T, phi * w[:, None])
        self.n_images += len(phi)

    def covariance(self) -> torch.Tensor:
        r"""$\hat\Sigma = s\, (\hat\Sigma^{-1})^{-1}$ `[D, D]` float64, by a Cholesky factorisation; `CovarianceError`
        where no image was added or the precision is not finite or not positive definite."""
        if self.n_images == 0:
            raise CovarianceError("the precision holds no training image")
        if not bool(torch.isfinite(self.matrix).all()):
            raise CovarianceError("the precision has non-finite entries")
        factor, info = torch.linalg.cholesky_ex(self.matrix)
        if int(info) != 0:
            raise CovarianceError(f"the precision is not positive definite (leading minor {int(info)})")
        # $s\,(L L^\top)^{-1}$
        return torch.cholesky_inverse(factor) * self.ridge


def predictive_variance(phi: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    r"""$\sigma^2(x) = \Phi(x)^\top \hat\Sigma\, \Phi(x)$ for random features `[N, D]` → `[N]`, in the covariance's
    dtype."""
    phi = phi.to(covariance.dtype)
    # $\sum_{jl} \Phi_j \hat\Sigma_{jl} \Phi_l$, row by row
    return ((phi @ covariance) * phi).sum(-1)


def mean_field_logits(logits: torch.Tensor, variance: torch.Tensor,
                      factor: float = MEAN_FIELD_FACTOR) -> torch.Tensor:
    r"""$\hat g / \sqrt{1 + \lambda \sigma^2}$ for logits `[N, K]` and variances `[N]`; $\lambda = 0$ gives the
    logits of the MAP."""
    # $\hat g(x) / \sqrt{1 + \lambda \sigma^2(x)}$
    return logits / torch.sqrt(1 + factor * variance)[..., None]
