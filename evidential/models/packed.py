r"""
# Packed-Ensembles

Laurent, Lafage, Tartaglione, Daniel, Martinez, Bursuc & Franchi, *Packed-Ensembles for Efficient
Uncertainty Estimation*, ICLR 2023, as TorchUncertainty 0.13.0 (`torch_uncertainty.layers.packed`)
implements it. The layers here copy TorchUncertainty's channel arithmetic exactly, so a packed body has
the same parameter shapes and count, and with the same weights the same outputs (`tests/test_packed.py`
checks both against TorchUncertainty's layers).

## $M$ networks in one, through grouped layers

A deep ensemble runs $M$ networks of the same architecture side by side. Stack member $m$'s activations
of a layer, $\mathbf{h}_m \in \mathbb{R}^{C}$, into one vector $[\mathbf{h}_1; \dots; \mathbf{h}_M]$
(*member-major*: member 1's channels first). A layer of the ensemble is then one layer with a
block-diagonal weight,

$$\begin{bmatrix} \mathbf{h}'_1 \\ \vdots \\ \mathbf{h}'_M \end{bmatrix} =
  \begin{bmatrix} W_1 & & \\ & \ddots & \\ & & W_M \end{bmatrix}
  \begin{bmatrix} \mathbf{h}_1 \\ \vdots \\ \mathbf{h}_M \end{bmatrix} +
  \begin{bmatrix} \mathbf{b}_1 \\ \vdots \\ \mathbf{b}_M \end{bmatrix},$$

which is exactly a *grouped* convolution (or grouped linear layer) with $M$ groups: group $g$ reads
input channels $[g C_{in}, (g+1) C_{in})$ and writes output channels $[g C_{out}, (g+1) C_{out})$. No
weight ever connects two members, so the members stay independent networks while one kernel call
computes them all.

Packed-Ensembles make the ensemble cheaper with two hyper-parameters on top of $M$:

* the **width factor** $\alpha$: the packed layer has $\alpha C$ channels *in total*, so each member
  has $\alpha C / M$ channels instead of $C$. $\alpha = M$ gives every member the full width;
  $\alpha = 2$, $M = 4$ gives each member half the width (and about a quarter of the weights).
* $\gamma$ **subgroups per member**: the layer has $M \gamma$ groups, so inside a member the channels
  are split again into $\gamma$ groups, with $\gamma$ times fewer weights.

For a convolution with $C_{in}$ input and $C_{out}$ output channels and a $k \times k$ kernel the packed
layer therefore has

$$C'_{in} = \lfloor \alpha C_{in} \rfloor, \quad C'_{out} = \lfloor \alpha C_{out} \rfloor, \quad
  G = M \gamma, \qquad \text{weight } [C'_{out}, C'_{in} / G, k, k], \quad \text{bias } [C'_{out}].$$

Two layers differ:

* the **first** layer sees the raw input, which all members share: it is not widened
  ($C'_{in} = C_{in}$) and is dense ($G = 1$). Each output channel still has its own filter over the
  input, so the first layer too is $M$ independent layers stacked along the output channels;
* the **last** layer gives every member its $K$ outputs: $C'_{out} = M C_{out}$, member-major
  (member $m$'s outputs are $[m K, (m+1) K)$).

## TorchUncertainty's arithmetic, replicated

* $C'_{in} = \lfloor \alpha C_{in} \rfloor$ and $C'_{out} = \lfloor \alpha C_{out} \rfloor$ are Python's
  `int(...)`; TorchUncertainty 0.13.0 does **not** round channels up to a multiple of the groups: a
  layer whose $C'_{in}$ is not divisible by $G$ or whose $C'_{out}$ is not divisible by $M \gamma$ is an
  error (`ValueError`), here as there.
* **Convolutions only** reduce $\gamma$: while $C'_{in}$ is not divisible by $G$, or a group would have
  fewer than `minimum_channels_per_group` $= 64$ input channels, and $\gamma > 1$, $\gamma$ drops by one.
  A LeNet has at most $100$ channels in a layer, so with the default minimum every packed LeNet
  convolution runs with $\gamma = 1$ (only its linear layers use the requested $\gamma$).
* `PackedLinear`'s weight is stored as `[G, C'_{out}/G, C'_{in}/G]`, one matrix per group, and each
  group is initialised like an `nn.Linear` of that size (Kaiming-uniform with $a = \sqrt 5$, biases
  $U(\pm 1 / \sqrt{C'_{in}/G})$); `PackedConv2d`'s weight is a grouped `nn.Conv2d` weight, initialised
  like one.

With $\alpha = 2$, $M = 4$, $\gamma = 1$, TorchUncertainty's tutorial LeNet-5 (6/16 convolutions, 120/84
hidden units, 10 classes) has $312 + 2\,432 + 30\,960 + 10\,248 + 1\,720 = 45\,672$ parameters (one
plain LeNet-5 has $44\,426$).

## Layout between layers: `nn.Flatten` is TorchUncertainty's `rearrange`

After a grouped convolution the channels are member-major, `[N, M·C, h, w]`. `nn.Flatten` makes row $n$
the concatenation over channels of the $h \times w$ maps, so member $m$'s features are the contiguous
block $[m C h w, (m+1) C h w)$ — member-major feature blocks, which is what the grouped linear layer
reads. TorchUncertainty's own `packed_lenet` flattens the same way. Its *tutorial* instead writes
`rearrange(x, "e (m c) h w -> (m e) c h w")` before flattening, stacking the members along the batch:
the same numbers, with member $m$'s block moved to rows $[m N, (m+1) N)$; the inverse
`"(m e) d -> e (m d)"` gives back the flattened tensor. (That layout was for TorchUncertainty's earlier
`PackedLinear`, which rearranged its input itself; 0.13.0's einsum `PackedLinear` expects `[N, M·d]`.)

The last layer's `[N, M K]` outputs are rearranged **once**, by `PackedEnsemble`, into this app's
`[M, N, K]` (members, batch, classes). TorchUncertainty's last layers rearrange into `[(M N), K]` instead,
which is the same tensor reshaped.

## Deep ensembles are the special case $\alpha = M$, $\gamma = 1$

Then every member has the plain network's widths and the packed model *is* $M$ independent plain
networks: `PackedEnsemble.load_members` copies $M$ independently initialised plain bodies into it, and
`PackedEnsemble.member(i)` gives member $i$ back as a plain body (tested: the packed forward equals each
member run alone). Convolutions are `F.conv2d(..., groups=G)`, which accepts channels-last inputs and
weights (`model.to(memory_format=torch.channels_last)`).
"""
import copy
import math
from numbers import Real
from typing import Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from evidential.models.lenet import Layers

_Size2 = Union[int, Tuple[int, int]]


def _pair(x: _Size2, name: str) -> Tuple[int, int]:
    if isinstance(x, int) and not isinstance(x, bool):
        return x, x
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, int) for v in x):
        return int(x[0]), int(x[1])
    raise TypeError(f"`{name}` must be an int or a pair of ints, got {x!r}")


def check_packed_parameters(alpha: float, num_estimators: int, gamma: int) -> None:
    """The checks of TorchUncertainty's `check_packed_parameters_consistency`, with the same error types."""
    if alpha is None or isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"`alpha` (the width factor) must be a positive number, got {alpha!r}")
    if not alpha > 0:
        raise ValueError(f"`alpha` (the width factor) must be > 0, got {alpha}")
    if isinstance(num_estimators, bool) or not isinstance(num_estimators, int):
        raise TypeError(f"`num_estimators` must be an int, got {type(num_estimators).__name__}")
    if num_estimators < 1:
        raise ValueError(f"`num_estimators` must be >= 1, got {num_estimators}")
    if isinstance(gamma, bool) or not isinstance(gamma, int):
        raise TypeError(f"`gamma` (subgroups per member) must be an int, got {type(gamma).__name__}")
    if gamma < 1:
        raise ValueError(f"`gamma` (subgroups per member) must be >= 1, got {gamma}")


class PackedConv2d(nn.Module):
    r"""
    $M$ = `num_estimators` 2-d convolutions packed into one grouped convolution.

    Input `[N, C'_in, H, W]` with $C'_{in}$ = `in_channels` if `first` else $\lfloor \alpha\,$`in_channels`$\rfloor$;
    output `[N, C'_out, H', W']` with $C'_{out}$ = $M \cdot$`out_channels` if `last` else
    $\lfloor \alpha\,$`out_channels`$\rfloor$, member-major. `groups` splits each subgroup further
    (TorchUncertainty's argument of the same name; 1 for LeNets). After construction `in_channels`,
    `out_channels`, `groups` and `gamma` are those of the underlying convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size2, alpha: float, num_estimators: int,
                 gamma: int = 1, *, stride: _Size2 = 1, padding: Union[str, _Size2] = 0, dilation: _Size2 = 1,
                 groups: int = 1, minimum_channels_per_group: int = 64, bias: bool = True,
                 first: bool = False, last: bool = False):
        super().__init__()
        check_packed_parameters(alpha, num_estimators, gamma)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1, got in_channels={in_channels}, out_channels={out_channels}")
        if groups < 1:
            raise ValueError(f"`groups` must be >= 1, got {groups}")
        self.first, self.last = first, last
        self.num_estimators, self.alpha, self.requested_gamma = num_estimators, alpha, gamma
        self.kernel_size = _pair(kernel_size, 'kernel_size')
        self.stride = _pair(stride, 'stride')
        self.dilation = _pair(dilation, 'dilation')
        self.padding = padding if isinstance(padding, str) else _pair(padding, 'padding')

        # $C'_{in} = C_{in}$ for the first layer (the raw input is shared), else $\lfloor \alpha C_{in} \rfloor$
        ext_in = int(in_channels * (1 if first else alpha))
        # $C'_{out} = M C_{out}$ for the last layer (K outputs per member), else $\lfloor \alpha C_{out} \rfloor$
        ext_out = int(out_channels * (num_estimators if last else alpha))
        # $G = 1$ for the first layer, else $G = M \gamma \cdot$ groups
        n_groups = 1 if first else gamma * groups * num_estimators
        # TorchUncertainty: fewer subgroups while $G \nmid C'_{in}$ or a group would read too few channels
        while ((ext_in % n_groups != 0 or ext_in // n_groups < minimum_channels_per_group)
               and n_groups // (groups * num_estimators) > 1):
            gamma -= 1
            n_groups = gamma * groups * num_estimators
        if ext_in % n_groups:
            raise ValueError(f"PackedConv2d: {ext_in} input channels (in_channels={in_channels} x alpha={alpha}) "
                             f"are not divisible by the {n_groups} groups (num_estimators x gamma x groups)")
        if ext_out % (gamma * groups * num_estimators):
            raise ValueError(f"PackedConv2d: {ext_out} output channels (out_channels={out_channels} x "
                             f"{'num_estimators' if last else 'alpha'}) are not divisible by num_estimators x gamma "
                             f"x groups = {gamma * groups * num_estimators}")
        self.in_channels, self.out_channels, self.groups, self.gamma = ext_in, ext_out, n_groups, gamma
        # One grouped kernel: `[C'_out, C'_in / G, k_h, k_w]`
        self.weight = nn.Parameter(torch.empty(ext_out, ext_in // n_groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(ext_out)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""`nn.Conv2d`'s initialisation of a grouped kernel: fan-in $= C'_{in}/G \cdot k_h k_w$."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PackedConv2d expects [N, {self.in_channels}, H, W] inputs, got {tuple(x.shape)}")
        # $\mathbf{h}'_g = W_g * \mathbf{h}_g + \mathbf{b}_g$ for every group $g$ at once
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, groups={self.groups}, '
                f'num_estimators={self.num_estimators}, alpha={self.alpha}, gamma={self.gamma}, '
                f'first={self.first}, last={self.last}')


class PackedLinear(nn.Module):
    r"""
    $M$ = `num_estimators` linear layers packed into one grouped (block-diagonal) linear layer.

    Input `[..., F'_in]` with $F'_{in}$ = `in_features` if `first` else $\lfloor \alpha\,$`in_features`$\rfloor$;
    output `[..., F'_out]` with $F'_{out}$ = $M \cdot$`out_features` if `last` else
    $\lfloor \alpha\,$`out_features`$\rfloor$, member-major. The weight is `[G, F'_out/G, F'_in/G]`
    (TorchUncertainty's layout), $G = 1$ if `first` else $M \gamma$; `in_features` and `out_features`
    are then $F'_{in}$ and $F'_{out}$.
    """

    def __init__(self, in_features: int, out_features: int, alpha: float, num_estimators: int, gamma: int = 1,
                 *, bias: bool = True, first: bool = False, last: bool = False):
        super().__init__()
        check_packed_parameters(alpha, num_estimators, gamma)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"features must be >= 1, got in_features={in_features}, out_features={out_features}")
        self.first, self.last = first, last
        self.num_estimators, self.alpha, self.gamma = num_estimators, alpha, gamma

        # $F'_{in} = F_{in}$ for the first layer, else $\lfloor \alpha F_{in} \rfloor$
        ext_in = int(in_features * (1 if first else alpha))
        # $F'_{out} = M F_{out}$ for the last layer, else $\lfloor \alpha F_{out} \rfloor$
        ext_out = int(out_features * (num_estimators if last else alpha))
        # $G = 1$ for the first layer, else $M \gamma$ (linear layers never reduce $\gamma$)
        n_groups = 1 if first else num_estimators * gamma
        if ext_in % n_groups:
            raise ValueError(f"PackedLinear: {ext_in} input features (in_features={in_features} x alpha={alpha}) "
                             f"are not divisible by the {n_groups} groups (num_estimators x gamma)")
        if ext_out % (num_estimators * gamma):
            raise ValueError(f"PackedLinear: {ext_out} output features (out_features={out_features} x "
                             f"{'num_estimators' if last else 'alpha'}) are not divisible by num_estimators x gamma "
                             f"= {num_estimators * gamma}")
        self.in_features, self.out_features, self.groups = ext_in, ext_out, n_groups
        # One matrix per group: `[G, F'_out / G, F'_in / G]`
        self.weight = nn.Parameter(torch.empty(n_groups, ext_out // n_groups, ext_in // n_groups))
        self.bias = nn.Parameter(torch.empty(ext_out)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every group initialised like an `nn.Linear(F'_in/G, F'_out/G)` (as TorchUncertainty does)."""
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[2])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"PackedLinear expects [..., {self.in_features}] inputs, got {tuple(x.shape)}")
        # $\mathbf{h}_g$: `[..., G, F'_in / G]`, group $g$'s slice of the features
        h = x.unflatten(-1, (self.groups, self.weight.shape[2]))
        # $\mathbf{h}'_g = W_g \mathbf{h}_g$, concatenated over $g$: `[..., F'_out]`
        out = torch.einsum('...gi,goi->...go', h, self.weight).flatten(-2)
        # $+ \mathbf{b}$
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (f'{self.in_features}, {self.out_features}, groups={self.groups}, num_estimators={self.num_estimators}, '
                f'alpha={self.alpha}, gamma={self.gamma}, first={self.first}, last={self.last}')


class PackedLayers(Layers):
    r"""The layer factory of the Packed-Ensembles bodies: `PackedConv2d` and `PackedLinear` with width
    factor $\alpha$, $M$ = `num_estimators` members and $\gamma$ subgroups per member."""

    def __init__(self, alpha: float, num_estimators: int, gamma: int = 1, minimum_channels_per_group: int = 64):
        check_packed_parameters(alpha, num_estimators, gamma)
        self.alpha, self.num_estimators, self.gamma = alpha, num_estimators, gamma
        self.minimum_channels_per_group = minimum_channels_per_group

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, *, first: bool = False) -> nn.Module:
        return PackedConv2d(in_channels, out_channels, kernel_size, self.alpha, self.num_estimators, self.gamma,
                            minimum_channels_per_group=self.minimum_channels_per_group, first=first)

    def linear(self, in_features: int, out_features: int, *, first: bool = False, last: bool = False) -> nn.Module:
        return PackedLinear(in_features, out_features, self.alpha, self.num_estimators, self.gamma,
                            first=first, last=last)


_PACKED = (PackedConv2d, PackedLinear)


class PackedEnsemble(nn.Module):
    r"""
    A body of `evidential.models.lenet` (`LeNet`, `LeNet5`, or any class taking `n_classes` and `layers=`)
    built from `PackedLayers`: `[N, C, H, W]` images → `[M, N, K]` logits.

    `PackedEnsemble(LeNet5, 10, alpha=2, num_estimators=4)` is TorchUncertainty's tutorial packed LeNet-5
    (45,672 parameters); `alpha=M, gamma=1` is a deep ensemble of $M$ plain bodies (`load_members`, `member`).
    `body_kwargs` (`dropout`, `in_channels`, ...) go to the body.
    """

    def __init__(self, body_cls: Type[nn.Module], n_classes: int, *, alpha: float, num_estimators: int,
                 gamma: int = 1, minimum_channels_per_group: int = 64, **body_kwargs):
        super().__init__()
        if 'layers' in body_kwargs:
            raise TypeError("PackedEnsemble builds the body's layers itself; do not pass `layers`")
        self.body_cls, self.body_kwargs = body_cls, dict(body_kwargs)
        self.n_classes, self.num_estimators, self.alpha, self.gamma = n_classes, num_estimators, alpha, gamma
        layers = PackedLayers(alpha, num_estimators, gamma, minimum_channels_per_group)
        try:
            self.body = body_cls(n_classes, layers=layers, **body_kwargs)
        except TypeError as e:
            raise TypeError(f"{getattr(body_cls, '__name__', body_cls)} must accept (n_classes, layers=..., "
                            f"**body_kwargs): {e}") from e
        lasts = [m for m in self.body.modules() if isinstance(m, _PACKED) and m.last]
        if len(lasts) != 1 or lasts[0].out_features != num_estimators * n_classes:
            raise ValueError(f"{body_cls.__name__} must build exactly one `last=True` layer with n_classes outputs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # $[\mathbf{z}_1; \dots; \mathbf{z}_M]$: `[N, M K]`, member-major
        z = self.body(x)
        # `[N, M K]` → `[N, M, K]` → `[M, N, K]`
        return z.unflatten(-1, (self.num_estimators, self.n_classes)).movedim(-2, 0)

    def _plain_pairs(self, plain: nn.Module):
        """(name, packed layer, plain layer) for every packed layer, checking `plain` has the body's structure."""
        if type(plain) is not type(self.body):
            raise TypeError(f"members must be {type(self.body).__name__} bodies, got {type(plain).__name__}")
        n_plain = sum(p.numel() for p in plain.parameters())
        pairs, n_matched = [], 0
        for name, layer in self.body.named_modules():
            if not isinstance(layer, _PACKED):
                continue
            want = nn.Conv2d if isinstance(layer, PackedConv2d) else nn.Linear
            try:
                other = plain.get_submodule(name)
            except AttributeError:
                raise ValueError(f"the plain body has no layer `{name}`") from None
            if type(other) is not want:
                raise ValueError(f"`{name}` of the plain body is {type(other).__name__}, expected {want.__name__}")
            self._check_deep_ensemble_layer(name, layer, other)
            pairs.append((name, layer, other))
            n_matched += sum(p.numel() for p in other.parameters())
        if n_matched != n_plain:
            raise ValueError(f"the plain body has {n_plain - n_matched} parameters outside Conv2d/Linear layers; "
                             "only Conv2d and Linear parameters can be packed")
        return pairs

    def _check_deep_ensemble_layer(self, name: str, layer: nn.Module, plain: nn.Module) -> None:
        m = self.num_estimators
        # a deep ensemble: every member block is exactly a plain layer
        want_groups = 1 if layer.first else m
        if isinstance(layer, PackedConv2d):
            ok = (layer.groups == want_groups and layer.weight.shape[0] == m * plain.weight.shape[0]
                  and layer.weight.shape[1:] == plain.weight.shape[1:] and plain.groups == 1
                  and layer.stride == plain.stride and layer.dilation == plain.dilation
                  and (layer.padding == plain.padding))
        else:
            ok = (layer.groups == want_groups and layer.out_features == m * plain.out_features
                  and layer.weight.shape[2] == plain.in_features)
        ok = ok and (layer.bias is None) == (plain.bias is None)
        if not ok:
            raise ValueError(f"layer `{name}` is not {m} plain layers side by side: members can be loaded and "
                             f"extracted only for a deep-ensemble packing, alpha = num_estimators and gamma = 1 "
                             f"(got alpha={self.alpha}, gamma={self.gamma})")

    @staticmethod
    def _blocks(layer: nn.Module, i: int, m: int):
        """Views of member `i`'s weight and bias inside a packed layer (deep-ensemble packing)."""
        if isinstance(layer, PackedConv2d):
            rows = layer.out_channels // m
            weight = layer.weight[i * rows:(i + 1) * rows]
        else:
            rows = layer.out_features // m
            weight = layer.weight[0, i * rows:(i + 1) * rows] if layer.groups == 1 else layer.weight[i]
        bias = None if layer.bias is None else layer.bias[i * rows:(i + 1) * rows]
        return weight, bias

    @torch.no_grad()
    def load_members(self, members: Sequence[nn.Module]) -> 'PackedEnsemble':
        """Copies $M$ plain bodies (`body_cls(n_classes, **body_kwargs)`, e.g. independently initialised) into
        the packed layers; needs `alpha == num_estimators` and `gamma == 1`. Returns `self`."""
        if len(members) != self.num_estimators:
            raise ValueError(f"expected {self.num_estimators} members, got {len(members)}")
        for i, plain in enumerate(members):
            for _, layer, other in self._plain_pairs(plain):
                weight, bias = self._blocks(layer, i, self.num_estimators)
                weight.copy_(other.weight)
                if bias is not None:
                    bias.copy_(other.bias)
        return self

    @torch.no_grad()
    def member(self, i: int) -> nn.Module:
        """Member `i` as a plain body (a copy of its weights, on this model's device, in its train/eval mode);
        needs `alpha == num_estimators` and `gamma == 1`."""
        if not 0 <= i < self.num_estimators:
            raise IndexError(f"member index {i} out of range for {self.num_estimators} members")
        plain = self.body_cls(self.n_classes, **copy.deepcopy(self.body_kwargs))
        p = next(self.parameters())
        plain = plain.to(device=p.device, dtype=p.dtype).train(self.training)
        for _, layer, other in self._plain_pairs(plain):
            weight, bias = self._blocks(layer, i, self.num_estimators)
            other.weight.copy_(weight)
            if bias is not None:
                other.bias.copy_(bias)
        return plain
