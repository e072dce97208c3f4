"""Consistency checks of user-given masks against a module."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["check_mask", "check_masks"]

_BAD_MASK_KEY = (
    "masks has key {key!r}, which is not a weight of the module: not a parameter "
    "name as in module.named_parameters() (buffers take no mask)."
)
_BAD_MASK_SHAPE = "mask {key!r} has shape {mask}, but the parameter has shape {param}."
_BAD_MASK_DTYPE = "mask {key!r} must be a bool torch.Tensor; got {what}."


def check_mask(key: str, mask: object, shape: tuple[int, ...]) -> None:
    """Check that ``mask`` is a bool tensor of ``shape`` (the weight named ``key``'s).

    Raises
    ------
    TypeError
        If ``mask`` is not a bool tensor (a float mask is not read as "non-zero").
    ValueError
        If its shape is not ``shape``.
    """
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        what = (f"dtype {mask.dtype}" if torch.is_tensor(mask)
                else f"a {type(mask).__module__}.{type(mask).__name__} (dtype "
                     f"{getattr(mask, 'dtype', None)}); use torch.as_tensor(mask)")
        raise TypeError(_BAD_MASK_DTYPE.format(key=key, what=what))
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(_BAD_MASK_SHAPE.format(key=key, mask=tuple(mask.shape),
                                                param=tuple(shape)))


def check_masks(module: nn.Module, masks: Mapping[str, torch.Tensor], *,
                weights: Mapping[str, torch.Tensor] | None = None) -> None:
    """Check that every mask is a bool tensor that names a parameter of ``module`` and has
    its shape.

    ``weights``, when given, are the tensors the masks may name instead of the
    parameters (by state-dict name: a layer training in CSR form holds its dense weight
    there, not among its parameters).

    Raises
    ------
    KeyError
        For a mask whose name is not a parameter of ``module``.
    TypeError
        For a mask that is not a bool tensor (a float mask is not read as "non-zero").
    ValueError
        For a mask whose shape differs from its parameter's.
    """
    params = dict(module.named_parameters()) if weights is None else weights
    for key, mask in masks.items():
        if key not in params:
            raise KeyError(_BAD_MASK_KEY.format(key=key))
        check_mask(key, mask, tuple(params[key].shape))
