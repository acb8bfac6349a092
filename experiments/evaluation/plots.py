"""The PNG figures of an evaluation, from the saved arrays and the sweeps' results (`experiments.figures` draws)."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from evidential import metrics
from experiments import figures

FIGURES = {
    'reliability': 'eval_reliability.png',
    'uncertainty_histograms': 'eval_uncertainty_histograms.png',
    'entropy_cdf': 'eval_entropy_cdf.png',
    'rotated_digit': 'eval_rotated_digit.png',
    'fgsm': 'eval_fgsm.png',
    'extreme_uncertainty': 'eval_extreme_uncertainty.png',
    'missing_pixels': 'eval_missing_pixels.png',
}


def write_figures(run_dir: Path, conf, test, id_arrays: Dict[str, np.ndarray], labels: np.ndarray,
                  ood_arrays: Dict[str, Dict[str, np.ndarray]], sweeps: Dict[str, Any],
                  test_evidence: Optional[torch.Tensor]) -> Tuple[Dict[str, str], List[str]]:
    """The PNG figures; returns `{figure: file name}` and notes on those skipped. A figure of an earlier
    evaluation that this one did not draw is removed."""
    from evidential.data import dataset_spec
    spec = dataset_spec(conf.dataset.name)
    written, notes = {}, []
    probs = id_arrays['probs']
    preds = probs.argmax(1)
    correct = preds == labels
    k = probs.shape[1]

    def path(key):
        written[key] = FIGURES[key]
        return run_dir / FIGURES[key]

    figures.reliability_diagram(probs, labels, path('reliability'))
    if 'u' in id_arrays:
        figures.uncertainty_histograms(id_arrays['u'][correct], id_arrays['u'][~correct],
                                       {name: a['u'] for name, a in ood_arrays.items() if 'u' in a},
                                       path('uncertainty_histograms'))
    else:
        notes.append('uncertainty histograms skipped: the model gives no uncertainty mass u')
    if ood_arrays:
        figures.entropy_cdf({name: metrics.entropy(torch.from_numpy(a['probs'])) for name, a in ood_arrays.items()},
                            path('entropy_cdf'), num_classes=k)
    else:
        notes.append('entropy CDF skipped: no out-of-distribution set')
    if 'rotation' in sweeps:
        r = sweeps['rotation']
        figures.rotation_plot(r['angles'], r['probs'], r['u'], r['_image'], path('rotated_digit'))
    else:
        notes.append('rotated-digit figure skipped: the model gives no evidence')
    if 'fgsm' in sweeps:
        f = sweeps['fgsm']
        figures.fgsm_plot(f['eps'], f['accuracy'], f['mean_entropy'], path('fgsm'), num_classes=k,
                          label=f"{conf.dataset.name} test, first {f['n_samples']}")
    if 'missing_pixels' in sweeps:
        figures.missing_pixels_plot({f"{conf.dataset.name} test": sweeps['missing_pixels']}, path('missing_pixels'),
                                    num_classes=k)
    if test_evidence is not None and 'u' in id_arrays:
        images = (test.images.cpu() * spec.std + spec.mean).clamp(0, 1)
        figures.extreme_uncertainty_grid(images, id_arrays['u'], test_evidence.cpu(), labels, preds,
                                         path('extreme_uncertainty'))
    else:
        notes.append('lowest/highest-u images skipped: the model gives no evidence and uncertainty mass')
    for key, name in FIGURES.items():
        if key not in written and (run_dir / name).exists():
            (run_dir / name).unlink()
    return written, notes
