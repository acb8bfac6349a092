"""vote wrapper (capsa's idea, BatchEnsemble voters): n voters sharing one body's weights.

    python -m experiments.vote_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('vote_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
