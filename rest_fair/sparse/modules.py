"""What the sparse code needs to know about a network's modules: a mask's density, the
linear layers at or below a density threshold (:func:`sparse_linear_layers`, those that
sparse kernels compute: ``sparse_compute`` in ``fit``,
:func:`~rest_fair.efficiency.to_sparse_training` and
:func:`~rest_fair.efficiency.export_sparse`), replacing a submodule, element-wise modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any

import torch
from torch import nn

__all__ = [
    "DENSITY_TOLERANCE",
    "ELEMENTWISE",
    "check_threshold",
    "mask_density",
    "set_submodule",
    "snapshot",
    "sparse_linear_layers",
    "within_threshold",
]

#: Modules that act element-wise (and identically on any layout) in evaluation mode.
ELEMENTWISE = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Dropout,
)

#: How far above the threshold a density may be and still count as at it in
#: :func:`sparse_linear_layers`: floating-point error (``1 - 0.95`` is
#: ``0.050000000000000044``) does not decide whether a layer is sparse.
DENSITY_TOLERANCE = 1e-6

_BAD_THRESHOLD = "{name} must be a float in [0, 1]; got {value!r}."


def within_threshold(density: float, threshold: float) -> bool:
    """Whether a layer of ``density`` counts as at or below ``threshold``, up to
    :data:`DENSITY_TOLERANCE`."""
    return density <= threshold + DENSITY_TOLERANCE


def check_threshold(value: Any, name: str) -> float:
    """``value`` as a float if it is a density threshold, a number in [0, 1].

    Raises
    ------
    ValueError
        Otherwise, naming the parameter ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not (
        0.0 <= float(value) <= 1.0
    ):
        raise ValueError(_BAD_THRESHOLD.format(name=name, value=value))
    return float(value)


def mask_density(mask: torch.Tensor) -> float:
    """Fraction of the entries of a boolean ``mask`` that are active (1.0 when it is empty)."""
    n = mask.numel()
    return int(torch.count_nonzero(mask)) / n if n else 1.0


def snapshot(tensors: Mapping[str, torch.Tensor],
             live: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` detached, each copied when it shares memory with one of ``live``.

    A snapshot must not change with the tensors that training keeps updating (``live``);
    a tensor built afresh for the snapshot (a CSR layer's dense weight or mask) is already
    its own and is not copied again. Entries that are not tensors (a
    :class:`~rest_fair.sparse.csr_linear.PackedWeight`, its own copy already) are kept as
    they are.
    """
    addresses = {t.untyped_storage().data_ptr() for t in live}
    out = {}
    for key, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            out[key] = tensor
            continue
        tensor = tensor.detach()
        shared = tensor.untyped_storage().data_ptr() in addresses
        out[key] = tensor.clone() if shared else tensor
    return out


def set_submodule(module: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule of ``module`` called ``name`` (dotted, as in ``named_modules``)."""
    parent, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent), attr, new)


def sparse_linear_layers(
    module: nn.Module, masks: Mapping[str, torch.Tensor], threshold: float
) -> dict[str, nn.Linear]:
    """The plain ``nn.Linear`` layers of ``module`` whose density is at or below ``threshold``.

    Parameters
    ----------
    module : nn.Module
    masks : mapping of str to bool tensor
        Parameter name -> mask; a layer whose weight has no mask has density 1.
    threshold : float
        Highest density selected, up to :data:`DENSITY_TOLERANCE`.

    Returns
    -------
    dict of str to nn.Linear
        Module name -> layer, in module order; ``""`` when ``module`` itself is selected.
        Subclasses of ``nn.Linear`` are left out: some (the out-projection of
        ``nn.MultiheadAttention``) are used through their weights, not their ``forward``.
    """
    out = {}
    for name, sub in module.named_modules():
        mask = masks.get(f"{name}.weight" if name else "weight")
        density = 1.0 if mask is None else mask_density(mask)
        if type(sub) is nn.Linear and within_threshold(density, threshold):
            out[name] = sub
    return out
