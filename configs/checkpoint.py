"""
Checkpoints and run folders.

labml 0.5.3 has no checkpoint API, so a run's model and optimizer state is written by us into its
labml run folder (`logs/<experiment>/<uuid>/checkpoint.pt`). Writes are atomic: the file is written
to a temporary name in the same folder, flushed to disk, and renamed over the old one, so a
`kill -9` at any moment leaves either the previous or the new checkpoint, never half of one.
Checkpoints hold only tensors and plain containers and are read with `weights_only=True`.

A write that fails (a full disk: ENOSPC, a failing one: EIO) raises `RunWriteError`, naming the file and the
reason; the previous checkpoint stays as it was. labml's log (`log.jsonl`) is written through `LogGuard`:
in the training's own thread, each append whole or not at all, and flushed before every checkpoint, so a
checkpoint never records an epoch whose logged values are not on disk.
"""
import errno as errno_module
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from configs.compat import file_writer_path, take_file_writer_data, take_over_file_writer, tracker_file_writer

CHECKPOINT_FILE = 'checkpoint.pt'
VALUES_FILE = 'experiment.json'
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A run or its checkpoint cannot be used; the message says why."""


class RunWriteError(RuntimeError):
    """A file of a run could not be written (disk full, I/O error); the message names the file and the reason.
    `run_dir` is set by the runner; the entry point exits with code 4 and says how to resume."""

    def __init__(self, path, error: OSError):
        self.path, self.errno = Path(path), error.errno
        code = errno_module.errorcode.get(error.errno, '') if error.errno else ''
        reason = error.strerror or str(error) or type(error).__name__
        super().__init__(f"could not write {path}: {reason}" + (f" ({code})" if code else ''))
        self.run_dir: Optional[Path] = None


def first_write_error(error: BaseException, folder: Optional[Path] = None) -> Optional[RunWriteError]:
    """The first failed write behind `error` (following `__context__`: a failure while cleaning up after
    another one names the first), as a `RunWriteError`; None when no write failed. An `OSError` that names no
    file (labml's own writes) is reported as a file in `folder`."""
    chain, e = [], error
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    for e in reversed(chain):
        if isinstance(e, RunWriteError):
            return e
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return RunWriteError(e.filename or (f'a file in {folder}' if folder else 'a file'), e)
    return None


#: errno values of a failed write (disk full, quota, I/O error, read-only file system, file too large)
WRITE_ERRNOS = {errno_module.ENOSPC, errno_module.EDQUOT, errno_module.EIO, errno_module.EROFS, errno_module.EFBIG}


def _default_mode() -> int:
    """rw-r--r-- less the umask: what `open()` would give a new file (mkstemp gives rw-------)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, write, mode: Optional[int] = None, sync: bool = True) -> None:
    """Calls `write(file)` on a temporary file next to `path`, then renames it to `path`
    (permissions `mode`, default those of a newly created file). `sync` flushes the file to disk before the
    rename, so a power cut cannot leave an empty file; a reader never sees half of one either way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: Called before each checkpoint is written (the runner flushes labml's log there); each may raise `RunWriteError`
BEFORE_CHECKPOINT: List[Callable[[], None]] = []


def save_checkpoint(run_dir: Path, state: Dict[str, Any]) -> Path:
    """Writes the checkpoint atomically; raises `RunWriteError` (the previous checkpoint intact) when it cannot."""
    for hook in list(BEFORE_CHECKPOINT):
        hook()
    path = run_dir / CHECKPOINT_FILE
    # Serialised in memory first: torch.save into a file turns the OSError of a full disk into a RuntimeError
    # of its zip writer ("unexpected pos ..."), losing what went wrong
    buffer = io.BytesIO()
    torch.save({'format': CHECKPOINT_FORMAT, **state}, buffer)
    try:
        atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))
    except OSError as e:
        raise RunWriteError(path, e) from None
    return path


def append_line(path: Path, text: str, sync: bool = False) -> None:
    """Appends `text` (one line) to `path` whole or not at all: on a failed write the file is cut back to its
    previous length, so the next append does not continue a half line. Raises `RunWriteError`."""
    data = (text.rstrip('\n') + '\n').encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunWriteError(path, e) from None
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise RunWriteError(path, e) from None
    finally:
        os.close(fd)


class LogGuard:
    """
    Makes labml's file writer (`log.jsonl`) write in the training's own thread, through `append_line`.

    labml 0.5.3 hands each flush to a background thread that opens the file in append mode: a full disk kills
    that thread with a traceback, training carries on, later values are silently dropped, and a half-written
    line can be left in the file. Here a failed write raises `RunWriteError` in the training loop (at its
    `tracker.save()`), and the file keeps whole lines only. `flush(sync=True)` runs before every checkpoint.
    After the run, `error` holds a write that failed at labml's final flush (the run itself had finished).
    """

    def __init__(self, writer):
        self.writer = writer
        self.error: Optional[RunWriteError] = None
        self.failed = False
        take_over_file_writer(writer, self.flush, self.finish)

    def flush(self, sync: bool = False) -> None:
        data = take_file_writer_data(self.writer)
        if self.failed or not data:  # after a failure: dropped (the run is stopping), never half-written
            return
        try:
            append_line(file_writer_path(self.writer), json.dumps({'track': data, 'time': time.time()}), sync=sync)
        except RunWriteError as e:
            self.failed, self.error = True, self.error or e
            raise

    def flush_synced(self) -> None:
        self.flush(sync=True)

    def finish(self) -> None:
        try:
            self.flush(sync=True)
        except RunWriteError:
            pass  # kept in self.error: labml calls this while finishing the run, where raising helps nobody

    @classmethod
    def install(cls) -> Optional['LogGuard']:
        """Guards the file writer of labml's tracker (after `experiment.start()`); None when there is none."""
        writer = tracker_file_writer()
        return None if writer is None else cls(writer)


def training_pid(run_dir: Path) -> Optional[int]:
    """
    The pid in `run_dir/run.pid` (labml writes it when a run starts and never removes it) if that process is
    still alive, else `None`. A zombie counts as finished: a process whose parent was killed is reparented to
    pid 1, and until pid 1 reaps it, `kill(pid, 0)` still succeeds although it has exited.
    """
    try:
        pid = int((run_dir / 'run.pid').read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f'/proc/{pid}/stat') as f:
            if f.read().rsplit(')', 1)[-1].split()[0] in ('Z', 'X'):
                return None
    except (OSError, IndexError):
        pass  # no /proc (not Linux), or the process is gone: kill() tells
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


def load_checkpoint(run_dir: Path, map_location='cpu') -> Dict[str, Any]:
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"run {run_dir.name} has no checkpoint ({path} is missing): "
                              f"it stopped before finishing its first epoch")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}); "
                              f"the file is corrupt — start a new run") from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this app (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'})")
    return state


def save_values(run_dir: Path, values: Dict[str, Any]) -> None:
    """The exact configuration values a run was started with (preset + overrides), for resume and evaluate."""
    text = json.dumps(values, indent=2, sort_keys=True)
    try:
        atomic_write_bytes(run_dir / VALUES_FILE, lambda f: f.write(text.encode()))
    except OSError as e:
        raise RunWriteError(run_dir / VALUES_FILE, e) from None


class RunFileError(CheckpointError):
    """A file of a run folder is too large, or is YAML with aliases: not written by this app or labml."""


#: Bytes a YAML file of a run folder (`configs.yaml`, `indicators.yaml`) may have: far above what labml writes
RUN_YAML_LIMIT = 16 * 1024 * 1024


def load_run_yaml(path: Path, limit: int = RUN_YAML_LIMIT) -> Any:
    """
    A YAML file of a run folder, as data. Raises `RunFileError` for a file over `limit` bytes and for YAML
    aliases (`*name`), which labml never writes: a few hundred bytes of nested aliases expand to gigabytes
    (a "billion laughs" file), and `yaml.safe_load` expands them all. Invalid YAML raises `yaml.YAMLError`.
    """
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.events.AliasEvent):
                raise RunFileError(f"{path}: YAML aliases are refused (this app and labml never write them)")
            return super().compose_node(parent, index)

    if path.stat().st_size > limit:
        raise RunFileError(f"{path}: larger than {limit:,} bytes; not a file of this app")
    return yaml.load(path.read_text(), Loader=NoAliases)  # noqa: S506 - a SafeLoader that refuses aliases


def load_values(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / VALUES_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run of this app ({VALUES_FILE} is missing)")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise CheckpointError(f"{path} is corrupt") from None


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f'... ({len(text):,} characters)'


def find_run(run: str, experiments_path: Path, experiment_name: Optional[str] = None) -> Path:
    """The folder of `run`: a path to a run folder, or a run uuid under `experiments_path`.
    Raises `CheckpointError` for anything else (including names no file system accepts)."""
    try:
        candidate = Path(run).expanduser()
        if candidate.is_dir() and (candidate / VALUES_FILE).exists():
            return candidate.resolve()
    except (OSError, ValueError, RuntimeError) as e:  # ~unknown_user, a name too long, a NUL byte
        if '/' in run or os.sep in run or not isinstance(e, OSError):
            raise CheckpointError(f"{_short(run)} is not a run folder of this app "
                                  f"({type(e).__name__}: {getattr(e, 'strerror', None) or e})") from None
    if '/' in run or os.sep in run:
        raise CheckpointError(f"{run} is not a run folder of this app")
    where = f"{experiments_path}/{experiment_name or '*'}/"
    try:
        names = [experiment_name] if experiment_name else sorted(p.name for p in experiments_path.glob('*')
                                                                 if p.is_dir())
        matches = [experiments_path / n / run for n in names if (experiments_path / n / run).is_dir()]
    except (OSError, ValueError) as e:
        raise CheckpointError(f"no run with uuid {_short(run)} under {where} "
                              f"({getattr(e, 'strerror', None) or e})") from None
    if not matches:
        raise CheckpointError(f"no run with uuid {_short(run)} under {where}")
    return matches[0].resolve()
