"""
Baseline: train a softmax LeNet with cross-entropy on MNIST-style data.

    python -m experiments.softmax_mnist [preset=NAME] [key=value ...]
    python -m experiments.softmax_mnist --help
"""
import sys

from configs.baselines import SoftmaxConfigs, SOFTMAX_DEFAULTS, SOFTMAX_PRESETS
from configs.runner import run_experiment


def main(argv=None) -> int:
    return run_experiment(SoftmaxConfigs, SOFTMAX_DEFAULTS, SOFTMAX_PRESETS, 'experiments.softmax_mnist', argv)


if __name__ == '__main__':
    sys.exit(main())
