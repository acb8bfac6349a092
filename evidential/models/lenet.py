r"""
# LeNet bodies, built from layer factories

Every body here asks a `Layers` factory for its convolutions and linear layers instead of calling
`nn.Conv2d` / `nn.Linear` itself (as TorchUncertainty's `models/classification/lenet.py` does), so a
packed, Bayesian or other variant of the same network is the same body with other layers:
`LeNet(10, layers=Layers())` is the plain network; another `Layers` subclass returns other modules
from `conv` and `linear`. The factory is told which layer is the `first` (it sees the raw input) and
which the `last` (it gives the class outputs), since ensemble-like layers treat those two differently.

* `LeNet`: the network of labml_nn's evidential MNIST experiment and of Sensoy et al. (2018, Sec. 5):
  two $5 \times 5$ convolutions with 20 and 50 channels, each followed by $2 \times 2$ max-pooling and
  ReLU, a 500-unit fully-connected layer with dropout, and a linear layer to $K$ outputs.
* `LeNet5`: LeCun's LeNet-5 as TorchUncertainty's tutorials use it: convolutions with 6 and 16
  channels, ReLU and max-pooling, adaptive average pooling to $4 \times 4$, linear layers of 120 and 84
  units, and a linear layer to $K$ outputs.

The outputs are unbounded; an [evidence head](../heads.py) turns them into evidence, or a softmax
into class probabilities.
"""
import torch
import torch.nn as nn


def keep_layout(like: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`values` (of `like`'s shape) with `like`'s strides. A kernel computed from channels-last parameters by
    arithmetic loses the channels-last strides when a dimension has size 1 (the first convolution's
    `[C_out, 1, kh, kw]`: either layout fits it, and PyTorch picks NCHW); the convolution then computes in NCHW
    and so does the max-pooling after it, several times slower on CPU than in channels-last."""
    return values if values.stride() == like.stride() else torch.empty_like(like).copy_(values)


class Layers:
    """The plain layer factory: `nn.Conv2d` and `nn.Linear`. Subclasses return other modules."""

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, *, first: bool = False) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, kernel_size)

    def linear(self, in_features: int, out_features: int, *, first: bool = False, last: bool = False) -> nn.Module:
        return nn.Linear(in_features, out_features)


def _check(n_classes: int, dropout: float) -> None:
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if not 0. <= dropout < 1.:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class LeNet(nn.Module):
    """LeNet for `[N, in_channels, 28, 28]` images and `n_classes` outputs (taken from the data)."""

    def __init__(self, n_classes: int, dropout: float = 0.5, in_channels: int = 1, hidden: int = 500,
                 layers: Layers = Layers()):
        super().__init__()
        _check(n_classes, dropout)
        self.n_classes = n_classes
        # Max-pooling comes before the ReLU: the two commute ($\max_i \text{relu}(x_i) = \text{relu}(\max_i x_i)$),
        # so the network is the same function, with the ReLU applied to 4x fewer values.
        self.features = nn.Sequential(
            # $5 \times 5$ convolution: `[N, 1, 28, 28]` → `[N, 20, 24, 24]`, pooled to `[N, 20, 12, 12]`
            layers.conv(in_channels, 20, 5, first=True), nn.MaxPool2d(2, 2), nn.ReLU(),
            # $5 \times 5$ convolution: → `[N, 50, 8, 8]`, pooled to `[N, 50, 4, 4]`
            layers.conv(20, 50, 5), nn.MaxPool2d(2, 2), nn.ReLU(),
            nn.Flatten(),
        )
        # Hidden layer with $500$ features, then dropout
        self.hidden = nn.Sequential(layers.linear(50 * 4 * 4, hidden), nn.ReLU(), nn.Dropout(p=dropout))
        # Final layer: one output per class
        self.out = layers.linear(hidden, n_classes, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.features(x)))


class LeNet5(nn.Module):
    """LeNet-5 (TorchUncertainty's tutorial body) for `[N, in_channels, 28, 28]` images and `n_classes` outputs."""

    def __init__(self, n_classes: int, dropout: float = 0., in_channels: int = 1, layers: Layers = Layers()):
        super().__init__()
        _check(n_classes, dropout)
        self.n_classes = n_classes
        self.features = nn.Sequential(
            # `[N, 1, 28, 28]` → `[N, 6, 24, 24]` → pooled `[N, 6, 12, 12]`
            layers.conv(in_channels, 6, 5, first=True), nn.ReLU(), nn.MaxPool2d(2),
            # → `[N, 16, 8, 8]` → pooled `[N, 16, 4, 4]`
            layers.conv(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            # a no-op on 28 x 28 inputs; other sizes are pooled to 4 x 4 as in the tutorial
            nn.AdaptiveAvgPool2d((4, 4)),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(layers.linear(16 * 4 * 4, 120), nn.ReLU(), nn.Dropout(p=dropout),
                                    layers.linear(120, 84), nn.ReLU(), nn.Dropout(p=dropout))
        self.out = layers.linear(84, n_classes, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.features(x)))
