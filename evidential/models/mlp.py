r"""
# A fully-connected body, built from a layer factory

The fully-connected network of Pyro-based Bayesian-neural-network examples on MNIST: the image flattened to
$784$ inputs, three hidden layers of $1024$ units with leaky ReLU, and a linear layer to $K$ outputs,

$$\mathbf{h}_0 = \text{vec}(\mathbf{x}), \qquad
  \mathbf{h}_l = \text{leaky\_relu}(\mathbf{W}_l \mathbf{h}_{l-1} + \mathbf{b}_l), \qquad
  \mathbf{z} = \mathbf{W}_{L+1} \mathbf{h}_L + \mathbf{b}_{L+1}$$

with $\text{leaky\_relu}(a) = \max(a, 0.01 a)$. As in [lenet.py](lenet.py), the linear layers come from a
`Layers` factory: `MLP(10, layers=BayesLayers())` is the Bayesian MLP. The factory is told which layer is
the `last`; it is told which is the `first` only if its `linear` takes a `first` keyword (the plain
`Layers.linear` does not, yet).
"""
from typing import Sequence

import torch
import torch.nn as nn

from evidential.models.lenet import Layers


class MLP(nn.Module):
    """An MLP for `[N, ...]` inputs of `in_features` values each (`[N, 1, 28, 28]` images are flattened)."""

    def __init__(self, n_classes: int, in_features: int = 784, hidden: Sequence[int] = (1024, 1024, 1024),
                 layers: Layers = Layers(), negative_slope: float = 0.01):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        hidden = tuple(hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {hidden}")
        self.n_classes = n_classes
        self.in_features = in_features
        self.flatten = nn.Flatten()
        sizes = (in_features,) + hidden
        blocks = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            # $\mathbf{h}_l = \text{leaky\_relu}(\mathbf{W}_l \mathbf{h}_{l-1} + \mathbf{b}_l)$
            blocks += [layers.linear(n_in, n_out, first=i == 0, last=False), nn.LeakyReLU(negative_slope)]
        self.hidden = nn.Sequential(*blocks)
        # $\mathbf{z} = \mathbf{W}_{L+1} \mathbf{h}_L + \mathbf{b}_{L+1}$
        self.out = layers.linear(sizes[-1], n_classes, first=not hidden, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1:].numel() != self.in_features:
            raise ValueError(f"MLP expects [N, ...] inputs with {self.in_features} values per example, "
                             f"got shape {tuple(x.shape)}")
        return self.out(self.hidden(self.flatten(x)))
