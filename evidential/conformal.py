r"""
# Split conformal prediction sets

Vovk et al., *Algorithmic Learning in a Random World* (2005); Angelopoulos & Bates, *A Gentle Introduction to
Conformal Prediction* (2021).

Given predictive probabilities $\hat{p}(x) \in \Delta^{K-1}$ of any model, a *non-conformity score* $s(x, y)$
(large = $y$ fits $x$ badly) and $n$ calibration pairs $(x_i, y_i)$ exchangeable with a test pair $(x, y)$, let

$$\hat{q} = s_{(k)}, \qquad k = \lceil (n + 1)(1 - \alpha) \rceil,$$

the $k$-th smallest calibration score $s_i = s(x_i, y_i)$ (the empirical quantile at level $k/n$, the
finite-sample correction of the plain $(1-\alpha)$ quantile; $\hat{q} = +\infty$ where $k > n$). The set

$$C(x) = \{y : s(x, y) \le \hat{q}\}$$

then covers: $P(y \in C(x)) \ge 1 - \alpha$, and $\le 1 - \alpha + 1/(n+1)$ where the scores have no ties. The
guarantee is marginal (over calibration and test draws) and holds however badly $\hat{p}$ is calibrated; a worse
$\hat{p}$ only gives larger sets.

The scores (TorchCP's conventions, so that it serves as the tests' oracle):

* **LAC** (Sadinle et al. 2019; *THR* in Angelopoulos & Bates): $s(x, y) = 1 - \hat{p}_y$, so
  $C(x) = \{y : \hat{p}_y \ge 1 - \hat{q}\}$ — the smallest sets on average, possibly empty.
* **APS** (Romano et al. 2020): with $o(x, y)$ the rank of $y$ by decreasing $\hat{p}$ (1 = the arg max) and
  $u \sim U(0, 1)$,
  $s(x, y, u) = \sum_{j : o(x, j) \le o(x, y)} \hat{p}_j - u\,\hat{p}_y$, the mass of the classes ranked above $y$
  plus a random part of $\hat{p}_y$ (Romano et al. write $u\,\hat{p}_y$ for the part: $u$ and $1 - u$ have the same
  law). $u = 0$ is the non-randomised score (over-covers); drawing $u$ makes the coverage exact.
* **RAPS** (Angelopoulos et al., ICLR 2021): APS plus $\lambda\,(o(x, y) - k_{\mathrm{reg}})^+$, which penalises
  sets larger than $k_{\mathrm{reg}}$ classes.

One $u$ per image, shared by its $K$ labels (as Romano et al. and Angelopoulos et al.; TorchCP draws one per label
in its all-labels form): the scores then grow with the rank, so every APS/RAPS set is the top-$m$ classes for some
$m$. The caller draws $u$ from a seeded generator.

TorchCP (`torchcp` 1.2.1) has these scores, but `import torchcp.classification` imports torchsort (a C++ build),
and its package metadata pulls transformers, torch_geometric and pandas; its scores draw $u$ from torch's global
generator. The few lines below are written here instead, and the tests compare them with TorchCP's own score
files on the same inputs and draws.
"""
import math
from typing import Any, Dict, Optional

import torch


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    r"""$\hat{q}$: the $\lceil (n+1)(1-\alpha) \rceil$-th smallest of the $n$ calibration scores, $+\infty$ where that
    rank exceeds $n$ (too few calibration samples for this $\alpha$: every set is all $K$ classes)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    scores = torch.as_tensor(scores).flatten()
    n = scores.numel()
    if n == 0:
        raise ValueError("no calibration scores")
    # k = ⌈(n + 1)(1 − α)⌉
    k = math.ceil((n + 1) * (1 - alpha))
    if k > n:
        return math.inf
    return torch.kthvalue(scores.double(), k).values.item()


def _check(probs: torch.Tensor, u: Optional[torch.Tensor]):
    probs = torch.as_tensor(probs).double()
    if probs.dim() != 2:
        raise ValueError(f"probs must be [N, K], got shape {tuple(probs.shape)}")
    if u is None:
        u = torch.zeros(len(probs), dtype=torch.float64)
    u = torch.as_tensor(u).double()
    if u.shape != (len(probs),):
        raise ValueError(f"u must be [N] = [{len(probs)}] (one draw per sample), got shape {tuple(u.shape)}")
    return probs, u


def lac_scores(probs: torch.Tensor) -> torch.Tensor:
    r"""$s(x, y) = 1 - \hat{p}_y$ for every label: float64 `[N, K]`."""
    probs, _ = _check(probs, None)
    return 1 - probs


def aps_scores(probs: torch.Tensor, u: Optional[torch.Tensor] = None, penalty: float = 0.0,
               kreg: int = 0) -> torch.Tensor:
    r"""APS scores of every label, float64 `[N, K]`: $\sum_{o(j) \le o(y)} \hat{p}_j - u\,\hat{p}_y$, plus RAPS's
    $\lambda (o(y) - k_{\mathrm{reg}})^+$ with `penalty` $= \lambda > 0$. `u`: `[N]` draws in $[0, 1)$ (one per
    sample), `None` for the non-randomised score ($u = 0$). Ties in $\hat{p}$ rank by class index."""
    if penalty < 0 or kreg < 0:
        raise ValueError(f"penalty and kreg must be >= 0, got {penalty!r}, {kreg!r}")
    probs, u = _check(probs, u)
    ordered, order = torch.sort(probs, dim=1, descending=True, stable=True)
    rank = torch.arange(1, probs.shape[1] + 1, dtype=torch.float64)
    # s at rank r: Σ_{j ≤ r} p̂_(j) − u p̂_(r) + λ (r − k_reg)⁺
    by_rank = ordered.cumsum(1) - u[:, None] * ordered + penalty * (rank - kreg).clamp_min(0)
    return torch.empty_like(by_rank).scatter_(1, order, by_rank)


def raps_scores(probs: torch.Tensor, u: Optional[torch.Tensor] = None, penalty: float = 0.1,
                kreg: int = 1) -> torch.Tensor:
    r"""RAPS: the APS scores plus $\lambda (o(y) - k_{\mathrm{reg}})^+$."""
    return aps_scores(probs, u, penalty, kreg)


def true_label_scores(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""$s(x_i, y_i)$ from the all-labels scores `[N, K]`: the calibration scores."""
    return scores.gather(1, torch.as_tensor(labels).long()[:, None]).squeeze(1)


def prediction_sets(scores: torch.Tensor, q_hat: float) -> torch.Tensor:
    r"""$C(x) = \{y : s(x, y) \le \hat{q}\}$ as a boolean mask `[N, K]`."""
    return scores <= q_hat


def set_summary(sets: torch.Tensor, labels: torch.Tensor) -> Dict[str, Any]:
    r"""
    How the sets `[N, K]` do on the labelled set:

    * `coverage` $\frac1N \sum_i [y_i \in C(x_i)]$, `mean_size` and `median_size` of $|C(x_i)|$, `empty` (the share
      of empty sets);
    * `by_size`: `{size: {n, coverage}}` for every size that occurs (size-stratified coverage, Angelopoulos et al.
      2021: an adaptive method covers alike at every size);
    * `by_class`: the coverage of the images of each class (`None` where the set has none), and `worst_class`
      `{class, coverage}`, its minimum (class-conditional coverage, which split conformal does not guarantee).
    """
    labels = torch.as_tensor(labels).long()
    covered = sets.gather(1, labels[:, None]).squeeze(1).double()
    size = sets.sum(1)
    by_size = {str(int(m)): {'n': int((size == m).sum()), 'coverage': covered[size == m].mean().item()}
               for m in torch.unique(size)}
    by_class = [covered[labels == c].mean().item() if (labels == c).any() else None for c in range(sets.shape[1])]
    present = [(c, v) for c, v in enumerate(by_class) if v is not None]
    worst = min(present, key=lambda cv: cv[1])
    return {'coverage': covered.mean().item(), 'mean_size': size.double().mean().item(),
            # the median of an even count is the mean of the middle two (torch.median would give the lower)
            'median_size': torch.quantile(size.double(), 0.5).item(),
            'empty': (size == 0).double().mean().item(), 'by_size': by_size, 'by_class': by_class,
            'worst_class': {'class': worst[0], 'coverage': worst[1]}}
