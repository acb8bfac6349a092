"""The hand-written probabilistic circuit against brute-force enumeration on tiny images."""
import itertools

import pytest
import torch

from evidential.models.circuit import QuadTreeCircuit, morton_layout

# 3 x 2 pixels (padded to a 4 x 4 Morton square), 3 values each: 3^6 = 729 images
H, W, V, K = 3, 2, 3, 2


@pytest.fixture
def circuit() -> QuadTreeCircuit:
    torch.manual_seed(0)
    # float64 and spread-out parameters, so that a wrong sum or product shows above round-off
    return QuadTreeCircuit(n_classes=K, height=H, width=W, n_units=3, n_categories=V, init_std=2.).double()


def all_images() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(V), repeat=H * W)), dtype=torch.long)


def test_morton_layout():
    side, idx = morton_layout(3, 2)
    assert side == 4
    # Slots 0..3 are the top-left 2 x 2 patch: pixels (0,0), (0,1), (1,0), (1,1)
    assert idx[:4].tolist() == [0, 1, 2, 3]
    # Every real pixel appears exactly once; the other 10 slots are padding
    assert sorted(i for i in idx.tolist() if i < 6) == list(range(6))
    assert (idx == 6).sum() == 10
    assert morton_layout(28, 28)[0] == 32


def test_normalised_per_class(circuit):
    with torch.no_grad():
        lj = circuit.log_joint(all_images())                                     # [729, K]
    assert lj.shape == (V ** (H * W), K)
    assert torch.allclose(lj.logsumexp(dim=0), torch.zeros(K, dtype=lj.dtype), atol=1e-10)
    # The classes are different distributions
    assert not torch.allclose(lj[:, 0], lj[:, 1])


def test_marginals_equal_enumeration(circuit):
    images = all_images()
    with torch.no_grad():
        joint = circuit.log_joint(images)
        torch.manual_seed(1)
        for _ in range(5):
            missing = torch.rand(H * W) < 0.5
            x = images[torch.randint(len(images), (1,))]
            # Brute force: sum the joint over every image that agrees with x on the observed pixels
            agree = (images[:, ~missing] == x[:, ~missing]).all(dim=1)
            expected = joint[agree].logsumexp(dim=0)
            got = circuit.log_joint(x, missing[None])[0]
            assert torch.allclose(got, expected, atol=1e-10), (missing, got, expected)


def test_marginalising_everything_gives_zero(circuit):
    x = all_images()[:7]
    with torch.no_grad():
        lj = circuit.log_joint(x, torch.ones_like(x, dtype=torch.bool))
    assert torch.allclose(lj, torch.zeros(7, K, dtype=lj.dtype), atol=1e-12)


def test_missing_pixel_value_is_ignored_and_masks_are_per_sample(circuit):
    torch.manual_seed(2)
    x = torch.randint(V, (6, H * W))
    mask = torch.rand(6, H * W) < 0.4
    x2 = torch.where(mask, torch.randint(V, x.shape), x)
    with torch.no_grad():
        a, b = circuit.log_joint(x, mask), circuit.log_joint(x2, mask)
        # Each row equals the same sample evaluated alone with its own mask
        rows = torch.cat([circuit.log_joint(x[i:i + 1], mask[i:i + 1]) for i in range(6)])
    assert torch.equal(a, b)
    assert torch.allclose(a, rows, atol=1e-12)


def test_class_posterior_is_bayes_rule(circuit):
    x = all_images()[:4]
    with torch.no_grad():
        lj = circuit.log_joint(x)
        prior = torch.tensor([0.3, 0.7], dtype=lj.dtype).log()
        post = circuit.class_log_posterior(x, log_prior=prior)
    assert torch.allclose(post, (lj + prior) - (lj + prior).logsumexp(-1, keepdim=True))


def test_rejects_bad_inputs(circuit):
    with pytest.raises(ValueError):
        circuit.log_joint(torch.rand(2, H * W))                                  # floats, not pixel values
    with pytest.raises(ValueError):
        circuit.log_joint(torch.full((2, H * W), V))                             # out of range
    with pytest.raises(ValueError):
        circuit.log_joint(torch.zeros(2, H * W + 1, dtype=torch.long))           # wrong number of pixels


def test_mnist_size_is_not_clamped_and_trains():
    # libcirkit 0.3.1 returns -708.4 for every 784-pixel image (its log clamp); here the log-likelihood
    # is the real one (about 784 * log(1/256) = -4347 at initialisation) and gradients flow.
    torch.manual_seed(0)
    model = QuadTreeCircuit(n_classes=10, n_units=2)
    x = torch.randint(256, (4, 28 * 28), dtype=torch.uint8)
    lj = model.log_joint(x)
    assert lj.shape == (4, 10)
    assert torch.isfinite(lj).all() and (lj < -2000).all()
    assert lj.std() > 0
    lj.sum().backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # Half the image missing: a larger (less negative) log-probability, still finite
    mask = torch.zeros(4, 28 * 28, dtype=torch.bool)
    mask[:, :392] = True
    with torch.no_grad():
        assert (model.log_joint(x, mask) > lj.detach()).all()
