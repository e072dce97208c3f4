"""Per-layer density allocation: Erdős–Rényi–Kernel (ERK) and uniform.

ERK (Evci et al., 2020) gives layer ``l`` with weight shape ``(n_out, n_in, k_h, k_w)`` the
density ``eps * sum(shape) / prod(shape)``, with one global ``eps`` chosen so that the total
number of active weights equals ``density * total``. A layer whose density would exceed 1 is
made dense and ``eps`` is solved again for the remaining layers, until no layer exceeds 1.

Every masked weight is one layer here, read from its shape alone: a 2-D ``(n_out, n_in)``
weight is a linear layer with fan-in ``n_in`` and fan-out ``n_out``. The input projection
``(3E, E)`` of an ``nn.MultiheadAttention`` is therefore one layer with fan-out ``3E``
(not three ``(E, E)`` ones), and a recurrent layer's ``weight_ih_l{k}`` of shape
``(gates * hidden, n_in)`` one layer with fan-out ``gates * hidden``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["active_counts", "erk_densities", "uniform_densities"]

_BAD_DENSITY = "density must be in (0, 1]; got {!r}."


def _check_density(density: float) -> None:
    if not (0.0 < density <= 1.0):
        raise ValueError(_BAD_DENSITY.format(density))


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """ERK density of every layer.

    Parameters
    ----------
    shapes : mapping of str to tuple of int
        Weight shape of each masked layer, e.g. ``(n_out, n_in)`` for a linear layer and
        ``(n_out, n_in, k_h, k_w)`` for a convolution.
    density : float in (0, 1]
        Global fraction of weights that stay active.

    Returns
    -------
    dict of str to float
        Density of each layer; ``sum(d_l * n_l) == density * sum(n_l)`` up to float error.
        A layer without weights (a dimension of size 0) has density 1.
    """
    _check_density(density)
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / numel[name] if numel[name] else 0.0
           for name, shape in shapes.items()}
    target = density * sum(numel.values())
    dense = {name for name, n in numel.items() if n == 0}
    while True:
        sparse_layers = [name for name in shapes if name not in dense]
        budget = target - sum(numel[name] for name in dense)
        if not sparse_layers:
            break
        eps = budget / sum(raw[name] * numel[name] for name in sparse_layers)
        too_dense = [name for name in sparse_layers if eps * raw[name] > 1.0]
        if not too_dense:
            break
        dense.update(too_dense)
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """The same density for every layer.

    Parameters
    ----------
    shapes : mapping of str to tuple of int
        Weight shape of each masked layer.
    density : float in (0, 1]
        Density of every layer.

    Returns
    -------
    dict of str to float
    """
    _check_density(density)
    return dict.fromkeys(shapes, float(density))


def active_counts(
    shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]
) -> dict[str, int]:
    """Number of active weights of each layer, at least one per layer.

    Parameters
    ----------
    shapes : mapping of str to tuple of int
        Weight shape of each masked layer.
    densities : mapping of str to float
        Density of each layer.

    Returns
    -------
    dict of str to int
    """
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    return {name: min(n, max(1, round(densities[name] * n))) for name, n in numel.items()}
