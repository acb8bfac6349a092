"""Bayesian LeNet: mean-field Gaussian weights, local reparametrisation, negative ELBO.

    python -m experiments.bayes_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('bayes_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
