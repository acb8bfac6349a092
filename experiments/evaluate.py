r"""
# Evaluating a trained run

    python -m experiments.evaluate RUN [--ood-file PATH ...] [--data-dir DIR] [--device cpu] [--fgsm-samples N] [--missing-samples N] [--mnist-c-samples N] [--shift-file PATH ...] ...
    python -m experiments.evaluate RUN --split validation [--ood-file PATH ...]

`RUN` is a run uuid (looked up under the experiments path of the nearest `.labml.yaml`) or a run
folder. The run's saved configuration is rebuilt and its last checkpoint loaded
(`configs.runner.load_trained`, through the family registry); then, on the run's test set and on every out-of-distribution set
(Fashion-MNIST's test split for MNIST runs, plus each `--ood-file`):

1. predictions: expected probabilities $\hat{p}$ and, for evidential runs, the uncertainty mass $u$;
2. metrics (`evidential.metrics`): accuracy, NLL, Brier, ECE, AURC, misclassification AUROC, and
   per OOD set and score AUROC / AUPR / FPR95 with OOD as the positive class;
3. perturbations of the test inputs (`experiments.evaluation.perturbations`): the EDL paper's FGSM attacks
   and rotated "1" (0–180°), missing pixels (cirkit's tutorial: 0–90 % of the pixels, and structured
   patterns), the MNIST-C corruptions at five severities (`--mce-reference RUN`: their mean corruption error
   relative to a softmax run) and each `--shift-file` set; each has a `--X-samples N` option where it perturbs
   a number of test images (0 skips it);
4. written into the run folder: `evaluation.json`, `predictions.npz` (every number in the JSON can be
   recomputed from it) and PNG figures; the scalar results are appended to the run's labml log
   (`log.jsonl`, as `eval.*` indicators) and a table is printed.

Every input is checked before anything is written; a mistake is one line on stderr and exit code 2.

A run that is still training is refused (its checkpoint is about to change, and the training process rewrites
labml's log); `--allow-running` evaluates its latest checkpoint anyway, records that epoch in `evaluation.json`,
and appends nothing to the log. `experiments.compare` marks an evaluation whose epoch is not the run's last.
A perturbation given `--X-samples 0` is not run; where the run's earlier evaluation of the same checkpoint has
its results, they are kept (with their figure), and a note says so.

## Model selection without the test set

`--split validation` evaluates the run's *held-out* split instead (runs trained with `holdout > 0`),
with the OOD dataset's *training* split as the default OOD set, so candidate settings can be compared
without touching a test split. It computes the same metrics, skips the perturbations and figures, and writes
`evaluation_validation.json` and `predictions_validation.npz` (the test-set files are left alone);
`python -m experiments.compare --split validation` tabulates them.

## Extending it

A run is rebuilt by its family (`configs/registry.py`). Every score of the family's `Prediction` is
evaluated (OOD detection, selective prediction) next to entropy and msp; the family's `primary_score`
ranks the in-distribution block; perturbations and figures run where the family's capabilities allow
(each perturbation says, `experiments/evaluation/perturbations/`). The jobs live in `experiments/evaluation/`;
this module only parses arguments and reports.
"""
import argparse
import sys
import time
from typing import List, Optional

from experiments.evaluation import SPLIT_FILES, EvaluateError, perturbations


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
    perturbations.add_sample_options(parser)
    perturbations.add_own_options(parser)
    parser.add_argument('--allow-running', action='store_true',
                        help="evaluate a run that is still training (its latest checkpoint; nothing is appended to "
                             "labml's log); without it such a run is refused")
    parser.add_argument('--split', choices=list(SPLIT_FILES), default='test',
                        help='test (default), or validation: the run\'s held-out split with the OOD dataset\'s '
                             'training split, for model selection; no figures; writes '
                             f"{SPLIT_FILES['validation'][0]}")
    args = parser.parse_args(argv)
    try:
        args.samples = perturbations.samples_of(args)
    except ValueError as e:
        parser.error(str(e))
    args.options = perturbations.options_of(args)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    from configs.checkpoint import CheckpointError
    from configs.cli import UsageError
    from evidential.data import DataError, DataFilesMissing
    from experiments.evaluation.core import evaluate
    from experiments.evaluation.output import EvaluateWriteError, format_table
    try:
        run_dir, results = evaluate(args.run, ood_files=args.ood_file, data_dir=args.data_dir, device=args.device,
                                       samples=args.samples, split=args.split, started=started,
                                       allow_running=args.allow_running, options=args.options)
    except DataError as e:
        hint = ('; pass --data-dir DIR, the folder that holds MNIST/raw and FashionMNIST/raw'
                if isinstance(e, DataFilesMissing) else '')
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    except EvaluateWriteError as e:  # disk full, I/O error: nothing half-written is left
        print(f"error: {e}", file=sys.stderr)
        return 4
    except (EvaluateError, UsageError, CheckpointError, ValueError) as e:  # ValueError: e.g. no CUDA for --device cuda
        print(f"error: {e}", file=sys.stderr)
        return 2
    results_file, predictions_file = SPLIT_FILES[args.split]
    print()
    print(format_table(results))
    print()
    print(f"written to {run_dir}:")
    print(f"  {', '.join([results_file, predictions_file, *results['figures'].values()])}")
    if 'labml_log' in results:
        log = results['labml_log']
        print(f"  {len(log['indicators'])} results appended to log.jsonl as eval.* labml indicators, "
              f"at step {log['global_step']:,}")
    stages = ', '.join(f"{name} {s:.1f}" for name, s in results.get('timing', {}).items())
    print(f"evaluated in {results['seconds']:.1f} s" + (f" ({stages})" if stages else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
