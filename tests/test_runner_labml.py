"""The one workaround of labml 0.5.3 in `configs/runner.py`: runs starting at once must not die because another
run deleted a stale entry of labml's project list first (`~/.labml/projects/*.txt`)."""
from pathlib import Path

import pytest
from labml.internal.computer.configs import Computer

from configs import runner



def original():
    """labml's own method, whether or not a training in this process has replaced it already."""
    return runner.LABML_GET_PROJECTS or Computer.get_projects


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
    computer, _ = raced
    with pytest.raises(FileNotFoundError):
        original()(computer)


def test_the_workaround_tolerates_it(raced):
    computer, live = raced
    assert runner._get_projects_tolerating_other_runs(computer) == {str(live)}
    assert [p.name for p in computer.projects_folder.iterdir()] == ['a.txt']
    runner.tolerate_concurrent_starts()
    assert Computer.get_projects is runner._get_projects_tolerating_other_runs
