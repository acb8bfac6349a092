"""
Post-hoc steps (`experiments.evaluation.posthoc`) and the first of them, temperature scaling
(`evidential.calibration`): the fit on synthetic predictions (over-confident → T > 1, calibrated → T ≈ 1, the
golden-section minimum equals a brute-force grid's), and in a real run's evaluation: fitted on the held-out split
only, its block's raw numbers are the `id` block's, the accuracy is unchanged, a run without a held-out split gets
a note, and `compare` shows its columns (the temperature never bold).
"""
import json
import math

import numpy as np
import pytest
import torch

from evidential import metrics
from evidential.calibration import T_BOUNDS, fit_temperature, scale, scaled_nll, log_probs
from experiments import compare
from experiments.compare.table import direction
from experiments.evaluation import posthoc
from experiments.evaluation.core import evaluate as evaluate_run
from experiments.train import main as train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _calibrated(n=4000, k=10, seed=0):
    """True logits and labels drawn from softmax(true logits): softmax(true logits) is perfectly calibrated."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2.0
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return logits, labels


def test_over_confident_predictions_get_a_temperature_above_one_and_a_lower_nll():
    logits, labels = _calibrated()
    over = torch.softmax(3 * logits, 1)  # true logits × 3: over-confident
    t = fit_temperature(over, labels)
    assert 2.5 < t < 3.5  # the true factor is 3
    scaled = scale(over, t)
    assert metrics.nll(scaled, labels) < metrics.nll(over, labels) - 0.1
    assert metrics.ece(scaled, labels) < metrics.ece(over, labels)
    # the accuracy is unchanged by construction (argmax of log p̂ / T is that of p̂ for T > 0)
    assert metrics.accuracy(scaled, labels) == metrics.accuracy(over, labels)
    assert torch.equal(scaled.argmax(1), over.argmax(1))


def test_under_confident_predictions_get_a_temperature_below_one():
    logits, labels = _calibrated()
    assert fit_temperature(torch.softmax(logits / 2, 1), labels) < 0.7


def test_calibrated_predictions_keep_a_temperature_near_one():
    # 4000 samples: the NLL-optimal T of a calibrated model is 1 up to sampling noise; 0.05 is several standard
    # errors at this size (checked over seeds)
    for seed in range(3):
        logits, labels = _calibrated(seed=seed)
        assert fit_temperature(torch.softmax(logits, 1), labels) == pytest.approx(1.0, abs=0.05)


def test_the_fit_is_the_minimum_of_a_brute_force_grid():
    logits, labels = _calibrated(n=1000, seed=3)
    probs = torch.softmax(2.2 * logits, 1).float()  # float32 as saved in predictions.npz
    t = fit_temperature(probs, labels)
    z = log_probs(probs)
    # an independent check: the NLL on a grid of 1e-4 in T around [0.5, 5], its minimiser
    grid = torch.arange(0.5, 5.0, 1e-4, dtype=torch.float64)
    nll = torch.stack([-torch.log_softmax(z / g, 1).gather(1, labels[:, None]).mean() for g in grid])
    assert t == pytest.approx(grid[nll.argmin()].item(), abs=1e-3)
    assert scaled_nll(z, labels, t) <= nll.min().item() + 1e-9
    assert T_BOUNDS[0] < t < T_BOUNDS[1]
    # deterministic
    assert fit_temperature(probs, labels) == t


def test_hard_zeros_give_a_finite_fit():
    # a circuit's or a saturated softmax's p̂ can hold exact zeros; the clamp keeps every logit finite
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    t = fit_temperature(probs, labels)
    assert math.isfinite(t) and T_BOUNDS[0] <= t <= T_BOUNDS[1]
    assert torch.isfinite(scale(probs, t)).all()


def test_the_registry_is_consistent():
    steps = posthoc.all_steps()
    assert [s.name for s in steps] == list(posthoc.POSTHOC) == ['temperature', 'conformal']
    assert all(s.figure[1].startswith('eval_') for s in steps if s.figure)  # removed on a failed write
    columns = [c for s in steps for c in s.column_names()]
    assert len(columns) == len(set(columns)) and all(compare.is_column_name(c) for c in columns)
    # the temperature has no better value: never bold; the scaled NLL and ECE are lower-is-better
    assert direction('temperature/T') is None
    assert direction('temperature/nll') == direction('temperature/ece') == 'min'
    with pytest.raises(KeyError, match='known: temperature, conformal'):
        posthoc.get('laplace')


@pytest.fixture
def holdout_runs(workdir, synthetic_data_dir, monkeypatch):
    """Two smoke runs of the evidential family with a held-out 20% (seeds 1, 2): their run folders."""
    monkeypatch.chdir(workdir)
    for seed in (1, 2):
        assert train('evidence_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu',
                                        'holdout=0.2', f'seed={seed}']) == 0
    return sorted((workdir / 'logs' / 'evidence_mnist').iterdir())


NO_PERTURBATIONS = {'fgsm': 0, 'pgd': 0, 'missing_pixels': 0}


def test_a_run_with_a_held_out_split_gets_a_temperature_block(holdout_runs, workdir, monkeypatch, capsys):
    runs = holdout_runs
    for run in runs:
        _, result = evaluate_run(str(run), samples=NO_PERTURBATIONS, log=lambda _: None)
    result = json.loads((runs[-1] / 'evaluation.json').read_text())
    block, id_block = result['temperature'], result['id']
    assert block['temperature'] > 0 and T_BOUNDS[0] <= block['temperature'] <= T_BOUNDS[1]
    assert block['fitted_on'] == f'held-out split ({int(0.2 * 512)} images)'
    # before scaling: the id block's own numbers; after: the same accuracy
    for metric in ('nll', 'brier', 'ece', 'aurc'):
        assert block['raw'][metric] == pytest.approx(id_block[metric], abs=1e-12), metric
    assert block['scaled']['accuracy'] == id_block['accuracy']
    assert set(block['scaled']) == {'accuracy', 'nll', 'brier', 'ece', 'aurc'}
    assert '_probs' not in block
    assert result['figures']['reliability_scaled'] == 'eval_reliability_scaled.png'
    assert (runs[-1] / 'eval_reliability_scaled.png').read_bytes()[:8] == PNG_MAGIC

    # compare: its columns, the temperature never bold
    out = workdir / 'cmp'
    assert compare.main([str(r) for r in runs] + ['--out', str(out)]) == 0
    table = json.loads((out / 'comparison.json').read_text())
    keys = [c['key'] for c in table['columns']]
    assert {'temperature/T', 'temperature/nll', 'temperature/ece'} <= set(keys)
    assert next(c for c in table['columns'] if c['key'] == 'temperature/T')['better'] is None
    assert table['best']['temperature/T'] == []
    temperatures = [json.loads((r / 'evaluation.json').read_text())['temperature']['temperature'] for r in runs]
    assert [row['values']['temperature/T'] for row in table['rows']] == pytest.approx(temperatures)
    capsys.readouterr()

    # the fit never reads the test split: poisoned test labels leave T as it was (and change the test metrics)
    from configs import runner

    real_load = runner.load_trained

    def poisoned(*args, **kwargs):
        family, conf, run_dir, state = real_load(*args, **kwargs)
        labels = conf.dataset.test.labels
        labels.copy_((labels + 1) % conf.dataset.n_classes)
        return family, conf, run_dir, state

    monkeypatch.setattr(runner, 'load_trained', poisoned)
    _, again = evaluate_run(str(runs[-1]), samples=NO_PERTURBATIONS, log=lambda _: None)
    assert again['id']['accuracy'] != id_block['accuracy']
    assert again['temperature']['temperature'] == block['temperature']


def test_a_run_without_a_held_out_split_gets_a_note_and_no_block(smoke_run):
    _, result = evaluate_run(str(smoke_run), samples=NO_PERTURBATIONS, log=lambda _: None)
    assert 'temperature' not in result and 'conformal' not in result
    assert 'temperature scaling skipped: the run has no held-out split' in result['notes']
    assert 'conformal prediction skipped: the run has no held-out split' in result['notes']
    assert 'reliability_scaled' not in result['figures']
    assert not (smoke_run / 'eval_reliability_scaled.png').exists()


def test_the_validation_split_evaluation_has_no_temperature_block(holdout_runs):
    _, result = evaluate_run(str(holdout_runs[0]), split='validation', log=lambda _: None)
    assert 'temperature' not in result
