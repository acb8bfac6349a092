"""
# Sweeps: every combination of some settings, trained, evaluated and tabulated

    python -m experiments.sweep FAMILY key=v1,v2 key2=a,b seed=1,2,3 [--jobs N] [--split validation|test]
                                [--name NAME] [--engine local|ray] [--address ADDR] [--cpus-per-run C]
                                [--gpus-per-run G] [--storage DIR] [--fgsm-samples N] [--missing-samples N] [--dry-run]
    python -m experiments.sweep sweeps/compare_all.py [key=value ...] [options]

Each combination is a normal run of its family (`python -m experiments.train FAMILY key=value ...`, one run
per process: labml's state is global per process), in the usual run folders under the nearest `.labml.yaml`'s
experiments path, with its checkpoints and labml tracking (`dashboard=` passes through like any key). Each
finished run is evaluated (`python -m experiments.evaluate RUN --split validation`, the held-out split, unless
`--split test`), and the sweep writes into `<experiments path>/sweeps/<name>/`:

* `sweep.json` — the grid, and per run its overrides, uuid, status (`pending`, `running`, `done`, `failed`,
  `interrupted`), the metrics of its evaluation file, the node it ran on, the tail of its output on failure;
* `comparison.md` / `comparison.json` — `experiments.compare --over-seeds` over the evaluated runs;
* `runs/<family>-<hash>.log` — each run's training and evaluation output.

Values: a comma separates values only at the top level, so tuples and lists keep theirs
(`optimizer.betas=(0.9,0.99),(0.9,0.999)` is two values). Every combination is typed and checked exactly as the
family's own command line does (`configs.cli.resolve`) before anything runs: a bad value anywhere is one line on
stderr and exit code 2, and nothing is written.

A sweep file is plain Python (nanoGPT style) defining `runs = [(FAMILY, {key: [values] or value}), ...]` (a
list value is an axis; a grid may also be a list of such dicts), and optionally `name`, `split`, `jobs`;
`key=value` arguments after it are added to every grid.

Re-running a sweep (same name: by default derived from the grid) skips runs that are done and evaluated,
evaluates runs whose training finished, resumes interrupted runs from their checkpoint (`resume=<uuid>`), and
starts again runs that have no checkpoint; failed runs are tried again. A failing run (non-zero exit: non-finite
numbers, killed) is recorded and the others go on. Ctrl-C / SIGTERM stops the runs (they save their last
epoch), writes `sweep.json` and prints the command that continues. Exit codes: 0 all done, 1 some failed,
2 bad input, 130 / 143 interrupted.

Engines: `local` (default) keeps `--jobs` subprocesses going and uses no network; `ray` runs the same commands
as Ray tasks (`experiments/sweep_ray.py`).
"""
import argparse
import contextlib
import hashlib
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from configs.registry import NOT_TRAINING

ROOT = Path(__file__).resolve().parent.parent
SWEEPS_FOLDER = 'sweeps'
STATE_FILE = 'sweep.json'
#: Keys that do not change what is trained are not part of a run's identity or of the sweep's default name, so a
#: sweep can be continued with another dashboard, device or data folder
NOT_IDENTITY = NOT_TRAINING
#: Seconds a run gets to save its last epoch after SIGTERM before it is killed
TERMINATE_GRACE_S = 60
PROGRESS_EVERY_S = 30
#: The table's column of each run's training time (the wall time of its training process)
TRAIN_COLUMN = 'train_s'
EXIT_FAILED, EXIT_USAGE = 1, 2
_ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')


class SweepError(ValueError):
    """A bad sweep (grid, value, file, option): one line on stderr, exit code 2, nothing written."""


# ---------------------------------------------------------------------------------------------- the grid

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
    from evidential.data import DataError, IMAGE_MAGIC, LABEL_MAGIC, check_idx_file, dataset_spec
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
        files = [root / spec.folder / 'raw' / f'{p}-{w}-idx{n}-ubyte' for p in ('train', 't10k')
                 for w, n in (('images', 3), ('labels', 1))]
        if all(f.exists() for f in files):
            try:
                for f in files:
                    check_idx_file(f, IMAGE_MAGIC if 'images' in f.name else LABEL_MAGIC)
            except DataError as e:
                raise SweepError(str(e)) from None
        elif values.get('download', True):
            missing.append((name, root))
        else:
            raise SweepError(f"{run['id']}: {spec.name} files not found under {root / spec.folder / 'raw'} "
                             f"and download=False (point data_dir= at the folder that holds {spec.folder}/raw)")
    return missing


# ---------------------------------------------------------------------------------------------- engines

def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGTERM when the sweep dies, even by SIGKILL (Linux), so it saves its epoch and stops."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def exit_status(returncode: int) -> int:
    """Popen's `-N` (killed by signal N) as the shell writes it, 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class LocalEngine:
    """A pool of subprocesses on this machine, started from the main thread (no network at all)."""
    name = 'local'

    def __init__(self, jobs: int):
        self.capacity = jobs
        self.procs: Dict[str, Tuple[subprocess.Popen, Any]] = {}

    def start(self, key: str, command: List[str], cwd: Path, env: Dict[str, str], log_path: Path) -> None:
        log = open(log_path, 'ab')
        self.procs[key] = (subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent), log)

    def poll(self, timeout: float) -> List[Tuple[str, Dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while True:
            finished = []
            for key, (proc, log) in list(self.procs.items()):
                if proc.poll() is not None:
                    log.close()
                    del self.procs[key]
                    finished.append((key, {'rc': exit_status(proc.returncode), 'host': socket.gethostname(),
                                           'node': None}))
            if finished or time.monotonic() >= deadline:
                return finished
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def running(self) -> int:
        return len(self.procs)

    def terminate(self) -> None:
        for proc, _ in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        for proc, _ in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- the sweep

def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return '?'
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _tail(text: str, lines: int = 12) -> str:
    """The last lines of a run's output, without colours and progress-bar redraws."""
    text = _ANSI.sub('', text)
    out = [line.strip() for chunk in text.split('\n') for line in chunk.split('\r')[-1:]]
    return '\n'.join([line for line in out if line][-lines:])


class Sweep:
    def __init__(self, *, name: str, runs: List[Dict[str, Any]], grids, split: str, engine, cwd: Path,
                 experiments_path: Path, fgsm_samples: Optional[int], command: List[str], options: Dict[str, Any],
                 missing_samples: Optional[int] = None, columns: Optional[List[str]] = None):
        self.name, self.split, self.engine, self.cwd = name, split, engine, cwd
        # the table's columns (`None`: every one); `TRAIN_COLUMN` is each run's training time
        self.columns = columns
        self.experiments_path = experiments_path
        self.folder = experiments_path / SWEEPS_FOLDER / name
        self.fgsm_samples, self.missing_samples = fgsm_samples, missing_samples
        self.command = command
        self.options = options
        self.grids = grids
        self.runs = runs
        self.by_id = {r['id']: r for r in runs}
        self.stop_signal: Optional[int] = None
        self.signals = 0
        self.started = time.monotonic()
        self.durations: List[float] = []
        self.last_progress = 0.0
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join([str(ROOT), *([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])])
        env['PYTHONUNBUFFERED'] = '1'
        self.env = env

    # -- state
    def merge_previous(self) -> None:
        """Takes over what a previous sweep of this name recorded about the same runs."""
        path = self.folder / STATE_FILE
        if not path.is_file():
            return
        try:
            previous = json.loads(path.read_text())
            old = {r['id']: r for r in previous.get('runs', [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            print(f"warning: {path} is unreadable; every run starts afresh", file=sys.stderr)
            return
        keep = ('uuid', 'run_dir', 'status', 'stage', 'attempts', 'exit_code', 'error', 'metrics', 'node',
                'eval_node', 'host', 'log', 'log_offset', 'train_s', 'eval_s', 'previous_uuids', 'started', 'finished',
                'evaluated_split')
        for run in self.runs:
            if run['id'] in old:
                run.update({k: old[run['id']][k] for k in keep if k in old[run['id']]})

    def state(self) -> Dict[str, Any]:
        counts = self.counts()
        return {
            'name': self.name, 'split': self.split, 'engine': self.engine.name, 'options': self.options,
            'command': self.command, 'folder': str(self.folder), 'experiments_path': str(self.experiments_path),
            'grid': [{'family': f, 'axes': {k: v for k, v in axes}} for f, axes in self.grids],
            'counts': counts, 'updated': time.strftime('%Y-%m-%dT%H:%M:%S'),
            'elapsed_s': round(time.monotonic() - self.started, 1),
            'runs': [{**{k: v for k, v in r.items() if not k.startswith('_')},
                      'run_dir': str(self.run_dir(r)) if r.get('uuid') else None} for r in self.runs],
            'comparison': {'markdown': 'comparison.md', 'json': 'comparison.json'},
        }

    def save(self) -> None:
        from configs.checkpoint import atomic_write_bytes
        text = json.dumps(self.state(), indent=2) + '\n'
        atomic_write_bytes(self.folder / STATE_FILE, lambda f: f.write(text.encode()), sync=False)

    def counts(self) -> Dict[str, int]:
        counts = {s: 0 for s in ('done', 'running', 'failed', 'interrupted', 'pending')}
        for r in self.runs:
            counts[r.get('status', 'pending')] = counts.get(r.get('status', 'pending'), 0) + 1
        return counts

    # -- what each run needs
    def run_dir(self, run) -> Optional[Path]:
        return self.experiments_path / run['family'] / run['uuid'] if run.get('uuid') else None

    def eval_file(self, run) -> Optional[Path]:
        from experiments.evaluation import SPLIT_FILES
        d = self.run_dir(run)
        return d / SPLIT_FILES[self.split][0] if d else None

    def _uuid_from_log(self, run) -> Optional[str]:
        log = self.folder / run['log'] if run.get('log') else None
        if not log or not log.is_file():
            return None
        with open(log, 'rb') as f:
            f.seek(run.get('log_offset', 0))
            text = _ANSI.sub('', f.read().decode(errors='replace'))
        found = re.findall(rf"{re.escape(run['family'])}: ([0-9a-f]{{32}})\b", text) or \
            re.findall(r'run folder: .*/([0-9a-f]{32})\s', text)
        return found[-1] if found else None

    def next_stage(self, run) -> Optional[str]:
        """`None` (done), `'evaluate'`, `'resume'` or `'train'` (from scratch)."""
        from configs.checkpoint import CheckpointError, load_checkpoint
        if not run.get('uuid') and run.get('status') in ('running', 'interrupted', 'failed'):
            run['uuid'] = self._uuid_from_log(run)  # the sweep was killed before it read the uuid
        run_dir = self.run_dir(run)
        if run_dir is None or not run_dir.is_dir():
            if run.get('uuid'):
                run.setdefault('previous_uuids', []).append(run['uuid'])
                run['uuid'] = None
            return 'train'
        if run.get('status') == 'done' and run.get('evaluated_split') == self.split and self.eval_file(run).is_file():
            return None
        try:
            state = load_checkpoint(run_dir)
        except CheckpointError:
            run.setdefault('previous_uuids', []).append(run['uuid'])
            run['uuid'] = None
            return 'train'
        return 'evaluate' if state.get('epoch', 0) >= (run.get('epochs') or 0) else 'resume'

    def command_of(self, run, stage: str) -> List[str]:
        if stage == 'evaluate':
            command = [sys.executable, '-m', 'experiments.evaluate', str(self.run_dir(run)), '--split', self.split]
            if self.fgsm_samples is not None:
                command += ['--fgsm-samples', str(self.fgsm_samples)]
            if self.missing_samples is not None:
                command += ['--missing-samples', str(self.missing_samples)]
            return command
        argv = list(run['argv']) + ([f"resume={run['uuid']}"] if stage == 'resume' else [])
        return [sys.executable, '-m', 'experiments.train', run['family'], *argv]

    @staticmethod
    def wait_for_previous(run_dir: Path, timeout: float = TERMINATE_GRACE_S) -> Optional[int]:
        """Waits while the process that last trained `run_dir` (its `run.pid`) is alive, e.g. still saving after
        the previous sweep was killed; returns its pid if it is still alive after `timeout` seconds."""
        from configs.checkpoint import training_pid
        deadline = time.monotonic() + timeout
        while True:
            pid = training_pid(run_dir)
            if pid is None or pid == os.getpid():
                return None
            if time.monotonic() > deadline:
                return pid
            time.sleep(0.2)

    def start(self, run, stage: str) -> None:
        if stage == 'resume':
            pid = self.wait_for_previous(self.run_dir(run))
            if pid is not None:
                run['status'] = 'running'
                self.fail(run, f"run {run['uuid']} is still being trained by process {pid}; stop it, then run the sweep again")
                return
        log = self.folder / 'runs' / f"{run['slug']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = self.command_of(run, stage)
        with open(log, 'ab') as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {stage}: {shlex.join(command)}\n".encode())
            offset = f.tell()
        run.update(status='running', stage=stage, log=str(log.relative_to(self.folder)), log_offset=offset,
                   exit_code=None, error=None, _t0=time.monotonic())
        if stage != 'evaluate':
            run['attempts'] = run.get('attempts', 0) + 1
            run['started'] = time.strftime('%Y-%m-%dT%H:%M:%S')
        self.engine.start(run['id'], command, self.cwd, self.env, log)
        what = {'train': 'training', 'resume': f"resuming {run['uuid']}", 'evaluate': f"evaluating {run['uuid']}"}[stage]
        print(f"  start  {run['id']}: {what}", flush=True)

    def finished(self, run, result: Dict[str, Any]) -> Optional[str]:
        """Records a finished stage; returns the next stage to start, if any."""
        stage, rc = run['stage'], result['rc']
        seconds = time.monotonic() - run.pop('_t0', time.monotonic())
        run['_elapsed'] = run.get('_elapsed', 0.0) + seconds
        node_key = 'eval_node' if stage == 'evaluate' else 'node'
        if result.get('node') is not None:
            run[node_key] = result['node']
        run['host'] = result.get('host')
        if stage != 'evaluate' and not run.get('uuid'):
            run['uuid'] = self._uuid_from_log(run)
        run['exit_code'] = rc
        if rc == 0:
            if stage == 'evaluate':
                run['eval_s'] = round(seconds, 2)
                return self.evaluated(run)
            run['train_s'] = round(run.get('train_s', 0) + seconds, 2) if stage == 'resume' else round(seconds, 2)
            if not run.get('uuid'):
                return self.fail(run, 'no run uuid in the output of training')
            return 'evaluate'
        if self.stop_signal is not None and (rc in (130, 143) or result.get('cancelled')):
            run['status'] = 'interrupted'
            print(f"  stop   {run['id']}: interrupted ({stage})", flush=True)
            return None
        return self.fail(run, self._error_text(run, stage, rc) + (f"\n{result['error']}" if result.get('error') else ''))

    def _error_text(self, run, stage, rc) -> str:
        log = self.folder / run['log']
        with open(log, 'rb') as f:
            f.seek(run.get('log_offset', 0))
            tail = _tail(f.read().decode(errors='replace'))
        why = {3: 'training stopped on non-finite numbers', 2: 'bad command line or data',
               137: 'killed (SIGKILL: out of memory?)', 143: 'terminated (SIGTERM)', 130: 'interrupted (SIGINT)'}
        return f"{stage} exited with {rc}" + (f" ({why[rc]})" if rc in why else '') + (f":\n{tail}" if tail else '')

    def fail(self, run, error: str) -> None:
        run.update(status='failed', error=error, finished=time.strftime('%Y-%m-%dT%H:%M:%S'))
        lines = error.splitlines()
        print(f"  FAIL   {run['id']}: {lines[0]}" + (f" ... {lines[-1]}" if len(lines) > 1 else ''), flush=True)
        return None

    def evaluated(self, run) -> None:
        from experiments.compare import load_row
        try:
            row = load_row(str(self.run_dir(run)), self.experiments_path, self.split)
        except Exception as e:  # a missing or corrupt evaluation file
            return self.fail(run, f"evaluation file unreadable: {e}")
        run.update(status='done', metrics=row.values, evaluated_split=self.split,
                   finished=time.strftime('%Y-%m-%dT%H:%M:%S'))
        self.durations.append(run.pop('_elapsed', 0.0))
        acc = row.values.get('accuracy')
        print(f"  done   {run['id']}: {run['uuid']}, accuracy {acc:.4f}" if acc is not None else
              f"  done   {run['id']}: {run['uuid']}", flush=True)
        return None

    # -- progress
    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_EVERY_S:
            return
        self.last_progress = now
        c = self.counts()
        todo = c['pending'] + c['interrupted']
        elapsed = now - self.started
        if self.durations:
            per_run = sum(self.durations) / len(self.durations)
            parallel = max(1, min(self.engine.capacity, todo + c['running']))
            remaining = (todo + 0.5 * c['running']) * per_run / parallel
        else:
            remaining = None if todo + c['running'] else 0
        print(f"[sweep {self.name}] {c['done']}/{len(self.runs)} done, {c['running']} running, {c['failed']} failed, "
              f"{todo} to go; elapsed {_fmt_time(elapsed)}, remaining ~{_fmt_time(remaining)}", flush=True)

    def poll_uuids(self) -> bool:
        changed = False
        for run in self.runs:
            if run.get('status') == 'running' and run.get('stage') == 'train' and not run.get('uuid'):
                run['uuid'] = self._uuid_from_log(run)
                changed |= bool(run['uuid'])
        return changed

    # -- the loop
    def on_signal(self, signum, frame) -> None:
        """Only notes the signal: the loop stops the runs (a second signal kills them)."""
        self.signals += 1
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self) -> int:
        queue: List[Tuple[Dict[str, Any], str]] = []
        skipped = 0
        for run in self.runs:
            stage = self.next_stage(run)
            if stage is None:
                skipped += 1
                if run.get('status') != 'done':
                    run['status'] = 'done'
                continue
            # 'interrupted': a previous sweep stopped (or was killed) while it ran; failed runs are tried again
            run['status'] = 'pending' if stage == 'train' else 'interrupted'
            queue.append((run, stage))
        todo_text = ', '.join(f"{n} to {s}" for s, n in
                              sorted({s: sum(1 for _, t in queue if t == s) for s in {t for _, t in queue}}.items()))
        print(f"sweep {self.name}: {len(self.runs)} runs ({skipped} already done{', ' + todo_text if queue else ''}); "
              f"engine {self.engine.name}, up to {self.engine.capacity} at a time; split {self.split}\n"
              f"  folder {self.folder}", flush=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.save()
        handlers = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        stop_deadline = None
        try:
            self.progress(force=True)
            while queue or self.engine.running():
                while queue and self.stop_signal is None and self.engine.running() < self.engine.capacity:
                    run, stage = queue.pop(0)
                    self.start(run, stage)
                    self.save()
                results = self.engine.poll(timeout=0.5)
                changed = bool(results) | self.poll_uuids()
                for key, result in results:
                    run = self.by_id[key]
                    nxt = self.finished(run, result)
                    if nxt is not None:
                        if self.stop_signal is None:
                            self.start(run, nxt)
                        else:
                            run['status'] = 'interrupted'
                if changed:
                    self.save()
                    self.progress(force=bool(results))
                else:
                    self.progress()
                if self.stop_signal is not None:
                    queue = []
                    if stop_deadline is None:
                        print(f"\n{signal.Signals(self.stop_signal).name}: stopping the runs (they save their last "
                              f"complete epoch; a second Ctrl-C kills them) ...", file=sys.stderr, flush=True)
                        self.engine.terminate()
                        stop_deadline = time.monotonic() + TERMINATE_GRACE_S
                    if self.signals > 1 or time.monotonic() > stop_deadline:
                        self.engine.kill()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            if self.stop_signal is not None:
                for run in self.runs:
                    if run.get('status') == 'running':
                        run['status'] = 'interrupted'
            self.save()
            self.engine.close()
        self.write_table()
        self.save()
        c = self.counts()
        again = shlex.join(['python', '-m', 'experiments.sweep', *self.command])
        if self.stop_signal is not None:
            print(f"\nstopped by {signal.Signals(self.stop_signal).name}: {c['done']} done, {c['interrupted']} interrupted, "
                  f"{c['pending']} not started, {c['failed']} failed (state in {self.folder / STATE_FILE}).\n"
                  f"Continue with: {again}", file=sys.stderr, flush=True)
            return 128 + self.stop_signal
        if c['failed']:
            print(f"\n{c['failed']} run(s) failed (see 'error' in {self.folder / STATE_FILE} and the logs in "
                  f"{self.folder / 'runs'}); running the same command again retries them:\n  {again}",
                  file=sys.stderr, flush=True)
            return EXIT_FAILED
        return 0

    def write_table(self) -> Optional[str]:
        """`compare --over-seeds` over the evaluated runs, with each run's training time (`train_s`, the wall time
        of its training process) as a column: comparison.md / comparison.json in the sweep folder, with the sweep
        file's `columns` where it gives them."""
        from configs.checkpoint import atomic_write_bytes
        from experiments.compare import (JSON_FILE, MARKDOWN_FILE, CompareError, build, label_rows, load_row,
                                         markdown, over_seeds)
        done = [r for r in self.runs if r.get('status') == 'done']
        if not done:
            return None
        rows = [load_row(str(self.run_dir(r)), self.experiments_path, self.split) for r in done]
        for row, r in zip(rows, done):
            row.values[TRAIN_COLUMN] = r.get('train_s')
        label_rows(rows)
        rows = over_seeds(rows)
        try:
            table = build(rows, self.columns)
        except CompareError as e:
            print(f"warning: {e}; the table has every column", file=sys.stderr)
            table = build(rows)
        text = markdown(table)
        atomic_write_bytes(self.folder / MARKDOWN_FILE, lambda f: f.write(text.encode()), sync=False)
        data = json.dumps(table, indent=2) + '\n'
        atomic_write_bytes(self.folder / JSON_FILE, lambda f: f.write(data.encode()), sync=False)
        print('\n' + text)
        print(f"written: {self.folder / STATE_FILE}, {self.folder / MARKDOWN_FILE}, {self.folder / JSON_FILE}")
        return text


# ---------------------------------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = _Parser(prog='python -m experiments.sweep',
                description='Train and evaluate every combination of settings; one table over seeds.',
                epilog='Example: python -m experiments.sweep evidence_mnist kl_coef=0.01,0.03 seed=1,2,3 --jobs 2')
    p.add_argument('target', help='a family (python -m experiments.train --list) or a sweep file (.py)')
    p.add_argument('axes', nargs='*', metavar='key=v1,v2', help='values to sweep; commas split only at the top level')
    p.add_argument('--jobs', type=int, default=None,
                   help='runs at a time (local default 1; ray default: what the CPUs allow)')
    p.add_argument('--split', choices=['validation', 'test'], default=None,
                   help='evaluate on the held-out split (default; needs holdout>0) or the test set')
    p.add_argument('--name', default=None, help='sweep folder name under <experiments>/sweeps (default: from the grid)')
    p.add_argument('--engine', choices=['local', 'ray'], default='local')
    p.add_argument('--address', default=None, help="ray: a running cluster's address (default: start a local Ray)")
    p.add_argument('--cpus-per-run', type=float, default=1.0, metavar='C', help='ray: CPUs each run reserves')
    p.add_argument('--gpus-per-run', type=float, default=0.0, metavar='G', help='ray: GPUs each run reserves')
    p.add_argument('--storage', default=None, metavar='DIR',
                   help='project folder the runs and the sweep folder go to (its .labml.yaml is created if missing); '
                        'with a multi-machine Ray cluster it must be shared storage at the same path everywhere')
    p.add_argument('--fgsm-samples', type=int, default=None, metavar='N',
                   help='passed to experiments.evaluate (test split only; 0 skips its FGSM sweep)')
    p.add_argument('--missing-samples', type=int, default=None, metavar='N',
                   help='passed to experiments.evaluate (test split only; 0 skips its missing-pixel sweep)')
    p.add_argument('--dry-run', action='store_true', help='print the planned runs and what each needs; run nothing')
    args = p.parse_intermixed_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error('--jobs must be >= 1')
    if args.cpus_per_run < 0 or args.gpus_per_run < 0:
        p.error('--cpus-per-run and --gpus-per-run must be >= 0')
    if args.fgsm_samples is not None and args.fgsm_samples < 0:
        p.error('--fgsm-samples must be >= 0')
    if args.missing_samples is not None and args.missing_samples < 0:
        p.error('--missing-samples must be >= 0')
    if args.engine != 'ray' and (args.address or args.gpus_per_run or args.cpus_per_run != 1.0):
        p.error('--address, --cpus-per-run and --gpus-per-run need --engine ray')
    return args


LABML_YAML = 'data_path: data\nexperiments_path: logs\ncheck_repo_dirty: false\n'


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cwd = Path.cwd()
    try:
        target = Path(args.target)
        if args.target.endswith('.py') or target.is_file():
            spec = load_sweep_file(target)
            extra = parse_axes(args.axes)
            grids = [(f, [a for a in axes if a[0] not in dict(extra)] + extra) for f, axes in spec['grids']]
        else:
            spec = {'name': None, 'split': None, 'jobs': None, 'columns': None}
            grids = [(args.target, parse_axes(args.axes))]
        split = args.split or spec['split'] or 'validation'
        if split not in ('validation', 'test'):
            raise SweepError(f"split={split!r}: must be validation or test")
        jobs = args.jobs or spec['jobs']
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise SweepError(f"jobs={jobs!r}: must be an integer >= 1")
        name = args.name or spec['name'] or default_name(grids)
        if not re.fullmatch(r'[A-Za-z0-9_.+=-]+', name) or name.startswith('.'):
            raise SweepError(f"--name {name!r}: use letters, digits and _ . + = - only")
        storage = Path(args.storage).expanduser().resolve() if args.storage else None
        if storage is not None and not storage.is_dir():
            raise SweepError(f"--storage {storage}: not a folder")
        from labml import lab
        from configs.runner import use_project_folder
        if storage is not None and (storage / '.labml.yaml').is_file():
            use_project_folder(storage)
        elif storage is None and use_project_folder(cwd) is None:
            lab.get_path()
        runs = plan(grids, split, cwd)
        if storage is not None and not (storage / '.labml.yaml').is_file():
            experiments_path, data_path = storage / 'logs', storage / 'data'
            for r in runs:  # what labml will see there once the .labml.yaml exists
                if not r['_values'].get('data_dir'):
                    r['_values']['data_dir'] = str(data_path)
        else:
            experiments_path = Path(lab.get_experiments_path())
        missing_data = check_data(runs)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.engine == 'ray':
        from experiments.sweep_ray import RayEngine, default_jobs
        jobs = jobs or default_jobs(args, len(runs))
    else:
        jobs = jobs or 1
    options = {'jobs': jobs, 'engine': args.engine, 'address': args.address, 'cpus_per_run': args.cpus_per_run,
               'gpus_per_run': args.gpus_per_run, 'storage': str(storage) if storage else None,
               'fgsm_samples': args.fgsm_samples, 'missing_samples': args.missing_samples, 'cwd': str(storage or cwd)}
    command = list(argv) if args.name else [*argv, '--name', name]

    class _DryEngine:
        name, capacity = args.engine, jobs
    sweep = Sweep(name=name, runs=runs, grids=grids, split=split, engine=_DryEngine(), cwd=storage or cwd,
                  experiments_path=experiments_path, fgsm_samples=args.fgsm_samples, command=command, options=options,
                  missing_samples=args.missing_samples, columns=spec['columns'])
    sweep.merge_previous()
    if args.dry_run:
        print(f"sweep {name}: {len(runs)} runs, split {split}, engine {args.engine} ({jobs} at a time)\n"
              f"  folder {sweep.folder}")
        for run in runs:
            stage = sweep.next_stage(dict(run))
            what = 'done, skipped' if stage is None else {'train': 'train + evaluate', 'resume': f"resume {run.get('uuid')} + evaluate",
                                                          'evaluate': f"evaluate {run.get('uuid')}"}[stage]
            print(f"  {run['id']}: {what}\n      python -m experiments.train {run['family']} {shlex.join(run['argv'])}")
        if missing_data:
            print('  data to download first: ' + ', '.join(f'{n} into {root}' for n, root in missing_data))
        return 0
    # Valid: from here on things are written
    if storage is not None and not (storage / '.labml.yaml').is_file():
        (storage / '.labml.yaml').write_text(LABML_YAML)
    if missing_data:
        from evidential.data import DataError, load_split
        for name_, root in missing_data:
            print(f"downloading {name_} into {root} once, before the runs ...", flush=True)
            try:
                for train in (True, False):
                    load_split(name_, root, train=train, download=True)
            except DataError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_USAGE
    if args.engine == 'ray':
        if args.address and storage is None:
            print("note: with --address the runs write their folders on the machine each one runs on, under "
                  f"{storage or cwd}; for a cluster of several machines pass --storage DIR on shared storage",
                  file=sys.stderr)
        try:
            sweep.engine = RayEngine(jobs=jobs, address=args.address, cpus_per_run=args.cpus_per_run,
                                     gpus_per_run=args.gpus_per_run, sweep_env=sweep.env)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    else:
        sweep.engine = LocalEngine(jobs)
    return sweep.run()


if __name__ == '__main__':
    sys.exit(main())
