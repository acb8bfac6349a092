"""
# Command-line overrides for labml configurations

labml has no command-line parser, and its `experiment.configs(conf, values)` keeps an unknown option
*name* as a plain string and never converts types. This module is the thin, explicit layer in front
of it (in the spirit of nanoGPT's configurator):

    python -m experiments.evidence_mnist [preset=NAME] [key=value ...]

* values are parsed as Python literals (`3e-4`, `[(0, 0.), (1, 1.)]`, `True`), falling back to the
  raw string, then checked against the key's declared type;
* option keys (`loss_func`, `optimizer.optimizer`, ...) accept only their registered names;
* ranges are checked (`epochs >= 1`, `0 <= dropout < 1`, ...);
* every override is printed;
* any mistake raises `UsageError` before anything is written (the entry point prints it as one line on
  stderr and exits with code 2).
"""
import ast
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, get_origin

from labml_nn.optimizers.configs import OptimizerConfigs



class UsageError(ValueError):
    """A bad command line; the message is shown as one line, and the program exits with code 2."""


@dataclass
class Field:
    key: str
    type: Any
    default: Any = None
    options: List[str] = field(default_factory=list)
    help: str = ''

    @property
    def is_option(self) -> bool:
        return bool(self.options)


# Keys a user cannot set: derived from the data or fixed by the experiment.
HIDDEN_KEYS = {'experiment_name', 'n_classes', 'optimizer'}
# labml_nn's OptimizerConfigs keys that are exposed (`parameters` etc. are wired by the experiment;
# `d_model`/`rho` only serve optimizers we do not offer).
OPTIMIZER_KEYS = {'optimizer', 'learning_rate', 'weight_decay', 'weight_decouple', 'weight_decay_absolute',
                  'betas', 'eps', 'momentum', 'amsgrad', 'warmup'}
# labml_nn optimizers that work for these experiments (Noam needs d_model, Sophia a Hessian estimate)
OPTIMIZERS = ['Adam', 'AdamW', 'SGD', 'NesterovSGD', 'RAdam', 'AdaBelief']


def positive(v): return None if v > 0 else 'must be > 0'
def non_negative(v): return None if v >= 0 else 'must be >= 0'
def fraction_open(v): return None if 0 <= v < 1 else 'must be in [0, 1)'
def at_least_one(v): return None if v >= 1 else 'must be >= 1'


def _betas(v):
    if len(v) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v):
        return 'must be two numbers in [0, 1), e.g. (0.9, 0.999)'


def _holdout(v): return None if 0 <= v <= 0.5 else 'must be in [0, 0.5] (0 validates on the test set)'


def _url(v):
    return None if v == '' or v.startswith(('http://', 'https://')) else 'must be an http:// or https:// URL'


def _device(v):
    from evidential.data import resolve_device
    try:
        resolve_device(v)
    except (ValueError, RuntimeError) as e:
        return str(e).split(': ', 1)[-1] if str(e).startswith('device=') else f'is not a device ({e})'


# Range checks of the keys every family has: key -> function returning an error text (or None when the
# value is fine). Each family adds its own (`Family.checks`).
CHECKS: Dict[str, Callable[[Any], Optional[str]]] = {
    'epochs': positive,
    'train_batch_size': positive,
    'valid_batch_size': positive,
    'log_interval': positive,
    'seed': non_negative,
    'holdout': _holdout,
    'lr_schedule': lambda v: None if v in ('constant', 'cosine', 'cosine_epochs') else
    'must be constant, cosine or cosine_epochs',
    'lr_period_epochs': positive,
    'device': _device,
    'dashboard': _url,
    'optimizer.learning_rate': positive,
    'optimizer.weight_decay': non_negative,
    'optimizer.eps': positive,
    'optimizer.momentum': fraction_open,
    'optimizer.betas': _betas,
    'optimizer.warmup': non_negative,
}


def _labml_fields(conf, prefix: str = '') -> Dict[str, Field]:
    """Declared keys, types, defaults and option names of a labml `Configs` instance.

    labml 0.5.3 has no public API for this, so we read the name-mangled tables its `Configs.__init__`
    fills (`__types`, `__defaults`, `__options`), the same ones its own `_to_json()` reads.
    """
    types = conf._Configs__types
    defaults = conf._Configs__defaults
    options = conf._Configs__options
    return {f'{prefix}{k}': Field(key=f'{prefix}{k}', type=t, default=defaults.get(k),
                                  options=[o for o in options.get(k, {}) if not o.startswith('_')])
            for k, t in types.items()}


def schema(configs_class, extra_defaults: Dict[str, Any]) -> Dict[str, Field]:
    """Every key a user may set for `configs_class`, with its type, default and valid option names."""
    fields = {k: f for k, f in _labml_fields(configs_class()).items() if k not in HIDDEN_KEYS}
    opt_fields = _labml_fields(OptimizerConfigs(), 'optimizer.')
    for k in OPTIMIZER_KEYS:
        fields[f'optimizer.{k}'] = opt_fields[f'optimizer.{k}']
    fields['optimizer.optimizer'].options = list(OPTIMIZERS)
    for k, v in extra_defaults.items():
        fields[k].default = v
    return dict(sorted(fields.items()))


def parse_literal(raw: str) -> Any:
    """`'3e-4'` → `0.0003`, `'[(0, 0.), (1, 1.)]'` → a list, anything else → the raw string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def _type_name(t) -> str:
    return getattr(t, '__name__', str(t).replace('typing.', ''))


def coerce(f: Field, raw: Any) -> Any:
    """Converts `raw` (a string from the command line, or a Python value from a preset) to `f`'s type."""
    value = parse_literal(raw) if isinstance(raw, str) else raw
    if f.is_option:
        if not isinstance(raw, str) or raw not in f.options:
            raise UsageError(f"{f.key}={raw}: unknown option; valid: {', '.join(f.options)}")
        return raw
    t = get_origin(f.type) or f.type
    if t is bool:
        if isinstance(value, str) and value.lower() in ('true', 'false'):
            return value.lower() == 'true'
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        return raw if isinstance(raw, str) else str(raw)
    elif t in (list, tuple):
        if isinstance(value, (list, tuple)):
            return t(value)
    else:
        return value
    raise UsageError(f"{f.key}={raw}: expected {_type_name(f.type)}, got {type(value).__name__}")


def check(key: str, value: Any, checks: Optional[Dict[str, Callable[[Any], Optional[str]]]] = None) -> None:
    """Raises `UsageError` when `checks` (default: the shared `CHECKS`) find a problem with `value`."""
    fn = (CHECKS if checks is None else checks).get(key)
    problem = fn(value) if fn else None
    if problem:
        raise UsageError(f"{key}={value!r}: {problem}")


def parse_argv(argv: List[str]) -> Tuple[Optional[str], Dict[str, str], bool]:
    """`[preset=NAME] [key=value ...]` → (preset, raw overrides in order, help requested)."""
    preset, overrides, want_help = None, {}, False
    for arg in argv:
        if arg in ('-h', '--help', 'help'):
            want_help = True
            continue
        if '=' not in arg or arg.startswith('='):
            raise UsageError(f"{arg!r}: expected key=value (see --help)")
        key, raw = arg.split('=', 1)
        key = key.strip().lstrip('-')
        if key == 'preset':
            preset = raw
        else:
            if key in overrides:
                raise UsageError(f"{key} is given twice")
            overrides[key] = raw
    return preset, overrides, want_help


def validate(fields: Dict[str, Field], values: Dict[str, Any],
             checks: Optional[Dict[str, Callable[[Any], Optional[str]]]] = None) -> Dict[str, Any]:
    """Coerces and checks every value (range checks: `checks`, default the shared `CHECKS`);
    raises `UsageError` on the first problem."""
    out = {}
    for key, raw in values.items():
        if key not in fields:
            if key in HIDDEN_KEYS:
                raise UsageError(f"{key} cannot be set: it is derived by the experiment")
            close = [k for k in fields if k.split('.')[-1] == key.split('.')[-1] or key in k]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ''
            raise UsageError(f"unknown key {key!r}{hint}; see --help for the list")
        value = coerce(fields[key], raw)
        check(key, value, checks)
        out[key] = value
    return out


def format_help(prog: str, fields: Dict[str, Field], presets: Dict[str, 'Preset']) -> str:
    lines = [f"usage: python -m {prog} [preset=NAME] [key=value ...]", '',
             'Values are Python literals (3e-4, True, [(0, 0.), (1, 1.)]) or plain strings.', '',
             'presets:']
    for name, p in presets.items():
        lines.append(f"  {name:<10} {p.description}")
    lines += ['', 'keys (default; options):']
    for f in fields.values():
        default = repr(f.default) if f.default is not None else '-'
        opts = f"  [{' | '.join(f.options)}]" if f.options else ''
        lines.append(f"  {f.key:<26} {_type_name(f.type) if not f.options else 'option':<8} {default}{opts}")
    return '\n'.join(lines)


@dataclass
class Preset:
    """Named settings: only what differs from the defaults, each with the reason in `reasons`."""
    description: str
    values: Dict[str, Any]
    reasons: Dict[str, str] = field(default_factory=dict)


def resolve(argv: List[str], family) -> Tuple[Dict[str, Any], Dict[str, Any], bool]:
    """
    Parses `argv` into the full, validated values of a `configs.registry.Family` (defaults ← preset ← overrides).

    Returns `(values, overrides, help_requested)`; prints the preset and every override.
    Raises `UsageError` on any mistake.
    """
    preset_name, raw, want_help = parse_argv(argv)
    fields = schema(family.configs, family.defaults)
    checks = {**CHECKS, **family.checks}
    if want_help:
        print(format_help(family.prog, fields, family.presets))
        return {}, {}, True
    values = validate(fields, family.defaults, checks)
    if preset_name is not None:
        if preset_name not in family.presets:
            raise UsageError(f"preset={preset_name}: unknown preset; valid: {', '.join(family.presets)}")
        preset = family.presets[preset_name]
        values.update(validate(fields, preset.values, checks))
        print(f"preset {preset_name}: {preset.description}")
        for k, v in preset.values.items():
            print(f"  {k} = {v!r}" + (f"  # {preset.reasons[k]}" if k in preset.reasons else ''))
    overrides = validate(fields, raw, checks)
    for k, v in overrides.items():
        print(f"override {k} = {v!r} (was {values.get(k, fields[k].default)!r})")
    values.update(overrides)
    return values, overrides, False
