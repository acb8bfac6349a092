"""
The perturbation registry's promise: a perturbation is its module plus one registry line.

A toy Gaussian blur (`tests/toy_perturbation.py`), registered here by one entry, gets its option in
`experiments.evaluate` and `experiments.sweep` (which passes it on), its block in `evaluation.json`, its figure, its `compare` column
and its comparison figure, with no other file touched. Also: the registered perturbations agree with one another,
and the missing-pixel masks (`evidential.perturbations`) are nested and the same on every run.
"""
import json

import numpy as np
import pytest
import torch

from evidential.perturbations import missing_masks
from experiments import compare, evaluate
from experiments.evaluation import EvaluateError, perturbations
from experiments.evaluation.core import evaluate as evaluate_run
from experiments.train import main as train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def blur_registered(monkeypatch):
    monkeypatch.setitem(perturbations.PERTURBATIONS, 'blur', 'tests.toy_perturbation')


def test_the_registry_is_consistent():
    every = perturbations.all_perturbations()
    assert [p.name for p in every] == list(perturbations.PERTURBATIONS)
    flags = [p.samples.flag for p in every if p.samples]
    assert len(flags) == len(set(flags)) and all(f.endswith('-samples') for f in flags)
    figures = [p.figure for p in every if p.figure]
    assert len({key for key, _ in figures}) == len({file for _, file in figures}) == len(figures)
    assert all(file.startswith('eval_') and file.endswith('.png') for _, file in figures)  # removed on a failed write
    columns = [c for p in every for c in p.column_names()]
    assert len(columns) == len(set(columns)) and all(compare.is_column_name(c) for c in columns)
    with pytest.raises(KeyError, match='known: fgsm'):
        perturbations.get('blur')


def test_a_perturbation_is_its_module_and_one_registry_line(blur_registered, workdir, synthetic_data_dir,
                                                             monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    # its option, in --help and parsed
    with pytest.raises(SystemExit):
        evaluate.parse_args(['--help'])
    assert '--blur-samples N' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        evaluate.parse_args(['run', '--blur-samples', '-1'])
    assert e.value.code == 2 and '--blur-samples must be >= 0' in capsys.readouterr().err

    for seed in (1, 2):
        assert train('evidence_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu',
                                        f'seed={seed}']) == 0
    runs = sorted((workdir / 'logs' / 'evidence_mnist').iterdir())
    for run in runs:
        assert evaluate.main([str(run), '--blur-samples', '64', '--fgsm-samples', '0', '--pgd-samples', '0',
                              '--missing-samples', '0']) == 0
    capsys.readouterr()
    result = json.loads((runs[0] / 'evaluation.json').read_text())
    # its block: 0 skipped the other perturbations that take a sample count; the rotation has none and ran
    assert 'fgsm' not in result and 'pgd' not in result and 'missing_pixels' not in result and 'rotation' in result
    block = result['blur']
    assert block['n_samples'] == 64 and block['sigmas'] == [0.0, 1.0, 2.0]
    # unblurred, it is the evaluation's own prediction of the first 64 test images (from predictions.npz)
    saved = np.load(runs[0] / 'predictions.npz')
    clean = (saved['id/probs'][:64].argmax(1) == saved['id/labels'][:64]).mean()
    assert block['accuracy'][0] == pytest.approx(clean, abs=1e-12)
    # its figure
    assert result['figures']['blur'] == 'eval_blur.png'
    assert (runs[0] / 'eval_blur.png').read_bytes()[:8] == PNG_MAGIC

    # its compare column and comparison figure, also averaged over seeds
    out = workdir / 'cmp'
    assert compare.main([str(r) for r in runs] + ['--out', str(out), '--columns', 'accuracy,blur/2/accuracy']) == 0
    table = json.loads((out / 'comparison.json').read_text())
    assert [c['key'] for c in table['columns']] == ['accuracy', 'blur/2/accuracy']
    blurred = [json.loads((r / 'evaluation.json').read_text())['blur']['accuracy'][2] for r in runs]
    assert [row['values']['blur/2/accuracy'] for row in table['rows']] == pytest.approx(blurred)
    assert (out / 'comparison_blur.png').read_bytes()[:8] == PNG_MAGIC
    assert compare.main([str(r) for r in runs] + ['--out', str(workdir / 'seeds'), '--over-seeds']) == 0
    (row,) = json.loads((workdir / 'seeds' / 'comparison.json').read_text())['rows']
    assert row['values']['blur/2/accuracy'] == pytest.approx(np.mean(blurred))
    assert (workdir / 'seeds' / 'comparison_blur.png').is_file()

    # the sweep takes the option and passes it on to every evaluation
    from experiments.sweep.cli import parse_args as sweep_args
    args = sweep_args(['evidence_mnist', 'seed=1,2', '--blur-samples', '5'])
    assert perturbations.sample_arguments(args.samples) == ['--blur-samples', '5']

    # the API checks a sample count before anything is written
    with pytest.raises(EvaluateError, match='--blur-samples must be >= 0'):
        evaluate_run(str(runs[0]), samples={'blur': -5})


def test_missing_masks_are_nested_seeded_and_of_the_asked_fraction():
    masks = missing_masks(500, 784, (0.0, 0.2, 0.5, 0.9), seed=0)
    again = missing_masks(500, 784, (0.5,), seed=0)
    assert torch.equal(masks[0.5], again[0.5])
    assert not torch.equal(masks[0.5], missing_masks(500, 784, (0.5,), seed=1)[0.5])
    assert not masks[0.0].any()
    for small, large in ((0.0, 0.2), (0.2, 0.5), (0.5, 0.9)):
        assert not (masks[small] & ~masks[large]).any()  # a pixel missing at `small` is missing at `large`
    for f, mask in masks.items():
        # 392,000 Bernoulli(f) draws: the share is within 5 standard deviations of f
        assert abs(mask.float().mean().item() - f) <= 5 * (f * (1 - f) / mask.numel()) ** 0.5 + 1e-12
