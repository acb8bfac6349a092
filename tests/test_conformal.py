"""
Split conformal prediction (`evidential.conformal`) and its post-hoc step (`experiments.evaluation.posthoc.conformal`):

* the quantile is the ⌈(n+1)(1−α)⌉-th smallest calibration score (a direct numpy computation), ∞ where that rank
  exceeds n; LAC sets are {y : p̂_y ≥ 1 − q̂}, and the set summaries are direct counts;
* APS and RAPS scores against a straightforward per-sample loop, and against TorchCP 1.2.1's own score files on
  the same inputs and the same draws u (skipped, saying why, where TorchCP is not installed: the README's test
  command installs it into `.oracles/` with `pip install --no-deps --target`, and its files are loaded by path,
  see `_load_torchcp`);
* coverage on exchangeable data from a known model, over many calibration/test splits: the mean coverage is the
  exact finite-sample value ⌈(n+1)(1−α)⌉/(n+1) ≥ 1 − α, for a miscalibrated p̂ too;
* in a real run's evaluation: the block, recomputed from `predictions.npz` and the documented seed, and the
  `compare` columns. (A run without a held-out split: `tests/test_posthoc.py`.)
"""
import importlib
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from sklearn.metrics import roc_auc_score

from evidential.conformal import (aps_scores, conformal_quantile, lac_scores, prediction_sets, raps_scores,
                                  set_summary, true_label_scores)
from experiments import compare
from experiments.compare.table import direction
from experiments.evaluation.core import evaluate as evaluate_run
from experiments.evaluation.posthoc import conformal as step
from experiments.train import main as train

ALPHAS = (0.01, 0.05, 0.1)


def _model(n, k=10, seed=0, sharpen=1.0):
    """Exchangeable pairs from a known model: labels drawn from softmax(logits); p̂ = softmax(sharpen · logits)
    (sharpen ≠ 1: a miscalibrated model, which conformal coverage does not depend on)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2.0
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return torch.softmax(sharpen * logits, 1), labels, g


def _direct_aps(probs, labels, u, penalty=0.0, kreg=0):
    """APS / RAPS score of (x_i, labels_i), one sample at a time: the classes ranked above the label by p̂ (ties
    by index), their mass, the label's own p̂ less its random part, and the rank penalty."""
    out = []
    for p, y, ui in zip(probs.tolist(), labels.tolist(), u.tolist()):
        ranked = sorted(range(len(p)), key=lambda j: (-p[j], j))
        rank = ranked.index(y) + 1
        above = sum(p[j] for j in ranked[:rank - 1])
        out.append(above + (1 - ui) * p[y] + penalty * max(rank - kreg, 0))
    return torch.tensor(out, dtype=torch.float64)


def test_the_quantile_is_the_finite_sample_corrected_order_statistic():
    rng = np.random.default_rng(0)
    for n in (1, 9, 19, 99, 100, 1001):
        scores = rng.random(n)
        for alpha in ALPHAS + (0.5,):
            k = int(np.ceil((n + 1) * (1 - alpha)))
            expected = np.sort(scores)[k - 1] if k <= n else np.inf
            assert conformal_quantile(torch.from_numpy(scores), alpha) == expected, (n, alpha)
    # n = 19, α = 0.1: the 18th of 19 (the plain 0.9 quantile would lie between the 17th and 18th)
    scores = torch.arange(1, 20, dtype=torch.float64)
    assert conformal_quantile(scores, 0.1) == 18.0
    # too few samples for α = 0.01 (⌈100 · 0.99⌉ = 99 > 98): q̂ = ∞, every set is every class
    assert conformal_quantile(torch.rand(98), 0.01) == math.inf
    assert prediction_sets(aps_scores(torch.full((3, 4), 0.25)), math.inf).all()
    for bad in (0, 1, -0.1):
        with pytest.raises(ValueError, match='alpha'):
            conformal_quantile(scores, bad)


def test_lac_sets_are_the_labels_whose_probability_reaches_one_minus_q():
    probs, labels, _ = _model(400, k=6, seed=1)
    cal, test = slice(0, 200), slice(200, 400)
    for alpha in ALPHAS:
        q = conformal_quantile(true_label_scores(lac_scores(probs[cal]), labels[cal]), alpha)
        sets = prediction_sets(lac_scores(probs[test]), q).numpy()
        p = probs[test].numpy()
        expected = np.array([[p[i, y] >= 1 - q for y in range(6)] for i in range(len(p))])
        assert (sets == expected).all()
        # the summary, counted directly
        summary = set_summary(torch.from_numpy(sets), labels[test])
        y = labels[test].numpy()
        hit = sets[np.arange(len(y)), y]
        size = sets.sum(1)
        assert summary['coverage'] == pytest.approx(hit.mean())
        assert summary['mean_size'] == pytest.approx(size.mean())
        assert summary['median_size'] == np.median(size)
        assert summary['empty'] == pytest.approx((size == 0).mean())
        assert summary['by_size'] == {str(m): {'n': int((size == m).sum()),
                                               'coverage': pytest.approx(hit[size == m].mean())}
                                      for m in np.unique(size)}
        by_class = [hit[y == c].mean() for c in range(6)]
        assert summary['by_class'] == pytest.approx(by_class)
        assert summary['worst_class'] == {'class': int(np.argmin(by_class)), 'coverage': pytest.approx(min(by_class))}


def test_aps_and_raps_scores_match_a_per_sample_loop_and_give_top_m_sets():
    probs, labels, g = _model(300, k=7, seed=2)
    probs[0] = torch.tensor([0.3, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05], dtype=torch.float64)  # ties rank by index
    u = torch.rand(300, generator=g, dtype=torch.float64)
    for penalty, kreg, scores in [(0.0, 0, aps_scores(probs, u)), (0.1, 1, raps_scores(probs, u, 0.1, 1)),
                                  (0.05, 3, raps_scores(probs, u, 0.05, 3))]:
        for y in range(7):  # every label, not only the true one
            label = torch.full((300,), y)
            assert torch.allclose(true_label_scores(scores, label), _direct_aps(probs, label, u, penalty, kreg),
                                  rtol=0, atol=1e-12)
        # one u per sample: the scores grow with the rank, so every set is the top m classes
        sets = prediction_sets(scores, 0.8)
        ranked = sets.gather(1, torch.sort(probs, dim=1, descending=True, stable=True).indices)
        assert (ranked[:, 1:] <= ranked[:, :-1]).all()
    # u = None is the non-randomised score (u = 0)
    assert torch.equal(aps_scores(probs), aps_scores(probs, torch.zeros(300, dtype=torch.float64)))
    with pytest.raises(ValueError, match='one draw per sample'):
        aps_scores(probs, torch.rand(300, 7))


# Installed apart, by the README's test command: `--target` keeps its wheel's top-level `tests` and `examples`
# packages out of site-packages
TORCHCP_DIR = ROOT / '.oracles'


def _load_torchcp():
    """TorchCP 1.2.1's `score/{base,lac,aps,raps}.py` and `utils/common.py`, loaded from the installed files under
    empty stand-ins for their packages: `import torchcp` runs `torchcp/classification/__init__.py`, which imports
    torchsort (a C++ build) and the LLM and graph parts; the five files import only `torch`, `math`, `warnings`
    and each other. Returns `({name: module}, None)` or `(None, why the tests skip)`."""
    root = TORCHCP_DIR / 'torchcp'
    if not (root / 'classification' / 'score' / 'aps.py').is_file():
        return None, (f'TorchCP is not in {TORCHCP_DIR} (the oracle tests need '
                      f'`pip install --no-deps --upgrade --target {TORCHCP_DIR.relative_to(ROOT)} torchcp==1.2.1`)')
    saved = {k: v for k, v in sys.modules.items() if k == 'torchcp' or k.startswith('torchcp.')}
    try:
        for name, path in [('torchcp', root), ('torchcp.classification', root / 'classification'),
                           ('torchcp.classification.score', root / 'classification' / 'score'),
                           ('torchcp.utils', root / 'utils')]:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
        return {name: importlib.import_module(f'torchcp.{path}') for name, path in
                [('aps', 'classification.score.aps'), ('raps', 'classification.score.raps'),
                 ('lac', 'classification.score.lac'), ('common', 'utils.common')]}, None
    except ImportError as e:
        return None, f"TorchCP's score files cannot be imported: {e}"
    finally:  # leave no stand-in behind
        for k in [k for k in sys.modules if k == 'torchcp' or k.startswith('torchcp.')]:
            del sys.modules[k]
        sys.modules.update(saved)


TORCHCP, TORCHCP_SKIP = _load_torchcp()


@pytest.mark.skipif(TORCHCP is None, reason=TORCHCP_SKIP or '')
def test_scores_and_quantile_match_torchcp_on_the_same_draws():
    probs, labels, _ = _model(500, k=10, seed=3)
    aps = TORCHCP['aps'].APS(score_type='identity', randomized=True)
    raps = TORCHCP['raps'].RAPS(score_type='identity', randomized=True, penalty=0.1, kreg=1)
    for y in [None, *range(10)]:
        label = labels if y is None else torch.full((500,), y)
        # TorchCP computes the rank penalty of one label in float32 (λ times an integer tensor): 4e-8 apart
        for reference, ours, atol in [(aps, lambda u: aps_scores(probs, u), 1e-12),
                                      (raps, lambda u: raps_scores(probs, u), 1e-7)]:
            # TorchCP draws its u (one per sample for a given label) from torch's global generator: the same
            # seed gives us the same draws
            torch.manual_seed(11)
            expected = reference(probs, label)
            torch.manual_seed(11)
            u = torch.rand(500).double()
            assert torch.allclose(true_label_scores(ours(u), label), expected, rtol=0, atol=atol)
    # non-randomised, all labels at once
    for reference, ours, atol in [
            (TORCHCP['aps'].APS(score_type='identity', randomized=False), aps_scores(probs), 1e-12),
            (TORCHCP['raps'].RAPS(score_type='identity', randomized=False, penalty=0.1, kreg=1), raps_scores(probs),
             1e-7),
            (TORCHCP['lac'].LAC(score_type='identity'), lac_scores(probs), 1e-12)]:
        assert torch.allclose(ours, reference(probs), rtol=0, atol=atol)
    scores = true_label_scores(lac_scores(probs), labels)
    for alpha in ALPHAS:
        assert conformal_quantile(scores, alpha) == TORCHCP['common'].calculate_conformal_value(scores, alpha).item()


def test_coverage_on_exchangeable_data_is_the_finite_sample_value():
    # R independent calibration/test splits of exchangeable data; per split the coverage is Beta(k, n + 1 − k)
    # (continuous scores) plus the test set's binomial noise, so the mean over R has a known standard deviation
    R, n, m, k_classes = 50, 1000, 1000, 10
    probs, labels, g = _model(R * (n + m), k=k_classes, seed=4, sharpen=2.0)  # over-confident p̂
    u = torch.rand(len(labels), generator=g, dtype=torch.float64)
    scores = {'lac': lac_scores(probs), 'aps': aps_scores(probs, u), 'raps': raps_scores(probs, u),
              'aps, not randomised': aps_scores(probs)}
    for name, all_scores in scores.items():
        for alpha in ALPHAS:
            coverage = []
            for r in range(R):
                cal = slice(r * (n + m), r * (n + m) + n)
                test = slice(r * (n + m) + n, (r + 1) * (n + m))
                q = conformal_quantile(true_label_scores(all_scores[cal], labels[cal]), alpha)
                coverage.append(set_summary(prediction_sets(all_scores[test], q), labels[test])['coverage'])
            exact = math.ceil((n + 1) * (1 - alpha)) / (n + 1)
            sd = math.sqrt(alpha * (1 - alpha) * (1 / (n + 2) + 1 / m) / R)
            mean = float(np.mean(coverage))
            assert mean > 1 - alpha - 4 * sd, (name, alpha, mean)
            if name != 'aps, not randomised':  # randomised or continuous: exact, not only at least 1 − α
                assert abs(mean - exact) < 4 * sd, (name, alpha, mean, exact)


@pytest.fixture
def holdout_run(workdir, synthetic_data_dir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert train('evidence_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu',
                                    'holdout=0.2', 'seed=3']) == 0
    (run,) = (workdir / 'logs' / 'evidence_mnist').iterdir()
    return run


def test_a_held_out_run_gets_a_conformal_block_and_compare_columns(holdout_run, workdir):
    noise = workdir / 'noise.npy'  # an --ood-file set after the built-in Fashion-MNIST
    np.save(noise, np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8))
    _, result = evaluate_run(str(holdout_run), ood_files=[str(noise)],
                             samples={'fgsm': 0, 'pgd': 0, 'missing_pixels': 0}, log=lambda _: None)
    saved = json.loads((holdout_run / 'evaluation.json').read_text())
    block = saved['conformal']
    assert block == json.loads(json.dumps(result['conformal']))
    n_valid = int(0.2 * 512)
    assert block['fitted_on'] == f'held-out split ({n_valid} images)'
    assert block['randomised'] == {'lac': False, 'aps': True, 'raps': True}
    assert set(block['sets']) == {'lac', 'aps', 'raps'}
    assert all(set(block['sets'][s]) == {'0.01', '0.05', '0.1'} for s in block['sets'])

    # recomputed from predictions.npz with the documented draws: the held-out split's first, then the test set's,
    # then each OOD set's, from one generator seeded with SEED
    npz = np.load(holdout_run / 'predictions.npz')
    probs, labels = torch.from_numpy(npz['id/probs']), npz['id/labels']
    g = torch.Generator().manual_seed(step.SEED)
    torch.rand(n_valid, generator=g, dtype=torch.float64)
    u = torch.rand(len(labels), generator=g, dtype=torch.float64)
    u_ood = {name: torch.rand(len(npz[f'{name}/probs']), generator=g, dtype=torch.float64)
             for name in ('fashion_mnist', 'noise')}
    for name, scores in [('lac', lac_scores(probs)), ('aps', aps_scores(probs, u)),
                         ('raps', raps_scores(probs, u, step.RAPS_PENALTY, step.RAPS_KREG))]:
        for alpha, values in block['sets'][name].items():
            q = values['q_hat'] if values['q_hat'] is not None else math.inf
            sets = prediction_sets(scores, q).numpy()
            assert values['coverage'] == pytest.approx(sets[np.arange(len(labels)), labels].mean()), (name, alpha)
            assert values['mean_size'] == pytest.approx(sets.sum(1).mean()), (name, alpha)
    # the set size as an uncertainty score: misclassification and OOD AUROC (scikit-learn's, ties count half)
    q = block['sets']['aps']['0.05']['q_hat']
    size = prediction_sets(aps_scores(probs, u), q).sum(1).numpy()
    wrong = probs.argmax(1).numpy() != labels
    assert block['set_size']['misclassification_auroc'] == pytest.approx(roc_auc_score(wrong, size))
    assert set(block['set_size']['ood']) == set(result['ood']) == {'fashion_mnist', 'noise'}
    for name, u_set in u_ood.items():
        ood_size = prediction_sets(aps_scores(torch.from_numpy(npz[f'{name}/probs']), u_set), q).sum(1).numpy()
        both = np.r_[np.zeros(len(size)), np.ones(len(ood_size))]
        assert block['set_size']['ood'][name]['auroc'] == pytest.approx(roc_auc_score(both, np.r_[size, ood_size]))
        assert block['set_size']['ood_mean_size'][name] == pytest.approx(ood_size.mean())

    # compare: the two columns; the coverage never bold, the size lower-is-better
    assert direction('conformal/aps/0.05/coverage') is None and direction('conformal/aps/0.05/size') == 'min'
    out = workdir / 'cmp'
    assert compare.main([str(holdout_run), '--out', str(out)]) == 0
    row = json.loads((out / 'comparison.json').read_text())['rows'][0]['values']
    assert row['conformal/aps/0.05/coverage'] == pytest.approx(block['sets']['aps']['0.05']['coverage'])
    assert row['conformal/aps/0.05/size'] == pytest.approx(block['sets']['aps']['0.05']['mean_size'])
