"""The probabilistic-circuit family through its Configs, and the missing-pixel sweep every family runs.

The circuit's exact inference is tested against enumeration in test_circuit.py; its train / resume / evaluate /
compare contract in test_families.py, with every other family."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from configs.circuit import CircuitConfigs
from configs.experiment import MNISTExperimentConfigs
from configs.runner import load_trained
from evidential.data import normalize
from experiments import compare, evaluate
from evidential.perturbations import missing_patterns
from experiments.evaluation.perturbations.missing_pixels import FRACTIONS as MISSING_FRACTIONS
from experiments.train import main as train


def _conf(name):
    return SimpleNamespace(dataset=SimpleNamespace(name=name))


@pytest.mark.parametrize('dataset', ['mnist', 'fashion_mnist'])
def test_the_circuit_sees_the_exact_pixel_values(dataset):
    values = torch.arange(256, dtype=torch.uint8).repeat(4)[:784].reshape(1, 28, 28)
    x = normalize(values, dataset)  # as the training data is held: [N, 1, 28, 28], standardized
    pixels = CircuitConfigs.pixels(_conf(dataset), x)
    assert pixels.dtype == torch.long and pixels.shape == (1, 784)
    assert torch.equal(pixels, values.long().flatten(1))


def test_other_families_see_missing_pixels_as_background():
    conf = _conf('mnist')
    conf.eval_forward = lambda x: x  # what the model would be given
    x = normalize(torch.randint(1, 256, (3, 28, 28), dtype=torch.uint8), 'mnist')
    missing = torch.rand(3, 784) < 0.3
    seen = MNISTExperimentConfigs.eval_forward_missing(conf, x, missing)
    black = normalize(torch.zeros(1, 28, 28, dtype=torch.uint8), 'mnist')[0, 0, 0, 0]
    flat = seen.flatten(1)
    assert torch.all(flat[missing] == black)
    assert torch.equal(flat[~missing], x.flatten(1)[~missing])


def test_missing_patterns():
    p = missing_patterns()
    assert set(p) == {'top_half', 'bottom_half', 'left_half', 'right_half', 'centre_square'}
    assert all(m.shape == (784,) and m.dtype == torch.bool for m in p.values())
    assert [int(p[n].sum()) for n in ('top_half', 'left_half', 'centre_square')] == [392, 392, 196]
    assert not (p['top_half'] & p['bottom_half']).any() and (p['left_half'] | p['right_half']).all()


def test_circuit_on_real_mnist_marginalises_what_is_missing(workdir, real_data_dir, monkeypatch):
    """A small circuit, two epochs on the real 10k MNIST images: it learns, its density flags Fashion-MNIST, and
    integrating missing pixels out beats showing the same circuit black pixels there."""
    monkeypatch.chdir(workdir)
    assert train('circuit_mnist', [f'data_dir={real_data_dir}', 'device=cpu', 'num_input_units=8', 'num_sum_units=8',
                                   'epochs=2', 'holdout=0.1']) == 0
    (run,) = (workdir / 'logs' / 'circuit_mnist').iterdir()
    assert evaluate.main([run.name, '--missing-samples', '1000']) == 0
    result = json.loads((run / 'evaluation.json').read_text())
    assert result['id']['accuracy'] > 0.6  # (chance: 0.1; 8 units, 2 epochs: ~0.68)
    # -log p(x): Fashion-MNIST images are far less likely under an MNIST circuit
    assert result['ood']['fashion_mnist']['neg_log_density']['auroc'] > 0.95
    assert 'fgsm' not in result and any('FGSM' in n for n in result['notes'])
    assert 'pgd' not in result and 'PGD sweep skipped: the model is not differentiable in its input' in result['notes']
    sweep = result['missing_pixels']
    assert sweep['missing_pixels'] == 'integrated out exactly' and sweep['fractions'] == list(MISSING_FRACTIONS)
    assert (run / 'eval_missing_pixels.png').stat().st_size > 10_000
    # nothing missing: the evaluation's own accuracy on those images
    npz = np.load(run / 'predictions.npz')
    assert sweep['accuracy'][0] == pytest.approx(float((npz['id/probs'][:1000].argmax(1) == npz['id/labels'][:1000]).mean()))
    # more pixels missing: a higher density of what is left (fewer pixels to explain) and less certainty
    nld = sweep['mean_score']['neg_log_density']
    assert all(a > b for a, b in zip(nld, nld[1:]))
    # the same circuit, shown black pixels instead of integrating them out, does worse at half the pixels missing
    _, conf, _, _ = load_trained(run.name)
    test = conf.dataset.test
    x, y = test.images[:1000], test.labels[:1000]
    missing = torch.rand(1000, 784, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.inference_mode():
        integrated = conf.eval_forward_missing(x, missing).argmax(-1)
        filled = MNISTExperimentConfigs.eval_forward_missing(conf, x, missing).argmax(-1)
    assert (integrated == y).float().mean() > (filled == y).float().mean() + 0.1
    assert (integrated == y).float().mean() == pytest.approx(sweep['accuracy'][5])


def test_missing_pixel_figure_of_a_comparison(workdir, synthetic_data_dir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    runs = []
    for name in ('circuit_mnist', 'softmax_mnist'):
        assert train(name, ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu']) == 0
        (run,) = (workdir / 'logs' / name).iterdir()
        assert evaluate.main([run.name, '--fgsm-samples', '0', '--missing-samples', '100']) == 0
        runs.append(run)
    assert compare.main([str(r) for r in runs] + ['--out', str(workdir / 'cmp')]) == 0
    assert (workdir / 'cmp' / 'comparison_missing_pixels.png').stat().st_size > 10_000
    table = json.loads((workdir / 'cmp' / 'comparison.json').read_text())
    for row, run in zip(table['rows'], runs):
        sweep = json.loads((run / 'evaluation.json').read_text())['missing_pixels']
        assert row['values']['missing/0.5/accuracy'] == sweep['accuracy'][5]
    # one evaluated with another number of images: no figure, said so
    assert evaluate.main([runs[1].name, '--fgsm-samples', '0', '--missing-samples', '50']) == 0
    capsys.readouterr()
    assert compare.main([str(r) for r in runs] + ['--out', str(workdir / 'cmp2')]) == 0
    assert 'not drawn' in capsys.readouterr().out
    assert not (workdir / 'cmp2' / 'comparison_missing_pixels.png').exists()


def test_missing_samples_argument(workdir, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.parse_args(['run', '--missing-samples', '-1'])
    assert e.value.code == 2 and '--missing-samples must be >= 0' in capsys.readouterr().err


def test_circuit_options_are_checked(workdir, synthetic_data_dir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    for bad in ('lam=1.5', 'layer_type=dense', 'region_graph=poon-domingos', 'num_sum_units=0'):
        assert train('circuit_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', bad]) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and bad.split('=')[0] in err[0]
    assert not (workdir / 'logs').exists()


def test_binomial_inputs_train(workdir, synthetic_data_dir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert train('circuit_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu',
                                   'input_layer=binomial', 'region_graph=random-binary-tree']) == 0
    (run,) = (workdir / 'logs' / 'circuit_mnist').iterdir()
    _, conf, _, state = load_trained(run.name)
    assert tuple(conf.model.input_logits.shape) == (784, 1, 2) and state['status'] == 'completed'
    # the random region graph is saved with the weights
    assert not torch.equal(state['model']['slot_to_pixel'][:4], torch.tensor([0, 1, 28, 29]))
