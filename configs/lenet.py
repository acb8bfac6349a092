"""
# What the LeNet families share

The keys of the image classifiers built on `evidential.models.lenet` (evidential, softmax, MC dropout,
ensembles): the `lenet` body and its dropout, light augmentation of training batches, and synthetic
jigsaw outliers trained towards "don't know" (how each family pulls them is its `outlier_loss`).
A family without these (a circuit on raw pixels, say) derives from `MNISTExperimentConfigs` directly.

What these families share besides: their training recipe (`TRAINING_DEFAULTS`, and the settings of the two
reference set-ups, `REFERENCES`), so that a comparison of default runs differs only in what the model's
outputs mean; the `smoke` preset; the range checks of the keys above (`CHECKS`); and the annealed KL term of
the families that have one (`kl_schedule_options`, `kl_points_check`).
"""
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
from labml import tracker
from labml.configs import option

from configs.experiment import MNISTExperimentConfigs
from configs.registry import Preset
from evidential.augment import random_affine
from evidential.models.lenet import LeNet
from evidential.outliers import jigsaw_outliers
from evidential.schedules import KL_SCHEDULES, make_kl_schedule, validate_piecewise_points


class LeNetExperimentConfigs(MNISTExperimentConfigs):
    """
    ## A LeNet-style image classifier with dropout, augmentation and synthetic outliers
    """
    # Dropout before the last layer
    dropout: float = 0.5

    # Augmentation of training images: random shifts up to this many pixels (0: none)
    augment_shift: float = 0.0
    # Augmentation of training images: random rotations up to this many degrees (0: none)
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

# ---------------------------------------------------------------------- the training recipe

# The keys of the training recipe (optimizer, schedule, augmentation, holdout, epochs, batch size, dropout): what
# the LeNet families share, as opposed to what makes each one (loss, head, samples, members, outliers)
TRAINING_KEYS = ('optimizer.optimizer', 'optimizer.learning_rate', 'optimizer.weight_decay', 'lr_schedule',
                 'augment_shift', 'augment_rotate', 'holdout', 'epochs', 'train_batch_size', 'dropout')

#: The training recipe of every LeNet family's default run (chosen with evidence_mnist's `tuned` preset, whose
#: reasons say why); weight decay is each family's own default
TRAINING_DEFAULTS = {
    'optimizer.optimizer': 'Adam',
    'optimizer.learning_rate': 1e-3,
    'lr_schedule': 'cosine',
    'augment_shift': 2.,
    'augment_rotate': 10.,
    'holdout': 0.1,
    'epochs': 20,
}

#: The LeNet keys of the two reference set-ups, each with its source. evidence_mnist's presets of the same names
#: add the evidential keys (`reference_preset`); the other families take the training recipe (`baseline_presets`).
REFERENCES = {
    'labml': Preset(
        "labml_nn's evidential MNIST tutorial (labml_nn/uncertainty/evidence/experiment.py)",
        {
            'optimizer.optimizer': 'Adam',
            'optimizer.learning_rate': 1e-3,
            'optimizer.weight_decay': 5e-3,
            'dropout': 0.5,
            'epochs': 10,
            'train_batch_size': 64,
            'holdout': 0.0,
            'lr_schedule': 'constant',
            'augment_shift': 0.,
            'augment_rotate': 0.,
            'outlier_coef': 0.,
        },
        {
            'optimizer.learning_rate': "main(): 'optimizer.learning_rate': 0.001",
            'optimizer.weight_decay': "main(): 'optimizer.weight_decay': 0.005 (labml_nn Adam, decoupled)",
            'dropout': "main(): 'dropout': 0.5",
            'epochs': 'MNISTConfigs.epochs = 10',
            'train_batch_size': "labml_nn MNISTConfigs train_batch_size = 64",
            'holdout': 'labml_nn validates on the test set',
            'lr_schedule': 'labml_nn keeps the learning rate constant',
            'augment_shift': 'labml_nn does not augment',
            'outlier_coef': 'labml_nn trains on MNIST only',
        }),
    'paper': Preset(
        'Sensoy, Kaplan & Kandemir, NeurIPS 2018 (EDL), MNIST experiment',
        {
            'optimizer.optimizer': 'Adam',
            'optimizer.learning_rate': 1e-3,
            'optimizer.weight_decay': 5e-3,
            'dropout': 0.5,
            'train_batch_size': 1000,
            'epochs': 50,
            'lr_schedule': 'constant',
            'augment_shift': 0.,
            'augment_rotate': 0.,
            'outlier_coef': 0.,
            'holdout': 0.0,
        },
        {
            'optimizer.optimizer': 'Sec. 5: Adam',
            'optimizer.learning_rate': "authors' TensorFlow notebook: Adam's default 1e-3",
            'optimizer.weight_decay': "authors' notebook: L2 0.005 (here decoupled, as labml_nn's Adam does)",
            'dropout': 'Sec. 5: LeNet with 500 hidden units and dropout',
            'train_batch_size': "authors' notebook: batch size 1000",
            'epochs': "authors' notebook: 50 epochs",
            'lr_schedule': 'constant learning rate',
            'augment_shift': 'no augmentation',
            'augment_rotate': 'no augmentation',
            'outlier_coef': 'the paper trains on MNIST only',
            'holdout': 'the paper reports the test set; no model selection',
        }),
}

#: A few seconds of training, for every LeNet family
SMOKE = Preset(
    'one epoch over the whole training set, to try the pipeline (seconds on the tests\' 512 synthetic images, '
    'about 10 s on 10,000 MNIST images on 2 CPU cores; not a trained model)',
    {'epochs': 1, 'train_batch_size': 32, 'valid_batch_size': 256, 'log_interval': 2, 'holdout': 0.0,
     'augment_shift': 0., 'augment_rotate': 0.},
    {'epochs': 'one pass is enough to exercise every code path',
     'holdout': 'nothing held out: validation uses the test split, which keeps the run short'})


def reference_preset(name: str, values: Dict[str, Any], reasons: Dict[str, str]) -> Preset:
    """Reference set-up `name` (`REFERENCES`) with a family's own `values` (listed first) and `reasons`."""
    reference = REFERENCES[name]
    return Preset(reference.description, {**values, **reference.values}, {**reasons, **reference.reasons})


def training_preset(name: str) -> Preset:
    """Reference set-up `name` restricted to the training recipe (no outliers, nor any family's own keys)."""
    reference = REFERENCES[name]
    return Preset(f"the training settings of evidence_mnist preset={name}, for a like-for-like comparison",
                  {k: v for k, v in reference.values.items() if k in TRAINING_KEYS},
                  {k: v for k, v in reference.reasons.items() if k in TRAINING_KEYS})


def baseline_presets(**smoke_extra) -> Dict[str, Preset]:
    """The `labml` and `paper` training recipes, and `smoke` with `smoke_extra` (e.g. fewer samples)."""
    presets = {name: training_preset(name) for name in ('labml', 'paper')}
    presets['smoke'] = Preset(SMOKE.description, {**SMOKE.values, **smoke_extra},
                              {**SMOKE.reasons, **{k: 'enough to see the samples differ' for k in smoke_extra}})
    return presets


# ---------------------------------------------------------------------- the annealed KL term

def kl_schedule_options(config_item) -> None:
    """Registers every KL schedule (`evidential.schedules.KL_SCHEDULES`) as an option of `config_item`, a
    `kl_schedule` key of a Configs class that also has `kl_div_coef_schedule` and `kl_coef`."""
    for name in KL_SCHEDULES:
        option(config_item, name)(
            (lambda name: lambda c: make_kl_schedule(name, samples_per_epoch=len(c.dataset.train), epochs=c.epochs,
                                                     points=c.kl_div_coef_schedule, coef=c.kl_coef))(name))


def kl_points_check(v):
    """The range check of `kl_div_coef_schedule`, the points of the `piecewise` KL schedule."""
    try:
        validate_piecewise_points(v)
    except ValueError as e:
        return str(e)
