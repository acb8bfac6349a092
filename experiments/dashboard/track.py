"""The run-update endpoint ``POST /api/v1/{token}/track``, registered before labml-app's own.

It hands each update to labml-app's ``_update_run``, and around it:

* checks the update field by field (:func:`check_track_request`): labml-app stores what it is sent, and a
  ``status`` or ``repo_remotes`` of the wrong shape would make the run's page answer 500 for good; an update that
  fails anyway leaves no run behind when it was the run's first (:func:`forget_run`);
* files runs sent without a project token into the local user's project, which is what labml-app's "Claim"
  button does, so runs are listed at once;
* bounds the series of a run (:data:`MAX_SERIES_PER_RUN`): new series beyond it are dropped, with one
  warning in the log and one in the run's output;
* drops points at or before the last step stored for their series (:func:`drop_stored_points`): labml-app
  merges a point sent twice (an update the dashboard stored but, killed, never answered, which the client
  sends again) with its copy and its neighbours into points at steps that were never logged;
* replaces labml-app's fixed 3 s delay after each update with :func:`throttle_s`, none for a run's final
  update;
* shortens object reprs in the run's configurations (:func:`.describe.tidy_configs`);
* adds the default chart cards of :mod:`.charts`.
"""

import asyncio
import logging
import math
import re
import time
from typing import Callable, Dict, List, Set

from .describe import tidy_configs
from .guard import BadRequest

_log = logging.getLogger('experiments.dashboard')

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

MAX_SERIES_PER_RUN = 1000
"""Series (indicators) stored per run; a training run here tracks about 40. Every series costs an entry in
each chart card of the run: without the bound, one update with 20,000 new series writes gigabytes."""

MAX_NAME_LENGTH = 200
"""Longest series name accepted (400 above)."""

RUN_UUID = re.compile(r'^[A-Za-z0-9_\-]{1,80}$')
VERSION = re.compile(r'^\d+(\.\d+){0,3}$')
TRACK_KEYS_STR = ('name', 'comment', 'python_file', 'commit', 'commit_message', 'stdout', 'stderr', 'logger',
                  'computer', 'notes', 'load_run')
RUN_STATUSES = ('in progress', 'completed', 'crashed', 'interrupted', 'unknown', 'no response')
"""labml-app's run states (``labml_app.enums.RunEnums``); another one breaks its run list."""


def throttle_s(active_runs: int) -> float:
    """Delay before answering a live update while `active_runs` runs report."""
    return TRACK_THROTTLE_S * max(1.0, active_runs / RUNS_PER_THROTTLE)


def _number(x) -> bool:
    """A JSON number numpy stores as a float (integers beyond 64 bits would make labml-app's arrays objects)."""
    return isinstance(x, float) or (isinstance(x, int) and not isinstance(x, bool) and abs(x) < 2 ** 63)


def _step(x) -> bool:
    return _number(x) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _strings(x) -> bool:
    return isinstance(x, list) and all(isinstance(s, str) for s in x)


def _objects(x) -> bool:
    return isinstance(x, dict) and all(isinstance(v, dict) for v in x.values())


#: optional fields of an update packet that labml 0.5.3 sends, and what labml-app needs them to be
PACKET_FIELDS = {
    'repo_remotes': ('a list of strings', lambda x: x is None or x == '' or _strings(x)),
    'tags': ('a list of strings', _strings),
    'favorite_configs': ('a list of strings', _strings),
    'selected_configs': ('a list of strings', _strings),
    'pid': ('an integer', _int),
    'main_rank': ('an integer', _int),
    'start_step': ('an integer or null', lambda x: x is None or _int(x)),
    'time': ('a number', _number),
    'indicators': ('an object of objects', _objects),
    'wildcard_indicators': ('an object of objects', _objects),
    'is_dirty': ('true or false', lambda x: isinstance(x, bool)),
}


def _check_status(s) -> None:
    if not isinstance(s, dict):
        raise BadRequest('"status" must be an object')
    if s.get('status') not in RUN_STATUSES:
        raise BadRequest(f'"status"."status" must be one of {", ".join(RUN_STATUSES)}')
    if s.get('details') is not None and not isinstance(s['details'], str):
        raise BadRequest('"status"."details" must be a string or null')
    if 'time' in s and not _number(s['time']):
        raise BadRequest('"status"."time" must be a number')
    if 'rank' in s and not _int(s['rank']):
        raise BadRequest('"status"."rank" must be an integer')


def _check_configs(configs) -> None:
    if not isinstance(configs, dict):
        raise BadRequest('"configs" must be an object')
    for key, c in configs.items():
        # labml-app reads c['computed'] and c['name'] of each
        if not isinstance(c, dict) or 'computed' not in c or not isinstance(c.get('name'), str):
            raise BadRequest(f'"configs"."{key[:80]}" must be an object with "name" (a string) and "computed"')


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
            if not name or len(name) > MAX_NAME_LENGTH:
                raise BadRequest(f'series names must be 1-{MAX_NAME_LENGTH} characters ("{name[:80]}...")')
            if not isinstance(series, dict) or not isinstance(series.get('step'), list) \
                    or not isinstance(series.get('value'), list) or len(series['step']) != len(series['value']):
                raise BadRequest(f'"track"."{name[:80]}" must be {{"step": [...], "value": [...]}} of one length')
            if not all(_step(x) for x in series['step']) or not all(_number(x) for x in series['value']):
                raise BadRequest(f'"track"."{name[:80]}": steps must be finite numbers, values numbers '
                                 f'(NaN and infinities are kept as the value before them)')
        if 'status' in d:
            _check_status(d['status'])
        if 'configs' in d:
            _check_configs(d['configs'])
        for k in TRACK_KEYS_STR:
            if k in d and d[k] is not None and not isinstance(d[k], str):
                raise BadRequest(f'"{k}" must be a string')
        for k, (what, ok) in PACKET_FIELDS.items():
            if k in d and not ok(d[k]):
                raise BadRequest(f'"{k}" must be {what}')
    return packets


def stored_last_steps(run_uuid: str) -> Dict[str, float]:
    """{series name: the last step stored for it} of a run; empty before its first metrics."""
    from labml_app.analyses.experiments.metrics import MetricsIndex
    key = MetricsIndex.get(run_uuid)
    model = key.load() if key is not None else None
    if model is None:
        return {}
    return {name: (float(s['last_step'][-1]) if len(s['last_step']) else float('-inf'))
            for name, s in model.tracking.items()}


def limit_series(packets: list, stored: Set[str], limit: int = MAX_SERIES_PER_RUN) -> List[str]:
    """Removes from `packets` the new series (names not in `stored`) beyond `limit` series in all, keeping
    the first in name order; returns the names removed."""
    new = sorted({name for d in packets for name in d.get('track', {})} - stored)
    dropped = new[max(0, limit - len(stored)):]
    if dropped:
        gone = set(dropped)
        for d in packets:
            if 'track' in d:
                d['track'] = {k: v for k, v in d['track'].items() if k not in gone}
    return dropped


def drop_stored_points(packets: list, last_steps: Dict[str, float]) -> int:
    """Removes from `packets` each point whose step is not after the last step stored (or kept before it in
    this update) for its series; returns how many were removed."""
    last = dict(last_steps)
    removed = 0
    for d in packets:
        for name, series in d.get('track', {}).items():
            keep_steps, keep_values = [], []
            for step, value in zip(series['step'], series['value']):
                if step > last.get(name, float('-inf')):
                    keep_steps.append(step)
                    keep_values.append(value)
                    last[name] = step
            removed += len(series['step']) - len(keep_steps)
            series['step'], series['value'] = keep_steps, keep_values
        if 'track' in d:
            d['track'] = {k: v for k, v in d['track'].items() if v['step']}
    return removed


def forget_run(run_uuid: str, labml_token: str) -> None:
    """Removes a run and its records (the undoing of an update that created the run, then failed)."""
    from labml_app.db import project, run
    p = project.get_project(labml_token=labml_token)
    if p is not None and run_uuid in p.runs:
        p.runs.pop(run_uuid)
        for folder_key in p.folders.values():
            f = folder_key.load()
            if f is not None and run_uuid in f.run_uuids:
                f.remove_run(run_uuid)
        p.save()
    run.delete(run_uuid)


def add_track_route(app, *, stats, local_project_token: Callable[[], str]) -> None:
    """Registers ``POST /api/v1/{labml_token}/track`` (call before labml-app's handlers are added)."""
    from fastapi import Request
    from labml_app import handlers
    from labml_app.db import project, run
    from . import charts

    active: Dict[str, float] = {}  # runs reporting now -> time of their last update
    warned: Set[str] = set()  # runs told that series were dropped

    @app.post('/api/v1/{labml_token}/track')
    async def track(request: Request, labml_token: str):
        # Read the body first: labml-app's _update_run awaits it half-way through its
        # read-modify-save of the run; with the body cached that await cannot yield,
        # so each update is applied atomically on the event loop. The checks below edit
        # the cached body in place, which is what labml-app then reads.
        handling_started = time.perf_counter()
        body = await request.json()
        q = request.query_params
        packets = check_track_request(q, body)
        for d in packets:  # object reprs shortened (the run's own client did it already)
            if 'configs' in d:
                d['configs'] = tidy_configs(d['configs'])
        token = q.get('labml_token', '')
        if not project.get_project(labml_token=token):
            # No (valid) project token: labml-app would file the run in its "float"
            # project and list it only after a manual Claim. Claiming means "put it
            # in the local user's project", so do that right away.
            token = local_project_token()
        run_uuid = q.get('run_uuid', '')
        rank, world_size = int(q.get('rank', 0)), int(q.get('world_size', 0))
        stored_uuid = f'{run_uuid}_{rank}' if world_size > 1 and rank > 0 else run_uuid
        last_steps = stored_last_steps(stored_uuid)
        names_before = sorted(last_steps)
        warnings = []
        dropped = limit_series(packets, set(names_before))
        if dropped and stored_uuid not in warned:
            warned.add(stored_uuid)
            message = (f'run {stored_uuid} has more than {MAX_SERIES_PER_RUN} series: {len(dropped)} new ones '
                       f'are not stored (first: {dropped[0][:80]}); its local logs have them all')
            _log.warning(message)
            warnings.append({'warning': 'too_many_series', 'message': message})
        removed = drop_stored_points(packets, last_steps)
        if removed:
            _log.warning('run %s: %d points already stored were sent again (an update re-sent after a restart, or '
                         'steps repeated after a resume); dropped', stored_uuid, removed)
        existed = run.get(stored_uuid) is not None
        try:
            res = await handlers._update_run(request, token, q.get('labml_version', ''), run_uuid,
                                             rank, world_size, int(q.get('main_rank', 0)))
        except Exception:
            if not existed:
                forget_run(stored_uuid, token)
            raise
        if not any('error' in e for e in res.get('errors', [])):
            try:
                charts.sync_run_charts(stored_uuid, names_before)
            except Exception:  # noqa: BLE001 - the update is stored; an error here must not
                # fail it (the client would resend the same values)
                _log.exception('could not update the default charts of run %s', stored_uuid)
        res['errors'] = [*res.get('errors', []), *warnings]
        is_final = any('status' in d for d in packets)
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
