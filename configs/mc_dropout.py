r"""
# MC dropout — `python -m experiments.mc_dropout_mnist`

Trained as the softmax baseline; evaluated with the dropout modules active, averaging `mc_samples`
$= T$ softmax samples (Gal & Ghahramani, 2016): `[T, N, K]` outputs, the mean softmax and the mutual
information (`evidential.prediction.sampled_prediction`).
"""
import torch

from configs.lenet import CHECKS as LENET_CHECKS, baseline_presets
from configs.registry import Capabilities, Family, between
from configs.softmax import DEFAULTS as SOFTMAX_DEFAULTS, SoftmaxConfigs
from evidential.models.mc_dropout import mc_dropout_logits
from evidential.prediction import Prediction, sampled_prediction


class MCDropoutConfigs(SoftmaxConfigs):
    """
    ## MC dropout

    Trained as the softmax baseline; evaluation outputs are `[T, N, K]` logits of T dropout samples.
    """
    experiment_name: str = 'mc_dropout_mnist'

    # Number T of stochastic forward passes averaged at evaluation
    mc_samples: int = 20

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return mc_dropout_logits(self.model, x, self.mc_samples)

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """`[T, N, K]` logits of T dropout samples (a single `[N, K]` pass counts as T=1)."""
        return sampled_prediction(outputs)


FAMILY = Family(
    name='mc_dropout_mnist',
    configs=MCDropoutConfigs,
    description='MC dropout: the softmax LeNet with dropout kept on at test time, T passes averaged',
    defaults={**SOFTMAX_DEFAULTS, 'mc_samples': 20},
    presets=baseline_presets(mc_samples=4),
    checks={**LENET_CHECKS, 'mc_samples': between(1, 1000)},
    label_keys=lambda values: ['mc_samples', 'dropout'],
    label_names={'mc_samples': 'T'},
    capabilities=Capabilities(samples=True),
)
