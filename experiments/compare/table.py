"""The comparison table: its columns (headline or all), the best value of each, markdown."""
from typing import Any, Dict, List, Optional

from evidential.metrics import ID_METRICS, OOD_METRICS
from experiments.compare.rows import CompareError, Row
from experiments.evaluation import perturbations, posthoc

MARKDOWN_FILE = 'comparison.md'
JSON_FILE = 'comparison.json'
#: OOD scores in table order (others follow alphabetically)
SCORE_ORDER = ('u', 'entropy', 'msp', 'mutual_information')
MISSING = '–'


def columns_of(rows: List[Row]) -> List[str]:
    """ID metrics, then `selective/SCORE/METRIC`, then `ood/SET/SCORE/METRIC`, each present in any run."""
    keys = {k for r in rows for k in r.values}
    metric_rank = {m: i for i, m in enumerate([*ID_METRICS, *OOD_METRICS])}
    score_rank = {s: i for i, s in enumerate(SCORE_ORDER)}

    def order(key: str):
        *where, score, metric = key.split('/')
        return (where, score_rank.get(score, len(score_rank)), score,
                metric_rank.get(metric, len(metric_rank)), metric)

    perturbation = [c for p in [*perturbations.all_perturbations(), *posthoc.all_steps()] for c in p.column_names()
                    if c in keys]
    selective = sorted((k for k in keys if k.startswith('selective/')), key=order)
    ood = sorted((k for k in keys if k.startswith('ood/')), key=order)
    # anything else a caller put into the rows (a sweep's `train_s`), last
    other = sorted(k for k in keys if '/' not in k and k not in ID_METRICS)
    return list(ID_METRICS) + perturbation + selective + ood + other


def is_column_name(key: str) -> bool:
    """Whether `key` can name a metric column (before any run is evaluated): an in-distribution metric, a
    perturbation's or post-hoc step's column (`missing/F/accuracy`, `temperature/T`), `selective/SCORE/METRIC` or
    `ood/SET/SCORE/METRIC`."""
    parts = key.split('/')
    if len(parts) == 1:
        return key in ID_METRICS
    if any(key in p.column_names() for p in [*perturbations.all_perturbations(), *posthoc.all_steps()]):
        return True
    if parts[0] == 'selective':
        return len(parts) == 3 and all(parts) and parts[2] in ID_METRICS
    if parts[0] == 'ood':
        return len(parts) == 4 and all(parts) and parts[3] in OOD_METRICS
    return False


def headline_columns(rows: List[Row]) -> List[str]:
    """
    The columns of the default table: the in-distribution metrics, the perturbations' columns (of those per score,
    `PERTURBATION/SCORE/auroc`, the same scores as OOD's), and per OOD set the AUROC of each compared family's
    primary score (`u` for the evidential family) and of the entropy (every family's), then any extra column (a
    sweep's `train_s`). The rest: `--columns all`.
    """
    every = columns_of(rows)
    scores = list(dict.fromkeys([r.id_score for r in rows if r.id_score] + ['entropy']))
    sets = list(dict.fromkeys(c.split('/')[1] for c in every if c.startswith('ood/')))
    ood = [f'ood/{s}/{score}/auroc' for s in sets for score in scores if f'ood/{s}/{score}/auroc' in every]
    in_distribution = [c for c in every if c in ID_METRICS]
    # a perturbation's column per score (`mnist_c/msp/auroc`: every score has `selective/SCORE/...`) only for those
    every_score = {c.split('/')[1] for c in every if c.startswith('selective/')}
    perturbation = [c for c in every if '/' in c and c.split('/')[0] not in ('selective', 'ood')
                    and not (c.count('/') == 2 and c.split('/')[1] in every_score and c.split('/')[1] not in scores)]
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
    """`max` or `min` (which value is best), or `None` for a metric this table does not know and for a post-hoc
    step's column with no better value (the fitted temperature `temperature/T`: never bold)."""
    owned, how = posthoc.direction(column)
    if owned:
        return how
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
