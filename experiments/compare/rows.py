"""A run's evaluation as a table row: loading it, its label (key settings), seeds averaged into one row."""
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from configs import registry
from configs.checkpoint import CheckpointError, find_run
from evidential.metrics import ID_METRICS
from experiments.evaluation import SPLIT_FILES, perturbations, posthoc

#: `--split` → the evaluation file it reads (as `experiments.evaluate --split` writes them)
EVALUATION_FILES = {split: files[0] for split, files in SPLIT_FILES.items()}
#: Never in labels or groups: settings that do not change what is trained, which run was resumed, and labml's
#: bookkeeping (the experiment's name, the optimizer's parameter list)
NOT_SETTINGS = registry.NOT_TRAINING | {'resume', 'experiment_name', 'optimizer.parameters'}


class CompareError(RuntimeError):
    """A run cannot be compared; the message says why (exit code 2)."""


@dataclass
class Row:
    run: str
    experiment: str
    label: str
    path: Path
    settings: Dict[str, Any]
    # The score that ranks the ID block's aurc / misclassification_auroc (`u` where there is one, else entropy)
    id_score: Optional[str] = None
    values: Dict[str, Optional[float]] = field(default_factory=dict)
    # Every setting of the run (`configs.yaml`), less `NOT_SETTINGS`
    config: Dict[str, Any] = field(default_factory=dict)
    # With `--over-seeds`: the runs averaged into this row, and each column's standard deviation over them
    runs: List[str] = field(default_factory=list)
    std: Dict[str, Optional[float]] = field(default_factory=dict)
    # The run's perturbation blocks (`evaluation.json`), for the comparison figures: `{name: block}`
    perturbations: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # Why the evaluation is not of the run's last checkpoint (`None`: it is)
    stale: Optional[str] = None


def _short(value: Any) -> str:
    return f'{value:g}' if isinstance(value, float) else str(value)


def _family(experiment: str):
    return registry.get(experiment) if experiment in registry.FAMILIES else None


def key_settings(experiment: str, values: Dict[str, Any]) -> Dict[str, Any]:
    """The settings that tell runs apart, from the run's saved values (`experiment.json`): the family's own
    (`Family.label_keys`), then weight decay, dataset, epochs and seed."""
    return registry.label_settings(_family(experiment), values)


#: Short names of the shared settings in labels; families add theirs (`Family.label_names`)
LABEL_NAMES = {'epochs': 'ep', 'optimizer.weight_decay': 'wd', 'seed': 'seed', 'dropout': 'p'}


def run_config(run_dir: Path) -> Dict[str, Any]:
    """
    Every setting of a run, from labml's `configs.yaml`: the option name where one was chosen (`lenet`,
    `constant`), else the computed value when it is plain data (numbers, strings, lists). Objects (the
    model, the data) are left out, and so are `NOT_SETTINGS` and configurations labml never computed (runs
    made before every configuration was computed at start lack those). Empty when the file is missing or
    unreadable; raises `CompareError` for one that is not labml's (YAML aliases, far too large).
    """
    import yaml
    from configs.checkpoint import RunFileError, load_run_yaml
    try:
        saved = load_run_yaml(run_dir / 'configs.yaml')
    except (OSError, yaml.YAMLError):
        return {}
    except RunFileError as e:
        raise CompareError(str(e)) from None
    if not isinstance(saved, dict):
        return {}
    config = {}
    for key, entry in saved.items():
        if key in NOT_SETTINGS or not isinstance(entry, dict):
            continue
        value = entry.get('value') if entry.get('value') is not None else entry.get('computed')
        if isinstance(value, str) and ('<' in value or '\n' in value):
            continue  # the repr of an object, not a setting
        if isinstance(value, (bool, int, float, str, list)):
            config[key] = value
    return config


def row_label(experiment: str, run: str, settings: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> str:
    """`experiment uuid (key settings, extra settings as key=value)`; `run` empty leaves the uuid out."""
    family = _family(experiment)
    names = {**LABEL_NAMES, **(family.label_names if family else {})}
    parts = []
    for k, v in settings.items():
        if (k == 'dataset' and v == 'mnist') or (k == 'optimizer.weight_decay' and not v):
            continue
        parts.append(f'{names[k]}={_short(v)}' if k in names else _short(v))
    parts += [f'{names.get(k, k)}={_short(v)}' for k, v in (extra or {}).items()
              if k not in settings and v is not None]
    head = f"{experiment} {run[:8]}" if run else experiment
    return head + (f" ({', '.join(parts)})" if parts else '')


def known_settings(rows: List[Row], experiment: str) -> List[str]:
    """The settings known (in `configs.yaml`) for every compared run of `experiment`."""
    configs = [r.config for r in rows if r.experiment == experiment]
    return sorted(set.intersection(*(set(c) for c in configs))) if configs else []


def differing_settings(rows: List[Row], ignore: tuple = ()) -> Dict[str, List[str]]:
    """Per experiment, the settings known for all its compared runs whose value is not the same in all of them."""
    keys: Dict[str, List[str]] = {}
    for experiment in dict.fromkeys(r.experiment for r in rows):
        configs = [r.config for r in rows if r.experiment == experiment]
        keys[experiment] = [k for k in known_settings(rows, experiment)
                            if k not in ignore and len({json.dumps(c[k]) for c in configs}) > 1]
    return keys


def label_rows(rows: List[Row]) -> None:
    """Labels each row with its key settings and those in which it differs from the other runs compared."""
    differing = differing_settings(rows)
    for r in rows:
        extra = {k: r.config.get(k) for k in differing[r.experiment]}
        r.label = row_label(r.experiment, r.run, r.settings, extra) + (f" [STALE: {r.stale}]" if r.stale else '')


def over_seeds(rows: List[Row]) -> List[Row]:
    """
    One row per group of runs whose settings (those known for all compared runs of the experiment) differ
    only in `seed`, in the order groups first appear:
    values are the means over the group, `std` the sample standard deviations (`None` for one run, or
    where a run lacks the metric — then the mean is `None` too).
    """
    groups: Dict[str, List[Row]] = {}
    known = {e: known_settings(rows, e) for e in dict.fromkeys(r.experiment for r in rows)}
    for r in rows:
        key = json.dumps([r.experiment, {k: r.config[k] for k in known[r.experiment] if k != 'seed'}], sort_keys=True)
        groups.setdefault(key, []).append(r)
    differing = differing_settings(rows, ignore=('seed',))
    merged = []
    for members in groups.values():
        first = members[0]
        settings = {k: v for k, v in first.settings.items() if k != 'seed'}
        seeds = ', '.join(_short(m.config.get('seed', '?')) for m in members)
        label = row_label(first.experiment, '', settings, {k: first.config.get(k) for k in differing[first.experiment]})
        label += f" × {len(members)} seed{'s' if len(members) > 1 else ''} ({seeds})"
        stale = [f"{m.run[:8]} {m.stale}" for m in members if m.stale]
        label += f" [STALE: {'; '.join(stale)}]" if stale else ''
        row = Row(run=','.join(m.run for m in members), experiment=first.experiment, label=label, path=first.path,
                  settings=settings, id_score=first.id_score, config=first.config, runs=[m.run for m in members],
                  stale='; '.join(stale) or None)
        for column in {k for m in members for k in m.values}:
            present = [m.values.get(column) for m in members]
            if any(v is None for v in present):
                row.values[column], row.std[column] = None, None
                continue
            row.values[column] = statistics.fmean(present)
            row.std[column] = statistics.stdev(present) if len(present) > 1 else None
        for p in perturbations.all_perturbations():  # each perturbation averages its own blocks, if it can
            blocks = [m.perturbations.get(p.name) for m in members]
            if all(b is not None for b in blocks):
                mean = p.mean_over_seeds(blocks)
                if mean is not None:
                    row.perturbations[p.name] = mean
        merged.append(row)
    return merged


def load_row(run: str, experiments_path: Path, split: str = 'test') -> Row:
    """The run's evaluation as a table row; raises `CompareError` (or `CheckpointError`) with the reason."""
    from configs.checkpoint import load_values
    run_dir = find_run(run, experiments_path)
    path = run_dir / EVALUATION_FILES[split]
    command = f"python -m experiments.evaluate {run}" + (' --split validation' if split == 'validation' else '')
    if not path.is_file():
        raise CompareError(f"run {run_dir.name} has not been evaluated on its {split} set ({path} is missing); "
                           f"run `{command}` first")
    try:
        evaluation = json.loads(path.read_text())
        id_block = evaluation['id']
        ood_block = evaluation.get('ood', {})
        selective_block = evaluation.get('selective', {})
        if not all(isinstance(b, dict) for b in (id_block, ood_block, selective_block)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CompareError(f"{path} is not an evaluation of this app; run `{command}` again") from None
    experiment = evaluation.get('experiment', run_dir.parent.name)
    try:
        saved = load_values(run_dir)
    except CheckpointError:
        saved = {}
    settings = key_settings(experiment, saved)
    row = Row(run=run_dir.name, experiment=experiment, label=row_label(experiment, run_dir.name, settings),
              path=run_dir, settings=settings, id_score=evaluation.get('id_score'), config=run_config(run_dir),
              runs=[run_dir.name], stale=_staleness(run_dir, evaluation))
    for metric in ID_METRICS:
        row.values[metric] = _number(id_block.get(metric))
    for score, per_metric in selective_block.items():
        for metric, value in per_metric.items():
            row.values[f'selective/{score}/{metric}'] = _number(value)
    for set_name, per_score in ood_block.items():
        for score, per_metric in per_score.items():
            for metric, value in per_metric.items():
                row.values[f'ood/{set_name}/{score}/{metric}'] = _number(value)
    # each perturbation and post-hoc step turns its own block into columns
    shifts = perturbations.all_perturbations()
    for plugin in [*shifts, *posthoc.all_steps()]:
        block = evaluation.get(plugin.name)
        if not isinstance(block, dict):
            continue
        try:
            row.values.update({column: _number(v) for column, v in plugin.columns(block).items()})
            if plugin in shifts:
                plugin.layout(block)  # what their comparison figures read
                row.perturbations[plugin.name] = block
        except (KeyError, ValueError, TypeError, IndexError, AttributeError):
            raise CompareError(f"{path}: its {plugin.name} block is not one of this app; run `{command}` again") from None
    return row


def _staleness(run_dir: Path, evaluation: Dict[str, Any]) -> Optional[str]:
    """`'evaluated at epoch 5 of 6'` where the evaluation's epoch is not that of the run's checkpoint now."""
    from configs.checkpoint import load_checkpoint
    try:
        epoch = load_checkpoint(run_dir)['epoch']
    except (CheckpointError, KeyError):
        return None
    evaluated = evaluation.get('epoch')
    return None if evaluated == epoch else f"evaluated at epoch {evaluated}, checkpoint at epoch {epoch}"


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
