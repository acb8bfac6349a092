"""evidential LeNet (Sensoy et al., 2018): evidence -> Dirichlet opinion, uncertainty mass u = K/S.

    python -m experiments.evidence_mnist [preset=NAME] [key=value ...]      (--help: every key, its default and options)
"""
from experiments.train import entry_point

main = entry_point('evidence_mnist')

if __name__ == '__main__':
    raise SystemExit(main())
