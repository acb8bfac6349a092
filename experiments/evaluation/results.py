"""The metric blocks of `evaluation.json`, computed from the arrays saved in `predictions.npz`."""
from typing import Any, Dict

import numpy as np
import torch

from evidential import metrics
from experiments.evaluation.predictions import scores_of_arrays


def compute_metrics(id_arrays: Dict[str, np.ndarray], labels: np.ndarray,
                    ood_arrays: Dict[str, Dict[str, np.ndarray]], id_score: str = 'entropy') -> Dict[str, Any]:
    """
    `id` (accuracy, NLL, Brier, ECE, and AURC / misclassification AUROC ranked by `id_score`, the family's
    primary score), `ood` (`{SET: {SCORE: {auroc, aupr, fpr95}}}`, every score) and `selective` (AURC and
    misclassification AUROC for every score), plus `id_score` itself.
    """
    probs, id_scores = scores_of_arrays(id_arrays, id_score)
    if id_score not in id_scores:
        raise ValueError(f"the primary score {id_score!r} is not among the prediction's scores {list(id_scores)}")
    labels_t = torch.from_numpy(np.asarray(labels))
    result: Dict[str, Any] = {'id': metrics.summarize(probs, labels_t, id_scores[id_score])}
    ood_scores = {name: scores_of_arrays(a, id_score)[1] for name, a in ood_arrays.items()}
    result['ood'] = metrics.ood_summary(id_scores, ood_scores) if ood_scores else {}
    errors = metrics.misclassified(probs, labels_t)
    n_err = int(errors.sum())
    result['selective'] = {
        name: {'aurc': metrics.aurc(s, errors),
               'misclassification_auroc': (metrics.misclassification_auroc(s, errors)
                                           if 0 < n_err < errors.numel() else None)}
        for name, s in id_scores.items()}
    result['id_score'] = id_score
    return result
