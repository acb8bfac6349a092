"""Point a labml run at the dashboard: :func:`attach`, called before ``experiment.create``.

    from experiments.dashboard.client import attach
    writers = {'screen', 'file'}
    if attach(dashboard_url):        # e.g. 'http://127.0.0.1:5005', or None
        writers.add('app')
    experiment.create(name='evidence_mnist', writers=writers)

What it changes in labml 0.5.3 (only after the dashboard answered):

* ``lab.configure``-style settings: ``app_url`` (the dashboard's run-update
  endpoint) and ``app_open_browser: False`` (labml would otherwise open a browser
  tab from the training process);
* each epoch's histograms (``configs.histograms``) are posted to the dashboard by a :class:`.sender.HistogramSender`;
* labml's app-client thread class (``labml.internal.app._AppTrackThread``, through
  :mod:`configs.compat`) is replaced by :class:`BoundedAppTrackThread`, which sends labml's updates with the
  configurations tidied and the run described (:mod:`.describe`, :func:`describe_run`). The stock thread retries a failed
  update forever, sleeping 10 s, 20 s, 30 s, ... and is not a daemon, so a
  dashboard that dies mid-run keeps the process alive for minutes (forever, in
  fact) after training ends. The replacement retries while the run is live, but
  at exit gives the last updates at most :data:`EXIT_FLUSH_S` seconds.

A dashboard started with ``--token`` accepts only runs that send its token: in the URL
(``dashboard=http://HOST:PORT/?token=TOKEN``, or the labml form ``http://HOST:PORT/api/v1/TOKEN``) or,
keeping it out of the command line and of the run's saved configuration, in the environment variable
:data:`TOKEN_ENV`. The token goes where labml puts its project token: the update path ``/api/v1/TOKEN/track``.
"""

import atexit
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from configs.compat import app_track_thread_class, empty_app_packet, lab_app_url, set_lab_app_url, \
    use_app_track_thread
from .describe import tidy_packet
from .sender import HistogramSender, error_reason

HEALTH_TIMEOUT_S = 1.0
"""How long :func:`attach` waits for the dashboard to answer."""
REQUEST_TIMEOUT_S = 10.0
"""Per-update HTTP timeout (labml uses 120 s; the dashboard answers in about 1 s)."""
EXIT_FLUSH_S = 3.0
"""At process exit the last updates get this long without progress (no update answered), plus the delay the
dashboard said it holds each answer for (``throttle_s``: longer while many runs report)..."""
EXIT_FLUSH_MAX_S = 20.0
"""... and at most this long in all, while a busy dashboard keeps answering."""
MAX_BACKOFF_S = 30.0

TOKEN_ENV = 'DASHBOARD_TOKEN'
"""Environment variable holding the token of a dashboard started with ``--token``."""

TRACK_PATH = '/api/v1/default/'
"""Run-update path labml's client appends ``track?...`` to. labml-app reads the
project token from a query parameter, not from this path; the dashboard files
token-less runs in the local user's project (no claim needed)."""


def _warn(message: str) -> None:
    print(f'dashboard: warning: {message}', file=sys.stderr, flush=True)


def resolve_url(url: Optional[str]) -> Optional[str]:
    """The dashboard URL to use: ``url``, else labml's own ``app_url`` setting.

    labml reads ``app_url`` from ``.labml.yaml`` or the ``labml_app_url``
    environment variable; a run without an explicit ``dashboard=`` still honours
    it (through :func:`attach`, so it gets the same checks).
    """
    url = (url or '').strip()
    if url:
        return url
    if os.environ.get('labml_app_url', '').strip():
        return os.environ['labml_app_url'].strip()
    try:
        return lab_app_url()
    except Exception:  # noqa: BLE001 - a broken .labml.yaml is reported by labml itself later
        return None


def split_url(url: str, token: Optional[str] = None):
    """``'http://h:p'``, ``'http://h:p/?token=T'`` or ``'http://h:p/api/v1/TOKEN/'`` -> ``(root, app_url)``.

    ``root`` is the dashboard page; ``app_url`` is what labml's ``app_url`` expects. A missing scheme means
    ``http://``. ``token`` (default: ``$DASHBOARD_TOKEN``) is used when the URL carries none.
    Raises ``ValueError`` on anything else.
    """
    if '://' not in url:
        url = 'http://' + url
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if parts.scheme not in ('http', 'https') or not parts.hostname or set(query) - {'token'}:
        raise ValueError(f'not a dashboard URL: {url!r} (expected http://HOST:PORT or http://HOST:PORT/?token=TOKEN)')
    root = f'{parts.scheme}://{parts.netloc}/'
    url_token = (query.get('token') or [''])[0]
    if '/api/' in parts.path:
        path = parts.path
    else:
        token = url_token or (os.environ.get(TOKEN_ENV, '').strip() if token is None else token)
        path = f'/api/v1/{urllib.parse.quote(token, safe="")}/' if token else TRACK_PATH
    if not path.endswith('/'):
        path += '/'
    return root, root.rstrip('/') + path


def _url_token(app_url: str) -> str:
    """The token in an ``app_url`` (``.../api/v1/TOKEN/``); ``default`` means none."""
    token = app_url.rstrip('/').rsplit('/', 1)[-1]
    return '' if token == 'default' else urllib.parse.unquote(token)


def health(root: str, token: str = '', timeout: float = HEALTH_TIMEOUT_S) -> Optional[dict]:
    """The dashboard's ``/api/dashboard/health`` answer (``{}`` from a server without one), None when nothing
    answers at ``root`` within ``timeout`` seconds."""
    query = '?' + urllib.parse.urlencode({'token': token}) if token else ''
    try:
        with urllib.request.urlopen(root + 'api/dashboard/health' + query, timeout=timeout) as r:
            try:
                answer = json.loads(r.read())
            except ValueError:
                return {}
            return answer if isinstance(answer, dict) else {}
    except urllib.error.HTTPError:
        return {}  # a stock `labml app-server` has no health endpoint
    except (urllib.error.URLError, OSError, ValueError):
        return None


def attach(url: Optional[str]) -> bool:
    """Report the coming labml run to the dashboard at ``url``, if it answers.

    * ``url`` empty or None (and no ``app_url`` configured for labml): does nothing,
      returns False.
    * dashboard answers within about 1 s: configures labml to send the run there
      (listed at once, no claim) and returns True; the caller adds the ``'app'``
      writer to ``experiment.create``.
    * otherwise: prints one warning line to stderr and returns False; the run
      goes on with local logs only.
    """
    url = resolve_url(url)
    if not url:
        return False
    try:
        root, app_url = split_url(url)
    except ValueError as e:
        _warn(f'{e}; continuing with local logs only')
        return False
    token = _url_token(app_url)
    answer = health(root, token)
    if answer is None:
        _warn(f'dashboard at {root} is unreachable; the run continues with local logs only')
        return False
    if answer.get('token_required') and not answer.get('token_ok'):
        _warn(f'dashboard at {root} ' + ('refused the token given' if token else 'needs its token (it runs with '
              f'--token): pass dashboard={root}?token=TOKEN or set {TOKEN_ENV}') +
              '; the run continues with local logs only')
        return False

    set_lab_app_url(app_url)
    use_app_track_thread(BoundedAppTrackThread)
    from configs.histograms import AFTER_EPOCH
    AFTER_EPOCH[:] = [c for c in AFTER_EPOCH if not isinstance(c, HistogramSender)]
    AFTER_EPOCH.append(HistogramSender(root, token))
    return True


_RUN: dict = {}


def describe_run(run: dict) -> None:
    """The description of the run being trained (``experiments.train.describe``): its updates to the dashboard
    mark the keys it set and carry its label (:func:`.describe.tidy_packet`)."""
    _RUN.clear()
    _RUN.update(run)


class BoundedAppTrackThread(app_track_thread_class()):
    """labml's app-client thread with bounded retries and a bounded exit.

    labml's ``AppTracker`` creates one per run and calls ``stop()`` when the run
    finishes, after queueing the final status. Differences from labml's thread:

    * daemon thread, so it never holds the interpreter open; an ``atexit`` hook
      instead gives it up to :data:`EXIT_FLUSH_S` seconds to send what is queued;
    * per-update timeout :data:`REQUEST_TIMEOUT_S` instead of 120 s;
    * while the run is live, a failed update is retried with backoff (1 s, 2 s,
      4 s, ... up to 30 s) and one warning line; after ``stop()`` there is no retry;
    * an error answer from the app disables reporting for this run instead of
      raising in the training loop (labml sets ``errored``, which makes the next
      ``tracker.save`` raise).
    """

    def __init__(self, url: str, *, timeout_seconds: int, daemon: bool):
        super().__init__(url, timeout_seconds=min(timeout_seconds, REQUEST_TIMEOUT_S), daemon=True)
        self._disabled = False
        self._warned = False
        self._unsent = 0
        self._last_answer = time.monotonic()
        self._throttle_s = 0.0
        atexit.register(self._flush_at_exit)

    # -- labml interface ---------------------------------------------------------
    def stop(self):
        # labml prints "Still updating labml server, please wait..." here; this
        # thread's wait is bounded, so it stays quiet
        self.is_stopped = True
        self.push_data_source(_Wakeup())

    def run(self):
        while True:
            packets = [p for p in self._get_packets() if p.data]
            if packets and not self._disabled:
                self._send_with_retry(packets)
            if self.is_stopped and self.queue.empty():
                time.sleep(0.1)  # labml queues the final status right before stop()
                if self.queue.empty():
                    break
        if self._unsent:
            _warn(f'{self._unsent} update(s) could not be sent to the dashboard; '
                  f'the local logs are complete')

    # -- internals ---------------------------------------------------------------
    def _send_with_retry(self, packets) -> None:
        backoff = 1.0
        while True:
            error = self._try_send(packets)
            if error is None:
                if self._warned and not self.is_stopped:
                    print('dashboard: reconnected', file=sys.stderr, flush=True)
                    self._warned = False
                return
            if self._disabled or self.is_stopped:
                self._unsent += len(packets)
                return
            if not self._warned:
                _warn(f'{error}; retrying in the background, training continues')
                self._warned = True
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not self.is_stopped:
                time.sleep(0.1)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _try_send(self, packets) -> Optional[str]:
        """Send once; None on success, else a one-line reason."""
        try:
            response = self._send([tidy_packet(p.data, _RUN) for p in packets])
        except RuntimeError as e:  # labml's _send raises this for an error answer from the app
            self.errored = False
            self._disabled = True
            details = e.args[1] if len(e.args) > 1 else e
            _warn(f'the dashboard rejected an update ({details}); no more updates are sent '
                  f'for this run, the local logs are complete')
            return str(e)
        except urllib.error.HTTPError as e:
            reason = error_reason(e)
            if 400 <= e.code < 500 and e.code not in (408, 429):
                # the update itself is refused: sending it again cannot help
                if e.code in (401, 403):
                    self._disabled = True
                    _warn(f'the dashboard refused this run (HTTP {e.code}{reason}); no more updates are sent, '
                          f'the local logs are complete')
                else:
                    _warn(f'the dashboard refused an update (HTTP {e.code}{reason}); it is dropped, the local '
                          f'logs are complete')
                self._unsent += len(packets)
                return None
            return f'dashboard answered HTTP {e.code} to a run update{reason}'
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, 'reason', e)
            return f'dashboard unreachable at {self.url.split("/api/")[0]} ({reason})'
        self._last_answer = time.monotonic()
        hint = response.get('throttle_s') if isinstance(response, dict) else None
        if isinstance(hint, (int, float)) and 0 <= hint <= 60:
            self._throttle_s = float(hint)
        for h in self.handlers:
            if h.handle(response):
                break
        return None

    def _flush_at_exit(self):
        if not self.is_alive():
            return
        if not self.is_stopped:
            self.stop()
        started = time.monotonic()
        self._last_answer = max(self._last_answer, started)
        while self.is_alive():
            now = time.monotonic()
            if now - self._last_answer > EXIT_FLUSH_S + self._throttle_s or now - started > EXIT_FLUSH_MAX_S:
                break
            self.join(0.1)
        if self.is_alive():
            _warn(f'gave up sending the last updates to the dashboard after {time.monotonic() - started:.0f} s; '
                  f'the local logs are complete')


class _Wakeup:
    """Queue item that wakes the thread after ``stop()``; carries no data."""

    def get_data_packet(self):
        return empty_app_packet()
