"""Light augmentation and the learning-rate schedule."""
import math

import pytest
import torch

from evidential.augment import random_affine
from evidential.schedules import cosine_annealing, cosine_decay


def _blob(n=16):
    x = torch.full((n, 1, 28, 28), -0.42)
    x[:, :, 12:16, 12:16] = 2.8
    return x


def _center_of_mass(x):
    w = (x - x.amin(dim=(2, 3), keepdim=True)).squeeze(1)
    ys, xs = torch.meshgrid(torch.arange(28.), torch.arange(28.), indexing='ij')
    total = w.sum((1, 2))
    return (w * ys).sum((1, 2)) / total, (w * xs).sum((1, 2)) / total


def test_no_augmentation_is_identity():
    x = _blob()
    assert random_affine(x, 0., 0.) is x


def test_shifts_stay_within_bounds_and_keep_background():
    x = _blob(64)
    out = random_affine(x, max_shift=2., generator=torch.Generator().manual_seed(0))
    cy, cx = _center_of_mass(out)
    cy0, cx0 = _center_of_mass(x)
    dy, dx = (cy - cy0).abs(), (cx - cx0).abs()
    assert dy.max() <= 2.05 and dx.max() <= 2.05
    assert dy.max() > 0.5  # it really moves
    # the corners (background) stay background
    assert torch.allclose(out[:, :, 0, 0], torch.full((64, 1), -0.42))


def test_rotation_by_up_to_180_degrees_and_determinism():
    x = _blob(8)
    a = random_affine(x, 0., 180., generator=torch.Generator().manual_seed(1))
    b = random_affine(x, 0., 180., generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # a centred square rotated about the centre keeps its centre of mass
    cy, cx = _center_of_mass(a)
    assert torch.allclose(cy, torch.full_like(cy, 13.5), atol=0.3)


def test_negative_bounds_are_rejected():
    with pytest.raises(ValueError, match='must be >= 0'):
        random_affine(_blob(), -1., 0.)


def test_cosine_decay():
    assert cosine_decay(0.) == 1. and cosine_decay(1.) == pytest.approx(0.) and cosine_decay(0.5) == pytest.approx(0.5)
    assert cosine_decay(0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_decay(2.) == pytest.approx(0.)


def test_cosine_annealing_is_pytorchs_epoch_stepped_scheduler():
    """`lr_schedule=cosine_epochs` (TorchUncertainty's recipe): the factor at epoch e is CosineAnnealingLR's."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    for epoch in range(14):
        assert optimizer.param_groups[0]['lr'] == pytest.approx(0.2 * cosine_annealing(epoch, 10), abs=1e-12)
        optimizer.step()
        scheduler.step()
    with pytest.raises(ValueError):
        cosine_annealing(0, 0)
