r"""
# Bayesian LeNet by variational inference — `python -m experiments.bayes_mnist`

The method of Pyro's Bayesian-neural-network tutorial, written with PyTorch layers
(`evidential.models.bayes`): a mean-field Gaussian posterior $q(\mathbf{w}) = \mathcal{N}(\mu, \sigma^2)$ over
every weight and bias, $\sigma = \text{softplus}(\rho) + \sigma_{\min}$, prior $\mathcal{N}(0,$ `prior_scale`$^2)$,
trained with the local reparametrisation trick (Kingma, Salimans & Welling, 2015): pre-activations are
sampled, not weights. The loss is the negative ELBO per example,

$$\mathcal{L} = \frac{1}{B} \sum_i -\log p(y_i | \mathbf{x}_i, \mathbf{w}) + \beta\,\lambda_t\,
   \frac{D_{KL}(q \| p)}{N_{\text{train}}},$$

with `beta` and the KL schedules of the evidential experiment ($\lambda_t$: `kl_schedule`, `kl_coef`, ...).
The prediction averages the softmax of `mc_samples` sampled networks (`[S, N, K]` outputs); `mc_samples=0`
is the posterior-mean network.
"""
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
from labml import tracker
from labml.configs import option

from configs.lenet import CHECKS as LENET_CHECKS, LeNetExperimentConfigs, baseline_presets, kl_points_check, \
    kl_schedule_options
from configs.registry import Capabilities, Family, Preset, between, non_negative, positive
from configs.softmax import DEFAULTS as SOFTMAX_DEFAULTS
from evidential.models.bayes import BayesLayer, BayesLayers, bayes_logits, kl_divergence, negative_elbo
from evidential.models.lenet import LeNet
from evidential.models.mlp import MLP
from evidential.outliers import uniform_to_softmax_kl
from evidential.prediction import Prediction, sampled_prediction


class BayesConfigs(LeNetExperimentConfigs):
    """
    ## Bayesian neural network, mean-field Gaussian posterior, local reparametrisation

    * `prior_scale`, `sigma_init`, `sigma_min`: prior standard deviation, initial and smallest posterior σ
    * `beta`, `kl_schedule` (`constant` with `kl_coef`, `piecewise`, `paper`, `off`): the KL weight
    * `mc_samples`: networks averaged at evaluation (0: the posterior mean)
    * `model`: `lenet` or `mlp` (the Pyro tutorial's 784-1024-1024-1024-10 leaky-ReLU net)
    """
    experiment_name: str = 'bayes_mnist'

    # The Bayesian body, chosen by name
    model: nn.Module
    # Standard deviation of the prior $\mathcal{N}(0, s^2)$ of every weight and bias
    prior_scale: float = 1.0
    # Initial posterior $\sigma$ and its floor $\sigma_{\min}$ (docs/families.md: 0.1, the Pyro tutorial's, drowns the
    # LeNet's weights, ~0.035 in its 800 -> 500 layer, in noise: held-out accuracy 10 % after an epoch; 0.005: 96 %)
    sigma_init: float = 0.005
    # Floor of the posterior standard deviation: σ = softplus(ρ) + sigma_min
    sigma_min: float = 1e-5
    # Weight $\beta$ of the KL term (1: the ELBO)
    beta: float = 1.0
    # Annealing $\lambda_t$ of the KL term as a function of samples seen (the evidential experiment's schedules)
    kl_schedule: Callable[[int], float]
    # Points (fraction of training, $\lambda$) of the `piecewise` schedule
    kl_div_coef_schedule: List[Tuple[float, float]] = [(0, 0.), (0.2, 0.01), (1, 1.)]
    # $\lambda$ of the `constant` schedule
    kl_coef: float = 1.0
    # Sampled networks averaged at evaluation; 0: the posterior-mean network
    mc_samples: int = 30

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # $\lambda_t$
        coef = self.kl_schedule(samples_seen)
        # $-\log p(y | \mathbf{x}, \mathbf{w}) + \beta \lambda_t D_{KL}(q \| p) / N_{\text{train}}$
        elbo = negative_elbo(outputs, labels, kl_divergence(self.model), len(self.dataset.train),
                             self.beta * coef)
        return elbo.loss, {'nll.train': elbo.nll.detach(), 'kl.train': elbo.kl.detach(),
                           'kl_coef': torch.tensor(coef)}

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        return uniform_to_softmax_kl(outputs).mean()

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        # `mc_samples` networks drawn from $q$, each over the batch (half the cost of local reparametrisation)
        return bayes_logits(self.model, x, self.mc_samples, networks=True)

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """`[S, N, K]` logits of sampled networks (`[1, N, K]` for the posterior mean)."""
        return sampled_prediction(outputs)

    def track_prediction(self, pred: Prediction, correct: torch.Tensor):
        super().track_prediction(pred, correct)
        # the posterior standard deviations of each layer's weights
        for name, module in self.model.named_modules():
            if isinstance(module, BayesLayer):
                self.track_distribution(f'sigma.{name}', module.weight_sigma.detach().flatten())

    def distributions(self, pred: Prediction, correct: torch.Tensor):
        # and the posterior standard deviations of each layer's weights, which belong to no image
        out = super().distributions(pred, correct)
        for name, module in self.model.named_modules():
            if isinstance(module, BayesLayer):
                out[f'sigma.{name}'] = (module.weight_sigma.detach().flatten(), None)
        return out

    def architecture(self) -> Dict[str, object]:
        return {**super().architecture(), 'body': type(self.model).__name__}

    def init_tracker(self):
        super().init_tracker()
        tracker.set_scalar('nll.*', False)
        tracker.set_scalar('kl.*', False)
        tracker.set_scalar('kl_coef', False)


def bayesian(c: BayesConfigs, body) -> nn.Module:
    torch.manual_seed(c.seed)
    layers = BayesLayers(c.prior_scale, c.sigma_init, c.sigma_min)
    return body(c.n_classes, layers).to(c.dataset.train.images.device)


option(BayesConfigs.model, 'lenet')(lambda c: bayesian(c, lambda k, layers: LeNet(k, c.dropout, layers=layers)))
option(BayesConfigs.model, 'mlp')(lambda c: bayesian(c, lambda k, layers: MLP(k, layers=layers)))

kl_schedule_options(BayesConfigs.kl_schedule)

# This app's training recipe; no dropout (the weights are random already)
DEFAULTS = {**SOFTMAX_DEFAULTS, 'model': 'lenet', 'dropout': 0.0, 'prior_scale': 1.0, 'sigma_init': 0.005,
            'sigma_min': 1e-5, 'beta': 1.0, 'kl_schedule': 'constant', 'kl_coef': 1.0, 'mc_samples': 30}

PRESETS = {
    **baseline_presets(mc_samples=4),
    'pyro': Preset(
        "Pyro's Bayesian-neural-network tutorial (local reparametrisation), with a correct ELBO",
        {'model': 'mlp', 'train_batch_size': 128, 'optimizer.optimizer': 'NesterovSGD', 'optimizer.learning_rate': 0.002,
         'optimizer.momentum': 0.9, 'optimizer.weight_decay': 0.0, 'epochs': 30,
         'sigma_init': 0.1, 'sigma_min': 0.01, 'prior_scale': 1.0, 'lr_schedule': 'constant', 'holdout': 0.0,
         'augment_shift': 0.0, 'augment_rotate': 0.0, 'outlier_coef': 0.0},
        {'model': "784 -> 1024 -> 1024 -> 1024 -> 10, leaky ReLU",
         'optimizer.optimizer': 'pyro.optim.SGD(lr=0.002, momentum=0.9, nesterov=True)',
         'train_batch_size': 'batch_size = 128', 'epochs': '30 epochs',
         'sigma_init': "the guide's initial scale 0.1", 'sigma_min': 'scales kept >= 0.01',
         'holdout': 'the tutorial reports the test set'}),
}

FAMILY = Family(
    name='bayes_mnist',
    configs=BayesConfigs,
    description='Bayesian LeNet: mean-field Gaussian weights, local reparametrisation, negative ELBO',
    defaults=DEFAULTS,
    presets=PRESETS,
    checks={**LENET_CHECKS, 'prior_scale': positive, 'sigma_init': positive, 'sigma_min': positive,
            'beta': non_negative, 'kl_coef': non_negative, 'kl_div_coef_schedule': kl_points_check,
            'mc_samples': between(0, 1000)},
    label_keys=lambda values: ['model', 'mc_samples', 'beta', 'prior_scale'],
    label_names={'mc_samples': 'S', 'beta': 'β', 'prior_scale': 'prior'},
    capabilities=Capabilities(samples=True),
)
