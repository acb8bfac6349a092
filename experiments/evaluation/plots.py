"""The PNG figures of an evaluation, from the saved arrays and the perturbations' blocks (`experiments.figures`
draws; each perturbation draws its own)."""
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from evidential import metrics
from experiments import figures
from experiments.evaluation import perturbations, posthoc
from experiments.evaluation.predictions import scores_of_arrays

#: How the histograms' axis names a score
SCORE_NAMES = {'u': 'uncertainty mass u = K / S', 'entropy': 'entropy of p̂ (nats)', 'msp': '1 − max p̂',
               'mutual_information': 'mutual information (nats)', 'neg_log_density': '−log p(x)'}

#: The figures of every evaluation (the perturbations name theirs: `Perturbation.figure`)
FIGURES = {
    'reliability': 'eval_reliability.png',
    'uncertainty_histograms': 'eval_uncertainty_histograms.png',
    'entropy_cdf': 'eval_entropy_cdf.png',
    'extreme_uncertainty': 'eval_extreme_uncertainty.png',
}


def figure_files() -> Dict[str, str]:
    """`{figure key: file name}` of every figure an evaluation can draw."""
    return {**FIGURES, **dict(p.figure for p in perturbations.all_perturbations() if p.figure),
            **dict(s.figure for s in posthoc.all_steps() if s.figure)}


def write_figures(run_dir: Path, conf, test, id_arrays: Dict[str, np.ndarray], labels: np.ndarray,
                  ood_arrays: Dict[str, Dict[str, np.ndarray]], blocks: Dict[str, Any],
                  test_evidence: Optional[torch.Tensor], kept: Sequence[str] = (),
                  primary: str = 'entropy', posthoc_blocks: Optional[Dict[str, Any]] = None
                  ) -> Tuple[Dict[str, str], List[str]]:
    """The PNG figures; returns `{figure: file name}` and notes on those skipped. The figures of the `kept`
    perturbations (blocks kept from an earlier evaluation) stay as they are; any other figure of an earlier
    evaluation that this one did not draw is removed. The histograms show the family's `primary` score; the post-hoc
    steps draw theirs from `posthoc_blocks`."""
    from evidential.data import dataset_spec
    spec = dataset_spec(conf.dataset.name)
    files = figure_files()
    written, notes = {}, []
    probs = id_arrays['probs']
    preds = probs.argmax(1)
    correct = preds == labels
    k = probs.shape[1]

    def path(key):
        written[key] = files[key]
        return run_dir / files[key]

    figures.reliability_diagram(probs, labels, path('reliability'))
    _, id_scores = scores_of_arrays(id_arrays, primary)
    ood_scores = {name: scores_of_arrays(a, primary)[1] for name, a in ood_arrays.items()}
    score = id_scores[primary].numpy()
    figures.score_histograms(score[correct], score[~correct],
                             {name: s[primary].numpy() for name, s in ood_scores.items() if primary in s},
                             path('uncertainty_histograms'), name=SCORE_NAMES.get(primary, primary),
                             limits={'u': (0.0, 1.0), 'msp': (0.0, 1.0), 'entropy': (0.0, math.log(k))}.get(primary))
    if ood_arrays:
        figures.entropy_cdf({name: metrics.entropy(torch.from_numpy(a['probs'])) for name, a in ood_arrays.items()},
                            path('entropy_cdf'), num_classes=k)
    else:
        notes.append('entropy CDF skipped: no out-of-distribution set')
    for perturbation in perturbations.all_perturbations():
        if perturbation.figure and perturbation.name in kept:
            if (run_dir / perturbation.figure[1]).exists():
                written[perturbation.figure[0]] = perturbation.figure[1]
        elif perturbation.figure and perturbation.name in blocks:
            perturbation.draw(blocks[perturbation.name], path(perturbation.figure[0]), dataset=conf.dataset.name,
                              num_classes=k)
    for step in posthoc.all_steps():  # the post-hoc steps' figures (`eval_reliability_scaled.png`)
        if step.figure and step.name in (posthoc_blocks or {}):
            step.draw(posthoc_blocks[step.name], path(step.figure[0]), labels)
    if test_evidence is not None and 'u' in id_arrays:
        images = (test.images.cpu() * spec.std + spec.mean).clamp(0, 1)
        figures.extreme_uncertainty_grid(images, id_arrays['u'], test_evidence.cpu(), labels, preds,
                                         path('extreme_uncertainty'))
    else:
        notes.append('lowest/highest-u images skipped: the model gives no evidence and uncertainty mass')
    for key, name in files.items():
        if key not in written and (run_dir / name).exists():
            (run_dir / name).unlink()
    return written, notes
