"""The evidential math against independent references: torch.distributions and Monte-Carlo estimates."""
import math

import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

from evidential.dirichlet import opinion
from evidential.prediction import categorical_entropy as entropy
from evidential.heads import EVIDENCE_HEADS, EXP_MAX_LOGIT
from evidential.losses import (LOSSES, cross_entropy_bayes_risk, kl_uniform_regulariser, max_likelihood_loss,
                               squared_error_bayes_risk)
from evidential.schedules import make_kl_schedule, validate_piecewise_points


def test_opinion_by_hand():
    # e = (2, 0, 1): alpha = (3, 1, 2), S = 6, p = (1/2, 1/6, 1/3), u = 3/6, b = (2/6, 0, 1/6)
    o = opinion(torch.tensor([[2., 0., 1.]]))
    assert torch.allclose(o.alpha, torch.tensor([[3., 1., 2.]]))
    assert torch.allclose(o.strength, torch.tensor([6.]))
    assert torch.allclose(o.expected_probability, torch.tensor([[1 / 2, 1 / 6, 1 / 3]]))
    assert torch.allclose(o.uncertainty_mass, torch.tensor([0.5]))
    # the belief masses b_k = e_k / S and u add up to 1
    assert torch.allclose((o.evidence / o.strength[:, None]).sum(-1) + o.uncertainty_mass, torch.tensor([1.]))
    assert o.n_classes == 3


def test_no_evidence_is_uniform_and_fully_uncertain():
    o = opinion(torch.zeros(4, 7))
    assert torch.allclose(o.uncertainty_mass, torch.ones(4))
    assert torch.allclose(o.expected_probability, torch.full((4, 7), 1 / 7))
    assert torch.allclose(entropy(o.expected_probability), torch.full((4,), math.log(7)))


def test_opinion_rejects_bad_shapes():
    with pytest.raises(ValueError, match='K >= 2'):
        opinion(torch.ones(5, 1))


def _random_evidence(n=64, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a mix of tiny and large evidence, float64 for tight comparisons
    return (torch.rand(n, k, generator=g, dtype=torch.float64) ** 3) * 20, torch.randint(0, k, (n,), generator=g)


def test_kl_matches_torch_distributions():
    evidence, labels = _random_evidence()
    y = torch.nn.functional.one_hot(labels, 10).double()
    alpha_tilde = y + (1 - y) * (evidence + 1)
    reference = kl_divergence(Dirichlet(alpha_tilde), Dirichlet(torch.ones_like(alpha_tilde))).mean()
    assert torch.allclose(kl_uniform_regulariser(evidence, labels), reference, rtol=1e-10, atol=1e-10)


def test_kl_is_zero_when_all_evidence_is_on_the_true_class():
    labels = torch.tensor([0, 3, 9])
    evidence = torch.nn.functional.one_hot(labels, 10).double() * 1000.
    assert kl_uniform_regulariser(evidence, labels).abs() < 1e-9
    # and positive as soon as a wrong class gets evidence
    evidence[0, 1] = 5.
    assert kl_uniform_regulariser(evidence, labels) > 0.1


def _monte_carlo(evidence, labels, fn, n_samples=200_000, seed=1):
    """Mean over the batch of E_{p ~ Dir(alpha)}[fn(p, y)], estimated from torch.distributions samples."""
    torch.manual_seed(seed)
    alpha = evidence + 1
    p = Dirichlet(alpha).sample((n_samples,))  # [S, N, K]
    y = torch.nn.functional.one_hot(labels, alpha.shape[-1]).double()
    return fn(p, y).mean(0).mean()


@pytest.mark.parametrize('name', ['cross_entropy_bayes_risk', 'squared_error_bayes_risk'])
def test_bayes_risks_match_monte_carlo(name):
    evidence, labels = _random_evidence(n=8, k=5, seed=2)
    if name == 'cross_entropy_bayes_risk':
        mc = _monte_carlo(evidence, labels, lambda p, y: -(y * p.clamp_min(1e-300).log()).sum(-1))
    else:
        mc = _monte_carlo(evidence, labels, lambda p, y: ((y - p) ** 2).sum(-1))
    assert LOSSES[name](evidence, labels).item() == pytest.approx(mc.item(), rel=1e-2)


def test_type_ii_likelihood_matches_monte_carlo():
    # -log of the marginal likelihood E_{p ~ Dir}[p_y], per sample, averaged over the batch
    evidence, labels = _random_evidence(n=8, k=5, seed=3)
    torch.manual_seed(4)
    p = Dirichlet(evidence + 1).sample((200_000,))
    marginal = p.gather(-1, labels.expand(p.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(0)
    assert max_likelihood_loss(evidence, labels).item() == pytest.approx(-marginal.log().mean().item(), rel=1e-2)


def test_losses_by_hand():
    # e = (2, 0, 1), y = 0: alpha = (3, 1, 2), S = 6
    e, y = torch.tensor([[2., 0., 1.]], dtype=torch.float64), torch.tensor([0])
    # ML: log 6 - log 3 = log 2
    assert max_likelihood_loss(e, y).item() == pytest.approx(math.log(2))
    # CE: psi(6) - psi(3) = 1/3 + 1/4 + 1/5
    assert cross_entropy_bayes_risk(e, y).item() == pytest.approx(1 / 3 + 1 / 4 + 1 / 5)
    # SSE: p = (1/2, 1/6, 1/3); (1/2)^2 + (1/6)^2 + (1/3)^2 + sum p(1-p)/7
    p = [1 / 2, 1 / 6, 1 / 3]
    expected = (1 / 2) ** 2 + (1 / 6) ** 2 + (1 / 3) ** 2 + sum(q * (1 - q) for q in p) / 7
    assert squared_error_bayes_risk(e, y).item() == pytest.approx(expected)


@pytest.mark.parametrize('head', list(EVIDENCE_HEADS))
@pytest.mark.parametrize('loss', list(LOSSES) + ['kl'])
def test_gradients_finite_for_extreme_evidence(head, loss):
    logits = torch.tensor([[-1e4, 0., 1e4, 50.], [1e-8, -30., 88., 1e6]], requires_grad=True)
    labels = torch.tensor([2, 0])
    evidence = EVIDENCE_HEADS[head](logits)
    fn = kl_uniform_regulariser if loss == 'kl' else LOSSES[loss]
    value = fn(evidence, labels)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


def test_exp_head_is_clamped():
    e = EVIDENCE_HEADS['exp'](torch.tensor([0., 5., 1e4]))
    assert e[0] == 1. and e[1] == pytest.approx(math.exp(5), rel=1e-6)
    assert e[2] == pytest.approx(math.exp(EXP_MAX_LOGIT), rel=1e-6)


def test_exp_linear_head_is_exp_then_its_tangent_line():
    c = EXP_MAX_LOGIT
    z = torch.tensor([-30., 0., 5., c - 1e-3, c, c + 1e-3, c + 1., c + 6., 1e6], dtype=torch.float64,
                     requires_grad=True)
    e = EVIDENCE_HEADS['exp_linear'](z)
    e.sum().backward()
    # exp up to c, e^c (1 + z - c) above (values worked out by hand)
    for i in range(5):
        assert e[i].item() == pytest.approx(math.exp(z[i].item()), rel=1e-12)
    assert e[6].item() == pytest.approx(2 * math.exp(c), rel=1e-12)
    assert e[7].item() == pytest.approx(7 * math.exp(c), rel=1e-12)
    assert e[8].item() == pytest.approx(math.exp(c) * (1e6 - c + 1), rel=1e-12)
    # continuous, with the same slope e^c on both sides of c (and at c itself)
    assert e[5].item() - e[3].item() == pytest.approx(2e-3 * math.exp(c), rel=1e-3)
    assert z.grad[3:6].tolist() == pytest.approx([math.exp(c)] * 3, rel=1e-3)
    assert z.grad[5:].tolist() == pytest.approx([math.exp(c)] * 4, rel=1e-12)
    # strictly increasing everywhere, unlike `exp`, which is flat above c
    assert (e[1:] > e[:-1]).all()
    flat = EVIDENCE_HEADS['exp'](z.detach())
    assert flat[5] == flat[6] == flat[7] == flat[8]


def test_exp_plateau_inverts_u_and_exp_linear_does_not():
    """A very confident clean input against a barely-confident one with a competing class: on the clamp of
    `exp` both top logits give e^10, so the competitor's evidence makes the ambiguous input look *more*
    certain (lower u). The tangent continuation keeps the confident input's larger evidence."""
    logits = torch.tensor([[16., -5., -5.], [11., 8., -5.]])   # [clean and confident, ambiguous]
    u_exp = opinion(EVIDENCE_HEADS['exp'](logits)).uncertainty_mass
    u_lin = opinion(EVIDENCE_HEADS['exp_linear'](logits)).uncertainty_mass
    assert u_exp[1] < u_exp[0]
    assert u_lin[0] < u_lin[1]
    # u = K / S by hand: S = 3 + 7 e^10 + 2 e^-5 and 3 + 2 e^10 + e^8 + e^-5
    assert u_lin[0].item() == pytest.approx(3 / (3 + 7 * math.exp(10) + 2 * math.exp(-5)), rel=1e-5)
    assert u_lin[1].item() == pytest.approx(3 / (3 + 2 * math.exp(10) + math.exp(8) + math.exp(-5)), rel=1e-5)


def test_relu_head_is_dead_below_zero_and_softplus_is_not():
    logits = torch.tensor([-3., 2.], requires_grad=True)
    EVIDENCE_HEADS['relu'](logits).sum().backward()
    assert logits.grad.tolist() == [0., 1.]
    logits.grad = None
    EVIDENCE_HEADS['softplus'](logits).sum().backward()
    assert logits.grad[0] > 0


def test_unknown_kl_schedule_lists_valid_ones():
    with pytest.raises(ValueError, match='piecewise, paper, constant, off'):
        make_kl_schedule('linear', samples_per_epoch=10, epochs=1)


def test_loss_rejects_mismatched_labels():
    with pytest.raises(ValueError, match=r'labels must have shape \[N\] = \[2\]'):
        squared_error_bayes_risk(torch.ones(2, 3), torch.tensor([0, 1, 2]))


def test_paper_schedule_is_min_one_epoch_over_ten():
    s = make_kl_schedule('paper', samples_per_epoch=100, epochs=20)
    assert [s(0), s(50), s(100), s(550), s(1000), s(5000)] == [0., 0.05, 0.1, 0.55, 1., 1.]


def test_piecewise_schedule_interpolates_fractions_of_training():
    # 10 epochs x 100 samples; points (0, 0), (0.2, 0.01), (1, 1): at 20% -> 0.01, at 60% -> 0.01 + 0.99/2
    s = make_kl_schedule('piecewise', samples_per_epoch=100, epochs=10, points=[(0, 0.), (0.2, 0.01), (1, 1.)])
    assert s(0) == 0. and s(100) == pytest.approx(0.005) and s(200) == pytest.approx(0.01)
    assert s(600) == pytest.approx(0.505) and s(1000) == 1. and s(2000) == 1.


@pytest.mark.parametrize('points, total', [
    ([(0, 0.), (0.2, 0.01), (1, 1.)], 1000), ([(0, 0.), (0.2, 0.01), (1, 1.)], 2 * 313), ([(0.1, 0.5), (0.7, 2.)], 999),
    ([(0, 1.), (0.5, 0.), (1, 0.3)], 7), ([(0, 0.), (0.3, 0.3), (0.3, 0.6), (1, 0.9)], 100)])
def test_piecewise_schedule_equals_labml_nn(points, total):
    """The same numbers as the `RelativePiecewise` of labml_nn's tutorial, at every sample count and beyond."""
    from labml_nn.helpers.schedule import RelativePiecewise
    ours = make_kl_schedule('piecewise', samples_per_epoch=total, epochs=1, points=points)
    theirs = RelativePiecewise([(float(x), float(y)) for x, y in points], total)
    assert [ours(t) for t in range(-2, total + 3)] == [min(1., float(theirs(t))) for t in range(-2, total + 3)]


def test_constant_and_off_schedules():
    assert make_kl_schedule('constant', samples_per_epoch=1, epochs=1, coef=0.3)(12345) == 0.3
    assert make_kl_schedule('off', samples_per_epoch=1, epochs=1)(10) == 0.


@pytest.mark.parametrize('points', [[(0, 0.)], [(0.5, 0.), (0.2, 1.)], [(0, -1.), (1, 1.)], 'abc', [(0, 0), (2, 1)]])
def test_piecewise_points_are_validated(points):
    with pytest.raises(ValueError, match='KL schedule'):
        validate_piecewise_points(points)


def test_relaxed_squared_error_by_hand_and_prior_weight_one():
    from evidential.losses import relaxed_squared_error
    # e = (2, 0, 1), y = 0, lambda = 0.1: p = (2.1, 0.1, 1.1) / 3.3
    e, y = torch.tensor([[2., 0., 1.]], dtype=torch.float64), torch.tensor([0])
    p = [2.1 / 3.3, 0.1 / 3.3, 1.1 / 3.3]
    expected = (1 - p[0]) ** 2 + p[1] ** 2 + p[2] ** 2
    assert relaxed_squared_error(e, y).item() == pytest.approx(expected)
    # with lambda = 1 it is Eq. 5 without its variance term
    o = opinion(e)
    sse_without_var = ((torch.tensor([[1., 0., 0.]], dtype=torch.float64) - o.expected_probability) ** 2).sum()
    assert relaxed_squared_error(e, y, prior_weight=1.).item() == pytest.approx(sse_without_var.item())
    # the uncertainty mass of a relaxed opinion: u = K lambda / S = 0.3 / 3.3
    assert opinion(e, prior_weight=0.1).uncertainty_mass.item() == pytest.approx(0.3 / 3.3)


def _dirichlet_fisher(alpha: torch.Tensor) -> torch.Tensor:
    """Fisher information of Dir(alpha) as the autograd Hessian of its log-normaliser (an independent reference)."""
    def log_normaliser(a):
        return torch.lgamma(a).sum() - torch.lgamma(a.sum())
    return torch.autograd.functional.hessian(log_normaliser, alpha)


@pytest.mark.parametrize('alpha', [[1., 1., 1.], [3., 1., 2.], [0.5, 7., 40., 1.2], [250., 1., 1., 1., 1.]])
def test_log_det_fisher_information_matches_autograd_hessian(alpha):
    from evidential.dirichlet import log_det_fisher_information
    a = torch.tensor(alpha, dtype=torch.float64)
    sign, expected = torch.linalg.slogdet(_dirichlet_fisher(a))
    assert sign.item() == 1.
    assert log_det_fisher_information(a).item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)
    # batched, float32 in and out
    batch = torch.stack([a, a]).float()
    out = log_det_fisher_information(batch)
    assert out.dtype == torch.float32 and out.shape == (2,)
    assert torch.allclose(out, expected.float().expand(2), rtol=1e-5)


def test_log_det_fisher_information_finite_for_large_strength():
    from evidential.dirichlet import log_det_fisher_information
    # ~(K - 1) / 2S is left after the cancellation; float32 alone would give log of <= 0 here
    a = torch.tensor([[1e7, 1., 1.]])
    value = log_det_fisher_information(a)
    assert torch.isfinite(value).all()
    exact = log_det_fisher_information(a.double())
    assert value.item() == pytest.approx(exact.item(), rel=1e-6)


def test_fisher_information_loss_against_monte_carlo():
    from evidential.dirichlet import log_det_fisher_information
    from evidential.losses import fisher_information_loss
    torch.manual_seed(0)
    # E_{p ~ Dir(alpha)}[(y - p)^T I(alpha) (y - p)] with the full Fisher matrix, by sampling
    evidence = torch.tensor([[2., 0., 1., 4.], [0.3, 6., 0., 0.]], dtype=torch.float64)
    labels = torch.tensor([3, 0])
    estimates = []
    for e, label in zip(evidence, labels):
        alpha = e + 1
        p = Dirichlet(alpha).sample((400_000,))
        d = F_one_hot(label, 4) - p
        quad = torch.einsum('ni,ij,nj->n', d, _dirichlet_fisher(alpha), d).mean()
        estimates.append(quad - 0.1 * torch.linalg.slogdet(_dirichlet_fisher(alpha))[1])
    expected = torch.stack(estimates).mean().item()
    assert fisher_information_loss(evidence, labels, fisher_coef=0.1).item() == pytest.approx(expected, rel=5e-3)
    # lambda_F = 0: only the weighted squared error and variance remain
    no_det = fisher_information_loss(evidence, labels, fisher_coef=0.)
    with_det = fisher_information_loss(evidence, labels, fisher_coef=1.)
    assert (no_det - with_det).item() == pytest.approx(log_det_fisher_information(evidence + 1).mean().item())


def test_fisher_information_loss_by_hand_for_uniform_opinion():
    from evidential.losses import fisher_information_loss
    # e = 0, K = 2: alpha = (1, 1), S = 2, p = (1/2, 1/2); psi1(1) = pi^2/6, psi1(2) = pi^2/6 - 1
    # weighted error: psi1(1) * [(1/2)^2 * 2 + 2 * (1/4) / 3] = psi1(1) * (1/2 + 1/6)
    t1, t2 = math.pi ** 2 / 6, math.pi ** 2 / 6 - 1
    # |I| = t1^2 (1 - t2 * 2 / t1) = t1^2 - 2 t1 t2
    log_det = math.log(t1 * t1 - 2 * t1 * t2)
    expected = t1 * (1 / 2 + 1 / 6) - 0.005 * log_det
    value = fisher_information_loss(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]))
    # (torch.polygamma(1, .) is accurate to ~1e-10 in double precision)
    assert value.item() == pytest.approx(expected, rel=1e-8)


def test_fisher_information_loss_rejects_negative_coefficient():
    from evidential.losses import fisher_information_loss
    with pytest.raises(ValueError, match='fisher_coef must be >= 0, got -1'):
        fisher_information_loss(torch.ones(1, 3), torch.tensor([0]), fisher_coef=-1.)


def F_one_hot(label: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(label, n).double()
