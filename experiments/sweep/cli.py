"""The command line of `python -m experiments.sweep`: options, the checks before anything runs, the engine."""
import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from experiments.evaluation import EvaluateError, perturbations
from experiments.sweep.engines.local import LocalEngine
from experiments.sweep.errors import EXIT_USAGE, SweepError
from experiments.sweep.grid import load_sweep_file, parse_axes
from experiments.sweep.loop import Sweep
from experiments.sweep.processes import thread_share
from experiments.sweep.plan import check_data, default_name, plan


def ood_files(args: argparse.Namespace, cwd: Path) -> List[str]:
    """Every `--ood-file`, checked as `experiments.evaluate` checks it, as an absolute path (the runs may execute
    elsewhere); raises `SweepError` for an unusable one, before anything runs."""
    from experiments.evaluation import EvaluateError
    from experiments.evaluation.inputs import load_ood_files
    paths = [str((cwd / Path(f).expanduser()).resolve()) for f in args.ood_file]
    try:
        load_ood_files(paths)
    except EvaluateError as e:
        raise SweepError(str(e)) from None
    return paths


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = _Parser(prog='python -m experiments.sweep',
                description='Train and evaluate every combination of settings; one table over seeds.',
                epilog='Example: python -m experiments.sweep evidence_mnist kl_coef=0.01,0.03 seed=1,2,3 --jobs 2')
    p.add_argument('target', help='a family (python -m experiments.train --list) or a sweep file (.py)')
    p.add_argument('axes', nargs='*', metavar='key=v1,v2', help='values to sweep; commas split only at the top level')
    p.add_argument('--jobs', type=int, default=None,
                   help='runs at a time (local default 1; ray default: what the CPUs allow)')
    p.add_argument('--split', choices=['validation', 'test'], default=None,
                   help='evaluate on the held-out split (needs holdout>0) or the test set (default: validation '
                        'where every run holds a split out, else test)')
    p.add_argument('--name', default=None, help='sweep folder name under <experiments>/sweeps (default: from the grid)')
    p.add_argument('--engine', choices=['local', 'ray'], default='local')
    p.add_argument('--address', default=None, help="ray: a running cluster's address (default: start a local Ray)")
    p.add_argument('--cpus-per-run', type=float, default=1.0, metavar='C', help='ray: CPUs each run reserves')
    p.add_argument('--gpus-per-run', type=float, default=0.0, metavar='G', help='ray: GPUs each run reserves')
    p.add_argument('--storage', default=None, metavar='DIR',
                   help='project folder the runs and the sweep folder go to (its .labml.yaml is created if missing); '
                        'with a multi-machine Ray cluster it must be shared storage at the same path everywhere')
    perturbations.add_sample_options(p, passed_on=True)
    p.add_argument('--ood-file', action='append', default=[], metavar='PATH',
                   help='passed to experiments.evaluate: an extra OOD set (.npy of uint8 images, see its --help; '
                        'repeatable)')
    perturbations.add_own_options(p)  # --shift-file, --mce-reference: passed on to every evaluation
    p.add_argument('--dry-run', action='store_true', help='print the planned runs and what each needs; run nothing')
    args = p.parse_intermixed_args(argv)
    if args.jobs is not None and args.jobs < 1:
        p.error('--jobs must be >= 1')
    if args.cpus_per_run < 0 or args.gpus_per_run < 0:
        p.error('--cpus-per-run and --gpus-per-run must be >= 0')
    try:
        args.samples = perturbations.samples_of(args)
    except ValueError as e:
        p.error(str(e))
    if args.engine != 'ray' and (args.address or args.gpus_per_run or args.cpus_per_run != 1.0):
        p.error('--address, --cpus-per-run and --gpus-per-run need --engine ray')
    return args


LABML_YAML = 'data_path: data\nexperiments_path: logs\ncheck_repo_dirty: false\n'


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cwd = Path.cwd()
    try:
        target = Path(args.target)
        if args.target.endswith('.py') or target.is_file():
            spec = load_sweep_file(target)
            extra = parse_axes(args.axes)
            grids = [(f, [a for a in axes if a[0] not in dict(extra)] + extra) for f, axes in spec['grids']]
        else:
            spec = {'name': None, 'split': None, 'jobs': None, 'columns': None}
            grids = [(args.target, parse_axes(args.axes))]
        chosen = args.split or spec['split']
        split = chosen or 'validation'
        if split not in ('validation', 'test'):
            raise SweepError(f"split={split!r}: must be validation or test")
        jobs = args.jobs or spec['jobs']
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise SweepError(f"jobs={jobs!r}: must be an integer >= 1")
        name = args.name or spec['name'] or default_name(grids)
        if not re.fullmatch(r'[A-Za-z0-9_.+=-]+', name) or name.startswith('.'):
            raise SweepError(f"--name {name!r}: use letters, digits and _ . + = - only")
        storage = Path(args.storage).expanduser().resolve() if args.storage else None
        if storage is not None and not storage.is_dir():
            raise SweepError(f"--storage {storage}: not a folder")
        from labml import lab
        from configs.runner import use_project_folder
        if storage is not None and (storage / '.labml.yaml').is_file():
            use_project_folder(storage)
        elif storage is None and use_project_folder(cwd) is None:
            lab.get_path()
        runs = plan(grids, split if chosen else 'test', cwd)
        if not chosen and any(r['_values'].get('holdout', 1) == 0 for r in runs):
            split = 'test'
            print("note: evaluating on the test set, as runs with holdout=0 have no held-out split (set holdout>0 "
                  "to choose settings on held-out data)", file=sys.stderr)
        if storage is not None and not (storage / '.labml.yaml').is_file():
            experiments_path, data_path = storage / 'logs', storage / 'data'
            for r in runs:  # what labml will see there once the .labml.yaml exists
                if not r['_values'].get('data_dir'):
                    r['_values']['data_dir'] = str(data_path)
        else:
            experiments_path = Path(lab.get_experiments_path())
        missing_data = check_data(runs)
        ood_paths = ood_files(args, cwd)
        own = perturbations.options_of(args)
        try:  # checked as `experiments.evaluate` checks them, before anything runs
            perturbations.prepare_all(own)
        except EvaluateError as e:
            raise SweepError(str(e)) from None
        own_args = perturbations.command_line(own)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.engine == 'ray':
        from experiments.sweep.engines.ray import RayEngine, default_jobs
        jobs = jobs or default_jobs(args, len(runs))
    else:
        jobs = jobs or 1
    options = {'jobs': jobs, 'engine': args.engine, 'address': args.address, 'cpus_per_run': args.cpus_per_run,
               'gpus_per_run': args.gpus_per_run, 'storage': str(storage) if storage else None,
               # as each option's argparse name (`fgsm_samples`): None = evaluate's default
               **{p.samples.flag.replace('-', '_'): args.samples.get(p.name)
                  for p in perturbations.all_perturbations() if p.samples},
               'ood_files': ood_paths,
               'evaluate_options': own_args,
               'cwd': str(storage or cwd)}
    command = list(argv) if args.name else [*argv, '--name', name]

    class _DryEngine:
        name, capacity = args.engine, jobs
    sweep = Sweep(name=name, runs=runs, grids=grids, split=split, engine=_DryEngine(), cwd=storage or cwd,
                  experiments_path=experiments_path, command=command, options=options,
                  # each perturbation's `--X-samples N` given here, and the OOD files
                  evaluate_args=perturbations.sample_arguments(args.samples) +
                  [a for path in ood_paths for a in ('--ood-file', path)] + own_args,
                  columns=spec['columns'])
    sweep.merge_previous()
    if args.dry_run:
        print(f"sweep {name}: {len(runs)} runs, split {split}, engine {args.engine} ({jobs} at a time)\n"
              f"  folder {sweep.folder}")
        for run in runs:
            stage = sweep.next_stage(dict(run))
            what = 'done, skipped' if stage is None else {'train': 'train + evaluate', 'resume': f"resume {run.get('uuid')} + evaluate",
                                                          'evaluate': f"evaluate {run.get('uuid')}"}[stage]
            print(f"  {run['id']}: {what}\n      python -m experiments.train {run['family']} {shlex.join(run['argv'])}")
        if missing_data:
            print('  data to download first: ' + ', '.join(f'{n} into {root}' for n, root in missing_data))
        return 0
    # Valid: from here on things are written
    if storage is not None and not (storage / '.labml.yaml').is_file():
        (storage / '.labml.yaml').write_text(LABML_YAML)
    if missing_data:
        from evidential.data import DataError, load_split
        for name_, root in missing_data:
            print(f"downloading {name_} into {root} once, before the runs ...", flush=True)
            try:
                for train in (True, False):
                    load_split(name_, root, train=train, download=True)
            except DataError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_USAGE
    if args.engine == 'ray':
        if args.address and storage is None:
            print("note: with --address the runs write their folders on the machine each one runs on, under "
                  f"{storage or cwd}; for a cluster of several machines pass --storage DIR on shared storage",
                  file=sys.stderr)
        try:
            sweep.engine = RayEngine(jobs=jobs, address=args.address, cpus_per_run=args.cpus_per_run,
                                     gpus_per_run=args.gpus_per_run, sweep_env=sweep.env)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    else:
        threads = thread_share(jobs, os.environ)
        if threads:
            sweep.env.update(threads)
            print(f"note: {jobs} runs at a time on {os.cpu_count()} CPU cores: each run uses "
                  f"{threads['OMP_NUM_THREADS']} thread(s) (set OMP_NUM_THREADS to choose)", file=sys.stderr)
        sweep.engine = LocalEngine(jobs)
    return sweep.run()
