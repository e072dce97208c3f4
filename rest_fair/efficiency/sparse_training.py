"""Truly sparse training of very sparse linear layers on a *fixed* pattern, outside ``fit``.

:func:`to_sparse_training` copies a masked network with
:class:`~rest_fair.sparse.csr_linear.CSRLinear` layers for its very sparse ``nn.Linear``
ones; :func:`load_dense_weights` writes the trained weights back. Inside ``fit``,
``RESTClassifier(sparse_compute=...)`` does this with topology updates
(:mod:`rest_fair.sparse.compute`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from ..sparse.checks import check_masks
from ..sparse.csr_linear import CSRLinear
from ..sparse.modules import check_threshold, set_submodule, sparse_linear_layers

__all__ = ["SparseTrainableLinear", "load_dense_weights", "to_sparse_training"]

_DEPRECATED = (
    "SparseTrainableLinear(weight, mask, bias) is deprecated and will be removed in the "
    "next release; use rest_fair.sparse.csr_linear.CSRLinear(linear, mask)."
)


class SparseTrainableLinear(CSRLinear):
    """Deprecated: a :class:`~rest_fair.sparse.csr_linear.CSRLinear` built from tensors.

    Parameters
    ----------
    weight : Tensor of shape (out_features, in_features)
        Initial weights; only positions where ``mask`` is True are kept (exact zeros
        included).
    mask : bool Tensor of the same shape
        The fixed sparsity pattern.
    bias : Tensor of shape (out_features,) or None
    """

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias) -> None:
        warnings.warn(_DEPRECATED, FutureWarning, stacklevel=2)
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
        Plain ``nn.Linear`` layers with a mask at or below this density (see
        :func:`~rest_fair.sparse.modules.sparse_linear_layers`) become
        :class:`~rest_fair.sparse.csr_linear.CSRLinear` layers.

    Returns
    -------
    module : nn.Module
        The copy; build its optimizer after converting (its parameters are new). Its
        ``state_dict`` has the keys and shapes of ``module``'s.
    converted : list of str
        Names of the converted layers; ``[""]`` when ``module`` is itself a sparse enough
        ``nn.Linear`` (the copy is then one ``CSRLinear``).
    """
    threshold = check_threshold(density_threshold, "density_threshold")
    masks = dict(masks)
    check_masks(module, masks)
    out = copy.deepcopy(module)
    converted = []
    for name, sub in sparse_linear_layers(out, masks, threshold).items():
        mask = masks.get(f"{name}.weight" if name else "weight")
        if mask is None:
            continue
        if not name:  # the network is itself the layer
            return CSRLinear(sub, mask), [name]
        set_submodule(out, name, CSRLinear(sub, mask, name=name))
        converted.append(name)
    return out, converted


@torch.no_grad()
def load_dense_weights(sparse_module: nn.Module, dense_module: nn.Module) -> None:
    """Copy the state of ``sparse_module`` into the same-architecture ``dense_module``.

    Parameters
    ----------
    sparse_module : nn.Module
        Returned by :func:`to_sparse_training` (and trained).
    dense_module : nn.Module
        The original architecture; updated in place (inactive weights become 0).

    Raises
    ------
    TypeError
        If ``dense_module`` holds CSR layers (the two arguments swapped).
    """
    if any(isinstance(m, CSRLinear) for m in dense_module.modules()):
        raise TypeError("load_dense_weights(sparse_module, dense_module): the second argument "
                        "holds CSR layers; it must be the dense network to write into.")
    dense_module.load_state_dict(sparse_module.state_dict())
