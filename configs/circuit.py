r"""
# Probabilistic-circuit classifier — `python -m experiments.circuit_mnist`

The model of cirkit's MNIST tutorial, as this app implements it (`evidential.models.circuit`; why not
libcirkit is said there): a class-conditional probabilistic circuit over the raw pixel values $0 \dots 255$
that gives $\log p(\mathbf{x} \mid y)$ for every class exactly, and so the class posterior by Bayes' rule
under a uniform prior,

$$p(y \mid \mathbf{x}) = \frac{p(\mathbf{x} \mid y)}{\sum_{y'} p(\mathbf{x} \mid y')}.$$

Training mixes the discriminative and the generative objective (the tutorial's $\lambda$, `lam`),

$$\mathcal{L} = \lambda \cdot \big(-\log p(y \mid \mathbf{x})\big)
   + (1 - \lambda) \cdot \frac{-\log p(\mathbf{x} \mid y)}{D}, \qquad D = 784,$$

$\lambda = 1$ a purely discriminative circuit, $\lambda = 0$ a purely generative one. Its own uncertainty score is
the negative log-density $-\log p(\mathbf{x}) = -\log \frac{1}{K} \sum_y p(\mathbf{x} \mid y)$ (out-of-distribution
images are unlikely), and it classifies images with missing pixels by integrating them out exactly.

The inputs are the pixel values, not normalised images: no augmentation, dropout or jigsaw outliers (this family
has no such options), and no FGSM (the inputs are categories, not differentiable).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
from labml import tracker
from labml.configs import option

from configs.experiment import MNISTExperimentConfigs
from configs.registry import Capabilities, Family, Preset, between, one_of
from evidential.data import dataset_spec
from evidential.models.circuit import (INPUT_LAYERS, LAYER_TYPES, REGION_GRAPHS, ROOT_LAYERS, PixelCircuit,
                                       bits_per_dim, hybrid_loss, neg_log_density)
from evidential.prediction import Prediction


class CircuitConfigs(MNISTExperimentConfigs):
    """
    ## Probabilistic circuit

    * `region_graph`: `quad-tree-2` (the tutorial's) or `random-binary-tree` (RAT-SPN)
    * `num_input_units`, `num_sum_units`: categorical units per pixel, sum units per region (the tutorial: 64, 64)
    * `layer_type`: `cp` (the tutorial's) or `tucker`
    * `root_layer`: `layer` (the tutorial's: the last layer's units are the classes) or `mixture`
    * `input_layer`: `categorical` (the tutorial's) or `binomial`
    * `lam`: weight $\\lambda$ of the discriminative term (1 = discriminative, 0 = generative)
    """
    experiment_name: str = 'circuit_mnist'

    # The circuit, chosen by name
    model: nn.Module
    # How pixels are grouped into regions: `quad-tree-2` (the tutorial's) or `random-binary-tree` (RAT-SPN, seeded)
    region_graph: str = 'quad-tree-2'
    # Categorical input units per pixel (the tutorial: 64)
    num_input_units: int = 32
    # Sum units per region (the tutorial: 64)
    num_sum_units: int = 32
    # Sum-product layers: `cp` (the tutorial's) or `tucker`
    layer_type: str = 'cp'
    # `layer` (cirkit's `num_classes`: the last sum-product layer has one unit per class) or `mixture` (one sum
    # unit per class over the root region's units)
    root_layer: str = 'layer'
    # `categorical` over the 256 pixel values (the tutorial's) or `binomial` (one parameter per unit)
    input_layer: str = 'categorical'
    # $\lambda$: weight of $-\log p(y | x)$; $1 - \lambda$ weighs $-\log p(x | y) / D$
    lam: float = 0.25
    # Standard deviation of the initial (unnormalised log-) parameters
    init_std: float = 1.0

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images `[N, 1, 28, 28]` → pixel values `[N, 784]` (`long`, 0–255)."""
        spec = dataset_spec(self.dataset.name)
        return ((x * spec.std + spec.mean) * 255.).round_().clamp_(0, 255).long().flatten(1)

    def transform_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.pixels(x)

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, K]`: $\\log p(\\mathbf{x} \\mid y)$."""
        return self.model(self.pixels(x))

    def eval_forward_missing(self, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        """`[N, K]`: $\\log p(\\mathbf{x}_{\\text{observed}} \\mid y)$, the `missing` pixels integrated out exactly."""
        return self.model(self.pixels(x), missing.reshape(len(x), -1))

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor,
                      samples_seen: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # $\lambda \cdot (-\log p(y | x)) + (1 - \lambda) \cdot (-\log p(x | y)) / D$
        loss, cross_entropy, generative = hybrid_loss(outputs, labels, self.lam, self.model.n_pixels)
        return loss, {'ce.train': cross_entropy.detach(), 'gen.train': generative.detach(),
                      'bpd.train': bits_per_dim(neg_log_density(outputs.detach()), self.model.n_pixels).mean()}

    def predict(self, outputs: torch.Tensor) -> Prediction:
        """`[N, K]` log-likelihoods $\\log p(\\mathbf{x} \\mid y)$."""
        outputs = outputs.float()
        return Prediction(probs=outputs.softmax(-1), scores={'neg_log_density': neg_log_density(outputs)})

    def track_prediction(self, pred: Prediction, correct: torch.Tensor):
        super().track_prediction(pred, correct)
        tracker.add('bpd.valid', bits_per_dim(pred.scores['neg_log_density'], self.model.n_pixels).mean().item())

    def nonfinite_hint(self) -> str:
        return super().nonfinite_hint() + '; a generative term (lam < 1) with a large learning rate is the usual cause'

    def architecture(self) -> Dict[str, object]:
        return {**super().architecture(), 'region_graph': self.region_graph, 'layer_type': self.layer_type,
                'root_layer': self.root_layer, 'input_layer': self.input_layer,
                'num_input_units': self.num_input_units, 'num_sum_units': self.num_sum_units}

    def init_tracker(self):
        super().init_tracker()
        tracker.set_scalar('bpd.*', True)
        tracker.set_scalar('ce.*', False)
        tracker.set_scalar('gen.*', False)


@option(CircuitConfigs.model, 'circuit')
def _circuit(c: CircuitConfigs) -> nn.Module:
    torch.manual_seed(c.seed)
    model = PixelCircuit(c.n_classes, 28, 28, c.num_input_units, c.num_sum_units, layer_type=c.layer_type,
                         region_graph=c.region_graph, graph_seed=c.seed, root_layer=c.root_layer,
                         input_layer=c.input_layer, init_std=c.init_std)
    return model.to(c.dataset.train.images.device)


DEFAULTS = {
    'dataset': 'mnist',
    'model': 'circuit',
    'region_graph': 'quad-tree-2',
    'num_input_units': 32,
    'num_sum_units': 32,
    'layer_type': 'cp',
    'root_layer': 'layer',
    'input_layer': 'categorical',
    'lam': 0.25,
    'init_std': 1.0,
    'optimizer.optimizer': 'Adam',
    'optimizer.learning_rate': 0.02,
    'optimizer.weight_decay': 0.0,
    'lr_schedule': 'cosine',
    'train_batch_size': 64,
    'holdout': 0.1,
    'epochs': 10,
}

PRESETS = {
    'cirkit': Preset(
        "cirkit's MNIST classifier tutorial: its circuit size and training (its best lambda, 0.25, is the default)",
        {'num_input_units': 64, 'num_sum_units': 64, 'layer_type': 'cp', 'region_graph': 'quad-tree-2',
         'optimizer.optimizer': 'Adam', 'optimizer.learning_rate': 0.02, 'lr_schedule': 'constant',
         'train_batch_size': 256, 'epochs': 10, 'holdout': 0.2},
        {'num_input_units': 'num_input_units=64, num_sum_units=64', 'layer_type': "sum_product_layer='cp'",
         'region_graph': "the tutorial's 'quad-graph' is not implemented here; quad-tree-2 is its tree-shaped variant",
         'optimizer.optimizer': 'torch.optim.Adam(lr=0.02), no schedule', 'train_batch_size': 'batch size 256',
         'epochs': 'max_num_epochs = 10 (it also stops early on validation accuracy, patience 3: not here)',
         'holdout': 'an 80 / 20 split of the training set'}),
    'smoke': Preset(
        'one epoch of a tiny circuit over the whole training set, to try the pipeline (seconds on the tests\' '
        'synthetic images, about 10 s on 10,000 MNIST images; not a trained model)',
        {'epochs': 1, 'train_batch_size': 64, 'valid_batch_size': 256, 'log_interval': 2, 'holdout': 0.0,
         'num_input_units': 2, 'num_sum_units': 2},
        {'num_input_units': 'two units per region: every code path, in seconds',
         'holdout': 'nothing held out: validation uses the test split, which keeps the run short'}),
}


FAMILY = Family(
    name='circuit_mnist',
    configs=CircuitConfigs,
    description="probabilistic circuit (cirkit's tutorial): exact p(x | y), missing pixels integrated out",
    defaults=DEFAULTS,
    presets=PRESETS,
    checks={'region_graph': one_of(REGION_GRAPHS), 'layer_type': one_of(LAYER_TYPES),
            'root_layer': one_of(ROOT_LAYERS), 'input_layer': one_of(INPUT_LAYERS),
            'num_input_units': between(1, 1024), 'num_sum_units': between(1, 1024),
            'lam': lambda v: None if 0 <= v <= 1 else 'must be in [0, 1]',
            'init_std': lambda v: None if 0 < v <= 100 else 'must be in (0, 100]'},
    label_keys=lambda values: ['lam', 'num_sum_units', 'layer_type', 'region_graph'],
    label_names={'lam': 'λ', 'num_sum_units': 'U'},
    capabilities=Capabilities(input_gradients=False, marginalises_missing=True),
)
