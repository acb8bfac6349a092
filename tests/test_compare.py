"""`python -m experiments.compare`: one table of evaluated runs, from real `evaluation.json` files."""
import json
import shutil
from pathlib import Path

import pytest

from configs.evidence import DEFAULTS
from experiments.compare import ID_METRICS, MISSING, main
from tests.conftest import run_cli
from tests.test_baselines import trained_baselines

pytestmark = pytest.mark.filterwarnings('ignore:Overriding option for model')

BETTER = {'accuracy': max, 'misclassification_auroc': max, 'auroc': max, 'aupr': max,
          'nll': min, 'brier': min, 'ece': min, 'aurc': min, 'fpr95': min}


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory, synthetic_data_dir):
    """The three baselines' smoke runs, each evaluated by `experiments.evaluate` (shared with test_baselines)."""
    return trained_baselines(tmp_path_factory, synthetic_data_dir)


def _flat(evaluation: dict) -> dict:
    """Column → value, straight from an evaluation.json (independently of compare's own parsing)."""
    out = dict(evaluation['id'])
    for score, per_metric in evaluation['selective'].items():
        for metric, v in per_metric.items():
            out[f'selective/{score}/{metric}'] = v
    for set_name, per_score in evaluation['ood'].items():
        for score, per_metric in per_score.items():
            for metric, v in per_metric.items():
                out[f'ood/{set_name}/{score}/{metric}'] = v
    # the missing-pixel sweep's accuracy at 20 % and 50 % of the pixels missing
    sweep = evaluation['missing_pixels']
    for fraction in (0.2, 0.5):
        out[f'missing/{fraction:g}/accuracy'] = sweep['accuracy'][sweep['fractions'].index(fraction)]
    return out


def _markdown_rows(text: str) -> dict:
    """Run label → {column: cell text} from comparison.md."""
    lines = [line for line in text.splitlines() if line.startswith('|')]
    header = [h.strip().rstrip(' ↑↓').strip() for h in lines[0].strip('|').split('|')]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip('|').split('|')]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_compare_marks_the_best_run_per_column(evaluated, tmp_path, monkeypatch, capsys):
    project, runs = evaluated
    monkeypatch.chdir(project)
    out = tmp_path / 'out'
    assert main([r.name for r in runs.values()] + ['--out', str(out), '--columns', 'all']) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / 'comparison.json').read_text())
    md = (out / 'comparison.md').read_text()
    assert md in printed

    flat = {r.name: _flat(json.loads((r / 'evaluation.json').read_text())) for r in runs.values()}
    columns = [c['key'] for c in table['columns']]
    # every metric of every run, ID metrics first
    assert columns[:len(ID_METRICS)] == list(ID_METRICS)
    assert set(columns) == set().union(*flat.values())
    assert 'ood/fashion_mnist/mutual_information/auroc' in columns and 'selective/msp/aurc' in columns
    assert columns.index('selective/entropy/aurc') < columns.index('ood/fashion_mnist/entropy/auroc')
    assert not any('/u/' in c for c in columns)  # no baseline has an uncertainty mass

    labels = {row['run']: row['label'] for row in table['rows']}
    assert labels[runs['ensemble_mnist'].name].startswith(f"ensemble_mnist {runs['ensemble_mnist'].name[:8]} (M=3")
    assert labels[runs['mc_dropout_mnist'].name].startswith('mc_dropout_mnist') and 'T=4' in \
        labels[runs['mc_dropout_mnist'].name]
    cells = _markdown_rows(md)
    for column in columns:
        values = {run: f.get(column) for run, f in flat.items()}
        present = {run: v for run, v in values.items() if v is not None}
        pick = BETTER[column.rsplit('/', 1)[-1]]
        best = pick(present.values())
        # bold only where at least two runs have a value (one run alone is compared with nothing)
        expected = sorted(run for run, v in present.items() if v == best) if len(present) >= 2 else []
        assert sorted(table['best'][column]) == expected, column
        for run, v in values.items():
            row = next(r for r in table['rows'] if r['run'] == run)
            assert row['values'][column] == v
            cell = cells[labels[run]][column]
            if v is None:
                # the softmax model has no mutual information; only ensembles have a disagreement
                assert cell == MISSING and (
                    (column.split('/')[-2] == 'mutual_information' and run == runs['softmax_mnist'].name)
                    or (column.split('/')[-2] == 'disagreement' and run != runs['ensemble_mnist'].name))
            else:
                assert cell == (f'**{v:.4f}**' if run in expected else f'{v:.4f}'), (column, run, cell)


def test_ties_are_all_marked_and_an_unevaluated_run_is_an_error(evaluated, tmp_path, monkeypatch, capsys):
    project, runs = evaluated
    monkeypatch.chdir(tmp_path)
    # a copy of the softmax run (same evaluation) ties with it on every column
    twin = tmp_path / 'twin' / 'softmax_mnist' / 'a0a0a0a0a0a0'
    shutil.copytree(runs['softmax_mnist'], twin)
    assert main([str(runs['softmax_mnist']), str(twin), str(runs['ensemble_mnist']), '--columns', 'all',
                 '--out', str(tmp_path)]) == 0
    table = json.loads((tmp_path / 'comparison.json').read_text())
    for column, best in table['best'].items():
        assert (runs['softmax_mnist'].name in best) == (twin.name in best), column
    # only the ensemble has a mutual information: nothing to compare it with, so nothing is bold
    assert table['best']['ood/fashion_mnist/mutual_information/auroc'] == []

    (twin / 'evaluation.json').unlink()
    capsys.readouterr()
    assert main([str(runs['softmax_mnist']), str(twin)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: run a0a0a0a0a0a0 has not been evaluated')
    assert f'python -m experiments.evaluate {twin}' in err


def test_columns_keeps_those_in_that_order_and_refuses_unknown_ones(evaluated, tmp_path, monkeypatch, capsys):
    project, runs = evaluated
    monkeypatch.chdir(project)
    names = [r.name for r in runs.values()]
    wanted = ['ood/fashion_mnist/entropy/auroc', 'accuracy', 'missing/0.5/accuracy']
    assert main(names + ['--out', str(tmp_path / 'a'), '--columns', ','.join(wanted)]) == 0
    table = json.loads((tmp_path / 'a' / 'comparison.json').read_text())
    assert [c['key'] for c in table['columns']] == wanted
    md = (tmp_path / 'a' / 'comparison.md').read_text()
    assert md.splitlines()[0].startswith('| run | ood/fashion_mnist/entropy/auroc ↑ | accuracy ↑ | missing/0.5/accuracy ↑ |')
    for row in table['rows']:
        evaluation = json.loads((Path(row['path']) / 'evaluation.json').read_text())
        assert row['values'] == {c: _flat(evaluation)[c] for c in wanted}
    capsys.readouterr()
    assert main(names + ['--out', str(tmp_path / 'b'), '--columns', 'accuracy,ood/fashion_mnist/u/aurox']) == 2
    err = capsys.readouterr().err
    assert 'no column ood/fashion_mnist/u/aurox' in err and 'ood/fashion_mnist/entropy/auroc' in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'b').exists()


def test_compare_as_a_process(evaluated):
    project, runs = evaluated
    r = run_cli('experiments.compare', runs['softmax_mnist'].name, runs['mc_dropout_mnist'].name, cwd=project,
                timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '| run | accuracy ↑ |' in r.stdout and 'comparison.md' in r.stdout
    # by default into the project's logs/compare/<families>-<hash>/, with the headline columns
    (out,) = (project / 'logs' / 'compare').iterdir()
    assert out.name.startswith('mc_dropout_mnist+softmax_mnist-') and str(out / 'comparison.md') in r.stdout
    columns = [c['key'] for c in json.loads((out / 'comparison.json').read_text())['columns']]
    assert columns[:len(ID_METRICS)] == list(ID_METRICS) and 'ood/fashion_mnist/entropy/auroc' in columns
    assert not any(c.startswith('selective/') or c.endswith(('/aupr', '/fpr95')) for c in columns)
    # the same runs again: the same folder
    r = run_cli('experiments.compare', runs['mc_dropout_mnist'].name, runs['softmax_mnist'].name, cwd=project,
                timeout=120)
    assert r.returncode == 0 and [p.name for p in (project / 'logs' / 'compare').iterdir()] == [out.name]


def test_one_run_is_bold_nowhere(evaluated, tmp_path):
    _, runs = evaluated
    assert main([str(runs['softmax_mnist']), '--out', str(tmp_path)]) == 0
    table = json.loads((tmp_path / 'comparison.json').read_text())
    assert table['rows'][0]['best'] == [] and '**' not in (tmp_path / 'comparison.md').read_text()


def test_unknown_run_is_an_error(evaluated, monkeypatch, capsys):
    project, _ = evaluated
    monkeypatch.chdir(project)
    assert main(['ffffffffffff']) == 2
    assert "error: no run with uuid 'ffffffffffff'" in capsys.readouterr().err


def test_labels_name_the_hyperparameters_that_tell_runs_apart():
    from experiments.compare import key_settings, row_label
    base = {'loss_func': 'cross_entropy_bayes_risk', 'outputs_to_evidence': 'exp', 'kl_schedule': 'constant',
            'kl_coef': 0.005, 'optimizer.weight_decay': 0.0, 'dataset': 'mnist', 'epochs': 20, 'prior_weight': 1.0,
            'fisher_coef': 0.005}
    label = row_label('evidence_mnist', 'abcdef0123', key_settings('evidence_mnist', base))
    assert label == 'evidence_mnist abcdef01 (cross_entropy_bayes_risk, exp, constant, kl=0.005, ep=20)'
    other = {**base, 'loss_func': 'fisher_information_loss', 'kl_schedule': 'paper', 'fisher_coef': 0.5,
             'optimizer.weight_decay': 5e-4, 'seed': 2}
    assert row_label('evidence_mnist', 'abcdef0123', key_settings('evidence_mnist', other)) == \
        'evidence_mnist abcdef01 (fisher_information_loss, exp, paper, λ_F=0.5, wd=0.0005, ep=20, seed=2)'


@pytest.fixture(scope='module')
def seed_runs(tmp_path_factory, synthetic_data_dir):
    """Three evaluated evidential smoke runs: seeds 1 and 2 of one setting, and seed 1 with dropout 0.25."""
    from experiments import evaluate
    from experiments.evidence_mnist import main as train
    from configs.compat import silence_monitor
    from tests.test_baselines import LABML_YAML
    project = tmp_path_factory.mktemp('seeds')
    (project / '.labml.yaml').write_text(LABML_YAML)
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        for name, extra in (('s1', ['seed=1']), ('s2', ['seed=2']), ('p25', ['seed=1', 'dropout=0.25'])):
            before = set((project / 'logs' / 'evidence_mnist').glob('*'))
            assert train(['preset=smoke', f'data_dir={synthetic_data_dir}', 'device=cpu', *extra]) == 0
            (runs[name],) = set((project / 'logs' / 'evidence_mnist').glob('*')) - before
        try:
            for run in runs.values():
                assert evaluate.main([run.name, '--fgsm-samples', '0', '--pgd-samples', '0', '--missing-samples', '64',
                                      '--device', 'cpu']) == 0
        finally:
            silence_monitor(False)  # evaluate silences labml's monitor
    return project, runs


def test_labels_name_every_setting_in_which_runs_differ(seed_runs, tmp_path, monkeypatch):
    project, runs = seed_runs
    monkeypatch.chdir(project)
    assert main([r.name for r in runs.values()] + ['--out', str(tmp_path)]) == 0
    labels = {row['run']: row['label'] for row in json.loads((tmp_path / 'comparison.json').read_text())['rows']}
    # seed is a key setting where given; dropout is not, but it differs between these runs
    assert labels[runs['s1'].name].endswith('seed=1, p=0.5)') and labels[runs['s2'].name].endswith('seed=2, p=0.5)')
    assert labels[runs['p25'].name].endswith('seed=1, p=0.25)')


def test_over_seeds_averages_runs_that_differ_only_in_seed(seed_runs, tmp_path, monkeypatch, capsys):
    import statistics
    project, runs = seed_runs
    monkeypatch.chdir(project)
    assert main([r.name for r in runs.values()] + ['--over-seeds', '--out', str(tmp_path)]) == 0
    table = json.loads((tmp_path / 'comparison.json').read_text())
    assert [row['runs'] for row in table['rows']] == [[runs['s1'].name, runs['s2'].name], [runs['p25'].name]]
    pair, single = table['rows']
    head = DEFAULTS['outputs_to_evidence']
    assert pair['label'] == (f'evidence_mnist (cross_entropy_bayes_risk, {head}, constant, kl=0.01, ep=1, p=0.5) '
                             '× 2 seeds (1, 2)')
    assert single['label'].endswith('p=0.25) × 1 seed (1)')
    flat = {k: _flat(json.loads((r / 'evaluation.json').read_text())) for k, r in runs.items()}
    cells = _markdown_rows((tmp_path / 'comparison.md').read_text())
    for column in (c['key'] for c in table['columns']):
        two = [flat['s1'][column], flat['s2'][column]]
        assert pair['values'][column] == pytest.approx(statistics.mean(two), abs=1e-12), column
        assert pair['std'][column] == pytest.approx(statistics.stdev(two), abs=1e-12), column
        assert single['values'][column] == flat['p25'][column] and single['std'][column] is None
        # the best mean is marked, and the cell shows mean ± std
        best = (max if BETTER[column.rsplit('/', 1)[-1]] is max else min)(pair['values'][column],
                                                                            single['values'][column])
        assert (column in pair['best']) == (pair['values'][column] == best)
        mean = f"{pair['values'][column]:.4f}"
        assert cells[pair['label']][column] == \
            (f'**{mean}**' if column in pair['best'] else mean) + f" ± {pair['std'][column]:.4f}"
    assert 'mean ± sample standard deviation' in capsys.readouterr().out


def test_settings_unknown_for_some_runs_neither_split_groups_nor_label_them():
    """Runs made before every configuration was computed at start lack some settings in `configs.yaml`:
    only the settings known for all compared runs decide groups and labels."""
    from pathlib import Path
    from experiments.compare import Row, label_rows, over_seeds
    settings = {'loss_func': 'cross_entropy_bayes_risk'}

    def row(run, config, accuracy):
        return Row(run=run, experiment='evidence_mnist', label='', path=Path(run), settings=dict(settings),
                   config=config, runs=[run], values={'accuracy': accuracy})

    rows = [row('old1', {'seed': 5, 'dropout': 0.5}, 0.90),
            row('new2', {'seed': 2, 'dropout': 0.5, 'fisher_coef': 0.005}, 0.92),
            row('new3', {'seed': 2, 'dropout': 0.25, 'fisher_coef': 0.005}, 0.95)]
    label_rows(rows)
    assert [r.label for r in rows] == [f'evidence_mnist {n} (cross_entropy_bayes_risk, {extra})' for n, extra in
                                       (('old1', 'p=0.5, seed=5'), ('new2', 'p=0.5, seed=2'), ('new3', 'p=0.25, seed=2'))]
    pair, single = over_seeds(rows)
    assert pair.runs == ['old1', 'new2'] and single.runs == ['new3']
    assert pair.values['accuracy'] == pytest.approx(0.91) and pair.std['accuracy'] == pytest.approx(0.02 / 2 ** 0.5)  # |a − b| / √2
    assert pair.label == 'evidence_mnist (cross_entropy_bayes_risk, p=0.5) × 2 seeds (5, 2)'
