"""Rotated digit (EDL paper, Fig. 3): a test "1" rotated from 0 to 180 degrees, its p̂ and uncertainty mass u."""
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from configs.registry import Capabilities
from experiments.evaluation.perturbations.base import Context, Perturbation

#: Rotation angles in degrees
ANGLES = tuple(np.linspace(0.0, 180.0, 19).tolist())
#: The digit the paper rotates
DIGIT = 1


class Rotation(Perturbation):
    name = 'rotation'
    figure = ('rotated_digit', 'eval_rotated_digit.png')

    def skip_reason(self, capabilities: Capabilities) -> Optional[str]:
        if not capabilities.dirichlet:
            return 'rotated-digit figure skipped: the model gives no evidence'
        return None

    def run(self, ctx: Context) -> Dict[str, Any]:
        """Rotates in pixel space (zero = black background) and normalizes for the model; the first test image of
        class `DIGIT` (or the first image)."""
        from evidential.data import dataset_spec
        from evidential.perturbations import rotated_digit
        conf, test = ctx.conf, ctx.test
        spec = dataset_spec(conf.dataset.name)
        candidates = (test.labels == DIGIT).nonzero().flatten()
        index = int(candidates[0]) if len(candidates) else 0
        image = test.images[index] * spec.std + spec.mean  # back to [0, 1]

        def predict_fn(x):
            pred = conf.predict(conf.model((x - spec.mean) / spec.std))
            return pred.probs, pred.scores['u']

        rot = rotated_digit(predict_fn, image, ANGLES)
        return {'test_index': index, 'label': int(test.labels[index]),
                'prediction_unrotated': int(ctx.preds[index]),
                'angles': rot.angles.tolist(), 'probs': rot.probs.cpu().tolist(), 'u': rot.u.cpu().tolist(),
                '_image': image.cpu()}

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        from experiments.figures import rotation_plot
        rotation_plot(block['angles'], block['probs'], block['u'], block['_image'], path)


PERTURBATION = Rotation()
