"""
The contract every registered family meets, and the registry's promise that a family needs nothing else.

For each family of `configs/registry.py` (and for a toy family defined only in `tests/toy_family.py` plus
one registry entry): a smoke run trains; a run terminated right after its first epoch's checkpoint and
resumed ends with exactly the weights of an uninterrupted run (same seed); `experiments.evaluate`
scores it with every score the family declares (and only the sweeps its capabilities allow); and
`experiments.compare` puts every family in one table (of smoke runs of its own).
"""
import ast
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from configs import registry
from configs import experiment as experiment_module
from configs.checkpoint import load_checkpoint
from configs.experiment import Interrupted
from configs.histograms import read_epochs
from experiments import compare, evaluate
from experiments.train import main as train

LABML_YAML = 'data_path: data\nexperiments_path: logs\ncheck_repo_dirty: false\n'


def _runs(project: Path, name: str):
    folder = project / 'logs' / name
    return sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime) if folder.exists() else []


def check_family_contract(name: str, project: Path, data_dir: Path) -> Path:
    """Trains, resumes, evaluates one family's smoke run in `project`; returns the evaluated run folder."""
    family = registry.get(name)
    args = ['preset=smoke', f'data_dir={data_dir}', 'device=cpu']
    # uninterrupted: two epochs
    assert train(name, [*args, 'epochs=2']) == 0
    (straight,) = _runs(project, name)
    # SIGTERM right after the first epoch's checkpoint, then `resume=`
    real_save = experiment_module.save_checkpoint

    def save_then_terminate(run_dir, state):
        real_save(run_dir, state)
        if state['epoch'] == 1 and state['status'] == 'running':
            raise Interrupted(signal.SIGTERM)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiment_module, 'save_checkpoint', save_then_terminate)
        assert train(name, [*args, 'epochs=2']) == 128 + signal.SIGTERM
    resumed = _runs(project, name)[-1]
    assert load_checkpoint(resumed)['epoch'] == 1 and load_checkpoint(resumed)['status'] == 'interrupted'
    assert train(name, [f'resume={resumed.name}', f'data_dir={data_dir}', 'device=cpu']) == 0
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert b['epoch'] == 2 and b['status'] == 'completed' and b['samples_seen'] == a['samples_seen']
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), (name, key)
    assert [h['accuracy.valid'] for h in a['history']] == [h['accuracy.valid'] for h in b['history']]
    # one histogram line per epoch (the repeated first epoch of the resume replaced), every validation image
    # counted once in each per-image distribution, the family's own scores among them; the preset kept
    lines = read_epochs(resumed)
    assert [r['epoch'] for r in lines] == [1, 2] and lines[-1]['run']['preset'] == 'smoke', lines[-1]['run']
    n_valid = lines[-1]['n_valid']
    for record in lines:
        for dist_name, hist in record['distributions'].items():
            if dist_name.startswith('sigma.'):  # weights, not images
                assert set(hist['groups']) == {'all'}
                continue
            assert set(hist['groups']) == {'right', 'wrong'}, (name, dist_name)
            assert sum(sum(g['counts']) for g in hist['groups'].values()) == n_valid == 256, (name, dist_name)

    # evaluation: the family's own scores next to entropy and msp, ranked by its primary score
    assert evaluate.main([resumed.name, '--fgsm-samples', '8', '--pgd-samples', '0', '--missing-samples', '64']) == 0
    result = json.loads((resumed / 'evaluation.json').read_text())
    npz = np.load(resumed / 'predictions.npz')
    own = sorted(k.split('/', 1)[1] for k in npz.files if k.startswith('id/')
                 and k.split('/', 1)[1] not in ('probs', 'labels', 'evidence'))
    assert set(result['ood']['fashion_mnist']) == {'entropy', 'msp', *own}
    assert {'p_max', 'entropy', *own} <= set(lines[-1]['distributions']), (name, list(lines[-1]['distributions']))
    assert set(result['selective']) == {'entropy', 'msp', *own}
    assert result['id_score'] == family.primary_score
    caps = family.capabilities
    assert ('u' in own) == caps.dirichlet and ('mutual_information' in own) == caps.samples
    assert ('rotation' in result) == caps.dirichlet and ('fgsm' in result) == caps.input_gradients
    # missing pixels, for every family: integrated out by the circuit, filled with black for the others
    sweep = result['missing_pixels']
    assert sweep['missing_pixels'].startswith('integrated' if caps.marginalises_missing else 'filled')
    assert len(sweep['accuracy']) == len(sweep['fractions']) == 10 and len(sweep['patterns']) == 5
    assert set(sweep['mean_score']) == {'entropy', 'msp', *own}
    no_missing = float((npz['id/probs'][:sweep['n_samples']].argmax(1) == npz['id/labels'][:sweep['n_samples']]).mean())
    # (sampling families draw new samples: close, not equal)
    assert sweep['accuracy'][0] == pytest.approx(no_missing, abs=0.1 if caps.samples else 1e-6)
    assert 'eval_missing_pixels.png' in result['figures'].values()
    return resumed


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp('families')
    (folder / '.labml.yaml').write_text(LABML_YAML)
    return folder


@pytest.mark.parametrize('name', registry.names())
def test_every_family_trains_resumes_evaluates(name, project, synthetic_data_dir, monkeypatch):
    monkeypatch.chdir(project)
    check_family_contract(name, project, synthetic_data_dir)


def test_every_family_in_one_comparison(tmp_path, synthetic_data_dir, monkeypatch):
    """One smoke run of each family, evaluated without the FGSM and missing-pixel sweeps, in one table."""
    (tmp_path / '.labml.yaml').write_text(LABML_YAML)
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name in registry.names():
        assert train(name, ['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu']) == 0, name
        (runs[name],) = _runs(tmp_path, name)
        assert evaluate.main([runs[name].name, '--fgsm-samples', '0', '--pgd-samples', '0',
                              '--missing-samples', '0']) == 0, name
    assert compare.main([str(r) for r in runs.values()] + ['--out', str(tmp_path / 'cmp')]) == 0
    table = json.loads((tmp_path / 'cmp' / 'comparison.json').read_text())
    assert [row['experiment'] for row in table['rows']] == list(runs)
    for row, run in zip(table['rows'], runs.values()):
        evaluation = json.loads((run / 'evaluation.json').read_text())
        assert row['values']['accuracy'] == pytest.approx(evaluation['id']['accuracy'])
        assert row['label'].startswith(f"{row['experiment']} {run.name[:8]}")


def test_a_new_family_needs_only_its_configs_and_a_registry_line(tmp_path, synthetic_data_dir, monkeypatch):
    """`tests/toy_family.py` (Configs, presets, checks, labels, a score of its own) + one registry entry."""
    monkeypatch.setitem(registry.FAMILIES, 'toy_mnist', 'tests.toy_family')
    (tmp_path / '.labml.yaml').write_text(LABML_YAML)
    monkeypatch.chdir(tmp_path)
    run = check_family_contract('toy_mnist', tmp_path, synthetic_data_dir)
    result = json.loads((run / 'evaluation.json').read_text())
    assert set(result['ood']['fashion_mnist']) == {'entropy', 'msp', 'margin'}
    # its own checks and labels
    assert train('toy_mnist', ['preset=smoke', f'data_dir={synthetic_data_dir}', 'temperature=0']) == 2
    assert compare.main([str(run), '--out', str(tmp_path / 'cmp')]) == 0
    label = json.loads((tmp_path / 'cmp' / 'comparison.json').read_text())['rows'][0]['label']
    assert 'T=2' in label


def _imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def _without_main_block(tree: ast.Module) -> ast.Module:
    """The module without its `if __name__ == '__main__':` block (where a `main()`'s exit code becomes the process's)."""
    def is_main(node):
        return isinstance(node, ast.If) and "__name__ == '__main__'" in ast.unparse(node.test).replace('"', "'")
    tree.body = [node for node in tree.body if not is_main(node)]
    return tree


def test_layering():
    """`configs/` never imports `experiments`, `evidential/` neither `configs`, `experiments`, labml nor labml_nn (it
    is tensor code), no family imports the evidential family's `configs.evidence`, and only the
    `if __name__ == '__main__'` lines exit."""
    root = Path(__file__).resolve().parent.parent
    for package, forbidden in (('configs', ('experiments',)),
                               ('evidential', ('experiments', 'configs', 'labml', 'labml_nn'))):
        for path in (root / package).rglob('*.py'):
            for module in _imported_modules(path):
                assert module.split('.')[0] not in forbidden, (path, module)
    # families share through `configs.registry` and `configs.lenet`, never through the evidential family's module
    for path in [*(root / 'configs').rglob('*.py'), root / 'tests' / 'toy_family.py']:
        assert 'configs.evidence' not in list(_imported_modules(path)), path
    for path in [*(root / 'configs').rglob('*.py'), *(root / 'evidential').rglob('*.py'),
                 *(root / 'experiments').rglob('*.py')]:
        for node in ast.walk(_without_main_block(ast.parse(path.read_text()))):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                assert name not in ('sys.exit', 'os._exit', 'SystemExit', 'exit', 'quit'), (path, node.lineno, name)
