"""The dashboard web app: labml-app's own API and page, on our storage, offline.

``labml_app.flask_app`` cannot be imported on a machine without MongoDB (it
connects at import time), so :func:`create_app` assembles the same FastAPI app
from labml-app's public pieces instead:

* storage: :mod:`.storage` (embedded file store, or labml-app's MongoDB);
* API: ``labml_app.handlers.add_handlers`` - every labml-app endpoint, unchanged,
  except the run-update endpoint ``POST /api/v1/{token}/track``, which we
  register first (FastAPI dispatches to the first matching route) to
  - file runs sent without a project token into the local user's project, which
    is exactly what labml-app's "Claim" button does, so runs are listed at once;
  - drop labml-app's unconditional 3 s ``asyncio.sleep`` after each update, which
    throttles clients but also delays every run's exit by 3 s or more; we keep a
    shorter throttle, and none for a run's final status update;
  - add the default chart cards of :mod:`.charts` (quantile spreads, accuracy);
* page: labml-app's compiled front end (``labml_app/static``), with the three
  CDN references in its ``index.html`` rewritten to copies served from
  ``/vendor/`` (see ``static/VERSIONS.md``), so the page works without internet;
* ``GET /api/dashboard/health``: a cheap probe for clients (see :mod:`.client`), with request statistics;
* :class:`RequestGuard` in front of everything: a body-size limit (413), malformed requests answered 400 with
  a short reason (bad JSON, wrong types) instead of a 500 and a traceback in the log, 404 for a run that does
  not exist (labml-app would create empty records for it), and with ``--token`` a shared secret that runs
  and browsers must know.
"""

import asyncio
import hmac
import json
import logging
import os
import re
import time
import warnings
from collections import deque
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, Optional
from urllib.parse import parse_qs

VENDOR_DIR = Path(__file__).resolve().parent / 'static' / 'vendor'

# The CDN references in labml-app 0.5.14's index.html and their vendored copies.
CDN_ASSETS: Dict[str, str] = {
    'https://cdn.jsdelivr.net/npm/bootstrap@5.0.0-beta2/dist/css/bootstrap.min.css':
        '/vendor/bootstrap-5.0.0-beta2/css/bootstrap.min.css',
    'https://d3js.org/d3.v6.min.js':
        '/vendor/d3-6.7.0/d3.min.js',
    'https://cdnjs.cloudflare.com/ajax/libs/font-awesome/5.9.0/css/all.css':
        '/vendor/fontawesome-free-5.9.0/css/all.min.css',
}

TRACK_THROTTLE_S = 1.0
"""Delay before answering a live run update (labml-app uses 3 s).

labml's client sends its next update only after the previous answer, so this caps
each run at about one update per second: live enough, and it keeps a fast
training loop from keeping the dashboard busy. Final updates are not delayed.
With many runs reporting at once the delay grows (:func:`throttle_s`)."""

RUNS_PER_THROTTLE = 4
"""Runs that share one :data:`TRACK_THROTTLE_S` of delay: with 16 runs reporting, each is answered after 4 s,
so the dashboard handles ~4 updates a second however many runs report (one update of labml-app costs tens of
milliseconds of its single event loop; at 16 a second it fell behind and runs' final updates timed out)."""


def throttle_s(active_runs: int) -> float:
    """Delay before answering a live update while `active_runs` runs report."""
    return TRACK_THROTTLE_S * max(1.0, active_runs / RUNS_PER_THROTTLE)

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body accepted (413 above it). labml's client sends its buffered indicators once a
second or so: a few kB, at most a few hundred kB after a long disconnection."""

TOKEN_COOKIE = 'dashboard_token'
RUN_UUID = re.compile(r'^[A-Za-z0-9_\-]{1,80}$')
VERSION = re.compile(r'^\d+(\.\d+){0,3}$')
TRACK_KEYS_STR = ('name', 'comment', 'python_file', 'commit', 'commit_message', 'stdout', 'stderr', 'logger')

_log = logging.getLogger('experiments.dashboard')

#: Fields (and their types) of the JSON bodies the page sends to run-scoped endpoints; labml-app stores them
#: as they come (a name of 5 breaks the run list). Any other run-scoped POST body must be a JSON object too.
BODY_FIELDS = {
    '/api/v1/run/{run_uuid}': {'name': str, 'comment': str, 'note': str, 'favourite_configs': list,
                               'selected_configs': list},
    '/api/v1/metrics/{run_uuid}': {'get_all': bool},
    '/api/v1/compare/metrics/{run_uuid}': {'get_all': bool},
}


class BadRequest(Exception):
    """A malformed request: answered 400 with this short reason."""


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_track_request(query, body) -> list:
    """The packets of a run update (``POST /api/v1/{token}/track``), checked; raises :class:`BadRequest`.

    labml's client sends ``run_uuid``, ``rank``, ``world_size``, ``main_rank``, ``labml_version`` and a JSON
    object or list of them; ``track`` maps indicator names to ``{"step": [...], "value": [...]}``."""
    run_uuid = query.get('run_uuid', '')
    if not RUN_UUID.match(run_uuid) or len(run_uuid) < 10:
        raise BadRequest('run_uuid must be 10-80 letters, digits, "_" or "-"')
    for k in ('rank', 'world_size', 'main_rank'):
        v = query.get(k, '0')
        if not v.isdigit() or int(v) > 100_000:
            raise BadRequest(f'{k} must be a small non-negative integer')
    if not VERSION.match(query.get('labml_version', '')):
        raise BadRequest('labml_version must be a version number such as 0.5.3')
    packets = body if isinstance(body, list) else [body]
    if not packets or not all(isinstance(d, dict) for d in packets):
        raise BadRequest('the body must be a JSON object or a non-empty list of objects')
    for d in packets:
        track = d.get('track', {})
        if not isinstance(track, dict):
            raise BadRequest('"track" must be an object of indicator: {step: [...], value: [...]}')
        for name, series in track.items():
            if not isinstance(series, dict) or not isinstance(series.get('step'), list) \
                    or not isinstance(series.get('value'), list) or len(series['step']) != len(series['value']):
                raise BadRequest(f'"track"."{name[:80]}" must be {{"step": [...], "value": [...]}} of one length')
            if not all(_number(x) for x in series['step']) or not all(_number(x) for x in series['value']):
                raise BadRequest(f'"track"."{name[:80]}": steps and values must be numbers')
        for k in ('status', 'configs'):
            if k in d and not isinstance(d[k], dict):
                raise BadRequest(f'"{k}" must be an object')
        for k in TRACK_KEYS_STR:
            if k in d and d[k] is not None and not isinstance(d[k], str):
                raise BadRequest(f'"{k}" must be a string')
        if 'time' in d and not _number(d['time']):
            raise BadRequest('"time" must be a number')
    return packets


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


#: The most of a refused body read and dropped before the 413 (a larger one is cut: its client may see a reset)
DISCARD_LIMIT = 64 * 1024 * 1024


async def _discard_body(receive, budget: int = DISCARD_LIMIT) -> None:
    """Reads and drops the rest of a request body, up to `budget` bytes. Answering while the client is still
    sending makes the server close a connection with unread data, which the client sees as a connection reset
    instead of the 413 (found as an intermittent failure of the malformed-requests test)."""
    while budget > 0:
        message = await receive()
        if message['type'] == 'http.disconnect':
            return
        budget -= len(message.get('body', b''))
        if not message.get('more_body', False):
            return


class RequestGuard:
    """ASGI middleware in front of the whole app (see the module doc)."""

    def __init__(self, app, *, token: Optional[str], max_body: int, run_exists: Callable[[str], bool],
                 run_routes: Callable[[], list], stats: RequestStats):
        self.app, self.token, self.max_body = app, token, max_body
        self.run_exists, self.run_routes, self.stats = run_exists, run_routes, stats

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        method, path = scope['method'], scope['path']
        try:
            await self._handle(scope, receive, send, method, path)
        finally:
            self.stats.record(_request_kind(method, path), time.perf_counter() - started)

    @staticmethod
    async def _answer(send, status: int, content, headers=()):
        body = json.dumps(content).encode()
        await send({'type': 'http.response.start', 'status': status,
                    'headers': [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode()),
                                *headers]})
        await send({'type': 'http.response.body', 'body': body})

    def _authorised(self, scope, path: str):
        """(allowed, cookie to set) under ``--token``."""
        if self.token is None or path == '/api/dashboard/health':
            return True, None
        m = re.match(r'^/api/v1/([^/]+)/track$', path)
        if m:
            return hmac.compare_digest(m.group(1).encode(), self.token.encode()), None
        query = parse_qs(scope.get('query_string', b'').decode('latin-1'))
        given = (query.get('token') or [''])[0]
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return True, f'{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict'
        for name, value in scope['headers']:
            if name == b'cookie':
                for part in value.decode('latin-1').split(';'):
                    k, _, v = part.strip().partition('=')
                    if k == TOKEN_COOKIE and hmac.compare_digest(v.encode(), self.token.encode()):
                        return True, None
        return False, None

    async def _handle(self, scope, receive, send, method, path):
        allowed, cookie = self._authorised(scope, path)
        if not allowed:
            return await self._answer(send, 401, {
                'error': 'this dashboard was started with --token: runs send it in their dashboard URL '
                         '(dashboard=http://HOST:PORT/?token=TOKEN, or DASHBOARD_TOKEN), browsers open /?token=TOKEN'})
        headers = dict(scope['headers'])
        length = headers.get(b'content-length')
        if length is not None:
            if not length.isdigit():
                return await self._answer(send, 400, {'error': 'bad Content-Length'})
            if int(length) > self.max_body:
                await _discard_body(receive)
                return await self._answer(send, 413, {'error': f'request body over {self.max_body:,} bytes'})
        body, more = b'', method in ('POST', 'PUT', 'PATCH', 'DELETE')
        while more:
            message = await receive()
            if message['type'] == 'http.disconnect':
                return
            body += message.get('body', b'')
            more = message.get('more_body', False)
            if len(body) > self.max_body:
                if more:
                    await _discard_body(receive)
                return await self._answer(send, 413, {'error': f'request body over {self.max_body:,} bytes'})
        route, run_uuid = self._run_of(scope)
        if run_uuid is not None and not self.run_exists(run_uuid):
            return await self._answer(send, 404, {'error': f'unknown run {run_uuid[:80]!r}'})
        if route is not None and body:
            problem = _body_problem(route, body)
            if problem:
                return await self._answer(send, 400, {'error': problem})

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
            await self.app(scope, replay, send_wrapper)
        except Exception as e:  # noqa: BLE001 - every failure gets a JSON answer the page can show
            if started:
                raise
            status, reason = self._classify(e, body)
            if status >= 500:
                _log.exception('request failed: %s %s', method, path)
            else:
                _log.warning('%s %s: %d %s', method, path, status, reason)
            await self._answer(send, status, {'error': reason})

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

    def _run_of(self, scope):
        """``(route path, run uuid)`` of a run-scoped endpoint (``.../{run_uuid}...``), or ``(None, None)``."""
        from starlette.routing import Match
        for route in self.run_routes():
            match, child = route.matches(scope)
            if match == Match.FULL:
                return route.path, child.get('path_params', {}).get('run_uuid')
        return None, None


def _body_problem(route: str, body: bytes) -> Optional[str]:
    """What is wrong with the JSON body of a run-scoped request, or None."""
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


MEDIA_TYPES = {'.js': 'application/javascript', '.css': 'text/css', '.woff2': 'font/woff2',
               '.woff': 'font/woff', '.map': 'application/json', '.json': 'application/json',
               '.webmanifest': 'application/manifest+json', '.svg': 'image/svg+xml',
               '.png': 'image/png', '.ico': 'image/x-icon', '.html': 'text/html'}


def set_labml_app_env(host: str, port: int) -> None:
    """``labml_app.settings`` reads these at import; set them before importing labml_app."""
    os.environ['LABML_APP_SERVER_IP'] = host
    os.environ['LABML_APP_SERVER_PORT'] = str(port)


def labml_app_static_dir() -> Path:
    """labml-app's compiled front end (index.html, js/bundle.min.js, css, images)."""
    import labml_app
    path = Path(labml_app.__file__).resolve().parent / 'static'
    if not (path / 'index.html').is_file():
        raise RuntimeError(f'labml-app front end not found at {path}')
    return path


def offline_index_html(static_dir: Path) -> str:
    """labml-app's index.html with its CDN assets pointing at our vendored copies.

    Raises if a CDN reference is missing or another external asset appears, which
    means labml-app changed its page and ``CDN_ASSETS`` needs updating.
    """
    html = (static_dir / 'index.html').read_text(encoding='utf-8')
    for cdn_url, local_url in CDN_ASSETS.items():
        if cdn_url not in html:
            raise RuntimeError(f'labml-app index.html no longer references {cdn_url}; '
                               f'update CDN_ASSETS in {__file__}')
        html = html.replace(cdn_url, local_url)
    # The page's integrity="sha384-..." attribute on bootstrap stays: the vendored
    # file is byte-identical to the CDN copy, so the browser still verifies it.
    if 'https://' in html or 'http://' in html:
        raise RuntimeError('labml-app index.html references an external asset not vendored here')
    return html


def _safe_file(root: Path, rel: str):
    """``root/rel`` if it is a file inside ``root``, else None (no path traversal)."""
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    if path.is_file() and path.is_relative_to(root):
        return path
    return None


def create_app(store: str, *, token: Optional[str] = None, max_body: int = MAX_BODY_BYTES):
    """Build the FastAPI app. Storage must already be initialised (see :mod:`.storage`).

    ``store`` describes the storage for ``/api/dashboard/health``; with ``token``, runs and browsers must send
    it (see :class:`RequestGuard`); request bodies over ``max_body`` bytes are refused (413).
    """
    from fastapi import FastAPI, Request
    from fastapi.logger import logger as fastapi_logger
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from labml_app import handlers
    from labml_app.db import project, user
    from labml_app.logger import logger as app_logger
    import logging

    from . import charts

    fastapi_logger.setLevel(logging.ERROR)
    # labml-app's Series.to_data() takes np.mean of a new, empty series on every
    # first update of an indicator: harmless "Mean of empty slice" noise.
    warnings.filterwarnings('ignore', category=RuntimeWarning, module=r'numpy\.')
    # labml-app logs one INFO line per request ("PERF time ..."); keep warnings only.
    app_logger.setLevel(logging.WARNING)

    static_dir = labml_app_static_dir().resolve()
    index_html = offline_index_html(static_dir)
    app = FastAPI(title='labml dashboard', docs_url=None, redoc_url=None, openapi_url=None)
    started = time.time()

    local_token = []

    def local_project_token() -> str:
        """labml_token of the local user's project (the project the run list shows)."""
        if not local_token:  # stable for the life of the store; creating the user saves it
            local_token.append(user.get_or_create_user(identifier='local', is_local_user=True)
                               .default_project.labml_token)
        return local_token[0]

    stats = RequestStats()
    active: Dict[str, float] = {}  # runs reporting now -> time of their last update

    @app.get('/api/dashboard/health')
    async def health(request: Request):
        given = request.query_params.get('token', '')
        return {'app': 'labml-app', 'labml_app_version': metadata.version('labml-app'),
                'store': store, 'uptime_s': round(time.time() - started, 1),
                'token_required': token is not None,
                'token_ok': token is None or hmac.compare_digest(given.encode(), token.encode()),
                'max_body_bytes': max_body, 'requests': stats.summary()}

    @app.post('/api/v1/{labml_token}/track')
    async def track(request: Request, labml_token: str):
        # Read the body first: labml-app's _update_run awaits it half-way through its
        # read-modify-save of the run; with the body cached that await cannot yield,
        # so each update is applied atomically on the event loop.
        handling_started = time.perf_counter()
        body = await request.json()
        q = request.query_params
        check_track_request(q, body)
        token = q.get('labml_token', '')
        if not project.get_project(labml_token=token):
            # No (valid) project token: labml-app would file the run in its "float"
            # project and list it only after a manual Claim. Claiming means "put it
            # in the local user's project", so do that right away.
            token = local_project_token()
        run_uuid = q.get('run_uuid', '')
        rank, world_size = int(q.get('rank', 0)), int(q.get('world_size', 0))
        stored_uuid = f'{run_uuid}_{rank}' if world_size > 1 and rank > 0 else run_uuid
        names_before = charts.series_names(stored_uuid) if len(run_uuid) >= 10 else []
        res = await handlers._update_run(request, token, q.get('labml_version', ''), run_uuid,
                                         rank, world_size, int(q.get('main_rank', 0)))
        if not res.get('errors') and len(run_uuid) >= 10:
            try:
                charts.sync_run_charts(stored_uuid, names_before)
            except Exception:  # noqa: BLE001 - the update is stored; an error here must not
                # fail it (the client would resend the same values)
                app_logger.exception('could not update the default charts of run %s', stored_uuid)
        is_final = any('status' in d for d in (body if isinstance(body, list) else [body]))
        stats.record('track_handling', time.perf_counter() - handling_started)  # without the throttle below
        now = time.monotonic()
        if is_final:
            active.pop(stored_uuid, None)
        else:
            active[stored_uuid] = now
            for uuid in [u for u, t in active.items() if now - t > 30]:  # gone without a final update
                del active[uuid]
            delay = throttle_s(len(active))
            res['throttle_s'] = delay  # the client allows for it when it waits for its last updates at exit
            await asyncio.sleep(delay)
        return res

    handlers.add_handlers(app)

    @app.get('/vendor/{file_path:path}')
    async def vendor(file_path: str):
        path = _safe_file(VENDOR_DIR, file_path)
        if path is None:
            return Response(status_code=404)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix),
                            headers={'Cache-Control': 'public, max-age=86400'})

    @app.get('/')
    async def index():
        return HTMLResponse(index_html)

    @app.get('/{file_path:path}')
    async def front_end(file_path: str):
        if file_path.startswith('api/'):
            return JSONResponse({'error': 'unknown API endpoint'}, status_code=404)
        path = _safe_file(static_dir, file_path)
        if path is None or path.name == 'index.html':
            # the page routes itself (/runs, /run/<uuid>, ...): answer with the page
            return HTMLResponse(index_html)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix))

    from labml_app.db.run import RunIndex
    run_routes = [r for r in app.router.routes if '{run_uuid}' in getattr(r, 'path', '')]

    def run_exists(run_uuid: str) -> bool:
        return bool(RunIndex.get(run_uuid) or RunIndex.get(run_uuid.split('_')[0]))

    app.add_middleware(RequestGuard, token=token, max_body=max_body, run_exists=run_exists,
                       run_routes=lambda: run_routes, stats=stats)
    return app
