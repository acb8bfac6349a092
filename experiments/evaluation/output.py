"""Writing an evaluation's results: JSON and npz files (atomically), labml's log, and the printed table."""
import io
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from configs.checkpoint import LogGuard, atomic_write_bytes
from configs.compat import detach_writers, flush_tracker, forget_indicators, indicator_definitions, new_file_writer, \
    write_only_to
from experiments.evaluation import EvaluateError


class EvaluateWriteError(EvaluateError):
    """An output of the evaluation could not be written (disk full, I/O error): the message names the file and
    the reason. No results file is left behind (it is written last, atomically), nor the partial outputs."""

# ---------------------------------------------------------------------- labml log

def _indicator_name(part: str) -> str:
    return re.sub(r'[^A-Za-z0-9_\-]', '_', part)


def flat_scalars(results: Dict[str, Any]) -> Dict[str, float]:
    """`eval.accuracy`, ..., `eval.ood.<set>.<score>.auroc`, ...: the numbers logged to labml."""
    out = {f'eval.{k}': v for k, v in results['id'].items() if v is not None}
    for set_name, per_score in results['ood'].items():
        for score, values in per_score.items():
            for k, v in values.items():
                out[f'eval.ood.{_indicator_name(set_name)}.{score}.{k}'] = v
    return out


def log_to_labml(run_dir: Path, values: Dict[str, float], global_step: int) -> None:
    """
    Appends `values` to the run's labml log (`log.jsonl`) with labml's own tracker and file writer,
    at the run's last global step, and adds their definitions to `indicators.yaml`.

    Re-opening the run with `experiment.create(uuid=...)` + `experiment.start()` is not used: labml 0.5.3
    then refuses to start while the training's `run.pid` exists, and otherwise rewrites `run.yaml`
    (trial time, python file), replaces `indicators.yaml` by the evaluation's indicators only, and adds a
    second `completed` status to `run_log.jsonl`. Here only `log.jsonl` (appended) and `indicators.yaml`
    (entries added, nothing removed) change.
    """
    from labml import tracker
    for name in ('log.jsonl', 'indicators.yaml'):
        if (run_dir / name).is_symlink():  # labml's writer appends through it: to a file outside the run
            raise EvaluateWriteError(f"{run_dir / name} is a symbolic link; the results are not appended to it")
    writer = new_file_writer(run_dir / 'log.jsonl')
    guard = LogGuard(writer)  # written here, in this thread, as whole lines: a full disk cannot cut the log's last line
    write_only_to(writer)  # no screen writer, no other run's writers
    try:
        tracker.set_scalar('eval.*', False)
        tracker.set_global_step(global_step)
        tracker.add(values)
        tracker.save()
        definitions = indicator_definitions(values)
        flush_tracker()  # flushes the file writer
    finally:
        detach_writers()  # as a fresh tracker: a later labml run in this process counts from its own start
        forget_indicators('eval.')  # ... and does not list these in its indicators.yaml
    if guard.error is not None:
        raise guard.error
    _add_indicator_definitions(run_dir / 'indicators.yaml', definitions)


def _add_indicator_definitions(path: Path, definitions: Dict[str, Any]) -> None:
    import yaml
    from configs.checkpoint import RunFileError, load_run_yaml
    try:
        data = load_run_yaml(path) if path.exists() else {}
    except (OSError, yaml.YAMLError, RunFileError) as e:
        print(f"note: {path} left unchanged ({type(e).__name__})", file=sys.stderr)
        return
    if not isinstance(data, dict):
        return
    data.setdefault('wildcards', {})
    data.setdefault('indicators', {})
    data['indicators'].update(definitions)
    text = yaml.dump(data, default_flow_style=False)  # as labml 0.5.3 writes indicators.yaml
    atomic_write_bytes(path, lambda f: f.write(text.encode()), path.stat().st_mode & 0o777 if path.exists() else None)


# ---------------------------------------------------------------------- output

def _write(path: Path, data: bytes) -> None:
    """Atomically; a failure is an `OSError` naming `path` (a failed write or fsync names no file of its own)."""
    try:
        atomic_write_bytes(path, lambda f: f.write(data))
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()  # in memory first: a full disk is then an OSError of the write, not of zipfile's
    np.savez(buffer, **arrays)
    _write(path, buffer.getvalue())


def save_json(path: Path, data: Dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, allow_nan=True) + '\n'
    _write(path, text.encode())


def _fmt(v: Optional[float]) -> str:
    return '   n/a' if v is None else f'{v:.4f}'


def format_table(results: Dict[str, Any]) -> str:
    split = 'held-out validation' if results.get('split') == 'validation' else 'test'
    lines = [f"In-distribution: {results['dataset']} {split} set, {results['n']['id']:,} images "
             f"(aurc and misclassification_auroc ranked by {results['id_score']})"]
    keys = list(results['id'])
    widths = [max(len(k), 8) for k in keys]
    lines.append('  ' + '  '.join(k.rjust(w) for k, w in zip(keys, widths)))
    lines.append('  ' + '  '.join(_fmt(results['id'][k]).rjust(w) for k, w in zip(keys, widths)))
    if results['ood']:
        lines.append('')
        lines.append('Out-of-distribution (OOD = positive; auroc, aupr: higher is better; fpr95: lower is better)')
        name_w = max(len('set'), *(len(s) for s in results['ood']))
        score_w = max(len('score'), *(len(sc) for v in results['ood'].values() for sc in v))
        lines.append(f"  {'set'.ljust(name_w)}  {'score'.ljust(score_w)}     auroc      aupr     fpr95   n")
        for set_name, per_score in results['ood'].items():
            for j, (score, v) in enumerate(per_score.items()):
                first = set_name if j == 0 else ''
                n = f"{results['n'][set_name]:,}" if j == 0 else ''
                lines.append(f"  {first.ljust(name_w)}  {score.ljust(score_w)}  {_fmt(v['auroc']):>8}  "
                             f"{_fmt(v['aupr']):>8}  {_fmt(v['fpr95']):>8}   {n}")
    else:
        lines.append('')
        lines.append('Out-of-distribution: no set')
    if 'fgsm' in results:
        f = results['fgsm']
        lines.append('')
        lines.append(f"FGSM ({f['n_samples']:,} test images; eps in pixel units)")
        lines.append('  eps          ' + ' '.join(f'{e:5.2f}' for e in f['eps']))
        lines.append('  accuracy     ' + ' '.join(f'{a:5.3f}' for a in f['accuracy']))
        lines.append('  mean entropy ' + ' '.join(f'{h:5.3f}' for h in f['mean_entropy']))
    if 'pgd' in results:
        g = results['pgd']
        lines.append('')
        lines.append(f"PGD and FGSM ({g['n_samples']:,} test images; eps in pixel units; AUROC of {g['score']}, "
                     f"attacked vs clean)")
        lines.append('  eps             ' + ' '.join(f'{e:5.2f}' for e in g['eps']))
        for attack in g['attacks'].values():
            lines.append(f"  {attack['name'] + ' accuracy':<15} " + ' '.join(f'{a:5.3f}' for a in attack['accuracy']))
            lines.append(f"  {attack['name'] + ' AUROC':<15} "
                         + ' '.join(f'{a:5.3f}' for a in attack['auroc'][g['score']]))
    from experiments.evaluation import perturbations
    for p in perturbations.all_perturbations():  # the perturbations that print lines of their own
        if isinstance(results.get(p.name), dict):
            lines += p.table(results[p.name])
    return '\n'.join(lines)
