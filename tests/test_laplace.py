"""
The Laplace family (`laplace_mnist`, `evidential/models/laplace.py`): its predictive against laplace-torch's own and
against Monte-Carlo estimates from the Gaussian posterior over the last layer, its options reaching laplace-torch,
and the fitted posterior travelling in the checkpoint (resume, `load_trained` and `experiments.evaluate` load it;
nothing refits it). Train / resume / evaluate / compare of the defaults: `tests/test_families.py`.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from configs.checkpoint import load_checkpoint
from configs.runner import load_trained
from evidential.models import laplace as lap
from evidential.prediction import categorical_entropy, sampled_prediction
from experiments import evaluate
from experiments.train import main as train

# (subset_of_weights, hessian_structure) → laplace-torch's class
CLASSES = {('last_layer', 'kron'): 'KronLLLaplace', ('last_layer', 'diag'): 'DiagLLLaplace',
           ('last_layer', 'full'): 'FullLLLaplace', ('all', 'kron'): 'KronLaplace', ('all', 'diag'): 'DiagLaplace'}


@pytest.fixture(scope='module')
def tiny():
    """A small classifier trained on 1,000 inputs of a noisy linear teacher: 16 → 12 → 4 (52 last-layer weights)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    x = torch.randn(1000, 1, 4, 4)
    y = (x.flatten(1) @ torch.randn(16, 4) + 0.5 * torch.randn(1000, 4)).argmax(-1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y, torch.randn(50, 1, 4, 4)


def _fitted(tiny, subset='last_layer', structure='kron'):
    model, x, y, _ = tiny
    la = lap.build_posterior(model, subset, structure)
    lap.fit_posterior(la, x, y, batch_size=250)
    return la


@pytest.mark.filterwarnings('ignore::UserWarning')  # ASDL's Jacobians (all + diag): laplace-torch says it falls back
@pytest.mark.parametrize('subset,structure', list(CLASSES))
def test_probit_predictive_is_laplace_torchs_own(tiny, subset, structure):
    """The options reach laplace-torch (its class, the weights it treats), and the prediction, computed as evaluation
    does (inference mode; the last-layer K-FAC moments by this app's shortcut), is `la(x, 'glm', 'probit')`."""
    la = _fitted(tiny, subset, structure)
    assert type(la).__name__ == CLASSES[subset, structure]
    assert la.n_params == (12 * 4 + 4 if subset == 'last_layer' else 16 * 12 + 12 + 12 * 4 + 4)
    assert la.prior_precision.item() != 1.0  # the evidence moved it from laplace-torch's initial value
    x_test = tiny[3]
    with torch.inference_mode():
        ours = lap.predictive_logits(la, x_test, 'probit', 0).softmax(-1)
    torch.testing.assert_close(ours, la(x_test, pred_type='glm', link_approx='probit').detach(), rtol=0, atol=1e-6)
    # the shortcut's covariance is the library's own, not only its probit
    if (subset, structure) == ('last_layer', 'kron'):
        mu, sigma = lap.kron_last_layer_moments(la, x_test)
        ref_mu, ref_sigma = la._glm_predictive_distribution(x_test)
        torch.testing.assert_close(mu, ref_mu)
        torch.testing.assert_close(sigma, ref_sigma, rtol=1e-5, atol=1e-5 * ref_sigma.abs().max().item())


def test_predictive_matches_monte_carlo_over_last_layer_weights(tiny):
    """
    Independent of laplace-torch's predictive: last-layer weights drawn from N(θ*, P⁻¹) by torch.distributions, with
    P the fitted K-FAC factors made dense plus δI, give logits whose mean and covariance are the GLM moments and
    whose mean softmax is the `mc` link's. The probit approximation is close to it with δ = 30 (the order the
    evidence gives the MNIST LeNet), closer than the MAP softmax; with a flat prior it overstates the spread, the
    per-class variances being mostly along the all-ones direction to which the softmax is blind.
    """
    model, _, _, x_test = tiny
    la = _fitted(tiny)
    la.prior_precision = 30.0
    s = 20_000
    with torch.no_grad():
        mu, sigma = lap.glm_moments(la, x_test)
        # classification: no noise, temperature 1, so P = GGN + δI
        precision = la.H_facs.to_matrix() + 30.0 * torch.eye(la.n_params)
        torch.manual_seed(1)
        theta = torch.distributions.MultivariateNormal(la.mean.detach(), precision_matrix=precision).sample((s,))
        weight, bias = theta[:, :48].view(s, 4, 12), theta[:, 48:]
        phi = model[:-1](x_test)
        logits = torch.einsum('nh,skh->snk', phi, weight) + bias[:, None]
        sd = sigma.diagonal(dim1=-2, dim2=-1).sqrt()
        assert ((logits.mean(0) - mu).abs() < 5 * sd / s ** 0.5).all()
        centred = logits - logits.mean(0)
        covariance = torch.einsum('snk,snl->nkl', centred, centred) / (s - 1)
        torch.testing.assert_close(covariance, sigma, rtol=0.05, atol=0.03 * sigma.abs().max().item())
        p_mc = logits.softmax(-1).mean(0)
        torch.manual_seed(2)
        sampled = sampled_prediction(lap.predictive_logits(la, x_test, 'mc', s))
        assert (sampled.probs - p_mc).abs().max() < 0.01
        # the mutual information of the draws, H[p̄] - mean H[p_s], is that of the sampled weights
        mi_mc = categorical_entropy(p_mc) - categorical_entropy(logits.softmax(-1)).mean(0)
        assert (sampled.scores['mutual_information'] - mi_mc).abs().max() < 0.01 and mi_mc.max() > 0.05
        probit = lap.predictive_logits(la, x_test, 'probit', 0).softmax(-1)
        map_softmax = mu.softmax(-1)
        assert (probit - p_mc).abs().max() < 0.02
        assert (probit - p_mc).abs().sum(-1).mean() < 0.5 * (map_softmax - p_mc).abs().sum(-1).mean()


def test_refusals():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    with pytest.raises(lap.LaplaceError, match='full Hessian over all 68 weights'):
        lap.build_posterior(model, 'all', 'full')
    with pytest.raises(lap.LaplaceError, match='hessian_structure must be one of kron, diag, full'):
        lap.build_posterior(model, 'last_layer', 'lowrank')
    with pytest.raises(lap.LaplaceError, match='no linear layer'):
        lap.build_posterior(nn.Sequential(nn.Flatten()), 'last_layer', 'kron')


@pytest.fixture
def fits(monkeypatch):
    """Every fit: the configurations that asked for one (`LaplaceConfigs.fit_posterior`), and laplace-torch's own
    `fit` calls, counted."""
    from configs.laplace import LaplaceConfigs
    laplace = lap.import_laplace()
    confs, library = [], []
    real_conf_fit, real_fit = LaplaceConfigs.fit_posterior, laplace.lllaplace.LLLaplace.fit

    def conf_fit(self):
        confs.append(self)
        return real_conf_fit(self)

    def library_fit(self, *args, **kwargs):
        library.append(type(self).__name__)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(LaplaceConfigs, 'fit_posterior', conf_fit)
    monkeypatch.setattr(laplace.lllaplace.LLLaplace, 'fit', library_fit)
    return confs, library


def test_the_posterior_is_saved_and_loaded_not_refitted(workdir, synthetic_data_dir, monkeypatch, fits):
    """Training fits once; the checkpoint holds the posterior; `load_trained` and `experiments.evaluate` use it
    without fitting and give the in-process fit's predictions exactly; a resume that trains further fits again."""
    confs, library = fits
    monkeypatch.chdir(workdir)
    assert train('laplace_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu']) == 0
    assert library == ['KronLLLaplace'] and len(confs) == 1
    fitted = confs[0]
    test = fitted.dataset.test
    in_process = fitted.evaluate_outputs(test)
    (run,) = (workdir / 'logs' / 'laplace_mnist').iterdir()
    state = load_checkpoint(run)
    saved = state['laplace']
    assert saved['n_fit'] == 512 and saved['fit_seconds'] > 0
    assert {'mean', 'H', 'prior_precision'} <= set(saved['posterior'])
    assert saved['posterior']['prior_precision'].item() == pytest.approx(lap.prior_precision(fitted.posterior())[0])

    _, conf, _, _ = load_trained(run.name)
    assert library == ['KronLLLaplace'] and len(confs) == 1
    assert torch.equal(conf.evaluate_outputs(test), in_process)
    assert evaluate.main([run.name, '--fgsm-samples', '0', '--missing-samples', '0']) == 0
    assert library == ['KronLLLaplace'] and len(confs) == 1
    result = json.loads((run / 'evaluation.json').read_text())
    last = state['history'][-1]  # validation of the smoke run is the test split, predicted by the posterior
    assert result['id']['accuracy'] == last['accuracy.valid']
    assert result['id']['nll'] == pytest.approx(last['loss.valid'], abs=1e-6)
    npz = np.load(run / 'predictions.npz')
    np.testing.assert_allclose(npz['id/probs'], in_process.softmax(-1).numpy(), atol=1e-6)
    assert not any('Laplace' in note for note in result['notes'])
    # without a posterior (a run stopped before its last epoch): the MAP network, and evaluation says so
    conf._set_posterior(None)
    assert torch.equal(conf.eval_forward(test.images[:8]), conf.model(test.images[:8]))
    assert 'MAP network' in conf.evaluation_notes(in_process, 'test')[0]

    # trained further, the weights change: the saved posterior is stale and is fitted again, once
    assert train('laplace_mnist', [f'resume={run.name}', 'epochs=2', f'data_dir={synthetic_data_dir}',
                                   'device=cpu']) == 0
    assert library == ['KronLLLaplace', 'KronLLLaplace']
    resumed = load_checkpoint(run)
    assert resumed['epoch'] == 2 and not torch.equal(resumed['laplace']['posterior']['mean'], saved['posterior']['mean'])


def test_options_reach_laplace_torch_from_the_command_line(workdir, synthetic_data_dir, monkeypatch, fits, capsys):
    from configs import registry
    from configs.runner import prepare
    confs, library = fits
    monkeypatch.chdir(workdir)
    args = ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu']
    # a dense precision over every weight is refused with the command line, before anything is written
    assert train('laplace_mnist', [*args, 'subset_of_weights=all', 'hessian_structure=full']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'full Hessian over all 431,080 weights' in err[0]
    assert not (workdir / 'logs' / 'laplace_mnist').exists()
    # the options of a command line (no training: the fit runs on the untrained network)
    conf = prepare(registry.get('laplace_mnist'), [*args, 'hessian_structure=diag', 'link_approx=mc',
                                                   'pred_samples=7']).conf
    conf.fit_posterior()
    assert library == ['DiagLLLaplace'] and type(conf.posterior()).__name__ == 'DiagLLLaplace'
    outputs = conf.evaluate_outputs(conf.dataset.test)
    assert outputs.shape == (7, 256, 10)
    assert 'mutual_information' in conf.predict(outputs).scores
