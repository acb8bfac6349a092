"""The out-of-distribution sets of an evaluation: `--ood-file` arrays (checked) and the run's default OOD dataset."""
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from experiments.evaluation import EvaluateError

#: The OOD set evaluated by default for runs on a base dataset: `{base dataset: OOD dataset}`
#: (the OOD dataset's *test* split, read from the run's data folder).
DEFAULT_OOD = {'mnist': 'fashion_mnist'}


def _set_name_ok(name: str) -> bool:
    return bool(re.fullmatch(r'[A-Za-z0-9_][A-Za-z0-9_.\-]*', name))


def load_ood_file(path: Path) -> np.ndarray:
    """A `.npy` of `uint8` images `[N, 28, 28]` or `[N, 1, 28, 28]` (white on black, 0–255) → `[N, 28, 28]`."""
    if not path.is_file():
        raise EvaluateError(f"--ood-file {path}: " + ("not a regular file" if path.exists() else "no such file"))
    try:
        with open(path, 'rb') as f:
            magic = f.read(6)
    except OSError as e:
        raise EvaluateError(f"--ood-file {path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if magic != b'\x93NUMPY':
        raise EvaluateError(f"--ood-file {path}: not a .npy file (save the images with numpy.save)")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError (object arrays, bad header), EOFError / OSError (truncated), ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvaluateError(f"--ood-file {path}: not a readable .npy array ({reason})") from None
    if array.dtype != np.uint8:
        raise EvaluateError(f"--ood-file {path}: dtype must be uint8 (pixel values 0-255, white digit on black), "
                            f"got {array.dtype}")
    shape = list(array.shape)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != (28, 28) or array.shape[0] < 1:
        raise EvaluateError(f"--ood-file {path}: shape must be [N, 28, 28] or [N, 1, 28, 28] with N >= 1, "
                            f"got {shape}")
    return np.ascontiguousarray(array)


def load_ood_files(paths: List[str]) -> Dict[str, np.ndarray]:
    """`{file stem: images}`; every file is checked, names must be distinct."""
    sets: Dict[str, np.ndarray] = {}
    for p in paths:
        path = Path(p).expanduser()
        name = path.stem
        if not _set_name_ok(name):
            raise EvaluateError(f"--ood-file {path}: the file name {name!r} is used as the set name; "
                                f"use letters, digits, '_', '-' and '.'")
        if name == 'id' or name in sets:
            raise EvaluateError(f"--ood-file {path}: another set is already called {name!r}; rename the file")
        sets[name] = load_ood_file(path)
    return sets


def default_ood(conf, train: bool = False) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """The default OOD sets of the run's dataset that are present in its data folder (their test splits,
    or their training splits with `train=True`, for model selection), and notes on those skipped."""
    from configs.experiment import data_root
    from evidential.data import DataError, load_split
    sets, notes = {}, []
    ood_name = DEFAULT_OOD.get(conf.dataset.name)
    if ood_name is None:
        return sets, notes
    try:
        images, _ = load_split(ood_name, data_root(conf), train=train, download=False)
    except DataError as e:
        if 'files not found' not in str(e):
            raise  # present but corrupt: a clear error, not a silent skip
        notes.append(f"{ood_name} skipped: {e}")
        return sets, notes
    sets[ood_name] = images.numpy()
    return sets, notes
