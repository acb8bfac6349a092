"""Reference contender of `python -m experiments.benchmark --family packed`: TorchUncertainty's own tutorial code.

Runs TorchUncertainty 0.13.0's Packed-Ensembles MNIST tutorial path ("From Deep Ensembles to
Packed-Ensembles") as written, with its own pieces end to end:

* the data: `torch_uncertainty.datamodules.MNISTDataModule(root=DATA_DIR, batch_size=B)` — torchvision's
  `MNIST` over the files in `--data-dir` (torchvision layout, `MNIST/raw/*-ubyte`; `prepare_data` finds them
  and downloads nothing; the files are checked here first so a missing one is an error, never a download),
  PIL decode + `v2` transforms per image in its DataLoader worker, validation on the official test set
  (the tutorial's `val_dataloaders=test_dl`). `basic_augment=False`: the app's preset trains without
  augmentation, so both contenders do the same work (TorchUncertainty's default adds `RandomCrop(28, padding=4)`);
* the model: TorchUncertainty's own `torch_uncertainty.models.classification.packed_lenet(1, 10,
  num_estimators=4, alpha=2, gamma=1)` — the tutorial's `PackedLeNet` (45,672 parameters, the same layers),
  except that it flattens the member-major features directly. The tutorial's
  `rearrange(out, "e (m c) h w -> (m e) c h w")` before flattening crashes with 0.13.0's einsum `PackedLinear`
  (`tests/test_packed.py::test_tutorial_rearrange_route_does_not_fit_torch_uncertainty_0_13_linear`);
* the training: `ClassificationRoutine(is_ensemble=True, loss=nn.CrossEntropyLoss(),
  format_batch_fn=RepeatTarget(4), optim_recipe=...)` fitted by `TUTrainer(accelerator='cpu', max_epochs=E)`.
  The recipe is the tutorial's `optim_recipe(model, 4.0)`: SGD lr 0.05 x 4, `CosineAnnealingLR(T_max=10)`.
  The tutorial returns its scheduler under the key `"scheduler"`, which Lightning ignores (with a warning:
  "Found unsupported keys in the optimizer configuration"), so as written its learning rate never decays;
  here it is returned as `"lr_scheduler"`, stepped once per epoch — the app's `preset=torch_uncertainty`;
* the test accuracy: `trainer.test(routine, datamodule=dm)`, its `test/cls/Acc` (timed: `eval_images_per_s`,
  which includes the DataLoader and every metric TorchUncertainty's routine computes).

Changed for the measurement, nothing else: no progress bar, no model summary (their console output goes
nowhere), logs and checkpoints in a temporary folder; a `Callback` times each epoch from the start of its
training batches to the end of its validation (train + validation, as the app's `time.epoch_s`; the
checkpoint written after it is outside, as the app's is) and the training part alone (`train_samples_per_s`).

Needs lightning and TorchUncertainty with scikit-learn < 1.7, which conflict with this project's pins: run it
with a separate interpreter (the benchmark's `--reference-python`), e.g. a venv built with

    python -m venv --system-site-packages /work/venvs/tu
    /work/venvs/tu/bin/pip install "torch-uncertainty[cpu]==0.13.0" "scikit-learn>=1.5,<1.7,!=1.6.0"

    $TU_PYTHON -m experiments.references.torch_uncertainty --data-dir ../shared/data --epochs 3

prints one JSON dict on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

MNIST_RAW_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
                   't10k-labels-idx1-ubyte')


def run_torch_uncertainty_reference(data_dir: str, epochs: int, batch_size: int, seed: int, *,
                                    num_estimators: int = 4, alpha: float = 2.0, gamma: int = 1,
                                    lr_per_member: float = 0.05, t_max: int = 10) -> dict:
    root = Path(data_dir).resolve()
    raw = root / 'MNIST' / 'raw'
    missing = [f for f in MNIST_RAW_FILES if not (raw / f).is_file()]
    if missing:
        raise FileNotFoundError(f'MNIST raw files missing under {raw}: {missing}')

    import torch
    from lightning.pytorch import Callback, seed_everything
    from torch import nn
    from torch_uncertainty import TUTrainer
    from torch_uncertainty.datamodules import MNISTDataModule
    from torch_uncertainty.models.classification import packed_lenet
    from torch_uncertainty.routines import ClassificationRoutine
    from torch_uncertainty.transforms import RepeatTarget

    class EpochTimer(Callback):
        def __init__(self):
            self.epoch_s, self.train_s = [], []
            self._t0 = self._tv = None

        def on_train_epoch_start(self, trainer, pl_module):
            self._t0, self._tv = time.perf_counter(), None

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking and self._t0 is not None:
                self._tv = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking and self._t0 is not None:
                now = time.perf_counter()
                self.epoch_s.append(now - self._t0)
                self.train_s.append((self._tv or now) - self._t0)
                self._t0 = None

    seed_everything(seed, verbose=False)
    dm = MNISTDataModule(root=str(root), batch_size=batch_size, basic_augment=False)
    model = packed_lenet(in_channels=1, num_classes=10, num_estimators=num_estimators, alpha=alpha, gamma=gamma)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr_per_member * num_estimators)
    recipe = {'optimizer': optimizer,
              'lr_scheduler': torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)}
    routine = ClassificationRoutine(is_ensemble=True, num_classes=10, model=model, loss=nn.CrossEntropyLoss(),
                                    format_batch_fn=RepeatTarget(num_estimators), optim_recipe=recipe)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix='tu_reference_') as tmp:
        trainer = TUTrainer(accelerator='cpu', devices=1, max_epochs=epochs, callbacks=[timer],
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
        started = time.perf_counter()
        trainer.fit(routine, datamodule=dm)
        run_s = time.perf_counter() - started
        t = time.perf_counter()
        results = trainer.test(routine, datamodule=dm, verbose=False)
        eval_s = time.perf_counter() - t
    n_train, n_test = len(dm.train), len(dm.test)
    if len(timer.epoch_s) != epochs:
        raise RuntimeError(f'timed {len(timer.epoch_s)} epochs, expected {epochs}')
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import torch_uncertainty
    return {
        'epoch_s': sum(timer.epoch_s) / epochs, 'epoch_s_list': timer.epoch_s, 'train_s_list': timer.train_s,
        'train_samples_per_s': n_train * epochs / sum(timer.train_s),
        'peak_rss_mb': rss / (1024 * 1024) if sys.platform == 'darwin' else rss / 1024,
        'test_accuracy': float(results[0]['test/cls/Acc']), 'test_samples': n_test, 'train_samples': n_train,
        'eval_images_per_s': n_test / eval_s, 'eval_s': eval_s, 'run_s': run_s,
        'n_parameters': sum(p.numel() for p in model.parameters()), 'epochs': epochs, 'batch_size': batch_size,
        'seed': seed, 'torch_threads': torch.get_num_threads(), 'num_workers': dm.num_workers,
        'torch_uncertainty': getattr(torch_uncertainty, '__version__', '?'), 'device': 'cpu',
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    p.add_argument('--data-dir', required=True, help='folder holding MNIST/raw')
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--batch-size', type=int, default=512)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cpu', help="cpu only (accepted for the benchmark's common arguments)")
    p.add_argument('--quiet', action='store_true', help="discard Lightning's console output (default: stderr)")
    args = p.parse_args(argv)
    if args.device not in ('cpu', 'auto'):
        p.error('the TorchUncertainty reference runs on the CPU only here')
    real_stdout = sys.stdout
    sink = open(os.devnull, 'w') if args.quiet else sys.stderr
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        result = run_torch_uncertainty_reference(args.data_dir, args.epochs, args.batch_size, args.seed)
    if args.quiet:
        sink.close()
    real_stdout.write(json.dumps(result) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
