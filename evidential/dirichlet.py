r"""
# Subjective opinions from evidence

This is the one place that turns a network's evidence into the quantities of
[Evidential Deep Learning (Sensoy, Kaplan & Kandemir, NeurIPS 2018)](https://arxiv.org/abs/1806.01768).

The network outputs non-negative *evidence* $e_k \ge 0$ for each of the $K$ classes.
Subjective logic assigns a *belief mass* $b_k$ to every class and an *uncertainty mass* $u$,
with $u + \sum_{k=1}^K b_k = 1$:

$$b_k = \frac{e_k}{S}, \qquad u = \frac{K}{S}, \qquad S = \sum_{k=1}^K (e_k + 1).$$

The opinion is the Dirichlet distribution $\text{Dir}(\mathbf{p} \mid \boldsymbol{\alpha})$ over the
class probabilities with parameters $\alpha_k = e_k + 1$; $S = \sum_k \alpha_k$ is its *strength*.
Its mean is the expected class probability $\hat{p}_k = \alpha_k / S$.

With no evidence at all ($e_k = 0$ for every $k$) the Dirichlet is uniform, $u = 1$ and
$\hat{p}_k = 1/K$: "I don't know".
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Opinion:
    """The Dirichlet opinion computed from evidence `[..., K]` (every field is a tensor)."""
    # $e_k \ge 0$, shape `[..., K]`
    evidence: torch.Tensor
    # $\alpha_k = e_k + 1$, shape `[..., K]`
    alpha: torch.Tensor
    # $S = \sum_k \alpha_k$, shape `[...]`
    strength: torch.Tensor
    # $\hat{p}_k = \alpha_k / S$, shape `[..., K]`
    expected_probability: torch.Tensor
    # $u = K / S$, shape `[...]`
    uncertainty_mass: torch.Tensor

    @property
    def n_classes(self) -> int:
        return self.alpha.shape[-1]


def opinion(evidence: torch.Tensor, prior_weight: float = 1.) -> Opinion:
    r"""
    Computes $\boldsymbol\alpha$, $S$, $\hat{\mathbf{p}}$ and $u$ from evidence of shape `[..., K]`.

    The number of classes $K$ is the size of the last dimension; nothing is hard-coded.
    `prior_weight` $\lambda$ is the evidence the uniform prior contributes to each class: $1$ in
    Sensoy et al.; R-EDL (Chen et al., ICLR 2024) treats it as a hyperparameter, with
    $\alpha_k = e_k + \lambda$ and $u = K\lambda / S$.
    """
    if evidence.dim() < 1 or evidence.shape[-1] < 2:
        raise ValueError(f"evidence must have shape [..., K] with K >= 2 classes, got {tuple(evidence.shape)}")
    if prior_weight <= 0:
        raise ValueError(f"prior_weight must be > 0, got {prior_weight}")
    n_classes = evidence.shape[-1]
    # $\alpha_k = e_k + \lambda$ ($\lambda = 1$: $\alpha_k = e_k + 1$)
    alpha = evidence + prior_weight
    # $S = \sum_{k=1}^K \alpha_k$
    strength = alpha.sum(dim=-1)
    # $\hat{p}_k = \frac{\alpha_k}{S}$
    expected_probability = alpha / strength.unsqueeze(-1)
    # $u = \frac{K \lambda}{S}$ ($\lambda = 1$: $u = K / S$)
    uncertainty_mass = n_classes * prior_weight / strength
    return Opinion(evidence=evidence, alpha=alpha, strength=strength,
                   expected_probability=expected_probability, uncertainty_mass=uncertainty_mass)


def log_det_fisher_information(alpha: torch.Tensor) -> torch.Tensor:
    r"""
    $\log |\mathcal{I}(\boldsymbol\alpha)|$, the log-determinant of the Fisher information of
    $\text{Dir}(\boldsymbol\alpha)$, over the last dimension.

    The Dirichlet is an exponential family with log-normaliser
    $A(\boldsymbol\alpha) = \sum_k \log\Gamma(\alpha_k) - \log\Gamma(S)$, so its Fisher information is
    the Hessian of $A$:
    $$\mathcal{I}(\boldsymbol\alpha) = \text{diag}\big(\psi^{(1)}(\boldsymbol\alpha)\big) - \psi^{(1)}(S)\,\mathbf{1}\mathbf{1}^\top,$$
    with $\psi^{(1)}$ the trigamma function. The matrix determinant lemma gives
    $$\log |\mathcal{I}(\boldsymbol\alpha)| = \sum_k \log \psi^{(1)}(\alpha_k)
      + \log\Big(1 - \psi^{(1)}(S) \sum_k \frac{1}{\psi^{(1)}(\alpha_k)}\Big).$$
    The second term is the log of a small difference when $S$ is large (about $(K - 1) / 2S$), so it
    is computed in double precision; the result has the dtype of `alpha`.
    """
    a = alpha.double()
    # $\psi^{(1)}(\alpha_k)$
    trigamma_alpha = torch.polygamma(1, a)
    # $\psi^{(1)}(S)$
    trigamma_strength = torch.polygamma(1, a.sum(dim=-1))
    # $1 - \psi^{(1)}(S) \sum_k 1 / \psi^{(1)}(\alpha_k)$ (positive: $\mathcal{I}$ is positive definite)
    rest = 1 - trigamma_strength * trigamma_alpha.reciprocal().sum(dim=-1)
    # $\sum_k \log \psi^{(1)}(\alpha_k) + \log(\dots)$; the clamp only guards rounding at $S \gtrsim 10^{15}$
    log_det = trigamma_alpha.log().sum(dim=-1) + rest.clamp_min(torch.finfo(a.dtype).tiny).log()
    return log_det.to(alpha.dtype)
