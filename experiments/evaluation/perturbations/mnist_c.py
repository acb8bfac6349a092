r"""
MNIST-C (Mu & Gilmer, 2019): the first `--mnist-c-samples` test images under fifteen corruptions, the ten with a
strength at five severities (MNIST-C's own setting is severity 3), the five others at severity 3 only
(`evidential.corruptions`; the images are generated once per seed and cached beside the data,
`experiments.evaluation.mnist_c_cache`).

For each corruption and severity: accuracy, NLL, ECE, AURC (ranked by the family's primary score), the mean of
every score, and for every score the AUROC separating the corrupted images (positive) from the clean copies of
the same images (the test predictions of `predictions.npz`). Summaries: `summary`, the mean over the fifteen
corruptions at severity 3 (the MNIST-C benchmark: `compare`'s `mnist_c/...` columns), and `by_severity`, the
mean over the ten graded corruptions at each severity. With `--mce-reference RUN` (a softmax run evaluated with
MNIST-C on the same images), the mean corruption error of Hendrycks & Dietterich (2019):

$$\text{CE}_c = \frac{\sum_s E_{c,s}}{\sum_s E^{\text{ref}}_{c,s}}, \qquad \text{mCE} = \frac{1}{|C|}\sum_c \text{CE}_c,$$

$E_{c,s} = 1 - \text{accuracy}$ of corruption $c$ at severity $s$.
"""
import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from experiments.evaluation import RESULTS_FILE, EvaluateError
from experiments.evaluation.perturbations.base import Context, Perturbation, SampleOption, mean_curves

#: Seed of the corruptions: the same for every run, so that every family sees the same corrupted images
SEED = 0
#: The scores whose AUROC can be a `compare` column (`mnist_c/SCORE/auroc`): those of every family, the two of
#: every prediction and each family's own (`Prediction.scores`; a family whose score has another name adds it).
#: `compare`'s headline shows the compared families' primary scores' and entropy's, `--columns all` every one.
SCORES = ('u', 'entropy', 'msp', 'mutual_information', 'disagreement', 'voter_variance', 'neg_log_density',
          'neg_log_feature_density', 'gp_variance')
#: The per-condition metrics that are means over corruptions in `summary` and `by_severity`
AVERAGED = ('accuracy', 'nll', 'ece', 'aurc')


def uint8_test_images(conf, test, n: int) -> np.ndarray:
    """The first `n` test images back in pixels (`uint8 [n, 28, 28]`): the split holds them normalised,
    $x = (u / 255 - \\mu) / \\sigma$, which rounds back to $u$ exactly."""
    import torch
    from evidential.data import dataset_spec
    spec = dataset_spec(conf.dataset.name)
    pixels = (test.images[:n, 0].float().cpu() * spec.std + spec.mean) * 255.
    return pixels.round().clamp(0, 255).to(torch.uint8).numpy()


def predict_arrays(conf, images: np.ndarray) -> Dict[str, np.ndarray]:
    """`probs` and the family's own scores (as `predictions.npz` keeps them) of `uint8` images."""
    from experiments.evaluation.predictions import predict_images, prediction_arrays
    return prediction_arrays(predict_images(conf, images)[0])


def shift_metrics(arrays: Dict[str, np.ndarray], labels: np.ndarray, clean: Optional[Dict[str, np.ndarray]],
                  primary: str) -> Dict[str, Any]:
    """Accuracy, NLL, ECE, AURC by `primary` and the mean of every score, from prediction arrays (`probs`, the
    family's scores); with `clean` arrays, also every score's AUROC separating these images (positive) from the
    clean ones."""
    import torch
    from evidential import metrics
    from experiments.evaluation.predictions import scores_of_arrays
    probs, scores = scores_of_arrays(arrays, primary)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    errors = metrics.misclassified(probs, y)
    out = {'accuracy': metrics.accuracy(probs, y), 'nll': metrics.nll(probs, y), 'ece': metrics.ece(probs, y),
           'aurc': metrics.aurc(scores[primary], errors),
           'mean_score': {k: v.double().mean().item() for k, v in scores.items()}}
    if clean is not None:
        _, clean_scores = scores_of_arrays(clean, primary)
        out['auroc'] = {k: metrics.ood_auroc(clean_scores[k], v) for k, v in scores.items()}
    return out


def mean_of(entries: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The mean of metric blocks (`shift_metrics`), metric by metric and score by score."""
    out = {m: statistics.fmean(e[m] for e in entries) for m in AVERAGED}
    for group in ('mean_score', 'auroc'):
        out[group] = {k: statistics.fmean(e[group][k] for e in entries) for k in entries[0][group]}
    return out


# ## The mean corruption error against a reference run

def load_reference(run: str) -> Dict[str, Any]:
    """The MNIST-C block of `run`'s `evaluation.json` (a uuid or run folder), with the run's name and experiment;
    raises `EvaluateError` where it has none."""
    from labml import lab
    from configs.checkpoint import CheckpointError, find_run
    from configs.runner import use_project_folder
    if use_project_folder() is None:
        lab.get_path()
    try:
        run_dir = find_run(run, Path(lab.get_experiments_path()))
    except CheckpointError as e:
        raise EvaluateError(f"--mce-reference {run}: {e}") from None
    path = run_dir / RESULTS_FILE
    again = f"python -m experiments.evaluate {run}"
    try:
        evaluation = json.loads(path.read_text())
    except FileNotFoundError:
        raise EvaluateError(f"--mce-reference {run}: the run has not been evaluated ({path} is missing); "
                            f"run `{again}` first") from None
    except (OSError, ValueError) as e:
        raise EvaluateError(f"--mce-reference {run}: {path} cannot be read ({type(e).__name__})") from None
    block = evaluation.get('mnist_c') if isinstance(evaluation, dict) else None
    if not isinstance(block, dict) or not isinstance(block.get('corruptions'), dict):
        raise EvaluateError(f"--mce-reference {run}: its evaluation ({path}) has no MNIST-C results; "
                            f"run `{again}` without --mnist-c-samples 0")
    return {'run': run_dir.name, 'experiment': evaluation.get('experiment', run_dir.parent.name),
            'block': block}


def layout(n: int) -> Dict[str, Any]:
    """What must be equal for two runs' MNIST-C results to be of the same images: the images, the seed, the
    generator, and the severities of every corruption."""
    from evidential import corruptions
    return {'n_samples': n, 'seed': SEED, 'generator_version': corruptions.GENERATOR_VERSION,
            'corruptions': {c: [str(s) for s in spec.severities] for c, spec in corruptions.CORRUPTIONS.items()}}


def check_reference(reference: Dict[str, Any], expected: Dict[str, Any]) -> None:
    """Raises `EvaluateError` where the reference's MNIST-C results are not of the images `expected` describes
    (`layout`)."""
    ref = reference['block']
    found = {k: ref.get(k) for k in ('n_samples', 'seed', 'generator_version')}
    found['corruptions'] = {c: sorted(v) for c, v in ref['corruptions'].items() if isinstance(v, dict)}
    if found != {**expected, 'corruptions': {c: sorted(v) for c, v in expected['corruptions'].items()}}:
        differ = [f"{k} {found[k]} here {expected[k]}" for k in ('n_samples', 'seed', 'generator_version')
                  if found[k] != expected[k]] or ['its corruptions and severities']
        raise EvaluateError(f"--mce-reference {reference['run']}: its MNIST-C results are of other images ("
                            f"{', '.join(differ)}); evaluate both with the same --mnist-c-samples")


def corruption_errors(block: Dict[str, Any], reference: Dict[str, Any]) -> Dict[str, Any]:
    """`{reference, ce: {corruption: CE_c}, mce, undefined}` of `block` against the reference's block (of the
    same images: `check_reference`)."""
    check_reference(reference, {k: block[k] for k in ('n_samples', 'seed', 'generator_version')} |
                    {'corruptions': {c: list(v) for c, v in block['corruptions'].items()}})
    ref = reference['block']
    ce = {}
    for corruption, per_severity in block['corruptions'].items():
        try:
            reference_error = sum(1 - float(ref['corruptions'][corruption][s]['accuracy']) for s in per_severity)
        except (KeyError, TypeError, ValueError):
            raise EvaluateError(f"--mce-reference {reference['run']}: its MNIST-C block is not one of this app; "
                                f"evaluate it again") from None
        error = sum(1 - v['accuracy'] for v in per_severity.values())
        ce[corruption] = error / reference_error if reference_error > 0 else None
    defined = [v for v in ce.values() if v is not None]
    return {'reference': {'run': reference['run'], 'experiment': reference['experiment']}, 'ce': ce,
            'mce': statistics.fmean(defined) if defined else None,
            'undefined': [c for c, v in ce.items() if v is None]}


class MnistC(Perturbation):
    name = 'mnist_c'
    samples = SampleOption('mnist-c-samples', 1000, 'test images of MNIST-C, each under 15 corruptions at up to 5 '
                                                    'severities')
    figure = ('mnist_c', 'eval_mnist_c.png')
    comparison_figure = 'comparison_mnist_c.png'

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--mce-reference', metavar='RUN', default=None,
                            help='a softmax run evaluated with MNIST-C on as many images: adds the mean corruption '
                                 'error (mCE) relative to it')

    def arguments(self, args: argparse.Namespace) -> Dict[str, Any]:
        reference = getattr(args, 'mce_reference', None)
        return {'mce_reference': reference} if reference else {}

    def command_line(self, options: Dict[str, Any]) -> List[str]:
        reference = options.get('mce_reference')
        if not reference:
            return []
        folder = Path(reference).expanduser()
        return ['--mce-reference', str(folder.resolve()) if folder.is_dir() else reference]  # else a uuid

    def prepare(self, options: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        unknown = sorted(set(options) - {'mce_reference'})
        if unknown:
            raise EvaluateError(f"the mnist_c perturbation has no option {', '.join(unknown)}")
        return load_reference(options['mce_reference']) if options.get('mce_reference') else None

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        from configs.experiment import data_root
        from evidential import corruptions
        from experiments.evaluation.mnist_c_cache import CHUNK, corrupted_test_images
        conf, test = ctx.conf, ctx.test
        n = ctx.n_samples(self)
        if n <= 0:
            return None
        reference = ctx.prepared_for(self)
        if reference is not None:  # before the predictions: a reference of other images fails at once
            check_reference(reference, layout(n))
        conf.model.eval()
        source = uint8_test_images(conf, test, min(len(test), -(-n // CHUNK) * CHUNK))
        images, cache = corrupted_test_images(source, n, data_root(conf), conf.dataset.name, SEED)
        labels = test.labels[:n].cpu().numpy()
        clean_arrays = ({k: v[:n] for k, v in ctx.id_arrays.items()} if ctx.id_arrays is not None
                        else predict_arrays(conf, source[:n]))
        primary = ctx.primary_score
        clean = shift_metrics(clean_arrays, labels, None, primary)
        per_corruption: Dict[str, Dict[str, Any]] = {}
        for (name, severity), corrupted in images.items():
            per_corruption.setdefault(name, {})[str(severity)] = shift_metrics(
                predict_arrays(conf, corrupted), labels, clean_arrays, primary)
        at_mnist_c = [v[str(corruptions.MNIST_C_SEVERITY)] for v in per_corruption.values()]
        graded = [c for c in per_corruption if len(corruptions.CORRUPTIONS[c].severities) > 1]
        block = {
            'n_samples': n, 'seed': SEED, 'generator_version': corruptions.GENERATOR_VERSION,
            'severities': list(corruptions.SEVERITIES), 'mnist_c_severity': corruptions.MNIST_C_SEVERITY,
            'parameters': {name: {str(s): c.parameter(s) for s in c.severities}
                           for name, c in corruptions.CORRUPTIONS.items()},
            'aurc_score': primary, 'clean': clean, 'corruptions': per_corruption,
            'summary': mean_of(at_mnist_c),
            'by_severity': {str(s): mean_of([per_corruption[c][str(s)] for c in graded])
                            for s in corruptions.SEVERITIES},
            'graded': graded,
            'cache': {k: v for k, v in cache.items() if k != 'notes'},
            '_notes': cache['notes'],
        }
        if reference is not None:
            block['mce'] = corruption_errors(block, reference)
        return block

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        from evidential.data import dataset_spec
        from experiments.shift_figures import mnist_c_plot
        mnist_c_plot(block, path, title=f"MNIST-C on the first {block['n_samples']:,} "
                                        f"{dataset_spec(dataset).torchvision_name} test images")

    def table(self, block: Dict[str, Any]) -> List[str]:
        s = block['summary']
        lines = ['', f"MNIST-C ({block['n_samples']:,} test images; mean over the 15 corruptions at severity "
                     f"{block['mnist_c_severity']}, MNIST-C's setting; clean accuracy {block['clean']['accuracy']:.4f})",
                 f"  accuracy {s['accuracy']:.4f}  nll {s['nll']:.4f}  ece {s['ece']:.4f}  aurc {s['aurc']:.4f}  "
                 "AUROC corrupted vs clean: " + ', '.join(f'{k} {v:.4f}' for k, v in s['auroc'].items())]
        at = str(block['mnist_c_severity'])
        lines.append('  accuracy ' + ', '.join(f"{c} {v[at]['accuracy']:.3f}" for c, v in block['corruptions'].items()))
        if block.get('mce') and block['mce']['mce'] is not None:
            ref = block['mce']['reference']
            lines.append(f"  mCE {block['mce']['mce']:.4f} (relative to {ref['experiment']} {ref['run'][:8]})")
        return lines

    # -- compare
    def column_names(self) -> List[str]:
        return ['mnist_c/accuracy', 'mnist_c/nll', 'mnist_c/ece', *[f'mnist_c/{s}/auroc' for s in SCORES],
                'mnist_c/mce']

    def columns(self, block: Dict[str, Any]) -> Dict[str, Any]:
        s = block['summary']
        out = {f'mnist_c/{m}': s[m] for m in ('accuracy', 'nll', 'ece')}
        out.update({f'mnist_c/{score}/auroc': v for score, v in s['auroc'].items() if score in SCORES})
        if isinstance(block.get('mce'), dict):
            out['mnist_c/mce'] = block['mce']['mce']
        return out

    def layout(self, block: Dict[str, Any]) -> Any:
        return [block['n_samples'], block['seed'], block['generator_version']]

    def mean_over_seeds(self, blocks: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        if not self.comparable(blocks):
            return None
        first = blocks[0]
        severities = list(first['by_severity'])
        curve = {m: mean_curves([[b['by_severity'][s][m] for s in severities] for b in blocks])
                 for m in ('accuracy', 'ece')}
        return {**first, 'clean': {m: statistics.fmean(b['clean'][m] for b in blocks) for m in ('accuracy', 'ece')},
                'by_severity': {s: {m: curve[m][i] for m in curve} for i, s in enumerate(severities)}}

    def draw_comparison(self, curves: Dict[str, Dict[str, Any]], path: Path) -> None:
        from experiments.shift_figures import mnist_c_comparison_plot
        mnist_c_comparison_plot(curves, path)


PERTURBATION = MnistC()
