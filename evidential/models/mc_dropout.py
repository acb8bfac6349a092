r"""
# MC dropout (Gal & Ghahramani, 2016)

The network is trained as usual; at test time its dropout modules (only those) stay in train mode and
the prediction averages $T$ stochastic passes, $\bar{p} = \frac{1}{T}\sum_t \text{softmax}(z_t)$
(`evidential.prediction.sampled_prediction` turns the `[T, N, K]` logits into $\bar{p}$ and the mutual
information).
"""
from contextlib import contextmanager
from typing import Iterator, List

import torch
import torch.nn as nn

from evidential.models.lenet import LeNet


def _dropouts(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextmanager
def dropout_sampling(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode except its dropout modules (train mode); every module's mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in _dropouts(model):
        m.train()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def mc_dropout_logits(model: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    """
    Logits `[T, N, K]` of `samples` = T stochastic passes with only the dropout modules active.

    For a `LeNet`, whose only dropout sits after the hidden layer, everything before it is
    deterministic: it is computed once and only the dropout mask and the last layer are sampled
    T times (the same distribution as T full passes, ~T times less work). Other models run T full passes.
    """
    with dropout_sampling(model):
        dropouts = _dropouts(model)
        if isinstance(model, LeNet) and len(dropouts) == 1 and model.hidden[-1] is dropouts[0]:
            h = model.hidden[:-1](model.features(x))
            return model.out(model.hidden[-1](h.expand(samples, *h.shape)))
        return torch.stack([model(x) for _ in range(samples)])
