"""End-to-end training: every loss with every head and every KL schedule on synthetic data, checkpoints, resume,
and real MNIST."""
import json
import re
from pathlib import Path

import pytest
import torch

from configs.checkpoint import CHECKPOINT_FILE, VALUES_FILE, load_checkpoint
from configs.evidence import DEFAULTS
from evidential.heads import EVIDENCE_HEADS
from evidential.losses import LOSSES
from evidential.schedules import KL_SCHEDULES
from experiments.evidence_mnist import main
from tests.conftest import run_cli


def _runs(workdir: Path):
    return sorted((workdir / 'logs' / 'evidence_mnist').iterdir(), key=lambda p: p.stat().st_mtime)


def _log_indicators(run_dir: Path) -> dict:
    """Indicator name -> list of steps at which labml's file writer saved it."""
    seen = {}
    for line in (run_dir / 'log.jsonl').read_text().splitlines():
        for name, points in json.loads(line).get('track', {}).items():
            seen.setdefault(name, []).extend(step for step, _ in points)
    return seen


@pytest.mark.parametrize('loss', list(LOSSES))
def test_every_loss_head_schedule_trains_and_checkpoints(loss, workdir, synthetic_data_dir, monkeypatch):
    """One loss with every head (under a constant KL weight, on from the first step) and with every KL schedule
    (under the default head), in-process (one labml run each), a few steps per run. Heads only shape the
    evidence and schedules only the KL weight, so every pair of the two is not needed."""
    monkeypatch.chdir(workdir)
    combos = [(head, 'constant') for head in EVIDENCE_HEADS] + \
             [(DEFAULTS['outputs_to_evidence'], schedule) for schedule in KL_SCHEDULES if schedule != 'constant']
    for head, schedule in combos:
        code = main(['preset=smoke', f'data_dir={synthetic_data_dir}', f'loss_func={loss}',
                     f'outputs_to_evidence={head}', f'kl_schedule={schedule}', 'train_batch_size=128',
                     'kl_coef=0.5'])
        assert code == 0, (loss, head, schedule)
        run = _runs(workdir)[-1]
        state = load_checkpoint(run)
        assert state['epoch'] == 1 and state['status'] == 'completed'
        assert state['samples_seen'] == 512
        values = json.loads((run / VALUES_FILE).read_text())
        assert (values['loss_func'], values['outputs_to_evidence'], values['kl_schedule']) == (loss, head, schedule)
        assert all(torch.isfinite(v).all() for v in state['model'].values())
    assert len(_runs(workdir)) == len(combos) == len(EVIDENCE_HEADS) + len(KL_SCHEDULES) - 1


def test_tracking_and_resume(workdir, synthetic_data_dir, monkeypatch, capsys):
    """A real process trains 2 epochs; labml logs hold the per-step and per-epoch indicators; resume adds 1 more."""
    r = run_cli('experiments.evidence_mnist', 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=2',
                'kl_schedule=paper', 'optimizer.learning_rate=3e-3', cwd=workdir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'done: test accuracy' in r.stdout
    run = _runs(workdir)[0]
    seen = _log_indicators(run)
    # per step (512 images / 32 per batch = 16 steps, written every 2 steps) over 2 epochs
    assert len(seen['loss.train']) >= 16 and len(seen['kl.train']) >= 16 and len(seen['kl_coef']) >= 16
    for name in ('accuracy.train', 'accuracy.valid', 'loss.valid', 'u.correct.q50', 'u.correct.q10',
                 'p_max.correct.q90', 'strength.q50'):
        assert name in seen, name
    assert seen['accuracy.valid'] == [512, 1024]
    state = load_checkpoint(run)
    assert state['epoch'] == 2 and [h['epoch'] for h in state['history']] == [1, 2]
    # whole-epoch accuracy: a ratio of counts over 512 images
    assert (state['history'][0]['accuracy.train'] * 512) == pytest.approx(round(state['history'][0]['accuracy.train'] * 512))
    # the synthetic data is learnable
    assert state['history'][-1]['accuracy.valid'] > 0.5

    # finished runs refuse to resume without more epochs (in process: the `main` the command runs)
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    checkpoint = (run / CHECKPOINT_FILE).read_bytes()
    assert main([f'resume={run.name}']) == 2 and 'already finished its 2 epochs' in capsys.readouterr().err
    # changing the architecture or the loss on resume is refused
    assert main([f'resume={run.name}', 'epochs=3', 'loss_func=max_likelihood_loss']) == 2
    assert 'cannot change loss_func' in capsys.readouterr().err
    assert (run / CHECKPOINT_FILE).read_bytes() == checkpoint  # refused before anything was written

    before = load_checkpoint(run)
    r = run_cli('experiments.evidence_mnist', f'resume={run.name}', 'epochs=3', cwd=workdir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'Resuming run {run.name} after epoch 2/3' in r.stdout
    after = load_checkpoint(run)
    assert after['epoch'] == 3 and after['samples_seen'] == 3 * 512
    assert [h['epoch'] for h in after['history']] == [1, 2, 3]
    assert after['history'][:2] == before['history']
    assert len(_runs(workdir)) == 1  # the same run folder was continued
    seen = _log_indicators(run)
    assert seen['accuracy.valid'] == [512, 1024, 1536]


@pytest.mark.parametrize('loss, key, value, fn_kwarg', [
    ('fisher_information_loss', 'fisher_coef', 0.5, 'fisher_coef'),
    ('relaxed_squared_error', 'prior_weight', 0.3, 'prior_weight'),
])
def test_loss_hyperparameters_reach_the_loss(loss, key, value, fn_kwarg, workdir, synthetic_data_dir, monkeypatch):
    from configs.runner import load_trained
    monkeypatch.chdir(workdir)
    assert main(['preset=smoke', f'data_dir={synthetic_data_dir}', f'loss_func={loss}', f'{key}={value}']) == 0
    _, conf, _, _ = load_trained(_runs(workdir)[-1].name)
    torch.manual_seed(0)
    evidence, labels = torch.rand(5, 10) * 4, torch.randint(0, 10, (5,))
    expected = LOSSES[loss](evidence, labels, **{fn_kwarg: value})
    assert conf.loss_func(evidence, labels).item() == pytest.approx(expected.item())
    assert expected.item() != pytest.approx(LOSSES[loss](evidence, labels).item())  # the default differs


def test_resume_of_corrupt_checkpoint_is_a_clear_error(workdir, synthetic_data_dir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert main(['preset=smoke', f'data_dir={synthetic_data_dir}']) == 0
    run = _runs(workdir)[-1]
    (run / CHECKPOINT_FILE).write_bytes(b'not a checkpoint')
    r = run_cli('experiments.evidence_mnist', f'resume={run.name}', 'epochs=2', cwd=workdir, timeout=120)
    assert r.returncode == 2
    assert re.search(r'error: checkpoint .* is unreadable', r.stderr)


def test_one_epoch_default_settings_on_real_mnist(workdir, real_data_dir):
    """The default experiment, one epoch on the real 10k-image MNIST subset, >= 95% on the official test set."""
    r = run_cli('experiments.evidence_mnist', f'data_dir={real_data_dir}', 'epochs=1', cwd=workdir, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    accuracy = float(re.search(r'done: test accuracy ([0-9.]+)', r.stdout).group(1))
    assert accuracy >= 0.95
