"""
The state of a sweep: its runs, what each one needs next (train, resume, evaluate or nothing), the command of
each stage, and `sweep.json`, which a sweep of the same name takes over.
"""
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
SWEEPS_FOLDER = 'sweeps'
STATE_FILE = 'sweep.json'
#: Colours and cursor moves in a run's output
ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')


class SweepState:
    """The runs of a sweep and what is recorded about them (`sweep.json`); `experiments.sweep.loop.Sweep` runs
    them."""

    def __init__(self, *, name: str, runs: List[Dict[str, Any]], grids, split: str, engine, cwd: Path,
                 experiments_path: Path, command: List[str], options: Dict[str, Any],
                 evaluate_args: Sequence[str] = (), columns: Optional[List[str]] = None):
        self.name, self.split, self.engine, self.cwd = name, split, engine, cwd
        # the table's columns (`None`: every one); `TRAIN_COLUMN` is each run's training time
        self.columns = columns
        self.experiments_path = experiments_path
        self.folder = experiments_path / SWEEPS_FOLDER / name
        # passed on to `python -m experiments.evaluate` (`['--fgsm-samples', '200', '--ood-file', PATH]`)
        self.evaluate_args = list(evaluate_args)
        self.command = command
        self.options = options
        self.grids = grids
        self.runs = runs
        self.by_id = {r['id']: r for r in runs}
        self.started = time.monotonic()
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

    def uuid_from_log(self, run) -> Optional[str]:
        log = self.folder / run['log'] if run.get('log') else None
        if not log or not log.is_file():
            return None
        with open(log, 'rb') as f:
            f.seek(run.get('log_offset', 0))
            text = ANSI.sub('', f.read().decode(errors='replace'))
        found = re.findall(rf"{re.escape(run['family'])}: ([0-9a-f]{{32}})\b", text) or \
            re.findall(r'run folder: .*/([0-9a-f]{32})\s', text)
        return found[-1] if found else None

    def next_stage(self, run) -> Optional[str]:
        """`None` (done), `'evaluate'`, `'resume'` or `'train'` (from scratch)."""
        from configs.checkpoint import CheckpointError, load_checkpoint
        if not run.get('uuid') and run.get('status') in ('running', 'interrupted', 'failed'):
            run['uuid'] = self.uuid_from_log(run)  # the sweep was killed before it read the uuid
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
            return command + self.evaluate_args
        argv = list(run['argv']) + ([f"resume={run['uuid']}"] if stage == 'resume' else [])
        return [sys.executable, '-m', 'experiments.train', run['family'], *argv]
