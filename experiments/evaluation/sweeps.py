"""
Sweeps: evaluations that perturb the test inputs and record how the prediction changes.

Each `Sweep` says which families it applies to (from their `Capabilities`) and why it is skipped
otherwise; `run_sweeps` runs those that apply and returns `{sweep name: JSON block}` plus notes.
Add a sweep by appending to `SWEEPS`.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from configs.registry import Capabilities

#: FGSM step sizes in pixel units (images in [0, 1]), as in the EDL paper's Fig. 4
FGSM_EPS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())
#: Rotation angles of the rotated-digit experiment (EDL paper, Fig. 3)
ROTATION_ANGLES = tuple(np.linspace(0.0, 180.0, 19).tolist())
#: The digit the paper rotates
ROTATION_CLASS = 1


@dataclass(frozen=True)
class SweepContext:
    """What a sweep gets: the rebuilt run, its test split, the predicted classes and the command's options."""
    conf: Any
    test: Any
    preds: torch.Tensor
    fgsm_samples: int


@dataclass(frozen=True)
class Sweep:
    name: str
    # Whether the sweep applies to a family with these capabilities
    applies: Callable[[Capabilities], bool]
    # Why it was skipped where it does not apply (`None`: skipped silently)
    skipped: Optional[str]
    run: Callable[[SweepContext], Optional[Dict[str, Any]]]


def _fgsm(ctx: SweepContext) -> Optional[Dict[str, Any]]:
    """FGSM (Fig. 4) on the prediction itself (MC dropout: T sampled passes; ensembles: every member).
    Inputs are normalized, so the pixel step eps is eps / std and the valid pixel range [0, 1] is
    [(0 - mean) / std, (1 - mean) / std]."""
    from evidential.data import dataset_spec
    from experiments import figures
    conf, test = ctx.conf, ctx.test
    spec = dataset_spec(conf.dataset.name)
    n = min(ctx.fgsm_samples, len(test))
    if n <= 0:
        return None
    sweep = figures.fgsm_sweep(lambda x: conf.predict(conf.eval_forward(x)).probs,
                               test.images[:n], test.labels[:n], [e / spec.std for e in FGSM_EPS],
                               clamp=((0 - spec.mean) / spec.std, (1 - spec.mean) / spec.std),
                               batch_size=conf.valid_batch_size)
    return {'eps': list(FGSM_EPS), 'eps_units': 'pixel intensity, images in [0, 1]',
            'n_samples': n, 'accuracy': sweep.accuracy.tolist(), 'mean_entropy': sweep.mean_entropy.tolist()}


def _rotation(ctx: SweepContext) -> Dict[str, Any]:
    """Rotated digit (Fig. 3): rotate in pixel space (zero = black background), normalize for the model."""
    from evidential.data import dataset_spec
    from experiments import figures
    conf, test = ctx.conf, ctx.test
    spec = dataset_spec(conf.dataset.name)
    candidates = (test.labels == ROTATION_CLASS).nonzero().flatten()
    index = int(candidates[0]) if len(candidates) else 0
    image = test.images[index] * spec.std + spec.mean  # back to [0, 1]

    def predict_fn(x):
        pred = conf.predict(conf.model((x - spec.mean) / spec.std))
        return pred.probs, pred.scores['u']

    rot = figures.rotated_digit_sweep(predict_fn, image, ROTATION_ANGLES)
    return {'test_index': index, 'label': int(test.labels[index]),
            'prediction_unrotated': int(ctx.preds[index]),
            'angles': rot.angles.tolist(), 'probs': rot.probs.cpu().tolist(), 'u': rot.u.cpu().tolist(),
            '_image': image.cpu()}


SWEEPS: List[Sweep] = [
    Sweep('fgsm', lambda c: c.input_gradients, 'FGSM sweep skipped: the model is not differentiable in its input',
          _fgsm),
    # its skip is noted with the figures (`plots.write_figures`)
    Sweep('rotation', lambda c: c.dirichlet, None, _rotation),
]


def run_sweeps(capabilities: Capabilities, ctx: SweepContext) -> Tuple[Dict[str, Any], List[str]]:
    """`{sweep name: result}` of every sweep that applies (keys starting with `_` are for figures only), and
    notes on those skipped."""
    out, notes = {}, []
    for sweep in SWEEPS:
        if not sweep.applies(capabilities):
            if sweep.skipped:
                notes.append(sweep.skipped)
            continue
        result = sweep.run(ctx)
        if result is not None:
            out[sweep.name] = result
    return out, notes
