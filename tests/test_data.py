"""The IDX reader against torchvision's own (the oracle), its errors, and that loading data for training does not
import torchvision."""
import os
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


def test_a_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    """A mistyped data_dir: torchvision creates <root>/MNIST/raw, then its download fails (here: its mirrors point
    at a closed loopback port). The error is one line, exit 2, and no folder is left."""
    import torchvision.datasets
    from experiments.train import main as train
    monkeypatch.setattr(torchvision.datasets.MNIST, 'mirrors', ['http://127.0.0.1:9/'])
    (tmp_path / '.labml.yaml').write_text('data_path: data\nexperiments_path: logs\ncheck_repo_dirty: false\n')
    monkeypatch.chdir(tmp_path)
    assert train('evidence_mnist', ['preset=smoke', f'data_dir={tmp_path}/shared/dat', 'device=cpu']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'download failed' in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.labml.yaml']  # no shared/dat/MNIST/raw, no logs
    # an existing data folder keeps what it had, and gets no MNIST/raw
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('mine')
    assert train('evidence_mnist', ['preset=smoke', f'data_dir={tmp_path}/mine', 'device=cpu']) == 2
    assert [p.name for p in (tmp_path / 'mine').iterdir()] == ['notes.txt']


def test_a_data_file_that_is_not_a_regular_file_is_an_error(tmp_path, synthetic_data_dir):
    """A FIFO would block the read forever: refused before it is opened."""
    root = tmp_path / 'data'
    shutil.copytree(synthetic_data_dir, root)
    images = root / 'MNIST' / 'raw' / 'train-images-idx3-ubyte'
    images.unlink()
    os.mkfifo(images)
    with pytest.raises(DataError, match='not a regular file'):
        load_split('mnist', root, train=True, download=False)


def test_train_size_takes_a_seeded_nested_subset_and_keeps_the_other_splits(synthetic_data_dir):
    """`train_size=N`: N of the training images after the holdout, the same N for one seed, nested across sizes;
    the held-out and test sets do not change."""
    from types import SimpleNamespace
    from configs.experiment import load_data

    def data(train_size, seed=1):
        c = SimpleNamespace(data_dir=str(synthetic_data_dir), download=False, device='cpu', holdout=0.25,
                            seed=seed, train_size=train_size)
        return load_data(c, 'mnist')

    full, small, larger, again, other = data(0), data(50), data(200), data(50), data(50, seed=2)
    assert len(full.train) == 384 and len(small.train) == 50 and len(larger.train) == 200
    assert torch.equal(small.valid.images, full.valid.images) and torch.equal(small.test.images, full.test.images)

    def rows(split):
        return {bytes(x.numpy().tobytes()) for x in split.images}
    assert rows(small.train) <= rows(larger.train) <= rows(full.train)  # nested subsets of the training part
    assert torch.equal(again.train.images, small.train.images) and torch.equal(again.train.labels, small.train.labels)
    assert rows(other.train) != rows(small.train)
    assert not rows(small.train) & rows(full.valid)  # never a held-out image
    assert torch.equal(data(384).train.images, full.train.images)
