"""
Predictions of a run, their uncertainty scores, and the arrays `predictions.npz` keeps.

Every score is "higher = less certain": the family's own (`Prediction.scores`: `u`, `mutual_information`,
...) and the two every prediction has, `entropy` $H(\\hat{p})$ and `msp` $1 - \\max_k \\hat{p}_k$, computed
here from the probabilities (on the CPU, from exactly the float32 array that is saved).
"""
from typing import Dict, Tuple

import numpy as np
import torch

from evidential import metrics
from evidential.prediction import Prediction

#: Scores computed from the probabilities of every prediction
PROBABILITY_SCORES = ('entropy', 'msp')
#: `predictions.npz` keys that are not scores
NOT_SCORES = ('probs', 'labels')


def all_scores(probs: torch.Tensor, own: Dict[str, torch.Tensor], primary: str = 'entropy') -> Dict[str, torch.Tensor]:
    """`{name: [N]}` CPU tensors: the family's `primary` score first when it is one of its own (`u`), then
    entropy and msp, then its other scores (`mutual_information`, ...)."""
    probs = probs.detach().cpu()
    own = {k: v.detach().cpu() for k, v in own.items()}
    out = {primary: own[primary]} if primary in own else {}
    out['entropy'] = metrics.entropy(probs)
    out['msp'] = metrics.max_prob_score(probs)
    out.update({k: v for k, v in own.items() if k not in out})
    return out


def prediction_arrays(prediction: Prediction) -> Dict[str, np.ndarray]:
    """What `predictions.npz` keeps of a prediction, as CPU float32 arrays: `probs` and the family's own scores."""
    arrays = {'probs': prediction.probs.detach().float().cpu().numpy()}
    for name, score in prediction.scores.items():
        if name in NOT_SCORES or name in PROBABILITY_SCORES:
            raise ValueError(f"a family's score may not be called {name!r}")
        arrays[name] = score.detach().float().cpu().numpy()
    return arrays


def scores_of_arrays(arrays: Dict[str, np.ndarray], primary: str = 'entropy') -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """`(probs, all scores)` of the arrays of one set in `predictions.npz` (the inverse of `prediction_arrays`)."""
    probs = torch.from_numpy(np.asarray(arrays['probs']))
    own = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k not in NOT_SCORES}
    return probs, all_scores(probs, own, primary)


def predict_images(conf, images: np.ndarray) -> Tuple[Prediction, torch.Tensor]:
    """The prediction (and raw outputs) for `uint8` images `[N, 28, 28]`, normalized as the run's training data."""
    from evidential.data import tensor_split
    device = conf.dataset.test.images.device
    split = tensor_split(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.long),
                         conf.dataset.name, device)
    outputs = conf.evaluate_outputs(split)
    return conf.predict(outputs), outputs
