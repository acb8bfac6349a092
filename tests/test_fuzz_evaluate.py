"""Generated bad input for `experiments.evaluate`: `--ood-file` contents and the arguments.

`load_ood_files` either returns `uint8 [N, 28, 28]` arrays or raises `EvaluateError` with a one-line message -
never another exception, never an unpickled object. In process with Hypothesis; then bad arguments and a
pickle with side effects through `evaluate.main`, the pickle and a bad device also as real processes (exit 2,
nothing written).
"""
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from experiments.evaluation import EvaluateError
from experiments.evaluation.inputs import load_ood_file, load_ood_files
from tests.conftest import run_cli

DTYPES = ['uint8', 'int8', 'uint16', 'int32', 'int64', 'float16', 'float32', 'float64', 'bool', 'complex64',
          '>u2', '<f4', 'U3', 'S2', 'V4', [('a', 'u1'), ('b', 'u1')], 'datetime64[s]']
shapes = st.one_of(
    st.lists(st.integers(0, 30), min_size=0, max_size=5).map(tuple),
    st.tuples(st.integers(0, 5), st.just(28), st.just(28)),
    st.tuples(st.integers(0, 5), st.sampled_from([1, 2]), st.just(28), st.just(28)),
    st.tuples(st.integers(0, 5), st.sampled_from([27, 28, 29]), st.sampled_from([28, 1, 784])),
)
damage = st.one_of(st.none(), st.tuples(st.just('truncate'), st.integers(0, 4000)),
                   st.tuples(st.just('flip'), st.integers(0, 127), st.integers(0, 255)),
                   st.tuples(st.just('append'), st.binary(max_size=64)))


def _check(paths):
    try:
        sets = load_ood_files([str(p) for p in paths])
    except EvaluateError as e:
        message = str(e)
        assert message.startswith('--ood-file ') and '\n' not in message, repr(message)
        return None
    for images in sets.values():
        assert images.dtype == np.uint8 and images.ndim == 3 and images.shape[1:] == (28, 28) and len(images) >= 1
        assert images.flags['C_CONTIGUOUS']
    return sets


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), shape=shapes, fortran=st.booleans(), nan=st.booleans(), damage=damage)
def test_generated_arrays_are_loaded_or_refused_in_one_line(dtype, shape, fortran, nan, damage):
    array = np.zeros(shape, dtype=np.dtype(dtype) if not isinstance(dtype, list) else np.dtype(dtype))
    if nan and array.dtype.kind == 'f' and array.size:
        array.flat[0] = np.nan
    if fortran:
        array = np.asfortranarray(array)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'generated.npy'
        np.save(path, array)
        data = path.read_bytes()
        if damage is not None:
            if damage[0] == 'truncate':
                data = data[:damage[1]]
            elif damage[0] == 'flip' and damage[1] < len(data):
                data = data[:damage[1]] + bytes([damage[2]]) + data[damage[1] + 1:]
            elif damage[0] == 'append':
                data = data + damage[1]
            path.write_bytes(data)
        result = _check([path])
        intact = damage is None or damage[0] == 'append'
        valid = (array.dtype == np.uint8 and len(shape) in (3, 4) and shape[0] >= 1 and shape[-2:] == (28, 28)
                 and (len(shape) == 3 or shape[1] == 1))
        if damage is None:
            assert (result is not None) == valid, (dtype, shape)
        if result is not None and intact:
            assert np.array_equal(result['generated'], array.reshape(shape[0], 28, 28))


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b'', b'\x93NUMPY', b'\x93NUMPY\x01\x00',
                                                               b'\x93NUMPY\x02\x00', b'\x93NUMPY\x03\x00',
                                                               b'PK\x03\x04', b'\x80\x04']))
def test_generated_bytes_are_refused_in_one_line(data, prefix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'bytes.npy'
        path.write_bytes(prefix + data)
        _check([path])


def test_headers_that_lie_are_refused_before_allocating(tmp_path):
    """A header promising 10^12 images (or a few thousand, with 100 bytes of data) is refused from its size."""
    for n, name in ((10 ** 12, 'huge.npy'), (5000, 'short.npy'), (1_000_001, 'too_many.npy')):
        header = {'descr': '|u1', 'fortran_order': False, 'shape': (n, 28, 28)}
        with open(tmp_path / name, 'wb') as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b'\0' * 100)
        with pytest.raises(EvaluateError, match='truncated|at most 1,000,000') as e:
            load_ood_file(tmp_path / name)
        assert '\n' not in str(e.value)


class _SideEffect:
    """Unpickling this creates the file `marker`: proof that a loader unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _pickled_files(folder: Path, marker: Path):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / 'objects.npy', np.array([_SideEffect(marker)], dtype=object), allow_pickle=True)
    (folder / 'raw_pickle.npy').write_bytes(pickle.dumps(_SideEffect(marker)))
    np.savez(folder / 'npz_in_disguise.npy', images=np.zeros((2, 28, 28), np.uint8))
    with open(folder / 'object_header.npy', 'wb') as f:  # an object dtype in the header, pickled data behind it
        np.lib.format.write_array_header_1_0(f, {'descr': '|O', 'fortran_order': False, 'shape': (1, 28, 28)})
        f.write(pickle.dumps(_SideEffect(marker)))
    return [folder / n for n in ('objects.npy', 'raw_pickle.npy', 'npz_in_disguise.npy', 'object_header.npy')]


def test_pickles_with_side_effects_are_never_unpickled(tmp_path):
    marker = tmp_path / 'UNPICKLED'
    for path in _pickled_files(tmp_path / 'bad', marker):
        with pytest.raises(EvaluateError) as e:
            load_ood_file(path)
        assert '\n' not in str(e.value)
    assert not marker.exists()
    # the check is real: numpy with allow_pickle=True would have run it
    np.load(tmp_path / 'bad' / 'objects.npy', allow_pickle=True)
    assert marker.exists()


def test_odd_paths_are_refused_in_one_line(tmp_path):
    (tmp_path / 'a_dir.npy').mkdir()
    (tmp_path / 'empty.npy').write_bytes(b'')
    os.mkfifo(tmp_path / 'fifo.npy')
    os.symlink(tmp_path / 'loop.npy', tmp_path / 'loop.npy')
    os.symlink('/dev/zero', tmp_path / 'zero.npy')
    for p in ('a_dir.npy', 'empty.npy', 'fifo.npy', 'loop.npy', 'zero.npy', 'missing.npy', 'x' * 300 + '.npy',
              'bad name!.npy', 'id.npy'):
        assert _check([tmp_path / p]) is None, p
    good = tmp_path / 'good.npy'
    np.save(good, np.zeros((2, 1, 28, 28), np.uint8))
    (tmp_path / 'other').mkdir()
    np.save(tmp_path / 'other' / 'good.npy', np.zeros((2, 28, 28), np.uint8))
    assert _check([good, tmp_path / 'other' / 'good.npy']) is None  # two sets of one name
    assert _check([good])['good'].shape == (2, 28, 28)


# --------------------------------------------------------------------------------------------- real processes
def test_evaluate_arguments_and_pickles_as_real_processes(workdir, synthetic_data_dir, monkeypatch, tmp_path, capsys):
    """Bad arguments and pickled --ood-files: exit 2, an error line last, nothing written or run. Every case through
    `evaluate.main` in process (what the command runs; argparse's refusals exit from it), the pickles and the device
    also as real processes, side by side."""
    from concurrent.futures import ThreadPoolExecutor
    from experiments import evaluate
    from experiments.evidence_mnist import main as train
    monkeypatch.chdir(workdir)
    assert train(['preset=smoke', f'data_dir={synthetic_data_dir}', 'train_batch_size=128', 'device=cpu']) == 0
    run = next((workdir / 'logs' / 'evidence_mnist').iterdir())
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    marker = tmp_path / 'UNPICKLED'
    objects, raw_pickle, _, _ = _pickled_files(tmp_path / 'pickles', marker)
    cases = [
        ([run.name, '--ood-file', str(objects), '--ood-file', str(raw_pickle)], 'error: --ood-file'),
        ([run.name, '--device', 'cuda:99999999999999999999'], 'error: device='),
        ([run.name, '--fgsm-samples', '-1'], '--fgsm-samples must be >= 0'),
        ([run.name, '--split', 'nope'], "invalid choice: 'nope'"),
    ]
    real_cases = cases[:2]

    def check(args, message, code, err, out=''):
        assert code == 2, (args[1:], out[-1000:], err[-2000:])
        assert 'Traceback' not in err, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert message in last, (args[1:], last)

    capsys.readouterr()
    for args, message in cases:
        try:
            code = evaluate.main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
        check(args, message, code, capsys.readouterr().err)

    def one(case):
        return run_cli('experiments.evaluate', *case[0], cwd=workdir, timeout=180)

    with ThreadPoolExecutor(len(real_cases)) as pool:
        results = list(pool.map(one, real_cases))
    for (args, message), r in zip(real_cases, results):
        check(args, message, r.returncode, r.stderr, r.stdout)
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
