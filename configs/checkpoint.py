"""
Checkpoints and run folders.

labml 0.5.3 has no checkpoint API, so a run's model and optimizer state is written by us into its
labml run folder (`logs/<experiment>/<uuid>/checkpoint.pt`). Writes are atomic: the file is written
to a temporary name in the same folder, flushed to disk, and renamed over the old one, so a
`kill -9` at any moment leaves either the previous or the new checkpoint, never half of one.
Checkpoints hold only tensors and plain containers and are read with `weights_only=True`.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

CHECKPOINT_FILE = 'checkpoint.pt'
VALUES_FILE = 'experiment.json'
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A run or its checkpoint cannot be used; the message says why."""


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


def save_checkpoint(run_dir: Path, state: Dict[str, Any]) -> Path:
    path = run_dir / CHECKPOINT_FILE
    atomic_write_bytes(path, lambda f: torch.save({'format': CHECKPOINT_FORMAT, **state}, f))
    return path


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
    atomic_write_bytes(run_dir / VALUES_FILE, lambda f: f.write(text.encode()))


def load_values(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / VALUES_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run of this app ({VALUES_FILE} is missing)")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise CheckpointError(f"{path} is corrupt") from None


def find_run(run: str, experiments_path: Path, experiment_name: Optional[str] = None) -> Path:
    """The folder of `run`: a path to a run folder, or a run uuid under `experiments_path`."""
    candidate = Path(run).expanduser()
    if candidate.is_dir() and (candidate / VALUES_FILE).exists():
        return candidate.resolve()
    if '/' in run or os.sep in run:
        raise CheckpointError(f"{run} is not a run folder of this app")
    names = [experiment_name] if experiment_name else sorted(p.name for p in experiments_path.glob('*') if p.is_dir())
    matches = [experiments_path / n / run for n in names if (experiments_path / n / run).is_dir()]
    if not matches:
        where = f"{experiments_path}/{experiment_name or '*'}/"
        raise CheckpointError(f"no run with uuid {run!r} under {where}")
    return matches[0].resolve()
