"""What a perturbation of the test inputs is: everything the app needs to know about one, in one class."""
import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from configs.registry import Capabilities


@dataclass(frozen=True)
class SampleOption:
    """A perturbation's `--NAME-samples N` option of `experiments.evaluate` (passed on by `experiments.sweep`):
    how many test images it perturbs; 0 skips it."""
    # The flag without dashes, e.g. `fgsm-samples`
    flag: str
    default: int
    # What N counts, for `--help` (the default and "0 skips it" are added)
    help: str


@dataclass(frozen=True)
class Context:
    """What a perturbation gets: the rebuilt run (`conf`, with its model in eval mode), its test split, the
    predicted classes of that split, the family's capabilities, the sample counts asked for and the family's
    primary score; where the evaluation has them, the test split's prediction arrays (`probs` and the family's own
    scores, as saved in `predictions.npz`) and what each perturbation's `prepare` returned."""
    conf: Any
    test: Any
    preds: Any
    capabilities: Capabilities = Capabilities()
    # `{perturbation name: N}` from the sample options; a perturbation missing here uses its default
    samples: Optional[Dict[str, int]] = None
    # The score that ranks the family's predictions (`Family.primary_score`: `u`, else `entropy`)
    primary_score: str = 'entropy'
    # `{'probs': [N, K], score: [N], ...}` float32 arrays of the test split
    id_arrays: Optional[Dict[str, Any]] = None
    # `{perturbation name: its prepare(options)}`, for those given options of their own
    prepared: Optional[Dict[str, Any]] = None

    def prepared_for(self, perturbation: 'Perturbation') -> Any:
        """What `perturbation.prepare` returned for this evaluation's options (`None`: none were given)."""
        return (self.prepared or {}).get(perturbation.name)

    def n_samples(self, perturbation: 'Perturbation') -> int:
        """How many test images `perturbation` gets: its sample option (or its default), at most the split."""
        option = perturbation.samples
        n = (self.samples or {}).get(perturbation.name, option.default if option else len(self.test))
        return min(n, len(self.test))


class Perturbation:
    """
    One perturbation of the test inputs. Subclasses set the class attributes and implement `run`; the rest has
    defaults (no figure, no `compare` columns, no seed averaging).

    The block `run` returns goes into `evaluation.json` under `name`; its keys starting with `_` are for the
    figure only and are dropped before the JSON is written (`_notes`, a list of lines, joins the evaluation's
    notes).
    """
    #: The key of its block in `evaluation.json`
    name: str = ''
    #: Its `--X-samples` option, or `None` (it uses the split as it needs)
    samples: Optional[SampleOption] = None
    #: `(figure key, file name)` of its figure in the run folder, or `None`
    figure: Optional[tuple] = None
    #: The file name of its figure over several runs in `compare`'s output folder, or `None`
    comparison_figure: Optional[str] = None

    # -- its own options of `experiments.evaluate` (beyond `--X-samples`), checked before anything is written
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds its own options to `experiments.evaluate`'s parser (none by default)."""

    def arguments(self, args: argparse.Namespace) -> Dict[str, Any]:
        """Its options' values in parsed `args` as `{keyword: value}` (`{}`: none given)."""
        return {}

    def command_line(self, options: Dict[str, Any]) -> List[str]:
        """The `experiments.evaluate` arguments that give `options` again, paths made absolute (a sweep passes
        them on to evaluations that may run elsewhere)."""
        return []

    def prepare(self, options: Dict[str, Any]) -> Any:
        """Checks and loads `options` (from `arguments`, or an API caller) before anything is read or written:
        raises `EvaluateError` with one line naming the option. What it returns reaches `run` as
        `ctx.prepared_for(self)`."""
        return None

    # -- evaluation
    def skip_reason(self, capabilities: Capabilities) -> Optional[str]:
        """Why it does not apply to a family with these `capabilities` (a note for the user), or `None`."""
        return None

    def run(self, ctx: Context) -> Optional[Dict[str, Any]]:
        """The JSON block of the perturbation on `ctx`'s run, or `None` when there is nothing to record."""
        raise NotImplementedError

    def draw(self, block: Dict[str, Any], path: Path, *, dataset: str, num_classes: int) -> None:
        """Draws its figure of `block` to `path` (called only where `figure` is set)."""

    def table(self, block: Dict[str, Any]) -> List[str]:
        """Lines of the table `experiments.evaluate` prints (none by default)."""
        return []

    # -- compare
    def column_names(self) -> List[str]:
        """The `compare` columns it can give (`missing/0.5/accuracy`), before any run is evaluated."""
        return []

    def columns(self, block: Dict[str, Any]) -> Dict[str, Any]:
        """`{column: value}` of a run's block; raises `KeyError`, `ValueError`, ... on a block of another
        format (`compare` then says to evaluate the run again)."""
        return {}

    def comparable(self, blocks: List[Dict[str, Any]]) -> bool:
        """Whether these runs' blocks can share one figure or be averaged (the same points, the same images)."""
        return len({json.dumps(self.layout(b)) for b in blocks}) == 1

    def layout(self, block: Dict[str, Any]) -> Any:
        """What must be equal for blocks to be compared point by point."""
        return block.get('n_samples')

    def mean_over_seeds(self, blocks: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """The blocks of several seeds averaged point by point (the curves `draw_comparison` reads), or `None`."""
        return None

    def draw_comparison(self, curves: Dict[str, Dict[str, Any]], path: Path) -> None:
        """Draws `{row label: block}` of several runs to `path` (called only where `comparison_figure` is set)."""


def mean_curves(blocks: List[Dict[str, Any]]) -> List[float]:
    """Lists of numbers averaged point by point."""
    return [statistics.fmean(values) for values in zip(*blocks)]
