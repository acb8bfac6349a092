r"""
# Temperature scaling (Guo et al., *On Calibration of Modern Neural Networks*, ICML 2017)

A post-hoc recalibration with one parameter: the expected class probabilities $\hat{p}_i$ of a trained model are
replaced by

$$\tilde{p}_i(T) = \operatorname{softmax}\Big(\frac{\log \hat{p}_i}{T}\Big), \qquad T > 0,$$

with $T$ chosen to minimise the negative log-likelihood on held-out data $\{(\hat{p}_j, y_j)\}_{j=1}^M$,

$$T^\star = \arg\min_{T} \; -\frac{1}{M} \sum_{j=1}^M \log \tilde{p}_{j y_j}(T).$$

The logits are taken as $\log \hat{p}$ (clamped at `LOG_EPS`), not as the network's own logits, so that the same
code calibrates every family: a softmax network ($\log \hat{p}$ is its logits up to a per-sample constant, which
softmax ignores, so this *is* Guo et al.'s method), an averaged ensemble or MC-dropout mean, a Dirichlet mean
$\alpha / S$, or a circuit's class posterior. $T > 1$ softens over-confident predictions, $T < 1$ sharpens
under-confident ones; $\arg\max_k \tilde{p}_{ik} = \arg\max_k \hat{p}_{ik}$ for every $T > 0$, so the accuracy is
unchanged.

The fit is a golden-section search over $\log T \in [\log T_{\min}, \log T_{\max}]$ (`T_BOUNDS`). As a function of
$\beta = 1/T$ the NLL is convex (a log-sum-exp of functions linear in $\beta$ minus a linear term), and
$\beta = e^{-\log T}$ is monotone, so the NLL is unimodal in $\log T$ and the search finds its minimum on the
interval; it is deterministic (no random start, no learning rate) and needs no gradient.
"""
import math
from typing import Tuple

import torch

#: $\hat{p}$ is clamped to at least this before the log, so that a hard zero (a circuit's, or a saturated softmax)
#: gives a finite logit
LOG_EPS = 1e-12
#: The search interval of $T$: $[0.05, 20]$, i.e. $\log T \in [-3.0, 3.0]$; a $T^\star$ on a bound means the
#: NLL still falls beyond it (such extreme values are reported as they are)
T_BOUNDS: Tuple[float, float] = (0.05, 20.0)
#: The search stops when the interval in $\log T$ is shorter than this
LOG_T_TOLERANCE = 1e-7


def log_probs(probs: torch.Tensor) -> torch.Tensor:
    r"""$\log \max(\hat{p}, \epsilon)$ in float64: the "logits" that temperature scaling divides by $T$."""
    return torch.as_tensor(probs).double().clamp_min(LOG_EPS).log()


def scale(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""$\tilde{p}(T) = \operatorname{softmax}(\log \hat{p} / T)$, float64 `[N, K]`."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be > 0, got {temperature!r}")
    return torch.softmax(log_probs(probs) / temperature, dim=1)


def scaled_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    r"""$-\frac{1}{N} \sum_i \log \operatorname{softmax}(z_i / T)_{y_i}$ of float64 logits $z = \log \hat{p}$."""
    log_p = torch.log_softmax(logits / temperature, dim=1)
    return -log_p.gather(1, labels.long()[:, None]).mean().item()


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor, bounds: Tuple[float, float] = T_BOUNDS,
                    tolerance: float = LOG_T_TOLERANCE) -> float:
    r"""
    $T^\star$ of held-out `probs` `[N, K]` (rows summing to one) and `labels` `[N]`: the golden-section minimum of
    the NLL of $\operatorname{softmax}(\log \hat{p} / T)$ over $\log T$ in `bounds` (see the module's docstring).
    """
    logits = log_probs(probs)
    labels = torch.as_tensor(labels).to(logits.device)
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(f"need probs [N, K] and labels [N] with N > 0, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    low, high = math.log(bounds[0]), math.log(bounds[1])

    def loss(log_t: float) -> float:
        return scaled_nll(logits, labels, math.exp(log_t))

    # golden-section search: keep two inner points at the golden ratio of [low, high]; the one with the larger NLL
    # bounds the minimum of a unimodal function, so the interval shrinks by 1/φ ≈ 0.618 each step
    inv_phi = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tolerance:
        if fc <= fd:  # the minimum is in [a, d]: d becomes the new upper bound, c the new right point
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = loss(c)
        else:  # the minimum is in [c, b]
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = loss(d)
    # the best of the last interval's midpoint and the two bounds (the minimum may sit on a bound)
    candidates = [(a + b) / 2, low, high]
    best = min(candidates, key=loss)
    return math.exp(best)
