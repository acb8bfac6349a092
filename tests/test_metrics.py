"""Tests for `evidential.metrics`.

Each metric is checked (1) against a value worked out by hand on a tiny input
(the arithmetic is in the comments) and (2) against an independent
implementation on random inputs: scikit-learn where it has the metric, and a
hand-written numpy version for ECE and AURC.
"""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from evidential import metrics as M

# Four samples, two classes, used by the hand computations below.
#   sample  p̂            y   ŷ   correct   max p̂
#   A       [0.9, 0.1]    0   0   yes       0.9
#   B       [0.9, 0.1]    1   0   no        0.9
#   C       [0.3, 0.7]    1   1   yes       0.7
#   D       [0.3, 0.7]    1   1   yes       0.7
P4 = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.3, 0.7]], dtype=torch.float64)
Y4 = torch.tensor([0, 1, 1, 1])


def random_problem(n=500, k=10, seed=0, concentration=0.3):
    """Random Dirichlet probabilities and labels that agree with the argmax
    about 70% of the time, so there are both errors and correct predictions."""
    g = np.random.default_rng(seed)
    probs = g.dirichlet(np.full(k, concentration), size=n)
    labels = np.where(g.random(n) < 0.7, probs.argmax(1), g.integers(0, k, n))
    return torch.tensor(probs), torch.tensor(labels)


# ## Hand-computed values

def test_accuracy_by_hand():
    # A, C, D right, B wrong: 3 / 4
    assert M.accuracy(P4, Y4) == 0.75


def test_nll_by_hand():
    # p̂ of the true class: A 0.9, B 0.1, C 0.7, D 0.7
    # NLL = -(ln 0.9 + ln 0.1 + 2 ln 0.7) / 4 = (0.10536 + 2.30259 + 2 * 0.35667) / 4 = 0.78032
    expected = -(math.log(0.9) + math.log(0.1) + 2 * math.log(0.7)) / 4
    assert M.nll(P4, Y4) == pytest.approx(expected, abs=1e-12)
    assert M.nll(P4, Y4) == pytest.approx(0.78032, abs=1e-5)


def test_brier_by_hand():
    # A: (0.9-1)^2 + 0.1^2       = 0.01 + 0.01 = 0.02
    # B: 0.9^2 + (0.1-1)^2       = 0.81 + 0.81 = 1.62
    # C, D: 0.3^2 + (0.7-1)^2    = 0.09 + 0.09 = 0.18 each
    # mean = (0.02 + 1.62 + 0.36) / 4 = 2.0 / 4 = 0.5
    assert M.brier(P4, Y4) == pytest.approx(0.5, abs=1e-12)


def test_ece_by_hand():
    # 15 bins of width 1/15. max p̂ = 0.9 -> bin 13 = [13/15, 14/15) = [0.867, 0.933): A (right), B (wrong)
    #                         max p̂ = 0.7 -> bin 10 = [10/15, 11/15) = [0.667, 0.733): C, D (both right)
    # bin 13: |acc - conf| = |0.5 - 0.9| = 0.4, weight 2/4 -> 0.2
    # bin 10: |acc - conf| = |1.0 - 0.7| = 0.3, weight 2/4 -> 0.15
    # ECE = 0.35
    assert M.ece(P4, Y4) == pytest.approx(0.35, abs=1e-6)
    # With 1 bin everything is together: |acc - mean conf| = |0.75 - 0.8| = 0.05
    assert M.ece(P4, Y4, n_bins=1) == pytest.approx(0.05, abs=1e-6)


def test_entropy_and_msp_by_hand():
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    # H([.5, .5, 0]) = ln 2 (0 ln 0 = 0); H(one-hot) = 0; H(uniform over 3) = ln 3
    assert M.entropy(probs).tolist() == pytest.approx([math.log(2), 0.0, math.log(3)], abs=1e-12)
    # 1 - max p̂: 0.5, 0, 2/3
    assert M.max_prob_score(probs).tolist() == pytest.approx([0.5, 0.0, 2 / 3], abs=1e-12)


def test_aurc_by_hand_perfect_ranking():
    # Sorted by score (most certain first), errors are 0, 0, 1, 1.
    # risk r_k = cumulative errors / k = 0/1, 0/2, 1/3, 2/4
    # AURC = (sum r - (r_1 + r_N) / 2) / (N - 1) = (0 + 0 + 1/3 + 1/2 - 1/4) / 3 = (7/12) / 3 = 7/36
    assert M.aurc([0.1, 0.2, 0.3, 0.4], [False, False, True, True]) == pytest.approx(7 / 36, abs=1e-12)


def test_aurc_by_hand_worst_ranking():
    # errors in order 1, 1, 0, 0: r = 1, 1, 2/3, 1/2
    # AURC = (1 + 1 + 2/3 + 1/2 - (1 + 1/2) / 2) / 3 = (19/6 - 3/4) / 3 = (29/12) / 3 = 29/36
    assert M.aurc([0.1, 0.2, 0.3, 0.4], [True, True, False, False]) == pytest.approx(29 / 36, abs=1e-12)


def test_aurc_by_hand_with_a_tie():
    # scores 0.1, 0.2, 0.2, 0.3 with errors 0, 1, 0, 1: the middle two are tied.
    # Expected cumulative errors over the two orders of the tie: k=1: 0, k=2: 0 + 1/2, k=3: 1, k=4: 2
    # r = 0, 1/4, 1/3, 1/2;  AURC = (0 + 1/4 + 1/3 + 1/2 - (0 + 1/2)/2) / 3 = (13/12 - 3/12) / 3 = 5/18
    # Same as averaging over the two orders of the tie (AURC is linear in the cumulative errors):
    #   errors 0,1,0,1: r = 0, 1/2, 1/3, 1/2 -> (4/3 - 1/4) / 3 = 13/36
    #   errors 0,0,1,1: r = 0, 0,   1/3, 1/2 -> 7/36;   mean = 20/72 = 5/18
    assert M.aurc([0.1, 0.2, 0.2, 0.3], [0, 1, 0, 1]) == pytest.approx(5 / 18, abs=1e-12)
    # ... and that the input order inside the tie does not matter
    assert M.aurc([0.1, 0.2, 0.2, 0.3], [0, 0, 1, 1]) == pytest.approx(5 / 18, abs=1e-12)


def test_ood_metrics_by_hand():
    id_s, ood_s = [0.1, 0.4], [0.35, 0.8]
    # AUROC: OOD-vs-ID pairs where OOD scores higher: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); not (0.35 > 0.4)
    # -> 3 / 4
    assert M.ood_auroc(id_s, ood_s) == pytest.approx(0.75, abs=1e-6)
    # AP: ranked 0.8 (OOD), 0.4 (ID), 0.35 (OOD), 0.1 (ID)
    # recall steps 0 -> 1/2 at precision 1/1, 1/2 -> 1 at precision 2/3: AP = 1/2 + 1/3 = 5/6
    assert M.ood_aupr(id_s, ood_s) == pytest.approx(5 / 6, abs=1e-6)
    # 95% of 2 OOD samples needs both: threshold 0.35 flags ID 0.4 -> FPR = 1/2
    assert M.fpr_at_95_tpr(id_s, ood_s) == 0.5


def test_fpr95_takes_first_point_reaching_95_percent():
    # 20 OOD samples at 1..20, ID samples at 0.5, 2.5, 10.5, 19.5.
    # TPR >= 95% means at least 19 of 20 flagged: threshold 2 (flags OOD 2..20).
    # ID above threshold 2: 2.5, 10.5, 19.5 -> FPR = 3/4.
    # Not interpolated, not the closest point: threshold 1 also reaches TPR >= 95% (100%)
    # but with FPR 1, and the point before (TPR 18/20 = 90%, FPR 2/4) does not qualify.
    ood = np.arange(1, 21, dtype=float)
    id_ = np.array([0.5, 2.5, 10.5, 19.5])
    assert M.fpr_at_95_tpr(id_, ood) == 0.75


def test_misclassification_auroc_by_hand():
    # wrong (positive) scores: 0.8, 0.3; right (negative) scores: 0.1, 0.5
    # pairs wrong > right: 0.8>0.1, 0.8>0.5, 0.3>0.1; not 0.3>0.5 -> 3/4
    scores = torch.tensor([0.8, 0.1, 0.3, 0.5])
    errors = torch.tensor([True, False, True, False])
    assert M.misclassification_auroc(scores, errors) == pytest.approx(0.75, abs=1e-6)


# ## Against independent implementations on random inputs

@pytest.mark.parametrize("seed", [0, 1])
def test_nll_matches_sklearn_log_loss(seed):
    probs, labels = random_problem(seed=seed, concentration=1.0)
    expected = log_loss(labels.numpy(), probs.numpy(), labels=list(range(10)))
    assert M.nll(probs, labels) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_and_brier_match_numpy(seed):
    probs, labels = random_problem(seed=seed)
    p, y = probs.numpy(), labels.numpy()
    assert M.accuracy(probs, labels) == pytest.approx(np.mean(p.argmax(1) == y), abs=1e-12)
    one_hot = np.eye(10)[y]
    assert M.brier(probs, labels) == pytest.approx(np.mean(((p - one_hot) ** 2).sum(1)), abs=1e-12)


def numpy_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Second implementation: bins [b/M, (b+1)/M), plus {1.0} as its own bin
    (the torchmetrics convention documented in `M.ece`)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    bin_of = np.minimum(np.floor(conf * n_bins).astype(int), n_bins)  # conf == 1 -> bin n_bins
    total = 0.0
    for b in range(n_bins + 1):
        mask = bin_of == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return total


@pytest.mark.parametrize("seed,n_bins", [(0, 15), (1, 15), (2, 7)])
def test_ece_matches_numpy_implementation(seed, n_bins):
    probs, labels = random_problem(seed=seed)
    expected = numpy_ece(probs.numpy(), labels.numpy(), n_bins)
    assert M.ece(probs, labels, n_bins) == pytest.approx(expected, abs=1e-5)


def test_calibration_bins_reproduce_ece():
    probs, labels = random_problem(seed=3)
    bins = M.calibration_bins(probs, labels)
    n = bins["count"].sum()
    assert n == 500
    from_bins = (bins["count"] / n * (bins["accuracy"] - bins["confidence"]).abs()).sum().item()
    assert from_bins == pytest.approx(M.ece(probs, labels), abs=1e-5)


def numpy_aurc(scores: np.ndarray, errors: np.ndarray) -> float:
    """TorchUncertainty's AURC (no ties): risk of the k most certain samples,
    trapezoid over coverage k/N, divided by (1 - 1/N)."""
    n = len(scores)
    e = errors[np.argsort(scores, kind="stable")].astype(float)
    risk = np.cumsum(e) / np.arange(1, n + 1)
    coverage = np.arange(1, n + 1) / n
    return np.trapezoid(risk, coverage) / (1 - 1 / n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aurc_matches_numpy_implementation(seed):
    probs, labels = random_problem(seed=seed)
    scores = M.entropy(probs)
    errors = probs.argmax(1) != labels
    expected = numpy_aurc(scores.numpy(), errors.numpy())
    assert M.aurc(scores, errors) == pytest.approx(expected, abs=1e-12)


def test_aurc_with_ties_is_mean_over_tie_orders():
    # Average over many random tie-breaks converges to the tie-aware value.
    g = np.random.default_rng(0)
    scores = g.integers(0, 4, 40).astype(float)  # lots of ties
    errors = g.random(40) < 0.4
    draws = []
    for _ in range(3000):
        jitter = g.random(40) * 1e-3  # random order inside tie groups, same order across groups
        draws.append(numpy_aurc(scores + jitter, errors))
    assert M.aurc(scores, errors) == pytest.approx(np.mean(draws), abs=3e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_ood_metrics_match_sklearn(seed):
    g = np.random.default_rng(seed)
    id_s = g.normal(0.0, 1.0, 300)
    ood_s = g.normal(1.0, 1.5, 200)
    y = np.r_[np.zeros(300), np.ones(200)]
    s = np.r_[id_s, ood_s]
    assert M.ood_auroc(id_s, ood_s) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert M.ood_aupr(id_s, ood_s) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert M.fpr_at_95_tpr(id_s, ood_s) == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")], abs=1e-9)


def test_ood_metrics_match_sklearn_with_ties_and_large_scores():
    # Scores far outside [0, 1] with ties: torchmetrics would apply a sigmoid and
    # saturate them; the rank-preserving rescale must keep sklearn's values.
    g = np.random.default_rng(5)
    id_s = np.round(g.normal(100.0, 20.0, 200))
    ood_s = np.round(g.normal(130.0, 20.0, 150))
    y = np.r_[np.zeros(200), np.ones(150)]
    s = np.r_[id_s, ood_s]
    assert M.ood_auroc(id_s, ood_s) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert M.ood_aupr(id_s, ood_s) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert M.fpr_at_95_tpr(id_s, ood_s) == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")], abs=1e-9)


def test_misclassification_auroc_matches_sklearn():
    probs, labels = random_problem(seed=4)
    scores = M.max_prob_score(probs)
    errors = probs.argmax(1) != labels
    expected = roc_auc_score(errors.numpy(), scores.numpy())
    assert M.misclassification_auroc(scores, errors) == pytest.approx(expected, abs=1e-6)


def test_entropy_matches_numpy():
    probs, _ = random_problem(seed=6)
    p = probs.numpy()
    assert M.entropy(probs).numpy() == pytest.approx(-(p * np.log(p)).sum(1), abs=1e-12)


# ## Edge cases

def test_all_correct():
    probs = torch.tensor([[0.8, 0.2], [0.1, 0.9], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    assert M.accuracy(probs, labels) == 1.0
    assert M.aurc(M.entropy(probs), probs.argmax(1) != labels) == 0.0
    with pytest.raises(ValueError, match="only one class"):
        M.misclassification_auroc(M.entropy(probs), probs.argmax(1) != labels)
    summary = M.summarize(probs, labels, M.entropy(probs))
    assert summary["misclassification_auroc"] is None
    assert summary["accuracy"] == 1.0


def test_constant_scores():
    errors = torch.tensor([True, False, False, True, False])
    const = torch.full((5,), 0.3)
    assert M.misclassification_auroc(const, errors) == 0.5
    # every risk r_k equals the error rate 2/5
    assert M.aurc(const, errors) == pytest.approx(0.4, abs=1e-12)
    id_s, ood_s = [7.0] * 6, [7.0] * 4
    assert M.ood_auroc(id_s, ood_s) == 0.5
    assert M.ood_aupr(id_s, ood_s) == pytest.approx(0.4, abs=1e-6)  # fraction of OOD
    assert M.fpr_at_95_tpr(id_s, ood_s) == 1.0


def test_perfect_separation():
    id_s, ood_s = [0.0, 0.1, 0.2], [0.5, 0.9]
    assert M.ood_auroc(id_s, ood_s) == 1.0
    assert M.ood_aupr(id_s, ood_s) == 1.0
    assert M.fpr_at_95_tpr(id_s, ood_s) == 0.0
    # reversed: OOD scores lower than all ID
    assert M.ood_auroc(ood_s, id_s) == 0.0
    assert M.fpr_at_95_tpr(ood_s, id_s) == 1.0
    errors = torch.tensor([False, False, True, True])
    assert M.misclassification_auroc(torch.tensor([0.1, 0.2, 0.7, 0.8]), errors) == 1.0
    # perfect ranking: the AURC of the oracle, strictly below the error rate 1/2
    assert M.aurc(torch.tensor([0.1, 0.2, 0.7, 0.8]), errors) == pytest.approx(7 / 36, abs=1e-12)


def test_ood_metrics_need_both_sets_non_empty():
    with pytest.raises(ValueError, match="id_scores.*empty"):
        M.ood_auroc([], [0.1, 0.2])
    with pytest.raises(ValueError, match="ood_scores.*empty"):
        M.fpr_at_95_tpr([0.1], [])


def test_misclassification_auroc_all_wrong_raises():
    with pytest.raises(ValueError, match="only one class.*wrong prediction"):
        M.misclassification_auroc([0.1, 0.2], [True, True])


@pytest.mark.parametrize("probs,labels,match", [
    (torch.rand(4), torch.zeros(4, dtype=torch.long), r"shape \[N, K\]"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "empty"),
    (torch.ones(3, 1), torch.zeros(3, dtype=torch.long), "at least K = 2"),
    (torch.tensor([[0.5, 0.6], [0.5, 0.5]]), torch.tensor([0, 1]), "row 0 sums to 1.1"),
    (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), r"must lie in \[0, 1\]"),
    (torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]), "NaN"),
    (torch.tensor([[1, 0]]), torch.tensor([0]), "floating point"),
    (P4, torch.tensor([0, 1, 2, 1]), r"must lie in \[0, 1\] for K = 2"),
    (P4, torch.tensor([0, 1, -1, 1]), r"must lie in \[0, 1\] for K = 2"),
    (P4, torch.tensor([0, 1, 1]), "3 entries but `probs` has 4"),
    (P4, torch.tensor([0.0, 1.0, 1.0, 1.0]), "integer"),
])
def test_invalid_probs_and_labels(probs, labels, match):
    for fn in (M.accuracy, M.nll, M.brier, M.ece):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


def test_invalid_scores_and_errors():
    with pytest.raises(ValueError, match="4 entries but `scores` has 3"):
        M.aurc([0.1, 0.2, 0.3], [True, False, True, False])
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.aurc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="at least 2 samples"):
        M.aurc([0.1], [True])
    with pytest.raises(ValueError, match="NaN or inf"):
        M.misclassification_auroc([0.1, float("inf")], [True, False])
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        M.ood_auroc(torch.zeros(2, 2), [0.1])
    with pytest.raises(ValueError, match="positive integer"):
        M.ece(P4, Y4, n_bins=0)


def test_probs_tolerance_accepts_float32_rounding():
    # α / S in float32 sums to 1 only up to rounding: accepted.
    alpha = torch.rand(100, 10) * 50 + 1
    probs = alpha / alpha.sum(1, keepdim=True)
    assert 0.0 <= M.accuracy(probs, torch.randint(0, 10, (100,))) <= 1.0


# ## JSON helpers

def test_summarize_matches_individual_metrics_and_is_json():
    probs, labels = random_problem(seed=7)
    u = M.max_prob_score(probs)
    summary = M.summarize(probs, labels, u)
    assert tuple(summary) == M.ID_KEYS
    errors = probs.argmax(1) != labels
    assert summary == {
        "accuracy": M.accuracy(probs, labels),
        "nll": M.nll(probs, labels),
        "brier": M.brier(probs, labels),
        "ece": M.ece(probs, labels),
        "aurc": M.aurc(u, errors),
        "misclassification_auroc": M.misclassification_auroc(u, errors),
    }
    assert all(isinstance(v, float) for v in summary.values())
    json.dumps(summary, allow_nan=False)


def test_summarize_rejects_mismatched_scores():
    with pytest.raises(ValueError, match="`scores` has 3 entries but `probs` has 4"):
        M.summarize(P4, Y4, torch.rand(3))


def test_ood_summary_shape_and_values():
    g = np.random.default_rng(8)
    id_scores = {"u": torch.tensor(g.random(50)), "entropy": torch.tensor(g.random(50))}
    ood_scores = {
        "fashion": {"u": torch.tensor(g.random(30) + 0.5), "entropy": torch.tensor(g.random(30))},
        "noise": {"u": torch.tensor(g.random(20) + 1.0)},
    }
    out = M.ood_summary(id_scores, ood_scores)
    assert set(out) == {"fashion", "noise"}
    assert set(out["fashion"]) == {"u", "entropy"} and set(out["noise"]) == {"u"}
    for per_score in out.values():
        for values in per_score.values():
            assert tuple(values) == M.OOD_KEYS
    assert out["noise"]["u"] == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    assert out["fashion"]["entropy"]["auroc"] == M.ood_auroc(id_scores["entropy"], ood_scores["fashion"]["entropy"])
    json.dumps(out, allow_nan=False)


def test_ood_summary_rejects_unknown_score():
    with pytest.raises(ValueError, match=r"score\(s\) \['msp'\] that are not in `id_scores`; allowed: \['u'\]"):
        M.ood_summary({"u": [0.1, 0.2]}, {"svhn": {"msp": [0.3]}})
    with pytest.raises(ValueError, match="non-empty dict"):
        M.ood_summary({}, {})
