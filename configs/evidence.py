"""
# Evidential LeNet configurations

Adds to the shared configurations what makes a model evidential: the evidence head
(`outputs_to_evidence`), the Bayes-risk loss (`loss_func`) and the annealed KL regulariser
(`kl_schedule`), and optionally synthetic outliers trained towards "no evidence" (`outlier_coef`).
All the math lives in `evidential/`; this file only wires it to labml options.
"""
from functools import partial
from typing import Callable, Dict, List, Tuple

import torch
from labml.configs import option

from configs.experiment import MNISTExperimentConfigs, Prediction
from evidential.dirichlet import opinion
from evidential.heads import EVIDENCE_HEADS, EXP_MAX_LOGIT, on_exp_plateau
from evidential.losses import LOSSES, kl_uniform_regulariser, outlier_regulariser
from evidential.schedules import KL_SCHEDULES, make_kl_schedule


class EvidenceConfigs(MNISTExperimentConfigs):
    """
    ## Evidential experiment

    * `outputs_to_evidence`: `relu`, `softplus`, `exp`, `exp_linear`
    * `loss_func`: `max_likelihood_loss` (Eq. 3), `cross_entropy_bayes_risk` (Eq. 4), `squared_error_bayes_risk` (Eq. 5),
      `relaxed_squared_error` (R-EDL, with `prior_weight`), `fisher_information_loss` (I-EDL, with `fisher_coef`)
    * `kl_schedule`: `piecewise` (`kl_div_coef_schedule`), `paper` (min(1, epoch/10)), `constant` (`kl_coef`), `off`
    * `outlier_coef` > 0 (shared configurations): synthetic outliers whose KL to Dir(1) is weighted by `outlier_coef`
    """
    experiment_name: str = 'evidence_mnist'

    # Evidence head $e = g(\text{logits})$
    outputs_to_evidence: Callable[[torch.Tensor], torch.Tensor]
    # Loss on the Dirichlet opinion
    loss_func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # KL annealing coefficient $\lambda_t$ as a function of samples seen
    kl_schedule: Callable[[int], float]
    # Points (fraction of training, $\lambda$) of the `piecewise` schedule (labml_nn's default)
    kl_div_coef_schedule: List[Tuple[float, float]] = [(0, 0.), (0.2, 0.01), (1, 1.)]
    # $\lambda$ of the `constant` schedule
    kl_coef: float = 1.0
    # Prior weight: evidence the uniform prior adds to each class, $\alpha_k = e_k + \lambda$ and
    # $u = K\lambda/S$; 1 in Sensoy et al., 0.1 in R-EDL (used by `relaxed_squared_error` and predictions)
    prior_weight: float = 1.0
    # $\lambda_F$ of I-EDL's `fisher_information_loss`: weight of $-\log|\mathcal{I}(\boldsymbol\alpha)|$
    # (0.005 in the authors' MNIST configuration, Deng et al. 2023)
    fisher_coef: float = 0.005

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        evidence = self.outputs_to_evidence(outputs)
        # Bayes risk (or Type II likelihood) of the opinion
        risk = self.loss_func(evidence, labels)
        # $\text{KL}[\text{Dir}(\tilde\alpha) \| \text{Dir}(1)]$
        kl = kl_uniform_regulariser(evidence, labels)
        # $\lambda_t$
        coef = self.kl_schedule(samples_seen)
        # $\mathcal{L} = \text{risk} + \lambda_t \text{KL}$
        loss = risk + coef * kl
        return loss, {'risk.train': risk, 'kl.train': kl, 'kl_coef': torch.tensor(coef)}

    def outlier_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        # $\text{KL}[\text{Dir}(\boldsymbol\alpha_o) \| \text{Dir}(\mathbf{1})]$: an outlier's evidence is all misleading
        return outlier_regulariser(self.outputs_to_evidence(outputs))

    def predict(self, outputs: torch.Tensor) -> Prediction:
        o = opinion(self.outputs_to_evidence(outputs), self.prior_weight)
        return Prediction(probs=o.expected_probability, uncertainty=o.uncertainty_mass, strength=o.strength)

    def evaluation_notes(self, outputs: torch.Tensor, split_name: str) -> List[str]:
        notes = super().evaluation_notes(outputs, split_name)
        if self.outputs_to_evidence is EVIDENCE_HEADS['exp'] and len(outputs):
            share = on_exp_plateau(outputs).float().mean().item()
            if share > 0:
                notes.append(f"{share:.1%} of the {split_name} images have a top logit at or above "
                             f"{EXP_MAX_LOGIT:g}, the clamp of the exp head: their u sees only the evidence for "
                             f"the other classes, not how confident the network is (README: the plateau of the "
                             f"clamped exp head); outputs_to_evidence=exp_linear has no plateau")
        return notes

    def nonfinite_hint(self) -> str:
        hint = super().nonfinite_hint()
        if self.outputs_to_evidence in (EVIDENCE_HEADS['exp'], EVIDENCE_HEADS['exp_linear']):
            return f"the exp evidence head is sensitive to large steps and {hint}"
        return hint

    def init_tracker(self):
        super().init_tracker()
        from labml import tracker
        tracker.set_scalar('risk.*', False)
        tracker.set_scalar('kl.*', False)


for _name, _fn in EVIDENCE_HEADS.items():
    option(EvidenceConfigs.outputs_to_evidence, _name)((lambda fn: lambda c: fn)(_fn))

for _name, _fn in LOSSES.items():
    if _name == 'relaxed_squared_error':
        # R-EDL's loss uses the configured prior weight, the same one predictions use
        option(EvidenceConfigs.loss_func, _name)((lambda fn: lambda c: partial(fn, prior_weight=c.prior_weight))(_fn))
    elif _name == 'fisher_information_loss':
        option(EvidenceConfigs.loss_func, _name)((lambda fn: lambda c: partial(fn, fisher_coef=c.fisher_coef))(_fn))
    else:
        option(EvidenceConfigs.loss_func, _name)((lambda fn: lambda c: fn)(_fn))

for _name in KL_SCHEDULES:
    option(EvidenceConfigs.kl_schedule, _name)(
        (lambda name: lambda c: make_kl_schedule(name, samples_per_epoch=len(c.dataset.train), epochs=c.epochs,
                                                 points=c.kl_div_coef_schedule, coef=c.kl_coef))(_name))
