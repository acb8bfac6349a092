"""The table of a sweep: `experiments.compare --over-seeds` over its evaluated runs, with their training time."""
import json
import sys
from typing import Optional

from experiments.sweep.state import STATE_FILE, SweepState

#: The table's column of each run's training time (the wall time of its training process)
TRAIN_COLUMN = 'train_s'


def write_table(sweep: SweepState) -> Optional[str]:
    """`compare --over-seeds` over the evaluated runs, with each run's training time (`train_s`, the wall time
    of its training process) as a column: comparison.md / comparison.json in the sweep folder, with the sweep
    file's `columns` where it gives them, else `compare`'s headline columns (every metric of every run is in
    sweep.json)."""
    from configs.checkpoint import atomic_write_bytes
    from experiments.compare import (JSON_FILE, MARKDOWN_FILE, CompareError, build, headline_columns, label_rows,
                                     load_row, markdown, over_seeds)
    done = [r for r in sweep.runs if r.get('status') == 'done']
    if not done:
        return None
    rows = [load_row(str(sweep.run_dir(r)), sweep.experiments_path, sweep.split) for r in done]
    for row, r in zip(rows, done):
        row.values[TRAIN_COLUMN] = r.get('train_s')
    label_rows(rows)
    rows = over_seeds(rows)
    try:
        table = build(rows, sweep.columns or headline_columns(rows))
    except CompareError as e:
        print(f"warning: {e}; the table has the headline columns", file=sys.stderr)
        table = build(rows, headline_columns(rows))
    text = markdown(table)
    atomic_write_bytes(sweep.folder / MARKDOWN_FILE, lambda f: f.write(text.encode()), sync=False)
    data = json.dumps(table, indent=2) + '\n'
    atomic_write_bytes(sweep.folder / JSON_FILE, lambda f: f.write(data.encode()), sync=False)
    print('\n' + text)
    print(f"written: {sweep.folder / STATE_FILE}, {sweep.folder / MARKDOWN_FILE}, {sweep.folder / JSON_FILE}")
    return text
