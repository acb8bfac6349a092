"""
# Running an experiment of a registered family

The one code path every entry point (`experiments.train`, `experiments/*_mnist.py`) goes through:

1. `prepare`: parse and validate the command line (`configs/cli.py`); on `resume=`, find the run and its
   saved values and checkpoint; build the labml configurations and load the data. Nothing is written
   to disk until here; mistakes raise `UsageError`, `CheckpointError`, `DataError` or `ValueError`.
2. `train`: start the labml experiment with the given writers, train, checkpoint every epoch; returns the
   final test metrics, or raises `TrainingStopped` (non-finite numbers) or `Interrupted` (Ctrl-C, SIGTERM),
   each carrying the run folder.

Nothing here exits the process: the entry point turns these errors into messages and exit codes.
`load_trained` rebuilds a finished run for evaluation.
"""
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from labml import experiment, lab

from configs import registry
from configs.checkpoint import BEFORE_CHECKPOINT, VALUES_FILE, CheckpointError, LogGuard, find_run, \
    first_write_error, load_checkpoint, load_values, save_values, training_pid
from configs.cli import CHECKS, UsageError, check, resolve, schema, validate
from configs.compat import quiet_start, set_values, tolerate_concurrent_starts, use_lab_file
from configs.experiment import Interrupted, MNISTExperimentConfigs
from evidential.precision import check_precision

# Keys that may differ when a run is resumed (everything else is taken from the run): those that do not change
# what is trained, and how long and how fast it goes on
RESUME_OVERRIDABLE = registry.NOT_TRAINING | {'resume', 'epochs', 'optimizer.learning_rate'}


def _resume_values(values: Dict[str, Any], overrides: Dict[str, Any], family):
    """The run to resume and its values: the saved ones (checked as the command line checks values) with the
    overrides a resume may change. labml writes a resumed run into `<experiments path>/<family>/<uuid>`, so a
    folder elsewhere (a copy, another project's run) is refused rather than read here and written there."""
    experiments_path = Path(lab.get_experiments_path())
    run_dir = find_run(values['resume'], experiments_path, family.name)
    home = experiments_path / family.name / run_dir.name
    if not home.is_dir() or home.resolve() != run_dir.resolve():
        raise UsageError(f"resume={values['resume']}: that run folder is not {home}, where this project keeps that "
                         f"run and where training would write; resume it from its own project folder (where its "
                         f".labml.yaml is), or by its uuid")
    links = sorted(p.name for p in run_dir.iterdir() if p.is_symlink())
    if links:  # labml appends to its log and rewrites its files by opening them: through a link, to its target
        raise UsageError(f"resume={values['resume']}: {', '.join(links)} in {run_dir} "
                         f"{'is a symbolic link' if len(links) == 1 else 'are symbolic links'}; a run folder of this "
                         f"app holds none")
    saved = load_values(run_dir)
    try:
        validate(schema(family.configs, family.defaults), saved, {**CHECKS, **family.checks})
    except UsageError as e:
        raise UsageError(f"{run_dir / VALUES_FILE}: {e}") from None
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
            use_lab_file(folder / '.labml.yaml')
            return folder / '.labml.yaml'
    return None


def _claim_run_folder(run_dir: Path) -> None:
    """
    labml leaves `run.pid` in a run folder and refuses to start a run whose folder has one.
    On resume it is removed, unless that process is still alive (the run is still training).
    """
    pid_file = run_dir / 'run.pid'
    if not pid_file.exists():
        return
    pid = training_pid(run_dir)
    if pid is not None and pid != os.getpid():
        raise UsageError(f"run {run_dir.name} is still running (pid {pid}); stop it before resuming")
    pid_file.unlink(missing_ok=True)


@dataclass
class Prepared:
    """A run ready to start: its configurations (data loaded, model built), values and, on resume, its state."""
    family: registry.Family
    conf: MNISTExperimentConfigs
    values: Dict[str, Any]
    overrides: Dict[str, Any]
    resume_state: Optional[dict] = None
    uuid: Optional[str] = None
    # What each epoch's histogram line says about the run (`configs.histograms`): set by the entry point
    describe: Dict[str, Any] = field(default_factory=dict)


def prepare(family: registry.Family, argv: List[str],
            writers: Optional[Callable[[Dict[str, Any]], set]] = None) -> Optional[Prepared]:
    """
    Everything that can fail on bad input, before anything is written: the validated values, and the labml
    experiment created (not started) and configured, with the writers `writers(values)` names (default:
    screen and file). `None` when
    `--help` was asked for (the help is printed). Raises `UsageError`, `CheckpointError`, `DataError`,
    `ValueError` (e.g. a CUDA device that is not there).
    """
    labml_yaml = use_project_folder()
    values, overrides, want_help = resolve(argv, family)
    if want_help:
        return None
    resume_state, uuid = None, None
    if values.get('resume'):
        run_dir, values = _resume_values(values, overrides, family)
        resume_state = load_checkpoint(run_dir)
        if resume_state['status'] == 'completed' and resume_state['epoch'] >= values['epochs']:
            raise UsageError(f"run {run_dir.name} already finished its {resume_state['epoch']} epochs; "
                             f"pass epochs=N with N > {resume_state['epoch']} to train it further")
        uuid = run_dir.name
    conf = family.configs()
    with quiet_start():
        experiment.create(name=family.name, uuid=uuid, python_file=str(labml_yaml) if labml_yaml else None,
                          writers=writers(values) if writers is not None else {'screen', 'file'})
        experiment.configs(conf, dict(values))
        # Build everything that can fail on bad input before the run folder exists
        _ = conf.dataset, conf.model, conf.optimizer
    check_precision(conf.precision, conf.dataset.train.images.device)  # PrecisionError (a ValueError)
    n_train = len(conf.dataset.train)
    if conf.train_size > n_train:  # an error, not a silent clamp: the run would be mislabelled in `compare`
        raise UsageError(f"train_size={conf.train_size} is larger than the training set ({n_train} images"
                         f"{' after the holdout' if conf.dataset.valid_source == 'holdout' else ''}); "
                         f"use at most {n_train}, or 0 for all")
    if conf.train_batch_size > n_train:  # an error, not a silent clamp: the batch size is part of the recipe
        raise UsageError(f"train_batch_size={conf.train_batch_size} is larger than the training set ({n_train} images"
                         f"{' after the holdout' if conf.dataset.valid_source == 'holdout' else ''}); "
                         f"use at most {n_train}")
    if resume_state is not None:
        from torch import Generator
        conf.restore(resume_state, Generator())  # checks the architecture early; run() restores again
        _claim_run_folder(Path(lab.get_experiments_path()) / family.name / uuid)
    return Prepared(family, conf, values, overrides, resume_state, uuid)


def run_folder(prepared: Prepared) -> Path:
    return Path(lab.get_experiments_path()) / prepared.family.name / experiment.get_uuid()


def train(prepared: Prepared) -> Tuple[Path, Dict[str, float]]:
    """Starts the labml run and trains; returns the run folder and the final test metrics.
    Raises `TrainingStopped`, `Interrupted` or `RunWriteError` (a file of the run could not be written: disk
    full, I/O error; the last complete checkpoint is kept); their `run_dir` says which run."""
    run_dir = run_folder(prepared)
    interrupted, guard = None, None
    tolerate_concurrent_starts()
    try:
        with quiet_start():
            started = experiment.start()
        with started:
            guard = LogGuard.install()  # log.jsonl: written in this thread, whole lines, before each checkpoint
            if guard is not None:
                BEFORE_CHECKPOINT.append(guard.flush_synced)
            save_values(run_dir, prepared.values)
            try:
                final = prepared.conf.run(run_dir, prepared.resume_state, prepared.describe)
            except Interrupted as e:
                # labml marks a run 'interrupted' only for a plain KeyboardInterrupt
                interrupted = e
                raise KeyboardInterrupt from e
    except KeyboardInterrupt as e:
        failed = first_write_error(e, run_dir)  # Ctrl-C, then saving the interrupted state failed
        if failed is not None:
            failed.run_dir = run_dir
            raise failed from None
        if interrupted is None:
            interrupted = Interrupted(signal.SIGINT, run_dir)
        raise interrupted from None
    except Exception as e:
        failed = first_write_error(e, run_dir)
        if failed is None:
            raise
        failed.run_dir = run_dir
        raise failed from None
    finally:
        if guard is not None and guard.flush_synced in BEFORE_CHECKPOINT:
            BEFORE_CHECKPOINT.remove(guard.flush_synced)
    if guard is not None and guard.error is not None:  # labml's last flush, after the final checkpoint
        guard.error.run_dir = run_dir
        raise guard.error
    return run_dir, final


def load_trained(run: str, *, data_dir: Optional[str] = None, device: Optional[str] = None):
    """
    Rebuilds a finished (or interrupted) run for evaluation: `(family, conf, run_dir, checkpoint_state)`.

    `run` is a run uuid or run folder; its experiment name (the run folder's parent, e.g. `evidence_mnist`)
    must be a registered family. The configurations are the run's saved values (with `data_dir`/`device`
    replaced when given), the model and optimizer hold the last checkpoint, and nothing is written.
    Raises `CheckpointError`, `DataError` or `UsageError`.
    """
    if use_project_folder() is None:
        lab.get_path()
    run_dir = find_run(run, Path(lab.get_experiments_path()))
    kind = run_dir.parent.name
    if kind not in registry.FAMILIES:
        raise CheckpointError(f"{run_dir} is a run of {kind!r}, which this command cannot load; "
                              f"known: {', '.join(registry.FAMILIES)}")
    family = registry.get(kind)
    values = load_values(run_dir)
    if data_dir is not None:
        values['data_dir'] = data_dir
    if device is not None:
        check('device', device)  # UsageError, not torch's RuntimeError, for a device name that is not one
        values['device'] = device
    values['resume'] = ''
    values['dashboard'] = ''
    values['download'] = False  # evaluation reads the files that are there; a wrong folder is an error, not a download
    state = load_checkpoint(run_dir)
    conf = family.configs()
    # The same path `experiment.configs` takes, without creating a labml run
    set_values(conf, values)
    from torch import Generator
    conf.restore(state, Generator())
    conf.model.eval()
    return family, conf, run_dir, state
