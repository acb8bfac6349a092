r"""
# A class-conditional probabilistic circuit over image pixels, written in plain PyTorch

A small, tensorised *probabilistic circuit* (a sum-product network) in the spirit of cirkit's MNIST
tutorial ("Building an MNIST Digit Classifier using Cirkit"; Peharz et al., RAT-SPN, 2020), without
libcirkit: it gives, for every class $y$, an exact and normalised $\log p(\mathbf{x} \mid y)$, and
marginalises any subset of pixels exactly in the same single pass.

Why not libcirkit (the tutorial's library, PyPI `libcirkit` 0.3.1): it clamps log-space sums and products at
$-708.4$ (cirkit issue #416), which on 784 pixels makes every output the clamp and training dead unless two
module constants are patched; it pins `scipy~=1.14` and downgrades numpy to 2.2 (installable only with
`--no-deps` beside this app's numpy 2.4 / scipy 1.17); and its folded quad-graph circuit measured 2-4x slower
per training step here than this one (8-64 units, batch 128, 2 CPU threads), at the same one-epoch accuracy.

## Structure

* **Region graph: a quad-tree with binary splits.** The $H \times W$ image is padded to an
  $S \times S$ square, $S$ a power of two, and its pixels are laid out in Morton (Z-) order. In that
  order, pixels $2r$ and $2r + 1$ are horizontal neighbours, regions $4r \dots 4r + 3$ form a
  $2 \times 2$ patch, and so on: a perfect binary tree over the Morton order splits every square
  patch into two halves and every half into two squares, which is cirkit's `quad-tree-2` region
  graph. Every level is then one batched matrix product.
* **Inputs:** every pixel $d$ has `n_units` categorical distributions over its `n_categories`
  values, $\log \phi_{d,u}(x_d) = \text{log\_softmax}(\theta_{d,u})_{x_d}$.
* **Inner layers: CP sum-product layers** (cirkit's `sum_product_layer='cp'`). A region $r$ with
  children $a$ and $b$ has `n_units` units
  $h_{r,o} = \big(\sum_i W^{(a)}_{r,i,o} h_{a,i}\big) \big(\sum_i W^{(b)}_{r,i,o} h_{b,i}\big)$,
  with each column of $W$ a softmax, so every unit is a normalised distribution over its region.
  Everything is computed in log-space: $\log \sum_i W_{i,o} h_i$ with the max-shift
  ("log-einsum-exp") trick, and the product is a sum of logs. The lowest level has no dense
  layers: a mixture of categoricals over one pixel is itself a categorical, so they are absorbed
  into the input distributions and that level is only the product of two pixels' units. There is **no clamping** of log
  values (libcirkit 0.3.1 clamps at $-708.4$, so on $784$ pixels every output was the clamp).
* **Root:** one sum layer per class over the root region's units,
  $p(\mathbf{x} \mid y) = \sum_u w_{y,u}\, h_{\text{root},u}(\mathbf{x})$. (A CP layer straight to
  the classes would make the two image halves independent given $y$.)

## Marginalisation

Because every unit is normalised and every product is over disjoint pixels, integrating out a
pixel amounts to replacing each of its input values $\phi_{d,u}(x_d)$ by $\sum_v \phi_{d,u}(v) = 1$,
i.e. its log by $0$. A `missing_mask` does exactly that, per sample, so
`log_joint(x, mask)` $= \log p(\mathbf{x}_{\text{observed}} \mid y)$ for any pattern of missing
pixels, at the cost of a normal forward pass. The padding pixels are always marginalised, which is
why the model is a distribution over the $H W$ real pixels only.
"""
import math

import torch
import torch.nn as nn


def morton_layout(height: int, width: int) -> tuple[int, torch.Tensor]:
    """The padded side $S$ and, for each of the $S^2$ Morton-ordered slots, the row-major index
    `r * width + c` of the pixel it holds, or `height * width` for a padding slot."""
    side = 1 << max(0, math.ceil(math.log2(max(height, width))))
    bits = side.bit_length() - 1
    index = []
    for m in range(side * side):
        r = c = 0
        for b in range(bits):
            c |= ((m >> (2 * b)) & 1) << b
            r |= ((m >> (2 * b + 1)) & 1) << b
        index.append(r * width + c if r < height and c < width else height * width)
    return side, torch.tensor(index, dtype=torch.long)


def log_matmul_exp(log_h: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    r"""$\log \sum_i \exp(\text{log\_h}_{r,n,i} + \text{log\_w}_{r,i,o})$ for `[R, N, I]` and `[R, I, O]`,
    with the max over $i$ shifted out so that the `bmm` sees values in $(0, 1]$."""
    shift = log_h.amax(dim=-1, keepdim=True).detach()
    # A row that is $-\infty$ everywhere (a zero-probability input) gives $-\infty$ in the forward pass, not NaN
    shift = shift.clamp_min(torch.finfo(log_h.dtype).min)
    return torch.bmm(torch.exp(log_h - shift), torch.exp(log_w)).log() + shift


class QuadTreeCircuit(nn.Module):
    """Class-conditional probabilistic circuit over `[N, height * width]` images of integer pixels.

    `log_joint(x, missing_mask)` returns `[N, n_classes]`: $\\log p(\\mathbf{x}_{\\text{obs}} \\mid y)$.
    """

    def __init__(self, n_classes: int = 10, height: int = 28, width: int = 28, n_units: int = 8,
                 n_categories: int = 256, init_std: float = 1.):
        super().__init__()
        if n_classes < 1 or n_units < 1 or n_categories < 1:
            raise ValueError(f"n_classes, n_units, n_categories must be >= 1, "
                             f"got {n_classes}, {n_units}, {n_categories}")
        self.n_classes, self.height, self.width = n_classes, height, width
        self.n_units, self.n_categories = n_units, n_categories
        self.n_pixels = height * width
        side, slot_to_pixel = morton_layout(height, width)
        self.side = side
        self.register_buffer('slot_to_pixel', slot_to_pixel, persistent=False)
        # Categorical logits $\theta$: `[D, V, U]` (real pixels only; padding slots have no parameters)
        self.input_logits = nn.Parameter(init_std * torch.randn(self.n_pixels, n_categories, n_units))
        # One CP layer per tree level above the first, leaves upwards: `[2 R_out, U, U]` unnormalised
        # log-weights. The first level needs none: a mixture of categoricals over one pixel is itself a
        # categorical, so its dense layers are absorbed into the input distributions and the first level
        # is just the product of the two pixels' units.
        self.layer_logits = nn.ParameterList()
        n_regions = side * side // 2
        while n_regions > 1:
            n_regions //= 2
            self.layer_logits.append(nn.Parameter(init_std * torch.randn(2 * n_regions, n_units, n_units)))
        # Root sum layer, one mixture per class: `[U, K]`
        self.root_logits = nn.Parameter(init_std * torch.randn(n_units, n_classes))

    @property
    def device(self) -> torch.device:
        return self.root_logits.device

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"pixels must be integers in [0, {self.n_categories}), got dtype {x.dtype}")
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.n_pixels:
            raise ValueError(f"expected {self.n_pixels} pixels per sample, got {x.shape[1]}")
        return x.long()

    def input_log_probs(self, x: torch.Tensor, missing_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[D, N, U]`: $\\log \\phi_{d,u}(x_{n,d})$, and $0$ where `missing_mask` is true."""
        x = self._pixels(x)
        if ((x < 0) | (x >= self.n_categories)).any():
            raise ValueError(f"pixel values must lie in [0, {self.n_categories})")
        n = x.shape[0]
        # Logits stored `[D, V, U]`, so that a gather along V gives `[D, N, U]` directly
        log_phi = torch.log_softmax(self.input_logits, dim=1)                    # [D, V, U]
        index = x.t()[:, :, None].expand(self.n_pixels, n, self.n_units)
        out = torch.gather(log_phi, 1, index)                                    # [D, N, U]
        if missing_mask is not None:
            missing_mask = missing_mask.reshape(n, -1).to(device=x.device, dtype=torch.bool)
            if missing_mask.shape != x.shape:
                raise ValueError(f"missing_mask must match x's shape {tuple(x.shape)}, "
                                 f"got {tuple(missing_mask.shape)}")
            out = out.masked_fill(missing_mask.t()[:, :, None], 0.)
        return out

    def log_joint(self, x: torch.Tensor, missing_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[N, K]`: $\\log p(\\mathbf{x}_{\\text{obs}} \\mid y)$, the missing pixels integrated out exactly."""
        leaves = self.input_log_probs(x, missing_mask)                           # [D, N, U]
        n = leaves.shape[1]
        # Padding slots: a $\log 1 = 0$ leaf (the pixel is always marginalised)
        leaves = torch.cat([leaves, leaves.new_zeros(1, n, self.n_units)], dim=0)
        h = leaves[self.slot_to_pixel]                                           # [S^2, N, U], Morton order
        if h.shape[0] > 1:
            h = h.view(-1, 2, n, self.n_units).sum(dim=1)                        # first level: products only
        for logits in self.layer_logits:
            log_w = torch.log_softmax(logits, dim=1)                             # columns sum to 1
            mixed = log_matmul_exp(h, log_w)                                     # [R, N, U]
            h = mixed.view(-1, 2, n, self.n_units).sum(dim=1)                    # product of the two children
        log_root = torch.log_softmax(self.root_logits, dim=0)                    # [U, K]
        return torch.logsumexp(h[0][:, :, None] + log_root[None], dim=1)         # [N, K]

    def forward(self, x: torch.Tensor, missing_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_joint(x, missing_mask)

    def class_log_posterior(self, x: torch.Tensor, missing_mask: torch.Tensor | None = None,
                            log_prior: torch.Tensor | None = None) -> torch.Tensor:
        """`[N, K]`: $\\log p(y \\mid \\mathbf{x}_{\\text{obs}})$ by Bayes' rule (uniform prior by default)."""
        lj = self.log_joint(x, missing_mask)
        if log_prior is not None:
            lj = lj + log_prior.to(lj)
        return torch.log_softmax(lj, dim=-1)
