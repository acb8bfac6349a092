import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
# A home folder of the suite's own, for this process and every process it starts: labml keeps a list of
# projects in ~/.labml (and the dashboard its data), which the tests must not leave behind in the user's
USER_HOME = Path.home()
_HOME = tempfile.mkdtemp(prefix='evidential-tests-home-')
os.environ['HOME'] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (ROOT.parent / 'shared' / 'data').resolve()
sys.path.insert(0, str(ROOT))

from tests.idx import write_dataset  # noqa: E402


@pytest.fixture(scope='session')
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A data folder with small, learnable synthetic MNIST and FashionMNIST IDX files (512 train / 256 test)."""
    root = tmp_path_factory.mktemp('data')
    write_dataset(root, 'MNIST', seed=0)
    write_dataset(root, 'FashionMNIST', seed=1)
    return root


@pytest.fixture(scope='session')
def real_data_dir() -> Path:
    """`../shared/data` with the real MNIST files; tests using it skip where it is absent (a fresh clone)."""
    if not (SHARED_DATA / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte').exists():
        pytest.skip(f'real data not found at {SHARED_DATA}')
    return SHARED_DATA


def run_cli(module: str, *args: str, cwd: Path, timeout: float = 300, env=None):
    """Runs `python -m module args` as a real process in `cwd` (which must hold a .labml.yaml)."""
    import subprocess
    full_env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1', **(env or {})}
    return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty project-like folder: labml writes logs/ and data/ here, not into the repo."""
    (tmp_path / '.labml.yaml').write_text('data_path: data\nexperiments_path: logs\ncheck_repo_dirty: false\n')
    return tmp_path


@pytest.fixture
def smoke_run(workdir, synthetic_data_dir, monkeypatch) -> Path:
    """A finished smoke run of the evidential family (trained in this process, in `workdir`, which is the working
    directory): its run folder."""
    from experiments.train import main as train
    monkeypatch.chdir(workdir)
    assert train('evidence_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu']) == 0
    (run,) = (workdir / 'logs' / 'evidence_mnist').iterdir()
    return run


@pytest.fixture(autouse=True, scope='session')
def mnist_c_only_where_asked():
    """MNIST-C predicts each image it uses 55 times, and the suite evaluates dozens of runs in this process: here
    `--mnist-c-samples` defaults to 0 (not run), and the tests of MNIST-C ask for it (tests/test_mnist_c.py)."""
    from dataclasses import replace
    from experiments.evaluation.perturbations import mnist_c
    default = mnist_c.PERTURBATION.samples
    mnist_c.PERTURBATION.samples = replace(default, default=0)
    yield
    mnist_c.PERTURBATION.samples = default
