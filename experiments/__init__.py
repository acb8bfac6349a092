import os

# Set before torch is imported: with OpenMP's default active waiting, two busy processes on a
# small machine (training beside a dashboard, a test runner, another run) slow each other down
# ~10x (measured: 25 ms vs 300 ms per LeNet step on 2 cores). Passive waiting costs little alone.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
