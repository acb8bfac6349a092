"""A family defined only here and by one registry entry (tests/test_families.py): a temperature-scaled softmax."""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml.configs import option

from configs.lenet import CHECKS, SMOKE, LeNetExperimentConfigs, lenet_body
from configs.registry import Family, positive
from evidential.prediction import Prediction


class TemperatureConfigs(LeNetExperimentConfigs):
    experiment_name: str = 'toy_mnist'
    model: nn.Module
    # p = softmax(z / T)
    temperature: float = 2.0

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return F.cross_entropy(outputs / self.temperature, labels), {}

    def predict(self, outputs: torch.Tensor) -> Prediction:
        probs = (outputs.float() / self.temperature).softmax(-1)
        # a score of its own: the margin between the two most likely classes, turned into "higher = less sure"
        top2 = probs.topk(2, dim=-1).values
        return Prediction(probs, scores={'margin': 1 - (top2[:, 0] - top2[:, 1])})


option(TemperatureConfigs.model, 'lenet')(lenet_body)

FAMILY = Family(
    name='toy_mnist',
    configs=TemperatureConfigs,
    description='temperature-scaled softmax (a test family)',
    defaults={'dataset': 'mnist', 'model': 'lenet', 'temperature': 2.0},
    presets={'smoke': SMOKE},
    checks={**CHECKS, 'temperature': positive},
    label_keys=lambda values: ['temperature'],
    label_names={'temperature': 'T'},
)
