"""The runs' uncertainty histograms in the dashboard's store, and their API.

Each epoch's line of a run's ``histograms.jsonl`` (format: ``configs.histograms``) is posted by the run's client
(:mod:`.sender`) or by ``python -m experiments.dashboard import`` to ``POST /api/dashboard/histograms/{run_uuid}``
and kept in a labml_db model beside labml-app's series (:class:`RunHistograms`, one per run, found through
:class:`RunHistogramsIndex`), so it lives in the same store, file or MongoDB, and obeys its read-only mode.

* :func:`check_record` checks a line field by field (:class:`.guard.BadRequest`, 400);
* bounds per run, like its series: :data:`MAX_DISTRIBUTIONS` distributions, :data:`MAX_BINS` bins each,
  :data:`MAX_EPOCHS` epochs (later epochs are not stored: one warning in the log and in the answer);
* a line for an epoch already stored replaces it (a resumed run repeats the epoch it was interrupted in);
* ``GET /api/dashboard/histograms/{run_uuid}`` answers ``{"run": {...}, "epochs": [line, ...]}`` by epoch, with
  ``?after=N`` only the epochs after N (the page polls with it).

The guard in front answers 404 for a run the dashboard does not have, and checks the token.
"""
import logging
import math
import re
from typing import Any, Dict, List, Optional

from labml_db import Index, Model

from .guard import BadRequest

_log = logging.getLogger('experiments.dashboard')

MAX_DISTRIBUTIONS = 64
MAX_BINS = 400
MAX_EPOCHS = 2000
MAX_RUN_FIELDS = 64
NAME = re.compile(r'^[A-Za-z0-9_.\-]{1,120}$')
SCALES = ('unit', 'log', 'linear')
GROUPS = ('right', 'wrong', 'all')
N_QUANTILES = 5


class RunHistograms(Model['RunHistograms']):
    run_uuid: str
    run: Dict[str, Any]
    epochs: Dict[int, Dict[str, Any]]

    @classmethod
    def defaults(cls):
        return dict(run_uuid='', run={}, epochs={})


class RunHistogramsIndex(Index['RunHistograms']):
    pass


MODELS = [RunHistograms]
INDEXES = [RunHistogramsIndex]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2 ** 53


def _plain(x, depth: int = 0) -> bool:
    """A small JSON value: numbers, strings, booleans, null, short lists and objects of them."""
    if x is None or isinstance(x, (bool, str)) and len(str(x)) <= 1000 or _number(x):
        return True
    if depth < 2 and isinstance(x, list) and len(x) <= 64:
        return all(_plain(v, depth + 1) for v in x)
    if depth < 2 and isinstance(x, dict) and len(x) <= 256:
        return all(isinstance(k, str) and len(k) <= 200 and _plain(v, depth + 1) for k, v in x.items())
    return False


def _check_distribution(name: str, d) -> None:
    where = f'"distributions"."{name[:80]}"'
    if not isinstance(d, dict) or d.get('scale') not in SCALES:
        raise BadRequest(f'{where} must be an object with "scale" one of {", ".join(SCALES)}')
    edges = d.get('edges')
    if not isinstance(edges, list) or not 2 <= len(edges) <= MAX_BINS + 1 or not all(_number(e) for e in edges) \
            or any(b <= a for a, b in zip(edges, edges[1:])):
        raise BadRequest(f'{where}."edges" must be 2 to {MAX_BINS + 1} finite, increasing numbers')
    groups = d.get('groups')
    if not isinstance(groups, dict) or not groups or set(groups) - set(GROUPS):
        raise BadRequest(f'{where}."groups" must be an object with some of {", ".join(GROUPS)}')
    for group, g in groups.items():
        gw = f'{where}."groups"."{group}"'
        if not isinstance(g, dict) or not _count(g.get('n')):
            raise BadRequest(f'{gw} must be an object with "n" (a count)')
        counts = g.get('counts')
        if not isinstance(counts, list) or len(counts) != len(edges) - 1 or not all(_count(c) for c in counts):
            raise BadRequest(f'{gw}."counts" must be {len(edges) - 1} counts, one per bin')
        if sum(counts) + g.get('nonfinite', 0) != g['n'] or not _count(g.get('nonfinite', 0)):
            raise BadRequest(f'{gw}: the counts and "nonfinite" must add up to "n" ({g["n"]})')
        q = g.get('quantiles')
        if not (q is None or isinstance(q, list) and len(q) == N_QUANTILES and all(_number(v) for v in q)):
            raise BadRequest(f'{gw}."quantiles" must be null or {N_QUANTILES} finite numbers')


def check_record(body) -> Dict[str, Any]:
    """One epoch's line (``configs.histograms``), checked; raises :class:`.guard.BadRequest`."""
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object: one line of histograms.jsonl')
    if body.get('format') != 1:
        raise BadRequest('"format" must be 1')
    for key in ('epoch', 'epochs'):
        if not _count(body.get(key)) or not 0 < body[key] <= 10 ** 6:
            raise BadRequest(f'"{key}" must be a positive integer')
    if not _count(body.get('n_valid', 0)):
        raise BadRequest('"n_valid" must be a count')
    metrics = body.get('metrics', {})
    if not isinstance(metrics, dict) or len(metrics) > 256 or \
            not all(isinstance(k, str) and len(k) <= 200 and _number(v) for k, v in metrics.items()):
        raise BadRequest('"metrics" must be an object of at most 256 finite numbers')
    run = body.get('run', {})
    if not isinstance(run, dict) or len(run) > MAX_RUN_FIELDS or not _plain(run):
        raise BadRequest(f'"run" must be an object of at most {MAX_RUN_FIELDS} small JSON values')
    distributions = body.get('distributions')
    if not isinstance(distributions, dict) or len(distributions) > MAX_DISTRIBUTIONS:
        raise BadRequest(f'"distributions" must be an object of at most {MAX_DISTRIBUTIONS} histograms')
    for name, d in distributions.items():
        if not NAME.match(name):
            raise BadRequest(f'distribution names are 1-120 letters, digits, "_", "." or "-" ("{name[:80]}")')
        _check_distribution(name, d)
    return body


def load(run_uuid: str) -> Optional[RunHistograms]:
    key = RunHistogramsIndex.get(run_uuid)
    return key.load() if key is not None else None


def store(run_uuid: str, record: Dict[str, Any]) -> Optional[str]:
    """Keeps a checked line; returns a warning when the run has :data:`MAX_EPOCHS` epochs already."""
    model = load(run_uuid)
    created = model is None
    if created:
        model = RunHistograms(run_uuid=run_uuid)
    epoch = record['epoch']
    if epoch not in model.epochs and len(model.epochs) >= MAX_EPOCHS:
        message = (f'run {run_uuid} has histograms of {MAX_EPOCHS} epochs: epoch {epoch} is not stored; its run '
                   f'folder has it')
        _log.warning(message)
        return message
    model.epochs[epoch] = {k: v for k, v in record.items() if k != 'run'}
    if record.get('run'):
        model.run = record['run']
    model.save()
    if created:
        RunHistogramsIndex.set(run_uuid, model.key)
    return None


def epochs_after(model: Optional[RunHistograms], after: int = 0) -> List[Dict[str, Any]]:
    if model is None:
        return []
    return [model.epochs[e] for e in sorted(model.epochs) if e > after]


def add_routes(app) -> None:
    """Registers the histogram API (before labml-app's catch-all routes)."""
    from fastapi import Request

    @app.post('/api/dashboard/histograms/{run_uuid}')
    async def post_histograms(request: Request, run_uuid: str):
        record = check_record(await request.json())
        warning = store(run_uuid, record)
        return {'stored': warning is None, **({'warning': warning} if warning else {})}

    @app.get('/api/dashboard/histograms/{run_uuid}')
    async def get_histograms(run_uuid: str, after: int = 0):
        model = load(run_uuid)
        name, status = run_status(run_uuid)
        return {'run_uuid': run_uuid, 'name': name, 'status': status, 'run': model.run if model is not None else {},
                'epochs': epochs_after(model, after)}


def run_status(run_uuid: str):
    """``(name, status)`` of a run in labml-app's records (``'in progress'``, ``'completed'``, ...)."""
    from labml_app.db import run
    r = run.get(run_uuid)
    status = r.status.load() if r is not None else None
    if status is None:
        return (r.name if r is not None else ''), ''
    return r.name, status.get_data().get('run_status', {}).get('status', '')
