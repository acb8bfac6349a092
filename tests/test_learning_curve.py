"""`python -m experiments.learning_curve`: the epistemic score against the training-set size, from a sweep folder."""
import json

import numpy as np
import pytest
import torch

from evidential.metrics import entropy
from experiments.learning_curve import CurveError, collect
from tests.conftest import ROOT, run_cli


def _run(tmp_path, name, family, overrides, train_size, arrays, status='done'):
    run_dir = tmp_path / 'runs' / name
    run_dir.mkdir(parents=True)
    (run_dir / 'experiment.json').write_text(json.dumps({'train_size': train_size, 'holdout': 0.1}))
    np.savez(run_dir / 'predictions.npz', **arrays)
    return {'family': family, 'overrides': {**overrides, 'train_size': train_size, 'data_dir': '/x'},
            'status': status, 'run_dir': str(run_dir)}


def _sweep(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=(2, 50)).astype(np.float32)
    runs = [
        _run(tmp_path, 'a', 'evidence_mnist', {'seed': 1}, 1000,
             {'id/probs': probs[0], 'id/u': np.full(50, 0.5, np.float32), 'fashion_mnist/u': np.full(50, 0.9, np.float32)}),
        _run(tmp_path, 'b', 'evidence_mnist', {'seed': 1}, 100,
             {'id/probs': probs[0], 'id/u': np.full(50, 0.7, np.float32), 'fashion_mnist/u': np.full(50, 0.8, np.float32)}),
        _run(tmp_path, 'c', 'evidence_mnist', {'seed': 2}, 100,
             {'id/probs': probs[0], 'id/u': np.full(50, 0.3, np.float32), 'fashion_mnist/u': np.full(50, 1.0, np.float32)}),
        _run(tmp_path, 'd', 'softmax_mnist', {'seed': 1}, 100, {'id/probs': probs[0], 'fashion_mnist/probs': probs[1]}),
        _run(tmp_path, 'e', 'softmax_mnist', {'seed': 1}, 200, {'id/probs': probs[0]}, status='failed'),
    ]
    folder = tmp_path / 'sweep'
    folder.mkdir()
    (folder / 'sweep.json').write_text(json.dumps({'split': 'test', 'runs': runs}))
    return folder, probs


def test_scores_are_pooled_over_seeds_per_size_and_entropy_is_computed_where_no_score_is_saved(tmp_path):
    folder, probs = _sweep(tmp_path)
    curves = collect(folder)
    assert list(curves) == ['evidence_mnist', 'softmax_mnist']  # seed, data_dir and size are not the method
    evidential = curves['evidence_mnist']
    assert [(n, name) for n, name, _ in evidential] == [(100, 'u'), (1000, 'u')]
    assert np.mean(evidential[0][2]['id']) == pytest.approx(0.5) and np.mean(evidential[0][2]['fashion_mnist']) == pytest.approx(0.9)
    assert len(evidential[0][2]['id']) == 100  # two seeds pooled
    (n, name, scores), = curves['softmax_mnist']  # the failed run is left out
    assert (n, name) == (100, 'entropy')
    np.testing.assert_allclose(scores['fashion_mnist'], entropy(torch.from_numpy(probs[1])).numpy(), rtol=1e-6)


def test_the_command_draws_the_figure_and_refuses_a_folder_without_a_sweep(tmp_path):
    folder, _ = _sweep(tmp_path)
    r = run_cli('experiments.learning_curve', str(folder), cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'evidence_mnist (u):' in r.stdout and '1,000 images: id median 0.5 (mean 0.5)' in r.stdout
    png = folder / 'train_size.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    r = run_cli('experiments.learning_curve', str(tmp_path / 'nothing'), cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nothing'}: no sweep.json (run `python -m experiments.sweep sweeps/train_size.py` first)"]
    with pytest.raises(CurveError, match='no evaluated run'):
        (tmp_path / 'empty').mkdir()
        (tmp_path / 'empty' / 'sweep.json').write_text(json.dumps({'split': 'test', 'runs': []}))
        collect(tmp_path / 'empty')
