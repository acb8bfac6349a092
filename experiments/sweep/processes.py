"""
What both engines do with a run's process: tie it to the sweep, read its exit status.

Standard library only: the Ray engine ships this module by value to its workers with its task function.
"""
import signal


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
