"""The families of the seed tutorials, through their Configs: Packed-Ensembles (TorchUncertainty), the vote
wrapper (capsa's idea) and the Bayesian LeNet (Pyro's method). Their model code is tested in test_packed.py,
test_vote.py and test_bayes.py, and every family's train / resume / evaluate / compare in test_families.py."""
import json

import numpy as np
import pytest
import torch

from configs import registry
from configs.checkpoint import load_checkpoint
from configs.runner import load_trained
from experiments import evaluate
from experiments.train import main as train


def _run(workdir, name):
    (run,) = list((workdir / 'logs' / name).iterdir())
    return run


def test_packed_defaults_are_the_tutorials_45672_parameter_lenet5(workdir, synthetic_data_dir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert train('packed_mnist', ['preset=torch_uncertainty', f'data_dir={synthetic_data_dir}', 'epochs=2']) == 0
    run = _run(workdir, 'packed_mnist')
    state = load_checkpoint(run)
    assert sum(v.numel() for v in state['model'].values()) == 45_672
    assert state['architecture']['body'] == 'LeNet5' and state['architecture']['num_estimators'] == 4
    # SGD at 0.05 x M, CosineAnnealingLR(T_max=10) stepped per epoch: epoch 2 ran at 0.2 * cos-factor(1)
    lr = state['optimizer']['param_groups'][0]['lr']
    assert lr == pytest.approx(0.2 * 0.5 * (1 + np.cos(np.pi / 10)))
    _, conf, _, _ = load_trained(run.name)
    outputs = conf.evaluate_outputs(conf.dataset.test)
    assert outputs.shape == (4, 256, 10)
    pred = conf.predict(outputs)
    assert set(pred.scores) == {'mutual_information', 'disagreement'}
    # four members: disagreement in {0, 1/4, ..., 1}
    assert torch.equal(pred.scores['disagreement'] * 4, (pred.scores['disagreement'] * 4).round())


def test_vote_batches_must_split_among_the_voters(workdir, synthetic_data_dir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    # 512 synthetic training images, batches of 36: 36 % 8 != 0 (and the last batch has 8)
    assert train('vote_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'n_voters=8',
                                'train_batch_size=36']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'multiple of 8' in err[0] and '36' in err[0]
    assert not (workdir / 'logs' / 'vote_mnist').exists()
    # the capsa preset: ConvMod with 8 voters, batch 128
    assert train('vote_mnist', ['preset=capsa', f'data_dir={synthetic_data_dir}', 'epochs=1']) == 0
    _, conf, _, _ = load_trained(_run(workdir, 'vote_mnist').name)
    assert type(conf.model.model).__name__ == 'ConvMod' and conf.model.n_voters == 8
    pred = conf.predict(conf.evaluate_outputs(conf.dataset.test))
    # capsa's risk: the variance of the voters' probabilities, summed over classes, by hand
    logits = conf.evaluate_outputs(conf.dataset.test)
    probs = logits.softmax(-1)
    torch.testing.assert_close(pred.scores['voter_variance'], ((probs - probs.mean(0)) ** 2).mean(0).sum(-1))
    assert (pred.scores['voter_variance'] > 0).all()  # voters differ


def test_nesterov_sgd_is_torchs():
    from labml_nn.optimizers.configs import OptimizerConfigs
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    conf = OptimizerConfigs()
    conf.parameters = a.parameters()
    conf.optimizer = 'NesterovSGD'
    conf.learning_rate, conf.momentum, conf.weight_decay = 0.1, 0.9, 0.0
    ours = conf.optimizer
    reference = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(8, 3)
    for _ in range(3):
        for model, opt in ((a, ours), (b, reference)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_bayes_posterior_mean_is_deterministic_and_samples_are_not(workdir, synthetic_data_dir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert train('bayes_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'mc_samples=0']) == 0
    run = _run(workdir, 'bayes_mnist')
    log = (run / 'log.jsonl').read_text()
    assert 'nll.train' in log and 'kl.train' in log and 'sigma.features.0.q50' in log
    _, conf, _, _ = load_trained(run.name)
    test = conf.dataset.test
    first, second = conf.evaluate_outputs(test), conf.evaluate_outputs(test)
    assert first.shape == (1, 256, 10) and torch.equal(first, second)
    from evidential.models.bayes import bayes_logits
    with torch.no_grad():
        sampled = bayes_logits(conf.model.eval(), test.images, 5)
    assert sampled.shape == (5, 256, 10) and not torch.allclose(sampled[0], sampled[1])
    assert (conf.predict(sampled).scores['mutual_information'] > 0).any()


def test_bayes_trains_on_real_mnist(workdir, real_data_dir, monkeypatch):
    """Two epochs of the Bayesian LeNet on the real 10k-image subset: a sensible accuracy, a positive loss, a
    finite KL that falls once the likelihood has settled, and more predictive entropy on Fashion-MNIST.

    Predictions average 2 sampled networks (each costs a pass over 10,000 test and 10,000 Fashion images, the
    time of this test; sampling itself: `test_bayes_posterior_mean_is_deterministic_and_samples_are_not`), and
    the evaluation skips the FGSM and missing-pixel sweeps (every family's: test_families.py)."""
    monkeypatch.chdir(workdir)
    assert train('bayes_mnist', [f'data_dir={real_data_dir}', 'epochs=2', 'mc_samples=2']) == 0
    run = _run(workdir, 'bayes_mnist')
    state = load_checkpoint(run)
    assert state['history'][-1]['accuracy.valid'] > 0.9, state['history']
    kl, loss = [], []
    for line in (run / 'log.jsonl').read_text().splitlines():
        track = json.loads(line).get('track', {})
        kl += [v for _, vs in track.get('kl.train', []) for v in vs]
        loss += [v for _, vs in track.get('loss.train', []) for v in vs]
    assert all(v > 0 for v in loss) and all(np.isfinite(kl))
    third = len(kl) // 3
    assert np.mean(kl[-third:]) < np.mean(kl[third:2 * third])
    assert evaluate.main([run.name, '--fgsm-samples', '0', '--pgd-samples', '0', '--missing-samples', '0']) == 0
    npz = np.load(run / 'predictions.npz')
    entropy = {s: -(npz[f'{s}/probs'] * np.log(np.clip(npz[f'{s}/probs'], 1e-12, 1))).sum(1).mean()
               for s in ('id', 'fashion_mnist')}
    assert entropy['fashion_mnist'] > entropy['id'] + 0.2, entropy


def test_the_tutorial_families_are_registered():
    assert {'packed_mnist', 'vote_mnist', 'bayes_mnist'} <= set(registry.names())
    assert registry.get('packed_mnist').presets['torch_uncertainty'].values['train_batch_size'] == 512
    assert registry.get('vote_mnist').presets['capsa'].values['n_voters'] == 8
    assert registry.get('bayes_mnist').presets['pyro'].values['model'] == 'mlp'
