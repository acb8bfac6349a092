"""A perturbation defined only here and by one registry entry (tests/test_perturbations.py): Gaussian blur.

Everything about it is in this module: its option (`--blur-samples`), its block of `evaluation.json`, its figure,
its `compare` column and its comparison figure over several runs."""
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.evaluation.perturbations.base import Context, Perturbation, SampleOption, mean_curves

#: Standard deviations of the blur, in pixels (0: the clean images)
SIGMAS = (0.0, 1.0, 2.0)


def blur(images, sigma: float):
    """Gaussian blur of `[N, 1, H, W]` images (kernel of ±3 sigma); sigma 0 returns them unchanged."""
    from torchvision.transforms.functional import gaussian_blur
    if sigma == 0:
        return images
    return gaussian_blur(images, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)


class Blur(Perturbation):
    name = 'blur'
    samples = SampleOption('blur-samples', 500, 'test images blurred')
    figure = ('blur', 'eval_blur.png')
    comparison_figure = 'comparison_blur.png'

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        import torch
        from evidential.data import dataset_spec
        from evidential.prediction import categorical_entropy
        conf, test = ctx.conf, ctx.test
        n = ctx.n_samples(self)
        if n <= 0:
            return None
        spec = dataset_spec(conf.dataset.name)
        pixels = test.images[:n] * spec.std + spec.mean  # blur in pixel space, black background
        accuracy, entropy = [], []
        with torch.inference_mode():
            for sigma in SIGMAS:
                probs = conf.predict(conf.eval_forward((blur(pixels, sigma) - spec.mean) / spec.std)).probs.double()
                accuracy.append((probs.argmax(1) == test.labels[:n]).double().mean().item())
                entropy.append(categorical_entropy(probs).mean().item())
        return {'n_samples': n, 'sigmas': list(SIGMAS), 'accuracy': accuracy, 'mean_entropy': entropy}

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        self.draw_comparison({f'{dataset} test': block}, path)

    def column_names(self) -> List[str]:
        return ['blur/2/accuracy']

    def columns(self, block: Dict[str, Any]) -> Dict[str, Any]:
        return {'blur/2/accuracy': block['accuracy'][block['sigmas'].index(2.0)]}

    def mean_over_seeds(self, blocks: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        return {**blocks[0], 'accuracy': mean_curves([b['accuracy'] for b in blocks])}

    def draw_comparison(self, curves: Dict[str, Dict[str, Any]], path: Path) -> None:
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for label, block in curves.items():
            ax.plot(block['sigmas'], block['accuracy'], marker='o', label=label)
        ax.set_xlabel('blur sigma (pixels)')
        ax.set_ylabel('accuracy')
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        FigureCanvasAgg(fig)
        fig.savefig(path, format='png', dpi=100)


PERTURBATION = Blur()
