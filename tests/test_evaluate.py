"""`python -m experiments.evaluate`: a smoke run evaluated end to end in a real process, every number of
`evaluation.json` recomputed from `predictions.npz`, the training's files kept, bad input rejected."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evidential import metrics
from evidential.prediction import Prediction
from experiments.evaluation import plots, predictions, results as results_module
from experiments.evidence_mnist import main as train
from tests.conftest import run_cli

MODULE = 'experiments.evaluate'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# Files the training writes that the evaluation must leave byte-for-byte as they are
TRAINING_FILES = ('checkpoint.pt', 'experiment.json', 'configs.yaml', 'run.yaml', 'run_log.jsonl')


def _train_smoke_run(workdir: Path, data_dir: Path, monkeypatch) -> Path:
    """One small epoch on the synthetic data, in-process (the evaluation is what runs as a real process)."""
    monkeypatch.chdir(workdir)
    assert train(['preset=smoke', f'data_dir={data_dir}', 'train_batch_size=128', 'device=cpu']) == 0
    runs = list((workdir / 'logs' / 'evidence_mnist').iterdir())
    assert len(runs) == 1
    return runs[0]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _recompute(npz: dict):
    """`evaluation.json`'s "id" and "ood" blocks from `predictions.npz` alone, with `evidential.metrics`."""
    def set_scores(name):
        probs = torch.from_numpy(npz[f'{name}/probs'])
        return {'u': torch.from_numpy(npz[f'{name}/u']), 'entropy': metrics.entropy(probs),
                'msp': metrics.max_prob_score(probs)}

    id_scores = set_scores('id')
    id_block = metrics.summarize(torch.from_numpy(npz['id/probs']), torch.from_numpy(npz['id/labels']), id_scores['u'])
    sets = sorted({k.split('/')[0] for k in npz} - {'id'})
    return id_block, metrics.ood_summary(id_scores, {s: set_scores(s) for s in sets})


def test_smoke_run_end_to_end(workdir, synthetic_data_dir, monkeypatch):
    run = _train_smoke_run(workdir, synthetic_data_dir, monkeypatch)
    before = _snapshot(run)
    indicators_before = yaml.safe_load((run / 'indicators.yaml').read_text())['indicators']
    # an extra OOD set in the [N, 1, 28, 28] layout: uniform noise
    noise = np.random.default_rng(0).integers(0, 256, size=(48, 1, 28, 28), dtype=np.uint8)
    np.save(workdir / 'noise.npy', noise)

    r = run_cli(MODULE, run.name, '--ood-file', str(workdir / 'noise.npy'), '--data-dir', str(synthetic_data_dir),
                '--device', 'cpu', '--mnist-c-samples', '0', cwd=workdir, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'fashion_mnist' in r.stdout and 'noise' in r.stdout and 'auroc' in r.stdout

    # every file appears, readable like any file the user creates (not mkstemp's owner-only mode)
    result = json.loads((run / 'evaluation.json').read_text())
    # (but the post-hoc steps' figures: this run has no held-out split to fit them on, tests/test_posthoc.py; and
    # MNIST-C's and the --shift-file sets', not asked for here: tests/test_mnist_c.py)
    assert set(result['figures']) == set(plots.figure_files()) - {'reliability_scaled', 'mnist_c', 'shift'}
    # the wall time of each stage that ran (MNIST-C asked for 0 samples, no held-out split for the post-hoc steps)
    assert list(result['timing']) == ['predict', 'ood', 'fgsm', 'pgd', 'rotation', 'missing_pixels', 'figures']
    assert all(v >= 0 for v in result['timing'].values()) and sum(result['timing'].values()) <= result['seconds']
    assert f"evaluated in {result['seconds']:.1f} s (predict {result['timing']['predict']:.1f}, ood" in r.stdout
    (workdir / 'plain').write_text('x')
    plain_mode = (workdir / 'plain').stat().st_mode & 0o777
    for name in [*result['figures'].values(), 'evaluation.json', 'predictions.npz', 'checkpoint.pt']:
        assert (run / name).stat().st_mode & 0o777 == plain_mode, name
    for name in result['figures'].values():
        data = (run / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name

    # the JSON has exactly the documented shape
    assert list(result['id']) == list(metrics.ID_KEYS)
    assert set(result['ood']) == {'fashion_mnist', 'noise'}
    for per_score in result['ood'].values():
        assert set(per_score) == {'u', 'entropy', 'msp'}
        assert all(set(v) == set(metrics.OOD_KEYS) for v in per_score.values())
    assert result['n'] == {'id': 256, 'fashion_mnist': 256, 'noise': 48}

    # ... and every number in it is what predictions.npz gives
    with np.load(run / 'predictions.npz', allow_pickle=False) as npz:
        assert {'id/probs', 'id/u', 'id/labels', 'fashion_mnist/probs', 'fashion_mnist/u',
                'noise/probs', 'noise/u'} <= set(npz.files)
        assert npz['id/probs'].shape == (256, 10) and npz['noise/u'].shape == (48,)
        arrays = {k: npz[k] for k in npz.files}
    id_block, ood_block = _recompute(arrays)
    assert id_block == result['id']
    assert ood_block == result['ood']
    # the sweeps go through the same model: FGSM at eps = 0 is the clean accuracy, rotation by 0 degrees the clean p̂
    n = result['fgsm']['n_samples']
    clean = (arrays['id/probs'][:n].argmax(1) == arrays['id/labels'][:n]).mean()
    assert result['fgsm']['eps'][0] == 0 and result['fgsm']['accuracy'][0] == pytest.approx(clean, abs=1.5 / n)
    rotation = result['rotation']
    assert rotation['angles'][0] == 0 and arrays['id/labels'][rotation['test_index']] == 1
    np.testing.assert_allclose(rotation['probs'][0], arrays['id/probs'][rotation['test_index']], atol=1e-4)
    np.testing.assert_allclose(rotation['u'][0], arrays['id/u'][rotation['test_index']], atol=1e-4)

    # the training's files are untouched; labml's log only grew, by the eval.* indicators
    after = _snapshot(run)
    for name in TRAINING_FILES:
        assert after[name] == before[name], name
    assert after['log.jsonl'].startswith(before['log.jsonl'])
    new_lines = after['log.jsonl'][len(before['log.jsonl']):].decode().splitlines()
    logged = {k: v for line in new_lines for k, v in json.loads(line)['track'].items()}
    assert logged['eval.accuracy'] == [[512, [result['id']['accuracy']]]]
    assert logged['eval.ood.noise.u.auroc'] == [[512, [pytest.approx(result['ood']['noise']['u']['auroc'])]]]
    indicators_after = yaml.safe_load((run / 'indicators.yaml').read_text())['indicators']
    assert set(indicators_before) < set(indicators_after)
    assert {k: indicators_after[k] for k in indicators_before} == indicators_before
    assert 'eval.ood.fashion_mnist.entropy.fpr95' in indicators_after


def _bad_files(folder: Path) -> dict:
    """{case: --ood-file paths}, each unusable."""
    folder.mkdir()
    good = folder / 'good.npy'
    np.save(good, np.zeros((3, 28, 28), np.uint8))
    cases = {
        'wrong shape': ((4, 28, 27), np.uint8),
        'three channels': ((4, 3, 28, 28), np.uint8),
        'float pixels': ((4, 28, 28), np.float32),
        'no images': ((0, 28, 28), np.uint8),
    }
    out = {}
    for case, (shape, dtype) in cases.items():
        path = folder / f"{case.replace(' ', '_')}.npy"
        np.save(path, np.zeros(shape, dtype))
        out[case] = [path]
    np.save(folder / 'objects.npy', np.array([{'x': 1}], dtype=object), allow_pickle=True)
    out['pickled objects'] = [folder / 'objects.npy']
    (folder / 'text.npy').write_text('not an array\n')
    out['not a .npy file'] = [folder / 'text.npy']
    (folder / 'truncated.npy').write_bytes(good.read_bytes()[:-100])
    out['truncated'] = [folder / 'truncated.npy']
    out['missing'] = [folder / 'nowhere.npy']
    (folder / 'other').mkdir()
    np.save(folder / 'other' / 'good.npy', np.zeros((3, 28, 28), np.uint8))
    out['same name twice'] = [good, folder / 'other' / 'good.npy']
    out['good, then bad'] = [good, folder / 'float_pixels.npy']
    return out


#: `_bad_files` cases also run as real processes (all of them run in process, through `evaluate.main`)
REAL_PROCESS_CASES = ('not a .npy file', 'good, then bad')


def test_bad_ood_files_exit_2_and_write_nothing(workdir, synthetic_data_dir, monkeypatch, capsys):
    """Every case through `evaluate.main` (what `python -m experiments.evaluate` runs and exits with), two of them
    and a wrong `--data-dir` also as real processes."""
    from experiments import evaluate
    run = _train_smoke_run(workdir, synthetic_data_dir, monkeypatch)
    before = _snapshot(run)
    bad = _bad_files(workdir / 'bad')

    def check(case, paths, code, err, out=''):
        assert code == 2, (case, out[-1000:], err[-2000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: --ood-file '), (case, err)
        assert paths[-1].name in lines[0], (case, lines[0])
        assert _snapshot(run) == before, case

    capsys.readouterr()
    for case, paths in bad.items():
        args = [a for p in paths for a in ('--ood-file', str(p))]
        code = evaluate.main([run.name, *args, '--data-dir', str(synthetic_data_dir), '--device', 'cpu'])
        check(case, paths, code, capsys.readouterr().err)
    for case in REAL_PROCESS_CASES:
        paths = bad[case]
        args = [a for p in paths for a in ('--ood-file', str(p))]
        r = run_cli(MODULE, run.name, *args, '--data-dir', str(synthetic_data_dir), '--device', 'cpu',
                    cwd=workdir, timeout=120)
        check(case, paths, r.returncode, r.stderr, r.stdout)

    # a wrong --data-dir is an error naming the option; nothing is downloaded or created there
    missing = workdir / 'no_data_here'
    r = run_cli(MODULE, run.name, '--data-dir', str(missing), '--device', 'cpu', cwd=workdir, timeout=120)
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: mnist files not found') and str(missing) in last and '--data-dir' in last, last
    assert not missing.exists()
    assert _snapshot(run) == before


def test_validation_split_for_model_selection(workdir, synthetic_data_dir, monkeypatch, capsys):
    """`--split validation`: the held-out images and Fashion-MNIST's training split, nothing of the test run touched."""
    from configs.runner import load_trained
    monkeypatch.chdir(workdir)
    assert train(['preset=smoke', f'data_dir={synthetic_data_dir}', 'holdout=0.25', 'device=cpu']) == 0
    assert train(['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu']) == 0  # holdout=0
    held_out, no_holdout = sorted((workdir / 'logs' / 'evidence_mnist').iterdir(), key=lambda p: p.stat().st_mtime)
    before = _snapshot(held_out)

    r = run_cli(MODULE, held_out.name, '--split', 'validation', '--device', 'cpu', cwd=workdir, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'held-out validation set, 128 images' in r.stdout and 'training split' in r.stdout
    result = json.loads((held_out / 'evaluation_validation.json').read_text())
    assert result['split'] == 'validation' and result['ood_split'] == 'train'
    # 25% of the 512 synthetic training images; OOD: the 512 images of Fashion-MNIST's *training* split
    assert result['n'] == {'id': 128, 'fashion_mnist': 512}
    assert result['figures'] == {} and 'fgsm' not in result and 'labml_log' not in result
    _, conf, _, _ = load_trained(held_out.name)
    with np.load(held_out / 'predictions_validation.npz', allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    # exactly the held-out images, in order, and every number recomputed from the saved arrays
    assert np.array_equal(arrays['id/labels'], conf.dataset.valid.labels.numpy())
    id_block, ood_block = _recompute(arrays)
    assert id_block == result['id'] and ood_block == result['ood']
    # only the two new files: no test-set results, figures or labml log lines
    after = _snapshot(held_out)
    assert set(after) - set(before) == {'evaluation_validation.json', 'predictions_validation.npz'}
    assert {k: after[k] for k in before} == before

    # compare reads the held-out evaluations with --split validation, and says what is missing without it
    # (in process, through the `main`s the commands run; compare as a process: test_compare.py)
    from experiments import compare, evaluate
    capsys.readouterr()
    assert compare.main([held_out.name, '--split', 'validation', '--out', str(workdir / 'cmp')]) == 0, \
        capsys.readouterr().err
    table = json.loads((workdir / 'cmp' / 'comparison.json').read_text())
    assert table['rows'][0]['values']['accuracy'] == pytest.approx(result['id']['accuracy'])
    capsys.readouterr()
    assert compare.main([held_out.name]) == 2
    assert 'has not been evaluated on its test set' in capsys.readouterr().err

    # a run without a held-out split cannot be evaluated this way: one line, exit 2, nothing written
    before = _snapshot(no_holdout)
    assert evaluate.main([no_holdout.name, '--split', 'validation', '--device', 'cpu']) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: run {no_holdout.name} has no held-out split (it was trained with holdout=0 and validated on "
        f"the test set); train with holdout > 0 to select on held-out data"]
    assert _snapshot(no_holdout) == before


def test_unknown_run_exits_2(workdir):
    r = run_cli(MODULE, '0123456789abcdef', '--device', 'cpu', cwd=workdir, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: no run with uuid '0123456789abcdef' under "
                                             f"{(workdir / 'logs').resolve()}/*/"]
    assert not (workdir / 'logs').exists() or not any((workdir / 'logs').rglob('*.json'))


def test_scores_follow_what_the_model_gives():
    """Every prediction is scored by entropy and msp; a family's own scores (u, mutual information, ...) are added,
    its primary score first; the npz arrays give back exactly those scores."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    plain = predictions.all_scores(probs, {})
    assert list(plain) == ['entropy', 'msp']
    assert torch.allclose(plain['msp'], torch.tensor([0.3, 2 / 3], dtype=torch.float64))
    own = {'mutual_information': torch.tensor([0.01, 0.2]), 'u': torch.tensor([0.1, 0.9])}
    full = predictions.all_scores(probs, own, primary='u')
    assert list(full) == ['u', 'entropy', 'msp', 'mutual_information']
    arrays = predictions.prediction_arrays(Prediction(probs, scores=own))
    assert sorted(arrays) == ['mutual_information', 'probs', 'u']
    _, again = predictions.scores_of_arrays(arrays, 'u')
    assert list(again) == list(full) and all(torch.equal(again[k].double(), full[k].double()) for k in full)
    with pytest.raises(ValueError, match="may not be called 'entropy'"):
        predictions.prediction_arrays(Prediction(probs, scores={'entropy': torch.zeros(2)}))
    # without u, the "id" block ranks by entropy and still has exactly the documented keys
    labels = np.array([0, 2])
    result = results_module.compute_metrics({'probs': probs.numpy()}, labels,
                                            {'ood': {'probs': probs.numpy()[::-1].copy()}})
    assert result['id_score'] == 'entropy' and list(result['id']) == list(metrics.ID_KEYS)
    assert set(result['ood']['ood']) == {'entropy', 'msp'}
    with pytest.raises(ValueError, match="primary score 'u'"):
        results_module.compute_metrics({'probs': probs.numpy()}, labels, {}, id_score='u')


def test_exp_plateau_is_noted(workdir, synthetic_data_dir, monkeypatch):
    """Inputs whose top logit is on the clamp of the `exp` head are counted and noted; `exp_linear` has no plateau."""
    from configs.checkpoint import load_checkpoint, save_checkpoint
    from configs.runner import load_trained
    monkeypatch.chdir(workdir)
    for head in ('exp', 'exp_linear'):
        assert train(['preset=smoke', f'data_dir={synthetic_data_dir}', 'train_batch_size=128', 'device=cpu',
                      f'outputs_to_evidence={head}']) == 0
    runs = sorted((workdir / 'logs' / 'evidence_mnist').iterdir(), key=lambda p: p.stat().st_mtime)
    shares = []
    for run in runs:
        # one epoch on tiny data gives small logits: scale the output layer so some top logits pass 10
        state = load_checkpoint(run)
        for name in ('out.weight', 'out.bias'):
            state['model'][name] = state['model'][name] * 20
        save_checkpoint(run, state)
        _, conf, _, _ = load_trained(run.name, data_dir=synthetic_data_dir)
        conf.model.eval()
        with torch.no_grad():
            logits = conf.model(conf.dataset.test.images)
        shares.append((logits.max(dim=1).values >= 10.).float().mean().item())
        notes = conf.evaluation_notes(logits, 'test')
        if run == runs[0]:
            assert len(notes) == 1 and notes[0].startswith(f'{shares[0]:.1%} of the test images have a top logit')
        else:
            assert notes == []
    assert 0 < shares[0] < 1 and shares[1] > 0

    r = run_cli(MODULE, runs[0].name, '--data-dir', str(synthetic_data_dir), '--device', 'cpu', '--fgsm-samples', '16',
                '--pgd-samples', '0', '--mnist-c-samples', '0', cwd=workdir, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if 'clamp of the exp head' in x)
    assert line.startswith(f'note: {shares[0]:.1%} of the test images have a top logit at or above 10')
    assert line[len('note: '):] in json.loads((runs[0] / 'evaluation.json').read_text())['notes']


def test_default_ood_set_is_skipped_when_missing_and_an_error_when_corrupt(tmp_path, synthetic_data_dir):
    import shutil
    from types import SimpleNamespace
    from evidential.data import DataError
    from experiments.evaluation.inputs import default_ood
    conf = SimpleNamespace(dataset=SimpleNamespace(name='mnist'), data_dir=str(tmp_path))
    shutil.copytree(synthetic_data_dir / 'MNIST', tmp_path / 'MNIST')
    sets, notes = default_ood(conf)
    assert sets == {} and len(notes) == 1 and notes[0].startswith('fashion_mnist skipped: fashion_mnist files not found')
    shutil.copytree(synthetic_data_dir / 'FashionMNIST', tmp_path / 'FashionMNIST')
    sets, notes = default_ood(conf)
    assert list(sets) == ['fashion_mnist'] and sets['fashion_mnist'].shape == (256, 28, 28) and notes == []
    (tmp_path / 'FashionMNIST' / 'raw' / 't10k-labels-idx1-ubyte').write_bytes(b'\0')
    with pytest.raises(DataError, match='truncated IDX'):
        default_ood(conf)
