"""
# Post-hoc steps: the registry

A *post-hoc step* changes a trained run's predictions with parameters fitted on its held-out split (the `valid`
split of a run trained with `holdout > 0`), and reports how the test predictions change: temperature scaling, ...
Each is one module here with a `POSTHOC`, an instance of a `base.PostHoc` subclass that owns everything about it:
when it is skipped, how it fits and scores (the tensor math is in `evidential/`), its block of `evaluation.json`,
its figure and its `compare` columns.

`experiments.evaluation.core` runs them on the test split's evaluation (never on `--split validation`: the
held-out split is what they fit on); `experiments.compare` reads their columns.

Adding a step: its module with a `POSTHOC`, and one line in `POSTHOC` below.
"""
import time
from typing import Any, Dict, List, Optional, Tuple

from configs.registry import load_entry
from experiments.evaluation.posthoc.base import Context, PostHoc

__all__ = ['POSTHOC', 'Context', 'PostHoc', 'get', 'all_steps', 'run_all', 'direction']

#: Name (the key of its block in `evaluation.json`) → the module that declares its `POSTHOC`
POSTHOC: Dict[str, str] = {
    'temperature': 'experiments.evaluation.posthoc.temperature',
    'conformal': 'experiments.evaluation.posthoc.conformal',
}


def get(name: str) -> PostHoc:
    """The post-hoc step called `name`; raises `KeyError` with the known names."""
    return load_entry(POSTHOC, name, 'POSTHOC', 'post-hoc step')


def all_steps() -> List[PostHoc]:
    return [get(name) for name in POSTHOC]


def run_all(ctx: Context, timing: Optional[Dict[str, float]] = None) -> Tuple[Dict[str, Any], List[str]]:
    """`{name: block}` of every step that applies to `ctx`, in registry order, and notes on those skipped;
    `timing` gets the wall seconds of each step that gave a block."""
    blocks, notes = {}, []
    for step in all_steps():
        why = step.skip_reason(ctx)
        if why is not None:
            notes.append(why)
            continue
        started = time.perf_counter()
        block = step.run(ctx)
        if block is not None and timing is not None:
            timing[step.name] = round(time.perf_counter() - started, 3)
        if block is not None:
            blocks[step.name] = block
    return blocks, notes


def direction(column: str) -> Tuple[bool, Any]:
    """`(True, 'max' / 'min' / None)` where a step owns `column`, else `(False, None)`."""
    for step in all_steps():
        if column in step.column_names():
            return True, step.direction(column)
    return False, None
