"""
# Train a run of any registered family

    python -m experiments.train FAMILY [preset=NAME] [key=value ...]
    python -m experiments.train --list

`python -m experiments.evidence_mnist ...` is the same as `python -m experiments.train evidence_mnist ...`
(each family's entry point is `entry_point(NAME)`). Exit codes: 0 done (or `--help`), 2 a bad command line,
run, checkpoint or data folder (one line on stderr, nothing written), 3 training stopped on non-finite
numbers (the last good checkpoint is kept), 4 a file of the run could not be written (disk full, I/O error: the
message names the file; the last complete checkpoint is kept and `resume=` continues from it once the disk has
room), 130 / 143 interrupted by Ctrl-C / SIGTERM (with how to resume).
"""
import os
import shlex
import shutil
import sys
from typing import Callable, List, Optional

from configs import registry


def _writers(values) -> set:
    """Screen and file writers, plus labml's app writer when a dashboard answers.

    `dashboard=` names it; without it, `app_url` from `.labml.yaml` (or `labml_app_url`) is used.
    """
    from experiments.dashboard.client import attach
    writers = {'screen', 'file'}
    if attach(values.get('dashboard') or None):
        writers.add('app')
    return writers


def _plain(value):
    """A value as JSON keeps it: numbers, strings, booleans, lists of them; anything else as text."""
    if isinstance(value, bool) or isinstance(value, (int, str)) or (isinstance(value, float) and value == value):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def describe(prepared, argv: List[str]) -> dict:
    """What the run's histogram lines (and the dashboard) say about it: experiment, uuid, preset, the keys the
    preset and the command line set, the overrides, `compare`'s key settings and label, epochs. A resumed run
    keeps its first description (its preset and overrides), with the epochs and overrides of the resume."""
    from configs.cli import parse_argv
    from configs.histograms import read_epochs
    from configs.runner import run_folder
    from experiments.compare.rows import key_settings, row_label
    family, values = prepared.family, prepared.values
    run_dir = run_folder(prepared)
    before = next((r['run'] for r in reversed(read_epochs(run_dir)) if isinstance(r.get('run'), dict)), {})
    preset = parse_argv(argv)[0] if not values.get('resume') else before.get('preset')
    overrides = {**before.get('overrides', {}),
                 **{k: _plain(v) for k, v in prepared.overrides.items() if k != 'resume'}}
    if 'dashboard' in overrides:  # its ?token= stays out of what is sent and kept
        overrides['dashboard'] = str(overrides['dashboard']).split('?')[0]
    set_keys = set(before.get('set_keys', [])) | set(overrides)
    if preset in family.presets:
        set_keys |= set(family.presets[preset].values)
    settings = {k: _plain(v) for k, v in key_settings(family.name, values).items()}
    return {'experiment': family.name, 'uuid': run_dir.name, 'preset': preset, 'overrides': overrides,
            'set_keys': sorted(set_keys), 'settings': settings,
            'label': row_label(family.name, run_dir.name, settings), 'epochs': values.get('epochs')}


def main(family_name: str, argv: Optional[List[str]] = None) -> int:
    """Trains a run of `family_name` from the command line `argv`; returns the exit code."""
    from configs.checkpoint import CHECKPOINT_FILE, CheckpointError, RunWriteError, load_checkpoint
    from configs.cli import UsageError
    from configs.experiment import Interrupted, TrainingStopped
    from configs.runner import prepare, train
    from evidential.data import DataError
    argv = sys.argv[1:] if argv is None else argv
    family = registry.get(family_name)
    try:
        prepared = prepare(family, argv, _writers)
    except BrokenPipeError:  # `--help | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except (UsageError, CheckpointError, DataError, ValueError) as e:  # ValueError: e.g. no CUDA for device=cuda
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # reading the data or the run (nothing is written yet): e.g. a name too long
        print(f"error: {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        return 2
    if prepared is None:
        return 0  # --help
    prepared.describe = describe(prepared, argv)
    from experiments.dashboard.client import describe_run
    describe_run(prepared.describe)
    data = prepared.conf.dataset
    print(f"data: {data.name} from {data.train.images.device}, {len(data.train)} train / {len(data.valid)} valid "
          f"({data.valid_source}) / {len(data.test)} test images, {prepared.conf.n_classes} classes")
    try:
        run_dir, final = train(prepared)
    except TrainingStopped as e:
        run_dir = e.run_dir
        kept = (f"the last good checkpoint (end of epoch {load_checkpoint(run_dir)['epoch']}) is kept in {run_dir}"
                if (run_dir / CHECKPOINT_FILE).exists() else "no epoch had completed, so there is no checkpoint")
        print(f"\nerror: training stopped: {e}; {kept}", file=sys.stderr)
        return 3
    except RunWriteError as e:
        print(f"\nerror: {e}; {_kept(e.run_dir, load_checkpoint, CHECKPOINT_FILE, family)}", file=sys.stderr)
        return 4
    except Interrupted as e:
        if (e.run_dir / CHECKPOINT_FILE).exists():
            print(f"\ninterrupted by {e.args[0]}: the finished epochs are saved in {e.run_dir}.\n"
                  f"Resume with: python -m {family.prog} resume={e.run_dir.name}", file=sys.stderr)
        else:  # nothing to resume: the folder would only confuse compare and the run list
            shutil.rmtree(e.run_dir, ignore_errors=True)
            print(f"\ninterrupted by {e.args[0]} before the first epoch finished: there is nothing to resume, so "
                  f"the run folder was removed.\nStart it again with: python -m {family.prog} {shlex.join(argv)}",
                  file=sys.stderr)
        return 128 + e.signal_number
    print(f"\ndone: test accuracy {final['accuracy.test']:.4f}, test NLL {final['loss.test']:.4f}\n"
          f"run folder: {run_dir}\n"
          f"evaluate:   python -m experiments.evaluate {run_dir.name}")
    return 0


def _kept(run_dir, load_checkpoint, checkpoint_file, family) -> str:
    """What a run stopped by a failed write still has, and how to continue it."""
    try:
        state = load_checkpoint(run_dir) if (run_dir / checkpoint_file).exists() else None
    except Exception as e:  # noqa: BLE001 - say so, rather than hide the write error behind another one
        return f"its checkpoint cannot be read either ({e})"
    if state is None:
        return (f"no epoch had completed, so there is no checkpoint; free some space in {run_dir.parent} "
                f"and start the run again")
    if state['status'] == 'completed':
        return (f"training had finished (checkpoint of epoch {state['epoch']} complete in {run_dir}), "
                f"only the last log lines are missing")
    return (f"the last complete checkpoint (end of epoch {state['epoch']}) is kept in {run_dir}.\n"
            f"Free some space, then resume with: python -m {family.prog} resume={run_dir.name}")


def entry_point(family_name: str) -> Callable[[Optional[List[str]]], int]:
    """`main(argv=None) -> exit code` of one family: what `experiments/<family>.py` exposes."""
    def family_main(argv: Optional[List[str]] = None) -> int:
        return main(family_name, argv)
    family_main.__name__ = f'{family_name}_main'
    return family_main


def cli(argv: Optional[List[str]] = None) -> int:
    """`python -m experiments.train FAMILY ...`: the family's entry point; without one, the list of families."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help', '--list'):
        print('usage: python -m experiments.train FAMILY [preset=NAME] [key=value ...]\n\nfamilies:')
        for family in registry.all_families():
            print(f"  {family.name:<18} {family.description}")
        return 0 if argv else 2
    if argv[0] not in registry.FAMILIES:
        print(f"error: unknown family {argv[0]!r}; known: {', '.join(registry.FAMILIES)}", file=sys.stderr)
        return 2
    return main(argv[0], argv[1:])


if __name__ == '__main__':
    sys.exit(cli())
