"""
# What this app relies on beyond the public APIs of labml 0.5.3 (and one of torch)

labml has no public API for some of what the app needs (the keys a `Configs` class declares, pointing labml at
a project folder, the writers of its tracker, its app client), and one of its functions fails when runs start
at once. Every use of something that is not labml's public API — anything under `labml.internal`, private
(name-mangled) attributes, replaced methods or classes — is here, one small function each; the rest of the
app calls these. Each docstring says why the function is needed and which test fails the day labml changes
what it relies on; `tests/test_labml_compat.py` pins them all, so after an upgrade of labml run it first.

torch's one internal use (`skip_dynamo_import`) is here for the same reason; `tests/test_torch_startup.py`
pins it.

Each function imports what it uses: a caller pays only for its own (the dashboard's client imports no torch).
"""
import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple


# ---------------------------------------------------------------------- labml Configs

def declarations(conf) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """
    `(types, defaults, options)` of a labml `Configs` instance: every declared key with its type, the keys'
    default values, and the registered option names of each key (`{key: {name: function}}`).

    labml 0.5.3 has no public API for this; it keeps them in the name-mangled tables its `Configs.__init__`
    fills (`__types`, `__defaults`, `__options`), the same ones its own `_to_json()` reads. `configs.cli`
    builds the command line's schema from them and `MNISTExperimentConfigs.resolve_configs` walks the keys.
    Fails: `tests/test_labml_compat.py::test_declarations_name_keys_types_defaults_and_options`.
    """
    return conf._Configs__types, conf._Configs__defaults, conf._Configs__options


def set_values(conf, values: Dict[str, Any]) -> None:
    """
    Sets `values` (`{'key': v, 'optimizer.key': v}`) on a labml `Configs` instance without creating a labml
    run: the path `experiment.configs(conf, values)` takes, whose public form needs an experiment. Used to
    rebuild a finished run for evaluation (`configs.runner.load_trained`) and by tests that build a model
    directly. Fails: `tests/test_labml_compat.py::test_set_values_without_a_run`.
    """
    conf._set_values(values)


# ---------------------------------------------------------------------- labml's lab (.labml.yaml)

def use_lab_file(path: Path) -> None:
    """
    Makes labml read its settings (where data and runs go) from `path`, a `.labml.yaml`.

    labml looks for `.labml.yaml` from the calling script's folder only, which for `python -m` is always this
    repository; `configs.runner.use_project_folder` looks from the working directory instead, so a user (or a
    test) can keep data and runs in a project folder of their own. labml's `Lab.set_path` is not public.
    Fails: `tests/test_labml_compat.py::test_lab_file_says_where_runs_go`.
    """
    from labml import lab
    lab.get_path()  # creates labml's lab singleton, which `set_path` needs
    from labml.internal.lab import lab_singleton
    lab_singleton().set_path(str(path))


def lab_app_url() -> Optional[str]:
    """
    labml's `app_url` setting (from `.labml.yaml`), or None: the dashboard a run reports to when the command line
    names none (`experiments.dashboard.client.resolve_url`). labml reads it into its lab singleton only.
    Fails: `tests/test_labml_compat.py::test_app_url_is_read_and_set`.
    """
    from labml.internal.lab import lab_singleton
    return (lab_singleton().configs.get('app_url') or '').strip() or None


def set_lab_app_url(app_url: str) -> None:
    """
    Makes the runs of this process report to `app_url` (labml's `app_url` setting), without labml opening a
    browser tab from the training process (`app_open_browser: False`); `experiments.dashboard.client.attach`
    calls it once the dashboard answered. labml's `Lab.set_configurations` is not public.
    Fails: `tests/test_labml_compat.py::test_app_url_is_read_and_set`.
    """
    from labml.internal.lab import lab_singleton
    lab_singleton().set_configurations({'app_url': app_url, 'app_open_browser': False})


# ---------------------------------------------------------------------- labml's monitor

def silence_monitor(silent: bool = True) -> None:
    """
    Stops (or, with `silent=False`, restarts) labml's monitor printing a line per configuration it computes
    ("Prepare model..."), which says nothing useful while an evaluation rebuilds a run; labml has no public
    switch for it. Fails: `tests/test_labml_compat.py::test_silence_monitor`.
    """
    from labml.internal.monitor import monitor_singleton
    monitor_singleton().silent(silent)



@contextlib.contextmanager
def quiet_start():
    """
    While it is active, labml's start of a run prints only `NAME: UUID`: not its monitor's line per
    configuration computed ("Prepare model..."), not the notice that the project folder is no git repository,
    and not the repository's last commit message (`[clean]: "..."`), which say nothing about the run a user
    just started. `experiments.sweep` reads the uuid from that line. labml 0.5.3 has no switch for these: the
    monitor is silenced (`silence_monitor`), and `labml.internal.experiment`'s `labml_notice` and
    `Experiment.__print_info` are replaced for the duration.
    Fails: `tests/test_labml_compat.py::test_quiet_start`.
    """
    from labml import logger
    from labml.logger import Text
    import labml.internal.experiment as labml_experiment
    cls = labml_experiment.Experiment

    def print_name_and_uuid(self):
        logger.log([(self.run.name, Text.title), ': ', (str(self.run.uuid), Text.meta)])

    notice, print_info = labml_experiment.labml_notice, cls._Experiment__print_info
    labml_experiment.labml_notice = lambda *args, **kwargs: None
    cls._Experiment__print_info = print_name_and_uuid
    silence_monitor(True)
    try:
        yield
    finally:
        silence_monitor(False)
        labml_experiment.labml_notice, cls._Experiment__print_info = notice, print_info

# ---------------------------------------------------------------------- labml's tracker and its file writer

def tracker_file_writer():
    """
    The writer of `log.jsonl` among those of labml's tracker (after `experiment.start()`), or None.
    `configs.checkpoint.LogGuard` takes over its writes; labml keeps the writers in the name-mangled
    `Tracker.__writers`. Fails: `tests/test_labml_compat.py::test_file_writer_is_found_and_taken_over`.
    """
    from labml.internal.tracker import tracker_singleton
    from labml.internal.tracker.writers.file import Writer as FileWriter
    for w in tracker_singleton()._Tracker__writers:
        if isinstance(w, FileWriter):
            return w
    return None


def new_file_writer(path: Path):
    """
    A labml writer of `log.jsonl` at `path`, for appending an evaluation's values to a finished run's log
    (`experiments.evaluation.output.log_to_labml`); labml creates its writers only inside `experiment.create`.
    Fails: `tests/test_labml_compat.py::test_file_writer_is_found_and_taken_over`.
    """
    from labml.internal.tracker.writers.file import Writer as FileWriter
    return FileWriter(path)


def take_over_file_writer(writer, flush: Callable[[], None], finish: Callable[[], None]) -> None:
    """
    Replaces the `flush` and `finish` methods of labml's file `writer` (on this instance only): labml hands each
    flush to a background thread that a full disk kills silently; `configs.checkpoint.LogGuard` writes in the
    training's own thread instead, with `take_file_writer_data` and `file_writer_path`.
    Fails: `tests/test_labml_compat.py::test_file_writer_is_found_and_taken_over`.
    """
    writer.flush = flush
    writer.finish = finish


def take_file_writer_data(writer) -> Dict[str, list]:
    """
    What labml's file `writer` holds for its next line of `log.jsonl` (`{indicator: [(step, values), ...]}`),
    removed from it. Fails: `tests/test_labml_compat.py::test_file_writer_is_found_and_taken_over`.
    """
    data, writer.indicators = writer.indicators, {}
    return data


def file_writer_path(writer) -> Path:
    """
    The file labml's file `writer` appends to. Fails:
    `tests/test_labml_compat.py::test_file_writer_is_found_and_taken_over`.
    """
    return Path(writer.file_path)


def write_only_to(writer) -> None:
    """
    Makes `writer` the only writer of labml's tracker (no screen writer, no other run's writers, and no
    `indicators.yaml` of a run trained earlier in this process, which labml would otherwise rewrite: its tracker
    keeps that file's path), outside a labml run; `detach_writers` ends it.
    Fails: `tests/test_labml_compat.py::test_tracker_writes_only_to_one_writer`.
    """
    from labml.internal.tracker import tracker_singleton
    t = tracker_singleton()
    t.reset_writers()
    if not hasattr(t, '_Tracker__indicators_file'):
        raise RuntimeError("labml's tracker no longer keeps `__indicators_file`; see configs/compat.py")
    t._Tracker__indicators_file = None  # labml keeps it in this name-mangled attribute, and has no setter
    t.add_writer(writer)


def flush_tracker() -> None:
    """
    Writes what labml's tracker holds to its writers now (what `monit.loop` does at the end of each iteration).
    Fails: `tests/test_labml_compat.py::test_tracker_writes_only_to_one_writer`.
    """
    from labml.internal.tracker import tracker_singleton
    tracker_singleton().finish_loop()


def detach_writers() -> None:
    """
    Removes every writer from labml's tracker and unsets the global step `tracker.set_global_step` gave it, as in a
    fresh tracker: a later labml run in this process counts from its own start. Fails:
    `tests/test_labml_compat.py::test_tracker_writes_only_to_one_writer`.
    """
    from labml import tracker
    from labml.internal.tracker import tracker_singleton
    tracker_singleton().reset_writers()
    tracker.set_global_step(None)


def forget_indicators(prefix: str) -> None:
    """
    Removes the indicators whose names start with `prefix` (and their wildcard declarations) from labml's tracker,
    as in a fresh tracker: otherwise the next labml run in this process lists them in its own `indicators.yaml`.
    Fails: `tests/test_labml_compat.py::test_tracker_writes_only_to_one_writer`.
    """
    from labml.internal.tracker import tracker_singleton
    t = tracker_singleton()
    for table in (t.indicators, t.dot_indicators):
        for key in [k for k in table if k.startswith(prefix)]:
            del table[key]


def indicator_definitions(names) -> Dict[str, Dict[str, Any]]:
    """
    The `indicators.yaml` entries labml's tracker holds for the indicators called `names` (those it created when
    they were added). Fails: `tests/test_labml_compat.py::test_tracker_writes_only_to_one_writer`.
    """
    from labml.internal.tracker import tracker_singleton
    return {k: ind.to_dict() for k, ind in tracker_singleton().indicators.items() if k in names}


# ---------------------------------------------------------------------- labml's app client

def app_track_thread_class() -> type:
    """
    labml's app-client thread class (`labml.internal.app._AppTrackThread`), which
    `experiments.dashboard.client.BoundedAppTrackThread` extends; the subclass relies on its constructor
    `(url, *, timeout_seconds, daemon)`, its methods `_get_packets`, `_send` and `push_data_source`, and its
    attributes `url`, `queue`, `is_stopped`, `errored` and `handlers`.
    Fails: `tests/test_labml_compat.py::test_app_thread_has_what_the_bounded_one_uses`.
    """
    from labml.internal.app import _AppTrackThread
    return _AppTrackThread


def use_app_track_thread(cls: type) -> None:
    """
    Makes labml's app client create `cls` (a subclass of `app_track_thread_class()`) for each run from now on
    (idempotent): labml's `AppTracker` looks the class up in its module when a run starts.
    Fails: `tests/test_labml_compat.py::test_app_thread_has_what_the_bounded_one_uses`.
    """
    import labml.internal.app as labml_app_client
    labml_app_client._AppTrackThread = cls


def empty_app_packet():
    """
    An app-client packet without data: put on the thread's queue, it wakes the thread without sending anything.
    Fails: `tests/test_labml_compat.py::test_app_thread_has_what_the_bounded_one_uses`.
    """
    from labml.internal.app import Packet
    return Packet(data={})


# ---------------------------------------------------------------------- labml's list of projects

def _get_projects_tolerating_other_runs(self) -> set:
    """labml 0.5.3's `Computer.get_projects` (it lists `~/.labml/projects/*.txt` and deletes the entries of
    projects whose folder is gone), tolerating entries that another process deletes meanwhile: with many runs
    starting at once (a sweep), two of them deleting the same stale entry would make the second one die in
    `experiment.start()` with `FileNotFoundError`."""
    projects, to_remove = set(), []
    for p in self.projects_folder.iterdir():
        try:
            project_path = p.read_text()
        except FileNotFoundError:
            continue
        if project_path in projects or not Path(project_path).exists():
            to_remove.append(p)
        else:
            projects.add(project_path)
    for p in to_remove:
        p.unlink(missing_ok=True)
    return projects


#: labml's own `Computer.get_projects`, once replaced (the test checks that it still needs the replacement)
LABML_GET_PROJECTS: Optional[Callable] = None


def tolerate_concurrent_starts() -> None:
    """
    Installs `_get_projects_tolerating_other_runs` in place of labml's `Computer.get_projects` (idempotent), so
    that runs starting at once do not die because another one deleted a stale entry of labml's project list
    first. Fails the day labml handles it itself:
    `tests/test_labml_compat.py::test_labml_still_fails_when_another_run_deletes_first` (the workaround can then
    go); and `tests/test_labml_compat.py::test_the_workaround_tolerates_it` when `Computer` changes.
    """
    global LABML_GET_PROJECTS
    from labml.internal.computer.configs import Computer
    if Computer.get_projects is not _get_projects_tolerating_other_runs:
        LABML_GET_PROJECTS = Computer.get_projects
        Computer.get_projects = _get_projects_tolerating_other_runs


# ---------------------------------------------------------------------- torch: starting without torch._dynamo

def skip_dynamo_import() -> int:
    """
    Marks the `_disable_dynamo`-wrapped methods of `torch.optim.Optimizer` as already disabled; returns how
    many (0 where `torch._dynamo` is imported already, or torch wraps them differently).

    PyTorch wraps some `torch.optim.Optimizer` methods (`add_param_group`, called by every optimizer's
    constructor, and others) in `torch._disable_dynamo`, which imports `torch._dynamo` on the first call only
    to mark the method as not to be compiled. That import costs ~1.7 s of CPU (2.0 s → 3.7 s for
    `import torch` here), paid by every training process: each run of a sweep, each real process of the tests.
    Nothing in this app uses `torch.compile`, so this gives those methods the answer the import would have
    cached (their undecorated function). That is enough for labml_nn's optimizers (Adam, AdamW, ...: the
    families' default); torch's own (`torch.optim.SGD`, ...) import `torch._dynamo` in every `step` anyway.
    torch has no switch for this (`TORCHDYNAMO_DISABLE` is read after the import), hence the small patch; it
    does nothing once `torch._dynamo` is imported or where torch's wrapper changes shape.
    Fails: `tests/test_torch_startup.py::test_optimizers_work_without_importing_dynamo_and_torch_would_import_it`.
    """
    if 'torch._dynamo' in sys.modules:
        return 0
    import torch
    import torch._compile
    # the code object of `_disable_dynamo`'s wrapper: a method whose code is this one is wrapped by it
    wrapper_code = torch._compile._disable_dynamo(lambda: None).__code__
    patched = 0
    for method in vars(torch.optim.Optimizer).values():
        inner = getattr(method, '__wrapped__', None)
        if getattr(method, '__code__', None) is wrapper_code and inner is not None:
            # what the wrapper caches after importing torch._dynamo is `torch._dynamo.disable(inner)`; without
            # torch.compile in play that is `inner` itself
            setattr(inner, '__dynamo_disable', inner)
            patched += 1
    return patched


# ## labml_nn

def labml_nn_trainer(conf):
    """
    labml_nn's own training step of a `TrainValidConfigs` (`labml_nn.helpers.trainer._default_trainer`), for the
    benchmark's reference run of labml_nn's experiment (`experiments.references.labml_nn`), which wraps it to time
    it. labml_nn 0.5.1 registers it only as a private option function.
    Fails: `tests/test_reference_labml_nn.py` (the reference run).
    """
    from labml_nn.helpers import trainer
    return trainer._default_trainer(conf)


def labml_nn_validator(conf):
    """labml_nn's own validation step (`labml_nn.helpers.trainer._default_validator`); as `labml_nn_trainer`.
    Fails: `tests/test_reference_labml_nn.py` (the reference run)."""
    from labml_nn.helpers import trainer
    return trainer._default_validator(conf)
