r"""
# The Natural Posterior Network on a LeNet

`NaturalPosteriorNetwork(K, class_counts)` = encoder → latent $\mathbf{z} \in \mathbb{R}^H$ → radial flow(s) →
log-evidence $\log n_c$ `[N, K]` (the math: [`evidential/natpn.py`](../natpn.py), the flows:
[`evidential/flows.py`](../flows.py)).

* **Encoder**: this app's LeNet (`evidential.models.lenet.LeNet`: two 5×5 convolutions with 20 and 50 channels,
  max-pooling, 500 hidden units with dropout) with its last linear layer mapping to the $H$ latent dimensions
  instead of the $K$ classes — NatPN's MNIST encoder is a different small CNN (`image-shallow`) ending the same
  way, in a linear map to the latent.
* **Density**: `density='class'` — $K$ flows, $\log n_c = \log N_H + \log N_c + \log p(\mathbf{z} \mid c)$ with the
  training-split class counts $N_c = N P(c)$ (a buffer, saved with the weights); `density='shared'` — one flow and a
  linear classifier, $\log n_c = \log N_H + \log p(\mathbf{z}) + \log \text{softmax}(W\mathbf{z} + \mathbf{b})_c$.
* **Latent normalisation** (class form only): the latent is batch-normalised without an affine map, as the Posterior
  Network's code normalises its latent (`nn.BatchNorm1d`, there with one). Once the evidence is large the Bayesian
  loss only sees the class shares, $\nabla \approx \sum_c \hat{p}_c \nabla \log p(\mathbf{z} \mid c) - \nabla \log
  p(\mathbf{z} \mid y)$, and per-class log-densities differ the more the further out $\mathbf{z}$ lies; measured on
  MNIST without it, the latents' norm grew from 0.6 to 30 in 30 Adam steps and every input's evidence fell below
  $e^{-30}$, where no gradient is left. A fixed unit scale per dimension rules that out. NatPN's shared form
  separates the classes with its linear layer instead and keeps its latent as it is (its latents' norm stayed ~2).

The outputs are the *unclamped* $\log n_c$: `evidential.natpn.evidence_from_log` clamps their total when it makes
evidence, and `log_density` recovers $\log p(\mathbf{z})$ from them exactly. Their argmax is the argmax of
$\boldsymbol\alpha$, the predicted class.
"""
import torch
import torch.nn as nn

from ..flows import RadialFlow
from ..natpn import log_certainty_budget, total_log_evidence
from .lenet import LeNet

DENSITIES = ('class', 'shared')


class NaturalPosteriorNetwork(nn.Module):
    """Images `[N, 1, 28, 28]` → $\\log n_c$ `[N, K]`; `latent(x)` → $\\mathbf{z}$, `flow_log_prob(z)` → `[N, F]`."""

    def __init__(self, n_classes: int, class_counts: torch.Tensor, latent_dim: int = 16, flow_layers: int = 8,
                 density: str = 'class', budget: str = 'normal', dropout: float = 0.5):
        super().__init__()
        if density not in DENSITIES:
            raise ValueError(f"unknown density {density!r}; valid: {', '.join(DENSITIES)}")
        if class_counts.shape != (n_classes,) or (class_counts < 0).any():
            raise ValueError(f"class_counts must be {n_classes} counts >= 0, got {class_counts.tolist()}")
        self.n_classes = n_classes
        self.density = density
        self.budget = budget
        # $\log N_H$
        self.log_budget = log_certainty_budget(latent_dim, budget)
        self.encoder = LeNet(latent_dim, dropout)
        self.normalise = nn.BatchNorm1d(latent_dim, affine=False) if density == 'class' else nn.Identity()
        self.flow = RadialFlow(latent_dim, flow_layers, n_classes if density == 'class' else 1)
        self.classifier = nn.Linear(latent_dim, n_classes) if density == 'shared' else None
        # $\log N_c$; a class the training split lacks counts as one image ($\log 0$ would make the loss's
        # gradients NaN), so its evidence stays ~$1/N$ of the others'
        self.register_buffer('log_class_counts', class_counts.double().clamp_min(1).log().float())

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        r"""$\mathbf{z}$ `[N, H]`."""
        return self.normalise(self.encoder(x))

    def flow_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        r"""$\log p(\mathbf{z} \mid c)$ `[N, K]` (class) or $\log p(\mathbf{z})$ `[N, 1]` (shared)."""
        return self.flow.log_prob(z)

    def log_evidence(self, z: torch.Tensor) -> torch.Tensor:
        r"""$\log n_c$ `[N, K]` of latents `[N, H]`."""
        log_p = self.flow_log_prob(z)
        if self.classifier is None:
            # $\log N_H + \log N_c + \log p(\mathbf{z} \mid c)$
            return self.log_budget + self.log_class_counts + log_p
        # $\log N_H + \log p(\mathbf{z}) + \log \chi_c$
        return self.log_budget + log_p + self.classifier(z).log_softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_evidence(self.latent(x))

    def log_density(self, log_evidence: torch.Tensor) -> torch.Tensor:
        r"""$\log p(\mathbf{z})$ `[N]` from the outputs $\log n_c$: $\log \sum_c n_c - \log N_H$, less $\log N$ for the
        class form ($\sum_c N_c\, p(\mathbf{z} \mid c) = N p(\mathbf{z})$)."""
        total = total_log_evidence(log_evidence) - self.log_budget
        if self.classifier is None:
            total = total - torch.logsumexp(self.log_class_counts, dim=0)
        return total
