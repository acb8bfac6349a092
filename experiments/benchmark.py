"""
Benchmark: this project's training path against labml_nn's own evidential MNIST experiment.

    python -m experiments.benchmark [--data-dir DIR] [--epochs 1] [--batch-size 64] [--device auto] [--repeats 1]
                                    [--seed 0]

Both contenders train the labml_nn tutorial's settings (LeNet, SSE Bayes risk, softplus, Adam 1e-3,
weight decay 5e-3, dropout 0.5, piecewise KL) on the same files, batch size and epochs, each in its
own child process (so peak RSS is its own), one at a time. Printed for each: train samples/s,
epoch wall time (train + validation), peak RSS, final test accuracy and evaluation images/s; then
the ratios. The last line is `speedup_vs_labml_nn: X.XX` (labml_nn epoch time / ours).

With `--repeats N` each contender runs N times, interleaved with the other's runs, run i of both with
seed `--seed` + i. The fastest run of each counts for speed (the least disturbed by other work on the
machine) and the ratio of each neighbouring pair of runs is printed too, so the spread of the final
figure shows; the test accuracy is the mean over the N seeds (after one epoch it moves by one or two
points between seeds, more than the two contenders differ).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class BenchmarkError(RuntimeError):
    """A contender failed; the message says which and why."""


def _child(cmd, cwd) -> dict:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchmarkError(f"benchmark child failed ({' '.join(cmd[2:4])}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ours(data_dir: str, epochs: int, batch_size: int, device: str, seed: int) -> dict:
    """This project's default training path, as `python -m experiments.evidence_mnist preset=labml` runs it."""
    import contextlib
    import io

    import torch
    from configs.runner import load_trained
    from experiments.evidence_mnist import main

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / '.labml.yaml').write_text('data_path: data\nexperiments_path: logs\n')
        os.chdir(tmp)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(['preset=labml', f'data_dir={data_dir}', f'epochs={epochs}',
                         f'train_batch_size={batch_size}', f'device={device}', f'seed={seed}'])
        run_s = time.perf_counter() - started
        if code != 0:
            raise BenchmarkError(f"training failed with exit code {code}")
        run = next((Path(tmp) / 'logs' / 'evidence_mnist').iterdir()).name
        _, conf, _, state = load_trained(run)
        history = state['history']
        test = conf.dataset.test
        conf.evaluate(test)  # warm-up
        if test.images.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        pred, correct = conf.evaluate(test)
        accuracy = correct.float().mean().item()
        eval_s = time.perf_counter() - t
    epoch_s = [h['time.epoch_s'] for h in history]
    return {
        'train_samples_per_s': sum(h['time.train_samples_per_s'] for h in history) / len(history),
        'epoch_s': sum(epoch_s) / len(epoch_s), 'epoch_s_list': epoch_s,
        'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        'test_accuracy': accuracy, 'eval_images_per_s': len(test) / eval_s, 'run_s': run_s,
        'device': str(test.images.device), 'torch_threads': torch.get_num_threads(), 'seed': conf.seed,
    }


def _best(runs):
    return min(runs, key=lambda r: r['epoch_s'])


def main(argv=None) -> int:
    try:
        return _main(argv)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], prog='python -m experiments.benchmark')
    p.add_argument('--data-dir', default=str(ROOT.parent / 'shared' / 'data'),
                   help='folder holding MNIST/raw (default: ../shared/data)')
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--device', default='auto', help='auto, cpu or cuda')
    p.add_argument('--repeats', type=int, default=1,
                   help='runs per contender, run i with seed SEED+i; the fastest counts for speed, all for accuracy')
    p.add_argument('--seed', type=int, default=0, help='seed of the first run of both contenders (default 0)')
    p.add_argument('--child', choices=['ours'], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.repeats < 1:
        p.error('--epochs, --batch-size and --repeats must be >= 1')

    # The contenders run in a temporary folder: a relative --data-dir means the caller's folder
    args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    if args.child == 'ours':
        print(json.dumps(ours(args.data_dir, args.epochs, args.batch_size, args.device, args.seed)))
        return 0

    if not (Path(args.data_dir) / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte').exists():
        p.error(f'no MNIST files under {args.data_dir}/MNIST/raw (pass --data-dir)')
    import torch
    device = args.device if args.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    print(f"benchmark: {args.epochs} epoch(s), batch {args.batch_size}, device {device}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, best of {args.repeats}, "
          f"seeds {args.seed}..{args.seed + args.repeats - 1}", flush=True)
    common = ['--data-dir', args.data_dir, '--epochs', str(args.epochs), '--batch-size', str(args.batch_size),
              '--device', device]
    contenders = {'labml_nn': [sys.executable, '-m', 'experiments.reference_labml_nn', *common, '--quiet'],
                  'ours': [sys.executable, '-m', 'experiments.benchmark', '--child', 'ours', *common]}
    runs = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        # Interleaved (labml_nn, ours, labml_nn, ours, ...): a slow spell of a shared machine then slows
        # both contenders of a pair instead of all the runs of one of them
        for i in range(args.repeats):
            for name, cmd in contenders.items():
                runs[name].append(_child([*cmd, '--seed', str(args.seed + i)], tmp))
                print(f"  {name} run {i + 1}: epoch {runs[name][-1]['epoch_s']:.2f} s", flush=True)
    ref, our = _best(runs['labml_nn']), _best(runs['ours'])
    # Accuracy after so few epochs moves by points between seeds: compare means over all the runs
    for best, rs in ((ref, runs['labml_nn']), (our, runs['ours'])):
        best['seeds'] = [r['seed'] for r in rs]
        best['test_accuracy_of_each_seed'] = [r['test_accuracy'] for r in rs]
        best['test_accuracy'] = statistics.mean(best['test_accuracy_of_each_seed'])
    # The ratio of each pair of neighbouring runs: its spread says how far to trust the final figure
    paired = [r['epoch_s'] / o['epoch_s'] for r, o in zip(runs['labml_nn'], runs['ours'])]
    rows = [('train samples/s', 'train_samples_per_s', '{:,.0f}'), ('epoch time (s)', 'epoch_s', '{:.2f}'),
            ('peak RSS (MB)', 'peak_rss_mb', '{:,.0f}'),
            ('test accuracy' if args.repeats == 1 else 'test acc. (mean)', 'test_accuracy', '{:.4f}'),
            ('eval images/s', 'eval_images_per_s', '{:,.0f}')]
    print(f"\n{'':<18}{'labml_nn':>12}{'ours':>12}{'ratio':>9}")
    for label, key, fmt in rows:
        ratio = our[key] / ref[key] if ref[key] else float('nan')
        print(f"{label:<18}{fmt.format(ref[key]):>12}{fmt.format(our[key]):>12}{ratio:>8.2f}x")
    if len(paired) > 1:
        print(f"epoch time ratio of each interleaved pair: {', '.join(f'{x:.2f}' for x in paired)} "
              f"(median {statistics.median(paired):.2f})")
        for name, best in (('labml_nn', ref), ('ours', our)):
            accs = best['test_accuracy_of_each_seed']
            print(f"test accuracy of each seed, {name}: {', '.join(f'{a:.4f}' for a in accs)} "
                  f"(mean {statistics.mean(accs):.4f} +- {statistics.stdev(accs):.4f})")
    print(json.dumps({'labml_nn': ref, 'ours': our, 'paired_epoch_ratios': paired,
                      'epoch_s_of_each_run': {name: [r['epoch_s'] for r in rs] for name, rs in runs.items()}}))
    print(f"speedup_vs_labml_nn: {ref['epoch_s'] / our['epoch_s']:.2f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
