"""FGSM (EDL paper, Fig. 4): accuracy and mean predictive entropy as the attack's step grows."""
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from configs.registry import Capabilities
from experiments.evaluation.perturbations.base import Context, Perturbation, SampleOption

#: Step sizes in pixel units (images in [0, 1]), as in the EDL paper's Fig. 4
EPS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())


class GradientAttack(Perturbation):
    """An attack along the gradient of the loss in the input (FGSM, PGD): what it needs of the family and of
    the run's input space."""
    #: Its name in the note of the families it skips
    attack: str = ''

    def skip_reason(self, capabilities: Capabilities) -> Optional[str]:
        if not capabilities.input_gradients:
            return f'{self.attack} sweep skipped: the model is not differentiable in its input'
        return None

    @staticmethod
    def input_space(conf) -> Tuple[float, Tuple[float, float]]:
        """`(std, (lo, hi))`: inputs are normalized, so the pixel step eps is eps / std and the valid pixel range
        [0, 1] is [(0 - mean) / std, (1 - mean) / std]."""
        from evidential.data import dataset_spec
        spec = dataset_spec(conf.dataset.name)
        return spec.std, ((0 - spec.mean) / spec.std, (1 - spec.mean) / spec.std)

    @staticmethod
    def attacked_probs(conf) -> Callable:
        """The prediction itself, the attacks' target (MC dropout: T sampled passes; ensembles: every member)."""
        return lambda x: conf.predict(conf.eval_forward(x)).probs


class FGSM(GradientAttack):
    name = 'fgsm'
    attack = 'FGSM'
    samples = SampleOption('fgsm-samples', 2000, 'test images attacked by FGSM')
    figure = ('fgsm', 'eval_fgsm.png')

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        """The attack on the prediction itself, in the run's normalized input space (`input_space`)."""
        from evidential.perturbations import fgsm
        conf, test = ctx.conf, ctx.test
        std, clamp = self.input_space(conf)
        n = ctx.n_samples(self)
        if n <= 0:
            return None
        result = fgsm(self.attacked_probs(conf), test.images[:n], test.labels[:n], [e / std for e in EPS],
                      clamp=clamp, batch_size=conf.valid_batch_size)
        return {'eps': list(EPS), 'eps_units': 'pixel intensity, images in [0, 1]',
                'n_samples': n, 'accuracy': result.accuracy.tolist(), 'mean_entropy': result.mean_entropy.tolist()}

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        from experiments.figures import fgsm_plot
        fgsm_plot(block['eps'], block['accuracy'], block['mean_entropy'], path, num_classes=num_classes,
                  label=f"{dataset} test, first {block['n_samples']}")


PERTURBATION = FGSM()
