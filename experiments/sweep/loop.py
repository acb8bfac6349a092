"""
The loop of a sweep: keeps the engine busy with the runs' stages (train or resume, then evaluate), records
each finished stage, prints the progress, stops the runs on Ctrl-C / SIGTERM, and writes the table.
"""
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from experiments.sweep.errors import EXIT_FAILED
from experiments.sweep.state import ANSI, STATE_FILE, SweepState
from experiments.sweep.table import write_table

#: Seconds a run gets to save its last epoch after SIGTERM before it is killed
TERMINATE_GRACE_S = 60
PROGRESS_EVERY_S = 30


def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return '?'
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _tail(text: str, lines: int = 12) -> str:
    """The last lines of a run's output, without colours and progress-bar redraws."""
    text = ANSI.sub('', text)
    out = [line.strip() for chunk in text.split('\n') for line in chunk.split('\r')[-1:]]
    return '\n'.join([line for line in out if line][-lines:])


class Sweep(SweepState):
    """Runs the stages each run needs on an engine (`experiments.sweep.engines`) until all are done or failed,
    or a signal stops them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stop_signal: Optional[int] = None
        self.signals = 0
        self.durations: List[float] = []
        self.last_progress = 0.0

    # -- starting and finishing stages
    @staticmethod
    def wait_for_previous(run_dir: Path, timeout: float = TERMINATE_GRACE_S) -> Optional[int]:
        """Waits while the process that last trained `run_dir` (its `run.pid`) is alive, e.g. still saving after
        the previous sweep was killed; returns its pid if it is still alive after `timeout` seconds."""
        from configs.checkpoint import training_pid
        deadline = time.monotonic() + timeout
        while True:
            pid = training_pid(run_dir)
            if pid is None or pid == os.getpid():
                return None
            if time.monotonic() > deadline:
                return pid
            time.sleep(0.2)

    def start(self, run, stage: str) -> None:
        if stage == 'resume':
            pid = self.wait_for_previous(self.run_dir(run))
            if pid is not None:
                run['status'] = 'running'
                self.fail(run, f"run {run['uuid']} is still being trained by process {pid}; stop it, then run the sweep again")
                return
        log = self.folder / 'runs' / f"{run['slug']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = self.command_of(run, stage)
        with open(log, 'ab') as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {stage}: {shlex.join(command)}\n".encode())
            offset = f.tell()
        run.update(status='running', stage=stage, log=str(log.relative_to(self.folder)), log_offset=offset,
                   exit_code=None, error=None, _t0=time.monotonic())
        if stage != 'evaluate':
            run['attempts'] = run.get('attempts', 0) + 1
            run['started'] = time.strftime('%Y-%m-%dT%H:%M:%S')
        self.engine.start(run['id'], command, self.cwd, self.env, log)
        what = {'train': 'training', 'resume': f"resuming {run['uuid']}", 'evaluate': f"evaluating {run['uuid']}"}[stage]
        print(f"  start  {run['id']}: {what}", flush=True)

    def finished(self, run, result: Dict[str, Any]) -> Optional[str]:
        """Records a finished stage; returns the next stage to start, if any."""
        stage, rc = run['stage'], result['rc']
        seconds = time.monotonic() - run.pop('_t0', time.monotonic())
        run['_elapsed'] = run.get('_elapsed', 0.0) + seconds
        node_key = 'eval_node' if stage == 'evaluate' else 'node'
        if result.get('node') is not None:
            run[node_key] = result['node']
        run['host'] = result.get('host')
        if stage != 'evaluate' and not run.get('uuid'):
            run['uuid'] = self.uuid_from_log(run)
        run['exit_code'] = rc
        if rc == 0:
            if stage == 'evaluate':
                run['eval_s'] = round(seconds, 2)
                return self.evaluated(run)
            run['train_s'] = round(run.get('train_s', 0) + seconds, 2) if stage == 'resume' else round(seconds, 2)
            if not run.get('uuid'):
                return self.fail(run, 'no run uuid in the output of training')
            return 'evaluate'
        if self.stop_signal is not None and (rc in (130, 143) or result.get('cancelled')):
            run['status'] = 'interrupted'
            print(f"  stop   {run['id']}: interrupted ({stage})", flush=True)
            return None
        return self.fail(run, self._error_text(run, stage, rc) + (f"\n{result['error']}" if result.get('error') else ''))

    def _error_text(self, run, stage, rc) -> str:
        log = self.folder / run['log']
        with open(log, 'rb') as f:
            f.seek(run.get('log_offset', 0))
            tail = _tail(f.read().decode(errors='replace'))
        why = {3: 'training stopped on non-finite numbers', 2: 'bad command line or data',
               137: 'killed (SIGKILL: out of memory?)', 143: 'terminated (SIGTERM)', 130: 'interrupted (SIGINT)'}
        return f"{stage} exited with {rc}" + (f" ({why[rc]})" if rc in why else '') + (f":\n{tail}" if tail else '')

    def fail(self, run, error: str) -> None:
        run.update(status='failed', error=error, finished=time.strftime('%Y-%m-%dT%H:%M:%S'))
        lines = error.splitlines()
        print(f"  FAIL   {run['id']}: {lines[0]}" + (f" ... {lines[-1]}" if len(lines) > 1 else ''), flush=True)
        return None

    def evaluated(self, run) -> None:
        from experiments.compare import load_row
        try:
            row = load_row(str(self.run_dir(run)), self.experiments_path, self.split)
        except Exception as e:  # a missing or corrupt evaluation file
            return self.fail(run, f"evaluation file unreadable: {e}")
        run.update(status='done', metrics=row.values, evaluated_split=self.split,
                   finished=time.strftime('%Y-%m-%dT%H:%M:%S'))
        self.durations.append(run.pop('_elapsed', 0.0))
        acc = row.values.get('accuracy')
        print(f"  done   {run['id']}: {run['uuid']}, accuracy {acc:.4f}" if acc is not None else
              f"  done   {run['id']}: {run['uuid']}", flush=True)
        return None

    # -- progress
    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_EVERY_S:
            return
        self.last_progress = now
        c = self.counts()
        todo = c['pending'] + c['interrupted']
        elapsed = now - self.started
        if self.durations:
            per_run = sum(self.durations) / len(self.durations)
            parallel = max(1, min(self.engine.capacity, todo + c['running']))
            remaining = (todo + 0.5 * c['running']) * per_run / parallel
        else:
            remaining = None if todo + c['running'] else 0
        print(f"[sweep {self.name}] {c['done']}/{len(self.runs)} done, {c['running']} running, {c['failed']} failed, "
              f"{todo} to go; elapsed {_fmt_time(elapsed)}, remaining ~{_fmt_time(remaining)}", flush=True)

    def poll_uuids(self) -> bool:
        changed = False
        for run in self.runs:
            if run.get('status') == 'running' and run.get('stage') == 'train' and not run.get('uuid'):
                run['uuid'] = self.uuid_from_log(run)
                changed |= bool(run['uuid'])
        return changed

    # -- the loop
    def on_signal(self, signum, frame) -> None:
        """Only notes the signal: the loop stops the runs (a second signal kills them)."""
        self.signals += 1
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self) -> int:
        queue: List[Tuple[Dict[str, Any], str]] = []
        skipped = 0
        for run in self.runs:
            stage = self.next_stage(run)
            if stage is None:
                skipped += 1
                if run.get('status') != 'done':
                    run['status'] = 'done'
                continue
            # 'interrupted': a previous sweep stopped (or was killed) while it ran; failed runs are tried again
            run['status'] = 'pending' if stage == 'train' else 'interrupted'
            queue.append((run, stage))
        todo_text = ', '.join(f"{n} to {s}" for s, n in
                              sorted({s: sum(1 for _, t in queue if t == s) for s in {t for _, t in queue}}.items()))
        print(f"sweep {self.name}: {len(self.runs)} runs ({skipped} already done{', ' + todo_text if queue else ''}); "
              f"engine {self.engine.name}, up to {self.engine.capacity} at a time; split {self.split}\n"
              f"  folder {self.folder}", flush=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.save()
        handlers = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        stop_deadline = None
        try:
            self.progress(force=True)
            while queue or self.engine.running():
                while queue and self.stop_signal is None and self.engine.running() < self.engine.capacity:
                    run, stage = queue.pop(0)
                    self.start(run, stage)
                    self.save()
                results = self.engine.poll(timeout=0.5)
                changed = bool(results) | self.poll_uuids()
                for key, result in results:
                    run = self.by_id[key]
                    nxt = self.finished(run, result)
                    if nxt is not None:
                        if self.stop_signal is None:
                            self.start(run, nxt)
                        else:
                            run['status'] = 'interrupted'
                if changed:
                    self.save()
                    self.progress(force=bool(results))
                else:
                    self.progress()
                if self.stop_signal is not None:
                    queue = []
                    if stop_deadline is None:
                        print(f"\n{signal.Signals(self.stop_signal).name}: stopping the runs (they save their last "
                              f"complete epoch; a second Ctrl-C kills them) ...", file=sys.stderr, flush=True)
                        self.engine.terminate()
                        stop_deadline = time.monotonic() + TERMINATE_GRACE_S
                    if self.signals > 1 or time.monotonic() > stop_deadline:
                        self.engine.kill()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            if self.stop_signal is not None:
                for run in self.runs:
                    if run.get('status') == 'running':
                        run['status'] = 'interrupted'
            self.save()
            self.engine.close()
        write_table(self)
        self.save()
        c = self.counts()
        again = shlex.join(['python', '-m', 'experiments.sweep', *self.command])
        if self.stop_signal is not None:
            print(f"\nstopped by {signal.Signals(self.stop_signal).name}: {c['done']} done, {c['interrupted']} interrupted, "
                  f"{c['pending']} not started, {c['failed']} failed (state in {self.folder / STATE_FILE}).\n"
                  f"Continue with: {again}", file=sys.stderr, flush=True)
            return 128 + self.stop_signal
        if c['failed']:
            print(f"\n{c['failed']} run(s) failed (see 'error' in {self.folder / STATE_FILE} and the logs in "
                  f"{self.folder / 'runs'}); running the same command again retries them:\n  {again}",
                  file=sys.stderr, flush=True)
            return EXIT_FAILED
        return 0
