"""Baselines (softmax, MC dropout, vectorised ensemble): a smoke epoch each on synthetic data, reload, evaluation."""
import copy
import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical

from configs.checkpoint import load_checkpoint
from configs.cli import schema
from configs.compat import set_values
from configs.ensemble import EnsembleConfigs, FAMILY as ENSEMBLE
from configs.evidence import DEFAULTS as EVIDENCE_DEFAULTS, EvidenceConfigs
from configs.mc_dropout import MCDropoutConfigs
from configs.runner import load_trained
from configs.softmax import SoftmaxConfigs
from evidential.models.ensemble import deep_ensemble, member_seeds
from evidential.models.packed import PackedEnsemble
from evidential.models.lenet import LeNet
from evidential.models.mc_dropout import mc_dropout_logits
from evidential.prediction import sampled_prediction
from experiments import ensemble_mnist, mc_dropout_mnist, softmax_mnist

CLASSES = {'softmax_mnist': SoftmaxConfigs, 'mc_dropout_mnist': MCDropoutConfigs, 'ensemble_mnist': EnsembleConfigs}
MAINS = {'softmax_mnist': softmax_mnist.main, 'mc_dropout_mnist': mc_dropout_mnist.main,
         'ensemble_mnist': ensemble_mnist.main}
LABML_YAML = 'data_path: data\nexperiments_path: logs\ncheck_repo_dirty: false\n'

# One project folder with one evaluated smoke run per baseline, shared by this module and test_compare.py
_CACHE: Dict[str, object] = {}


def trained_baselines(tmp_path_factory, data_dir: Path):
    """`(project folder, {experiment name: run folder})`: each baseline trained one smoke epoch
    in-process (`main([...])`) and evaluated with `experiments.evaluate` (no FGSM sweep, the missing-pixel sweep
    on 64 test images: every family's sweep is checked in test_families.py)."""
    if not _CACHE:
        project = tmp_path_factory.mktemp('baselines')
        (project / '.labml.yaml').write_text(LABML_YAML)
        runs = {}
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(project)
            for name, main in MAINS.items():
                assert main(['preset=smoke', f'data_dir={data_dir}']) == 0, name
                (runs[name],) = list((project / 'logs' / name).iterdir())
            from experiments import evaluate
            for run in runs.values():
                assert evaluate.main([run.name, '--fgsm-samples', '0', '--pgd-samples', '0',
                                      '--missing-samples', '64']) == 0
        _CACHE.update(project=project, runs=runs)
    return _CACHE['project'], _CACHE['runs']


@pytest.fixture(scope='module')
def baselines(tmp_path_factory, synthetic_data_dir):
    return trained_baselines(tmp_path_factory, synthetic_data_dir)


def independent_mutual_information(logits: torch.Tensor) -> torch.Tensor:
    """`[S, N, K]` logits → `[N]`: the entropy of the mean minus the mean of the entropies, by
    `torch.distributions` in float64 and unclamped (not `evidential.prediction`'s code)."""
    probs = logits.double().softmax(-1)
    return Categorical(probs=probs.mean(0)).entropy() - Categorical(probs=probs).entropy().mean(0)


def _load(run: Path):
    _, conf, _, state = load_trained(str(run))
    return conf, state


# ---------------------------------------------------------------------- training, reload, evaluation

@pytest.mark.parametrize('name', list(CLASSES))
def test_baseline_trains_checkpoints_and_reloads(name, baselines, monkeypatch):
    project, runs = baselines
    monkeypatch.chdir(project)
    run = runs[name]
    state = load_checkpoint(run)
    assert state['epoch'] == 1 and state['status'] == 'completed' and state['samples_seen'] == 512
    assert all(torch.isfinite(v).all() for v in state['model'].values())
    conf, _ = _load(run)
    assert isinstance(conf, CLASSES[name])
    for key, value in conf.model.state_dict().items():
        assert torch.equal(value, state['model'][key]), key
    pred, correct = conf.evaluate(conf.dataset.test)
    assert pred.probs.shape == (256, 10)
    assert torch.allclose(pred.probs.sum(-1), torch.ones(256), atol=1e-5)
    assert correct.float().mean() > 0.3  # learnable synthetic data, 10 classes
    assert 'u' not in pred.scores and not pred.extras
    if name == 'softmax_mnist':
        assert not pred.scores
    else:
        outputs = conf.evaluate_outputs(conf.dataset.test)  # one set of samples for both computations
        mutual_information = conf.predict(outputs).scores['mutual_information']
        expected = independent_mutual_information(outputs)
        assert mutual_information.shape == (256,) and (expected > 1e-3).any()
        torch.testing.assert_close(mutual_information.double(), expected, rtol=1e-4, atol=1e-5)
        # tracked during validation like the other uncertainty distributions
        log = (run / 'log.jsonl').read_text()
        assert 'mutual_information.q50' in log
    if name == 'ensemble_mnist':
        assert state['architecture']['ensemble_size'] == 3
        assert conf.architecture() == state['architecture']
        assert conf.model.body.out.weight.shape == (3, 10, 500)  # one block per member


@pytest.mark.parametrize('name', list(CLASSES))
def test_baseline_evaluation_files(name, baselines):
    """`experiments.evaluate` works for the baselines: no `u` score; `mutual_information` for sampling models."""
    _, runs = baselines
    results = json.loads((runs[name] / 'evaluation.json').read_text())
    assert set(results['id']) == {'accuracy', 'nll', 'brier', 'ece', 'aurc', 'misclassification_auroc'}
    scores = set(results['ood']['fashion_mnist'])
    expected = ({'entropy', 'msp'} | ({'mutual_information'} if name != 'softmax_mnist' else set())
                | ({'disagreement'} if name == 'ensemble_mnist' else set()))
    assert scores == expected
    npz = np.load(runs[name] / 'predictions.npz')
    assert 'id/u' not in npz.files
    assert ('id/mutual_information' in npz.files) == (name != 'softmax_mnist')


# ---------------------------------------------------------------------- ensemble

def test_ensemble_members_differ_and_vectorised_forward_equals_each_member(baselines, monkeypatch):
    project, runs = baselines
    monkeypatch.chdir(project)
    conf, _ = _load(runs['ensemble_mnist'])
    ensemble = conf.model.eval()
    x = conf.dataset.test.images
    with torch.no_grad():
        grouped = ensemble(x)
        assert grouped.shape == (3, 256, 10)
        alone = torch.stack([ensemble.member(i).eval()(x) for i in range(3)])
    assert isinstance(ensemble.member(0), LeNet)
    torch.testing.assert_close(grouped, alone, atol=1e-5, rtol=1e-5)
    # independently initialised members: different functions and different predicted classes
    classes = alone.argmax(-1)
    for i in range(3):
        for j in range(i + 1, 3):
            assert (alone[i] - alone[j]).abs().max() > 0.1
            assert (classes[i] != classes[j]).any(), (i, j)
    # the ensemble predicts the mean of the members' softmaxes
    torch.testing.assert_close(conf.predict(conf.evaluate_outputs(conf.dataset.test)).probs,
                               alone.softmax(-1).mean(0), atol=1e-5, rtol=1e-5)


def test_ensemble_members_have_their_own_initialisation_and_dropout():
    seeds = member_seeds(5, 4)
    assert len(set(seeds)) == 4 and member_seeds(5, 2) == seeds[:2] and not set(member_seeds(6, 4)) & set(seeds)
    torch.manual_seed(0)
    same = LeNet(10, dropout=0.5)
    ensemble = PackedEnsemble(LeNet, 10, alpha=3, num_estimators=3, dropout=0.5).load_members(
        [same, copy.deepcopy(same), copy.deepcopy(same)])
    x = torch.randn(8, 1, 28, 28)
    out = ensemble.eval()(x)
    torch.testing.assert_close(out[0], out[1])  # identical members, no dropout
    out = ensemble.train()(x)
    assert not torch.allclose(out[0], out[1])  # each member draws its own dropout mask
    # deep_ensemble: member i initialised under its own seed, exactly as a LeNet built alone under it
    seeds = member_seeds(5, 3)
    built = deep_ensemble(LeNet, 10, seeds, dropout=0.5)
    torch.manual_seed(seeds[1])
    alone = LeNet(10, dropout=0.5)
    for (name, a), b in zip(built.member(1).named_parameters(), alone.parameters()):
        assert torch.equal(a, b), name


def test_ensemble_gradient_equals_each_member_trained_alone():
    """Summing the members' losses gives each member exactly the gradient it gets trained alone on the
    same batch (dropout off, so no randomness); with an element-wise optimizer (Adam, SGD) the members
    then train independently."""
    members = []
    for seed in member_seeds(1, 3):
        torch.manual_seed(seed)
        members.append(LeNet(10, dropout=0.0))
    alone = [copy.deepcopy(m) for m in members]
    ensemble = PackedEnsemble(LeNet, 10, alpha=3, num_estimators=3, dropout=0.0).load_members(members)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss, extras = EnsembleConfigs.training_loss(None, ensemble(x), y, 0)
    loss.backward()
    # the gradients laid out like the weights, so that `member(i)` reads member i's block of them
    gradients = copy.deepcopy(ensemble)
    for g, p in zip(gradients.parameters(), ensemble.parameters()):
        g.data = p.grad.clone()
    losses = []
    for i, m in enumerate(alone):
        member_loss = F.cross_entropy(m(x), y)
        member_loss.backward()
        losses.append(member_loss.item())
        for (name, g), p in zip(gradients.member(i).named_parameters(), m.parameters()):
            torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5, msg=name)
    assert loss.item() == pytest.approx(sum(losses), rel=1e-5)
    assert extras['ce.train'].item() == pytest.approx(np.mean(losses), rel=1e-5)


# ---------------------------------------------------------------------- MC dropout

def test_mc_dropout_samples_differ_at_test_time(baselines, monkeypatch):
    project, runs = baselines
    monkeypatch.chdir(project)
    conf, _ = _load(runs['mc_dropout_mnist'])
    assert conf.mc_samples == 4 and conf.model.hidden[-1].p == 0.5
    test = conf.dataset.test
    first, second = conf.evaluate_outputs(test), conf.evaluate_outputs(test)
    assert first.shape == (4, 256, 10)
    assert not torch.allclose(first[0], first[1])  # samples of one call
    assert not torch.allclose(first, second)  # two calls
    p1, p2 = conf.predict(first), conf.predict(second)
    assert not torch.allclose(p1.probs, p2.probs)
    expected = independent_mutual_information(first)
    assert (expected > 1e-3).any()
    torch.testing.assert_close(p1.scores['mutual_information'].double(), expected, rtol=1e-4, atol=1e-5)
    # only the dropout modules were in train mode, and every mode is restored
    assert not any(m.training for m in conf.model.modules())
    # the same network without sampling (`lenet` after the same training) gives other probabilities
    with torch.no_grad():
        plain = conf.model(test.images).softmax(-1)
    assert not torch.allclose(p1.probs, plain)


def test_mc_dropout_one_sample_without_dropout_is_a_plain_eval_forward(synthetic_data_dir):
    conf = MCDropoutConfigs()
    set_values(conf, {'data_dir': str(synthetic_data_dir), 'dataset': 'mnist', 'model': 'lenet', 'device': 'cpu',
                      'mc_samples': 1, 'dropout': 0.0})
    test = conf.dataset.test
    outputs = conf.evaluate_outputs(test)
    with torch.no_grad():
        plain = conf.model.eval()(test.images)
    assert outputs.shape == (1, 256, 10)
    torch.testing.assert_close(outputs[0], plain)
    pred = conf.predict(outputs)
    torch.testing.assert_close(pred.probs, plain.softmax(-1))
    assert torch.equal(pred.scores['mutual_information'], torch.zeros(256))
    assert torch.equal(conf.evaluate_outputs(test), outputs)  # deterministic


def test_mc_dropout_shortcut_equals_full_stochastic_passes():
    """LeNet's shortcut (features once, dropout + last layer T times) equals T full passes in train mode
    (LeNet's only random layer is the dropout): the same masks are drawn from the same seed."""
    torch.manual_seed(0)
    model = LeNet(10, dropout=0.5).eval()
    x = torch.randn(32, 1, 28, 28)
    torch.manual_seed(1)
    fast = mc_dropout_logits(model, x, 3)
    assert not any(m.training for m in model.modules())
    torch.manual_seed(1)
    with torch.no_grad():
        full = torch.stack([model.train()(x) for _ in range(3)])
    model.eval()
    torch.testing.assert_close(fast, full)
    assert not torch.allclose(fast[0], fast[1])
    # and a generic model (not a LeNet) is sampled with full passes
    wrapped = torch.nn.Sequential(model)
    torch.manual_seed(1)
    generic = mc_dropout_logits(wrapped, x, 3)
    assert generic.shape == (3, 32, 10) and not torch.allclose(generic[0], generic[1])


def test_sampled_prediction_mutual_information():
    # members that agree: zero mutual information; members that disagree confidently: log 2
    agree = torch.tensor([[[5., 0.]], [[5., 0.]]])
    disagree = torch.tensor([[[50., 0.]], [[0., 50.]]])
    assert sampled_prediction(agree).scores['mutual_information'].item() == pytest.approx(0., abs=1e-6)
    assert sampled_prediction(disagree).scores['mutual_information'].item() == pytest.approx(np.log(2), abs=1e-5)
    random = torch.randn(7, 100, 10) * 3
    torch.testing.assert_close(sampled_prediction(random).scores['mutual_information'].double(),
                               independent_mutual_information(random), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- command line

@pytest.mark.parametrize('main, args, message', [
    (mc_dropout_mnist.main, ['mc_samples=0'], 'mc_samples=0: must be in [1, 1,000]'),
    (mc_dropout_mnist.main, ['mc_samples=5000'], 'mc_samples=5000: must be in [1, 1,000]'),
    (ensemble_mnist.main, ['ensemble_size=0'], 'ensemble_size=0: must be in [1, 100]'),
    (ensemble_mnist.main, ['model=lenet'], 'model=lenet: unknown option (did you mean lenet_ensemble?); valid: lenet_ensemble'),
])
def test_bad_baseline_settings_exit_2(main, args, message, workdir, synthetic_data_dir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main([f'data_dir={synthetic_data_dir}', 'preset=smoke', *args]) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / 'logs').exists()


def test_ensemble_model_option_belongs_to_the_ensemble_only():
    assert schema(EvidenceConfigs, EVIDENCE_DEFAULTS)['model'].options == ['lenet', 'natpn']
    assert schema(EnsembleConfigs, ENSEMBLE.defaults)['model'].options == ['lenet_ensemble']
