"""Truly sparse training of very sparse linear layers, outside ``fit``.

``RESTClassifier(sparse_compute=...)`` trains sparse linear layers with CSR kernels inside
``fit``, topology updates included (see :mod:`rest_fair.sparse.compute`). This module
keeps the stand-alone form: :func:`to_sparse_training` copies a masked network with its
very sparse ``nn.Linear`` layers replaced by :class:`SparseTrainableLinear` (the same
kernels: CSR forward and input gradient, the weight gradient sampled at the pattern) on a
*fixed* pattern, and :func:`load_dense_weights` writes the trained weights back into the
dense architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from ..sparse.checks import check_masks
from ..sparse.csr_linear import CSRLinear

__all__ = ["SparseTrainableLinear", "load_dense_weights", "to_sparse_training"]

_BAD_THRESHOLD = "density_threshold must be a float in [0, 1]; got {value!r}."


class SparseTrainableLinear(CSRLinear):
    """A linear layer whose trainable weights are only the active ones (CSR pattern).

    A :class:`~rest_fair.sparse.csr_linear.CSRLinear` whose ``state_dict`` holds its own
    tensors (``values``, ``bias`` and the index buffers) rather than a dense weight.

    Parameters
    ----------
    weight : Tensor of shape (out_features, in_features)
        Initial weights; only positions where ``mask`` is True are kept (exact zeros
        included).
    mask : bool Tensor of the same shape
        The fixed sparsity pattern.
    bias : Tensor of shape (out_features,) or None
    """

    _persistent_pattern = True
    _save_to_state_dict = nn.Module._save_to_state_dict
    _load_from_state_dict = nn.Module._load_from_state_dict

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias) -> None:
        out_features, in_features = (int(s) for s in weight.shape)
        linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(weight.detach())
        if bias is not None:
            linear.bias = nn.Parameter(bias.detach().clone())
        super().__init__(linear, mask)


def to_sparse_training(
    module: nn.Module,
    masks: Mapping[str, torch.Tensor],
    *,
    density_threshold: float = 0.05,
) -> tuple[nn.Module, list[str]]:
    """Copy ``module`` with its very sparse ``nn.Linear`` layers made truly sparse.

    Parameters
    ----------
    module : nn.Module
        The masked network (not modified).
    masks : dict of str to bool tensor
        Parameter name -> mask, as ``RESTClassifier.masks_``.
    density_threshold : float, default=0.05
        Linear layers at or below this density become :class:`SparseTrainableLinear`.

    Returns
    -------
    module : nn.Module
        The copy; build its optimizer after converting (its parameters are new).
    converted : list of str
        Names of the converted layers.
    """
    if isinstance(density_threshold, bool) or not isinstance(density_threshold, (int, float)):
        raise ValueError(_BAD_THRESHOLD.format(value=density_threshold))
    if not 0.0 <= float(density_threshold) <= 1.0:
        raise ValueError(_BAD_THRESHOLD.format(value=density_threshold))
    masks = dict(masks)
    check_masks(module, masks)
    out = copy.deepcopy(module)
    converted = []
    for name, sub in list(out.named_modules()):
        if type(sub) is not nn.Linear or not name:
            continue
        mask = masks.get(f"{name}.weight")
        # the tolerance absorbs the rounding of per-layer active counts
        if mask is None or int(mask.sum()) / mask.numel() > density_threshold + 1e-6:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, SparseTrainableLinear(sub.weight, mask, sub.bias))
        converted.append(name)
    return out, converted


@torch.no_grad()
def load_dense_weights(sparse_module: nn.Module, dense_module: nn.Module) -> None:
    """Copy every weight of ``sparse_module`` into the same-architecture ``dense_module``.

    Parameters
    ----------
    sparse_module : nn.Module
        Returned by :func:`to_sparse_training` (and trained).
    dense_module : nn.Module
        The original architecture; updated in place (inactive weights become 0).
    """
    dense_subs = dict(dense_module.named_modules())
    for name, sub in sparse_module.named_modules():
        target = dense_subs[name]
        if isinstance(sub, SparseTrainableLinear):
            target.weight.copy_(sub.dense_weight())
            if sub.bias is not None:
                target.bias.copy_(sub.bias)
            continue
        for pname, p in sub.named_parameters(recurse=False):
            getattr(target, pname).copy_(p)
        for bname, b in sub.named_buffers(recurse=False):
            if b is not None:
                getattr(target, bname).copy_(b)
