"""`python -m experiments.benchmark --family bayes | packed` end to end, as real processes on tiny synthetic IDX data:
both contenders run, on the same files, and every printed number is the JSON's.

The packed one needs the TorchUncertainty reference interpreter (lightning + TorchUncertainty conflict with this
project's pins; see `experiments/references/torch_uncertainty.py`) and skips, saying so, where there is none."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_benchmark(data_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'experiments.benchmark', '--data-dir', str(data_dir), '--device', 'cpu',
         '--epochs', '1', *args],
        cwd=data_dir.parent, env={**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'OMP_NUM_THREADS': '1'},
        capture_output=True, text=True, timeout=timeout)


def _table(stdout: str, ref_name: str) -> dict:
    """The printed table: {label: (reference, ours, ratio)} as strings."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == [ref_name, 'ours', 'ratio'])
    rows = {}
    for line in lines[header + 1:]:
        m = re.match(r'^(.{18})\s*(\S+)\s+(\S+)\s+(\S+)x$', line)
        if not m:
            break
        rows[m.group(1).strip()] = m.group(2), m.group(3), m.group(4)
    return rows


def _check_printed_equals_json(proc, ref_name: str, rows_keys: dict):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    results = json.loads(lines[-2])
    ref, ours = results[ref_name], results['ours']
    name, value = lines[-1].split(': ')
    assert name == f'speedup_vs_{ref_name}' and float(value) == round(ref['epoch_s'] / ours['epoch_s'], 2)
    # each contender ran once, in this order, and its epoch time is printed as the JSON has it
    runs = re.findall(rf'^  ({ref_name}|ours) run (\d): epoch ([0-9.]+) s$', proc.stdout, re.M)
    assert [(n, int(i)) for n, i, _ in runs] == [(ref_name, 1), ('ours', 1)]
    assert [float(t) for _, _, t in runs] == [round(ref['epoch_s'], 2), round(ours['epoch_s'], 2)]
    table = _table(proc.stdout, ref_name)
    assert set(table) == set(rows_keys), table
    for label, (key, fmt) in rows_keys.items():
        printed_ref, printed_ours, printed_ratio = table[label]
        assert printed_ref == fmt.format(ref[key]) and printed_ours == fmt.format(ours[key]), label
        assert printed_ratio == f'{ours[key] / ref[key]:.2f}', label
    assert results['paired_epoch_ratios'] == [ref['epoch_s'] / ours['epoch_s']]
    assert results['family'] in ('bayes', 'packed')
    return ref, ours


def test_bayes_family_end_to_end(synthetic_data_dir):
    """This app's Bayesian LeNet against the Pyro one: the same 512 training images, one epoch, both scoring the
    same first 128 test images (`--test-images`) with 30 sampled networks; the printed table, epoch times and
    ratio are the JSON's."""
    proc = _run_benchmark(synthetic_data_dir, '--family', 'bayes', '--batch-size', '128', '--test-images', '128')
    ref, ours = _check_printed_equals_json(proc, 'pyro', {
        'train samples/s': ('train_samples_per_s', '{:,.0f}'), 'train epoch (s)': ('epoch_s', '{:.2f}'),
        'peak RSS (MB)': ('peak_rss_mb', '{:,.0f}'), 'test accuracy S=30': ('test_accuracy', '{:.4f}'),
        'eval images/s': ('eval_images_per_s', '{:,.0f}'), 'eval ms/image S=30': ('eval_ms_per_image', '{:.3f}')})
    for r in (ref, ours):
        assert r['train_samples'] == 512 and r['test_samples'] == 128 and r['mc_samples'] == 30
        assert 0. <= r['test_accuracy'] <= 1. and r['epoch_s'] > 0 and r['eval_s_per_image'] > 0
        assert r['train_samples_per_s'] > 0 and r['seeds'] == [0]
    assert ours['experiment'] == 'bayes_mnist' and 'holdout=0' in ours['command']
    # for the Bayesian family "epoch" is the training epoch; ours' validation is reported beside it
    assert ours['epoch_with_validation_s'] >= ours['epoch_s']
    assert 'posterior predictive of 30 samples on 128 test images' in proc.stdout


def _tu_python():
    sys.path.insert(0, str(REPO_ROOT))
    from experiments.benchmark import BenchmarkError, reference_python
    try:
        return reference_python(), None
    except BenchmarkError as e:
        return None, str(e)


TU_PYTHON, TU_MISSING = _tu_python()


@pytest.mark.skipif(TU_PYTHON is None, reason=f'no TorchUncertainty reference interpreter: {TU_MISSING}')
def test_packed_family_end_to_end(synthetic_data_dir):
    """This app's packed LeNet-5 against TorchUncertainty's tutorial code under its own interpreter."""
    proc = _run_benchmark(synthetic_data_dir, '--family', 'packed', '--batch-size', '128',
                          '--reference-python', TU_PYTHON)
    ref, ours = _check_printed_equals_json(proc, 'torch_uncertainty', {
        'train samples/s': ('train_samples_per_s', '{:,.0f}'), 'epoch time (s)': ('epoch_s', '{:.2f}'),
        'peak RSS (MB)': ('peak_rss_mb', '{:,.0f}'), 'test accuracy': ('test_accuracy', '{:.4f}'),
        'eval images/s': ('eval_images_per_s', '{:,.0f}')})
    for r in (ref, ours):
        assert r['train_samples'] == 512 and r['test_samples'] == 256
        assert 0. <= r['test_accuracy'] <= 1. and r['epoch_s'] > 0 and r['seeds'] == [0]
    assert ref['n_parameters'] == 45_672 and ref['torch_uncertainty'] == '0.13.0'
    assert ours['experiment'] == 'packed_mnist' and 'preset=torch_uncertainty' in ours['command']
    assert f'reference interpreter {TU_PYTHON}' in proc.stdout


def test_packed_family_without_a_reference_interpreter_says_how_to_build_one(synthetic_data_dir, tmp_path):
    """A missing interpreter is one clear error (exit 1) with the build command, before anything trains."""
    proc = _run_benchmark(synthetic_data_dir, '--family', 'packed', '--reference-python', str(tmp_path / 'nope'),
                          timeout=60)
    if proc.returncode == 0:
        pytest.fail('expected an error')
    assert proc.returncode == 1 and 'torch-uncertainty[cpu]==0.13.0' in proc.stderr, proc.stderr
    assert 'run 1' not in proc.stdout
