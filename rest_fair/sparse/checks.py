"""Consistency checks of user-given masks against a module."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["check_masks"]

_BAD_MASK_KEY = (
    "masks has key {key!r}, which is not a parameter of the module "
    "(expected names as in module.named_parameters())."
)
_BAD_MASK_SHAPE = "mask {key!r} has shape {mask}, but the parameter has shape {param}."


def check_masks(module: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Check that every mask names a parameter of ``module`` and has its shape.

    Raises
    ------
    KeyError
        For a mask whose name is not a parameter of ``module``.
    ValueError
        For a mask whose shape differs from its parameter's.
    """
    params = dict(module.named_parameters())
    for key, mask in masks.items():
        if key not in params:
            raise KeyError(_BAD_MASK_KEY.format(key=key))
        if tuple(mask.shape) != tuple(params[key].shape):
            raise ValueError(
                _BAD_MASK_SHAPE.format(
                    key=key, mask=tuple(mask.shape), param=tuple(params[key].shape)
                )
            )
