r"""
# LeNet body

The LeNet of labml_nn's evidential MNIST experiment and of Sensoy et al. (2018, Sec. 5):
two $5 \times 5$ convolutions with 20 and 50 channels, each followed by ReLU and $2 \times 2$
max-pooling, a 500-unit fully-connected layer with dropout, and a linear layer to $K$ outputs.
The outputs are unbounded; an [evidence head](heads.py) turns them into evidence, or a softmax
into class probabilities for the baselines.
"""
import torch
import torch.nn as nn


class LeNet(nn.Module):
    """LeNet for `[N, in_channels, 28, 28]` images and `n_classes` outputs (taken from the data)."""

    def __init__(self, n_classes: int, dropout: float = 0.5, in_channels: int = 1, hidden: int = 500):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if not 0. <= dropout < 1.:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_classes = n_classes
        # Max-pooling comes before the ReLU: the two commute ($\max_i \text{relu}(x_i) = \text{relu}(\max_i x_i)$),
        # so the network is the same function, with the ReLU applied to 4x fewer values.
        self.features = nn.Sequential(
            # $5 \times 5$ convolution: `[N, 1, 28, 28]` → `[N, 20, 24, 24]`, pooled to `[N, 20, 12, 12]`
            nn.Conv2d(in_channels, 20, kernel_size=5), nn.MaxPool2d(2, 2), nn.ReLU(),
            # $5 \times 5$ convolution: → `[N, 50, 8, 8]`, pooled to `[N, 50, 4, 4]`
            nn.Conv2d(20, 50, kernel_size=5), nn.MaxPool2d(2, 2), nn.ReLU(),
            nn.Flatten(),
        )
        # Hidden layer with $500$ features, then dropout
        self.hidden = nn.Sequential(nn.Linear(50 * 4 * 4, hidden), nn.ReLU(), nn.Dropout(p=dropout))
        # Final layer: one output per class
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.features(x)))
