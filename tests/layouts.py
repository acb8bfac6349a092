"""Which memory layout a model's convolutions compute in."""
from typing import List, Type

import torch
import torch.nn as nn


def record_channels_last(model: nn.Module, layer_type: Type[nn.Module]) -> List[bool]:
    """A list that fills, on every later forward, with whether each `layer_type` layer's output is channels-last."""
    layouts: List[bool] = []
    for layer in model.modules():
        if isinstance(layer, layer_type):
            layer.register_forward_hook(
                lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
    return layouts
