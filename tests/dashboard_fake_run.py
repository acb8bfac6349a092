"""A tiny, torch-free stand-in for ``python -m experiments.evidence_mnist`` (dashboard tests).

The API and browser tests use real ``evidence_mnist`` smoke runs; this script serves
the tests that stop the dashboard in the middle of a run, which need a run whose
length they control (``--sleep``) and that starts in well under a second.

It tracks the same indicator names as the real training loop (per step
``loss.train``, ``kl.train``, ``kl_coef``; per epoch ``loss.valid``,
``accuracy.train``, ``accuracy.valid``, histograms ``u.*``, ``p_max.*``,
``strength`` and their ``.q10/.q50/.q90`` quantiles) with synthetic numbers, and
attaches to a dashboard exactly like the real entry point does:

    python tests/dashboard_fake_run.py --logs DIR [--dashboard URL] [--epochs 2] [--steps 5]

Prints ``RUN_UUID=<uuid>`` when the run has finished.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HISTOGRAMS = ('u.correct', 'u.wrong', 'p_max.correct', 'p_max.wrong')
QUANTILES = (10, 50, 90)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--dashboard', default=None)
    p.add_argument('--logs', required=True, help='labml experiments folder')
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--steps', type=int, default=5, help='training steps per epoch')
    p.add_argument('--sleep', type=float, default=0.0, help='seconds per step (to watch it live)')
    args = p.parse_args()

    from labml import experiment, lab, tracker
    from experiments.dashboard.client import attach

    lab.configure({'experiments_path': str(Path(args.logs).resolve())})
    writers = {'screen', 'file'}
    if attach(args.dashboard):
        writers.add('app')
    experiment.create(name='evidence_mnist_fake', writers=writers)
    tracker.set_scalar('loss.*', True)
    tracker.set_scalar('kl.*', True)
    tracker.set_scalar('kl_coef', False)
    tracker.set_scalar('accuracy.*', True)
    for name in HISTOGRAMS + ('strength',):
        tracker.set_histogram(name, False)
    for name in HISTOGRAMS:
        for q in QUANTILES:
            tracker.set_scalar(f'{name}.q{q}', False)

    rng = np.random.default_rng(0)
    with experiment.start():
        step = 0
        for epoch in range(args.epochs):
            for _ in range(args.steps):
                step += 1
                tracker.add_global_step()
                tracker.save({'loss.train': 1.0 / step, 'kl.train': 0.1 / step,
                              'kl_coef': min(1.0, step / 10)})
                if args.sleep:
                    import time
                    time.sleep(args.sleep)
            values = {'loss.valid': 1.0 / step, 'accuracy.train': 0.5 + 0.1 * epoch,
                      'accuracy.valid': 0.45 + 0.1 * epoch}
            for name in HISTOGRAMS:
                sample = rng.beta(2 + epoch, 5, size=200)
                values[name] = sample
                for q in QUANTILES:
                    values[f'{name}.q{q}'] = float(np.quantile(sample, q / 100))
            values['strength'] = rng.gamma(5 + epoch, size=200)
            tracker.save(values)
        uuid = experiment.get_uuid()
    print(f'RUN_UUID={uuid}', flush=True)


if __name__ == '__main__':
    main()
