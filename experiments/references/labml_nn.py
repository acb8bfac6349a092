"""Reference contender for the benchmark: labml_nn's own evidence experiment.

Runs ``labml_nn.uncertainty.evidence.experiment.Configs`` with the exact configuration of
its ``main()`` (Adam lr 1e-3, weight decay 5e-3, ``squared_error_bayes_risk``,
``softplus`` evidence, dropout 0.5), through labml_nn's own training loop
(``TrainValidConfigs.run`` -> ``run_step`` -> ``Trainer``), its own DataLoaders (PIL decode
per image via torchvision ``MNIST``), ``inner_iterations=10`` and its validation on the
official test set.  Only the batch size, epochs, device and data location are changed,
so that both benchmark contenders see the same data, batch size and epochs.

What is added around labml_nn, and nothing else:

* timing: a ``Configs`` subclass times each ``run_step`` (= one epoch: its 10 train chunks
  plus the 10 matching validation chunks), and the ``trainer`` object is wrapped by a
  proxy that times each of its calls (train chunk, *including* DataLoader/PIL decoding).
  ``train_samples_per_s`` = training samples / time inside the trainer calls.
* data location: labml's ``data_path`` is pointed at ``data_dir`` (labml_nn's
  ``_mnist_dataset`` uses ``lab.get_data_path()`` as the torchvision root).  The raw IDX
  files are checked up front, so torchvision's ``download=True`` finds them and never
  touches the network.
* labml side effects: ``experiment.create(writers=set())`` (no screen/app/file writers),
  lab ``path``/``experiments_path`` in a temporary folder (run folder deleted afterwards).
* test accuracy is computed afterwards by this module with the trained model over the
  whole valid (= official 10k test) set via labml_nn's own ``valid_loader``: argmax of
  the evidence.  That pass is also timed (``eval_images_per_s``).

No patch of labml_nn / labml was needed with labml_nn 0.5.1 + labml 0.5.3: the only known
breakage (``tracker.add('model', module)`` raising in ``MNISTConfigs.step``) is not on this
path because the evidence ``Configs`` overrides ``step``.  Note that labml still registers
the (temporary) project path in ``~/.labml`` as it does for any experiment.

CLI (the benchmark runs it in a child process so peak RSS is per contender)::

    python -m experiments.references.labml_nn --data-dir ../shared/data \
        --epochs 1 --batch-size 64 --device cpu

prints one JSON dict on stdout (labml's own console output goes to stderr, or nowhere
with ``--quiet``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

# The configuration of labml_nn.uncertainty.evidence.experiment.main(), verbatim.
LABML_NN_MAIN_CONFIGS: Dict[str, Any] = {
    'optimizer.optimizer': 'Adam',
    'optimizer.learning_rate': 0.001,
    'optimizer.weight_decay': 0.005,
    'loss_func': 'squared_error_bayes_risk',
    'outputs_to_evidence': 'softplus',
    'dropout': 0.5,
}


def _check_mnist_files(data_dir: Path) -> None:
    from evidential.data import dataset_spec, raw_files
    raw = data_dir / 'MNIST' / 'raw'
    missing = [path.name for path, _ in raw_files(dataset_spec('mnist'), data_dir) if not path.is_file()]
    if missing:
        # labml_nn builds torchvision MNIST with download=True: refuse here rather than
        # letting it try the network.
        raise FileNotFoundError(f'MNIST raw files missing under {raw}: {missing}')


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == 'darwin':
        return rss / (1024 * 1024)
    return rss / 1024


class _TimedCall:
    """Transparent proxy around a labml_nn ``Trainer`` that accumulates the wall time
    of its calls. Everything else is delegated to the wrapped trainer."""

    def __init__(self, inner, sync):
        self._inner = inner
        self._sync = sync
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self._sync()
        t0 = time.perf_counter()
        result = self._inner(*args, **kwargs)
        self._sync()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return result

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __bool__(self):
        # TrainValidConfigs.run_step checks ``if self.validator:``
        return bool(self._inner)


def _make_configs_class():
    """Build the timed subclass lazily so importing this module stays cheap."""
    from labml.configs import option
    from labml_nn.helpers import trainer as labml_trainer
    from labml_nn.uncertainty.evidence.experiment import Configs

    from configs import compat

    class TimedEvidenceConfigs(Configs):
        # Re-declared so the options below register on this subclass, not globally on
        # labml_nn's TrainValidConfigs.
        trainer: labml_trainer.Trainer
        validator: labml_trainer.Trainer

        def run_step(self):
            # One call of run_step is one epoch (all inner_iterations of train + valid).
            sync = self._sync_device
            if not self._epoch_seconds:
                self._resolve_configs()
            sync()
            t0 = time.perf_counter()
            super().run_step()
            sync()
            self._epoch_seconds.append(time.perf_counter() - t0)

        def _resolve_configs(self):
            # labml rewrites configs.yaml for every configuration it computes on first use (~50 ms each); this
            # app computes all of its own before its first epoch (`MNISTExperimentConfigs.resolve_configs`),
            # so the same is done here, after labml_nn's own init() and trainer/validator (same order, same
            # random numbers), to keep that one-time cost out of both contenders' first epoch.
            for key in compat.declarations(self)[0]:
                if key in ('model', 'optimizer'):
                    # labml_nn builds them inside its first step, and initialising the model draws random
                    # numbers: left there, so the run stays exactly the one labml_nn's code gives (two saves,
                    # ~0.1 s, stay in its first epoch)
                    continue
                try:
                    getattr(self, key)
                except AttributeError:  # set by labml_nn's init() rather than computed (`state_modules`)
                    pass

        def _sync_device(self):
            import torch
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)

    @option(TimedEvidenceConfigs.trainer, 'timed_default_trainer')
    def _timed_trainer(c: TimedEvidenceConfigs):
        # labml_nn's own trainer, built by its own option function, only wrapped.
        return _TimedCall(compat.labml_nn_trainer(c), c._sync_device)

    @option(TimedEvidenceConfigs.validator, 'timed_default_validator')
    def _timed_validator(c: TimedEvidenceConfigs):
        return _TimedCall(compat.labml_nn_validator(c), c._sync_device)

    return TimedEvidenceConfigs


def _evaluate(conf) -> Dict[str, float]:
    """Test accuracy of the trained model over the whole valid (official test) set,
    through labml_nn's own valid_loader; argmax of the evidence."""
    import torch

    model = conf.model
    to_evidence = conf.outputs_to_evidence
    device = conf.device
    model.eval()
    correct = 0
    total = 0
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for data, target in conf.valid_loader:
            data, target = data.to(device), target.to(device)
            evidence = to_evidence(model(data))
            correct += (evidence.argmax(dim=-1) == target).sum().item()
            total += target.numel()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return {
        'test_accuracy': correct / max(total, 1),
        'test_samples': total,
        'eval_s': seconds,
        'eval_images_per_s': total / seconds if seconds > 0 else 0.0,
    }


def run_labml_nn_reference(data_dir: str, epochs: int, batch_size: int, device: str,
                           seed: int) -> dict:
    """Train labml_nn's evidence experiment on the MNIST files in ``data_dir`` and
    return its throughput, epoch time, peak RSS and test accuracy."""
    data_path = Path(data_dir).resolve()
    _check_mnist_files(data_path)
    if epochs < 1:
        raise ValueError('epochs must be >= 1')

    import numpy as np
    import torch
    from labml import experiment, lab

    torch_device = torch.device(device)
    if torch_device.type not in ('cpu', 'cuda'):
        raise ValueError(f'labml_nn DeviceConfigs supports cpu or cuda, not {device!r}')
    use_cuda = torch_device.type == 'cuda'
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError('device cuda requested but CUDA is not available')

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    tmp_root = Path(tempfile.mkdtemp(prefix='labml_nn_reference_'))
    try:
        # labml_nn's MNIST datasets use lab.get_data_path() as torchvision root; the run
        # folder (configs yaml etc.) goes to a throwaway experiments path.
        lab.configure({
            'path': str(tmp_root),
            'data_path': str(data_path),
            'experiments_path': str(tmp_root / 'logs'),
            'check_repo_dirty': False,
        })
        assert Path(lab.get_data_path()) == data_path, lab.get_data_path()

        experiment.create(name='evidence_mnist_reference', writers=set())
        conf = _make_configs_class()()
        conf._epoch_seconds = []
        overrides = dict(LABML_NN_MAIN_CONFIGS)
        overrides.update({
            'epochs': epochs,
            'train_batch_size': batch_size,
            'trainer': 'timed_default_trainer',
            'validator': 'timed_default_validator',
            'device.use_cuda': use_cuda,
            'device.cuda_device': torch_device.index or 0,
        })
        experiment.configs(conf, overrides)

        t_run = time.perf_counter()
        with experiment.start():
            conf.run()
        run_s = time.perf_counter() - t_run

        epoch_seconds: List[float] = list(conf._epoch_seconds)
        train_time = conf.trainer.seconds
        valid_time = conf.validator.seconds
        n_train = len(conf.train_dataset)
        n_valid = len(conf.valid_dataset)
        evaluation = _evaluate(conf)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    assert len(epoch_seconds) == epochs, (len(epoch_seconds), epochs)
    train_samples = n_train * epochs
    return {
        # training samples / seconds spent inside labml_nn's Trainer calls (DataLoader +
        # PIL decode + forward/backward/step + its tracker calls), validation excluded
        'train_samples_per_s': train_samples / train_time,
        # mean wall time of one labml_nn epoch (run_step): train + its validation
        'epoch_s': sum(epoch_seconds) / len(epoch_seconds),
        'peak_rss_mb': _peak_rss_mb(),
        'test_accuracy': evaluation['test_accuracy'],
        'epochs': epochs,
        'batch_size': batch_size,
        # extras
        # training samples / whole epoch time (train + validation): labml_nn's throughput as a user sees it
        # (10k samples in a ~7 s epoch: ~1,400 samples/s)
        'epoch_train_samples_per_s': train_samples / sum(epoch_seconds),
        'epoch_s_list': epoch_seconds,
        'train_s': train_time,
        'valid_s': valid_time,
        'valid_samples_per_s': n_valid * epochs / valid_time if valid_time > 0 else 0.0,
        'run_s': run_s,
        'train_samples': n_train,
        'valid_samples': n_valid,
        'test_samples': evaluation['test_samples'],
        'eval_images_per_s': evaluation['eval_images_per_s'],
        'eval_s': evaluation['eval_s'],
        'inner_iterations': conf.inner_iterations,
        'valid_batch_size': conf.valid_batch_size,
        'device': str(conf.device),
        'seed': seed,
        'torch_threads': torch.get_num_threads(),
        'train_throughput_basis': 'trainer_calls',
    }


def parse_args(argv=None) -> argparse.Namespace:
    """The reference's options (argparse exits on a bad one); runs nothing."""
    parser = argparse.ArgumentParser(prog='python -m experiments.references.labml_nn',
                                     description=__doc__.split('\n', 1)[0])
    parser.add_argument('--data-dir', required=True, help='folder holding MNIST/raw')
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--quiet', action='store_true',
                        help="discard labml's console output instead of sending it to stderr")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    real_stdout = sys.stdout
    # labml prints its notices / progress bars with print(); keep stdout pure JSON.
    # (The progress printing stays on labml_nn's timed path, as in a normal run.)
    sink = open(os.devnull, 'w') if args.quiet else sys.stderr
    with contextlib.redirect_stdout(sink):
        result = run_labml_nn_reference(args.data_dir, args.epochs, args.batch_size,
                                        args.device, args.seed)
    if args.quiet:
        sink.close()
    real_stdout.write(json.dumps(result) + '\n')
    real_stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
