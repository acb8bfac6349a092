"""`python -m experiments.compare`: see `experiments/compare/__init__.py`."""
import sys

from experiments.compare.cli import main

if __name__ == '__main__':
    sys.exit(main())
