"""
The MNIST-C corruptions (`evidential/corruptions.py`) against independent references: each is deterministic per
seed, `uint8` in and out, changes the image, and grows with its severity; the affine maps match scipy.ndimage's
(rotation, the reference's pre-0.19 scikit-image shear, integer shifts), scale and spatter match the reference's
code transcribed per image, brightness scikit-image's HSV round trip, the noises their distributions (exact
expectations and binomial bounds), and motion blur ImageMagick's normalised one-sided kernel.
"""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from skimage import color, draw, filters, transform

from evidential import corruption_ops
from evidential.corruptions import CORRUPTIONS, MNIST_C_SEVERITY, SEVERITIES, corrupt

#: Corruptions that draw nothing at random (another seed gives the same images)
DETERMINISTIC = {'scale', 'brightness', 'stripe', 'canny_edges'}
GRADED = [name for name, c in CORRUPTIONS.items() if c.severities == SEVERITIES]


@pytest.fixture(scope='module')
def digits() -> np.ndarray:
    """Eight digit-like images: anti-aliased white rings and strokes on black, in random places."""
    rng = np.random.default_rng(7)
    images = np.zeros((8, 28, 28))
    for i, image in enumerate(images):
        r, c = rng.integers(10, 18, size=2)
        rr, cc, value = draw.circle_perimeter_aa(r, c, int(rng.integers(5, 8)), shape=image.shape)
        image[rr, cc] = np.maximum(image[rr, cc], value)
        rr, cc, value = draw.line_aa(int(rng.integers(4, 10)), int(rng.integers(4, 24)), int(rng.integers(18, 24)),
                                     int(rng.integers(4, 24)))
        image[rr, cc] = np.maximum(image[rr, cc], value)
        images[i] = filters.gaussian(image, sigma=0.6) * 2.5
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


@pytest.mark.parametrize('name', list(CORRUPTIONS))
def test_each_corruption_is_deterministic_uint8_and_changes_the_image(name, digits):
    before = digits.copy()
    out = corrupt(digits, name, MNIST_C_SEVERITY, seed=3)
    assert out.dtype == np.uint8 and out.shape == digits.shape
    assert np.array_equal(digits, before)  # the input is left alone
    assert np.array_equal(out, corrupt(digits, name, MNIST_C_SEVERITY, seed=3))
    assert _change(out, digits) > 2.0  # more than two grey levels per pixel on average
    as_torch = corrupt(torch.from_numpy(digits), name, MNIST_C_SEVERITY, seed=3)
    assert isinstance(as_torch, torch.Tensor) and np.array_equal(as_torch.numpy(), out)
    if name not in DETERMINISTIC:
        assert not np.array_equal(out, corrupt(digits, name, MNIST_C_SEVERITY, seed=4))


@pytest.mark.parametrize('name', GRADED)
def test_the_distortion_grows_with_the_severity(name, digits):
    changes = [_change(corrupt(digits, name, s, seed=0), digits) for s in SEVERITIES]
    assert all(a < b for a, b in zip(changes, changes[1:])), changes


def test_bad_arguments_are_refused(digits):
    with pytest.raises(KeyError, match='known: shot_noise'):
        corrupt(digits, 'frost')
    with pytest.raises(ValueError, match='stripe has severities 3'):
        corrupt(digits, 'stripe', 2)
    with pytest.raises(ValueError, match='uint8'):
        corrupt(digits.astype(np.float32), 'rotate')
    with pytest.raises(ValueError, match=r'\[N, 28, 28\]'):
        corrupt(digits[:, :27], 'rotate')


# ## Affine maps against scipy.ndimage

def _closest(out: np.ndarray, candidates):
    """For each image, the index of the candidate it is closest to and that distance (max abs difference)."""
    distances = np.stack([np.abs(out.astype(np.int64) - c.astype(np.int64)).max(axis=(1, 2)) for c in candidates])
    return distances.argmin(0), distances.min(0)


def test_rotate_is_scipy_rotation_by_the_angle_either_way(digits):
    angle = CORRUPTIONS['rotate'].parameter(4)  # radians
    out = corrupt(digits, 'rotate', 4, seed=1)
    turned = [np.stack([np.clip(ndimage.rotate(d.astype(np.float64), sign * math.degrees(angle), reshape=False,
                                               order=1, mode='constant'), 0, 255).round() for d in digits])
              for sign in (-1, 1)]
    which, distance = _closest(out, turned)
    assert distance.max() <= 2  # bilinear both: equal up to rounding at the borders
    assert set(which) == {0, 1}  # both directions are drawn


def test_shear_is_the_reference_scikit_image_matrix(digits):
    r"""scikit-image before 0.19 built `AffineTransform(shear=s)` as [[1, -sin s], [0, cos s]] in (column, row);
    as scipy's (row, column) inverse map: row_in = cos(s) row, col_in = col - sin(s) row, about the centre."""
    s = CORRUPTIONS['shear'].parameter(3)
    out = corrupt(digits, 'shear', 3, seed=2)
    centre = np.array([13.5, 13.5])
    sheared = []
    for sign in (-1, 1):
        matrix = np.array([[math.cos(sign * s), 0], [-math.sin(sign * s), 1]])
        offset = centre - matrix @ centre
        sheared.append(np.stack([np.clip(ndimage.affine_transform(d.astype(np.float64), matrix, offset=offset,
                                                                  order=1, mode='constant'), 0, 255).round()
                                 for d in digits]))
    which, distance = _closest(out, sheared)
    assert distance.max() <= 2 and set(which) == {0, 1}


def test_translate_shifts_by_whole_pixels_with_black_fill(digits):
    c = CORRUPTIONS['translate'].parameter(2)
    out = corrupt(digits, 'translate', 2, seed=0)
    shifted = [ndimage.shift(digits, (0, dy, dx), order=0, mode='constant', cval=0)
               for dy in (-c, c) for dx in (-c, c)]
    which, distance = _closest(out, shifted)
    assert distance.max() == 0 and len(set(which)) > 1


def test_scale_is_the_reference_code_per_image(digits):
    """The reference's `scale`, transcribed per image (scikit-image's scale and translation mean what they did)."""
    c = CORRUPTIONS['scale'].parameter(3)
    expected = []
    for d in digits:
        aff = transform.AffineTransform(scale=(c, c))
        a1, a2 = aff.params[0, :2]
        b1, b2 = aff.params[1, :2]
        aff = transform.AffineTransform(scale=(c, c), translation=[13.5 * (1 - a1 - a2), 13.5 * (1 - b1 - b2)])
        x = np.clip(transform.warp(d / 255., inverse_map=aff), 0, 1) * 255
        expected.append(np.round(x.astype(np.float32)).astype(np.uint8))
    assert np.array_equal(corrupt(digits, 'scale', 3), np.stack(expected))


def test_spatter_is_the_reference_code_per_image(digits):
    """The reference's `spatter` at MNIST-C's setting, transcribed per image with `np.random` replaced by the same
    generator: the batch draws each image's field in turn."""
    loc, spread, sigma, threshold, sigma_mask, _ = CORRUPTIONS['spatter'].parameter(3)
    rng = np.random.default_rng(np.random.SeedSequence([5, list(CORRUPTIONS).index('spatter')]))
    expected = []
    for d in digits:
        x = np.array(d, dtype=np.float32) / 255.
        liquid_layer = rng.normal(size=x.shape, loc=loc, scale=spread)
        liquid_layer = filters.gaussian(liquid_layer, sigma=sigma)
        liquid_layer[liquid_layer < threshold] = 0
        m = np.where(liquid_layer > threshold, 1, 0)
        m = filters.gaussian(m.astype(np.float32), sigma=sigma_mask)
        m[m < 0.8] = 0
        colour = 63 / 255. * np.ones_like(x) * m
        x *= (1 - m)
        expected.append(np.round((np.clip(x + colour, 0, 1) * 255).astype(np.float32)).astype(np.uint8))
    assert np.abs(corrupt(digits, 'spatter', seed=5).astype(int) - np.stack(expected)).max() <= 1


# ## Intensity and noise

def test_brightness_is_scikit_image_hsv_round_trip(digits):
    c = CORRUPTIONS['brightness'].parameter(2)
    x = color.rgb2hsv(color.gray2rgb(digits / 255.))
    x[..., 2] = np.clip(x[..., 2] + c, 0, 1)
    expected = np.round((np.clip(color.rgb2gray(color.hsv2rgb(x)), 0, 1) * 255).astype(np.float32))
    assert np.abs(corrupt(digits, 'brightness', 2).astype(int) - expected).max() <= 1


def test_shot_noise_has_the_poisson_mean():
    """On a grey image of value v: E[x'] = E[min(Poisson(c v) / c, 1)], summed exactly over the Poisson pmf."""
    v, c = 100 / 255., CORRUPTIONS['shot_noise'].parameter(4)
    grey = np.full((64, 28, 28), 100, dtype=np.uint8)
    out = corrupt(grey, 'shot_noise', 4, seed=0) / 255.
    k = np.arange(0, 60)
    expected = float(np.sum(np.minimum(k / c, 1.0) * stats.poisson.pmf(k, c * v)))
    sd = float(np.sqrt(np.sum(np.minimum(k / c, 1.0) ** 2 * stats.poisson.pmf(k, c * v)) - expected ** 2))
    # 50,176 pixels: the mean within 5 standard errors, plus half a grey level of rounding
    assert abs(out.mean() - expected) <= 5 * sd / math.sqrt(out.size) + 0.5 / 255


def test_impulse_noise_flips_its_share_of_pixels_half_to_white():
    amount = CORRUPTIONS['impulse_noise'].parameter(3)
    grey = np.full((64, 28, 28), 100, dtype=np.uint8)
    out = corrupt(grey, 'impulse_noise', 3, seed=0)
    n = out.size
    flipped, salt = (out != 100).sum(), (out == 255).sum()
    assert set(np.unique(out)) == {0, 100, 255}
    assert abs(flipped / n - amount) <= 5 * math.sqrt(amount * (1 - amount) / n)
    assert abs(salt / flipped - 0.5) <= 5 * math.sqrt(0.25 / flipped)


# ## Blur, lines

def test_motion_blur_spreads_a_point_along_a_normalised_one_sided_kernel():
    """ImageMagick's kernel: k_i = exp(-i^2 / 2 sigma^2) / sum, i = 0..2 ceil(r): a lone point keeps its mass
    (up to rounding of the pixels it reaches) and its own pixel keeps k_0."""
    radius, sigma = CORRUPTIONS['motion_blur'].parameter(3)
    point = np.zeros((4, 28, 28), dtype=np.uint8)
    point[:, 14, 14] = 255
    out = corrupt(point, 'motion_blur', 3, seed=0).astype(np.int64)
    i = np.arange(2 * math.ceil(radius) + 1)
    k0 = 1 / np.exp(-i ** 2 / (2 * sigma ** 2)).sum()
    reached = (out > 0).sum(axis=(1, 2))
    assert np.all(np.abs(out.sum(axis=(1, 2)) - 255) <= reached)  # each reached pixel rounds by at most 1/2
    assert np.all(np.abs(out[:, 14, 14] - 255 * k0) <= 1)
    assert np.all(reached > 3)


def test_stripe_inverts_the_outer_columns(digits):
    out = corrupt(digits, 'stripe').astype(np.int64)
    assert np.array_equal(out[:, :, 7:21], digits[:, :, 7:21])
    assert np.array_equal(out[:, :, :7], 255 - digits[:, :, :7].astype(np.int64))
    assert np.array_equal(out[:, :, 21:], 255 - digits[:, :, 21:].astype(np.int64))


def test_the_plasma_maps_span_zero_to_one():
    maps = corruption_ops.plasma_fractal(np.random.default_rng(0), 3, 1.4, mapsize=64)
    assert maps.shape == (3, 64, 64)
    assert np.allclose(maps.min(axis=(1, 2)), 0) and np.allclose(maps.max(axis=(1, 2)), 1)
