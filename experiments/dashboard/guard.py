"""The request guard: what every request passes after :class:`.security.SiteGuard`, before labml-app.

* ``--token``: runs send the shared secret in the update path (``/api/v1/TOKEN/track``), browsers once in
  ``?token=`` (then an HttpOnly cookie); anything else is answered 401;
* a body-size limit (413); malformed requests answered 400 with a short reason (bad JSON, wrong types)
  instead of a 500 and a traceback in the log;
* records that do not exist are 404 on every route naming one (run, session, computer): labml-app's
  handlers would create them;
* reads never write: GETs, and the POSTs the page reads with (metrics, logs), run inside
  :func:`.storage.read_only`.
"""

import hmac
import json
import logging
import re
import time
from collections import deque
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs

from . import storage
from .security import answer_json, discard_body

_log = logging.getLogger('experiments.dashboard')

TOKEN_COOKIE = 'dashboard_token'

#: Fields (and their types) of the JSON bodies the page sends to run-scoped endpoints; labml-app stores them
#: as they come (a name of 5 breaks the run list). Any other run-scoped POST body must be a JSON object too.
BODY_FIELDS = {
    '/api/v1/run/{run_uuid}': {'name': str, 'comment': str, 'note': str, 'favourite_configs': list,
                               'selected_configs': list},
    '/api/v1/metrics/{run_uuid}': {'get_all': bool},
    '/api/v1/compare/metrics/{run_uuid}': {'get_all': bool},
}

#: POST routes that only read (the page sends its query as a JSON body)
READING_POSTS = frozenset({'/api/v1/metrics/{run_uuid}', '/api/v1/compare/metrics/{run_uuid}',
                           '/api/v1/logs/stdout/{run_uuid}', '/api/v1/logs/stderr/{run_uuid}',
                           '/api/v1/logs/std_logger/{run_uuid}'})

#: path parameters that name a record, and the kind of record
RECORD_PARAMS = {'run_uuid': 'run', 'session_uuid': 'session', 'computer_uuid': 'computer'}


class BadRequest(Exception):
    """A malformed request: answered 400 with this short reason."""


class RequestStats:
    """Counts and durations of recent requests, by kind, for ``/api/dashboard/health``."""

    def __init__(self, keep: int = 5000):
        self.durations: Dict[str, deque] = {}
        self.counts: Dict[str, int] = {}
        self.keep = keep

    def record(self, kind: str, seconds: float) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.durations.setdefault(kind, deque(maxlen=self.keep)).append(seconds)

    def summary(self) -> Dict[str, Dict[str, float]]:
        out = {}
        for kind, d in self.durations.items():
            xs = sorted(d)
            out[kind] = {'count': self.counts[kind], 'p50_ms': round(1000 * xs[len(xs) // 2], 1),
                         'p95_ms': round(1000 * xs[min(len(xs) - 1, int(0.95 * len(xs)))], 1),
                         'max_ms': round(1000 * xs[-1], 1)}
        return out


def _request_kind(method: str, path: str) -> str:
    if path.endswith('/track'):
        return 'track'
    if path.startswith('/api/'):
        return 'api_read' if method == 'GET' or '/metrics/' in path else 'api_write'
    return 'page'


def token_given(scope, token: str) -> Tuple[bool, bool]:
    """``(in ?token=, in the cookie)``: where a request carries ``token``."""
    query = parse_qs(scope.get('query_string', b'').decode('latin-1'))
    given = (query.get('token') or [''])[0]
    in_query = bool(given) and hmac.compare_digest(given.encode(), token.encode())
    for name, value in scope['headers']:
        if name == b'cookie':
            for part in value.decode('latin-1').split(';'):
                k, _, v = part.strip().partition('=')
                if k == TOKEN_COOKIE and hmac.compare_digest(v.encode(), token.encode()):
                    return in_query, True
    return in_query, False


class RequestGuard:
    """ASGI middleware in front of labml-app (see the module doc).

    ``exists(kind, id)`` says whether a run, session or computer is stored; ``routes()`` are the app's routes.
    """

    def __init__(self, app, *, token: Optional[str], max_body: int, exists: Callable[[str, str], bool],
                 routes: Callable[[], list], stats: RequestStats):
        self.app, self.token, self.max_body = app, token, max_body
        self.exists, self.routes, self.stats = exists, routes, stats

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        method, path = scope['method'], scope['path']
        try:
            await self._handle(scope, receive, send, method, path)
        finally:
            self.stats.record(_request_kind(method, path), time.perf_counter() - started)

    def _authorised(self, scope, path: str):
        """(allowed, cookie to set) under ``--token``."""
        if self.token is None or path == '/api/dashboard/health':
            return True, None
        m = re.match(r'^/api/v1/([^/]+)/track$', path)
        if m:
            return hmac.compare_digest(m.group(1).encode(), self.token.encode()), None
        in_query, in_cookie = token_given(scope, self.token)
        if in_query:
            return True, f'{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict'
        return in_cookie, None

    async def _handle(self, scope, receive, send, method, path):
        allowed, cookie = self._authorised(scope, path)
        if not allowed:
            if method in ('POST', 'PUT', 'PATCH', 'DELETE'):
                await discard_body(receive)
            return await answer_json(send, 401, {
                'error': 'this dashboard was started with --token: runs send it in their dashboard URL '
                         '(dashboard=http://HOST:PORT/?token=TOKEN, or DASHBOARD_TOKEN), browsers open /?token=TOKEN'})
        headers = dict(scope['headers'])
        length = headers.get(b'content-length')
        if length is not None:
            if not length.isdigit():
                return await answer_json(send, 400, {'error': 'bad Content-Length'})
            if int(length) > self.max_body:
                await discard_body(receive)
                return await answer_json(send, 413, {'error': f'request body over {self.max_body:,} bytes'})
        body, more = b'', method in ('POST', 'PUT', 'PATCH', 'DELETE')
        while more:
            message = await receive()
            if message['type'] == 'http.disconnect':
                return
            body += message.get('body', b'')
            more = message.get('more_body', False)
            if len(body) > self.max_body:
                if more:
                    await discard_body(receive)
                return await answer_json(send, 413, {'error': f'request body over {self.max_body:,} bytes'})
        route, kind, record = self._record_of(scope)
        if record is not None and not self.exists(kind, record):
            return await answer_json(send, 404, {'error': f'unknown {kind} {record[:80]!r}'})
        if route is not None and body:
            problem = _body_problem(route, body)
            if problem:
                return await answer_json(send, 400, {'error': problem})

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {'type': 'http.request', 'body': body, 'more_body': False}
            return await receive()

        started = False

        async def send_wrapper(message):
            nonlocal started
            if message['type'] == 'http.response.start':
                started = True
                extra = [(b'access-control-expose-headers', b'Authorization')]  # the page reads its session token
                if cookie:
                    extra.append((b'set-cookie', cookie.encode()))
                message = {**message, 'headers': [*message.get('headers', []), *extra]}
            await send(message)

        try:
            if method in ('GET', 'HEAD') or route in READING_POSTS:
                with storage.read_only():
                    await self.app(scope, replay, send_wrapper)
            else:
                await self.app(scope, replay, send_wrapper)
        except Exception as e:  # noqa: BLE001 - every failure gets a JSON answer the page can show
            if started:
                raise
            status, reason = self._classify(e, body)
            if status >= 500:
                _log.exception('request failed: %s %s', method, path)
            else:
                _log.warning('%s %s: %d %s', method, path, status, reason)
            await answer_json(send, status, {'error': reason})

    @staticmethod
    def _classify(e: Exception, body: bytes):
        if isinstance(e, BadRequest):
            return 400, str(e)
        if isinstance(e, json.JSONDecodeError):
            return 400, f'the request body is not valid JSON ({e.msg} at character {e.pos})'
        if body and isinstance(e, RecursionError):
            return 400, 'the request body is nested too deeply'
        if isinstance(e, UnicodeDecodeError):
            return 400, 'the request body is not UTF-8 text'
        if body and isinstance(e, (TypeError, KeyError, AttributeError, ValueError, IndexError)):
            # raised by labml-app reading fields of the body: the request, not the server, is wrong
            return 400, f'malformed request body ({type(e).__name__}: {str(e)[:200]})'
        return 500, str(e)[:500]

    def _record_of(self, scope):
        """``(route path, kind, id)`` of an endpoint naming a run, session or computer; else ``(path, None,
        None)`` for another route, ``(None, None, None)`` when no route matches."""
        from starlette.routing import Match
        for route in self.routes():
            match, child = route.matches(scope)
            if match == Match.FULL:
                params = child.get('path_params', {})
                for name, kind in RECORD_PARAMS.items():
                    if name in params:
                        return route.path, kind, params[name]
                return route.path, None, None
        return None, None, None


def _body_problem(route: str, body: bytes) -> Optional[str]:
    """What is wrong with the JSON body of a request to a run-scoped route, or None."""
    if '{run_uuid}' not in route:
        return None
    try:
        data = json.loads(body)
    except RecursionError:
        return 'the request body is nested too deeply'
    except ValueError as e:
        return f'the request body is not valid JSON ({getattr(e, "msg", e)})'
    if not isinstance(data, dict):
        return f'the request body must be a JSON object, got {type(data).__name__}'
    for key, t in BODY_FIELDS.get(route, {}).items():
        if key in data and not isinstance(data[key], t):
            return f'"{key}" must be {"a " + t.__name__ if t is not list else "a list"}, got {type(data[key]).__name__}'
        if t is list and key in data and not all(isinstance(x, str) for x in data[key]):
            return f'"{key}" must be a list of strings'
    return None
