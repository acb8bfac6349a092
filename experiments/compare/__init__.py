"""
# Comparing evaluated runs

    python -m experiments.compare RUN [RUN ...] [--out DIR] [--split validation] [--over-seeds] [--columns KEYS]

Reads each run's `evaluation.json` (written by `python -m experiments.evaluate RUN`) and builds one
table: a row per run (experiment name, short uuid and its key settings), a column per metric. By default the
headline columns: the in-distribution metrics, the perturbations' columns (`experiments.evaluation.perturbations`:
accuracy at 20 % and 50 % missing pixels, `missing/0.2/accuracy`), and per OOD set the AUROC by each compared
family's primary score and by entropy. `--columns all` shows every metric of the runs — also selective
prediction per uncertainty score (`selective/SCORE/aurc`, `.../misclassification_auroc`) and every OOD score
(`ood/SET/SCORE/auroc`, `aupr`, `fpr95`); `--columns KEY,KEY,...` keeps those, in that order (a key no run has
is an error, exit code 2, listing the keys there are).
The best value of each column is marked (bold) where at least two runs have one: the highest accuracy, AUROC,
AUPR and misclassification AUROC, the lowest NLL, Brier, ECE, AURC and FPR95. A metric a run does not have
(e.g. `u` for a softmax model, `mutual_information` for an evidential one) is shown as "–". An evaluation of an
earlier epoch than the run's checkpoint (the run trained on after it was evaluated) is marked STALE.

The table is printed and written as `comparison.md` and `comparison.json`, with each perturbation's comparison
figure (`comparison_missing_pixels.png`: every run's missing-pixel sweep), into `--out` (default:
`<experiments path>/compare/<families>-<hash of the runs>`). `RUN` is a run uuid (under the nearest
`.labml.yaml`'s experiments path) or a run folder. A run that has not been evaluated is an error (exit code 2).

`--split validation` compares the held-out evaluations instead (`evaluation_validation.json`, written by
`python -m experiments.evaluate RUN --split validation`): the table for choosing settings without the
test set.

`--over-seeds` puts runs whose settings differ only in `seed` into one row: each cell is the mean over
those runs ± their standard deviation (sample, n − 1), and the best *mean* is marked. One run of 1,000
held-out images has ~10 errors, so a single seed decides little; a setting is better when its mean is,
by more than the spread.

Each label names the run's key settings (loss, evidence, KL schedule and its weight, ...) and, beyond
those, every setting that differs between the compared runs of one experiment (e.g. `dropout=0.25`), read
from the run's `configs.yaml` (every configuration's value, as labml computed it).
"""
from evidential.metrics import ID_METRICS
from experiments.compare.rows import (EVALUATION_FILES, NOT_SETTINGS, CompareError, Row, key_settings, label_rows,
                                      load_row, over_seeds, row_label, run_config)
from experiments.compare.table import (JSON_FILE, MARKDOWN_FILE, MISSING, build, columns_of, headline_columns,
                                       is_column_name, markdown)
from experiments.compare.cli import main, parse_args

__all__ = ['ID_METRICS', 'EVALUATION_FILES', 'NOT_SETTINGS', 'CompareError', 'Row', 'key_settings', 'label_rows',
           'load_row', 'over_seeds', 'row_label', 'run_config', 'JSON_FILE', 'MARKDOWN_FILE', 'MISSING', 'build',
           'columns_of', 'headline_columns', 'is_column_name', 'markdown', 'main', 'parse_args']
