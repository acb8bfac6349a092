"""
# What the LeNet families share

The keys of the image classifiers built on `evidential.models.lenet` (evidential, softmax, MC dropout,
ensembles): the `lenet` body and its dropout, light augmentation of training batches, and synthetic
jigsaw outliers trained towards "don't know" (how each family pulls them is its `outlier_loss`).
A family without these (a circuit on raw pixels, say) derives from `MNISTExperimentConfigs` directly.

`TRAINING_KEYS` and `training_preset` let the baselines take the evidential experiment's training recipe,
so a comparison of default runs differs only in what the model's outputs mean.
"""
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
from labml import tracker

from configs.cli import Preset
from configs.experiment import MNISTExperimentConfigs
from evidential.augment import random_affine
from evidential.models.lenet import LeNet
from evidential.outliers import jigsaw_outliers


class LeNetExperimentConfigs(MNISTExperimentConfigs):
    """
    ## A LeNet-style image classifier with dropout, augmentation and synthetic outliers
    """
    # Dropout before the last layer
    dropout: float = 0.5

    # Light augmentation of training images: random shifts up to this many pixels ...
    augment_shift: float = 0.0
    # ... and random rotations up to this many degrees (0 and 0: none)
    augment_rotate: float = 0.0

    # Synthetic outliers (`evidential/outliers.py`) trained towards "don't know": weight of their loss, 0 = off
    outlier_coef: float = 0.0
    # Tiles per side of the jigsaw outliers (must divide 28: 2, 4, 7, 14)
    outlier_grid: int = 2
    # Outliers per training batch, as a fraction of the batch size
    outlier_fraction: float = 0.5

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        """The loss that pulls the outputs for synthetic outliers towards "don't know" (used when `outlier_coef` > 0)."""
        raise NotImplementedError(f"{type(self).__name__} does not support synthetic outliers (outlier_coef > 0)")

    def transform_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_affine(x, self.augment_shift, self.augment_rotate, generator)

    def training_step(self, x: torch.Tensor, y: torch.Tensor, samples_seen: int,
                      generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """Forward pass and loss of one (augmented) training batch: the outputs for `x`, the loss and extras.

        With `outlier_coef` $\\lambda_o > 0$, jigsaw outliers made from the first `outlier_fraction` of the
        (shuffled) batch go through the same forward pass and $\\mathcal{L} = \\mathcal{L}_\\text{batch}
        + \\lambda_o \\mathcal{L}_\\text{outliers}$. `generator` is the run's CPU generator (reproducible, resumable).
        """
        if self.outlier_coef == 0:
            return super().training_step(x, y, samples_seen, generator)
        outliers = jigsaw_outliers(x[:max(1, round(len(x) * self.outlier_fraction))], self.outlier_grid, generator)
        # One forward pass over batch and outliers; samples are the second-to-last dimension (`[N, K]`, `[M, N, K]`)
        both = self.model(torch.cat([x, outliers]))
        outputs, outlier_outputs = both.split([len(x), len(outliers)], dim=-2)
        loss, extras = self.training_loss(outputs, y, samples_seen)
        outlier_loss = self.outlier_loss(outlier_outputs)
        # $\mathcal{L} = \mathcal{L}_\text{batch} + \lambda_o \mathcal{L}_\text{outliers}$
        return outputs, loss + self.outlier_coef * outlier_loss, {**extras, 'outliers.train': outlier_loss}

    def init_tracker(self):
        super().init_tracker()
        tracker.set_scalar('outliers.*', False)


def lenet_body(c: LeNetExperimentConfigs) -> nn.Module:
    # Seed right before initialisation, so the same seed gives the same weights whatever ran before
    torch.manual_seed(c.seed)
    # channels-last weights make oneDNN (CPU) and cuDNN (GPU) use their fast NHWC kernels:
    # measured 2.5x faster evaluation and ~1.6x faster training steps on the 2-core CPU
    return LeNet(c.n_classes, c.dropout).to(c.dataset.train.images.device, memory_format=torch.channels_last)


#: Range checks of the keys above (checked before anything is written)
CHECKS = {
    'dropout': lambda v: None if 0 <= v < 1 else 'must be in [0, 1)',
    'outlier_coef': lambda v: None if v >= 0 else 'must be >= 0',
    'outlier_fraction': lambda v: None if 0 < v <= 1 else 'must be in (0, 1] (outliers per batch image)',
    # checked here, before anything is written; `jigsaw_outliers` would only fail in the first step
    'outlier_grid': lambda v: None if v in (2, 4, 7, 14) else 'must divide the 28-pixel side: 2, 4, 7 or 14',
    'augment_shift': lambda v: None if 0 <= v <= 8 else 'must be in [0, 8] pixels',
    'augment_rotate': lambda v: None if 0 <= v <= 180 else 'must be in [0, 180] degrees',
}

# The training recipe (optimizer, schedule, augmentation, holdout, epochs) that the baselines take from the
# evidential experiment, so that a comparison of default runs differs only in what the model's outputs mean.
TRAINING_KEYS = ('optimizer.optimizer', 'optimizer.learning_rate', 'optimizer.weight_decay', 'lr_schedule',
                 'augment_shift', 'augment_rotate', 'holdout', 'epochs', 'train_batch_size', 'dropout')


def training_defaults(defaults: Dict[str, Any]) -> Dict[str, Any]:
    """`defaults` restricted to the training recipe (without weight decay: none, as usual for softmax models)."""
    return {k: v for k, v in defaults.items() if k in TRAINING_KEYS and k != 'optimizer.weight_decay'}


def training_preset(name: str, preset: Preset) -> Preset:
    """Preset `name` of evidence_mnist restricted to the training recipe (no loss, head or KL settings)."""
    return Preset(f"the training settings of evidence_mnist preset={name}, for a like-for-like comparison",
                  {k: v for k, v in preset.values.items() if k in TRAINING_KEYS},
                  {k: v for k, v in preset.reasons.items() if k in TRAINING_KEYS})


def baseline_presets(evidence_presets: Dict[str, Preset], **smoke_extra) -> Dict[str, Preset]:
    """The `labml` and `paper` training recipes, and `smoke` with `smoke_extra` (e.g. fewer samples)."""
    presets = {name: training_preset(name, evidence_presets[name]) for name in ('labml', 'paper')}
    smoke = evidence_presets['smoke']
    presets['smoke'] = Preset(smoke.description, {**smoke.values, **smoke_extra},
                              {**smoke.reasons, **{k: 'enough to see the samples differ' for k in smoke_extra}})
    return presets
