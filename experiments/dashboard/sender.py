"""Sends a run's histogram lines (``configs.histograms``) to the dashboard, in the background.

:func:`.client.attach` registers a :class:`HistogramSender` in ``configs.histograms.AFTER_EPOCH`` once the dashboard
answered. Each epoch's line is queued and posted, in order, to ``POST /api/dashboard/histograms/{run_uuid}`` (the
token, if any, in ``?token=``). Training never waits for it:

* a daemon thread sends; a failure (dashboard unreachable, or the run not on it yet: labml's client creates it
  with its first update) is retried with backoff (1 s, 2 s, ... up to 30 s) while the run trains, with one
  warning line;
* an update the dashboard refuses (4xx other than 404, 408, 429) is dropped with a warning: sending it again
  cannot help;
* at exit what is queued (retried every 0.25 s) gets at most :data:`EXIT_FLUSH_S` seconds without progress (:data:`EXIT_FLUSH_MAX_S` in
  all); the run folder's ``histograms.jsonl`` has every line, and ``python -m experiments.dashboard import`` sends
  them later.
"""
import atexit
import json
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Tuple

HISTOGRAMS_PATH = 'api/dashboard/histograms/'
REQUEST_TIMEOUT_S = 10.0
EXIT_FLUSH_S = 3.0
EXIT_FLUSH_MAX_S = 20.0
MAX_BACKOFF_S = 30.0
#: Answers worth sending the same line again for: the run is not on the dashboard yet (404), timeouts, busy
RETRY_CODES = (404, 408, 429)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _warn(message: str) -> None:
    print(f'dashboard: warning: {message}', file=sys.stderr, flush=True)


def histograms_url(root: str, run_uuid: str, token: str = '') -> str:
    query = '?' + urllib.parse.urlencode({'token': token}) if token else ''
    return f'{root.rstrip("/")}/{HISTOGRAMS_PATH}{urllib.parse.quote(run_uuid, safe="")}{query}'


def post_json(url: str, payload, timeout: float = REQUEST_TIMEOUT_S) -> dict:
    """POSTs ``payload`` as JSON; the answer's JSON object. Raises ``urllib.error.HTTPError`` / ``URLError`` /
    ``OSError``."""
    request = urllib.request.Request(url, data=json.dumps(payload, separators=(',', ':')).encode(),
                                     headers={'Content-Type': 'application/json'})
    with _OPENER.open(request, timeout=timeout) as r:
        answer = json.loads(r.read() or b'{}')
    return answer if isinstance(answer, dict) else {}


def error_reason(e: urllib.error.HTTPError) -> str:
    """``': <reason>'`` from a JSON error answer of the dashboard, or ''."""
    try:
        reason = json.loads(e.read()).get('error', '')
    except Exception:  # noqa: BLE001 - no body, not JSON
        return ''
    return f': {str(reason)[:200]}' if reason else ''


class HistogramSender:
    """``AFTER_EPOCH`` callback ``(run_uuid, record)`` posting each line to the dashboard at ``root`` (module doc)."""

    def __init__(self, root: str, token: str = ''):
        self.root, self.token = root, token
        self.queue: 'queue.Queue[Optional[Tuple[str, dict]]]' = queue.Queue()
        self.stopping = False
        self.abandoned = False  # by `close`: the thread stops retrying
        self.warned = False
        self.refused = 0
        self.pending = 0
        self.last_progress = time.monotonic()
        self.thread = threading.Thread(target=self._run, name='dashboard-histograms', daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def __call__(self, run_uuid: str, record: dict) -> None:
        self.pending += 1
        self.queue.put((run_uuid, record))

    def close(self, flush_s: float = EXIT_FLUSH_S, max_s: float = EXIT_FLUSH_MAX_S) -> None:
        """Stops after what is queued is sent, or after ``flush_s`` seconds without progress (``max_s`` in all)."""
        if not self.thread.is_alive() or self.stopping:
            return
        self.stopping = True
        self.queue.put(None)
        started = time.monotonic()
        self.last_progress = max(self.last_progress, started)
        while self.thread.is_alive():
            now = time.monotonic()
            if now - self.last_progress > flush_s or now - started > max_s:
                break
            self.thread.join(0.1)
        self.abandoned = self.thread.is_alive()
        if self.abandoned and self.pending:
            _warn(f'gave up sending {self.pending} histogram update(s) to the dashboard; the run folder has them '
                  f'(python -m experiments.dashboard import RUN sends them later)')

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                break
            self._send(*item)
            self.pending -= 1
            self.last_progress = time.monotonic()

    def _send(self, run_uuid: str, record: dict) -> None:
        backoff = 1.0
        url = histograms_url(self.root, run_uuid, self.token)
        while True:
            try:
                post_json(url, record)
                if self.warned:
                    self.warned = False
                return
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_CODES and e.code < 500:
                    _warn(f'the dashboard refused the histograms of epoch {record.get("epoch")} (HTTP {e.code}'
                          f'{error_reason(e)}); the run folder has them')
                    self.refused += 1
                    return
                reason = f'HTTP {e.code}{error_reason(e)}'
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = str(getattr(e, 'reason', e))
            if self.abandoned:
                return
            if self.stopping:  # `close` bounds how long this goes on
                time.sleep(0.25)
                continue
            if not self.warned:
                _warn(f'could not send histograms to the dashboard ({reason}); retrying in the background')
                self.warned = True
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(0.1)
            backoff = min(2 * backoff, MAX_BACKOFF_S)
