"""The command line of `python -m experiments.evidence_mnist`: every bad input through the `main()` the
process runs (in process, fast), and a few of them, `--help` and missing data as real processes."""
import os
import subprocess
import sys

import pytest

from configs.cli import CHECKS, UsageError, check, coerce, parse_argv, parse_literal, schema, validate
from configs.evidence import EvidenceConfigs
from configs.evidence import DEFAULTS, PRESETS
from experiments.evidence_mnist import main
from tests.conftest import ROOT, run_cli

MODULE = 'experiments.evidence_mnist'


def test_help_lists_every_key_with_default_and_options(workdir):
    r = run_cli(MODULE, '--help', cwd=workdir, timeout=60)
    assert r.returncode == 0, r.stderr
    for needle in ('loss_func', 'squared_error_bayes_risk', 'cross_entropy_bayes_risk', 'max_likelihood_loss',
                   'outputs_to_evidence', 'relu | softplus | exp', 'kl_schedule', 'piecewise | paper | constant | off',
                   'optimizer.learning_rate', 'optimizer.weight_decay', 'epochs', 'train_batch_size',
                   'valid_batch_size', 'seed', 'device', 'data_dir', 'fashion_mnist', 'labml', 'paper', 'smoke'):
        assert needle in r.stdout, needle
    assert not (workdir / 'logs').exists()


BAD_INPUT = [
    (['nonsense_key=1'], "unknown key 'nonsense_key'"),
    (['loss_func=mse'], 'loss_func=mse: unknown option; valid: max_likelihood_loss, cross_entropy_bayes_risk'),
    (['outputs_to_evidence=tanh'], 'valid: relu, softplus, exp'),
    (['optimizer.optimizer=Adamax'], 'valid: Adam, AdamW, SGD'),
    (['epochs=ten'], 'epochs=ten: expected int, got str'),
    (['epochs=-2'], "epochs=-2: must be > 0"),
    (['dropout=1.0'], 'dropout=1.0: must be in [0, 1)'),
    (['optimizer.learning_rate=0'], 'must be > 0'),
    (['fisher_coef=-0.1'], 'fisher_coef=-0.1: must be >= 0'),
    (['preset=fast'], 'preset=fast: unknown preset; valid: labml, paper, tuned, smoke'),
    (['epochs'], "expected key=value"),
    (['kl_div_coef_schedule=[(0.5, 0.), (0.1, 1.)]'], 'fractions must increase'),
    (['device=tpu'], 'device'),
    (['n_classes=3'], 'n_classes cannot be set'),
    (['resume=0123456789abcdef'], "no run with uuid '0123456789abcdef'"),
]
#: Also run as real processes: refused while parsing, by a range check, and by a look-up of the run folder
REAL_PROCESS_CASES = [BAD_INPUT[0], BAD_INPUT[5], BAD_INPUT[14]]


@pytest.mark.parametrize('args, message', BAD_INPUT)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, synthetic_data_dir, args, message, monkeypatch,
                                                            capsys):
    """In process: `main(argv)` is what `python -m experiments.evidence_mnist` runs and exits with."""
    monkeypatch.chdir(workdir)
    assert main([f'data_dir={synthetic_data_dir}', *args]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: ') and message in last, last
    assert 'Traceback' not in err
    assert not (workdir / 'logs').exists()


@pytest.mark.parametrize('args, message', REAL_PROCESS_CASES)
def test_bad_input_as_a_real_process_exits_2_with_one_line(workdir, synthetic_data_dir, args, message):
    r = run_cli(MODULE, f'data_dir={synthetic_data_dir}', *args, cwd=workdir, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and message in last, last
    assert 'Traceback' not in r.stderr
    assert not (workdir / 'logs').exists()


def test_missing_data_exits_2_saying_where_to_put_files(workdir, tmp_path, monkeypatch, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    r = run_cli(MODULE, f'data_dir={empty}', 'preset=smoke', cwd=workdir, timeout=120)
    assert r.returncode == 2
    assert 'Put the uncompressed IDX files' in r.stderr and str(empty / 'MNIST' / 'raw') in r.stderr
    assert not (workdir / 'logs').exists()
    # download=False (in process, the same `main`): no download is tried, the files the run needs are named
    empty = tmp_path / 'empty2'
    empty.mkdir()
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    assert main([f'data_dir={empty}', 'preset=smoke', 'download=False']) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert 'mnist files not found' in last and str(empty / 'MNIST' / 'raw' / 'train-images-idx3-ubyte') in last, last
    assert 'download failed' not in err and not (empty / 'MNIST').exists()
    assert not (workdir / 'logs').exists()


def test_literals_and_types():
    fields = schema(EvidenceConfigs, DEFAULTS)
    assert parse_literal('3e-4') == 3e-4 and parse_literal('abc') == 'abc'
    assert coerce(fields['optimizer.learning_rate'], '1') == 1.0
    assert coerce(fields['epochs'], '2.0') == 2
    assert coerce(fields['optimizer.amsgrad'], 'true') is True
    assert coerce(fields['kl_div_coef_schedule'], '[(0, 0.), (1, 1.)]') == [(0, 0.), (1, 1.)]
    # a uuid of digits stays a string
    assert coerce(fields['resume'], '0123') == '0123'
    with pytest.raises(UsageError, match='expected bool'):
        coerce(fields['optimizer.amsgrad'], '3')
    with pytest.raises(UsageError, match='given twice'):
        parse_argv(['epochs=1', 'epochs=2'])


def test_presets_are_valid_and_documented():
    fields = schema(EvidenceConfigs, DEFAULTS)
    for name, preset in PRESETS.items():
        validate(fields, preset.values)
        assert preset.description
    # the paper preset cites a source for every value it sets
    assert set(PRESETS['paper'].reasons) == set(PRESETS['paper'].values)


def test_device_problems_are_told_apart_by_the_error_type():
    """`evidential.data.DeviceError` (a device torch knows, unusable here) says why; torch's own error, that the name
    is no device at all."""
    with pytest.raises(UsageError, match=r"^device='mps': use auto, cpu, cuda or cuda:N$"):
        check('device', 'mps')
    with pytest.raises(UsageError, match=r"^device='foo': is not a device \("):
        check('device', 'foo')
    with pytest.raises(UsageError, match=r"^device='cuda:99': (CUDA is not available|only \d+ CUDA device)"):
        check('device', 'cuda:99')


def test_help_says_what_every_key_means_and_the_names_a_string_key_takes():
    from configs import registry
    from configs.cli import format_help
    for family in registry.all_families():
        fields = schema(family.configs, family.defaults)
        assert not [k for k, f in fields.items() if not f.help], family.name  # every key has its meaning
        text = format_help(family.prog, fields, family.presets, {**CHECKS, **family.checks})
        assert 'lr_schedule' in text and '[constant | cosine | cosine_epochs]' in text
    circuit = registry.get('circuit_mnist')
    text = format_help(circuit.prog, schema(circuit.configs, circuit.defaults), circuit.presets,
                       {**CHECKS, **circuit.checks})
    assert '[quad-tree-2 | random-binary-tree]' in text and '[cp | tucker]' in text
    # the meaning is the comment above the key in its Configs class
    assert schema(EvidenceConfigs, DEFAULTS)['dropout'].help == 'Dropout before the last layer'


@pytest.mark.parametrize('arg, suggestion', [
    ('epoch=3', 'did you mean epochs'),
    ('loss_func=cross_entropy', 'did you mean cross_entropy_bayes_risk?'),
    ('optimizer.optimizer=adam', 'did you mean Adam'),
    ('lr_schedule=cosin', 'did you mean cosine'),
])
def test_a_near_miss_suggests_the_closest_names(arg, suggestion):
    with pytest.raises(UsageError, match=suggestion):
        validate(schema(EvidenceConfigs, DEFAULTS), dict([arg.split('=')]), CHECKS)


def test_help_into_a_pipe_that_closes_early_prints_no_error(workdir):
    """`--help | head -1`, as a real shell pipeline: the first line, and nothing on stderr."""
    r = subprocess.run(f"{sys.executable} -m {MODULE} --help | head -1", shell=True, cwd=workdir, capture_output=True,
                       text=True, timeout=60, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.stdout.startswith('usage: python -m experiments.evidence_mnist') and r.stderr == ''
