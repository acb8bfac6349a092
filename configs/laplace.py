r"""
# Laplace approximation — `python -m experiments.laplace_mnist`

The LeNet trained exactly as the softmax baseline (cross-entropy, the same recipe), then, once its last epoch is
trained, a Laplace approximation of its posterior $\mathcal{N}(\theta^*, P^{-1})$ fitted on the training split with
laplace-torch (`evidential.models.laplace`, where the method is written out): by default over the last layer's
weights with a Kronecker-factored GGN (`subset_of_weights`, `hessian_structure`), the prior precision by maximising
the marginal likelihood. The prediction is the linearised (GLM) predictive, $\text{softmax}(\kappa \odot \mu)$ with
the probit approximation, or the mean softmax of `pred_samples` sampled logits (`link_approx=mc`, which adds the
mutual information as a score).

**The fitted posterior is part of the last checkpoint** (laplace-torch's `state_dict`: mean, Kronecker factors or
GGN, prior precision): `experiments.evaluate` and `resume=` load it, and nothing refits it but training that
changes the weights. Validation before the last epoch, and the predictions of a run stopped before its posterior
was fitted, are the MAP network's softmax (evaluation notes it).
"""
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml.configs import option

from configs.checkpoint import CheckpointError
from configs.lenet import CHECKS as LENET_CHECKS, LeNetExperimentConfigs, baseline_presets, lenet_body
from configs.registry import Family, between, one_of
from configs.softmax import DEFAULTS as SOFTMAX_DEFAULTS
from evidential.data import TensorSplit
from evidential.models.laplace import HESSIAN_STRUCTURES, LINK_APPROXIMATIONS, SUBSETS, LaplaceError, \
    build_posterior, check_size, fit_posterior, import_laplace, load_posterior, n_weights, posterior_state, \
    predictive_logits, prior_precision
from evidential.outliers import uniform_to_softmax_kl
from evidential.prediction import Prediction, sampled_prediction


class LaplaceConfigs(LeNetExperimentConfigs):
    """
    ## Laplace approximation of the softmax LeNet's posterior

    * `subset_of_weights`: `last_layer` or `all`; `hessian_structure`: `kron`, `diag` or `full`
    * `link_approx`: `probit` or `mc` (with `pred_samples` draws)
    """
    experiment_name: str = 'laplace_mnist'

    # The model, chosen by name among this family's options
    model: nn.Module
    # Which weights are Gaussian: `last_layer` (the output layer's) or `all`
    subset_of_weights: str = 'last_layer'
    # How the posterior precision is stored: `kron` (Kronecker factors per layer), `diag` or `full`
    hessian_structure: str = 'kron'
    # E[softmax] of the Gaussian logits: `probit` (closed form) or `mc` (mean over `pred_samples` draws)
    link_approx: str = 'probit'
    # Draws of the logits averaged with `link_approx=mc`
    pred_samples: int = 100

    # ------------------------------------------------------------------ training: the softmax baseline's
    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return F.cross_entropy(outputs, labels), {}

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        return uniform_to_softmax_kl(outputs).mean()

    # ------------------------------------------------------------------ the posterior
    def posterior(self):
        """The fitted laplace-torch posterior, or None (before the last epoch, or a run stopped before it)."""
        return self.__dict__.get('_posterior')

    def _set_posterior(self, la, info: Optional[dict] = None):
        # in __dict__: labml's Configs treat attributes they do not declare as configurations
        self.__dict__['_posterior'] = la
        self.__dict__['_posterior_info'] = info or {}

    def fit_posterior(self) -> None:
        """Fits the posterior around the current weights on the training split (once, after the last epoch), and
        prints one line: what was fitted, the prior precision found and the time it took."""
        train = self.dataset.train
        import_laplace()  # a one-off cost of the process (~2 s), not the fit's
        started = time.perf_counter()
        la = build_posterior(self.model, self.subset_of_weights, self.hessian_structure)
        fit_posterior(la, train.images, train.labels, self.valid_batch_size)
        seconds = time.perf_counter() - started
        self._set_posterior(la, {'fit_seconds': seconds, 'n_fit': len(train)})
        delta = ', '.join(f'{v:.4g}' for v in prior_precision(la))
        print(f"\nLaplace posterior: {self.hessian_structure} GGN of the {self.subset_of_weights.replace('_', ' ')} "
              f"({n_weights(la):,} weights) on {len(train):,} training images, prior precision {delta} by marginal "
              f"likelihood, {seconds:.1f} s", flush=True)

    def _train_epoch(self, epoch: int, generator: torch.Generator, samples_seen: int):
        # the weights change: a posterior around the old ones (a resumed, finished run trained further) is stale
        self._set_posterior(None)
        result = super()._train_epoch(epoch, generator, samples_seen)
        self.__dict__['_epochs_trained'] = epoch + 1
        return result

    def track_validation(self, split: TensorSplit, prefix: str = 'valid') -> Dict[str, float]:
        # After the last epoch's training, before its validation: that epoch's validation, histograms and
        # checkpoint, and the test metrics, are the posterior's
        if prefix == 'valid' and self.posterior() is None and self.__dict__.get('_epochs_trained') == self.epochs:
            self.fit_posterior()
        return super().track_validation(split, prefix)

    def _state(self, epoch: int, samples_seen: int, history: list, status: str, generator: torch.Generator):
        state = super()._state(epoch, samples_seen, history, status, generator)
        if self.posterior() is not None:
            state['laplace'] = {'posterior': posterior_state(self.posterior()), **self.__dict__['_posterior_info']}
        return state

    def restore(self, state: dict, generator: torch.Generator) -> Tuple[int, int, list]:
        """Loads the checkpoint and, where it has one, the fitted posterior (never refitted here)."""
        result = super().restore(state, generator)
        self._set_posterior(None)
        saved = state.get('laplace')
        if saved is not None:
            la = build_posterior(self.model, self.subset_of_weights, self.hessian_structure)
            try:
                load_posterior(la, saved['posterior'])
            except LaplaceError as e:
                raise CheckpointError(str(e)) from None
            self._set_posterior(la, {k: v for k, v in saved.items() if k != 'posterior'})
        return result

    # ------------------------------------------------------------------ prediction
    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior predictive as logits (`[N, K]` probit, `[S, N, K]` sampled); the MAP network's logits
        where no posterior is fitted."""
        if self.posterior() is None:
            return self.model(x)
        return predictive_logits(self.posterior(), x, self.link_approx, self.pred_samples)

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """$\\text{softmax}$ of `[N, K]` logits; the mean softmax and mutual information of `[S, N, K]` draws."""
        if outputs.dim() == 3:
            return sampled_prediction(outputs)
        return Prediction(probs=outputs.float().softmax(-1))

    def evaluation_notes(self, outputs: torch.Tensor, split_name: str) -> List[str]:
        if self.posterior() is not None:
            return []
        return [f"no Laplace posterior in this checkpoint (training stopped before its last epoch, where the posterior "
                f"is fitted): the {split_name} predictions are the MAP network's softmax; resume the run to fit it"]


@option(LaplaceConfigs.model, 'lenet')
def _lenet(c: LaplaceConfigs) -> nn.Module:
    model = lenet_body(c)
    try:  # before anything is written: a posterior that cannot be stored is refused with the command line
        check_size(model, c.subset_of_weights, c.hessian_structure)
    except LaplaceError as e:
        raise ValueError(str(e)) from None
    return model


#: The softmax baseline's recipe (and no weight decay: the prior precision is the evidence's)
DEFAULTS = {**SOFTMAX_DEFAULTS, 'subset_of_weights': 'last_layer', 'hessian_structure': 'kron',
            'link_approx': 'probit', 'pred_samples': 100}

FAMILY = Family(
    name='laplace_mnist',
    configs=LaplaceConfigs,
    description='Laplace approximation (laplace-torch) of the softmax LeNet: last-layer K-FAC, GLM predictive',
    defaults=DEFAULTS,
    presets=baseline_presets(pred_samples=8),
    checks={**LENET_CHECKS, 'subset_of_weights': one_of(SUBSETS), 'hessian_structure': one_of(HESSIAN_STRUCTURES),
            'link_approx': one_of(LINK_APPROXIMATIONS), 'pred_samples': between(1, 10_000)},
    label_keys=lambda values: ['subset_of_weights', 'hessian_structure', 'link_approx'] + (
        ['pred_samples'] if values.get('link_approx') == 'mc' else []),
    label_names={'pred_samples': 'S'},
)
