r"""
# Packed-Ensembles — `python -m experiments.packed_mnist`

Laurent et al., *Packed-Ensembles for Efficient Uncertainty Estimation*, ICLR 2023, and TorchUncertainty's
MNIST tutorial: `num_estimators` $= M$ members packed into one network of grouped layers
(`evidential.models.packed`), width $\times$ `alpha`, `gamma` subgroups per member. The model gives `[M, N, K]`
logits; training is the cross-entropy of the $M \cdot B$ logits against the targets repeated $M$ times
(TorchUncertainty's `ClassificationRoutine`); the prediction is the mean of the members' softmaxes, scored
by entropy, msp, the mutual information and the members' disagreement.

Bodies: `lenet5` (the tutorial's LeNet-5, 45,672 parameters at `alpha=2`, `num_estimators=4`) and `lenet`
(this app's LeNet). A deep ensemble is the special case `alpha = num_estimators`, `gamma = 1`
(`experiments.ensemble_mnist` runs exactly that).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml.configs import option

from configs.lenet import CHECKS as LENET_CHECKS, LeNetExperimentConfigs, baseline_presets
from configs.registry import Capabilities, Family, Preset, between
from configs.softmax import DEFAULTS as SOFTMAX_DEFAULTS
from evidential.models.lenet import LeNet, LeNet5
from evidential.models.packed import PackedEnsemble
from evidential.outliers import uniform_to_softmax_kl
from evidential.prediction import Prediction, sampled_prediction


class PackedConfigs(LeNetExperimentConfigs):
    """
    ## Packed-Ensembles

    * `alpha`: width factor (`num_estimators` for a deep ensemble)
    * `num_estimators`: members $M$
    * `gamma`: subgroups per member
    * `model`: `lenet5` (the tutorial's body) or `lenet`
    """
    experiment_name: str = 'packed_mnist'

    # The packed body, chosen by name
    model: nn.Module
    # Width factor $\alpha$: each member has $\alpha / M$ of the plain body's channels
    alpha: float = 2.0
    # Number of members $M$
    num_estimators: int = 4
    # Subgroups per member $\gamma$
    gamma: int = 1

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # $\frac{1}{MB} \sum_{m, i} \text{CE}(\mathbf{z}_{mi}, y_i)$: `[M, B, K]` logits against targets repeated M times
        m_size = outputs.shape[0]
        return F.cross_entropy(outputs.flatten(0, 1), labels.repeat(m_size)), {}

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        # per member, averaged like the cross-entropy
        return uniform_to_softmax_kl(outputs).mean()

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """`[M, N, K]` logits of the members: mean softmax, mutual information and disagreement."""
        return sampled_prediction(outputs, disagreement=True)

    def architecture(self) -> Dict[str, object]:
        return {**super().architecture(), 'body': type(self.model.body).__name__, 'alpha': self.alpha,
                'num_estimators': self.num_estimators, 'gamma': self.gamma}


def packed(c: PackedConfigs, body: type) -> PackedEnsemble:
    # Seed right before initialisation, as for the single LeNet; channels-last for oneDNN / cuDNN
    torch.manual_seed(c.seed)
    model = PackedEnsemble(body, c.n_classes, alpha=c.alpha, num_estimators=c.num_estimators, gamma=c.gamma,
                           dropout=c.dropout)
    return model.to(c.dataset.train.images.device, memory_format=torch.channels_last)


option(PackedConfigs.model, 'lenet5')(lambda c: packed(c, LeNet5))
option(PackedConfigs.model, 'lenet')(lambda c: packed(c, LeNet))

# This app's recipe (the evidential default's: Adam 1e-3, cosine, light augmentation, holdout, 20 epochs) on
# the tutorial's body, without dropout (TorchUncertainty's LeNet-5 has none)
DEFAULTS = {**SOFTMAX_DEFAULTS, 'model': 'lenet5', 'alpha': 2.0, 'num_estimators': 4, 'gamma': 1, 'dropout': 0.0}

PRESETS = {
    **baseline_presets(num_estimators=2),
    'torch_uncertainty': Preset(
        "TorchUncertainty's Packed-Ensembles MNIST tutorial (auto_tutorials/Classification/tutorial_pe_mnist)",
        {'model': 'lenet5', 'alpha': 2.0, 'num_estimators': 4, 'gamma': 1, 'dropout': 0.0,
         'optimizer.optimizer': 'SGD', 'optimizer.learning_rate': 0.05 * 4, 'optimizer.momentum': 0.0,
         'optimizer.weight_decay': 0.0, 'lr_schedule': 'cosine_epochs', 'lr_period_epochs': 10.0,
         'train_batch_size': 512, 'epochs': 3, 'holdout': 0.0, 'augment_shift': 0.0, 'augment_rotate': 0.0,
         'outlier_coef': 0.0},
        {'alpha': 'PackedLeNet(alpha=2, num_estimators=4, gamma=1)',
         'optimizer.optimizer': 'optim_recipe: SGD',
         'optimizer.learning_rate': 'lr=0.05 * num_estimators',
         'lr_schedule': 'CosineAnnealingLR(T_max=10), stepped once per epoch',
         'train_batch_size': 'MNISTDataModule(batch_size=512)',
         'epochs': 'TUTrainer(max_epochs=3)',
         'holdout': 'the tutorial validates on the test set'}),
}

FAMILY = Family(
    name='packed_mnist',
    configs=PackedConfigs,
    description='Packed-Ensembles (Laurent et al., 2023): M members packed into one grouped network',
    defaults=DEFAULTS,
    presets=PRESETS,
    checks={**LENET_CHECKS, 'alpha': between(0.01, 100), 'num_estimators': between(1, 100),
            'gamma': between(1, 64)},
    label_keys=lambda values: ['model', 'alpha', 'num_estimators', 'gamma'],
    label_names={'alpha': 'α', 'num_estimators': 'M', 'gamma': 'γ'},
    capabilities=Capabilities(samples=True),
)
