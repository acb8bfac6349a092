"""The command line of `python -m experiments.compare` (see the package's docstring)."""
import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import List, Optional

from configs.checkpoint import CheckpointError, atomic_write_bytes
from experiments.compare.rows import EVALUATION_FILES, CompareError, Row, label_rows, load_row, over_seeds
from experiments.compare.table import JSON_FILE, MARKDOWN_FILE, build, headline_columns, markdown
from experiments.evaluation import perturbations

#: Where the tables go by default, under the experiments path (`logs/compare/...`)
COMPARE_FOLDER = 'compare'


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
