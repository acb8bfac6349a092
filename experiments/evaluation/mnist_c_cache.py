"""
The MNIST-C images of a run's test split (`evidential.corruptions`), generated once per seed and cached beside
the data:

    <data_dir>/MNIST-C-generated/<seed>/<dataset>/chunk-000.npz, chunk-001.npz, ...

Chunk `k` holds every corruption at every severity of test images `[k * CHUNK, (k + 1) * CHUNK)`, generated with
its own seed (from `(seed, k)`): the first N images are the same whatever N asked for them, and a larger N only
adds chunks. Each file records a key — the SHA-256 of its source images, the generator's version and the versions
of the libraries that draw and filter (numpy, scipy, scikit-image) — and is regenerated when the key differs (other
images, another release of a corruption); it is written atomically (a temporary file renamed), so two evaluations
at once each see a whole file.

Where the data folder is not writable, the chunks go to the user's cache folder
(`$XDG_CACHE_HOME` or `~/.cache`, `evidential-mnist/MNIST-C-generated/...`), with a note; where neither is, they are
generated for this evaluation only, with a note.
"""
import hashlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from evidential import corruptions

#: Test images per cached file
CHUNK = 500
#: The cache's folder under the data folder (and under the user's cache folder)
FOLDER = 'MNIST-C-generated'

Condition = Tuple[str, int]


def user_cache_root() -> Path:
    """`$XDG_CACHE_HOME/evidential-mnist` (default `~/.cache/evidential-mnist`)."""
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base).expanduser() / 'evidential-mnist'


def cache_folders(data_dir: Path, dataset: str, seed: int) -> List[Path]:
    """Where the chunks are looked for, in order: beside the data, then the user's cache folder."""
    return [root / FOLDER / str(seed) / dataset for root in (Path(data_dir).expanduser(), user_cache_root())]


def chunk_seed(seed: int, k: int) -> int:
    """The corruption seed of chunk `k`: its own stream, whatever the other chunks are."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


def chunk_key(source: np.ndarray, seed: int, k: int) -> str:
    """What a chunk's images depend on: its source images, seed and index, and the generator's code."""
    import scipy
    import skimage
    return json.dumps({'source_sha256': hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest(),
                       'n': int(len(source)), 'seed': int(seed), 'chunk': int(k),
                       'generator': corruptions.GENERATOR_VERSION, 'numpy': np.__version__,
                       'scipy': scipy.__version__, 'scikit-image': skimage.__version__}, sort_keys=True)


def _array_name(condition: Condition) -> str:
    return f'{condition[0]}/{condition[1]}'


def read_chunk(path: Path, key: str, conditions: List[Condition], n: int) -> Optional[Dict[Condition, np.ndarray]]:
    """The chunk's images, or `None` where the file is missing, unreadable, of another key, or lacks a condition
    (it is then generated again)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored['key']) != key:
                return None
            images = {c: stored[_array_name(c)] for c in conditions}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # missing, truncated, not an npz archive, a condition missing
    if any(a.dtype != np.uint8 or a.shape != (n, corruptions.SIDE, corruptions.SIDE) for a in images.values()):
        return None
    return images


def write_chunk(path: Path, key: str, images: Dict[Condition, np.ndarray]) -> None:
    """Atomically (compressed: most of a digit image is background); raises `OSError`."""
    from configs.checkpoint import atomic_write_bytes
    buffer = io.BytesIO()
    np.savez_compressed(buffer, key=np.array(key), **{_array_name(c): a for c, a in images.items()})
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()), sync=False)


def corrupted_test_images(test_images: np.ndarray, n: int, data_dir: Path, dataset: str, seed: int
                          ) -> Tuple[Dict[Condition, np.ndarray], Dict[str, object]]:
    """
    `({(corruption, severity): uint8 [n, 28, 28]}, cache record)`: the corruptions of the first `n` of the test
    images `test_images` (`uint8 [N, 28, 28]`). Each chunk is read from the first cache folder that holds it with
    the right key, else generated whole and written to the first folder that can be written. The record says
    where the chunks are, which were read and which generated, and `notes` where a folder could not be written.
    """
    conditions = list(corruptions.conditions())
    folders = cache_folders(data_dir, dataset, seed)
    out: Dict[Condition, List[np.ndarray]] = {c: [] for c in conditions}
    read, generated, used, notes, unwritable = [], [], [], [], []
    for k in range(-(-n // CHUNK)):
        # the whole chunk, even where fewer images are asked for: the next evaluation may ask for more
        source = np.ascontiguousarray(test_images[k * CHUNK:(k + 1) * CHUNK])
        key, name = chunk_key(source, seed, k), f'chunk-{k:03d}.npz'
        images, where = None, None
        for folder in folders:
            images = read_chunk(folder / name, key, conditions, len(source))
            if images is not None:
                read.append(k)
                where = folder
                break
        if images is None:
            images = corruptions.corrupt_all(source, chunk_seed(seed, k))
            generated.append(k)
            for folder in (f for f in folders if f not in unwritable):
                try:
                    write_chunk(folder / name, key, images)
                    where = folder
                    break
                except OSError as e:
                    unwritable.append(folder)
                    notes.append(f"MNIST-C images not cached in {folder} ({e.strerror or type(e).__name__})")
        if where is not None and str(where) not in used:
            used.append(str(where))
        for c in conditions:
            out[c].append(images[c])
    if generated and len(unwritable) == len(folders):
        notes.append('MNIST-C images generated for this evaluation only (no cache folder could be written)')
    record = {'folders': used, 'chunk_images': CHUNK, 'read': read, 'generated': generated, 'notes': notes}
    return {c: np.concatenate(parts)[:n] for c, parts in out.items()}, record
