"""Deep Deterministic Uncertainty (`ddu_mnist`): the GDA against `torch.distributions` and numpy, the jitter search
against the DDU code's linear scan, the spectral-norm coefficient against exact matrix norms (and PyTorch's own
spectral norm at c = 1), the feature-collapse check of the residual body, and the checkpoint's GDA loaded, never
refitted. The family's train / resume / evaluate / compare: tests/test_families.py."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evidential.gda import JITTERS, GaussianDiscriminant, GDAFitError, find_jitter
from evidential.models.ddu import ResLeNet, SpectralLayers, feature_distance_ratios
from evidential.spectral import SoftSpectralNorm, constraint, lipschitz_bound, soft_spectral_norm


def _features(n_per_class, dim, n_classes=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    centres = torch.randn(n_classes, dim, generator=g) * 3
    mixing = torch.randn(n_classes, dim, dim, generator=g) / dim ** 0.5
    z = centres[labels] + torch.einsum('nd,nde->ne', torch.randn(len(labels), dim, generator=g), mixing[labels])
    return (z * scale).float(), labels


# ---------------------------------------------------------------------- the GDA


def test_gda_log_density_is_torch_distributions_multivariate_normal():
    z, labels = _features(40, 6, n_classes=3)
    labels = labels[5:]  # unequal classes: the priors matter
    z = z[5:]
    gda = GaussianDiscriminant.fit(z, labels, 3)
    assert gda.jitter == 0.0  # 40 images of 6 dimensions: a full-rank covariance
    # numpy's per-class mean and covariance (ddof = 1) as the independent fit
    for c in range(3):
        zc = z[labels == c].double().numpy()
        np.testing.assert_allclose(gda.means[c].numpy(), zc.mean(0), rtol=1e-12)
        np.testing.assert_allclose((gda.scale_tril[c] @ gda.scale_tril[c].T).numpy(), np.cov(zc.T, ddof=1),
                                   rtol=1e-10, atol=1e-12)
    counts = torch.bincount(labels).double()
    np.testing.assert_allclose(gda.log_priors.exp().numpy(), (counts / counts.sum()).numpy(), rtol=1e-12)
    reference = torch.distributions.MultivariateNormal(
        gda.means, covariance_matrix=torch.stack([torch.from_numpy(np.cov(z[labels == c].double().numpy().T))
                                                  for c in range(3)]))
    queries = torch.cat([z[:7], torch.randn(5, 6, generator=torch.Generator().manual_seed(1)) * 10]).double()
    per_class = reference.log_prob(queries[:, None, :])
    torch.testing.assert_close(gda.class_log_likelihoods(queries), per_class, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(gda.log_density(queries),
                               torch.logsumexp(per_class + (counts / counts.sum()).log(), dim=-1), rtol=1e-10, atol=1e-9)
    # far-away features are less likely than the training features
    assert gda.log_density(queries[7:]).max() < gda.log_density(queries[:7]).min()


def _ddu_gmm_fit_jitter(embeddings, labels, num_classes):
    """The DDU code's `gmm_fit` (`utils/gmm_utils.py`): its class means, covariances and jitter list, and the first
    jitter for which `MultivariateNormal` accepts every class's covariance — tested here with the distribution's own
    check (`constraints.positive_definite`, which its constructor runs) on the whole list at once, then confirmed by
    constructing it (its loop catches the refusal; the texts it matches are those of an older torch)."""
    means = torch.stack([torch.mean(embeddings[labels == c], dim=0) for c in range(num_classes)])
    covs = torch.stack([1 / ((labels == c).sum() - 1) * (embeddings[labels == c] - means[c]).t().mm(
        embeddings[labels == c] - means[c]) for c in range(num_classes)])
    # `jitter_eps * torch.eye(d)`, as the DDU code adds it (a float32 identity)
    jittered = torch.stack([covs + jitter_eps * torch.eye(covs.shape[1]).unsqueeze(0) for jitter_eps in JITTERS])
    accepted = torch.distributions.constraints.positive_definite.check(jittered).all(-1)
    first = int(accepted.nonzero()[0])
    torch.distributions.MultivariateNormal(loc=means, covariance_matrix=jittered[first])
    if first > 0:
        with pytest.raises(ValueError):
            torch.distributions.MultivariateNormal(loc=means, covariance_matrix=jittered[first - 1])
    return JITTERS[first]


@pytest.mark.parametrize('case', ['fewer_images_than_dimensions', 'a_dead_unit', 'large_features', 'full_rank'])
def test_jitter_search_picks_what_the_ddu_code_picks(case):
    z, labels = _features(30, 12)
    if case == 'fewer_images_than_dimensions':
        z, labels = _features(8, 12)  # 8 images of 12 dimensions per class: rank 7
    elif case == 'a_dead_unit':
        z[:, 3] = 0.0  # a unit that is 0 for every image (a dead ReLU): a zero row and column
    elif case == 'large_features':
        z, labels = _features(8, 12, scale=1e4)
    z = z.double()
    expected = _ddu_gmm_fit_jitter(z, labels, 3)
    gda = GaussianDiscriminant.fit(z, labels, 3)
    assert gda.jitter == expected
    assert (expected == 0.0) == (case == 'full_rank')


def test_gda_refuses_what_it_cannot_fit():
    z, labels = _features(5, 4)
    with pytest.raises(GDAFitError, match='at least two'):
        GaussianDiscriminant.fit(z[:6], labels[:6], 3)  # class 1 has one image, class 2 none
    bad = z.clone()
    bad[0, 0] = float('nan')
    with pytest.raises(GDAFitError, match='finite'):
        GaussianDiscriminant.fit(bad, labels, 3)
    with pytest.raises(GDAFitError, match='jitter'):
        find_jitter(-torch.eye(4)[None])  # negative definite: no jitter of the list helps


# ---------------------------------------------------------------------- spectral normalisation


def _conv_operator_norm(conv: nn.Conv2d, size: int, steps: int = 200) -> float:
    """The largest singular value of `conv` as a linear map of `[1, C, size, size]` inputs, by power iteration
    through conv2d and its adjoint conv_transpose2d (the DDU code's `spectral_norm_conv`)."""
    weight = conv.weight.detach()
    v = F.normalize(torch.randn(1, conv.in_channels, size, size, generator=torch.Generator().manual_seed(0)).flatten(),
                    dim=0).view(1, conv.in_channels, size, size)
    for _ in range(steps):
        u = F.conv2d(v, weight, stride=conv.stride, padding=conv.padding)
        v = F.conv_transpose2d(u, weight, stride=conv.stride, padding=conv.padding)
        v = v / v.norm()
    return F.conv2d(v, weight, stride=conv.stride, padding=conv.padding).norm().item()


@pytest.mark.parametrize('layer', ['linear', 'conv'])
def test_spectral_norm_of_each_constrained_layer_is_at_most_its_coefficient(layer):
    torch.manual_seed(0)
    coeff = 0.7
    make = (lambda: nn.Linear(30, 20)) if layer == 'linear' else (lambda: nn.Conv2d(3, 8, 5))
    big, small = make(), make()
    with torch.no_grad():
        big.weight.mul_(10)  # sigma well above c: scaled down to c
        small.weight.mul_(0.1 / torch.linalg.matrix_norm(small.weight.flatten(1), ord=2))  # sigma = 0.1 < c: kept
    originals = {id(m): m.weight.detach().clone() for m in (big, small)}
    x = torch.randn(4, 30) if layer == 'linear' else torch.randn(4, 3, 12, 12)
    for module in (big, small):
        soft_spectral_norm(module, coeff)
        for _ in range(50):  # training forwards: one power-iteration step each
            module(x)
        module.eval()
        original = originals[id(module)]
        exact = torch.linalg.matrix_norm(original.flatten(1), ord=2)
        # the power-iteration estimate against the exact largest singular value of the reshaped weight
        torch.testing.assert_close(constraint(module).sigma(original), exact, rtol=1e-3, atol=0)
        constrained = torch.linalg.matrix_norm(module.weight.detach().flatten(1), ord=2)
        assert constrained <= coeff * (1 + 1e-3)  # sigma-hat <= sigma: over c by the estimate's error
    torch.testing.assert_close(torch.linalg.matrix_norm(big.weight.detach().flatten(1), ord=2), torch.tensor(coeff),
                               rtol=1e-3, atol=0)
    assert torch.equal(small.weight.detach(), originals[id(small)])  # soft: a weight within the bound is unchanged
    if layer == 'conv':
        # the matrix bound bounds the convolution as an operator by sqrt(kh * kw) * c (evidential/spectral.py)
        assert lipschitz_bound(big, coeff) == pytest.approx(5 * coeff)
        assert coeff * 0.5 < _conv_operator_norm(big, 12) <= lipschitz_bound(big, coeff)
        one_by_one = soft_spectral_norm(nn.Conv2d(3, 8, 1), coeff)
        with torch.no_grad():
            one_by_one.parametrizations.weight.original.mul_(10)
        for _ in range(20):
            one_by_one(x)
        one_by_one.eval()
        # a 1x1 convolution's operator norm is its matrix's: the bound is tight
        assert _conv_operator_norm(one_by_one, 12) == pytest.approx(coeff, rel=1e-3)


def test_coefficient_one_is_torchs_spectral_norm():
    """c = 1 on a weight with sigma > 1: the same weight as `torch.nn.utils.parametrizations.spectral_norm`, step for
    step (same initial vectors, same power iteration), and a gradient through it."""
    torch.manual_seed(3)
    ours, theirs = nn.Linear(16, 9), nn.Linear(16, 9)
    with torch.no_grad():
        ours.weight.mul_(20)
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
    torch.manual_seed(4)
    soft_spectral_norm(ours, 1.0)
    torch.manual_seed(4)
    torch.nn.utils.parametrizations.spectral_norm(theirs)
    x = torch.randn(5, 16)
    for _ in range(3):
        a, b = ours(x), theirs(x)
        torch.testing.assert_close(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(ours.parametrizations.weight.original.grad, theirs.parametrizations.weight.original.grad)
    assert isinstance(ours.parametrizations.weight[0], SoftSpectralNorm)
    with pytest.raises(ValueError, match='> 0'):
        SoftSpectralNorm(torch.ones(2, 2), 0.0)


# ---------------------------------------------------------------------- the body: smooth, with a path for the input


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g)


def _inflated(residual: bool, coeff: float, factor: float = 20.0) -> ResLeNet:
    """A DDU LeNet whose constrained weights are `factor` times their initial values (as training can make them),
    after enough training forwards for the power iteration to settle; in eval mode."""
    torch.manual_seed(0)
    model = ResLeNet(10, residual=residual, layers=SpectralLayers(coeff))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('weight') or name.endswith('original'):
                p.mul_(factor)
        for _ in range(30):
            model(_images(8))
    return model.eval()


def test_spectral_norm_bounds_the_feature_extractor_and_shortcuts_keep_the_input():
    """Smoothness: with every constrained matrix at norm <= c, each stage is at most (5c + c)-Lipschitz (5x5
    convolution plus 1x1 shortcut; max-pooling and leaky ReLU are 1-Lipschitz) and the 800 -> 500 layer c, so
    ||f(x) - f(x')|| <= 36 c^3 ||x - x'|| however large the weights grow; the same network without spectral
    normalisation goes far past it. Sensitivity's mechanism: with the 5x5 convolutions zeroed, the shortcuts still
    carry the input to distinct features, where the plain LeNet's features collapse to one point."""
    coeff = 0.5
    bound = (5 * coeff + coeff) ** 2 * coeff
    x, x_other = _images(64, 1), _images(64, 2)
    near = x + 0.05 * _images(64, 3)
    constrained, free = _inflated(True, coeff), _inflated(True, 0.0)
    for other in (x_other, near):
        assert feature_distance_ratios(constrained.features, x, other).max() <= bound
        assert feature_distance_ratios(free.features, x, other).max() > 10 * bound
    for residual in (True, False):
        torch.manual_seed(0)
        model = ResLeNet(10, residual=residual).eval()
        with torch.no_grad():
            for stage in (model.stage1, model.stage2):
                stage.conv.weight.zero_()
                stage.conv.bias.zero_()
        ratios = feature_distance_ratios(model.features, x, x_other)
        assert (ratios.min() > 0.01 * ratios.median()) if residual else torch.equal(ratios, torch.zeros_like(ratios))


# ---------------------------------------------------------------------- the checkpoint keeps the GDA


def test_checkpoint_round_trip_gives_identical_scores_without_refitting(workdir, synthetic_data_dir, monkeypatch):
    from configs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from configs.ddu import SCORE, DDUConfigs
    from configs.runner import load_trained
    from experiments.train import main as train
    monkeypatch.chdir(workdir)
    fitted = []
    real_fit = DDUConfigs.fit_density

    def recording_fit(self, split):
        fitted.append((self, real_fit(self, split)))
        return fitted[-1][1]

    monkeypatch.setattr(DDUConfigs, 'fit_density', recording_fit)
    assert train('ddu_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu']) == 0
    (run,) = (workdir / 'logs' / 'ddu_mnist').iterdir()
    trained, gda = fitted[-1]
    test = trained.dataset.test
    reference, _ = trained.evaluate(test)  # the training process's own scores

    def refuse(*args, **kwargs):
        raise AssertionError('the GDA was refitted')

    monkeypatch.setattr(GaussianDiscriminant, 'fit', refuse)
    _, conf, _, state = load_trained(run.name)
    loaded, _ = conf.evaluate(test)
    assert torch.equal(loaded.scores[SCORE], reference.scores[SCORE]) and torch.equal(loaded.probs, reference.probs)
    assert state['gda']['jitter'] == gda.jitter and torch.equal(state['gda']['scale_tril'], gda.scale_tril)
    # the saved density, through torch.distributions, on the loaded network's features
    with torch.no_grad():
        z = conf.model.features(test.images[:32]).double()
    mvn = torch.distributions.MultivariateNormal(state['gda']['means'], scale_tril=state['gda']['scale_tril'])
    expected = -torch.logsumexp(mvn.log_prob(z[:, None]) + state['gda']['log_priors'], dim=-1)
    torch.testing.assert_close(loaded.scores[SCORE][:32].double(), expected, rtol=1e-5, atol=1e-3)
    # a checkpoint without its GDA is refused, not refitted
    del state['gda']
    save_checkpoint(run, state)
    with pytest.raises(CheckpointError, match='no fitted feature density'):
        load_trained(run.name)
    assert 'gda' not in load_checkpoint(run)
