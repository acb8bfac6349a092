"""Dashboard: the labml app on a file store, fed by real runs, read back over HTTP and in a browser.

Real processes throughout: `python -m experiments.dashboard` on a free loopback port, and
`python -m experiments.evidence_mnist preset=smoke` (or the small stand-in
`tests/dashboard_fake_run.py` where only the client's exit behaviour matters).
The browser test needs Debian's `chromium` and the `playwright` package; it skips without them.
"""
import base64
import collections
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

FAKE_RUN = ROOT / 'tests' / 'dashboard_fake_run.py'
SMOKE = ('preset=smoke', 'epochs=2')  # two epochs: every per-epoch chart gets a line, not a dot
QUANTILE_SERIES = [f'{h}.q{q}' for h in ('u.correct', 'u.wrong', 'p_max.correct', 'p_max.wrong')
                   for q in (10, 50, 90)]
CHECKED_SERIES = ['loss.train', 'loss.valid', 'accuracy.train', 'accuracy.valid', *QUANTILE_SERIES]
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class Dashboard:
    """`python -m experiments.dashboard` as a real process on a free loopback port."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.proc = None
        self.url = None

    def start(self) -> 'Dashboard':
        self.proc = subprocess.Popen([sys.executable, '-m', 'experiments.dashboard', '--port', '0',
                                      '--data', str(self.data_dir)],
                                     cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        line = _readline(self.proc, timeout=30)
        m = re.search(r'(http://127\.0\.0\.1:\d+)', line)
        assert m, f'no URL in the dashboard banner: {line!r}'
        self.url = m.group(1)
        return self

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGCONT)  # in case a test paused it
        self.proc.terminate()
        rc = self.proc.wait(15)
        self.proc.stdout.close()
        return rc

    def restart(self) -> 'Dashboard':
        assert self.stop() == 0
        return self.start()

    def get(self, path: str):
        with _HTTP.open(self.url + path, timeout=10) as r:
            return json.load(r)

    def post(self, path: str, data):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={'Content-Type': 'application/json'})
        with _HTTP.open(req, timeout=10) as r:
            return json.load(r)

    def listed_runs(self):
        return {r['run_uuid']: r for r in self.get('/api/v1/runs/null?folder_name=default')['runs']}

    def series_steps(self, run_uuid: str):
        """{series name: its steps}, decoded from the app's base64 float32 arrays."""
        res = self.post(f'/api/v1/metrics/{run_uuid}', {'get_all': True})
        return {s['name']: np.frombuffer(base64.b64decode(s['step']), dtype=np.float32).tolist()
                for s in res['series']}


def _readline(proc, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line:
                return line
        if proc.poll() is not None:
            raise AssertionError(f'dashboard exited ({proc.returncode}): {proc.stdout.read()}')
    proc.kill()
    raise AssertionError('dashboard did not start in time')


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _project(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / '.labml.yaml').write_text('data_path: data\nexperiments_path: logs\ncheck_repo_dirty: false\n')
    return tmp


def _run_dir(project: Path, stdout: str) -> Path:
    m = re.search(r'run folder: (\S+)', stdout)
    assert m, stdout[-2000:]
    return Path(m.group(1))


def _local_steps(run_dir: Path):
    """{indicator: sorted unique steps} from labml's local log (the file writer's log.jsonl)."""
    steps = collections.defaultdict(set)
    for line in (run_dir / 'log.jsonl').read_text().splitlines():
        for name, points in json.loads(line).get('track', {}).items():
            steps[name].update(p[0] for p in points)
    return {k: sorted(v) for k, v in steps.items()}


def _run_status(run_dir: Path) -> str:
    return json.loads((run_dir / 'run_log.jsonl').read_text().splitlines()[-1])['status']


# ---------------------------------------------------------------------------------------------
# fixtures: one dashboard and one smoke run, shared by the API and browser tests
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def dashboard(tmp_path_factory):
    d = Dashboard(tmp_path_factory.mktemp('dashboard-store')).start()
    yield d
    d.stop()


@pytest.fixture(scope='module')
def smoke_run(dashboard, synthetic_data_dir, tmp_path_factory):
    """A real smoke run reporting to the dashboard; polls the API while it trains."""
    project = _project(tmp_path_factory.mktemp('project'))
    proc = subprocess.Popen([sys.executable, '-m', 'experiments.evidence_mnist', *SMOKE,
                             f'data_dir={synthetic_data_dir}', f'dashboard={dashboard.url}'],
                            cwd=project, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_live = set()
    while proc.poll() is None:
        try:
            for uuid, r in dashboard.listed_runs().items():
                if r['run_status']['status'] == 'in progress':
                    seen_live.add(uuid)
        except OSError:
            pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    run_dir = _run_dir(project, stdout)
    return {'uuid': run_dir.name, 'run_dir': run_dir, 'stderr': stderr, 'seen_live': run_dir.name in seen_live}


# ---------------------------------------------------------------------------------------------
# API level
# ---------------------------------------------------------------------------------------------
def _check_run_on_dashboard(d: Dashboard, run):
    uuid = run['uuid']
    listed = d.listed_runs()
    assert uuid in listed, f'run {uuid} not in the run list: {list(listed)}'
    assert listed[uuid]['name'] == 'evidence_mnist'
    assert listed[uuid]['run_status']['status'] == 'completed'
    info = d.get(f'/api/v1/run/{uuid}')
    assert info['is_claimed'] and info['is_project_run']  # listed without a manual claim

    server = d.series_steps(uuid)
    local = _local_steps(run['run_dir'])
    for name in CHECKED_SERIES:
        assert name in server, f'{name} missing on the dashboard; it has {sorted(server)}'
        assert server[name] == local[name], f'{name}: dashboard steps {server[name]} != local {local[name]}'
    n_epochs = int(SMOKE[1].split('=')[1])
    assert len(server['u.correct.q50']) == len(server['accuracy.valid']) == n_epochs
    assert len(server['loss.train']) > n_epochs  # per logged batch

    cards = {c['id']: c for c in d.get(f'/api/v1/custom_metrics/{uuid}')['metrics']}
    names = sorted(server)
    for h in ('u-correct', 'u-wrong', 'p-max-correct', 'p-max-wrong'):
        prefs = cards[f'auto-{h}']['preferences']['series_preferences']
        selected = [n for n, p in zip(names, prefs) if p == 1]
        base = h.replace('p-max', 'p_max').replace('-', '.')
        assert selected == [f'{base}.q10', f'{base}.q50', f'{base}.q90'], (h, selected)


def test_run_reports_live_and_reads_back_over_the_api(dashboard, smoke_run):
    assert smoke_run['seen_live'], 'the run never showed up as "in progress" while it trained'
    assert 'dashboard' not in smoke_run['stderr'], smoke_run['stderr']  # no warning when all is well
    _check_run_on_dashboard(dashboard, smoke_run)


def test_runs_and_series_survive_a_dashboard_restart(dashboard, smoke_run):
    before = dashboard.series_steps(smoke_run['uuid'])
    dashboard.restart()
    _check_run_on_dashboard(dashboard, smoke_run)
    assert dashboard.series_steps(smoke_run['uuid']) == before


def test_page_and_assets_are_served_locally(dashboard):
    with _HTTP.open(dashboard.url + '/runs', timeout=10) as r:
        html = r.read().decode()
    assert 'https://' not in html and 'http://' not in html
    for src in re.findall(r'(?:href|src)="(/[^"]+)"', html):
        with _HTTP.open(dashboard.url + src, timeout=10) as r:
            assert r.status == 200 and r.read(), src
    for path in ('/vendor/../server.py', '/vendor/%2e%2e/server.py'):
        with pytest.raises(urllib.error.HTTPError):
            _HTTP.open(dashboard.url + path, timeout=10)


# ---------------------------------------------------------------------------------------------
# dashboard down
# ---------------------------------------------------------------------------------------------
def test_unreachable_dashboard_warns_once_and_costs_no_time(synthetic_data_dir, tmp_path):
    common = ('preset=smoke', f'data_dir={synthetic_data_dir}')
    t = time.monotonic()
    base = run_cli('experiments.evidence_mnist', *common, cwd=_project(tmp_path / 'base'), timeout=120)
    t_base = time.monotonic() - t
    t = time.monotonic()
    down = run_cli('experiments.evidence_mnist', *common, f'dashboard=http://127.0.0.1:{_closed_port()}',
                   cwd=_project(tmp_path / 'down'), timeout=120)
    t_down = time.monotonic() - t

    assert base.returncode == 0 and down.returncode == 0, down.stderr[-3000:]
    warnings = [l for l in down.stderr.splitlines() if 'dashboard' in l]
    assert len(warnings) == 1 and 'unreachable' in warnings[0], down.stderr
    # "within a few seconds": labml's own client would retry for minutes at exit
    assert t_down < t_base + max(3.0, 0.3 * t_base), f'run with the dashboard down took {t_down:.1f}s vs {t_base:.1f}s'
    base_dir, down_dir = _run_dir(tmp_path / 'base', base.stdout), _run_dir(tmp_path / 'down', down.stdout)
    assert _run_status(down_dir) == 'completed'
    base_steps, down_steps = _local_steps(base_dir), _local_steps(down_dir)
    assert set(CHECKED_SERIES) <= set(down_steps)
    assert down_steps == base_steps  # local logs complete


@pytest.mark.parametrize('failure', ['killed', 'hung'])
def test_dashboard_failing_mid_run_does_not_hold_the_exit(tmp_path, failure):
    """labml's own client retries forever at exit (10 s, 20 s, ...); ours gives up within seconds."""
    d = Dashboard(tmp_path / 'store').start()
    try:
        run = subprocess.Popen([sys.executable, str(FAKE_RUN), '--logs', str(tmp_path / 'logs'),
                                '--dashboard', d.url, '--epochs', '3', '--steps', '10', '--sleep', '0.05'],
                               cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not d.listed_runs() and time.monotonic() < deadline:  # wait until it reports
            time.sleep(0.05)
        assert d.listed_runs(), 'the run never reached the dashboard'
        t = time.monotonic()
        if failure == 'killed':
            d.proc.kill()
        else:
            d.proc.send_signal(signal.SIGSTOP)
        stdout, stderr = run.communicate(timeout=60)
        after_failure = time.monotonic() - t
    finally:
        d.stop()
    assert run.returncode == 0, stderr
    # the run sleeps 1.5 s in total and the client may spend EXIT_FLUSH_S (3 s) at exit; the margin is
    # for a loaded machine (labml's own client would still be retrying, for minutes)
    assert after_failure < 1.5 + 3 + 5, f'exit took {after_failure:.1f}s after the dashboard {failure}'
    assert 'RUN_UUID=' in stdout
    logs = next((tmp_path / 'logs' / 'evidence_mnist_fake').iterdir())
    assert _run_status(logs) == 'completed'
    assert len(_local_steps(logs)['loss.train']) == 30
    assert sum('dashboard: warning' in l for l in stderr.splitlines()) <= 2, stderr


# ---------------------------------------------------------------------------------------------
# command line of the dashboard
# ---------------------------------------------------------------------------------------------
def _dashboard_cli(*args, timeout=30):
    return subprocess.run([sys.executable, '-m', 'experiments.dashboard', *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen()
        r = _dashboard_cli('--port', str(s.getsockname()[1]), '--data', str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.count('\n') == 1 and 'already in use' in r.stderr, r.stderr


def test_second_dashboard_on_the_same_data_is_refused(dashboard):
    r = _dashboard_cli('--port', '0', '--data', str(dashboard.data_dir))
    assert r.returncode == 2
    assert r.stderr.count('\n') == 1 and 'already using' in r.stderr, r.stderr


def test_unreachable_mongodb_is_one_line_and_exit_2(tmp_path):
    r = _dashboard_cli('--port', '0', '--mongo', f'127.0.0.1:{_closed_port()}')
    assert r.returncode == 2
    assert r.stderr.count('\n') == 1 and 'MongoDB is not reachable' in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# in process: client and chart logic, vendored assets
# ---------------------------------------------------------------------------------------------
def test_attach_without_url_does_nothing(monkeypatch, capsys):
    from experiments.dashboard import client
    monkeypatch.delenv('labml_app_url', raising=False)  # and the repository's .labml.yaml has no app_url
    assert client.attach(None) is False and client.attach('') is False
    assert capsys.readouterr().err == ''


def test_attach_to_closed_port_warns_once_quickly(capsys):
    from experiments.dashboard import client
    t = time.monotonic()
    assert client.attach(f'127.0.0.1:{_closed_port()}') is False
    assert time.monotonic() - t < 1.5
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'unreachable' in err and 'local logs' in err


@pytest.mark.parametrize('url, expected', [
    ('http://127.0.0.1:5005', ('http://127.0.0.1:5005/', 'http://127.0.0.1:5005/api/v1/default/')),
    ('127.0.0.1:5005/', ('http://127.0.0.1:5005/', 'http://127.0.0.1:5005/api/v1/default/')),
    ('http://localhost:5005/api/v1/abc', ('http://localhost:5005/', 'http://localhost:5005/api/v1/abc/')),
])
def test_split_url(url, expected):
    from experiments.dashboard.client import split_url
    assert split_url(url) == expected


def test_split_url_rejects_non_http():
    from experiments.dashboard.client import split_url
    with pytest.raises(ValueError):
        split_url('ftp://host:1')


def test_quantile_and_accuracy_cards():
    from experiments.dashboard.charts import chart_specs
    names = sorted(['loss.train', 'accuracy.train', 'accuracy.valid', 'strength.mean', 'u.wrong.q90',
                    'u.wrong.q10', 'u.wrong.q50', 'p_max.correct.q10.mean', 'p_max.correct.q90.mean'])
    specs = {s[0]: (s[1], s[3]) for s in chart_specs(names)}
    assert list(specs) == ['auto-accuracy', 'auto-u-wrong', 'auto-p-max-correct']
    assert specs['auto-u-wrong'] == ('u (wrong) · quantiles 10% / 50% / 90%',
                                     ['u.wrong.q10', 'u.wrong.q50', 'u.wrong.q90'])
    assert specs['auto-p-max-correct'][1] == ['p_max.correct.q10.mean', 'p_max.correct.q90.mean']


def test_card_selection_follows_series_names_when_new_series_arrive():
    from experiments.dashboard.charts import _realign
    assert _realign([1, -1], ['b', 'd'], ['a', 'b', 'c', 'd']) == [-1, 1, -1, -1]


def test_the_served_front_end_colours_only_the_drawn_lines():
    from experiments.dashboard import server
    static_dir = server.labml_app_static_dir()
    original = (static_dir / server.BUNDLE).read_text(encoding='utf-8')
    patched = server.patched_bundle(static_dir).decode('utf-8')
    for before, after in server.BUNDLE_PATCHES.items():
        assert before in original and before not in patched and patched.count(after) == 1
    assert len(patched) - len(original) == sum(len(a) - len(b) for b, a in server.BUNDLE_PATCHES.items())


def test_vendored_assets_match_their_manifest_and_cover_the_page():
    from experiments.dashboard import server, vendor
    assert vendor.check() == []
    html = server.offline_index_html(server.labml_app_static_dir())
    for local in server.CDN_ASSETS.values():
        assert local in html
        assert (server.VENDOR_DIR / local[len('/vendor/'):]).is_file()


# ---------------------------------------------------------------------------------------------
# in a real browser
# ---------------------------------------------------------------------------------------------
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--disable-extensions', '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1']
SCREENSHOT = Path(os.environ.get('DASHBOARD_SCREENSHOT', ROOT / 'artifacts' / 'dashboard.png'))


@pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed (apt-get install -y chromium)')
def test_browser_finds_the_run_and_renders_its_charts(dashboard, smoke_run, tmp_path):
    sync_api = pytest.importorskip('playwright.sync_api', reason='playwright is not installed')
    uuid = smoke_run['uuid']
    outside, page_errors = [], []

    def only_loopback(route):
        if route.request.url.startswith(dashboard.url + '/'):
            route.continue_()
        else:  # the page must not need the internet (CDNs, fonts, analytics)
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / 'chromium-profile'), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={'width': 1000, 'height': 900}, service_workers='block')
        try:
            context.route('**/*', only_loopback)
            page = context.new_page()
            page.on('pageerror', lambda e: page_errors.append(str(e)))
            page.goto(dashboard.url + '/runs')
            link = page.locator(f'a[href="/run/{uuid}"]')
            link.wait_for(timeout=20000)
            assert 'evidence_mnist' in link.inner_text()
            link.click()
            page.wait_for_url(f'**/run/{uuid}', timeout=20000)

            # every card with a quantile chart draws its three lines, each through both epochs
            titles = ['u (correct)', 'u (wrong)', 'max p̂ (correct)', 'max p̂ (wrong)']
            for title in titles + ['Metrics', 'Accuracy']:
                card = page.locator('.labml-card', has=page.locator('h3.header', has_text=title)).first
                card.locator('path.smoothed-line[d*="L"]').first.wait_for(timeout=20000)  # a drawn line
            for title in titles:
                card = page.locator('.labml-card', has=page.locator('h3.header', has_text=title)).first
                chart = card.locator('svg').first  # the line chart; the spark lines below have their own
                paths = chart.locator('path.smoothed-line').evaluate_all('ps => ps.map(p => p.getAttribute("d"))')
                assert len(paths) == 3, (title, paths)
                assert all(d and 'L' in d for d in paths), (title, paths)  # a line, not a single dot
                strokes = chart.locator('path.smoothed-line').evaluate_all(
                    'ps => ps.map(p => getComputedStyle(p).stroke)')
                # one clearly distinct colour per quantile (labml-app's own colouring gives neighbouring series
                # shades 10-25 apart in RGB; the divergent scale over three lines puts them >= 100 apart)
                rgb = [[int(c) for c in re.findall(r'\d+', s)[:3]] for s in strokes]
                closest = min(math.dist(a, b) for i, a in enumerate(rgb) for b in rgb[i + 1:])
                assert closest > 60, (title, strokes)
            # the vendored libraries are the ones in use: d3 6.7.0, bootstrap's CSS, font-awesome's font
            assert page.evaluate('window.d3.version') == '6.7.0'
            assert page.evaluate("getComputedStyle(document.body).getPropertyValue('--bs-blue').trim()") == '#0d6efd'
            page.wait_for_function("[...document.fonts].some(f => f.family.includes('Font Awesome 5 Free')"
                                   " && f.status === 'loaded')", timeout=10000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            context.close()
    assert outside == [], f'the page tried to reach outside: {outside}'
    assert page_errors == [], page_errors
