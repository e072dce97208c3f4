"""Truly sparse training of very sparse linear layers (CSR forward and backward).

Masked training (what :mod:`rest_fair.sparse` does, like the REST and RigL code) keeps
dense weights and zeroes the inactive ones after every step, so a step costs as much as
a dense one. :class:`SparseTrainableLinear` stores only the active weights, as the
parameter ``values`` of a fixed CSR pattern (int32 indices), and computes

- forward: ``Y_t = W_csr @ X_t + b``;
- gradient of the input: ``W_csr^T @ G_t`` (the transposed pattern is precomputed with
  a permutation of ``values``);
- gradient of ``values``: ``(G_t @ X)`` sampled at the pattern only
  (``torch.sparse.sampled_addmm``), i.e. never the dense weight gradient.

The pattern is fixed: for a RigL topology update the dense gradient is needed once;
write the weights back with :func:`load_dense_weights`, update the masks on the dense
module, and convert again (a topology update is rare, every ``update_interval`` steps).
Pays off at densities of a few percent (see ``benchmarks/bench_efficiency.py``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from ..sparse.checks import check_masks

__all__ = ["SparseTrainableLinear", "load_dense_weights", "to_sparse_training"]

_BAD_THRESHOLD = "density_threshold must be a float in [0, 1]; got {value!r}."


def _csr(crow, col, values, size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class _CSRLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_t, values, bias, layer):
        matrix = _csr(layer.crow_indices, layer.col_indices, values, layer.shape)
        out = torch.mm(matrix, x_t) if bias is None else torch.addmm(bias[:, None], matrix, x_t)
        ctx.save_for_backward(x_t, values)
        ctx.layer = layer
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_t):
        x_t, values = ctx.saved_tensors
        layer = ctx.layer
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            transposed = _csr(
                layer.crow_indices_t,
                layer.col_indices_t,
                values[layer.perm_t],
                (layer.shape[1], layer.shape[0]),
            )
            grad_x = torch.mm(transposed, grad_t)
        if ctx.needs_input_grad[1]:
            pattern = _csr(
                layer.crow_indices, layer.col_indices, torch.zeros_like(values), layer.shape
            )
            grad_values = torch.sparse.sampled_addmm(
                pattern, grad_t.contiguous(), x_t.t(), beta=0.0
            ).values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_t.sum(dim=1)
        return grad_x, grad_values, grad_bias, None


class SparseTrainableLinear(nn.Module):
    """A linear layer whose trainable weights are only the active ones (CSR pattern).

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
        super().__init__()
        out_features, in_features = (int(s) for s in weight.shape)
        self.shape = (out_features, in_features)
        mask = mask.to(device=weight.device, dtype=torch.bool)
        crow = torch.zeros(out_features + 1, dtype=torch.int32, device=weight.device)
        crow[1:] = torch.cumsum(mask.sum(dim=1), 0)
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", mask.nonzero()[:, 1].to(torch.int32))
        mask_t = mask.t()
        crow_t = torch.zeros(in_features + 1, dtype=torch.int32, device=weight.device)
        crow_t[1:] = torch.cumsum(mask_t.sum(dim=1), 0)
        order = torch.full(self.shape, -1, dtype=torch.long, device=weight.device)
        order[mask] = torch.arange(int(mask.sum()), device=weight.device)
        self.register_buffer("crow_indices_t", crow_t)
        self.register_buffer("col_indices_t", mask_t.nonzero()[:, 1].to(torch.int32))
        self.register_buffer("perm_t", order.t()[mask_t].contiguous())
        self.values = nn.Parameter(weight.detach()[mask].clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def out_features(self) -> int:
        return self.shape[0]

    def mask(self) -> torch.Tensor:
        """The boolean pattern, dense."""
        rows = torch.repeat_interleave(
            torch.arange(self.shape[0], device=self.values.device),
            torch.diff(self.crow_indices.long()),
        )
        out = torch.zeros(self.shape, dtype=torch.bool, device=self.values.device)
        out[rows, self.col_indices.long()] = True
        return out

    def dense_weight(self) -> torch.Tensor:
        """The weights as a dense matrix (zeros outside the pattern)."""
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        out[self.mask()] = self.values.detach()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_t = x.reshape(-1, self.shape[1]).t()
        out_t = _CSRLinearFunction.apply(x_t, self.values, self.bias, self)
        return out_t.t().reshape(*lead, self.shape[0])

    def extra_repr(self) -> str:
        return (
            f"in_features={self.shape[1]}, out_features={self.shape[0]}, "
            f"nnz={self.values.numel()}, bias={self.bias is not None}"
        )


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
