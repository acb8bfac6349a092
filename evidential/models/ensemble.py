r"""
# Deep ensembles (Lakshminarayanan et al., 2017) as Packed-Ensembles with $\alpha = M$, $\gamma = 1$

`M` networks of the same architecture, each initialised with its own seed (`member_seeds`), held as one
`PackedEnsemble` whose every layer is the $M$ members' layers side by side (grouped convolutions and
block-diagonal linear layers: `evidential/models/packed.py`): one forward gives `[M, N, K]` outputs and no
weight connects two members, so each member is exactly the network it would be alone.
"""
from typing import List, Type

import numpy as np
import torch
import torch.nn as nn

from evidential.models.packed import PackedEnsemble


def member_seeds(seed: int, size: int) -> List[int]:
    """Independent initialisation seeds of `size` members (numpy `SeedSequence(seed).spawn`):
    member i's seed does not depend on the ensemble size, and runs with nearby seeds share no member."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(size)]


def deep_ensemble(body_cls: Type[nn.Module], n_classes: int, seeds: List[int], **body_kwargs) -> PackedEnsemble:
    """`len(seeds)` bodies `body_cls(n_classes, **body_kwargs)`, member i initialised under `seeds[i]`, packed
    into one `PackedEnsemble` (`alpha = M`, `gamma = 1`)."""
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        members.append(body_cls(n_classes, **body_kwargs))
    m = len(members)
    return PackedEnsemble(body_cls, n_classes, alpha=m, num_estimators=m, gamma=1, **body_kwargs).load_members(members)
