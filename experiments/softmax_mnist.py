"""cross-entropy LeNet, p = softmax(z).

    python -m experiments.softmax_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('softmax_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
