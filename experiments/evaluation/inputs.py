"""The out-of-distribution sets of an evaluation: `--ood-file` arrays (checked) and the run's default OOD dataset."""
import os
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


def set_name(path: Path, flag: str, taken) -> str:
    """The set name of a `--ood-file` / `--shift-file` (its stem); raises `EvaluateError` for a name that cannot be
    a set's (odd characters) or one in `taken`."""
    name = path.stem
    if not _set_name_ok(name):
        raise EvaluateError(f"{flag} {path}: the file name {name!r} is used as the set name; "
                            f"use letters, digits, '_', '-' and '.'")
    if name in taken:
        raise EvaluateError(f"{flag} {path}: another set is already called {name!r}; rename the file")
    return name


#: The most images one `--ood-file` may hold (784 MB of uint8): more is a mistake, not an OOD set
MAX_OOD_IMAGES = 1_000_000


def _read_header(f, path: Path):
    """`(shape, fortran_order, dtype)` from a .npy header, without reading (or unpickling) any data."""
    from numpy.lib import format as npy_format
    version = npy_format.read_magic(f)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(f)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(f)
    raise ValueError(f'unsupported .npy format version {version}')


def check_regular_file(path: Path, flag: str) -> None:
    """Raises `EvaluateError` (`{flag}: no such file`, ...) unless `path` is a regular file."""
    try:
        regular = path.is_file()
        present = regular or path.exists()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise EvaluateError(f"{flag}: cannot be used ({getattr(e, 'strerror', None) or e})") from None
    if not regular:
        raise EvaluateError(f"{flag}: " + ("not a regular file" if present else "no such file"))


def load_ood_file(path: Path) -> np.ndarray:
    """A `.npy` of `uint8` images `[N, 28, 28]` or `[N, 1, 28, 28]` (white on black, 0–255) → `[N, 28, 28]`.

    The header is checked before any data is read: dtype, shape, and that the file holds all the bytes the
    header promises (a truncated file, or a header claiming terabytes, is refused without allocating them).
    `allow_pickle=False`: an object array is refused, never unpickled."""
    check_regular_file(path, f"--ood-file {path}")
    try:
        with open(path, 'rb') as f:
            magic = f.read(6)
            if magic != b'\x93NUMPY':
                raise EvaluateError(f"--ood-file {path}: not a .npy file (save the images with numpy.save)")
            f.seek(0)
            try:
                shape, fortran, dtype = _read_header(f, path)
            except Exception as e:  # noqa: BLE001 - ValueError (bad header), EOFError (cut inside it), ...
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise EvaluateError(f"--ood-file {path}: not a readable .npy array ({reason})") from None
            data_offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise EvaluateError(f"--ood-file {path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if dtype.hasobject:
        raise EvaluateError(f"--ood-file {path}: holds Python objects ({dtype}); only uint8 image arrays are "
                            f"read, never unpickled")
    if dtype != np.uint8:
        raise EvaluateError(f"--ood-file {path}: dtype must be uint8 (pixel values 0-255, white digit on black), "
                            f"got {dtype}")
    dims = list(shape)
    if not (len(dims) == 3 or (len(dims) == 4 and dims[1] == 1)) or dims[-2:] != [28, 28] or dims[0] < 1:
        raise EvaluateError(f"--ood-file {path}: shape must be [N, 28, 28] or [N, 1, 28, 28] with N >= 1, "
                            f"got {dims}")
    if dims[0] > MAX_OOD_IMAGES:
        raise EvaluateError(f"--ood-file {path}: {dims[0]:,} images; at most {MAX_OOD_IMAGES:,} per file")
    expected = data_offset + dims[0] * 28 * 28
    if size < expected:
        raise EvaluateError(f"--ood-file {path}: truncated: the header promises {dims[0]:,} images "
                            f"({expected:,} bytes), the file has {size:,} bytes")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - read errors after the checks above (the file changed meanwhile, EIO)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvaluateError(f"--ood-file {path}: not a readable .npy array ({reason})") from None
    if array.dtype != np.uint8 or list(array.shape) != dims:
        raise EvaluateError(f"--ood-file {path}: changed while it was read; try again")
    if array.ndim == 4:
        array = array[:, 0]
    return np.ascontiguousarray(array)


def load_ood_files(paths: List[str]) -> Dict[str, np.ndarray]:
    """`{file stem: images}`; every file is checked, names must be distinct."""
    sets: Dict[str, np.ndarray] = {}
    for p in paths:
        path = Path(p).expanduser()
        name = set_name(path, '--ood-file', {'id', *sets})
        sets[name] = load_ood_file(path)
    return sets


def default_ood(conf, train: bool = False) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """The default OOD sets of the run's dataset that are present in its data folder (their test splits,
    or their training splits with `train=True`, for model selection), and notes on those skipped."""
    from configs.experiment import data_root
    from evidential.data import DataFilesMissing, load_split
    sets, notes = {}, []
    ood_name = DEFAULT_OOD.get(conf.dataset.name)
    if ood_name is None:
        return sets, notes
    try:
        images, _ = load_split(ood_name, data_root(conf), train=train, download=False)
    except DataFilesMissing as e:  # only missing files are skipped: a corrupt one raises (an error, not a silent skip)
        notes.append(f"{ood_name} skipped: {e}")
        return sets, notes
    sets[ood_name] = images.numpy()
    return sets, notes
