r"""
# Synthetic outliers: jigsaw-shuffled training images

An evidential network learns to *collect* evidence on the training distribution; nothing in the
Bayes risk or in the KL term (which only removes evidence for the *wrong* classes of training images)
asks it to withhold evidence from inputs unlike any digit. Outlier exposure (Hendrycks, Mazeika &
Dietterich, ICLR 2019) adds such inputs to training with a "know nothing" target; Sensoy et al.
(AAAI 2020, "Uncertainty-aware deep classifiers using generative models") do the same for evidential
networks with generated samples and the target $\boldsymbol\alpha = \mathbf{1}$ (no evidence, $u = 1$).

Real outlier sets (Fashion-MNIST, say) must stay unseen: they are how the result is measured. The
outliers here are made from the training batch itself: each image is cut into a
$g \times g$ grid of tiles and the tiles are put back in a random order that is never the original one.
Strokes, their thickness and the ink histogram are those of digits, but the shape is no digit —
like the stroke-like non-digits (Fashion-MNIST's sandals and dresses) that a model trained without
outliers was most confident on (docs/results.md).

Pure tensors in, tensors out; the random draws come from the given CPU generator (reproducible, and
a resumed run continues the same sequence).
"""
from typing import Optional

import math

import torch


def jigsaw_outliers(images: torch.Tensor, grid: int = 2,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    r"""`images` `[N, C, H, W]` with their $g \times g$ tiles shuffled, each image by its own permutation.

    $H$ and $W$ must be multiples of `grid` $= g \ge 2$. No image keeps its original tile order
    (a permutation that draws the identity is rotated by one place), so no outlier is a training image.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if grid < 2:
        raise ValueError(f"grid must be >= 2 (tiles per side), got {grid}")
    n, c, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"grid={grid} must divide the image size {h}x{w}; for 28x28 use 2, 4, 7 or 14")
    tiles = grid * grid
    th, tw = h // grid, w // grid
    # `[N, C, g, th, g, tw]` → `[N, g·g, C, th, tw]`: tile $(i, j)$ at index $i g + j$
    t = images.reshape(n, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, tiles, c, th, tw)
    # A uniformly random permutation per image ...
    perm = torch.argsort(torch.rand(n, tiles, generator=generator), dim=1)
    # ... that is never the identity
    identity = (perm == torch.arange(tiles)).all(dim=1)
    perm[identity] = perm[identity].roll(1, dims=1)
    perm = perm.to(images.device)
    # Output tile $k$ of image $i$ is input tile $\pi_i(k)$
    t = torch.gather(t, 1, perm[:, :, None, None, None].expand_as(t))
    out = t.reshape(n, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
    return out.contiguous()


def uniform_to_softmax_kl(logits: torch.Tensor) -> torch.Tensor:
    r"""$\text{KL}[\mathcal{U} \| \text{softmax}(\mathbf{z})]$ for each row of `logits` `[..., K]`.

    Outlier exposure's loss for softmax models (Hendrycks et al., ICLR 2019): the cross-entropy from the
    uniform distribution to $\hat{\mathbf{p}}$, minus its minimum $\log K$, so it is 0 exactly at "don't know".
    """
    # $-\log K - \frac{1}{K} \sum_k \log \text{softmax}(\mathbf{z})_k$
    return -math.log(logits.shape[-1]) - logits.float().log_softmax(-1).mean(-1)
