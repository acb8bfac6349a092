"""deep ensemble: M LeNets trained together (a Packed-Ensemble with alpha = M, gamma = 1), softmaxes averaged.

    python -m experiments.ensemble_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('ensemble_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
