"""Disks fill up and fail: real processes whose writes fail with ENOSPC or EIO.

* a full disk: the run folder on a small tmpfs (`mount -t tmpfs`, when this user may mount; otherwise the
  same failure is injected), filled up while the run trains;
* a failing disk: EIO injected into `os.fsync` of files under the run folder after N of them
  (`tests/fault_hook.py`, loaded into the child process before the entry point).

Each must stop with exit code 4 and a message naming the file and how to resume, leave the previous
checkpoint intact and loadable and `log.jsonl` of whole lines, and `resume=` must finish the run once the
disk works again. `evaluate` must say what failed and leave no results file.
"""
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from configs.checkpoint import CHECKPOINT_FILE, load_checkpoint
from tests.conftest import ROOT, run_cli

MODULE = 'experiments.evidence_mnist'
HOOK_DIR = Path(__file__).resolve().parent


def _fault_env(directory: Path, after: int, errno_name: str) -> dict:
    return {'FAULT_DIR': str(directory), 'FAULT_AFTER': str(after), 'FAULT_ERRNO': errno_name}


def _python_with_hook(module: str, *args: str):
    """`python -m module args`, with `tests/fault_hook.py` imported first (it acts only when FAULT_DIR is set)."""
    code = (f"import sys; sys.path.insert(0, {str(HOOK_DIR)!r}); import fault_hook; import runpy; "
            f"sys.argv[0] = {module!r}; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, '-c', code, *args]


def _popen(cmd, cwd: Path, env=None) -> subprocess.Popen:
    full_env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1', **(env or {})}
    return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(logs: Path, proc: subprocess.Popen, min_epoch: int = 1, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        for ckpt in (logs / 'evidence_mnist').glob(f'*/{CHECKPOINT_FILE}'):
            try:
                if load_checkpoint(ckpt.parent)['epoch'] >= min_epoch:
                    return ckpt.parent
            except Exception:  # being replaced right now
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError('no checkpoint in time')


def _whole_lines(log: Path) -> int:
    lines = log.read_bytes().split(b'\n')
    assert lines[-1] == b'', 'log.jsonl ends in a half line'
    for line in lines[:-1]:
        json.loads(line)
    return len(lines) - 1


def _fill(folder: Path) -> Path:
    """Writes a file in `folder` until the file system is full; returns it."""
    filler = folder / 'filler.bin'
    with open(filler, 'wb', buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b'\0' * chunk)
            except OSError:
                pass
    return filler


@pytest.fixture
def small_disk(workdir):
    """`workdir/logs` on a 32 MB tmpfs (a checkpoint is ~5 MB); skips when mounting is not permitted."""
    logs = workdir / 'logs'
    logs.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=32m', f'tmpfs-test-{uuid.uuid4().hex[:8]}', str(logs)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip()}); the fsync-injection tests cover the failure')
    try:
        yield logs
    finally:
        subprocess.run(['umount', '-l', str(logs)], capture_output=True)


def _check_stopped_run(proc, run: Path, before_epoch: int, failed_file, or_unnamed: bool = False):
    """`failed_file`: a file name, or a tuple of those that may be the first to fail; `or_unnamed`: the first write
    to fail may also be one of labml's own files, whose OSError names no file (then the message says "a file in
    RUN")."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, (proc.returncode, err[-3000:])
    assert 'Traceback' not in err, err[-3000:]
    failed = failed_file if isinstance(failed_file, tuple) else (failed_file,)
    named = f'error: could not write {run}/' in err and any(f in err for f in failed)
    unnamed = or_unnamed and f'error: could not write a file in {run}: No space left on device' in err
    assert named or unnamed, err[-2000:]
    assert f'Free some space, then resume with: python -m {MODULE} resume={run.name}' in err, err[-2000:]
    state = load_checkpoint(run)  # intact and loadable
    assert state['epoch'] >= before_epoch and state['status'] == 'running'
    assert not list(run.glob('.*.tmp')), list(run.glob('.*.tmp'))  # no temporary file left behind
    _whole_lines(run / 'log.jsonl')
    _whole_lines(run / 'histograms.jsonl')
    return state


def _resume_to_the_end(workdir: Path, run: Path, state: dict):
    epochs = state['epoch'] + 1
    r = run_cli(MODULE, f'resume={run.name}', f'epochs={epochs}', cwd=workdir, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    final = load_checkpoint(run)
    assert final['epoch'] == epochs and final['status'] == 'completed'
    assert [h['epoch'] for h in final['history']] == list(range(1, epochs + 1))
    assert final['history'][:state['epoch']] == state['history']
    _whole_lines(run / 'log.jsonl')
    steps = set()
    for line in (run / 'log.jsonl').read_text().splitlines():
        steps.update(p[0] for p in json.loads(line).get('track', {}).get('accuracy.valid', []))
    assert len(steps) == epochs, steps  # every epoch's validation is in the log, none lost to the failure


def test_disk_full_mid_run_stops_with_exit_4_and_resumes(workdir, synthetic_data_dir, small_disk):
    proc = _popen([sys.executable, '-m', MODULE, 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=200'],
                  cwd=workdir)
    run = _wait_for_checkpoint(small_disk, proc, min_epoch=1)
    filler = _fill(small_disk)
    # the first write after the disk filled: the epoch's histogram line or the log's
    state = _check_stopped_run(proc, run, 1, ('histograms.jsonl', 'log.jsonl'), or_unnamed=True)
    filler.unlink()  # space is back
    _resume_to_the_end(workdir, run, state)


@pytest.mark.parametrize('errno_name', ['EIO'])  # ENOSPC: the tmpfs test above, and the tests below
def test_checkpoint_write_failing_keeps_the_previous_one(workdir, synthetic_data_dir, errno_name):
    # fsyncs under the run folder: experiment.json, then per epoch log.jsonl and checkpoint.pt -> the 5th is
    # epoch 2's checkpoint
    env = _fault_env(workdir / 'logs', 4, errno_name)
    proc = _popen(_python_with_hook(MODULE, 'preset=smoke', f'data_dir={synthetic_data_dir}', 'epochs=50'),
                  cwd=workdir, env=env)
    out, err = proc.communicate(timeout=180)
    run = next((workdir / 'logs' / 'evidence_mnist').iterdir())
    proc.communicate = lambda timeout=None: (out, err)
    reason = {'EIO': 'Input/output error (EIO)', 'ENOSPC': 'No space left on device (ENOSPC)'}[errno_name]
    assert reason in err, err[-2000:]
    state = _check_stopped_run(proc, run, 1, CHECKPOINT_FILE)
    assert state['epoch'] == 1  # epoch 2's checkpoint failed; epoch 1's is the one kept
    _resume_to_the_end(workdir, run, state)


def test_failed_first_write_says_start_again(workdir, synthetic_data_dir):
    env = _fault_env(workdir / 'logs', 0, 'ENOSPC')  # even experiment.json fails
    r = subprocess.run(_python_with_hook(MODULE, 'preset=smoke', f'data_dir={synthetic_data_dir}'), cwd=workdir,
                       env={**os.environ, 'PYTHONPATH': str(ROOT), **env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert 'experiment.json: No space left on device (ENOSPC)' in last and 'start the run again' in last, last


# --------------------------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize('after, failed', [(3, 'evaluation.json')])  # (0, 'predictions.npz') fails the same way
def test_evaluate_write_failure_leaves_no_results_file(workdir, synthetic_data_dir, monkeypatch, after, failed):
    from experiments.evidence_mnist import main as train
    monkeypatch.chdir(workdir)
    assert train(['preset=smoke', f'data_dir={synthetic_data_dir}', 'train_batch_size=128', 'device=cpu']) == 0
    run = next((workdir / 'logs' / 'evidence_mnist').iterdir())
    training_files = {p: (run / p).read_bytes() for p in (CHECKPOINT_FILE, 'experiment.json', 'configs.yaml')}
    log_before = (run / 'log.jsonl').read_bytes()
    # fsyncs: predictions.npz, log.jsonl, indicators.yaml (failures of these two are warnings), evaluation.json
    env = {'PYTHONPATH': str(ROOT), **_fault_env(run, after, 'ENOSPC')}
    r = subprocess.run(_python_with_hook('experiments.evaluate', run.name, '--device', 'cpu', '--fgsm-samples', '64',
                                         '--pgd-samples', '0', '--mnist-c-samples', '0'),
                       cwd=workdir, env={**os.environ, **env}, capture_output=True, text=True, timeout=240)
    assert r.returncode == 4, (r.stdout[-1000:], r.stderr[-3000:])
    assert 'Traceback' not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: could not write {run / failed}: No space left on device (ENOSPC)'), last
    assert 'the evaluation was not saved' in last
    assert not (run / 'evaluation.json').exists()
    assert not list(run.glob('.*.tmp')) and not list(run.glob('eval_*.png')) and not (run / 'predictions.npz').exists()
    assert {p: (run / p).read_bytes() for p in training_files} == training_files
    log_after = (run / 'log.jsonl').read_bytes()
    assert log_after.startswith(log_before)
    _whole_lines(run / 'log.jsonl')
