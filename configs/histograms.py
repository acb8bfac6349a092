"""
# Uncertainty histograms of each validation

At the end of every epoch each distribution a family tracks (u, max p̂, strength, the entropy of p̂, the mutual
information, ...) is summarised as a fixed-bin histogram and five quantiles, split into right and wrong
predictions where the values are per image. One JSON line per epoch goes to `histograms.jsonl` in the run folder
(appended whole, before the epoch's checkpoint) and to every callback in `AFTER_EPOCH` (the dashboard's client
registers one: `experiments.dashboard.client.attach`).

A line (`epoch_record`):

    {"format": 1, "epoch": 3, "epochs": 10, "run": {...what `describe` says about the run...},
     "metrics": {"accuracy.valid": 0.98, ...}, "n_valid": 10000,
     "distributions": {"u": {"scale": "unit", "edges": [0, 0.02, ..., 1],
                             "groups": {"right": {"n": 9800, "counts": [...], "quantiles": [q10, q25, q50, q75, q90]},
                                        "wrong": {"n": 200, ...}}},
                       "sigma.fc1": {"scale": "log", "edges": [...], "groups": {"all": {...}}}, ...}}

Bins: `unit` is 50 equal bins over [0, 1] (u, max p̂, disagreement); `log` is 10 bins per decade on a grid aligned
to powers of ten, over the decades the values occupy (strength, entropies, densities, standard deviations);
`linear` is 50 equal bins over the values' range (a score that can be negative, or values within one decade). A value below the first edge
(0 on a log grid) is counted in the first bin, one above the last edge in the last, so the counts of a group sum
to its `n`; non-finite values are left out of bins and quantiles and counted in the group's `nonfinite`.
A resumed run repeats the epoch it was interrupted in: readers keep the last line of each epoch.
"""
import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from evidential.prediction import Prediction, categorical_entropy
from configs.checkpoint import append_line

HISTOGRAM_FILE = 'histograms.jsonl'
FORMAT = 1
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
UNIT_BINS = 50
LINEAR_BINS = 50
LOG_BINS_PER_DECADE = 10
LOG_MAX_DECADES = 16
#: Distributions bounded by [0, 1]
UNIT_NAMES = frozenset({'u', 'p_max', 'disagreement'})

#: Callbacks `(run_uuid, record)` called after each epoch's line is written (they must not block: a sender queues)
AFTER_EPOCH: List[Callable[[str, dict], None]] = []

#: A distribution: its values, and the correctness mask of the images they belong to (None: not per image)
Values = Tuple[torch.Tensor, Optional[torch.Tensor]]


def prediction_distributions(pred: Prediction, correct: torch.Tensor) -> Dict[str, Values]:
    """The per-image distributions of a prediction, each with the correctness mask: the family's own scores (`u`,
    `mutual_information`, ...), max p̂, the extras with one value per image (the strength S) and the entropy of
    p̂."""
    n = len(correct)
    out: Dict[str, Values] = {name: (v, correct) for name, v in pred.scores.items()}
    out['p_max'] = (pred.probs.max(-1).values, correct)
    for name, v in pred.extras.items():
        if v.dim() == 1 and len(v) == n and name not in out:
            out[name] = (v, correct)
    out.setdefault('entropy', (categorical_entropy(pred.probs.float()), correct))
    return out


def _round(x: float) -> float:
    return float(f'{x:.6g}')


def choose_scale(name: str, values: torch.Tensor) -> str:
    """`unit`, `log` or `linear` (module doc): `log` for values that are not negative and whose positive ones span a
    decade or more, `linear` for the others (a narrow spread gets 50 bins, not the few of a log grid)."""
    if name in UNIT_NAMES:
        return 'unit'
    finite = values[torch.isfinite(values)]
    if finite.numel() and bool((finite < 0).any()):
        return 'linear'
    positive = finite[finite > 0]
    if positive.numel() and positive.max().item() < 10 * positive.min().item():
        return 'linear'
    return 'log'


def bin_edges(scale: str, values: torch.Tensor) -> List[float]:
    """The bin edges of `values` on `scale`: increasing, at least two."""
    if scale == 'unit':
        return [i / UNIT_BINS for i in range(UNIT_BINS + 1)]
    finite = values[torch.isfinite(values)]
    if scale == 'log':
        positive = finite[finite > 0]
        if positive.numel() == 0:
            lo, hi = -3, 0
        else:
            lo = math.floor(math.log10(positive.min().item()))
            hi = max(lo + 1, math.ceil(math.log10(positive.max().item())))
            lo = max(lo, hi - LOG_MAX_DECADES)
        steps = (hi - lo) * LOG_BINS_PER_DECADE
        return [_round(10 ** (lo + i / LOG_BINS_PER_DECADE)) for i in range(steps + 1)]
    lo, hi = (finite.min().item(), finite.max().item()) if finite.numel() else (0.0, 1.0)
    if hi - lo < 1e-12 * max(1.0, abs(lo)):
        lo, hi = lo - 0.5, hi + 0.5
    return [lo + (hi - lo) * i / LINEAR_BINS for i in range(LINEAR_BINS)] + [hi]


def quantiles(values: torch.Tensor) -> Optional[List[float]]:
    """The `QUANTILES` of finite `values` (linear interpolation, as `torch.quantile`, without its size limit);
    None for none."""
    if values.numel() == 0:
        return None
    s = values.sort().values
    out = []
    for q in QUANTILES:
        pos = q * (len(s) - 1)
        i = int(math.floor(pos))
        j = min(i + 1, len(s) - 1)
        out.append(_round(s[i].item() + (s[j].item() - s[i].item()) * (pos - i)))
    return out


def histogram(name: str, values: torch.Tensor, correct: Optional[torch.Tensor]) -> dict:
    """One distribution's entry of `epoch_record`: scale, edges and, per group (`right` / `wrong`, or `all`), the
    number of values, the bin counts and the quantiles."""
    values = values.detach().flatten().double().cpu()
    scale = choose_scale(name, values)
    edges = bin_edges(scale, values)
    inner = torch.tensor(edges[1:-1], dtype=torch.float64)
    if correct is None:
        masks = {'all': None}
    else:
        correct = correct.detach().flatten().cpu()
        masks = {'right': correct, 'wrong': ~correct}
    groups = {}
    for group, mask in masks.items():
        v = values if mask is None else values[mask]
        finite = v[torch.isfinite(v)]
        index = torch.bucketize(finite, inner, right=True)
        counts = torch.bincount(index, minlength=len(edges) - 1).tolist()
        entry = {'n': int(v.numel()), 'counts': counts, 'quantiles': quantiles(finite)}
        if finite.numel() != v.numel():
            entry['nonfinite'] = int(v.numel() - finite.numel())
        groups[group] = entry
    return {'scale': scale, 'edges': edges, 'groups': groups}


def epoch_record(epoch: int, epochs: int, metrics: Dict[str, float], distributions: Dict[str, Values],
                 run: Optional[dict] = None) -> dict:
    """The line of one epoch (module doc); `run` describes the run (experiment, preset, label, ...)."""
    n_valid = next((len(c) for _, c in distributions.values() if c is not None), 0)
    return {'format': FORMAT, 'epoch': epoch, 'epochs': epochs, 'run': dict(run or {}),
            'metrics': {k: _round(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
            'n_valid': n_valid,
            'distributions': {name: histogram(name, v, c) for name, (v, c) in distributions.items()}}


def write_epoch(run_dir: Path, record: dict) -> None:
    """Appends `record` to the run's `histograms.jsonl` (whole, or not at all: `RunWriteError`), then hands it to
    the `AFTER_EPOCH` callbacks."""
    append_line(run_dir / HISTOGRAM_FILE, json.dumps(record, separators=(',', ':'), allow_nan=False))
    for callback in list(AFTER_EPOCH):
        callback(run_dir.name, record)


def read_epochs(run_dir: Path) -> List[dict]:
    """The records of a run folder's `histograms.jsonl`, the last of each epoch, by epoch; a line that is not a
    record (cut by a crash of an older writer) is skipped. Empty without the file."""
    path = Path(run_dir) / HISTOGRAM_FILE
    if not path.is_file():
        return []
    by_epoch: Dict[int, dict] = {}
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get('epoch'), int):
                by_epoch[record['epoch']] = record
    return [by_epoch[e] for e in sorted(by_epoch)]
