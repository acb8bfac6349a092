"""
# MNIST-style data as tensors

torchvision stays the source of truth for where the files live (`MNIST/raw`, `FashionMNIST/raw`) and for the
download; this module only changes the hot path: each split is decoded once into a `uint8` tensor, moved to
the training device, normalized there, and batched by shuffled index. No PIL, no per-sample Python,
no worker processes.

The IDX files are checked (header and length, so a truncated or corrupt file gives an error that names the
file) and then read here with numpy, as the bytes they are, rather than by `torchvision.datasets.MNIST`:
importing torchvision costs seconds of CPU in every process (it pulls in `torch._dynamo`), and a sweep or the
test suite starts a hundred of them. `tests/test_data.py` checks the result against torchvision's own reader.
torchvision is imported only to download missing files.
"""
import os
import shutil
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch


class DataError(RuntimeError):
    """A data file is missing, truncated or corrupt; the message names the file and what to do."""


class DataFilesMissing(DataError):
    """The files of a dataset are not in the data folder (and were not, or could not be, downloaded)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    # The torchvision dataset class (`torchvision.datasets.MNIST`, ...): the folder under the data root, the download
    torchvision_name: str
    # Mean and standard deviation of the training images scaled to [0, 1]
    mean: float
    std: float
    n_classes: int = 10

    @property
    def folder(self) -> str:
        """The folder under the data root torchvision uses (`MNIST`, `FashionMNIST`)."""
        return self.torchvision_name

    @property
    def torchvision_class(self) -> type:
        import torchvision  # here, not at the top: only a download needs it
        return getattr(torchvision.datasets, self.torchvision_name)


DATASETS = {
    # labml_nn's MNIST normalization
    'mnist': DatasetSpec('mnist', 'MNIST', 0.1307, 0.3081),
    # Fashion-MNIST training-set statistics
    'fashion_mnist': DatasetSpec('fashion_mnist', 'FashionMNIST', 0.2860, 0.3530),
}

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None


def _raw_files(spec: DatasetSpec, root: Path, train: bool) -> Tuple[Path, Path]:
    prefix = 'train' if train else 't10k'
    raw = root / spec.folder / 'raw'
    return raw / f'{prefix}-images-idx3-ubyte', raw / f'{prefix}-labels-idx1-ubyte'


def raw_files(spec: DatasetSpec, root: Path) -> List[Tuple[Path, int]]:
    """The four IDX files of a dataset under the data root `root`, each with its magic number: the training
    images and labels, then the test images and labels."""
    return [(path, magic) for train in (True, False)
            for path, magic in zip(_raw_files(spec, root, train), (IMAGE_MAGIC, LABEL_MAGIC))]


def check_idx_file(path: Path, magic: int) -> int:
    """Checks the IDX header and length of `path` and returns the number of items it holds. It must be a regular
    file: a FIFO or a device would block or never end."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path} is not a regular file (a FIFO, device or folder); put the IDX file itself there")
    size = info.st_size
    header_len = 16 if magic == IMAGE_MAGIC else 8
    what = 'images' if magic == IMAGE_MAGIC else 'labels'
    fix = "delete it and run again to download it, or copy an intact copy there"
    with open(path, 'rb') as f:
        header = f.read(header_len)
    if len(header) < header_len:
        raise DataError(f"{path}: truncated IDX {what} file ({size} bytes, shorter than its header); {fix}")
    found = struct.unpack('>I', header[:4])[0]
    if found != magic:
        raise DataError(f"{path}: not an IDX {what} file (magic number {found}, expected {magic}); {fix}")
    count = struct.unpack('>I', header[4:8])[0]
    item = 1
    if magic == IMAGE_MAGIC:
        rows, cols = struct.unpack('>II', header[8:16])
        item = rows * cols
    expected = header_len + count * item
    if size != expected:
        raise DataError(f"{path}: wrong length ({size} bytes, its header promises {count} {what} = {expected} bytes); {fix}")
    return count


def load_split(name: str, root: os.PathLike, train: bool, download: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Images `[N, 28, 28]` (`uint8`) and labels `[N]` (`int64`) of one split, as torchvision reads them.

    Files present under `root` are used as they are. When they are missing and `download` is set,
    torchvision downloads them; if that fails the error says where to put them.
    """
    spec = dataset_spec(name)
    root = Path(root).expanduser().resolve()
    images_file, labels_file = _raw_files(spec, root, train)
    if not (images_file.exists() and labels_file.exists()):
        if not download:
            raise DataFilesMissing(f"{spec.name} files not found: expected {images_file} and {labels_file} "
                            f"(point the data folder at the one that holds {spec.folder}/raw)")
        # torchvision creates <root>/<Name>/raw before it downloads: a failed download leaves no folder behind
        created = next((folder for folder in (root, *root.parents)[::-1] + (root / spec.folder,
                                                                           images_file.parent)
                        if not folder.exists()), None)
        try:
            spec.torchvision_class(str(root), train=train, download=True)
        except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, ... per mirror
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise DataFilesMissing(
                f"{spec.name} files not found under {images_file.parent} and the download failed "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Put the uncompressed IDX files "
                f"({images_file.name}, {labels_file.name}) in {images_file.parent}, "
                f"or pass data_dir=<folder that holds {spec.folder}/raw>") from None
    images, labels = read_idx(images_file, IMAGE_MAGIC), read_idx(labels_file, LABEL_MAGIC).long()
    if len(images) != len(labels):
        raise DataError(f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels; "
                        f"the two files must come from the same release")
    if labels.numel() and (labels.min() < 0 or labels.max() >= spec.n_classes):
        raise DataError(f"{labels_file}: labels must be in [0, {spec.n_classes - 1}], "
                        f"found {labels.min().item()}..{labels.max().item()}")
    return images, labels


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """The `uint8` items of an IDX file, once `check_idx_file` has passed: images `[N, rows, cols]` or labels `[N]`."""
    count = check_idx_file(path, magic)
    with open(path, 'rb') as f:
        header = f.read(16 if magic == IMAGE_MAGIC else 8)
        shape = (count, *struct.unpack('>II', header[8:16])) if magic == IMAGE_MAGIC else (count,)
        return torch.from_numpy(np.fromfile(f, dtype=np.uint8).reshape(shape))


def normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """`uint8` `[N, 28, 28]` → `float32` `[N, 1, 28, 28]`, scaled to [0, 1] and standardized."""
    spec = dataset_spec(name)
    x = images.to(torch.float32).div_(255.).unsqueeze(1)
    return x.sub_(spec.mean).div_(spec.std)


@dataclass
class TensorSplit:
    """A split resident on the training device: normalized images `[N, 1, 28, 28]` and labels `[N]`."""
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None
                ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Yields `(images, labels)` batches; shuffled by `generator` when one is given, in order otherwise."""
        n = len(self)
        if generator is None:
            for start in range(0, n, batch_size):
                yield self.images[start:start + batch_size], self.labels[start:start + batch_size]
            return
        # The permutation is drawn on the CPU generator (reproducible across devices), then moved.
        order = torch.randperm(n, generator=generator).to(self.labels.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx], self.labels[idx]

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


def tensor_split(images: torch.Tensor, labels: torch.Tensor, name: str, device: torch.device) -> TensorSplit:
    """Moves a raw split to `device` and normalizes it there."""
    return TensorSplit(normalize(images.to(device), name), labels.to(device))


def holdout_split(train: TensorSplit, fraction: float, seed: int) -> Tuple[TensorSplit, TensorSplit]:
    """`(train, valid)`: a fixed, seeded `fraction` of `train` held out for validation (the same images on
    every run with this seed)."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).to(train.labels.device)
    n_valid = max(1, int(round(len(train) * fraction)))
    valid = TensorSplit(train.images[order[:n_valid]], train.labels[order[:n_valid]])
    return TensorSplit(train.images[order[n_valid:]], train.labels[order[n_valid:]]), valid


def subsample(train: TensorSplit, n: int, seed: int) -> TensorSplit:
    """The first `n` images of a seeded permutation of `train`: a random training subset for learning curves.
    With one seed the subsets are nested (the 1,000 images of `n=1000` are among those of `n=2000`), so a curve
    over `n` adds data rather than drawing a new set each time. `n` must be in [1, len(train)]."""
    if not 1 <= n <= len(train):
        raise ValueError(f"cannot take {n} of {len(train)} training images")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).to(train.labels.device)
    return TensorSplit(train.images[order[:n]], train.labels[order[:n]])


class DeviceError(ValueError):
    """A device name torch knows that cannot be used here: `device={name}: {reason}`."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"device={name}: {reason}")
        self.reason = reason


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA when available, else CPU; `cpu`, `cuda`, `cuda:N` as given (checked). Raises `DeviceError`,
    or torch's `RuntimeError` for a name that is no device at all."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceError(name, "CUDA is not available on this machine; use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(name, f"only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != 'cpu':
        raise DeviceError(name, "use auto, cpu, cuda or cuda:N")
    return device
