"""
PGD (`evidential.perturbations.pgd`) and its plug-in (`experiments/evaluation/perturbations/pgd.py`).

The attack against independent references — Madry et al.'s loop written out in numpy with the gradient by hand, and
torchattacks' `PGD` (installed into `.oracles/` by the README's test command; skipped, saying why, without it) —
from the same random start; its constraints (the ε-ball, the pixel range); FGSM as its one step of ε from the clean
image; and on a tiny fixed model, a loss at least FGSM's that grows with the steps. The plug-in: its block in a
smoke run's `evaluation.json`, its `compare` columns and figures, seed averaging, and the note of the families it
skips.
"""
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from configs.registry import Capabilities
from evidential.perturbations import fgsm, pgd
from experiments import compare, evaluate
from experiments.evaluation import perturbations
from experiments.evaluation.perturbations.fgsm import EPS
from experiments.evaluation.perturbations.pgd import ATTACKS, COLUMN_ATTACK

from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
K, D, HIDDEN = 5, 16, 32


@pytest.fixture(scope='module')
def mlp():
    """A tiny fixed classifier `x [N, 1, 4, 4] in [0, 1] -> logits [N, 5]` (tanh MLP, float64), and a batch of
    inputs and labels; some pixels sit on the range's edges, where the clamp acts."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(D, HIDDEN), torch.nn.Tanh(),
                              torch.nn.Linear(HIDDEN, K)).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.rand(64, 1, 4, 4, generator=g, dtype=torch.float64)
    x[:8, :, 0] = 0.0
    x[8:16, :, 1] = 1.0
    y = torch.randint(0, K, (64,), generator=g)
    return net, x, y


def _probs(net):
    return lambda x: net(x).softmax(-1)


def _loss(net, x, y) -> float:
    """Mean negative log-likelihood of the labels."""
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(net(x), y).item()


def madry_pgd(net, x, y, eps, steps, alpha, delta0):
    """Madry et al.'s `LinfPGDAttack.perturb` (MNIST challenge), in numpy, with the input gradient of the MLP's
    cross-entropy written out by hand: `x + delta0`, then `steps` times x += alpha sign(grad), clip to the ball,
    clip to [0, 1]."""
    w1, b1, w2, b2 = (p.detach().numpy() for p in net.parameters())
    x_nat = x.numpy().reshape(len(x), -1)
    onehot = np.eye(K)[y.numpy()]
    adv = np.clip(x_nat + delta0.numpy().reshape(len(x), -1), 0, 1)
    for _ in range(steps):
        h = np.tanh(adv @ w1.T + b1)
        logits = h @ w2.T + b2
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        # d(-log p_y)/dx = W1^T [(1 - h^2) * W2^T (p - e_y)]
        grad = ((p - onehot) @ w2 * (1 - h ** 2)) @ w1
        adv = np.clip(np.clip(adv + alpha * np.sign(grad), x_nat - eps, x_nat + eps), 0, 1)
    return torch.from_numpy(adv).reshape(x.shape)


@pytest.mark.parametrize('eps, steps', [(0.05, 10), (0.3, 40)])
def test_pgd_is_madrys_loop_from_the_same_random_start(mlp, eps, steps):
    net, x, y = mlp
    alpha = 2.5 * eps / steps
    delta0 = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 1) * eps
    ours = pgd(_probs(net), x, y, eps, steps, start=delta0, batch_size=24)  # several batches
    assert torch.allclose(ours, madry_pgd(net, x, y, eps, steps, alpha, delta0), rtol=0, atol=1e-12)
    # a generator draws that start: U[-eps, eps] from its first uniform numbers
    drawn = pgd(_probs(net), x, y, eps, steps, start=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, pgd(_probs(net), x, y, eps, steps, start=delta0))


# Installed apart, by the README's test command (`--no-deps --target .oracles`, requirements-dev.txt says why)
TORCHATTACKS_DIR = ROOT / '.oracles' / 'torchattacks'


def _load_torchattacks():
    """torchattacks 3.5.1 from `.oracles/`, loaded by path (it is not on `sys.path`), or `None`."""
    if not (TORCHATTACKS_DIR / '__init__.py').is_file():
        return None
    if 'torchattacks' not in sys.modules:
        spec = importlib.util.spec_from_file_location('torchattacks', TORCHATTACKS_DIR / '__init__.py',
                                                      submodule_search_locations=[str(TORCHATTACKS_DIR)])
        module = importlib.util.module_from_spec(spec)
        sys.modules['torchattacks'] = module
        spec.loader.exec_module(module)
    return sys.modules['torchattacks']


def test_pgd_is_torchattacks_pgd_from_the_same_random_start(mlp):
    torchattacks = _load_torchattacks()
    if torchattacks is None:
        pytest.skip(f'torchattacks is not in {TORCHATTACKS_DIR.parent} (the oracle test needs '
                    f'`pip install --no-deps --upgrade --target .oracles torchattacks==3.5.1`)')
    net, x, y = mlp
    eps, steps, alpha = 0.2, 10, 0.05
    torch.manual_seed(3)
    reference = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    torch.manual_seed(3)  # torchattacks' start: uniform_(-eps, eps) from torch's generator, drawn first
    delta0 = torch.empty_like(x).uniform_(-eps, eps)
    ours = pgd(_probs(net), x, y, eps, steps, step_size=alpha, start=delta0)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-12)
    # ... and its FGSM is our one step of eps from the clean image
    assert torch.allclose(pgd(_probs(net), x, y, eps, 1, step_size=eps),
                          torchattacks.FGSM(net, eps=eps)(x, y), rtol=0, atol=1e-12)


@pytest.mark.parametrize('lo, hi', [(0.0, 1.0), (-0.4242, 2.8215)])
def test_pgd_stays_in_the_ball_and_the_pixel_range(mlp, lo, hi):
    net, x, y = mlp
    x = lo + (hi - lo) * x  # MNIST's normalized range too
    for eps in (0.1, 0.5, 3.0):
        adv = pgd(_probs(net), x, y, eps, 10, start=torch.Generator().manual_seed(0), clamp=(lo, hi))
        assert (adv - x).abs().max().item() <= eps * (1 + 1e-12)
        assert adv.min().item() >= lo and adv.max().item() <= hi
        assert not torch.equal(adv, x)
    assert torch.equal(pgd(_probs(net), x, y, 0.0, 10, start=torch.Generator().manual_seed(0)), x)


def test_one_step_of_eps_from_the_clean_image_is_fgsm(mlp):
    net, x, y = mlp
    probs = _probs(net)
    for eps in (0.1, 0.3):
        adv = pgd(probs, x, y, eps, 1, step_size=eps, start=None)
        xr = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xr), y, reduction='sum'), xr)
        assert torch.equal(adv, (x + eps * grad.sign()).clamp(0, 1))
        # fgsm's accuracy and entropy are those of exactly these images
        result = fgsm(probs, x, y, [eps])
        with torch.no_grad():
            p = probs(adv)
        assert result.accuracy.item() == (p.argmax(1) == y).double().mean().item()
        assert result.mean_entropy.item() == pytest.approx(-(p * p.log()).sum(1).mean().item(), rel=1e-12)


def test_pgd_loss_is_at_least_fgsms_and_grows_with_the_steps(mlp):
    net, x, y = mlp
    for eps in (0.05, 0.1, 0.2):
        fgsm_loss = _loss(net, pgd(_probs(net), x, y, eps, 1, step_size=eps), y)
        losses = [_loss(net, pgd(_probs(net), x, y, eps, steps, start=torch.Generator().manual_seed(0)), y)
                  for steps in (1, 3, 10, 40)]
        assert _loss(net, x, y) < fgsm_loss <= losses[2] <= losses[3]
        assert losses == sorted(losses)


def test_pgd_rejects_what_it_cannot_attack_with(mlp):
    net, x, y = mlp
    with pytest.raises(ValueError, match='eps'):
        pgd(_probs(net), x, y, -0.1, 10)
    with pytest.raises(ValueError, match='steps'):
        pgd(_probs(net), x, y, 0.1, 0)
    with pytest.raises(ValueError, match='start'):
        pgd(_probs(net), x, y, 0.1, 10, start=torch.full_like(x, 0.2))
    with pytest.raises(TypeError, match='start'):
        pgd(_probs(net), x, y, 0.1, 10, start=3)


def test_families_without_input_gradients_get_the_reason():
    ctx = perturbations.Context(conf=None, test=[], preds=None, capabilities=Capabilities(input_gradients=False))
    blocks, notes, _ = perturbations.run_all(ctx)
    assert 'fgsm' not in blocks and 'pgd' not in blocks
    assert 'PGD sweep skipped: the model is not differentiable in its input' in notes
    assert 'FGSM sweep skipped: the model is not differentiable in its input' in notes


def test_the_block_columns_and_figures_of_a_smoke_run(smoke_run, workdir, capsys):
    n = 4
    assert evaluate.main([str(smoke_run), '--pgd-samples', str(n), '--fgsm-samples', str(n),
                          '--missing-samples', '0']) == 0
    result = json.loads((smoke_run / 'evaluation.json').read_text())
    block = result['pgd']
    assert block['n_samples'] == n and block['eps'] == list(EPS) and block['score'] == 'u'
    assert {k: (a['name'], a['steps']) for k, a in block['attacks'].items()} == ATTACKS
    saved = np.load(smoke_run / 'predictions.npz')
    clean = (saved['id/probs'][:n].argmax(1) == saved['id/labels'][:n]).mean()
    for attack in block['attacks'].values():
        assert attack['accuracy'][0] == clean  # eps 0: the clean images
        assert list(attack['auroc']) == ['u', 'entropy', 'msp']
        assert all(a[0] == 0.5 for a in attack['auroc'].values())  # ... scored exactly as the clean ones
        assert all(0 <= a <= 1 for v in attack['auroc'].values() for a in v)
    # its FGSM reference is the FGSM plug-in's attack on the same images
    assert block['attacks']['fgsm']['accuracy'] == result['fgsm']['accuracy']
    assert result['figures']['pgd'] == 'eval_pgd.png'
    assert (smoke_run / 'eval_pgd.png').read_bytes()[:8] == PNG_MAGIC

    out = workdir / 'cmp'
    assert compare.main([str(smoke_run), '--out', str(out)]) == 0
    capsys.readouterr()
    (row,) = json.loads((out / 'comparison.json').read_text())['rows']
    i = EPS.index(0.1)
    assert row['values']['pgd/0.1/accuracy'] == block['attacks'][COLUMN_ATTACK]['accuracy'][i]
    assert row['values']['pgd/0.1/auroc'] == block['attacks'][COLUMN_ATTACK]['auroc']['u'][i]
    assert (out / 'comparison_pgd.png').read_bytes()[:8] == PNG_MAGIC
    # seeds average point by point (here the block and a copy of it with every accuracy and AUROC halved)
    plugin = perturbations.get('pgd')
    halved = {**block, 'attacks': {k: {**a, 'accuracy': [v / 2 for v in a['accuracy']],
                                       'auroc': {'u': [v / 2 for v in a['auroc']['u']]}}
                                   for k, a in block['attacks'].items()}}
    mean = plugin.mean_over_seeds([block, halved])
    for key, attack in block['attacks'].items():
        assert mean['attacks'][key]['accuracy'] == pytest.approx([0.75 * v for v in attack['accuracy']])
        assert mean['attacks'][key]['auroc']['u'] == pytest.approx([0.75 * v for v in attack['auroc']['u']])
    assert plugin.mean_over_seeds([block, {**block, 'n_samples': n + 1}]) is None
