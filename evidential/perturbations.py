r"""
# Perturbations of the test inputs, as tensor math

How does a prediction change when the input is not like the training data? Each function here perturbs
images and records what a model says about them; the model enters only as a plain callable, so this module
knows nothing of families, runs or figures:

* `fgsm`: the fast gradient sign method (Goodfellow et al., 2015) at several step sizes (EDL paper, Fig. 4);
* `rotated_digit`: one digit rotated through a range of angles (EDL paper, Fig. 3);
* `missing_masks`, `missing_patterns`: which pixels are unknown, uniformly at random or in blocks (cirkit's
  missing-pixel tutorial).

`experiments/evaluation/perturbations/` runs them on a trained run and writes their results and figures.
Entropies are in nats (`evidential.prediction.categorical_entropy`).
"""
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

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
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"`images` ({images.shape[0]}) and `labels` ({labels.shape[0]}) must have the same, "
                         f"non-zero number of samples")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    correct = torch.zeros(len(eps), dtype=torch.float64)
    entropy_sum = torch.zeros(len(eps), dtype=torch.float64)
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].detach().clone().requires_grad_(True)
        y = labels[start:start + batch_size].long()
        with torch.enable_grad():
            p = probs_fn(x)
            # $\mathcal{L} = -\sum_i \log \hat{p}_{y_i}(x_i)$
            loss = -p.gather(1, y[:, None]).clamp_min(NLL_EPS).log().sum()
            grad, = torch.autograd.grad(loss, x)
        # $\operatorname{sign}(\nabla_x \mathcal{L})$
        step = grad.sign()
        with torch.no_grad():
            for j, e in enumerate(eps.tolist()):
                x_adv = x.detach() + e * step
                if clamp is not None:
                    x_adv = x_adv.clamp(*clamp)
                p_adv = probs_fn(x_adv).double()
                correct[j] += (p_adv.argmax(dim=1) == y).sum().item()
                entropy_sum[j] += categorical_entropy(p_adv).sum().item()
    n = images.shape[0]
    return FGSMResult(eps, correct / n, entropy_sum / n)


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
