"""
An evaluation is never silently stale or silently lost:

* a run whose training process is alive is refused (one line, exit 2, nothing written) unless `--allow-running`,
  which evaluates the latest checkpoint, records its epoch and leaves labml's log to the training process;
* `compare` marks an evaluation whose epoch is not the run's checkpoint's (the run trained on after it);
* a perturbation re-run with `--X-samples 0` keeps the earlier results of the same checkpoint, figure included.
"""
import json
import os
import signal
import subprocess
import sys
import time

from configs.checkpoint import CheckpointError, load_checkpoint
from experiments import compare, evaluate
from tests.conftest import ROOT

QUICK = ['--fgsm-samples', '32', '--pgd-samples', '0', '--missing-samples', '32']


def _checkpoint_epoch(run) -> int:
    try:
        return load_checkpoint(run)['epoch']
    except CheckpointError:  # not written yet, or being replaced right now (atomic rename): try again
        return 0


def _wait(condition, trainer, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert trainer.poll() is None, f"training ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_live_run_is_refused_unless_allowed_and_compare_marks_it_stale(workdir, synthetic_data_dir, capsys):
    trainer = subprocess.Popen([sys.executable, '-m', 'experiments.evidence_mnist', 'preset=smoke', 'epochs=500',
                                f'data_dir={synthetic_data_dir}', 'device=cpu'], cwd=workdir,
                               env={**os.environ, 'PYTHONPATH': str(ROOT)}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        folder = workdir / 'logs' / 'evidence_mnist'
        _wait(lambda: folder.is_dir() and any(_checkpoint_epoch(r) >= 1 for r in folder.iterdir()), trainer,
              'the first checkpoint')
        (run,) = folder.iterdir()
        assert evaluate.main([str(run), *QUICK]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'still training' in err[0] and '--allow-running' in err[0] and str(trainer.pid) in err[0]
        assert not (run / 'evaluation.json').exists() and not list(run.glob('eval_*.png'))

        assert evaluate.main([str(run), *QUICK, '--allow-running']) == 0
        out = capsys.readouterr().out
        result = json.loads((run / 'evaluation.json').read_text())
        assert result['epoch'] >= 1 and result['status'] == 'running' and 'labml_log' not in result
        assert any('evaluated while training' in n for n in result['notes'])
        assert 'appended to log.jsonl' not in out
        assert 'eval.' not in (run / 'log.jsonl').read_text()  # the training process owns its log
        # the run trains on past the evaluated epoch, then is stopped (it saves its last epoch)
        _wait(lambda: _checkpoint_epoch(run) > result['epoch'], trainer, 'a later epoch')
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        trainer.kill()
        trainer.wait()
    final = load_checkpoint(run)['epoch']
    assert final > result['epoch']
    capsys.readouterr()
    assert compare.main([str(run), '--out', str(workdir / 'cmp')]) == 0
    captured = capsys.readouterr()
    (row,) = json.loads((workdir / 'cmp' / 'comparison.json').read_text())['rows']
    assert row['stale'] == f"evaluated at epoch {result['epoch']}, checkpoint at epoch {final}"
    assert '[STALE' in row['label'] and 'STALE' in (workdir / 'cmp' / 'comparison.md').read_text()
    assert 'warning:' in captured.err
    # evaluated again (the run has stopped: no --allow-running needed): fresh
    assert evaluate.main([str(run), *QUICK]) == 0
    assert compare.main([str(run), '--out', str(workdir / 'cmp')]) == 0
    (row,) = json.loads((workdir / 'cmp' / 'comparison.json').read_text())['rows']
    assert row['stale'] is None and 'STALE' not in row['label']


def test_a_partial_re_evaluation_keeps_what_it_did_not_recompute(smoke_run, capsys):
    run = smoke_run
    assert evaluate.main([str(run), *QUICK]) == 0
    first = json.loads((run / 'evaluation.json').read_text())
    figure = (run / 'eval_fgsm.png').read_bytes()
    assert evaluate.main([str(run), '--fgsm-samples', '0', '--pgd-samples', '0', '--missing-samples', '32']) == 0
    second = json.loads((run / 'evaluation.json').read_text())
    assert second['fgsm'] == first['fgsm'] and (run / 'eval_fgsm.png').read_bytes() == figure
    assert second['figures']['fgsm'] == 'eval_fgsm.png'
    assert any(n.startswith('fgsm: not run (--fgsm-samples 0)') for n in second['notes'])
    assert second['missing_pixels'] == first['missing_pixels']  # recomputed, the same numbers
    # results of another checkpoint are never kept
    (run / 'evaluation.json').write_text(json.dumps({**second, 'epoch': 7}))
    assert evaluate.main([str(run), '--fgsm-samples', '0', '--pgd-samples', '0', '--missing-samples', '32']) == 0
    third = json.loads((run / 'evaluation.json').read_text())
    assert 'fgsm' not in third and 'fgsm' not in third['figures'] and not (run / 'eval_fgsm.png').exists()
