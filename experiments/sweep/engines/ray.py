"""
# The Ray engine of `experiments.sweep` (`--engine ray`)

Each stage of a run (training, then evaluation) is one Ray task with `--cpus-per-run` / `--gpus-per-run`
resources, in a fresh worker process (`max_calls=1`), and runs exactly the command the local engine runs
(`python -m experiments.train FAMILY ...`, `python -m experiments.evaluate RUN ...`) as a subprocess, with its
output written to the sweep folder's `runs/*.log`. So:

* without `--address` a local Ray is started (`ray.init(num_cpus=..., object_store_memory=100 MB,
  include_dashboard=False)`) and everything lands on this machine's filesystem, as with the local engine;
* with `--address` the tasks run wherever the cluster puts them, in the same working folder and with the same
  Python: the repository, the Python environment and the project folder (`--storage DIR`, holding the run
  folders and the sweep folder) must exist at the same paths on every node, i.e. on shared storage.

The child gets the launching shell's thread settings (`OMP_NUM_THREADS`, ... ; Ray's own default of one thread
per reserved CPU is removed where the sweep's shell set none), so a run computes exactly what the local engine
and a run by hand compute. Ray listens on every interface: `RAY_AUTH_MODE=disabled` is set for a local cluster,
and on a shared machine it should run in a network namespace with only loopback
(`unshare -n sh -c 'ip link set lo up; python -m experiments.sweep ... --engine ray'`).

This module imports only the standard library and the sweep's standard-library modules at the top: Ray ships
its task function by value, with `experiments.sweep.processes`, so a worker imports nothing of the sweep.
"""
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import experiments.sweep.processes as processes
from experiments.sweep.errors import SweepError
from experiments.sweep.processes import THREAD_VARS, die_with_parent, exit_status
OBJECT_STORE_BYTES = 100 * 1024 * 1024


def default_jobs(args, n_runs: int) -> int:
    """Runs in flight: with a cluster every run is submitted (Ray queues them by resources); locally what the
    CPUs allow."""
    if args.address or args.cpus_per_run <= 0:
        return max(1, n_runs)
    return max(1, int((os.cpu_count() or 1) // args.cpus_per_run))


def run_command(command: List[str], cwd: str, env_updates: Dict[str, Optional[str]], log_path: str) -> Dict[str, Any]:
    """The Ray task: runs `command` as a subprocess, output appended to `log_path`; on `ray.cancel` it sends
    the run SIGTERM (the run saves its last epoch) and waits for it."""
    import ray
    env = dict(os.environ)
    for key, value in env_updates.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    info: Dict[str, Any] = {'node': ray.get_runtime_context().get_node_id(), 'host': socket.gethostname(),
                            'worker_pid': os.getpid()}
    with open(log_path, 'ab') as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # ray.cancel()
            info['cancelled'] = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    info['rc'] = exit_status(rc)
    return info


class RayEngine:
    name = 'ray'

    def __init__(self, *, jobs: int, address: Optional[str], cpus_per_run: float, gpus_per_run: float,
                 sweep_env: Dict[str, str]):
        os.environ.setdefault('RAY_AUTH_MODE', 'disabled')
        try:
            import ray
        except ImportError:
            raise SweepError('--engine ray needs Ray: pip install "ray[tune]==2.60.0"') from None
        self.ray = ray
        for module in (sys.modules[__name__], processes):
            ray.cloudpickle.register_pickle_by_value(module)
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            num_cpus = max(os.cpu_count() or 1, int(jobs * cpus_per_run + 0.999)) if cpus_per_run > 0 else None
            ray.init(num_cpus=num_cpus, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
        nodes = [n for n in ray.nodes() if n.get('Alive')]
        most_cpus = max((n['Resources'].get('CPU', 0) for n in nodes), default=0)
        most_gpus = max((n['Resources'].get('GPU', 0) for n in nodes), default=0)
        if cpus_per_run > most_cpus or gpus_per_run > most_gpus:
            ray.shutdown()
            raise SweepError(f"no Ray node has {cpus_per_run:g} CPUs and {gpus_per_run:g} GPUs for a run "
                             f"(largest: {most_cpus:g} CPUs, {most_gpus:g} GPUs)")
        self.capacity = jobs
        self.nodes = len(nodes)
        self.task = ray.remote(max_calls=1)(run_command).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run)
        self.env_updates: Dict[str, Optional[str]] = {
            'PYTHONPATH': sweep_env['PYTHONPATH'], 'PYTHONUNBUFFERED': '1',
            **{v: os.environ.get(v) for v in THREAD_VARS}}
        self.refs: Dict[Any, str] = {}

    def start(self, key: str, command: List[str], cwd, env, log_path) -> None:
        ref = self.task.remote(command, str(cwd), self.env_updates, str(log_path))
        self.refs[ref] = key

    def poll(self, timeout: float) -> List[Tuple[str, Dict[str, Any]]]:
        if not self.refs:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        out = []
        for ref in ready:
            key = self.refs.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.TaskCancelledError:
                result = {'rc': 143, 'cancelled': True}
            except self.ray.exceptions.RayError as e:  # the worker died, the node went away, ...
                result = {'rc': 1, 'error': f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            out.append((key, result))
        return out

    def running(self) -> int:
        return len(self.refs)

    def terminate(self) -> None:
        for ref in list(self.refs):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=False)

    def kill(self) -> None:
        for ref in list(self.refs):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.shutdown()
