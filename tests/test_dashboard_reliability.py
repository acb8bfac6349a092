"""The dashboard under load and faults, with real processes on 127.0.0.1 only.

* load (`@pytest.mark.load`; `-m 'not load'` skips it locally): 16 concurrent smoke runs report to one
  dashboard; afterwards each run's series there has exactly the points of its local `log.jsonl`; peak RSS and
  request latencies are printed (`-s` shows them) and written to `$DASHBOARD_LOAD_REPORT` when set;
* kill -9 of the dashboard while a run reports, restarted on the same port and data folder;
* malformed requests to the endpoints the tracker writes to and the page reads from: 4xx with a short reason,
  no traceback in the log, other runs unaffected; a body-size limit;
* `--token`, and the warning for a dashboard listening beyond this machine (with its token).
"""
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.test_dashboard import CHECKED_SERIES, FAKE_RUN, Dashboard as _BaseDashboard, _local_steps, _project, \
    _readline, _run_dir, _run_status

ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
ENV.pop('DASHBOARD_TOKEN', None)
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Dashboard(_BaseDashboard):
    """`python -m experiments.dashboard` with extra arguments, on a given (or free) loopback port; its log kept."""

    def __init__(self, data_dir: Path, *args: str, port: int = 0):
        super().__init__(data_dir)
        self.args, self.port, self.log = list(args), port, []

    def start(self) -> 'Dashboard':
        self.proc = subprocess.Popen([sys.executable, '-m', 'experiments.dashboard', '--port', str(self.port),
                                      '--data', str(self.data_dir), *self.args],
                                     cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = _readline(self.proc, timeout=60)
        m = re.search(r'(http://127\.0\.0\.1:(\d+))', line)
        assert m, f'no URL in the dashboard banner: {line!r}'
        self.url, self.port = m.group(1), int(m.group(2))
        self.log = [line]
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        return self

    def _read_log(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self) -> int:
        rc = super().stop() if self.proc.poll() is None else self.proc.returncode
        self._reader.join(5)
        return rc

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 30, json_type: bool = True):
        """(status, parsed JSON or raw text) of one request; HTTP errors are answers too. With `json_type=False`
        exactly `headers` are sent (no Content-Type unless given)."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        sent = {'Content-Type': 'application/json', **(headers or {})} if json_type else dict(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with _HTTP.open(req, timeout=timeout) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


def _fake_run(logs: Path, url: str, *args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(FAKE_RUN), '--logs', str(logs), '--dashboard', url, *args],
                            cwd=ROOT, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _fake_run_dir(logs: Path, stdout: str) -> Path:
    return logs / 'evidence_mnist_fake' / re.search(r'RUN_UUID=(\w+)', stdout).group(1)


def _assert_series_match(d: Dashboard, uuid: str, run_dir: Path, names=CHECKED_SERIES):
    server, local = d.series_steps(uuid), _local_steps(run_dir)
    for name in names:
        assert name in server, f'{uuid}: {name} missing on the dashboard'
        assert server[name] == local[name], f'{uuid} {name}: dashboard {server[name]} != local {local[name]}'


def _series_values(d: Dashboard, uuid: str):
    """{series name: its values} on the dashboard (float32)."""
    res = d.post(f'/api/v1/metrics/{uuid}', {'get_all': True})
    return {s['name']: np.frombuffer(base64.b64decode(s['value']), dtype=np.float32).tolist() for s in res['series']}


def _local_values(run_dir: Path):
    """{indicator: values in step order} from labml's local log (log.jsonl; each value is a list: the mean is
    what labml sends to the dashboard)."""
    points = {}
    for line in (run_dir / 'log.jsonl').read_text().splitlines():
        for name, pts in json.loads(line).get('track', {}).items():
            for step, values in pts:
                points.setdefault(name, {}).setdefault(step, float(np.mean(values)))
    return {name: [v for _, v in sorted(p.items())] for name, p in points.items()}


def _percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# ---------------------------------------------------------------------------------------------------- load
@pytest.mark.load
def test_16_concurrent_smoke_runs_report_every_point(tmp_path, synthetic_data_dir):
    n_runs = 16
    d = Dashboard(tmp_path / 'store').start()
    rss_peak_kb, read_latencies = 0, []
    try:
        projects = [_project(tmp_path / f'p{i}') for i in range(n_runs)]
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, '-m', 'experiments.evidence_mnist', 'preset=smoke',
                                   f'data_dir={synthetic_data_dir}', f'dashboard={d.url}', f'seed={i}'],
                                  cwd=p, env={**ENV, 'OMP_NUM_THREADS': '1'}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for i, p in enumerate(projects)]
        outputs = [None] * n_runs
        readers = [threading.Thread(target=lambda i=i: outputs.__setitem__(i, procs[i].communicate(timeout=600)))
                   for i in range(n_runs)]
        for t in readers:
            t.start()
        while any(p.poll() is None for p in procs):  # what the page does meanwhile: the run list and a run's charts
            t0 = time.perf_counter()
            status, runs = d.request('GET', '/api/v1/runs/null?folder_name=default')
            read_latencies.append(time.perf_counter() - t0)
            assert status == 200
            if runs['runs']:
                t0 = time.perf_counter()
                status, _ = d.request('POST', f"/api/v1/metrics/{runs['runs'][0]['run_uuid']}", {'get_all': True})
                read_latencies.append(time.perf_counter() - t0)
                assert status == 200
            rss_peak_kb = max(rss_peak_kb, _rss_kb(d.proc.pid))
            time.sleep(1.0)  # a page that refreshes about once a second
        for t in readers:
            t.join()
        wall = time.monotonic() - started
        status_file = Path(f'/proc/{d.proc.pid}/status').read_text()
        rss_peak_kb = max(rss_peak_kb, int(re.search(r'VmHWM:\s+(\d+)', status_file).group(1)))
        stats = d.request('GET', '/api/dashboard/health')[1]['requests']
        report = {
            'runs': n_runs, 'wall_s': round(wall, 1), 'dashboard_peak_rss_mb': round(rss_peak_kb / 1024, 1),
            'page_reads_measured_by_the_test': {'n': len(read_latencies),
                                                'p50_ms': round(1000 * _percentile(read_latencies, 0.5), 1),
                                                'p95_ms': round(1000 * _percentile(read_latencies, 0.95), 1)},
            'server_side': stats,
        }
        print('\ndashboard load:', json.dumps(report))
        if os.environ.get('DASHBOARD_LOAD_REPORT'):
            Path(os.environ['DASHBOARD_LOAD_REPORT']).write_text(json.dumps(report, indent=2))
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, err[-3000:]
            assert 'dashboard' not in err, err[-2000:]  # no warning: every update was accepted
        run_dirs = [_run_dir(p, out) for p, (out, _) in zip(projects, outputs)]
        listed = d.listed_runs()
        assert {r.name for r in run_dirs} <= set(listed), f'{len(listed)} listed of {n_runs}'
        for run_dir in run_dirs:
            assert listed[run_dir.name]['run_status']['status'] == 'completed'
            _assert_series_match(d, run_dir.name, run_dir)
    finally:
        d.stop()
    assert stats['track']['count'] >= n_runs * 2


def _rss_kb(pid: int) -> int:
    try:
        return int(re.search(r'VmRSS:\s+(\d+)', Path(f'/proc/{pid}/status').read_text()).group(1))
    except (OSError, AttributeError):
        return 0


# ---------------------------------------------------------------------------------------------------- kill -9
def test_dashboard_killed_and_restarted_while_a_run_reports(tmp_path):
    """kill -9 mid-run, restart on the same port and folder: the run finishes, the store opens as it is, what
    was sent before the kill is served, and the run resumes reporting (its client retries the unsent updates)."""
    store = tmp_path / 'store'
    d = Dashboard(store).start()
    logs = tmp_path / 'logs'
    run = _fake_run(logs, d.url, '--epochs', '12', '--steps', '10', '--sleep', '0.12')
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = d.listed_runs()
            if runs and len(d.series_steps(next(iter(runs))).get('loss.train', [])) >= 10:
                break
            time.sleep(0.1)
        uuid = next(iter(d.listed_runs()))
        before_kill = d.series_steps(uuid)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        assert run.poll() is None, 'the run ended before the kill; make it longer'
        time.sleep(1.0)
        d = Dashboard(store, port=d.port).start()  # same port: the run's client keeps its URL
        assert not any('Traceback' in l or 'error' in l.lower() for l in d.log), d.log
        after_restart = d.series_steps(uuid)  # everything written before the kill is still served
        for name, steps in before_kill.items():
            # (labml-app merges a series' newest points as more arrive; its saved copy can be a merge step
            # behind or ahead of the one it served, for the last two or three points)
            assert len(after_restart[name]) >= len(steps) - 2, name
            assert after_restart[name][:len(steps) - 3] == steps[:-3], name
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        run_dir = _fake_run_dir(logs, out)
        assert _run_status(run_dir) == 'completed'
        assert len(_local_steps(run_dir)['loss.train']) == 120  # local logs complete
        assert 'reconnected' in err, err  # the client noticed, and carried on
        time.sleep(0.5)
        assert d.listed_runs()[uuid]['run_status']['status'] == 'completed'
        # nothing lost across the kill, nothing doubled: the update the killed dashboard had stored but not
        # answered is sent again, and its points, already stored, are dropped (labml-app merged them with their
        # copies into points at steps never logged: 15.54 for 16). Every series is the run's local log.
        server, local = d.series_steps(uuid), _local_steps(run_dir)
        server_values, local_values = _series_values(d, uuid), _local_values(run_dir)
        for name in CHECKED_SERIES:
            assert server[name] == local[name], (name, server[name], local[name])
            assert np.allclose(server_values[name], local_values[name], rtol=1e-6), name
        resent = [line for line in d.log if 'already stored' in line]
        print(f'\nkill -9: {len(CHECKED_SERIES)} series equal to the local log, all {len(local["loss.train"])} steps '
              f'of loss.train; {resent or "no update was re-sent"}')
    finally:
        if run.poll() is None:
            run.kill()
        d.stop()
    assert not any('Traceback' in l for l in d.log), ''.join(d.log)


# ---------------------------------------------------------------------------------------------------- bad requests
def test_malformed_requests_get_4xx_with_a_reason_and_no_traceback(tmp_path):
    d = Dashboard(tmp_path / 'store', '--max-body-mb', '1').start()
    try:
        logs = tmp_path / 'logs'
        run = _fake_run(logs, d.url, '--epochs', '2', '--steps', '5')
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        run_dir = _fake_run_dir(logs, out)
        uuid = run_dir.name
        before = d.series_steps(uuid)
        track = '/api/v1/default/track?run_uuid=0123456789abcdef0123456789abcdef&labml_version=0.5.3'
        cases = [  # method, path, body, expected status
            ('POST', f'/api/v1/metrics/{uuid}', b'garbage', 400),
            ('POST', f'/api/v1/metrics/{uuid}', b'', 400),
            ('POST', f'/api/v1/metrics/{uuid}', [1, 2], 400),
            ('POST', f'/api/v1/metrics/{uuid}', {}, 400),
            ('POST', f'/api/v1/metrics/{uuid}', {'get_all': 'yes'}, 400),
            ('POST', f'/api/v1/metrics/{uuid}', b'{"get_all": tru', 400),
            ('POST', '/api/v1/metrics/0123456789abcdef', {'get_all': True}, 404),
            ('GET', '/api/v1/run/0123456789abcdef', None, 404),
            ('GET', '/api/v1/custom_metrics/nope_nope_nope', None, 404),
            ('POST', f'/api/v1/run/{uuid}', {'name': 5}, 400),
            ('POST', f'/api/v1/run/{uuid}', {'favourite_configs': [1]}, 400),
            ('POST', f'/api/v1/custom_metrics/{uuid}/create', [], 400),
            ('POST', track, b'garbage', 400),
            ('POST', track, b'\xff\xfe', 400),
            ('POST', track, [], 400),
            ('POST', track, [1], 400),
            ('POST', track, {'track': 5}, 400),
            ('POST', track, {'track': {'loss': {'step': [1, 2], 'value': [1]}}}, 400),
            ('POST', track, {'track': {'loss': {'step': ['a'], 'value': [1]}}}, 400),
            ('POST', track, {'status': 'done'}, 400),
            ('POST', track, {'name': ['x']}, 400),
            ('POST', track.replace('labml_version=0.5.3', 'labml_version='), {}, 400),
            ('POST', track.replace('run_uuid=', 'rank=x&run_uuid='), {}, 400),
            ('POST', '/api/v1/default/track?run_uuid=short&labml_version=0.5.3', {}, 400),
            ('POST', f'/api/v1/metrics/{uuid}', b'[' * 100000 + b']' * 100000, 400),  # deep nesting
            ('POST', f'/api/v1/metrics/{uuid}', b' ' * (1024 * 1024 + 1), 413),  # over --max-body-mb 1
            ('POST', track, json.dumps({'track': {'x': {'step': [0] * 200000, 'value': [0] * 200000}}}).encode(), 413),
        ]
        for method, path, body, expected in cases:
            status, answer = d.request(method, path, body)
            assert status == expected, (method, path, str(body)[:80], status, answer)
            assert isinstance(answer, dict) and answer.get('error') and '\n' not in answer['error'], answer
            assert len(answer['error']) < 400
        # a body streamed without Content-Length is cut at the limit too
        status = _chunked_post(d, f'/api/v1/metrics/{uuid}', 2 * 1024 * 1024)
        assert status == 413
        # the good run is untouched and still served; the dashboard is healthy
        assert d.series_steps(uuid) == before
        assert d.request('GET', '/api/dashboard/health')[0] == 200
        assert not (tmp_path / 'store' / 'models' / 'Run' / 'Run:0123456789abcdef.pkl').exists()
        # and a new run still reports normally
        run = _fake_run(logs, d.url, '--epochs', '1', '--steps', '3')
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0 and 'warning' not in err, err
        assert _fake_run_dir(logs, out).name in d.listed_runs()
    finally:
        d.stop()
    log = ''.join(d.log)
    assert 'Traceback' not in log, log
    assert ' 500 ' not in log


def _chunked_post(d: Dashboard, path: str, size: int) -> int:
    host, port = d.url.split('//')[1].split(':')
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f'POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n'
                  f'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n'.encode())
        chunk = b'x' * 65536
        try:
            for _ in range(size // len(chunk)):
                s.sendall(f'{len(chunk):x}\r\n'.encode() + chunk + b'\r\n')
            s.sendall(b'0\r\n\r\n')
        except OSError:
            pass  # the server may answer and close before the whole body is sent
        answer = b''
        while b'\r\n' not in answer:
            part = s.recv(4096)
            if not part:
                break
            answer += part
    return int(answer.split(b' ')[1])


# ---------------------------------------------------------------------------------------------------- token
def test_token_admits_only_runs_and_browsers_that_know_it(tmp_path):
    d = Dashboard(tmp_path / 'store', '--token', 's3cret-T0ken').start()
    logs = tmp_path / 'logs'
    try:
        # the banner says how to get in
        time.sleep(0.2)
        assert 'token required' in ''.join(d.log), d.log
        # a run without it: one warning, local logs only, not listed
        r = _fake_run(logs, d.url, '--epochs', '1', '--steps', '3')
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0, err
        warnings = [l for l in err.splitlines() if 'dashboard' in l]
        assert len(warnings) == 1 and 'needs its token' in warnings[0], err
        no_token = _fake_run_dir(logs, out)
        assert len(_local_steps(no_token)['loss.train']) == 3
        # a wrong token: refused the same way
        r = _fake_run(logs, d.url + '/?token=wrong', '--epochs', '1', '--steps', '3')
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0 and 'refused the token' in err, err
        # with it, in the URL or in the environment: listed
        r1 = _fake_run(logs, d.url + '/?token=s3cret-T0ken', '--epochs', '1', '--steps', '3')
        r2 = _fake_run(logs, d.url, '--epochs', '1', '--steps', '3', env={'DASHBOARD_TOKEN': 's3cret-T0ken'})
        (o1, e1), (o2, e2) = r1.communicate(timeout=60), r2.communicate(timeout=60)
        assert r1.returncode == 0 and r2.returncode == 0 and 'warning' not in e1 + e2, e1 + e2
        # the page and the API: 401 without the token; ?token= sets a cookie that then suffices
        for path in ('/', '/runs', '/api/v1/runs/null?folder_name=default'):
            assert d.request('GET', path)[0] == 401, path
        track = '/api/v1/default/track?run_uuid=0123456789abcdef0123456789abcdef&labml_version=0.5.3'
        assert d.request('POST', track, {'time': 1.0})[0] == 401  # a forged run update
        status, _ = d.request('GET', '/?token=wrong')
        assert status == 401
        with _HTTP.open(d.url + '/?token=s3cret-T0ken', timeout=10) as resp:
            cookie = resp.headers['Set-Cookie'].split(';')[0]
            assert resp.status == 200 and 'HttpOnly' in resp.headers['Set-Cookie']
        status, runs = d.request('GET', '/api/v1/runs/null?folder_name=default', headers={'Cookie': cookie})
        assert status == 200
        listed = {x['run_uuid'] for x in runs['runs']}
        assert listed == {_fake_run_dir(logs, o1).name, _fake_run_dir(logs, o2).name}
        assert d.request('GET', '/api/dashboard/health')[1]['token_required'] is True
    finally:
        d.stop()


@pytest.mark.parametrize('host, needle', [
    ('0.0.0.0', 'plain HTTP (no TLS)'),
    ('192.168.1.7', 'plain HTTP (no TLS)'),
    ('127.0.0.1', None),
    ('localhost', None),
    ('::1', None),
])
def test_listening_beyond_this_machine_warns(host, needle):
    """The warning `--host 0.0.0.0 --token` prints (checked without binding anything but loopback; without
    --token such a host is refused: tests/test_dashboard_security.py)."""
    from experiments.dashboard.__main__ import host_warning
    warning = host_warning(host)
    if needle is None:
        assert warning == ''
    else:
        assert needle in warning and warning.count('\n') == 0


def test_token_must_be_url_safe():
    r = subprocess.run([sys.executable, '-m', 'experiments.dashboard', '--token', 'a b&c', '--port', '0'],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and '--token may hold only' in r.stderr
