"""
Figures of the shifted test sets: MNIST-C for one run and for several (`compare`), and a user's own
`--shift-file` sets. Plots only, like `experiments/figures.py`: each reads a block of `evaluation.json`, writes
one PNG with matplotlib's object-oriented API and the Agg canvas, and returns its path.
"""
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120


def _save(fig: Figure, path) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    fig.savefig(path, format='png', dpi=DPI, bbox_inches='tight')
    return path


def _severity_curve(block: Mapping[str, Any], metric: str, score: bool = False):
    """`(severities 0..5, values)`: the clean images at 0, then the mean over the graded corruptions."""
    severities = [0] + [int(s) for s in block['by_severity']]
    if score:
        values = [block['clean']['mean_score'][metric]] + [v['mean_score'][metric]
                                                           for v in block['by_severity'].values()]
    else:
        values = [block['clean'][metric]] + [v[metric] for v in block['by_severity'].values()]
    return severities, values


def mnist_c_plot(block: Mapping[str, Any], path, *, title: str) -> Path:
    """
    One run's MNIST-C block: accuracy, ECE and the mean of the family's primary score against the severity
    (0: the clean images; thin lines: each graded corruption, thick: their mean), and below, per corruption at
    MNIST-C's setting (severity 3), the accuracy and the AUROC by which the primary score tells the corrupted
    images from their clean copies.
    """
    score = block['aurc_score']
    fig = Figure(figsize=(13, 8))
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 1.1), hspace=0.45, wspace=0.28)
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    for ax, (metric, is_score, label) in zip(axes, (('accuracy', False, 'accuracy'), ('ece', False, 'ECE'),
                                                    (score, True, f'mean {score}'))):
        for corruption in block['graded']:
            per = block['corruptions'][corruption]
            values = [block['clean']['mean_score'][metric] if is_score else block['clean'][metric]]
            values += [per[s]['mean_score'][metric] if is_score else per[s][metric] for s in block['by_severity']]
            ax.plot(range(len(values)), values, color='0.75', linewidth=0.8)
        x, y = _severity_curve(block, metric, is_score)
        ax.plot(x, y, marker='o', color='C0', linewidth=2.2, label='mean over the graded corruptions')
        ax.axvline(block['mnist_c_severity'], color='0.5', linestyle=':', linewidth=1)
        ax.set_xticks(x, ['clean'] + [str(s) for s in x[1:]])
        ax.set_xlabel('severity (3: MNIST-C)')
        ax.set_ylabel(label)
        if metric == 'accuracy':
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, loc='lower left')
    bars = fig.add_subplot(grid[1, :])
    at = str(block['mnist_c_severity'])
    names = list(block['corruptions'])
    positions = np.arange(len(names))
    accuracy = [block['corruptions'][c][at]['accuracy'] for c in names]
    auroc = [block['corruptions'][c][at]['auroc'][score] for c in names]
    bars.bar(positions - 0.2, accuracy, 0.4, color='C0', label='accuracy')
    bars.bar(positions + 0.2, auroc, 0.4, color='C1', label=f'AUROC corrupted vs clean by {score}')
    bars.axhline(block['clean']['accuracy'], color='C0', linestyle='--', linewidth=1,
                 label=f"clean accuracy {block['clean']['accuracy']:.3f}")
    bars.axhline(0.5, color='C1', linestyle=':', linewidth=1, label='AUROC 0.5 (no separation)')
    bars.set_xticks(positions, [n.replace('_', ' ') for n in names], rotation=25, ha='right', fontsize=9)
    bars.set_ylim(0, 1.05)
    bars.set_title(f"per corruption at severity {at} (MNIST-C's setting)", fontsize=10)
    bars.legend(fontsize=8, ncol=4, loc='upper center', bbox_to_anchor=(0.5, -0.3))
    fig.suptitle(title)
    return _save(fig, path)


def mnist_c_comparison_plot(curves: Dict[str, Mapping[str, Any]], path) -> Path:
    """Several runs' MNIST-C blocks (`{row label: block}`): accuracy and ECE against the severity, the mean over
    the graded corruptions, one line per run (severity 0: the clean images)."""
    if not curves:
        raise ValueError("`curves` is empty")
    fig = Figure(figsize=(11, 4))
    ax_acc, ax_ece = fig.subplots(1, 2)
    for label, block in curves.items():
        x, y = _severity_curve(block, 'accuracy')
        line, = ax_acc.plot(x, y, marker='o', label=label)
        ax_ece.plot(*_severity_curve(block, 'ece'), marker='o', color=line.get_color())
    for ax, name in ((ax_acc, 'accuracy'), (ax_ece, 'ECE')):
        ax.set_xticks(x, ['clean'] + [str(s) for s in x[1:]])
        ax.set_xlabel('severity (3: MNIST-C)')
        ax.set_ylabel(f'{name}, mean over the graded corruptions')
    ax_acc.set_ylim(0, 1.02)
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc='upper center', bbox_to_anchor=(0.5, 0.0), fontsize=8)
    n = next(iter(curves.values()))['n_samples']
    fig.suptitle(f'MNIST-C against severity (first {n:,} test images)')
    return _save(fig, path)


def shift_plot(block: Mapping[str, Any], path) -> Path:
    """The `--shift-file` sets: accuracy (the clean test set's dashed) and the AUROC by which each score tells
    the set from the clean test set."""
    names = list(block['sets'])
    scores = list(block['sets'][names[0]]['auroc'])
    fig = Figure(figsize=(max(8.0, 1.2 * len(names) * (1 + len(scores)) / 2), 4), layout='constrained')
    ax_acc, ax_auroc = fig.subplots(1, 2)
    positions = np.arange(len(names))
    ax_acc.bar(positions, [block['sets'][n]['accuracy'] for n in names], 0.6, color='C0')
    ax_acc.axhline(block['clean_accuracy'], color='C0', linestyle='--', linewidth=1,
                   label=f"clean test set {block['clean_accuracy']:.3f}")
    ax_acc.set_ylabel('accuracy')
    ax_acc.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.15))
    width = 0.8 / len(scores)
    for i, score in enumerate(scores):
        ax_auroc.bar(positions + (i - (len(scores) - 1) / 2) * width, [block['sets'][n]['auroc'][score] for n in names],
                     width, color=f'C{i + 1}', label=score)
    ax_auroc.axhline(0.5, color='0.5', linestyle=':', linewidth=1)
    ax_auroc.set_ylabel('AUROC: set vs clean test set')
    ax_auroc.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.15), ncol=len(scores))
    for ax in (ax_acc, ax_auroc):
        ax.set_xticks(positions, names, rotation=20, ha='right', fontsize=9)
        ax.set_ylim(0, 1.05)
    fig.suptitle('Shifted test sets (--shift-file)')
    return _save(fig, path)
