"""
# The registry of model families

A *family* is one way of answering "how much should I trust this prediction?" — evidential, softmax,
MC dropout, a deep ensemble, ... Each is declared once, as a `Family` named `FAMILY` in its own
`configs/<family>.py`: its labml Configs class, experiment name, defaults and presets, argument
checks, the settings that label its runs in `compare`, and what it can do (`Capabilities`).

Everything else reads this registry: the entry points (`python -m experiments.<name>` and
`python -m experiments.train NAME`), `--help`, `experiments.evaluate` (which class rebuilds a run,
which sweeps apply), `experiments.compare` (labels) and the tests (one contract test per family).

Adding a family: its model code in `evidential/`, its `configs/<family>.py` with a `FAMILY`, one line
in `FAMILIES` below, and a three-line entry point `experiments/<name>.py`.
"""
import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

#: Experiment name → the module that declares its `FAMILY` (imported only when that family is used)
FAMILIES: Dict[str, str] = {
    'evidence_mnist': 'configs.evidence',
    'softmax_mnist': 'configs.softmax',
    'mc_dropout_mnist': 'configs.mc_dropout',
    'ensemble_mnist': 'configs.ensemble',
    'packed_mnist': 'configs.packed',
    'vote_mnist': 'configs.vote',
    'bayes_mnist': 'configs.bayes',
    'circuit_mnist': 'configs.circuit',
    'ddu_mnist': 'configs.ddu',
    'sngp_mnist': 'configs.sngp',
    'laplace_mnist': 'configs.laplace',
}

#: Keys that do not change what is trained (where files are, where it runs, how it is reported): a resume may
#: change them, a sweep leaves them out of a run's identity and name, `compare` out of labels and groups
NOT_TRAINING = frozenset({'data_dir', 'dashboard', 'download', 'device', 'log_interval', 'valid_batch_size'})


@dataclass(frozen=True)
class Capabilities:
    """What a family's models can do; evaluation runs only what applies and says what it skipped."""
    # A Dirichlet opinion: evidence, strength and the uncertainty mass `u` (rotated-digit figure, u histograms)
    dirichlet: bool = False
    # The prediction averages sampled outputs `[S, N, K]` (MC passes, members): it has a mutual information
    samples: bool = False
    # Differentiable in its (normalised) input: FGSM attacks apply
    input_gradients: bool = True
    # Marginalises missing inputs exactly (others see missing pixels filled with the background)
    marginalises_missing: bool = False


#: A range check: the value → an error text, or None when it is fine
Check = Callable[[Any], Optional[str]]


def positive(v): return None if v > 0 else 'must be > 0'
def non_negative(v): return None if v >= 0 else 'must be >= 0'
def fraction_open(v): return None if 0 <= v < 1 else 'must be in [0, 1)'


class one_of:
    """A check for a name among `choices` (`--help` lists them)."""

    def __init__(self, choices):
        self.choices = list(choices)

    def __call__(self, v) -> Optional[str]:
        if v in self.choices:
            return None
        close = difflib.get_close_matches(str(v), self.choices, n=2, cutoff=0.5)
        return f"must be one of {', '.join(self.choices)}" + (f" (did you mean {' or '.join(close)}?)" if close else '')


def between(lo, hi) -> Check:
    """A check for a count in `[lo, hi]` (families bound their own counts: members, samples, voters)."""
    return lambda v: None if lo <= v <= hi else f'must be in [{lo:,}, {hi:,}]'


@dataclass
class Preset:
    """Named settings: only what differs from the defaults, each with the reason in `reasons`."""
    description: str
    values: Dict[str, Any]
    reasons: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """Everything the app needs to know about one family of models."""
    # The labml experiment name: run folders are `logs/<name>/<uuid>`, the entry point `experiments.<name>`
    name: str
    # The labml Configs class
    configs: type
    # One line for `--help` and `python -m experiments.train --list`
    description: str
    # Values every run starts from (every option has an explicit default, so configs.yaml names what was used)
    defaults: Dict[str, Any]
    # Named presets: only what each changes, with reasons
    presets: Dict[str, Preset] = field(default_factory=dict)
    # Range checks of this family's keys, on top of the shared ones (`configs.cli.CHECKS`)
    checks: Dict[str, Check] = field(default_factory=dict)
    # Saved values → the settings that tell this family's runs apart in `compare` (beyond the shared ones)
    label_keys: Callable[[Dict[str, Any]], Sequence[str]] = lambda values: ()
    # Short names of settings in compare's labels (`{'ensemble_size': 'M'}`)
    label_names: Dict[str, str] = field(default_factory=dict)
    # The score that ranks the test set for `aurc` / `misclassification_auroc` (higher = less certain)
    primary_score: str = 'entropy'
    capabilities: Capabilities = Capabilities()

    @property
    def prog(self) -> str:
        return f'experiments.{self.name}'


def load_entry(entries: Dict[str, str], name: str, attribute: str, kind: str) -> Any:
    """The object `attribute` of the module registered as `name` in `entries` (a registry: name → module),
    imported on first use; raises `KeyError` with the known names, `RuntimeError` where its `name` differs."""
    if name not in entries:
        raise KeyError(f"unknown {kind} {name!r}; known: {', '.join(entries)}")
    entry = getattr(importlib.import_module(entries[name]), attribute)
    if entry.name != name:
        raise RuntimeError(f"{entries[name]}.{attribute} is called {entry.name!r}, registered as {name!r}")
    return entry


def get(name: str) -> Family:
    """The family called `name`; raises `KeyError` with the known names."""
    return load_entry(FAMILIES, name, 'FAMILY', 'family')


def names() -> List[str]:
    return list(FAMILIES)


def all_families() -> List[Family]:
    return [get(n) for n in FAMILIES]


def label_settings(family: Optional[Family], values: Dict[str, Any],
                   shared: Tuple[str, ...] = ('optimizer.weight_decay', 'dataset', 'epochs', 'seed')) -> Dict[str, Any]:
    """The settings that label a run in `compare`: the family's own, then the shared ones, as saved."""
    keys = list(family.label_keys(values) if family else ()) + list(shared)
    return {k: values[k] for k in keys if k in values}
