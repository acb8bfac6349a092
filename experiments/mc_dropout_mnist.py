"""MC dropout: the softmax LeNet with dropout kept on at test time, T passes averaged.

    python -m experiments.mc_dropout_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('mc_dropout_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
