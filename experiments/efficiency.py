"""
Efficiency: this app's training step against the bare step of the same model — the limit of the app's speed.

    python -m experiments.efficiency [--family NAME ... | --family all] [--preset NAME] [--precision fp32 bf16]
                                     [--data-dir DIR] [--epochs 1] [--device cpu] [--repeats 1] [--seed 0]
                                     [--set KEY=VALUE ...]

For each family (default: `evidence_mnist` with its default preset and with `preset=labml`) and precision, a
child process trains the app for `--epochs` epochs exactly as `python -m experiments.<family>` does (train
samples/s of its training epochs: shuffling, augmentation, the learning-rate schedule, tracking, accuracy
counting), then, in the same process, with the trained run's model, loss and optimizer (the same instance, so the
same class and settings) and the same precision, times the **bare step**: forward and loss (the family's own
`training_step`), `zero_grad`, `backward` and the optimizer step on one resident batch of the run's batch size,
as many steps as one epoch has, with nothing else — no data movement, no tracking, no history, no checkpoints.

Printed per row: app and bare train samples/s and `app_efficiency = app ÷ bare`. With `--repeats N` the rows run
N times, interleaved; the best app and the best bare figure count (the least disturbed by other work on the
machine), and each run's own ratio is printed too. The last lines are `app_efficiency[FAMILY PRESET PRECISION]: X.XX`.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent


class EfficiencyError(RuntimeError):
    """A measurement failed; the message says which and why."""


def measure(family: str, preset: Optional[str], precision: str, data_dir: str, epochs: int, device: str,
            seed: int, overrides: List[str] = ()) -> Dict[str, float]:
    """Trains one run in a temporary folder and times the bare step of its model (see the module docstring)."""
    import torch
    from configs.runner import load_trained
    from evidential.precision import autocast
    from experiments.train import main

    argv = [*([f'preset={preset}'] if preset else []), f'data_dir={data_dir}', f'epochs={epochs}',
            f'device={device}', f'seed={seed}', f'precision={precision}', *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / '.labml.yaml').write_text('data_path: data\nexperiments_path: logs\n')
        os.chdir(tmp)
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(family, argv)
        if code != 0:
            raise EfficiencyError(f"{family} {' '.join(argv)}: training failed with exit code {code}")
        run = next((Path(tmp) / 'logs' / family).iterdir()).name
        _, conf, _, state = load_trained(run)
        app = max(h['time.train_samples_per_s'] for h in state['history'])

        train = conf.dataset.train
        x, y = train.images[:conf.train_batch_size], train.labels[:conf.train_batch_size]
        steps = train.n_batches(conf.train_batch_size)
        generator = torch.Generator().manual_seed(seed)
        model, optimizer, dev = conf.model, conf.optimizer, train.images.device
        samples_seen = state['samples_seen']

        def bare(n: int) -> float:
            model.train()
            if dev.type == 'cuda':
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(n):
                with autocast(conf.precision, dev):
                    _, loss, _ = conf.training_step(x, y, samples_seen, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            loss.item()  # wait for the last step
            return n * len(y) / (time.perf_counter() - started)

        bare(min(20, steps))  # warm-up: first-call allocations, oneDNN kernel choice
        bare_rate = bare(steps)
    return {'app_samples_per_s': app, 'bare_samples_per_s': bare_rate, 'app_efficiency': app / bare_rate,
            'steps': steps, 'batch': len(y), 'threads': torch.get_num_threads(), 'device': str(dev)}


def _rows(args) -> List[tuple]:
    """(family, preset or None, precision) of every measurement, in order."""
    from configs import registry
    if args.family == ['all']:
        families = list(registry.FAMILIES)
    else:
        unknown = [f for f in args.family if f not in registry.FAMILIES]
        if unknown:
            raise EfficiencyError(f"unknown family {', '.join(unknown)}; known: {', '.join(registry.FAMILIES)}")
        families = args.family
    rows = []
    for family in families:
        presets = [args.preset] if args.preset else [None]
        if family == 'evidence_mnist' and not args.preset:
            presets = [None, 'labml']  # the default and labml_nn's tutorial settings
        rows += [(family, preset, precision) for preset in presets for precision in args.precision]
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[1].strip(), prog='python -m experiments.efficiency')
    p.add_argument('--family', nargs='+', default=['evidence_mnist'],
                   help='families to measure (default evidence_mnist, with its default preset and preset=labml); '
                        '`all`: every registered family')
    p.add_argument('--preset', default=None, help='preset of every family (default: each family\'s default)')
    p.add_argument('--precision', nargs='+', choices=['fp32', 'bf16'], default=['fp32'],
                   help='precisions to measure (default fp32)')
    p.add_argument('--data-dir', default=None, help="folder holding MNIST/raw (default: labml's data folder)")
    p.add_argument('--epochs', type=int, default=1, help='training epochs of each run (default 1)')
    p.add_argument('--device', default='cpu', help='cpu (default), cuda or auto')
    p.add_argument('--repeats', type=int, default=1, help='runs per row, interleaved; the best counts')
    p.add_argument('--seed', type=int, default=0, help='seed of every run (default 0)')
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help='overrides for every run, as on the training command line (optimizer.optimizer=FusedAdam)')
    p.add_argument('--child', help=argparse.SUPPRESS)
    return p


def parse_args(argv=None, p: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """The options, checked (argparse's usage error on a bad one); runs nothing."""
    p = p or _parser()
    args = p.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        p.error('--epochs and --repeats must be >= 1')
    return args


def main(argv=None) -> int:
    try:
        return _main(argv)
    except EfficiencyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _main(argv=None) -> int:
    p = _parser()
    args = parse_args(argv, p)
    if args.data_dir is None:
        from experiments.benchmark import _lab_data_path
        args.data_dir = _lab_data_path()
    args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    if args.child:
        family, preset, precision = json.loads(args.child)
        print(json.dumps(measure(family, preset, precision, args.data_dir, args.epochs, args.device, args.seed,
                                 args.set)))
        return 0
    if not (Path(args.data_dir) / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte').exists():
        p.error(f'no MNIST files under {args.data_dir}/MNIST/raw (pass --data-dir)')
    rows = _rows(args)
    import torch
    print(f"efficiency: {args.epochs} epoch(s) per run, device {args.device}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, best of {args.repeats}, seed {args.seed}"
          + (f", {' '.join(args.set)}" if args.set else ''), flush=True)
    results: Dict[tuple, List[dict]] = {row: [] for row in rows}
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    for i in range(args.repeats):
        for row in rows:
            cmd = [sys.executable, '-m', 'experiments.efficiency', '--child', json.dumps(row),
                   '--data-dir', args.data_dir, '--epochs', str(args.epochs), '--device', args.device,
                   '--seed', str(args.seed), *(['--set', *args.set] if args.set else [])]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise EfficiencyError(f"{_name(row)} failed:\n{r.stderr[-3000:]}")
            results[row].append(json.loads(r.stdout.strip().splitlines()[-1]))
            m = results[row][-1]
            print(f"  {_name(row)} run {i + 1}: app {m['app_samples_per_s']:,.0f} samples/s, bare "
                  f"{m['bare_samples_per_s']:,.0f} samples/s, ratio {m['app_efficiency']:.3f}", flush=True)
    print(f"\n{'':<36}{'app samples/s':>15}{'bare samples/s':>16}{'app/bare':>10}")
    summary = {}
    for row, runs in results.items():
        app = max(r['app_samples_per_s'] for r in runs)
        bare = max(r['bare_samples_per_s'] for r in runs)
        summary[_name(row)] = {'app_samples_per_s': app, 'bare_samples_per_s': bare, 'app_efficiency': app / bare,
                               'ratios_of_each_run': [r['app_efficiency'] for r in runs],
                               'median_ratio': statistics.median(r['app_efficiency'] for r in runs)}
        print(f"{_name(row):<36}{app:>15,.0f}{bare:>16,.0f}{app / bare:>10.3f}")
    print(json.dumps(summary))
    for name, s in summary.items():
        print(f"app_efficiency[{name}]: {s['app_efficiency']:.2f}")
    return 0


def _name(row: tuple) -> str:
    family, preset, precision = row
    return f"{family} {preset or 'default'} {precision}"


if __name__ == '__main__':
    sys.exit(main())
