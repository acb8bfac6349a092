"""
The plan of a sweep: every run typed and checked as the family's own command line checks it
(`configs.cli.resolve`), the sweep's default name, and the training data every run needs.
"""
import contextlib
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

from configs.registry import NOT_TRAINING
from experiments.sweep.errors import SweepError
from experiments.sweep.grid import Axes, expand

#: Keys that do not change what is trained are not part of a run's identity or of the sweep's default name, so a
#: sweep can be continued with another dashboard, device or data folder
NOT_IDENTITY = NOT_TRAINING


def _canonical(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _absolute_data_dir(combo: List[Tuple[str, str]], cwd: Path) -> List[Tuple[str, str]]:
    """A relative `data_dir` is relative to where the sweep is launched, wherever the runs execute."""
    return [(k, str((cwd / Path(v).expanduser()).resolve()) if k == 'data_dir' and v and not Path(v).expanduser().is_absolute()
             else v) for k, v in combo]


def plan(grids: List[Tuple[str, Axes]], split: str, cwd: Path) -> List[Dict[str, Any]]:
    """
    Every run of the sweep, typed and checked as the family's own command line checks it
    (`configs.cli.resolve`); raises `SweepError` naming the combination on the first problem.
    """
    from configs import registry
    from configs.cli import UsageError, parse_argv, resolve
    runs, seen = [], {}
    for family_name, axes in grids:
        try:
            family = registry.get(family_name)
        except KeyError as e:
            raise SweepError(str(e.args[0])) from None
        for key, _ in axes:
            if key == 'resume':
                raise SweepError("resume= cannot be swept: the sweep resumes its own runs (run it again)")
        for combo in expand(axes):
            combo = _absolute_data_dir(combo, cwd)
            argv = [f'{k}={v}' for k, v in combo]
            where = f"{family_name} {' '.join(argv)}"
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    values, overrides, _ = resolve(argv, family)
                preset, _, _ = parse_argv(argv)
            except UsageError as e:
                raise SweepError(f"{where}: {e}") from None
            if split == 'validation' and values.get('holdout', 1) == 0:
                raise SweepError(f"{where}: holdout=0 has no held-out split for --split validation; "
                                 f"set holdout>0 or pass --split test")
            identity = ' '.join([family_name] + ([f'preset={preset}'] if preset else []) +
                                [f'{k}={_canonical(v)}' for k, v in sorted(overrides.items()) if k not in NOT_IDENTITY])
            if identity in seen:
                raise SweepError(f"{where}: the same run as {seen[identity]} (given twice in the grid)")
            seen[identity] = where
            runs.append({
                'id': identity, 'family': family_name, 'preset': preset, 'argv': argv,
                'overrides': dict(combo), 'settings': {k: _jsonable(v) for k, v in overrides.items()},
                'epochs': values.get('epochs'), 'slug': f"{family_name}-{hashlib.sha1(identity.encode()).hexdigest()[:10]}",
                'uuid': None, 'status': 'pending', '_values': values,
            })
    return runs


def default_name(grids: List[Tuple[str, Axes]]) -> str:
    """`FAMILY-key-key-HASH`: the same grid (whatever the order of its values' keys) gives the same name."""
    families = list(dict.fromkeys(f for f, _ in grids))
    keys = list(dict.fromkeys(k for _, axes in grids for k, _ in axes if k not in NOT_IDENTITY))
    canon = json.dumps([[f, sorted((k, v) for k, v in axes if k not in NOT_IDENTITY)] for f, axes in grids])
    digest = hashlib.sha1(canon.encode()).hexdigest()[:6]
    stem = '+'.join(families) if len(families) <= 2 else f'{len(families)}families'
    name = '-'.join([stem, *[k.replace('.', '_') for k in keys[:4]], digest])
    return re.sub(r'[^A-Za-z0-9_.+=-]', '_', name)


def check_data(runs: List[Dict[str, Any]]) -> List[Tuple[str, Path]]:
    """The training data of every run: present (IDX headers checked), or to be downloaded once before the runs
    start (returned); missing with `download=False` raises `SweepError`."""
    from labml import lab
    from evidential.data import DataError, check_idx_file, dataset_spec, raw_files
    missing, done = [], set()
    for run in runs:
        values = run['_values']
        name = values.get('dataset')
        if not name:
            continue
        root = Path(values['data_dir']).expanduser() if values.get('data_dir') else Path(lab.get_data_path())
        if (name, root) in done:
            continue
        done.add((name, root))
        spec = dataset_spec(name)
        files = raw_files(spec, root)
        if all(f.exists() for f, _ in files):
            try:
                for f, magic in files:
                    check_idx_file(f, magic)
            except DataError as e:
                raise SweepError(str(e)) from None
        elif values.get('download', True):
            missing.append((name, root))
        else:
            raise SweepError(f"{run['id']}: {spec.name} files not found under {files[0][0].parent} "
                             f"and download=False (point data_dir= at the folder that holds {spec.folder}/raw)")
    return missing
