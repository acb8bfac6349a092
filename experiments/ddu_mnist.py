"""Deep Deterministic Uncertainty: spectrally normalised residual LeNet, GDA feature density.

    python -m experiments.ddu_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('ddu_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
