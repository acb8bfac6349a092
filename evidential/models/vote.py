r"""
# Vote wrapper: $M$ voters that share one network (BatchEnsemble)

The idea of capsa's `vote.Wrapper(n_voters=8)(model)` (capsa is closed source; this is our own
implementation) built on BatchEnsemble (Wen, Tran & Ba, *BatchEnsemble: an Alternative Approach to
Efficient Ensemble and Lifelong Learning*, ICLR 2020). `wrap(model, n_voters)` deep-copies a body and
replaces every `nn.Conv2d` and `nn.Linear` by a *voter layer*; the voters' softmax outputs then give a
prediction and their disagreement a risk.

## Rank-1 fast weights

A layer $\mathbf{y} = W \mathbf{x} + \mathbf{b}$ has a weight $W \in \mathbb{R}^{m_{out} \times m_{in}}$
(PyTorch's orientation; the paper writes the transpose, $\mathbf{y} = W^\top \mathbf{x}$, hence its
$r_i \in \mathbb{R}^{m}$ on the input side and $s_i \in \mathbb{R}^{n}$ on the output side).
BatchEnsemble gives voter $i \in \{1, \dots, M\}$ the weight

$$W_i = W \circ F_i, \qquad F_i = s_i r_i^\top,$$

the shared *slow weight* $W$ times (element-wise) a rank-1 *fast weight* with $r_i \in \mathbb{R}^{m_{in}}$
and $s_i \in \mathbb{R}^{m_{out}}$, plus a bias $\mathbf{b}_i$ of its own. Since
$(W \circ s_i r_i^\top)_{kj} = s_{ik} W_{kj} r_{ij}$,

$$W_i \mathbf{x} = \sum_j s_{ik} W_{kj} r_{ij} x_j = \big(s_i \circ W (\mathbf{x} \circ r_i)\big)_k,$$

so voter $i$'s output is

$$\mathbf{y}_i = \big(W (\mathbf{x} \circ r_i)\big) \circ s_i + \mathbf{b}_i,$$

and a batch whose rows belong to different voters costs *one* product with $W$: scale each row by its
voter's $r_i$, multiply, scale by $s_i$, add $\mathbf{b}_i$. Training never forms $W_i$; evaluation does
(see *Batch layout*), and `VoteModel.voter` builds voter $i$ as a plain module from it.

A convolution is linear in its kernel and output channel $o$ sums input channels $c$ through the kernel
$W_{o,c}$, so the same holds with $r_i$ per *input channel* and $s_i$ per *output channel*: the kernel of
voter $i$ is $W_{o,c} \, s_{io} r_{ic}$ (with `groups`, $c$ is the input channel that group's kernel
reads). Scaling commutes with padding: zeros stay zeros, and reflect / replicate / circular padding copy
values within a channel, which all share the channel's $r_{ic}$.

**Overhead.** A voter adds $m_{in} + m_{out}$ fast weights and $m_{out}$ bias values per layer, against
$m_{in} m_{out}$ (times the kernel area) shared weights: for $M = 8$ that is about 4.5 % more parameters
for `LeNet`, about 20 % for the small `ConvMod` (whose 320 → 50 layer has only 50 outputs per 320 inputs),
not the $M \times$ of $M$ separate networks.

**Initialisation.** $r_i$ and $s_i$ get random signs, $\pm 1$ with probability $\frac{1}{2}$ each (one of
the two options of BatchEnsemble's reference code; the other, $\mathcal{N}(1, 0.5^2)$, is `init='normal'`).
Random signs keep $|W_{i,kj}| = |W_{kj}|$: every voter starts exactly at the scale of the base's own
initialisation (Kaiming-uniform for PyTorch's layers), while $\mathcal{N}(1, \sigma^2)$ multiplies each
layer's second moment by $(1 + \sigma^2)^2 \approx 1.56$, which compounds with depth. And sign patterns
make the voters differ from the first step (two voters coincide on a layer only if their sign vectors
agree up to a global flip, probability $2^{1 - m_{in} - m_{out}}$). The voters' biases start as copies of
the base's bias, so with $r_i = s_i = \mathbf{1}$ every voter *is* the wrapped network.

## Batch layout

The voter layers view a batch of $B = M m$ rows as `[M, m, ...]`: rows $i m, \dots, (i + 1) m - 1$ belong
to voter $i$ (contiguous chunks).

* **Training** (`model.train()`): the batch is split among the voters, each example seen by one voter,
  as capsa does; $B$ must be a multiple of $M$, the output is `[B, K]`, and a step costs what a step of
  the plain network costs. (BatchEnsemble's reference code instead repeats the batch $M$ times, so every
  voter sees every example: pass `x.repeat(M, 1, 1, 1)` and the labels repeated the same way for that.)
* **Evaluation** (`model.eval()`): every voter sees every input; the output is `[M, N, K]`, the shape of every
  ensemble-like model in this app. Here each voter layer forms its $W_i$ (a weight-sized product, negligible
  beside the batch) and the batch passes once per voter: $M$ plain passes over $N$ rows. Scaling the
  activations of one repeated batch of $M N$ rows computes the same values (up to float rounding) and is what
  training does, but at evaluation it was about 5× slower on CPU (8 voters over 256 images: 317 against 65 ms,
  channels-last, 2 cores): two element-wise passes over every activation per layer, and an $M \times$ larger
  batch that leaves the cache.

The wrapped body must treat examples independently and keep them in dimension 0 (true for the bodies in
this package); layers that mix examples or keep state (BatchNorm's running statistics would be shared by
all voters) are refused, as is any other layer with parameters or buffers: only `nn.Conv2d` and
`nn.Linear` know how to be voters.

## Prediction and risk

With $p_i = \text{softmax}(\mathbf{z}_i)$ the probabilities of voter $i$ for an input (the body outputs
logits), `forward(x, return_risk=True)` returns the prediction and the risk

$$\bar{p}_k = \frac{1}{M} \sum_{i=1}^{M} p_{ik}, \qquad
\sigma^2_k = \frac{1}{M} \sum_{i=1}^{M} \big(p_{ik} - \bar{p}_k\big)^2, \qquad
\text{risk} = \sum_{k=1}^{K} \sigma^2_k = \frac{1}{M} \sum_{i=1}^{M} \lVert p_i - \bar{p} \rVert^2,$$

the per-class variance of the voters' probabilities (population variance: the voters are the whole
ensemble, not a sample of it) summed over the classes. It is $0$ when all voters agree and at most
$1 - \frac{1}{K}$. `vote_statistics` gives $\bar{p}$ and the per-class $\sigma^2_k$.
"""
import copy
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from evidential.models.lenet import keep_layout

# How the fast weights $r_i, s_i$ start: random signs (the default) or $\mathcal{N}(1, \sigma^2)$
INITS = ('random_sign', 'normal')


def _fast_weights(n_voters: int, features: int, init: str, std: float, like: torch.Tensor) -> torch.Tensor:
    """`[n_voters, features]` initial fast weights, on the device and dtype of `like`."""
    if init == 'random_sign':
        # $r_{ij} \in \{-1, +1\}$, each with probability $\frac{1}{2}$
        return torch.randint(0, 2, (n_voters, features), device=like.device).to(like.dtype) * 2 - 1
    # $r_{ij} \sim \mathcal{N}(1, \sigma^2)$
    return 1 + std * torch.randn(n_voters, features, device=like.device, dtype=like.dtype)


class _VoteLayer(nn.Module):
    r"""The shared part of the voter layers: the slow weight $W$ (the base layer's own parameter), fast
    weights `r` `[M, m_in]` and `s` `[M, m_out]`, and a bias `[M, m_out]` per voter (or none)."""

    def __init__(self, weight: nn.Parameter, bias: Optional[torch.Tensor], in_features: int, out_features: int,
                 n_voters: int, init: str, std: float):
        super().__init__()
        self.n_voters = n_voters
        # $W$: the base layer's `Parameter` object itself, so weights tied in the base stay tied
        self.weight = weight
        # $r_i$, input side
        self.r = nn.Parameter(_fast_weights(n_voters, in_features, init, std, weight))
        # $s_i$, output side
        self.s = nn.Parameter(_fast_weights(n_voters, out_features, init, std, weight))
        # While set (`VoteModel` in evaluation), the layer is voter `active`'s plain layer: $W_i$ formed, no per-row
        # scaling
        self.active: Optional[int] = None
        if bias is None:
            self.register_parameter('bias', None)
        else:
            # $\mathbf{b}_i = \mathbf{b}$ for every voter at the start
            self.bias = nn.Parameter(bias.detach().clone().unsqueeze(0).repeat(n_voters, 1))

    def _check_batch(self, x: torch.Tensor) -> None:
        if x.shape[0] % self.n_voters != 0:
            raise ValueError(f"{type(self).__name__}: a batch of {x.shape[0]} rows cannot be split among "
                             f"{self.n_voters} voters; it must be a multiple of n_voters")

    def _per_voter(self, x: torch.Tensor, scale: torch.Tensor, shift: Optional[torch.Tensor],
                   feature_dim: int) -> torch.Tensor:
        r"""$\mathbf{x} \circ v_i (+ \mathbf{c}_i)$ for the rows of voter $i$: `x` `[M m, ...]` viewed as
        `[M, m, ...]`, `scale` and `shift` `[M, F]` broadcast along `x`'s dimension `feature_dim`."""
        shape = [self.n_voters] + [1] * x.dim()
        shape[feature_dim + 1] = scale.shape[1]
        chunks = x.unflatten(0, (self.n_voters, -1))
        out = chunks * scale.view(shape)
        if shift is not None:
            out = out + shift.view(shape)
        return out.flatten(0, 1)

    @torch.no_grad()
    def _load_voter(self, layer: nn.Module, i: int) -> nn.Module:
        """`layer` (a plain `nn.Linear` / `nn.Conv2d` of this layer's shape) with voter `i`'s weight and bias."""
        layer.weight.copy_(self.voter_weight(i))
        if self.bias is not None:
            layer.bias.copy_(self.bias[i])
        return layer


class VoteLinear(_VoteLayer):
    r"""`nn.Linear` with $M$ voters: $\mathbf{y}_i = \big(W (\mathbf{x} \circ r_i)\big) \circ s_i + \mathbf{b}_i$."""

    def __init__(self, linear: nn.Linear, n_voters: int, init: str = 'random_sign', std: float = 0.5):
        super().__init__(linear.weight, linear.bias, linear.in_features, linear.out_features, n_voters, init, std)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"VoteLinear needs a batch `[B, ..., {self.in_features}]`, got shape {tuple(x.shape)}")
        if self.active is not None:
            # $\mathbf{y} = W_i \mathbf{x} + \mathbf{b}_i$ for every row
            return F.linear(x, self.voter_weight(self.active), None if self.bias is None else self.bias[self.active])
        self._check_batch(x)
        features = x.dim() - 1
        # $\mathbf{x} \circ r_i$
        x = self._per_voter(x, self.r, None, features)
        # $W (\mathbf{x} \circ r_i)$: one product with the shared weight for all voters
        y = F.linear(x, self.weight)
        # $\big(W (\mathbf{x} \circ r_i)\big) \circ s_i + \mathbf{b}_i$
        return self._per_voter(y, self.s, self.bias, features)

    def voter_weight(self, i: int) -> torch.Tensor:
        r"""$W_i = W \circ (s_i r_i^\top)$, `[m_out, m_in]`"""
        return self.weight * (self.s[i][:, None] * self.r[i][None, :])

    def plain(self, i: int) -> nn.Linear:
        """Voter `i` as an `nn.Linear` (a copy: it does not follow later training)."""
        w = self.weight
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=w.device, dtype=w.dtype)
        return self._load_voter(layer, i)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'bias={self.bias is not None}, n_voters={self.n_voters}')


class VoteConv2d(_VoteLayer):
    r"""`nn.Conv2d` with $M$ voters: $r_i$ per input channel, $s_i$ per output channel,
    $\mathbf{y}_i = \big(W \star (\mathbf{x} \circ r_i)\big) \circ s_i + \mathbf{b}_i$."""

    def __init__(self, conv: nn.Conv2d, n_voters: int, init: str = 'random_sign', std: float = 0.5):
        super().__init__(conv.weight, conv.bias, conv.in_channels, conv.out_channels, n_voters, init, std)
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        # What `nn.Conv2d` pads with `F.pad` when the mode is not zeros (the order `F.pad` wants)
        self._pad = tuple(conv._reversed_padding_repeated_twice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"VoteConv2d needs a batch `[B, {self.in_channels}, H, W]`, got shape {tuple(x.shape)}")
        if self.active is not None:
            # $\mathbf{y} = W_i \star \mathbf{x} + \mathbf{b}_i$ for every row
            return self._conv(x, keep_layout(self.weight, self.voter_weight(self.active)),
                              None if self.bias is None else self.bias[self.active])
        self._check_batch(x)
        # $\mathbf{x} \circ r_i$, per input channel
        x = self._per_voter(x, self.r, None, 1)
        # $W \star (\mathbf{x} \circ r_i)$: one convolution with the shared kernel for all voters
        y = self._conv(x, self.weight, None)
        # $\big(W \star (\mathbf{x} \circ r_i)\big) \circ s_i + \mathbf{b}_i$, per output channel
        return self._per_voter(y, self.s, self.bias, 1)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """`nn.Conv2d`'s convolution with this layer's settings and the given kernel and bias."""
        if self.padding_mode != 'zeros':
            return F.conv2d(F.pad(x, self._pad, mode=self.padding_mode), weight, bias, self.stride, 0,
                            self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def voter_weight(self, i: int) -> torch.Tensor:
        r"""$W_{i,oc} = W_{oc} \, s_{io} r_{ic}$, `[C_out, C_in / groups, kh, kw]`"""
        per_group = self.in_channels // self.groups
        # output channel $o$ of group $g$ reads input channels $g \cdot$ `per_group` onwards
        r = self.r[i].view(self.groups, per_group).repeat_interleave(self.out_channels // self.groups, dim=0)
        return self.weight * (self.s[i][:, None] * r)[:, :, None, None]

    def plain(self, i: int) -> nn.Conv2d:
        """Voter `i` as an `nn.Conv2d` (a copy: it does not follow later training)."""
        w = self.weight
        layer = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, groups=self.groups,
                          bias=self.bias is not None, padding_mode=self.padding_mode,
                          device=w.device, dtype=w.dtype)
        return self._load_voter(layer, i)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'padding={self.padding}, bias={self.bias is not None}, n_voters={self.n_voters}')


def vote_statistics(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Voters' logits `[M, N, K]` → $\bar{p}$ `[N, K]` (mean softmax) and $\sigma^2$ `[N, K]` (per-class
    population variance of the voters' probabilities)."""
    if logits.dim() != 3:
        raise ValueError(f"expected the voters' logits `[M, N, K]`, got shape {tuple(logits.shape)}")
    # $p_i = \text{softmax}(\mathbf{z}_i)$
    probs = F.softmax(logits, dim=-1)
    # $\bar{p}_k = \frac{1}{M} \sum_i p_{ik}$
    mean = probs.mean(dim=0)
    # $\sigma^2_k = \frac{1}{M} \sum_i (p_{ik} - \bar{p}_k)^2$
    variance = probs.var(dim=0, correction=0)
    return mean, variance


class VoteModel(nn.Module):
    """A body whose `nn.Conv2d` / `nn.Linear` layers are voter layers; made by `wrap`. `model` is the
    converted copy of the body."""

    def __init__(self, model: nn.Module, n_voters: int):
        super().__init__()
        self.model = model
        self.n_voters = n_voters
        self.train(model.training)

    def forward(self, x: torch.Tensor, return_risk: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Training: `[B, ...]` → `[B, K]`, chunk $i$ of the batch by voter $i$. Evaluation: `[N, ...]` →
        `[M, N, K]` (every voter, every input), or with `return_risk` the prediction $\\bar{p}$ `[N, K]`
        and the risk `[N]`."""
        n = self.n_voters
        if self.training:
            if return_risk:
                raise ValueError("return_risk needs evaluation mode (call .eval()): in training mode each "
                                 "input is seen by one voter only, so there is no vote to measure")
            if x.shape[0] % n != 0:
                raise ValueError(f"in training mode the batch is split among the {n} voters: its size must be "
                                 f"a multiple of n_voters={n}, got {x.shape[0]}")
            return self.model(x)
        # Voter $i$'s layers with $W_i$ formed, over the whole batch, for $i = 1, \dots, M$: `[M, N, K]`
        logits = torch.stack([self._as_voter(i, x) for i in range(n)])
        if not return_risk:
            return logits
        mean, variance = vote_statistics(logits)
        # $\text{risk} = \sum_k \sigma^2_k$
        return mean, variance.sum(dim=-1)

    def _as_voter(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The body's output for `x` with every voter layer set to voter `i`."""
        layers = [m for m in self.model.modules() if isinstance(m, _VoteLayer)]
        for layer in layers:
            layer.active = i
        try:
            return self.model(x)
        finally:
            for layer in layers:
                layer.active = None

    def voter(self, i: int) -> nn.Module:
        r"""Voter `i` as a plain module: a copy of the body with $W_i = W \circ (s_i r_i^\top)$ and
        $\mathbf{b}_i$ in plain `nn.Conv2d` / `nn.Linear` layers (a snapshot; it does not follow training)."""
        if not 0 <= i < self.n_voters:
            raise IndexError(f"voter {i} out of range: there are {self.n_voters} voters")
        # `deepcopy` takes every object found in the memo as its copy: the voter layers become plain layers
        memo: Dict[int, nn.Module] = {id(m): m.plain(i) for m in self.model.modules() if isinstance(m, _VoteLayer)}
        plain = copy.deepcopy(self.model, memo)
        return plain.train(self.training)

    def extra_repr(self) -> str:
        return f'n_voters={self.n_voters}'


# The layers that become voters; exact types, since a subclass may compute something else in `forward`
_VOTE_LAYERS = {nn.Linear: VoteLinear, nn.Conv2d: VoteConv2d}


def _unsupported(module: nn.Module, path: str, why: str) -> ValueError:
    return ValueError(f"cannot wrap {type(module).__name__} at '{path or '<root>'}': {why}. Only nn.Conv2d "
                      f"and nn.Linear get voters; other layers must have no parameters or buffers")


def _convert(module: nn.Module, path: str, n_voters: int, init: str, std: float,
             done: Dict[int, nn.Module]) -> nn.Module:
    """`module` with its `nn.Conv2d` / `nn.Linear` layers replaced by voter layers (in place, except the
    root when it is such a layer itself); a module reached twice is converted once."""
    if id(module) in done:
        return done[id(module)]
    own_parameters = [name for name, _ in module.named_parameters(recurse=False)]
    own_buffers = [name for name, _ in module.named_buffers(recurse=False)]
    voter_layer = _VOTE_LAYERS.get(type(module))
    if voter_layer is not None:
        if not set(own_parameters) <= {'weight', 'bias'} or own_buffers or 'weight' not in own_parameters:
            raise _unsupported(module, path, f"its parameters {own_parameters} and buffers {own_buffers} are not "
                                             f"a plain layer's weight and bias (weight norm or a similar hook?)")
        if module._forward_hooks or module._forward_pre_hooks:
            raise _unsupported(module, path, 'it has forward hooks, which the voter layer would not run')
        converted = voter_layer(module, n_voters, init, std)
    else:
        if own_parameters or own_buffers:
            names = ', '.join(own_parameters + own_buffers)
            hint = ''
            if isinstance(module, tuple(_VOTE_LAYERS)):
                hint = ' (a subclass of nn.Linear / nn.Conv2d is not converted: its forward may differ)'
            raise _unsupported(module, path, f"it has parameters or buffers of its own ({names}){hint}")
        # `_modules`, not `named_children()`, which skips a module's second appearance
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            new = _convert(child, f'{path}.{name}' if path else name, n_voters, init, std, done)
            if new is not child:
                setattr(module, name, new)
        converted = module
    done[id(module)] = converted
    return converted


def wrap(model: nn.Module, n_voters: int, *, init: str = 'random_sign', std: float = 0.5) -> VoteModel:
    r"""A `VoteModel` with `n_voters` voters from a deep copy of `model` (which is left untouched).

    `init` sets how the fast weights start: `'random_sign'` ($\pm 1$) or `'normal'` ($\mathcal{N}(1, $
    `std`$^2)$). Raises `ValueError` for a layer with parameters or buffers other than `nn.Conv2d` /
    `nn.Linear`, naming its type and path."""
    if isinstance(n_voters, bool) or not isinstance(n_voters, int) or n_voters < 1:
        raise ValueError(f"n_voters must be an integer >= 1, got {n_voters!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == 'normal' and not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    if isinstance(model, VoteModel) or any(isinstance(m, _VoteLayer) for m in model.modules()):
        raise ValueError("model already has voter layers; wrap the plain body")
    body = copy.deepcopy(model)
    return VoteModel(_convert(body, '', n_voters, init, std, {}), n_voters)
