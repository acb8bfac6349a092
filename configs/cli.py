"""
# Command-line overrides for labml configurations

labml has no command-line parser, and its `experiment.configs(conf, values)` keeps an unknown option
*name* as a plain string and never converts types. This module is the thin, explicit layer in front
of it (in the spirit of nanoGPT's configurator):

    python -m experiments.evidence_mnist [preset=NAME] [key=value ...]

* values are parsed as Python literals (`3e-4`, `[(0, 0.), (1, 1.)]`, `True`), falling back to the
  raw string, then checked against the key's declared type;
* option keys (`loss_func`, `optimizer.optimizer`, ...) accept only their registered names;
* ranges are checked (`epochs >= 1`, `0 <= dropout < 1`, ...), and counts have upper bounds
  (`UPPER_BOUNDS`: `epochs <= 10,000`, batch sizes <= 65,536, ...; `train_batch_size` also at most the
  training set, checked by `configs.runner.prepare` once the data is loaded);
* NaN and infinities (`nan`, `-inf`, `1e999`) are refused for every number, and so are integers beyond a
  C long and floats too large to be an exact integer (`epochs=1e100`);
* every override is printed;
* any mistake raises `UsageError` before anything is written (the entry point prints it as one line on
  stderr and exits with code 2).
"""
import ast
import difflib
import functools
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, get_args, get_origin

from labml_nn.optimizers.configs import OptimizerConfigs

from configs.compat import declarations
from configs.registry import Check, Preset, fraction_open, non_negative, one_of, positive
from evidential.precision import PRECISIONS



def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped (`\\n`, `\\x00`, `\\udcff`), so
    that it prints as one line on any terminal or stream encoding."""
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class UsageError(ValueError):
    """A bad command line; the message is shown as one line, and the program exits with code 2."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


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
OPTIMIZERS = ['Adam', 'AdamW', 'SGD', 'NesterovSGD', 'RAdam', 'AdaBelief', 'FusedAdam']


def _betas(v):
    if len(v) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v):
        return 'must be two numbers in [0, 1), e.g. (0.9, 0.999)'


def _holdout(v): return None if 0 <= v <= 0.5 else 'must be in [0, 0.5] (0 validates on the test set)'


def _url(v):
    return None if v == '' or v.startswith(('http://', 'https://')) else 'must be an http:// or https:// URL'


def _device(v):
    from evidential.data import DeviceError, resolve_device
    try:
        resolve_device(v)
    except DeviceError as e:
        return e.reason
    except (ValueError, RuntimeError) as e:
        return f'is not a device ({e})'


#: The largest integer any key accepts (a C long: seeds and counts reach torch as one)
INT_LIMIT = 2 ** 63 - 1

#: Upper bounds of counts, for every family that has the key (a family's own checks cannot widen them).
#: Sensible, not tight: far above any run this app makes, low enough that a typo (`epochs=1e100`) is refused.
UPPER_BOUNDS: Dict[str, int] = {
    'epochs': 10_000,
    'train_size': 10 ** 9,
    'train_batch_size': 65_536,  # and at most the training set (checked once the data is loaded)
    'valid_batch_size': 65_536,  # a larger one than the set is harmless: the last batch is just shorter
    'log_interval': 100_000,
    'optimizer.warmup': 10 ** 9,
}

# Range checks of the keys every family has: key -> function returning an error text (or None when the
# value is fine). Each family adds its own (`Family.checks`).
CHECKS: Dict[str, Check] = {
    'epochs': positive,
    'train_batch_size': positive,
    'valid_batch_size': positive,
    'log_interval': positive,
    'seed': lambda v: None if 0 <= v < 2 ** 63 else 'must be in [0, 2**63)',
    'holdout': _holdout,
    'train_size': non_negative,
    'lr_schedule': one_of(('constant', 'cosine', 'cosine_epochs')),
    'lr_period_epochs': positive,
    'device': _device,
    'precision': one_of(PRECISIONS),
    'dashboard': _url,
    'optimizer.learning_rate': positive,
    'optimizer.weight_decay': non_negative,
    'optimizer.eps': positive,
    'optimizer.momentum': fraction_open,
    'optimizer.betas': _betas,
    'optimizer.warmup': non_negative,
}


#: What labml_nn's optimizer keys mean (their class has no comments of ours to read)
OPTIMIZER_HELP = {
    'optimizer': 'the optimizer', 'learning_rate': 'its learning rate',
    'weight_decay': 'weight decay (L2) coefficient', 'weight_decouple': 'decoupled weight decay (AdamW style)',
    'weight_decay_absolute': 'weight decay not scaled by the learning rate (with weight_decouple)',
    'betas': 'Adam-type moment coefficients (beta1, beta2)', 'eps': 'Adam-type denominator epsilon',
    'momentum': 'SGD momentum', 'amsgrad': 'the AMSGrad variant of Adam', 'warmup': 'learning-rate warm-up steps',
}
_DECLARATION = re.compile(r'^    ([A-Za-z_][A-Za-z0-9_]*)\s*:')


@functools.lru_cache(maxsize=None)  # reading the classes' source is slow, and `schema` is called per command line
def key_help(configs_class) -> Dict[str, str]:
    """Each key's meaning: the comment lines right above its declaration in the Configs classes of this project
    (the most derived class that declares the key with a comment wins)."""
    meanings: Dict[str, str] = {}
    for cls in configs_class.__mro__:
        if not cls.__module__.startswith(('configs.', 'tests.')):
            continue
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        comment: List[str] = []
        for line in lines:
            stripped = line.strip()
            match = _DECLARATION.match(line)
            if stripped.startswith('#') and line.startswith('    #'):
                comment.append(stripped.lstrip('#').strip())
            elif match and comment:
                meanings.setdefault(match.group(1), ' '.join(comment))
                comment = []
            else:
                comment = []
    return meanings


def _labml_fields(conf, prefix: str = '') -> Dict[str, Field]:
    """Declared keys, types, defaults and option names of a labml `Configs` instance (`configs.compat`)."""
    types, defaults, options = declarations(conf)
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
    meanings = key_help(configs_class)
    for k, f in fields.items():
        f.help = OPTIMIZER_HELP.get(k[len('optimizer.'):], '') if k.startswith('optimizer.') else meanings.get(k, '')
    return dict(sorted(fields.items()))


def parse_literal(raw: str) -> Any:
    """`'3e-4'` → `0.0003`, `'[(0, 0.), (1, 1.)]'` → a list, anything else → the raw string."""
    try:
        return ast.literal_eval(raw)
    except Exception:  # noqa: BLE001 - ValueError, SyntaxError, TypeError ({[1]: 2}), MemoryError, RecursionError...
        return raw


def _type_name(t) -> str:
    if get_args(t):
        return str(t).replace('typing.', '')
    return getattr(t, '__name__', str(t).replace('typing.', ''))


class _Refused(Exception):
    """A value that has the right type but cannot be used (non-finite, too large); carries the reason."""


def _convert(tp, value):
    """`value` as type `tp` (a plain type or `List[...]` / `Tuple[...]`), or None when it is not one.
    Raises `_Refused` for numbers of the right type that no key can use (NaN, inf, beyond `INT_LIMIT`)."""
    t = get_origin(tp) or tp
    if t is bool:
        if isinstance(value, str) and value.lower() in ('true', 'false'):
            return value.lower() == 'true'
        return value if isinstance(value, bool) else None
    if t is int:
        if isinstance(value, float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _Refused(f'must be a finite whole number, got {value!r}')
            if not value.is_integer():
                return None
            if abs(value) > 2 ** 53:  # beyond this a float is not an exact whole number any more
                raise _Refused(f'is too large ({value:g})')
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT_LIMIT:
                raise _Refused(f'is too large (at most {INT_LIMIT})')
            return value
        return None
    if t is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        try:
            value = float(value)
        except OverflowError:
            raise _Refused('is too large for a float') from None
        if not math.isfinite(value):
            raise _Refused(f'must be a finite number, got {value!r} (NaN and infinities are refused)')
        return value
    if t is str:
        return value if isinstance(value, str) else None
    if t in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return None
        args = get_args(tp)
        if t is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Refused(f'must have {len(args)} elements, got {len(value)}')
            items = [_convert(a, v) for a, v in zip(args, value)]
        elif args:
            items = [_convert(args[0], v) for v in value]
        else:
            items = list(value)
        if any(i is None for i in items):
            return None
        return t(items)
    return value


def _shown(raw: Any, limit: int = 80) -> str:
    """`raw` as it appears in a message: a command-line string as given, anything else as its repr;
    cut at `limit` characters."""
    text = raw if isinstance(raw, str) else repr(raw)
    return text if len(text) <= limit else text[:limit] + f'... ({len(text):,} characters)'



def coerce(f: Field, raw: Any) -> Any:
    """Converts `raw` (a string from the command line, or a Python value from a preset) to `f`'s type.
    Raises `UsageError` for a value of another type, and for numbers no key can use: NaN, infinities
    (`nan`, `inf`, `1e999`), integers beyond `INT_LIMIT`, floats too large for an exact integer."""
    value = parse_literal(raw) if isinstance(raw, str) else raw
    if f.is_option:
        if not isinstance(raw, str) or raw not in f.options:
            close = difflib.get_close_matches(str(raw), f.options, n=2, cutoff=0.5) if isinstance(raw, str) else []
            hint = f" (did you mean {' or '.join(close)}?)" if close else ''
            raise UsageError(f"{f.key}={_shown(raw)}: unknown option{hint}; valid: {', '.join(f.options)}")
        return raw
    t = get_origin(f.type) or f.type
    if t is str:
        text = raw if isinstance(raw, str) else str(raw)
        if '\x00' in text:
            raise UsageError(f"{f.key}={_shown(raw)}: must not contain a NUL character")
        return text
    if isinstance(value, str) and t in (int, float) and value.strip().lower().lstrip('+-') in (
            'nan', 'inf', 'infinity'):
        raise UsageError(f"{f.key}={_shown(raw)}: must be a finite number (NaN and infinities are refused)")
    if t not in (bool, int, float, list, tuple):
        return value
    try:
        converted = _convert(f.type, value)
    except _Refused as e:
        raise UsageError(f"{f.key}={_shown(raw)}: {e}") from None
    except RecursionError:  # a literal nested deeper than any type here
        converted = None
    if converted is None:
        raise UsageError(f"{f.key}={_shown(raw)}: expected {_type_name(f.type)}, got {type(value).__name__}")
    return converted


def check(key: str, value: Any, checks: Optional[Dict[str, Check]] = None) -> None:
    """Raises `UsageError` when `checks` (default: the shared `CHECKS`) find a problem with `value`."""
    fn = (CHECKS if checks is None else checks).get(key)
    try:
        problem = fn(value) if fn else None
    except Exception as e:  # noqa: BLE001 - a check that cannot even judge the value refuses it
        problem = f'not a valid value ({type(e).__name__}: {e})'
    bound = UPPER_BOUNDS.get(key)
    if not problem and bound is not None and isinstance(value, (int, float)) and value > bound:
        problem = f'must be at most {bound:,}'
    if problem:
        raise UsageError(f"{key}={_shown(repr(value))}: {problem}")


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
             checks: Optional[Dict[str, Check]] = None) -> Dict[str, Any]:
    """Coerces and checks every value (range checks: `checks`, default the shared `CHECKS`);
    raises `UsageError` on the first problem."""
    out = {}
    for key, raw in values.items():
        if key not in fields:
            if key in HIDDEN_KEYS:
                raise UsageError(f"{key} cannot be set: it is derived by the experiment")
            close = list(dict.fromkeys(difflib.get_close_matches(key, fields, n=3, cutoff=0.6) +
                                       [k for k in fields if k.split('.')[-1] == key.split('.')[-1] or key in k]))
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ''
            raise UsageError(f"unknown key {key!r}{hint}; see --help for the list")
        value = coerce(fields[key], raw)
        check(key, value, checks)
        out[key] = value
    return out


def format_help(prog: str, fields: Dict[str, Field], presets: Dict[str, Preset],
                checks: Optional[Dict[str, Check]] = None) -> str:
    """`--help`: the presets, then every key with its type, default, allowed values (options, and the names a
    string key takes) and meaning."""
    lines = [f"usage: python -m {prog} [preset=NAME] [key=value ...]", '',
             'Values are Python literals (3e-4, True, [(0, 0.), (1, 1.)]) or plain strings.', '',
             'presets:']
    for name, p in presets.items():
        lines.append(f"  {name:<10} {p.description}")
    lines += ['', 'keys: type, default [allowed values]; meaning']
    for f in fields.values():
        default = repr(f.default) if f.default is not None else '-'
        choices = f.options or getattr((checks or {}).get(f.key), 'choices', None)
        opts = f"  [{' | '.join(choices)}]" if choices else ''
        lines.append(f"  {f.key:<26} {_type_name(f.type) if not f.options else 'option':<8} {default}{opts}")
        if f.help:
            lines.append(f"      {f.help}")
    return '\n'.join(lines)


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
        print(format_help(family.prog, fields, family.presets, checks))
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
