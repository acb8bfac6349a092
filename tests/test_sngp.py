"""SNGP (`sngp_mnist`): the random Fourier features against the exact RBF kernel and the variance of their estimate,
the Laplace precision against a sum of outer products, its inverse against `torch.linalg.inv`, the mean-field
logits against their closed form, the last epoch's accumulation against the features of its training forwards, and
the checkpoint's covariance loaded, never recomputed. The family's train / resume / evaluate / compare:
tests/test_families.py."""
import math

import pytest
import torch

from evidential.sngp import MEAN_FIELD_FACTOR, CovarianceError, LaplacePrecision, RandomFourierFeatures, \
    mean_field_logits, predictive_variance


def _points(n, d, seed, scale=1.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def test_random_fourier_features_approach_the_rbf_kernel_as_one_over_sqrt_d():
    r"""phi(x)^T phi(y) is an unbiased estimate of exp(-||x - y||^2 / (2 l^2)) whose variance over the draws of
    W, b is exactly (1 + k(2 Delta) / 2 - k(Delta)^2) / D (cos a cos c = (cos(a - c) + cos(a + c)) / 2): the mean
    squared error over 16 draws matches it at every D (a bias would add its square, which the largest D would
    show), so the error shrinks as 1 / sqrt(D)."""
    lengthscale, d = 1.5, 6
    x, y = _points(12, d, 0, 0.8), _points(12, d, 1, 0.8)
    sq_dist = torch.cdist(x, y).square()
    exact = torch.exp(-sq_dist / (2 * lengthscale ** 2))
    # the variance of one feature's product, with k(2 Delta) = exp(-4 ||Delta||^2 / (2 l^2))
    per_feature = 1 + torch.exp(-4 * sq_dist / (2 * lengthscale ** 2)) / 2 - exact ** 2
    rms = {}
    for n_features in (64, 1024, 16384):
        errors = []
        for seed in range(16):
            rff = RandomFourierFeatures(d, n_features, lengthscale, torch.Generator().manual_seed(seed)).double()
            errors.append(rff(x) @ rff(y).T - exact)
        errors = torch.stack(errors)
        mse, expected = errors.square().mean(), per_feature.mean() / n_features
        assert 0.8 < mse / expected < 1.25, (n_features, mse / expected)
        rms[n_features] = mse.sqrt().item()
    # 16x the features, 1/4 of the error
    assert rms[1024] / rms[64] == pytest.approx(0.25, rel=0.15)
    assert rms[16384] / rms[1024] == pytest.approx(0.25, rel=0.15)
    assert rms[16384] < 0.01


def test_precision_is_the_sum_of_weighted_outer_products_and_its_inverse_is_torchs():
    n_features, ridge = 40, 0.5
    phis = [_points(n, n_features, seed, 0.3) for seed, n in enumerate((7, 11, 5))]
    logits = [_points(len(p), 4, 10 + i, 3.0) for i, p in enumerate(phis)]
    for likelihood in ('laplace', 'gaussian'):
        precision = LaplacePrecision(n_features, ridge, likelihood)
        for phi, g in zip(phis, logits):
            precision.add(phi.float(), g)
        # the direct sum, image by image: s I + sum_i w_i phi_i phi_i^T
        direct = ridge * torch.eye(n_features, dtype=torch.float64)
        for phi, g in zip(phis, logits):
            for phi_i, g_i in zip(phi.float().double(), g):
                p = torch.softmax(g_i, 0).max() if likelihood == 'laplace' else torch.tensor(0.5)
                weight = p * (1 - p) if likelihood == 'laplace' else 1.0
                direct += weight * torch.outer(phi_i, phi_i)
        assert precision.n_images == 23
        torch.testing.assert_close(precision.matrix, direct, rtol=1e-12, atol=1e-12)
        # the covariance: s times the inverse, as torch.linalg.inv computes it
        torch.testing.assert_close(precision.covariance(), ridge * torch.linalg.inv(direct), rtol=1e-10, atol=1e-12)
    with pytest.raises(CovarianceError, match='no training image'):
        LaplacePrecision(3).covariance()
    bad = LaplacePrecision(3)
    bad.add(torch.ones(1, 3), torch.zeros(1, 2))
    bad.matrix[0, 0] = -5.0
    with pytest.raises(CovarianceError, match='positive definite'):
        bad.covariance()


def test_mean_field_logits_are_the_closed_form():
    phi, logits = _points(9, 30, 0, 0.2), _points(9, 5, 1, 4.0)
    a = _points(30, 30, 2)
    covariance = a @ a.T / 30 + torch.eye(30, dtype=torch.float64)
    variance = predictive_variance(phi, covariance)
    # sigma^2(x) = phi^T Sigma phi, one image at a time
    expected_variance = torch.stack([phi_i @ covariance @ phi_i for phi_i in phi])
    torch.testing.assert_close(variance, expected_variance)
    expected = torch.stack([g / math.sqrt(1 + math.pi / 8 * v) for g, v in zip(logits, expected_variance.tolist())])
    torch.testing.assert_close(mean_field_logits(logits, variance), expected)
    assert MEAN_FIELD_FACTOR == math.pi / 8
    torch.testing.assert_close(mean_field_logits(logits, variance, 0.0), logits)


def test_last_epoch_precision_and_a_checkpoint_round_trip_without_recomputing(workdir, synthetic_data_dir,
                                                                             monkeypatch):
    """A two-epoch run with outliers: the precision holds the GP features of the last epoch's training images (as
    a second hook on the GP layer sees them, outliers left out), the covariance is its inverse, and the loaded run
    scores bit-identically with every accumulation and inversion refused."""
    from configs.checkpoint import CheckpointError, save_checkpoint
    from configs.runner import load_trained
    from configs.sngp import SCORE, SNGPConfigs
    from experiments.train import main as train
    monkeypatch.chdir(workdir)
    seen = {}
    real_train_epoch, real_invert = SNGPConfigs._train_epoch, SNGPConfigs.invert_precision

    def recording_train_epoch(self, epoch, generator, samples_seen):
        normed, logits = [], []
        # the GP layer's layer-normalised input and its logits at every training forward, recorded apart from the
        # family's hook (the layer norm's scales change with every step)
        hooks = [self.model.out.norm.register_forward_hook(lambda m, args, out: normed.append(out.detach())),
                 self.model.out.register_forward_hook(lambda m, args, out: logits.append(out.detach()))]
        try:
            return real_train_epoch(self, epoch, generator, samples_seen)
        finally:
            for hook in hooks:
                hook.remove()
            seen[epoch] = list(zip(normed, logits))

    def recording_invert(self):
        seen['precision'] = self.__dict__['_precision'][0].matrix.clone()
        seen['conf'] = self
        return real_invert(self)

    monkeypatch.setattr(SNGPConfigs, '_train_epoch', recording_train_epoch)
    monkeypatch.setattr(SNGPConfigs, 'invert_precision', recording_invert)
    args = ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu', 'epochs=2', 'sngp_features=64',
            'outlier_coef=0.5', 'train_batch_size=64']
    assert train('sngp_mnist', args) == 0
    (run,) = (workdir / 'logs' / 'sngp_mnist').iterdir()
    conf = seen['conf']
    n_train = len(conf.dataset.train)
    direct = torch.eye(64, dtype=torch.float64)
    n_images = 0
    for normed, logits in seen[1]:
        batch = len(normed) * 2 // 3  # a batch and half as many outliers
        # phi = sqrt(2 / D) cos(W h + b), from the layer's fixed W and b
        w, b = conf.model.out.features.weight.double(), conf.model.out.features.bias.double()
        phi = math.sqrt(2 / 64) * torch.cos(normed[:batch].double() @ w.T + b)
        p = logits[:batch].double().softmax(-1).amax(-1)
        direct += (phi * (p * (1 - p))[:, None]).T @ phi
        n_images += batch
    assert n_images == n_train and len(seen[1]) == n_train // 64
    torch.testing.assert_close(seen['precision'], direct, rtol=1e-5, atol=1e-6)  # phi in float32
    torch.testing.assert_close(conf.covariance(), torch.linalg.inv(direct).float(), rtol=1e-4, atol=1e-6)
    test = conf.dataset.test
    reference, _ = conf.evaluate(test)

    def refuse(*args, **kwargs):
        raise AssertionError('the covariance was recomputed')

    monkeypatch.setattr(LaplacePrecision, 'add', refuse)
    monkeypatch.setattr(LaplacePrecision, 'covariance', refuse)
    _, loaded_conf, _, state = load_trained(run.name)
    loaded, _ = loaded_conf.evaluate(test)
    assert torch.equal(loaded.scores[SCORE], reference.scores[SCORE]) and torch.equal(loaded.probs, reference.probs)
    assert state['sngp']['epoch'] == 2 and state['sngp']['images'] == n_train
    assert torch.equal(state['sngp']['covariance'], conf.covariance())
    # the far-away inputs of the GP prior: a variance near its prior value ||phi||^2 ~ 1, above the test images'
    with torch.no_grad():
        far = loaded_conf.eval_forward(test.images[:16] * 50)[:, -1]
    assert far.median() > reference.scores[SCORE].median()
    # an earlier epoch's checkpoint has no covariance: resumable, not evaluable; a completed one must have it
    state['sngp'], state['status'] = None, 'interrupted'
    save_checkpoint(run, state)
    _, early, _, _ = load_trained(run.name)
    with pytest.raises(CheckpointError, match='no GP covariance'):
        early.evaluate(test)
    state['status'] = 'completed'
    save_checkpoint(run, state)
    with pytest.raises(CheckpointError, match='completed run has no GP covariance'):
        load_trained(run.name)
