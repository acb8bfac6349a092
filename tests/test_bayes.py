"""Bayesian layers by variational inference with local reparametrisation (`evidential/models/bayes.py`),
checked against torch.distributions, Monte-Carlo estimates over sampled weights, and Pyro's ELBO."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from evidential.models.bayes import (BayesConv2d, BayesLayers, BayesLinear, bayes_layers, bayes_logits,
                                     kl_divergence, negative_elbo, posterior_mean, sampled_network)
from evidential.models.lenet import Layers, LeNet
from evidential.models.mlp import MLP
from tests.layouts import record_channels_last

# z-score bound for Monte-Carlo checks over a few hundred elements at once
Z = 5.


def randomise(model: nn.Module, mu_scale: float = 0.5, sigma_range=(0.05, 0.6)) -> None:
    """Random means and posterior scales (so prior, sigma_min shift and per-weight sigma all matter)."""
    lo, hi = sigma_range
    with torch.no_grad():
        for layer in bayes_layers(model):
            for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
                mu.normal_(0., mu_scale)
                sigma = torch.empty_like(rho).uniform_(lo, hi)
                # $\rho = \text{softplus}^{-1}(\sigma - \sigma_{\min})$
                rho.copy_(torch.log(torch.expm1(sigma - layer.sigma_min)))


def sample_weights(layer, m: int):
    """`m` independent draws of (weight, bias) from q: `[m, *weight.shape]`, `[m, out]`."""
    w = Normal(layer.weight_mu, layer.weight_sigma).sample((m,))
    b = Normal(layer.bias_mu, layer.bias_sigma).sample((m,))
    return w, b


def within(estimate, reference, se, z=Z) -> torch.Tensor:
    return ((estimate - reference).abs() <= z * se).all()


# ---------------------------------------------------------------------------------------------------
# KL divergence


@pytest.mark.parametrize('make', [lambda kw: BayesLinear(7, 4, **kw),
                                  lambda kw: BayesConv2d(3, 5, 3, **kw)])
def test_layer_kl_matches_torch_distributions(make):
    torch.manual_seed(0)
    layer = make(dict(prior_scale=0.7, sigma_init=0.2, sigma_min=0.01))
    randomise(layer)
    prior = Normal(0., 0.7)
    expected = (torch_kl(Normal(layer.weight_mu, layer.weight_sigma), prior).sum()
                + torch_kl(Normal(layer.bias_mu, layer.bias_sigma), prior).sum())
    assert torch.allclose(layer.kl(), expected, rtol=1e-5)
    # kl_divergence(model) is the same for a one-layer model
    assert torch.allclose(kl_divergence(nn.Sequential(layer)), expected, rtol=1e-5)


def test_model_kl_sums_all_layers_of_bayesian_lenet():
    torch.manual_seed(1)
    model = LeNet(10, dropout=0., layers=BayesLayers(prior_scale=0.5, sigma_init=0.1, sigma_min=0.01))
    randomise(model, mu_scale=0.1)
    prior = Normal(0., 0.5)
    expected = 0.
    n_params = 0
    for name, p in model.named_parameters():
        if name.endswith('_mu'):
            layer = model.get_submodule(name.rsplit('.', 1)[0])
            sigma = layer.weight_sigma if name.endswith('weight_mu') else layer.bias_sigma
            expected = expected + torch_kl(Normal(p, sigma), prior).double().sum()
            n_params += p.numel()
    # 4 Bayesian layers: 2 convolutions, 2 linear; every weight and bias is counted
    assert len(bayes_layers(model)) == 4
    assert n_params == sum(p.numel() for p in LeNet(10).parameters())
    assert torch.allclose(kl_divergence(model).double(), expected, rtol=1e-5)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    layer = BayesLinear(3, 2, prior_scale=0.3, sigma_init=0.3 + 1e-3, sigma_min=1e-3)
    with torch.no_grad():
        layer.weight_mu.zero_()
        layer.bias_mu.zero_()
        # $\sigma = s$ exactly: softplus(rho) = s - sigma_min
        for rho in (layer.weight_rho, layer.bias_rho):
            rho.fill_(math.log(math.expm1(0.3 - 1e-3)))
    assert abs(layer.kl().item()) < 1e-5
    with torch.no_grad():
        layer.weight_mu.add_(0.1)
    assert layer.kl().item() > 1e-3


# ---------------------------------------------------------------------------------------------------
# Local reparametrisation: pre-activation moments against sampled weights


def _check_moments(layer, x, weight_mc):
    """`weight_mc(w, b)` runs the layer's operation with `M` sampled weights: `[M, *output]`."""
    m = 20000
    w, b = sample_weights(layer, m)
    outs = weight_mc(w, b).double()
    mc_mean, mc_var = outs.mean(0), outs.var(0)

    with torch.no_grad():
        gamma, delta = layer.moments(x)
    gamma, delta = gamma.double(), delta.double()
    # Standard errors of the MC mean and variance (the pre-activations are Gaussian: Var(s^2) = 2 sigma^4 / (M-1))
    se_mean = (delta / m).sqrt()
    se_var = delta * math.sqrt(2 / (m - 1))
    assert within(mc_mean, gamma, se_mean)
    assert within(mc_var, delta, se_var)

    # Power: the variance without squaring the input, or with sigma instead of sigma^2, is rejected
    with torch.no_grad():
        wrong_x = layer._op(x, layer.weight_sigma ** 2, layer.bias_sigma ** 2).double()
        wrong_sigma = layer._op(x * x, layer.weight_sigma, layer.bias_sigma).double()
    assert not within(mc_var, wrong_x, se_var)
    assert not within(mc_var, wrong_sigma, se_var)

    # The layer's own samples (one forward over the input repeated M times) have the same moments
    with torch.no_grad():
        samples = layer(x.repeat(m, *([1] * (x.dim() - 1)))).double().view(m, *gamma.shape)
    assert within(samples.mean(0), mc_mean, math.sqrt(2) * se_mean)
    assert within(samples.var(0), mc_var, math.sqrt(2) * se_var)


def test_linear_local_reparametrisation_moments_match_sampled_weights():
    torch.manual_seed(2)
    layer = BayesLinear(6, 5, prior_scale=1., sigma_init=0.1, sigma_min=0.01)
    randomise(layer)
    x = torch.randn(4, 6)
    # $b_{mj} = \sum_i x_{ni} w_{ji} + b_j$ for each sampled (w, b)
    _check_moments(layer, x, lambda w, b: torch.einsum('ni,mji->mnj', x, w) + b[:, None, :])


def test_conv_local_reparametrisation_moments_match_sampled_weights():
    torch.manual_seed(3)
    layer = BayesConv2d(2, 3, 3, stride=2, padding=1, prior_scale=1., sigma_init=0.1, sigma_min=0.01)
    randomise(layer)
    x = torch.randn(2, 2, 7, 7)

    def weight_mc(w, b):
        m = w.shape[0]
        # all M sampled kernels as one convolution with M * 3 output channels
        out = F.conv2d(x, w.reshape(m * 3, 2, 3, 3), b.reshape(m * 3), stride=2, padding=1)
        return out.view(x.shape[0], m, 3, *out.shape[-2:]).transpose(0, 1)

    _check_moments(layer, x, weight_mc)


# ---------------------------------------------------------------------------------------------------
# Posterior mean, sigma_min, gradients


def _plain_copy(model: nn.Module) -> LeNet:
    """A plain LeNet whose weights are the posterior means."""
    plain = LeNet(10, dropout=0.)
    means = {k[:-len('_mu')]: v for k, v in model.state_dict().items() if k.endswith('_mu')}
    plain.load_state_dict(means, strict=True)
    return plain


def test_posterior_mean_is_deterministic_and_equals_plain_net_with_mu():
    torch.manual_seed(4)
    model = LeNet(10, dropout=0., layers=BayesLayers())
    randomise(model, mu_scale=0.1)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = _plain_copy(model)(x)
        with posterior_mean(model):
            a, b = model(x), model(x)
        assert torch.equal(a, b)
        assert torch.allclose(a, expected, atol=1e-5)
        mean_logits = bayes_logits(model, x, 0)
        assert mean_logits.shape == (1, 3, 10)
        assert torch.allclose(mean_logits[0], expected, atol=1e-5)
        # sampling is back on after the block: two passes differ, and differ from the mean
        s1, s2 = model(x), model(x)
    assert not torch.allclose(s1, s2)
    assert not torch.allclose(s1, expected)
    assert all(layer.sampling for layer in bayes_layers(model))


def test_posterior_mean_restores_flags_after_an_error():
    model = MLP(3, in_features=4, hidden=(5,), layers=BayesLayers())
    model.out.sampling = False
    with pytest.raises(RuntimeError):
        with posterior_mean(model):
            raise RuntimeError('boom')
    assert [layer.sampling for layer in bayes_layers(model)] == [True, False]


def test_sigma_respects_sigma_min_and_starts_at_sigma_init():
    layer = BayesLinear(4, 3, sigma_init=0.1, sigma_min=0.01)
    assert torch.allclose(layer.weight_sigma, torch.full((3, 4), 0.1))
    assert torch.allclose(layer.bias_sigma, torch.full((3,), 0.1))
    with torch.no_grad():
        layer.weight_rho.normal_(0., 30.)
        layer.bias_rho.fill_(-1e4)
    assert (layer.weight_sigma >= 0.01).all()
    assert torch.equal(layer.bias_sigma, torch.full((3,), 0.01))
    # pre-activation std >= sigma_min (through the bias variance), samples stay finite
    x = torch.randn(8, 4)
    _, delta = layer.moments(x)
    assert (delta >= 0.01 ** 2 * (1 - 1e-6)).all()
    assert torch.isfinite(layer(x)).all()
    # a shifted softplus, not a clamp: the KL still pulls sigma (< prior_scale) up from deep below the floor
    with torch.no_grad():
        layer.weight_rho.copy_(torch.linspace(-15., -1., 12).view(3, 4))
    layer.kl().backward()
    assert (layer.weight_rho.grad < 0).all()


def test_gradients_reach_mu_and_rho_of_every_layer_through_the_likelihood():
    torch.manual_seed(5)
    model = LeNet(10, dropout=0., layers=BayesLayers())
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    # the likelihood term alone: sigma gets gradient through the sampled pre-activations
    negative_elbo(bayes_logits(model, x, 2), y, kl_divergence(model), n_train=100, beta=0.).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_no_bias_layer_has_finite_gradients_on_zero_input():
    layer = BayesLinear(3, 2, bias=False)
    x = torch.zeros(4, 3)
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert torch.isfinite(layer.weight_rho.grad).all() and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------------
# bayes_logits and negative_elbo


@pytest.mark.parametrize('max_batch', [None, 7])
def test_bayes_logits_are_independent_samples_in_s_n_k_layout(max_batch):
    torch.manual_seed(6)
    layer = BayesLinear(3, 4)
    randomise(layer)
    # distinct examples: a mix-up of the sample and batch axes changes the moments
    x = torch.randn(5, 3) * torch.arange(1., 6.)[:, None]
    s = 4000
    with torch.no_grad():
        logits = bayes_logits(nn.Sequential(layer), x, s, max_batch=max_batch)
        gamma, delta = layer.moments(x)
    assert logits.shape == (s, 5, 4)
    assert within(logits.mean(0), gamma, (delta / s).sqrt())
    assert within(logits.var(0), delta, delta * math.sqrt(2 / (s - 1)))


@pytest.mark.parametrize('layer, x', [(BayesLinear(3, 4), torch.randn(5, 3) * torch.arange(1., 6.)[:, None]),
                                      (BayesConv2d(2, 3, 3, padding=1), torch.randn(3, 2, 5, 5))])
def test_sampled_networks_share_weights_across_examples_and_have_the_posterior_marginals(layer, x):
    torch.manual_seed(8)
    randomise(layer)
    net = nn.Sequential(layer)
    # the first example twice: within one drawn network both copies give the same output
    xx = torch.cat([x, x[:1]])
    s = 4000
    with torch.no_grad():
        drawn = bayes_logits(net, xx, s, networks=True)
        local = bayes_logits(net, xx, 3)
        gamma, delta = layer.moments(x)
    assert drawn.shape == (s, len(xx), *gamma.shape[1:])
    assert torch.equal(drawn[:, 0], drawn[:, -1])
    # local reparametrisation: independent noise per example, so the copies differ
    assert not torch.allclose(local[:, 0], local[:, -1])
    # each output still has the marginal N(gamma, delta) of q (exact for a convolution too)
    assert within(drawn[:, :-1].mean(0), gamma, (delta / s).sqrt())
    assert within(drawn[:, :-1].var(0), delta, delta * math.sqrt(2 / (s - 1)))
    # the draws are gone after the block, even after an error
    with pytest.raises(RuntimeError):
        with sampled_network(net):
            raise RuntimeError
    assert layer.drawn is None


def test_sampled_network_is_an_exact_draw_of_a_conv_kernel():
    """One drawn network equals the plain convolution with the drawn weights, and its positions are correlated
    (a shared kernel), unlike local reparametrisation's independent noise per position."""
    torch.manual_seed(9)
    layer = BayesConv2d(1, 2, 3)
    randomise(layer)
    x = torch.ones(1, 1, 6, 6)
    with torch.no_grad(), sampled_network(nn.Sequential(layer)):
        weight, bias = layer.drawn
        out = layer(x)
        assert torch.allclose(out, F.conv2d(x, weight, bias))
    # a constant image: every position of a drawn network's map is the same number
    assert torch.allclose(out, out[..., :1, :1].expand_as(out))
    with torch.no_grad():
        local = layer(x)
    assert not torch.allclose(local, local[..., :1, :1].expand_as(local))


def test_channels_last_parameters_draw_the_same_networks_and_compute_channels_last():
    # `experiments.evaluate` holds the parameters channels-last: a seed must draw the same networks as in NCHW
    # (the noise is drawn in row-major order, not in the parameters' memory order), and each convolution must
    # compute channels-last (a `[20, 1, 5, 5]` kernel formed by arithmetic would fall back to NCHW)
    torch.manual_seed(10)
    model = LeNet(10, layers=BayesLayers()).eval()
    for layer in bayes_layers(model):
        randomise(layer)
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        torch.manual_seed(11)
        nchw = bayes_logits(model, x, 3, networks=True)
        model.to(memory_format=torch.channels_last)
        layouts = record_channels_last(model, BayesConv2d)
        torch.manual_seed(11)
        channels_last = bayes_logits(model, x, 3, networks=True)
    # float rounding of logits of order 100 (the randomised means are large), not another draw
    torch.testing.assert_close(channels_last, nchw, rtol=1e-4, atol=1e-5 * nchw.abs().max().item())
    assert layouts == [True, True] * 3


def test_bayes_logits_and_layers_errors():
    plain = LeNet(10)
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match='no Bayesian layers'):
        bayes_logits(plain, x, 3)
    with pytest.raises(ValueError, match='no Bayesian layers'):
        kl_divergence(plain)
    with pytest.raises(ValueError, match='samples'):
        bayes_logits(LeNet(10, layers=BayesLayers()), x, -1)
    with pytest.raises(ValueError, match='sigma_init'):
        BayesLayers(sigma_init=0.01, sigma_min=0.01)
    with pytest.raises(ValueError, match='prior_scale'):
        BayesLinear(2, 2, prior_scale=0.)
    with pytest.raises(ValueError, match='labels'):
        negative_elbo(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), torch.tensor(1.), 10)


def test_negative_elbo_terms():
    torch.manual_seed(7)
    logits, labels, kl = torch.randn(3, 5, 4), torch.randint(0, 4, (5,)), torch.tensor(12.)
    out = negative_elbo(logits, labels, kl, n_train=60, beta=0.5)
    # mean over samples and examples of $-\log p(y | x, w_s)$, from torch.distributions
    nll = -torch.distributions.Categorical(logits=logits).log_prob(labels).mean()
    assert torch.allclose(out.nll, nll)
    assert torch.allclose(out.kl, torch.tensor(0.5 * 12. / 60))
    assert torch.allclose(out.loss, nll + 0.1)
    # [N, K] logits are one sample
    assert torch.allclose(negative_elbo(logits[0], labels, kl, 60).nll,
                          -torch.distributions.Categorical(logits=logits[0]).log_prob(labels).mean())


# ---------------------------------------------------------------------------------------------------
# MLP


def test_mlp_shapes_and_factory_flags():
    calls = []

    class Recording(Layers):
        def linear(self, in_features, out_features, *, first=False, last=False):
            calls.append((in_features, out_features, first, last))
            return super().linear(in_features, out_features)

    model = MLP(10, layers=Recording())
    assert calls == [(784, 1024, True, False), (1024, 1024, False, False), (1024, 1024, False, False),
                     (1024, 10, False, True)]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sum(isinstance(m, nn.LeakyReLU) for m in model.modules()) == 3
    # the plain factory (no `first` keyword) still builds it
    assert MLP(3, in_features=6, hidden=(4,))(torch.randn(2, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match='784'):
        model(torch.randn(2, 1, 20, 20))


# ---------------------------------------------------------------------------------------------------
# The ELBO against Pyro's estimate for the same model and guide


def _pyro_model(net: MLP, prior_scale: float):
    """The Pyro model of `net`: `PyroSample` priors on every weight and bias, a categorical likelihood."""
    pyro = pytest.importorskip('pyro')
    import pyro.distributions as dist
    from pyro.nn import PyroModule, PyroSample

    layers = bayes_layers(net)

    class PyroMLP(PyroModule):
        r"""$w \sim \mathcal{N}(0, s^2)$ for every weight and bias; $y_n \sim \text{Categorical}(\text{logits} = f(x_n; w))$."""

        def __init__(self):
            super().__init__()
            for i, layer in enumerate(layers):
                setattr(self, f'w{i}', PyroSample(dist.Normal(0., prior_scale).expand(layer.weight_mu.shape)
                                                  .to_event(2)))
                setattr(self, f'b{i}', PyroSample(dist.Normal(0., prior_scale).expand(layer.bias_mu.shape)
                                                  .to_event(1)))

        def forward(self, x, y):
            h = x
            for i in range(len(layers)):
                w, b = getattr(self, f'w{i}'), getattr(self, f'b{i}')
                # `[P, out, in]` with P vectorised particles (or 1)
                w, b = w.reshape((-1,) + w.shape[-2:]), b.reshape(-1, 1, b.shape[-1])
                h = h @ w.transpose(-1, -2) + b
                if i < len(layers) - 1:
                    h = F.leaky_relu(h)
            with pyro.plate('data', x.shape[0]):
                pyro.sample('obs', dist.Categorical(logits=h), obs=y)

    return PyroMLP()


def _auto_normal_guide(model, layers):
    """Pyro's `AutoNormal`, its locations set to our mu and its scales to our sigma."""
    from pyro.distributions import constraints
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.autoguide.initialization import init_to_value
    from pyro.nn import PyroParam

    values = {}
    for i, layer in enumerate(layers):
        values[f'w{i}'], values[f'b{i}'] = layer.weight_mu.detach().clone(), layer.bias_mu.detach().clone()
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=values))
    return guide, lambda: [
        setattr(guide.scales, f'{kind}{i}', PyroParam(sigma.detach().clone(), constraints.softplus_positive,
                                                      event_dim=event_dim))
        for i, layer in enumerate(layers)
        for kind, sigma, event_dim in (('w', layer.weight_sigma, 2), ('b', layer.bias_sigma, 1))]


def _hand_written_guide(layers):
    """$q(w) = \\mathcal{N}(\\mu, \\sigma^2)$ at every site, written out."""
    import pyro
    import pyro.distributions as dist

    def guide(x, y):
        for i, layer in enumerate(layers):
            pyro.sample(f'w{i}', dist.Normal(layer.weight_mu.detach(), layer.weight_sigma.detach()).to_event(2))
            pyro.sample(f'b{i}', dist.Normal(layer.bias_mu.detach(), layer.bias_sigma.detach()).to_event(1))
    return guide


# AutoNormal samples an unconstrained auxiliary site (its KL is never analytic): Trace_ELBO estimates
# KL by Monte Carlo. The hand-written Normal guide with TraceMeanField_ELBO has Pyro's analytic KL.
@pytest.mark.parametrize('guide_kind, elbo_name', [('auto_normal', 'Trace_ELBO'),
                                                   ('hand_written', 'TraceMeanField_ELBO')])
def test_negative_elbo_matches_pyro(guide_kind, elbo_name):
    torch.manual_seed(8)
    n, d, k, prior_scale = 8, 5, 3, 0.7
    net = MLP(k, in_features=d, hidden=(4,), layers=BayesLayers(prior_scale, sigma_init=0.1, sigma_min=0.01))
    randomise(net)
    x, y = torch.randn(n, d), torch.randint(0, k, (n,))

    # Ours: $N \cdot$ (mean CE + KL / N) over S sampled networks, with the MC standard error of the CE part
    s = 40000
    with torch.no_grad():
        logits = bayes_logits(net, x, s)
        kl = kl_divergence(net)
        out = negative_elbo(logits, y, kl, n_train=n)
        # $\sum_n -\log p(y_n | x_n, w_s)$ per sample s
        nll_per_sample = F.cross_entropy(logits.reshape(-1, k), y.repeat(s), reduction='none').view(s, n).sum(1)
    ours = n * out.loss.item()
    assert ours == pytest.approx(nll_per_sample.mean().item() + kl.item(), rel=1e-5)
    se_ours = nll_per_sample.std().item() / math.sqrt(s)

    # Pyro: the same model (priors by PyroSample) and guide (our mu and sigma)
    model = _pyro_model(net, prior_scale)
    import pyro
    import pyro.infer
    pyro.clear_param_store()
    pyro.set_rng_seed(8)
    layers = bayes_layers(net)
    if guide_kind == 'auto_normal':
        guide, set_scales = _auto_normal_guide(model, layers)
        guide(x, y)
        set_scales()
        with torch.no_grad():
            for i, layer in enumerate(layers):
                assert torch.allclose(getattr(guide.locs, f'w{i}'), layer.weight_mu)
                assert torch.allclose(getattr(guide.scales, f'w{i}'), layer.weight_sigma, rtol=1e-5)
                assert torch.allclose(getattr(guide.scales, f'b{i}'), layer.bias_sigma, rtol=1e-5)
    else:
        guide = _hand_written_guide(layers)
    with torch.no_grad():
        elbo = getattr(pyro.infer, elbo_name)(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
        # independent repeats give Pyro's estimate and its standard error
        repeats = torch.tensor([float(elbo.loss(model, guide, x, y)) for _ in range(20)], dtype=torch.float64)
    theirs = repeats.mean().item()
    se_theirs = repeats.std().item() / math.sqrt(len(repeats))

    tol = 4 * math.sqrt(se_ours ** 2 + se_theirs ** 2)
    assert abs(ours - theirs) <= tol, (ours, theirs, tol)
    # Power: a KL with the wrong sign, or not scaled by 1/N, would be far outside the tolerance
    assert 2 * kl.item() > 10 * tol
    assert (n - 1) * kl.item() > 10 * tol


# ---------------------------------------------------------------------------------------------------
# Training sanity


def test_tiny_training_decreases_the_loss():
    torch.manual_seed(9)
    n, d, k = 64, 10, 3
    x = torch.randn(n, d)
    # linearly separable labels from a random teacher
    y = (x @ torch.randn(d, k)).argmax(1)
    net = MLP(k, in_features=d, hidden=(16,), layers=BayesLayers(prior_scale=1., sigma_init=0.1, sigma_min=0.01))
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    losses, nlls = [], []
    for _ in range(80):
        out = negative_elbo(bayes_logits(net, x, 4), y, kl_divergence(net), n_train=n, beta=0.1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        nlls.append(out.nll.item())
    assert all(loss > 0 for loss in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert sum(nlls[-10:]) / 10 < sum(nlls[:10]) / 10
    with torch.no_grad(), posterior_mean(net):
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8
