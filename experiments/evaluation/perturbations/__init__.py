"""
# Perturbations of the test inputs: the registry

A *perturbation* changes the test images (an attack, a rotation, missing pixels, ...) and records how the
prediction and its uncertainty change. Each is one module here with a `PERTURBATION`, an instance of a
`base.Perturbation` subclass that owns everything about it: which families it applies to and why it is
skipped, how it runs (the tensor math is in `evidential/perturbations.py`), its block of `evaluation.json`,
its figure, its `compare` columns and comparison figure, and its `--X-samples` option.

Everything else reads this registry: `experiments.evaluate` (options, the blocks, the figures),
`experiments.sweep` (passes the options on), `experiments.compare` (columns, the comparison figures).

Adding a perturbation: its module with a `PERTURBATION`, and one line in `PERTURBATIONS` below. They run in
this order, which matters for families that sample (MC dropout draws its masks from torch's generator, seeded
once per evaluation, so each perturbation's numbers depend on what ran before it).
"""
import argparse
import time
from typing import Any, Dict, List, Optional, Tuple

from configs.registry import load_entry
from experiments.evaluation.perturbations.base import Context, Perturbation, SampleOption

__all__ = ['PERTURBATIONS', 'Context', 'Perturbation', 'SampleOption', 'get', 'all_perturbations', 'run_all',
           'add_sample_options', 'samples_of', 'sample_arguments', 'add_own_options', 'options_of', 'command_line', 'prepare_all']

#: Name (the key of its block in `evaluation.json`) → the module that declares its `PERTURBATION`
PERTURBATIONS: Dict[str, str] = {
    'fgsm': 'experiments.evaluation.perturbations.fgsm',
    'pgd': 'experiments.evaluation.perturbations.pgd',
    'rotation': 'experiments.evaluation.perturbations.rotation',
    'missing_pixels': 'experiments.evaluation.perturbations.missing_pixels',
    'mnist_c': 'experiments.evaluation.perturbations.mnist_c',
    'shift': 'experiments.evaluation.perturbations.shift_files',
}


def get(name: str) -> Perturbation:
    """The perturbation called `name`; raises `KeyError` with the known names."""
    return load_entry(PERTURBATIONS, name, 'PERTURBATION', 'perturbation')


def all_perturbations() -> List[Perturbation]:
    return [get(name) for name in PERTURBATIONS]


def run_all(ctx: Context, earlier: Optional[Dict[str, Any]] = None,
            timing: Optional[Dict[str, float]] = None) -> Tuple[Dict[str, Any], List[str], List[str]]:
    """
    `{name: block}` of every perturbation that applies to `ctx`'s family, in registry order, notes on those
    skipped, and the names of those kept: a perturbation asked for 0 samples is not run, and its block in
    `earlier` (an earlier evaluation of the same checkpoint) is kept, with a note saying so. `timing` gets the
    wall seconds of each perturbation that gave a block.
    """
    blocks, notes, kept = {}, [], []
    for perturbation in all_perturbations():
        why = perturbation.skip_reason(ctx.capabilities)
        if why is not None:
            notes.append(why)
            continue
        if perturbation.samples and ctx.samples and ctx.samples.get(perturbation.name) == 0 \
                and perturbation.name in (earlier or {}):
            blocks[perturbation.name] = earlier[perturbation.name]
            kept.append(perturbation.name)
            notes.append(f"{perturbation.name}: not run (--{perturbation.samples.flag} 0); its results are kept "
                         f"from the earlier evaluation of this checkpoint")
            continue
        started = time.perf_counter()
        block = perturbation.run(ctx)
        if block is not None and timing is not None:
            timing[perturbation.name] = round(time.perf_counter() - started, 3)
        if block is not None:
            blocks[perturbation.name] = block
            notes.extend(block.get('_notes', []))
    return blocks, notes, kept


# ## The sample options, for `experiments.evaluate` and `experiments.sweep`

def _dest(option: SampleOption) -> str:
    return option.flag.replace('-', '_')


def add_sample_options(parser: argparse.ArgumentParser, passed_on: bool = False) -> None:
    """Adds every perturbation's `--X-samples N`; with `passed_on` (the sweep) the default is `None`: not passed,
    so `experiments.evaluate`'s default holds."""
    for p in all_perturbations():
        if p.samples is None:
            continue
        what = f"passed to experiments.evaluate (test split only): {p.samples.help}; 0 skips it" if passed_on else \
            f"{p.samples.help} (default {p.samples.default}; 0 skips it)"
        parser.add_argument(f'--{p.samples.flag}', dest=_dest(p.samples), type=int, metavar='N', help=what,
                            default=None if passed_on else p.samples.default)


def samples_of(args: argparse.Namespace) -> Dict[str, Optional[int]]:
    """`{perturbation name: N or None}` from parsed arguments; raises `ValueError` for a negative N."""
    out = {}
    for p in all_perturbations():
        if p.samples is None:
            continue
        n = getattr(args, _dest(p.samples), None)
        if n is not None and n < 0:
            raise ValueError(f"--{p.samples.flag} must be >= 0")
        out[p.name] = n
    return out


def sample_arguments(samples: Dict[str, Optional[int]]) -> List[str]:
    """The command-line arguments of `experiments.evaluate` that give these sample counts (`None`: not given)."""
    args = []
    for p in all_perturbations():
        n = samples.get(p.name)
        if p.samples is not None and n is not None:
            args += [f'--{p.samples.flag}', str(n)]
    return args


# ## Each perturbation's own options (`--shift-file`, ...), for `experiments.evaluate`

def add_own_options(parser: argparse.ArgumentParser) -> None:
    """Adds every perturbation's own options (`Perturbation.add_arguments`)."""
    for p in all_perturbations():
        p.add_arguments(parser)


def options_of(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """`{perturbation name: {keyword: value}}` of the perturbations given options of their own in `args`."""
    return {p.name: given for p in all_perturbations() if (given := p.arguments(args))}


def command_line(options: Dict[str, Dict[str, Any]]) -> List[str]:
    """The `experiments.evaluate` arguments that give these perturbations' own options (inverse of `options_of`)."""
    return [a for name, given in options.items() for a in get(name).command_line(given)]


def prepare_all(options: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """`{perturbation name: what its prepare returned}`: each checks and loads its options; raises
    `EvaluateError` (also for a name no perturbation has), before anything is written."""
    from experiments.evaluation import EvaluateError
    unknown = sorted(set(options) - set(PERTURBATIONS))
    if unknown:
        raise EvaluateError(f"no perturbation called {', '.join(unknown)}; known: {', '.join(PERTURBATIONS)}")
    return {name: get(name).prepare(given) for name, given in options.items()}
