"""`python -m experiments.eval_speed`: images/s of the prediction pass and the wall time of a default evaluate."""
import json

from tests.conftest import run_cli


def test_a_family_is_trained_evaluated_with_its_defaults_and_timed(workdir, synthetic_data_dir):
    r = run_cli('experiments.eval_speed', '--family', 'softmax_mnist', '--train-size', '128', '--mnist-c-samples', '16',
                '--pgd-samples', '4', '--fgsm-samples', '16',
                '--data-dir', str(synthetic_data_dir), cwd=workdir, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    m = json.loads(lines[-1])['softmax_mnist']
    timing = m['timing']
    # every default stage that applies to softmax ran (its default holdout gives the post-hoc steps their data)
    assert {'predict', 'ood', 'fgsm', 'pgd', 'missing_pixels', 'mnist_c', 'temperature', 'conformal',
            'figures'} <= set(timing)
    assert sum(timing.values()) < m['evaluate_s']  # the process also starts, loads and writes
    assert 'evaluated with every default but --fgsm-samples 16 --pgd-samples 4' in lines[0]
    assert abs(m['predict_images_per_s'] - 256 / timing['predict']) <= 1e-6 * m['predict_images_per_s']
    row = next(line for line in lines if line.startswith('softmax_mnist '))
    assert f"{m['evaluate_s']:.1f}" in row and f"{m['predict_images_per_s']:,.0f}" in row


def test_an_unknown_family_is_a_usage_error(workdir, synthetic_data_dir):
    r = run_cli('experiments.eval_speed', '--family', 'nope_mnist', '--data-dir', str(synthetic_data_dir), cwd=workdir)
    assert r.returncode == 2 and 'unknown family nope_mnist; known: ' in r.stderr
    r = run_cli('experiments.eval_speed', '--pgd-samples', '-1', '--data-dir', str(synthetic_data_dir), cwd=workdir)
    assert r.returncode == 2 and '--pgd-samples must be >= 0' in r.stderr
