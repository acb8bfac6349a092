r"""
# Softmax baseline — `python -m experiments.softmax_mnist`

The LeNet trained with cross-entropy; $\hat{p} = \text{softmax}(z)$. Its only scores are those of every
prediction (entropy and $1 - \max_k \hat{p}_k$). With `outlier_coef` > 0 the jigsaw outliers are pulled
towards the uniform distribution (outlier exposure, Hendrycks et al., 2019).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml.configs import option

from configs.lenet import CHECKS as LENET_CHECKS, TRAINING_DEFAULTS, LeNetExperimentConfigs, baseline_presets, \
    lenet_body
from configs.registry import Family
from evidential.outliers import uniform_to_softmax_kl
from evidential.prediction import Prediction


class SoftmaxConfigs(LeNetExperimentConfigs):
    """
    ## Softmax baseline

    The LeNet trained with cross-entropy; $\\hat{p} = \\text{softmax}(z)$, no uncertainty mass.
    """
    experiment_name: str = 'softmax_mnist'

    # The model, chosen by name among this family's options
    model: nn.Module

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return F.cross_entropy(outputs, labels), {}

    def predict(self, outputs: torch.Tensor) -> Prediction:
        return Prediction(probs=outputs.float().softmax(-1))

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        return uniform_to_softmax_kl(outputs).mean()


option(SoftmaxConfigs.model, 'lenet')(lenet_body)

#: The LeNet families' training recipe, no weight decay (as usual for softmax baselines)
DEFAULTS = {'dataset': 'mnist', 'model': 'lenet', **TRAINING_DEFAULTS, 'optimizer.weight_decay': 0.0}

FAMILY = Family(
    name='softmax_mnist',
    configs=SoftmaxConfigs,
    description='cross-entropy LeNet, p = softmax(z)',
    defaults=DEFAULTS,
    presets=baseline_presets(),
    checks=LENET_CHECKS,
)
