"""Sparse compute: train very sparse linear layers with CSR kernels inside ``fit``.

Masked training (:class:`~rest_fair.sparse.DynamicSparsity` alone) keeps dense weights
and zeroes the inactive ones after every step, so a step costs as much as a dense one.
:func:`make_sparse_compute` replaces the plain ``nn.Linear`` layers whose mask density is
at or below a threshold by :class:`CSRLinear` layers that store only their active weights
(one parameter ``values`` on a compressed-sparse-row pattern with int32 indices):

- forward: ``Y_t = W_csr @ X_t + b`` on feature-major activations (``X_t`` is
  features x samples), so consecutive sparse layers pass activations without copies;
- gradient of the input: ``W_csr^T @ G_t`` (the transposed pattern is kept with a
  permutation of ``values``);
- gradient of ``values``: ``G_t @ X`` sampled at the pattern only
  (``torch.sparse.sampled_addmm``), never the dense weight gradient;
- the optimizer sees ``values``: its state (momentum, Adam moments) exists only for the
  active weights.

Topology updates keep the semantics of the masked path (see :mod:`rest_fair.sparse.rigl`)
and their place in the step. :meth:`CSRDynamicSparsity.prepare_step` runs before the
forward pass and, when an update is due, chooses the weights to prune (they depend only on
the weights, which do not change before the update). With gradient regrowth (RigL) the
backward pass of that one step then scans the dense weight gradient in blocks of rows and
keeps only the ``k`` largest ``|gradient|`` among the positions that stay inactive, so the
dense gradient is never stored whole; random regrowth (SET) draws its scores in the same
blocks from the run's generator, in the same order as the masked path. The update itself
(:meth:`CSRDynamicSparsity.before_step`) rebuilds the pattern, moves the optimizer state
of kept weights, starts regrown weights and their state at zero, and recomputes the
gradient at the new pattern, so that the optimizer step that follows trains the regrown
weights exactly as in the masked path.

The training module's public form does not change: :class:`CSRLinear` writes and reads
the dense ``weight``/``bias`` entries of ``nn.Linear`` in ``state_dict``, the optimizer's
``state_dict`` holds dense-shaped state (zeros at inactive positions), and
:meth:`CSRDynamicSparsity.finish` puts the original ``nn.Linear`` modules back (with
their trained weights) at the end of ``fit``. Checkpoints written during a sparse-compute
run are therefore in the masked format and can be resumed by either path.

``mode="auto"`` measures, per layer, one forward and backward pass of the masked layer
against the CSR layer at the run's batch size on the run's device (a micro-benchmark of
a few repetitions, cached per shape, density, batch, device, dtype and thread count) and
converts only the layers where the CSR kernels are clearly faster. Convolutions always
keep the masked path.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .engine import DynamicSparsity
from .masks import MaskSet
from .rigl import top_k_first, update_layer

__all__ = [
    "SPARSE_COMPUTE_MODES",
    "CSRDynamicSparsity",
    "CSRLinear",
    "LayerTiming",
    "candidate_layers",
    "make_sparse_compute",
    "measure_layer",
]

SPARSE_COMPUTE_MODES = ("auto", "masked", "csr")

_BAD_MODE = "sparse_compute must be one of {modes}; got {value!r}."
_BAD_THRESHOLD = "sparse_compute_threshold must be a float in [0, 1]; got {value!r}."
_CSR_NEEDS_DEVICE = (
    "sparse_compute='csr' runs on CPU or CUDA devices; got device {device!r}. Use "
    "sparse_compute='masked' (or 'auto', which falls back to it) on this device."
)
_CSR_NO_SCALER = (
    "sparse_compute='csr' does not support precision='16-mixed' (float16 with gradient "
    "scaling); use precision='32' or 'bf16', or sparse_compute='masked'."
)
_CSR_NO_DDP = (
    "sparse_compute='csr' does not support data-parallel training: a RigL update reads "
    "the dense gradient of the global batch, which DistributedDataParallel all-reduces only "
    "for parameters. Use sparse_compute='masked' (or 'auto', which falls back to it) "
    "under torchrun."
)
_NO_PLAN = (
    "the topology update of step {step} was not prepared; call prepare_step(step) before "
    "the forward pass of every training step."
)
_NOT_USED = (
    "sparse layer {name!r} was not used in the forward pass of update step {step}, so its "
    "gradient is unknown; train it with sparse_compute='masked'."
)
_USED_TWICE = (
    "sparse layer {name!r} was used more than once in one forward pass (shared weights); "
    "its dense gradient cannot be scanned in one pass. Train it with "
    "sparse_compute='masked'."
)
_BAD_SHAPE = "size mismatch for {key}: the checkpoint has shape {got}, the layer has {want}."

# a density tolerance that absorbs the rounding of per-layer active counts
_DENSITY_TOL = 1e-6
# rows of the dense gradient scanned at once: about 2**18 entries (1 MiB in float32)
_SCAN_ENTRIES = 1 << 18
# "auto" converts a layer only when its CSR step is at least this much faster
_AUTO_MARGIN = 0.9


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    with warnings.catch_warnings():
        # "sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


@dataclass
class _UpdatePlan:
    """A topology update of one layer, planned before the forward pass of its step."""

    step: int
    k: int  # weights to replace
    keep: torch.Tensor  # bool (nnz,): active weights that survive pruning
    kept_flat: torch.Tensor  # sorted flat indices of the kept weights
    scan_gradient: bool  # RigL: the backward pass finds the regrown positions
    grown: torch.Tensor | None = None  # flat indices chosen for regrowth
    saved: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)


def _chunked_topk(
    n_rows: int,
    n_cols: int,
    scores: Callable[[int, int], torch.Tensor],
    exclude: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Flat indices of the ``k`` largest scores outside ``exclude``, block of rows by block.

    ``scores(r0, r1)`` returns the flat float scores of rows ``r0:r1``; ``exclude`` holds
    sorted flat indices that may not be chosen. Only one block and ``2k`` candidates are
    held at a time. Ties go to the lowest flat index, as in
    :func:`~rest_fair.sparse.rigl.top_k_first` over the whole matrix.
    """
    rows = max(1, _SCAN_ENTRIES // max(n_cols, 1))
    starts = list(range(0, n_rows, rows))
    edges = torch.tensor([r * n_cols for r in starts] + [n_rows * n_cols], device=exclude.device)
    bounds = torch.searchsorted(exclude, edges).tolist()
    best_score: torch.Tensor | None = None
    best_index: torch.Tensor | None = None
    for j, r0 in enumerate(starts):
        r1 = min(n_rows, r0 + rows)
        score = scores(r0, r1)
        offset = r0 * n_cols
        score[exclude[bounds[j] : bounds[j + 1]] - offset] = -math.inf
        index = top_k_first(score, k)
        value, index = score[index], index + offset
        if best_score is not None:
            value = torch.cat([best_score, value])
            index = torch.cat([best_index, index])
            if value.numel() > k:
                pos = top_k_first(value, k, order=index)
                value, index = value[pos], index[pos]
        best_score, best_index = value, index
    assert best_index is not None
    return best_index


class _CSRLinearFunction(torch.autograd.Function):
    """``Y_t = W_csr @ X_t + b`` with the gradients of :class:`CSRLinear`."""

    @staticmethod
    def forward(ctx, x_t, values, bias, layer):  # type: ignore[override]
        matrix = _csr(layer.crow_indices, layer.col_indices, values, layer.shape)
        if bias is None:
            out = torch.mm(matrix, x_t)
        else:
            out = torch.addmm(bias.unsqueeze(1), matrix, x_t)
        ctx.save_for_backward(x_t, values)
        ctx.layer = layer
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_t):  # type: ignore[override]
        x_t, values = ctx.saved_tensors
        layer: CSRLinear = ctx.layer
        grad_t = grad_t.contiguous()
        plan = layer._plan
        if plan is not None:
            if plan.saved is not None:
                raise RuntimeError(_USED_TWICE.format(name=layer.name, step=plan.step))
            plan.saved = (grad_t, x_t)
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            transposed = _csr(
                layer.crow_indices_t,
                layer.col_indices_t,
                values.index_select(0, layer.perm_t),
                (layer.in_features, layer.out_features),
            )
            grad_x = torch.mm(transposed, grad_t)
        if ctx.needs_input_grad[1]:
            if plan is not None and plan.scan_gradient:
                grad_values = layer._scan_dense_gradient(grad_t, x_t, plan)
            else:
                grad_values = layer._sampled_gradient(grad_t, x_t)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_t.sum(dim=1)
        return grad_x, grad_values, grad_bias, None


class CSRLinear(nn.Module):
    """A trainable linear layer that stores only its active weights (CSR pattern).

    Drop-in for a masked ``nn.Linear`` during training: ``state_dict`` writes (and
    ``load_state_dict`` reads) the dense ``weight`` and ``bias`` of an ``nn.Linear``, with
    zeros at inactive positions, so checkpoints and model selection see the usual keys.

    Parameters
    ----------
    linear : nn.Linear
        The layer to take the weights from; its ``bias`` parameter is shared, not copied.
    mask : bool Tensor of shape (out_features, in_features)
        The active weights (exact zeros inside the mask stay active, as RigL regrows them).
    name : str, default=""
        The layer's name in its network, for error messages.

    Attributes
    ----------
    values : nn.Parameter of shape (nnz,)
        The active weights in row-major order of the pattern.
    bias : nn.Parameter or None
    """

    _persistent_pattern = False

    def __init__(self, linear: nn.Linear, mask: torch.Tensor, *, name: str = "") -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.in_features = int(linear.in_features)
        self.out_features = int(linear.out_features)
        self.name = name
        # Row-major output suits any consumer; a CSR layer that feeds another one directly
        # (through element-wise activations) passes its feature-major result instead.
        self.feature_major_output = False
        flat = mask.to(device=weight.device, dtype=torch.bool).reshape(-1).nonzero().squeeze(1)
        self.values = nn.Parameter(
            weight.reshape(-1)[flat].clone(), requires_grad=linear.weight.requires_grad
        )
        if linear.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = linear.bias
        self._plan: _UpdatePlan | None = None
        self._set_pattern(flat)

    # -- the pattern --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return (self.out_features, self.in_features)

    @property
    def nnz(self) -> int:
        """Number of active weights."""
        return int(self.values.numel())

    def _set_pattern(self, flat: torch.Tensor) -> None:
        """Build the index buffers for the sorted flat indices ``flat`` of active weights."""
        n_out, n_in = self.shape
        flat = flat.long()
        rows = torch.div(flat, n_in, rounding_mode="floor")
        cols = flat - rows * n_in
        crow = torch.zeros(n_out + 1, dtype=torch.int32, device=flat.device)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_out), 0)
        order_t = torch.argsort(cols * n_out + rows)
        crow_t = torch.zeros(n_in + 1, dtype=torch.int32, device=flat.device)
        crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=n_in), 0)
        buffers = {
            "crow_indices": crow,
            "col_indices": cols.to(torch.int32),
            "crow_indices_t": crow_t,
            "col_indices_t": rows[order_t].to(torch.int32),
            "perm_t": order_t.to(torch.int32),
        }
        for key, value in buffers.items():
            if key in self._buffers:
                self._buffers[key] = value
            else:  # index buffers are derived state: the dense weight is saved
                self.register_buffer(key, value, persistent=self._persistent_pattern)

    def flat_indices(self) -> torch.Tensor:
        """Sorted flat (row-major) indices of the active weights, aligned with ``values``."""
        rows = torch.repeat_interleave(
            torch.arange(self.out_features, device=self.values.device),
            torch.diff(self.crow_indices.long()),
        )
        return rows * self.in_features + self.col_indices.long()

    def mask(self) -> torch.Tensor:
        """The boolean pattern, dense."""
        out = torch.zeros(self.out_features * self.in_features, dtype=torch.bool,
                          device=self.values.device)
        out[self.flat_indices()] = True
        return out.view(self.shape)

    def dense_weight(self) -> torch.Tensor:
        """The weights as a dense matrix (zeros outside the pattern), detached."""
        return self.scatter(self.values.detach())

    def scatter(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-active-weight tensor of shape ``(nnz,)`` as a dense matrix (0 elsewhere)."""
        out = tensor.new_zeros(self.out_features * self.in_features)
        out[self.flat_indices()] = tensor
        return out.view(self.shape)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """The entries of a dense ``(out_features, in_features)`` tensor at the pattern."""
        return dense.reshape(-1)[self.flat_indices()]

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_t = x.reshape(-1, self.in_features).t()
        if not x_t.is_contiguous():  # the sparse product reads rows of X_t
            x_t = x_t.contiguous()
        if x_t.dtype != self.values.dtype:
            x_t = x_t.to(self.values.dtype)
        if torch.is_autocast_enabled(x_t.device.type):
            # the CSR kernels run in the weights' dtype; the output re-enters autocast
            with torch.autocast(x_t.device.type, enabled=False):
                out_t = _CSRLinearFunction.apply(x_t, self.values, self.bias, self)
        else:
            out_t = _CSRLinearFunction.apply(x_t, self.values, self.bias, self)
        out = out_t.t()
        if not self.feature_major_output:
            # dense layers are several times slower on a transposed input (measured: a
            # 2048 -> 10 nn.Linear at batch 256 takes 2.5 ms instead of 0.3 ms)
            out = out.contiguous()
        return out.reshape(*lead, self.out_features)

    # -- gradients ----------------------------------------------------------------------
    def _sampled_gradient(self, grad_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        pattern = _csr(self.crow_indices, self.col_indices, self.values.detach(), self.shape)
        # beta=0 ignores the pattern's values (NaN and inf included)
        return torch.sparse.sampled_addmm(pattern, grad_t, x_t.t(), beta=0.0).values()

    def _scan_dense_gradient(
        self, grad_t: torch.Tensor, x_t: torch.Tensor, plan: _UpdatePlan
    ) -> torch.Tensor:
        """Gradient of ``values``; chooses ``plan.grown`` from the dense gradient by blocks."""
        grad_values = torch.empty_like(self.values)
        crow = self.crow_indices.tolist()
        col = self.col_indices.long()
        n_in = self.in_features

        def block(r0: int, r1: int) -> torch.Tensor:
            dense = torch.mm(grad_t[r0:r1], x_t.t()).reshape(-1)
            a0, a1 = crow[r0], crow[r1]
            rows = torch.repeat_interleave(
                torch.arange(r1 - r0, device=dense.device),
                torch.diff(self.crow_indices[r0 : r1 + 1].long()),
            )
            grad_values[a0:a1] = dense[rows * n_in + col[a0:a1]]
            return dense.abs().float()

        plan.grown = _chunked_topk(self.out_features, n_in, block, plan.kept_flat, plan.k)
        return grad_values

    # -- topology updates ---------------------------------------------------------------
    def plan_update(self, step: int, fraction: float, *, scan_gradient: bool) -> int:
        """Choose the weights to prune at ``step`` (before its forward pass).

        Returns
        -------
        int
            Weights to replace (0: nothing to do for this layer).
        """
        self._plan = None
        n_active = self.nnz
        k = min(math.ceil(fraction * n_active), n_active)
        if k <= 0 or n_active == self.out_features * self.in_features:
            return 0
        magnitude = self.values.detach().abs().float()
        dropped = top_k_first(magnitude, k, largest=False)
        keep = torch.ones(n_active, dtype=torch.bool, device=magnitude.device)
        keep[dropped] = False
        self._plan = _UpdatePlan(step=step, k=k, keep=keep,
                                 kept_flat=self.flat_indices()[keep],
                                 scan_gradient=scan_gradient)
        return k

    def clear_plan(self) -> None:
        """Forget a planned update (and the tensors it holds)."""
        self._plan = None

    @torch.no_grad()
    def apply_update(
        self,
        step: int,
        *,
        generator: torch.Generator | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> int:
        """Prune and regrow as planned for ``step``; returns the newly active weights.

        Random regrowth draws its scores from ``generator`` now; gradient regrowth uses the
        positions found in the backward pass. Regrown weights start at 0, and so does their
        optimizer state; the gradient of ``values`` is recomputed at the new pattern.
        """
        plan = self._plan
        if plan is None or plan.step != step:
            raise RuntimeError(_NO_PLAN.format(step=step))
        if plan.saved is None:
            raise RuntimeError(_NOT_USED.format(name=self.name, step=step))
        n_in = self.in_features
        if plan.scan_gradient:
            grown = plan.grown
        else:
            device = self.values.device

            def block(r0: int, r1: int) -> torch.Tensor:
                return torch.rand((r1 - r0) * n_in, generator=generator).to(device)

            grown = _chunked_topk(self.out_features, n_in, block, plan.kept_flat, plan.k)
        flat = self.flat_indices()
        n_changed = int(grown.numel()) - int(torch.isin(grown, flat[~plan.keep]).sum())
        merged = torch.cat([plan.kept_flat, grown])
        order = torch.argsort(merged)

        def remap(tensor: torch.Tensor) -> torch.Tensor:
            kept = tensor[plan.keep]
            return torch.cat([kept, kept.new_zeros(grown.numel())])[order]

        self.values.copy_(remap(self.values))
        if optimizer is not None:
            for value in optimizer.state.get(self.values, {}).values():
                if torch.is_tensor(value) and value.shape == self.values.shape:
                    value.copy_(remap(value))
        self._set_pattern(merged[order])
        if self.values.grad is not None:
            grad_t, x_t = plan.saved
            self.values.grad = self._sampled_gradient(grad_t, x_t)
        self._plan = None
        return n_changed

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the pattern by ``mask``; weights new to the pattern start at 0."""
        dense = self.dense_weight()
        flat = mask.to(device=dense.device, dtype=torch.bool).reshape(-1).nonzero().squeeze(1)
        self.values.data = dense.reshape(-1)[flat].clone()
        self._set_pattern(flat)
        self._plan = None

    # -- state dict in nn.Linear's form -------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.dense_weight()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        expected = {"weight": self.shape}
        if self.bias is not None:
            expected["bias"] = (self.out_features,)
        for key, shape in expected.items():
            full = prefix + key
            if full not in state_dict:
                missing_keys.append(full)
                continue
            value = state_dict[full]
            if tuple(value.shape) != shape:
                error_msgs.append(_BAD_SHAPE.format(key=full, got=tuple(value.shape),
                                                    want=shape))
                continue
            with torch.no_grad():
                value = value.to(device=self.values.device, dtype=self.values.dtype)
                if key == "weight":
                    self.values.copy_(self.gather(value))
                else:
                    self.bias.copy_(value)
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key[len(prefix):] not in expected:
                    unexpected_keys.append(key)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, bias={self.bias is not None}")


class _CSRMaskSet(MaskSet):
    """A :class:`MaskSet` whose converted layers keep their mask as their CSR pattern.

    ``params`` maps a converted layer's weight name to its ``values`` parameter; no dense
    mask is held for it (its boolean mask is built on demand).
    """

    def __init__(self, base: MaskSet, layers: Mapping[str, CSRLinear]) -> None:
        self.layers = dict(layers)
        self.params = {}
        self._bool = {}
        self._mult = {}
        for name in base.names:
            if name in self.layers:
                self.params[name] = self.layers[name].values
            else:
                self.params[name] = base.params[name]
                self._bool[name] = base._bool[name]
                self._mult[name] = base._mult[name]

    def mask(self, name: str) -> torch.Tensor:
        layer = self.layers.get(name)
        return layer.mask() if layer is not None else self._bool[name]

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        layer = self.layers.get(name)
        if layer is None:
            super().set_mask(name, mask)
        else:
            layer.set_mask(mask)

    def _numel(self, name: str) -> int:
        layer = self.layers.get(name)
        return layer.out_features * layer.in_features if layer is not None \
            else self._bool[name].numel()

    def n_active(self) -> dict[str, int]:
        return {name: self.layers[name].nnz if name in self.layers
                else int(self._bool[name].sum()) for name in self.params}

    def density(self) -> float:
        total = sum(self._numel(name) for name in self.params)
        return sum(self.n_active().values()) / total if total else 1.0

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {name: self.mask(name).detach().cpu().clone() for name in self.params}

    def report(self) -> list[dict]:
        active = self.n_active()
        return [{"layer": name, "shape": tuple(self.mask(name).shape),
                 "n_weights": self._numel(name), "n_active": active[name],
                 "density": active[name] / self._numel(name)} for name in self.params]

    @torch.no_grad()
    def rescale_init_(self) -> None:
        for name, param in self.params.items():
            density = self.n_active()[name] / self._numel(name)
            if 0.0 < density < 1.0:
                param.mul_(density**-0.5)

    @torch.no_grad()
    def apply_(self) -> None:
        names = [name for name in self.params if name not in self.layers]
        if names:
            torch._foreach_mul_([self.params[n] for n in names], [self._mult[n] for n in names])

    def restore_dense(self, name: str, weight: nn.Parameter, mask: torch.Tensor) -> None:
        """Hold layer ``name`` as a dense weight and mask again."""
        del self.layers[name]
        self.params[name] = weight
        super().set_mask(name, mask)


def _link_feature_major(module: nn.Module) -> None:
    """Let CSR layers that feed another CSR layer of a Sequential skip the transpose."""
    from ..efficiency.export import ELEMENTWISE

    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        pending: CSRLinear | None = None
        for sub in seq:
            if type(sub) in ELEMENTWISE:
                continue
            if pending is not None and isinstance(sub, CSRLinear):
                pending.feature_major_output = True
            pending = sub if isinstance(sub, CSRLinear) else None


def _per_weight(value: Any, shape: tuple) -> bool:
    return torch.is_tensor(value) and tuple(value.shape) == shape


class CSRDynamicSparsity(DynamicSparsity):
    """:class:`DynamicSparsity` whose sparse linear layers train as :class:`CSRLinear`.

    Built by :func:`make_sparse_compute`, which replaces the layers in the module. Call
    :meth:`bind_optimizer` with the optimizer built over the converted module, and
    :meth:`finish` at the end of training to get the dense module back.

    Parameters
    ----------
    base : DynamicSparsity
        The masked engine (its masks applied to the module's weights).
    module : nn.Module
        The network; the layers named in ``layers`` are replaced in place.
    layers : sequence of str
        Module names of plain ``nn.Linear`` layers with a mask.
    """

    def __init__(self, base: DynamicSparsity, module: nn.Module, layers: Sequence[str]) -> None:
        super().__init__(base.masks, schedule=base.schedule,
                         update_interval=base.update_interval, regrow=base.regrow,
                         generator=base.generator, steps_per_epoch=base.steps_per_epoch)
        self.n_updates = base.n_updates
        self.n_regrown = base.n_regrown
        self.module = module
        self.converted = tuple(layers)
        self._originals: dict[str, nn.Linear] = {}
        self._hooks: list[Any] = []
        self._prepared: int | None = None
        csr_layers: dict[str, CSRLinear] = {}
        for name in self.converted:
            linear = module.get_submodule(name)
            weight_name = f"{name}.weight"
            layer = CSRLinear(linear, base.masks.mask(weight_name), name=name)
            self._replace(name, layer)
            self._originals[name] = linear
            # the dense weight is not needed until finish(); free its memory meanwhile
            linear.weight.data = linear.weight.data.new_empty(0)
            csr_layers[weight_name] = layer
        self.masks = _CSRMaskSet(base.masks, csr_layers)
        _link_feature_major(module)

    @property
    def layers(self) -> dict[str, CSRLinear]:
        """Weight name -> :class:`CSRLinear`, while converted."""
        return self.masks.layers

    def _replace(self, name: str, new: nn.Module) -> None:
        parent_name, _, attr = name.rpartition(".")
        parent = self.module.get_submodule(parent_name) if parent_name else self.module
        setattr(parent, attr, new)

    # -- the training step --------------------------------------------------------------
    def prepare_step(self, step: int) -> None:
        """Plan the CSR layers' pruning when ``step`` updates the topology."""
        due = self.is_update_step(step)
        fraction = self.schedule(step) if due else 0.0
        self._prepared = step
        for layer in self.layers.values():
            if due:
                layer.plan_update(step, fraction, scan_gradient=self.regrow == "gradient")
            else:
                layer.clear_plan()

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Update the topology if due at ``step`` (layers in the masked path's order)."""
        if not self.is_update_step(step):
            return 0
        if self.layers and self._prepared != step:
            raise RuntimeError(_NO_PLAN.format(step=step))
        fraction = self.schedule(step)
        regrown = 0
        for name in self.masks.names:
            layer = self.layers.get(name)
            if layer is None:
                regrown += update_layer(self.masks, name, fraction, regrow=self.regrow,
                                        optimizer=optimizer, generator=self.generator)
            elif layer._plan is not None:
                regrown += layer.apply_update(step, generator=self.generator,
                                              optimizer=optimizer)
        self.masks.apply_()
        self.n_regrown += regrown
        self.n_updates += 1
        return regrown

    # -- optimizer state in dense form --------------------------------------------------
    def _optimizer_layers(self, optimizer: torch.optim.Optimizer) -> dict[int, CSRLinear]:
        by_values = {id(layer.values): layer for layer in self.layers.values()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return {i: by_values[id(p)] for i, p in enumerate(params) if id(p) in by_values}

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Make ``optimizer.state_dict()`` dense-shaped, and ``load_state_dict`` accept it.

        Per-weight state of a CSR layer is saved as a dense ``(out, in)`` tensor with zeros
        at inactive positions (what a masked run's state looks like for the active
        weights) and read back at the current pattern.
        """

        def to_dense(opt, state_dict):
            index = self._optimizer_layers(opt)
            state = dict(state_dict["state"])
            for i, layer in index.items():
                if i in state:
                    state[i] = {key: layer.scatter(v) if _per_weight(v, (layer.nnz,)) else v
                                for key, v in state[i].items()}
            return {**state_dict, "state": state}

        def from_dense(opt, state_dict):
            index = self._optimizer_layers(opt)
            state = dict(state_dict["state"])
            for i, layer in index.items():
                if i in state:
                    state[i] = {key: layer.gather(v.to(layer.values.device))
                                if _per_weight(v, layer.shape) else v
                                for key, v in state[i].items()}
            return {**state_dict, "state": state}

        self._hooks.append(optimizer.register_state_dict_post_hook(to_dense))
        self._hooks.append(optimizer.register_load_state_dict_pre_hook(from_dense))

    # -- the end of training ------------------------------------------------------------
    @torch.no_grad()
    def finish(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Put the dense ``nn.Linear`` layers back, with their weights and optimizer state.

        Afterwards the module, the optimizer and the masks are those of a masked run.
        """
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for weight_name, layer in list(self.layers.items()):
            name = weight_name.rpartition(".")[0]
            linear = self._originals.pop(name)
            linear.weight.data = layer.dense_weight()
            linear.weight.grad = None
            self._replace(name, linear)
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["params"] = [linear.weight if p is layer.values else p
                                       for p in group["params"]]
                if layer.values in optimizer.state:
                    state = optimizer.state.pop(layer.values)
                    optimizer.state[linear.weight] = {
                        key: layer.scatter(v) if _per_weight(v, (layer.nnz,)) else v
                        for key, v in state.items()}
            self.masks.restore_dense(weight_name, linear.weight, layer.mask())
            layer.clear_plan()


# ------------------------------------------------------------------------ choosing layers
@dataclass(frozen=True)
class LayerTiming:
    """Median seconds of one forward and backward pass of a layer, masked vs CSR."""

    masked: float
    csr: float

    @property
    def csr_faster(self) -> bool:
        """Whether the CSR layer is clearly (by the ``auto`` margin) the faster one."""
        return self.csr <= _AUTO_MARGIN * self.masked


_TIMINGS: dict[tuple, LayerTiming] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_layer(
    shape: tuple[int, int],
    nnz: int,
    batch_size: int,
    *,
    input_grad: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    autocast_dtype: torch.dtype | None = None,
    repeats: int = 5,
) -> LayerTiming:
    """Time one training pass of a masked dense layer and of its CSR version.

    Random weights and inputs come from a private generator (the global random state is
    not touched). Passes alternate between the two layers; the result is cached per
    shape, active count, batch size, input gradient, device, dtype, autocast dtype and
    torch thread count, so a process measures each layer kind once.

    Parameters
    ----------
    shape : (out_features, in_features)
    nnz : int
        Active weights.
    batch_size : int
    input_grad : bool, default=True
        Whether the layer's input needs a gradient (not for a network's first layer).
    device : torch.device or str, default="cpu"
    dtype : torch.dtype, default=torch.float32
    autocast_dtype : torch.dtype or None, default=None
        Autocast of the masked layer's forward pass (the CSR layer runs in ``dtype``).
    repeats : int, default=5
        Timed passes per layer at most (fewer when the difference is already large).

    Returns
    -------
    LayerTiming
    """
    device = torch.device(device)
    key = (tuple(shape), int(nnz), int(batch_size), bool(input_grad), str(device), dtype,
           autocast_dtype, torch.get_num_threads())
    cached = _TIMINGS.get(key)
    if cached is not None:
        return cached
    n_out, n_in = (int(s) for s in shape)
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(n_in, n_out, device="meta")
    linear.weight = nn.Parameter(torch.randn(n_out, n_in, generator=gen, dtype=dtype)
                                 .div_(math.sqrt(n_in)).to(device))
    linear.bias = nn.Parameter(torch.zeros(n_out, dtype=dtype, device=device))
    flat = torch.randperm(n_out * n_in, generator=gen)[:nnz]
    mask = torch.zeros(n_out * n_in, dtype=torch.bool)
    mask[flat] = True
    mask = mask.view(n_out, n_in).to(device)
    with torch.no_grad():
        linear.weight.mul_(mask)
    csr = CSRLinear(linear, mask)
    x = torch.randn(batch_size, n_in, generator=gen, dtype=dtype).to(device)
    x.requires_grad_(input_grad)
    grad = torch.randn(batch_size, n_out, generator=gen, dtype=dtype).to(device)

    def masked_pass() -> None:
        linear.weight.grad = linear.bias.grad = x.grad = None
        if autocast_dtype is None:
            out = linear(x)
        else:
            with torch.autocast(device.type, dtype=autocast_dtype):
                out = linear(x)
        out.backward(grad.to(out.dtype))

    def csr_pass() -> None:
        csr.values.grad = linear.bias.grad = x.grad = None
        csr(x).backward(grad)

    def timed(fn: Callable[[], None]) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    masked_pass()  # warm-up (allocations, kernel selection)
    csr_pass()
    t_masked: list[float] = []
    t_csr: list[float] = []
    for i in range(max(1, int(repeats))):
        pair = ((masked_pass, t_masked), (csr_pass, t_csr))
        for fn, store in pair if i % 2 == 0 else pair[::-1]:
            store.append(timed(fn))
        if i >= 1 and (max(t_csr) < 0.5 * min(t_masked) or min(t_csr) > 2 * max(t_masked)):
            break  # clear either way
    timing = LayerTiming(statistics.median(t_masked), statistics.median(t_csr))
    _TIMINGS[key] = timing
    return timing


def candidate_layers(
    module: nn.Module, masks: MaskSet, threshold: float
) -> list[tuple[str, nn.Linear, int]]:
    """Plain ``nn.Linear`` sub-layers whose mask density is at or below ``threshold``.

    Returns
    -------
    list of (name, layer, nnz)
        In module order; fully dense layers and the root module are never candidates.
    """
    names = set(masks.names)
    out = []
    for name, sub in module.named_modules():
        weight_name = f"{name}.weight"
        # subclasses (e.g. an attention out-projection) may be used through their weights
        if not name or type(sub) is not nn.Linear or weight_name not in names:
            continue
        mask = masks.mask(weight_name)
        nnz = int(mask.sum())
        if nnz < mask.numel() and nnz / mask.numel() <= threshold + _DENSITY_TOL:
            out.append((name, sub, nnz))
    return out


def _first_layer(module: nn.Module) -> str | None:
    # the first module holding parameters gets the network's input, which needs no gradient
    for name, sub in module.named_modules():
        if any(True for _ in sub.parameters(recurse=False)):
            return name
    return None


def make_sparse_compute(
    module: nn.Module,
    sparsity: DynamicSparsity | None,
    *,
    mode: str = "auto",
    threshold: float = 0.2,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    grad_scaling: bool = False,
    distributed: bool = False,
    timings: dict[str, LayerTiming] | None = None,
) -> DynamicSparsity | None:
    """Convert the layers that train faster with CSR kernels; return the engine to use.

    Parameters
    ----------
    module : nn.Module
        The network with its masks applied; converted layers are replaced in place.
    sparsity : DynamicSparsity or None
        The masked engine (``None`` for dense training, returned as is).
    mode : {"auto", "masked", "csr"}, default="auto"
        ``"masked"``: no layer is converted. ``"csr"``: every candidate layer (plain
        ``nn.Linear``, density at or below ``threshold``) is converted. ``"auto"``: the
        candidates whose CSR pass :func:`measure_layer` finds faster on ``device``.
    threshold : float in [0, 1], default=0.2
        Highest layer density considered.
    batch_size : int, default=256
        Batch size of the training run (for the measurement).
    device : torch.device or str, default="cpu"
    autocast_dtype : torch.dtype or None, default=None
        Reduced-precision autocast of the run's forward pass.
    grad_scaling : bool, default=False
        Whether the run scales its gradients (``precision="16-mixed"``), which the CSR
        layers do not support: ``"auto"`` then converts nothing and ``"csr"`` refuses.
    distributed : bool, default=False
        Whether the run is data-parallel (DDP). The CSR layers' dense-gradient scan would
        see one rank's batch only, and ranks could time layers differently: ``"auto"``
        then converts nothing and ``"csr"`` refuses.
    timings : dict, optional
        Filled with the measured :class:`LayerTiming` of each candidate (``"auto"``).

    Returns
    -------
    DynamicSparsity or None
        ``sparsity`` itself when no layer is converted, else a :class:`CSRDynamicSparsity`.
    """
    if mode not in SPARSE_COMPUTE_MODES:
        raise ValueError(_BAD_MODE.format(modes=SPARSE_COMPUTE_MODES, value=mode))
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
        0.0 <= float(threshold) <= 1.0
    ):
        raise ValueError(_BAD_THRESHOLD.format(value=threshold))
    if sparsity is None or mode == "masked":
        return sparsity
    device = torch.device(device)
    supported = device.type in ("cpu", "cuda")
    if mode == "csr":
        if not supported:
            raise ValueError(_CSR_NEEDS_DEVICE.format(device=str(device)))
        if grad_scaling:
            raise ValueError(_CSR_NO_SCALER)
        if distributed:
            raise ValueError(_CSR_NO_DDP)
    elif not supported or grad_scaling or distributed:
        return sparsity
    candidates = candidate_layers(module, sparsity.masks, float(threshold))
    if mode == "auto":
        first = _first_layer(module)
        chosen = []
        for name, layer, nnz in candidates:
            timing = measure_layer(tuple(layer.weight.shape), nnz, batch_size,
                                   input_grad=name != first, device=device,
                                   dtype=layer.weight.dtype, autocast_dtype=autocast_dtype)
            if timings is not None:
                timings[name] = timing
            if timing.csr_faster:
                chosen.append(name)
    else:
        chosen = [name for name, _, _ in candidates]
    if not chosen:
        return sparsity
    return CSRDynamicSparsity(sparsity, module, chosen)
