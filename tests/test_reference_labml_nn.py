"""The labml_nn reference contender of the benchmark runs end to end on tiny data."""

import json
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

N_TRAIN = 256
N_TEST = 128


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    with open(path, 'wb') as f:
        f.write(struct.pack('>IIII', 2051, n, rows, cols))
        f.write(images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    with open(path, 'wb') as f:
        f.write(struct.pack('>II', 2049, len(labels)))
        f.write(labels.astype(np.uint8).tobytes())


def _synthetic_mnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """Torchvision-layout MNIST (root/MNIST/raw/*-ubyte) with a learnable pattern:
    class k lights up a horizontal band at rows 2k..2k+7, plus noise."""
    rng = np.random.default_rng(0)
    raw = root / 'MNIST' / 'raw'
    raw.mkdir(parents=True)

    def make(n):
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k:2 * k + 8, 4:24] = 255
        return images, labels

    for prefix, n in (('train', n_train), ('t10k', n_test)):
        images, labels = make(n)
        _write_idx_images(raw / f'{prefix}-images-idx3-ubyte', images)
        _write_idx_labels(raw / f'{prefix}-labels-idx1-ubyte', labels)
    return root


def test_reference_runs_on_synthetic_mnist(tmp_path):
    data_dir = _synthetic_mnist(tmp_path / 'data')
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.references.labml_nn',
         '--data-dir', str(data_dir), '--epochs', '1', '--batch-size', '64',
         '--device', 'cpu', '--seed', '0', '--quiet'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]

    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # stdout is exactly one JSON dict
    result = json.loads(lines[0])

    for key in ('train_samples_per_s', 'epoch_s', 'peak_rss_mb', 'test_accuracy',
                'epochs', 'batch_size'):
        assert key in result, key
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key

    assert result['epochs'] == 1
    assert result['batch_size'] == 64
    assert result['train_samples_per_s'] > 0
    assert result['epoch_s'] > 0
    assert result['peak_rss_mb'] > 10
    assert 0.0 <= result['test_accuracy'] <= 1.0
    assert result['train_samples'] == N_TRAIN
    assert result['test_samples'] == N_TEST
    assert result['inner_iterations'] == 10  # labml_nn's schedule left untouched
    assert result['eval_images_per_s'] > 0
    # the epoch (train + validation) contains the timed training chunks
    assert result['train_s'] <= result['epoch_s'] + 1e-6
    assert math.isclose(result['train_samples_per_s'], N_TRAIN / result['train_s'],
                        rel_tol=1e-6)


def test_missing_files_fail_without_download(tmp_path):
    """Empty data dir: refuse up front instead of letting torchvision download."""
    proc = subprocess.run(
        [sys.executable, '-c',
         'import sys; from experiments.references.labml_nn import run_labml_nn_reference as r; '
         'r(sys.argv[1], 1, 64, "cpu", 0)', str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert 'FileNotFoundError' in proc.stderr


def test_benchmark_end_to_end_with_a_relative_data_dir(synthetic_data_dir):
    """`python -m experiments.benchmark` as docs/benchmark.md runs it: a data folder relative to the caller's folder
    (the contenders run in a temporary folder), both contenders on the same files, their runs interleaved,
    the ratios printed last."""
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.benchmark', '--data-dir', synthetic_data_dir.name, '--device', 'cpu',
         '--repeats', '2'],
        cwd=synthetic_data_dir.parent, env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    results = json.loads(lines[-2])
    ref, ours = results['labml_nn'], results['ours']
    # the same data: each contender tested on the 256 synthetic test images
    assert ref['test_samples'] == 256
    for r in (ref, ours):
        assert 0. <= r['test_accuracy'] <= 1. and r['epoch_s'] > 0 and r['eval_images_per_s'] > 0
    name, value = lines[-1].split(': ')
    assert name == 'speedup_vs_labml_nn' and float(value) == round(ref['epoch_s'] / ours['epoch_s'], 2)
    # runs alternate between the contenders; each contender's fastest run is the one reported
    runs = re.findall(r'^  (labml_nn|ours) run (\d): epoch ([0-9.]+) s$', proc.stdout, re.M)
    assert [(n, int(i)) for n, i, _ in runs] == [('labml_nn', 1), ('ours', 1), ('labml_nn', 2), ('ours', 2)]
    times = results['epoch_s_of_each_run']
    assert [f'{float(t):.2f}' for _, _, t in runs] == [f'{t:.2f}' for pair in zip(times['labml_nn'], times['ours'])
                                                        for t in pair]
    assert ref['epoch_s'] == min(times['labml_nn']) and ours['epoch_s'] == min(times['ours'])
    # one ratio per interleaved pair, printed with their median
    paired = results['paired_epoch_ratios']
    assert paired == [r / o for r, o in zip(times['labml_nn'], times['ours'])]
    assert f"epoch time ratio of each interleaved pair: {paired[0]:.2f}, {paired[1]:.2f} " in proc.stdout
    # run i of both contenders has seed i; the accuracy is the mean over the seeds
    for r in (ref, ours):
        assert r['seeds'] == [0, 1] and len(r['test_accuracy_of_each_seed']) == 2
        assert r['test_accuracy'] == sum(r['test_accuracy_of_each_seed']) / 2
