"""The vote wrapper (BatchEnsemble voters): voters against plain modules, shared weights, batch layout, risk."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evidential.models.convmod import ConvMod
from evidential.models.lenet import LeNet, LeNet5
from evidential.models.vote import VoteConv2d, VoteLinear, VoteModel, vote_statistics, wrap
from tests.layouts import record_channels_last

N_VOTERS = 4


def _bodies():
    # dropout 0: train-mode outputs are deterministic, so they can be compared with plain modules
    return [LeNet(10, dropout=0.), LeNet5(10), ConvMod(10, dropout=0.)]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _voter_layers(vote: VoteModel):
    return [m for m in vote.modules() if isinstance(m, (VoteLinear, VoteConv2d))]


def test_convmod_shapes_and_layers():
    body = ConvMod(7)
    assert body(_images(3)).shape == (3, 7)
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in body.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 10, (5, 5)), (10, 20, (5, 5))]
    assert [(l.in_features, l.out_features) for l in linears] == [(320, 50), (50, 7)]
    assert any(isinstance(m, nn.Dropout2d) for m in body.modules())
    with pytest.raises(ValueError, match='dropout'):
        ConvMod(10, dropout=1.)


@pytest.mark.parametrize('body', _bodies(), ids=lambda b: type(b).__name__)
def test_ones_fast_weights_give_the_wrapped_model(body):
    torch.manual_seed(0)
    body.eval()
    vote = wrap(body, N_VOTERS).eval()
    x = _images(5)
    expected = body(x)
    # With the default random signs the voters are *not* the base network
    assert not torch.allclose(vote(x)[0], expected, atol=1e-4)
    with torch.no_grad():
        for layer in _voter_layers(vote):
            layer.r.fill_(1.)
            layer.s.fill_(1.)
    # The biases start as copies of the base's biases
    for layer, base in zip(_voter_layers(vote), [m for m in body.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]):
        assert torch.equal(layer.bias, base.bias.detach().expand_as(layer.bias))
    out = vote(x)
    assert out.shape == (N_VOTERS, 5, 10)
    for i in range(N_VOTERS):
        torch.testing.assert_close(out[i], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('body', _bodies(), ids=lambda b: type(b).__name__)
def test_batched_eval_voter_equals_its_plain_module(body):
    torch.manual_seed(1)
    vote = wrap(body, N_VOTERS).eval()
    x = _images(6)
    out = vote(x)
    assert out.shape == (N_VOTERS, 6, 10)
    plains = [vote.voter(i).eval() for i in range(N_VOTERS)]
    # Plain voters are plain layers
    assert not any(isinstance(m, (VoteLinear, VoteConv2d)) for m in plains[0].modules())
    for i, plain in enumerate(plains):
        torch.testing.assert_close(out[i], plain(x), rtol=1e-4, atol=1e-5)
    # ... and distinct from each other from the start
    for i in range(1, N_VOTERS):
        assert (out[i] - out[0]).abs().max() > 1e-3


@pytest.mark.parametrize('body', _bodies(), ids=lambda b: type(b).__name__)
def test_eval_with_formed_weights_equals_the_scaled_repeated_batch(body):
    # Evaluation forms each voter's W_i; training scales the activations of a batch whose chunks belong to the
    # voters. The repeated batch through the training path is every voter on every input: the same function.
    torch.manual_seed(2)
    vote = wrap(body, N_VOTERS, init='normal')
    x = _images(5, seed=3)
    batched = vote.train()(x.repeat(N_VOTERS, 1, 1, 1)).unflatten(0, (N_VOTERS, 5))
    torch.testing.assert_close(vote.eval()(x), batched, rtol=1e-4, atol=1e-5)


def test_channels_last_eval_gives_the_same_voters_in_channels_last():
    # `experiments.evaluate` holds the parameters channels-last: the same outputs, and every convolution computes
    # channels-last (a first-layer kernel `[20, 1, 5, 5]` formed by arithmetic would fall back to NCHW)
    torch.manual_seed(4)
    vote = wrap(LeNet(10), N_VOTERS).eval()
    x = _images(7, seed=5)
    nchw = vote(x)
    vote.to(memory_format=torch.channels_last)
    layouts = record_channels_last(vote, VoteConv2d)
    torch.testing.assert_close(vote(x), nchw, rtol=1e-5, atol=1e-5)
    assert layouts == [True, True] * N_VOTERS


def test_wrapped_is_a_copy_and_original_untouched():
    torch.manual_seed(2)
    body = ConvMod(10)
    before = copy.deepcopy(body.state_dict())
    vote = wrap(body, N_VOTERS)
    with torch.no_grad():
        for p in vote.parameters():
            p.add_(1.)
    for name, value in body.state_dict().items():
        assert torch.equal(value, before[name])
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in body.modules() if list(m.parameters(recurse=False)))


def test_voters_share_the_base_weights():
    torch.manual_seed(3)
    vote = wrap(ConvMod(10, dropout=0.), N_VOTERS).eval()
    x = _images(8)
    before = vote(x).detach()
    fast_before = {name: p.detach().clone() for name, p in vote.named_parameters() if name.endswith(('.r', '.s'))}
    optimizer = torch.optim.SGD(vote.parameters(), lr=0.1)
    # A loss on voter 0 only: the other voters' fast weights and biases get no gradient ...
    loss = F.cross_entropy(vote(x)[0], torch.arange(8) % 10)
    optimizer.zero_grad()
    loss.backward()
    for layer in _voter_layers(vote):
        assert layer.r.grad[1:].abs().max() == 0 and layer.s.grad[1:].abs().max() == 0
        assert layer.bias.grad[1:].abs().max() == 0
        assert layer.weight.grad.abs().max() > 0
    optimizer.step()
    for name, p in vote.named_parameters():
        if name in fast_before:
            assert torch.equal(p.detach()[1:], fast_before[name][1:])
    # ... yet every voter's output moves, through the shared $W$
    after = vote(x).detach()
    for i in range(N_VOTERS):
        assert (after[i] - before[i]).abs().max() > 1e-4, f'voter {i} did not change'
    # One shared weight per layer: the parameters are the base's, plus small fast weights
    n_weights = sum(m.weight.numel() for m in _voter_layers(vote))
    base = ConvMod(10)
    assert n_weights == sum(m.weight.numel() for m in base.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


# Three well separated clusters in 16 dimensions (one class each)
CENTRES = 3 * torch.randn(3, 16, generator=torch.Generator().manual_seed(12))


def _separable(n: int, seed: int):
    y = torch.arange(n) % 3
    x = CENTRES[y] + torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    return x, y


def test_training_learns_and_voters_disagree():
    torch.manual_seed(4)
    body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    vote = wrap(body, N_VOTERS)
    x, y = _separable(64, seed=5)
    optimizer = torch.optim.Adam(vote.parameters(), lr=1e-2)
    vote.train()
    for _ in range(30):
        loss = F.cross_entropy(vote(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vote.eval()
    x_test, y_test = _separable(60, seed=6)
    with torch.no_grad():
        logits = vote(x_test)
        prediction, risk = vote(x_test, return_risk=True)
    # The vote learned the task ...
    assert (prediction.argmax(-1) == y_test).float().mean() > 0.9
    # ... but the voters are still different networks: probabilities differ, and off the data
    # (inputs between and beyond the clusters) their class votes disagree
    probs = logits.softmax(-1)
    assert (probs[1:] - probs[0]).abs().amax(dim=(1, 2)).min() > 1e-3
    assert risk.max() > 0
    far = 5 * torch.randn(200, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        votes = vote(far).argmax(-1)
    assert (votes != votes[0]).any(dim=0).float().mean() > 0.05


@pytest.mark.parametrize('body', _bodies(), ids=lambda b: type(b).__name__)
def test_train_mode_chunks_go_to_their_voters(body):
    torch.manual_seed(8)
    vote = wrap(body, N_VOTERS).train()
    per_voter = 3
    x = _images(N_VOTERS * per_voter, seed=9)
    out = vote(x)
    assert out.shape == (N_VOTERS * per_voter, 10)
    plains = [vote.voter(i) for i in range(N_VOTERS)]
    for i in range(N_VOTERS):
        chunk = slice(i * per_voter, (i + 1) * per_voter)
        torch.testing.assert_close(out[chunk], plains[i](x[chunk]), rtol=1e-4, atol=1e-5)
        # and not by any other voter
        for j in range(N_VOTERS):
            if j != i:
                assert (out[chunk] - plains[j](x[chunk])).abs().max() > 1e-3


def test_batch_not_a_multiple_of_n_voters():
    vote = wrap(ConvMod(10), N_VOTERS).train()
    with pytest.raises(ValueError, match='multiple of n_voters'):
        vote(_images(N_VOTERS + 1))
    # A voter layer on its own checks too
    with pytest.raises(ValueError, match='multiple of n_voters'):
        vote.model.out(torch.randn(N_VOTERS + 1, 50))
    # Evaluation takes any batch
    assert vote.eval()(_images(N_VOTERS + 1)).shape == (N_VOTERS, N_VOTERS + 1, 10)
    with pytest.raises(ValueError, match='evaluation mode'):
        vote.train()(_images(N_VOTERS), return_risk=True)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.scale


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.custom = _Scaled()

    def forward(self, x):
        return self.custom(self.fc(x))


class _MyLinear(nn.Linear):
    pass


@pytest.mark.parametrize('model, name, path', [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), 'BatchNorm2d', "'1'"),
    (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False)), 'BatchNorm1d', "'1'"),
    (nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), 'Embedding', "'0'"),
    (nn.Sequential(nn.Linear(4, 4), _Block()), '_Scaled', "'1.custom'"),
    (nn.Sequential(nn.Conv1d(1, 2, 3)), 'Conv1d', "'0'"),
    (nn.Sequential(nn.ReLU(), _MyLinear(4, 2)), '_MyLinear', "'1'"),
    (_Scaled(), '_Scaled', "'<root>'"),
])
def test_unsupported_parametrised_layer(model, name, path):
    with pytest.raises(ValueError, match=name) as error:
        wrap(model, N_VOTERS)
    assert path in str(error.value)


def test_arguments_and_passthrough():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match='n_voters'):
            wrap(ConvMod(10), bad)
    with pytest.raises(ValueError, match='init'):
        wrap(ConvMod(10), 2, init='zeros')
    with pytest.raises(ValueError, match='already'):
        wrap(wrap(ConvMod(10), 2), 2)
    with pytest.raises(IndexError):
        wrap(ConvMod(10), 2).voter(2)
    # Parameter-free modules pass through unchanged, the root may itself be a layer
    vote = wrap(ConvMod(10), 2)
    kinds = {type(m) for m in vote.model.modules()}
    assert {nn.MaxPool2d, nn.ReLU, nn.Dropout2d, nn.Dropout, nn.Flatten} <= kinds
    assert nn.Conv2d not in kinds and nn.Linear not in kinds
    assert isinstance(wrap(nn.Linear(3, 2), 2).model, VoteLinear)
    # N(1, 0.5^2) fast weights: mean near 1, not signs
    r = wrap(nn.Linear(4000, 2), 2, init='normal').model.r
    assert abs(r.mean().item() - 1) < 0.05 and abs(r.std().item() - 0.5) < 0.05


def test_grouped_padded_conv_and_tied_linears():
    torch.manual_seed(10)
    body = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode='reflect'), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, bias=False), nn.Flatten())
    # N(1, 0.5^2) fast weights: with 2 channels per group, random signs often repeat across the groups
    vote = wrap(body, 3, init='normal').eval()
    x = torch.randn(2, 4, 9, 9)
    out = vote(x)
    for i in range(3):
        torch.testing.assert_close(out[i], vote.voter(i).eval()(x), rtol=1e-4, atol=1e-5)
    # Weights tied in the body stay tied (one shared W)
    shared = nn.Linear(5, 5)
    tied = wrap(nn.Sequential(shared, nn.ReLU(), shared), 2)
    assert tied.model[0] is tied.model[2]
    other = nn.Linear(5, 5)
    second = nn.Linear(5, 5)
    second.weight = other.weight
    tied = wrap(nn.Sequential(other, second), 2)
    assert tied.model[0].weight is tied.model[1].weight


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('body, limit', [(LeNet(10), 0.05), (ConvMod(10), 0.25)], ids=['LeNet', 'ConvMod'])
def test_parameter_overhead(body, limit):
    n = 8
    vote = wrap(body, n)
    base, wrapped = _parameters(body), _parameters(vote)
    layers = [m for m in body.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ins = sum(m.weight.shape[1] for m in layers)
    outs = sum(m.weight.shape[0] for m in layers)
    # Per voter and layer: r (inputs), s (outputs) and a bias (outputs) replacing the base's bias
    assert wrapped - base == n * (ins + 2 * outs) - outs
    overhead = (wrapped - base) / base
    print(f'{type(body).__name__}: {base} parameters, {wrapped} with {n} voters: +{100 * overhead:.2f} %')
    assert 0 < overhead < limit


def test_risk_is_the_variance_by_hand():
    torch.manual_seed(11)
    vote = wrap(ConvMod(10), 5).eval()
    x = _images(7)
    with torch.no_grad():
        prediction, risk = vote(x, return_risk=True)
        probs = torch.stack([F.softmax(vote.voter(i).eval()(x), dim=-1) for i in range(5)])
    assert prediction.shape == (7, 10) and risk.shape == (7,)
    mean = sum(probs[i] for i in range(5)) / 5
    variance = sum((probs[i] - mean) ** 2 for i in range(5)) / 5
    torch.testing.assert_close(prediction, mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(risk, variance.sum(-1), rtol=1e-4, atol=1e-7)
    assert (risk > 0).all()
    # Agreeing voters: zero risk; and the per-class statistics
    same = torch.randn(1, 3, 4).expand(6, 3, 4)
    m, v = vote_statistics(same)
    torch.testing.assert_close(m, F.softmax(same[0], -1))
    assert v.abs().max() < 1e-7
    with pytest.raises(ValueError, match=r'\[M, N, K\]'):
        vote_statistics(torch.randn(3, 4))
