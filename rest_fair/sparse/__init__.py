"""Sparse training engine: masks, layer densities, drop schedules and RigL/SET updates.

- :mod:`~rest_fair.sparse.densities`: ERK and uniform per-layer densities.
- :mod:`~rest_fair.sparse.masks`: :class:`MaskSet`, the masks of a network.
- :mod:`~rest_fair.sparse.schedules`: :class:`DropSchedule` (cosine decay of the drop fraction).
- :mod:`~rest_fair.sparse.rigl`: the prune-and-regrow topology update (RigL and SET).
- :mod:`~rest_fair.sparse.engine`: :class:`DynamicSparsity`, which drives them in training.
"""

from .densities import active_counts, erk_densities, uniform_densities
from .engine import DynamicSparsity
from .masks import SPARSE_INITS, MaskSet, maskable_parameters
from .rigl import REGROW_MODES, prune_and_regrow, update_topology
from .schedules import DROP_SCHEDULES, DropSchedule

__all__ = [
    "DROP_SCHEDULES",
    "REGROW_MODES",
    "SPARSE_INITS",
    "DropSchedule",
    "DynamicSparsity",
    "MaskSet",
    "active_counts",
    "erk_densities",
    "maskable_parameters",
    "prune_and_regrow",
    "uniform_densities",
    "update_topology",
]
