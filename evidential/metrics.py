r"""
# Uncertainty metrics

Pure functions that score how good a classifier's predictive probabilities
$\hat{p}$ and its uncertainty scores are. Tensors in, Python floats (metrics)
or tensors (scores) out; nothing here knows about models, data loaders or labml,
so `python -m experiments.evaluate` and the tests share one code path.

Notation: $N$ samples, $K$ classes, $\hat{p}_{ik}$ the predicted probability of
class $k$ for sample $i$ (for EDL, $\hat{p}_{ik} = \alpha_{ik} / S_i$), $y_i$ the
true label, $\hat{y}_i = \arg\max_k \hat{p}_{ik}$ the prediction.

*Scores* are **uncertainty** scores: higher means "less sure". That holds for
the three scores the evaluation uses,

* `u` – the Dirichlet uncertainty mass $u = K / S$ (computed by the model code),
* `entropy` – $H(\hat{p})$, see `entropy`,
* `msp` – $1 - \max_k \hat{p}_k$, see `max_prob_score`,

so every function below that ranks samples by a score treats a high score as
"reject first" (selective classification) or "flag as positive" (errors, OOD).

Conventions for degenerate inputs (documented per function, tested):

* constant scores: AUROC $= 0.5$, AUPR $=$ fraction of positives, FPR95 $= 1$;
  AURC $=$ error rate (ties are broken in expectation, not by input order);
* only one class present (no errors, or no OOD samples): AUROC, AUPR and FPR95
  are undefined and raise `ValueError`. `summarize` writes `None` (JSON `null`)
  for `misclassification_auroc` in that case instead of failing the whole run;
* empty input, shape mismatch, probabilities that do not sum to one, labels out
  of range, non-finite values: `ValueError` naming the argument and what is allowed.

Rank-based metrics (AUROC, AUPR, FPR95, calibration error) come from the
`torchmetrics` functional API. AURC is written by hand because `torchmetrics`
has no risk-coverage metric.
"""

from typing import Dict, Mapping, Optional, Tuple

import torch

from evidential.prediction import categorical_entropy


def _torchmetrics():
    """`torchmetrics.functional.classification`, imported on first use: it takes seconds to import, and
    `compare` (which only needs the metric names below) should not pay for it."""
    from torchmetrics.functional import classification
    return classification

#: Rows of `probs` must sum to one within this absolute tolerance
#: (float32 $\alpha / S$ and softmax are well inside it).
PROBS_ATOL = 1e-4

#: $\hat{p}_{i y_i}$ is clamped to at least this before the log in `nll`,
#: so that a single hard zero gives a large but finite (JSON-serialisable) NLL.
NLL_EPS = 1e-12



# ## Argument validation

def _tensor(x, name: str) -> torch.Tensor:
    """Accept tensors, numpy arrays and lists; detach tensors."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"`{name}` must be a tensor or array-like, got {type(x).__name__}: {e}") from e


def _check_probs(probs, name: str = "probs") -> torch.Tensor:
    """`probs` must be a finite float `[N, K]` tensor, $N \\ge 1$, $K \\ge 2$,
    entries in $[0, 1]$ and rows summing to one (within `PROBS_ATOL`).
    Returns it as float64, clamped to $[0, 1]$."""
    probs = _tensor(probs, name)
    if probs.ndim != 2:
        raise ValueError(f"`{name}` must have shape [N, K] (samples x classes), got shape {tuple(probs.shape)}")
    n, k = probs.shape
    if n == 0:
        raise ValueError(f"`{name}` is empty (N = 0); at least one sample is required")
    if k < 2:
        raise ValueError(f"`{name}` must have at least K = 2 classes, got K = {k}")
    if not probs.is_floating_point():
        raise ValueError(f"`{name}` must be a floating point tensor of probabilities, got dtype {probs.dtype}")
    probs = probs.to(torch.float64)
    if not torch.isfinite(probs).all():
        raise ValueError(f"`{name}` contains NaN or inf; probabilities must be finite")
    lo, hi = probs.min().item(), probs.max().item()
    if lo < -PROBS_ATOL or hi > 1 + PROBS_ATOL:
        raise ValueError(f"`{name}` must lie in [0, 1], got values in [{lo:.6g}, {hi:.6g}]; "
                         f"pass probabilities (e.g. alpha / S), not evidence or logits")
    sums = probs.sum(dim=1)
    bad = (sums - 1).abs() > PROBS_ATOL
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"each row of `{name}` must sum to 1 (within {PROBS_ATOL}); row {i} sums to "
                         f"{sums[i].item():.6g} ({int(bad.sum())} of {n} rows are off); "
                         f"pass probabilities (e.g. alpha / S), not evidence or logits")
    return probs.clamp(0.0, 1.0)


def _check_labels(labels, n: int, k: int) -> torch.Tensor:
    """`labels` must be an integer `[N]` tensor with values in $\\{0, \\dots, K-1\\}$."""
    labels = _tensor(labels, "labels")
    if labels.ndim != 1:
        raise ValueError(f"`labels` must have shape [N], got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"`labels` has {labels.shape[0]} entries but `probs` has {n} rows; they must match")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`labels` must be an integer tensor of class indices, got dtype {labels.dtype}")
    lo, hi = labels.min().item(), labels.max().item()
    if lo < 0 or hi >= k:
        raise ValueError(f"`labels` must lie in [0, {k - 1}] for K = {k} classes, got values in [{lo}, {hi}]")
    return labels.long()


def _check_scores(scores, name: str, n: Optional[int] = None, n_name: str = "") -> torch.Tensor:
    """`scores` must be a finite real `[N]` tensor with $N \\ge 1$. Returns float64."""
    scores = _tensor(scores, name)
    if scores.ndim != 1:
        raise ValueError(f"`{name}` must have shape [N] (one score per sample), got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (N = 0); at least one sample is required")
    if n is not None and scores.shape[0] != n:
        raise ValueError(f"`{name}` has {scores.shape[0]} entries but `{n_name}` has {n}; they must match")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise ValueError(f"`{name}` must be a real-valued tensor, got dtype {scores.dtype}")
    scores = scores.to(torch.float64)
    if not torch.isfinite(scores).all():
        raise ValueError(f"`{name}` contains NaN or inf; scores must be finite")
    return scores


def _check_errors(errors, n: int, n_name: str) -> torch.Tensor:
    """`errors` must be a `[N]` tensor of booleans (or 0/1), `True` = misclassified."""
    errors = _tensor(errors, "errors")
    if errors.ndim != 1:
        raise ValueError(f"`errors` must have shape [N], got shape {tuple(errors.shape)}")
    if errors.shape[0] != n:
        raise ValueError(f"`errors` has {errors.shape[0]} entries but `{n_name}` has {n}; they must match")
    if errors.dtype != torch.bool:
        if not ((errors == 0) | (errors == 1)).all():
            raise ValueError("`errors` must be boolean (True = wrong prediction) or contain only 0 and 1")
        errors = errors != 0
    return errors


def _check_both_classes(targets: torch.Tensor, positive: str, negative: str, metric: str) -> None:
    n_pos = int(targets.sum())
    if n_pos == 0 or n_pos == targets.numel():
        have = negative if n_pos == 0 else positive
        raise ValueError(f"{metric} is undefined with only one class present: all {targets.numel()} samples "
                         f"are {have}; it needs at least one {positive} and one {negative} sample")


def _rank_preserving_unit(scores: torch.Tensor) -> torch.Tensor:
    """Map scores monotonically into $[0, 1]$.

    `torchmetrics` applies a sigmoid to binary "preds" outside $[0, 1]$, which
    would saturate large scores to the same float and create artificial ties.
    Rank-based metrics only depend on the order of the scores, so a min-max
    rescale (in float64) changes nothing but avoids that."""
    lo, hi = scores.min(), scores.max()
    if hi == lo:
        return torch.full_like(scores, 0.5)
    return ((scores - lo) / (hi - lo)).clamp(0.0, 1.0)


def _binary_inputs(neg_scores, pos_scores, neg_name: str, pos_name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the scores of negatives (target 0) and positives (target 1)."""
    neg = _check_scores(neg_scores, neg_name)
    pos = _check_scores(pos_scores, pos_name)
    scores = torch.cat([neg, pos.to(neg.device)])
    targets = torch.cat([torch.zeros(neg.numel(), dtype=torch.long, device=neg.device),
                         torch.ones(pos.numel(), dtype=torch.long, device=neg.device)])
    return _rank_preserving_unit(scores), targets


# ## Uncertainty scores

def entropy(probs) -> torch.Tensor:
    r"""Entropy of the predictive distribution, in nats,

    $$H(\hat{p}_i) = -\sum_{k=1}^K \hat{p}_{ik} \log \hat{p}_{ik},
      \qquad 0 \log 0 = 0,$$

    between $0$ (one-hot) and $\log K$ (uniform). Returns a float64 `[N]` tensor."""
    return categorical_entropy(_check_probs(probs))


def max_prob_score(probs) -> torch.Tensor:
    r"""Maximum-softmax-probability score turned into an uncertainty,

    $$\text{msp}_i = 1 - \max_k \hat{p}_{ik},$$

    between $0$ (one-hot) and $1 - 1/K$ (uniform). Returns a float64 `[N]` tensor."""
    probs = _check_probs(probs)
    return 1.0 - probs.max(dim=1).values


def misclassified(probs, labels) -> torch.Tensor:
    r"""Misclassification indicator $e_i = [\hat{y}_i \ne y_i]$, a bool `[N]` tensor.

    Ties in $\arg\max$ go to the lowest class index (`torch.argmax`)."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    return probs.argmax(dim=1) != labels.to(probs.device)


# ## In-distribution metrics

def accuracy(probs, labels) -> float:
    r"""Top-1 accuracy,

    $$\text{acc} = \frac{1}{N} \sum_{i=1}^N [\hat{y}_i = y_i].$$"""
    return (~misclassified(probs, labels)).double().mean().item()


def nll(probs, labels) -> float:
    r"""Negative log-likelihood of the true class (natural log), mean over samples,

    $$\text{NLL} = -\frac{1}{N} \sum_{i=1}^N \log \max(\hat{p}_{i y_i}, \epsilon),
      \qquad \epsilon = 10^{-12}.$$

    The clamp only matters for a hard zero on the true class (then the sample
    contributes $\approx 27.6$ instead of $\infty$)."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    p_true = probs.gather(1, labels[:, None]).squeeze(1)
    return -p_true.clamp_min(NLL_EPS).log().mean().item()


def brier(probs, labels) -> float:
    r"""Brier score, summed over classes and averaged over samples,

    $$\text{Brier} = \frac{1}{N} \sum_{i=1}^N \sum_{k=1}^K (\hat{p}_{ik} - [k = y_i])^2,$$

    between $0$ (confident and right) and $2$ (confident and wrong)."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return ((probs - one_hot) ** 2).sum(dim=1).mean().item()


def ece(probs, labels, n_bins: int = 15) -> float:
    r"""Expected calibration error of the top-1 confidence $c_i = \max_k \hat{p}_{ik}$,

    $$\text{ECE} = \sum_{b} \frac{|B_b|}{N} \,
        \Big| \underbrace{\frac{1}{|B_b|}\sum_{i \in B_b} [\hat{y}_i = y_i]}_{\text{acc}(B_b)}
            - \underbrace{\frac{1}{|B_b|}\sum_{i \in B_b} c_i}_{\text{conf}(B_b)} \Big|,$$

    with `n_bins` equal-width bins $B_b = \{i : b/M \le c_i < (b+1)/M\}$, $M$ = `n_bins`,
    $b = 0, \dots, M-1$. Computed by `torchmetrics`
    (`multiclass_calibration_error`, `norm="l1"`), whose binning also puts a
    confidence of exactly $1$ into its own extra bin $\{c_i = 1\}$. Empty bins
    contribute nothing."""
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, got {n_bins!r}")
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    return _torchmetrics().multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=n_bins,
                                        norm="l1", validate_args=False).item()


def calibration_bins(probs, labels, n_bins: int = 15) -> Dict[str, torch.Tensor]:
    r"""Per-bin statistics for a reliability diagram: the same bins as `ece`
    ($[b/M, (b+1)/M)$), except that a confidence of exactly $1$ is put in the last
    bin so there are exactly `n_bins` of them.

    Returns float64 tensors of length `n_bins`: `edges` (`n_bins + 1` bin
    edges), `confidence` (mean $c_i$ in the bin, 0 if empty), `accuracy` (0 if
    empty) and `count`."""
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, got {n_bins!r}")
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1]).to(probs.device)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(torch.float64)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=probs.device)
    idx = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64, device=probs.device).scatter_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).scatter_add_(0, idx, conf)
    acc_sum = torch.zeros_like(count).scatter_add_(0, idx, correct)
    safe = count.clamp_min(1)
    return {"edges": edges, "confidence": conf_sum / safe, "accuracy": acc_sum / safe, "count": count}


def aurc(scores, errors) -> float:
    r"""Area under the risk-coverage curve (Geifman & El-Yaniv, 2017), as in
    TorchUncertainty's `AURC` metric.

    Sort the samples by increasing uncertainty `scores` (most certain first) and
    keep the first $k$: coverage $c_k = k / N$ and selective risk
    $r_k = \frac{1}{k} \sum_{j \le k} e_{(j)}$ (error rate among the kept). AURC is
    the trapezoidal area under $r$ over $c \in [1/N, 1]$, normalised by the
    width of that support so that it is the mean risk over coverage,

    $$\text{AURC} = \frac{1}{1 - 1/N} \sum_{k=1}^{N-1} \frac{1}{N} \frac{r_k + r_{k+1}}{2}
                  = \frac{1}{N - 1}\Big(\sum_{k=1}^N r_k - \frac{r_1 + r_N}{2}\Big).$$

    Lower is better; $r_N$ is the overall error rate; all-correct gives $0$.

    **Ties.** Samples with equal scores cannot be ordered, so instead of using an
    arbitrary order we use the *expected* number of errors over a uniformly
    random order inside each tie group (errors of the group spread evenly over
    its positions). Without ties this is exactly TorchUncertainty's value; with
    constant scores every $r_k$ equals the error rate, and so does AURC.

    Hand-written because `torchmetrics` has no risk-coverage metric.

    * `scores`: `[N]` uncertainty scores, higher = less certain (rejected first).
    * `errors`: `[N]` bool, `True` where the prediction is wrong. $N \ge 2$.
    """
    scores = _check_scores(scores, "scores")
    n = scores.numel()
    errs = _check_errors(errors, n, "scores").to(device=scores.device, dtype=torch.float64)
    if n < 2:
        raise ValueError(f"`aurc` needs at least 2 samples to define a risk-coverage curve, got N = {n}")
    order = torch.sort(scores, stable=True).indices
    sorted_scores, sorted_errs = scores[order], errs[order]
    # Expected cumulative errors with random order inside each tie group:
    # linear interpolation between the cumulative errors before and after the group.
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    group_end = counts.cumsum(0)  # number of samples up to and including the group
    cum_end = sorted_errs.cumsum(0)[group_end - 1]
    cum_start = torch.cat([cum_end.new_zeros(1), cum_end[:-1]])
    start = group_end - counts
    group = torch.repeat_interleave(torch.arange(counts.numel(), device=scores.device), counts)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)
    within = k - start[group].to(torch.float64)
    cum = cum_start[group] + within * (cum_end - cum_start)[group] / counts[group].to(torch.float64)
    risk = cum / k
    return ((risk.sum() - (risk[0] + risk[-1]) / 2) / (n - 1)).item()


def misclassification_auroc(scores, errors) -> float:
    r"""How well an uncertainty score separates wrong (positive) from right
    (negative) predictions: the area under the ROC curve,

    $$\text{AUROC} = P(s_i > s_j \mid e_i = 1, e_j = 0) + \tfrac12 P(s_i = s_j \mid e_i = 1, e_j = 0),$$

    computed by `torchmetrics` (`binary_auroc`, exact). Constant scores give $0.5$.
    Raises `ValueError` if all predictions are right (or all wrong)."""
    scores = _check_scores(scores, "scores")
    errs = _check_errors(errors, scores.numel(), "scores").to(scores.device)
    targets = errs.long()
    _check_both_classes(targets, "wrong prediction", "correct prediction", "misclassification AUROC")
    return _torchmetrics().binary_auroc(_rank_preserving_unit(scores), targets, validate_args=False).item()


# ## Out-of-distribution detection
#
# OOD samples are the positive class; a higher score must mean "more likely OOD".

def ood_auroc(id_scores, ood_scores) -> float:
    r"""AUROC of separating OOD (positive) from in-distribution (negative) samples,

    $$\text{AUROC} = P(s^{\text{ood}} > s^{\text{id}}) + \tfrac12 P(s^{\text{ood}} = s^{\text{id}}),$$

    via `torchmetrics.binary_auroc`. Constant scores give $0.5$, perfect separation $1$."""
    scores, targets = _binary_inputs(id_scores, ood_scores, "id_scores", "ood_scores")
    return _torchmetrics().binary_auroc(scores, targets, validate_args=False).item()


def ood_aupr(id_scores, ood_scores) -> float:
    r"""Area under the precision-recall curve with OOD as the positive class,
    as average precision (no interpolation, same as scikit-learn),

    $$\text{AP} = \sum_t (R_t - R_{t-1}) P_t,$$

    over decreasing thresholds $t$, via `torchmetrics.binary_average_precision`.
    Constant scores give the fraction of OOD samples, perfect separation $1$."""
    scores, targets = _binary_inputs(id_scores, ood_scores, "id_scores", "ood_scores")
    return _torchmetrics().binary_average_precision(scores, targets, validate_args=False).item()


def fpr_at_95_tpr(id_scores, ood_scores) -> float:
    r"""False-positive rate at 95% true-positive rate, OOD positive:

    $$\text{FPR95} = \text{FPR}(t^*), \qquad t^* = \max\{t : \text{TPR}(t) \ge 0.95\},$$

    i.e. flag as OOD every sample with score $\ge t^*$, the highest threshold
    that still catches at least 95% of the OOD samples, and report the fraction
    of in-distribution samples flagged. No interpolation between ROC points:
    this is the first point of the exact ROC curve (`torchmetrics.binary_roc`)
    with TPR $\ge 0.95$. The TPR comparison is done on integer counts
    ($100\,TP \ge 95\,P$), so it is exact. Lower is better; constant scores give $1$.
    """
    scores, targets = _binary_inputs(id_scores, ood_scores, "id_scores", "ood_scores")
    n_pos = int(targets.sum())
    n_neg = targets.numel() - n_pos
    fpr, tpr, _ = _torchmetrics().binary_roc(scores, targets, validate_args=False)
    # torchmetrics returns float32 rates; recover the exact integer counts.
    tp = torch.round(tpr.double() * n_pos).long()
    fp = torch.round(fpr.double() * n_neg).long()
    first = int(torch.nonzero(100 * tp >= 95 * n_pos)[0])
    return fp[first].item() / n_neg


# ## JSON helpers used by `experiments.evaluate`

#: Which value of each metric is best: the in-distribution block (`summarize`) ...
ID_METRICS = {"accuracy": "max", "nll": "min", "brier": "min", "ece": "min", "aurc": "min",
              "misclassification_auroc": "max"}
#: ... and OOD detection per set and score (`ood_summary`)
OOD_METRICS = {"auroc": "max", "aupr": "max", "fpr95": "min"}
#: The keys `summarize` and `ood_summary` produce, in order
ID_KEYS = tuple(ID_METRICS)
OOD_KEYS = tuple(OOD_METRICS)

def summarize(probs, labels, scores, n_bins: int = 15) -> Dict[str, Optional[float]]:
    r"""The `"id"` block of `evaluation.json`:

    `{"accuracy", "nll", "brier", "ece", "aurc", "misclassification_auroc"}`.

    `scores` is the uncertainty score used to rank samples for `aurc` and
    `misclassification_auroc` (the evaluation uses `u`). If every prediction is
    right (or every one wrong), misclassification AUROC is undefined and is
    reported as `None` (JSON `null`)."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    scores = _check_scores(scores, "scores", probs.shape[0], "probs")
    errs = misclassified(probs, labels)
    n_err = int(errs.sum())
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels, n_bins),
        "aurc": aurc(scores, errs),
        "misclassification_auroc": (misclassification_auroc(scores, errs)
                                    if 0 < n_err < errs.numel() else None),
    }


def ood_summary(id_scores: Mapping[str, object],
                ood_scores: Mapping[str, Mapping[str, object]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    r"""The `"ood"` block of `evaluation.json`.

    * `id_scores`: `{SCORE: [N_id] tensor}` on the in-distribution test set,
      e.g. `{"u": ..., "entropy": ..., "msp": ...}`.
    * `ood_scores`: `{SET: {SCORE: [N_set] tensor}}`, one entry per OOD set; every
      SCORE must also be in `id_scores`.

    Returns `{SET: {SCORE: {"auroc", "aupr", "fpr95"}}}`."""
    if not isinstance(id_scores, Mapping) or not id_scores:
        raise ValueError("`id_scores` must be a non-empty dict {score name: [N] tensor}, "
                         f"got {type(id_scores).__name__} {id_scores if isinstance(id_scores, Mapping) else ''}")
    if not isinstance(ood_scores, Mapping):
        raise ValueError(f"`ood_scores` must be a dict {{set name: {{score name: [N] tensor}}}}, "
                         f"got {type(ood_scores).__name__}")
    result: Dict[str, Dict[str, Dict[str, float]]] = {}
    for set_name, per_score in ood_scores.items():
        if not isinstance(per_score, Mapping) or not per_score:
            raise ValueError(f"`ood_scores[{set_name!r}]` must be a non-empty dict {{score name: [N] tensor}}")
        missing = sorted(set(per_score) - set(id_scores))
        if missing:
            raise ValueError(f"`ood_scores[{set_name!r}]` has score(s) {missing} that are not in `id_scores`; "
                             f"allowed: {sorted(id_scores)}")
        result[set_name] = {
            score: {
                "auroc": ood_auroc(id_scores[score], s),
                "aupr": ood_aupr(id_scores[score], s),
                "fpr95": fpr_at_95_tpr(id_scores[score], s),
            }
            for score, s in per_score.items()
        }
    return result
