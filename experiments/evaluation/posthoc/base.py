"""What a post-hoc step is: a change of a trained run's predictions fitted on its held-out split (temperature
scaling, ...), everything the app needs to know about one in one class."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Context:
    """What a post-hoc step gets: the held-out predictions it fits on (`None` where the run has no held-out split:
    it was trained with holdout=0 and validated on the test set) and the test predictions it is judged on.

    `*_arrays` are those of `predictions.npz` (`probs` and the family's own scores, float32);
    `primary` is the family's primary score (that of the `id` block's AURC); `ood_arrays` are the OOD sets'
    arrays (`{set name: arrays}`, those of the `ood` block)."""
    valid_arrays: Optional[Dict[str, np.ndarray]]
    valid_labels: Optional[np.ndarray]
    test_arrays: Dict[str, np.ndarray]
    test_labels: np.ndarray
    primary: str = 'entropy'
    ood_arrays: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def has_holdout(self) -> bool:
        return self.valid_arrays is not None


class PostHoc:
    """
    One post-hoc step. Subclasses set the class attributes and implement `run`; the rest has defaults (no figure,
    no `compare` columns).

    The block `run` returns goes into `evaluation.json` under `name`; its keys starting with `_` are for the figure
    only and are dropped before the JSON is written. A step never sees the test labels while it fits: it fits on
    `Context.valid_*` and only then scores the test predictions.
    """
    #: The key of its block in `evaluation.json`
    name: str = ''
    #: `(figure key, file name)` of its figure in the run folder, or `None`
    figure: Optional[tuple] = None

    # -- evaluation
    def skip_reason(self, ctx: Context) -> Optional[str]:
        """Why it does not apply to this run (a note for the user), or `None`."""
        return None

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        """The JSON block of the step on `ctx`, or `None` when there is nothing to record."""
        raise NotImplementedError

    def draw(self, block: Dict[str, Any], path: Path, labels: np.ndarray) -> None:
        """Draws its figure of `block` (and the test `labels`) to `path` (called only where `figure` is set)."""

    # -- compare
    def column_names(self) -> List[str]:
        """The `compare` columns it can give (`temperature/nll`), before any run is evaluated."""
        return []

    def columns(self, block: Dict[str, Any]) -> Dict[str, Any]:
        """`{column: value}` of a run's block; raises `KeyError`, `ValueError`, ... on a block of another format."""
        return {}

    def direction(self, column: str) -> Optional[str]:
        """`max` or `min` (which value of one of its columns is best), or `None` (no better value: never bold)."""
        return None


def as_tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array))
