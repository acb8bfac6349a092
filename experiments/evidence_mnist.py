"""
Train an evidential LeNet on MNIST-style data.

    python -m experiments.evidence_mnist [preset=NAME] [key=value ...]
    python -m experiments.evidence_mnist --help
"""
import sys

from configs.evidence import EvidenceConfigs
from configs.presets import DEFAULTS, PRESETS
from configs.runner import run_experiment


def main(argv=None) -> int:
    return run_experiment(EvidenceConfigs, DEFAULTS, PRESETS, 'experiments.evidence_mnist', argv)


if __name__ == '__main__':
    sys.exit(main())
