"""
# Epistemic uncertainty against the training-set size

    python -m experiments.learning_curve logs/sweeps/train_size [--out FILE]

Reads a sweep over `train_size` (`sweeps/train_size.py`) once its runs are evaluated, and draws one panel per
method: the median of its epistemic score on the test set (in distribution) and on each OOD set, with the
quartiles as a band, against the number of training images (medians: a density score's mean is its few
largest values; a log scale where a curve spans more than two orders of magnitude). An epistemic score should shrink in distribution
as the data grows and stay high out of distribution (Shen et al. 2024 show that EDL's u does not shrink).

The epistemic score of a run is the first of its family's scores in `EPISTEMIC_SCORES` (`u` for the evidential
models, the feature density for DDU, the mutual information for ensembles and sampling families), else its
primary score. Writes `train_size.png` into the sweep folder (or `--out`) and prints the numbers.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

#: Which score of a run is its epistemic one: the first its predictions have
EPISTEMIC_SCORES = ('u', 'neg_log_feature_density', 'gp_variance', 'mutual_information', 'neg_log_density', 'entropy')


class CurveError(ValueError):
    """A sweep folder this verb cannot draw (no sweep.json, no evaluated run)."""


def _n_train(run_dir: Path) -> int:
    """The number of images the run trained on: `train_size`, or the training set after the holdout."""
    from evidential.data import load_split
    values = json.loads((run_dir / 'experiment.json').read_text())
    if values.get('train_size'):
        return int(values['train_size'])
    if values.get('data_dir'):
        root = Path(values['data_dir']).expanduser()
    else:  # trained on labml's data folder
        from experiments.benchmark import _lab_data_path
        root = Path(_lab_data_path())
    n = len(load_split(values.get('dataset', 'mnist'), root, train=True, download=False)[1])
    holdout = float(values.get('holdout', 0))
    return n - (max(1, int(round(n * holdout))) if holdout > 0 else 0)


def _method(run: Dict) -> str:
    """The run's label without the size and the seed: `evidence_mnist`, `evidence_mnist model=natpn`."""
    from experiments.sweep.plan import NOT_IDENTITY
    rest = [f'{k}={v}' for k, v in sorted(run.get('overrides', {}).items())
            if k not in ('train_size', 'seed') and k not in NOT_IDENTITY]
    return ' '.join([run['family']] + rest)


def collect(sweep_dir: Path) -> Dict[str, List[Tuple[int, str, Dict[str, np.ndarray]]]]:
    """`{method: [(n_train, score name, {set: scores}), ...]}` sorted by size, from the sweep's evaluated runs."""
    state_file = sweep_dir / 'sweep.json'
    if not state_file.is_file():
        raise CurveError(f"{sweep_dir}: no sweep.json (run `python -m experiments.sweep sweeps/train_size.py` first)")
    state = json.loads(state_file.read_text())
    split_file = 'predictions.npz' if state.get('split') == 'test' else 'predictions_validation.npz'
    curves: Dict[str, List] = {}
    for run in state.get('runs', []):
        run_dir = Path(run['run_dir']) if run.get('run_dir') else None
        if run.get('status') != 'done' or run_dir is None or not (run_dir / split_file).is_file():
            continue
        with np.load(run_dir / split_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        sets = sorted({k.split('/')[0] for k in arrays})
        name = next((n for n in EPISTEMIC_SCORES if f'id/{n}' in arrays), 'entropy')
        if name == 'entropy':  # not saved: computed from p̂, as `evaluate` does
            import torch
            from evidential.metrics import entropy
            for s in sets:
                arrays[f'{s}/entropy'] = entropy(torch.from_numpy(arrays[f'{s}/probs'])).numpy()
        scores = {s: arrays[f'{s}/{name}'] for s in sorted(sets, key=lambda s: s != 'id') if f'{s}/{name}' in arrays}
        curves.setdefault(_method(run), []).append((_n_train(run_dir), name, scores))
    if not curves:
        raise CurveError(f"{sweep_dir}: no evaluated run yet")
    return {m: _pool_seeds(points) for m, points in curves.items()}


def _pool_seeds(points):
    """One point per size, sorted: the runs of one size (several seeds) pooled into one set of scores each."""
    pooled = {}
    for n, name, scores in points:
        if n in pooled:
            pooled[n] = (n, name, {s: np.concatenate([pooled[n][2][s], v]) for s, v in scores.items()
                                   if s in pooled[n][2]})
        else:
            pooled[n] = (n, name, dict(scores))
    return [pooled[n] for n in sorted(pooled)]


def plot(curves, path: Path) -> Path:
    """Top row: the test set (in distribution); bottom row: the OOD sets; one column per method, each panel with
    its own scale (the scores of different methods are not comparable in size, their trends are)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(3.6 * len(curves), 5.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(curves), squeeze=False)
    for column, (method, points) in enumerate(curves.items()):
        sizes = [p[0] for p in points]
        sets = list(points[0][2])
        for row, shown in enumerate((['id'], [s for s in sets if s != 'id'])):
            ax = axes[row][column]
            for s, colour in zip(shown, ('tab:blue',) if row == 0 else ('tab:red', 'tab:green', 'tab:purple')):
                values = [p[2][s] for p in points if s in p[2]]
                ax.plot(sizes[:len(values)], [np.median(v) for v in values], 'o-', color=colour,
                        label='MNIST test' if s == 'id' else s.replace('_', '-'))
                ax.fill_between(sizes[:len(values)], [np.quantile(v, 0.25) for v in values],
                                [np.quantile(v, 0.75) for v in values], color=colour, alpha=0.15, linewidth=0)
            ax.set_xscale('log')
            medians = np.array([np.median(p[2][s]) for s in shown for p in points if s in p[2]])
            size = np.abs(medians[medians != 0]) if len(medians) else medians
            if len(size) and size.max() / size.min() > 1e2 and medians.min() > 0:
                ax.set_yscale('log')
            elif len(size) and size.max() / size.min() > 1e2:  # symmetric log where a median is negative
                from matplotlib.ticker import SymmetricalLogLocator
                ax.set_yscale('symlog', linthresh=size.min())
                ax.yaxis.set_major_locator(SymmetricalLogLocator(base=1000, linthresh=size.min()))
            ax.set_xticks(sizes, [f'{n:,}' for n in sizes])
            ax.minorticks_off()
            ax.set_ylabel(f'median {points[0][1]}')
            ax.legend(fontsize=7)
            if row == 0:
                ax.set_title(method, fontsize=9)
            else:
                ax.set_xlabel('training images')
    fig.suptitle('Epistemic score against training-set size (band: quartiles)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format='png', dpi=120)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked (argparse's usage error on a bad one); runs nothing."""
    parser = argparse.ArgumentParser(prog='python -m experiments.learning_curve',
                                     description='Epistemic score on in- and out-of-distribution sets against the '
                                                 'training-set size, from a sweep over train_size.')
    parser.add_argument('sweep_dir', type=Path, help='the sweep folder (logs/sweeps/train_size)')
    parser.add_argument('--out', type=Path, help='the PNG to write (default: SWEEP_DIR/train_size.png)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        curves = collect(args.sweep_dir)
    except (CurveError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for method, points in curves.items():
        print(f"{method} ({points[0][1]}):")
        for n, _, scores in points:
            print(f"  {n:>6,} images: " + ', '.join(f"{s} median {np.median(v):.4g} (mean {np.mean(v):.4g})"
                                                    for s, v in scores.items()))
    path = plot(curves, args.out or args.sweep_dir / 'train_size.png')
    print(f"figure: {path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
