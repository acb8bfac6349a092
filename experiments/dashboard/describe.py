"""A run's configurations and description as the dashboard shows them.

labml sends each configuration's ``computed`` value as its ``repr``: for this app's data that is a 5,000-character
dump of tensors, for a function ``<function exp_linear_evidence at 0x7f...>``. :func:`tidy_configs` replaces such
values with a short description (the run's client does it before sending, the dashboard again for any other
client). labml marks every value the run was given as explicitly specified, and this app gives all of them; with a
description of the run (``describe`` in ``experiments.train``: the keys the preset and the command line set) only
those are marked, and they become the run's selected configurations, which the run page's summary card lists
(it says "Default configurations" when none is selected).
"""
import re
from typing import Any, Dict, Iterable, Optional

#: Longest configuration value shown as it is
MAX_VALUE_CHARS = 300

_OBJECT_REPR = re.compile(r'^<(?P<kind>[A-Za-z][\w -]*?) (?P<name>[^\s<>]+(?:<[\w]+>[^\s<>]*)*)'
                          r'(?: at 0x[0-9a-fA-F]+)?>$')
_HEAD = re.compile(r'^\s*[A-Za-z_][\w.]*\s*\(?')


def short_value(value: Any) -> Any:
    """``value`` unless it is the repr of an object: a function by its name, a tensor-holding or long value by
    its head (``Data(name='mnist', n_classes=10, ...)``)."""
    if not isinstance(value, str):
        return value
    m = _OBJECT_REPR.match(value.strip())
    if m:
        name = m.group('name').replace('.<locals>.', '.').replace('<lambda>', 'lambda')
        return f"{m.group('kind')} {name}"
    if 'tensor(' not in value and ' at 0x' not in value and len(value) <= MAX_VALUE_CHARS:
        return value
    head = value
    for stop in ('tensor(', '\n', ' at 0x'):
        head = head.split(stop, 1)[0]
    head = head[:MAX_VALUE_CHARS // 2]
    if ', ' in head:
        head = head[:head.rindex(', ')]
    elif _HEAD.match(head):
        head = _HEAD.match(head).group(0).rstrip('(').strip()
    head = re.sub(r'<[^<>]*\bat 0x[0-9a-fA-F]+>', '…', head)
    return f'{head.rstrip()} …' + (')' if '(' in head and ')' not in head else '')


def tidy_configs(configs: Dict[str, Any], set_keys: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """The configurations of a labml update with object reprs shortened and, given ``set_keys``, only those
    marked explicitly specified."""
    marked = None if set_keys is None else set(set_keys)
    out = {}
    for key, entry in configs.items():
        if isinstance(entry, dict):
            entry = {**entry, **{f: short_value(entry[f]) for f in ('computed', 'value') if f in entry}}
            if marked is not None:
                entry['is_explicitly_specified'] = key in marked
        out[key] = entry
    return out


def tidy_packet(data: Dict[str, Any], run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One labml update as the run's client sends it: configurations tidied, and with the run's description
    ``run`` the keys it set selected and its label as the comment of the run's first update (the run list shows
    it)."""
    data = dict(data)
    set_keys = run.get('set_keys') if run else None
    if isinstance(data.get('configs'), dict):
        data['configs'] = tidy_configs(data['configs'], set_keys)
        if set_keys is not None:
            data['selected_configs'] = [k for k in set_keys if k in data['configs']]
    if run and 'name' in data and not data.get('comment') and run.get('label'):
        data['comment'] = run_comment(run)
    return data


def run_comment(run: Dict[str, Any]) -> str:
    """``'e1d1732e · smoke · exp_linear, ep=2'``: the uuid prefix, the preset and the key settings."""
    label = str(run.get('label', ''))
    settings = label[label.index('(') + 1:label.rindex(')')] if '(' in label and label.endswith(')') else ''
    parts = [str(run.get('uuid', ''))[:8], f"preset {run['preset']}" if run.get('preset') else '', settings]
    return ' · '.join(p for p in parts if p)
