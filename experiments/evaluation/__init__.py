"""
# Evaluating a trained run, one job a module

* `inputs`: the OOD sets — `--ood-file` checks and the run's default OOD dataset;
* `predictions`: predictions of a split or of images, their scores, and the arrays of `predictions.npz`;
* `results`: the metric blocks of `evaluation.json`, computed from exactly those arrays;
* `perturbations`: the registry of perturbations of the test inputs (FGSM, a rotated digit, missing pixels, MNIST-C,
  `--shift-file` sets), each a module that owns its options, its block of the results, its figure and its `compare`
  columns; `mnist_c_cache`: MNIST-C's images, generated once and cached beside the data;
* `posthoc`: the registry of post-hoc steps fitted on the run's held-out split (temperature scaling), each a module
  that owns its block of the results, its figure and its `compare` columns;
* `plots`: the PNG figures;
* `output`: writing results — JSON, npz, labml's log — and the printed table;
* `core`: `evaluate()`, which runs them in order and raises `EvaluateError` (and the loaders' errors) on bad input.

`python -m experiments.evaluate` (`experiments/evaluate.py`) only parses arguments and reports.
"""

RESULTS_FILE = 'evaluation.json'
PREDICTIONS_FILE = 'predictions.npz'
#: What `--split` evaluates → (results file, predictions file); `test` also runs the perturbations and the post-hoc steps, draws figures and
#: logs to labml. `experiments.compare --split` reads the same results files.
SPLIT_FILES = {'test': (RESULTS_FILE, PREDICTIONS_FILE),
               'validation': ('evaluation_validation.json', 'predictions_validation.npz')}


class EvaluateError(ValueError):
    """A bad argument of the evaluation (e.g. an unusable --ood-file): one line on stderr, exit code 2."""
