"""
Benchmark: this project's training paths against the tutorials' own code (labml_nn, TorchUncertainty, Pyro).

    python -m experiments.benchmark [--family evidence|packed|bayes] [--data-dir DIR] [--epochs 1] [--batch-size 64]
                                    [--device auto] [--repeats 1] [--seed 0] [--reference-python PATH]
                                    [--mc-samples 30] [--test-images N]

With the default `--family evidence`:

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

`--family` chooses the comparison (default `evidence`, the one above, unchanged):

* `--family packed`: this app's packed LeNet-5 (`python -m experiments.packed_mnist preset=torch_uncertainty`)
  against TorchUncertainty's own tutorial code (`experiments.references.torch_uncertainty`: `MNISTDataModule`,
  `packed_lenet`, `ClassificationRoutine`, `TUTrainer`), batch 512 and 3 epochs by default. The reference needs
  lightning and TorchUncertainty, which conflict with this project's pins, so it runs under another interpreter:
  `--reference-python PATH`, or the environment variable `TU_PYTHON` (nothing else is looked for). Last line
  `speedup_vs_torch_uncertainty: X.XX`.
* `--family bayes`: this app's Bayesian LeNet (`bayes_mnist` defaults, trained on the whole training set
  without augmentation: `holdout=0 augment_shift=0 augment_rotate=0`) against the same model written in Pyro
  (`experiments.references.pyro`: `PyroSample` priors, `AutoNormal`, `SVI` + `Trace_ELBO`), batch 64 and 1
  epoch by default. Epoch time here is the training epoch alone (the app validates with the posterior mean,
  `mc_samples=0`, so that the test set is not scored 30 times per epoch); both are then scored on the test set
  (the first `--test-images` of it) with the posterior predictive of `--mc-samples` (30) sampled networks,
  timed: `eval ms/image`. Last line `speedup_vs_pyro: X.XX`.
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
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent


class BenchmarkError(RuntimeError):
    """A contender failed; the message says which and why."""


def _child(cmd, cwd) -> dict:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchmarkError(f"benchmark child failed ({' '.join(cmd[2:4])}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# What each family runs on this app's side: the experiment, and its command line beyond data, epochs, batch,
# device and seed
OUR_RUNS = {
    'evidence': ('evidence_mnist', ['preset=labml']),
    'packed': ('packed_mnist', ['preset=torch_uncertainty']),
    # the whole training set, as the Pyro reference sees it, without the augmentation it does not have;
    # validation with the posterior mean (the test set is scored at `mc_samples` once, after training)
    'bayes': ('bayes_mnist', ['holdout=0', 'augment_shift=0', 'augment_rotate=0', 'mc_samples=0']),
}


def ours(data_dir: str, epochs: int, batch_size: int, device: str, seed: int, family: str = 'evidence',
         mc_samples: int = 30, test_images: int = 0) -> dict:
    """This project's training path, as `python -m experiments.<family's experiment> ...` runs it (`OUR_RUNS`)."""
    import contextlib
    import io

    import torch
    from configs.runner import load_trained
    from evidential.data import TensorSplit
    from experiments.train import main

    experiment, extra = OUR_RUNS[family]
    if family == 'packed':
        # The tutorial's SGD is `torch.optim.SGD`, whose first `step` imports `torch._dynamo` (~1.7 s, once per
        # process, inside our first epoch); TorchUncertainty's process has imported it with lightning before its
        # timed epochs. Imported here, the one-time cost is outside the timed epochs for both.
        import torch._dynamo  # noqa: F401
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / '.labml.yaml').write_text('data_path: data\nexperiments_path: logs\n')
        os.chdir(tmp)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(experiment, [*extra, f'data_dir={data_dir}', f'epochs={epochs}',
                                     f'train_batch_size={batch_size}', f'device={device}', f'seed={seed}'])
        run_s = time.perf_counter() - started
        if code != 0:
            raise BenchmarkError(f"training failed with exit code {code}")
        run = next((Path(tmp) / 'logs' / experiment).iterdir()).name
        _, conf, _, state = load_trained(run)
        history = state['history']
        test = conf.dataset.test
        evaluate = conf.evaluate
        if family == 'bayes':
            # the posterior predictive of `mc_samples` sampled networks (the family's default, 30; the run
            # validated with the posterior mean)
            evaluate = lambda split: _bayes_evaluate(conf, split, mc_samples)  # noqa: E731
            if test_images:
                test = TensorSplit(test.images[:test_images], test.labels[:test_images])
            evaluate(TensorSplit(test.images[:64], test.labels[:64]))  # warm-up
        else:
            conf.evaluate(test)  # warm-up
        if test.images.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        pred, correct = evaluate(test)
        accuracy = correct.float().mean().item()
        eval_s = time.perf_counter() - t
    epoch_s = [h['time.epoch_s'] for h in history]
    result = {
        'train_samples_per_s': sum(h['time.train_samples_per_s'] for h in history) / len(history),
        'epoch_s': sum(epoch_s) / len(epoch_s), 'epoch_s_list': epoch_s,
        'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        'test_accuracy': accuracy, 'eval_images_per_s': len(test) / eval_s, 'run_s': run_s,
        'device': str(test.images.device), 'torch_threads': torch.get_num_threads(), 'seed': conf.seed,
    }
    if family != 'evidence':
        result.update({'experiment': experiment, 'command': [*extra, f'epochs={epochs}',
                                                             f'train_batch_size={batch_size}'],
                       'train_samples': len(conf.dataset.train), 'test_samples': len(test)})
    if family == 'bayes':
        # the training epoch alone, as the Pyro reference times it (validation is what `eval` measures)
        train_s = [len(conf.dataset.train) / h['time.train_samples_per_s'] for h in history]
        result.update({'epoch_with_validation_s': result['epoch_s'], 'epoch_s': sum(train_s) / len(train_s),
                       'epoch_s_list': train_s, 'mc_samples': mc_samples, 'eval_s_per_image': eval_s / len(test),
                       'epoch_basis': 'training epoch (validation excluded)'})
    return result


def _bayes_evaluate(conf, split, samples: int):
    """`conf.evaluate(split)` of a `bayes_mnist` run with `mc_samples=samples`: `BayesConfigs.eval_forward`'s
    `bayes_logits(model, x, samples, networks=True)` per batch, joined, then the family's `predict`."""
    import torch
    from evidential.models.bayes import bayes_logits
    with torch.inference_mode():
        conf.model.eval()
        outputs = [bayes_logits(conf.model, x, samples, networks=True)
                   for x, _ in split.batches(conf.valid_batch_size)]
        pred = conf.predict(torch.cat(outputs, dim=-2))
    return pred, pred.probs.argmax(-1) == split.labels


#: The environment variable naming the TorchUncertainty reference's interpreter (when `--reference-python` does not)
TU_PYTHON_ENV = 'TU_PYTHON'
TU_BUILD_HINT = ('python -m venv --system-site-packages VENV && VENV/bin/pip install '
                 '"torch-uncertainty[cpu]==0.13.0" "scikit-learn>=1.5,<1.7,!=1.6.0"')


def reference_python(explicit: str = None) -> str:
    """The interpreter of the TorchUncertainty reference: `explicit` (`--reference-python`), else `$TU_PYTHON`.
    Raises `BenchmarkError` (saying how to build one) when there is none or it lacks TorchUncertainty or
    lightning."""
    candidate = explicit or os.environ.get(TU_PYTHON_ENV, '').strip() or None
    if not candidate:
        raise BenchmarkError("--family packed runs TorchUncertainty's tutorial code with another interpreter "
                             "(lightning and TorchUncertainty conflict with this project's pins), and none was "
                             f"found: pass --reference-python PATH or set TU_PYTHON; to build one: {TU_BUILD_HINT}")
    try:
        check = subprocess.run([candidate, '-c', 'import importlib.util as u, sys; sys.exit(0 if '
                                'u.find_spec("torch_uncertainty") and u.find_spec("lightning") else 3)'],
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchmarkError(f"the reference interpreter {candidate} cannot be run ({e}); "
                             f"build one with: {TU_BUILD_HINT}") from None
    if check.returncode != 0:
        raise BenchmarkError(f"the reference interpreter {candidate} cannot import torch_uncertainty and lightning "
                             f"(exit {check.returncode}{': ' + check.stderr.strip()[-300:] if check.stderr.strip() else ''}); "
                             f"build one with: {TU_BUILD_HINT}")
    return candidate


def _lab_data_path() -> str:
    """labml's data folder, where training looks when `data_dir` is not given."""
    from labml import lab
    from configs.runner import use_project_folder
    use_project_folder()
    return str(lab.get_data_path())


def _best(runs):
    return min(runs, key=lambda r: r['epoch_s'])


def main(argv=None) -> int:
    try:
        return _main(argv)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


# Per family: the reference contender's name, default epochs and batch size (the app's preset's / defaults')
FAMILY_DEFAULTS = {'evidence': ('labml_nn', 1, 64), 'packed': ('torch_uncertainty', 3, 512),
                   'bayes': ('pyro', 1, 64)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], prog='python -m experiments.benchmark')
    p.add_argument('--family', choices=list(FAMILY_DEFAULTS), default='evidence',
                   help='evidence (default): labml_nn; packed: TorchUncertainty; bayes: Pyro')
    p.add_argument('--data-dir', default=None,
                   help="folder holding MNIST/raw (default: labml's data folder, `data_path` of the nearest "
                        ".labml.yaml, as for training)")
    p.add_argument('--epochs', type=int, default=None, help='default: 1 (evidence, bayes), 3 (packed)')
    p.add_argument('--batch-size', type=int, default=None, help='default: 64 (evidence, bayes), 512 (packed)')
    p.add_argument('--device', default='auto', help='auto, cpu or cuda')
    p.add_argument('--repeats', type=int, default=1,
                   help='runs per contender, run i with seed SEED+i; the fastest counts for speed, all for accuracy')
    p.add_argument('--seed', type=int, default=0, help='seed of the first run of both contenders (default 0)')
    p.add_argument('--reference-python', default=None,
                   help='--family packed: the interpreter with TorchUncertainty and lightning '
                        f'(default: the environment variable {TU_PYTHON_ENV})')
    p.add_argument('--mc-samples', type=int, default=30, help='--family bayes: sampled networks per prediction')
    p.add_argument('--test-images', type=int, default=0,
                   help='--family bayes: score the first N test images only (default 0: all)')
    p.add_argument('--child', choices=['ours'], help=argparse.SUPPRESS)
    return p


def parse_args(argv=None, p: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """The benchmark's options, checked (exits with argparse's usage error on a bad one); runs nothing."""
    p = p or _parser()
    args = p.parse_args(argv)
    _, default_epochs, default_batch = FAMILY_DEFAULTS[args.family]
    args.epochs = default_epochs if args.epochs is None else args.epochs
    args.batch_size = default_batch if args.batch_size is None else args.batch_size
    if args.epochs < 1 or args.batch_size < 1 or args.repeats < 1:
        p.error('--epochs, --batch-size and --repeats must be >= 1')
    if args.mc_samples < 1 or args.test_images < 0:
        p.error('--mc-samples must be >= 1 and --test-images >= 0')
    return args


def _main(argv=None) -> int:
    p = _parser()
    args = parse_args(argv, p)
    ref_name = FAMILY_DEFAULTS[args.family][0]

    # The contenders run in a temporary folder: a relative --data-dir means the caller's folder
    args.data_dir = str(Path(args.data_dir if args.data_dir is not None else _lab_data_path()).expanduser().resolve())
    if args.child == 'ours':
        print(json.dumps(ours(args.data_dir, args.epochs, args.batch_size, args.device, args.seed, args.family,
                              args.mc_samples, args.test_images)))
        return 0

    if not (Path(args.data_dir) / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte').exists():
        p.error(f'no MNIST files under {args.data_dir}/MNIST/raw (pass --data-dir)')
    import torch
    device = args.device if args.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    if args.family != 'evidence' and device != 'cpu':
        p.error(f'--family {args.family}: the reference runs on the CPU only; pass --device cpu')
    reference = reference_python(args.reference_python) if args.family == 'packed' else None
    print(f"benchmark: {args.epochs} epoch(s), batch {args.batch_size}, device {device}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, best of {args.repeats}, "
          f"seeds {args.seed}..{args.seed + args.repeats - 1}"
          + ('' if args.family == 'evidence' else f", family {args.family} vs {ref_name}")
          + (f", reference interpreter {reference}" if reference else '')
          + (f", posterior predictive of {args.mc_samples} samples on "
             f"{args.test_images or 'all'} test images" if args.family == 'bayes' else ''), flush=True)
    common = ['--data-dir', args.data_dir, '--epochs', str(args.epochs), '--batch-size', str(args.batch_size),
              '--device', device]
    ours_cmd = [sys.executable, '-m', 'experiments.benchmark', '--child', 'ours', *common]
    if args.family == 'evidence':
        contenders = {'labml_nn': [sys.executable, '-m', 'experiments.references.labml_nn', *common, '--quiet'],
                      'ours': ours_cmd}
    elif args.family == 'packed':
        contenders = {'torch_uncertainty': [reference, '-m', 'experiments.references.torch_uncertainty', *common,
                                            '--quiet'],
                      'ours': [*ours_cmd, '--family', 'packed']}
    else:
        sampling = ['--mc-samples', str(args.mc_samples), '--test-images', str(args.test_images)]
        contenders = {'pyro': [sys.executable, '-m', 'experiments.references.pyro', *common, *sampling],
                      'ours': [*ours_cmd, '--family', 'bayes', *sampling]}
    runs = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        # Interleaved (reference, ours, reference, ours, ...): a slow spell of a shared machine then slows
        # both contenders of a pair instead of all the runs of one of them
        for i in range(args.repeats):
            for name, cmd in contenders.items():
                runs[name].append(_child([*cmd, '--seed', str(args.seed + i)], tmp))
                print(f"  {name} run {i + 1}: epoch {runs[name][-1]['epoch_s']:.2f} s", flush=True)
    ref, our = _best(runs[ref_name]), _best(runs['ours'])
    # Accuracy after so few epochs moves by points between seeds: compare means over all the runs
    for best, rs in ((ref, runs[ref_name]), (our, runs['ours'])):
        best['seeds'] = [r['seed'] for r in rs]
        best['test_accuracy_of_each_seed'] = [r['test_accuracy'] for r in rs]
        best['test_accuracy'] = statistics.mean(best['test_accuracy_of_each_seed'])
    # The ratio of each pair of neighbouring runs: its spread says how far to trust the final figure
    paired = [r['epoch_s'] / o['epoch_s'] for r, o in zip(runs[ref_name], runs['ours'])]
    acc_label = 'test accuracy' if args.repeats == 1 else 'test acc. (mean)'
    rows = [('train samples/s', 'train_samples_per_s', '{:,.0f}'), ('epoch time (s)', 'epoch_s', '{:.2f}'),
            ('peak RSS (MB)', 'peak_rss_mb', '{:,.0f}'), (acc_label, 'test_accuracy', '{:.4f}'),
            ('eval images/s', 'eval_images_per_s', '{:,.0f}')]
    if args.family == 'bayes':
        rows[1] = ('train epoch (s)', 'epoch_s', '{:.2f}')
        rows[3] = (f'{acc_label} S={args.mc_samples}', 'test_accuracy', '{:.4f}')
        for best in (ref, our):
            best['eval_ms_per_image'] = best['eval_s_per_image'] * 1e3
        rows.append((f'eval ms/image S={args.mc_samples}', 'eval_ms_per_image', '{:.3f}'))
    width = max(12, len(ref_name) + 2)
    print(f"\n{'':<18}{ref_name:>{width}}{'ours':>12}{'ratio':>9}")
    for label, key, fmt in rows:
        ratio = our[key] / ref[key] if ref[key] else float('nan')
        print(f"{label:<18}{fmt.format(ref[key]):>{width}}{fmt.format(our[key]):>12}{ratio:>8.2f}x")
    if len(paired) > 1:
        print(f"epoch time ratio of each interleaved pair: {', '.join(f'{x:.2f}' for x in paired)} "
              f"(median {statistics.median(paired):.2f})")
        for name, best in ((ref_name, ref), ('ours', our)):
            accs = best['test_accuracy_of_each_seed']
            print(f"test accuracy of each seed, {name}: {', '.join(f'{a:.4f}' for a in accs)} "
                  f"(mean {statistics.mean(accs):.4f} +- {statistics.stdev(accs):.4f})")
    summary = {ref_name: ref, 'ours': our, 'paired_epoch_ratios': paired,
               'epoch_s_of_each_run': {name: [r['epoch_s'] for r in rs] for name, rs in runs.items()}}
    if args.family != 'evidence':
        summary['family'] = args.family
    print(json.dumps(summary))
    print(f"speedup_vs_{ref_name}: {ref['epoch_s'] / our['epoch_s']:.2f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
