"""Default chart cards on a run page: accuracy, and the spread of every distribution.

labml's client sends only the *mean* of a histogram indicator, so a histogram
such as ``u.correct`` reaches the app as one line. The training code therefore
also tracks quantile scalars named ``<name>.q<NN>`` (``u.correct.q10``,
``u.correct.q50``, ``u.correct.q90``, ...). This module groups such series by
``<name>`` and gives each group its own chart card on the run page, drawing the
10/50/90 % lines together so the spread of the distribution is visible over
training. It uses labml-app's own "custom metric" cards (the ones its "+" button
creates), so the charts are ordinary labml-app charts the user can edit or delete.

Card ids are deterministic (``auto-<name>``), so repeated updates never create a
card twice. A card is created only in the update in which its series first
appear, so a card the user deleted stays deleted.

labml-app stores a card's series selection as a list aligned, by position, with
the run's *sorted* series names, and does not re-align custom cards when new
series arrive later (its main "Metrics" card is re-aligned in
``MetricsAnalysis.track``). :func:`sync_run_charts` re-aligns every custom card
of the run by series name whenever the set of series changes. It also selects
each ``loss.*`` series on the main "Metrics" card when it first appears (see
:func:`_select_new_losses`).

Each card stores one entry per series of the run, so a run has at most :data:`MAX_CARDS_PER_RUN` cards
(default ones and the user's): its cards then take space proportional to its series count.
"""

import logging
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

_log = logging.getLogger('experiments.dashboard')

MAX_CARDS_PER_RUN = 32
"""Chart cards per run; a training run here gets 5-13 default ones. Beyond it no default card is added (one
warning in the log) and the page's "+" is answered 409."""

# '<name>.q<NN>'; labml names a value tracked as a histogram '<name>.q<NN>.mean'
# (e.g. when a wildcard such as tracker.set_histogram('u.*') also matches it)
QUANTILE_SERIES = re.compile(r'^(?P<base>.+)\.q(?P<q>\d{1,2})(?:\.mean)?$')
AUTO_PREFIX = 'auto-'


def chart_specs(series_names: Sequence[str]) -> List[Tuple[str, str, str, List[str]]]:
    """Cards for a run with these series: ``(metric_id, title, description, series)``.

    * ``accuracy.*`` series (train / valid) share one card;
    * every ``<name>.q<NN>`` group gets a card with its quantiles in ascending order.
    """
    specs = []
    accuracy = sorted(n for n in series_names if n.split('.')[0] == 'accuracy')
    if accuracy:
        specs.append((f'{AUTO_PREFIX}accuracy', 'Accuracy',
                      'Added by the dashboard: accuracy per epoch.', accuracy))

    groups: Dict[str, List[Tuple[int, str]]] = {}
    for name in series_names:
        m = QUANTILE_SERIES.match(name)
        if m:
            groups.setdefault(m.group('base'), []).append((int(m.group('q')), name))
    for base in sorted(groups, key=_group_order):
        quantiles = sorted(groups[base])
        pct = ' / '.join(f'{q}%' for q, _ in quantiles)
        specs.append((AUTO_PREFIX + re.sub(r'[^A-Za-z0-9]+', '-', base),
                      f'{_label(base)} · quantiles {pct}',
                      f'Added by the dashboard: spread of the {base} distribution over training '
                      f'({pct} quantiles).',
                      [name for _, name in quantiles]))
    return specs


FIRST_GROUPS = ('u.', 'p_max.')
"""Quantile groups with these prefixes come first, in this order (then alphabetical)."""


LABELS = {'u': 'u', 'p_max': 'max p̂'}
"""Readable names of tracked quantities in card titles."""


def _label(base: str) -> str:
    """``'p_max.wrong'`` -> ``'max p̂ (wrong)'``; unknown names are kept as they are."""
    head, _, rest = base.partition('.')
    if head not in LABELS:
        return base
    return f'{LABELS[head]} ({rest})' if rest else LABELS[head]


def _group_order(base: str):
    rank = next((i for i, prefix in enumerate(FIRST_GROUPS) if base.startswith(prefix)), len(FIRST_GROUPS))
    return rank, base


def _realign(preferences: List[int], old_names: Sequence[str], new_names: Sequence[str]) -> List[int]:
    """Carry a per-series selection from one sorted name list to another, by name."""
    by_name = {n: p for n, p in zip(old_names, preferences)}
    return [by_name.get(n, -1) for n in new_names]


def _series_names(run_uuid: str) -> Optional[List[str]]:
    """Sorted series names of a run (the order labml-app's charts index by)."""
    from labml_app.analyses.experiments.metrics import MetricsIndex
    key = MetricsIndex.get(run_uuid)
    if key is None:
        return None
    return sorted(key.load().tracking.keys())


def _select_new_losses(run_uuid: str, names: Sequence[str], new: set) -> None:
    """Show every ``loss.*`` series on the run's main "Metrics" card when it first appears.

    labml-app selects the ``loss.*`` series present in a run's *first* update and
    leaves later ones unselected, so ``loss.valid`` (first sent after an epoch)
    would be hidden. A series the user unselects later stays unselected.
    """
    from labml_app.analyses.experiments.metrics import MetricsPreferencesIndex
    new_losses = {n for n in new if n.split('.')[0] == 'loss'}
    key = MetricsPreferencesIndex.get(run_uuid) if new_losses else None
    if key is None:
        return
    prefs = key.load()
    selection = list(prefs.series_preferences)
    if len(selection) != len(names):
        return  # labml-app re-aligns it on the next read; do not guess
    for i, n in enumerate(names):
        if n in new_losses:
            selection[i] = 1
    prefs.update_preferences({'series_preferences': selection})


def card_count(run_uuid: str) -> int:
    """Custom chart cards of a run (the default ones and the user's)."""
    from labml_app.analyses.experiments.custom_metrics import CustomMetricsListIndex
    key = CustomMetricsListIndex.get(run_uuid)
    cards = key.load() if key is not None else None
    return len(cards.metrics) if cards is not None else 0


def series_names(run_uuid: str) -> List[str]:
    """Sorted series names of a run; empty before its first metrics arrive."""
    return _series_names(run_uuid) or []


def sync_run_charts(run_uuid: str, names_before: Sequence[str]) -> None:
    """After an update of ``run_uuid``: re-align custom cards and add new default cards.

    ``names_before`` are the run's sorted series names before the update.
    """
    from labml_app.analyses.experiments.custom_metrics import (
        CustomMetricModel, CustomMetricsListIndex, CustomMetricsListModel)
    from labml_app.analyses.experiments.metrics import MetricsPreferencesModel

    names = series_names(run_uuid)
    names_before = list(names_before)
    if names == names_before:
        return

    list_key = CustomMetricsListIndex.get(run_uuid)
    if list_key is None:
        cards = CustomMetricsListModel()
        cards.save()
        CustomMetricsListIndex.set(run_uuid, cards.key)
    else:
        cards = list_key.load()

    existing = {metric_id for metric_id, _ in cards.metrics}
    for metric_id, key in cards.metrics:
        card = key.load()
        if card is None:
            continue
        prefs = card.preference_key.load()
        prefs.update_preferences(
            {'series_preferences': _realign(list(prefs.series_preferences), names_before, names)})

    new = set(names) - set(names_before)
    _select_new_losses(run_uuid, names, new)
    created = False
    now = time.time()
    specs = [spec for spec in chart_specs(names) if spec[0] not in existing and new.intersection(spec[3])]
    room = max(0, MAX_CARDS_PER_RUN - len(cards.metrics))
    if len(specs) > room:
        _log.warning('run %s: %d default chart cards not added (first: %s), a run has at most %d',
                     run_uuid, len(specs) - room, specs[room][1][:80], MAX_CARDS_PER_RUN)
    for i, (metric_id, title, description, series) in enumerate(specs[:room]):
        prefs = MetricsPreferencesModel()
        selected = set(series)
        # per-epoch values: no smoothing, so the quantile lines show the measured values
        prefs.update_preferences({'series_preferences': [1 if n in selected else -1 for n in names],
                                  'smooth_value': 0.0})
        card = CustomMetricModel(name=title, description=description, metric_id=metric_id,
                                 # the page lists custom cards newest first: keep spec order
                                 created_time=now - i * 1e-3, preference_key=prefs.key)
        card.save()
        cards.metrics.append((metric_id, card.key))
        created = True
    if created or list_key is None:
        cards.save()
