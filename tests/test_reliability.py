"""Runs survive kill -9, Ctrl-C, SIGTERM, non-finite numbers and bad files — tested with real processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs.checkpoint import CHECKPOINT_FILE, load_checkpoint
from tests.conftest import ROOT
from tests.idx import write_dataset

MODULE = 'experiments.evidence_mnist'


def _start(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
    return subprocess.Popen([sys.executable, '-m', MODULE, *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(workdir: Path, proc: subprocess.Popen, min_epoch: int = 1, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        for ckpt in (workdir / 'logs' / 'evidence_mnist').glob(f'*/{CHECKPOINT_FILE}'):
            try:
                if load_checkpoint(ckpt.parent)['epoch'] >= min_epoch:
                    return ckpt.parent
            except Exception:  # being replaced right now: atomic rename, try again
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError('no checkpoint in time')


def _run(workdir, *args, timeout=300):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
    return subprocess.run([sys.executable, '-m', MODULE, *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_kill_9_then_resume_finishes_the_epochs(workdir, synthetic_data_dir):
    epochs = 6  # killed right after epoch 2's checkpoint: 4 epochs (several seconds) of margin, 4 resumed
    proc = _start(workdir, 'preset=smoke', f'data_dir={synthetic_data_dir}', f'epochs={epochs}')
    run = _wait_for_checkpoint(workdir, proc, min_epoch=2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    killed_at = load_checkpoint(run)  # never half-written: it loads
    assert 2 <= killed_at['epoch'] < epochs, 'killed too late to test resume; make epochs longer'
    # a kill mid-write leaves the checkpoint's temporary file behind (it is renamed only when complete): harmless
    leftover = run / '.checkpoint.pt.killed.tmp'
    leftover.write_bytes(b'the first bytes of a checkpoint')
    r = _run(workdir, f'resume={run.name}')
    assert r.returncode == 0, r.stderr[-2000:]
    final = load_checkpoint(run)
    assert final['epoch'] == epochs and final['status'] == 'completed'
    assert [h['epoch'] for h in final['history']] == list(range(1, epochs + 1))
    # the epochs before the kill are kept as they were, the rest continue after them
    assert final['history'][:killed_at['epoch']] == killed_at['history']
    assert final['samples_seen'] == epochs * 512
    assert leftover.read_bytes() == b'the first bytes of a checkpoint'  # neither read nor taken for the checkpoint


def test_resume_waits_for_a_live_trainer_not_a_zombie(workdir, synthetic_data_dir):
    """labml never removes `run.pid`. A live process named there blocks a resume; one that has exited but is not
    yet reaped (a zombie: its parent, a sweep, was killed and pid 1 has not reaped it yet) does not."""
    r = _run(workdir, 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=1')
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = list((workdir / 'logs' / 'evidence_mnist').iterdir())
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        (run / 'run.pid').write_text(str(other.pid))
        r = _run(workdir, f'resume={run.name}', 'epochs=2')
        assert r.returncode == 2 and f'still running (pid {other.pid})' in r.stderr, r.stderr[-2000:]
        assert load_checkpoint(run)['epoch'] == 1
        other.kill()
        deadline = time.time() + 30  # not waited for: a zombie, which kill(pid, 0) still finds
        while Path(f'/proc/{other.pid}/stat').read_text().rsplit(')', 1)[-1].split()[0] != 'Z':
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(other.pid, 0)
        r = _run(workdir, f'resume={run.name}', 'epochs=2')
        assert r.returncode == 0, r.stderr[-2000:]
        assert load_checkpoint(run)['epoch'] == 2
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_mark_and_explain(workdir, synthetic_data_dir, sig, code):
    proc = _start(workdir, 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=200')
    run = _wait_for_checkpoint(workdir, proc, min_epoch=1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert f'Resume with: python -m {MODULE} resume={run.name}' in err
    assert 'Traceback' not in err
    state = load_checkpoint(run)
    assert state['status'] == 'interrupted' and 1 <= state['epoch'] < 200
    # labml's own record of the run says so too
    assert json.loads((run / 'run_log.jsonl').read_text().splitlines()[-1])['status'] == 'interrupted'


def test_non_finite_loss_stops_with_step_and_cause(workdir, synthetic_data_dir):
    r = _run(workdir, 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=1',
             'optimizer.optimizer=SGD', 'optimizer.learning_rate=1e30', 'outputs_to_evidence=exp')
    assert r.returncode == 3
    last = r.stderr.strip().splitlines()[-1]
    assert 'non-finite loss at epoch 1, step' in last and 'exp evidence head' in last and 'learning rate' in last
    assert 'no epoch had completed' in last

    # A good epoch, then a resume with a learning rate that blows up: the stop names the step and the
    # likely cause, and the checkpoint of the good epoch is kept untouched.
    r = _run(workdir, 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=1', 'optimizer.optimizer=SGD',
             'lr_schedule=constant')  # so the hint shows the learning rate as given, not cosine-decayed
    assert r.returncode == 0, r.stderr[-2000:]
    run = sorted((workdir / 'logs' / 'evidence_mnist').iterdir(), key=lambda p: p.stat().st_mtime)[-1]
    good = (run / CHECKPOINT_FILE).read_bytes()
    r = _run(workdir, f'resume={run.name}', 'epochs=2', 'optimizer.learning_rate=1e30')
    assert r.returncode == 3, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert 'non-finite loss at epoch 2, step' in last and 'learning rate (1e+30) may be too large' in last
    assert 'the last good checkpoint (end of epoch 1) is kept' in last
    assert (run / CHECKPOINT_FILE).read_bytes() == good


@pytest.mark.parametrize('damage, message', [
    ('truncate', 'wrong length'),
    ('magic', 'not an IDX images file (magic number'),
    ('empty', 'truncated IDX images file'),
])
def test_corrupt_data_files_name_the_file(workdir, tmp_path, damage, message):
    root = write_dataset(tmp_path / 'data', 'MNIST', n_train=64, n_test=32)
    images = root / 'MNIST' / 'raw' / 'train-images-idx3-ubyte'
    data = images.read_bytes()
    images.write_bytes({'truncate': data[:-100], 'magic': b'\x00\x00\x09\x99' + data[4:], 'empty': b''}[damage])
    r = _run(workdir, 'preset=smoke', f'data_dir={root}', timeout=120)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: {images}') and message in last, last
    assert 'Traceback' not in r.stderr
    assert not (workdir / 'logs').exists()


def test_same_seed_same_metrics(workdir, synthetic_data_dir):
    histories = []
    for _ in range(2):
        r = _run(workdir, 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=2', 'seed=7', 'holdout=0.25')
        assert r.returncode == 0, r.stderr[-2000:]
        run = sorted((workdir / 'logs' / 'evidence_mnist').iterdir(), key=lambda p: p.stat().st_mtime)[-1]
        # every metric but the wall-clock timings
        histories.append([{k: v for k, v in h.items() if not k.startswith('time.')}
                          for h in load_checkpoint(run)['history']])
    assert histories[0] == histories[1]
    # and another seed gives another run
    r = _run(workdir, 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=2', 'seed=8', 'holdout=0.25')
    run = sorted((workdir / 'logs' / 'evidence_mnist').iterdir(), key=lambda p: p.stat().st_mtime)[-1]
    assert [h['loss.train'] for h in load_checkpoint(run)['history']] != \
        [h['loss.train'] for h in histories[0]]


def test_interrupted_before_the_first_checkpoint_says_so_and_leaves_no_folder(workdir, synthetic_data_dir):
    """Nothing is saved before the first epoch ends: no 'resume' that would fail, no folder without a checkpoint."""
    # one image a step: the first epoch takes long enough (512 steps) to be interrupted in it
    args = ['preset=smoke', f'data_dir={synthetic_data_dir}', 'train_batch_size=1', 'epochs=3']
    proc = _start(workdir, *args)
    folder = workdir / 'logs' / 'evidence_mnist'
    deadline = time.time() + 120
    while not list(folder.glob('*/log.jsonl')):  # labml's run has started: the loop is next
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    (run,) = folder.iterdir()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert not (run / CHECKPOINT_FILE).exists(), 'the first epoch ended before the signal: make it longer'
    assert proc.returncode == 130, err[-2000:]
    assert 'before the first epoch finished: there is nothing to resume' in err and 'resume=' not in err
    assert f"Start it again with: python -m {MODULE} {' '.join(args)}" in err
    assert 'Traceback' not in err and not run.exists()
