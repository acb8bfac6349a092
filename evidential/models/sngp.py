r"""
# The SNGP LeNet: DDU's spectrally normalised residual body, a Gaussian-process output layer

SNGP (Liu et al., NeurIPS 2020) asks of the body what DDU asks (`evidential.models.ddu`): features that are
smooth (spectral normalisation) and sensitive (residual connections), so that distances between features reflect
distances between inputs — the *distance awareness* the GP's RBF kernel then turns into uncertainty. `SNGPLeNet`
is `ResLeNet` (the same stages, shortcuts, leaky ReLU and spectral normalisation, built by the same code) whose
free output layer is replaced by `evidential.sngp.RandomFeatureGP`:

$$x \to h = f_\theta(x) \text{ `[N, hidden]`} \to \text{dropout} \to \text{(layer norm)} \to \Phi(h) \text{ `[N, D]`}
  \to \Phi(h)^\top \beta \text{ `[N, K]`}.$$

`ResLeNet` initialises its own output layer before it is replaced: the body's weights are those of a `ResLeNet`
with the same seed. The GP's random $W$, $b$ come from their own generator (`generator`), so the body's
initialisation does not depend on $D$.
"""
from typing import Optional

import torch
import torch.nn as nn

from evidential.models.ddu import ResLeNet
from evidential.models.lenet import Layers
from evidential.sngp import RandomFeatureGP


class SNGPLeNet(ResLeNet):
    """`ResLeNet` with the GP output layer `out` (module doc): `features(x)` `[N, hidden]`, `random_features(x)`
    `[N, D]`, `forward(x)` the logits of the MAP `[N, n_classes]`."""

    def __init__(self, n_classes: int, dropout: float = 0.0, in_channels: int = 1, hidden: int = 500,
                 layers: Layers = Layers(), residual: bool = True, n_random_features: int = 1024,
                 lengthscale: float = 1.0, layer_norm: bool = True, generator: Optional[torch.Generator] = None):
        super().__init__(n_classes, dropout, in_channels, hidden, layers, residual)
        # the output layer is the GP
        self.out: RandomFeatureGP = RandomFeatureGP(hidden, n_classes, n_random_features, lengthscale, layer_norm,
                                                    generator)

    def random_features(self, x: torch.Tensor) -> torch.Tensor:
        """$\\Phi(f_\\theta(x))$ `[N, D]`, in eval mode (no dropout)."""
        return self.out.random_features(self.features(x))
