r"""
# The DDU LeNet: a sensitive and smooth feature extractor

DDU (Mukhoti et al., CVPR 2023, Sec. 4) asks the features $z = f_\theta(x)$ on which its density is fitted to be

* **smooth** — $\|f(x) - f(x')\| \le L_2 \|x - x'\|$: nearby inputs get nearby features, so the density does not
  change wildly on small changes of the input; obtained by spectral normalisation of every layer of $f$
  (`evidential.spectral`: each weight's reshaped matrix has $\|W\|_2 \le c$);
* **sensitive** — $\|f(x) - f(x')\| \ge L_1 \|x - x'\|$ for distinct inputs: no *feature collapse*, where
  out-of-distribution inputs are mapped onto the features of in-distribution ones and the density cannot tell them
  apart; obtained by residual connections $x + g(x)$, which keep a path from the input to the features that the
  learned branch $g$ cannot cancel (for $\text{Lip}(g) < 1$, $\|x + g(x) - x' - g(x')\| \ge (1 - \text{Lip}(g))
  \|x - x'\|$).

`ResLeNet` is this app's LeNet (`evidential.models.lenet.LeNet`: the same 5×5 convolutions with 20 and 50
channels, 2×2 max-pooling, 800 → 500 features, dropout, 500 → K) made to meet the two, the LeNet analogue of the
DDU code's ResNet with `-sn -mod`:

* each convolution stage is residual, $h \mapsto \text{act}\big(\text{pool}(\text{conv}_{5\times5}(h) +
  \text{conv}_{1\times1}(\text{crop}(h)))\big)$: a 1×1 convolution of the input, centre-cropped by the 2 pixels a
  valid 5×5 convolution loses, is added to it (the shortcut a ResNet uses where the channels change; the DDU code's
  `mod` shortcut is average pooling with zero-padded channels);
* `LeakyReLU` (slope 0.01) instead of ReLU: injective, so no half-space of pre-activations collapses to 0 (the
  DDU code's `mod` uses leaky ReLU for the same reason);
* every layer but the output one — both convolutions, both shortcuts and the 800 → 500 layer — is spectrally
  normalised with coefficient $c$ (`layers=SpectralLayers(c)`); the output layer stays free, as the DDU code's
  `fc`.

An exact lower bound is not possible for a LeNet (784 inputs become 500 features, and max-pooling keeps one value of
four), so sensitivity is measured, not proved: `feature_distance_ratios` gives $\|f(x) - f(x')\| / \|x - x'\|$ over
pairs of inputs, and docs/families.md reports it for this body against the plain LeNet. `residual=False` builds the
plain LeNet (ReLU, no shortcuts); `SpectralLayers(0)` (`Layers()`) leaves the weights free.

The features for the density are those before the output layer's dropout (`features`); in `eval()` mode dropout
is the identity, so `forward(x) = out(features(x))`.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn

from evidential.models.lenet import Layers, _check
from evidential.spectral import soft_spectral_norm


class SpectralLayers(Layers):
    """Convolutions and linear layers spectrally normalised with coefficient `coeff` (`evidential.spectral`), all
    but the `last` (the output layer); `coeff=0` gives plain layers."""

    def __init__(self, coeff: float, n_power_iterations: int = 1):
        if coeff < 0:
            raise ValueError(f"coeff must be >= 0 (0: no spectral normalisation), got {coeff}")
        self.coeff, self.n_power_iterations = coeff, n_power_iterations

    def _wrap(self, module: nn.Module, last: bool = False) -> nn.Module:
        if self.coeff == 0 or last:
            return module
        return soft_spectral_norm(module, self.coeff, self.n_power_iterations)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, *, first: bool = False) -> nn.Module:
        return self._wrap(super().conv(in_channels, out_channels, kernel_size, first=first))

    def linear(self, in_features: int, out_features: int, *, first: bool = False, last: bool = False) -> nn.Module:
        return self._wrap(super().linear(in_features, out_features, first=first, last=last), last)


class ConvStage(nn.Module):
    r"""$h \mapsto \text{act}(\text{pool}(\text{conv}(h) + \text{shortcut}(\text{crop}(h))))$; without a shortcut,
    the LeNet's $\text{act}(\text{pool}(\text{conv}(h)))$ (pooling before the activation: the two commute for a
    monotone activation, and the activation then sees 4× fewer values)."""

    def __init__(self, conv: nn.Conv2d, shortcut: Optional[nn.Module], activation: nn.Module):
        super().__init__()
        self.conv, self.shortcut, self.pool, self.activation = conv, shortcut, nn.MaxPool2d(2, 2), activation
        # what a valid convolution loses at each border
        self.crop = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.conv(h)
        if self.shortcut is not None:
            ch, cw = self.crop
            # $\text{conv}_{5\times5}(h) + \text{conv}_{1\times1}(\text{crop}(h))$
            y = y + self.shortcut(h[..., ch:h.shape[-2] - ch, cw:h.shape[-1] - cw])
        return self.activation(self.pool(y))


class ResLeNet(nn.Module):
    """The DDU LeNet (module doc) for `[N, in_channels, 28, 28]` images and `n_classes` outputs: `features(x)` `[N,
    hidden]`, `forward(x)` the logits `[N, n_classes]`."""

    def __init__(self, n_classes: int, dropout: float = 0.5, in_channels: int = 1, hidden: int = 500,
                 layers: Layers = Layers(), residual: bool = True, negative_slope: float = 0.01):
        super().__init__()
        _check(n_classes, dropout)
        self.n_classes, self.residual = n_classes, residual
        activation: Callable[[], nn.Module] = (lambda: nn.LeakyReLU(negative_slope)) if residual else nn.ReLU
        # `[N, 1, 28, 28]` → conv 5×5 `[N, 20, 24, 24]` (+ 1×1 shortcut of the cropped input) → pooled `[N, 20, 12, 12]`
        self.stage1 = ConvStage(layers.conv(in_channels, 20, 5, first=True),
                                layers.conv(in_channels, 20, 1) if residual else None, activation())
        # → conv 5×5 `[N, 50, 8, 8]` (+ shortcut) → pooled `[N, 50, 4, 4]`
        self.stage2 = ConvStage(layers.conv(20, 50, 5), layers.conv(20, 50, 1) if residual else None, activation())
        # `[N, 800]` → the features `[N, hidden]`
        self.hidden = nn.Sequential(nn.Flatten(), layers.linear(50 * 4 * 4, hidden), activation())
        self.dropout = nn.Dropout(p=dropout)
        # one output per class, not normalised
        self.out = layers.linear(hidden, n_classes, last=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features $z = f_\\theta(x)$ `[N, hidden]`, on which the density is fitted."""
        return self.hidden(self.stage2(self.stage1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(x)))


def feature_distance_ratios(features: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            x_other: torch.Tensor) -> torch.Tensor:
    r"""$\|f(x_i) - f(x'_i)\|_2 / \|x_i - x'_i\|_2$ for the pairs of rows of `x` and `x_other` `[N, ...]` → `[N]`
    (pairs of equal inputs are left out): the smallest ratios measure sensitivity (how close distinct inputs can
    come in feature space), the largest smoothness."""
    with torch.no_grad():
        dx = (x - x_other).flatten(1).norm(dim=1)
        dz = (features(x) - features(x_other)).flatten(1).norm(dim=1)
    keep = dx > 0
    return dz[keep] / dx[keep]
