r"""
# Baselines: softmax LeNet, MC dropout and a deep ensemble

The same labml configurations, training loop, checkpoints, tracking and command line as the
evidential experiment (`configs/experiment.py`); only what the model's outputs mean differs.

* `SoftmaxConfigs` (`softmax_mnist`): the LeNet trained with cross-entropy; $\hat{p} = \text{softmax}(z)$.
* `MCDropoutConfigs` (`mc_dropout_mnist`): the same network and training; at test time the dropout
  modules (only those) stay in train mode and $\hat{p}$ is the mean of `mc_samples` $= T$ softmax
  samples (Gal & Ghahramani, 2016).
* `EnsembleConfigs` (`ensemble_mnist`): `ensemble_size` $= M$ independently initialised LeNets
  (Lakshminarayanan et al., 2017) held as one vectorised model (`LeNetEnsemble`) whose forward gives
  `[M, N, K]` logits; the loss is the sum of the members' cross-entropies on the same batch, so each
  member gets exactly the gradient it would get alone; $\hat{p}$ is the mean of the members' softmaxes.

Sampling models (MC dropout, ensembles) also give the mutual information between the prediction and
the model parameters, $I = H[\bar{p}] - \frac{1}{S}\sum_s H[p_s]$ with $\bar{p} = \frac{1}{S}\sum_s p_s$,
the epistemic part of the predictive entropy. None of them has an uncertainty mass ($u$ is `None`).
"""
import copy
import math
import warnings
from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from labml.configs import option
from torch.func import functional_call, stack_module_state, vmap

from configs.cli import Preset
from configs.experiment import MNISTExperimentConfigs, Prediction
from configs.presets import DEFAULTS as EVIDENCE_DEFAULTS, PRESETS as EVIDENCE_PRESETS
from evidential.dirichlet import entropy
from evidential.models.lenet import LeNet


# ---------------------------------------------------------------------- predictions

def sampled_prediction(logits: torch.Tensor) -> Prediction:
    r"""
    The prediction of `S` samples of logits `[S, N, K]` (MC-dropout passes or ensemble members):
    $\bar{p} = \frac{1}{S}\sum_s \text{softmax}(z_s)$ and the mutual information
    $H[\bar{p}] - \frac{1}{S}\sum_s H[\text{softmax}(z_s)] \ge 0$ (clamped at 0 against rounding).
    Plain `[N, K]` logits count as one sample.
    """
    if logits.dim() == 2:
        logits = logits[None]
    probs = logits.float().softmax(-1)
    mean = probs.mean(0)
    mutual_information = (entropy(mean) - entropy(probs).mean(0)).clamp_min(0.)
    return Prediction(probs=mean, mutual_information=mutual_information)


# ---------------------------------------------------------------------- MC dropout

def _dropouts(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextmanager
def dropout_sampling(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode except its dropout modules (train mode); every module's mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in _dropouts(model):
        m.train()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def mc_dropout_logits(model: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    """
    Logits `[T, N, K]` of `samples` = T stochastic passes with only the dropout modules active.

    For a `LeNet`, whose only dropout sits after the hidden layer, everything before it is
    deterministic: it is computed once and only the dropout mask and the last layer are sampled
    T times (the same distribution as T full passes, ~T times less work). Other models run T full passes.
    """
    with dropout_sampling(model):
        dropouts = _dropouts(model)
        if isinstance(model, LeNet) and len(dropouts) == 1 and model.hidden[-1] is dropouts[0]:
            h = model.hidden[:-1](model.features(x))
            return model.out(model.hidden[-1](h.expand(samples, *h.shape)))
        return torch.stack([model(x) for _ in range(samples)])


# ---------------------------------------------------------------------- vectorised ensemble

def member_seeds(seed: int, size: int) -> List[int]:
    """Independent initialisation seeds of `size` members (numpy `SeedSequence(seed).spawn`):
    member i's seed does not depend on the ensemble size, and runs with nearby seeds share no member."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(size)]


class LeNetEnsemble(nn.Module):
    r"""
    `M` networks of the same architecture held as one module: each parameter is stacked along a
    new first dimension (`torch.func.stack_module_state`), and one forward gives `[M, N, K]` outputs.

    Parameters live in `members`, a copy of the member architecture whose parameters have the extra
    leading `M` dimension (`members.features.0.weight`: `[M, 20, 1, 5, 5]`); `member(i)` rebuilds
    member `i` as a plain module. Two vectorised forwards compute the same function:

    * `grouped` (default): one convolution for all members — the first convolution has `M` times the
      output channels (its input is shared), later ones are grouped convolutions with `groups=M`;
      linear layers are batched matrix products (`baddbmm`). Channels-last convolution weights.
    * `vmap`: `torch.func.vmap` over `functional_call` of the member architecture.

    On the 2-core CPU the grouped forward is the faster (5 members, median of 25: evaluation of 256
    images 64 ms vs 210 ms for `vmap`, a training step of 64 images 46 ms vs 81 ms; five separate
    channels-last LeNets called in a Python loop take 57 ms and 51 ms), so it is the default. The grouped forward
    walks the member's leaf modules in registration order (LeNet: features → hidden → out), supporting
    `Conv2d`, `Linear`, `Flatten` and per-channel/element-wise layers (activations, pooling, dropout).
    """

    def __init__(self, members: Sequence[nn.Module], impl: str = 'grouped'):
        super().__init__()
        if not members:
            raise ValueError('an ensemble needs at least one member')
        params, buffers = stack_module_state(list(members))
        if buffers:
            raise NotImplementedError(f"members with buffers ({', '.join(buffers)}) are not supported")
        self.ensemble_size = len(members)
        self.impl = impl
        self.members = copy.deepcopy(members[0])
        for name, stacked in params.items():
            module, _, leaf = name.rpartition('.')
            setattr(self.members.get_submodule(module), leaf, nn.Parameter(stacked.detach().clone()))

    def member(self, i: int) -> nn.Module:
        """Member `i` as a plain module (a copy of its parameters, in the ensemble's train/eval mode)."""
        m = copy.deepcopy(self.members)
        for name, stacked in self.members.named_parameters():
            module, _, leaf = name.rpartition('.')
            setattr(m.get_submodule(module), leaf, nn.Parameter(stacked.detach()[i].clone()))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, ...]` inputs (shared by every member) → `[M, N, K]` outputs."""
        if self.impl == 'vmap':
            return self.forward_vmap(x)
        if self.impl == 'grouped':
            return self.forward_grouped(x)
        raise ValueError(f"impl must be 'grouped' or 'vmap', got {self.impl!r}")

    def forward_vmap(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.members.named_parameters())

        def one(p, x):
            return functional_call(self.members, p, (x,))

        # `randomness='different'`: every member draws its own dropout masks
        return vmap(one, in_dims=(0, None), randomness='different')(params, x)

    def forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        m_size, n = self.ensemble_size, x.shape[0]
        params = dict(self.members.named_parameters())
        # 'shared': x as given, the same for every member; 'channels': [N, M*C, H, W], member-major
        # channels; 'features': [M, N, F]
        layout = 'shared'
        h = x
        for name, module in self.members.named_modules():
            if next(module.children(), None) is not None:
                continue
            if isinstance(module, nn.Conv2d):
                if module.groups != 1 or module.padding_mode != 'zeros' or layout == 'features':
                    raise NotImplementedError(f"grouped forward: unsupported {module}")
                weight = params[f'{name}.weight'].flatten(0, 1).to(memory_format=torch.channels_last)
                bias = params[f'{name}.bias'].flatten() if module.bias is not None else None
                h = F.conv2d(h, weight, bias, module.stride, module.padding, module.dilation,
                             groups=1 if layout == 'shared' else m_size)
                layout = 'channels'
            elif isinstance(module, nn.Flatten):
                if module.start_dim != 1 or module.end_dim != -1:
                    raise NotImplementedError(f"grouped forward: unsupported {module}")
                if layout == 'channels':
                    h = h.reshape(n, m_size, -1).transpose(0, 1)
                elif layout == 'shared':
                    h = h.reshape(n, -1).expand(m_size, n, -1)
                layout = 'features'
            elif isinstance(module, nn.Linear):
                if layout == 'shared':
                    h = h.expand(m_size, *h.shape)
                elif layout != 'features':
                    raise NotImplementedError(f"grouped forward: {name} ({module}) after a convolution needs a Flatten")
                weight = params[f'{name}.weight'].transpose(1, 2)
                h = (torch.baddbmm(params[f'{name}.bias'][:, None], h, weight) if module.bias is not None
                     else torch.bmm(h, weight))
                layout = 'features'
            elif isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                                     nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)):
                # element-wise or per-channel: members stay independent in either layout
                h = module(h)
            else:
                raise NotImplementedError(f"grouped forward: unsupported layer {name} ({module}); use impl='vmap'")
        if layout == 'shared':
            h = h.expand(m_size, *h.shape)
        elif layout == 'channels':
            h = h.reshape(n, m_size, *h.shape[1:]).transpose(0, 1)
        return h


def uniform_to_softmax_kl(logits: torch.Tensor) -> torch.Tensor:
    r"""$\text{KL}[\mathcal{U} \| \text{softmax}(\mathbf{z})]$ for each row of `logits` `[..., K]`.

    Outlier exposure's loss for softmax models (Hendrycks et al., ICLR 2019): the cross-entropy from the
    uniform distribution to $\hat{\mathbf{p}}$, minus its minimum $\log K$, so it is 0 exactly at "don't know".
    """
    # $-\log K - \frac{1}{K} \sum_k \log \text{softmax}(\mathbf{z})_k$
    return -math.log(logits.shape[-1]) - logits.float().log_softmax(-1).mean(-1)


# ---------------------------------------------------------------------- configurations

class SoftmaxConfigs(MNISTExperimentConfigs):
    """
    ## Softmax baseline

    The LeNet trained with cross-entropy; $\\hat{p} = \\text{softmax}(z)$, no uncertainty mass.
    """
    experiment_name: str = 'softmax_mnist'

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return F.cross_entropy(outputs, labels), {}

    def predict(self, outputs: torch.Tensor) -> Prediction:
        return Prediction(probs=outputs.float().softmax(-1))

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        return uniform_to_softmax_kl(outputs).mean()


class MCDropoutConfigs(SoftmaxConfigs):
    """
    ## MC dropout

    Trained as the softmax baseline; evaluated with the dropout modules active, averaging
    `mc_samples` softmax samples. Evaluation outputs are `[T, N, K]` logits.
    """
    experiment_name: str = 'mc_dropout_mnist'

    # Number T of stochastic forward passes averaged at evaluation
    mc_samples: int = 20

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return mc_dropout_logits(self.model, x, self.mc_samples)

    def join_outputs(self, outputs: List[torch.Tensor], device: torch.device) -> torch.Tensor:
        return torch.cat(outputs, 1) if outputs else torch.empty(self.mc_samples, 0, self.n_classes, device=device)

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """`[T, N, K]` logits of T dropout samples (a single `[N, K]` pass counts as T=1)."""
        return sampled_prediction(outputs)


class EnsembleConfigs(SoftmaxConfigs):
    """
    ## Deep ensemble

    `ensemble_size` LeNets, each initialised with its own seed, trained together on the same
    batches as one vectorised model (`model=lenet_ensemble`); outputs are `[M, N, K]` logits.
    """
    experiment_name: str = 'ensemble_mnist'

    # Number M of ensemble members
    ensemble_size: int = 5
    # Redeclared so that the `lenet_ensemble` option belongs to this experiment only
    model: nn.Module

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

    def train_predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.softmax(-1).mean(0).argmax(-1)

    def join_outputs(self, outputs: List[torch.Tensor], device: torch.device) -> torch.Tensor:
        return torch.cat(outputs, 1) if outputs else torch.empty(self.ensemble_size, 0, self.n_classes, device=device)

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """`[M, N, K]` logits of the members."""
        return sampled_prediction(outputs)

    def architecture(self) -> Dict[str, object]:
        return {**super().architecture(), 'ensemble_size': self.ensemble_size}

    def init_tracker(self):
        super().init_tracker()
        from labml import tracker
        tracker.set_scalar('ce.*', False)


@option(EnsembleConfigs.model, 'lenet_ensemble')
def _lenet_ensemble(c: EnsembleConfigs):
    members = []
    for seed in member_seeds(c.seed, c.ensemble_size):
        torch.manual_seed(seed)
        members.append(LeNet(c.n_classes, c.dropout))
    # Dropout and everything after draw from the run's seed, as for the single LeNet
    torch.manual_seed(c.seed)
    return LeNetEnsemble(members).to(c.dataset.train.images.device)


# The inherited single `lenet` would give `[N, K]` outputs the ensemble cannot use: refused with a clear
# message (before anything is written). labml warns about every override of an option; this one is intended.
warnings.filterwarnings('ignore', message='Overriding option for model: lenet$', category=Warning)


@option(EnsembleConfigs.model, 'lenet')
def _single_lenet_refused(c: EnsembleConfigs):
    raise ValueError("model=lenet: the ensemble experiment trains model=lenet_ensemble "
                     "(ensemble_size LeNets); for a single LeNet run experiments.softmax_mnist")


# ---------------------------------------------------------------------- defaults and presets

# The training recipe (optimizer, schedule, augmentation, holdout, epochs) is the evidential
# experiment's, so that a comparison of default runs differs only in what the model's outputs mean.
TRAINING_KEYS = ('optimizer.optimizer', 'optimizer.learning_rate', 'optimizer.weight_decay', 'lr_schedule',
                 'augment_shift', 'augment_rotate', 'holdout', 'epochs', 'train_batch_size', 'dropout')

SOFTMAX_DEFAULTS = {
    'dataset': 'mnist',
    'model': 'lenet',
    'optimizer.optimizer': 'Adam',
    'optimizer.learning_rate': 1e-3,
    # No weight decay, as usual for softmax baselines (and as evidence_mnist's default)
    'optimizer.weight_decay': 0.0,
    **{k: v for k, v in EVIDENCE_DEFAULTS.items() if k in TRAINING_KEYS and k != 'optimizer.weight_decay'},
}
MC_DROPOUT_DEFAULTS = {**SOFTMAX_DEFAULTS, 'mc_samples': 20}
ENSEMBLE_DEFAULTS = {**SOFTMAX_DEFAULTS, 'model': 'lenet_ensemble', 'ensemble_size': 5}


def _training_preset(name: str) -> Preset:
    """evidence_mnist's preset `name` restricted to the training recipe (no loss, head or KL settings)."""
    preset = EVIDENCE_PRESETS[name]
    return Preset(f"the training settings of evidence_mnist preset={name}, for a like-for-like comparison",
                  {k: v for k, v in preset.values.items() if k in TRAINING_KEYS},
                  {k: v for k, v in preset.reasons.items() if k in TRAINING_KEYS})


_SMOKE = EVIDENCE_PRESETS['smoke']


def _presets(**smoke_extra) -> dict:
    presets = {name: _training_preset(name) for name in ('labml', 'paper')}
    presets['smoke'] = Preset(_SMOKE.description, {**_SMOKE.values, **smoke_extra},
                              {**_SMOKE.reasons, **{k: 'enough to see the samples differ' for k in smoke_extra}})
    return presets


SOFTMAX_PRESETS = _presets()
MC_DROPOUT_PRESETS = _presets(mc_samples=4)
ENSEMBLE_PRESETS = _presets(ensemble_size=3)
