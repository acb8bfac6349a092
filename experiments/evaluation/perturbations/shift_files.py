"""
A user's own shifted test sets: `--shift-file FILE.npz` (repeatable), each holding `images` (`uint8 [N, 28, 28]`
or `[N, 1, 28, 28]`, white on black, 0-255) and `labels` (`[N]` integer class indices), named by its file stem.
Each is evaluated as one MNIST-C corruption is (`mnist_c.shift_metrics`): accuracy, NLL, ECE, AURC, the mean of
every score, and every score's AUROC separating the set (positive) from the clean test set. Its images are not
copies of the test images, so the AUROC is against the whole test split (the predictions of `predictions.npz`).

The files are checked as `--ood-file`s are (`experiments.evaluation.inputs`), before anything is read or
written: a regular file, an npz archive (never unpickled) with both arrays, their headers (dtype, shape, the
same N) against the bytes the archive holds, and the labels in range; a bad file is one line on stderr and exit
code 2.
"""
import argparse
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from experiments.evaluation import EvaluateError
from experiments.evaluation.inputs import MAX_OOD_IMAGES, _read_header, check_regular_file, set_name
from experiments.evaluation.perturbations.base import Context, Perturbation

#: Class indices a label may take: those of the datasets (`evidential.data.DATASETS`: ten classes each)
N_CLASSES = 10
#: The magic number of a zip archive's first entry (what `numpy.savez` writes)
ZIP_MAGIC = b'PK\x03\x04'
SAVE_HINT = 'save it with numpy.savez(FILE, images=IMAGES, labels=LABELS)'


def _reason(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _headers(path: Path, flag: str) -> Dict[str, Tuple[List[int], np.dtype, int]]:
    """`{array: (shape, dtype, bytes the member holds beyond its header)}` of `images` and `labels`, from the
    archive's directory and the .npy headers, without reading (or unpickling) any data."""
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            missing = [a for a in ('images', 'labels') if f'{a}.npy' not in names]
            if missing:
                held = ', '.join(n[:-4] for n in names if n.endswith('.npy')) or 'no array'
                raise EvaluateError(f"{flag}: no {' and no '.join(missing)} array (it holds {held}); {SAVE_HINT}")
            for name in ('images', 'labels'):
                info = archive.getinfo(f'{name}.npy')
                with archive.open(info) as member:
                    try:
                        shape, _, dtype = _read_header(member, path)
                    except Exception as e:  # noqa: BLE001 - ValueError (bad header), EOFError (cut inside it), ...
                        raise EvaluateError(f"{flag}: its {name} are not a readable .npy array ({_reason(e)})") \
                            from None
                    out[name] = (list(shape), dtype, info.file_size - member.tell())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
        raise EvaluateError(f"{flag}: not a readable .npz archive ({_reason(e)})") from None
    except OSError as e:
        raise EvaluateError(f"{flag}: cannot be read ({e.strerror or type(e).__name__})") from None
    return out


def load_shift_file(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """`(images uint8 [N, 28, 28], labels int64 [N])` of a checked `--shift-file`; raises `EvaluateError`."""
    flag = f"--shift-file {path}"
    check_regular_file(path, flag)
    try:
        with open(path, 'rb') as f:
            magic = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise EvaluateError(f"{flag}: cannot be read ({e.strerror or type(e).__name__})") from None
    if magic != ZIP_MAGIC:
        raise EvaluateError(f"{flag}: not a .npz file; {SAVE_HINT}")
    headers = _headers(path, flag)
    (shape, dtype, size), (label_shape, label_dtype, label_size) = headers['images'], headers['labels']
    for name, kind in (('images', dtype), ('labels', label_dtype)):
        if kind.hasobject:
            raise EvaluateError(f"{flag}: its {name} hold Python objects ({kind}); only numeric arrays are read, "
                                f"never unpickled")
    if dtype != np.uint8:
        raise EvaluateError(f"{flag}: images must be uint8 (pixel values 0-255, white digit on black), got {dtype}")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)) or shape[-2:] != [28, 28] or shape[0] < 1:
        raise EvaluateError(f"{flag}: images must be [N, 28, 28] or [N, 1, 28, 28] with N >= 1, got {shape}")
    n = shape[0]
    if n > MAX_OOD_IMAGES:
        raise EvaluateError(f"{flag}: {n:,} images; at most {MAX_OOD_IMAGES:,} per file")
    if label_dtype.kind not in 'iu':
        raise EvaluateError(f"{flag}: labels must be integers (class indices 0-{N_CLASSES - 1}), got {label_dtype}")
    if label_shape != [n]:
        raise EvaluateError(f"{flag}: labels must be [N] with N = {n:,} (one per image), got {label_shape}")
    for name, held, needed in (('images', size, n * 28 * 28), ('labels', label_size, n * label_dtype.itemsize)):
        if held < needed:
            raise EvaluateError(f"{flag}: truncated: its {name} header promises {needed:,} bytes, the archive "
                                f"holds {held:,}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive['images'], archive['labels']
    except Exception as e:  # noqa: BLE001 - read errors after the checks above (a bad CRC, the file changed, EIO)
        raise EvaluateError(f"{flag}: not a readable .npz archive ({_reason(e)})") from None
    if images.dtype != np.uint8 or list(images.shape) != shape or list(labels.shape) != label_shape:
        raise EvaluateError(f"{flag}: changed while it was read; try again")
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise EvaluateError(f"{flag}: labels must be class indices in [0, {N_CLASSES - 1}], found "
                            f"{labels.min()}..{labels.max()}")
    if images.ndim == 4:
        images = images[:, 0]
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_shift_files(paths: List[str]) -> Dict[str, Dict[str, Any]]:
    """`{file stem: {images, labels, file}}`; every file is checked, names must be distinct."""
    sets: Dict[str, Dict[str, Any]] = {}
    for p in paths:
        path = Path(p).expanduser()
        name = set_name(path, '--shift-file', sets)
        images, labels = load_shift_file(path)
        sets[name] = {'images': images, 'labels': labels, 'file': str(path.resolve())}
    return sets


class ShiftFiles(Perturbation):
    name = 'shift'
    figure = ('shift', 'eval_shift.png')

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--shift-file', action='append', default=[], metavar='PATH',
                            help='a shifted test set: .npz with images (uint8 [N, 28, 28], white on black, 0-255) '
                                 'and labels ([N] class indices); evaluated as an MNIST-C corruption, named by the '
                                 'file stem (repeatable)')

    def arguments(self, args: argparse.Namespace) -> Dict[str, Any]:
        files = getattr(args, 'shift_file', None)
        return {'files': list(files)} if files else {}

    def command_line(self, options: Dict[str, Any]) -> List[str]:
        return [a for f in options.get('files') or [] for a in ('--shift-file', str(Path(f).expanduser().resolve()))]

    def prepare(self, options: Dict[str, Any]) -> Optional[Dict[str, Dict[str, Any]]]:
        unknown = sorted(set(options) - {'files'})
        if unknown:
            raise EvaluateError(f"the shift perturbation has no option {', '.join(unknown)}")
        return load_shift_files(list(options.get('files') or [])) or None

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        from experiments.evaluation.perturbations.mnist_c import predict_arrays, shift_metrics, uint8_test_images
        sets = ctx.prepared_for(self)
        if not sets:
            return None
        ctx.conf.model.eval()
        clean = ctx.id_arrays if ctx.id_arrays is not None else predict_arrays(
            ctx.conf, uint8_test_images(ctx.conf, ctx.test, len(ctx.test)))
        out = {}
        for name, s in sets.items():
            arrays = predict_arrays(ctx.conf, s['images'])
            if s['labels'].max() >= arrays['probs'].shape[1]:
                raise EvaluateError(f"--shift-file {s['file']}: labels up to {s['labels'].max()}, the run has "
                                    f"{arrays['probs'].shape[1]} classes")
            out[name] = {'file': s['file'], 'n': int(len(s['labels'])),
                         **shift_metrics(arrays, s['labels'], clean, ctx.primary_score)}
        clean_accuracy = float((clean['probs'].argmax(1) == ctx.test.labels.cpu().numpy()).mean())
        return {'aurc_score': ctx.primary_score, 'clean': f'the test split ({len(ctx.test):,} images)',
                'clean_accuracy': clean_accuracy, 'sets': out}

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        from experiments.shift_figures import shift_plot
        shift_plot(block, path)

    def table(self, block: Dict[str, Any]) -> List[str]:
        lines = ['', f"Shifted test sets (AUROC: each set against {block['clean']})"]
        for name, s in block['sets'].items():
            lines.append(f"  {name} ({s['n']:,} images): accuracy {s['accuracy']:.4f}  nll {s['nll']:.4f}  "
                         f"ece {s['ece']:.4f}  aurc {s['aurc']:.4f}  AUROC "
                         + ', '.join(f'{k} {v:.4f}' for k, v in s['auroc'].items()))
        return lines


PERTURBATION = ShiftFiles()
