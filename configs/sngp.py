r"""
# Spectral-normalised Neural Gaussian Process — `python -m experiments.sngp_mnist`

Liu, Lin, Padhy, Tran, Bedrax-Weiss & Lakshminarayanan, "Simple and Principled Uncertainty Estimation with
Deterministic Deep Learning via Distance Awareness", NeurIPS 2020. One deterministic network:

* the body is DDU's spectrally normalised residual LeNet (`evidential.models.ddu.ResLeNet`, its keys and checks:
  `residual`, `sn_coeff`, `sn_power_iterations`, `feature_dim`), whose output layer is a Gaussian process with an
  RBF kernel made finite by `sngp_features` random Fourier features (`evidential.models.sngp.SNGPLeNet`,
  `evidential.sngp`);
* training minimises cross-entropy plus the ridge penalty of the GP's prior, $\|\beta\|^2 / (2N)$ per image (the
  paper's Eq. 8), with the recipe of `softmax_mnist` (outlier exposure included);
* during the **last epoch**, the Laplace precision $\hat\Sigma^{-1} = s I + \sum_i w_i \Phi_i \Phi_i^\top$ is
  accumulated from that epoch's training forwards (started afresh at the epoch's start: the paper's
  momentum-free update), and inverted once, after that epoch's training pass and before its validation;
* predictions are the mean-field softmax $\text{softmax}(\hat g / \sqrt{1 + \lambda \sigma^2})$, and the GP's
  predictive variance $\sigma^2(x) = \Phi^\top \hat\Sigma \Phi$ is the family's own score (`gp_variance`, primary).

The covariance (float32 `[D, D]`) is saved in the final checkpoint (`sngp`); `resume` and `experiments.evaluate`
load it and never recompute it. Checkpoints of earlier epochs have none (`sngp: None`): their validations are
the MAP's softmax (no `gp_variance`), a resume goes on from them, and `experiments.evaluate` refuses them. The
model's evaluation outputs are `[N, K + 1]`: the MAP logits $\hat g$ and $\sigma^2$.
"""
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml import tracker
from labml.configs import option

from configs.checkpoint import CheckpointError
from configs.ddu import FAMILY as DDU, SpectralBodyConfigs
from configs.experiment import TrainingStopped
from configs.lenet import baseline_presets
from configs.registry import Family, between, non_negative, one_of, positive
from evidential.data import TensorSplit
from evidential.models.sngp import SNGPLeNet
from evidential.prediction import Prediction
from evidential.sngp import LIKELIHOODS, MEAN_FIELD_FACTOR, CovarianceError, LaplacePrecision, mean_field_logits, \
    predictive_variance

#: The family's own score: the GP's predictive variance $\sigma^2(x)$
SCORE = 'gp_variance'


class SNGPConfigs(SpectralBodyConfigs):
    """
    ## SNGP

    DDU's spectrally normalised residual LeNet with a random-feature Gaussian-process output layer (module doc).
    """
    experiment_name: str = 'sngp_mnist'

    # The model, chosen by name among this family's options
    model: nn.Module

    # D, the number of random Fourier features (the paper's 1024)
    sngp_features: int = 1024
    # Length-scale l of the RBF kernel exp(-||h - h'||^2 / (2 l^2)) over the (layer-normalised) features
    sngp_lengthscale: float = 20.0
    # Layer-normalise h before the random features (its learned scales: a length-scale per dimension)
    sngp_layer_norm: bool = True
    # Weights of the precision's terms: `laplace` p(1 - p) of the predicted class (Eq. 9), `gaussian` 1
    sngp_likelihood: str = 'laplace'
    # Ridge s: precision s I + sum_i w_i phi_i phi_i^T, covariance s times its inverse
    sngp_ridge: float = 1.0
    # lambda of the mean-field logits g / sqrt(1 + lambda sigma^2) (pi / 8); 0 = the MAP's logits
    sngp_mean_field: float = MEAN_FIELD_FACTOR

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        r"""$\text{CE} + \frac{1}{2}\|\beta\|^2 / N$: the negative log-posterior of $\beta$ (Eq. 8) per training
        image."""
        ridge = self.model.out.ridge_penalty() / len(self.dataset.train)
        return F.cross_entropy(outputs, labels) + ridge, {'ridge.train': ridge}

    # ------------------------------------------------------------------ the Laplace covariance
    def covariance(self) -> Optional[torch.Tensor]:
        """$\\hat\\Sigma$ `[D, D]` (set after the last epoch's training pass, or by `restore`); None before (a
        method, not a property: labml's Configs hand back class attributes as they are)."""
        return self.__dict__.get('_covariance')

    def _train_epoch(self, epoch: int, generator: torch.Generator, samples_seen: int) -> Tuple[int, Dict[str, float]]:
        """Every epoch drops the covariance (it belongs to the weights it was accumulated with); the last one
        accumulates the precision from its training forwards."""
        self.__dict__['_covariance'] = self.__dict__['_covariance_info'] = None
        if epoch + 1 < self.epochs:
            return super()._train_epoch(epoch, generator, samples_seen)
        precision = LaplacePrecision(self.sngp_features, self.sngp_ridge, self.sngp_likelihood,
                                     self.dataset.train.labels.device)
        captured: List[torch.Tensor] = []
        # $\Phi$ of each training forward, as the GP layer computes it (batch images first, then any outliers)
        hook = self.model.out.features.register_forward_hook(lambda module, args, phi: captured.append(phi))
        self.__dict__['_accumulating'] = (precision, captured)
        try:
            result = super()._train_epoch(epoch, generator, samples_seen)
        finally:
            hook.remove()
            self.__dict__['_accumulating'] = None
        self.__dict__['_precision'] = (precision, epoch + 1)
        return result

    def training_step(self, x: torch.Tensor, y: torch.Tensor, samples_seen: int,
                      generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        outputs, loss, extras = super().training_step(x, y, samples_seen, generator)
        accumulating = self.__dict__.get('_accumulating')
        if accumulating is not None:
            precision, captured = accumulating
            # the batch's own images (outliers follow them in the forward), with the logits the step computed
            precision.add(captured[-1][:len(y)], outputs)
            captured.clear()
        return outputs, loss, extras

    def invert_precision(self) -> torch.Tensor:
        """Inverts the precision accumulated in the last epoch, once, and keeps the covariance (float32)."""
        precision, epoch = self.__dict__.pop('_precision')
        try:
            covariance = precision.covariance().float()
        except CovarianceError as e:  # the run stops with its last good checkpoint, as for non-finite numbers
            raise TrainingStopped(f"the GP covariance of epoch {epoch} cannot be computed: {e}") from None
        self.__dict__['_covariance'] = covariance
        self.__dict__['_covariance_info'] = {'epoch': epoch, 'images': precision.n_images,
                                             'likelihood': precision.likelihood, 'ridge': precision.ridge}
        return covariance

    def track_validation(self, split: TensorSplit, prefix: str = 'valid') -> Dict[str, float]:
        """The last epoch's validation first inverts the precision; earlier validations score the MAP's softmax."""
        extra = {}
        if prefix == 'valid' and '_precision' in self.__dict__:
            started = time.perf_counter()
            self.invert_precision()
            extra = {'sngp.invert_s': time.perf_counter() - started}
            tracker.add('sngp.invert_s', extra['sngp.invert_s'])
        self.__dict__['_map_validation'] = self.covariance() is None
        try:
            return {**super().track_validation(split, prefix), **extra}
        finally:
            self.__dict__['_map_validation'] = False

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""`[N, K + 1]`: the MAP logits $\hat g$ and $\sigma^2(x)$ (NaN in the validations before the last epoch)."""
        phi = self.model.random_features(x)
        logits = self.model.out.beta(phi)
        covariance = self.covariance()
        if covariance is None:
            if not self.__dict__.get('_map_validation'):
                raise CheckpointError("no GP covariance: it is computed in the last epoch; this checkpoint is from "
                                      "an earlier one (resume the run to finish it)")
            variance = torch.full_like(logits[:, 0], float('nan'))
        else:
            variance = predictive_variance(phi, covariance)
        return torch.cat([logits.float(), variance.float()[:, None]], dim=-1)

    def predict(self, outputs: torch.Tensor) -> Prediction:
        r"""$\text{softmax}(\hat g / \sqrt{1 + \lambda \sigma^2})$ and $\sigma^2$ (`gp_variance`); the MAP's softmax
        alone where there is no covariance yet."""
        logits, variance = outputs[..., :-1].float(), outputs[..., -1].float()
        if self.covariance() is None:  # a validation before the last epoch (`eval_forward` refuses any other use)
            return Prediction(probs=logits.softmax(-1))
        return Prediction(probs=mean_field_logits(logits, variance, self.sngp_mean_field).softmax(-1),
                          scores={SCORE: variance})

    def evaluation_notes(self, outputs: torch.Tensor, split_name: str) -> List[str]:
        info = self.__dict__.get('_covariance_info') or {}
        return [f"{SCORE}: the checkpoint's GP covariance, accumulated over {info.get('images', 0):,} training images "
                f"of epoch {info.get('epoch')} ({info.get('likelihood')} weights, ridge {info.get('ridge')}); "
                f"mean-field lambda {self.sngp_mean_field:g}"]

    # ------------------------------------------------------------------ checkpoints
    def architecture(self) -> Dict[str, object]:
        return {**super().architecture(), 'sngp_features': self.sngp_features, 'layer_norm': self.sngp_layer_norm}

    def _state(self, epoch: int, samples_seen: int, history: list, status: str, generator: torch.Generator):
        covariance = self.covariance()
        saved = None if covariance is None else {'covariance': covariance, **self.__dict__['_covariance_info']}
        return {**super()._state(epoch, samples_seen, history, status, generator), 'sngp': saved}

    def restore(self, state: dict, generator: torch.Generator) -> Tuple[int, int, list]:
        """The weights, optimizer and random states, and the GP covariance saved with them (never recomputed)."""
        restored = super().restore(state, generator)
        if 'sngp' not in state:
            raise CheckpointError("the checkpoint has no 'sngp' entry; it was not written by sngp_mnist")
        saved = state['sngp']
        if saved is None:
            if state['status'] == 'completed':
                raise CheckpointError("the checkpoint of a completed run has no GP covariance")
            self.__dict__['_covariance'] = self.__dict__['_covariance_info'] = None
            return restored
        covariance = saved['covariance']
        d = self.sngp_features
        if covariance.shape != (d, d) or not bool(torch.isfinite(covariance).all()):
            raise CheckpointError(f"the checkpoint's GP covariance is unusable: shape {tuple(covariance.shape)} "
                                  f"for {d} random features, or non-finite entries")
        self.__dict__['_covariance'] = covariance.to(self.dataset.train.images.device, torch.float32)
        self.__dict__['_covariance_info'] = {k: v for k, v in saved.items() if k != 'covariance'}
        return restored

    def init_tracker(self):
        super().init_tracker()
        tracker.set_scalar('sngp.*', False)
        tracker.set_scalar('ridge.*', False)


@option(SNGPConfigs.model, 'sngp_lenet')
def _sngp_lenet(c: SNGPConfigs) -> nn.Module:
    # Seed right before initialisation (as `lenet_body`): the power-iteration vectors are drawn here too; the random
    # Fourier features from their own generator
    torch.manual_seed(c.seed)
    model = SNGPLeNet(c.n_classes, c.dropout, hidden=c.feature_dim, residual=c.residual,
                      layers=c.spectral_layers(), n_random_features=c.sngp_features,
                      lengthscale=c.sngp_lengthscale, layer_norm=c.sngp_layer_norm,
                      generator=torch.Generator().manual_seed(c.seed))
    return model.to(c.dataset.train.images.device, memory_format=torch.channels_last)


FAMILY = Family(
    name='sngp_mnist',
    configs=SNGPConfigs,
    description='SNGP: spectrally normalised residual LeNet, random-feature Gaussian-process output, Laplace variance',
    defaults={**DDU.defaults, 'model': 'sngp_lenet', 'dropout': 0.0, 'sngp_features': 1024, 'sngp_lengthscale': 20.0,
              'sngp_layer_norm': True, 'sngp_likelihood': 'laplace', 'sngp_ridge': 1.0,
              'sngp_mean_field': MEAN_FIELD_FACTOR},
    presets=baseline_presets(),
    checks={**DDU.checks, 'sngp_features': between(1, 16384), 'sngp_lengthscale': positive,
            'sngp_likelihood': one_of(LIKELIHOODS), 'sngp_ridge': positive, 'sngp_mean_field': non_negative},
    label_keys=lambda values: ['sngp_lengthscale', 'sngp_features', 'sn_coeff'],
    label_names={'sngp_lengthscale': 'l', 'sngp_features': 'D', 'sn_coeff': 'c'},
    primary_score=SCORE,
)
