r"""
# ConvMod: PyTorch's classic MNIST network, built from a layer factory

The body of the capsa tutorials (`ConvMod`), which is the network of PyTorch's classic MNIST example:

* a $5 \times 5$ convolution with 10 channels, $2 \times 2$ max-pooling and ReLU;
* a $5 \times 5$ convolution with 20 channels, channel dropout (`Dropout2d`), $2 \times 2$ max-pooling
  and ReLU;
* flattening to $20 \cdot 4 \cdot 4 = 320$ features, a 50-unit fully-connected layer with ReLU and
  dropout, and a linear layer to $K$ outputs.

As in [lenet.py](lenet.py), the convolutions and linear layers come from a `Layers` factory (told which
is the `first` and which the `last`), so the same body serves plain, packed or other ensemble-like
layers. The outputs are unbounded logits (the classic example ends in `log_softmax`; here a softmax or an
[evidence head](../heads.py) is applied by the caller).
"""
import torch
import torch.nn as nn

from evidential.models.lenet import Layers, _check


class ConvMod(nn.Module):
    """ConvMod for `[N, in_channels, 28, 28]` images and `n_classes` outputs; `dropout` is the probability
    of both the channel dropout after the second convolution and the dropout after the hidden layer."""

    def __init__(self, n_classes: int, dropout: float = 0.5, in_channels: int = 1, layers: Layers = Layers()):
        super().__init__()
        _check(n_classes, dropout)
        self.n_classes = n_classes
        self.features = nn.Sequential(
            # $5 \times 5$ convolution: `[N, 1, 28, 28]` → `[N, 10, 24, 24]`, pooled to `[N, 10, 12, 12]`
            layers.conv(in_channels, 10, 5, first=True), nn.MaxPool2d(2), nn.ReLU(),
            # $5 \times 5$ convolution: → `[N, 20, 8, 8]`, whole channels dropped, pooled to `[N, 20, 4, 4]`
            layers.conv(10, 20, 5), nn.Dropout2d(p=dropout), nn.MaxPool2d(2), nn.ReLU(),
            # `[N, 320]`
            nn.Flatten(),
        )
        # Hidden layer with $50$ features, then dropout
        self.hidden = nn.Sequential(layers.linear(20 * 4 * 4, 50), nn.ReLU(), nn.Dropout(p=dropout))
        # Final layer: one output per class
        self.out = layers.linear(50, n_classes, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.features(x)))
