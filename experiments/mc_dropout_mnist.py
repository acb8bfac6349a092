"""
Baseline: train a LeNet with cross-entropy and evaluate it with MC dropout (T samples, dropout kept on).

    python -m experiments.mc_dropout_mnist [preset=NAME] [key=value ...]
    python -m experiments.mc_dropout_mnist --help
"""
import sys

from configs.baselines import MCDropoutConfigs, MC_DROPOUT_DEFAULTS, MC_DROPOUT_PRESETS
from configs.runner import run_experiment


def main(argv=None) -> int:
    return run_experiment(MCDropoutConfigs, MC_DROPOUT_DEFAULTS, MC_DROPOUT_PRESETS, 'experiments.mc_dropout_mnist', argv)


if __name__ == '__main__':
    sys.exit(main())
