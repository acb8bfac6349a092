"""Reference contender of `python -m experiments.benchmark --family bayes`: the Bayesian LeNet written in Pyro.

The same network as this app's `bayes_mnist` (`evidential.models.lenet.LeNet`: conv 20 -> pool -> ReLU ->
conv 50 -> pool -> ReLU -> fc 500 -> ReLU -> fc K, no dropout), written the way Pyro's documentation writes a
Bayesian network:

* a `PyroModule` LeNet whose every weight and bias is a `PyroSample` with the prior N(0, prior_scale^2);
* an `AutoNormal` guide (mean-field Gaussian over every weight and bias) with `init_scale` = this app's
  `sigma_init` and its means initialised like the app's (PyTorch's default initialisation of a plain LeNet,
  drawn with the same seed), through `init_to_value`;
* `SVI` with `Trace_ELBO`: the weights are sampled once per batch, as Pyro does (no local reparametrisation),
  and the KL enters as the Monte-Carlo estimate log q(w) - log p(w);
* the loss scaled per training example like the app's: the likelihood sits in
  `pyro.plate('data', N_train, subsample_size=B)` (scaled N_train / B) and model and guide run under
  `poutine.scale(1 / N_train)`, so the loss is mean NLL of the batch + (log q - log p) / N_train;
* the app's optimiser: Adam (lr 1e-3 by default), the learning rate decayed by the app's per-step cosine
  (`pyro.optim.LambdaLR`, factor 1/2 (1 + cos(pi * samples seen / total samples))), stepped after every batch;
* the same data: the MNIST files in `--data-dir` (torchvision layout, never downloaded), decoded once into a
  tensor, normalised with MNIST's mean and std, batched by a shuffled index, as the app does — so the ratio
  measures the model and the inference, not the data pipeline;
* the posterior predictive: `pyro.infer.Predictive(model, guide=guide, num_samples=S, return_sites=['logits'])`,
  the mean softmax of S sampled networks, argmax for the accuracy (timed: `eval_images_per_s`).

    python -m experiments.references.pyro --data-dir ../shared/data --epochs 1 --batch-size 64 --seed 0

prints one JSON dict on stdout (`epoch_s`: the training epoch, `train_samples_per_s`, `test_accuracy`,
`eval_s_per_image`, ...).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _load(data_dir: Path, train: bool):
    from torchvision.datasets import MNIST
    prefix = 'train' if train else 't10k'
    raw = data_dir / 'MNIST' / 'raw'
    missing = [f for f in (f'{prefix}-images-idx3-ubyte', f'{prefix}-labels-idx1-ubyte') if not (raw / f).is_file()]
    if missing:
        raise FileNotFoundError(f'MNIST raw files missing under {raw}: {missing}')
    ds = MNIST(str(data_dir), train=train, download=False)
    images = (ds.data.float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)).unsqueeze(1).contiguous()
    return images, ds.targets.clone()


def build(n_classes: int, prior_scale: float):
    """The Pyro Bayesian LeNet: every weight and bias a `PyroSample` with prior N(0, prior_scale^2)."""
    import pyro
    import pyro.distributions as dist
    import torch.nn as nn
    import torch.nn.functional as F
    from pyro.nn import PyroModule, PyroSample

    class PyroLeNet(PyroModule):
        def __init__(self):
            super().__init__()
            self.conv1 = PyroModule[nn.Conv2d](1, 20, 5)
            self.conv2 = PyroModule[nn.Conv2d](20, 50, 5)
            self.fc1 = PyroModule[nn.Linear](50 * 4 * 4, 500)
            self.fc2 = PyroModule[nn.Linear](500, n_classes)
            for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
                for name, p in list(layer.named_parameters(recurse=False)):
                    delattr(layer, name)
                    setattr(layer, name,
                            PyroSample(dist.Normal(0., prior_scale).expand(p.shape).to_event(p.dim())))
            self.n_train = 1

        def forward(self, x, y=None):
            h = F.relu(F.max_pool2d(self.conv1(x), 2))
            h = F.relu(F.max_pool2d(self.conv2(h), 2))
            h = F.relu(self.fc1(h.flatten(1)))
            logits = pyro.deterministic('logits', self.fc2(h))
            with pyro.plate('data', self.n_train, subsample_size=x.shape[0]):
                pyro.sample('obs', dist.Categorical(logits=logits), obs=y)
            return logits

    return PyroLeNet()


def run_pyro_reference(data_dir: str, epochs: int, batch_size: int, seed: int, *, lr: float = 1e-3,
                       prior_scale: float = 1.0, sigma_init: float = 0.005, mc_samples: int = 30,
                       test_images: int = 0, threads: int = 0) -> dict:
    import pyro
    import pyro.optim
    import torch
    import torch.nn as nn
    from pyro import poutine
    from pyro.infer import SVI, Predictive, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.autoguide.initialization import init_to_value

    if threads:
        torch.set_num_threads(threads)
    root = Path(data_dir).resolve()
    x_train, y_train = _load(root, True)
    x_test, y_test = _load(root, False)
    if test_images:
        x_test, y_test = x_test[:test_images], y_test[:test_images]
    n_train = len(y_train)

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    # The guide's means start where the app's do: PyTorch's initialisation of a plain LeNet with the same seed
    torch.manual_seed(seed)
    plain = [nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5), nn.Linear(800, 500), nn.Linear(500, 10)]
    init = {f'{name}.{p}': getattr(layer, p).detach().clone()
            for name, layer in zip(('conv1', 'conv2', 'fc1', 'fc2'), plain) for p in ('weight', 'bias')}
    model = build(10, prior_scale)
    model.n_train = n_train
    scaled_model = poutine.scale(model, scale=1.0 / n_train)
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=init), init_scale=sigma_init)
    scaled_guide = poutine.scale(guide, scale=1.0 / n_train)

    total = epochs * n_train

    def cosine(step: int) -> float:  # the app's `lr_schedule=cosine`: per step, to 0 at the end of the run
        return 0.5 * (1 + math.cos(math.pi * min(step * batch_size / total, 1.0)))

    scheduler = pyro.optim.LambdaLR({'optimizer': torch.optim.Adam, 'optim_args': {'lr': lr}, 'lr_lambda': cosine})
    svi = SVI(scaled_model, scaled_guide, scheduler, loss=Trace_ELBO())

    generator = torch.Generator().manual_seed(seed)
    epoch_s, losses = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(n_train, generator=generator)
        loss_sum = 0.
        for start in range(0, n_train, batch_size):
            idx = order[start:start + batch_size]
            loss_sum += svi.step(x_train[idx], y_train[idx]) * len(idx)
            scheduler.step()
        epoch_s.append(time.perf_counter() - started)
        losses.append(loss_sum / n_train)

    predictive = Predictive(model, guide=guide, num_samples=mc_samples, return_sites=['logits'])
    with torch.no_grad():
        predictive(x_test[:8])  # warm-up
        t = time.perf_counter()
        probs = torch.zeros(len(y_test), 10)
        for start in range(0, len(y_test), 2048):
            logits = predictive(x_test[start:start + 2048])['logits']  # [S, N, K] (or [S, 1, N, K])
            probs[start:start + 2048] = logits.reshape(mc_samples, -1, 10).softmax(-1).mean(0)
        eval_s = time.perf_counter() - t
    accuracy = (probs.argmax(-1) == y_test).float().mean().item()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        'epoch_s': sum(epoch_s) / len(epoch_s), 'epoch_s_list': epoch_s,
        'train_samples_per_s': n_train * epochs / sum(epoch_s),
        'peak_rss_mb': rss / (1024 * 1024) if sys.platform == 'darwin' else rss / 1024,
        'test_accuracy': accuracy, 'test_samples': len(y_test), 'mc_samples': mc_samples,
        'eval_images_per_s': len(y_test) / eval_s, 'eval_s_per_image': eval_s / len(y_test),
        'loss_of_each_epoch': losses, 'train_samples': n_train, 'epochs': epochs, 'batch_size': batch_size,
        'seed': seed, 'torch_threads': torch.get_num_threads(), 'pyro': pyro.__version__, 'device': 'cpu',
        'epoch_basis': 'training epoch (SVI steps over the training set)',
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    p.add_argument('--data-dir', required=True, help='folder holding MNIST/raw')
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--prior-scale', type=float, default=1.0)
    p.add_argument('--sigma-init', type=float, default=0.005)
    p.add_argument('--mc-samples', type=int, default=30)
    p.add_argument('--test-images', type=int, default=0, help='score only the first N test images (0: all)')
    p.add_argument('--device', default='cpu', help='cpu only (accepted for the benchmark\'s common arguments)')
    args = p.parse_args(argv)
    if args.device not in ('cpu', 'auto'):
        p.error('the Pyro reference runs on the CPU only')
    result = run_pyro_reference(args.data_dir, args.epochs, args.batch_size, args.seed, lr=args.lr,
                                prior_scale=args.prior_scale, sigma_init=args.sigma_init,
                                mc_samples=args.mc_samples, test_images=args.test_images)
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
