r"""
# A class-conditional probabilistic circuit over image pixels, written in plain PyTorch

A tensorised *probabilistic circuit* (a sum-product network) in the spirit of cirkit's MNIST
tutorial ("Building an MNIST Digit Classifier using Cirkit"; Peharz et al., RAT-SPN, 2020), without
libcirkit: it gives, for every class $y$, an exact and normalised $\log p(\mathbf{x} \mid y)$, and
marginalises any subset of pixels exactly in the same single pass.

Why not libcirkit (the tutorial's library, PyPI `libcirkit` 0.3.1): it clamps log-space sums and products at
$-708.4$ (cirkit issue #416), which on 784 pixels makes every output the clamp and training dead unless two
module constants are patched; it pins `scipy~=1.14` and downgrades numpy to 2.2 (installable only with
`--no-deps` beside this app's numpy 2.4 / scipy 1.17); and its folded quad-graph circuit measured 2-4x slower
per training step here than this one (8-64 units, batch 128, 2 CPU threads), at the same one-epoch accuracy.

## Structure

* **Region graph: a binary tree over the pixels.** The $H \times W$ image is padded to an
  $S \times S$ square, $S$ a power of two, and its $S^2$ slots are the leaves of a perfect binary tree.
  `quad-tree-2` lays the pixels out in Morton (Z-) order: pixels $2r$ and $2r + 1$ are horizontal
  neighbours, regions $4r \dots 4r + 3$ form a $2 \times 2$ patch, and so on, so the tree splits every
  square patch into two halves and every half into two squares — cirkit's `quad-tree-2` region graph.
  `random-binary-tree` shuffles the slots (seeded): RAT-SPN's random splits. Every level is one
  batched matrix product.
* **Inputs:** every pixel $d$ has `num_input_units` categorical distributions over its `n_categories`
  values, $\log \phi_{d,u}(x_d) = \text{log\_softmax}(\theta_{d,u})_{x_d}$ (the tutorial's), or binomial ones,
  $\phi_{d,u}(x_d) = \binom{V-1}{x_d} p_{d,u}^{x_d} (1 - p_{d,u})^{V - 1 - x_d}$, $p = \sigma(\theta)$: one parameter
  instead of $V$ per unit, and nearby intensities alike.
* **Inner layers** (`num_sum_units` units per region), a region $r$ with children $a$ and $b$:
  - `cp` (cirkit's `sum_product_layer='cp'`, the default):
    $h_{r,o} = \big(\sum_i W^{(a)}_{r,i,o} h_{a,i}\big) \big(\sum_i W^{(b)}_{r,i,o} h_{b,i}\big)$.
    The lowest level has no dense layers: a mixture of categoricals over one pixel is itself a
    categorical, so they are absorbed into the input distributions and that level is only the product
    of two pixels' units.
  - `tucker`: $h_{r,o} = \sum_{i,j} W_{r,ij,o}\, h_{a,i}\, h_{b,j}$ ($U^2$ inputs per unit: far more weights).

  Each column of $W$ is a softmax, so every unit is a normalised distribution over its region.
  Everything is computed in log-space: $\log \sum_i W_{i,o} h_i$ with the max-shift
  ("log-einsum-exp") trick, and the product is a sum of logs. There is **no clamping** of log
  values (libcirkit 0.3.1 clamps at $-708.4$, so on $784$ pixels every output was the clamp).
* **Root** (`root_layer`): `mixture`, one sum layer per class over the root region's units,
  $p(\mathbf{x} \mid y) = \sum_u w_{y,u}\, h_{\text{root},u}(\mathbf{x})$; or `layer`, cirkit's `num_classes`:
  the last sum-product layer has one unit per class (with CP, the two image halves are independent given $y$,
  each a class-specific mixture).

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
import torch.nn.functional as F


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


#: Region graphs: how the pixels are split, recursively, into two halves
REGION_GRAPHS = ('quad-tree-2', 'random-binary-tree')
#: Sum-product layers: `cp` (mix each child, multiply) or `tucker` (multiply every pair of units, mix)
LAYER_TYPES = ('cp', 'tucker')
#: Input distributions of a pixel: `categorical` over its values (one probability per value) or `binomial`
#: (one success probability: values `n_categories - 1` trials; far fewer parameters, nearby values alike)
INPUT_LAYERS = ('categorical', 'binomial')
#: How the classes come out: `mixture` (one sum unit per class over the root region's units) or `layer` (the
#: last sum-product layer has one unit per class, as cirkit's `num_classes`)
ROOT_LAYERS = ('mixture', 'layer')


def region_layout(height: int, width: int, region_graph: str = 'quad-tree-2',
                  seed: int = 0) -> tuple[int, torch.Tensor]:
    """The padded side $S$ and the pixel of each of the $S^2$ leaves of the binary tree (`height * width`
    for padding): Morton order for `quad-tree-2`, a seeded random order for `random-binary-tree` (RAT-SPN)."""
    side, index = morton_layout(height, width)
    if region_graph == 'random-binary-tree':
        index = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))]
    elif region_graph != 'quad-tree-2':
        raise ValueError(f"region_graph must be one of {', '.join(REGION_GRAPHS)}, got {region_graph!r}")
    return side, index


class PixelCircuit(nn.Module):
    """Class-conditional probabilistic circuit over `[N, height * width]` images of integer pixels.

    * `num_input_units`: categorical distributions per pixel; `num_sum_units`: units of every inner region
    * `layer_type`: `cp` or `tucker`; `region_graph`: `quad-tree-2` or `random-binary-tree` (`graph_seed`)

    `log_joint(x, missing_mask)` returns `[N, n_classes]`: $\\log p(\\mathbf{x}_{\\text{obs}} \\mid y)$.
    """

    def __init__(self, n_classes: int = 10, height: int = 28, width: int = 28, num_input_units: int = 8,
                 num_sum_units: int | None = None, n_categories: int = 256, layer_type: str = 'cp',
                 region_graph: str = 'quad-tree-2', graph_seed: int = 0, root_layer: str = 'mixture',
                 input_layer: str = 'categorical', init_std: float = 1.):
        super().__init__()
        num_sum_units = num_input_units if num_sum_units is None else num_sum_units
        if min(n_classes, num_input_units, num_sum_units, n_categories) < 1:
            raise ValueError(f"n_classes, num_input_units, num_sum_units, n_categories must be >= 1, "
                             f"got {n_classes}, {num_input_units}, {num_sum_units}, {n_categories}")
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {', '.join(LAYER_TYPES)}, got {layer_type!r}")
        if input_layer not in INPUT_LAYERS:
            raise ValueError(f"input_layer must be one of {', '.join(INPUT_LAYERS)}, got {input_layer!r}")
        self.input_layer = input_layer
        if root_layer not in ROOT_LAYERS:
            raise ValueError(f"root_layer must be one of {', '.join(ROOT_LAYERS)}, got {root_layer!r}")
        self.root_layer = root_layer
        self.n_classes, self.height, self.width = n_classes, height, width
        self.num_input_units, self.num_sum_units = num_input_units, num_sum_units
        self.n_categories, self.layer_type, self.region_graph = n_categories, layer_type, region_graph
        self.n_pixels = height * width
        side, slot_to_pixel = region_layout(height, width, region_graph, graph_seed)
        self.side = side
        # Saved with the weights: a checkpoint carries its own (possibly random) region graph
        self.register_buffer('slot_to_pixel', slot_to_pixel)
        # Categorical logits $\theta$: `[D, V, U_in]`, or binomial logits `[D, 1, U_in]` (real pixels only; padding
        # slots have no parameters)
        n_params = n_categories if input_layer == 'categorical' else 1
        self.input_logits = nn.Parameter(init_std * torch.randn(self.n_pixels, n_params, num_input_units))
        # One layer per tree level, leaves upwards: unnormalised log-weights `[regions, inputs, outputs]`.
        # CP: `[2 R, U_child, U]`, one matrix per child. Its first level needs none: a mixture of categoricals
        # over one pixel is itself a categorical, so those layers are absorbed into the input distributions
        # and the first level is just the product of the two pixels' units.
        # Tucker: `[R, U_a U_b, U]` over every pair of the two children's units.
        self.layer_logits = nn.ParameterList()
        n_regions, units = side * side, num_input_units
        if layer_type == 'cp' and n_regions > 1:
            n_regions //= 2
        while n_regions > 1:
            n_regions //= 2
            # `root_layer='layer'`: the last layer's units are the classes
            out = n_classes if n_regions == 1 and root_layer == 'layer' else num_sum_units
            shape = (2 * n_regions, units, out) if layer_type == 'cp' else (n_regions, units * units, out)
            self.layer_logits.append(nn.Parameter(init_std * torch.randn(*shape)))
            units = out
        if root_layer == 'layer' and units != n_classes:
            raise ValueError(f"root_layer='layer' needs at least one sum-product layer; the {height}x{width} image "
                             f"has too few pixels")
        # Root sum layer, one mixture per class: `[U, K]` (none with `root_layer='layer'`)
        self.root_logits = (nn.Parameter(init_std * torch.randn(units, n_classes)) if root_layer == 'mixture'
                            else None)

    @property
    def device(self) -> torch.device:
        return self.input_logits.device

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"pixels must be integers in [0, {self.n_categories}), got dtype {x.dtype}")
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.n_pixels:
            raise ValueError(f"expected {self.n_pixels} pixels per sample, got {x.shape[1]}")
        return x.long()

    def input_log_probs(self, x: torch.Tensor, missing_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[D, N, U_in]`: $\\log \\phi_{d,u}(x_{n,d})$, and $0$ where `missing_mask` is true."""
        x = self._pixels(x)
        if ((x < 0) | (x >= self.n_categories)).any():
            raise ValueError(f"pixel values must lie in [0, {self.n_categories})")
        n = x.shape[0]
        if self.input_layer == 'categorical':
            # Logits stored `[D, V, U]`, so that a gather along V gives `[D, N, U]` directly
            log_phi = torch.log_softmax(self.input_logits, dim=1)                # [D, V, U]
            index = x.t()[:, :, None].expand(self.n_pixels, n, self.num_input_units)
            out = torch.gather(log_phi, 1, index)                                # [D, N, U]
        else:
            # $\log \binom{V - 1}{x} + x \log \sigma(\theta) + (V - 1 - x) \log \sigma(-\theta)$
            trials = self.n_categories - 1
            k = x.t().to(self.input_logits.dtype)[:, :, None]                   # [D, N, 1]
            log_binom = math.lgamma(trials + 1) - torch.lgamma(k + 1) - torch.lgamma(trials - k + 1)
            theta = self.input_logits                                            # [D, 1, U]
            out = log_binom + k * F.logsigmoid(theta) + (trials - k) * F.logsigmoid(-theta)
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
        leaves = torch.cat([leaves, leaves.new_zeros(1, n, leaves.shape[2])], dim=0)
        h = leaves[self.slot_to_pixel]                                           # [S^2, N, U], tree order
        if self.layer_type == 'cp':
            if h.shape[0] > 1:
                h = h.view(-1, 2, n, h.shape[2]).sum(dim=1)                      # first level: products only
            for logits in self.layer_logits:
                log_w = torch.log_softmax(logits, dim=1)                         # columns sum to 1
                mixed = log_matmul_exp(h, log_w)                                 # [2R, N, U]
                h = mixed.view(-1, 2, n, mixed.shape[2]).sum(dim=1)              # product of the two children
        else:
            for logits in self.layer_logits:
                pairs = h.view(-1, 2, n, h.shape[2])
                # $\log h_{a,i} + \log h_{b,j}$ for every pair $(i, j)$: `[R, N, U_a U_b]`
                outer = (pairs[:, 0, :, :, None] + pairs[:, 1, :, None, :]).flatten(2)
                h = log_matmul_exp(outer, torch.log_softmax(logits, dim=1))      # [R, N, U]
        if self.root_logits is None:
            return h[0]                                                          # [N, K]
        log_root = torch.log_softmax(self.root_logits, dim=0)                    # [U, K]
        return torch.logsumexp(h[0][:, :, None] + log_root[None], dim=1)         # [N, K]

    def forward(self, x: torch.Tensor, missing_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_joint(x, missing_mask)


def neg_log_density(log_joint: torch.Tensor) -> torch.Tensor:
    r"""`[N]`: $-\log p(\mathbf{x}) = -\log \frac{1}{K} \sum_y p(\mathbf{x} \mid y)$ from `[N, K]` log-likelihoods
    (the class marginalised out under a uniform prior): the circuit's own out-of-distribution score."""
    return math.log(log_joint.shape[-1]) - torch.logsumexp(log_joint, dim=-1)


def bits_per_dim(nll: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """A negative log-likelihood in nats → bits per pixel."""
    return nll / (n_pixels * math.log(2))


def hybrid_loss(log_joint: torch.Tensor, labels: torch.Tensor, lam: float,
                n_pixels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""cirkit tutorial's mix of the discriminative and the generative objective, averaged over the batch:

    $$\mathcal{L} = \lambda \cdot \big(-\log p(y \mid \mathbf{x})\big) + (1 - \lambda) \cdot
      \frac{-\log p(\mathbf{x} \mid y)}{D}$$

    with $p(y \mid \mathbf{x})$ by Bayes' rule under a uniform prior. Returns `(loss, cross_entropy, generative)`.
    """
    # $-\log p(y \mid \mathbf{x}) = -\log p(\mathbf{x} \mid y) + \log \sum_{y'} p(\mathbf{x} \mid y')$
    cross_entropy = torch.nn.functional.cross_entropy(log_joint, labels)
    # $-\log p(\mathbf{x} \mid y) / D$
    generative = -log_joint.gather(1, labels[:, None]).mean() / n_pixels
    return lam * cross_entropy + (1 - lam) * generative, cross_entropy, generative
