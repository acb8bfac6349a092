"""The IDX reader against torchvision's own (the oracle), its errors, and that loading data for training does not
import torchvision."""
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision

from evidential.data import DATASETS, DataError, DataFilesMissing, load_split
from tests.conftest import ROOT


def _split_pairs(root):
    for name, spec in DATASETS.items():
        for train in (True, False):
            yield name, spec, train


def test_synthetic_files_read_as_torchvision_reads_them(synthetic_data_dir):
    for name, spec, train in _split_pairs(synthetic_data_dir):
        images, labels = load_split(name, synthetic_data_dir, train=train, download=False)
        ds = getattr(torchvision.datasets, spec.folder)(str(synthetic_data_dir), train=train, download=False)
        assert images.dtype == torch.uint8 and torch.equal(images, ds.data), (name, train)
        assert labels.dtype == torch.int64 and torch.equal(labels, ds.targets.long()), (name, train)


def test_real_files_read_as_torchvision_reads_them(real_data_dir):
    for name, spec, train in _split_pairs(real_data_dir):
        images, labels = load_split(name, real_data_dir, train=train, download=False)
        ds = getattr(torchvision.datasets, spec.folder)(str(real_data_dir), train=train, download=False)
        assert torch.equal(images, ds.data) and torch.equal(labels, ds.targets.long()), (name, train)


def test_loading_data_for_training_does_not_import_torchvision(synthetic_data_dir):
    code = ("import sys, configs.evidence, configs.circuit, experiments.train; from evidential.data import load_split; "
            f"load_split('mnist', {str(synthetic_data_dir)!r}, train=True, download=False); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == 'False'


def test_missing_files_are_told_apart_from_corrupt_ones(tmp_path, synthetic_data_dir):
    """Evaluation skips a default OOD set whose files are missing, but stops on a corrupt one: by the error's type."""
    with pytest.raises(DataFilesMissing, match='^mnist files not found: expected '):
        load_split('mnist', tmp_path / 'empty', train=False, download=False)
    shutil.copytree(synthetic_data_dir / 'MNIST', tmp_path / 'corrupt' / 'MNIST')
    (tmp_path / 'corrupt' / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte').write_bytes(b'\0\0')
    with pytest.raises(DataError, match='truncated IDX') as error:
        load_split('mnist', tmp_path / 'corrupt', train=False, download=False)
    assert not isinstance(error.value, DataFilesMissing)
