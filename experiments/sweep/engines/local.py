"""The local engine of `experiments.sweep` (the default): `--jobs` subprocesses on this machine, no network."""
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from experiments.sweep.processes import die_with_parent, exit_status


class LocalEngine:
    """A pool of subprocesses on this machine, started from the main thread (no network at all)."""
    name = 'local'

    def __init__(self, jobs: int):
        self.capacity = jobs
        self.procs: Dict[str, Tuple[subprocess.Popen, Any]] = {}

    def start(self, key: str, command: List[str], cwd: Path, env: Dict[str, str], log_path: Path) -> None:
        log = open(log_path, 'ab')
        self.procs[key] = (subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=die_with_parent), log)

    def poll(self, timeout: float) -> List[Tuple[str, Dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while True:
            finished = []
            for key, (proc, log) in list(self.procs.items()):
                if proc.poll() is not None:
                    log.close()
                    del self.procs[key]
                    finished.append((key, {'rc': exit_status(proc.returncode), 'host': socket.gethostname(),
                                           'node': None}))
            if finished or time.monotonic() >= deadline:
                return finished
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def running(self) -> int:
        return len(self.procs)

    def terminate(self) -> None:
        for proc, _ in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        for proc, _ in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        pass
