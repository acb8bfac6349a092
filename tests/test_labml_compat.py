"""
`configs/compat.py`, every use of labml 0.5.3 beyond its public API: one test per function, each failing the day
labml changes what the function relies on. After an upgrade of labml, run this file first.
"""
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from labml import tracker
from labml.configs import BaseConfigs, option

from configs import compat
from tests.conftest import ROOT


class Inner(BaseConfigs):
    width: int = 4


class Small(BaseConfigs):
    epochs: int = 3
    name: str
    model: str
    inner: Inner


@option(Small.model, 'tiny')
def _tiny(c: Small) -> str:
    return f'tiny x{c.inner.width}'


@option(Small.inner)
def _inner(c: Small) -> Inner:
    return Inner()


def _python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh process: labml's lab settings are process-wide, and these tests change them."""
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin'})


# ---------------------------------------------------------------------- Configs

def test_declarations_name_keys_types_defaults_and_options():
    types, defaults, options = compat.declarations(Small())
    assert list(types) == ['epochs', 'name', 'model', 'inner']
    assert types['epochs'] is int and types['name'] is str and types['inner'] is Inner
    assert defaults['epochs'] == 3 and 'name' not in defaults
    assert list(options['model']) == ['tiny'] and 'epochs' not in options


def test_set_values_without_a_run():
    conf = Small()
    compat.set_values(conf, {'epochs': 5, 'model': 'tiny', 'inner.width': 8})
    assert conf.epochs == 5 and conf.model == 'tiny x8' and conf.inner.width == 8


# ---------------------------------------------------------------------- lab

def test_lab_file_says_where_runs_go(tmp_path):
    (tmp_path / 'project').mkdir()
    (tmp_path / 'project' / '.labml.yaml').write_text('experiments_path: runs\ndata_path: files\n'
                                                      'app_url: http://127.0.0.1:9/api/v1/default/\n')
    done = _python(f"""
        from pathlib import Path
        from labml import lab
        from configs.compat import lab_app_url, use_lab_file
        use_lab_file(Path({str(tmp_path / 'project' / '.labml.yaml')!r}))
        print(lab.get_experiments_path(), lab.get_data_path(), lab_app_url())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / 'project' / 'runs'), str(tmp_path / 'project' / 'files'),
                                   'http://127.0.0.1:9/api/v1/default/']


def test_app_url_is_read_and_set(tmp_path):
    (tmp_path / '.labml.yaml').write_text('experiments_path: logs\n')
    done = _python(f"""
        from pathlib import Path
        from labml.internal.lab import lab_singleton
        from configs.compat import lab_app_url, set_lab_app_url, use_lab_file
        use_lab_file(Path({str(tmp_path / '.labml.yaml')!r}))
        print(lab_app_url())
        set_lab_app_url('http://127.0.0.1:9/api/v1/TOKEN/')
        app = lab_singleton().app_configs
        print(lab_app_url(), app.url, app.open_browser)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['None', 'http://127.0.0.1:9/api/v1/TOKEN/',
                                   'http://127.0.0.1:9/api/v1/TOKEN/track?', 'False']


# ---------------------------------------------------------------------- monitor

def test_silence_monitor():
    done = _python("""
        from labml import monit
        from configs.compat import silence_monitor
        silence_monitor(True)
        with monit.section('HIDDEN'):
            pass
        silence_monitor(False)
        with monit.section('SHOWN'):
            pass
    """)
    assert done.returncode == 0, done.stderr
    assert 'SHOWN' in done.stdout and 'HIDDEN' not in done.stdout


# ---------------------------------------------------------------------- tracker

def test_file_writer_is_found_and_taken_over(tmp_path):
    path = tmp_path / 'log.jsonl'
    writer = compat.new_file_writer(path)
    calls = []
    compat.write_only_to(writer)
    try:
        assert compat.tracker_file_writer() is writer and compat.file_writer_path(writer) == path
        compat.take_over_file_writer(writer, lambda: calls.append('flush'), lambda: calls.append('finish'))
        tracker.set_scalar('compat_test', False)
        tracker.set_global_step(7)
        tracker.save({'compat_test': 2.5})
        compat.flush_tracker()
        assert calls == ['finish']  # the replacement, not labml's thread: nothing is written
        assert not path.exists()
        assert compat.take_file_writer_data(writer) == {'compat_test': [(7, [2.5])]}
        assert compat.take_file_writer_data(writer) == {}
    finally:
        compat.detach_writers()
    assert compat.tracker_file_writer() is None
    compat.forget_indicators('compat_only.')
    assert compat.indicator_definitions({'compat_only.a'}) == {}
    from labml.internal.tracker import tracker_singleton
    assert not any(k.startswith('compat_only.') for k in tracker_singleton().dot_indicators)


def test_tracker_writes_only_to_one_writer(tmp_path):
    path = tmp_path / 'log.jsonl'
    writer = compat.new_file_writer(path)
    compat.write_only_to(writer)
    try:
        tracker.set_scalar('compat_only.*', False)
        tracker.set_global_step(11)
        tracker.save({'compat_only.a': 1.0})
        definitions = compat.indicator_definitions({'compat_only.a', 'other'})
        compat.flush_tracker()  # labml's own finish: flushes to its writer thread, which writes the line
        writer.thread.join(timeout=30)
    finally:
        compat.detach_writers()
    assert list(definitions) == ['compat_only.a'] and definitions['compat_only.a']['class_name'] == 'Scalar'
    assert '"compat_only.a": [[11, [1.0]]]' in path.read_text()
    assert compat.tracker_file_writer() is None


# ---------------------------------------------------------------------- app client

def test_app_thread_has_what_the_bounded_one_uses():
    import labml.internal.app as labml_app_client
    base = compat.app_track_thread_class()
    assert all(callable(getattr(base, m, None)) for m in ('_get_packets', '_send', 'push_data_source', 'stop'))
    assert list(inspect.signature(base.__init__).parameters) == ['self', 'url', 'timeout_seconds', 'daemon']
    thread = base('http://127.0.0.1:9/api/v1/default/track?', timeout_seconds=1, daemon=True)
    assert thread.url.startswith('http://127.0.0.1:9/') and thread.queue.empty()
    assert thread.is_stopped is False and thread.errored is False and thread.handlers == []
    packet = compat.empty_app_packet()
    assert packet.data == {}
    # labml's AppTracker creates the thread by the module's name for it, so replacing that name replaces the class
    assert '_AppTrackThread(' in inspect.getsource(labml_app_client.AppTracker)

    class Replacement(base):
        pass

    try:
        compat.use_app_track_thread(Replacement)
        assert labml_app_client._AppTrackThread is Replacement
    finally:
        labml_app_client._AppTrackThread = base


# ---------------------------------------------------------------------- list of projects

class FakeComputer:
    def __init__(self, folder: Path):
        self.projects_folder = folder


@pytest.fixture
def raced(tmp_path, monkeypatch):
    """A project list with a live entry and a stale one (its folder is gone), where another process deletes the
    stale entry the moment this one tries to (as a second run starting at the same time does)."""
    folder = tmp_path / 'projects'
    folder.mkdir()
    live = tmp_path / 'live_project'
    live.mkdir()
    (folder / 'a.txt').write_text(str(live))
    (folder / 'b.txt').write_text(str(tmp_path / 'deleted_project'))
    real_unlink = Path.unlink

    def unlink_after_the_other_process(self, missing_ok=False):
        if self.name == 'b.txt' and self.exists():
            real_unlink(self)  # the other run was first
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, 'unlink', unlink_after_the_other_process)
    return FakeComputer(folder), live


def test_labml_still_fails_when_another_run_deletes_first(raced):
    # The day this stops raising, labml handles it and the workaround can go
    from labml.internal.computer.configs import Computer
    computer, _ = raced
    labml_get_projects = compat.LABML_GET_PROJECTS or Computer.get_projects  # replaced once a run started here
    with pytest.raises(FileNotFoundError):
        labml_get_projects(computer)


def test_the_workaround_tolerates_it(raced):
    from labml.internal.computer.configs import Computer
    computer, live = raced
    assert compat._get_projects_tolerating_other_runs(computer) == {str(live)}
    assert [p.name for p in computer.projects_folder.iterdir()] == ['a.txt']
    compat.tolerate_concurrent_starts()
    assert Computer.get_projects is compat._get_projects_tolerating_other_runs


def test_quiet_start(workdir, synthetic_data_dir, capfd, monkeypatch):
    """A run's start prints its name and uuid, and neither labml's "Prepare ..." lines, nor the git notice, nor the
    repository's last commit message; the progress and the epoch lines are still printed."""
    from experiments.train import main as train
    monkeypatch.chdir(workdir)  # no git repository here: labml would print its notice
    assert train('evidence_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu', 'epochs=2']) == 0
    out = re.sub(r'\x1b\[[0-9;]*m', '', capfd.readouterr().out)  # without labml's colours
    (run,) = (workdir / 'logs' / 'evidence_mnist').iterdir()
    assert f'evidence_mnist: {run.name}' in out
    for noise in ('Prepare ', 'Not a valid git repository', '[clean]', '[dirty]'):
        assert noise not in out, noise
    assert 'Train:' in out and 'epoch 1/2: train acc' in out and 'epoch 2/2: train acc' in out
    assert 'median u right' in out and 'ETA' in out
