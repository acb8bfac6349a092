"""
# Running an experiment from the command line

The one code path every entry point (`experiments/*_mnist.py`) goes through:

1. parse and validate the command line (`configs/cli.py`) — mistakes exit with code 2;
2. on `resume=`, find the run and its saved values and checkpoint — mistakes exit with code 2;
3. build the labml configurations and load the data — missing or corrupt files exit with code 2;
   nothing is written to disk until here;
4. start the labml experiment (screen + file writers, plus the dashboard when one answers),
   train, checkpoint every epoch;
5. exit 0 when done, 3 on non-finite numbers, 130/143 on Ctrl-C/SIGTERM (with how to resume).
"""
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from labml import experiment, lab

from configs.checkpoint import CheckpointError, find_run, load_checkpoint, load_values, save_values
from configs.cli import Preset, UsageError, exit_usage, resolve
from configs.experiment import Interrupted, TrainingStopped
from evidential.data import DataError

# Keys that may differ when a run is resumed (everything else is taken from the run)
RESUME_OVERRIDABLE = {'epochs', 'device', 'dashboard', 'data_dir', 'download', 'resume', 'log_interval',
                      'valid_batch_size', 'optimizer.learning_rate'}


def _resume_values(values: Dict[str, Any], overrides: Dict[str, Any], experiment_name: str):
    run_dir = find_run(values['resume'], Path(lab.get_experiments_path()), experiment_name)
    saved = load_values(run_dir)
    changed = sorted(k for k in overrides if k not in RESUME_OVERRIDABLE and overrides[k] != saved.get(k))
    if changed:
        raise UsageError(f"cannot change {', '.join(changed)} when resuming run {run_dir.name}; "
                         f"only {', '.join(sorted(RESUME_OVERRIDABLE - {'resume'}))} may differ")
    merged = {**saved, **{k: v for k, v in overrides.items() if k in RESUME_OVERRIDABLE}}
    merged['resume'] = run_dir.name
    return run_dir, merged


def use_project_folder(start: Optional[Path] = None) -> Optional[Path]:
    """
    Points labml at the nearest folder, from the working directory up, that has a `.labml.yaml`.

    labml looks for `.labml.yaml` from the *calling script's* folder, which for `python -m` is
    always this repository; looking from the working directory instead lets a user (or a test)
    keep data and runs in a project folder of their own. Without one, the repository's is used.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / '.labml.yaml').is_file():
            # labml's `experiment.create(python_file=...)` sets its path from this file
            lab.get_path()  # creates labml's lab singleton, which `set_path` needs
            from labml.internal.lab import lab_singleton
            lab_singleton().set_path(str(folder / '.labml.yaml'))
            return folder / '.labml.yaml'
    return None


def _claim_run_folder(run_dir: Path) -> None:
    """
    labml leaves `run.pid` in a run folder and refuses to start a run whose folder has one.
    On resume it is removed, unless that process is still alive (the run is still training).
    """
    import os
    pid_file = run_dir / 'run.pid'
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        pid_file.unlink()  # stale: that process is gone
        return
    except PermissionError:
        pass
    if pid != os.getpid():
        raise UsageError(f"run {run_dir.name} is still running (pid {pid}); stop it before resuming")
    pid_file.unlink()


def _writers(dashboard: str) -> set:
    """Screen and file writers, plus labml's app writer when a dashboard answers.

    `dashboard=` names it; without it, `app_url` from `.labml.yaml` (or `labml_app_url`) is used.
    """
    writers = {'screen', 'file'}
    from experiments.dashboard.client import attach
    if attach(dashboard or None):
        writers.add('app')
    return writers


def run_experiment(configs_class, defaults: Dict[str, Any], presets: Dict[str, Preset], prog: str,
                   argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    labml_yaml = use_project_folder()
    name = configs_class.experiment_name.value if hasattr(configs_class.experiment_name, 'value') \
        else configs_class.experiment_name
    try:
        values, overrides, want_help = resolve(argv, configs_class, defaults, presets, prog)
        if want_help:
            return 0
        resume_state = None
        uuid = None
        if values.get('resume'):
            run_dir, values = _resume_values(values, overrides, name)
            resume_state = load_checkpoint(run_dir)
            if resume_state['status'] == 'completed' and resume_state['epoch'] >= values['epochs']:
                raise UsageError(f"run {run_dir.name} already finished its {resume_state['epoch']} epochs; "
                                 f"pass epochs=N with N > {resume_state['epoch']} to train it further")
            uuid = run_dir.name
        conf = configs_class()
        experiment.create(name=name, uuid=uuid, python_file=str(labml_yaml) if labml_yaml else None,
                          writers=_writers(values.get('dashboard', '')))
        experiment.configs(conf, dict(values))
        # Build everything that can fail on bad input before the run folder exists
        _ = conf.dataset, conf.model, conf.optimizer
        if resume_state is not None:
            from torch import Generator
            conf.restore(resume_state, Generator())  # checks the architecture early; run() restores again
    except (UsageError, CheckpointError, DataError) as e:
        exit_usage(str(e))
    except ValueError as e:  # e.g. a CUDA device that is not there
        exit_usage(str(e))

    print(f"data: {conf.dataset.name} from {conf.dataset.train.images.device}, "
          f"{len(conf.dataset.train)} train / {len(conf.dataset.valid)} valid ({conf.dataset.valid_source}) / "
          f"{len(conf.dataset.test)} test images, {conf.n_classes} classes")
    if resume_state is not None:
        try:
            _claim_run_folder(Path(lab.get_experiments_path()) / name / uuid)
        except UsageError as e:
            exit_usage(str(e))
    run_dir = Path(lab.get_experiments_path()) / name / experiment.get_uuid()
    interrupted = None
    try:
        with experiment.start():
            save_values(run_dir, values)
            try:
                final = conf.run(run_dir, resume_state)
            except Interrupted as e:
                # labml marks a run 'interrupted' only for a plain KeyboardInterrupt
                interrupted = e
                raise KeyboardInterrupt from e
    except TrainingStopped as e:
        from configs.checkpoint import CHECKPOINT_FILE
        kept = (f"the last good checkpoint (end of epoch {load_checkpoint(run_dir)['epoch']}) is kept in {run_dir}"
                if (run_dir / CHECKPOINT_FILE).exists() else "no epoch had completed, so there is no checkpoint")
        print(f"\nerror: training stopped: {e}; {kept}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        how = interrupted.args[0] if interrupted else 'SIGINT'
        print(f"\ninterrupted by {how}: the finished epochs are saved in {run_dir}.\n"
              f"Resume with: python -m {prog} resume={run_dir.name}", file=sys.stderr)
        return 128 + (interrupted.signal_number if interrupted else signal.SIGINT)
    print(f"\ndone: test accuracy {final['accuracy.test']:.4f}, test NLL {final['nll.test']:.4f}\n"
          f"run folder: {run_dir}\n"
          f"evaluate:   python -m experiments.evaluate {run_dir.name}")
    return 0


def load_trained(run: str, configs_classes: Dict[str, Any], *, data_dir: Optional[str] = None,
                 device: Optional[str] = None):
    """
    Rebuilds a finished (or interrupted) run for evaluation: `(conf, run_dir, checkpoint_state)`.

    `run` is a run uuid or run folder; `configs_classes` maps experiment names (the run folder's
    parent, e.g. `evidence_mnist`) to their Configs class. The configurations are the run's saved
    values (with `data_dir`/`device` replaced when given), the model and optimizer hold the last
    checkpoint, and nothing is written. Raises `CheckpointError`, `DataError` or `UsageError`.
    """
    if use_project_folder() is None:
        lab.get_path()
    run_dir = find_run(run, Path(lab.get_experiments_path()))
    kind = run_dir.parent.name
    if kind not in configs_classes:
        raise CheckpointError(f"{run_dir} is a run of {kind!r}, which this command cannot load; "
                              f"known: {', '.join(configs_classes)}")
    values = load_values(run_dir)
    if data_dir is not None:
        values['data_dir'] = data_dir
    if device is not None:
        values['device'] = device
    values['resume'] = ''
    values['dashboard'] = ''
    values['download'] = False  # evaluation reads the files that are there; a wrong folder is an error, not a download
    state = load_checkpoint(run_dir)
    conf = configs_classes[kind]()
    # The same path `experiment.configs` takes, without creating a labml run
    conf._set_values(values)
    from torch import Generator
    conf.restore(state, Generator())
    conf.model.eval()
    return conf, run_dir, state
