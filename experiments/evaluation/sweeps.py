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
#: Fractions of missing pixels (uniformly random; the masks are nested: a pixel missing at 0.2 is missing at 0.3)
MISSING_FRACTIONS = tuple(np.round(np.linspace(0.0, 0.9, 10), 1).tolist())
#: Seed of the missing-pixel masks: the same for every run, so that every family sees the same pixels removed
MISSING_SEED = 0


def missing_patterns(side: int = 28) -> Dict[str, torch.Tensor]:
    """The structured patterns of the missing-pixel sweep: `{name: [side * side]}` boolean masks, true = missing."""
    half, quarter = side // 2, side // 4
    grid = torch.zeros(side, side, dtype=torch.bool)
    patterns = {name: grid.clone() for name in ('top_half', 'bottom_half', 'left_half', 'right_half', 'centre_square')}
    patterns['top_half'][:half] = True
    patterns['bottom_half'][half:] = True
    patterns['left_half'][:, :half] = True
    patterns['right_half'][:, half:] = True
    patterns['centre_square'][quarter:side - quarter, quarter:side - quarter] = True
    return {name: mask.flatten() for name, mask in patterns.items()}


@dataclass(frozen=True)
class SweepContext:
    """What a sweep gets: the rebuilt run, its test split, the predicted classes and the command's options."""
    conf: Any
    test: Any
    preds: torch.Tensor
    fgsm_samples: int
    missing_samples: int = 2000
    capabilities: Capabilities = Capabilities()


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


@torch.inference_mode()
def _missing_condition(conf, images: torch.Tensor, labels: torch.Tensor, missing: torch.Tensor) -> Dict[str, Any]:
    """Accuracy, NLL and the mean of every score with the `missing` `[N, 784]` pixels unknown."""
    from evidential import metrics
    from experiments.evaluation.predictions import all_scores
    probs, own = [], []
    for start in range(0, len(images), conf.valid_batch_size):
        end = start + conf.valid_batch_size
        pred = conf.predict(conf.eval_forward_missing(images[start:end], missing[start:end].to(images.device)))
        probs.append(pred.probs.float().cpu())
        own.append({k: v.float().cpu() for k, v in pred.scores.items()})
    p = torch.cat(probs)
    scores = all_scores(p, {k: torch.cat([o[k] for o in own]) for k in own[0]})
    y = labels.cpu()
    return {'accuracy': metrics.accuracy(p, y), 'nll': metrics.nll(p, y),
            'mean_score': {name: v.mean().item() for name, v in scores.items()}}


def _missing_pixels(ctx: SweepContext) -> Optional[Dict[str, Any]]:
    """Missing pixels (cirkit's tutorial): uniformly random fractions and structured patterns. A circuit integrates
    the missing pixels out exactly; every other model sees them filled with the background (black)."""
    conf, test = ctx.conf, ctx.test
    n = min(ctx.missing_samples, len(test))
    if n <= 0:
        return None
    conf.model.eval()
    images, labels = test.images[:n], test.labels[:n]
    n_pixels = images[0].numel()
    # One uniform number per pixel: the masks `u < f` are nested across fractions
    u = torch.rand(n, n_pixels, generator=torch.Generator().manual_seed(MISSING_SEED))
    uniform = [_missing_condition(conf, images, labels, u < f) for f in MISSING_FRACTIONS]
    patterns = {name: {'fraction': mask.float().mean().item(),
                       **_missing_condition(conf, images, labels, mask.expand(n, n_pixels))}
                for name, mask in missing_patterns(int(round(n_pixels ** 0.5))).items()}
    return {'n_samples': n, 'seed': MISSING_SEED,
            'missing_pixels': ('integrated out exactly' if ctx.capabilities.marginalises_missing
                               else 'filled with the background (black, pixel value 0)'),
            'fractions': list(MISSING_FRACTIONS),
            'accuracy': [c['accuracy'] for c in uniform], 'nll': [c['nll'] for c in uniform],
            'mean_score': {name: [c['mean_score'][name] for c in uniform] for name in uniform[0]['mean_score']},
            'patterns': patterns}


SWEEPS: List[Sweep] = [
    Sweep('fgsm', lambda c: c.input_gradients, 'FGSM sweep skipped: the model is not differentiable in its input',
          _fgsm),
    # its skip is noted with the figures (`plots.write_figures`)
    Sweep('rotation', lambda c: c.dirichlet, None, _rotation),
    # every family: the circuit integrates the missing pixels out, the others see the background there
    Sweep('missing_pixels', lambda c: True, None, _missing_pixels),
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
