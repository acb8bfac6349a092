r"""
# What a model says about a batch

Every family of this app — evidential, softmax, MC dropout, ensembles, and whatever comes next —
answers with one `Prediction`:

* `probs` $\hat{\mathbf{p}}$, `[N, K]`: the expected class probabilities;
* `scores`, `{name: [N]}`: the model's *own* uncertainty scores (the Dirichlet uncertainty mass $u$,
  the mutual information of a sampling model, ...). **Every score means "higher = less certain"**, so
  evaluation, OOD detection, selective prediction and comparisons iterate over whatever a family gives;
* `extras`, `{name: tensor}`: other per-example quantities that are not scores (the evidence `[N, K]`
  and strength $S$ `[N]` of a Dirichlet opinion, ...), for tracking and figures.

The scores every prediction has — the entropy $H(\hat{\mathbf{p}})$ and $1 - \max_k \hat{p}_k$ — are
computed from `probs` by `evidential.metrics`, where they are checked; `categorical_entropy` is the one
definition of the entropy.

Sampling models (MC dropout, ensembles, Bayesian nets) produce logits of $S$ samples, `[S, N, K]`, once,
and `sampled_prediction` turns them into $\bar{\mathbf{p}}$ and the mutual information.
"""
from dataclasses import dataclass, field
from typing import Dict

import torch


@dataclass
class Prediction:
    """Expected probabilities `[N, K]`, the model's own scores `{name: [N]}` (higher = less certain) and extras."""
    probs: torch.Tensor
    scores: Dict[str, torch.Tensor] = field(default_factory=dict)
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)


def categorical_entropy(probs: torch.Tensor) -> torch.Tensor:
    r"""
    Shannon entropy of a categorical distribution, $H(\hat{\mathbf{p}}) = -\sum_k \hat{p}_k \log \hat{p}_k$,
    in nats, over the last dimension. $0 \log 0$ is taken as $0$.
    """
    # $\hat{p}_k \log \hat{p}_k$, with the $0 \log 0 = 0$ convention
    p_log_p = torch.special.xlogy(probs, probs)
    # $-\sum_k \hat{p}_k \log \hat{p}_k$
    return -p_log_p.sum(dim=-1)


def member_disagreement(probs: torch.Tensor) -> torch.Tensor:
    r"""
    The fraction of the $S$ members (samples) whose vote differs from the ensemble's prediction,
    $d_i = \frac{1}{S} \sum_s \mathbb{1}[\arg\max_k p_{sik} \ne \arg\max_k \bar{p}_{ik}]$, for probabilities
    `[S, N, K]` → `[N]` in $\{0, \frac1S, \dots, 1\}$: 0 when every member votes for the ensemble's class; it can
    reach 1, since that class need not be any member's vote ($(.6, .4, 0)$ and $(0, .4, .6)$ average to
    $(.3, .4, .3)$). Ties in $\arg\max$ go to the lowest class index.
    """
    # $\hat{y}_i = \arg\max_k \bar{p}_{ik}$
    ensemble_vote = probs.mean(0).argmax(-1)
    # $\frac{1}{S} \sum_s \mathbb{1}[\arg\max_k p_{sik} \ne \hat{y}_i]$
    return (probs.argmax(-1) != ensemble_vote).to(probs.dtype).mean(0)


def sampled_prediction(logits: torch.Tensor, disagreement: bool = False) -> Prediction:
    r"""
    The prediction of `S` samples of logits `[S, N, K]` (MC-dropout passes, ensemble members, posterior samples):
    $\bar{p} = \frac{1}{S}\sum_s \text{softmax}(z_s)$ and the mutual information between the prediction and
    the sampled parameters, $I = H[\bar{p}] - \frac{1}{S}\sum_s H[\text{softmax}(z_s)] \ge 0$ (the epistemic
    part of the predictive entropy; clamped at 0 against rounding; at most $\log S$ and $\log K$), and with
    `disagreement` the members' `member_disagreement`. Plain `[N, K]` logits count as one sample.
    """
    if logits.dim() == 2:
        logits = logits[None]
    probs = logits.float().softmax(-1)
    # $\bar{p} = \frac{1}{S} \sum_s p_s$
    mean = probs.mean(0)
    # $I = H[\bar{p}] - \frac{1}{S}\sum_s H[p_s]$
    mutual_information = (categorical_entropy(mean) - categorical_entropy(probs).mean(0)).clamp_min(0.)
    scores = {'mutual_information': mutual_information}
    if disagreement:
        scores['disagreement'] = member_disagreement(probs)
    return Prediction(probs=mean, scores=scores)
