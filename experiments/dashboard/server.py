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
* ``GET /api/dashboard/health``: a cheap probe for clients (see :mod:`.client`).
"""

import asyncio
import os
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Dict

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
training loop from keeping the dashboard busy. Final updates are not delayed."""

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


def create_app(store: str):
    """Build the FastAPI app. Storage must already be initialised (see :mod:`.storage`).

    ``store`` describes the storage for ``/api/dashboard/health``.
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

    @app.middleware('http')
    async def errors_as_json(request: Request, call_next):
        # same contract as labml_app.flask_app: the front end shows 'error' from a JSON body
        try:
            response = await call_next(request)
        except Exception as e:  # noqa: BLE001 - report any handler failure to the page
            app_logger.exception('request failed: %s %s', request.method, request.url.path)
            return JSONResponse(status_code=500, content={'error': str(e)})
        # the front end reads the session token from this header (labml_app.flask_app does the same)
        response.headers['Access-Control-Expose-Headers'] = 'Authorization'
        return response

    local_token = []

    def local_project_token() -> str:
        """labml_token of the local user's project (the project the run list shows)."""
        if not local_token:  # stable for the life of the store; creating the user saves it
            local_token.append(user.get_or_create_user(identifier='local', is_local_user=True)
                               .default_project.labml_token)
        return local_token[0]

    @app.get('/api/dashboard/health')
    async def health():
        return {'app': 'labml-app', 'labml_app_version': metadata.version('labml-app'),
                'store': store, 'uptime_s': round(time.time() - started, 1)}

    @app.post('/api/v1/{labml_token}/track')
    async def track(request: Request, labml_token: str):
        # Read the body first: labml-app's _update_run awaits it half-way through its
        # read-modify-save of the run; with the body cached that await cannot yield,
        # so each update is applied atomically on the event loop.
        body = await request.json()
        q = request.query_params
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
        if not is_final:
            await asyncio.sleep(TRACK_THROTTLE_S)
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

    return app
