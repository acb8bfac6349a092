"""The hand-written probabilistic circuit against brute-force enumeration on tiny images."""
import itertools

import pytest
import torch

from evidential.models.circuit import PixelCircuit, bits_per_dim, hybrid_loss, morton_layout, neg_log_density, \
    region_layout

# 3 x 2 pixels (padded to a 4 x 4 Morton square), 3 values each: 3^6 = 729 images
H, W, V, K = 3, 2, 3, 2


#: (layer type, region graph, input units, sum units): every structure the family can build
STRUCTURES = [('cp', 'quad-tree-2', 3, 3, 'mixture', 'categorical'), ('cp', 'quad-tree-2', 2, 4, 'layer', 'categorical'),
              ('cp', 'quad-tree-2', 3, 2, 'layer', 'binomial'),
              ('cp', 'random-binary-tree', 3, 2, 'mixture', 'categorical'),
              ('tucker', 'quad-tree-2', 2, 3, 'mixture', 'binomial'),
              ('tucker', 'random-binary-tree', 3, 3, 'layer', 'categorical')]


@pytest.fixture(params=STRUCTURES, ids=['-'.join(map(str, s)) for s in STRUCTURES])
def circuit(request) -> PixelCircuit:
    layer_type, region_graph, n_in, n_sum, root_layer, input_layer = request.param
    torch.manual_seed(0)
    # float64 and spread-out parameters, so that a wrong sum or product shows above round-off
    return PixelCircuit(n_classes=K, height=H, width=W, num_input_units=n_in, num_sum_units=n_sum,
                        n_categories=V, layer_type=layer_type, region_graph=region_graph, graph_seed=3,
                        root_layer=root_layer, input_layer=input_layer, init_std=2.).double()


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
    # The random tree: the same pixels and padding, shuffled, the same for the same seed
    _, shuffled = region_layout(3, 2, 'random-binary-tree', seed=3)
    assert sorted(shuffled.tolist()) == sorted(idx.tolist()) and not torch.equal(shuffled, idx)
    assert torch.equal(shuffled, region_layout(3, 2, 'random-binary-tree', seed=3)[1])
    with pytest.raises(ValueError, match='region_graph'):
        region_layout(3, 2, 'poon-domingos')


def test_structure_sizes():
    # CP over 32 x 32 slots: 9 mixing levels (the first is absorbed); Tucker: 10, with U_a U_b inputs per unit
    cp = PixelCircuit(num_input_units=4, num_sum_units=6)
    assert [tuple(p.shape) for p in cp.layer_logits][:2] == [(512, 4, 6), (256, 6, 6)]
    assert len(cp.layer_logits) == 9 and tuple(cp.root_logits.shape) == (6, 10)
    tucker = PixelCircuit(num_input_units=2, num_sum_units=3, layer_type='tucker')
    assert [tuple(p.shape) for p in tucker.layer_logits][:2] == [(512, 4, 3), (256, 9, 3)]
    assert len(tucker.layer_logits) == 10
    with pytest.raises(ValueError, match='layer_type'):
        PixelCircuit(layer_type='dense')
    # cirkit's class outputs: the last layer has one unit per class, no root mixture
    top = PixelCircuit(num_input_units=4, num_sum_units=6, root_layer='layer')
    assert tuple(top.layer_logits[-1].shape) == (2, 6, 10) and top.root_logits is None
    with pytest.raises(ValueError, match='root_layer'):
        PixelCircuit(root_layer='product')
    with pytest.raises(ValueError, match='input_layer'):
        PixelCircuit(input_layer='gaussian')


def test_binomial_inputs_against_torch_distributions():
    torch.manual_seed(5)
    model = PixelCircuit(n_classes=2, height=2, width=2, num_input_units=3, input_layer='binomial').double()
    x = torch.randint(256, (7, 4))
    theta = model.input_logits[:, 0]                                             # [D, U]
    expected = torch.distributions.Binomial(255, logits=theta[:, None, :]).log_prob(x.t()[:, :, None].double())
    torch.testing.assert_close(model.input_log_probs(x), expected)
    assert model.input_logits.numel() == 4 * 3


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
    model = PixelCircuit(n_classes=10, num_input_units=2)
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


def test_density_of_the_class_mixture_is_normalised(circuit):
    # $p(x) = \frac{1}{K} \sum_y p(x | y)$ sums to one over every image; bits/dim is its log2 per pixel
    with torch.no_grad():
        lj = circuit.log_joint(all_images())
    nld = neg_log_density(lj)
    assert torch.allclose((-nld).logsumexp(0), torch.zeros((), dtype=lj.dtype), atol=1e-10)
    expected = -torch.log(lj.exp().mean(-1))
    assert torch.allclose(nld, expected, atol=1e-10)
    assert torch.allclose(bits_per_dim(nld, H * W), expected / (H * W) / torch.log(torch.tensor(2.)).double())


@pytest.mark.parametrize('lam', [0.0, 0.25, 1.0])
def test_hybrid_loss_against_torch_distributions(lam):
    torch.manual_seed(4)
    lj = (torch.randn(9, 10, dtype=torch.float64) * 30 - 2000).requires_grad_()
    y = torch.randint(10, (9,))
    loss, ce, gen = hybrid_loss(lj, y, lam, n_pixels=784)
    # p(y | x) by Bayes' rule under a uniform prior: a categorical with logits log p(x | y)
    ref_ce = -torch.distributions.Categorical(logits=lj).log_prob(y).mean()
    ref_gen = -lj[torch.arange(9), y].mean() / 784
    torch.testing.assert_close(ce, ref_ce)
    torch.testing.assert_close(gen, ref_gen)
    torch.testing.assert_close(loss, lam * ref_ce + (1 - lam) * ref_gen)
    loss.backward()
    assert torch.isfinite(lj.grad).all() and lj.grad.abs().sum() > 0
