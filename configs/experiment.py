"""
# Shared labml configurations for MNIST-style uncertainty experiments

`MNISTExperimentConfigs` declares what every experiment of this app shares — data, device, seed,
model body, optimizer (labml_nn's `OptimizerConfigs`), epochs, batch sizes — and runs the
training loop: tensor-resident data, per-step tracking, whole-epoch accuracies, uncertainty
histograms, an atomic checkpoint at the end of every epoch, resume, and clean stops on Ctrl-C,
SIGTERM and non-finite numbers.

Subclasses say what the model's outputs mean: `training_loss()` for one batch and `predict()`
for the expected class probabilities (and the uncertainty mass, where there is one).
"""
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from labml import lab, monit, tracker
from labml.configs import BaseConfigs, option
from labml_nn.optimizers.configs import OptimizerConfigs

from evidential.data import TensorSplit, dataset_spec, holdout_split, load_split, subsample, normalize, resolve_device, \
    tensor_split
from evidential.precision import autocast
from evidential.prediction import Prediction, categorical_entropy
from evidential.schedules import cosine_annealing, cosine_decay
from configs.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint, save_checkpoint
from configs.compat import declarations, silence_monitor, skip_dynamo_import
from configs.histograms import Values, epoch_record, prediction_distributions, write_epoch


# every process that builds an experiment's optimizer: ~1.7 s of CPU less at start (`configs.compat`)
skip_dynamo_import()


class TrainingStopped(RuntimeError):
    """Training stopped early (non-finite numbers); the message says where and why, `run_dir` which run."""
    run_dir: Optional[Path] = None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during training; `signal_number` says which."""

    def __init__(self, signal_number: int, run_dir: Optional[Path] = None):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number
        self.run_dir = run_dir


@dataclass
class Data:
    """The splits of one dataset, resident on the training device."""
    name: str
    n_classes: int
    train: TensorSplit
    valid: TensorSplit
    test: TensorSplit
    # Where validation comes from: 'holdout' (part of the training set) or 'test'
    valid_source: str


QUANTILES = (0.1, 0.5, 0.9)


class MNISTExperimentConfigs(BaseConfigs):
    """
    ## Configurations shared by every family

    Data, device, seed, optimizer (labml_nn's `OptimizerConfigs`), epochs, batch sizes, and the
    training loop. What a model body needs (dropout, augmentation, outliers) is declared by the families
    that use it (`configs/lenet.py`). Values are set from presets and the command line (`configs/cli.py`);
    options (`dataset`, `model`, `optimizer.optimizer`, ...) are chosen by name.

    A family says what its model's outputs mean: `training_loss()` for one batch and `predict()` for
    a `Prediction` (expected probabilities and the family's own scores).
    """
    # The labml experiment name (the run folder is `logs/<experiment_name>/<uuid>`)
    experiment_name: str = 'mnist'

    # Dataset, chosen by name: `mnist` or `fashion_mnist`
    dataset: Data
    # Folder holding `MNIST/raw` / `FashionMNIST/raw`; empty means labml's data path (`data/`)
    data_dir: str = ''
    # Download missing dataset files with torchvision; False fails at once, saying where the files go
    download: bool = True
    # Fraction of the training set held out for validation and model selection;
    # 0 validates on the test set, as labml_nn's tutorial does
    holdout: float = 0.0
    # Training images used, taken at random (seeded, nested across sizes) from the training set after the
    # holdout; 0 uses all of them. For learning curves: the held-out and test sets stay the same
    train_size: int = 0
    # `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`
    device: str = 'auto'
    # Seed of parameter initialisation, dropout, holdout split and shuffling
    seed: int = 5
    # Arithmetic of forward passes and losses: `fp32`, or `bf16` (autocast to bfloat16; parameters, gradients
    # and optimizer state stay float32). bf16 needs native support: CUDA, or an x86 CPU with AVX512-BF16/AMX
    precision: str = 'fp32'

    # Passes over the training set
    epochs: int = 10
    # Training images per optimizer step
    train_batch_size: int = 64
    # Evaluation batch size: ~256 images keep activations in cache (measured fastest on CPU)
    valid_batch_size: int = 256
    # Training steps between two tracker writes (per-step values are averaged over them)
    log_interval: int = 10
    # Learning rate over training: `constant`, `cosine` decay to 0 over the run (per step), or `cosine_epochs`:
    # PyTorch's CosineAnnealingLR with a period of `lr_period_epochs`, stepped once per epoch (TorchUncertainty)
    lr_schedule: str = 'constant'
    # T_max of `cosine_epochs`, in epochs
    lr_period_epochs: float = 10.0

    # The model (`self.model`) is declared by each family, with its own options: labml keeps options on the
    # class that declares the key, so a model declared here would share its options with every family.
    # Number of classes, taken from the data
    n_classes: int

    # labml_nn's configurable optimizer: `optimizer.optimizer`, `optimizer.learning_rate`, ...
    optimizer: OptimizerConfigs

    # A run uuid (or run folder) to continue from its last checkpoint
    resume: str = ''
    # URL of a labml dashboard to report to (`python -m experiments.dashboard`), empty for none
    dashboard: str = ''

    # ------------------------------------------------------------------ what families define
    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The loss to minimise for one batch, and extra per-step values to track (tensors)."""
        raise NotImplementedError

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """Expected class probabilities and the family's own scores from the model's outputs."""
        raise NotImplementedError

    def transform_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch as the model trains on it (augmentation); `generator` is the run's CPU generator."""
        return x

    def training_step(self, x: torch.Tensor, y: torch.Tensor, samples_seen: int,
                      generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """Forward pass and loss of one (transformed) training batch: the outputs for `x`, the loss and extras."""
        outputs = self.model(x)
        loss, extras = self.training_loss(outputs, y, samples_seen)
        return outputs, loss, extras

    def nonfinite_hint(self) -> str:
        """The likely cause of non-finite numbers, for the error message."""
        return f"the learning rate ({self.optimizer.param_groups[0]['lr']:g}) may be too large"

    def evaluation_notes(self, outputs: torch.Tensor, split_name: str) -> List[str]:
        """Warnings about a split's raw evaluation outputs, for `experiments.evaluate` to print and record."""
        return []

    def architecture(self) -> Dict[str, object]:
        """What must match for a checkpoint to be loaded into this model."""
        return {'model': self.model.__class__.__name__, 'n_classes': self.n_classes, 'dataset': self.dataset.name}

    def train_predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Predicted class indices `[N]` from a training batch's outputs (for the training accuracy):
        the argmax of `[N, K]` outputs, or of the mean softmax of sampled `[S, N, K]` outputs."""
        if outputs.dim() == 3:
            return outputs.softmax(-1).mean(0).argmax(-1)
        return outputs.argmax(-1)

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The outputs for one evaluation batch (`[N, K]`, or `[S, N, K]` for sampling models); called in
        eval mode, without gradients unless an attack needs them."""
        return self.model(x)

    def eval_forward_missing(self, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """The outputs for a batch whose `missing` pixels (`[N, 28 * 28]` or `[N, 1, 28, 28]`, true = unknown) are
        not known. A model that cannot integrate them out (every family but the circuit) sees them filled with
        the background, a black pixel (value 0)."""
        # exactly the value a black pixel has in the (normalised) data
        background = normalize(torch.zeros(1, 1, 1, dtype=torch.uint8), self.dataset.name).item()
        return self.eval_forward(x.masked_fill(missing.reshape(x.shape), background))

    # ------------------------------------------------------------------ evaluation
    @torch.inference_mode()
    def evaluate_outputs(self, split: TensorSplit) -> torch.Tensor:
        """Raw model outputs for a whole split (as `eval_forward` gives them, joined along the sample
        dimension, the second-to-last), in large batches, in eval mode."""
        self.model.eval()
        with autocast(self.precision, split.images.device):
            outs = [self.eval_forward(x).float() for x, _ in split.batches(self.valid_batch_size)]
            return torch.cat(outs or [self.eval_forward(split.images[:0]).float()], dim=-2)

    def evaluate(self, split: TensorSplit) -> Tuple[Prediction, torch.Tensor]:
        """The prediction for a whole split and its correctness mask."""
        pred = self.predict(self.evaluate_outputs(split))
        correct = pred.probs.argmax(-1) == split.labels
        return pred, correct

    # ------------------------------------------------------------------ tracking
    def init_tracker(self):
        tracker.set_scalar('loss.*', True)
        tracker.set_scalar('accuracy.*', True)

    def track_distribution(self, name: str, values: torch.Tensor):
        """A histogram of `values` plus its 10/50/90% quantiles (the dashboard charts only means of histograms);
        the indicators are declared on first use."""
        if values.numel() == 0:
            return
        if name not in self._tracked:
            self._tracked.add(name)
            tracker.set_histogram(name, False)
            for q in QUANTILES:
                tracker.set_scalar(f'{name}.q{int(q * 100)}', False)
        values = values.detach().float().cpu()
        tracker.add(name, values)
        for q, v in zip(QUANTILES, torch.quantile(values, torch.tensor(QUANTILES)).tolist()):
            tracker.add(f'{name}.q{int(q * 100)}', v)

    @property
    def _tracked(self) -> set:
        if '_tracked_names' not in self.__dict__:
            self.__dict__['_tracked_names'] = set()
        return self.__dict__['_tracked_names']

    def track_p_max(self, pred: Prediction, correct: torch.Tensor):
        """Histograms of max p̂ of the right and of the wrong predictions."""
        p_max = pred.probs.max(-1).values
        self.track_distribution('p_max.correct', p_max[correct])
        self.track_distribution('p_max.wrong', p_max[~correct])

    def track_prediction(self, pred: Prediction, correct: torch.Tensor):
        """The validation histograms: max p̂ of right and wrong predictions, and each of the family's own scores."""
        self.track_p_max(pred, correct)
        for name, values in pred.scores.items():
            self.track_distribution(name, values)

    def distributions(self, pred: Prediction, correct: torch.Tensor) -> Dict[str, Values]:
        """What each validation records as histograms (`configs.histograms`): every per-image distribution of the
        prediction, split by `correct`; families add others (values that are not per image, with no mask)."""
        return prediction_distributions(pred, correct)

    def track_validation(self, split: TensorSplit, prefix: str = 'valid') -> Dict[str, float]:
        """Accuracy and NLL of $\\hat{p}$ on `split` (`accuracy.<prefix>`, `loss.<prefix>`), tracked and returned;
        for `valid`, also the quantile series and the distributions of the epoch's histograms."""
        pred, correct = self.evaluate(split)
        accuracy = correct.float().mean().item() if len(split) else float('nan')
        nll = -torch.log(pred.probs.gather(1, split.labels[:, None]).clamp_min(1e-12)).mean().item()
        tracker.add(f'accuracy.{prefix}', accuracy)
        tracker.add(f'loss.{prefix}', nll)
        if prefix == 'valid':
            self.track_prediction(pred, correct)
            self._headline = headline_uncertainty(pred, correct)
            self._distributions = self.distributions(pred, correct)
        return {f'accuracy.{prefix}': accuracy, f'loss.{prefix}': nll}

    # ------------------------------------------------------------------ training
    def _shuffle_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def _train_epoch(self, epoch: int, generator: torch.Generator, samples_seen: int) -> Tuple[int, Dict[str, float]]:
        """One epoch over the training split; returns the samples seen after it and its metrics."""
        self.model.train()
        train = self.dataset.train
        n_batches = train.n_batches(self.train_batch_size)
        device = train.labels.device
        correct = torch.zeros((), dtype=torch.long, device=device)
        loss_sum = torch.zeros((), device=device)
        window: List[Dict[str, torch.Tensor]] = []

        def flush():
            # One host sync per window: find the first non-finite step, then hand values to labml.
            values = {k: torch.stack([w[k] for w in window]).float().cpu() for k in window[0]}
            bad = ~torch.isfinite(values['loss.train'])
            if bad.any():
                first = int(bad.nonzero()[0])
                step = step_index - len(window) + 1 + first
                raise TrainingStopped(f"non-finite loss at epoch {epoch + 1}, step {step + 1} of {n_batches} "
                                      f"(after {samples_seen_at[first]} training samples); {self.nonfinite_hint()}")
            for k, v in values.items():
                for x in v.tolist():
                    tracker.add(k, x)
            tracker.save()
            window.clear()
            samples_seen_at.clear()

        samples_seen_at: List[int] = []
        step_index = 0
        batches = train.batches(self.train_batch_size, generator)
        base_lrs = [g.setdefault('initial_lr', g['lr']) for g in self.optimizer.param_groups]
        total_samples = self.epochs * len(train)
        for step_index, (x, y) in zip(monit.iterate('Train', n_batches), batches):
            if self.lr_schedule in ('cosine', 'cosine_epochs'):
                factor = (cosine_decay(samples_seen / total_samples) if self.lr_schedule == 'cosine'
                          else cosine_annealing(epoch, self.lr_period_epochs))
                for g, lr in zip(self.optimizer.param_groups, base_lrs):
                    g['lr'] = lr * factor
            x = self.transform_batch(x, generator)
            with autocast(self.precision, device):
                outputs, loss, extras = self.training_step(x, y, samples_seen, generator)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            samples_seen_at.append(samples_seen)
            samples_seen += len(y)
            tracker.add_global_step(len(y))
            with torch.no_grad():
                correct += (self.train_predictions(outputs) == y).sum()
                loss_sum += loss.detach() * len(y)
            window.append({'loss.train': loss.detach(), **{k: v.detach() for k, v in extras.items()}})
            if len(window) >= self.log_interval or step_index == n_batches - 1:
                flush()
        n = len(train)
        return samples_seen, {'accuracy.train': correct.item() / n, 'loss.train': loss_sum.item() / n}

    def _state(self, epoch: int, samples_seen: int, history: list, status: str, generator: torch.Generator):
        return {
            'epoch': epoch, 'samples_seen': samples_seen, 'status': status,
            'architecture': self.architecture(),
            'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
            'rng': {'torch': torch.get_rng_state(), 'shuffle': generator.get_state(),
                    **({'cuda': torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
            'history': history,
        }

    def restore(self, state: dict, generator: torch.Generator) -> Tuple[int, int, list]:
        """Loads a checkpoint into the model and optimizer; returns epoch, samples seen and history."""
        if state['architecture'] != self.architecture():
            raise CheckpointError(f"the checkpoint was saved for {state['architecture']}, "
                                  f"but this configuration builds {self.architecture()}")
        try:
            self.model.load_state_dict(state['model'])
            # The learning rate is the configured one (it may be changed on resume), not the saved one
            lrs = [g['lr'] for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(state['optimizer'])
            for g, lr in zip(self.optimizer.param_groups, lrs):
                g['lr'] = g['initial_lr'] = lr
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"the checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
        torch.set_rng_state(state['rng']['torch'])
        generator.set_state(state['rng']['shuffle'])
        if 'cuda' in state['rng'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['rng']['cuda'])
        return state['epoch'], state['samples_seen'], list(state['history'])

    def resolve_configs(self):
        """
        Computes every configuration now. labml computes each one on first use and then rewrites the run's
        `configs.yaml` (~50 ms each); a dozen of those inside the first epoch would make it ~0.6 s slower than
        the others and skew its timing.
        """
        types, _, _ = declarations(self)
        for key in types:
            getattr(self, key)

    def run(self, run_dir: Path, resume_state: Optional[dict] = None, describe: Optional[dict] = None) -> Dict[str, float]:
        """Trains for `epochs` epochs (continuing `resume_state` if given) and returns the final metrics; prints a
        line per epoch (`epoch_line`) and records its histograms (`configs.histograms`; `describe`: what their lines
        say about the run)."""
        silence_monitor(True)  # labml's "Prepare ..." line per configuration
        try:
            self.resolve_configs()
        finally:
            silence_monitor(False)
        self.init_tracker()
        generator = self._shuffle_generator()
        epoch, samples_seen, history = 0, 0, []
        if resume_state is not None:
            epoch, samples_seen, history = self.restore(resume_state, generator)
            tracker.set_global_step(samples_seen)
            print(f"Resuming run {run_dir.name} after epoch {epoch}/{self.epochs}")

        def on_signal(signum, frame):
            raise Interrupted(signum)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        first_epoch, loop_started = epoch, time.perf_counter()
        try:
            for epoch in monit.loop(range(epoch, self.epochs)):
                started = time.perf_counter()
                samples_seen, metrics = self._train_epoch(epoch, generator, samples_seen)
                train_s = time.perf_counter() - started
                for k, v in metrics.items():
                    tracker.add(k, v)
                with monit.section('Validate'):
                    metrics.update(self.track_validation(self.dataset.valid))
                # Wall time of the epoch (train + validation), and training throughput
                metrics['time.epoch_s'] = time.perf_counter() - started
                metrics['time.train_samples_per_s'] = len(self.dataset.train) / train_s
                tracker.add('time.epoch_s', metrics['time.epoch_s'])
                tracker.add('time.train_samples_per_s', metrics['time.train_samples_per_s'])
                tracker.save()
                history.append({'epoch': epoch + 1, **metrics})
                if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                    raise TrainingStopped(f"non-finite weights after epoch {epoch + 1}; {self.nonfinite_hint()}")
                write_epoch(run_dir, epoch_record(epoch + 1, self.epochs, metrics, self._distributions, describe))
                # The epoch is complete only once its checkpoint is on disk
                status = 'completed' if epoch + 1 == self.epochs else 'running'
                save_checkpoint(run_dir, self._state(epoch + 1, samples_seen, history, status, generator))
                tracker.new_line()
                per_epoch = (time.perf_counter() - loop_started) / (epoch + 1 - first_epoch)
                print(epoch_line(epoch + 1, self.epochs, metrics, self._headline,
                                 per_epoch * (self.epochs - epoch - 1)), flush=True)
        except Interrupted as e:
            self._mark_interrupted(run_dir)
            e.run_dir = run_dir
            raise
        except TrainingStopped as e:
            e.run_dir = run_dir
            raise
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        with monit.section('Test'):
            final = self.track_validation(self.dataset.test, prefix='test')
        tracker.save()
        return final

    def _mark_interrupted(self, run_dir: Path):
        path = run_dir / CHECKPOINT_FILE
        if path.exists():
            state = load_checkpoint(run_dir)
            state['status'] = 'interrupted'
            state.pop('format', None)
            save_checkpoint(run_dir, state)


def headline_uncertainty(pred: Prediction, correct: torch.Tensor) -> Optional[Tuple[str, float, float]]:
    """`(score, median for right predictions, median for wrong ones)` of the family's first own score (`u`,
    the mutual information, ...), or of the entropy of p̂ where it has none; a median is NaN where there is no
    prediction of that kind."""
    name, values = next(iter(pred.scores.items()), ('entropy', categorical_entropy(pred.probs.float())))
    values = values.float()

    def median(mask):
        return values[mask].median().item() if mask.any() else float('nan')
    return name, median(correct), median(~correct)


def epoch_line(epoch: int, epochs: int, metrics: Dict[str, float], headline, eta_s: float) -> str:
    """`epoch 3/20: train acc 0.9812 loss 0.1234 | valid acc 0.9850 NLL 0.0512 | median u right 0.021, wrong
    0.412 | 4.1 s/epoch, ETA 69 s`."""
    parts = [f"epoch {epoch}/{epochs}: train acc {metrics['accuracy.train']:.4f} loss {metrics['loss.train']:.4f}",
             f"valid acc {metrics['accuracy.valid']:.4f} NLL {metrics['loss.valid']:.4f}"]
    if headline is not None:
        name, right, wrong = headline
        parts.append(f"median {name} right {right:.3g}, wrong {wrong:.3g}")
    parts.append(f"{metrics['time.epoch_s']:.1f} s/epoch" + (f", ETA {eta_s:.0f} s" if epoch < epochs else ''))
    return ' | '.join(parts)


# ---------------------------------------------------------------------- options


def data_root(c: MNISTExperimentConfigs) -> Path:
    return Path(c.data_dir).expanduser() if c.data_dir else Path(lab.get_data_path())


def load_data(c: MNISTExperimentConfigs, name: str) -> Data:
    spec = dataset_spec(name)
    device = resolve_device(c.device)
    root = data_root(c)
    train_images, train_labels = load_split(name, root, train=True, download=c.download)
    test_images, test_labels = load_split(name, root, train=False, download=c.download)
    train = tensor_split(train_images, train_labels, name, device)
    test = tensor_split(test_images, test_labels, name, device)
    if c.holdout > 0:
        train, valid = holdout_split(train, c.holdout, c.seed)
        source = 'holdout'
    else:
        valid, source = test, 'test'
    if 0 < c.train_size < len(train):
        train = subsample(train, c.train_size, c.seed)
    return Data(name=name, n_classes=spec.n_classes, train=train, valid=valid, test=test, valid_source=source)


@option(MNISTExperimentConfigs.dataset, 'mnist')
def _mnist(c: MNISTExperimentConfigs):
    return load_data(c, 'mnist')


@option(MNISTExperimentConfigs.dataset, 'fashion_mnist')
def _fashion_mnist(c: MNISTExperimentConfigs):
    return load_data(c, 'fashion_mnist')


@option(MNISTExperimentConfigs.n_classes)
def _n_classes(c: MNISTExperimentConfigs):
    return c.dataset.n_classes


@option(OptimizerConfigs.optimizer, 'NesterovSGD')
def _nesterov_sgd(c: OptimizerConfigs):
    # labml_nn's `SGD` option has no Nesterov momentum (Pyro's BNN tutorial uses it)
    return torch.optim.SGD(c.parameters, c.learning_rate, c.momentum, weight_decay=c.weight_decay, nesterov=True)


@option(OptimizerConfigs.optimizer, 'FusedAdam')
def _fused_adam(c: OptimizerConfigs):
    r"""PyTorch's fused Adam: one kernel updates every parameter, where labml_nn's `Adam` runs a few tensor operations
    per parameter from Python. The same update as labml_nn's `Adam` in exact arithmetic (its bias corrections are
    folded into the step size and $\epsilon$, PyTorch's into the moments), so results differ by rounding only.
    labml_nn's decoupled weight decay, $\theta \leftarrow \theta (1 - \eta \lambda)$, is AdamW's; with
    `weight_decouple=False` it is the L2 term of `torch.optim.Adam`. `weight_decay_absolute` has no PyTorch
    counterpart and is refused."""
    if c.weight_decay_absolute:
        raise ValueError("optimizer.optimizer=FusedAdam: optimizer.weight_decay_absolute=True has no PyTorch "
                         "counterpart; use optimizer.optimizer=Adam")
    kind = torch.optim.AdamW if c.weight_decouple else torch.optim.Adam
    return kind(c.parameters, lr=c.learning_rate, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                amsgrad=c.amsgrad, fused=True)


@option(MNISTExperimentConfigs.optimizer)
def _optimizer(c: MNISTExperimentConfigs):
    opt = OptimizerConfigs()
    opt.parameters = c.model.parameters()
    opt.optimizer = 'Adam'
    opt.learning_rate = 1e-3
    return opt
