r"""
# The MNIST-C corruptions, one function each (`evidential/corruptions.py` grades and seeds them)

Each function is the function of the same name in google-research/mnist-c's `corruptions.py`, applied to a
batch: `x` is `float64 [N, 28, 28]` in $[0, 1]$ (the reference's `np.array(x) / 255.`), `c` the parameter of one
severity, `rng` a `numpy.random.Generator` that draws, per image, what the reference draws from `np.random`.
They return floats; `corrupt` clips to $[0, 1]$ and rounds to `uint8`. Coordinates are scikit-image's:
`(column, row)`, the image centre at $(13.5, 13.5)$.

Where this differs from the reference, and why:

* **Motion blur** calls ImageMagick's `MagickMotionBlurImage` through Wand; `motion_blur` here is that
  function written out (MagickCore `effect.c`: a one-sided Gaussian kernel of width $2\lceil r\rceil + 1$ sampled
  at whole-pixel offsets along the angle, edge pixels repeated), so that neither ImageMagick nor Wand is needed.
* **Shear** uses the shear matrix of the scikit-image the reference was written for (before 0.19),
  $\begin{pmatrix}1 & -\sin s\\ 0 & \cos s\end{pmatrix}$; scikit-image 0.26's `AffineTransform(shear=s)` is
  $\begin{pmatrix}1 & -\tan s\\ 0 & 1\end{pmatrix}$, a different image.
* **Glass blur**'s `gaussian(..., multichannel=True)` on a 2-D image took its second axis for channels, so
  the reference blurs along the rows' direction only (down the columns); kept, with scikit-image 0.26's
  `channel_axis`-free call given the same per-axis sigmas.
* Batches: each image gets its own draws (direction, angle, line), as the reference's per-image calls; the
  draws come in another order than in the reference's stream, so the images are the reference's corruption
  of the digit, not its exact pixels.
"""
import math
from typing import Tuple

import numpy as np
from skimage import feature, filters, transform, util

#: The image side and centre the reference hard-codes (`13.5 * (1 - a1 - a2)`, `np.linspace(0, 27, 28)`)
SIDE, CENTRE = 28, 13.5


# ## Noise

def shot_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    r"""Poisson noise: $x' = \text{Poisson}(c\,x) / c$."""
    return rng.poisson(x * c) / float(c)


def impulse_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: each pixel, with probability `c`, set to 1 or 0 (half each); scikit-image's
    `random_noise(mode='s&p')`, as the reference."""
    return util.random_noise(x, mode='s&p', amount=c, rng=rng)


# ## Blurs

def _vertical_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """The reference's `gaussian(image, sigma, multichannel=True)` of a 2-D image: sigma along the rows' axis,
    none across (its second axis taken for channels); mode 'nearest', truncate 4, as scikit-image's default."""
    return filters.gaussian(x, sigma=(0, sigma, 0), mode='nearest', truncate=4.0)


def glass_blur(x: np.ndarray, c: Tuple[float, int, int], rng: np.random.Generator) -> np.ndarray:
    """Blur, then swap each pixel (from the bottom-right up) with a random neighbour in `[-delta, delta)` with
    probability 1/2, `iterations` times, then blur again. The swaps are sequential (a pixel can move twice), so
    the loop runs over positions, each step swapping in every image of the batch at once."""
    sigma, delta, iterations = c
    n = len(x)
    # `np.uint8(gaussian(...) * 255)`: truncated, not rounded
    y = (np.clip(_vertical_gaussian(x, sigma), 0, 1) * 255).astype(np.uint8)
    images = np.arange(n)
    for _ in range(iterations):
        for h in range(SIDE - delta, delta, -1):
            for w in range(SIDE - delta, delta, -1):
                swap = rng.random(n) < 0.5
                dx, dy = rng.integers(-delta, delta, size=(2, n))
                i = images[swap]
                h2, w2 = h + dy[swap], w + dx[swap]
                here, there = y[i, h, w].copy(), y[i, h2, w2].copy()
                y[i, h, w], y[i, h2, w2] = there, here
    return _vertical_gaussian(y / 255., sigma)


def motion_blur(x: np.ndarray, c: Tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    r"""
    ImageMagick's motion blur (`MotionBlurImage`, MagickCore `effect.c`) at an angle drawn per image from
    $U(-45°, 45°)$, as the reference's `x.motion_blur(radius, sigma, angle)`:

    $$x'(p) = \sum_{i=0}^{W-1} k_i\, x\big(p + o_i\big), \quad k_i \propto e^{-i^2 / 2\sigma^2},\quad
      W = 2\lceil r \rceil + 1,\quad o_i = \big(\lceil i\cos\theta - \tfrac12\rceil, \lceil i\sin\theta - \tfrac12\rceil\big)$$

    (column, row offsets: the blur trails to one side), pixels outside the image repeating the edge
    (ImageMagick's default virtual-pixel method). Written out rather than run through ImageMagick, which
    would add a system library and Wand for one 21-tap sum.
    """
    radius, sigma = c
    n = len(x)
    angle = np.deg2rad(rng.uniform(-45, 45, size=n))
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    kernel = np.exp(-i ** 2 / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    ox = np.ceil(i[None, :] * np.cos(angle)[:, None] - 0.5).astype(np.int64)  # [N, W] column offsets
    oy = np.ceil(i[None, :] * np.sin(angle)[:, None] - 0.5).astype(np.int64)  # [N, W] row offsets
    rows = np.arange(SIDE)[None, :, None]
    cols = np.arange(SIDE)[None, None, :]
    images = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for t in range(width):
        r = np.clip(rows + oy[:, t, None, None], 0, SIDE - 1)
        q = np.clip(cols + ox[:, t, None, None], 0, SIDE - 1)
        out += kernel[t] * x[images, r, q]
    return out


# ## Affine maps (scikit-image's `warp` with the inverse map, bilinear, black outside)

def _centred(matrix: np.ndarray) -> np.ndarray:
    """The 3x3 map with the translation that keeps the centre (13.5, 13.5) fixed, as the reference computes
    it: `a3 = 13.5 * (1 - a1 - a2)`, `b3 = 13.5 * (1 - b1 - b2)`."""
    m = np.array(matrix, dtype=np.float64)
    m[0, 2] = CENTRE * (1 - m[0, 0] - m[0, 1])
    m[1, 2] = CENTRE * (1 - m[1, 0] - m[1, 1])
    return m


def _warp_groups(x: np.ndarray, maps) -> np.ndarray:
    """`warp(image, inverse_map=map)` for each image with its map; `maps` is `{key: (3x3 matrix, mask)}`, the
    images of one map warped together (scikit-image takes a last axis as channels)."""
    out = np.empty_like(x)
    for matrix, mask in maps:
        if mask.any():
            stack = np.moveaxis(x[mask], 0, -1)
            warped = transform.warp(stack, inverse_map=transform.AffineTransform(matrix=matrix), order=1,
                                    mode='constant', cval=0.0)
            out[mask] = np.moveaxis(warped, -1, 0)
    return out


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    """The reference's `np.random.choice([-1, 1], 1)[0]` per image."""
    return rng.choice(np.array([-1, 1]), size=n)


def shear(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    r"""Shear by $\pm c$ radians about the centre, with the pre-0.19 scikit-image matrix the reference's
    `AffineTransform(shear=c)` built: $\begin{pmatrix}1 & -\sin c\\ 0 & \cos c\end{pmatrix}$."""
    signs = _signs(rng, len(x))
    return _warp_groups(x, [(_centred([[1, -math.sin(s * c), 0], [0, math.cos(s * c), 0], [0, 0, 1]]), signs == s)
                            for s in (-1, 1)])


def rotate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    r"""Rotation by $\pm c$ radians about the centre (the inverse map rotates by $\pm c$)."""
    signs = _signs(rng, len(x))
    return _warp_groups(x, [(_centred([[math.cos(s * c), -math.sin(s * c), 0], [math.sin(s * c), math.cos(s * c), 0],
                                       [0, 0, 1]]), signs == s) for s in (-1, 1)])


def scale(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    """Zoom about the centre by 1/c (the inverse map scales by c > 1: the digit shrinks)."""
    return _warp_groups(x, [(_centred([[c, 0, 0], [0, c, 0], [0, 0, 1]]), np.ones(len(x), dtype=bool))])


def translate(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    """Shift by `c` pixels along each axis, the two directions drawn per image (the reference's
    `np.random.choice([-1, 1], 2)`)."""
    bits = rng.choice(np.array([-1, 1]), size=(len(x), 2))
    return _warp_groups(x, [(np.array([[1, 0, c * bx], [0, 1, c * by], [0, 0, 1]], dtype=np.float64),
                             (bits[:, 0] == bx) & (bits[:, 1] == by)) for bx in (-1, 1) for by in (-1, 1)])


# ## Intensity

def brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    r"""
    HSV value raised by `c`. The reference goes gray -> RGB -> HSV, $V + c$ clipped, -> RGB -> gray with
    scikit-image; for a gray image $R = G = B = x$, so $H = S = 0$, $V = x$, the way back gives
    $R = G = B = \min(x + c, 1)$, and `rgb2gray`'s weights (0.2125, 0.7154, 0.0721) sum to one:

    $$x' = \min(x + c, 1).$$

    Written so, it is a hundred times faster; the tests compare it with scikit-image's conversions.
    """
    return np.minimum(x + c, 1.0)


def stripe(x: np.ndarray, c, rng: np.random.Generator) -> np.ndarray:
    """The left 7 and right 7 columns inverted."""
    out = x.copy()
    out[:, :, :7] = 1.0 - out[:, :, :7]
    out[:, :, 21:] = 1.0 - out[:, :, 21:]
    return out


def plasma_fractal(rng: np.random.Generator, n: int, wibbledecay: float, mapsize: int = 256) -> np.ndarray:
    """
    `n` height maps `[n, mapsize, mapsize]` in [0, 1] by the diamond-square algorithm, the reference's
    `plasma_fractal` (itself from FLHerne/mapgen) on a batch: each level sets points to the mean of their
    neighbours (wrapping around) plus `wibble * U(-wibble, wibble)`, `wibble` starting at 100 and divided by
    `wibbledecay` per level. In float32, in place: three times faster than float64, and a map's values
    (at most about 1e4 before they are scaled to [0, 1]) keep ~1e-7 of their range, far below a grey level.
    """
    assert mapsize & (mapsize - 1) == 0
    maps = np.zeros((n, mapsize, mapsize), dtype=np.float32)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        # total / 4 + wibble * U(-wibble, wibble)
        noise = rng.random(total.shape, dtype=np.float32)
        noise *= 2 * wibble * wibble
        noise -= wibble * wibble
        total *= 0.25
        total += noise
        return total

    while step >= 2:
        half = step // 2
        # squares: the centre of each square of corners `step` apart
        corners = maps[:, 0::step, 0::step]
        squares = corners + np.roll(corners, shift=-1, axis=1)
        squares += np.roll(squares, shift=-1, axis=2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        # diamonds: the edge midpoints, from the two centres and two corners beside each
        centres = maps[:, half::step, half::step]
        left = centres + np.roll(centres, shift=1, axis=1)
        left += corners
        left += np.roll(corners, shift=-1, axis=2)
        maps[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + np.roll(centres, shift=1, axis=2)
        top += corners
        top += np.roll(corners, shift=-1, axis=1)
        maps[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    maps /= maps.max(axis=(1, 2), keepdims=True)
    return maps


#: Images whose plasma maps are drawn at once (each map is 256 x 256 float64: 0.5 MB)
PLASMA_BATCH = 64


def fog(x: np.ndarray, c: Tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    r"""$x' = (x + c_0\,\text{plasma}) \cdot \max x / (\max x + c_0)$, the plasma map's top-left 28 x 28 corner."""
    strength, decay = c
    plasma = np.concatenate([plasma_fractal(rng, min(PLASMA_BATCH, len(x) - start), decay)[:, :SIDE, :SIDE]
                             for start in range(0, len(x), PLASMA_BATCH)])
    peak = x.max(axis=(1, 2), keepdims=True)
    return (x + strength * plasma.astype(np.float64)) * peak / (peak + strength)


def spatter(x: np.ndarray, c: Tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Mud: a thresholded, blurred Gaussian field where the image is replaced by gray (63/255)."""
    loc, spread, sigma, threshold, sigma_mask, _ = c
    liquid = filters.gaussian(rng.normal(loc=loc, scale=spread, size=x.shape), sigma=(0, sigma, sigma))
    liquid[liquid < threshold] = 0
    m = filters.gaussian(np.where(liquid > threshold, 1, 0).astype(np.float32), sigma=(0, sigma_mask, sigma_mask))
    m[m < 0.8] = 0
    return x * (1 - m) + 63 / 255. * m


# ## Lines and edges

def line_from_points(c0, r0, c1, r1) -> np.ndarray:
    """The reference's anti-aliased line through `(c0, r0)` and `(c1, r1)` (columns `c0..c1` only):
    `log(1 - d / 2.3) + 1`, d the vertical distance to the line, clipped to [0, 1]."""
    if c1 == c0:
        return np.zeros((SIDE, SIDE))
    cc, rr = np.meshgrid(np.linspace(0, SIDE - 1, SIDE), np.linspace(0, SIDE - 1, SIDE), sparse=True)
    m = (r1 - r0) / (c1 - c0)
    dist = np.clip(np.abs(rr - (m * (cc - c0) + r0)), 0, 2.3 - 1e-10)
    line = np.clip(np.log(1 - dist / 2.3) + 1, 0, 1)
    line[:, :int(np.floor(c0))] = 0
    line[:, int(np.ceil(c1)):] = 0
    return line


def dotted_line(x: np.ndarray, c, rng: np.random.Generator) -> np.ndarray:
    """A line across the image from row r0 to row r1 (drawn per image), every other pair of columns left
    out."""
    ends = rng.integers(0, 27, size=(len(x), 2))
    out = x.copy()
    idx = np.arange(0, 30, 2)
    for k, (r0, r1) in enumerate(ends):
        line = line_from_points(0, r0, 27, r1)
        off = True
        for i in range(1, len(idx)):
            if off:
                line[:, idx[i - 1]:idx[i]] = 0
            off = not off
        out[k] = np.clip(out[k] + line, 0, 1)
    return out


def zigzag(x: np.ndarray, c, rng: np.random.Generator) -> np.ndarray:
    """A zigzag (teeth 2 long, 2 high) from column 2 to 25, from row r0 to r0 + [-5, 5), drawn per image."""
    a = b = 2.
    c0, c1 = 2, 25
    starts = rng.integers(0, 27, size=len(x))
    rises = rng.integers(-5, 5, size=len(x))
    out = x.copy()
    for k, (r0, rise) in enumerate(zip(starts, rises)):
        r1 = r0 + rise
        theta = np.arctan((r1 - r0) / (c1 - c0))
        d = (c1 - c0) / np.cos(theta)  # the length of the straight line
        endpoints = [(0, 0)]
        for i in range(int((d - a) // (2 * a)) + 1):
            r_i = (-1) ** i * b
            endpoints.append(((2 * i + 1) * a, r_i))
        max_c = (2 * a) * (d // (2 * a))
        if d != max_c:
            endpoints.append((d, r_i / (2 * (d - max_c))))
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        cs, rs = rotation.dot(np.array(endpoints).T)
        cs, rs = cs + c0, rs + r0
        image = out[k]
        for i in range(1, len(cs)):
            image = np.clip(image + line_from_points(cs[i - 1], rs[i - 1], cs[i], rs[i]), 0, 1)
        out[k] = image
    return out


def canny_edges(x: np.ndarray, c, rng: np.random.Generator) -> np.ndarray:
    """The edges scikit-image's Canny detector finds (sigma 1, its default thresholds), white on black."""
    return np.stack([feature.canny(image).astype(np.float64) for image in x]) if len(x) else x
