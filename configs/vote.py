r"""
# Vote wrapper — `python -m experiments.vote_mnist`

The idea of capsa's `vote.Wrapper(n_voters=8)(model)`, as this app implements it (capsa is closed source):
`evidential.models.vote.wrap` turns the body into `n_voters` voters that share its weights, each with its
own rank-1 fast weights (BatchEnsemble, Wen, Tran & Ba, ICLR 2020). In training each batch is split among
the voters; at evaluation every voter sees every input (`[M, N, K]` outputs). The prediction is the voters'
mean softmax, scored by entropy, msp, the mutual information, the voters' disagreement and `voter_variance`
(capsa's risk: the variance of the voters' probabilities, summed over classes).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml.configs import option

from configs.lenet import CHECKS as LENET_CHECKS, LeNetExperimentConfigs, baseline_presets
from configs.registry import Capabilities, Family, Preset, between
from configs.softmax import DEFAULTS as SOFTMAX_DEFAULTS
from evidential.models.convmod import ConvMod
from evidential.models.lenet import LeNet
from evidential.models.vote import VoteModel, vote_statistics, wrap
from evidential.outliers import uniform_to_softmax_kl
from evidential.prediction import Prediction, sampled_prediction


class VoteConfigs(LeNetExperimentConfigs):
    """
    ## Vote wrapper

    * `n_voters`: voters $M$ (the training batch size must be a multiple of it, as in capsa)
    * `model`: `lenet` or `convmod` (the capsa tutorial's body)
    """
    experiment_name: str = 'vote_mnist'

    # The wrapped body, chosen by name
    model: nn.Module
    # Number of voters
    n_voters: int = 8

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # `[B, K]`: chunk $i$ of the batch by voter $i$
        return F.cross_entropy(outputs, labels), {}

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        return uniform_to_softmax_kl(outputs).mean()

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """`[M, N, K]` logits of the voters."""
        pred = sampled_prediction(outputs, disagreement=True)
        # capsa's risk: $\sum_k \text{Var}_i[p_{ik}]$
        pred.scores['voter_variance'] = vote_statistics(outputs.float())[1].sum(-1)
        return pred

    def architecture(self) -> Dict[str, object]:
        return {**super().architecture(), 'body': type(self.model.model).__name__, 'n_voters': self.n_voters}


def voters(c: VoteConfigs, body: type) -> VoteModel:
    """The wrapped body; the batch sizes the loop will see (incl. the last, shorter batch and the outliers)
    are checked here, before anything is written."""
    n, b, n_train = c.n_voters, c.train_batch_size, len(c.dataset.train)
    sizes = {b, n_train % b or b}
    if c.outlier_coef > 0:
        sizes = {s + max(1, round(s * c.outlier_fraction)) for s in sizes}
    bad = sorted(s for s in sizes if s % n)
    if bad:
        raise ValueError(f"vote_mnist splits every training batch among the n_voters={n} voters, but batches of "
                         f"{', '.join(map(str, bad))} images would occur (train_batch_size={b}, {n_train} training "
                         f"images{', outliers included' if c.outlier_coef > 0 else ''}); choose train_batch_size "
                         f"and holdout so that every batch is a multiple of {n}")
    torch.manual_seed(c.seed)
    model = wrap(body(c.n_classes, c.dropout), n)
    return model.to(c.dataset.train.images.device)


option(VoteConfigs.model, 'lenet')(lambda c: voters(c, LeNet))
option(VoteConfigs.model, 'convmod')(lambda c: voters(c, ConvMod))

DEFAULTS = {**SOFTMAX_DEFAULTS, 'model': 'lenet', 'n_voters': 8}

PRESETS = {
    **baseline_presets(n_voters=4),
    'capsa': Preset(
        "capsa's vote-wrapper MNIST tutorial (vote.Wrapper(n_voters=8) around its ConvMod), as this app implements it",
        {'model': 'convmod', 'n_voters': 8, 'train_batch_size': 128, 'optimizer.optimizer': 'Adam',
         'optimizer.learning_rate': 1e-3, 'optimizer.weight_decay': 0.0, 'epochs': 5, 'dropout': 0.5,
         'lr_schedule': 'constant', 'holdout': 0.0, 'augment_shift': 0.0, 'augment_rotate': 0.0,
         'outlier_coef': 0.0},
        {'n_voters': 'vote.Wrapper(n_voters=8)', 'train_batch_size': 'batch_size = 128',
         'optimizer.optimizer': 'torch.optim.Adam(lr=1e-3)', 'epochs': 'model.fit(..., epochs=5)',
         'model': "the tutorial's ConvMod (conv 10 -> conv 20 with Dropout2d -> fc 50 -> fc 10)",
         'holdout': 'the tutorial evaluates on the test set'}),
}

FAMILY = Family(
    name='vote_mnist',
    configs=VoteConfigs,
    description="vote wrapper (capsa's idea, BatchEnsemble voters): n voters sharing one body's weights",
    defaults=DEFAULTS,
    presets=PRESETS,
    checks={**LENET_CHECKS, 'n_voters': between(1, 256)},
    label_keys=lambda values: ['model', 'n_voters'],
    label_names={'n_voters': 'M'},
    capabilities=Capabilities(samples=True),
)
