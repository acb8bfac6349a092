"""
Evaluation speed of every family: images/s of one prediction pass and the wall time of the whole default
`python -m experiments.evaluate`.

    python -m experiments.eval_speed [--family NAME ... | --family all] [--data-dir DIR] [--device cpu]
                                     [--train-size 1024] [--seed 0] [--set KEY=VALUE ...] [--X-samples N ...]

For each family a run is trained with the family's defaults for one epoch on `--train-size` images (the weights
do not change the cost of an evaluation; the settings that do — samples, members, voters — are the defaults),
then evaluated exactly as a user would, `python -m experiments.evaluate RUN` with every default (the OOD set,
FGSM, PGD, rotation, missing pixels, MNIST-C, temperature scaling and conformal sets), in its own process;
`--fgsm-samples N`, `--mnist-c-samples N`, ... are passed on to it as `experiments.sweep` passes them.
Printed per family: test images/s of the prediction pass (`timing.predict` of `evaluation.json`), the wall time of
the evaluate process, and its three slowest stages. The last line is a JSON object with every number.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent


class EvalSpeedError(RuntimeError):
    """A run failed to train or evaluate; the message says which and why."""


def _run(cmd: List[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([sys.executable, '-m', *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise EvalSpeedError(f"{what} failed (exit code {r.returncode}):\n{r.stderr[-3000:]}")
    return r


def measure(family: str, data_dir: str, device: str, train_size: int, seed: int, overrides: List[str],
            evaluate_args: List[str] = ()) -> Dict:
    """Trains one short run of `family` in a temporary project folder and times its default evaluation."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / '.labml.yaml').write_text('data_path: data\nexperiments_path: logs\n')
        argv = [f'data_dir={data_dir}', 'epochs=1', f'train_size={train_size}', f'device={device}', f'seed={seed}',
                *overrides]
        _run(['experiments.train', family, *argv], tmp, f"training {family} {' '.join(argv)}")
        run_dir = next((tmp / 'logs' / family).iterdir())
        started = time.perf_counter()
        _run(['experiments.evaluate', run_dir.name, '--device', device, *evaluate_args], tmp, f"evaluating {family}")
        wall = time.perf_counter() - started
        result = json.loads((run_dir / 'evaluation.json').read_text())
    timing = result.get('timing', {})
    return {'predict_images_per_s': result['n']['id'] / max(timing.get('predict', 0.0), 1e-9),
            'evaluate_s': round(wall, 2), 'timing': timing}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m experiments.eval_speed', description=__doc__.split('\n\n')[1].strip())
    p.add_argument('--family', nargs='+', default=['all'], help='families to measure (default: all)')
    p.add_argument('--data-dir', default=None, help="folder holding MNIST/raw (default: labml's data folder)")
    p.add_argument('--device', default='cpu', help='cpu (default), cuda or auto')
    p.add_argument('--train-size', type=int, default=1024, help="training images of each run (default 1024: whole batches of 64)")
    p.add_argument('--seed', type=int, default=0, help='seed of every run (default 0)')
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help='overrides for every run, as on the training command line')
    from experiments.evaluation import perturbations
    perturbations.add_sample_options(p, passed_on=True)
    return p


def parse_args(argv=None, p: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """The options, checked (argparse's usage error on a bad one; the family names are checked by `main`); adds
    `families` and `evaluate_args`."""
    from configs import registry
    from experiments.evaluation import perturbations
    p = p or _parser()
    args = p.parse_args(argv)
    if args.train_size < 1:
        p.error('--train-size must be >= 1')
    try:
        args.evaluate_args = perturbations.sample_arguments(perturbations.samples_of(args))
    except ValueError as e:
        p.error(str(e))
    args.families = list(registry.FAMILIES) if args.family == ['all'] else args.family
    return args


def main(argv=None) -> int:
    p = _parser()
    args = parse_args(argv, p)
    families, evaluate_args = args.families, args.evaluate_args
    from configs import registry
    unknown = [f for f in families if f not in registry.FAMILIES]
    if unknown:
        p.error(f"unknown family {', '.join(unknown)}; known: {', '.join(registry.FAMILIES)}")
    if args.data_dir is None:
        from experiments.benchmark import _lab_data_path
        args.data_dir = _lab_data_path()
    args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    if not (Path(args.data_dir) / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte').exists():
        p.error(f'no MNIST files under {args.data_dir}/MNIST/raw (pass --data-dir)')
    import torch
    print(f"evaluation speed: device {args.device}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; runs trained 1 epoch on {args.train_size} images, evaluated with every default"
          + (f" but {' '.join(evaluate_args)}" if evaluate_args else ''),
          flush=True)
    print(f"{'family':<20}{'predict img/s':>15}{'evaluate s':>12}  slowest stages (s)", flush=True)
    results = {}
    try:
        for family in families:
            m = results[family] = measure(family, args.data_dir, args.device, args.train_size, args.seed, args.set,
                                                evaluate_args)
            slowest = sorted(m['timing'].items(), key=lambda kv: -kv[1])[:3]
            print(f"{family:<20}{m['predict_images_per_s']:>15,.0f}{m['evaluate_s']:>12.1f}  "
                  + ', '.join(f'{k} {v:.1f}' for k, v in slowest), flush=True)
    except EvalSpeedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
