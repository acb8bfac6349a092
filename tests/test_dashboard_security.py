"""The dashboard against web pages, reads that could write, oversized and malformed updates.

Real `python -m experiments.dashboard` processes on free loopback ports, fed by labml's own tracker
(`tests/dashboard_fake_run.py`) and by raw requests shaped as a browser or an attacker would send them. Every
address is 127.0.0.1: a foreign `Host` or `Origin` is a header, never a connection.
"""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_dashboard import _readline
from tests.test_dashboard_reliability import ENV, Dashboard, _fake_run, _fake_run_dir

TRACK = '/api/v1/default/track?labml_version=0.5.3&run_uuid='
EVIL = 'http://evil.example'


def _request(d, method, path, body=None, headers=None, timeout=30):
    """(status, answer) with exactly these headers (no Content-Type unless given)."""
    return d.request(method, path, body, headers, timeout, json_type=False)


def _snapshot(folder: Path):
    """{file: (size, mtime_ns, bytes)} of everything in `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob('*')) if p.is_file()}


def _finished_run(d, logs: Path) -> str:
    run = _fake_run(logs, d.url, '--epochs', '2', '--steps', '5')
    out, err = run.communicate(timeout=90)
    assert run.returncode == 0 and 'warning' not in err, err
    return _fake_run_dir(logs, out).name


def _rss_peak_kb(pid: int) -> int:
    return int(re.search(r'VmHWM:\s+(\d+)', Path(f'/proc/{pid}/status').read_text()).group(1))


@pytest.fixture(scope='module')
def dashboard(tmp_path_factory):
    d = Dashboard(tmp_path_factory.mktemp('security-store')).start()
    yield d
    d.stop()


@pytest.fixture(scope='module')
def run_uuid(dashboard, tmp_path_factory):
    """A run reported by labml's own tracker: the legitimate client gets through every check."""
    return _finished_run(dashboard, tmp_path_factory.mktemp('logs'))


# ------------------------------------------------------------------------------------------- web pages
def test_cross_site_writes_are_refused(dashboard, run_uuid):
    d, port = dashboard, dashboard.port
    runs_before = d.listed_runs()
    forged = '0123456789abcdef0123456789abcdef'
    writes = [('POST', TRACK + forged, {'name': 'forged', 'time': 1.0}),
              ('POST', f'/api/v1/run/{run_uuid}', {'name': 'renamed by a web page'}),
              ('POST', '/api/v1/runs/archive', {'run_uuids': [run_uuid]}),
              ('PUT', '/api/v1/runs', {'run_uuids': [run_uuid]}),
              ('POST', f'/api/v1/custom_metrics/{run_uuid}/create', {'name': 'x'}),
              ('POST', f'/api/dashboard/histograms/{run_uuid}', {'format': 1})]
    for method, path, body in writes:
        # a "simple" cross-site request: text/plain needs no preflight; then the same with a rebound host name
        for headers, expected in [
            ({'Content-Type': 'text/plain', 'Origin': EVIL, 'Host': f'evil.example:{port}'}, 403),
            ({'Content-Type': 'text/plain', 'Origin': EVIL}, 403),
            ({'Content-Type': 'application/json', 'Origin': EVIL}, 403),
            ({'Content-Type': 'application/json', 'Origin': 'null'}, 403),
            ({'Content-Type': 'application/json', 'Origin': f'http://127.0.0.1:{port + 1}'}, 403),
            ({'Content-Type': 'application/json', 'Sec-Fetch-Site': 'cross-site'}, 403),
            ({'Content-Type': 'text/plain'}, 415),
            ({'Content-Type': 'application/x-www-form-urlencoded'}, 415),
            ({}, 415),
        ]:
            status, answer = _request(d, method, path, body, headers)
            assert status == expected, (method, path, headers, status, answer)
            assert isinstance(answer, dict) and answer['error'], answer
    assert d.listed_runs().keys() == runs_before.keys()  # nothing created, archived or deleted
    assert d.get(f'/api/v1/run/{run_uuid}')['name'] == 'evidence_mnist_fake'
    # the page itself (same origin, JSON) still writes
    status, _ = _request(d, 'POST', f'/api/v1/run/{run_uuid}', {'name': 'renamed on the page'},
                         {'Content-Type': 'application/json', 'Origin': f'http://127.0.0.1:{port}',
                          'Sec-Fetch-Site': 'same-origin'})
    assert status == 200 and d.get(f'/api/v1/run/{run_uuid}')['name'] == 'renamed on the page'
    d.post(f'/api/v1/run/{run_uuid}', {'name': 'evidence_mnist_fake'})


def test_reads_answer_only_to_the_dashboards_own_host_names(dashboard, run_uuid):
    d, port = dashboard, dashboard.port
    runs = '/api/v1/runs/null?folder_name=default'
    for host in (f'evil.example:{port}', f'127.0.0.1:{port + 1}', 'evil.example', f'localhost.evil.example:{port}'):
        for path in (runs, f'/api/v1/run/{run_uuid}', '/', '/api/dashboard/health'):
            status, answer = _request(d, 'GET', path, headers={'Host': host})
            assert status == 403, (host, path, status)
            assert run_uuid not in json.dumps(answer)
    for host in (f'127.0.0.1:{port}', f'localhost:{port}', f'LOCALHOST:{port}', f'[::1]:{port}'):
        status, answer = _request(d, 'GET', runs, headers={'Host': host})
        assert status == 200 and run_uuid in {r['run_uuid'] for r in answer['runs']}, host
    # a page on another site reading the API (its fetch carries Origin / Sec-Fetch-Site)
    assert _request(d, 'GET', runs, headers={'Origin': EVIL})[0] == 403
    assert _request(d, 'GET', runs, headers={'Sec-Fetch-Site': 'cross-site'})[0] == 403
    # a link from elsewhere may still open the page itself
    assert _request(d, 'GET', '/runs', headers={'Sec-Fetch-Site': 'cross-site', 'Sec-Fetch-Mode': 'navigate'})[0] == 200
    # no Host at all (HTTP/1.0)
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        s.sendall(b'GET /api/v1/runs/null HTTP/1.0\r\n\r\n')
        assert b' 403 ' in s.recv(4096).split(b'\r\n')[0]


# ------------------------------------------------------------------------------------------- reads
UNKNOWN = 'feedfacefeedfacefeedfacefeedface'
GET_ROUTES = [  # labml-app 0.5.14's GET routes that name a record
    'run/{}', 'run/status/{}', 'session/{}', 'session/status/{}', 'computer/{}', 'custom_metrics/{}',
    'metrics/preferences/{}', 'compare/preferences/{}', *[f'{kind}/{{}}' for kind in (
        'cpu', 'gpu', 'memory', 'network', 'disk', 'process', 'battery')],
    *[f'{kind}/preferences/{{}}' for kind in ('cpu', 'gpu', 'memory', 'network', 'disk', 'process', 'battery')],
    'process/zero_cpu/{}', 'process/{}/details/1234',
]


def test_reads_write_nothing_and_unknown_ids_are_404(dashboard, run_uuid):
    d = dashboard
    time.sleep(1.5)  # past the mtime granularity of the last write
    before = _snapshot(d.data_dir)
    for route in GET_ROUTES:
        for record in (UNKNOWN, 'anything', f'{run_uuid}_x', f'{run_uuid}_1'):
            status, answer = _request(d, 'GET', '/api/v1/' + route.format(record))
            assert status == 404, (route, record, status, answer)
    for path in (f'/api/dashboard/histograms/{UNKNOWN}', f'/view/run/{UNKNOWN}'):
        assert _request(d, 'GET', path)[0] == 404, path
    for path in (f'/api/v1/metrics/{UNKNOWN}', f'/api/v1/logs/stdout/{UNKNOWN}', f'/api/dashboard/histograms/{UNKNOWN}'):
        assert _request(d, 'POST', path, {'get_all': True}, {'Content-Type': 'application/json'})[0] == 404
    # what the page reads for a real run: the run list, the run, its status, cards, preferences, metrics, logs
    computer = d.listed_runs()[run_uuid]['computer_uuid']
    for path in ('/api/v1/runs/null?folder_name=default', f'/api/v1/run/{run_uuid}', f'/api/v1/run/{run_uuid}_0',
                 f'/api/v1/run/status/{run_uuid}', f'/api/v1/custom_metrics/{run_uuid}',
                 f'/api/v1/metrics/preferences/{run_uuid}', f'/api/v1/compare/preferences/{run_uuid}',
                 f'/api/v1/computer/{computer}', '/api/v1/sessions/null', '/runs', f'/run/{run_uuid}',
                 f'/api/dashboard/histograms/{run_uuid}', '/api/dashboard/runs', '/view/runs', f'/view/run/{run_uuid}'):
        assert _request(d, 'GET', path)[0] == 200, path
    for path, body in ((f'/api/v1/metrics/{run_uuid}', {'get_all': True}),
                       (f'/api/v1/logs/stdout/{run_uuid}', {'page': -1})):
        assert _request(d, 'POST', path, body, {'Content-Type': 'application/json'})[0] == 200, path
    assert _snapshot(d.data_dir) == before
    assert not any('Traceback' in line for line in d.log), ''.join(d.log)


def test_the_run_list_is_served_from_a_full_disk(tmp_path):
    """The store on a tmpfs that is then filled up: reads still answer (labml-app rewrites the user and project
    on every read: unless reads are read-only, the run list answers 500 on a full disk)."""
    store = tmp_path / 'store'
    store.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs-dashboard-test', str(store)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip()}); the no-writes test covers reads')
    try:
        os.chmod(store, 0o755)
        d = Dashboard(store).start()
        try:
            uuid = _finished_run(d, tmp_path / 'logs')
            with open(store / 'filler', 'wb') as f:
                try:
                    while True:
                        f.write(b'\0' * 65536)
                        f.flush()
                except OSError:
                    pass
            status, answer = _request(d, 'GET', '/api/v1/runs/null?folder_name=default')
            assert status == 200 and uuid in {x['run_uuid'] for x in answer['runs']}, answer
            assert _request(d, 'GET', f'/api/v1/run/{uuid}')[0] == 200
            assert _request(d, 'POST', f'/api/v1/metrics/{uuid}', {'get_all': True},
                            {'Content-Type': 'application/json'})[0] == 200
        finally:
            d.stop()
    finally:
        subprocess.run(['umount', '-l', str(store)], capture_output=True)


# ------------------------------------------------------------------------------------------- updates
def test_many_series_stay_within_bounds(dashboard):
    """20,000 series `s{i}.q{i%100}` in one 0.9 MB update: each would get a chart card holding an entry per
    series (2.1 GB on disk without the bounds). A run keeps 1,000 series and 32 cards at most."""
    from experiments.dashboard.charts import MAX_CARDS_PER_RUN
    from experiments.dashboard.track import MAX_SERIES_PER_RUN
    d = dashboard
    uuid = 'ab' * 16
    track = {f's{i}.q{i % 100}': {'step': [1], 'value': [0.5]} for i in range(20000)}
    size_before = sum(p.stat().st_size for p in d.data_dir.rglob('*') if p.is_file())
    rss_before = _rss_peak_kb(d.proc.pid)
    t = time.monotonic()
    status, answer = _request(d, 'POST', TRACK + uuid, {'name': 'wide', 'track': track, 'time': 1.0},
                              {'Content-Type': 'application/json; charset=utf-8'}, timeout=120)
    took = time.monotonic() - t
    assert status == 200, answer
    assert [e['warning'] for e in answer['errors']] == ['too_many_series'], answer
    grown_mb = (sum(p.stat().st_size for p in d.data_dir.rglob('*') if p.is_file()) - size_before) / 2 ** 20
    rss_grown_mb = (_rss_peak_kb(d.proc.pid) - rss_before) / 1024
    cards = d.get(f'/api/v1/custom_metrics/{uuid}')['metrics']
    series = d.series_steps(uuid)
    print(f'\n20,000-series update: {took:.1f} s, store +{grown_mb:.2f} MB, peak RSS +{rss_grown_mb:.0f} MB, '
          f'{len(series)} series, {len(cards)} cards, custom_metrics answer {len(json.dumps(cards)) / 1024:.0f} kB')
    assert len(series) == MAX_SERIES_PER_RUN and len(cards) == MAX_CARDS_PER_RUN
    assert all(len(c['preferences']['series_preferences']) == MAX_SERIES_PER_RUN for c in cards)
    assert grown_mb < 5 and rss_grown_mb < 200 and took < 30
    # the page's "+" beyond the bound: 409; another update with new series: the stored ones still update
    status, answer = _request(d, 'POST', f'/api/v1/custom_metrics/{uuid}/create', {'name': 'one more'},
                              {'Content-Type': 'application/json'})
    assert status == 409 and 'at most' in answer['error']
    kept = sorted(series)[0]
    status, answer = _request(d, 'POST', TRACK + uuid, {'track': {kept: {'step': [2], 'value': [0.1]},
                                                                  'new.one': {'step': [2], 'value': [0.1]}}},
                              {'Content-Type': 'application/json'})
    assert status == 200 and answer['errors'] == []  # told once per run
    series = d.series_steps(uuid)
    assert series[kept] == [1, 2] and 'new.one' not in series
    assert sum('more than 1000 series' in line for line in d.log) == 1


def test_refused_updates_leave_no_run_behind(dashboard, run_uuid):
    d = dashboard
    bad = [{'configs': {'a': 1}}, {'configs': {'a': {'name': 'a'}}}, {'status': {'status': 'odd'}},
           {'status': {'status': 'completed', 'details': 5}}, {'repo_remotes': 5}, {'repo_remotes': [5]},
           {'tags': 'x'}, {'pid': 'x'}, {'start_step': 'x'}, {'indicators': {'a': 1}},
           {'track': {'x': {'step': [2 ** 70], 'value': [1]}}}, {'track': {'x': {'step': [1], 'value': [2 ** 70]}}},
           {'track': {'x' * 201: {'step': [1], 'value': [1]}}}, [{'name': 'ok'}, {'status': 'completed'}]]
    runs = set(d.listed_runs())
    stored = len(list((d.data_dir / 'models' / 'Run').glob('Run:*')))
    for i, body in enumerate(bad):
        status, answer = _request(d, 'POST', TRACK + f'{i:032x}', body, {'Content-Type': 'application/json'})
        assert status == 400 and answer['error'], (body, status, answer)
    assert set(d.listed_runs()) == runs
    assert len(list((d.data_dir / 'models' / 'Run').glob('Run:*'))) == stored
    # an odd status or repo_remotes for a run that exists is refused too, and its page keeps working
    for body in ({'status': {'status': 5}}, {'repo_remotes': {'a': 1}}):
        assert _request(d, 'POST', TRACK + run_uuid, body, {'Content-Type': 'application/json'})[0] == 400
    assert _request(d, 'GET', f'/api/v1/run/{run_uuid}')[0] == 200
    assert _request(d, 'GET', f'/api/v1/run/status/{run_uuid}')[0] == 200
    assert d.listed_runs()[run_uuid]['run_status']['status'] == 'completed'


FAIL_HOOK = '''
import runpy, sys
import experiments.dashboard.server as server
real_env = server.set_labml_app_env
def set_env(host, port):
    real_env(host, port)
    from labml_app.db import run
    real_update = run.Run.update_run
    def update_run(self, data):
        real_update(self, data)
        if data.get('comment') == 'fail after the run is created':
            raise RuntimeError('injected failure')
    run.Run.update_run = update_run
server.set_labml_app_env = set_env
sys.argv = ['experiments.dashboard'] + sys.argv[1:]
runpy.run_module('experiments.dashboard', run_name='__main__')
'''


def test_an_update_failing_after_creating_its_run_leaves_no_run(tmp_path):
    """labml-app creates the run before it applies the update; when applying fails, the run is removed."""
    class HookedDashboard(Dashboard):
        def start(self):
            self.args = ['-c', FAIL_HOOK, '--port', '0', '--data', str(self.data_dir)]
            self.proc = subprocess.Popen([sys.executable, *self.args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
            line = _readline(self.proc, timeout=60)
            m = re.search(r'(http://127\.0\.0\.1:(\d+))', line)
            self.url, self.port, self.log = m.group(1), int(m.group(2)), [line]
            self._reader = threading.Thread(target=self._read_log, daemon=True)
            self._reader.start()
            return self

    d = HookedDashboard(tmp_path / 'store').start()
    try:
        status, _ = _request(d, 'POST', TRACK + 'c' * 32, {'name': 'x', 'comment': 'fail after the run is created'},
                             {'Content-Type': 'application/json'})
        assert status == 500
        assert d.listed_runs() == {} and _request(d, 'GET', f'/api/v1/run/{"c" * 32}')[0] == 404
        assert not list((d.data_dir / 'models' / 'Run').glob('Run:*'))
        status, _ = _request(d, 'POST', TRACK + 'd' * 32, {'name': 'fine'}, {'Content-Type': 'application/json'})
        assert status == 200 and list(d.listed_runs()) == ['d' * 32]
    finally:
        d.stop()
