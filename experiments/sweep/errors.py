"""The sweep's error for bad input and its exit codes (standard library only: every module of the sweep imports it)."""

EXIT_FAILED, EXIT_USAGE = 1, 2


class SweepError(ValueError):
    """A bad sweep (grid, value, file, option): one line on stderr, exit code 2, nothing written."""
