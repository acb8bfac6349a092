r"""
# Evidence heads

The last linear layer of the network outputs unbounded logits $\mathbf{z}$; an evidence head maps
them to non-negative evidence $e_k = g(z_k) \ge 0$. The paper (Sensoy et al., 2018, Sec. 4) uses
ReLU and mentions softplus and exp as alternatives.

* **relu** $e_k = \max(0, z_k)$. Cheap, but a class whose logit stays negative gets zero gradient
  ("dead evidence"): training can stall with $\alpha_k = 1$ everywhere.
* **softplus** $e_k = \log(1 + e^{z_k})$. Smooth and never dead; labml_nn's default.
* **exp** $e_k = \exp(\min(z_k, c))$. Strictly positive with a gradient everywhere, but it
  explodes for large logits, so the logit is clamped at $c = 10$ ($e_k \le e^{10} \approx 22026$):
  evidence (and therefore $S$ and the losses) stays finite in float32.
"""
from typing import Callable, Dict

import torch
import torch.nn.functional as F

# Largest logit the `exp` head exponentiates: $e^{10} \approx 2.2 \cdot 10^4$ evidence is plenty
# (u = K/S < 0.001 for K = 10) while sums over a batch stay far from float32 overflow.
EXP_MAX_LOGIT = 10.0


def relu_evidence(logits: torch.Tensor) -> torch.Tensor:
    r"""$e_k = \max(0, z_k)$"""
    return F.relu(logits)


def softplus_evidence(logits: torch.Tensor) -> torch.Tensor:
    r"""$e_k = \log(1 + e^{z_k})$"""
    return F.softplus(logits)


def exp_evidence(logits: torch.Tensor) -> torch.Tensor:
    r"""$e_k = \exp(\min(z_k, 10))$"""
    return torch.exp(torch.clamp(logits, max=EXP_MAX_LOGIT))


EVIDENCE_HEADS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'relu': relu_evidence,
    'softplus': softplus_evidence,
    'exp': exp_evidence,
}


def evidence_head(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The evidence function called `name`; raises `ValueError` listing the valid names."""
    try:
        return EVIDENCE_HEADS[name]
    except KeyError:
        raise ValueError(f"unknown evidence head {name!r}; valid: {', '.join(EVIDENCE_HEADS)}") from None
