"""Generated bad input: every key of every registered family, fed generated values.

The contract: `configs.cli.resolve` either returns (the values are accepted, and are then of the key's type,
finite and within the bounds) or raises `UsageError` with a one-line, printable message - never another
exception. In process with Hypothesis (many examples, fast); then a handful of values through the entry point's
`main()` in process, and two of them as real processes: exit 2, one stderr line, no run folder.
"""
import contextlib
import io
import math
from typing import get_origin

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from configs import registry
from configs.cli import INT_LIMIT, UPPER_BOUNDS, UsageError, resolve, schema
from tests.conftest import run_cli

FAMILIES = registry.all_families()
FIELDS = {f.name: schema(f.configs, f.defaults) for f in FAMILIES}
ALL_KEYS = sorted({k for fields in FIELDS.values() for k in fields})

# Spellings a person (or a script) might type: numbers at and past every edge, NaN / inf in every spelling,
# literals of every kind and nesting, unicode, empty and blank strings.
SPELLINGS = [
    'nan', 'NaN', '-nan', '+nan', 'NAN', 'inf', '-inf', '+inf', 'Inf', 'infinity', '-Infinity', '1e999', '-1e999',
    '1e308', '1.8e308', '-0.0', '-0', '0', '0.0', '1e-320', '5e-324', '1e-400', '1e100', '-1e100', '1e16',
    '9007199254740993', str(2 ** 63), str(2 ** 63 - 1), str(-2 ** 63), '9' * 30, '-' + '9' * 30, '1' + '0' * 400,
    '9' * 5000, '0x10', '0o17', '0b101', '1_000', '3.0', '3.5', ' 3', '3 ', '+3', '', ' ', '\t', 'True', 'False',
    'true', 'FALSE', 'None', '...', 'Ellipsis', '1j', '1+2j', "b'x'", "{1: 2}", "{1}", "{[1]: 2}", "set()", '()',
    '[]', '[[[[1]]]]', '[' * 200 + ']' * 200, '(' * 120 + ')' * 120, '(1,)', '(0.9, 0.999)', '(0.9, nan)',
    '(1e999, 0.5)', '(True, False)', '[(0, 0.), (1, 1.)]', '[(0, 0.), (1, 1e999)]', '[(0, 1, 2)]', '[1, 2]',
    '[(0.5, 0.), (0.1, 1.)]', "[('a', 'b')]", '[(0, None)]', "'quoted'", '"', "'", 'ünïcödé', '数字', '\u200b',
    '\u202e', 'é' * 5, 'a\nb', 'a\rb', '\x1b[31m', '\udcff', 'cpu', 'cuda', 'cuda:99', 'cuda:-1', 'cpu:0', 'meta',
    'mps', 'auto', 'http://x', 'ftp://x', 'http://', '~', '~nobody_here', '/', '.', '..', 'a' * 5000,
    "__import__('os').system('touch PWNED')", 'lambda: 0', 'f"{1}"', '1 if 1 else 0', 'Adam', 'adam', 'constant',
    'cosine', 'mnist', 'lenet', 'exp', '0123456789abcdef',
]

literals = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.lists(children, max_size=3).map(tuple)
    | st.dictionaries(st.integers(), children, max_size=2),
    max_leaves=12)

values = st.one_of(
    st.sampled_from(SPELLINGS),
    st.integers().map(str),
    st.integers(min_value=-2 ** 70, max_value=2 ** 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: f'{x:.20e}'),
    literals.map(repr),
    st.text(max_size=30),
)
keys = st.one_of(st.sampled_from(ALL_KEYS), st.sampled_from(ALL_KEYS),
                 st.sampled_from(['optimizer', 'n_classes', 'experiment_name', 'nope', '', 'optimizer.', '.epochs',
                                  'optimizer.parameters', 'EPOCHS', 'preset']))


def _resolve(argv, family):
    with contextlib.redirect_stdout(io.StringIO()):
        return resolve(argv, family)


def _check_accepted(family, overrides):
    fields = FIELDS[family.name]
    for key, value in overrides.items():
        f = fields[key]
        if f.is_option:
            assert value in f.options
            continue
        t = get_origin(f.type) or f.type
        if t in (int, float):
            assert isinstance(value, t) and not isinstance(value, bool), (key, value)
            assert math.isfinite(value), (key, value)
            assert abs(value) <= INT_LIMIT or t is float, (key, value)
            assert value <= UPPER_BOUNDS.get(key, math.inf), (key, value)
        elif t is bool:
            assert isinstance(value, bool)
        elif t is str:
            assert isinstance(value, str) and '\x00' not in value
        elif t in (list, tuple):
            flat = [value]
            while flat:
                v = flat.pop()
                if isinstance(v, (list, tuple)):
                    flat.extend(v)
                else:
                    assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), (key, value)


def _check_outcome(family, argv):
    try:
        values, overrides, want_help = _resolve(argv, family)
    except UsageError as e:
        message = str(e)
        assert message and '\n' not in message and '\r' not in message, repr(message)
        assert message.isprintable(), repr(message)
        message.encode('utf-8')  # printable on a strict UTF-8 stream: no lone surrogates
        return 'refused'
    # any other exception fails the test: that is the bug this test looks for
    assert not want_help
    _check_accepted(family, overrides)
    return 'accepted'


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(FAMILIES), pairs=st.lists(st.tuples(keys, values), min_size=1, max_size=3,
                                                         unique_by=lambda kv: kv[0]),
       preset=st.none() | st.sampled_from(['smoke', 'tuned', 'labml', 'paper', 'nope', '']))
def test_generated_overrides_are_accepted_or_refused_in_one_line(family, pairs, preset):
    argv = [f'{k}={v}' for k, v in pairs] + ([f'preset={preset}'] if preset is not None else [])
    _check_outcome(family, argv)


@settings(max_examples=300, deadline=None, database=None)
@given(family=st.sampled_from(FAMILIES), argv=st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_generated_raw_arguments_are_accepted_or_refused_in_one_line(family, argv):
    if any(a in ('-h', '--help', 'help') for a in argv):
        return
    _check_outcome(family, argv)


@pytest.mark.parametrize('family', FAMILIES, ids=lambda f: f.name)
def test_every_spelling_of_every_key_is_accepted_or_refused(family):
    """Exhaustive over the fixed spellings: every key x every spelling, every family."""
    outcomes = {'accepted': 0, 'refused': 0}
    for key in FIELDS[family.name]:
        for raw in SPELLINGS:
            outcomes[_check_outcome(family, [f'{key}={raw}'])] += 1
    assert outcomes['refused'] > outcomes['accepted'] > 0


@pytest.mark.parametrize('arg, message', [
    ('epochs=1e100', 'epochs=1e100: is too large'),
    ('epochs=20000', 'must be at most 10,000'),
    ('optimizer.learning_rate=nan', 'must be a finite number'),
    ('optimizer.learning_rate=1e999', 'must be a finite number'),
    ('dropout=nan', 'must be a finite number'),
    ('kl_coef=-inf', 'must be a finite number'),
    ('seed=' + '9' * 30, 'is too large'),
    ('train_batch_size=1e6', 'must be at most 65,536'),
    ('log_interval=1e12', 'must be at most 100,000'),
    ('kl_div_coef_schedule=[1, 2]', 'expected List[Tuple[float, float]]'),
    ('optimizer.betas=(0.9, 1e999)', 'must be a finite number'),
])
def test_known_bad_values_are_refused(arg, message):
    with pytest.raises(UsageError, match=None) as e:
        _resolve([arg], registry.get('evidence_mnist'))
    assert message in str(e.value), str(e.value)


def test_every_family_bounds_its_counts():
    """Members, samples and voters have upper bounds in their families' checks (10**18 voters is a typo)."""
    for name, key in (('mc_dropout_mnist', 'mc_samples'), ('ensemble_mnist', 'ensemble_size'),
                      ('packed_mnist', 'num_estimators'), ('vote_mnist', 'n_voters'), ('bayes_mnist', 'mc_samples')):
        with pytest.raises(UsageError, match=r'must be in \['):
            _resolve([f'{key}={10 ** 18}'], registry.get(name))
    assert _resolve(['mc_samples=1000'], registry.get('mc_dropout_mnist'))[1] == {'mc_samples': 1000}


# --------------------------------------------------------------------------------------------- real processes
#: Bad values that get past `resolve`'s types, each through `main()` in process; the first two also as real processes
PROCESS_CASES = [
    (['epochs=1e100'], 'epochs=1e100: is too large'),  # unbounded: a run folder, then an OverflowError in labml
    (['train_batch_size=60000'], 'train_batch_size=60000 is larger than the training set (512 images); use at most 512'),
    (['train_size=600'], 'train_size=600 is larger than the training set (512 images); use at most 512'),
    (['optimizer.learning_rate=nan'], 'must be a finite number'),
    (['resume=' + 'a' * 300], 'no run with uuid'),
]
REAL_PROCESS_CASES = PROCESS_CASES[:2]


def _check_one_error_line(args, message, code, err, out=''):
    assert code == 2, (args, out[-1000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], (args, err)


def test_bad_values_through_main_exit_2_with_one_line(workdir, synthetic_data_dir, monkeypatch, capsys):
    """`experiments.evidence_mnist.main` (what the process runs and exits with): exit 2, one stderr line, no run folder."""
    from experiments.evidence_mnist import main
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    for args, message in PROCESS_CASES:
        code = main(['preset=smoke', f'data_dir={synthetic_data_dir}', *args])
        _check_one_error_line(args, message, code, capsys.readouterr().err)
    assert not (workdir / 'logs').exists()


def test_bad_values_as_real_processes_exit_2_with_one_line(workdir, synthetic_data_dir):
    """Two of them as real processes, run side by side: exit 2, one stderr line, no run folder."""
    from concurrent.futures import ThreadPoolExecutor

    def one(case):
        args, _ = case
        return run_cli('experiments.evidence_mnist', 'preset=smoke', f'data_dir={synthetic_data_dir}', *args,
                       cwd=workdir, timeout=180)

    with ThreadPoolExecutor(len(REAL_PROCESS_CASES)) as pool:
        results = list(pool.map(one, REAL_PROCESS_CASES))
    for (args, message), r in zip(REAL_PROCESS_CASES, results):
        _check_one_error_line(args, message, r.returncode, r.stderr, r.stdout)
    assert not (workdir / 'logs').exists()
