"""
Baseline: train a deep ensemble of M LeNets, vectorised as one model, on MNIST-style data.

    python -m experiments.ensemble_mnist [preset=NAME] [key=value ...]
    python -m experiments.ensemble_mnist --help
"""
import sys

from configs.baselines import EnsembleConfigs, ENSEMBLE_DEFAULTS, ENSEMBLE_PRESETS
from configs.runner import run_experiment


def main(argv=None) -> int:
    return run_experiment(EnsembleConfigs, ENSEMBLE_DEFAULTS, ENSEMBLE_PRESETS, 'experiments.ensemble_mnist', argv)


if __name__ == '__main__':
    sys.exit(main())
