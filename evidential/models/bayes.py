r"""
# Bayesian layers: variational inference with the local reparametrisation trick

A Bayesian network puts a distribution on its weights $\mathbf{w}$ instead of a point estimate.
Variational inference (Blundell et al., 2015, "Weight Uncertainty in Neural Networks") approximates the
posterior $p(\mathbf{w} | \mathcal{D})$ with a mean-field Gaussian

$$q_\phi(\mathbf{w}) = \prod_i \mathcal{N}(w_i; \mu_i, \sigma_i^2), \qquad
  \sigma_i = \text{softplus}(\rho_i) + \sigma_{\min}$$

over every weight *and* bias, and fits $\phi = (\mu, \rho)$ by maximising the evidence lower bound

$$\mathcal{L}(\phi) = \sum_{n=1}^{N} \mathbb{E}_{q_\phi(\mathbf{w})} \big[\log p(y_n | \mathbf{x}_n, \mathbf{w})\big]
  - D_{KL}\big(q_\phi(\mathbf{w}) \,\|\, p(\mathbf{w})\big)
  \le \log p(\mathbf{y} | \mathbf{X})$$

with the prior $p(\mathbf{w}) = \prod_i \mathcal{N}(w_i; 0, s^2)$, $s$ = `prior_scale`.

## The KL term in closed form

Both distributions are Gaussian, so each weight contributes

$$D_{KL}\big(\mathcal{N}(\mu, \sigma^2) \,\|\, \mathcal{N}(0, s^2)\big)
  = \log \frac{s}{\sigma} + \frac{\sigma^2 + \mu^2}{2 s^2} - \frac{1}{2}$$

and `kl_divergence(model)` sums it over all Bayesian layers; only the likelihood term is estimated
by sampling.

## Local reparametrisation (Kingma, Salimans & Welling, 2015, "Variational Dropout and the Local
## Reparameterization Trick", Sec. 2.3)

The plain reparametrisation samples $w = \mu + \sigma \epsilon$ once per minibatch, so the
examples of a minibatch share one weight sample: their likelihood terms are correlated and the
gradient's variance does not shrink as $1/M$ with the minibatch size $M$. Sampling one weight matrix
*per example* would fix that, but costs an $M \times$ larger weight tensor. For a fully-connected layer
the pre-activations $\mathbf{B} = \mathbf{A} \mathbf{W}$ (inputs $\mathbf{A}$, $M \times I$) are linear in the
Gaussian weights, so given the inputs they are Gaussian themselves, independent over units $j$ and
examples $m$:

$$q(b_{mj} | \mathbf{A}) = \mathcal{N}(\gamma_{mj}, \delta_{mj}), \qquad
  \gamma_{mj} = \sum_i a_{mi} \mu_{ij}, \qquad
  \delta_{mj} = \sum_i a_{mi}^2 \sigma_{ij}^2$$

(with a bias, $\mu^{(b)}_j$ is added to $\gamma$ and $\sigma^{(b)2}_j$ to $\delta$), and one samples the
pre-activations directly:

$$b_{mj} = \gamma_{mj} + \sqrt{\delta_{mj}} \, \zeta_{mj}, \qquad \zeta_{mj} \sim \mathcal{N}(0, 1)$$

That is one extra matrix product (of $\mathbf{A}^2$ with $\sigma^2$) and an independent weight sample per
example, for free. Every example sees exactly the distribution of the network under $q$, so the
estimate of $\mathcal{L}$ has the *same expectation* as with sampled weights, only lower variance.

**Convolutions.** `BayesConv2d` does the same with the convolution: $\gamma$ = conv($\mathbf{x}$; $\mu$),
$\delta$ = conv($\mathbf{x}^2$; $\sigma^2$). Each output value has the right marginal, but the
positions of one feature map get independent noise, whereas a sampled kernel is shared across
positions (their pre-activations are correlated). For a conv layer this is therefore an
approximation of $q$ (as in Molchanov et al., 2017), not an exact re-sampling; the fully-connected layers
are exact.

## Why $\sigma = \text{softplus}(\rho) + \sigma_{\min}$ and not a clamp

A clamp $\max(\sigma, \sigma_{\min})$ has zero gradient below the floor: a $\rho$ that went below it
gets no signal back from the KL term and sits there. The shifted softplus is smooth with a non-zero
gradient everywhere, a bijection from $\rho \in \mathbb{R}$ to $\sigma \in (\sigma_{\min}, \infty)$, and
keeps $\sigma \ge \sigma_{\min}$ by construction. The floor keeps $\log \sigma$ in the KL finite and,
through the bias variance, $\delta \ge \sigma_{\min}^2 > 0$, so the derivative $1 / (2\sqrt{\delta})$ of
the sampled pre-activation stays bounded.

## Posterior mean vs sampling

Every Bayesian layer has a `sampling` attribute (default `True`). With `sampling = False` it is the
deterministic layer with the weights $\mu$ (the posterior mean), which the context manager
`posterior_mean(model)` sets on every Bayesian layer of a model and restores afterwards.

For prediction, `sampled_network(model)` draws one weight sample per layer, $w = \mu + \sigma \epsilon$, and
uses it for every input: $S$ such networks give the posterior predictive
$\frac{1}{S} \sum_s \text{softmax}(f(\mathbf{x}; \mathbf{w}_s))$ exactly, convolutions included, with one
operation per layer instead of two and no noise per pre-activation (`bayes_logits(..., networks=True)`).

`BayesLayers` is the [layer factory](lenet.py) of these layers: `LeNet(10, layers=BayesLayers())` is the
Bayesian LeNet. `bayes_logits` draws $S$ forward passes as `[S, N, K]` logits and `negative_elbo` is
the per-example loss $-\mathcal{L} / N$.
"""
import contextlib
import math
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from evidential.models.lenet import Layers, keep_layout

_Size2 = Union[int, Tuple[int, int]]


def _check_scales(prior_scale: float, sigma_init: float, sigma_min: float) -> None:
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
    if not sigma_min >= 0:
        raise ValueError(f"sigma_min must be >= 0, got {sigma_min}")
    if not sigma_init > sigma_min:
        raise ValueError(f"sigma_init must be > sigma_min (sigma = softplus(rho) + sigma_min > sigma_min), "
                         f"got sigma_init={sigma_init}, sigma_min={sigma_min}")


def _noise(like: torch.Tensor) -> torch.Tensor:
    r"""$\epsilon \sim \mathcal{N}(0, I)$ of `like`'s shape, drawn in row-major order whatever `like`'s memory layout,
    so a seed draws the same network with channels-last parameters (as `experiments.evaluate` holds them)."""
    return torch.randn(like.shape, dtype=like.dtype, device=like.device)


class BayesLayer(nn.Module):
    r"""
    The base of `BayesLinear` and `BayesConv2d`: a mean-field Gaussian posterior over the weight and bias,
    sampled by local reparametrisation. Subclasses give the linear operation `_op(x, weight, bias)`.

    Parameters: `weight_mu`, `weight_rho` and (with a bias) `bias_mu`, `bias_rho`;
    $\sigma = \text{softplus}(\rho) + \sigma_{\min}$.
    """

    def __init__(self, weight_shape: Tuple[int, ...], bias: bool, fan_in: int, *, prior_scale: float,
                 sigma_init: float, sigma_min: float):
        super().__init__()
        _check_scales(prior_scale, sigma_init, sigma_min)
        self.prior_scale = float(prior_scale)
        self.sigma_init = float(sigma_init)
        self.sigma_min = float(sigma_min)
        self.fan_in = fan_in
        # `False`: the deterministic layer with weights $\mu$ (see `posterior_mean`)
        self.sampling = True
        # One drawn `(weight, bias)`, used instead of local reparametrisation while set (see `sampled_network`)
        self.drawn: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None
        self.weight_mu = nn.Parameter(torch.empty(weight_shape))
        self.weight_rho = nn.Parameter(torch.empty(weight_shape))
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(weight_shape[0]))
            self.bias_rho = nn.Parameter(torch.empty(weight_shape[0]))
        else:
            self.register_parameter('bias_mu', None)
            self.register_parameter('bias_rho', None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""$\mu$ as PyTorch initialises `nn.Linear` / `nn.Conv2d`; $\sigma = \sigma_{\text{init}}$ everywhere."""
        # Kaiming-uniform weights and $\mathcal{U}(\pm 1/\sqrt{\text{fan}_{in}})$ biases, as the plain layers
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        # $\rho = \text{softplus}^{-1}(\sigma_0 - \sigma_{\min}) = \log(e^{\sigma_0 - \sigma_{\min}} - 1)$,
        # $\sigma_0$ = `sigma_init`
        rho = math.log(math.expm1(self.sigma_init - self.sigma_min))
        nn.init.constant_(self.weight_rho, rho)
        if self.bias_mu is not None:
            bound = 1 / math.sqrt(self.fan_in) if self.fan_in > 0 else 0.
            nn.init.uniform_(self.bias_mu, -bound, bound)
            nn.init.constant_(self.bias_rho, rho)

    def _sigma(self, rho: torch.Tensor) -> torch.Tensor:
        # $\sigma = \text{softplus}(\rho) + \sigma_{\min}$
        return F.softplus(rho) + self.sigma_min

    @property
    def weight_sigma(self) -> torch.Tensor:
        return self._sigma(self.weight_rho)

    @property
    def bias_sigma(self) -> Optional[torch.Tensor]:
        return None if self.bias_rho is None else self._sigma(self.bias_rho)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def moments(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""The mean $\gamma$ and variance $\delta$ of the pre-activations under $q$, given the input `x`."""
        # $\gamma = \text{op}(\mathbf{x}; \mu_w) + \mu_b$
        gamma = self._op(x, self.weight_mu, self.bias_mu)
        bias_var = None if self.bias_rho is None else self.bias_sigma ** 2
        # $\delta = \text{op}(\mathbf{x}^2; \sigma_w^2) + \sigma_b^2$
        delta = self._op(x * x, self.weight_sigma ** 2, bias_var)
        return gamma, delta

    def scales(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        r"""$(\sigma_w, \sigma_b)$ of the weight and bias ($\sigma_b$ `None` without a bias)."""
        return self.weight_sigma, self.bias_sigma

    def draw(self, scales: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None
             ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        r"""One sample $w = \mu + \sigma \epsilon$, $\epsilon \sim \mathcal{N}(0, I)$, of the weight and bias.
        `scales`: this layer's `scales()` when already computed (for many draws), else computed here."""
        weight_sigma, bias_sigma = self.scales() if scales is None else scales
        weight = keep_layout(self.weight_mu, self.weight_mu + weight_sigma * _noise(self.weight_mu))
        bias = None if self.bias_mu is None else self.bias_mu + bias_sigma * _noise(self.bias_mu)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sampling:
            # Posterior mean: the deterministic layer with weights $\mu$
            return self._op(x, self.weight_mu, self.bias_mu)
        if self.drawn is not None:
            # One network drawn from $q$: the same weights for every example
            return self._op(x, *self.drawn)
        gamma, delta = self.moments(x)
        # $\zeta \sim \mathcal{N}(0, 1)$, one per pre-activation (per example, unit and position)
        zeta = torch.randn_like(gamma)
        # $b = \gamma + \sqrt{\delta} \, \zeta$. $\delta \ge \sigma_{\min}^2$ with a bias; without one an input of zeros
        # gives $\delta = 0$, where the clamp keeps $\sqrt{\cdot}$'s gradient finite.
        return gamma + torch.sqrt(delta.clamp_min(torch.finfo(delta.dtype).tiny)) * zeta

    def kl(self) -> torch.Tensor:
        r"""$\sum_i D_{KL}(\mathcal{N}(\mu_i, \sigma_i^2) \| \mathcal{N}(0, s^2))$ over this layer's weights and biases."""
        total = _gaussian_kl(self.weight_mu, self.weight_sigma, self.prior_scale)
        if self.bias_mu is not None:
            total = total + _gaussian_kl(self.bias_mu, self.bias_sigma, self.prior_scale)
        return total

    def extra_repr(self) -> str:
        return (f"bias={self.bias_mu is not None}, prior_scale={self.prior_scale}, sigma_init={self.sigma_init}, "
                f"sigma_min={self.sigma_min}, sampling={self.sampling}")


def _gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_scale: float) -> torch.Tensor:
    # $\log \frac{s}{\sigma} + \frac{\sigma^2 + \mu^2}{2 s^2} - \frac{1}{2}$, summed
    s = prior_scale
    return (math.log(s) - torch.log(sigma) + (sigma ** 2 + mu ** 2) / (2 * s ** 2) - 0.5).sum()


class BayesLinear(BayesLayer):
    """A Bayesian `nn.Linear`: `[*, in_features]` → `[*, out_features]`, weight `[out_features, in_features]`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, prior_scale: float = 1.0,
                 sigma_init: float = 0.1, sigma_min: float = 0.01):
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        super().__init__((out_features, in_features), bias, in_features, prior_scale=prior_scale,
                         sigma_init=sigma_init, sigma_min=sigma_min)

    def _op(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


class BayesConv2d(BayesLayer):
    """A Bayesian `nn.Conv2d` (zero padding): weight `[out_channels, in_channels / groups, kh, kw]`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size2, stride: _Size2 = 1,
                 padding: _Size2 = 0, dilation: _Size2 = 1, groups: int = 1, bias: bool = True, *,
                 prior_scale: float = 1.0, sigma_init: float = 0.1, sigma_min: float = 0.01):
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        self.dilation = nn.modules.utils._pair(dilation)
        self.groups = groups
        super().__init__((out_channels, in_channels // groups, kh, kw), bias, (in_channels // groups) * kh * kw,
                         prior_scale=prior_scale, sigma_init=sigma_init, sigma_min=sigma_min)

    def _op(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, " + super().extra_repr())


class BayesLayers(Layers):
    """The layer factory of Bayesian layers: `LeNet(10, layers=BayesLayers())` is the Bayesian LeNet."""

    def __init__(self, prior_scale: float = 1.0, sigma_init: float = 0.1, sigma_min: float = 0.01):
        _check_scales(prior_scale, sigma_init, sigma_min)
        self.prior_scale, self.sigma_init, self.sigma_min = prior_scale, sigma_init, sigma_min

    def _kwargs(self):
        return dict(prior_scale=self.prior_scale, sigma_init=self.sigma_init, sigma_min=self.sigma_min)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, *, first: bool = False) -> nn.Module:
        return BayesConv2d(in_channels, out_channels, kernel_size, **self._kwargs())

    def linear(self, in_features: int, out_features: int, *, first: bool = False, last: bool = False) -> nn.Module:
        return BayesLinear(in_features, out_features, **self._kwargs())

    def __repr__(self) -> str:
        return (f"BayesLayers(prior_scale={self.prior_scale}, sigma_init={self.sigma_init}, "
                f"sigma_min={self.sigma_min})")


def bayes_layers(model: nn.Module) -> List[BayesLayer]:
    """The Bayesian layers of `model` (in `modules()` order); a `ValueError` if it has none."""
    layers = [m for m in model.modules() if isinstance(m, BayesLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Bayesian layers (build it with layers=BayesLayers())")
    return layers


def kl_divergence(model: nn.Module) -> torch.Tensor:
    r"""$D_{KL}(q_\phi(\mathbf{w}) \| p(\mathbf{w}))$ in closed form, summed over all Bayesian layers of `model`."""
    return torch.stack([layer.kl() for layer in bayes_layers(model)]).sum()


@contextlib.contextmanager
def posterior_mean(model: nn.Module) -> Iterator[nn.Module]:
    r"""Within the block, every Bayesian layer of `model` uses the posterior mean $\mu$ (no sampling);
    each layer's previous `sampling` flag is restored on exit."""
    layers = bayes_layers(model)
    previous = [layer.sampling for layer in layers]
    for layer in layers:
        layer.sampling = False
    try:
        yield model
    finally:
        for layer, flag in zip(layers, previous):
            layer.sampling = flag


@contextlib.contextmanager
def sampled_network(model: nn.Module, scales: Optional[List[Tuple[torch.Tensor, Optional[torch.Tensor]]]] = None
                    ) -> Iterator[nn.Module]:
    r"""Within the block, `model` is one network drawn from $q$: every Bayesian layer draws its weight and bias
    once (`BayesLayer.draw`) and uses them for every input, convolutions included, instead of sampling
    pre-activations. Cheaper than local reparametrisation (one operation per layer, no noise per pre-activation),
    but all examples share the sample, so it is for prediction, not for training. `scales`: every Bayesian
    layer's `scales()` (in `bayes_layers` order), when drawing many networks from the same parameters."""
    layers = bayes_layers(model)
    for layer, layer_scales in zip(layers, scales or [None] * len(layers)):
        layer.drawn = layer.draw(layer_scales)
    try:
        yield model
    finally:
        for layer in layers:
            layer.drawn = None


def bayes_logits(model: nn.Module, x: torch.Tensor, samples: int, max_batch: Optional[int] = None,
                 networks: bool = False) -> torch.Tensor:
    r"""
    `[S, N, K]` logits of $S$ = `samples` independent forward passes of `model` on `x` (`[N, ...]`), or,
    with `samples=0`, the posterior-mean network's logits as `[1, N, K]`.

    `networks=False` (training): the input is repeated $S$ times along the batch (`[S \cdot N, ...]`) and
    passed once: local reparametrisation gives every row its own noise, so the rows are independent
    samples. `max_batch` bounds the rows per pass (at least one copy of the batch, $N$ rows, per pass);
    `None`: one pass.

    `networks=True` (prediction): $S$ networks drawn from $q$ (`sampled_network`), each passed over the
    batch: sample $s$ of every example comes from the same weights, which is the posterior predictive exactly
    (convolutions included) at about half the cost. `max_batch` does not apply.
    Dropout, if the model has any, follows `model.training` as usual.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    n = x.shape[0]
    if samples == 0:
        with posterior_mean(model):
            return model(x).unsqueeze(0)
    layers = bayes_layers(model)
    if networks:
        # $\sigma = \text{softplus}(\rho) + \sigma_{\min}$ of every layer once, for all $S$ networks
        scales = [layer.scales() for layer in layers]
        draws = []
        for _ in range(samples):
            with sampled_network(model, scales):
                draws.append(model(x))
        return torch.stack(draws)
    # Samples per pass
    per_pass = samples if max_batch is None else max(1, min(samples, max_batch // max(n, 1)))
    chunks = []
    for start in range(0, samples, per_pass):
        s = min(per_pass, samples - start)
        # `[s * N, ...]`: sample-major, so row $i \cdot N + n$ is sample $i$ of example $n$
        out = model(x.repeat(s, *([1] * (x.dim() - 1))))
        chunks.append(out.view(s, n, *out.shape[1:]))
    return torch.cat(chunks, dim=0)


class NegativeELBO(NamedTuple):
    """`loss = nll + kl`, per training example."""
    loss: torch.Tensor
    # $\frac{1}{S N} \sum_{s, n} -\log p(y_n | \mathbf{x}_n, \mathbf{w}_s)$
    nll: torch.Tensor
    # $\beta \, D_{KL} / N_{\text{train}}$, as it enters the loss
    kl: torch.Tensor


def negative_elbo(logits: torch.Tensor, labels: torch.Tensor, kl: torch.Tensor, n_train: int,
                  beta: float = 1.0) -> NegativeELBO:
    r"""
    The negative ELBO per training example, estimated on a minibatch:

    $$-\frac{\mathcal{L}}{N_{\text{train}}} \approx
      \frac{1}{S M} \sum_{s=1}^{S} \sum_{m=1}^{M} -\log \text{softmax}(\mathbf{z}_{sm})_{y_m}
      + \beta \, \frac{D_{KL}(q \| p)}{N_{\text{train}}}$$

    `logits` `[S, M, K]` (or `[M, K]`, one sample), `labels` `[M]`, `kl` the closed-form KL of the whole model,
    `n_train` the training-set size $N_{\text{train}}$, `beta` the KL weight ($\beta = 1$: the ELBO; smaller
    values, e.g. annealed from 0, weaken the prior). This is the mean log-likelihood of sampled networks,
    not the log of the averaged predictive $\frac{1}{S} \sum_s \text{softmax}(\mathbf{z}_s)$ (a tighter bound,
    for evaluation).
    """
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [S, N, K] or [N, K], got shape {tuple(logits.shape)}")
    s, m, k = logits.shape
    if labels.shape != (m,):
        raise ValueError(f"labels must be [N] = [{m}], got shape {tuple(labels.shape)}")
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if kl.dim() != 0:
        raise ValueError(f"kl must be a scalar, got shape {tuple(kl.shape)}")
    # $\frac{1}{S M} \sum_{s, m} -\log p(y_m | \mathbf{x}_m, \mathbf{w}_s)$
    nll = F.cross_entropy(logits.reshape(s * m, k), labels.expand(s, m).reshape(s * m))
    # $\beta \, D_{KL} / N_{\text{train}}$
    kl_term = beta * kl / n_train
    return NegativeELBO(nll + kl_term, nll, kl_term)
