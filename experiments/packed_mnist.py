"""Packed-Ensembles (Laurent et al., 2023): M members packed into one grouped network.

    python -m experiments.packed_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('packed_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
