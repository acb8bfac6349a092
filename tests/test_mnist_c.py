"""
MNIST-C in `python -m experiments.evaluate`: the cache beside the data (reused, regenerated when its key differs,
the user's cache folder where the data folder cannot be written), the plug-in's block recomputed from the cached
images and `predictions.npz` by an independent path (the model on hand-normalised images, scikit-learn's AUROC),
the mean corruption error, `compare`'s columns, and `--shift-file` sets, good and bad (exit 2, nothing written).
"""
import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from evidential import corruptions
from experiments import compare, evaluate
from experiments.evaluation import mnist_c_cache
from experiments.evaluation.perturbations.mnist_c import corruption_errors

SEED = 0


# ## The cache, with a stand-in generator (the cache does not depend on what the corruptions compute)

@pytest.fixture
def fake_generator(monkeypatch):
    """`corruptions.corrupt_all` replaced by a cheap function of the images and seed; returns its calls."""
    calls = []

    def corrupt_all(images, seed=0, names=None):
        calls.append(len(images))
        return {c: (images.astype(np.int64) * (i + 1) + seed).astype(np.uint8)
                for i, c in enumerate(corruptions.conditions())}
    monkeypatch.setattr(corruptions, 'corrupt_all', corrupt_all)
    monkeypatch.setattr(mnist_c_cache, 'CHUNK', 8)
    monkeypatch.setenv('XDG_CACHE_HOME', '/nonexistent-cache-for-tests')
    return calls


def test_the_cache_is_reused_and_regenerated_when_its_key_differs(tmp_path, fake_generator, monkeypatch):
    test = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    data = tmp_path / 'data'
    first, record = mnist_c_cache.corrupted_test_images(test, 12, data, 'mnist', SEED)
    folder = data / 'MNIST-C-generated' / str(SEED) / 'mnist'
    # the chunks that hold the first 12 images are generated whole (8 + 8 images), each with its own seed
    assert fake_generator == [8, 8] and record['generated'] == [0, 1] and record['folders'] == [str(folder)]
    assert sorted(p.name for p in folder.iterdir()) == ['chunk-000.npz', 'chunk-001.npz']
    rotate = first[('rotate', 5)]
    assert rotate.shape == (12, 28, 28)
    assert np.array_equal(rotate[8:], corruptions.corrupt_all(test[8:16], mnist_c_cache.chunk_seed(SEED, 1))[
        ('rotate', 5)][:4])
    fake_generator.clear()

    again, record = mnist_c_cache.corrupted_test_images(test, 12, data, 'mnist', SEED)
    assert fake_generator == [] and record['read'] == [0, 1] and record['generated'] == []
    assert all(np.array_equal(again[c], first[c]) for c in first)
    more, record = mnist_c_cache.corrupted_test_images(test, 20, data, 'mnist', SEED)  # one more chunk
    assert record['generated'] == [2] and np.array_equal(more[('rotate', 5)][:12], rotate)

    changed = test.copy()
    changed[9, 0, 0] ^= 1  # one pixel of chunk 1's source
    _, record = mnist_c_cache.corrupted_test_images(changed, 12, data, 'mnist', SEED)
    assert record['read'] == [0] and record['generated'] == [1]
    monkeypatch.setattr(corruptions, 'GENERATOR_VERSION', corruptions.GENERATOR_VERSION + 1)
    _, record = mnist_c_cache.corrupted_test_images(changed, 12, data, 'mnist', SEED)
    assert record['generated'] == [0, 1]
    (folder / 'chunk-000.npz').write_bytes(b'PK\x03\x04 not a whole archive')
    _, record = mnist_c_cache.corrupted_test_images(changed, 12, data, 'mnist', SEED)
    assert record['generated'] == [0] and record['read'] == [1]


def test_an_unwritable_data_folder_falls_back_to_the_user_cache(tmp_path, fake_generator, monkeypatch):
    test = np.zeros((8, 28, 28), dtype=np.uint8)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'user'))
    blocked = tmp_path / 'a-file'
    blocked.write_text('the data folder cannot be made here')
    _, record = mnist_c_cache.corrupted_test_images(test, 8, blocked, 'mnist', SEED)
    user = tmp_path / 'user' / 'evidential-mnist' / 'MNIST-C-generated' / str(SEED) / 'mnist'
    assert record['folders'] == [str(user)] and (user / 'chunk-000.npz').is_file()
    assert len(record['notes']) == 1 and record['notes'][0].startswith(f'MNIST-C images not cached in {blocked}')
    _, record = mnist_c_cache.corrupted_test_images(test, 8, blocked, 'mnist', SEED)
    assert record['read'] == [0] and record['notes'] == []


def test_the_mean_corruption_error_is_the_ratio_of_summed_errors():
    def block(accuracies):
        return {'n_samples': 10, 'seed': 0, 'generator_version': 1,
                'corruptions': {c: {s: {'accuracy': a} for s, a in per.items()} for c, per in accuracies.items()}}
    ours = block({'rotate': {'1': 0.9, '2': 0.8}, 'stripe': {'3': 0.5}})
    reference = {'run': 'r', 'experiment': 'softmax_mnist',
                 'block': block({'rotate': {'1': 0.8, '2': 0.6}, 'stripe': {'3': 0.75}})}
    result = corruption_errors(ours, reference)
    # rotate: (0.1 + 0.2) / (0.2 + 0.4); stripe: 0.5 / 0.25
    assert result['ce'] == pytest.approx({'rotate': 0.5, 'stripe': 2.0})
    assert result['mce'] == pytest.approx(1.25)
    with pytest.raises(ValueError, match='other images'):
        corruption_errors({**ours, 'n_samples': 20}, reference)


# ## In an evaluation

def _shift_files(folder, images, labels):
    """`{case: [paths]}`: a good file and bad ones."""
    folder.mkdir()
    good = folder / 'good.npz'
    np.savez(good, images=images, labels=labels)
    files = {'good': [good]}
    for case, arrays in {'float_images': dict(images=images.astype(np.float32), labels=labels),
                         'labels_out_of_range': dict(images=images, labels=labels + 10),
                         'labels_too_few': dict(images=images, labels=labels[:3]),
                         'no_labels': dict(images=images)}.items():
        np.savez(folder / f'{case}.npz', **arrays)
        files[case] = [folder / f'{case}.npz']
    np.save(folder / 'plain.npy', images)
    shutil.copy(folder / 'plain.npy', folder / 'not_npz.npz')
    files['not_npz'] = [folder / 'not_npz.npz']
    files['missing'] = [folder / 'nowhere.npz']
    (folder / 'other').mkdir()
    shutil.copy(good, folder / 'other' / 'good.npz')
    files['same_stem'] = [good, folder / 'other' / 'good.npz']
    return files


def test_mnist_c_and_shift_files_in_an_evaluation(smoke_run, synthetic_data_dir, tmp_path, monkeypatch, capsys):
    from configs.runner import load_trained
    from evidential.data import dataset_spec, load_split
    monkeypatch.setattr(mnist_c_cache, 'CHUNK', 32)  # 24 images asked for: one chunk of 32 generated
    data = tmp_path / 'data'  # a data folder of its own: the cache goes beside it
    shutil.copytree(synthetic_data_dir / 'MNIST', data / 'MNIST')
    shutil.copytree(synthetic_data_dir / 'FashionMNIST', data / 'FashionMNIST')
    test_images, test_labels = (a.numpy() for a in load_split('mnist', data, train=False, download=False))
    files = _shift_files(tmp_path / 'shift', test_images[:40], test_labels[:40])
    common = [str(smoke_run), '--data-dir', str(data), '--device', 'cpu', '--fgsm-samples', '0',
              '--missing-samples', '0', '--mnist-c-samples', '24']

    # references without MNIST-C results (not evaluated; evaluated without it), and every bad file: exit 2, one
    # line, nothing written
    other = tmp_path / 'softmax_run'
    other.mkdir()
    (other / 'experiment.json').write_text('{}')
    (other / 'evaluation.json').write_text(json.dumps({'experiment': 'softmax_mnist', 'id': {}}))
    before = sorted(p.name for p in smoke_run.iterdir())
    bad = [(['--mce-reference', str(smoke_run)], 'the run has not been evaluated'),
           (['--mce-reference', str(other)], 'has no MNIST-C results'),
           *((sum((['--shift-file', str(p)] for p in paths), []), '--shift-file')
             for case, paths in files.items() if case != 'good')]
    for args, message in bad:
        capsys.readouterr()
        assert evaluate.main(common + args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith('error: ') and message in err and err.count('\n') == 1, err
    assert sorted(p.name for p in smoke_run.iterdir()) == before and not (data / 'MNIST-C-generated').exists()

    # a reference run whose every corruption had accuracy 0.5 on the same 24 images
    (other / 'evaluation.json').write_text(json.dumps({'experiment': 'softmax_mnist', 'mnist_c': {
        'n_samples': 24, 'seed': SEED, 'generator_version': corruptions.GENERATOR_VERSION,
        'corruptions': {name: {str(s): {'accuracy': 0.5} for s in c.severities}
                        for name, c in corruptions.CORRUPTIONS.items()}}}))
    assert evaluate.main(common + ['--shift-file', str(files['good'][0]), '--mce-reference', str(other)]) == 0
    assert 'MNIST-C (24 test images' in capsys.readouterr().out
    result = json.loads((smoke_run / 'evaluation.json').read_text())
    block = result['mnist_c']
    assert block['n_samples'] == 24 and block['cache']['generated'] == [0]
    assert list(block['corruptions']) == list(corruptions.CORRUPTIONS)
    assert sum(len(v) for v in block['corruptions'].values()) == len(corruptions.conditions()) == 55
    assert result['figures']['mnist_c'] == 'eval_mnist_c.png' and (smoke_run / 'eval_mnist_c.png').is_file()
    saved = np.load(smoke_run / 'predictions.npz')
    labels = saved['id/labels'][:24]
    assert block['clean']['accuracy'] == pytest.approx((saved['id/probs'][:24].argmax(1) == labels).mean())

    # two conditions again: the cached images (the generator's, for chunk 0's seed) through the model by hand
    chunk = np.load(data / 'MNIST-C-generated' / str(SEED) / 'mnist' / 'chunk-000.npz')
    _, conf, _, _ = load_trained(str(smoke_run), data_dir=str(data), device='cpu')
    spec = dataset_spec('mnist')
    for name, severity in (('rotate', 5), ('fog', 3)):
        images = chunk[f'{name}/{severity}']
        assert np.array_equal(images, corruptions.corrupt(test_images[:32], name, severity,
                                                          mnist_c_cache.chunk_seed(SEED, 0)))
        x = (torch.from_numpy(images[:24]).float() / 255. - spec.mean) / spec.std
        with torch.no_grad():
            pred = conf.predict(conf.eval_forward(x.unsqueeze(1)))
        entry = block['corruptions'][name][str(severity)]
        assert entry['accuracy'] == pytest.approx((pred.probs.argmax(1).numpy() == labels).mean())
        u = pred.scores['u'].numpy()
        expected = roc_auc_score(np.r_[np.zeros(24), np.ones(24)], np.r_[saved['id/u'][:24], u])
        assert entry['auroc']['u'] == pytest.approx(expected, abs=1e-6)
    at3 = [v['3']['accuracy'] for v in block['corruptions'].values()]
    assert block['summary']['accuracy'] == pytest.approx(np.mean(at3))
    assert block['by_severity']['5']['accuracy'] == pytest.approx(
        np.mean([block['corruptions'][c]['5']['accuracy'] for c in block['graded']]))

    # the shift file holds the first 40 test images: the test's own predictions, against the whole test split
    shift = result['shift']['sets']['good']
    assert shift['n'] == 40
    assert shift['accuracy'] == pytest.approx((saved['id/probs'][:40].argmax(1) == test_labels[:40]).mean())
    n = len(saved['id/u'])
    expected = roc_auc_score(np.r_[np.zeros(n), np.ones(40)], np.r_[saved['id/u'], saved['id/u'][:40]])
    assert shift['auroc']['u'] == pytest.approx(expected, abs=1e-4)

    # the mean corruption error: per corruption, the summed errors over the reference's (0.5 per severity)
    ce = {name: sum(1 - v['accuracy'] for v in per.values()) / (0.5 * len(per))
          for name, per in block['corruptions'].items()}
    assert block['mce']['ce'] == pytest.approx(ce) and block['mce']['mce'] == pytest.approx(np.mean(list(ce.values())))
    assert block['mce']['reference'] == {'run': 'softmax_run', 'experiment': 'softmax_mnist'}
    # the next evaluation reads the cache
    again, record = mnist_c_cache.corrupted_test_images(test_images, 24, data, 'mnist', SEED)
    assert record['read'] == [0] and record['generated'] == []
    assert np.array_equal(again[('rotate', 5)], chunk['rotate/5'][:24])

    out = tmp_path / 'cmp'
    assert compare.main([str(smoke_run), '--out', str(out), '--columns', 'mnist_c/accuracy,mnist_c/u/auroc,mnist_c/mce']) == 0
    (row,) = json.loads((out / 'comparison.json').read_text())['rows']
    assert row['values'] == pytest.approx({'mnist_c/accuracy': block['summary']['accuracy'],
                                           'mnist_c/u/auroc': block['summary']['auroc']['u'],
                                           'mnist_c/mce': block['mce']['mce']})
    assert (out / 'comparison_mnist_c.png').is_file()
    # the headline shows the AUROC of the run's primary score and entropy's, as for the OOD sets
    headline = compare.headline_columns([compare.load_row(str(smoke_run), smoke_run.parent.parent)])
    assert {'mnist_c/accuracy', 'mnist_c/mce', 'mnist_c/u/auroc', 'mnist_c/entropy/auroc'} <= set(headline)
    assert 'mnist_c/msp/auroc' not in headline
