"""`python -m experiments.efficiency`: the app's training step against the bare step of the same model."""
import json
import re

from experiments import efficiency
from tests.conftest import run_cli


def test_the_default_rows_are_the_evidential_default_and_labml_preset_per_precision():
    args = efficiency.parse_args(['--precision', 'fp32', 'bf16'])
    assert efficiency._rows(args) == [('evidence_mnist', None, 'fp32'), ('evidence_mnist', None, 'bf16'),
                                      ('evidence_mnist', 'labml', 'fp32'), ('evidence_mnist', 'labml', 'bf16')]
    args = efficiency.parse_args(['--family', 'all', '--preset', 'smoke'])
    from configs import registry
    assert [r[0] for r in efficiency._rows(args)] == list(registry.FAMILIES)


def test_a_real_run_and_its_bare_step_give_the_ratio(workdir, synthetic_data_dir):
    r = run_cli('experiments.efficiency', '--family', 'softmax_mnist', '--preset', 'smoke',
                '--data-dir', str(synthetic_data_dir), cwd=workdir)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    summary = json.loads(lines[-2])
    s = summary['softmax_mnist smoke fp32']
    assert s['app_samples_per_s'] > 0 and s['bare_samples_per_s'] > 0
    assert abs(s['app_efficiency'] - s['app_samples_per_s'] / s['bare_samples_per_s']) < 1e-12
    assert re.fullmatch(r'app_efficiency\[softmax_mnist smoke fp32\]: \d+\.\d\d', lines[-1])
    assert float(lines[-1].split(': ')[1]) == round(s['app_efficiency'], 2)


def test_an_unknown_family_is_one_line_and_exit_1(workdir, synthetic_data_dir):
    r = run_cli('experiments.efficiency', '--family', 'nope_mnist', '--data-dir', str(synthetic_data_dir), cwd=workdir)
    assert r.returncode == 1 and r.stderr.strip().startswith('error: unknown family nope_mnist; known: ')
