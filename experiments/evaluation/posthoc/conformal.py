"""Split conformal prediction sets (`evidential.conformal`): calibrated on the held-out split, judged on the test
set, for the LAC, APS and RAPS scores of the family's p̂ at several α; the APS set size as an uncertainty score for
misclassification and OOD detection."""
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from experiments.evaluation.posthoc.base import Context, PostHoc

#: The non-conformity scores, in block order
SCORES = ('lac', 'aps', 'raps')
#: Miscoverage levels α (keys `'0.01'`, ... of each score's block)
ALPHAS = (0.01, 0.05, 0.1)
#: RAPS's λ and k_reg (Angelopoulos et al. 2021): a set beyond its top class pays 0.1 per extra class
RAPS_PENALTY, RAPS_KREG = 0.1, 1
#: The set whose size is reported as an uncertainty score: APS at α = 0.05
SIZE_SCORE, SIZE_ALPHA = 'aps', 0.05
#: Seed of the draws u of APS and RAPS: one generator, drawn in order for the held-out split, the test set and
#: each OOD set (`Context.ood_arrays` order), so a rerun gives the same sets
SEED = 0


def _key(alpha: float) -> str:
    return f'{alpha:g}'


class Conformal(PostHoc):
    name = 'conformal'

    def skip_reason(self, ctx: Context) -> Optional[str]:
        if not ctx.has_holdout:
            return 'conformal prediction skipped: the run has no held-out split'
        return None

    def run(self, ctx: Context) -> Dict[str, Any]:
        from evidential import conformal, metrics
        generator = torch.Generator().manual_seed(SEED)

        def draws(arrays) -> torch.Tensor:
            return torch.rand(len(arrays['probs']), generator=generator, dtype=torch.float64)

        def all_scores(arrays, u) -> Dict[str, torch.Tensor]:
            probs = torch.from_numpy(np.asarray(arrays['probs']))
            return {'lac': conformal.lac_scores(probs), 'aps': conformal.aps_scores(probs, u),
                    'raps': conformal.raps_scores(probs, u, RAPS_PENALTY, RAPS_KREG)}

        # calibrate on the held-out split; the test labels are read only once every q̂ is fixed
        valid = all_scores(ctx.valid_arrays, draws(ctx.valid_arrays))
        q_hat = {s: {a: conformal.conformal_quantile(conformal.true_label_scores(valid[s], ctx.valid_labels), a)
                     for a in ALPHAS} for s in SCORES}
        test = all_scores(ctx.test_arrays, draws(ctx.test_arrays))
        ood = {name: all_scores(arrays, draws(arrays)) for name, arrays in ctx.ood_arrays.items()}

        sets: Dict[str, Dict[str, Any]] = {}
        for s in SCORES:
            sets[s] = {}
            for a in ALPHAS:
                q = q_hat[s][a]
                summary = conformal.set_summary(conformal.prediction_sets(test[s], q), ctx.test_labels)
                # q̂ = ∞ (too few held-out images for this α: every set is all classes) is written as null
                sets[s][_key(a)] = {'q_hat': q if np.isfinite(q) else None, **summary}

        # |C(x)| of APS at α = 0.05 as an uncertainty score: larger set = less certain
        q = q_hat[SIZE_SCORE][SIZE_ALPHA]
        size = conformal.prediction_sets(test[SIZE_SCORE], q).sum(1).double()
        errors = metrics.misclassified(torch.from_numpy(np.asarray(ctx.test_arrays['probs'])),
                                       torch.from_numpy(np.asarray(ctx.test_labels)))
        n_errors = int(errors.sum())
        ood_sizes = {name: {'set_size': conformal.prediction_sets(scores[SIZE_SCORE], q).sum(1).double()}
                     for name, scores in ood.items()}
        set_size = {'score': SIZE_SCORE, 'alpha': SIZE_ALPHA,
                    'misclassification_auroc': (metrics.misclassification_auroc(size, errors)
                                                if 0 < n_errors < len(errors) else None),
                    'ood': {name: v['set_size'] for name, v in
                            metrics.ood_summary({'set_size': size}, ood_sizes).items()} if ood_sizes else {}}
        if ood_sizes:
            set_size['ood_mean_size'] = {name: v['set_size'].mean().item() for name, v in ood_sizes.items()}
        return {'fitted_on': f'held-out split ({len(ctx.valid_labels)} images)',
                'alphas': list(ALPHAS), 'randomised': {'lac': False, 'aps': True, 'raps': True}, 'seed': SEED,
                'raps_penalty': RAPS_PENALTY, 'raps_kreg': RAPS_KREG, 'sets': sets, 'set_size': set_size}

    def column_names(self) -> List[str]:
        return ['conformal/aps/0.05/coverage', 'conformal/aps/0.05/size']

    def columns(self, block: Dict[str, Any]) -> Dict[str, Any]:
        aps = block['sets']['aps']['0.05']
        return {'conformal/aps/0.05/coverage': aps['coverage'], 'conformal/aps/0.05/size': aps['mean_size']}

    def direction(self, column: str) -> Optional[str]:
        # the coverage is best at 1 − α, neither higher nor lower: never bold; at that coverage, smaller sets are
        # more informative
        return {'conformal/aps/0.05/size': 'min'}.get(column)


POSTHOC = Conformal()
