"""CSR linear layers that train only their active weights.

:class:`CSRLinear` replaces a masked ``nn.Linear`` during training. It stores the active
weights as one parameter ``values`` on a compressed-sparse-row pattern (int32 indices), so
an optimizer built over the layer holds state (momentum, Adam moments) for them only, and
computes ``Y = X W^T + b``, the input gradient ``G W`` (on the transposed pattern, kept
with a permutation of ``values``) and the gradient of ``values``: ``G^T X`` sampled at the
pattern only, never the dense weight gradient.

On CPU in float32 or float64 the products run in the compiled kernels of
:mod:`rest_fair.sparse.kernels`: the activations are packed once per pass into panels, and
one backward pass over the transposed pattern gives both gradients. Elsewhere (CUDA, other
dtypes, no C compiler, or ``REST_FAIR_NATIVE_KERNELS=0``) the same autograd function uses
torch's sparse CSR products on feature-major activations (``X_t`` is features x samples):
``Y_t = W_csr @ X_t + b``, ``W_csr^T @ G_t`` and ``torch.sparse.sampled_addmm``. A layer
that feeds another CSR layer (through element-wise activations) passes its output
feature-major, so consecutive sparse layers exchange activations without transposes. A
layer whose ``relu_output`` is set (by
:class:`~rest_fair.sparse.csr_engine.CSRDynamicSparsity`, for the ``nn.ReLU`` after it)
returns ``relu(Y)`` and applies the ReLU's gradient inside the packing of the output
gradient.

The layer is the storage of its weights in a topology update
(:class:`~rest_fair.sparse.rigl.LayerStorage`, driven by
:class:`~rest_fair.sparse.DynamicSparsity`): :meth:`CSRLinear.plan` chooses the weights to
prune before the forward pass of the update step; with gradient regrowth (RigL) that step's
backward pass scans the dense weight gradient in blocks of rows and keeps only the ``k``
largest ``|gradient|`` among the positions inactive after the prune, so the dense gradient
is never stored whole; :meth:`CSRLinear.decide` and :meth:`CSRLinear.apply` complete the
update. Ties go to the lowest flat index, as in :mod:`rest_fair.sparse.rigl`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from . import kernels
from .checks import check_mask
from .rigl import top_k_first

__all__ = ["CSRLinear", "PackedWeight", "packed_state_dict", "unpacked"]

_NOT_USED = (
    "sparse layer {name!r} was not used in the forward pass of update step {step}, so its "
    "gradient is unknown; train it with sparse_compute='masked'."
)

_USED_TWICE = (
    "sparse layer {name!r} was used more than once in one forward pass (shared weights); "
    "its dense gradient cannot be scanned in one pass. Train it with "
    "sparse_compute='masked'."
)

_BAD_INPUT = (
    "{layer} takes inputs of shape (..., {n}) (in_features={n}), as the nn.Linear it "
    "replaces; got a tensor of shape {shape}."
)

_BAD_SHAPE = "size mismatch for {key}: the checkpoint has shape {got}, the layer has {want}."

# set while packed_state_dict runs: CSR layers then save their weight as a PackedWeight
_PACKED = contextvars.ContextVar("rest_fair_packed_state", default=False)

# the dtypes of the compiled kernels
_KERNEL_DTYPES = (torch.float32, torch.float64)

# rows of the dense gradient scanned at once: about 2**18 entries (1 MiB in float32)
_SCAN_ENTRIES = 1 << 18


_beta_warning_silenced = False


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """A CSR tensor of int32 indices, without the checks and the "beta" warning.

    torch gives that warning once per process, at the first CSR tensor: only the first
    call here filters warnings (a filter is process-wide, so doing it at every call would
    hide other threads' warnings meanwhile).
    """
    global _beta_warning_silenced
    if _beta_warning_silenced:
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta",
                                category=UserWarning)
        matrix = torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)
    _beta_warning_silenced = True
    return matrix


@dataclass
class _UpdatePlan:
    """A topology update of one layer, planned before the forward pass of its step."""

    step: int
    k: int  # weights to replace
    # sorted flat indices of the kept weights; with ``prune_later``, of every active weight
    # (the weights to prune are chosen after the optimizer step, in ``decide``)
    kept_flat: torch.Tensor
    scan_gradient: bool  # RigL: the backward pass finds the regrown positions
    prune_later: bool = False
    grown: torch.Tensor | None = None  # flat indices chosen for regrowth (or candidates)
    grown_scores: torch.Tensor | None = None  # their |gradient|
    active_scores: torch.Tensor | None = None  # |gradient| of the active weights
    decided: tuple[torch.Tensor, torch.Tensor] | None = None  # (new mask, its flat indices)
    saved: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)


def _contenders(score: torch.Tensor, best: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """Positions of a later block's ``score`` that can still be among the ``k`` largest.

    Once ``best`` holds ``k`` scores of earlier blocks (lower flat indices), an entry enters
    only if it is larger than the smallest of them (ties go to the lower index), so the
    block's selection runs on these few entries instead of the whole block, with the same
    result. ``None`` (all entries) before that, and when a score is NaN (which
    :func:`torch.topk` ranks first).
    """
    if best is None or best.numel() < k:
        return None
    bound = best.min()
    if bool(torch.isnan(bound)) or bool(torch.isnan(score).any()):
        return None
    return kernels.flat_nonzero(score > bound)


def _chunked_topk(
    n_rows: int,
    n_cols: int,
    scores: Callable[[int, int], torch.Tensor],
    exclude: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest ``|scores|`` outside ``exclude`` and their flat indices, block of rows
    by block (in no particular order).

    ``scores(r0, r1)`` returns the flat float entries of rows ``r0:r1``, ranked by their
    magnitude in float32; ``exclude`` holds sorted flat indices that may not be chosen.
    Only one block and at most ``2k`` candidates are held at a time. Ties go to the lowest
    flat index, as in :func:`~rest_fair.sparse.rigl.top_k_first` over the whole matrix.
    The compiled kernels rank float32 blocks in one pass
    (:class:`~rest_fair.sparse.kernels.TopKScan`); torch ranks the others, and every block
    from the first one that holds a NaN on.
    """
    rows = max(1, _SCAN_ENTRIES // max(n_cols, 1))
    starts = list(range(0, n_rows, rows))
    edges = torch.tensor([r * n_cols for r in starts] + [n_rows * n_cols], device=exclude.device)
    bounds = torch.searchsorted(exclude, edges).tolist()
    fast = kernels.TopKScan(k) if kernels.load() is not None else None
    best_score: torch.Tensor | None = None
    best_index: torch.Tensor | None = None
    for j, r0 in enumerate(starts):
        r1 = min(n_rows, r0 + rows)
        block = scores(r0, r1)
        offset = r0 * n_cols
        excluded = exclude[bounds[j] : bounds[j + 1]]
        if fast is not None:
            if fast.add(block, offset, excluded):
                continue
            best_score, best_index = fast.result()
            fast = None
        score = block.abs().float()
        score[excluded - offset] = -math.inf
        keep = _contenders(score, best_score, k)
        if keep is not None:
            score = score[keep]
        index = top_k_first(score, k)
        value = score[index]
        index = (index if keep is None else keep[index]) + offset
        if best_score is not None and best_score.numel():
            value = torch.cat([best_score, value])
            index = torch.cat([best_index, index])
            if value.numel() > k:
                pos = top_k_first(value, k, order=index)
                value, index = value[pos], index[pos]
        best_score, best_index = value, index
    if fast is not None:
        best_score, best_index = (t.to(exclude.device) for t in fast.result())
    assert best_score is not None and best_index is not None
    return best_score, best_index


def _matrix_output(x: torch.Tensor, n_out: int, feature_major: bool,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A new output of ``n_out`` features for the batch ``x``, and the ``(batch, n_out)``
    view the kernels write: ``(out_features, batch)`` row-major when ``feature_major``."""
    if feature_major:
        out = x.new_empty((n_out, x.shape[0]))
        return out, out.t()
    out = x.new_empty((x.shape[0], n_out))
    return out, out


def _input_gradient(x: torch.Tensor, n_in: int) -> torch.Tensor:
    """A new gradient of the input ``x`` in its own layout: a feature-major input gets a
    feature-major gradient."""
    if x.stride(0) == 1 and x.stride(1) != 1:
        return x.new_empty((n_in, x.shape[0])).t()
    return x.new_empty((x.shape[0], n_in))


def _output_gradient(
    grad: torch.Tensor, out: torch.Tensor | None, splits: kernels.Splits, nv: int, *,
    feature_major: bool, planned: bool, want_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Panels of a layer's output gradient, the bias gradient and, where an update is
    ``planned``, the gradient as a contiguous ``(out_features, batch)`` matrix.

    ``grad`` and ``out`` (the ReLU's output, ``None`` without a ReLU) have the layer's
    output layout. The ReLU's gradient is applied inside the packing where the layouts
    allow, else first (bitwise ``threshold_backward`` either way).
    """
    grad = grad.t() if feature_major else grad  # (batch, out_features)
    gate = None
    if out is not None:
        gate = out.t() if feature_major else out
        if planned or gate.stride() != grad.stride():
            grad, gate = torch.ops.aten.threshold_backward(grad, gate, 0), None
    grad_t = grad.t().contiguous() if planned else None
    panels, sums = kernels.pack(grad, splits.out_features, nv, column_sums=want_bias, gate=gate)
    return panels, sums, grad_t


class _CSRFunction(torch.autograd.Function):
    """``Y = X W^T + b`` of :class:`CSRLinear` on the kernels or torch's products (``use_kernels``).

    ``x`` is ``(batch, in_features)``, any strides. The result is ``(batch, out_features)``
    row-major, or ``(out_features, batch)`` row-major when ``feature_major`` or on torch's
    products (the caller transposes it back as a view). With ``relu`` the result is
    ``relu(Y)``, and the backward pass applies the ReLU's gradient (bitwise as ``nn.ReLU``
    would, inside the kernels' packing of the gradient where the layouts allow).
    """

    @staticmethod
    def forward(ctx, x, values, bias, layer, feature_major, use_kernels,  # type: ignore[override]
                relu):
        ctx.layer, ctx.use_kernels, ctx.relu = layer, use_kernels, relu
        ctx.feature_major = feature_major = feature_major or not use_kernels
        ctx.has_bias = bias is not None
        if not use_kernels:
            x_t = x.t().contiguous()  # the sparse product reads rows of X_t
            matrix = _csr(layer.crow_indices, layer.col_indices, values, layer.shape)
            if bias is None:
                out = torch.mm(matrix, x_t)
            else:
                out = torch.addmm(bias.unsqueeze(1), matrix, x_t)
            if relu:
                out = torch.relu_(out)
            ctx.save_for_backward(x_t, values, out if relu else None)
            return out
        splits = ctx.splits = layer._kernel_splits()
        batch = x.shape[0]
        nv, _ = kernels.panel_width(values.dtype, batch)
        x_panels, _ = kernels.pack(x, splits.in_features, nv)
        out, target = _matrix_output(x, layer.out_features, feature_major)
        kernels.csr_forward(x_panels, nv, batch, *layer._pattern(), values,
                            bias, splits.rows, target, relu=relu)
        ctx.save_for_backward(x, x_panels, values, out if relu else None)
        ctx.nv = nv
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        layer: CSRLinear = ctx.layer
        want_x, want_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_bias = ctx.has_bias and ctx.needs_input_grad[2]
        plan, scan = layer._backward_plan(want_values)
        grad_x = grad_values = grad_bias = None
        if ctx.use_kernels:
            x, x_panels, values, out = ctx.saved_tensors
            # backward runs only when one of x, values and bias needs a gradient
            grad_panels, grad_bias, grad_t = _output_gradient(
                grad, out, ctx.splits, ctx.nv, feature_major=ctx.feature_major,
                planned=plan is not None, want_bias=want_bias)
            x_t = None if plan is None else x.t().contiguous()
            if want_x:
                grad_x = _input_gradient(x, layer.in_features)
            if want_values and not scan:
                grad_values = torch.empty_like(values)
            crow_t, col_t, perm_t, inverse = layer._pattern_t()
            kernels.csr_backward(grad_panels, x_panels, ctx.nv, x.shape[0], crow_t, col_t,
                                 perm_t, values, ctx.splits.cols, grad_x, grad_values,
                                 inverse_perm_t=inverse)
        else:
            x_t, values, out = ctx.saved_tensors
            if ctx.relu:
                grad = torch.ops.aten.threshold_backward(grad, out, 0)
            grad_t = grad.contiguous()
            if want_x:
                transposed = _csr(layer.crow_indices_t, layer.col_indices_t,
                                  values.index_select(0, layer.perm_t),
                                  (layer.in_features, layer.out_features))
                grad_x = torch.mm(transposed, grad_t).t()
            if want_values and not scan:
                grad_values = layer._sampled_gradient(grad_t, x_t)
            if want_bias:
                grad_bias = grad_t.sum(dim=1)
        grad_values = layer._planned_gradient(grad_t, x_t, grad_values, scan)
        return grad_x, grad_values, grad_bias, None, None, None, None


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

    Raises
    ------
    TypeError
        If ``mask`` is not a bool tensor.
    ValueError
        If ``mask`` does not have the shape ``(out_features, in_features)``.

    Attributes
    ----------
    values : nn.Parameter of shape (nnz,)
        The active weights in row-major order of the pattern.
    weight : Tensor of shape (out_features, in_features)
        Those weights as a dense matrix, built at each access (for a parent that reads it).
    bias : nn.Parameter or None
    """

    def __init__(self, linear: nn.Linear, mask: torch.Tensor, *, name: str = "") -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.in_features = int(linear.in_features)
        self.out_features = int(linear.out_features)
        self.name = name
        # Row-major output suits any consumer; a CSR layer that feeds another one directly
        # (through element-wise activations) passes its feature-major result instead.
        self.feature_major_output = False
        # Whether the layer applies the ReLU that follows it (see CSRDynamicSparsity).
        self.relu_output = False
        flat = self._set_pattern(mask.to(weight.device))
        self.values = nn.Parameter(
            weight.reshape(-1)[flat].clone(), requires_grad=linear.weight.requires_grad
        )
        if linear.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = linear.bias
        self._plan: _UpdatePlan | None = None

    # -- the pattern --------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return (self.out_features, self.in_features)

    @property
    def nnz(self) -> int:
        """Number of active weights."""
        return int(self.values.numel())

    # The products read these at every step: from the module's dictionaries directly,
    # since nn.Module.__getattr__ takes about 0.7 us a read (some 40 reads a step of a
    # chain of four layers).
    def _pattern(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(crow_indices, col_indices)``."""
        buffers = self._buffers
        return buffers["crow_indices"], buffers["col_indices"]

    def _pattern_t(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(crow_indices_t, col_indices_t, perm_t, inverse_perm_t)``."""
        buffers = self._buffers
        return (buffers["crow_indices_t"], buffers["col_indices_t"], buffers["perm_t"],
                buffers["inverse_perm_t"])

    def _weights(self) -> tuple[nn.Parameter, nn.Parameter | None]:
        """``(values, bias)``."""
        params = self._parameters
        return params["values"], params["bias"]

    def _set_pattern(self, mask: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
        """Build the index buffers of the bool ``mask``; returns its sorted flat indices.

        ``flat``, when given, are those indices already (the mask is then not read);
        otherwise ``mask`` must be a bool tensor of shape :attr:`shape` (TypeError,
        ValueError).
        """
        if flat is None:
            check_mask(f"{self.name}.weight" if self.name else "weight", mask, self.shape)
        flat, *indices = (kernels.csr_pattern(mask, inverse=True) if flat is None
                          else kernels.csr_pattern_of_flat(flat, self.shape, inverse=True))
        names = ("crow_indices", "col_indices", "crow_indices_t", "col_indices_t", "perm_t",
                 "inverse_perm_t")
        for key, value in zip(names, indices, strict=True):
            if key in self._buffers:
                self._buffers[key] = value
            else:  # index buffers are derived state: the dense weight is saved
                self.register_buffer(key, value, persistent=False)
        return flat

    def flat_indices(self) -> torch.Tensor:
        """Sorted flat (row-major) indices of the active weights, aligned with ``values``."""
        rows = torch.repeat_interleave(
            torch.arange(self.out_features, device=self.values.device),
            torch.diff(self.crow_indices.long()),
        )
        return rows * self.in_features + self.col_indices.long()

    def mask(self) -> torch.Tensor:
        """The boolean pattern, dense."""
        return self.scatter(torch.ones(self.nnz, dtype=torch.bool, device=self.values.device))

    @property
    def weight(self) -> torch.Tensor:
        """The weights as a dense matrix (zeros outside the pattern), built from ``values``
        at each access, gradients included: for a parent module that reads its layer's
        weight (``nn.TransformerEncoderLayer``'s inference fast path) instead of calling
        the layer. The layer's own products never build it."""
        return self.scatter(self.values)

    def dense_weight(self) -> torch.Tensor:
        """The weights as a dense matrix (zeros outside the pattern), detached."""
        return self.scatter(self.values.detach())

    def scatter(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-active-weight tensor of shape ``(nnz,)`` as a dense matrix (0 elsewhere)."""
        return _scattered(tensor, self.flat_indices(), self.shape)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """The entries of a dense ``(out_features, in_features)`` tensor at the pattern."""
        return dense.reshape(-1)[self.flat_indices()]

    # -- forward ------------------------------------------------------------------------
    def _kernel_splits(self) -> kernels.Splits:
        """The compiled kernels' division of this pattern between torch's threads."""
        buffers = self._buffers
        crow, crow_t = buffers["crow_indices"], buffers["crow_indices_t"]
        state = (crow._version, crow_t._version, torch.get_num_threads())
        cached = self.__dict__.get("_splits")
        if cached is None or cached[0] is not crow or cached[1] is not crow_t \
                or cached[2] != state:
            cached = (crow, crow_t, state, kernels.Splits(crow, crow_t, state[2]))
            self.__dict__["_splits"] = cached
        return cached[3]

    def _use_kernels(self, x: torch.Tensor) -> bool:
        values, bias = self._weights()
        return (
            x.is_cpu
            and values.is_cpu
            and values.dtype in _KERNEL_DTYPES
            and x.shape[0] > 0
            and (bias is None or bias.dtype == values.dtype)
            and kernels.load() is not None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` (then ReLU where ``relu_output`` is set) of ``x`` ``(..., in_features)``.

        Raises
        ------
        RuntimeError
            If the last dimension of ``x`` is not ``in_features`` (the error type of
            ``nn.Linear``): the products would read the input at the wrong places.
        """
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            layer = f"sparse layer {self.name!r}" if self.name else "the sparse layer"
            raise RuntimeError(_BAD_INPUT.format(layer=layer, n=self.in_features,
                                                 shape=tuple(x.shape)))
        lead = x.shape[:-1]
        # a view of a 2-D input would only add a node to the autograd graph
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        use_kernels = self._use_kernels(x2d)
        if x2d.dtype != self.values.dtype:
            x2d = x2d.to(self.values.dtype)
        device = x2d.device.type
        # the products run in the weights' dtype; the output re-enters autocast
        with (torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device)
              else contextlib.nullcontext()):
            out = _CSRFunction.apply(x2d, self.values, self.bias, self,
                                     self.feature_major_output, use_kernels, self.relu_output)
        if self.feature_major_output or not use_kernels:
            out = out.t()
            if not self.feature_major_output:
                # dense layers are several times slower on a transposed input (measured: a
                # 2048 -> 10 nn.Linear at batch 256 takes 2.5 ms instead of 0.3 ms)
                out = out.contiguous()
        return out if len(lead) == 1 else out.reshape(*lead, self.out_features)

    # -- gradients ----------------------------------------------------------------------
    def _sampled_gradient(self, grad_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        pattern = _csr(self.crow_indices, self.col_indices, self.values.detach(), self.shape)
        # beta=0 ignores the pattern's values (NaN and inf included)
        return torch.sparse.sampled_addmm(pattern, grad_t, x_t.t(), beta=0.0).values()

    def _backward_plan(self, want_values: bool) -> tuple[_UpdatePlan | None, bool]:
        """The update planned for this step's backward pass, and whether that pass scans
        the dense gradient (RigL, with ``values`` needing a gradient).

        Raises
        ------
        RuntimeError
            If a backward pass of this step already ran (the layer was used twice).
        """
        plan = self._plan
        if plan is not None and plan.saved is not None:
            raise RuntimeError(_USED_TWICE.format(name=self.name, step=plan.step))
        return plan, plan is not None and plan.scan_gradient and want_values

    def _planned_gradient(self, grad_t: torch.Tensor | None, x_t: torch.Tensor | None,
                          grad_values: torch.Tensor | None, scan: bool) -> torch.Tensor | None:
        """The gradient of ``values``, after the backward pass of a planned update kept the
        feature-major output gradient ``grad_t`` and input ``x_t`` (and, with ``scan``,
        computed the gradient while scanning the dense one)."""
        plan = self._plan
        if plan is not None:
            plan.saved = (grad_t, x_t)
        return self._scan_dense_gradient(grad_t, x_t, plan) if scan else grad_values

    def _scan_dense_gradient(
        self, grad_t: torch.Tensor, x_t: torch.Tensor, plan: _UpdatePlan
    ) -> torch.Tensor:
        """Gradient of ``values``; chooses ``plan.grown`` from the dense gradient by blocks."""
        grad_values = torch.empty_like(self.values)
        crow = self.crow_indices.tolist()
        flat = self.flat_indices()
        n_in = self.in_features

        def block(r0: int, r1: int) -> torch.Tensor:
            dense = torch.mm(grad_t[r0:r1], x_t.t()).reshape(-1)
            a0, a1 = crow[r0], crow[r1]
            grad_values[a0:a1] = dense[flat[a0:a1] - r0 * n_in]
            return dense

        plan.grown_scores, plan.grown = _chunked_topk(self.out_features, n_in, block,
                                                      plan.kept_flat, plan.k)
        if plan.prune_later:  # the weights pruned after the step compete for regrowth too
            plan.active_scores = grad_values.detach().abs().float()
        return grad_values

    # -- topology updates (the layer's LayerStorage) ------------------------------------
    def plan(self, step: int, fraction: float, *, regrow: str, after_step: bool = False,
             ) -> None:
        """Choose the weights to prune at ``step``, before its forward pass.

        ``fraction`` is the step's drop fraction, 0 when the step does not change the
        topology (an earlier plan is then forgotten). With ``regrow="gradient"`` the backward
        pass of the step finds the weights to regrow. With ``after_step`` (the update comes
        after the step's optimizer step) the weights to prune are chosen by :meth:`decide`,
        from the weights the optimizer step left; the backward pass then keeps the best
        ``k`` inactive positions, which compete with the pruned weights in :meth:`decide`.
        """
        if self._plan is not None:  # nn.Module's attribute assignment costs a few us
            self._plan = None
        if fraction <= 0:
            return
        n_active = self.nnz
        k = min(math.ceil(fraction * n_active), n_active)
        if k <= 0 or n_active == self.out_features * self.in_features:
            return
        flat = self.flat_indices()
        kept = flat if after_step else self._smallest(k, flat)[0]
        self._plan = _UpdatePlan(step=step, k=k, kept_flat=kept, prune_later=after_step,
                                 scan_gradient=regrow == "gradient")

    def _smallest(self, k: int, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kept flat indices, positions in values of the k pruned)``: the ``k`` weights
        of smallest magnitude are pruned (ties: the lowest flat index); ``flat`` are
        :meth:`flat_indices`."""
        magnitude = self.values.detach().abs().float()
        dropped = top_k_first(magnitude, k, largest=False)
        keep = torch.ones(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
        keep[dropped] = False
        return flat[keep], dropped

    @torch.no_grad()
    def decide(
        self, fraction: float, *, regrow: str, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The planned update as ``(new_mask, grown)``, or ``None``; changes nothing.

        The pruned weights and ``fraction``/``regrow`` are those of :meth:`plan`. Gradient
        regrowth takes the positions the backward pass found; random regrowth draws its
        scores from ``generator`` now, block by block.
        """
        plan = self._plan
        if plan is None:
            return None
        if plan.saved is None:
            raise RuntimeError(_NOT_USED.format(name=self.name, step=plan.step))
        n_in = self.in_features
        kept_flat = plan.kept_flat
        if plan.prune_later:
            flat = plan.kept_flat  # every active weight, the pattern being unchanged
            kept_flat, dropped = self._smallest(plan.k, flat)
        if plan.scan_gradient:
            grown = plan.grown
            if plan.prune_later:  # regrowth also among the weights just pruned
                assert plan.grown_scores is not None and plan.active_scores is not None
                scores = torch.cat([plan.grown_scores, plan.active_scores[dropped]])
                index = torch.cat([plan.grown, flat[dropped]])
                grown = index[top_k_first(scores, plan.k, order=index)]
        else:
            device = self.values.device

            def block(r0: int, r1: int) -> torch.Tensor:
                return torch.rand((r1 - r0) * n_in, generator=generator).to(device)

            grown = _chunked_topk(self.out_features, n_in, block, kept_flat, plan.k)[1]
        new_flat = kernels.sorted_values(torch.cat([kept_flat, grown.to(kept_flat.device)]))
        new_mask = torch.zeros(self.out_features * n_in, dtype=torch.bool,
                               device=self.values.device)
        new_mask[new_flat] = True
        new_mask = new_mask.view(self.shape)
        plan.decided = (new_mask, new_flat)
        return new_mask, grown

    @torch.no_grad()
    def apply(self, new_mask: torch.Tensor, grown: torch.Tensor, *,
              optimizer: torch.optim.Optimizer | None = None) -> int:
        """Make ``new_mask`` the pattern; returns the number of weights new to it.

        Weights new to the pattern start at 0, and so does their optimizer state; the
        others, a weight pruned and regrown (in ``grown``) in this update included, keep
        their values and state. The gradient of ``values`` is recomputed at the new pattern
        from the backward pass of the planned step.
        """
        flat = self.flat_indices()
        plan = self._plan
        # this layer's own decision brings its flat indices; another one (e.g. a
        # synchronised decision) is read from its mask
        known = (plan.decided[1] if plan is not None and plan.decided is not None
                 and plan.decided[0] is new_mask else None)
        new_flat = self._set_pattern(new_mask.to(flat.device), known)
        pos = kernels.searchsorted_sorted(flat, new_flat).clamp_(max=flat.numel() - 1)
        new = flat[pos] != new_flat  # positions new to the pattern

        def remap(tensor: torch.Tensor) -> torch.Tensor:
            return tensor[pos].masked_fill_(new, 0)

        self.values.copy_(remap(self.values))
        if optimizer is not None:
            for value in optimizer.state.get(self.values, {}).values():
                if torch.is_tensor(value) and value.shape == self.values.shape:
                    value.copy_(remap(value))
        self._plan = None
        if self.values.grad is not None and plan is not None and plan.saved is not None:
            self.values.grad = self._sampled_gradient(*plan.saved)
        return int(torch.count_nonzero(new))

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the pattern by the bool ``mask``; weights new to the pattern start at 0.

        Raises
        ------
        TypeError
            If ``mask`` is not a bool tensor.
        ValueError
            If ``mask`` does not have the shape ``(out_features, in_features)``.
        """
        dense = self.dense_weight()
        flat = self._set_pattern(mask.to(dense.device))
        self.values.data = dense.reshape(-1)[flat].clone()
        self._plan = None

    # -- state dict in nn.Linear's form -------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = (
            PackedWeight(self.values.detach().clone(), self.flat_indices(), self.shape)
            if _PACKED.get() else self.dense_weight())
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


@dataclass(frozen=True, eq=False)  # tensors have no single truth value to compare
class PackedWeight:
    """A copy of a CSR layer's weights that :func:`packed_state_dict` keeps in place of its
    dense ``weight``: the active ``values`` at the sorted flat ``indices`` of a matrix of
    ``shape``, to be densified only when needed (:meth:`dense`)."""

    values: torch.Tensor
    indices: torch.Tensor
    shape: tuple[int, int]

    def dense(self) -> torch.Tensor:
        """The dense weight: ``values`` at ``indices``, zeros elsewhere."""
        return _scattered(self.values, self.indices, self.shape)

    @torch.no_grad()
    def write_into(self, weight: torch.Tensor) -> None:
        """``weight.copy_(self.dense())`` without building the dense copy: ``weight``
        zeroed and ``values`` written at ``indices`` (in ``weight``'s dtype)."""
        if tuple(weight.shape) != tuple(self.shape) or not weight.is_contiguous():
            weight.copy_(self.dense())
            return
        flat = weight.view(-1)
        flat.zero_()
        flat[self.indices.to(weight.device)] = self.values.to(weight)

    def mask(self) -> torch.Tensor:
        """The boolean pattern, dense, on the CPU."""
        indices = self.indices.cpu()
        return _scattered(torch.ones(indices.numel(), dtype=torch.bool), indices, self.shape)


def _scattered(tensor: torch.Tensor, indices: torch.Tensor,
               shape: tuple[int, int]) -> torch.Tensor:
    """A matrix of ``shape`` holding ``tensor`` at the flat ``indices`` and 0 elsewhere."""
    out = kernels.new_zeros(tensor, shape[0] * shape[1])
    out[indices] = tensor
    return out.view(shape)


def packed_state_dict(module: nn.Module) -> dict[str, torch.Tensor | PackedWeight]:
    """``module.state_dict()`` with a copy of each :class:`CSRLinear` weight as a
    :class:`PackedWeight` instead of a dense tensor (``bias`` and every other entry as
    ``state_dict`` gives them: not copied); :func:`unpacked` gives the dense state."""
    token = _PACKED.set(True)
    try:
        return module.state_dict()
    finally:
        _PACKED.reset(token)


def unpacked(state: Mapping[str, torch.Tensor | PackedWeight]) -> dict[str, torch.Tensor]:
    """``state`` with each :class:`PackedWeight` densified (other entries as they are)."""
    return {key: value.dense() if isinstance(value, PackedWeight) else value
            for key, value in state.items()}
