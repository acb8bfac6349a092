"""Writes small synthetic MNIST-format (IDX) datasets for tests that must not need real data."""
import struct
from pathlib import Path

import numpy as np

FILES = {True: ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         False: ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


def write_idx_images(path: Path, images: np.ndarray):
    n, rows, cols = images.shape
    path.write_bytes(struct.pack('>IIII', 2051, n, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray):
    path.write_bytes(struct.pack('>II', 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def synthetic_images(labels: np.ndarray, rng: np.random.Generator, n_classes: int = 10) -> np.ndarray:
    """A learnable image per label: a bright bar whose position and orientation encode the class, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28)).astype(np.int32)
    for i, k in enumerate(labels):
        pos = 3 + 2 * (k % 5)
        shift = rng.integers(-1, 2)
        if k < 5:
            images[i, pos + shift:pos + shift + 3, 4:24] += 190
        else:
            images[i, 4:24, pos + shift:pos + shift + 3] += 190
    return np.clip(images, 0, 255).astype(np.uint8)


def write_dataset(root: Path, folder: str, n_train: int = 512, n_test: int = 256, seed: int = 0):
    raw = root / folder / 'raw'
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for train, n in ((True, n_train), (False, n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images_file, labels_file = FILES[train]
        write_idx_images(raw / images_file, synthetic_images(labels, rng))
        write_idx_labels(raw / labels_file, labels)
    return root
