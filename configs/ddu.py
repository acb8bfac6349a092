r"""
# Deep Deterministic Uncertainty — `python -m experiments.ddu_mnist`

Mukhoti, Kirsch, van Amersfoort, Torr & Gal, "Deep Deterministic Uncertainty: A New Simple Baseline", CVPR 2023.
One deterministic network, two uncertainties:

* the network (`evidential.models.ddu.ResLeNet`: the LeNet with 1×1 shortcuts, leaky ReLU and spectral
  normalisation with coefficient `sn_coeff`, so that its features are *sensitive* and *smooth*) is trained with
  cross-entropy exactly as `softmax_mnist` (same recipe, same outlier exposure); the entropy of its softmax is the
  **aleatoric** score (`entropy`, which every prediction has);
* a class-conditional Gaussian (GDA, `evidential.gda`) is fitted to the penultimate features $z$ of the training
  split, and $-\log q(z) = -\operatorname{logsumexp}_c (\log q(z \mid c) + \log \pi_c)$ is the **epistemic**
  score (`neg_log_feature_density`), the family's primary score.

The GDA is fitted at the end of every epoch, on that epoch's weights (in `eval()` mode, so no power-iteration step
and no random number is used), before the validation, and saved in the epoch's checkpoint next to the weights
(`gda`: means, Cholesky factors, log priors, jitter, class counts); `resume` and `experiments.evaluate` load it and
never refit — a checkpoint without one is refused. The model's evaluation outputs are `[N, K + 1]`: the $K$ logits
and $\log q(z)$.
"""
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml import tracker
from labml.configs import option

from configs.checkpoint import CheckpointError
from configs.experiment import TrainingStopped
from configs.lenet import CHECKS as LENET_CHECKS, LeNetExperimentConfigs, baseline_presets
from configs.registry import Family, between
from configs.softmax import DEFAULTS as SOFTMAX_DEFAULTS
from evidential.data import TensorSplit
from evidential.gda import GaussianDiscriminant, GDAFitError
from evidential.models.ddu import ResLeNet, SpectralLayers
from evidential.outliers import uniform_to_softmax_kl
from evidential.prediction import Prediction

#: The family's own score: $-\log q(z)$, the negative log-density of the features under the GDA
SCORE = 'neg_log_feature_density'


class SpectralBodyConfigs(LeNetExperimentConfigs):
    """
    ## The keys of a spectrally normalised residual LeNet body (`ResLeNet`)

    What `ddu_mnist` and `sngp_mnist` share: the body's keys, its part of the checkpoint's architecture, and the
    outliers' loss (towards a uniform softmax). Each family declares its own `model` (labml keeps options on the
    class that declares the key).
    """
    # 1×1 shortcuts around the convolution stages and leaky ReLU (sensitivity); False: the plain LeNet's stages
    residual: bool = True
    # Spectral-norm coefficient c: every layer but the output one has ||W||_2 <= c (DDU's default 3); 0 = off
    sn_coeff: float = 3.0
    # Power-iteration steps per training forward of each normalised layer
    sn_power_iterations: int = 1
    # Width of the penultimate layer: the dimension d of the features (the GDA models them, the GP compares them)
    feature_dim: int = 500

    def spectral_layers(self) -> SpectralLayers:
        return SpectralLayers(self.sn_coeff, self.sn_power_iterations)

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        return uniform_to_softmax_kl(outputs).mean()

    def architecture(self) -> Dict[str, object]:
        return {**super().architecture(), 'residual': self.residual, 'spectral_norm': self.sn_coeff > 0,
                'feature_dim': self.feature_dim}


class DDUConfigs(SpectralBodyConfigs):
    """
    ## Deep Deterministic Uncertainty

    A spectrally normalised residual LeNet trained with cross-entropy, and a GDA on its features (module doc).
    """
    experiment_name: str = 'ddu_mnist'

    # The model, chosen by name among this family's options
    model: nn.Module

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return F.cross_entropy(outputs, labels), {}

    # ------------------------------------------------------------------ the feature density
    def gda(self) -> Optional[GaussianDiscriminant]:
        """The fitted GDA (set by `fit_density` or by `restore` from a checkpoint); None before either (a method, not
        a property: labml's Configs hand back class attributes as they are)."""
        return self.__dict__.get('_gda')

    def fit_density(self, split: TensorSplit) -> GaussianDiscriminant:
        """Fits the GDA to the features of `split` under the current weights (eval mode, no gradients) and keeps it."""
        self.model.eval()
        with torch.no_grad():  # not inference_mode: FGSM differentiates through the fitted tensors later
            features = torch.cat([self.model.features(x) for x, _ in split.batches(self.valid_batch_size)])
        try:
            gda = GaussianDiscriminant.fit(features, split.labels, self.n_classes)
        except GDAFitError as e:  # the run stops with its last good checkpoint, as for non-finite numbers
            raise TrainingStopped(f"the feature density of the {len(split):,} training images cannot be fitted: "
                                  f"{e}") from None
        self.__dict__['_gda'] = gda
        return gda

    def track_validation(self, split: TensorSplit, prefix: str = 'valid') -> Dict[str, float]:
        """Each epoch's validation first fits the GDA on the training split with the epoch's weights."""
        extra = {}
        if prefix == 'valid':
            started = time.perf_counter()
            gda = self.fit_density(self.dataset.train)
            extra = {'gda.jitter': gda.jitter, 'time.gda_fit_s': time.perf_counter() - started}
            for k, v in extra.items():
                tracker.add(k, v)
        return {**super().track_validation(split, prefix), **extra}

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, K + 1]` float64: the logits and $\\log q(z)$ of the features (in float64, where the GDA computes it:
        with a tiny jitter, features off the training features' span have $-\\log q(z)$ beyond float32's range)."""
        if self.gda() is None:
            raise CheckpointError("no feature density: the GDA is fitted after the first epoch or loaded from a "
                                  "checkpoint")
        z = self.model.features(x)
        logits = self.model.out(self.model.dropout(z))
        return torch.cat([logits.double(), self.gda().log_density(z)[:, None]], dim=-1)

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """$\\hat{p} = \\text{softmax}(z)$ from the logits, and $-\\log q(z)$ (`eval_forward`'s last column),
        saturated at float32's largest value ($3.4 \\cdot 10^{38}$): scores are saved as float32, and a feature that
        unlikely is out of distribution whatever its exact density."""
        largest = torch.finfo(torch.float32).max
        return Prediction(probs=outputs[..., :-1].float().softmax(-1),
                          scores={SCORE: (-outputs[..., -1]).clamp(-largest, largest).float()})

    def evaluation_notes(self, outputs: torch.Tensor, split_name: str) -> List[str]:
        gda = self.gda()
        return [f"{SCORE}: the checkpoint's GDA, fitted on {int(gda.counts.sum()):,} training images' "
                f"{gda.dim}-dimensional features, jitter {gda.jitter:g}"]

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int, samples_seen: int, history: list, status: str, generator: torch.Generator):
        return {**super()._state(epoch, samples_seen, history, status, generator), 'gda': self.gda().state()}

    def restore(self, state: dict, generator: torch.Generator) -> Tuple[int, int, list]:
        """The weights, optimizer and random states, and the GDA fitted with these weights (never refitted)."""
        restored = super().restore(state, generator)
        if 'gda' not in state:
            raise CheckpointError("the checkpoint has no fitted feature density ('gda'); it was not written by "
                                  "ddu_mnist")
        try:
            gda = GaussianDiscriminant.from_state(state['gda'], self.dataset.train.images.device)
        except GDAFitError as e:
            raise CheckpointError(f"the checkpoint's feature density is unusable: {e}") from None
        if (gda.n_classes, gda.dim) != (self.n_classes, self.feature_dim):
            raise CheckpointError(f"the checkpoint's GDA models {gda.n_classes} classes of {gda.dim}-dimensional "
                                  f"features; this model has {self.n_classes} and {self.feature_dim}")
        self.__dict__['_gda'] = gda
        return restored

    def init_tracker(self):
        super().init_tracker()
        tracker.set_scalar('gda.*', False)


@option(DDUConfigs.model, 'res_lenet')
def _res_lenet(c: DDUConfigs) -> nn.Module:
    # Seed right before initialisation (as `lenet_body`): the power-iteration vectors are drawn here too
    torch.manual_seed(c.seed)
    model = ResLeNet(c.n_classes, c.dropout, hidden=c.feature_dim, residual=c.residual,
                     layers=c.spectral_layers())
    return model.to(c.dataset.train.images.device, memory_format=torch.channels_last)


FAMILY = Family(
    name='ddu_mnist',
    configs=DDUConfigs,
    description='Deep Deterministic Uncertainty: spectrally normalised residual LeNet, GDA feature density',
    defaults={**SOFTMAX_DEFAULTS, 'model': 'res_lenet', 'residual': True, 'sn_coeff': 3.0,
              'sn_power_iterations': 1, 'feature_dim': 500},
    presets=baseline_presets(),
    checks={**LENET_CHECKS, 'sn_coeff': lambda v: None if v >= 0 else 'must be >= 0 (0: no spectral normalisation)',
            'sn_power_iterations': between(1, 100), 'feature_dim': between(2, 4096)},
    label_keys=lambda values: ['sn_coeff', 'residual', 'feature_dim'],
    label_names={'sn_coeff': 'c', 'feature_dim': 'd'},
    primary_score=SCORE,
)
