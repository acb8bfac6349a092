r"""
# Laplace approximation of a trained network's posterior (laplace-torch)

After training, the MAP weights $\theta^*$ are the mode of the posterior; the Laplace approximation puts a Gaussian
there (MacKay, 1992; Daxberger et al., "Laplace Redux", NeurIPS 2021),

$$p(\theta \mid \mathcal{D}) \approx \mathcal{N}(\theta^*, P^{-1}), \qquad
  P = \sum_{n=1}^{N} J_n^\top \Lambda_n J_n + \delta I,$$

the generalised Gauss-Newton (GGN) of the cross-entropy, $J_n = \partial f(x_n) / \partial \theta$ and
$\Lambda_n = \text{diag}(p_n) - p_n p_n^\top$, plus the precision $\delta$ of the prior $\mathcal{N}(0, \delta^{-1} I)$.
Which weights are Gaussian (`subset_of_weights`): those of the last linear layer, the rest fixed at $\theta^*$, or
all of them. How $P$ is stored (`hessian_structure`): `kron`, one Kronecker product per layer,
$P_W \approx N\, (G \otimes A) + \delta I$ with $A$ the layer inputs' and $G$ the output gradients' second moments
(K-FAC); `diag`, its diagonal; `full`, dense.

The prior precision maximises the Laplace evidence (`method='marglik'`),

$$\log p(\mathcal{D} \mid \delta) \approx \log p(\mathcal{D} \mid \theta^*) - \tfrac{1}{2}\,\delta\,\|\theta^*\|^2
  - \tfrac{1}{2} \log \frac{\det P}{\det \delta I},$$

by gradient ascent on $\log \delta$ (laplace-torch: Adam, 100 steps).

The prediction linearises the network around $\theta^*$ (the GLM predictive, the one consistent with the GGN), so
the logits are Gaussian, $f(x) \sim \mathcal{N}(\mu, \Sigma)$ with $\mu = f_{\theta^*}(x)$ and
$\Sigma = J(x) P^{-1} J(x)^\top$ (for the last layer $J(x) = \phi(x)^\top \otimes I_K$, plus $I_K$ for its bias,
and the linearisation is exact). $\mathbb{E}[\text{softmax}(f)]$ has no closed form (`link_approx`):

* `probit`: $\text{softmax}(\kappa \odot \mu)$, $\kappa_k = (1 + \frac{\pi}{8} \Sigma_{kk})^{-1/2}$ — the probit
  approximation of the sigmoid, applied per class (`probit_logits` returns $\kappa \odot \mu$);
* `mc`: $\frac{1}{S} \sum_s \text{softmax}(f_s)$ over $S$ draws $f_s = \mu + L \epsilon_s$, $L L^\top = \Sigma$
  (`[S, N, K]` logits: the mutual information follows, as for any sampled prediction).

All of it is laplace-torch's (`laplace.Laplace`): fitting, the evidence, $\Sigma$ and the samples. This module only
adapts the app's models to it and keeps its state in plain tensors.
"""
import copy
import math
import warnings
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

#: Which weights are Gaussian: the last linear layer's, or every weight
SUBSETS = ('last_layer', 'all')
#: How the posterior precision is stored: Kronecker factors per layer (K-FAC), its diagonal, or dense
HESSIAN_STRUCTURES = ('kron', 'diag', 'full')
#: How E[softmax(f)] of the Gaussian logits is approximated
LINK_APPROXIMATIONS = ('probit', 'mc')

#: Bytes the Jacobians of one sub-batch may take when every weight is Gaussian (`[B, K, P]` floats, P = 431,080
#: for the LeNet: about 17 MB per image)
JACOBIAN_BYTES = 256 * 2 ** 20


class LaplaceError(ValueError):
    """A posterior that cannot be built (an unknown option, a size out of reach), or a saved one that does not fit
    the model."""


def import_laplace():
    """The `laplace` package. Importing it imports asdl (its ASDL backend), which calls `torch.jit.script`, deprecated
    in torch 2.14: a FutureWarning that concerns neither this app nor laplace-torch's use here."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=FutureWarning, module=r'torch\.jit')
        import laplace
    return laplace


def last_linear_name(model: nn.Module) -> str:
    """The name of the last `nn.Linear` module of `model` (the layer whose weights `last_layer` makes Gaussian)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise LaplaceError(f"{type(model).__name__} has no linear layer for a last-layer Laplace approximation")
    return names[-1]


def build_posterior(model: nn.Module, subset: str, structure: str):
    """
    An unfitted laplace-torch posterior around the current weights of `model` (its MAP), on a copy of `model`: the
    posterior keeps its own network, so training `model` further does not change it.

    * `last_layer`: every other weight of the copy is frozen, so laplace-torch's parameter vector is only the last
      layer's (it flattens parameters with `view`, which the convolution weights of a channels-last body refuse);
      the named layer also keeps it from storing a training batch to find the layer.
    * `all`: the copy is in the contiguous memory format, for the same reason; its diagonal GGN comes from the ASDL
      backend (the default backend computes it from whole Jacobians, `[B, K, P]` per batch: measured 20x slower).
      A dense `full` precision over every weight has $P^2$ entries (744 GB for the LeNet) and is refused.
    """
    if subset not in SUBSETS:
        raise LaplaceError(f"subset_of_weights must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if structure not in HESSIAN_STRUCTURES:
        raise LaplaceError(f"hessian_structure must be one of {', '.join(HESSIAN_STRUCTURES)}, got {structure!r}")
    check_size(model, subset, structure)
    laplace = import_laplace()
    body = copy.deepcopy(model).eval()
    kwargs: Dict[str, Any] = {}
    if subset == 'last_layer':
        last = last_linear_name(body)
        for name, parameter in body.named_parameters():
            parameter.requires_grad_(name.startswith(last + '.'))
        kwargs['last_layer_name'] = last
    else:
        body = body.to(memory_format=torch.contiguous_format)
        if structure == 'diag':
            from laplace.curvature import AsdlGGN
            kwargs['backend'] = AsdlGGN
    # enable_backprop: the predictive stays differentiable in the input (FGSM attacks the posterior predictive)
    return laplace.Laplace(body, 'classification', subset_of_weights=subset, hessian_structure=structure,
                           enable_backprop=True, **kwargs)


def check_size(model: nn.Module, subset: str, structure: str) -> None:
    """Raises `LaplaceError` for a dense precision over every weight of `model` (P² floats)."""
    if subset == 'all' and structure == 'full':
        n = sum(p.numel() for p in model.parameters())
        raise LaplaceError(f"a full Hessian over all {n:,} weights has {n * n:.2g} entries "
                           f"({n * n * 4 / 1e9:,.0f} GB): use hessian_structure=kron or diag, or "
                           f"subset_of_weights=last_layer")


def fit_posterior(la, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
    """
    Fits `la` on the training images: the GGN summed over `images` in batches of `batch_size`, then the prior
    precision $\\delta$ by maximising the evidence. Draws nothing from the caller's random streams (the GGN and
    the evidence are exact; the state of torch's generators is restored anyway, so a run continues the same).
    """
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size)
    devices = [images.device] if images.device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        # laplace-torch reminds, for any classification posterior, that `link_approx` must match the one predictions
        # use; with method='marglik' the link is not used at all
        warnings.filterwarnings('ignore', message='By default `link_approx` is `probit`')
        # torch's own deprecations met on the way, none about this use: forward-mode AD (the dense GGN's products)
        # scripts its decompositions on first use, and ASDL (the diagonal GGN of all weights) registers backward
        # hooks of the older kind
        warnings.filterwarnings('ignore', category=FutureWarning, module=r'torch\.jit')
        warnings.filterwarnings('ignore', message='Using a non-full backward hook', category=FutureWarning)
        la.fit(loader)
        la.optimize_prior_precision(pred_type='glm', method='marglik')


def n_weights(la) -> int:
    """The number of Gaussian weights of `la`."""
    return int(la.n_params)


def prior_precision(la) -> Tuple[float, ...]:
    """$\\delta$ (one per layer where laplace-torch keeps one per layer)."""
    return tuple(float(v) for v in la.prior_precision.detach().flatten().cpu())


def _is_last_layer(la) -> bool:
    return isinstance(la, import_laplace().LLLaplace)


def _chunks(la, x: torch.Tensor):
    """Sub-batches of `x` whose Jacobians `[B, K, P]` fit in `JACOBIAN_BYTES` (all of `x` for the last layer)."""
    if _is_last_layer(la):
        yield x
        return
    per_image = max(1, la.n_outputs) * n_weights(la) * x.element_size()
    size = max(1, JACOBIAN_BYTES // per_image)
    yield from x.split(size)


def glm_moments(la, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    $\\mu$ `[N, K]` and $\\Sigma$ `[N, K, K]` of the linearised network's logits for a batch `x` (laplace-torch's
    GLM predictive: the moments its own `la(x, pred_type='glm')` uses; for the last-layer K-FAC posterior, the
    same moments by `kron_last_layer_moments`). Differentiable in `x` when gradients are on; detached otherwise.

    With every weight Gaussian the Jacobians come from autograd (`torch.func`), which an inference-mode batch
    cannot enter: such a batch is cloned into a normal tensor and computed with inference mode off. Inside an
    autocast region (bfloat16 forward passes) the moments are still computed in float32: eigenvectors and
    $1 / (\\lambda_1 \\lambda_2 + \\delta)$ with 8 bits of mantissa would not be the posterior's.
    """
    grad = torch.is_grad_enabled()
    if not _is_last_layer(la) and torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return glm_moments(la, x.clone())
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        if isinstance(la, import_laplace().KronLLLaplace) and not la.damping:
            mu, sigma = kron_last_layer_moments(la, x)
        else:
            moments = [la._glm_predictive_distribution(chunk) for chunk in _chunks(la, x)]
            mu, sigma = (torch.cat(parts) for parts in zip(*moments))
    return (mu, sigma) if grad else (mu.detach(), sigma.detach())


def kron_last_layer_moments(la, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    $\mu$ and $\Sigma = J P^{-1} J^\top$ of a last-layer K-FAC posterior without forming the Jacobians.

    laplace-torch forms $J$ `[N, K, K(H + 1)]` and multiplies every row through both Kronecker factors (measured
    2.5 ms per image on 2 CPU cores, 30 times the network's own pass; its shortcut for this case,
    `KronLLLaplace.functional_variance_fast`, raises `NotImplementedError` in 0.3). The structure of $J$ makes it
    a few small products. The weight block of the precision is $P_W = (Q_1 \otimes Q_2)(\Lambda_1 \otimes \Lambda_2
    + \delta)(Q_1 \otimes Q_2)^\top$ (the eigendecompositions of the output-gradient factor, $K \times K$, and of
    the input factor, $H \times H$, both already scaled as laplace-torch's `posterior_precision` keeps them), and
    row $k$ of $J_W$ is $e_k \phi^\top$ for the features $\phi$ of the last layer's input, so

    $$\Sigma^W_{kl} = \sum_i Q_{1,ki}\, Q_{1,li} \sum_j \frac{\psi_j^2}{\lambda_{1,i} \lambda_{2,j} + \delta},
      \qquad \psi = Q_2^\top \phi;$$

    the bias block adds $Q_b (\Lambda_b + \delta_b)^{-1} Q_b^\top$, the same for every image (its Jacobian is
    $I_K$). `tests/test_laplace.py` checks both against laplace-torch's own predictive.
    """
    # $\mu = f_{	heta^*}(x)$ and the features $\phi(x)$ entering the last layer
    mu, phi = la.model.forward_with_features(x)
    precision = la.posterior_precision
    (l1, l2), (q1, q2) = precision.eigenvalues[0], precision.eigenvectors[0]
    # $\psi = Q_2^	op \phi$, per image
    psi = phi @ q2
    # $d_i = \sum_j \psi_j^2 / (\lambda_{1,i} \lambda_{2,j} + \delta)$: `[N, K]`
    d = psi.square() @ (torch.outer(l1, l2) + precision.deltas[0]).reciprocal().T
    # $\Sigma^W = Q_1 \operatorname{diag}(d) Q_1^	op$
    sigma = torch.einsum('ki,ni,li->nkl', q1, d, q1)
    if len(precision.eigenvalues) > 1:
        (lb,), (qb,) = precision.eigenvalues[1], precision.eigenvectors[1]
        # $+ Q_b (\Lambda_b + \delta_b)^{-1} Q_b^	op$
        sigma = sigma + (qb * (lb + precision.deltas[1]).reciprocal()) @ qb.T
    return mu, sigma


def probit_logits(la, x: torch.Tensor) -> torch.Tensor:
    """
    Logits `[N, K]` whose softmax is the probit-approximated predictive, $\\kappa \\odot \\mu$ with
    $\\kappa_k = (1 + \\frac{\\pi}{8} \\Sigma_{kk})^{-1/2}$ (laplace-torch's `link_approx='probit'`, whose
    probabilities it returns; the logits are what this app's predictions and post-hoc steps take).
    """
    mu, sigma = glm_moments(la, x)
    # $\kappa_k = (1 + \frac{\pi}{8} \Sigma_{kk})^{-1/2}$
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * sigma.diagonal(dim1=-2, dim2=-1))
    # $\text{softmax}(\kappa \odot \mu)$ is the predictive
    return kappa * mu


def sampled_logits(la, x: torch.Tensor, samples: int) -> torch.Tensor:
    """`[S, N, K]` draws $f_s = \\mu + L \\epsilon_s$, $L L^\\top = \\Sigma$, of the linearised network's logits
    (laplace-torch's `normal_samples`, which its `functional_samples(x, pred_type='glm')` draws with: one
    $\\epsilon_s$ per draw, shared by the batch's images), from torch's global generator."""
    from laplace.utils import normal_samples
    mu, sigma = glm_moments(la, x)
    with torch.autocast(x.device.type, enabled=False):  # L ε in float32, as the moments
        return normal_samples(mu, sigma, samples)


def predictive_logits(la, x: torch.Tensor, link_approx: str, samples: int) -> torch.Tensor:
    """The posterior predictive of a batch as logits: `[N, K]` for `probit`, `[S, N, K]` for `mc`."""
    if link_approx == 'probit':
        return probit_logits(la, x)
    if link_approx == 'mc':
        return sampled_logits(la, x, samples)
    raise LaplaceError(f"link_approx must be one of {', '.join(LINK_APPROXIMATIONS)}, got {link_approx!r}")


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def posterior_state(la) -> Dict[str, Any]:
    """What laplace-torch needs to rebuild the fitted posterior (its `state_dict`: the mean, the GGN or its Kronecker
    factors, the prior precision, ...), as detached tensors and plain values (a checkpoint loads with
    `weights_only=True`)."""
    return _map_tensors(la.state_dict(), lambda t: t.detach().clone())


def load_posterior(la, state: Dict[str, Any]) -> None:
    """Loads a `posterior_state` into `la` (built by `build_posterior` on the same network, on any device); raises
    `LaplaceError` when it was saved for another kind of posterior or another network."""
    device = next(la.model.parameters()).device
    try:
        la.load_state_dict(_map_tensors(state, lambda t: t.to(device)))
    except (ValueError, KeyError, TypeError, AssertionError, RuntimeError) as e:
        raise LaplaceError(f"the saved Laplace posterior does not fit this model: {str(e).splitlines()[0]}") from None
