"""Laplace approximation (laplace-torch) of the softmax LeNet's posterior.

    python -m experiments.laplace_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('laplace_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
