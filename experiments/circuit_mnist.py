"""probabilistic circuit (cirkit's tutorial): exact p(x | y), missing pixels integrated out.

    python -m experiments.circuit_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('circuit_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
