r"""
# Evaluating a trained run

    python -m experiments.evaluate RUN [--ood-file PATH ...] [--data-dir DIR] [--device cpu] [--fgsm-samples N]
    python -m experiments.evaluate RUN --split validation [--ood-file PATH ...]

`RUN` is a run uuid (looked up under the experiments path of the nearest `.labml.yaml`) or a run
folder. The run's saved configuration is rebuilt and its last checkpoint loaded
(`configs.runner.load_trained`); then, on the run's test set and on every out-of-distribution set
(Fashion-MNIST's test split for MNIST runs, plus each `--ood-file`):

1. predictions: expected probabilities $\hat{p}$ and, for evidential runs, the uncertainty mass $u$;
2. metrics (`evidential.metrics`): accuracy, NLL, Brier, ECE, AURC, misclassification AUROC, and
   per OOD set and score AUROC / AUPR / FPR95 with OOD as the positive class;
3. the EDL paper's sweeps (`experiments.figures`): a test "1" rotated 0–180° and FGSM attacks;
4. written into the run folder: `evaluation.json`, `predictions.npz` (every number in the JSON can be
   recomputed from it) and PNG figures; the scalar results are appended to the run's labml log
   (`log.jsonl`, as `eval.*` indicators) and a table is printed.

Every input is checked before anything is written; a mistake is one line on stderr and exit code 2.

## Model selection without the test set

`--split validation` evaluates the run's *held-out* split instead (runs trained with `holdout > 0`),
with the OOD dataset's *training* split as the default OOD set, so candidate settings can be compared
without touching a test split. It computes the same metrics, skips the sweeps and figures, and writes
`evaluation_validation.json` and `predictions_validation.npz` (the test-set files are left alone);
`python -m experiments.compare --split validation` tabulates them.

## Extending it

Other experiments register their Configs class in `CONFIGS_CLASSES` (experiment name → class). A
model whose `predict()` has no uncertainty mass (`uncertainty=None`) is scored by entropy and msp
only, and the $u$-based figures are skipped; `mutual_information`, when a model gives it, is one
more score. Add scores by extending `scores()`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

# torch, labml and the configurations are imported when first needed: a bad command line or a bad
# --ood-file is reported in a fraction of a second, before the heavy imports
if TYPE_CHECKING:
    import torch
    from configs.experiment import Prediction
    from evidential.data import TensorSplit

#: Experiment name (the run folder's parent, e.g. `logs/evidence_mnist/<uuid>`) → its Configs class,
#: given as the class or as `"module:Class"` (imported only when a run of that experiment is evaluated).
#: Baseline experiments add themselves here (or call `register`).
CONFIGS_CLASSES: Dict[str, Union[type, str]] = {
    'evidence_mnist': 'configs.evidence:EvidenceConfigs',
    'softmax_mnist': 'configs.baselines:SoftmaxConfigs',
    'mc_dropout_mnist': 'configs.baselines:MCDropoutConfigs',
    'ensemble_mnist': 'configs.baselines:EnsembleConfigs',
}

#: The OOD set evaluated by default for runs on a base dataset: `{base dataset: OOD dataset}`
#: (the OOD dataset's *test* split, read from the run's data folder).
DEFAULT_OOD = {'mnist': 'fashion_mnist'}

#: Scores ranking the test set for `aurc` / `misclassification_auroc` in the `"id"` block: the first present.
ID_SCORE_PREFERENCE = ('u', 'entropy')

#: FGSM step sizes in pixel units (images in [0, 1]), as in the EDL paper's Fig. 4
FGSM_EPS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())
#: Rotation angles of the rotated-digit experiment (EDL paper, Fig. 3)
ROTATION_ANGLES = tuple(np.linspace(0.0, 180.0, 19).tolist())
#: The digit the paper rotates
ROTATION_CLASS = 1

FIGURES = {
    'reliability': 'eval_reliability.png',
    'uncertainty_histograms': 'eval_uncertainty_histograms.png',
    'entropy_cdf': 'eval_entropy_cdf.png',
    'rotated_digit': 'eval_rotated_digit.png',
    'fgsm': 'eval_fgsm.png',
    'extreme_uncertainty': 'eval_extreme_uncertainty.png',
}
RESULTS_FILE = 'evaluation.json'
PREDICTIONS_FILE = 'predictions.npz'
#: What `--split` evaluates → (results file, predictions file); `test` also draws figures and logs to labml
SPLIT_FILES = {'test': (RESULTS_FILE, PREDICTIONS_FILE),
               'validation': ('evaluation_validation.json', 'predictions_validation.npz')}


class EvaluateError(ValueError):
    """A bad argument of this command (e.g. an unusable --ood-file): one line on stderr, exit code 2."""


def register(experiment_name: str, configs_class: Union[type, str]) -> None:
    """Lets `python -m experiments.evaluate` load runs of another experiment (a class or `"module:Class"`)."""
    CONFIGS_CLASSES[experiment_name] = configs_class


def configs_classes() -> Dict[str, type]:
    """`CONFIGS_CLASSES` with every `"module:Class"` imported."""
    out = {}
    for name, cls in CONFIGS_CLASSES.items():
        if isinstance(cls, str):
            module, _, attr = cls.partition(':')
            cls = getattr(importlib.import_module(module), attr)
        out[name] = cls
    return out


# ---------------------------------------------------------------------- scores

def scores(prediction: Prediction) -> Dict[str, torch.Tensor]:
    r"""
    Uncertainty scores of a prediction, higher = less sure: `{name: [N] tensor}`.

    * `u`: the uncertainty mass $u = K/S$ (only when the model gives one),
    * `entropy`: $H(\hat{p})$ in nats,
    * `msp`: $1 - \max_k \hat{p}_k$,
    * `mutual_information`: for sampling models that give it.
    """
    from evidential import metrics
    out: Dict[str, torch.Tensor] = {}
    if prediction.uncertainty is not None:
        out['u'] = prediction.uncertainty.detach().cpu()
    out['entropy'] = metrics.entropy(prediction.probs.detach().cpu())
    out['msp'] = metrics.max_prob_score(prediction.probs.detach().cpu())
    if prediction.mutual_information is not None:
        out['mutual_information'] = prediction.mutual_information.detach().cpu()
    return out


def prediction_arrays(prediction: Prediction) -> Dict[str, np.ndarray]:
    """What `predictions.npz` keeps of a prediction, as CPU numpy arrays: `probs`, `u`, `mutual_information`."""
    arrays = {'probs': prediction.probs.detach().float().cpu().numpy()}
    if prediction.uncertainty is not None:
        arrays['u'] = prediction.uncertainty.detach().float().cpu().numpy()
    if prediction.mutual_information is not None:
        arrays['mutual_information'] = prediction.mutual_information.detach().float().cpu().numpy()
    return arrays


def prediction_from_arrays(arrays: Dict[str, np.ndarray]) -> Prediction:
    """The inverse of `prediction_arrays` (CPU tensors), e.g. for the arrays of `predictions.npz`."""
    import torch
    from configs.experiment import Prediction

    def t(key):
        return torch.from_numpy(np.asarray(arrays[key])) if key in arrays else None
    return Prediction(probs=t('probs'), uncertainty=t('u'), mutual_information=t('mutual_information'))


def compute_metrics(id_arrays: Dict[str, np.ndarray], labels: np.ndarray,
                    ood_arrays: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, Any]:
    """
    The metric blocks of `evaluation.json` from the arrays saved in `predictions.npz`:
    `id` (ranked by `id_score`), `ood` (`{SET: {SCORE: {auroc, aupr, fpr95}}}`) and
    `selective` (AURC and misclassification AUROC for every score).
    """
    import torch
    from evidential import metrics
    id_pred = prediction_from_arrays(id_arrays)
    id_scores = scores(id_pred)
    id_score = next(s for s in ID_SCORE_PREFERENCE if s in id_scores)
    labels_t = torch.from_numpy(np.asarray(labels))
    result: Dict[str, Any] = {'id': metrics.summarize(id_pred.probs, labels_t, id_scores[id_score])}
    ood_scores = {name: scores(prediction_from_arrays(a)) for name, a in ood_arrays.items()}
    result['ood'] = metrics.ood_summary(id_scores, ood_scores) if ood_scores else {}
    errors = metrics.misclassified(id_pred.probs, labels_t)
    n_err = int(errors.sum())
    result['selective'] = {
        name: {'aurc': metrics.aurc(s, errors),
               'misclassification_auroc': (metrics.misclassification_auroc(s, errors)
                                           if 0 < n_err < errors.numel() else None)}
        for name, s in id_scores.items()}
    result['id_score'] = id_score
    return result


# ---------------------------------------------------------------------- inputs

def _set_name_ok(name: str) -> bool:
    return bool(re.fullmatch(r'[A-Za-z0-9_][A-Za-z0-9_.\-]*', name))


def load_ood_file(path: Path) -> np.ndarray:
    """A `.npy` of `uint8` images `[N, 28, 28]` or `[N, 1, 28, 28]` (white on black, 0–255) → `[N, 28, 28]`."""
    if not path.is_file():
        raise EvaluateError(f"--ood-file {path}: " + ("not a regular file" if path.exists() else "no such file"))
    try:
        with open(path, 'rb') as f:
            magic = f.read(6)
    except OSError as e:
        raise EvaluateError(f"--ood-file {path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if magic != b'\x93NUMPY':
        raise EvaluateError(f"--ood-file {path}: not a .npy file (save the images with numpy.save)")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError (object arrays, bad header), EOFError / OSError (truncated), ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvaluateError(f"--ood-file {path}: not a readable .npy array ({reason})") from None
    if array.dtype != np.uint8:
        raise EvaluateError(f"--ood-file {path}: dtype must be uint8 (pixel values 0-255, white digit on black), "
                            f"got {array.dtype}")
    shape = list(array.shape)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != (28, 28) or array.shape[0] < 1:
        raise EvaluateError(f"--ood-file {path}: shape must be [N, 28, 28] or [N, 1, 28, 28] with N >= 1, "
                            f"got {shape}")
    return np.ascontiguousarray(array)


def load_ood_files(paths: List[str]) -> Dict[str, np.ndarray]:
    """`{file stem: images}`; every file is checked, names must be distinct."""
    sets: Dict[str, np.ndarray] = {}
    for p in paths:
        path = Path(p).expanduser()
        name = path.stem
        if not _set_name_ok(name):
            raise EvaluateError(f"--ood-file {path}: the file name {name!r} is used as the set name; "
                                f"use letters, digits, '_', '-' and '.'")
        if name == 'id' or name in sets:
            raise EvaluateError(f"--ood-file {path}: another set is already called {name!r}; rename the file")
        sets[name] = load_ood_file(path)
    return sets


def default_ood(conf, train: bool = False) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """The default OOD sets of the run's dataset that are present in its data folder (their test splits,
    or their training splits with `train=True`, for model selection), and notes on those skipped."""
    from configs.experiment import data_root
    from evidential.data import DataError, load_split
    sets, notes = {}, []
    ood_name = DEFAULT_OOD.get(conf.dataset.name)
    if ood_name is None:
        return sets, notes
    try:
        images, _ = load_split(ood_name, data_root(conf), train=train, download=False)
    except DataError as e:
        if 'files not found' not in str(e):
            raise  # present but corrupt: a clear error, not a silent skip
        notes.append(f"{ood_name} skipped: {e}")
        return sets, notes
    sets[ood_name] = images.numpy()
    return sets, notes


# ---------------------------------------------------------------------- evaluation

def predict_images(conf, images: np.ndarray) -> Tuple[Prediction, torch.Tensor]:
    """The prediction (and raw outputs) for `uint8` images `[N, 28, 28]`, normalized as the run's training data."""
    import torch
    from evidential.data import tensor_split
    device = conf.dataset.test.images.device
    split = tensor_split(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.long),
                         conf.dataset.name, device)
    outputs = conf.evaluate_outputs(split)
    return conf.predict(outputs), outputs


def is_evidential(conf) -> bool:
    return hasattr(conf, 'outputs_to_evidence')


def evidence_of(conf, outputs: torch.Tensor) -> torch.Tensor:
    r"""Evidence in the units of `experiments.figures` (prior weight 1): $e / \lambda$ gives the same
    $\hat{p} = \alpha / S$ and $u = K\lambda/S$ as the run's prior weight $\lambda$."""
    return conf.outputs_to_evidence(outputs) / float(getattr(conf, 'prior_weight', 1.0))


def run_sweeps(conf, test: TensorSplit, fgsm_samples: int, preds: torch.Tensor) -> Dict[str, Any]:
    from evidential.data import dataset_spec
    from experiments import figures
    spec = dataset_spec(conf.dataset.name)
    out: Dict[str, Any] = {}

    # FGSM (Fig. 4): inputs are normalized, so the pixel step eps is eps / std and the valid range
    # [0, 1] of pixels is [(0 - mean) / std, (1 - mean) / std]
    n = min(fgsm_samples, len(test))
    if n > 0:
        # `eval_forward` (MC dropout: T sampled passes; ensemble: every member), so the attack is on the prediction
        sweep = figures.fgsm_sweep(lambda x: conf.predict(conf.eval_forward(x)).probs,
                                   test.images[:n], test.labels[:n], [e / spec.std for e in FGSM_EPS],
                                   clamp=((0 - spec.mean) / spec.std, (1 - spec.mean) / spec.std),
                                   batch_size=conf.valid_batch_size)
        out['fgsm'] = {'eps': list(FGSM_EPS), 'eps_units': 'pixel intensity, images in [0, 1]',
                       'n_samples': n, 'accuracy': sweep.accuracy.tolist(),
                       'mean_entropy': sweep.mean_entropy.tolist()}

    # Rotated digit (Fig. 3): rotate in pixel space (zero = black background), normalize for the model
    if is_evidential(conf):
        candidates = (test.labels == ROTATION_CLASS).nonzero().flatten()
        index = int(candidates[0]) if len(candidates) else 0
        image = test.images[index] * spec.std + spec.mean  # back to [0, 1]

        def evidence_fn(x):
            return evidence_of(conf, conf.model((x - spec.mean) / spec.std))

        rot = figures.rotated_digit_sweep(evidence_fn, image, ROTATION_ANGLES)
        out['rotation'] = {'test_index': index, 'label': int(test.labels[index]),
                           'prediction_unrotated': int(preds[index]),
                           'angles': rot.angles.tolist(), 'probs': rot.probs.cpu().tolist(),
                           'u': rot.u.cpu().tolist()}
        out['_rotation_image'] = image.cpu()
    return out


def write_figures(run_dir: Path, conf, test: TensorSplit, id_arrays, labels: np.ndarray, ood_arrays,
                  sweeps: Dict[str, Any], test_evidence: Optional[torch.Tensor]) -> Tuple[Dict[str, str], List[str]]:
    """The PNG figures; returns `{figure: file name}` and notes on those skipped."""
    import torch
    from evidential import metrics
    from evidential.data import dataset_spec
    from experiments import figures
    spec = dataset_spec(conf.dataset.name)
    written, notes = {}, []
    probs = id_arrays['probs']
    preds = probs.argmax(1)
    correct = preds == labels
    k = probs.shape[1]

    def path(key):
        written[key] = FIGURES[key]
        return run_dir / FIGURES[key]

    figures.reliability_diagram(probs, labels, path('reliability'))
    if 'u' in id_arrays:
        figures.uncertainty_histograms(id_arrays['u'][correct], id_arrays['u'][~correct],
                                       {name: a['u'] for name, a in ood_arrays.items() if 'u' in a},
                                       path('uncertainty_histograms'))
    else:
        notes.append('uncertainty histograms skipped: the model gives no uncertainty mass u')
    if ood_arrays:
        figures.entropy_cdf({name: metrics.entropy(torch.from_numpy(a['probs'])) for name, a in ood_arrays.items()},
                            path('entropy_cdf'), num_classes=k)
    else:
        notes.append('entropy CDF skipped: no out-of-distribution set')
    if 'rotation' in sweeps:
        r = sweeps['rotation']
        figures.rotation_plot(r['angles'], r['probs'], r['u'], sweeps['_rotation_image'], path('rotated_digit'))
    else:
        notes.append('rotated-digit figure skipped: the model gives no evidence')
    if 'fgsm' in sweeps:
        f = sweeps['fgsm']
        figures.fgsm_plot(f['eps'], f['accuracy'], f['mean_entropy'], path('fgsm'), num_classes=k,
                          label=f"{conf.dataset.name} test, first {f['n_samples']}")
    if test_evidence is not None and 'u' in id_arrays:
        images = (test.images.cpu() * spec.std + spec.mean).clamp(0, 1)
        figures.extreme_uncertainty_grid(images, id_arrays['u'], test_evidence.cpu(), labels, preds,
                                         path('extreme_uncertainty'))
    else:
        notes.append('lowest/highest-u images skipped: the model gives no evidence and uncertainty mass')
    return written, notes


# ---------------------------------------------------------------------- labml log

def _indicator_name(part: str) -> str:
    return re.sub(r'[^A-Za-z0-9_\-]', '_', part)


def flat_scalars(results: Dict[str, Any]) -> Dict[str, float]:
    """`eval.accuracy`, ..., `eval.ood.<set>.<score>.auroc`, ...: the numbers logged to labml."""
    out = {f'eval.{k}': v for k, v in results['id'].items() if v is not None}
    for set_name, per_score in results['ood'].items():
        for score, values in per_score.items():
            for k, v in values.items():
                out[f'eval.ood.{_indicator_name(set_name)}.{score}.{k}'] = v
    return out


def log_to_labml(run_dir: Path, values: Dict[str, float], global_step: int) -> None:
    """
    Appends `values` to the run's labml log (`log.jsonl`) with labml's own tracker and file writer,
    at the run's last global step, and adds their definitions to `indicators.yaml`.

    Re-opening the run with `experiment.create(uuid=...)` + `experiment.start()` is not used: labml 0.5.3
    then refuses to start while the training's `run.pid` exists, and otherwise rewrites `run.yaml`
    (trial time, python file), replaces `indicators.yaml` by the evaluation's indicators only, and adds a
    second `completed` status to `run_log.jsonl`. Here only `log.jsonl` (appended) and `indicators.yaml`
    (entries added, nothing removed) change.
    """
    from labml import tracker
    from labml.internal.tracker import tracker_singleton
    from labml.internal.tracker.writers import file as file_writer
    t = tracker_singleton()
    t.reset_writers()  # no screen writer, no other run's writers
    writer = file_writer.Writer(run_dir / 'log.jsonl')
    t.add_writer(writer)
    tracker.set_scalar('eval.*', False)
    tracker.set_global_step(global_step)
    tracker.add(values)
    tracker.save()
    definitions = {k: ind.to_dict() for k, ind in t.indicators.items() if k in values}
    t.finish_loop()  # flushes the file writer and stops its thread
    writer.thread.join(timeout=30)
    t.reset_writers()
    t.set_global_step(None)  # as a fresh tracker: a later labml run in this process counts from its own start
    _add_indicator_definitions(run_dir / 'indicators.yaml', definitions)


def _add_indicator_definitions(path: Path, definitions: Dict[str, Any]) -> None:
    import yaml
    from labml.internal import util as labml_util
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else {}
    except (OSError, yaml.YAMLError) as e:
        print(f"note: {path} left unchanged ({type(e).__name__})", file=sys.stderr)
        return
    if not isinstance(data, dict):
        return
    data.setdefault('wildcards', {})
    data.setdefault('indicators', {})
    data['indicators'].update(definitions)
    text = labml_util.yaml_dump(data)
    _write(path, lambda f: f.write(text.encode()), path.stat().st_mode & 0o777 if path.exists() else None)


# ---------------------------------------------------------------------- output

def _write(path: Path, write: Callable, mode: Optional[int] = None) -> None:
    """Atomic write (`configs.checkpoint.atomic_write_bytes`), permissions `mode` or those of a new file."""
    from configs.checkpoint import atomic_write_bytes
    atomic_write_bytes(path, write, mode)


def _save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    _write(path, lambda f: np.savez(f, **arrays))


def _save_json(path: Path, data: Dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, allow_nan=True) + '\n'
    _write(path, lambda f: f.write(text.encode()))


def _fmt(v: Optional[float]) -> str:
    return '   n/a' if v is None else f'{v:.4f}'


def format_table(results: Dict[str, Any]) -> str:
    split = 'held-out validation' if results.get('split') == 'validation' else 'test'
    lines = [f"In-distribution: {results['dataset']} {split} set, {results['n']['id']:,} images "
             f"(aurc and misclassification_auroc ranked by {results['id_score']})"]
    keys = list(results['id'])
    widths = [max(len(k), 8) for k in keys]
    lines.append('  ' + '  '.join(k.rjust(w) for k, w in zip(keys, widths)))
    lines.append('  ' + '  '.join(_fmt(results['id'][k]).rjust(w) for k, w in zip(keys, widths)))
    if results['ood']:
        lines.append('')
        lines.append('Out-of-distribution (OOD = positive; auroc, aupr: higher is better; fpr95: lower is better)')
        name_w = max(len('set'), *(len(s) for s in results['ood']))
        score_w = max(len('score'), *(len(sc) for v in results['ood'].values() for sc in v))
        lines.append(f"  {'set'.ljust(name_w)}  {'score'.ljust(score_w)}     auroc      aupr     fpr95   n")
        for set_name, per_score in results['ood'].items():
            for j, (score, v) in enumerate(per_score.items()):
                first = set_name if j == 0 else ''
                n = f"{results['n'][set_name]:,}" if j == 0 else ''
                lines.append(f"  {first.ljust(name_w)}  {score.ljust(score_w)}  {_fmt(v['auroc']):>8}  "
                             f"{_fmt(v['aupr']):>8}  {_fmt(v['fpr95']):>8}   {n}")
    else:
        lines.append('')
        lines.append('Out-of-distribution: no set')
    if 'fgsm' in results:
        f = results['fgsm']
        lines.append('')
        lines.append(f"FGSM ({f['n_samples']:,} test images; eps in pixel units)")
        lines.append('  eps          ' + ' '.join(f'{e:5.2f}' for e in f['eps']))
        lines.append('  accuracy     ' + ' '.join(f'{a:5.3f}' for a in f['accuracy']))
        lines.append('  mean entropy ' + ' '.join(f'{h:5.3f}' for h in f['mean_entropy']))
    return '\n'.join(lines)


# ---------------------------------------------------------------------- command line

def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m experiments.evaluate',
        description='Evaluate a trained run: metrics, OOD detection, figures; written into the run folder.')
    parser.add_argument('run', help='run uuid (under the nearest .labml.yaml\'s experiments path) or run folder')
    parser.add_argument('--ood-file', action='append', default=[], metavar='PATH',
                        help='extra OOD set: .npy of uint8 images [N, 28, 28] or [N, 1, 28, 28], white on black, '
                             '0-255; the file stem names the set (repeatable)')
    parser.add_argument('--data-dir', default=None, metavar='DIR',
                        help="folder holding MNIST/raw, FashionMNIST/raw (default: the run's data_dir)")
    parser.add_argument('--device', default=None, help="auto, cpu, cuda or cuda:N (default: the run's device)")
    parser.add_argument('--fgsm-samples', type=int, default=2000, metavar='N',
                        help='test images attacked by FGSM (default 2000; 0 skips the FGSM sweep)')
    parser.add_argument('--split', choices=list(SPLIT_FILES), default='test',
                        help='test (default), or validation: the run\'s held-out split with the OOD dataset\'s '
                             'training split, for model selection; no figures; writes '
                             f"{SPLIT_FILES['validation'][0]}")
    args = parser.parse_args(argv)
    if args.fgsm_samples < 0:
        parser.error('--fgsm-samples must be >= 0')
    return args


def error_exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def evaluate(args: argparse.Namespace, started: Optional[float] = None) -> Dict[str, Any]:
    """Evaluates `args.run` and writes the results into its folder (see the module docstring);
    returns the data of `evaluation.json`."""
    started = time.perf_counter() if started is None else started
    # ---- everything that can fail on bad input, before anything is written
    try:
        ood_images = load_ood_files(args.ood_file)  # first: fails fast, before torch is imported
    except EvaluateError as e:
        error_exit(str(e))
    import torch
    from labml.internal.monitor import monitor_singleton
    from configs.checkpoint import CheckpointError
    from configs.cli import UsageError
    from configs.runner import load_trained
    from evidential.data import DataError
    # labml prints a line per configuration it computes ("Prepare model..."); not useful here
    monitor_singleton().silent(True)
    try:
        conf, run_dir, state = load_trained(args.run, configs_classes(), data_dir=args.data_dir, device=args.device)
        selecting = args.split == 'validation'
        if selecting and conf.dataset.valid_source != 'holdout':
            raise EvaluateError(f"run {run_dir.name} has no held-out split (it was trained with holdout=0 and "
                                f"validated on the test set); train with holdout > 0 to select on held-out data")
        builtin, notes = default_ood(conf, train=selecting)
        clash = sorted(set(builtin) & set(ood_images))
        if clash:
            path = next(p for p in args.ood_file if Path(p).expanduser().stem == clash[0])
            raise EvaluateError(f"--ood-file {path}: the set name {clash[0]!r} is taken by the built-in OOD set "
                                f"of this run; rename the file")
        ood_images = {**builtin, **ood_images}
    except DataError as e:
        hint = ('; pass --data-dir DIR, the folder that holds MNIST/raw and FashionMNIST/raw'
                if 'files not found' in str(e) else '')
        error_exit(f"{e}{hint}")
    except (UsageError, CheckpointError, ValueError) as e:  # EvaluateError; ValueError: e.g. no CUDA for --device cuda
        error_exit(str(e))
    kind = run_dir.parent.name
    results_file, predictions_file = SPLIT_FILES[args.split]
    ood_split = 'training split' if selecting else 'test split'
    print(f"run {run_dir.name} ({kind}), epoch {state['epoch']}, status {state['status']}, "
          f"device {conf.dataset.test.images.device}, evaluating the {args.split} set"
          + (f" (OOD: {', '.join(builtin)} {ood_split})" if builtin else ''))
    for note in notes:
        print(f"note: {note}")

    # ---- predictions (seeded: sampling models such as MC dropout give the same numbers on a rerun)
    torch.manual_seed(conf.seed)
    test = conf.dataset.valid if selecting else conf.dataset.test
    outputs = conf.evaluate_outputs(test)
    output_notes = conf.evaluation_notes(outputs, 'held-out' if selecting else 'test')
    for note in output_notes:
        print(f"note: {note}")
    notes += output_notes
    id_pred = conf.predict(outputs)
    id_arrays = prediction_arrays(id_pred)
    labels = test.labels.cpu().numpy()
    test_evidence = conf.outputs_to_evidence(outputs) if is_evidential(conf) else None
    ood_arrays = {name: prediction_arrays(predict_images(conf, images)[0]) for name, images in ood_images.items()}

    # ---- metrics, from exactly the arrays saved in predictions.npz
    results: Dict[str, Any] = compute_metrics(id_arrays, labels, ood_arrays)
    sweeps = ({} if selecting else
              run_sweeps(conf, test, args.fgsm_samples, torch.from_numpy(id_arrays['probs'].argmax(1))))

    # ---- write (an earlier evaluation.json goes first: it must never sit beside other predictions)
    (run_dir / results_file).unlink(missing_ok=True)
    npz = {f'id/{k}': v for k, v in id_arrays.items()}
    npz['id/labels'] = labels.astype(np.int64)
    if test_evidence is not None:
        npz['id/evidence'] = test_evidence.detach().float().cpu().numpy()
    for name, arrays in ood_arrays.items():
        npz.update({f'{name}/{k}': v for k, v in arrays.items()})
    _save_npz(run_dir / predictions_file, npz)
    written, figure_notes = {}, []
    if not selecting:
        written, figure_notes = write_figures(run_dir, conf, test, id_arrays, labels, ood_arrays, sweeps,
                                              test_evidence)
        for key, name in FIGURES.items():  # a figure of an earlier evaluation that this one did not draw
            if key not in written and (run_dir / name).exists():
                (run_dir / name).unlink()
    for note in figure_notes:
        print(f"note: {note}")

    results = {
        'id': results['id'],
        'ood': results['ood'],
        'id_score': results['id_score'],
        'selective': results['selective'],
        'run': run_dir.name,
        'experiment': kind,
        'epoch': state['epoch'],
        'status': state['status'],
        'dataset': conf.dataset.name,
        'split': args.split,
        'ood_split': 'train' if selecting else 'test',
        'n': {'id': int(len(labels)), **{name: int(len(a['probs'])) for name, a in ood_arrays.items()}},
        'ood_files': {Path(p).expanduser().stem: str(Path(p).expanduser().resolve()) for p in args.ood_file},
        **{k: v for k, v in sweeps.items() if not k.startswith('_')},
        'figures': written,
        'notes': notes + figure_notes,
        'predictions': predictions_file,
    }
    scalars = flat_scalars(results)
    step = int(state.get('samples_seen', 0))
    if not selecting:  # the eval.* indicators of the labml log are the test-set results
        try:
            log_to_labml(run_dir, scalars, step)
            results['labml_log'] = {'file': 'log.jsonl', 'global_step': step, 'indicators': sorted(scalars)}
        except Exception as e:  # the evaluation itself is complete; say what did not work
            print(f"warning: could not append the results to {run_dir / 'log.jsonl'} "
                  f"({type(e).__name__}: {e})", file=sys.stderr)
    results['seconds'] = round(time.perf_counter() - started, 2)
    _save_json(run_dir / results_file, results)

    print()
    print(format_table(results))
    print()
    print(f"written to {run_dir}:")
    print(f"  {', '.join([results_file, predictions_file, *written.values()])}")
    if 'labml_log' in results:
        print(f"  {len(scalars)} results appended to log.jsonl as eval.* labml indicators, at step {step:,}")
    print(f"evaluated in {results['seconds']:.1f} s")
    return results


def main(argv: Optional[List[str]] = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    try:
        evaluate(args, started)
    finally:
        if 'labml' in sys.modules:  # evaluate() silences labml's monitor; give it back to in-process callers
            from labml.internal.monitor import monitor_singleton
            monitor_singleton().silent(False)
    return 0


if __name__ == '__main__':
    sys.exit(main())
