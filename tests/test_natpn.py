"""
The Natural Posterior Network of `model=natpn` (`evidential/flows.py`, `evidential/natpn.py`,
`evidential/models/natpn.py`), against independent references: Pyro's `Radial` transform, `torch.func.jacrev`,
numerical integration, the density of a known synthetic mixture, and a Monte-Carlo estimate of the loss with
`torch.distributions.Dirichlet`; a smoke run of `python -m experiments.evidence_mnist model=natpn`, and its warm-up.
"""
import json
import math

import pytest
import torch

from evidential.flows import RadialFlow, radial_transform
from evidential.natpn import bayesian_loss, evidence_from_log, log_certainty_budget, total_log_evidence


def _random_flow(dim: int, n_layers: int, n_flows: int, seed: int = 0) -> RadialFlow:
    """A flow with parameters far from its near-identity initialisation (contractions and expansions)."""
    torch.manual_seed(seed)
    flow = RadialFlow(dim, n_layers, n_flows).double()
    with torch.no_grad():
        flow.reference.normal_(0, 1)
        flow.alpha_prime.normal_(0, 1)
        flow.beta_prime.normal_(0, 1.5)
    return flow


def test_radial_transform_is_pyros_radial():
    """Each of F flows' layers computes Pyro's `Radial` (the same map and log|det J|) with the same parameters."""
    from pyro.distributions.transforms import Radial
    flow = _random_flow(dim=5, n_layers=1, n_flows=3, seed=1)
    z = torch.randn(7, 5, dtype=torch.double) * 2
    y, log_det = radial_transform(z[:, None].expand(7, 3, 5), flow.reference[0], flow.alpha_prime[0],
                                  flow.beta_prime[0])
    for f in range(3):
        pyro_radial = Radial(5).double()
        with torch.no_grad():
            pyro_radial.x0.copy_(flow.reference[0, f])
            pyro_radial.alpha_prime.copy_(flow.alpha_prime[0, f:f + 1])
            pyro_radial.beta_prime.copy_(flow.beta_prime[0, f:f + 1])
        expected = pyro_radial(z)
        torch.testing.assert_close(y[:, f], expected)
        torch.testing.assert_close(log_det[:, f], pyro_radial.log_abs_det_jacobian(z, expected))


def test_log_det_is_the_log_determinant_of_the_autograd_jacobian():
    """The flow's summed log|det J| (L layers, every flow) equals log|det| of `torch.func.jacrev`'s Jacobian."""
    flow = _random_flow(dim=4, n_layers=3, n_flows=2, seed=2)
    z = torch.randn(6, 4, dtype=torch.double) * 1.5
    _, log_det = flow(z)
    for f in range(2):
        def through_flow(point):
            return flow(point[None])[0][0, f]
        for i in range(len(z)):
            jacobian = torch.func.jacrev(through_flow)(z[i])
            sign, logabsdet = torch.linalg.slogdet(jacobian)
            assert sign > 0  # radial transforms with beta >= -alpha preserve orientation
            torch.testing.assert_close(log_det[i, f], logabsdet)


def test_flow_density_integrates_to_one():
    """exp(log p) of each flow on a 2-d grid sums to 1 (midpoint rule on [-8, 8]^2, 0.05 spacing)."""
    flow = _random_flow(dim=2, n_layers=8, n_flows=2, seed=0)
    step = 0.05
    axis = torch.arange(-8 + step / 2, 8, step, dtype=torch.double)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_p = flow.log_prob(grid)
    torch.testing.assert_close(log_p.exp().sum(0) * step ** 2, torch.ones(2, dtype=torch.double), rtol=0, atol=1e-3)
    # and the flows are not the base normal: the check is not the normal's own integral
    base = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.double), torch.eye(2, dtype=torch.double))
    assert (log_p - base.log_prob(grid)[:, None]).abs().max() > 1


def test_evidence_grows_with_the_training_density():
    """The head alone (a flow per class, the budget, the Bayesian loss) trained briefly on a 2-d two-class mixture:
    fresh draws of the mixture get more evidence than points of the plane where its density is below 1% of its peak
    (AUROC > 0.97; the untrained flows, standard normals at the origin, score ~0.88), the blob centres far more than
    the gap between them (where the untrained flows peak) and than points far away."""
    torch.manual_seed(4)
    means = torch.tensor([[-2., 0.], [2., 1.]])
    labels = torch.randint(0, 2, (2048,))
    data = means[labels] + 0.6 * torch.randn(2048, 2)
    flow = RadialFlow(2, 8, n_flows=2)
    log_budget = log_certainty_budget(2)
    log_counts = torch.bincount(labels, minlength=2).float().log()

    def log_evidence(z):
        # $\log n_c = \log N_H + \log N_c + \log p(z | c)$
        return log_budget + log_counts + flow.log_prob(z)

    optimizer = torch.optim.Adam(flow.parameters(), lr=0.03)
    for step in range(150):
        batch = torch.randint(0, 2048, (256,))
        loss = bayesian_loss(evidence_from_log(log_evidence(data[batch])), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(log_counts.exp()),
        torch.distributions.Independent(torch.distributions.Normal(means, 0.6), 1))
    fresh = mixture.sample((500,))
    plane = torch.rand(4000, 2) * torch.tensor([10., 8.]) - torch.tensor([5., 3.5])
    sparse = plane[mixture.log_prob(plane) < mixture.log_prob(means).max() - math.log(100)][:500]
    with torch.no_grad():
        on_data, off_data = total_log_evidence(log_evidence(fresh)), total_log_evidence(log_evidence(sparse))
        centres, gap, far = (evidence_from_log(log_evidence(z)).sum(-1) for z in
                             (means, means.mean(0, keepdim=True), torch.tensor([[0., 8.], [9., -6.], [-10., 0.]])))
    auroc = (on_data[:, None] > off_data[None]).double().mean()
    assert auroc > 0.97, auroc
    assert centres.min() > 10 * gap.max() and centres.min() > 1e6 * far.max(), (centres, gap, far)


def test_loss_is_the_monte_carlo_expected_cross_entropy_minus_entropy():
    r"""$\mathbb{E}_{\text{Dir}(\alpha)}[-\log p_y] - \lambda \mathbb{H}[\text{Dir}(\alpha)]$ by sampling
    `torch.distributions.Dirichlet` (the entropy as $-\mathbb{E}[\log \text{Dir}(p; \alpha)]$), with a large $\lambda$
    so that both terms count."""
    torch.manual_seed(5)
    evidence = torch.tensor([[3., 0.5, 0.1], [0.2, 7., 1.5], [0., 0., 0.], [12., 2., 30.]], dtype=torch.double)
    labels = torch.tensor([0, 2, 1, 2])
    weight = 0.3
    dirichlet = torch.distributions.Dirichlet(evidence + 1)
    p = dirichlet.sample((400_000,))
    # per sample: $-\log p_y - \lambda (-\log \text{Dir}(p; \alpha))$, averaged over the batch
    per_sample = (-p.gather(-1, labels[None, :, None].expand(len(p), 4, 1)).squeeze(-1).log()
                  + weight * dirichlet.log_prob(p)).mean(-1)
    estimate, standard_error = per_sample.mean(), per_sample.std() / math.sqrt(len(p))
    loss = bayesian_loss(evidence, labels, weight)
    assert abs(loss - estimate) < 4 * standard_error, (loss, estimate, standard_error)
    # the paper's 1e-5: the entropy term is a small correction of the expected cross-entropy
    assert abs(bayesian_loss(evidence, labels, 1e-5) - bayesian_loss(evidence, labels, 0.)) < 1e-4


def test_clamped_evidence_keeps_the_class_shares_and_gradients():
    """Evidence of huge log-evidence is finite, its total clamped at e^30 and its shares the softmax's; the gradient
    passes the clamp (NatPN's `clamp_preserve_gradients`)."""
    log_n = torch.tensor([[200., 199., 150.], [-80., -81., -90.], [3., 1., 0.]], requires_grad=True)
    evidence = evidence_from_log(log_n)
    assert torch.isfinite(evidence).all()
    torch.testing.assert_close(evidence.sum(-1).log(), torch.tensor([30., -30., math.log(math.exp(3) + math.e + 1)]))
    torch.testing.assert_close(evidence / evidence.sum(-1, keepdim=True), log_n.softmax(-1))
    evidence.sum(-1).log().sum().backward()
    # d log(sum n) / d log n_c = share_c, as without the clamp
    torch.testing.assert_close(log_n.grad, log_n.softmax(-1).detach())


def test_smoke_run_of_model_natpn_trains_and_evaluates(workdir, synthetic_data_dir, monkeypatch):
    """`python -m experiments.evidence_mnist preset=smoke model=natpn`: trains, evaluates, and reports u. (Without
    the figures, three quarters of the evaluation's time: the family contract tests draw them for `evidence_mnist`.)"""
    import numpy as np
    from experiments import evaluate
    from experiments.evaluation import plots
    from experiments.train import main as train
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(plots, 'write_figures', lambda *args, **kwargs: ({}, []))
    assert train('evidence_mnist', ['preset=smoke', 'model=natpn', f'data_dir={synthetic_data_dir}',
                                    'device=cpu']) == 0
    (run,) = (workdir / 'logs' / 'evidence_mnist').iterdir()
    assert evaluate.main([run.name, '--fgsm-samples', '8', '--missing-samples', '16']) == 0
    result = json.loads((run / 'evaluation.json').read_text())
    assert result['id_score'] == 'u' and 'u' in result['selective'] and 'u' in result['ood']['fashion_mnist']
    npz = np.load(run / 'predictions.npz')
    u, evidence = npz['id/u'], npz['id/evidence']
    # u = K / S with S = sum(evidence + 1): the saved evidence is the opinion's
    np.testing.assert_allclose(u, 10 / (evidence + 1).sum(-1), rtol=1e-5)


def test_warmup_trains_the_flows_alone(workdir, synthetic_data_dir, monkeypatch):
    """`natpn_warmup_epochs=1`: after a warm-up epoch the encoder's weights are their initial ones (the seed's), the
    flows' are not."""
    from configs.checkpoint import load_checkpoint
    from evidential.models.natpn import NaturalPosteriorNetwork
    from experiments.train import main as train
    monkeypatch.chdir(workdir)
    assert train('evidence_mnist', ['preset=smoke', 'model=natpn', 'natpn_warmup_epochs=1', 'seed=3',
                                    f'data_dir={synthetic_data_dir}', 'device=cpu']) == 0
    (run,) = (workdir / 'logs' / 'evidence_mnist').iterdir()
    trained = load_checkpoint(run)['model']
    torch.manual_seed(3)  # as `natpn_body`, right before initialisation
    initial = NaturalPosteriorNetwork(10, torch.ones(10)).state_dict()
    encoder = [k for k in initial if k.startswith('encoder.')]
    assert encoder and all(torch.equal(initial[k], trained[k]) for k in encoder)
    assert not torch.equal(initial['flow.reference'], trained['flow.reference'])
