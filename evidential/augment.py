r"""
# Light augmentation on the device

A random affine transform per image — a rotation by $\theta \sim U(-r, r)$ degrees and a shift by
$t \sim U(-s, s)$ pixels on each axis — applied to a whole batch at once with
`affine_grid` + `grid_sample`, so it runs where the data lives (CPU or GPU) with no per-sample
Python. Pixels that come in from outside the image copy the border (the background).
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, max_shift: float = 0., max_degrees: float = 0.,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`images` `[N, C, H, W]` moved by up to `max_shift` pixels and rotated by up to `max_degrees`."""
    if max_shift < 0 or max_degrees < 0:
        raise ValueError(f"max_shift and max_degrees must be >= 0, got {max_shift} and {max_degrees}")
    if max_shift == 0 and max_degrees == 0:
        return images
    n, _, h, w = images.shape
    # Draw on the CPU generator for reproducibility, then move
    u = torch.rand(n, 3, generator=generator).to(images.device, images.dtype) * 2 - 1
    angle = u[:, 0] * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in normalized coordinates [-1, 1]: one pixel is 2 / size
    tx, ty = u[:, 1] * max_shift * 2 / w, u[:, 2] * max_shift * 2 / h
    theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)
