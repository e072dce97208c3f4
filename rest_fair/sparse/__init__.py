"""Sparse training engine: masks, layer densities, drop schedules and RigL/SET updates.

- :mod:`~rest_fair.sparse.densities`: ERK and uniform per-layer densities.
- :mod:`~rest_fair.sparse.masks`: :class:`MaskSet`, the masks of a network (random or
  magnitude initialisation, layers kept dense).
- :mod:`~rest_fair.sparse.schedules`: :class:`DropSchedule` (cosine decay of the drop fraction).
- :mod:`~rest_fair.sparse.rigl`: the prune-and-regrow topology update (RigL and SET).
- :mod:`~rest_fair.sparse.engine`: :class:`DynamicSparsity`, which drives them in training.
- :mod:`~rest_fair.sparse.compute`: which layers train with sparse kernels
  (``sparse_compute``); :mod:`~rest_fair.sparse.csr_linear` holds the CSR layer and its
  autograd function, :mod:`~rest_fair.sparse.kernels` the compiled CPU kernels they run
  on, :mod:`~rest_fair.sparse.csr_engine` the engine that converts them.
- :mod:`~rest_fair.sparse.modules`: which linear layers are sparse, a layer's density,
  replacing a submodule.
"""

from .densities import active_counts, erk_densities, uniform_densities
from .engine import UPDATE_TIMINGS, DynamicSparsity
from .masks import (
    DENSE_LAYER_ALIASES,
    LAYER_DENSITIES,
    SPARSE_INITS,
    MaskSet,
    maskable_parameters,
    resolve_dense_layers,
    unmasked_weights,
)
from .rigl import REGROW_MODES, prune_and_regrow, update_topology
from .schedules import DROP_SCHEDULES, DropSchedule

__all__ = [
    "DENSE_LAYER_ALIASES",
    "DROP_SCHEDULES",
    "LAYER_DENSITIES",
    "REGROW_MODES",
    "SPARSE_INITS",
    "UPDATE_TIMINGS",
    "DropSchedule",
    "DynamicSparsity",
    "MaskSet",
    "active_counts",
    "erk_densities",
    "maskable_parameters",
    "prune_and_regrow",
    "resolve_dense_layers",
    "uniform_densities",
    "unmasked_weights",
    "update_topology",
]
