r"""
# Deep ensemble — `python -m experiments.ensemble_mnist`

`ensemble_size` $= M$ independently initialised LeNets (Lakshminarayanan et al., 2017) held as one
Packed-Ensemble with $\alpha = M$, $\gamma = 1$ (`evidential.models.ensemble.deep_ensemble`: the same grouped
layers as `packed_mnist`, one implementation) whose forward gives `[M, N, K]` logits;
the loss is the sum of the members' cross-entropies on the same batch, so each member gets exactly the
gradient it would get alone; $\hat{p}$ is the mean of the members' softmaxes, with the mutual information.
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml import tracker
from labml.configs import option

from configs.lenet import CHECKS as LENET_CHECKS, LeNetExperimentConfigs, baseline_presets
from configs.registry import Capabilities, Family, between
from configs.softmax import DEFAULTS as SOFTMAX_DEFAULTS
from evidential.models.ensemble import deep_ensemble, member_seeds
from evidential.models.lenet import LeNet
from evidential.outliers import uniform_to_softmax_kl
from evidential.prediction import Prediction, sampled_prediction


class EnsembleConfigs(LeNetExperimentConfigs):
    """
    ## Deep ensemble

    `ensemble_size` LeNets, each initialised with its own seed, trained together on the same
    batches as one vectorised model (`model=lenet_ensemble`); outputs are `[M, N, K]` logits.
    """
    experiment_name: str = 'ensemble_mnist'

    # The model, chosen by name among this family's options
    model: nn.Module

    # Number M of ensemble members
    ensemble_size: int = 5

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        m_size = outputs.shape[0]
        # $\sum_m \text{CE}_m$: each member's gradient is the one it would get trained alone
        per_member = F.cross_entropy(outputs.flatten(0, 1), labels.repeat(m_size), reduction='none')
        per_member = per_member.view(m_size, -1).mean(1)
        return per_member.sum(), {'ce.train': per_member.mean().detach()}

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        # per member, summed like the members' cross-entropies
        return uniform_to_softmax_kl(outputs).mean(-1).sum()

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """`[M, N, K]` logits of the members: mean softmax, mutual information and disagreement."""
        return sampled_prediction(outputs, disagreement=True)

    def architecture(self) -> Dict[str, object]:
        return {**super().architecture(), 'ensemble_size': self.ensemble_size}

    def init_tracker(self):
        super().init_tracker()
        tracker.set_scalar('ce.*', False)


@option(EnsembleConfigs.model, 'lenet_ensemble')
def _lenet_ensemble(c: EnsembleConfigs):
    model = deep_ensemble(LeNet, c.n_classes, member_seeds(c.seed, c.ensemble_size), dropout=c.dropout)
    # Dropout and everything after draw from the run's seed, as for the single LeNet
    torch.manual_seed(c.seed)
    return model.to(c.dataset.train.images.device, memory_format=torch.channels_last)


FAMILY = Family(
    name='ensemble_mnist',
    configs=EnsembleConfigs,
    description='deep ensemble: M LeNets trained together (a Packed-Ensemble with alpha = M, gamma = 1), softmaxes averaged',
    defaults={**SOFTMAX_DEFAULTS, 'model': 'lenet_ensemble', 'ensemble_size': 5},
    presets=baseline_presets(ensemble_size=3),
    checks={**LENET_CHECKS, 'ensemble_size': between(1, 100)},
    label_keys=lambda values: ['ensemble_size'],
    label_names={'ensemble_size': 'M'},
    capabilities=Capabilities(samples=True),
)
