"""The dashboard web app: labml-app's own API and page, on our storage, offline.

``labml_app.flask_app`` cannot be imported on a machine without MongoDB (it
connects at import time), so :func:`create_app` assembles the same FastAPI app
from labml-app's public pieces instead:

* storage: :mod:`.storage` (embedded file store, or labml-app's MongoDB);
* API: ``labml_app.handlers.add_handlers`` - every labml-app endpoint, unchanged, except three registered
  first (FastAPI dispatches to the first matching route):
  - the run-update endpoint ``POST /api/v1/{token}/track`` (:mod:`.track`);
  - ``GET /api/v1/computer/{uuid}`` (labml-app's raises on every call: its login decorator passes an
    argument the handler does not take);
  - ``POST /api/v1/custom_metrics/{run_uuid}/create``, refused (409) once the run has
    :data:`.charts.MAX_CARDS_PER_RUN` cards;
* page: labml-app's compiled front end (``labml_app/static``), with the three
  CDN references in its ``index.html`` rewritten to copies served from
  ``/vendor/`` (see ``static/VERSIONS.md``), so the page works without internet, and the colours of its
  chart lines spread over the lines drawn (:data:`BUNDLE_PATCHES`);
* the runs' uncertainty histograms (:mod:`.histograms`) and the pages that draw them, with a run table
  (:mod:`.views`); labml-app's page gets a script linking to them;
* ``GET /api/dashboard/health``: a cheap probe for clients (see :mod:`.client`), with request statistics
  (and the store's location) for those who may read the dashboard;
* in front of everything :class:`.security.SiteGuard` (web pages are kept out), then
  :class:`.guard.RequestGuard` (``--token``, body limit, malformed requests, unknown records, reads that
  never write).
"""

import logging
import os
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, Optional

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
    from .views import LINKS_SCRIPT
    if '</body>' not in html:
        raise RuntimeError('labml-app index.html has no </body>; update offline_index_html')
    return html.replace('</body>', LINKS_SCRIPT + '</body>', 1)


# labml-app 0.5.14's charts colour a card's lines by each series' position among *all* the run's series
# (``uniqueItems`` counts every series, selected or not, and the colour scale is spread over that count), so the
# three quantile lines of a card - neighbours among a run's 30-60 series - come out in nearly the same colour.
# Counting only the selected series spreads the divergent scale over the lines actually drawn. The spark-line
# list colours only selected rows (unselected rows take the base colour), so it is patched the same way and
# its rows keep the colours of the chart's lines. Each original must occur exactly once.
BUNDLE_PATCHES: Dict[str, str] = {
    # LineChart
    'for(t of this.currentSeries.concat(this.baseSeries))this.uniqueItems.has(t.name)||this.uniqueItems.set(t.name,n++);':
        'for(t of this.currentSeries.filter((e,i)=>1==this.currentPlotIndex[i])'
        '.concat(this.baseSeries.filter((e,i)=>1==this.basePlotIndex[i])))'
        'this.uniqueItems.has(t.name)||this.uniqueItems.set(t.name,n++);',
    # SparkLines
    'for(t of this.currentSeries.concat(this.baseSeries))this.uniqueItems.has(t.name)||this.uniqueItems.set(t.name,s++);':
        'for(t of this.currentSeries.filter((e,i)=>1==this.currentPlotIdx[i])'
        '.concat(this.baseSeries.filter((e,i)=>1==this.basePlotIdx[i])))'
        'this.uniqueItems.has(t.name)||this.uniqueItems.set(t.name,s++);',
}
BUNDLE = 'js/bundle.min.js'


def patched_bundle(static_dir: Path) -> bytes:
    """labml-app's compiled front end with :data:`BUNDLE_PATCHES` applied.

    Raises if an original is not found exactly once, which means labml-app changed its bundle and the patches
    need updating.
    """
    js = (static_dir / BUNDLE).read_text(encoding='utf-8')
    for original, replacement in BUNDLE_PATCHES.items():
        if js.count(original) != 1:
            raise RuntimeError(f'labml-app {BUNDLE} has {js.count(original)} copies of a patched line, '
                               f'not 1; update BUNDLE_PATCHES in {__file__}')
        js = js.replace(original, replacement)
    return js.encode('utf-8')


def _safe_file(root: Path, rel: str):
    """``root/rel`` if it is a file inside ``root``, else None (no path traversal)."""
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError):
        return None
    if path.is_file() and path.is_relative_to(root):
        return path
    return None


def create_app(store: str, *, token: Optional[str] = None, max_body: int = 16 * 1024 * 1024,
               hosts: Optional[Iterable[str]] = None):
    """Build the FastAPI app. Storage must already be initialised (see :mod:`.storage`).

    ``store`` describes the storage for ``/api/dashboard/health``; with ``token``, runs and browsers must send
    it (see :class:`.guard.RequestGuard`); request bodies over ``max_body`` bytes are refused (413); ``hosts``
    are the ``Host`` header values accepted (:func:`.security.allowed_hosts`; None: any).
    """
    from fastapi import FastAPI, Request
    from fastapi.logger import logger as fastapi_logger
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from labml_app import handlers
    from labml_app.analyses.experiments import custom_metrics
    from labml_app.db import computer, session, user
    from labml_app.db.run import RunIndex
    from labml_app.logger import logger as app_logger

    from . import charts, guard, histograms, security, track, views

    fastapi_logger.setLevel(logging.ERROR)
    # labml-app's Series.to_data() takes np.mean of a new, empty series on every
    # first update of an indicator: harmless "Mean of empty slice" noise.
    warnings.filterwarnings('ignore', category=RuntimeWarning, module=r'numpy\.')
    # labml-app logs one INFO line per request ("PERF time ..."); keep warnings only.
    app_logger.setLevel(logging.WARNING)

    static_dir = labml_app_static_dir().resolve()
    index_html = offline_index_html(static_dir)
    bundle = patched_bundle(static_dir)
    app = FastAPI(title='labml dashboard', docs_url=None, redoc_url=None, openapi_url=None)
    started = time.time()

    local_token = []

    def local_project_token() -> str:
        """labml_token of the local user's project (the project the run list shows)."""
        if not local_token:  # stable for the life of the store; creating the user saves it
            local_token.append(user.get_or_create_user(identifier='local', is_local_user=True)
                               .default_project.labml_token)
        return local_token[0]

    local_project_token()  # creates the local user now: the reads that need it cannot write
    stats = guard.RequestStats()

    @app.get('/api/dashboard/health')
    async def health(request: Request):
        in_query, in_cookie = guard.token_given(request.scope, token) if token is not None else (True, True)
        answer = {'app': 'labml-app', 'labml_app_version': metadata.version('labml-app'),
                  'token_required': token is not None, 'token_ok': in_query}
        if in_query or in_cookie:  # where the data lives, and the statistics, only for who may read them
            answer.update({'store': store, 'uptime_s': round(time.time() - started, 1),
                           'max_body_bytes': max_body, 'requests': stats.summary()})
        return answer

    track.add_track_route(app, stats=stats, local_project_token=local_project_token)
    histograms.add_routes(app)
    views.add_routes(app, local_project_token)

    @app.get('/api/v1/computer/{computer_uuid}')
    async def get_computer(computer_uuid: str):
        c = computer.ComputerIndex.get(computer_uuid)  # the guard answered 404 for an unknown one
        return c.load().get_data()

    @app.post('/api/v1/custom_metrics/{run_uuid}/create')
    async def create_custom_metric(request: Request, run_uuid: str):
        if charts.card_count(run_uuid) >= charts.MAX_CARDS_PER_RUN:
            return JSONResponse({'error': f'a run has at most {charts.MAX_CARDS_PER_RUN} chart cards; '
                                          f'delete one first'}, status_code=409)
        return await custom_metrics.create_custom_metric(request, run_uuid)

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
        if path == static_dir / BUNDLE:
            return Response(bundle, media_type=MEDIA_TYPES['.js'])
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix))

    def exists(kind: str, uuid: str) -> bool:
        if kind == 'session':
            return session.SessionIndex.get(uuid) is not None
        if kind == 'computer':
            return computer.ComputerIndex.get(uuid) is not None
        # a run, or rank 0 of a distributed run as labml-app names it: <uuid>_0 (its other ranks are
        # stored under their own <uuid>_<rank>)
        base, sep, rank = uuid.rpartition('_')
        return RunIndex.get(uuid) is not None or (bool(sep) and rank == '0' and RunIndex.get(base) is not None)

    routes = list(app.router.routes)
    app.add_middleware(guard.RequestGuard, token=token, max_body=max_body, exists=exists,
                       routes=lambda: routes, stats=stats)
    app.add_middleware(security.SiteGuard, hosts=hosts)
    return app
