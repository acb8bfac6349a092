r"""
# Evidential losses

For a sample with one-hot target $\mathbf{y}$ the network's evidence defines the opinion
$\text{Dir}(\mathbf{p} \mid \boldsymbol\alpha)$ with $\alpha_k = e_k + 1$ and $S = \sum_k \alpha_k$
(see [`dirichlet.py`](dirichlet.py)). Sensoy et al. (2018) train it with a loss on the
Dirichlet instead of on a single point estimate of $\mathbf{p}$:

* **Type II maximum likelihood** (Eq. 3): the negative log of the marginal likelihood
  $\int \prod_k p_k^{y_k} \text{Dir}(\mathbf{p} \mid \boldsymbol\alpha) d\mathbf{p}$,
  $$\mathcal{L} = \sum_k y_k \big(\log S - \log \alpha_k\big).$$
* **Bayes risk of the cross-entropy** (Eq. 4): $\mathbb{E}_{\mathbf{p} \sim \text{Dir}(\boldsymbol\alpha)}
  \big[-\sum_k y_k \log p_k\big]$, using $\mathbb{E}[\log p_k] = \psi(\alpha_k) - \psi(S)$,
  $$\mathcal{L} = \sum_k y_k \big(\psi(S) - \psi(\alpha_k)\big).$$
* **Bayes risk of the squared error** (Eq. 5): $\mathbb{E}\big[\sum_k (y_k - p_k)^2\big]$,
  with $\mathbb{E}[p_k] = \hat{p}_k$ and $\text{Var}[p_k] = \frac{\hat{p}_k (1 - \hat{p}_k)}{S + 1}$,
  $$\mathcal{L} = \sum_k (y_k - \hat{p}_k)^2 + \frac{\hat{p}_k (1 - \hat{p}_k)}{S + 1}.$$

* **Fisher-information loss of I-EDL** (Deng et al., ICML 2023, "Uncertainty Estimation by
  Fisher Information-based Evidential Deep Learning"): the target is modelled as
  $\mathbf{y} \sim \mathcal{N}(\mathbf{p}, \mathcal{I}(\boldsymbol\alpha)^{-1})$, so classes with little
  evidence (large Fisher information) weigh more; see `fisher_information_loss`.

The first three only reward evidence for the true class (R-EDL's relaxed loss, below, likewise); misleading evidence for the other classes is
shrunk by the **KL regulariser** (Eq. 6 ff.), which pulls the Dirichlet with the true class's
evidence removed, $\tilde{\boldsymbol\alpha} = \mathbf{y} + (1 - \mathbf{y}) \odot \boldsymbol\alpha$,
towards the uniform $\text{Dir}(\mathbf{1})$ ("I don't know"):
$$\text{KL}\big[\text{Dir}(\tilde{\boldsymbol\alpha}) \,\|\, \text{Dir}(\mathbf{1})\big]
  = \log \frac{\Gamma(\tilde{S})}{\Gamma(K) \prod_k \Gamma(\tilde\alpha_k)}
  + \sum_k (\tilde\alpha_k - 1)\big(\psi(\tilde\alpha_k) - \psi(\tilde S)\big),
  \qquad \tilde S = \sum_k \tilde\alpha_k.$$

Inputs that belong to no class — synthetic outliers, see [`outliers.py`](outliers.py) — get the
same KL with nothing removed, $\text{KL}[\text{Dir}(\boldsymbol\alpha) \| \text{Dir}(\mathbf{1})]$
(`outlier_regulariser`): all of their evidence is misleading.

Every function takes evidence `[N, K]` and integer labels `[N]` (outliers: no labels) and returns the mean over the batch.
"""
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from .dirichlet import Opinion, log_det_fisher_information, opinion


def _one_hot(evidence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One-hot targets $\\mathbf{y}$ `[N, K]` in the dtype of `evidence`, checking the shapes."""
    if evidence.dim() != 2:
        raise ValueError(f"evidence must have shape [N, K], got {tuple(evidence.shape)}")
    if labels.shape != evidence.shape[:1]:
        raise ValueError(f"labels must have shape [N] = [{evidence.shape[0]}], got {tuple(labels.shape)}")
    return F.one_hot(labels, evidence.shape[-1]).to(evidence.dtype)


def max_likelihood_loss(evidence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Type II maximum likelihood, $\sum_k y_k (\log S - \log \alpha_k)$ (Eq. 3)."""
    y = _one_hot(evidence, labels)
    o = opinion(evidence)
    # $\sum_k y_k (\log S - \log \alpha_k)$
    loss = (y * (o.strength.log().unsqueeze(-1) - o.alpha.log())).sum(dim=-1)
    return loss.mean()


def cross_entropy_bayes_risk(evidence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Bayes risk of the cross-entropy, $\sum_k y_k (\psi(S) - \psi(\alpha_k))$ (Eq. 4)."""
    y = _one_hot(evidence, labels)
    o = opinion(evidence)
    # $\sum_k y_k (\psi(S) - \psi(\alpha_k))$
    loss = (y * (torch.digamma(o.strength).unsqueeze(-1) - torch.digamma(o.alpha))).sum(dim=-1)
    return loss.mean()


def _expected_squared_error(y: torch.Tensor, o: Opinion) -> torch.Tensor:
    r"""Per class, $\mathbb{E}[(y_k - p_k)^2] = (y_k - \hat{p}_k)^2 + \text{Var}(p_k)$ under $\text{Dir}(\boldsymbol\alpha)$, `[N, K]`."""
    p = o.expected_probability
    # $(y_k - \hat{p}_k)^2$
    err = (y - p) ** 2
    # $\text{Var}(p_k) = \frac{\hat{p}_k(1 - \hat{p}_k)}{S + 1}$
    var = p * (1 - p) / (o.strength.unsqueeze(-1) + 1)
    return err + var


def squared_error_bayes_risk(evidence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Bayes risk of the squared error, $\sum_k (y_k - \hat{p}_k)^2 + \frac{\hat{p}_k(1 - \hat{p}_k)}{S + 1}$ (Eq. 5)."""
    y = _one_hot(evidence, labels)
    # $\sum_k (y_k - \hat{p}_k)^2 + \text{Var}(p_k)$
    loss = _expected_squared_error(y, opinion(evidence)).sum(dim=-1)
    return loss.mean()


def relaxed_squared_error(evidence: torch.Tensor, labels: torch.Tensor, prior_weight: float = 0.1) -> torch.Tensor:
    r"""
    R-EDL's relaxed loss (Chen et al., ICLR 2024, "R-EDL: Relaxing Nonessential Settings of EDL"):
    the squared error of the expected probability under a prior of weight $\lambda$,
    $\hat{p}_k = (e_k + \lambda) / (\sum_j e_j + K\lambda)$, **without** the variance term of Eq. 5,
    which R-EDL shows pushes evidence up regardless of the data:
    $$\mathcal{L} = \sum_k (y_k - \hat{p}_k)^2.$$
    The paper's default is $\lambda = 0.1$.
    """
    y = _one_hot(evidence, labels)
    p = opinion(evidence, prior_weight).expected_probability
    # $\sum_k (y_k - \hat{p}_k)^2$
    return ((y - p) ** 2).sum(dim=-1).mean()


def fisher_information_loss(evidence: torch.Tensor, labels: torch.Tensor, fisher_coef: float = 0.005) -> torch.Tensor:
    r"""
    I-EDL's loss (Deng et al., ICML 2023, Eq. 12 without its KL term, which `kl_uniform_regulariser` adds).

    With $\mathbf{y} \sim \mathcal{N}(\mathbf{p}, \mathcal{I}(\boldsymbol\alpha)^{-1})$ and
    $\mathbf{p} \sim \text{Dir}(\boldsymbol\alpha)$, the expected negative log-likelihood is, up to constants,
    $\frac{1}{2}\mathbb{E}\big[(\mathbf{y} - \mathbf{p})^\top \mathcal{I}(\boldsymbol\alpha) (\mathbf{y} - \mathbf{p})\big]
    - \frac{1}{2}\log|\mathcal{I}(\boldsymbol\alpha)|$. Since $\sum_k (y_k - p_k) = 0$, the rank-one part
    $-\psi^{(1)}(S)\mathbf{1}\mathbf{1}^\top$ of $\mathcal{I}$ drops out of the quadratic form and only the
    diagonal $\psi^{(1)}(\alpha_k)$ remains:
    $$\mathcal{L} = \sum_k \psi^{(1)}(\alpha_k)\Big[(y_k - \hat{p}_k)^2 + \frac{\hat{p}_k (1 - \hat{p}_k)}{S + 1}\Big]
      - \lambda_F \log|\mathcal{I}(\boldsymbol\alpha)|.$$
    $\lambda_F$ (`fisher_coef`) is 0.005 in the authors' MNIST configuration.
    """
    if fisher_coef < 0:
        raise ValueError(f"fisher_coef must be >= 0, got {fisher_coef}")
    y = _one_hot(evidence, labels)
    o = opinion(evidence)
    # $\psi^{(1)}(\alpha_k)$: the diagonal of the Fisher information
    trigamma_alpha = torch.polygamma(1, o.alpha)
    # $\sum_k \psi^{(1)}(\alpha_k)\big[(y_k - \hat{p}_k)^2 + \text{Var}(p_k)\big] - \lambda_F \log|\mathcal{I}(\boldsymbol\alpha)|$
    loss = ((trigamma_alpha * _expected_squared_error(y, o)).sum(dim=-1)
            - fisher_coef * log_det_fisher_information(o.alpha))
    return loss.mean()


def kl_from_uniform(alpha: torch.Tensor) -> torch.Tensor:
    r"""$\text{KL}[\text{Dir}(\boldsymbol\alpha) \| \text{Dir}(\mathbf{1})]$ for each row of `alpha` `[..., K]`."""
    n_classes = alpha.shape[-1]
    # $S = \sum_k \alpha_k$
    strength = alpha.sum(dim=-1)
    # $\log \Gamma(S) - \log \Gamma(K) - \sum_k \log \Gamma(\alpha_k)$
    first = (torch.lgamma(strength)
             - torch.lgamma(strength.new_tensor(float(n_classes)))
             - torch.lgamma(alpha).sum(dim=-1))
    # $\sum_k (\alpha_k - 1)(\psi(\alpha_k) - \psi(S))$
    second = ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(strength).unsqueeze(-1))).sum(dim=-1)
    return first + second


def kl_uniform_regulariser(evidence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""$\text{KL}[\text{Dir}(\tilde{\boldsymbol\alpha}) \| \text{Dir}(\mathbf{1})]$ with the true class's evidence removed."""
    y = _one_hot(evidence, labels)
    alpha = opinion(evidence).alpha
    # $\tilde{\boldsymbol\alpha} = \mathbf{y} + (1 - \mathbf{y}) \odot \boldsymbol\alpha$
    alpha_tilde = y + (1 - y) * alpha
    return kl_from_uniform(alpha_tilde).mean()


def outlier_regulariser(evidence: torch.Tensor) -> torch.Tensor:
    r"""$\text{KL}[\text{Dir}(\boldsymbol\alpha) \| \text{Dir}(\mathbf{1})]$ on outliers `[N, K]`: all their evidence is misleading.

    An outlier belongs to no class, so nothing is removed before the pull towards "I don't know"
    ($\boldsymbol\alpha = \mathbf{1}$, $u = 1$); zero exactly when the evidence is zero.
    """
    if evidence.dim() != 2:
        raise ValueError(f"evidence must be [N, K], got shape {tuple(evidence.shape)}")
    return kl_from_uniform(opinion(evidence).alpha).mean()


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: Dict[str, LossFunction] = {
    'max_likelihood_loss': max_likelihood_loss,
    'cross_entropy_bayes_risk': cross_entropy_bayes_risk,
    'squared_error_bayes_risk': squared_error_bayes_risk,
    'relaxed_squared_error': relaxed_squared_error,
    'fisher_information_loss': fisher_information_loss,
}
