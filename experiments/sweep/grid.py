"""
The grid of a sweep: `key=v1,v2` arguments and sweep files → axes → every combination.

Values: a comma separates values only at the top level, so tuples and lists keep theirs
(`optimizer.betas=(0.9,0.99),(0.9,0.999)` is two values). A sweep file is plain Python defining
`runs = [(FAMILY, {key: [values] or value}), ...]` (a list value is an axis; a grid may also be a list of such
dicts), and optionally `name`, `split`, `jobs` and `columns`.
"""
import itertools
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from experiments.sweep.errors import SweepError
from experiments.sweep.table import TRAIN_COLUMN


def split_values(raw: str) -> List[str]:
    """`'(0.9,0.99),(0.9,0.999)'` → `['(0.9,0.99)', '(0.9,0.999)']`: commas split only outside brackets and quotes."""
    values, quote, start = [], None, 0
    closing = {')': '(', ']': '[', '}': '{'}
    stack: List[str] = []
    for i, ch in enumerate(raw):
        if quote:
            if ch == quote and raw[i - 1] != '\\':
                quote = None
        elif ch in '\'"':
            quote = ch
        elif ch in '([{':
            stack.append(ch)
        elif ch in closing:
            if not stack or stack[-1] != closing[ch]:
                raise SweepError(f"{raw!r}: unbalanced {ch!r}")
            stack.pop()
        elif ch == ',' and not stack:
            values.append(raw[start:i])
            start = i + 1
    if stack or quote:
        raise SweepError(f"{raw!r}: unclosed {(quote or stack[-1])!r}")
    values.append(raw[start:])
    values = [v.strip() for v in values]
    if any(v == '' for v in values):
        raise SweepError(f"{raw!r}: empty value (two commas in a row, or a comma at an end)")
    return values


Axes = List[Tuple[str, List[str]]]


def parse_axes(args: Sequence[str]) -> Axes:
    """`['kl_coef=0.01,0.03', 'seed=1,2']` → `[('kl_coef', ['0.01', '0.03']), ('seed', ['1', '2'])]`."""
    axes: Axes = []
    for arg in args:
        if '=' not in arg or arg.startswith('='):
            raise SweepError(f"{arg!r}: expected key=value[,value ...]")
        key, raw = arg.split('=', 1)
        key = key.strip()
        if any(k == key for k, _ in axes):
            raise SweepError(f"{key} is given twice")
        axes.append((key, split_values(raw)))
    return axes


def to_argument(value: Any) -> str:
    """A sweep file's Python value as the command line writes it (strings as they are, the rest as literals)."""
    return value if isinstance(value, str) else repr(value)


def file_axes(grid: Dict[str, Any], where: str) -> Axes:
    """A sweep file's grid → axes: a list is an axis of values, anything else (a tuple too) is one value."""
    if not isinstance(grid, dict):
        raise SweepError(f"{where}: a grid must be a dict of key → value or [values], got {type(grid).__name__}")
    axes: Axes = []
    for key, value in grid.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise SweepError(f"{where}: {key} has an empty list of values")
        axes.append((str(key), [to_argument(v) for v in values]))
    return axes


def load_sweep_file(path: Path) -> Dict[str, Any]:
    """Executes a sweep file and returns `{'grids': [(family, axes)], 'name', 'split', 'jobs'}` (missing → None)."""
    namespace: Dict[str, Any] = {'__file__': str(path.resolve()), '__name__': '__sweep__'}
    try:
        code = compile(path.read_text(), str(path), 'exec')
        exec(code, namespace)
    except OSError as e:
        raise SweepError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:
        raise SweepError(f"{path}: {type(e).__name__}: {e}") from None
    runs = namespace.get('runs')
    if not isinstance(runs, (list, tuple)) or not runs:
        raise SweepError(f"{path} must define runs = [(FAMILY, {{key: [values], ...}}), ...]")
    grids = []
    for i, entry in enumerate(runs):
        where = f"{path}: runs[{i}]"
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise SweepError(f"{where}: expected (FAMILY, grid), got {entry!r}")
        family, grid = entry
        for j, g in enumerate(grid if isinstance(grid, list) else [grid]):
            grids.append((family, file_axes(g, where if not isinstance(grid, list) else f"{where}[{j}]")))
    columns = namespace.get('columns')
    if columns is not None and not (isinstance(columns, (list, tuple)) and columns
                                    and all(isinstance(c, str) for c in columns)):
        raise SweepError(f"{path}: columns must be a list of column names, e.g. ['accuracy', 'nll'], got {columns!r}")
    from experiments.compare import is_column_name
    bad = [c for c in columns or [] if c != TRAIN_COLUMN and not is_column_name(c)]
    if bad:
        raise SweepError(f"{path}: columns: {', '.join(map(repr, bad))} cannot be a column (metrics such as "
                         f"'accuracy', 'ood/fashion_mnist/entropy/auroc', 'missing/0.5/accuracy', or "
                         f"{TRAIN_COLUMN!r})")
    return {'grids': grids, 'name': namespace.get('name'), 'split': namespace.get('split'),
            'jobs': namespace.get('jobs'), 'columns': list(columns) if columns else None}


def expand(axes: Axes) -> List[List[Tuple[str, str]]]:
    """Every combination, in order: the last axis varies fastest."""
    keys = [k for k, _ in axes]
    return [list(zip(keys, combo)) for combo in itertools.product(*(values for _, values in axes))]
