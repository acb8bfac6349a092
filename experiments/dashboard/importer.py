"""``python -m experiments.dashboard import RUN...``: show runs trained without the dashboard.

    python -m experiments.dashboard import RUN [RUN ...] [--url http://127.0.0.1:5005]

Each RUN (a uuid under this project's ``logs/``, or a run folder) is sent to a running dashboard through its API,
as the run would have sent it: labml's update (name, description, configurations, every series of ``log.jsonl``,
the last status of ``run_log.jsonl``) to the run-update endpoint, then each line of ``histograms.jsonl`` to the
histogram endpoint. The dashboard's checks and bounds apply as to any run; importing again changes nothing
(points already stored are dropped, an epoch's histograms replaced). The run's start time on the dashboard is
the time of the import. Exit status: 0 when every run was imported, 2 when the dashboard does not answer, 1 when
a run could not be read or was refused (one line each).
"""
import argparse
import json
import sys
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List

from .client import TOKEN_ENV, _url_token, health, split_url
from .describe import run_comment, tidy_configs
from .sender import error_reason, histograms_url, post_json

LABML_VERSION = '0.5.3'
#: Most points sent in one update (the dashboard refuses bodies over 16 MiB)
POINTS_PER_UPDATE = 200_000


class ImportError_(RuntimeError):
    """A run cannot be imported; the message says why (one line)."""


def _read_json_lines(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding='utf-8').splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(value, dict):
            out.append(value)
    return out


def series(run_dir: Path) -> Dict[str, Dict[str, list]]:
    """labml's series of a run as the dashboard keeps them: per step the mean of the values logged (the first
    such point of a step logged twice), under the name labml gives the mean of a histogram (``u.correct.mean``)."""
    from configs.checkpoint import load_run_yaml
    kinds = {}
    if (run_dir / 'indicators.yaml').is_file():
        indicators = (load_run_yaml(run_dir / 'indicators.yaml') or {}).get('indicators', {}) or {}
        kinds = {k: v.get('class_name') for k, v in indicators.items() if isinstance(v, dict)}
    out: Dict[str, Dict[str, list]] = {}
    for line in _read_json_lines(run_dir / 'log.jsonl'):
        for name, points in (line.get('track') or {}).items():
            key = f'{name}.mean' if kinds.get(name) == 'Histogram' else name
            s = out.setdefault(key, {'step': [], 'value': []})
            for step, values in points:
                values = values if isinstance(values, list) else [values]
                finite = [v for v in values if isinstance(v, (int, float)) and v == v and abs(v) != float('inf')]
                if finite and (not s['step'] or step > s['step'][-1]):
                    s['step'].append(step)
                    s['value'].append(sum(finite) / len(finite))
    return out


def labml_updates(run_dir: Path, describe: Dict[str, Any]) -> List[List[dict]]:
    """The run-update bodies of a run folder: the first holds the run's description and configurations, the
    last its status; series are split so that no body holds more than :data:`POINTS_PER_UPDATE` points."""
    from configs.checkpoint import load_run_yaml
    info = load_run_yaml(run_dir / 'run.yaml') if (run_dir / 'run.yaml').is_file() else {}
    configs = load_run_yaml(run_dir / 'configs.yaml') if (run_dir / 'configs.yaml').is_file() else {}
    first: Dict[str, Any] = {'name': str(info.get('name') or run_dir.parent.name),
                             'comment': run_comment(describe) if describe.get('label') else str(info.get('comment') or ''),
                             'tags': [str(t) for t in info.get('tags') or []],
                             'python_file': str(info.get('python_file') or ''), 'commit': str(info.get('commit') or ''),
                             'start_step': info.get('start_step') if isinstance(info.get('start_step'), int) else None}
    if isinstance(configs, dict):
        configs = {k: v for k, v in configs.items() if isinstance(v, dict) and 'computed' in v}
        for v in configs.values():
            v['name'] = str(v.get('name', ''))
        set_keys = describe.get('set_keys')
        first['configs'] = json.loads(json.dumps(tidy_configs(configs, set_keys), default=str))
        if set_keys is not None:
            first['selected_configs'] = [k for k in set_keys if k in configs]
    updates, packet, points = [[first]], {'track': {}}, 0
    for name, s in series(run_dir).items():
        for i in range(0, len(s['step']), POINTS_PER_UPDATE):
            if points >= POINTS_PER_UPDATE:
                updates[-1].append(packet)
                updates.append([])
                packet, points = {'track': {}}, 0
            chunk = {'step': s['step'][i:i + POINTS_PER_UPDATE], 'value': s['value'][i:i + POINTS_PER_UPDATE]}
            packet['track'][name] = chunk
            points += len(chunk['step'])
    updates[-1].append(packet)
    statuses = _read_json_lines(run_dir / 'run_log.jsonl')
    status = statuses[-1] if statuses else {'status': 'unknown', 'details': None}
    updates[-1].append({'status': {'status': status.get('status', 'unknown'), 'details': status.get('details'),
                                   'time': status.get('time', 0.0), 'rank': 0}})
    return updates


def import_run(root: str, token: str, run_dir: Path) -> int:
    """Sends one run folder to the dashboard at ``root``; returns the number of epochs of histograms sent.
    Raises :class:`ImportError_`."""
    from configs.histograms import read_epochs
    epochs = read_epochs(run_dir)
    describe = next((r['run'] for r in reversed(epochs) if isinstance(r.get('run'), dict) and r['run']), {})
    if not describe:
        describe = _describe_from_values(run_dir)
    query = urllib.parse.urlencode({'run_uuid': run_dir.name, 'rank': 0, 'world_size': 0, 'main_rank': 0,
                                    'labml_version': LABML_VERSION})
    track_url = f'{root.rstrip("/")}/api/v1/{urllib.parse.quote(token or "default", safe="")}/track?{query}'
    try:
        for body in labml_updates(run_dir, describe):
            post_json(track_url, body, timeout=60)
        for record in epochs:
            post_json(histograms_url(root, run_dir.name, token), {**record, 'run': record.get('run') or describe},
                      timeout=60)
    except urllib.error.HTTPError as e:
        raise ImportError_(f'the dashboard refused run {run_dir.name} (HTTP {e.code}{error_reason(e)})') from None
    except (urllib.error.URLError, OSError) as e:
        raise ImportError_(f'run {run_dir.name}: {getattr(e, "reason", e)}') from None
    return len(epochs)


def _describe_from_values(run_dir: Path) -> Dict[str, Any]:
    """A description of a run without histograms: its key settings and label from its saved values."""
    from configs.checkpoint import load_values
    from experiments.compare.rows import key_settings, row_label
    try:
        values = load_values(run_dir)
    except Exception:  # noqa: BLE001 - no experiment.json: the run keeps labml's own description
        return {}
    settings = key_settings(run_dir.parent.name, values)
    return {'experiment': run_dir.parent.name, 'uuid': run_dir.name, 'settings': settings,
            'label': row_label(run_dir.parent.name, run_dir.name, settings), 'epochs': values.get('epochs')}


def parse_args(argv=None) -> argparse.Namespace:
    """The options of `python -m experiments.dashboard import`; `app_url` and `root` from `--url`."""
    p = argparse.ArgumentParser(prog='python -m experiments.dashboard import',
                                description='Send runs trained without the dashboard to it: series, status, '
                                            'configurations and uncertainty histograms.')
    p.add_argument('runs', nargs='+', metavar='RUN', help='a run uuid (under this project\'s logs/) or run folder')
    p.add_argument('--url', default='http://127.0.0.1:5005',
                   help=f'the dashboard (default http://127.0.0.1:5005; ?token=TOKEN or {TOKEN_ENV} for one '
                        f'started with --token)')
    args = p.parse_args(argv)
    try:
        args.root, args.app_url = split_url(args.url)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    root, app_url = args.root, args.app_url
    token = _url_token(app_url)
    answer = health(root, token, timeout=5)
    if answer is None:
        print(f'dashboard: error: nothing answers at {root} (start it with python -m experiments.dashboard)',
              file=sys.stderr)
        return 2
    from labml import lab
    from configs.checkpoint import CheckpointError, find_run
    from configs.runner import use_project_folder
    if use_project_folder() is None:
        lab.get_path()
    failed = 0
    for run in args.runs:
        try:
            run_dir = find_run(run, Path(lab.get_experiments_path()))
            n = import_run(root, token, run_dir)
        except (CheckpointError, ImportError_) as e:
            print(f'dashboard: error: {e}', file=sys.stderr)
            failed += 1
            continue
        print(f'imported {run_dir.name} ({n} epoch(s) of histograms): {root}view/run/{run_dir.name}')
    return 1 if failed else 0
