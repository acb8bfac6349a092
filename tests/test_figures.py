"""Tests for `experiments.figures` (every plot writes a valid PNG) and for the perturbations they show
(`evidential.perturbations`: FGSM and the rotated digit return the right shapes and behave as they should)."""

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from evidential import perturbations as P
from evidential.dirichlet import opinion
from experiments import figures as F

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, returned):
    assert returned == path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 2000  # a real plot, not an empty canvas
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not one flat colour


def rng(seed=0):
    return np.random.default_rng(seed)


# ## Plots

def test_reliability_diagram(tmp_path):
    g = rng()
    probs = torch.tensor(g.dirichlet(np.full(10, 0.3), size=200))
    labels = torch.tensor(g.integers(0, 10, 200))
    path = tmp_path / "sub" / "reliability.png"  # parent created on demand
    assert_png(path, F.reliability_diagram(probs, labels, path))


def test_uncertainty_histograms(tmp_path):
    g = rng(1)
    path = tmp_path / "u_hist.png"
    out = F.uncertainty_histograms(g.beta(1, 8, 300), torch.tensor(g.beta(3, 3, 20)),
                                   {"fashion": g.beta(5, 2, 100), "noise": g.beta(8, 1, 100)}, path)
    assert_png(path, out)


def test_uncertainty_histograms_allows_no_wrong_predictions(tmp_path):
    path = tmp_path / "u_hist_empty_wrong.png"
    assert_png(path, F.uncertainty_histograms(rng(2).random(50), np.array([]), {}, path))


def test_score_histograms_of_any_range(tmp_path):
    g = rng(6)
    path = tmp_path / "nll_hist.png"  # a score without a fixed range (the circuit's -log p(x)): limits from the data
    out = F.score_histograms(g.normal(300, 20, 400), g.normal(400, 50, 10), {"fashion": g.normal(900, 80, 100)},
                             path, name="-log p(x)", limits=None)
    assert_png(path, out)


def test_one_per_class_picks_distinct_classes_in_order_then_fills_up():
    order = np.array([5, 3, 0, 1, 4, 2])
    classes = np.array([7, 7, 1, 7, 2, 7])  # of index 0, 1, ...
    assert F.one_per_class(order, classes, 3) == [5, 4, 2]  # 5 (class 7), 4 (class 2), 2 (class 1)
    assert F.one_per_class(order, classes, 5) == [5, 4, 2, 3, 0]  # three classes, then the next in order
    assert F.one_per_class(order, classes, 1) == [5]


def test_reliability_diagram_with_sparse_bins(tmp_path):
    g = rng(7)
    probs = np.full((500, 10), 0.01)
    probs[np.arange(500), g.integers(0, 10, 500)] = 0.91  # every sample in one bin ...
    probs[:5] = 0.1  # ... but five
    path = tmp_path / "sparse.png"
    assert_png(path, F.reliability_diagram(probs, g.integers(0, 10, 500), path))


def test_entropy_cdf(tmp_path):
    g = rng(3)
    path = tmp_path / "entropy_cdf.png"
    out = F.entropy_cdf({"EDL / notMNIST": g.random(100) * np.log(10), "softmax / notMNIST": g.random(80)},
                        path, num_classes=10)
    assert_png(path, out)


def test_rotation_plot(tmp_path):
    g = rng(4)
    angles = np.linspace(0, 180, 13)
    probs = g.dirichlet(np.ones(10), size=13)
    image = torch.zeros(1, 28, 28)
    image[0, 4:24, 12:16] = 1.0  # a "1"
    path = tmp_path / "rotation.png"
    assert_png(path, F.rotation_plot(angles, probs, g.random(13), image, path))


def test_fgsm_plot(tmp_path):
    path = tmp_path / "fgsm.png"
    eps = np.array([0.0, 0.1, 0.2, 0.3])
    assert_png(path, F.fgsm_plot(eps, [0.99, 0.7, 0.3, 0.1], [0.1, 0.8, 1.5, 2.0], path, num_classes=10))


def test_extreme_uncertainty_grid(tmp_path):
    g = rng(5)
    n = 20
    evidence = torch.tensor(g.exponential(3.0, size=(n, 10)))
    u = 10 / (evidence + 1).sum(1)
    preds = evidence.argmax(1)
    path = tmp_path / "extremes.png"
    out = F.extreme_uncertainty_grid(torch.tensor(g.random((n, 1, 28, 28))), u, evidence,
                                     torch.tensor(g.integers(0, 10, n)), preds, path, k=4)
    assert_png(path, out)


def test_plot_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        F.fgsm_plot([0.0, 0.1], [1.0], [0.0, 0.1], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"probs.*\[A, K\]"):
        F.rotation_plot([0, 90], np.ones((3, 10)) / 10, [0.5, 0.5], np.zeros((28, 28)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty"):
        F.entropy_cdf({}, tmp_path / "x.png")


# ## Sweeps with a small linear model of our own

K, SIDE = 3, 6


def linear_problem(n=300, seed=0):
    """Three classes of 6x6 "images" in [0, 1] around random class means; the
    model is the nearest-mean linear classifier, evidence = softplus(logits)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(K, SIDE * SIDE, generator=g) * 0.6 + 0.2
    labels = torch.randint(0, K, (n,), generator=g)
    x = (means[labels] + 0.08 * torch.randn(n, SIDE * SIDE, generator=g)).clamp(0, 1)
    weight = 10 * means
    bias = -5 * (means ** 2).sum(1)

    def evidence_fn(images):
        logits = images.reshape(images.shape[0], -1) @ weight.T + bias
        return torch.nn.functional.softplus(logits)

    def probs_fn(images):
        alpha = evidence_fn(images) + 1
        return alpha / alpha.sum(1, keepdim=True)

    return x.reshape(n, 1, SIDE, SIDE), labels, evidence_fn, probs_fn


def test_fgsm_sweep_shapes_clean_accuracy_and_degradation():
    images, labels, _, probs_fn = linear_problem()
    eps = [0.0, 0.05, 0.1, 0.2, 0.4]
    clean_acc = (probs_fn(images).argmax(1) == labels).double().mean().item()
    assert clean_acc > 0.9  # the toy model works on clean data
    sweep = P.fgsm(probs_fn, images, labels, eps, batch_size=64)  # several batches
    assert sweep.eps.shape == sweep.accuracy.shape == sweep.mean_entropy.shape == (5,)
    assert sweep.accuracy[0].item() == pytest.approx(clean_acc, abs=1e-12)
    # attacks of growing size hurt: monotone (up to noise) and far below clean at the end
    assert np.all(np.diff(sweep.accuracy.numpy()) <= 1e-12)
    assert sweep.accuracy[-1] < clean_acc - 0.5
    # clean mean entropy matches a direct computation
    p = probs_fn(images).double()
    assert sweep.mean_entropy[0].item() == pytest.approx((-(p * p.log()).sum(1)).mean().item(), rel=1e-9)


def test_fgsm_sweep_does_not_touch_parameter_grads():
    images, labels, _, _ = linear_problem(n=50)
    layer = torch.nn.Linear(SIDE * SIDE, K)

    def probs_fn(x):
        alpha = torch.nn.functional.softplus(layer(x.reshape(x.shape[0], -1))) + 1
        return alpha / alpha.sum(1, keepdim=True)

    P.fgsm(probs_fn, images, labels, [0.0, 0.1])
    assert layer.weight.grad is None


def test_fgsm_sweep_rejects_negative_eps():
    images, labels, _, probs_fn = linear_problem(n=10)
    with pytest.raises(ValueError, match=">= 0"):
        P.fgsm(probs_fn, images, labels, [0.0, -0.1])


def dirichlet(evidence):
    """`(probs, u)` of the opinion with evidence `[N, K]` (the model's `predict` in the evaluation)."""
    o = opinion(evidence)
    return o.expected_probability, o.uncertainty_mass


def test_rotated_digit_sweep():
    images, _, evidence_fn, probs_fn = linear_problem(n=5)
    image = images[0]
    angles = np.linspace(0, 180, 7)
    sweep = P.rotated_digit(lambda x: dirichlet(evidence_fn(x)), image, angles)
    assert sweep.angles.shape == (7,)
    assert sweep.images.shape == (7, 1, SIDE, SIDE)
    assert sweep.probs.shape == (7, K)
    assert sweep.u.shape == (7,)
    assert torch.allclose(sweep.probs.sum(1), torch.ones(7))
    # angle 0 is the untouched image; u = K / S
    assert torch.allclose(sweep.images[0], image)
    assert torch.allclose(sweep.probs[0], probs_fn(image[None])[0], atol=1e-6)
    assert torch.allclose(sweep.u, K / (evidence_fn(sweep.images) + 1).sum(1))
    # rotating by 180 degrees twice gives the image back
    assert torch.allclose(P.rotate(sweep.images[-1], 180.0), image, atol=1e-5)
    # a rotation actually changes the input
    assert not torch.allclose(sweep.images[3], image)


def test_sweep_plots_end_to_end(tmp_path):
    images, labels, evidence_fn, probs_fn = linear_problem(n=60)
    rot = P.rotated_digit(lambda x: dirichlet(evidence_fn(x)), images[0], np.linspace(0, 180, 10))
    path = tmp_path / "rot.png"
    assert_png(path, F.rotation_plot(rot.angles, rot.probs, rot.u, images[0], path))
    fg = P.fgsm(probs_fn, images, labels, [0.0, 0.1, 0.3])
    path = tmp_path / "fgsm.png"
    assert_png(path, F.fgsm_plot(fg.eps, fg.accuracy, fg.mean_entropy, path, num_classes=K))
