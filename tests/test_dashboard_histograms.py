"""Dashboard: uncertainty histograms from real runs, their API and pages, the run table, configurations, import.

Real processes: `python -m experiments.dashboard` on a free loopback port, `python -m experiments.evidence_mnist
preset=smoke epochs=2` reporting to it (synthetic data: 256 validation images), one more trained without it and
then imported with `python -m experiments.dashboard import`. The browser test drives Debian's `chromium` with
Playwright and skips without them.
"""
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli
from tests.test_dashboard import CHROMIUM, CHROMIUM_FLAGS, ENV, Dashboard, _HTTP, _local_steps, _project, _run_dir

SMOKE = ('preset=smoke', 'epochs=2')
N_VALID = 256  # the synthetic test set (validation: the test set)
SCREENSHOT = Path(os.environ.get('DASHBOARD_UNCERTAINTY_SCREENSHOT', ROOT / 'artifacts' / 'dashboard_uncertainty.png'))


@pytest.fixture(scope='module')
def dashboard(tmp_path_factory):
    d = Dashboard(tmp_path_factory.mktemp('hist-store')).start()
    yield d
    d.stop()


@pytest.fixture(scope='module')
def live_run(dashboard, synthetic_data_dir, tmp_path_factory):
    """A smoke run reporting to the dashboard; the histograms' epochs seen on the dashboard while it trained."""
    project = _project(tmp_path_factory.mktemp('hist-project'))
    proc = subprocess.Popen([sys.executable, '-m', 'experiments.evidence_mnist', *SMOKE,
                             f'data_dir={synthetic_data_dir}', f'dashboard={dashboard.url}'],
                            cwd=project, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    while proc.poll() is None:
        for uuid in dashboard.listed_runs():
            try:
                seen.update(e['epoch'] for e in dashboard.get(f'/api/dashboard/histograms/{uuid}')['epochs'])
            except OSError:
                pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    run_dir = _run_dir(project, stdout)
    return {'uuid': run_dir.name, 'run_dir': run_dir, 'stderr': stderr, 'seen': seen}


@pytest.fixture(scope='module')
def offline_run(dashboard, synthetic_data_dir, tmp_path_factory):
    """A smoke run trained without the dashboard, then imported into it."""
    project = _project(tmp_path_factory.mktemp('offline-project'))
    r = run_cli('experiments.evidence_mnist', *SMOKE, f'data_dir={synthetic_data_dir}', cwd=project, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = _run_dir(project, r.stdout)
    imported = run_cli('experiments.dashboard', 'import', run_dir.name, '--url', dashboard.url, cwd=project,
                       timeout=120)
    return {'uuid': run_dir.name, 'run_dir': run_dir, 'import': imported}


def _lines(run_dir: Path):
    return [json.loads(line) for line in (run_dir / 'histograms.jsonl').read_text().splitlines()]


def _without_run(record):
    return {k: v for k, v in record.items() if k != 'run'}


# ---------------------------------------------------------------------------------------------
# the run folder and the API
# ---------------------------------------------------------------------------------------------
def test_every_validation_image_is_counted_once_per_distribution(live_run):
    lines = _lines(live_run['run_dir'])
    assert [r['epoch'] for r in lines] == [1, 2] and all(r['epochs'] == 2 for r in lines)
    for record in lines:
        assert record['n_valid'] == N_VALID
        assert list(record['distributions'])[:3] == ['u', 'p_max', 'strength']
        for name, hist in record['distributions'].items():
            groups = hist['groups']
            assert set(groups) == {'right', 'wrong'}, name
            assert sum(sum(g['counts']) for g in groups.values()) == N_VALID, name
            assert all(sum(g['counts']) == g['n'] for g in groups.values()), name
            assert len(hist['edges']) == len(groups['right']['counts']) + 1
        # the right predictions are the accuracy's share of the images
        assert record['distributions']['u']['groups']['right']['n'] == round(record['metrics']['accuracy.valid'] * N_VALID)
        assert record['distributions']['u']['scale'] == record['distributions']['p_max']['scale'] == 'unit'
        assert record['distributions']['u']['edges'][0] == 0 and record['distributions']['u']['edges'][-1] == 1
        # S > 0: a log grid when it spans a decade or more, else 50 bins over its range
        strength = record['distributions']['strength']
        edges = strength['edges']
        if strength['scale'] == 'log':
            assert edges[0] > 0 and math.log10(edges[0]) == round(math.log10(edges[0])) and edges[-1] >= 10 * edges[0]
        else:
            assert strength['scale'] == 'linear' and len(edges) == 51 and 0 < edges[0] and edges[-1] < 10 * edges[0]
    assert lines[-1]['run']['preset'] == 'smoke' and lines[-1]['run']['label'].startswith(
        f"evidence_mnist {live_run['uuid'][:8]} (")


def test_the_dashboard_keeps_the_histograms_live_beside_the_series(dashboard, live_run):
    uuid = live_run['uuid']
    assert 'dashboard' not in live_run['stderr'], live_run['stderr']
    assert live_run['seen'] >= {1}, 'no histogram reached the dashboard while the run trained'
    answer = dashboard.get(f'/api/dashboard/histograms/{uuid}')
    lines = _lines(live_run['run_dir'])
    assert answer['status'] == 'completed' and answer['run'] == lines[-1]['run']
    assert answer['epochs'] == [_without_run(r) for r in lines]
    assert [e['epoch'] for e in dashboard.get(f'/api/dashboard/histograms/{uuid}?after=1')['epochs']] == [2]
    # labml's quantile series are still there
    steps = dashboard.series_steps(uuid)
    assert len(steps['u.correct.q50']) == len(steps['u.wrong.q90']) == 2


def test_the_run_table_shows_uuid_preset_settings_epoch_and_accuracy(dashboard, live_run):
    rows = {r['run_uuid']: r for r in dashboard.get('/api/dashboard/runs')['runs']}
    row = rows[live_run['uuid']]
    last = _lines(live_run['run_dir'])[-1]
    assert row['status'] == 'completed' and row['preset'] == 'smoke'
    assert (row['epoch'], row['epochs']) == (2, 2)
    assert row['accuracy_valid'] == last['metrics']['accuracy.valid']
    assert row['label'] == last['run']['label'] and row['settings'] == last['run']['settings']
    # labml-app's own run list: the uuid prefix, preset and key settings as the run's comment
    listed = dashboard.listed_runs()[live_run['uuid']]
    assert listed['comment'].startswith(f"{live_run['uuid'][:8]} · preset smoke · "), listed


def test_configurations_mark_what_was_set_and_hold_no_object_reprs(dashboard, live_run):
    info = dashboard.get(f"/api/v1/run/{live_run['uuid']}")
    text = json.dumps(info['configs'])
    assert 'tensor(' not in text and '<function' not in text and ' at 0x' not in text
    configs = {c['key']: c for c in info['configs']}
    assert configs['outputs_to_evidence']['computed'] == 'function exp_linear_evidence'
    assert configs['dataset']['computed'].startswith("Data(name='mnist'")
    # the preset's and the command line's keys are the explicitly specified (and selected) ones
    assert configs['epochs']['is_explicitly_specified'] and configs['train_batch_size']['is_explicitly_specified']
    assert not configs['seed']['is_explicitly_specified'] and not configs['loss_func']['is_explicitly_specified']
    assert {'epochs', 'data_dir', 'train_batch_size'} <= set(info['selected_configs'])


def _post(dashboard, path, body, content_type='application/json', headers=None):
    req = urllib.request.Request(dashboard.url + path, data=json.dumps(body).encode(),
                                 headers={'Content-Type': content_type, **(headers or {})})
    try:
        with _HTTP.open(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_the_histogram_route_checks_every_field_and_stores_nothing_wrong(dashboard, live_run):
    uuid = live_run['uuid']
    path = f'/api/dashboard/histograms/{uuid}'
    good = _lines(live_run['run_dir'])[-1]
    before = dashboard.get(path)

    def broken(edit):
        record = json.loads(json.dumps(good))
        edit(record)
        return record

    u = lambda r: r['distributions']['u']  # noqa: E731
    for record, reason in [
        (broken(lambda r: u(r)['groups']['right']['counts'].__setitem__(0, 10 ** 6)), 'add up'),
        (broken(lambda r: u(r).__setitem__('scale', 'cubic')), 'scale'),
        (broken(lambda r: u(r)['edges'].reverse()), 'increasing'),
        (broken(lambda r: u(r)['groups']['right'].__setitem__('quantiles', [1, 2])), 'quantiles'),
        (broken(lambda r: r.__setitem__('epoch', -1)), 'epoch'),
        (broken(lambda r: r.__setitem__('distributions', {f'd{i}': u(r) for i in range(65)})), 'at most 64'),
        (broken(lambda r: r['distributions'].__setitem__('a b', u(r))), 'names'),
        ([good], 'JSON object'),
    ]:
        status, answer = _post(dashboard, path, record)
        assert status == 400 and reason in answer['error'], (reason, status, answer)
    assert _post(dashboard, '/api/dashboard/histograms/no-such-run-0000', good)[0] == 404
    assert _post(dashboard, path, good, content_type='text/plain')[0] == 415
    assert _post(dashboard, path, good, headers={'Origin': 'http://evil.example'})[0] == 403
    assert dashboard.get(path) == before
    # a line for an epoch already stored replaces it (a resumed run repeats an epoch)
    assert _post(dashboard, path, good) == (200, {'stored': True})
    assert dashboard.get(path) == before


def test_a_run_trained_without_the_dashboard_is_imported(dashboard, offline_run):
    imported = offline_run['import']
    assert imported.returncode == 0, imported.stderr
    uuid, run_dir = offline_run['uuid'], offline_run['run_dir']
    assert f'imported {uuid} (2 epoch(s) of histograms)' in imported.stdout
    answer = dashboard.get(f'/api/dashboard/histograms/{uuid}')
    assert answer['status'] == 'completed'
    assert answer['epochs'] == [_without_run(r) for r in _lines(run_dir)]
    server, local = dashboard.series_steps(uuid), _local_steps(run_dir)
    for name in ('loss.valid', 'accuracy.valid', 'u.correct.q50', 'loss.train'):
        assert server[name] == local[name], name
    row = {r['run_uuid']: r for r in dashboard.get('/api/dashboard/runs')['runs']}[uuid]
    assert row['preset'] == 'smoke' and row['epoch'] == 2
    # importing again changes nothing
    again = run_cli('experiments.dashboard', 'import', str(run_dir), '--url', dashboard.url, cwd=run_dir, timeout=120)
    assert again.returncode == 0, again.stderr
    assert dashboard.get(f'/api/dashboard/histograms/{uuid}') == answer and dashboard.series_steps(uuid) == server


def test_import_without_a_dashboard_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    r = run_cli('experiments.dashboard', 'import', 'abc', '--url', f'http://127.0.0.1:{port}',
                cwd=_project(tmp_path), timeout=60)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'nothing answers' in r.stderr, r.stderr


def test_with_a_token_histograms_and_pages_need_it(tmp_path, synthetic_data_dir):
    from tests.test_dashboard_reliability import Dashboard as TokenDashboard
    d = TokenDashboard(tmp_path / 'store', '--token', 'hist-T0ken').start()
    try:
        project = _project(tmp_path / 'project')
        r = run_cli('experiments.evidence_mnist', *SMOKE, f'data_dir={synthetic_data_dir}', f'dashboard={d.url}',
                    cwd=project, timeout=120, env={'DASHBOARD_TOKEN': 'hist-T0ken'})
        assert r.returncode == 0 and 'dashboard' not in r.stderr, r.stderr[-3000:]
        uuid = _run_dir(project, r.stdout).name
        for path in (f'/api/dashboard/histograms/{uuid}', '/api/dashboard/runs', '/view/runs', f'/view/run/{uuid}'):
            assert d.request('GET', path)[0] == 401, path
        assert d.request('POST', f'/api/dashboard/histograms/{uuid}', {'format': 1})[0] == 401
        status, answer = d.request('GET', f'/api/dashboard/histograms/{uuid}?token=hist-T0ken')
        assert status == 200 and [e['epoch'] for e in answer['epochs']] == [1, 2]
    finally:
        d.stop()


# ---------------------------------------------------------------------------------------------
# in process: bins, quantiles, descriptions, the sender's bounded exit
# ---------------------------------------------------------------------------------------------
def test_bins_cover_every_value_and_quantiles_match_torch():
    from configs.histograms import QUANTILES, histogram
    torch.manual_seed(0)
    correct = torch.rand(1000) > 0.2
    for name, values, scale in [('u', torch.rand(1000), 'unit'),
                                ('strength', 10 ** (1 + 4 * torch.rand(1000)), 'log'),
                                ('mutual_information', torch.cat([torch.zeros(100), 10 ** (-6 * torch.rand(900))]), 'log'),
                                ('neg_log_density', torch.randn(1000) * 50, 'linear'),
                                ('sigma.fc1', 0.005 + 1e-4 * torch.rand(1000), 'linear')]:  # within a decade
        h = histogram(name, values, correct)
        assert h['scale'] == scale, name
        assert all(b > a for a, b in zip(h['edges'], h['edges'][1:]))
        for group, mask in (('right', correct), ('wrong', ~correct)):
            g = h['groups'][group]
            assert sum(g['counts']) == g['n'] == int(mask.sum()), name
            expected = torch.quantile(values[mask].double(), torch.tensor(QUANTILES, dtype=torch.float64))
            assert g['quantiles'] == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-12), name
    # values that are not per image form one group; non-finite ones are counted apart
    h = histogram('sigma.fc1', torch.tensor([0.1, 0.2, float('nan')]), None)
    assert set(h['groups']) == {'all'} and h['groups']['all']['nonfinite'] == 1
    assert sum(h['groups']['all']['counts']) == 2


def test_object_reprs_become_short_descriptions():
    from experiments.dashboard.describe import short_value
    assert short_value('<function exp_linear_evidence at 0x7f7399b46200>') == 'function exp_linear_evidence'
    assert short_value('<function constant_schedule.<locals>.<lambda> at 0x7f73>') == 'function constant_schedule.lambda'
    data = "Data(name='mnist', n_classes=10, train=TensorSplit(images=tensor([[[[-0.1315" + ' 0.1' * 2000
    assert short_value(data) == "Data(name='mnist', n_classes=10 …)"
    assert short_value(0.5) == 0.5 and short_value('cosine') == 'cosine'


def test_the_sender_gives_up_at_exit_within_its_bound(capsys):
    from experiments.dashboard.sender import HistogramSender
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    sender = HistogramSender(f'http://127.0.0.1:{port}/')
    sender('run0000000001', {'epoch': 1})
    t = time.monotonic()
    sender.close(flush_s=0.5)
    assert time.monotonic() - t < 3
    err = capsys.readouterr().err
    assert 'gave up sending 1 histogram update' in err and 'import' in err, err


# ---------------------------------------------------------------------------------------------
# in a real browser
# ---------------------------------------------------------------------------------------------
def _extent(locator):
    return locator.evaluate_all('ps => ps.map(p => { const b = p.getBBox(); return [b.width, b.height]; })')


@pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed (apt-get install -y chromium)')
def test_browser_draws_the_uncertainty_view_run_table_and_configurations(dashboard, live_run, offline_run, tmp_path):
    sync_api = pytest.importorskip('playwright.sync_api', reason='playwright is not installed')
    uuid = live_run['uuid']
    outside, page_errors = [], []

    def only_loopback(route):
        if route.request.url.startswith(dashboard.url + '/'):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / 'chromium-profile'), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={'width': 1300, 'height': 1000}, service_workers='block')
        try:
            context.route('**/*', only_loopback)
            page = context.new_page()
            page.on('pageerror', lambda e: page_errors.append(str(e)))

            # labml-app's run page shows the view of u in a card, and links to the full view
            page.goto(f'{dashboard.url}/run/{uuid}')
            embedded = page.frame_locator('#uncertainty-card iframe')
            embedded.locator('svg.histogram-chart path.histogram.group-wrong').wait_for(timeout=20000)
            assert embedded.locator('section.dist').count() == 1
            page.locator('#uncertainty-link').click()
            page.wait_for_url(f'**/view/run/{uuid}', timeout=20000)
            card = page.locator('section.dist[data-name="u"]')
            card.locator('svg.histogram-chart path.histogram.group-wrong').wait_for(timeout=20000)
            # band chart: both groups' medians and bands drawn with extent, epochs 1 and 2 on the axis
            band = card.locator('svg.band-chart')
            for group in ('right', 'wrong'):
                assert all(w > 0 for w, h in _extent(band.locator(f'.group-{group} path.median'))), group
                assert all(w > 0 and h > 0 for w, h in _extent(band.locator(f'.group-{group} path.band'))), group
            assert band.locator('.epoch-axis .tick text').all_text_contents() == ['1', '2']
            # histogram: right and wrong overlaid, each with extent, in two colours; counts in the caption
            hist = card.locator('svg.histogram-chart')
            right, wrong = hist.locator('path.histogram.group-right'), hist.locator('path.histogram.group-wrong')
            assert all(w > 0 and h > 0 for w, h in _extent(right) + _extent(wrong))
            assert right.get_attribute('fill') != wrong.get_attribute('fill')
            legend = card.locator('.legend').inner_text()
            assert 'right predictions' in legend and 'wrong predictions' in legend
            last = _lines(live_run['run_dir'])[-1]['distributions']['u']['groups']
            caption = card.locator('figure.hist figcaption').inner_text()
            assert caption == f"epoch 2: right predictions {last['right']['n']} · wrong predictions {last['wrong']['n']}"
            assert card.locator('.axis-label').all_text_contents() == ['epoch', 'u', 'u', 'images (√ scale)']
            # the slider selects the histogram's epoch
            before = right.get_attribute('d')
            page.locator('#epoch').fill('1')
            page.wait_for_function("document.querySelector('section.dist[data-name=\"u\"] figure.hist figcaption')"
                                   ".textContent.startsWith('epoch 1:')", timeout=10000)
            assert hist.locator('path.histogram.group-right').get_attribute('d') != before
            assert page.locator('#epoch-label').inner_text() == '1 of 2'
            assert page.evaluate('window.d3.version') == '6.7.0'
            page.locator('#epoch').fill('2')
            # bars as shares of each group: the same bins, other heights, the axis says so
            counts = hist.locator('path.histogram.group-wrong').get_attribute('d')
            page.locator('#hist-mode').select_option('share')
            assert hist.locator('path.histogram.group-wrong').get_attribute('d') != counts
            assert "% of the group's images" in card.locator('.axis-label').all_text_contents()
            page.locator('#hist-mode').select_option('counts')
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # the run table: uuid prefix, preset, epoch and accuracy
            page.goto(f'{dashboard.url}/view/runs')
            row = page.locator(f'tr[data-run="{uuid}"]')
            row.wait_for(timeout=20000)
            text = row.inner_text()
            accuracy = _lines(live_run['run_dir'])[-1]['metrics']['accuracy.valid']
            assert uuid[:8] in text and 'smoke' in text and '2 / 2' in text and f'{100 * accuracy:.2f} %' in text
            assert page.locator(f'tr[data-run="{offline_run["uuid"]}"]').inner_text().count('2 / 2') == 1

            # the configurations page: no tensor or function reprs
            page.goto(f'{dashboard.url}/run/{uuid}/configs')
            page.get_by_text('outputs_to_evidence').first.wait_for(timeout=20000)
            body = page.locator('body').inner_text()
            assert 'exp_linear_evidence' in body and 'tensor(' not in body and '<function' not in body

            # the imported run's view
            page.goto(f'{dashboard.url}/view/run/{offline_run["uuid"]}')
            page.locator('section.dist[data-name="u"] svg.histogram-chart path.group-right').wait_for(timeout=20000)
        finally:
            context.close()
    assert outside == [], f'the pages tried to reach outside: {outside}'
    assert page_errors == [], page_errors
