r"""
# Gaussian discriminant analysis of features — the density of Deep Deterministic Uncertainty

Mukhoti et al., "Deep Deterministic Uncertainty: A New Simple Baseline" (CVPR 2023), Sec. 4: after a
classifier is trained with cross-entropy, its penultimate features $z = f_\theta(x)$ of the training set are
modelled by one full-covariance Gaussian per class (GDA),

$$q(z \mid y = c) = \mathcal{N}(z;\ \mu_c,\ \Sigma_c), \qquad q(y = c) = \pi_c = \frac{N_c}{N},$$

with $\mu_c$ the class mean and $\Sigma_c = \frac{1}{N_c - 1} \sum_{i: y_i = c} (z_i - \mu_c)(z_i - \mu_c)^\top$
(the DDU code's `centered_cov_torch`). The feature density

$$q(z) = \sum_c q(z \mid y = c)\, \pi_c$$

is the *epistemic* score: low where the features of the training data are not, so
$-\log q(z) = -\operatorname{logsumexp}_c \big(\log q(z \mid c) + \log \pi_c\big)$ is "higher = less certain".
(The DDU code's evaluation ranks by $\operatorname{logsumexp}_c \log q(z \mid c)$, i.e. uniform $\pi_c$; on a
balanced training set the two differ by a constant.)

**Jitter.** With fewer images than feature dimensions in a class, or dead units, $\Sigma_c$ is singular and its
Cholesky factorisation fails. The DDU code (`utils/gmm_utils.py`, `gmm_fit`) then tries
$\Sigma_c + \epsilon I$ for $\epsilon$ in $[0,\ \text{tiny}_{\text{float64}},\ 10^{-308},\ 10^{-307}, \dots, 10^{-1}]$
(`JITTERS`) and keeps the first for which every class's Cholesky succeeds; it adds `jitter * torch.eye(d)`, a
float32 identity, so $\epsilon$ is rounded to float32 and one below $1.4 \cdot 10^{-45}$ adds nothing
(`jitter_matrix` does the same). `find_jitter` returns that same $\epsilon$: it bisects the list instead of
walking it (about 9 factorisations instead of up to 310 — a rank-deficient covariance needs
$\epsilon \approx 10^{-16} \dots 10^{-13}$ times its scale, near the end of the list), which finds the first
success wherever success is monotone in $\epsilon$ — as it is for $\Sigma + \epsilon I$, whose eigenvalues all
grow with $\epsilon$; `tests/test_ddu.py` checks the pick against the DDU code's linear scan.

**Log-density.** With $L_c L_c^\top = \Sigma_c + \epsilon I$ (Cholesky, stored) and $m = L_c^{-1}(z - \mu_c)$,

$$\log \mathcal{N}(z; \mu_c, \Sigma_c + \epsilon I) = -\tfrac12 \|m\|^2 - \sum_j \log (L_c)_{jj} - \tfrac{d}{2}\log 2\pi,$$

in float64 (as the DDU code fits it), checked against `torch.distributions.MultivariateNormal`. Written out rather
than through `MultivariateNormal` so that the fitted state is a handful of tensors a checkpoint loads with
`weights_only=True`, and the triangular solve runs once per batch for all classes.
"""
import math
from dataclasses import dataclass
from typing import Dict, List

import torch

#: The jitters the DDU code tries, in order (`utils/gmm_utils.py`: `[0, tiny] + [10 ** e for e in range(-308, 0)]`)
JITTERS: List[float] = [0.0, torch.finfo(torch.float64).tiny] + [10.0 ** e for e in range(-308, 0)]


class GDAFitError(ValueError):
    """The features cannot be fitted: a class with fewer than two images, non-finite features, or a covariance
    that no jitter of `JITTERS` makes positive definite."""


def centered_covariance(x: torch.Tensor) -> torch.Tensor:
    r"""$\frac{1}{n - 1} x^\top x$ of centred rows `x` `[n, d]` (the DDU code's `centered_cov_torch`), made exactly
    symmetric (`torch.distributions` checks symmetry; a matrix product can differ from its transpose in the last
    bit)."""
    # $\frac{1}{n - 1} x^\top x$
    cov = x.T @ x / (x.shape[0] - 1)
    return (cov + cov.T) / 2


def jitter_matrix(jitter: float, dim: int, like: torch.Tensor) -> torch.Tensor:
    r"""$\epsilon I$ as the DDU code adds it: `jitter * torch.eye(d)`, a float32 identity (then promoted to the
    covariance's dtype), so $\epsilon$ is rounded to float32 and one below float32's smallest subnormal
    ($1.4 \cdot 10^{-45}$) adds nothing — which decides the pick when a tiny jitter would do (a dead unit)."""
    return (jitter * torch.eye(dim, dtype=torch.float32, device=like.device)).to(like.dtype)


def cholesky_succeeds(covariances: torch.Tensor, jitter: float) -> bool:
    r"""Whether $\Sigma_c + \epsilon I$ has a Cholesky factor for every class `c` of `covariances` `[K, d, d]`."""
    added = jitter_matrix(jitter, covariances.shape[-1], covariances)
    return bool((torch.linalg.cholesky_ex(covariances + added).info == 0).all())


def find_jitter(covariances: torch.Tensor, jitters: List[float] = JITTERS) -> float:
    r"""The first $\epsilon$ of `jitters` (ascending) for which every $\Sigma_c + \epsilon I$ of `covariances`
    `[K, d, d]` has a Cholesky factor — the DDU code's pick (module doc: bisection, success monotone in
    $\epsilon$). Raises `GDAFitError` when even the last one fails."""
    if cholesky_succeeds(covariances, jitters[0]):
        return jitters[0]
    if not cholesky_succeeds(covariances, jitters[-1]):
        raise GDAFitError(f"the class covariances are not positive definite even with a jitter of {jitters[-1]:g} "
                          f"(the largest the DDU code tries)")
    # invariant: jitters[failing] fails, jitters[succeeding] succeeds
    failing, succeeding = 0, len(jitters) - 1
    while succeeding - failing > 1:
        middle = (failing + succeeding) // 2
        if cholesky_succeeds(covariances, jitters[middle]):
            succeeding = middle
        else:
            failing = middle
    return jitters[succeeding]


@dataclass
class GaussianDiscriminant:
    r"""
    A fitted GDA: class means $\mu$ `[K, d]`, Cholesky factors $L$ `[K, d, d]` of $\Sigma_c + \epsilon I$, log
    priors $\log \pi$ `[K]` (float64), the jitter $\epsilon$ and the class counts `[K]`.
    """
    means: torch.Tensor
    scale_tril: torch.Tensor
    log_priors: torch.Tensor
    jitter: float
    counts: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> 'GaussianDiscriminant':
        r"""Fits one Gaussian per class to `features` `[N, d]` with `labels` `[N]` in `0 .. n_classes - 1` (in
        float64); raises `GDAFitError` (module doc)."""
        z = features.detach().to(torch.float64)
        if z.dim() != 2 or labels.shape != z.shape[:1]:
            raise GDAFitError(f"features must be [N, d] with labels [N], got {list(z.shape)} and {list(labels.shape)}")
        if not torch.isfinite(z).all():
            raise GDAFitError("the features are not all finite")
        counts = torch.bincount(labels, minlength=n_classes)
        if len(counts) > n_classes or (counts < 2).any():
            raise GDAFitError(f"every class needs at least two images for a covariance; the counts are "
                              f"{counts.tolist()} for {n_classes} classes")
        # $\mu_c = \frac{1}{N_c} \sum_{i: y_i = c} z_i$
        means = torch.stack([z[labels == c].mean(0) for c in range(n_classes)])
        # $\Sigma_c = \frac{1}{N_c - 1} \sum_{i: y_i = c} (z_i - \mu_c)(z_i - \mu_c)^\top$
        covariances = torch.stack([centered_covariance(z[labels == c] - means[c]) for c in range(n_classes)])
        jitter = find_jitter(covariances)
        # $L_c L_c^\top = \Sigma_c + \epsilon I$
        scale_tril = torch.linalg.cholesky(covariances + jitter_matrix(jitter, z.shape[1], z))
        # $\log \pi_c = \log \frac{N_c}{N}$
        log_priors = torch.log(counts.to(torch.float64) / counts.sum())
        return cls(means, scale_tril, log_priors.to(z.device), jitter, counts)

    @property
    def n_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def class_log_likelihoods(self, features: torch.Tensor) -> torch.Tensor:
        r"""$\log q(z \mid y = c)$ for `features` `[N, d]` → `[N, K]` (float64)."""
        z = features.to(torch.float64)
        # $z - \mu_c$: `[K, d, N]`
        centred = (z[None] - self.means[:, None]).transpose(1, 2)
        # $m = L_c^{-1} (z - \mu_c)$
        m = torch.linalg.solve_triangular(self.scale_tril, centred, upper=False)
        # $\sum_j \log (L_c)_{jj} = \frac12 \log |\Sigma_c + \epsilon I|$
        half_log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        # $-\frac12 \|m\|^2 - \frac12 \log |\Sigma_c| - \frac{d}{2} \log 2 \pi$
        log_n = -0.5 * m.square().sum(1) - half_log_det[:, None] - 0.5 * self.dim * math.log(2 * math.pi)
        return log_n.T

    def log_density(self, features: torch.Tensor) -> torch.Tensor:
        r"""$\log q(z) = \operatorname{logsumexp}_c (\log q(z \mid c) + \log \pi_c)$ for `features` `[N, d]` →
        `[N]` (float64)."""
        return torch.logsumexp(self.class_log_likelihoods(features) + self.log_priors, dim=-1)

    def state(self) -> Dict[str, object]:
        """Tensors and a float, for a checkpoint read with `weights_only=True`."""
        return {'means': self.means, 'scale_tril': self.scale_tril, 'log_priors': self.log_priors,
                'jitter': float(self.jitter), 'counts': self.counts}

    @classmethod
    def from_state(cls, state: Dict[str, object], device=None) -> 'GaussianDiscriminant':
        """The GDA `state()` saved (on `device`); raises `GDAFitError` for a state that is not one."""
        try:
            gda = cls(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in state.items()})
            k, d = gda.means.shape
            shapes_ok = (gda.scale_tril.shape == (k, d, d) and gda.log_priors.shape == (k,)
                         and gda.counts.shape == (k,) and isinstance(gda.jitter, float))
        except (TypeError, ValueError, AttributeError) as e:
            raise GDAFitError(f"not a fitted GDA ({e})") from None
        if not shapes_ok:
            raise GDAFitError("not a fitted GDA: its tensors' shapes do not match")
        return gda

