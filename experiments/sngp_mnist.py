"""SNGP: spectrally normalised residual LeNet, random-feature Gaussian-process output, Laplace variance.

    python -m experiments.sngp_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('sngp_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
