r"""
# Annealing the KL regulariser

The total loss is $\mathcal{L}(\Theta) = \sum_i \mathcal{L}_i(\Theta)
+ \lambda_t \sum_i \text{KL}[\text{Dir}(\tilde{\boldsymbol\alpha}_i) \| \text{Dir}(\mathbf{1})]$.
Turning the KL term on at full strength from the start pushes every sample towards "I don't know"
before the network has learnt anything, so $\lambda_t$ grows during training.

Every schedule is a callable of the number of *training samples seen so far* (labml_nn's global
step), so it advances smoothly within an epoch, whatever the batch size:

* **paper**: $\lambda_t = \min(1, t / 10)$ with $t$ the (fractional) epoch, Sensoy et al. (2018), Sec. 4.
* **piecewise**: linear between points $(\text{fraction of training}, \lambda)$; labml_nn's tutorial
  uses $[(0, 0), (0.2, 0.01), (1, 1)]$. The same numbers as labml_nn's `RelativePiecewise`, which that
  tutorial uses (`tests/test_evidential_math.py` compares them), written here: `evidential/` is tensor code
  without labml_nn.
* **constant**: $\lambda_t = c$.
* **off**: $\lambda_t = 0$.
"""
from typing import Callable, Dict, List, Sequence, Tuple

KLSchedule = Callable[[int], float]

KL_SCHEDULES = ('piecewise', 'paper', 'constant', 'off')


def validate_piecewise_points(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """Checks `[(fraction, value), ...]`: at least two points, fractions in [0, 1] and increasing, values >= 0."""
    try:
        pts = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError):
        raise ValueError(f"KL schedule points must be a list of (fraction, value) pairs, got {points!r}") from None
    if len(pts) < 2:
        raise ValueError(f"KL schedule needs at least two (fraction, value) points, got {pts!r}")
    xs = [x for x, _ in pts]
    if xs != sorted(xs) or xs[0] < 0 or xs[-1] > 1:
        raise ValueError(f"KL schedule fractions must increase within [0, 1], got {xs!r}")
    if any(y < 0 for _, y in pts):
        raise ValueError(f"KL schedule values must be >= 0, got {pts!r}")
    return pts


def piecewise_schedule(points: Sequence[Tuple[float, float]], total_samples: int) -> KLSchedule:
    r"""$\lambda$ interpolated linearly between `points` given as fractions of `total_samples`, capped at 1; the
    last point's value after it (and before the first)."""
    pts = validate_piecewise_points(points)
    # fractions → sample counts, rounded down (as labml_nn's `RelativePiecewise`)
    ends = [(int(total_samples * x), y) for x, y in pts]
    after = pts[-1][1]

    def schedule(samples_seen: int) -> float:
        for (x1, y1), (x2, y2) in zip(ends[:-1], ends[1:]):
            if x1 <= samples_seen < x2:
                # $\lambda = y_1 + \frac{t - x_1}{x_2 - x_1} (y_2 - y_1)$
                return min(1., float(y1 + float(samples_seen - x1) / (x2 - x1) * (y2 - y1)))
        return min(1., float(after))

    return schedule


def paper_schedule(samples_per_epoch: int, annealing_epochs: float = 10.) -> KLSchedule:
    r"""$\lambda_t = \min(1, t / 10)$, $t = \text{samples seen} / \text{samples per epoch}$."""
    if samples_per_epoch <= 0:
        raise ValueError(f"samples_per_epoch must be > 0, got {samples_per_epoch}")
    # $\min(1, t / 10)$
    return lambda samples_seen: min(1., samples_seen / samples_per_epoch / annealing_epochs)


def constant_schedule(coef: float) -> KLSchedule:
    r"""$\lambda_t = c$"""
    if coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {coef}")
    return lambda samples_seen: float(coef)


def make_kl_schedule(name: str, *, samples_per_epoch: int, epochs: int,
                     points: Sequence[Tuple[float, float]] = ((0, 0.), (0.2, 0.01), (1, 1.)),
                     coef: float = 1.) -> KLSchedule:
    """The schedule called `name` (one of `KL_SCHEDULES`) for a run of `epochs` epochs."""
    factories: Dict[str, Callable[[], KLSchedule]] = {
        'piecewise': lambda: piecewise_schedule(points, epochs * samples_per_epoch),
        'paper': lambda: paper_schedule(samples_per_epoch),
        'constant': lambda: constant_schedule(coef),
        'off': lambda: constant_schedule(0.),
    }
    if name not in factories:
        raise ValueError(f"unknown KL schedule {name!r}; valid: {', '.join(KL_SCHEDULES)}")
    return factories[name]()


def cosine_decay(progress: float) -> float:
    r"""Learning-rate factor $\frac{1}{2}(1 + \cos(\pi \cdot \text{progress}))$, from 1 at the start to 0 at the end."""
    import math
    progress = min(max(progress, 0.), 1.)
    return 0.5 * (1 + math.cos(math.pi * progress))


def cosine_annealing(epoch: int, period: float) -> float:
    r"""PyTorch's `CosineAnnealingLR` factor at `epoch` (stepped once per epoch, $\eta_{min} = 0$):
    $\frac{1}{2}(1 + \cos(\pi \cdot \text{epoch} / T_{max}))$, $T_{max}$ = `period`."""
    import math
    if period <= 0:
        raise ValueError(f"the period must be > 0 epochs, got {period}")
    return 0.5 * (1 + math.cos(math.pi * epoch / period))
