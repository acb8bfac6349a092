"""FGSM (EDL paper, Fig. 4): accuracy and mean predictive entropy as the attack's step grows."""
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from configs.registry import Capabilities
from experiments.evaluation.perturbations.base import Context, Perturbation, SampleOption

#: Step sizes in pixel units (images in [0, 1]), as in the EDL paper's Fig. 4
EPS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())


class FGSM(Perturbation):
    name = 'fgsm'
    samples = SampleOption('fgsm-samples', 2000, 'test images attacked by FGSM')
    figure = ('fgsm', 'eval_fgsm.png')

    def skip_reason(self, capabilities: Capabilities) -> Optional[str]:
        if not capabilities.input_gradients:
            return 'FGSM sweep skipped: the model is not differentiable in its input'
        return None

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        """The attack on the prediction itself (MC dropout: T sampled passes; ensembles: every member). Inputs are
        normalized, so the pixel step eps is eps / std and the valid pixel range [0, 1] is
        [(0 - mean) / std, (1 - mean) / std]."""
        from evidential.data import dataset_spec
        from evidential.perturbations import fgsm
        conf, test = ctx.conf, ctx.test
        spec = dataset_spec(conf.dataset.name)
        n = ctx.n_samples(self)
        if n <= 0:
            return None
        result = fgsm(lambda x: conf.predict(conf.eval_forward(x)).probs,
                      test.images[:n], test.labels[:n], [e / spec.std for e in EPS],
                      clamp=((0 - spec.mean) / spec.std, (1 - spec.mean) / spec.std),
                      batch_size=conf.valid_batch_size)
        return {'eps': list(EPS), 'eps_units': 'pixel intensity, images in [0, 1]',
                'n_samples': n, 'accuracy': result.accuracy.tolist(), 'mean_entropy': result.mean_entropy.tolist()}

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        from experiments.figures import fgsm_plot
        fgsm_plot(block['eps'], block['accuracy'], block['mean_entropy'], path, num_classes=num_classes,
                  label=f"{dataset} test, first {block['n_samples']}")


PERTURBATION = FGSM()
