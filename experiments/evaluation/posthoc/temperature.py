"""Temperature scaling (Guo et al., ICML 2017): one temperature T fitted on the held-out split
(`evidential.calibration`), the test set's metrics before and after, and the reliability diagram after."""
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from experiments.evaluation.posthoc.base import Context, PostHoc, as_tensor

#: The metrics of the `raw` block (accuracy is the same before and after: it is only in `scaled`)
RAW = ('nll', 'brier', 'ece', 'aurc')


class Temperature(PostHoc):
    name = 'temperature'
    figure = ('reliability_scaled', 'eval_reliability_scaled.png')

    def skip_reason(self, ctx: Context) -> Optional[str]:
        if not ctx.has_holdout:
            return 'temperature scaling skipped: the run has no held-out split'
        return None

    def run(self, ctx: Context) -> Dict[str, Any]:
        from evidential import metrics
        from evidential.calibration import T_BOUNDS, fit_temperature, scale
        from experiments.evaluation.predictions import scores_of_arrays
        # fit on the held-out split only: the test labels are not read before T is fixed
        temperature = fit_temperature(as_tensor(ctx.valid_arrays['probs']), as_tensor(ctx.valid_labels))
        probs, scores = scores_of_arrays(ctx.test_arrays, ctx.primary)
        labels = as_tensor(ctx.test_labels)
        scaled = scale(probs, temperature)
        # the scores that are functions of p̂ (entropy, 1 − max p̂) change with it; the family's own (u, mutual
        # information, −log p(x)) are not functions of p̂ alone and stay as they are
        scaled_scores = {**scores, 'entropy': metrics.entropy(scaled), 'msp': metrics.max_prob_score(scaled)}
        errors = metrics.misclassified(probs, labels)
        raw = {'nll': metrics.nll(probs, labels), 'brier': metrics.brier(probs, labels),
               'ece': metrics.ece(probs, labels), 'aurc': metrics.aurc(scores[ctx.primary], errors)}
        after = {'accuracy': metrics.accuracy(scaled, labels), 'nll': metrics.nll(scaled, labels),
                 'brier': metrics.brier(scaled, labels), 'ece': metrics.ece(scaled, labels),
                 'aurc': metrics.aurc(scaled_scores[ctx.primary], metrics.misclassified(scaled, labels))}
        return {'temperature': temperature, 'bounds': list(T_BOUNDS),
                'fitted_on': f'held-out split ({len(ctx.valid_labels)} images)',
                'aurc_score': ctx.primary, 'raw': raw, 'scaled': after,
                '_probs': scaled.float().numpy()}

    def draw(self, block: Dict[str, Any], path: Path, labels: np.ndarray) -> None:
        from experiments.figures import reliability_diagram
        reliability_diagram(block['_probs'], labels, path,
                            title=f"After temperature scaling, T = {block['temperature']:.3g} "
                                  f"(ECE = {block['scaled']['ece']:.4f}, 15 bins)\n"
                                  "above each bin: its number of samples")

    def column_names(self) -> List[str]:
        return ['temperature/T', 'temperature/nll', 'temperature/ece']

    def columns(self, block: Dict[str, Any]) -> Dict[str, Any]:
        return {'temperature/T': block['temperature'], 'temperature/nll': block['scaled']['nll'],
                'temperature/ece': block['scaled']['ece']}

    def direction(self, column: str) -> Optional[str]:
        # T itself is no better for being larger or smaller; the scaled NLL and ECE are lower-is-better
        return {'temperature/nll': 'min', 'temperature/ece': 'min'}.get(column)


POSTHOC = Temperature()
