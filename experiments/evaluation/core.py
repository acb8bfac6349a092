"""`evaluate()`: one run's evaluation, end to end (see `experiments/evaluate.py` for what it writes)."""
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from experiments.evaluation import SPLIT_FILES, EvaluateError, perturbations, posthoc
from experiments.evaluation.inputs import default_ood, load_ood_files


def evaluate(run: str, *, ood_files: List[str] = (), data_dir: Optional[str] = None, device: Optional[str] = None,
             samples: Optional[Dict[str, Optional[int]]] = None, split: str = 'test', started: Optional[float] = None,
             allow_running: bool = False, options: Optional[Dict[str, Dict[str, Any]]] = None,
             log: Callable[[str], None] = print) -> Tuple[Path, Dict[str, Any]]:
    """
    Evaluates `run` (a uuid or run folder) and writes the results into its folder; returns the folder and the
    data of `evaluation.json` (or `evaluation_validation.json` with `split='validation'`). Progress and notes go to `log`.
    `samples`: `{perturbation name: test images}` (`experiments.evaluation.perturbations`; missing or `None`:
    the perturbation's default, 0: not run, and an earlier evaluation's block of the same checkpoint is kept).
    `options`: `{perturbation name: {keyword: value}}`, the perturbations' own options (`--shift-file`, ...).

    A run whose training process is alive is refused (its checkpoint will change, and the training process
    rewrites labml's log): `allow_running` evaluates its latest checkpoint anyway, and leaves labml's log alone.

    Every input is checked before anything is written: raises `EvaluateError`, `CheckpointError`,
    `DataError`, `UsageError` or `ValueError` (e.g. no CUDA for `device='cuda'`).
    """
    started = time.perf_counter() if started is None else started
    if split not in SPLIT_FILES:
        raise EvaluateError(f"split must be one of {', '.join(SPLIT_FILES)}, got {split!r}")
    samples = {name: n for name, n in (samples or {}).items() if n is not None}
    for name, n in samples.items():
        option = perturbations.get(name).samples
        if option is None:
            raise EvaluateError(f"the {name} perturbation takes no sample count")
        if n < 0:
            raise EvaluateError(f'--{option.flag} must be >= 0')
    # ---- everything that can fail on bad input, before anything is written
    ood_images = load_ood_files(list(ood_files))  # first: fails fast, before torch is imported
    prepared = perturbations.prepare_all(options or {})  # the perturbations' own options (`--shift-file`, ...)
    import torch
    from configs.compat import silence_monitor
    from configs.checkpoint import training_pid
    from configs.runner import load_trained
    from experiments.evaluation.output import flat_scalars, log_to_labml, save_json, save_npz
    from experiments.evaluation.plots import write_figures
    from experiments.evaluation.predictions import predict_images, prediction_arrays
    from experiments.evaluation.results import compute_metrics
    # labml prints a line per configuration it computes ("Prepare model..."); not useful here
    silence_monitor(True)
    try:
        family, conf, run_dir, state = load_trained(run, data_dir=data_dir, device=device)
        # Channels-last convolutions and max-pooling: 2-5x faster on CPU for the LeNet bodies of the families
        # trained in NCHW (Bayesian, vote), a no-op for those trained channels-last; the same values up to float
        # rounding, and the same sampled networks (see `evidential.models.bayes._noise`)
        conf.model.to(memory_format=torch.channels_last)
        # still training: its checkpoint says so and the process that trains it is alive (labml leaves its pid in
        # the run folder; a run trained in this process has ended by now)
        pid = training_pid(run_dir) if state['status'] == 'running' else None
        running = pid is not None and pid != os.getpid()
        if running and not allow_running:
            raise EvaluateError(f"run {run_dir.name} is still training (process {pid}; epoch {state['epoch']} of "
                                f"{conf.epochs} saved): evaluate it when it has finished, or pass --allow-running to "
                                f"evaluate the latest checkpoint now")
        selecting = split == 'validation'
        if selecting and conf.dataset.valid_source != 'holdout':
            raise EvaluateError(f"run {run_dir.name} has no held-out split (it was trained with holdout=0 and "
                                f"validated on the test set); train with holdout > 0 to select on held-out data")
        builtin, notes = default_ood(conf, train=selecting)
        clash = sorted(set(builtin) & set(ood_images))
        if clash:
            path = next(p for p in ood_files if Path(p).expanduser().stem == clash[0])
            raise EvaluateError(f"--ood-file {path}: the set name {clash[0]!r} is taken by the built-in OOD set "
                                f"of this run; rename the file")
        ood_images = {**builtin, **ood_images}
        kind = run_dir.parent.name
        results_file, predictions_file = SPLIT_FILES[split]
        ood_split = 'training split' if selecting else 'test split'
        log(f"run {run_dir.name} ({kind}), epoch {state['epoch']}, status {state['status']}, "
            f"device {conf.dataset.test.images.device}, evaluating the {split} set"
            + (f" (OOD: {', '.join(builtin)} {ood_split})" if builtin else ''))
        if running:
            notes.append(f"evaluated while training (process {pid}): epoch {state['epoch']} of {conf.epochs}; the "
                         f"results are not appended to labml's log, which the training process rewrites")
        for note in notes:
            log(f"note: {note}")

        # ---- predictions (seeded: sampling models such as MC dropout give the same numbers on a rerun)
        torch.manual_seed(conf.seed)
        test = conf.dataset.valid if selecting else conf.dataset.test
        timing: Dict[str, float] = {}  # wall seconds of each stage, for `evaluation.json`'s `timing`
        stage = time.perf_counter()
        outputs = conf.evaluate_outputs(test)
        output_notes = conf.evaluation_notes(outputs, 'held-out' if selecting else 'test')
        for note in output_notes:
            log(f"note: {note}")
        notes += output_notes
        id_pred = conf.predict(outputs)
        id_arrays = prediction_arrays(id_pred)
        labels = test.labels.cpu().numpy()
        test_evidence = id_pred.extras.get('evidence')
        timing['predict'] = round(time.perf_counter() - stage, 3)
        stage = time.perf_counter()
        ood_arrays = {name: prediction_arrays(predict_images(conf, images)[0]) for name, images in ood_images.items()}
        timing['ood'] = round(time.perf_counter() - stage, 3)

        # ---- metrics, from exactly the arrays saved in predictions.npz
        results: Dict[str, Any] = compute_metrics(id_arrays, labels, ood_arrays, family.primary_score)
        earlier = _earlier_blocks(run_dir / results_file, state['epoch']) if not selecting else {}
        blocks, perturbation_notes, kept = ({}, [], []) if selecting else perturbations.run_all(perturbations.Context(
            conf, test, torch.from_numpy(id_arrays['probs'].argmax(1)), family.capabilities, samples,
            family.primary_score, id_arrays=id_arrays, prepared=prepared), earlier, timing)
        for note in perturbation_notes:
            log(f"note: {note}")
        # post-hoc steps (test split only): fitted on the held-out split's predictions, seeded as the test's
        posthoc_blocks, posthoc_notes = ({}, []) if selecting else posthoc.run_all(posthoc.Context(
            *_held_out_arrays(conf), id_arrays, labels, family.primary_score, ood_arrays), timing)
        for note in posthoc_notes:
            log(f"note: {note}")

        # ---- write (an earlier results file goes first: it must never sit beside other predictions)
        writing_since = time.time() - 1  # outputs modified since then are this evaluation's (1 s: mtime granularity)
        (run_dir / results_file).unlink(missing_ok=True)
        npz = {f'id/{k}': v for k, v in id_arrays.items()}
        npz['id/labels'] = labels.astype(np.int64)
        if test_evidence is not None:
            npz['id/evidence'] = test_evidence.detach().float().cpu().numpy()
        for name, arrays in ood_arrays.items():
            npz.update({f'{name}/{k}': v for k, v in arrays.items()})
        stage = time.perf_counter()
        try:
            save_npz(run_dir / predictions_file, npz)
            written, figure_notes = ({}, []) if selecting else write_figures(
                run_dir, conf, test, id_arrays, labels, ood_arrays, blocks, test_evidence, kept,
                family.primary_score, posthoc_blocks)
        except OSError as e:
            raise _write_failed(run_dir, e, writing_since, predictions_file) from None
        timing['figures'] = round(time.perf_counter() - stage, 3)
        for note in figure_notes:
            log(f"note: {note}")
    finally:
        silence_monitor(False)  # for in-process callers (tests, sweeps) that train next

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
        'split': split,
        'ood_split': 'train' if selecting else 'test',
        'n': {'id': int(len(labels)), **{name: int(len(a['probs'])) for name, a in ood_arrays.items()}},
        'ood_files': {Path(p).expanduser().stem: str(Path(p).expanduser().resolve()) for p in ood_files},
        **blocks,
        **posthoc_blocks,
        'figures': written,
        'notes': notes + perturbation_notes + posthoc_notes + figure_notes,
        'predictions': predictions_file,
    }
    # figure-only values (the rotated image, the scaled probabilities) stay out of the JSON
    for block in [*blocks.values(), *posthoc_blocks.values()]:
        for key in [k for k in block if k.startswith('_')]:
            del block[key]
    scalars = flat_scalars(results)
    step = int(state.get('samples_seen', 0))
    if not selecting and not running:  # the eval.* indicators of the labml log are the test-set results
        try:
            log_to_labml(run_dir, scalars, step)
            results['labml_log'] = {'file': 'log.jsonl', 'global_step': step, 'indicators': sorted(scalars)}
        except Exception as e:  # the evaluation itself is complete; say what did not work
            print(f"warning: could not append the results to {run_dir / 'log.jsonl'} ({type(e).__name__}: {e})",
                  file=sys.stderr)
    results['seconds'] = round(time.perf_counter() - started, 2)
    results['timing'] = timing
    try:
        save_json(run_dir / results_file, results)
    except OSError as e:
        raise _write_failed(run_dir, e, writing_since, predictions_file) from None
    return run_dir, results


def _held_out_arrays(conf) -> Tuple[Optional[Dict[str, np.ndarray]], Optional[np.ndarray]]:
    """The arrays and labels of the run's held-out split (the `valid` split of a run trained with holdout > 0), for
    the post-hoc steps to fit on; `(None, None)` where it validated on the test set. Seeded as the test predictions
    (a sampling family's masks do not depend on what ran before)."""
    import torch
    from experiments.evaluation.predictions import prediction_arrays
    if conf.dataset.valid_source != 'holdout':
        return None, None
    torch.manual_seed(conf.seed)
    valid = conf.dataset.valid
    return prediction_arrays(conf.predict(conf.evaluate_outputs(valid))), valid.labels.cpu().numpy()


def _earlier_blocks(path: Path, epoch: int) -> Dict[str, Any]:
    """The perturbation blocks of the run's earlier evaluation file, where it evaluated the same epoch (else
    none: those of another checkpoint are never kept)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict) or earlier.get('epoch') != epoch:
        return {}
    return {name: earlier[name] for name in perturbations.PERTURBATIONS if isinstance(earlier.get(name), dict)}


def _write_failed(run_dir: Path, error: OSError, since: float, predictions_file: str):
    """The `EvaluateWriteError` for a failed write; first removes what this evaluation wrote (figures, predictions),
    so that the run folder holds no part of an evaluation without its results file."""
    import errno as errno_module
    from experiments.evaluation.output import EvaluateWriteError
    removed = []
    for path in [run_dir / predictions_file, *run_dir.glob('eval_*.png')]:
        try:
            if path.exists() and path.stat().st_mtime >= since:
                path.unlink()
                removed.append(path.name)
        except OSError:
            pass
    code = errno_module.errorcode.get(error.errno, '') if error.errno else ''
    where = error.filename or run_dir
    return EvaluateWriteError(
        f"could not write {where}: {error.strerror or error}{f' ({code})' if code else ''}; the evaluation was not "
        f"saved (no results file{', partial outputs removed' if removed else ''}); free some space and run it again")
