r"""
# Figures for the evaluation

Plots only: each takes tensors or numpy arrays plus an output `path`, writes one PNG and returns the path.
The perturbations they show are computed in `evidential/perturbations.py` and run by
`experiments/evaluation/perturbations/`. They use matplotlib's object-oriented API with the Agg canvas (no
`pyplot`, no global backend state, no display needed).

Entropies are in nats, like `evidential.metrics.entropy`.
"""

import io
import math
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from evidential import metrics
from evidential.perturbations import rotate

PathLike = Union[str, Path]
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]

DPI = 120


# ## Helpers

def _np(x, name: str) -> np.ndarray:
    """Tensor / array-like to a numpy array (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a tensor or array-like, got {type(x).__name__}") from e


def _1d(x, name: str, allow_empty: bool = False) -> np.ndarray:
    a = _np(x, name).astype(np.float64)
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {a.shape}")
    if a.size == 0 and not allow_empty:
        raise ValueError(f"`{name}` is empty; at least one value is required")
    return a


def _image2d(img, name: str) -> np.ndarray:
    """`[H, W]` or `[1, H, W]` to `[H, W]` for `imshow`."""
    a = _np(img, name).astype(np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"`{name}` must be a grayscale image of shape [H, W] or [1, H, W], got shape {a.shape}")
    return a


def _save(fig: Figure, path: PathLike) -> Path:
    """Writes the PNG as a new file renamed over `path`: a symbolic link there is replaced, never followed."""
    from configs.checkpoint import atomic_write_bytes
    path = Path(path)
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()), sync=False)
    return path


# ## Plots

def reliability_diagram(probs: ArrayLike, labels: ArrayLike, path: PathLike, *,
                        n_bins: int = 15, title: Optional[str] = None, few: int = 30) -> Path:
    """Reliability diagram: per confidence bin, accuracy (bars) against the diagonal of perfect calibration,
    the gap between accuracy and confidence hatched in red (above the bar where the model is over-confident,
    inside it where it is under-confident), each bin's sample count above it, bins of fewer than `few` samples
    pale, and the share of samples per bin underneath. Bins and ECE are those of `evidential.metrics`."""
    probs_t = torch.as_tensor(_np(probs, "probs"))
    labels_t = torch.as_tensor(_np(labels, "labels"))
    bins = {k: v.cpu().numpy() for k, v in metrics.calibration_bins(probs_t, labels_t, n_bins).items()}
    ece = metrics.ece(probs_t, labels_t, n_bins)
    edges, width = bins["edges"], 1.0 / n_bins
    centers = edges[:-1] + width / 2
    count = bins["count"]
    filled, sparse = count >= few, (count > 0) & (count < few)
    acc, conf = bins["accuracy"], bins["confidence"]

    fig = Figure(figsize=(5, 6))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[filled], acc[filled], width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(centers[sparse], acc[sparse], width=width, edgecolor="black", color="tab:blue", alpha=0.3,
           label=f"accuracy, fewer than {few} samples")
    # the gap as red hatching without a fill, so that it looks the same over the bar, above it and in the legend
    shown = count > 0
    low, high = np.minimum(acc, conf)[shown], np.maximum(acc, conf)[shown]
    ax.bar(centers[shown], high - low, bottom=low, width=width, facecolor="none", edgecolor="tab:red",
           hatch="///", linewidth=0, label="gap to confidence")
    for x, n, top in zip(centers[shown], count[shown], high):
        ax.text(x, min(top + 0.02, 0.97), f"{int(n)}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"Reliability diagram (ECE = {ece:.4f}, {n_bins} bins)\n"
                          "above each bin: its number of samples", fontsize=10)
    ax_count.bar(centers, count / count.sum(), width=width, edgecolor="black", color="grey")
    ax_count.set_xlabel(r"confidence $\max_k \hat{p}_k$")
    ax_count.set_ylabel("share of samples")
    return _save(fig, path)


def score_histograms(correct: ArrayLike, wrong: ArrayLike, ood: Mapping[str, ArrayLike], path: PathLike, *,
                     name: str = "u", limits: Optional[Tuple[float, float]] = (0.0, 1.0), bins: int = 30,
                     title: Optional[str] = None) -> Path:
    """Histograms of an uncertainty score (higher = less certain) for correctly and wrongly classified test
    samples and for each OOD set (`ood = {set name: scores}`), on shared bins over `limits` (`None`: the range of
    the values): densities on a linear axis (left) and on a log axis (right), where the few wrong predictions and
    the tails are not flattened. Empty groups (e.g. no wrong predictions) are skipped."""
    groups = {"correct": _1d(correct, "correct", allow_empty=True),
              "wrong": _1d(wrong, "wrong", allow_empty=True)}
    for set_name, values in ood.items():
        groups[f"OOD: {set_name}"] = _1d(values, f"ood[{set_name!r}]", allow_empty=True)
    if all(g.size == 0 for g in groups.values()):
        raise ValueError("all groups of scores are empty; nothing to plot")
    if limits is None:
        every = np.concatenate([g[np.isfinite(g)] for g in groups.values()])
        limits = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    lo, hi = limits
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, scale in zip(axes, ("linear", "log")):
        for group, values in groups.items():
            if values.size:
                ax.hist(np.clip(values, lo, hi), bins=edges, density=True, histtype="step", linewidth=1.8,
                        label=f"{group} (n={values.size})")
        ax.set_xlim(lo, hi)
        ax.set_yscale(scale)
        ax.set_xlabel(name)
        ax.set_ylabel("density" + (" (log scale)" if scale == "log" else ""))
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"{name} for right and wrong predictions and out-of-distribution sets")
    return _save(fig, path)


def uncertainty_histograms(u_correct: ArrayLike, u_wrong: ArrayLike, ood: Mapping[str, ArrayLike],
                           path: PathLike, *, bins: int = 30, title: str = "Uncertainty mass u = K / S") -> Path:
    """`score_histograms` of the uncertainty mass $u = K / S$, on $[0, 1]$."""
    return score_histograms(u_correct, u_wrong, ood, path, name="u", limits=(0.0, 1.0), bins=bins, title=title)


def entropy_cdf(entropies: Mapping[str, ArrayLike], path: PathLike, *,
                num_classes: Optional[int] = None, title: str = "Entropy CDF on out-of-distribution samples") -> Path:
    r"""EDL paper, Fig. 2: empirical CDF $F(h) = \frac{1}{N}|\{i : H(\hat{p}_i) \le h\}|$
    of the predictive entropy over OOD samples, one curve per `entropies` entry
    (`{model or set name: [N] entropies}`). Curves further to the bottom-right
    (more mass near the maximum entropy $\log K$) are better for OOD data.
    With `num_classes`, the x-axis spans $[0, \log K]$."""
    if not entropies:
        raise ValueError("`entropies` must be a non-empty dict {name: [N] entropies}")
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, h in entropies.items():
        h = np.sort(_1d(h, f"entropies[{name!r}]"))
        cdf = np.arange(1, h.size + 1) / h.size
        ax.step(np.concatenate([[0.0], h]), np.concatenate([[0.0], cdf]), where="post", label=name)
    if num_classes is not None:
        ax.set_xlim(0, math.log(num_classes))
        ax.axvline(math.log(num_classes), color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("entropy (nats)")
    ax.set_ylabel("empirical CDF")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return _save(fig, path)


def rotation_plot(angles: ArrayLike, probs: ArrayLike, u: ArrayLike, image: ArrayLike, path: PathLike, *,
                  min_prob: float = 0.1, n_thumbnails: int = 10) -> Path:
    r"""EDL paper, Fig. 3: $\hat{p}_k$ per rotation angle for every class whose
    probability exceeds `min_prob` at some angle (others are drawn thin and grey),
    and the uncertainty $u$ (dashed, black); the rotated digit is shown above.

    * `angles`: `[A]` degrees; `probs`: `[A, K]`; `u`: `[A]`;
    * `image`: the un-rotated digit, `[H, W]` or `[1, H, W]`."""
    angles_a = _1d(angles, "angles")
    probs_a = _np(probs, "probs").astype(np.float64)
    u_a = _1d(u, "u")
    if probs_a.ndim != 2 or probs_a.shape[0] != angles_a.size or u_a.size != angles_a.size:
        raise ValueError(f"need `probs` [A, K] and `u` [A] for A = {angles_a.size} angles, "
                         f"got probs {probs_a.shape} and u {u_a.shape}")
    img = torch.as_tensor(_image2d(image, "image"), dtype=torch.float32)[None]
    n_thumbs = max(1, min(n_thumbnails, angles_a.size))
    thumb_angles = angles_a[np.linspace(0, angles_a.size - 1, n_thumbs).round().astype(int)]

    fig = Figure(figsize=(max(6, 0.8 * n_thumbs), 5))
    grid = fig.add_gridspec(2, n_thumbs, height_ratios=[1, 4], hspace=0.15)
    for j, a in enumerate(thumb_angles):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(rotate(img, float(a))[0].numpy(), cmap="gray")
        ax.set_title(f"{a:.0f}°", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    for k in range(probs_a.shape[1]):
        if probs_a[:, k].max() >= min_prob:
            ax.plot(angles_a, probs_a[:, k], marker="o", markersize=3, label=f"class {k}")
        else:
            ax.plot(angles_a, probs_a[:, k], color="lightgrey", linewidth=0.8)
    ax.plot(angles_a, u_a, "k--", linewidth=2, label="u")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(angles_a.min(), angles_a.max())
    ax.set_xlabel("rotation angle (degrees)")
    ax.set_ylabel("probability / uncertainty")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def fgsm_plot(eps: ArrayLike, accuracy: ArrayLike, mean_entropy: ArrayLike, path: PathLike, *,
              num_classes: Optional[int] = None, label: Optional[str] = None) -> Path:
    r"""EDL paper, Fig. 4: accuracy (left) and mean predictive entropy (right)
    against the FGSM step size $\epsilon$. With `num_classes`, the entropy axis
    goes up to $\log K$."""
    eps_a, acc_a, ent_a = _1d(eps, "eps"), _1d(accuracy, "accuracy"), _1d(mean_entropy, "mean_entropy")
    if not (eps_a.size == acc_a.size == ent_a.size):
        raise ValueError(f"`eps`, `accuracy` and `mean_entropy` must have the same length, "
                         f"got {eps_a.size}, {acc_a.size}, {ent_a.size}")
    fig = Figure(figsize=(9, 3.5))
    ax_acc, ax_ent = fig.subplots(1, 2)
    ax_acc.plot(eps_a, acc_a, marker="o", label=label)
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel(r"$\epsilon$")
    ax_acc.set_ylabel("accuracy")
    ax_ent.plot(eps_a, ent_a, marker="o", label=label)
    ax_ent.set_ylim(0, math.log(num_classes) * 1.02 if num_classes else None)
    ax_ent.set_xlabel(r"$\epsilon$")
    ax_ent.set_ylabel("mean entropy (nats)")
    if label:
        ax_acc.legend()
    fig.suptitle("FGSM adversarial examples")
    return _save(fig, path)


def pgd_plot(curves: Mapping[str, Mapping], path: PathLike) -> Path:
    r"""Accuracy (left) and the AUROC of the primary score separating attacked from clean images (right) against
    $\epsilon$, under FGSM (dotted), PGD-10 (dashed) and PGD-40 (solid), for one run or several (one colour each):
    `curves` is `{label: the pgd block of an evaluation.json}` (`eps`, `score`, `attacks`)."""
    from matplotlib.lines import Line2D
    if not curves:
        raise ValueError("`curves` is empty")
    fig = Figure(figsize=(11, 3.8))
    ax_acc, ax_auc = fig.subplots(1, 2)
    styles = {1: ':', 10: '--', 40: '-'}  # by the number of steps
    scores = list(dict.fromkeys(block['score'] for block in curves.values()))
    attacks = {}
    for i, (label, block) in enumerate(curves.items()):
        for attack in block['attacks'].values():
            style = attacks.setdefault(attack['name'], styles.get(attack['steps'], '-.'))
            ax_acc.plot(block['eps'], attack['accuracy'], style, marker='o', ms=3, color=f'C{i}')
            ax_auc.plot(block['eps'], attack['auroc'][block['score']], style, marker='o', ms=3, color=f'C{i}')
    ax_auc.axhline(0.5, color='grey', lw=0.8)  # chance: the score does not tell them apart
    auroc = f"AUROC of {scores[0]}" if len(scores) == 1 else 'AUROC of the primary score'
    for ax, name in ((ax_acc, 'accuracy'), (ax_auc, f'{auroc}, attacked vs clean')):
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(r'$\epsilon$ (pixel intensity, images in [0, 1])')
        ax.set_ylabel(name)
    ax_acc.legend([Line2D([], [], color='black', linestyle=s) for s in attacks.values()], list(attacks), fontsize=8)
    runs = [label + (f" (AUROC of {block['score']})" if len(scores) > 1 else '') for label, block in curves.items()]
    fig.legend([Line2D([], [], color=f'C{i}') for i in range(len(runs))], runs, loc='upper center',
               bbox_to_anchor=(0.5, 0.0), fontsize=8)
    n = next(iter(curves.values()))['n_samples']
    fig.suptitle(f"PGD (random start, 10 and 40 steps) and FGSM (first {n:,} test images)")
    return _save(fig, path)


def missing_pixels_plot(curves: Mapping[str, Mapping], path: PathLike, *, num_classes: Optional[int] = None) -> Path:
    """cirkit's tutorial figure, for one run or several: accuracy (left) and mean predictive entropy (middle)
    against the fraction of uniformly random missing pixels, and accuracy per structured pattern (right).

    `curves`: `{label: the missing_pixels block of an evaluation.json}` (`fractions`, `accuracy`,
    `mean_score['entropy']`, `patterns`, `missing_pixels`: how the run treated them)."""
    if not curves:
        raise ValueError("`curves` is empty")
    fig = Figure(figsize=(13, 3.8))
    ax_acc, ax_ent, ax_pat = fig.subplots(1, 3)
    names = list(next(iter(curves.values()))['patterns'])
    width = 0.8 / len(curves)
    for i, (label, block) in enumerate(curves.items()):
        how = 'integrated out' if block['missing_pixels'].startswith('integrated') else 'filled with black'
        line, = ax_acc.plot(block['fractions'], block['accuracy'], marker='o', label=f'{label} ({how})')
        ax_ent.plot(block['fractions'], block['mean_score']['entropy'], marker='o', color=line.get_color())
        ax_pat.bar(np.arange(len(names)) + (i - (len(curves) - 1) / 2) * width,
                   [block['patterns'][n]['accuracy'] for n in names], width, color=line.get_color())
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel('fraction of pixels missing (uniformly random)')
    ax_acc.set_ylabel('accuracy')
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc='upper center', bbox_to_anchor=(0.5, 0.0), fontsize=8)
    ax_ent.set_ylim(0, math.log(num_classes) * 1.02 if num_classes else None)
    ax_ent.set_xlabel('fraction of pixels missing (uniformly random)')
    ax_ent.set_ylabel('mean entropy (nats)')
    ax_pat.set_xticks(np.arange(len(names)), [n.replace('_', ' ') for n in names], rotation=20, fontsize=8)
    ax_pat.set_ylim(0, 1.02)
    ax_pat.set_ylabel('accuracy')
    n = next(iter(curves.values()))['n_samples']
    fig.suptitle(f"Missing pixels (first {n:,} test images)")
    return _save(fig, path)


def one_per_class(order: ArrayLike, classes: ArrayLike, k: int) -> List[int]:
    """The first `k` indices of `order` whose `classes` differ (one per class, in order); where there are fewer
    than `k` classes, the next indices of `order` fill up."""
    order_a, classes_a = _np(order, "order").astype(int), _np(classes, "classes").astype(int)
    picked, seen = [], set()
    for i in order_a:
        if classes_a[i] not in seen:
            seen.add(classes_a[i])
            picked.append(int(i))
            if len(picked) == k:
                return picked
    rest = [int(i) for i in order_a if int(i) not in set(picked)]
    return picked + rest[:k - len(picked)]


def extreme_uncertainty_grid(images: ArrayLike, u: ArrayLike, evidence: ArrayLike, labels: ArrayLike,
                             preds: ArrayLike, path: PathLike, *, k: int = 8) -> Path:
    """The test images with the lowest $u$ (top two rows: the most certain image of each of `k` predicted
    classes, so that they are not eight of one digit) and the `k` with the highest (bottom two rows): each image
    titled with true label, prediction and $u$ (red: a wrong prediction), above a bar chart of its per-class
    evidence on one scale per row (true class green, predicted class red where wrong, others grey).

    * `images`: `[N, H, W]` or `[N, 1, H, W]`; `u`: `[N]`; `evidence`: `[N, K]`;
      `labels`, `preds`: `[N]` integers."""
    imgs = _np(images, "images").astype(np.float64)
    if imgs.ndim == 4 and imgs.shape[1] == 1:
        imgs = imgs[:, 0]
    if imgs.ndim != 3:
        raise ValueError(f"`images` must have shape [N, H, W] or [N, 1, H, W], got {imgs.shape}")
    u_a = _1d(u, "u")
    ev = _np(evidence, "evidence").astype(np.float64)
    lab = _np(labels, "labels").astype(int)
    pred = _np(preds, "preds").astype(int)
    n = imgs.shape[0]
    if u_a.size != n or ev.ndim != 2 or ev.shape[0] != n or lab.shape != (n,) or pred.shape != (n,):
        raise ValueError(f"need u [N], evidence [N, K], labels [N], preds [N] for N = {n} images; got "
                         f"u {u_a.shape}, evidence {ev.shape}, labels {lab.shape}, preds {pred.shape}")
    k = max(1, min(k, n))
    order = np.argsort(u_a, kind="stable")
    groups = [("lowest u,\none per class", one_per_class(order, pred, k)), ("highest u", list(order[::-1][:k]))]
    n_classes = ev.shape[1]

    fig = Figure(figsize=(1.6 * k, 8))
    axes = fig.subplots(4, k, squeeze=False,
                        gridspec_kw={"height_ratios": [1.2, 0.8, 1.2, 0.8], "hspace": 0.55, "wspace": 0.15})
    for g, (group_name, idx) in enumerate(groups):
        top = max([ev[i].max() for i in idx] + [1e-12])
        for j in range(k):
            ax_img, ax_ev = axes[2 * g, j], axes[2 * g + 1, j]
            if j >= len(idx):
                ax_img.axis("off")
                ax_ev.axis("off")
                continue
            i = idx[j]
            ax_img.imshow(imgs[i], cmap="gray")
            ax_img.set_title(f"y={lab[i]} ŷ={pred[i]}\nu={u_a[i]:.2f}", fontsize=8,
                             color="black" if lab[i] == pred[i] else "red")
            ax_img.axis("off")
            colors = ["tab:grey"] * n_classes
            if 0 <= pred[i] < n_classes:
                colors[pred[i]] = "tab:red"
            if 0 <= lab[i] < n_classes:
                colors[lab[i]] = "tab:green"
            ax_ev.bar(np.arange(n_classes), ev[i], color=colors)
            ax_ev.set_ylim(0, top * 1.05)  # one scale per row
            ax_ev.set_xticks(np.arange(n_classes))
            ax_ev.tick_params(labelsize=6)
            if j == 0:
                ax_ev.set_ylabel("evidence", fontsize=8)
                ax_ev.yaxis.set_major_formatter(_compact_number)
                ax_img.text(-0.45, 0.5, group_name, transform=ax_img.transAxes, rotation=90,
                            va="center", ha="center", fontsize=9)
            else:
                ax_ev.set_yticklabels([])
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(color="tab:green", label="evidence for the true class"),
                        Patch(color="tab:red", label="for the predicted class, where wrong (red title)"),
                        Patch(color="tab:grey", label="for the other classes")],
               loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0.0))
    return _save(fig, path)


def _compact_number(value, _position=None) -> str:
    """Axis labels such as 150k, 2.5M and 0.3."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"
