"""
What both engines do with a run's process: tie it to the sweep, read its exit status.

Standard library only: the Ray engine ships this module by value to its workers with its task function.
"""
import os
import signal
from typing import Dict, Mapping

#: Thread settings of the math libraries torch uses
THREAD_VARS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')


def thread_share(jobs: int, environ: Mapping[str, str], cpus: int = 0) -> Dict[str, str]:
    """Thread settings giving each of `jobs` concurrent runs its share of the `cpus` (default: this machine's), so
    they do not each start one thread per core and oversubscribe the machine; none where `environ` sets any of
    them already (the user's choice wins) or a single run has the machine."""
    if jobs <= 1 or any(var in environ for var in THREAD_VARS):
        return {}
    share = max(1, (cpus or os.cpu_count() or 1) // jobs)
    return {var: str(share) for var in THREAD_VARS}


def die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGTERM when its parent dies, even by SIGKILL (Linux), so it saves its epoch and stops."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def exit_status(returncode: int) -> int:
    """Popen's `-N` (killed by signal N) as the shell writes it, 128 + N."""
    return 128 - returncode if returncode < 0 else returncode
