"""
# Comparing evaluated runs

    python -m experiments.compare RUN [RUN ...] [--out DIR] [--split validation] [--over-seeds] [--columns KEYS]

Reads each run's `evaluation.json` (written by `python -m experiments.evaluate RUN`) and builds one
table: a row per run (experiment name, short uuid and its key settings), a column per metric. By default the
headline columns: the in-distribution metrics, the perturbations' columns (`experiments.evaluation.perturbations`:
accuracy at 20 % and 50 % missing pixels, `missing/0.2/accuracy`), and per OOD set the AUROC by each compared
family's primary score and by entropy. `--columns all` shows every metric of the runs — also selective
prediction per uncertainty score (`selective/SCORE/aurc`, `.../misclassification_auroc`) and every OOD score
(`ood/SET/SCORE/auroc`, `aupr`, `fpr95`); `--columns KEY,KEY,...` keeps those, in that order (a key no run has
is an error, exit code 2, listing the keys there are).
The best value of each column is marked (bold) where at least two runs have one: the highest accuracy, AUROC,
AUPR and misclassification AUROC, the lowest NLL, Brier, ECE, AURC and FPR95. A metric a run does not have
(e.g. `u` for a softmax model, `mutual_information` for an evidential one) is shown as "–". An evaluation of an
earlier epoch than the run's checkpoint (the run trained on after it was evaluated) is marked STALE.

The table is printed and written as `comparison.md` and `comparison.json`, with each perturbation's comparison
figure (`comparison_missing_pixels.png`: every run's missing-pixel sweep), into `--out` (default:
`<experiments path>/compare/<families>-<hash of the runs>`). `RUN` is a run uuid (under the nearest
`.labml.yaml`'s experiments path) or a run folder. A run that has not been evaluated is an error (exit code 2).

`--split validation` compares the held-out evaluations instead (`evaluation_validation.json`, written by
`python -m experiments.evaluate RUN --split validation`): the table for choosing settings without the
test set.

`--over-seeds` puts runs whose settings differ only in `seed` into one row: each cell is the mean over
those runs ± their standard deviation (sample, n − 1), and the best *mean* is marked. One run of 1,000
held-out images has ~10 errors, so a single seed decides little; a setting is better when its mean is,
by more than the spread.

Each label names the run's key settings (loss, evidence, KL schedule and its weight, ...) and, beyond
those, every setting that differs between the compared runs of one experiment (e.g. `dropout=0.25`), read
from the run's `configs.yaml` (every configuration's value, as labml computed it).
"""
import argparse
import hashlib
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from configs import registry
from configs.checkpoint import CheckpointError, atomic_write_bytes, find_run
from evidential.metrics import ID_METRICS, OOD_METRICS
from experiments.evaluation import SPLIT_FILES, perturbations

#: `--split` → the evaluation file it reads (as `experiments.evaluate --split` writes them)
EVALUATION_FILES = {split: files[0] for split, files in SPLIT_FILES.items()}
#: Where the tables go by default, under the experiments path (`logs/compare/...`)
COMPARE_FOLDER = 'compare'
MARKDOWN_FILE = 'comparison.md'
JSON_FILE = 'comparison.json'
#: OOD scores in table order (others follow alphabetically)
SCORE_ORDER = ('u', 'entropy', 'msp', 'mutual_information')
MISSING = '–'
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
    made before every configuration was computed at start lack those). Empty when the file is unreadable.
    """
    import yaml
    try:
        saved = yaml.safe_load((run_dir / 'configs.yaml').read_text())
    except (OSError, yaml.YAMLError):
        return {}
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
    for p in perturbations.all_perturbations():
        block = evaluation.get(p.name)
        if not isinstance(block, dict):
            continue
        try:
            row.values.update({column: _number(v) for column, v in p.columns(block).items()})
            p.layout(block)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError):
            raise CompareError(f"{path}: its {p.name} block is not one of this app; run `{command}` again") from None
        row.perturbations[p.name] = block
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


def columns_of(rows: List[Row]) -> List[str]:
    """ID metrics, then `selective/SCORE/METRIC`, then `ood/SET/SCORE/METRIC`, each present in any run."""
    keys = {k for r in rows for k in r.values}
    metric_rank = {m: i for i, m in enumerate([*ID_METRICS, *OOD_METRICS])}
    score_rank = {s: i for i, s in enumerate(SCORE_ORDER)}

    def order(key: str):
        *where, score, metric = key.split('/')
        return (where, score_rank.get(score, len(score_rank)), score,
                metric_rank.get(metric, len(metric_rank)), metric)

    perturbation = [c for p in perturbations.all_perturbations() for c in p.column_names() if c in keys]
    selective = sorted((k for k in keys if k.startswith('selective/')), key=order)
    ood = sorted((k for k in keys if k.startswith('ood/')), key=order)
    # anything else a caller put into the rows (a sweep's `train_s`), last
    other = sorted(k for k in keys if '/' not in k and k not in ID_METRICS)
    return list(ID_METRICS) + perturbation + selective + ood + other


def is_column_name(key: str) -> bool:
    """Whether `key` can name a metric column (before any run is evaluated): an in-distribution metric, a
    perturbation's column (`missing/F/accuracy`), `selective/SCORE/METRIC` or `ood/SET/SCORE/METRIC`."""
    parts = key.split('/')
    if len(parts) == 1:
        return key in ID_METRICS
    if any(key in p.column_names() for p in perturbations.all_perturbations()):
        return True
    if parts[0] == 'selective':
        return len(parts) == 3 and all(parts) and parts[2] in ID_METRICS
    if parts[0] == 'ood':
        return len(parts) == 4 and all(parts) and parts[3] in OOD_METRICS
    return False


def headline_columns(rows: List[Row]) -> List[str]:
    """
    The columns of the default table: the in-distribution metrics, the perturbations' columns, and per OOD set
    the AUROC of each compared family's primary score (`u` for the evidential family) and of the entropy (every
    family's), then any extra column (a sweep's `train_s`). The rest: `--columns all`.
    """
    every = columns_of(rows)
    scores = list(dict.fromkeys([r.id_score for r in rows if r.id_score] + ['entropy']))
    sets = list(dict.fromkeys(c.split('/')[1] for c in every if c.startswith('ood/')))
    ood = [f'ood/{s}/{score}/auroc' for s in sets for score in scores if f'ood/{s}/{score}/auroc' in every]
    in_distribution = [c for c in every if c in ID_METRICS]
    perturbation = [c for c in every if '/' in c and c.split('/')[0] not in ('selective', 'ood')]
    other = [c for c in every if '/' not in c and c not in ID_METRICS]
    return in_distribution + perturbation + ood + other


def choose_columns(rows: List[Row], wanted: Optional[List[str]]) -> List[str]:
    """`wanted` in its order (`None` or `['all']`: every column); raises `CompareError` naming a column no row
    has."""
    available = columns_of(rows)
    if wanted is None or wanted == ['all']:
        return available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise CompareError(f"no column {', '.join(unknown)} in these runs; they have: {', '.join(available)}")
    return list(dict.fromkeys(wanted))


def direction(column: str) -> Optional[str]:
    """`max` or `min` (which value is best), or `None` for a metric this table does not know."""
    metric = column.rsplit('/', 1)[-1]
    return ID_METRICS.get(metric) or OOD_METRICS.get(metric)


def best_runs(rows: List[Row], columns: List[str]) -> Dict[str, List[str]]:
    """Per column, the runs holding the best value (all of them on a tie); empty where fewer than two runs have a
    value (nothing to compare)."""
    best = {}
    for column in columns:
        how = direction(column)
        present = [(r.values[column], r.run) for r in rows if r.values.get(column) is not None]
        if how is None or len(present) < 2:
            best[column] = []
            continue
        target = max(v for v, _ in present) if how == 'max' else min(v for v, _ in present)
        best[column] = [run for v, run in present if v == target]
    return best


def build(rows: List[Row], columns: Optional[List[str]] = None) -> Dict[str, Any]:
    """The table of `rows` with `columns` (`None`: every column, see `columns_of`)."""
    columns = choose_columns(rows, columns)
    best = best_runs(rows, columns)
    return {
        'columns': [{'key': c, 'better': direction(c)} for c in columns],
        'rows': [{'run': r.run, 'runs': r.runs, 'experiment': r.experiment, 'label': r.label, 'path': str(r.path),
                  'settings': r.settings, 'id_score': r.id_score, 'values': {c: r.values.get(c) for c in columns},
                  'std': {c: r.std.get(c) for c in columns}, 'stale': r.stale,
                  'best': [c for c in columns if r.run in best[c]]} for r in rows],
        'best': best,
    }


def _escape(text: str) -> str:
    return text.replace('|', '\\|')


def markdown(table: Dict[str, Any], digits: int = 4) -> str:
    columns = [c['key'] for c in table['columns']]
    arrows = {'max': '↑', 'min': '↓', None: ''}
    header = ['run'] + [f"{c['key']} {arrows[c['better']]}".strip() for c in table['columns']]
    lines = ['| ' + ' | '.join(_escape(h) for h in header) + ' |',
             '|' + '---|' + '---:|' * len(columns)]
    for row in table['rows']:
        cells = [_escape(row['label'])]
        for c in columns:
            v, sd = row['values'][c], row['std'][c]
            # seconds (`train_s`) to the second, metrics to `digits`
            places = 0 if c.endswith('_s') else digits
            text = MISSING if v is None else f'{v:.{places}f}'
            text = f'**{text}**' if c in row['best'] else text
            cells.append(text if sd is None else f'{text} ± {sd:.{places}f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', f"Best per column in bold (↑ higher is better, ↓ lower is better); {MISSING}: the run has no such metric. "
                  "`aurc` and `misclassification_auroc` rank by each run's own score (`u` where the model has one, "
                  "else `entropy`); `selective/SCORE/METRIC` ranks every run by the same SCORE; "
                  "`ood/SET/SCORE/METRIC`: OOD detection, OOD as the positive class."]
    if any(row['stale'] for row in table['rows']):
        lines += ['', "STALE: the run trained on after it was evaluated, so its numbers are of an earlier epoch; "
                      "evaluate it again."]
    if any(len(row['runs']) > 1 for row in table['rows']):
        lines += ['', "Rows of several seeds: mean ± sample standard deviation over the seeds; "
                      "the best mean is in bold."]
    return '\n'.join(lines) + '\n'


def default_out(rows: List[Row], experiments_path: Path, args: argparse.Namespace) -> Path:
    """`<experiments path>/compare/<families>-<hash>`: the same runs (and split, seed averaging) give the same
    folder."""
    families = sorted({r.experiment for r in rows})
    stem = '+'.join(families) if len(families) <= 2 else f'{len(families)}families'
    key = json.dumps([sorted(str(r.path) for r in rows), args.split, args.over_seeds])
    return experiments_path / COMPARE_FOLDER / f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m experiments.compare',
                                     description='One table of evaluated runs, best value per metric marked.')
    parser.add_argument('runs', nargs='+', metavar='RUN', help='run uuid or run folder (evaluated first with '
                                                              'python -m experiments.evaluate RUN)')
    parser.add_argument('--out', default=None, metavar='DIR',
                        help='folder for comparison.md, comparison.json and the figures (default: '
                             '<experiments path>/compare/<the families>-<hash of the runs>, e.g. '
                             'logs/compare/evidence_mnist+softmax_mnist-1a2b3c)')
    parser.add_argument('--split', choices=list(EVALUATION_FILES), default='test',
                        help='test (default) or validation: compare the held-out evaluations '
                             '(python -m experiments.evaluate RUN --split validation)')
    parser.add_argument('--over-seeds', action='store_true',
                        help='one row per setting: runs that differ only in seed are averaged (mean ± std)')
    parser.add_argument('--columns', metavar='KEY,KEY,...',
                        help='only these columns, in this order (e.g. accuracy,nll,ood/fashion_mnist/entropy/auroc), '
                             'or all (every metric of the runs); default: the headline columns (in-distribution '
                             'metrics, the perturbations\' columns, OOD AUROC by each family\'s primary score '
                             'and by entropy)')
    args = parser.parse_args(argv)
    args.columns = [c.strip() for c in args.columns.split(',') if c.strip()] if args.columns else None
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from labml import lab
    from configs.runner import use_project_folder
    use_project_folder()
    experiments_path = Path(lab.get_experiments_path())
    rows: List[Row] = []
    try:
        for run in args.runs:
            row = load_row(run, experiments_path, args.split)
            if any(r.path == row.path for r in rows):
                continue  # the same run given twice
            rows.append(row)
    except (CompareError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    label_rows(rows)
    out = Path(args.out).expanduser() if args.out else default_out(rows, experiments_path, args)
    if args.over_seeds:
        rows = over_seeds(rows)
    try:
        table = build(rows, args.columns if args.columns else headline_columns(rows))
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(table)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / MARKDOWN_FILE, lambda f: f.write(text.encode()))
        data = json.dumps(table, indent=2) + '\n'
        atomic_write_bytes(out / JSON_FILE, lambda f: f.write(data.encode()))
    except OSError as e:
        print(f"error: cannot write to {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    written = [out / MARKDOWN_FILE, out / JSON_FILE]
    for p in perturbations.all_perturbations():
        curves = {r.label: r.perturbations[p.name] for r in rows if p.comparison_figure and p.name in r.perturbations}
        if curves and p.comparable(list(curves.values())):
            try:
                p.draw_comparison(curves, out / p.comparison_figure)
            except OSError as e:
                print(f"error: cannot write to {out}: {e.strerror or e}", file=sys.stderr)
                return 2
            written.append(out / p.comparison_figure)
        elif curves:
            print(f"note: {p.comparison_figure} not drawn: the runs' {p.name} blocks used different numbers of images")
    print(text)
    for r in rows:
        if r.stale:
            print(f"warning: {r.label}: its evaluation is not of the run's last checkpoint; evaluate it again "
                  f"(python -m experiments.evaluate RUN)", file=sys.stderr)
    print(f"written: {', '.join(map(str, written))}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
