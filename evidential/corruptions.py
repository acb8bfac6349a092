r"""
# MNIST-C: fifteen corruptions of handwritten digits, each at one to five severities

Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision" (2019, arXiv:1906.02337). Their code
(google-research/mnist-c, `corruptions.py`) is followed function by function: the same parameters, the same
libraries (scikit-image, scipy.ndimage) and the same order of operations, on images scaled to $[0, 1]$; the
result is rounded to `uint8` as their notebook does (`np.round(x).astype(np.uint8)`). Where their code calls
ImageMagick (motion blur) or relies on an old scikit-image's behaviour, `evidential/corruption_ops.py` says
what it does instead and why.

**Severity.** MNIST-C fixes one strength per corruption: the default `severity` of each function in its code,
an index into five-entry lists inherited from ImageNet-C. Here each corruption with a scalar strength (the noises,
the blurs, the affine maps, brightness, fog) has five severities with MNIST-C's setting as **severity 3**, as
CIFAR-10-C grades its corruptions; MNIST-C's neighbours in the inherited lists are kept where they exist, and
the lists are extended past their ends where MNIST-C's setting was already the first or last entry (each table
below says which). The corruptions without a strength (stripe, spatter, dotted line, zigzag, Canny edges) have
severity 3 only.

**Randomness.** Every function takes a `seed`; one `numpy.random.Generator` seeded by `(seed, corruption)`
draws everything, in batch order. The same seed gives the same images; the severities of one corruption share
their draws (the same rotation direction, the same noise field where the distributions allow), so the
distortion grows with the severity image by image rather than only on average.

    corrupt(images, 'rotate', severity=3, seed=0)   # uint8 [N, 28, 28] (numpy or torch) -> the same type
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np

from evidential import corruption_ops as ops

#: Severities of the corruptions with a scalar strength; MNIST-C's own setting is `MNIST_C_SEVERITY`
SEVERITIES = (1, 2, 3, 4, 5)
MNIST_C_SEVERITY = 3
#: Changes whenever any corruption's output changes for a given seed (cached images are regenerated)
GENERATOR_VERSION = 1
#: The image side every corruption is written for (MNIST-C's code hard-codes 28 and its centre 13.5)
SIDE = 28


@dataclass(frozen=True)
class Corruption:
    """One MNIST-C corruption: `apply(x, parameter, rng)` maps images in $[0, 1]$ (`float64 [N, 28, 28]`) to
    images in $[0, 1]$; `levels` holds its parameter per severity (1-5), or one parameter (severity 3)."""
    name: str
    apply: Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]
    levels: Tuple[Any, ...]

    @property
    def severities(self) -> Tuple[int, ...]:
        return SEVERITIES if len(self.levels) == len(SEVERITIES) else (MNIST_C_SEVERITY,)

    def parameter(self, severity: int) -> Any:
        if severity not in self.severities:
            raise ValueError(f"{self.name} has severities {', '.join(map(str, self.severities))}, got {severity!r}")
        return self.levels[self.severities.index(severity)]


#: The fifteen corruptions of MNIST-C, in the paper's order (its `CORRUPTIONS` list, less `identity`)
CORRUPTIONS: Dict[str, Corruption] = {c.name: c for c in (
    # Poisson counts of rate x * c, divided by c: fewer counts, more noise. MNIST-C: c = 3 (its list
    # [60, 25, 12, 5, 3], severity 5); 12 and 5 below it, 2 and 1 beyond it.
    Corruption('shot_noise', ops.shot_noise, (12, 5, 3, 2, 1)),
    # A share c of the pixels set to 0 or 1 (half each). MNIST-C: 0.17 (list [.03,.06,.09,.17,.27], severity 4).
    Corruption('impulse_noise', ops.impulse_noise, (0.06, 0.09, 0.17, 0.27, 0.40)),
    # (sigma, max shift, iterations) of blur - local shuffle - blur. MNIST-C: (0.7, 1, 2) (its severity 1);
    # its severities 2 and 3 above it, two gentler settings (less blur, fewer passes) below it.
    Corruption('glass_blur', ops.glass_blur, ((0.4, 1, 1), (0.55, 1, 2), (0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3))),
    # (radius, sigma) of ImageMagick's motion blur. MNIST-C: (10, 3) (its severity 1); its severities 2 and 3
    # above it, two narrower kernels below it.
    Corruption('motion_blur', ops.motion_blur, ((10, 1), (10, 2), (10, 3), (15, 5), (15, 8))),
    # Shear angle (radians), direction drawn per image. MNIST-C: 0.4 (list [.2,.4,.6,.8,1], severity 2).
    Corruption('shear', ops.shear, (0.1, 0.2, 0.4, 0.6, 0.8)),
    # Inverse zoom factor about the centre. MNIST-C: 1/0.7 (list [1/.9, 1/.8, 1/.7, 1/.6, 1/.5], severity 3).
    Corruption('scale', ops.scale, (1 / .9, 1 / .8, 1 / .7, 1 / .6, 1 / .5)),
    # Rotation angle (radians), direction drawn per image. MNIST-C: 0.4 (list [.2,.4,.6,.8,1], severity 2).
    Corruption('rotate', ops.rotate, (0.1, 0.2, 0.4, 0.6, 0.8)),
    # Added to HSV value. MNIST-C: 0.5 (list [.1,.2,.3,.4,.5], severity 5); 0.6 and 0.7 added.
    Corruption('brightness', ops.brightness, (0.3, 0.4, 0.5, 0.6, 0.7)),
    # Shift in pixels along each axis, directions drawn per image. MNIST-C: 3 (list [1..5], severity 3).
    Corruption('translate', ops.translate, (1, 2, 3, 4, 5)),
    Corruption('stripe', ops.stripe, (None,)),
    # (strength c, wibble decay) of the plasma fractal. MNIST-C: (3, 1.4) (its severity 5). The decay is kept at
    # 1.4 and only c varies: with the same seed the five severities then share one fog map, and every pixel's
    # change, c |p max(x) - x| / (max(x) + c), grows with c (a varying decay changes the map's texture instead).
    Corruption('fog', ops.fog, ((2.0, 1.4), (2.5, 1.4), (3.0, 1.4), (3.5, 1.4), (4.0, 1.4))),
    # MNIST-C's severity 4 of its spatter list (mud).
    Corruption('spatter', ops.spatter, ((0.65, 0.3, 1, 0.65, 1.5, 1),)),
    Corruption('dotted_line', ops.dotted_line, (None,)),
    Corruption('zigzag', ops.zigzag, (None,)),
    Corruption('canny_edges', ops.canny_edges, (None,)),
)}


def conditions() -> Tuple[Tuple[str, int], ...]:
    """Every `(corruption, severity)` pair, in `CORRUPTIONS` order then by severity."""
    return tuple((name, s) for name, c in CORRUPTIONS.items() for s in c.severities)


def _as_uint8_images(images) -> Tuple[np.ndarray, bool]:
    """`(numpy uint8 [N, 28, 28], whether the input was a torch tensor)`; raises `ValueError` otherwise."""
    is_torch = type(images).__module__.startswith('torch')
    array = images.detach().cpu().numpy() if is_torch else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"images must be uint8 [N, {SIDE}, {SIDE}], got {array.dtype} {list(array.shape)}")
    return array, is_torch


def corrupt(images, name: str, severity: int = MNIST_C_SEVERITY, seed: int = 0):
    """
    The MNIST-C corruption `name` at `severity` of `uint8` images `[N, 28, 28]` (numpy or torch), as `uint8`
    images of the same kind. Deterministic in `seed` (a non-negative int); `images` is not changed.
    Raises `KeyError` for an unknown corruption and `ValueError` for a severity it does not have or bad images.
    """
    if name not in CORRUPTIONS:
        raise KeyError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    corruption = CORRUPTIONS[name]
    parameter = corruption.parameter(severity)
    array, is_torch = _as_uint8_images(images)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), list(CORRUPTIONS).index(name)]))
    x = array.astype(np.float64) / 255.
    out = corruption.apply(x, parameter, rng) if len(array) else x
    # the reference's `(np.clip(x, 0, 1) * 255).astype(np.float32)`, then its notebook's
    # `np.round(x).astype(np.uint8)` (the float32 step decides the halves, e.g. brightness's 127.5)
    result = np.round((np.clip(out, 0.0, 1.0) * 255.).astype(np.float32)).astype(np.uint8)
    if is_torch:
        import torch
        return torch.from_numpy(result)
    return result


def corrupt_all(images: np.ndarray, seed: int = 0,
                names: Sequence[str] = tuple(CORRUPTIONS)) -> Dict[Tuple[str, int], np.ndarray]:
    """`{(corruption, severity): uint8 images}` for every severity of every corruption in `names`."""
    return {(name, s): corrupt(images, name, s, seed) for name in names for s in CORRUPTIONS[name].severities}
