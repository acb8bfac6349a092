"""The suite writes nothing into the user's home folder: labml's project list goes to the suite's own."""
import os
from pathlib import Path

from tests.conftest import USER_HOME, run_cli


def _entries(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_labml_writes_into_the_suites_home_folder(workdir, synthetic_data_dir):
    home = Path(os.environ['HOME'])
    assert home.name.startswith('evidential-tests-home-') and Path.home() == home != USER_HOME
    users_projects = _entries(USER_HOME / '.labml' / 'projects')
    r = run_cli('experiments.evidence_mnist', 'preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu',
                cwd=workdir)
    assert r.returncode == 0, r.stderr[-2000:]
    # labml registered the project in the suite's home (the child inherited HOME), not in the user's
    assert _entries(home / '.labml' / 'projects')
    assert _entries(USER_HOME / '.labml' / 'projects') == users_projects
