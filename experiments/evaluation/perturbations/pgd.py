"""
PGD (Madry et al., 2018) beside FGSM: accuracy under the attack, and how well each score of the family tells the
adversarial images from the clean ones.

Kopetzki et al. (ICML 2021) found that Dirichlet uncertainty flags FGSM's adversarial images but not those of PGD,
the iterated, randomly started FGSM. This plug-in measures both on the same first `--pgd-samples` test images,
over FGSM's grid of ε (pixel units): FGSM, and PGD with 10 and with 40 steps of α = 2.5 ε / steps (together more
than the ball's diameter 2 ε: they reach any point of it from any start), each PGD from a uniform random start in
the ball (seeded: the same uniform draw for every ε and step count, scaled by ε). All three maximise the loss FGSM
maximises, the negative log-likelihood of the prediction itself (`evidential.perturbations.pgd`), in the run's
normalized input space and the pixel range [0, 1].

The AUROC of a score separates the attacked images (positive) from the same images clean (negative), every
attacked image counted, the label flipped or not. `compare` reads PGD-40 at ε = 0.1.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional

from experiments.evaluation.perturbations.base import Context, SampleOption, mean_curves
from experiments.evaluation.perturbations.fgsm import EPS, GradientAttack

#: The attacks, `{key: (name, steps)}`: FGSM is one step of α = ε from the clean image, PGD starts at random in
#: the ball
ATTACKS = {'fgsm': ('FGSM', 1), 'pgd10': ('PGD-10', 10), 'pgd40': ('PGD-40', 40)}
#: Seed of PGD's random start: the same for every run, so that every family starts from the same points
SEED = 0
#: The ε (pixel units) and the attack of the `compare` columns (`pgd/0.1/accuracy`, `pgd/0.1/auroc`)
COLUMN_EPS = 0.1
COLUMN_ATTACK = 'pgd40'


def _predict(conf, images, primary: str):
    """`(probs, {score: [N]})` of the prediction of `images` (CPU tensors), in the run's evaluation batches."""
    import torch
    from experiments.evaluation.predictions import all_scores
    probs, own = [], []
    with torch.no_grad():
        for start in range(0, len(images), conf.valid_batch_size):
            pred = conf.predict(conf.eval_forward(images[start:start + conf.valid_batch_size]))
            probs.append(pred.probs.float().cpu())
            own.append({k: v.float().cpu() for k, v in pred.scores.items()})
    p = torch.cat(probs)
    return p, all_scores(p, {k: torch.cat([o[k] for o in own]) for k in own[0]}, primary)


class PGD(GradientAttack):
    name = 'pgd'
    attack = 'PGD'
    samples = SampleOption('pgd-samples', 20, 'test images attacked by PGD (10 and 40 steps, 11 values of ε) '
                                              'and, for reference, by FGSM')
    figure = ('pgd', 'eval_pgd.png')
    comparison_figure = 'comparison_pgd.png'

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        import torch
        from evidential import metrics
        from evidential.perturbations import pgd
        conf, test = ctx.conf, ctx.test
        n = ctx.n_samples(self)
        if n <= 0:
            return None
        std, clamp = self.input_space(conf)
        probs_fn = self.attacked_probs(conf)
        images, labels = test.images[:n], test.labels[:n]
        y = labels.cpu()
        _, clean = _predict(conf, images, ctx.primary_score)
        attacks = {}
        for key, (name, steps) in ATTACKS.items():
            accuracy, auroc = [], {score: [] for score in clean}
            for e in EPS:
                eps = e / std
                x_adv = pgd(probs_fn, images, labels, eps, steps,
                            step_size=eps if key == 'fgsm' else None,
                            start=None if key == 'fgsm' else torch.Generator().manual_seed(SEED),
                            clamp=clamp, batch_size=conf.valid_batch_size)
                probs, scores = _predict(conf, x_adv, ctx.primary_score)
                accuracy.append(metrics.accuracy(probs, y))
                for score, values in scores.items():
                    auroc[score].append(metrics.ood_auroc(clean[score], values))
            attacks[key] = {'name': name, 'steps': steps, 'accuracy': accuracy, 'auroc': auroc}
        return {'eps': list(EPS), 'eps_units': 'pixel intensity, images in [0, 1]', 'n_samples': n, 'seed': SEED,
                'step_size': 'FGSM: eps; PGD: 2.5 * eps / steps',
                'random_start': 'FGSM: none; PGD: uniform in the eps-ball',
                'auroc_of': 'attacked (positive) against the same images clean, by each score',
                'score': ctx.primary_score, 'attacks': attacks}

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        from experiments.figures import pgd_plot
        pgd_plot({f'{dataset} test': block}, path)

    # -- compare
    def column_names(self) -> List[str]:
        return [f'pgd/{COLUMN_EPS:g}/accuracy', f'pgd/{COLUMN_EPS:g}/auroc']

    def columns(self, block: Dict[str, Any]) -> Dict[str, Any]:
        i = block['eps'].index(COLUMN_EPS)
        attack = block['attacks'][COLUMN_ATTACK]
        return {f'pgd/{COLUMN_EPS:g}/accuracy': attack['accuracy'][i],
                f'pgd/{COLUMN_EPS:g}/auroc': attack['auroc'][block['score']][i]}

    def layout(self, block: Dict[str, Any]) -> Any:
        return [block['eps'], block['n_samples'], block['seed'], sorted(block['attacks'])]

    def mean_over_seeds(self, blocks: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        if len({repr([self.layout(b), b['score']]) for b in blocks}) > 1:
            return None
        first = blocks[0]
        attacks = {key: {**attack, 'accuracy': mean_curves([b['attacks'][key]['accuracy'] for b in blocks]),
                         'auroc': {first['score']: mean_curves([b['attacks'][key]['auroc'][first['score']]
                                                                for b in blocks])}}
                   for key, attack in first['attacks'].items()}
        return {**first, 'attacks': attacks}

    def draw_comparison(self, curves: Dict[str, Dict[str, Any]], path: Path) -> None:
        from experiments.figures import pgd_plot
        pgd_plot(curves, path)


PERTURBATION = PGD()
