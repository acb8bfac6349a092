"""
Missing pixels (cirkit's tutorial): accuracy, NLL and the mean of every score with 0-90 % of the pixels unknown
(uniformly at random) and with structured blocks missing. A circuit integrates the missing pixels out exactly;
every other family sees them filled with the background (black).
"""
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from experiments.evaluation.perturbations.base import Context, Perturbation, SampleOption, mean_curves

#: Fractions of missing pixels (the masks are nested: a pixel missing at 0.2 is missing at 0.3)
FRACTIONS = tuple(np.round(np.linspace(0.0, 0.9, 10), 1).tolist())
#: Seed of the masks: the same for every run, so that every family sees the same pixels removed
SEED = 0
#: Fractions whose accuracy is a `compare` column (`missing/0.2/accuracy`; all are in the figures)
COLUMN_FRACTIONS = (0.2, 0.5)


def _condition(conf, images, labels, missing) -> Dict[str, Any]:
    """Accuracy, NLL and the mean of every score with the `missing` `[N, 784]` pixels unknown."""
    import torch
    from evidential import metrics
    from experiments.evaluation.predictions import all_scores
    probs, own = [], []
    with torch.inference_mode():
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


class MissingPixels(Perturbation):
    name = 'missing_pixels'
    samples = SampleOption('missing-samples', 2000, 'test images of the missing-pixel sweep')
    figure = ('missing_pixels', 'eval_missing_pixels.png')
    comparison_figure = 'comparison_missing_pixels.png'

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        from evidential.perturbations import missing_masks, missing_patterns
        conf, test = ctx.conf, ctx.test
        n = ctx.n_samples(self)
        if n <= 0:
            return None
        conf.model.eval()
        images, labels = test.images[:n], test.labels[:n]
        n_pixels = images[0].numel()
        uniform = [_condition(conf, images, labels, mask)
                   for mask in missing_masks(n, n_pixels, FRACTIONS, SEED).values()]
        patterns = {name: {'fraction': mask.float().mean().item(),
                           **_condition(conf, images, labels, mask.expand(n, n_pixels))}
                    for name, mask in missing_patterns(int(round(n_pixels ** 0.5))).items()}
        return {'n_samples': n, 'seed': SEED,
                'missing_pixels': ('integrated out exactly' if ctx.capabilities.marginalises_missing
                                   else 'filled with the background (black, pixel value 0)'),
                'fractions': list(FRACTIONS),
                'accuracy': [c['accuracy'] for c in uniform], 'nll': [c['nll'] for c in uniform],
                'mean_score': {name: [c['mean_score'][name] for c in uniform] for name in uniform[0]['mean_score']},
                'patterns': patterns}

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        from experiments.figures import missing_pixels_plot
        missing_pixels_plot({f"{dataset} test": block}, path, num_classes=num_classes)

    def column_names(self) -> List[str]:
        return [f'missing/{f:g}/accuracy' for f in COLUMN_FRACTIONS]

    def columns(self, block: Dict[str, Any]) -> Dict[str, Any]:
        return {f'missing/{f:g}/accuracy': block['accuracy'][block['fractions'].index(f)] for f in COLUMN_FRACTIONS}

    def layout(self, block: Dict[str, Any]) -> Any:
        return block['n_samples']

    def mean_over_seeds(self, blocks: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        if len({repr([b['fractions'], b['n_samples'], sorted(b['patterns'])]) for b in blocks}) > 1:
            return None
        first = blocks[0]
        return {**first, 'accuracy': mean_curves([b['accuracy'] for b in blocks]),
                'mean_score': {'entropy': mean_curves([b['mean_score']['entropy'] for b in blocks])},
                'patterns': {n: {'accuracy': statistics.fmean(b['patterns'][n]['accuracy'] for b in blocks)}
                             for n in first['patterns']}}

    def draw_comparison(self, curves: Dict[str, Dict[str, Any]], path: Path) -> None:
        from experiments.figures import missing_pixels_plot
        missing_pixels_plot(curves, path)


PERTURBATION = MissingPixels()
