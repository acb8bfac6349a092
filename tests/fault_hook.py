"""Fault injection for the disk tests (`tests/test_disk_full.py`), imported into a child process first.

With `FAULT_DIR` set, `os.fsync` of a file under that folder succeeds `FAULT_AFTER` times, then raises
`OSError(FAULT_ERRNO)` (default EIO) every time: what a failing disk (EIO) or a full one whose blocks are
allocated at write-back (ENOSPC, e.g. on NFS or with delayed allocation) does to a program. Every write of a
checkpoint, results file and log line that this app makes durable goes through `os.fsync`.
Without `FAULT_DIR` it does nothing.
"""
import errno
import os

_DIR = os.environ.get('FAULT_DIR')

if _DIR:
    _DIR = os.path.realpath(_DIR)
    _AFTER = int(os.environ.get('FAULT_AFTER', '0'))
    _ERRNO = getattr(errno, os.environ.get('FAULT_ERRNO', 'EIO'))
    _real_fsync = os.fsync
    _count = [0]

    def _fsync(fd):
        try:
            path = os.readlink(f'/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}')
        except OSError:
            path = ''
        if path == _DIR or path.startswith(_DIR + os.sep):
            _count[0] += 1
            if _count[0] > _AFTER:
                raise OSError(_ERRNO, os.strerror(_ERRNO))
        return _real_fsync(fd)

    os.fsync = _fsync
