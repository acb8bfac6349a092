"""
# Sweeps: every combination of some settings, trained, evaluated and tabulated

    python -m experiments.sweep FAMILY key=v1,v2 key2=a,b seed=1,2,3 [--jobs N] [--split validation|test]
                                [--name NAME] [--engine local|ray] [--address ADDR] [--cpus-per-run C]
                                [--gpus-per-run G] [--storage DIR] [--X-samples N ...] [--ood-file PATH ...]
                                [--shift-file PATH ...] [--mce-reference RUN]
                                [--dry-run]
    python -m experiments.sweep sweeps/compare_all.py [key=value ...] [options]

Each combination is a normal run of its family (`python -m experiments.train FAMILY key=value ...`, one run
per process: labml's state is global per process), in the usual run folders under the nearest `.labml.yaml`'s
experiments path, with its checkpoints and labml tracking (`dashboard=` passes through like any key). Each
finished run is evaluated (`python -m experiments.evaluate RUN --split validation`, the held-out split, unless
`--split test`; each perturbation's `--X-samples N`, every `--ood-file` and `--shift-file` and `--mce-reference`
given to the sweep are passed on), and the sweep writes into `<experiments path>/sweeps/<name>/`:

* `sweep.json` — the grid, and per run its overrides, uuid, status (`pending`, `running`, `done`, `failed`,
  `interrupted`), the metrics of its evaluation file, the node it ran on, the tail of its output on failure;
* `comparison.md` / `comparison.json` — `experiments.compare --over-seeds` over the evaluated runs;
* `runs/<family>-<hash>.log` — each run's training and evaluation output.

Values: a comma separates values only at the top level, so tuples and lists keep theirs
(`optimizer.betas=(0.9,0.99),(0.9,0.999)` is two values). Every combination is typed and checked exactly as the
family's own command line does (`configs.cli.resolve`) before anything runs: a bad value anywhere is one line on
stderr and exit code 2, and nothing is written.

A sweep file is plain Python (nanoGPT style) defining `runs = [(FAMILY, {key: [values] or value}), ...]` (a
list value is an axis; a grid may also be a list of such dicts), and optionally `name`, `split`, `jobs` and
`columns` (the table's); `key=value` arguments after it are added to every grid.

Re-running a sweep (same name: by default derived from the grid) skips runs that are done and evaluated,
evaluates runs whose training finished, resumes interrupted runs from their checkpoint (`resume=<uuid>`), and
starts again runs that have no checkpoint; failed runs are tried again. A failing run (non-zero exit: non-finite
numbers, killed) is recorded and the others go on. Ctrl-C / SIGTERM stops the runs (they save their last
epoch), writes `sweep.json` and prints the command that continues. Exit codes: 0 all done, 1 some failed,
2 bad input, 130 / 143 interrupted.

Engines: `local` (default) keeps `--jobs` subprocesses going and uses no network; `ray` runs the same commands
as Ray tasks.

The modules: `grid` (values, axes, sweep files), `plan` (every run checked, the default name, the data),
`state` (the runs' stages and sweep.json), `loop` (the `Sweep` that runs them), `table` (comparison.md / .json),
`engines/local.py` and `engines/ray.py`, `cli` (the options and `main`), `errors` (`SweepError`, exit codes) and
`processes` (what both engines do with a run's process).
"""
from experiments.sweep.errors import EXIT_FAILED, EXIT_USAGE, SweepError
from experiments.sweep.grid import expand, file_axes, load_sweep_file, parse_axes, split_values
from experiments.sweep.plan import check_data, default_name, plan
from experiments.sweep.table import TRAIN_COLUMN
from experiments.sweep.loop import Sweep
from experiments.sweep.cli import main, parse_args

__all__ = ['EXIT_FAILED', 'EXIT_USAGE', 'SweepError', 'expand', 'file_axes', 'load_sweep_file', 'parse_axes',
           'split_values', 'check_data', 'default_name', 'plan', 'TRAIN_COLUMN', 'Sweep', 'main', 'parse_args']
