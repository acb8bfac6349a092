"""The dashboard's own pages, beside labml-app's: a run table and each run's uncertainty view.

* ``/view/runs``: every run of the run list with its uuid prefix, preset and key settings (``compare``'s label),
  status, epoch / epochs and latest validation accuracy (``GET /api/dashboard/runs``);
* ``/view/run/{run_uuid}``: for each distribution of the run's histograms (:mod:`.histograms`), a band chart over
  epochs (median, 25-75 % and 10-90 % bands, right and wrong predictions overlaid) and the histogram of the
  selected epoch; it polls while the run trains. ``?compare=UUID`` overlays a second run's bands;
* ``/view/static/``: their HTML, CSS and scripts (``static/view/``), drawn with the vendored d3;
* ``links.js``, added to labml-app's page, links its run list and run pages to these.

Reads only: every route here is a GET, which the request guard runs in the store's read-only mode.
"""
from pathlib import Path
from typing import Any, Dict, List

VIEW_DIR = Path(__file__).resolve().parent / 'static' / 'view'
LINKS_SCRIPT = '<script src="/view/static/links.js"></script>'


def run_rows(project) -> List[Dict[str, Any]]:
    """The run table: one row per run of the project's default folder, newest first."""
    from . import histograms
    rows = []
    for r in project.get_runs('default'):
        status = r.status.load()
        status_data = status.get_data() if status is not None else {}
        model = histograms.load(r.run_uuid)
        info = model.run if model is not None else {}
        last = histograms.epochs_after(model)[-1:] if model is not None else []
        metrics = last[0].get('metrics', {}) if last else {'accuracy.valid': last_value(r.run_uuid, 'accuracy.valid')}
        rows.append({
            'run_uuid': r.run_uuid, 'name': r.name, 'comment': r.comment, 'start_time': r.start_time,
            'status': status_data.get('run_status', {}).get('status', ''),
            'last_updated_time': status_data.get('last_updated_time'),
            'preset': info.get('preset'), 'label': info.get('label'), 'settings': info.get('settings', {}),
            'overrides': info.get('overrides', {}),
            'epoch': last[0]['epoch'] if last else None,
            'epochs': last[0].get('epochs') if last else info.get('epochs'),
            'accuracy_valid': metrics.get('accuracy.valid'), 'loss_valid': metrics.get('loss.valid'),
            'has_histograms': bool(last),
        })
    rows.sort(key=lambda row: row['start_time'] or 0, reverse=True)
    return rows


def last_value(run_uuid: str, series: str):
    """The last value of one of labml's series of a run (for runs without histograms), or None."""
    from labml_app.analyses.experiments.metrics import MetricsIndex
    key = MetricsIndex.get(run_uuid)
    model = key.load() if key is not None else None
    values = model.tracking.get(series, {}).get('value', []) if model is not None else []
    return float(values[-1]) if len(values) else None


def add_routes(app, local_project_token) -> None:
    """Registers the pages and the run table API (before labml-app's catch-all routes)."""
    from fastapi.responses import FileResponse, HTMLResponse, Response
    from labml_app.db import project

    from .server import MEDIA_TYPES, _safe_file

    root = VIEW_DIR.resolve()

    def page(name: str):
        return HTMLResponse((root / name).read_text(encoding='utf-8'), headers={'Cache-Control': 'no-cache'})

    @app.get('/api/dashboard/runs')
    async def runs():
        return {'runs': run_rows(project.get_project(labml_token=local_project_token()))}

    @app.get('/view/runs')
    async def runs_page():
        return page('runs.html')

    @app.get('/view/run/{run_uuid}')
    async def run_page(run_uuid: str):
        return page('run.html')

    @app.get('/view/static/{file_path:path}')
    async def static(file_path: str):
        path = _safe_file(root, file_path)
        if path is None:
            return Response(status_code=404)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix), headers={'Cache-Control': 'no-cache'})
