"""Who may talk to the dashboard, and how long a connection may take: the outermost layers of the server.

* :class:`SiteGuard` (ASGI middleware, in front of everything) keeps web pages out. A page the user opens
  elsewhere can make the browser send requests to ``127.0.0.1``: "simple" cross-site POSTs (``text/plain``
  bodies, no preflight) or, after rebinding its own host name to ``127.0.0.1`` (DNS rebinding), requests the
  browser considers same-origin. So, as Jupyter does:

  - the ``Host`` header must name the address the dashboard listens on (``127.0.0.1``, ``localhost``,
    ``[::1]`` or ``--host``) with its port; a rebound name is refused (403). Listening beyond loopback needs
    ``--token`` (see ``__main__``), which a rebinding page cannot send, so the names are not checked there;
  - a request with an ``Origin`` other than the dashboard's own (a page on another site or port, or
    ``null``), or that the browser marks as cross-site (``Sec-Fetch-Site``) on the API, is refused (403);
  - API writes must be ``Content-Type: application/json`` (415 otherwise): a browser sends that cross-site
    only after a preflight, which the dashboard does not answer. labml's tracker sends
    ``application/json; charset=utf-8`` and no ``Origin``; the page sends ``application/json``.

  starlette's ``TrustedHostMiddleware`` checks the name only, not the port, and answers in plain text; the
  checks are few enough to write here, with answers in the dashboard's JSON ``{"error": ...}`` form.

* :func:`guarded_protocol`: uvicorn's h11 protocol with a read timeout and a cap on open connections.
  uvicorn's ``timeout_keep_alive`` covers the time *between* requests, and ``limit_concurrency`` answers 503
  once a request has arrived; neither ends a connection that never finishes sending its request, so stalled
  uploads would stay open for good, each holding a file descriptor. Here every request must arrive whole (headers and body) within
  ``read_timeout`` seconds of its connection being ready for it, or the connection is closed; connections
  beyond ``max_connections`` are closed as soon as they open.
"""

import ipaddress
import json
import logging
import time
from typing import Iterable, Optional, Set, Tuple
from urllib.parse import urlsplit

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_log = logging.getLogger('experiments.dashboard')

READ_TIMEOUT_S = 30.0
"""Default time a request has to arrive whole (``--read-timeout``); labml's updates take milliseconds."""

MAX_CONNECTIONS = 256
"""Open connections at most; more are closed at once. uvicorn answers 503 (``limit_concurrency``) from
:data:`BUSY_CONNECTIONS` on, so that a busy dashboard still says so."""

BUSY_CONNECTIONS = 200

WRITE_METHODS = ('POST', 'PUT', 'PATCH', 'DELETE')
LOOPBACK_NAMES = ('127.0.0.1', 'localhost', '[::1]')


async def answer_json(send, status: int, content, headers=()) -> None:
    """Sends a whole JSON response."""
    body = json.dumps(content).encode()
    await send({'type': 'http.response.start', 'status': status,
                'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode()),
                            *headers]})
    await send({'type': 'http.response.body', 'body': body})


#: The most of a refused body read and dropped before the answer (a larger one is cut: its client may see a reset)
DISCARD_LIMIT = 64 * 1024 * 1024


async def discard_body(receive, budget: int = DISCARD_LIMIT) -> None:
    """Reads and drops the rest of a request body, up to `budget` bytes. Answering while the client is still
    sending makes the server close a connection with unread data, which the client sees as a connection reset
    instead of the answer."""
    while budget > 0:
        message = await receive()
        if message['type'] == 'http.disconnect':
            return
        budget -= len(message.get('body', b''))
        if not message.get('more_body', False):
            return


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return host == 'localhost'


def allowed_hosts(host: str, port: int) -> Optional[Set[str]]:
    """``Host`` header values accepted from a dashboard bound to ``host:port``; None: any (beyond loopback)."""
    if not is_loopback(host):
        return None
    name = f'[{host}]' if ':' in host else host
    return {f'{n}:{port}' for n in (*LOOPBACK_NAMES, name.lower())}


def _header(scope, name: bytes) -> Optional[str]:
    for k, v in scope['headers']:
        if k == name:
            return v.decode('latin-1')
    return None


class SiteGuard:
    """ASGI middleware: ``Host``, ``Origin``, ``Sec-Fetch-Site`` and the content type of API writes (module doc)."""

    def __init__(self, app, *, hosts: Optional[Iterable[str]]):
        self.app = app
        self.hosts = None if hosts is None else {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, reason = refusal
        _log.warning('%s %s: %d %s', scope['method'], scope['path'][:200], status, reason)
        if scope['method'] in WRITE_METHODS:
            await discard_body(receive)
        await answer_json(send, status, {'error': reason})

    def refusal(self, scope) -> Optional[Tuple[int, str]]:
        """``(status, reason)`` for a request that must be refused, None for one that may pass."""
        host = (_header(scope, b'host') or '').lower()
        if self.hosts is not None and host not in self.hosts:
            return 403, (f'the Host header {host[:100]!r} is not this dashboard\'s address; '
                         f'open it as http://{sorted(self.hosts)[0]}')
        origin = _header(scope, b'origin')
        if origin is not None and not _same_origin(origin, host):
            return 403, f'requests from other sites are refused (Origin {origin[:100]!r})'
        is_api = scope['path'].startswith('/api/')
        fetch_site = _header(scope, b'sec-fetch-site')
        if is_api and fetch_site not in (None, 'same-origin', 'none'):
            return 403, f'requests from other sites are refused (Sec-Fetch-Site {fetch_site[:40]!r})'
        if is_api and scope['method'] in WRITE_METHODS:
            content_type = (_header(scope, b'content-type') or '').split(';')[0].strip().lower()
            if content_type != 'application/json':
                return 415, f'API writes must be Content-Type: application/json, not {content_type[:60]!r}'
        return None


def _same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` is the page's own: ``http(s)://`` and the ``Host`` it sent."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ('http', 'https') and bool(host) and parts.netloc.lower() == host \
        and not parts.path and not parts.query


class _Throttled:
    """One log line per `interval` seconds for a repeated event, with the count since the last line."""

    def __init__(self, message: str, interval: float = 10.0):
        self.message, self.interval, self.count, self.last = message, interval, 0, float('-inf')

    def __call__(self, *args) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.interval:
            _log.warning(self.message + ' (%d since the last such line)', *args, self.count)
            self.count, self.last = 0, now


_cut_slow = _Throttled('closed a connection that sent no whole request within %.0f s')
_cut_excess = _Throttled('refused a connection: %d are open already')


def guarded_protocol(read_timeout: float = READ_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
    """uvicorn's ``H11Protocol`` with a read timeout and a connection cap (module doc); for ``Config(http=...)``."""

    class GuardedH11Protocol(H11Protocol):
        _read_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                _cut_excess(len(self.connections) - 1)
                transport.abort()  # connection_lost removes it from the open connections
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._disarm_when_received()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets its own time
                self._disarm_when_received()  # a pipelined one may be there already

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(read_timeout, self._read_timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _disarm_when_received(self) -> None:
            if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
                self._disarm()

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if not self.transport.is_closing():
                _cut_slow(read_timeout)
                self.transport.close()  # an app waiting for the body gets http.disconnect

    return GuardedH11Protocol
