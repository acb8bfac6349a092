r"""
# Perturbations of the test inputs, as tensor math

How does a prediction change when the input is not like the training data? Each function here perturbs
images and records what a model says about them; the model enters only as a plain callable, so this module
knows nothing of families, runs or figures:

* `fgsm`: the fast gradient sign method (Goodfellow et al., 2015) at several step sizes (EDL paper, Fig. 4);
* `pgd`: projected gradient descent in the $L_\infty$ ball (Madry et al., 2018), the iterated, randomly
  started FGSM;
* `rotated_digit`: one digit rotated through a range of angles (EDL paper, Fig. 3);
* `missing_masks`, `missing_patterns`: which pixels are unknown, uniformly at random or in blocks (cirkit's
  missing-pixel tutorial).

`experiments/evaluation/perturbations/` runs them on a trained run and writes their results and figures.
Entropies are in nats (`evidential.prediction.categorical_entropy`).
"""
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from evidential.metrics import NLL_EPS
from evidential.prediction import categorical_entropy


def _as_1d(values, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    return t


# ## FGSM

class FGSMResult(NamedTuple):
    eps: torch.Tensor  # [E]
    accuracy: torch.Tensor  # [E]
    mean_entropy: torch.Tensor  # [E] mean entropy of p̂ (nats)


def _check_batch(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"`images` ({images.shape[0]}) and `labels` ({labels.shape[0]}) must have the same, "
                         f"non-zero number of samples")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")


def _loss_gradient(probs_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""
    $\nabla_x \mathcal{L}(x, y)$ of the attacks' loss, the negative log-likelihood of the prediction itself,

    $$\mathcal{L}(x, y) = -\sum_i \log \hat{p}_{y_i}(x_i),$$

    with $\hat{p}$ clamped at `NLL_EPS` (as `evidential.metrics.nll`). Summed, not averaged, over the batch: each
    image's gradient is its own, whatever the batch. Only the input's gradient is computed
    (`torch.autograd.grad`), so parameter `.grad`s are not touched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        p = probs_fn(x)
        # $\mathcal{L} = -\sum_i \log \hat{p}_{y_i}(x_i)$
        loss = -p.gather(1, y[:, None]).clamp_min(NLL_EPS).log().sum()
        grad, = torch.autograd.grad(loss, x)
    return grad


def fgsm(probs_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
         eps_list: Sequence[float], clamp: Optional[Tuple[float, float]] = (0.0, 1.0),
         batch_size: int = 1000) -> FGSMResult:
    r"""
    Accuracy and mean predictive entropy under the fast gradient sign method,

    $$x^{\text{adv}} = \operatorname{clip}\big(x + \epsilon\,
        \operatorname{sign}(\nabla_x \mathcal{L}(x, y))\big),
      \qquad \mathcal{L}(x, y) = -\log \hat{p}_y(x),$$

    with $\hat{p} = \alpha / S$ for an EDL model. The gradient is taken once at the clean input, so every
    $\epsilon$ reuses it; $\epsilon = 0$ is the clean input.

    * `probs_fn`: differentiable `x [B, ...] -> probs [B, K]` (the model in `eval()` mode).
    * `images`, `labels`: `[N, ...]`, `[N]`, on the model's device.
    * `eps_list`: perturbation sizes in input units.
    * `clamp`: `(lo, hi)` valid input range after the step, or `None` for no clipping.

    Only gradients with respect to the input are computed (`torch.autograd.grad`), so parameter `.grad`s are
    not touched.
    """
    eps = _as_1d(eps_list, 'eps_list')
    if (eps < 0).any():
        raise ValueError(f"`eps_list` must be >= 0, got {eps.tolist()}")
    _check_batch(images, labels, batch_size)
    correct = torch.zeros(len(eps), dtype=torch.float64)
    entropy_sum = torch.zeros(len(eps), dtype=torch.float64)
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].detach()
        y = labels[start:start + batch_size].long()
        # $\operatorname{sign}(\nabla_x \mathcal{L})$
        step = _loss_gradient(probs_fn, x, y).sign()
        with torch.no_grad():
            for j, e in enumerate(eps.tolist()):
                x_adv = x + e * step
                if clamp is not None:
                    x_adv = x_adv.clamp(*clamp)
                p_adv = probs_fn(x_adv).double()
                correct[j] += (p_adv.argmax(dim=1) == y).sum().item()
                entropy_sum[j] += categorical_entropy(p_adv).sum().item()
    n = images.shape[0]
    return FGSMResult(eps, correct / n, entropy_sum / n)


# ## PGD

def pgd(probs_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor, eps: float,
        steps: int, step_size: Optional[float] = None, start: Union[torch.Generator, torch.Tensor, None] = None,
        clamp: Optional[Tuple[float, float]] = (0.0, 1.0), batch_size: int = 1000) -> torch.Tensor:
    r"""
    The adversarial images of projected gradient descent in the $L_\infty$ ball (Madry et al., 2018), on the same
    loss as `fgsm` (the negative log-likelihood of the prediction itself):

    $$x^0 = \operatorname{clip}(x + \delta_0), \qquad
      x^{t+1} = \operatorname{clip}\Big(\Pi_{\|x' - x\|_\infty \le \epsilon}
          \big(x^t + \alpha\,\operatorname{sign}(\nabla_x \mathcal{L}(x^t, y))\big)\Big), \quad t < T,$$

    where $\Pi$ projects onto the $\epsilon$-ball around the clean $x$ (elementwise
    $\min(\max(x', x - \epsilon), x + \epsilon)$) and clip onto the valid input range, after the random start
    and after every step, as Madry et al.'s `pgd_attack.py` (MNIST challenge) does.

    * `probs_fn`: differentiable `x [B, ...] -> probs [B, K]` (the model in `eval()` mode).
    * `images`, `labels`: `[N, ...]`, `[N]`, on the model's device.
    * `eps`: $\epsilon \ge 0$, the radius of the ball, in input units; `steps`: $T \ge 1$.
    * `step_size`: $\alpha > 0$; `None` is $2.5\,\epsilon / T$: the $T$ steps travel $2.5\,\epsilon$, more than
      the ball's diameter $2\,\epsilon$, so they can reach any point of it from any start, while each stays a
      small fraction of $\epsilon$ (Madry et al.'s MNIST challenge: 40 steps of 0.01 at $\epsilon = 0.3$,
      $1.33\,\epsilon / T$).
    * `start`: the random start $\delta_0$: a `torch.Generator` draws $\delta_0 \sim U[-\epsilon, \epsilon]$
      per input element from it (on the generator's device, so a CPU generator gives the same start on every
      device), a tensor `[N, ...]` in $[-\epsilon, \epsilon]$ is $\delta_0$ itself, `None` starts at $x$. From
      $x$, one step of $\alpha = \epsilon$ is `fgsm`'s $x^{\text{adv}}$.
    * `clamp`: `(lo, hi)`, the valid input range, or `None` for no clipping.

    $\epsilon = 0$ is the clean input. The same `start` generator seed gives the same uniform draw for every
    $\epsilon$ (scaled by it), and the same images whatever `batch_size` (each image's gradient is its own).
    Parameter `.grad`s are not touched.
    """
    if not eps >= 0:
        raise ValueError(f"`eps` must be >= 0, got {eps}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}")
    # $\alpha = 2.5\,\epsilon / T$
    alpha = 2.5 * eps / steps if step_size is None else step_size
    if not alpha > 0 and eps > 0:
        raise ValueError(f"`step_size` must be > 0, got {step_size}")
    _check_batch(images, labels, batch_size)
    if isinstance(start, torch.Generator):
        # $\delta_0 \sim U[-\epsilon, \epsilon]$
        u = torch.rand(images.shape, generator=start, device=start.device, dtype=torch.float64)
        delta = ((2 * u - 1) * eps).to(images)
    elif isinstance(start, torch.Tensor):
        delta = start.to(images)
        if delta.shape != images.shape or not (delta.abs() <= eps).all():
            raise ValueError(f"a `start` tensor must have the shape of `images` {tuple(images.shape)} and lie in "
                             f"[-eps, eps], got shape {tuple(delta.shape)} and max |value| "
                             f"{delta.abs().max().item() if delta.numel() else 0}")
    elif start is None:
        delta = None
    else:
        raise TypeError(f"`start` must be a torch.Generator, a tensor or None, got {type(start).__name__}")
    if eps == 0:  # the ball is the clean input itself
        return images.detach().clone()
    adversarial = []
    for first in range(0, images.shape[0], batch_size):
        x = images[first:first + batch_size].detach()
        y = labels[first:first + batch_size].long()
        # $x^0 = \operatorname{clip}(x + \delta_0)$
        x_adv = x if delta is None else x + delta[first:first + batch_size]
        x_adv = x_adv.clamp(*clamp) if clamp is not None else x_adv
        for _ in range(steps):
            step = _loss_gradient(probs_fn, x_adv, y).sign()
            with torch.no_grad():
                # $x^{t+1} = \operatorname{clip}(\Pi(x^t + \alpha \operatorname{sign}(\nabla_x \mathcal{L})))$
                x_adv = torch.min(torch.max(x_adv + alpha * step, x - eps), x + eps)
                x_adv = x_adv.clamp(*clamp) if clamp is not None else x_adv
        adversarial.append(x_adv.detach())
    return torch.cat(adversarial)


# ## Rotation

def rotate(image: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate a `[..., H, W]` image tensor counter-clockwise by `angle` degrees about its centre (bilinear,
    same size, zero fill)."""
    # torchvision is imported here, not at the top: importing it costs seconds of CPU in every process
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    return TF.rotate(image, float(angle), interpolation=InterpolationMode.BILINEAR)


class RotationResult(NamedTuple):
    angles: torch.Tensor  # [A] degrees
    images: torch.Tensor  # [A, *image.shape] the rotated inputs
    probs: torch.Tensor  # [A, K] expected probabilities
    u: torch.Tensor  # [A] uncertainty score (the uncertainty mass K / S for an evidential model)


@torch.no_grad()
def rotated_digit(predict_fn: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]],
                  image: torch.Tensor, angles: Sequence[float]) -> RotationResult:
    r"""
    Rotate one digit by each angle and record the predicted probabilities $\hat{p}$ and the uncertainty
    (for EDL, $u = K / S$).

    * `predict_fn`: `x [A, *image.shape] -> (probs [A, K], u [A])`, the model's own prediction.
    * `image`: `[C, H, W]` (e.g. `[1, 28, 28]`) or `[H, W]`, on the model's device.
    * `angles`: degrees, e.g. `np.linspace(0, 180, 19)`.
    """
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(image, dtype=torch.float32)
    if image.ndim not in (2, 3):
        raise ValueError(f"`image` must have shape [C, H, W] or [H, W], got shape {tuple(image.shape)}")
    angles_t = _as_1d(angles, 'angles')
    rotated = torch.stack([rotate(image, a) for a in angles_t.tolist()])
    probs, u = predict_fn(rotated)
    if probs.shape[0] != len(angles_t) or u.shape != (len(angles_t),):
        raise ValueError(f"`predict_fn` returned probs {tuple(probs.shape)} and u {tuple(u.shape)} for "
                         f"{len(angles_t)} rotated images")
    return RotationResult(angles_t, rotated, probs.float(), u.float())


# ## Missing pixels

def missing_masks(n: int, n_pixels: int, fractions: Sequence[float], seed: int) -> Dict[float, torch.Tensor]:
    r"""
    `{fraction f: [n, n_pixels] boolean mask, true = missing}`: each pixel is missing with probability $f$,
    independently. One uniform number $v$ per pixel decides every fraction ($v < f$), so the masks are nested:
    a pixel missing at 0.2 is missing at 0.3. The same `seed` gives the same pixels on every run.
    """
    v = torch.rand(n, n_pixels, generator=torch.Generator().manual_seed(seed))
    return {f: v < f for f in fractions}


def missing_patterns(side: int = 28) -> Dict[str, torch.Tensor]:
    """Structured missing regions: `{name: [side * side]}` boolean masks, true = missing — the four halves and a
    centred square of half the side."""
    half, quarter = side // 2, side // 4
    grid = torch.zeros(side, side, dtype=torch.bool)
    patterns = {name: grid.clone() for name in ('top_half', 'bottom_half', 'left_half', 'right_half', 'centre_square')}
    patterns['top_half'][:half] = True
    patterns['bottom_half'][half:] = True
    patterns['left_half'][:, :half] = True
    patterns['right_half'][:, half:] = True
    patterns['centre_square'][quarter:side - quarter, quarter:side - quarter] = True
    return {name: mask.flatten() for name, mask in patterns.items()}
