"""
Packed-Ensembles (`evidential.models.packed`) and the ensemble scores (`evidential.scores`).

* against TorchUncertainty 0.13.0's `PackedConv2d` / `PackedLinear` (same parameter shapes and counts,
  same outputs with the same weights) and its tutorial's packed LeNet-5 (45,672 parameters). These skip,
  saying why, where `torch_uncertainty` is not installed. Its layer files are loaded by path (see
  `_load_torch_uncertainty_layers`), so they need only `torch` and `einops`, not `lightning`;
* by hand, always: each group of a packed layer is an independent small layer on its slice of channels,
  members never touch each other, `nn.Flatten` is the tutorial's `rearrange` route, and
  `alpha = M, gamma = 1` is `M` independent plain networks run alone;
* the scores (mean softmax, mutual information, disagreement) on small tensors worked out by hand.
"""
import importlib
import importlib.metadata
import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evidential.models.lenet import LeNet, LeNet5
from evidential.models.packed import PackedConv2d, PackedEnsemble, PackedLayers, PackedLinear
from evidential.prediction import member_disagreement, sampled_prediction

ATOL = 1e-5


def _load_torch_uncertainty_layers():
    """TorchUncertainty's `layers/packed.py` (and the `layers/functional/packed.py` it imports), loaded from the
    installed distribution's files under the private package name `_tu_reference`.

    `import torch_uncertainty.layers.packed` runs `torch_uncertainty/__init__.py`, which imports `lightning`
    (TUTrainer) and, through `layers/__init__.py`, every other layer family. The two files themselves import only
    `torch` and `einops`, so loading them by path works with `pip install --no-deps torch-uncertainty==0.13.0`
    as well as with the full `[cpu]` install. Returns `(module, None)` or `(None, why it is skipped)`."""
    try:
        spec = importlib.util.find_spec('torch_uncertainty')  # finds the package without running its __init__
    except (ImportError, ValueError) as e:
        spec, why = None, f' ({type(e).__name__}: {e})'
    else:
        why = ''
    if spec is None or not spec.submodule_search_locations:
        return None, f'torch_uncertainty is not installed{why} (reference tests need `pip install torch-uncertainty==0.13.0`)'
    if importlib.util.find_spec('einops') is None:
        return None, "torch_uncertainty's packed layers import einops, which is not installed"
    root = Path(list(spec.submodule_search_locations)[0])
    if not (root / 'layers' / 'packed.py').exists():
        return None, f'no layers/packed.py in {root}'
    name = '_tu_reference'
    for sub, path in [('', root), ('.layers', root / 'layers'), ('.layers.functional', root / 'layers' / 'functional')]:
        package = types.ModuleType(name + sub)
        package.__path__ = [str(path)]
        sys.modules.setdefault(name + sub, package)
    try:
        return importlib.import_module(name + '.layers.packed'), None
    except ImportError as e:
        return None, f"torch_uncertainty's layers/packed.py cannot be imported: {e}"


TU, TU_SKIP_REASON = _load_torch_uncertainty_layers()
TU_VERSION = importlib.metadata.version('torch-uncertainty') if TU is not None else None
needs_tu = pytest.mark.skipif(TU is None, reason=TU_SKIP_REASON or '')


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------------------
# (a) layers against TorchUncertainty's

# in, out, kernel, alpha, M, gamma, keyword arguments
CONV_CASES = [
    (1, 6, 5, 2, 4, 1, dict(first=True)),
    (3, 6, 3, 2, 2, 3, dict(first=True)),
    (6, 16, 5, 2, 4, 1, {}),
    (6, 16, 3, 4, 4, 1, {}),                                       # alpha = M: a deep ensemble
    (6, 16, 5, 1.5, 3, 1, {}),                                     # alpha * 6 = 9 channels, 3 groups
    (64, 32, 3, 2, 2, 2, {}),                                      # 32 < 64 channels a group: gamma -> 1
    (96, 48, 3, 2, 2, 3, dict(minimum_channels_per_group=40)),    # gamma 3 -> 2 (32 < 40, then 48)
    (128, 64, 1, 2, 2, 2, {}),                                     # 64 channels a group: gamma stays 2
    (8, 3, 3, 2, 4, 1, dict(last=True)),
    (16, 8, 3, 2, 2, 1, dict(stride=2, padding=1, dilation=1)),
]

# in, out, alpha, M, gamma, keyword arguments
LINEAR_CASES = [
    (20, 12, 2, 4, 1, dict(first=True)),
    (256, 120, 2, 4, 1, {}),
    (120, 84, 2, 4, 1, {}),
    (84, 10, 2, 4, 1, dict(last=True)),
    (16, 16, 2, 2, 2, {}),                                         # linear layers keep gamma: 4 groups
    (10, 6, 3, 3, 1, {}),                                          # alpha = M
    (16, 4, 2, 2, 2, dict(last=True)),
    (12, 8, 1.5, 2, 3, {}),
]


@needs_tu
@pytest.mark.parametrize('case', CONV_CASES, ids=lambda c: f'conv{c[:6]}{"".join(sorted(c[6]))}')
def test_conv_matches_torch_uncertainty(case):
    cin, cout, k, alpha, m, gamma, kw = case
    torch.manual_seed(0)
    ours = PackedConv2d(cin, cout, k, alpha, m, gamma, **kw)
    ref = TU.PackedConv2d(cin, cout, k, alpha, m, gamma, **kw)
    assert ours.groups == ref.conv.groups, TU_VERSION
    assert ours.weight.shape == ref.conv.weight.shape
    assert ours.bias.shape == ref.conv.bias.shape
    assert n_params(ours) == n_params(ref)
    with torch.no_grad():
        ours.weight.copy_(ref.conv.weight)
        ours.bias.copy_(ref.conv.bias)
    x = torch.randn(3, ref.conv.in_channels, 9, 9)
    out, expected = ours(x), ref(x)
    if kw.get('last'):
        # TorchUncertainty stacks the members along the batch: [(M N), C, h, w]
        out = out.unflatten(1, (m, -1)).transpose(0, 1).flatten(0, 1)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@needs_tu
@pytest.mark.parametrize('case', LINEAR_CASES, ids=lambda c: f'linear{c[:5]}{"".join(sorted(c[5]))}')
def test_linear_matches_torch_uncertainty(case):
    fin, fout, alpha, m, gamma, kw = case
    torch.manual_seed(0)
    ours = PackedLinear(fin, fout, alpha, m, gamma, **kw)
    ref = TU.PackedLinear(fin, fout, alpha, m, gamma, **kw)
    assert ours.weight.shape == ref.weight.shape and ours.bias.shape == ref.bias.shape
    assert n_params(ours) == n_params(ref)
    with torch.no_grad():
        ours.weight.copy_(ref.weight)
        ours.bias.copy_(ref.bias)
    for shape in [(5,), (2, 3)]:                                   # [N, F] and [N, *, F]
        x = torch.randn(*shape, ours.in_features)
        out, expected = ours(x), ref(x)
        if kw.get('last'):
            # TorchUncertainty: "b ... (m h) -> (m b) ... h"
            out = out.unflatten(-1, (m, -1)).movedim(-2, 0).flatten(0, 1)
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@needs_tu
@pytest.mark.parametrize('layer, args', [
    ('PackedConv2d', (6, 16, 5, 1, 4, 1)),                         # 6 input channels, 4 groups
    ('PackedConv2d', (8, 5, 3, 2, 4, 1)),                          # 10 output channels, 4 members
    ('PackedLinear', (6, 16, 1, 4, 1)),
    ('PackedLinear', (8, 3, 2, 4, 1)),
])
def test_invalid_widths_are_errors_in_both(layer, args):
    with pytest.raises(ValueError):
        getattr(TU, layer)(*args)
    with pytest.raises(ValueError, match='not divisible'):
        {'PackedConv2d': PackedConv2d, 'PackedLinear': PackedLinear}[layer](*args)


@needs_tu
def test_same_initialisation_distribution_as_torch_uncertainty():
    # same seed, same draws: TorchUncertainty's linear initialises group by group, its conv like nn.Conv2d
    torch.manual_seed(3)
    ref_conv, ref_lin = TU.PackedConv2d(6, 16, 5, 2, 4), TU.PackedLinear(120, 84, 2, 4)
    torch.manual_seed(3)
    ours_conv, ours_lin = PackedConv2d(6, 16, 5, 2, 4), PackedLinear(120, 84, 2, 4)
    torch.testing.assert_close(ours_conv.weight, ref_conv.conv.weight, atol=0, rtol=0)
    torch.testing.assert_close(ours_conv.bias, ref_conv.conv.bias, atol=0, rtol=0)
    torch.testing.assert_close(ours_lin.weight, ref_lin.weight, atol=0, rtol=0)
    torch.testing.assert_close(ours_lin.bias, ref_lin.bias, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# (b) TorchUncertainty's tutorial packed LeNet-5 ("From Deep Ensembles to Packed-Ensembles")

def tutorial_packed_lenet(in_channels: int = 1, num_classes: int = 10, alpha: int = 2, num_estimators: int = 4):
    """The tutorial's `PackedLeNet`, with TorchUncertainty's layers and einops' `rearrange`."""
    from einops import rearrange

    class PackedLeNet(nn.Module):
        def __init__(self, in_channels, num_classes, alpha, num_estimators):
            super().__init__()
            self.num_estimators = num_estimators
            self.conv1 = TU.PackedConv2d(in_channels, 6, (5, 5), alpha=alpha, num_estimators=num_estimators,
                                         first=True)
            self.conv2 = TU.PackedConv2d(6, 16, (5, 5), alpha=alpha, num_estimators=num_estimators)
            self.pooling = nn.AdaptiveAvgPool2d((4, 4))
            self.fc1 = TU.PackedLinear(256, 120, alpha=alpha, num_estimators=num_estimators)
            self.fc2 = TU.PackedLinear(120, 84, alpha=alpha, num_estimators=num_estimators)
            self.fc3 = TU.PackedLinear(84, num_classes, alpha=alpha, num_estimators=num_estimators, last=True)

        def features(self, x):
            out = F.relu(self.conv1(x))
            out = F.max_pool2d(out, 2)
            out = F.relu(self.conv2(out))
            return F.max_pool2d(out, 2)

        def head(self, out):
            out = F.relu(self.fc1(out))
            out = F.relu(self.fc2(out))
            return self.fc3(out)

        def forward(self, x):
            """The tutorial's forward, as written."""
            out = self.features(x)
            out = rearrange(out, "e (m c) h w -> (m e) c h w", m=self.num_estimators)
            out = torch.flatten(out, 1)
            return self.head(out)

        def forward_flat(self, x):
            """The route of TorchUncertainty 0.13.0's own `packed_lenet`: flatten the member-major channels."""
            return self.head(torch.flatten(self.features(x), 1))

    return PackedLeNet(in_channels, num_classes, alpha, num_estimators)


def _copy_tutorial_into_ours(tutorial: nn.Module, ours: PackedEnsemble) -> None:
    body = ours.body
    pairs = [(tutorial.conv1.conv, body.features[0]), (tutorial.conv2.conv, body.features[3]),
             (tutorial.fc1, body.hidden[0]), (tutorial.fc2, body.hidden[3]), (tutorial.fc3, body.out)]
    with torch.no_grad():
        for src, dst in pairs:
            assert src.weight.shape == dst.weight.shape and src.bias.shape == dst.bias.shape
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


@needs_tu
def test_tutorial_packed_lenet5_has_45672_parameters_like_ours():
    tutorial = tutorial_packed_lenet()
    ours = PackedEnsemble(LeNet5, 10, alpha=2, num_estimators=4, gamma=1)
    assert n_params(tutorial) == 45_672
    assert n_params(ours) == 45_672
    tu_shapes = sorted(tuple(p.shape) for p in tutorial.parameters())
    assert sorted(tuple(p.shape) for p in ours.parameters()) == tu_shapes


@needs_tu
def test_tutorial_packed_lenet5_equals_ours_with_copied_weights():
    torch.manual_seed(1)
    tutorial, ours = tutorial_packed_lenet().eval(), PackedEnsemble(LeNet5, 10, alpha=2, num_estimators=4).eval()
    _copy_tutorial_into_ours(tutorial, ours)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        expected = tutorial.forward_flat(x)                        # [(M N), K], members stacked on the batch
        out = ours(x)                                              # [M, N, K]
    assert out.shape == (4, 6, 10) and expected.shape == (24, 10)
    torch.testing.assert_close(out, expected.reshape(4, 6, 10), atol=ATOL, rtol=0)


@needs_tu
@pytest.mark.skipif(TU_VERSION is not None and TU_VERSION != '0.13.0', reason='documents TorchUncertainty 0.13.0')
def test_tutorial_rearrange_route_does_not_fit_torch_uncertainty_0_13_linear():
    """The tutorial's `"e (m c) h w -> (m e) c h w"` predates 0.13.0's einsum `PackedLinear`, which reads
    member-major features `[N, M·d]`: the flattened `[(M N), d]` rows have a quarter of fc1's inputs."""
    tutorial = tutorial_packed_lenet()
    with pytest.raises(RuntimeError, match='einsum'):
        tutorial(torch.randn(2, 1, 28, 28))


# ------------------------------------------------------------------------------------------------------------
# (c) by hand, without TorchUncertainty

def test_flatten_is_the_tutorial_rearrange_route_with_members_moved_back():
    """`nn.Flatten` of `[N, M·C, h, w]` = the tutorial's rearrange + flatten, with member blocks put back
    side by side (`"(m e) d -> e (m d)"`)."""
    einops = pytest.importorskip('einops')
    m, n, c, h, w = 4, 3, 8, 4, 4
    x = torch.randn(n, m * c, h, w)
    stacked = torch.flatten(einops.rearrange(x, 'e (m c) h w -> (m e) c h w', m=m), 1)    # [(M N), C h w]
    assert torch.equal(einops.rearrange(stacked, '(m e) d -> e (m d)', m=m), nn.Flatten()(x))
    # and member m's block of the flattened row holds exactly its channels
    flat = nn.Flatten()(x)
    for i in range(m):
        assert torch.equal(flat[:, i * c * h * w:(i + 1) * c * h * w], x[:, i * c:(i + 1) * c].reshape(n, -1))


@pytest.mark.parametrize('cin, cout, alpha, m, gamma, kw', [
    (6, 16, 2, 4, 1, {}), (6, 16, 3, 3, 1, {}), (128, 64, 2, 2, 2, {}), (1, 6, 2, 4, 1, dict(first=True)),
    (8, 3, 2, 4, 1, dict(last=True)),
])
def test_each_conv_group_is_an_independent_conv_on_its_channels(cin, cout, alpha, m, gamma, kw):
    torch.manual_seed(0)
    layer = PackedConv2d(cin, cout, 3, alpha, m, gamma, padding=1, **kw)
    g = layer.groups
    assert g == (1 if kw.get('first') else layer.gamma * m)
    c_in, c_out = layer.in_channels // g, layer.out_channels // g
    x = torch.randn(2, layer.in_channels, 7, 7)
    out = layer(x)
    for j in range(g):
        small = nn.Conv2d(c_in, c_out, 3, padding=1)
        with torch.no_grad():
            small.weight.copy_(layer.weight[j * c_out:(j + 1) * c_out])
            small.bias.copy_(layer.bias[j * c_out:(j + 1) * c_out])
        torch.testing.assert_close(out[:, j * c_out:(j + 1) * c_out], small(x[:, j * c_in:(j + 1) * c_in]),
                                   atol=ATOL, rtol=0)


@pytest.mark.parametrize('fin, fout, alpha, m, gamma, kw', [
    (256, 120, 2, 4, 1, {}), (16, 16, 2, 2, 2, {}), (20, 12, 2, 4, 1, dict(first=True)),
    (84, 10, 2, 4, 1, dict(last=True)), (10, 6, 3, 3, 1, {}),
])
def test_each_linear_group_is_an_independent_linear_on_its_features(fin, fout, alpha, m, gamma, kw):
    torch.manual_seed(0)
    layer = PackedLinear(fin, fout, alpha, m, gamma, **kw)
    g = layer.groups
    assert g == (1 if kw.get('first') else gamma * m)
    f_in, f_out = layer.in_features // g, layer.out_features // g
    x = torch.randn(5, layer.in_features)
    out = layer(x)
    for j in range(g):
        small = nn.Linear(f_in, f_out)
        with torch.no_grad():
            small.weight.copy_(layer.weight[j])
            small.bias.copy_(layer.bias[j * f_out:(j + 1) * f_out])
        torch.testing.assert_close(out[:, j * f_out:(j + 1) * f_out], small(x[:, j * f_in:(j + 1) * f_in]),
                                   atol=ATOL, rtol=0)


def test_parameter_counts_by_hand():
    # LeNet-5, alpha = 2, M = 4: 12 first-layer filters over 1 channel; 32 filters over 12 / 4 = 3 channels;
    # fc 512 -> 240, 240 -> 168, 168 -> 40 in 4 blocks; biases
    lenet5 = (12 * 1 * 25 + 12) + (32 * 3 * 25 + 32) + (4 * 60 * 128 + 240) + (4 * 42 * 60 + 168) + (4 * 10 * 42 + 40)
    assert lenet5 == 45_672
    assert n_params(PackedEnsemble(LeNet5, 10, alpha=2, num_estimators=4)) == lenet5
    # LeNet, alpha = 2, M = 2, gamma = 2: conv2 reads 40 channels, 10 a subgroup < 64, so gamma -> 1 there;
    # the linear layers keep 4 groups
    lenet = ((40 * 1 * 25 + 40) + (100 * 20 * 25 + 100) + (4 * 250 * 400 + 1000) + (4 * 5 * 250 + 20))
    model = PackedEnsemble(LeNet, 10, alpha=2, num_estimators=2, gamma=2)
    assert model.body.features[3].groups == 2 and model.body.hidden[0].groups == 4
    assert n_params(model) == lenet
    # alpha = M, gamma = 1: exactly M plain networks
    assert n_params(PackedEnsemble(LeNet, 10, alpha=3, num_estimators=3)) == 3 * n_params(LeNet(10))
    assert n_params(PackedEnsemble(LeNet5, 10, alpha=5, num_estimators=5)) == 5 * n_params(LeNet5(10))


def test_initialisation_bounds_are_those_of_a_plain_layer_of_one_group():
    torch.manual_seed(0)
    conv, lin = PackedConv2d(64, 64, 3, 2, 2), PackedLinear(400, 400, 2, 4)
    for w, b, fan_in in [(conv.weight, conv.bias, 64 * 9), (lin.weight, lin.bias, 200)]:
        bound = 1 / math.sqrt(fan_in)                              # kaiming_uniform(a = sqrt 5) = U(+-1/sqrt(fan_in))
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert b.abs().max() <= bound


@pytest.mark.parametrize('body, m, kwargs', [(LeNet5, 2, {}), (LeNet, 4, dict(dropout=0.5))])
def test_members_never_touch_each_other(body, m, kwargs):
    """alpha = 2, gamma = 2 (less than the full width, subgroups in the linear layers): changing the weights
    of every member but one leaves that member's outputs exactly as they were, and changes the others'."""
    gamma = 2
    torch.manual_seed(0)
    model = PackedEnsemble(body, 10, alpha=2, num_estimators=m, gamma=gamma, **kwargs).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        keep = 1
        for layer in model.body.modules():
            if isinstance(layer, (PackedConv2d, PackedLinear)):
                rows = (layer.out_channels if isinstance(layer, PackedConv2d) else layer.out_features) // m
                for i in range(m):
                    if i == keep:
                        continue
                    # member i's output rows (and, in a linear layer, its gamma weight groups)
                    layer.bias[i * rows:(i + 1) * rows] += 1.
                    if isinstance(layer, PackedConv2d):
                        layer.weight[i * rows:(i + 1) * rows] *= -1.5
                    elif layer.groups == 1:
                        layer.weight[0, i * rows:(i + 1) * rows] *= -1.5
                    else:
                        per = layer.groups // m
                        layer.weight[i * per:(i + 1) * per] *= -1.5
        after = model(x)
    assert torch.equal(after[keep], before[keep])
    for i in range(m):
        if i != keep:
            assert not torch.allclose(after[i], before[i])


def test_forward_shape_and_errors():
    model = PackedEnsemble(LeNet5, 7, alpha=2, num_estimators=4, gamma=1, dropout=0.)
    assert model(torch.randn(3, 1, 28, 28)).shape == (4, 3, 7)
    with pytest.raises(ValueError, match=r'\[N, 12, H, W\]'):
        model.body.features[3](torch.randn(1, 6, 12, 12))
    with pytest.raises(ValueError, match=r'\[\.\.\., 512\]'):
        model.body.hidden[0](torch.randn(1, 256))
    with pytest.raises(TypeError, match='gamma'):
        PackedLayers(2, 4, 1.0)
    with pytest.raises(TypeError, match='num_estimators'):
        PackedLinear(8, 8, 2, 4.0)
    with pytest.raises(ValueError, match='alpha'):
        PackedConv2d(8, 8, 3, 0, 4)
    with pytest.raises(ValueError, match='not divisible'):
        PackedEnsemble(LeNet5, 10, alpha=1, num_estimators=4)     # 6 channels into 4 members
    with pytest.raises(TypeError, match='layers'):
        PackedEnsemble(LeNet5, 10, alpha=2, num_estimators=4, layers=None)


# ------------------------------------------------------------------------------------------------------------
# (d) alpha = M, gamma = 1: a deep ensemble of plain networks

@pytest.mark.parametrize('body, m', [(LeNet, 3), (LeNet5, 4)])
def test_deep_ensemble_case_equals_members_run_alone(body, m):
    members = []
    for i in range(m):
        torch.manual_seed(100 + i)
        members.append(body(10).eval())
    packed = PackedEnsemble(body, 10, alpha=m, num_estimators=m, gamma=1).eval().load_members(members)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        out = packed(x)
        alone = torch.stack([member(x) for member in members])
    assert out.shape == (m, 5, 10)
    torch.testing.assert_close(out, alone, atol=ATOL, rtol=0)
    # the members really are different networks
    assert not torch.allclose(alone[0], alone[1])
    # and come back out as plain bodies with their own weights
    for i, member in enumerate(members):
        back = packed.member(i)
        assert type(back) is body and not back.training
        for (name, p), (name2, q) in zip(back.named_parameters(), member.named_parameters()):
            assert name == name2 and torch.equal(p, q)


def test_deep_ensemble_case_channels_last():
    m = 3
    members = []
    for i in range(m):
        torch.manual_seed(i)
        members.append(LeNet(10).eval())
    packed = PackedEnsemble(LeNet, 10, alpha=m, num_estimators=m).eval().load_members(members)
    packed = packed.to(memory_format=torch.channels_last)
    assert packed.body.features[3].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), torch.stack([mb(x.contiguous()) for mb in members]),
                                   atol=ATOL, rtol=0)


def test_members_need_a_deep_ensemble_packing():
    packed = PackedEnsemble(LeNet5, 10, alpha=2, num_estimators=4)
    with pytest.raises(ValueError, match='alpha = num_estimators'):
        packed.load_members([LeNet5(10) for _ in range(4)])
    with pytest.raises(ValueError, match='alpha = num_estimators'):
        packed.member(0)
    deep = PackedEnsemble(LeNet5, 10, alpha=2, num_estimators=2)
    with pytest.raises(ValueError, match='expected 2 members'):
        deep.load_members([LeNet5(10)])
    with pytest.raises(TypeError, match='LeNet5'):
        deep.load_members([LeNet(10), LeNet(10)])
    with pytest.raises(IndexError):
        deep.member(2)


# ------------------------------------------------------------------------------------------------------------
# (e) scores, by hand

def _from_probs(p: torch.Tensor):
    """`sampled_prediction` of members given by their probabilities (logits log p: softmax(log p) = p)."""
    return sampled_prediction(p.log(), disagreement=True)


def test_scores_of_agreeing_and_disagreeing_members():
    # 2 members, 3 samples, 2 classes: same one-hot / opposite one-hots / the same soft opinion
    p = torch.tensor([[[1., 0.], [1., 0.], [.7, .3]],
                      [[1., 0.], [0., 1.], [.7, .3]]], dtype=torch.float64)
    pred = _from_probs(p)
    torch.testing.assert_close(pred.probs, torch.tensor([[1., 0.], [.5, .5], [.7, .3]]))
    # H(mean) - mean H: 0 - 0; log 2 - 0; H(.7, .3) - H(.7, .3)
    torch.testing.assert_close(pred.scores['mutual_information'], torch.tensor([0., math.log(2), 0.]))
    # sample 2: ensemble (.5, .5) ties -> class 0; member 2 votes 1: one of two members disagrees
    torch.testing.assert_close(member_disagreement(p), torch.tensor([0., .5, 0.], dtype=torch.float64))
    torch.testing.assert_close(pred.scores['disagreement'], torch.tensor([0., .5, 0.]))


def test_disagreement_reaches_one_when_no_member_votes_for_the_ensemble_class():
    p = torch.tensor([[[.6, .4, 0.]], [[0., .4, .6]]], dtype=torch.float64)
    pred = _from_probs(p)
    assert pred.probs.argmax(-1).item() == 1
    assert member_disagreement(p).item() == 1.
    # mutual information: H(.3, .4, .3) - H(.6, .4)
    h_mean = -(2 * .3 * math.log(.3) + .4 * math.log(.4))
    h_member = -(.6 * math.log(.6) + .4 * math.log(.4))
    assert pred.scores['mutual_information'].item() == pytest.approx(h_mean - h_member, abs=1e-6)


def test_disagreement_counts_members():
    # 4 members, classes voted 0, 0, 0, 2: ensemble class 0, one member in four disagrees
    votes = [0, 0, 0, 2]
    p = torch.full((4, 1, 3), .1, dtype=torch.float64)
    for m, k in enumerate(votes):
        p[m, 0, k] = .8
    assert member_disagreement(p).item() == .25


def test_ensemble_scores_from_logits():
    logits = torch.tensor([[[2., 0., -1.]], [[0., 1., 0.]]])
    e = [math.exp(v) for v in (2., 0., -1.)]
    p0 = [v / sum(e) for v in e]
    e1 = [math.exp(v) for v in (0., 1., 0.)]
    p1 = [v / sum(e1) for v in e1]
    pred = sampled_prediction(logits, disagreement=True)
    mean = [(a + b) / 2 for a, b in zip(p0, p1)]
    torch.testing.assert_close(pred.probs[0], torch.tensor(mean))

    def h(q):
        return -sum(v * math.log(v) for v in q)
    assert pred.scores['mutual_information'].item() == pytest.approx(h(mean) - (h(p0) + h(p1)) / 2, abs=1e-6)
    # ensemble class 0 (mean .. > ..); member 1 votes 1
    assert pred.scores['disagreement'].item() == .5
    assert 'disagreement' not in sampled_prediction(logits).scores
