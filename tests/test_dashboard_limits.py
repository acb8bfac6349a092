"""The dashboard's connections and start-up checks: stalled requests, the connection cap, options and data
folders it refuses.

Real `python -m experiments.dashboard` processes on free loopback ports, raw sockets to 127.0.0.1 only.
"""
import json
import os
import select
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_dashboard import _readline
from tests.test_dashboard_reliability import ENV, Dashboard
from tests.test_dashboard import _HTTP


# ------------------------------------------------------------------------------------------- connections
def _closed_by_server(s: socket.socket, wait: float) -> bool:
    """Whether the server closed `s` (EOF, a reset, or an answer and then EOF) within `wait` seconds."""
    s.settimeout(wait)
    try:
        while True:
            if not s.recv(65536):
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


def test_stalled_requests_are_cut_and_connections_are_capped(tmp_path):
    d = Dashboard(tmp_path / 'store', '--read-timeout', '2').start()
    socks = []
    try:
        head = f'POST /api/v1/metrics/x HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\nContent-Type: application/json\r\n'
        for i in range(60):
            s = socket.create_connection(('127.0.0.1', d.port), timeout=10)
            kind = i % 3
            if kind == 0:  # a body that stops half-way
                s.sendall((head + 'Content-Length: 1000\r\n\r\n{"get_all": ').encode())
            elif kind == 1:  # headers that never end
                s.sendall(head.encode())
            socks.append(s)  # kind 2: nothing at all
        t = time.monotonic()
        assert not any(_closed_by_server(s, 0.01) for s in socks)  # still open before the timeout
        closed = [_closed_by_server(s, max(0.1, 8 - (time.monotonic() - t))) for s in socks]
        assert all(closed), f'{closed.count(False)} of {len(socks)} stalled connections still open'
        assert time.monotonic() - t < 8
        for s in socks:
            s.close()
        socks = []
        assert d.request('GET', '/api/dashboard/health')[0] == 200
    finally:
        for s in socks:
            s.close()
        d.stop()
    log = ''.join(d.log)
    assert 'closed a connection that sent no whole request within 2 s' in log and 'Traceback' not in log, log


def test_connections_beyond_the_cap_are_closed_at_once(tmp_path):
    from experiments.dashboard.security import MAX_CONNECTIONS
    d, extra = Dashboard(tmp_path / 'store').start(), 40
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS + extra):
            socks.append(socket.create_connection(('127.0.0.1', d.port), timeout=10))
        deadline = time.monotonic() + 10
        closed = []
        while time.monotonic() < deadline and len(closed) < extra:
            time.sleep(0.2)
            closed, _, _ = select.select(socks, [], [], 0)  # the server sends nothing on these until it closes
        assert len(closed) == extra, len(closed)
        assert set(closed) == set(socks[-extra:])  # the latest ones; those open before stay open
        for s in socks:
            s.close()
        socks = []
        time.sleep(0.5)
        assert d.request('GET', '/api/dashboard/health')[0] == 200
    finally:
        for s in socks:
            s.close()
        d.stop()
    assert any('refused a connection: 256 are open already' in line for line in d.log), d.log


# ------------------------------------------------------------------------------------------- options
def _dashboard_cli(*args, timeout=60):
    return subprocess.run([sys.executable, '-m', 'experiments.dashboard', *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('args, needle', [
    (('--host', '0.0.0.0'), '--host 0.0.0.0 lets other machines in'),
    (('--host', '::'), '--host :: lets other machines in'),
    (('--token', 'tøken'), 'only ASCII letters'),
    (('--token', 'to ken'), 'only ASCII letters'),
])
def test_unsafe_options_are_refused(args, needle, tmp_path):
    r = _dashboard_cli('--port', '0', '--data', str(tmp_path), *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert not (tmp_path / 'models').exists()  # refused before anything was opened


def test_health_shows_the_store_only_to_token_holders(tmp_path):
    d = Dashboard(tmp_path / 'store', '--token', 's3cret').start()
    try:
        status, answer = d.request('GET', '/api/dashboard/health')
        assert status == 200 and answer['token_required'] and not answer['token_ok']
        assert 'store' not in answer and 'requests' not in answer and str(tmp_path) not in json.dumps(answer)
        status, answer = d.request('GET', '/api/dashboard/health?token=s3cret')
        assert answer['token_ok'] and answer['store'] == str((tmp_path / 'store').resolve())
        with _HTTP.open(d.url + '/?token=s3cret', timeout=10) as r:
            cookie = r.headers['Set-Cookie'].split(';')[0]
        assert cookie == 'dashboard_token=s3cret'
        assert 'store' in d.request('GET', '/api/dashboard/health', headers={'Cookie': cookie})[1]
    finally:
        d.stop()


def test_a_data_folder_others_can_write_to_is_refused(tmp_path):
    store = tmp_path / 'store'
    (store / 'models' / 'Run').mkdir(parents=True)
    (store / 'models' / 'Run').chmod(0o777)  # anyone could plant Run:<uuid>.pkl
    r = _dashboard_cli('--port', '0', '--data', str(store))
    assert r.returncode == 2 and 'writable by every user' in r.stderr and r.stderr.count('\n') == 1, r.stderr
    (store / 'models' / 'Run').chmod(0o755)
    planted = store / 'models' / 'Run' / 'Run:planted.pkl'
    planted.write_bytes(b'')
    planted.chmod(0o666)
    r = _dashboard_cli('--port', '0', '--data', str(store))
    assert r.returncode == 2 and 'Run:planted.pkl is writable by every user' in r.stderr, r.stderr
    planted.unlink()
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(store / 'models', 65534, 65534)
        r = _dashboard_cli('--port', '0', '--data', str(store))
        assert r.returncode == 2 and 'belongs to another user' in r.stderr, r.stderr
        os.chown(store / 'models', 0, 0)
    # group-writable: a warning, and the dashboard starts
    (store / 'indexes').mkdir(exist_ok=True)
    (store / 'indexes').chmod(0o775)
    proc = subprocess.Popen([sys.executable, '-m', 'experiments.dashboard', '--port', '0', '--data', str(store)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        warning, banner = _readline(proc, timeout=60), _readline(proc, timeout=60)
        assert 'writable by its group' in warning and 'chmod -R g-w' in warning, warning
        assert 'labml dashboard: http://127.0.0.1:' in banner, banner
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
        proc.stdout.close()
