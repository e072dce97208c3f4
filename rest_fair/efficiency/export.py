"""Real sparse inference: compress the sparse linear layers of a masked network.

:func:`export_sparse` copies a network and replaces each sparse ``nn.Linear`` (density at
or below a threshold) by a compressed-sparse-row (CSR) matrix with int32 indices, built
from the **mask** (active weights that are exactly zero, as RigL regrows them, are kept
as stored zeros). Inside an ``nn.Sequential``, consecutive linear layers with element-wise
activations between them form one *chain*. On CPU in float32 or float64 a chain runs on
the compiled kernels of :mod:`rest_fair.sparse.kernels`: the input is packed once into
panels of up to 64 samples, each CSR layer writes its output as the next layer's panels
(a ReLU that follows it applied before the store), and the result is unpacked once.
Elsewhere (CUDA, other dtypes, no C compiler, ``REST_FAIR_NATIVE_KERNELS=0``, a batch of
fewer than 8 samples, or an input that requires a gradient) a chain computes
``torch.addmm(bias, W_csr, X_t)`` on feature-major activations ``X_t`` (one row per
feature), transposed once on entry and once on exit. Between two layers of a chain, a
neuron whose incoming row is empty outputs the constant ``act(bias)``, which is folded
into the next layer's bias, and a neuron whose outgoing column is empty is never read:
both are dropped.

Denser linear layers inside a chain are computed densely in the chain's layout; other
layers stay as they are (their masks applied to the weights). Sparse linear layers outside
a plain ``nn.Sequential`` are replaced one by one, each by a chain that still gives its
``weight`` and ``bias`` to a parent that reads them. Predictions equal those of the
masked network up to float rounding.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Container, Mapping
from numbers import Integral
from typing import Any, ClassVar

import torch
from torch import nn

from .._validation import Interval
from ..models import MLP
from ..sparse import kernels
from ..sparse.checks import check_masks
from ..sparse.csr_linear import _csr
from ..sparse.modules import (
    ELEMENTWISE,
    check_threshold,
    set_submodule,
    sparse_linear_layers,
)

__all__ = ["SparseExport", "SparseLinearChain", "export_sparse", "module_nbytes"]

# torch's OpenMP runtime crashes the process on far more threads than cores (measured:
# torch.set_num_threads(32768) ends in a segmentation fault, 4096 runs)
_THREADS = Interval(Integral, 1, 1024)
_BAD_THREADS = "num_threads must be None or {allowed}; got {value!r}."
_BAD_INPUT = (
    "the exported network takes inputs of shape (..., {n}) (after flattening, where it "
    "flattens); got a tensor of shape {shape}."
)
_BAD_MASKS = "masks must be a mapping of parameter name to bool tensor, or None; got {type}."
_NOT_RECORDABLE = (
    "{tool} cannot record an exported network's sparse (CSR) layers: they run on compiled "
    "kernels or on torch's sparse CSR products, which tracing and export do not capture "
    "(a traced copy would compute wrong outputs). Trace or export a dense copy with its "
    "masks applied instead, e.g. export_sparse(module, masks, density_threshold=0.0) or "
    "the estimator's module_ (its inactive weights are zero); use the sparse export itself "
    "in Python (it pickles, deep-copies and survives torch.save with weights_only=False, "
    "or save its state_dict and load it into a new export_sparse() of the same model)."
)
_NOT_SCRIPTABLE = (
    "torch.jit.script cannot compile a network exported by export_sparse: its forward runs "
    "a Python plan of operations and compiled kernels. Script or trace a dense copy with its "
    "masks applied instead, e.g. export_sparse(module, masks, density_threshold=0.0) (no "
    "sparse layers: it traces) or the estimator's module_."
)
_BAD_DTYPE = (
    "the exported network's sparse layers compute in {dtype}; got a {got} input. Convert "
    "the input (x.to({dtype})){network}."
)
_CAST_NETWORK = " or the network (.to({dtype}))"
_NO_CPU_DTYPE = (
    "the exported network's sparse layers compute on the CPU in float32 or float64 only "
    "(torch has no CPU sparse CSR product in {dtype}); call .float() or .double() on the "
    "exported network, or move it to CUDA."
)


class _Cached(nn.Module):
    """A module whose derived attributes ``_CACHE`` are reset when it is moved, cast, pickled
    or loaded from a state dict.

    ``torch.jit.script`` refuses it with a message that names what to script instead.
    """

    _CACHE: ClassVar[dict[str, Any]] = {}

    def _apply(self, fn, recurse=True):
        self.__dict__.update(self._CACHE)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        # load_state_dict(assign=True) replaces the tensors the cache points to
        self.__dict__.update(self._CACHE)
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        return {**super().__getstate__(), **self._CACHE}

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script``, which cannot compile this module: refuse clearly."""
        raise RuntimeError(_NOT_SCRIPTABLE)


class _FeatureMajorLinear(nn.Module):
    """``y_t = W @ x_t + b[:, None]`` on feature-major activations (CSR or dense ``W``).

    A step of a :class:`SparseLinearChain`, whose plans compute the product from these
    buffers. ``weight`` is already masked; ``mask`` gives the CSR pattern when ``sparse``.
    """

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None, *,
                 sparse: bool) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        self.sparse = bool(sparse)
        if self.sparse:
            flat, crow, col = kernels.csr_pattern(mask)[:3]
            self.register_buffer("crow_indices", crow)
            self.register_buffer("col_indices", col)
            self.register_buffer("values", weight.reshape(-1)[flat].contiguous())
        else:
            self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", None if bias is None else bias.reshape(-1, 1).contiguous())

    @property
    def nnz(self) -> int:
        return int(self.values.numel()) if self.sparse else int(self.weight.numel())

    def matrix(self) -> torch.Tensor:
        """The weight matrix used in the product (a CSR tensor aliasing ``values`` when sparse)."""
        if not self.sparse:
            return self.weight
        return _csr(self.crow_indices, self.col_indices, self.values,
                    (self.out_features, self.in_features))

    def extra_repr(self) -> str:
        kind = f"csr, nnz={self.nnz}" if self.sparse else "dense"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


class SparseLinearChain(_Cached):
    """Linear layers and element-wise activations computed on feature-major activations.

    The input ``(..., in_features)`` is transposed once to ``(in_features, n)``, every
    step works on that layout, and the result is transposed back (on CPU the compiled
    kernels' panels replace this layout where they apply; see the module's description).

    Parameters
    ----------
    steps : list of nn.Module
        ``_FeatureMajorLinear`` layers and element-wise modules, in order.
    """

    _CACHE: ClassVar[dict[str, Any]] = {"_plan": None}

    def __init__(self, steps: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        linears = [s for s in steps if isinstance(s, _FeatureMajorLinear)]
        self.in_features = linears[0].in_features
        self.out_features = linears[-1].out_features
        self._plan: list[tuple] | None = None

    def _single(self) -> _FeatureMajorLinear:
        """The layer of a chain that is one linear layer and nothing else."""
        if len(self.steps) != 1:
            raise AttributeError("a chain of several steps has no single weight or bias")
        return self.steps[0]

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (zeros outside the mask), built on each access, of a chain that
        is one linear layer and nothing else (``AttributeError`` otherwise): such a chain
        stands for an ``nn.Linear`` whose parent may read its weight, as the inference fast
        path of ``nn.TransformerEncoderLayer`` does."""
        return self._single().matrix().to_dense()

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias of a chain that is one linear layer and nothing else (as :attr:`weight`)."""
        bias = self._single()._buffers["bias"]
        return None if bias is None else bias.reshape(-1)

    def _flat_plan(self) -> list[tuple]:
        """The chain as one ``_CHAIN`` operation of a plan, built on first use."""
        if self._plan is None:
            self._plan = [(_CHAIN, _kernel_chain_plan(self), _torch_chain_plan(self))]
        return self._plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_plan(self._flat_plan(), x)


# Operations of a plan, a flat list of ``(operation, a, b)`` run by ``_run_plan``. A ReLU
# outside a chain (_RELU_OUT) does not work in place. _CHAIN runs a chain on its kernel
# plan (a) where the kernels take the input, otherwise on its torch plan (b).
_FLATTEN, _ENTER, _ADDMM, _MM, _RELU, _CALL, _EXIT, _RELU_OUT, _CHAIN = range(9)
_PACK, _K_CSR, _K_DENSE, _UNPACK = range(20, 24)


# A dense layer of a chain with at most this many outputs (a classifier head) is computed
# by the kernels too, as a CSR matrix with every position stored (its values are the
# weight buffer itself): torch's dense product is slow for so few rows (measured: 21 us
# for a 10 x 2048 layer at batch 1, 35-44 us at batch 64).
_KERNEL_DENSE_MAX_OUT = 64


def _torch_chain_plan(chain: SparseLinearChain) -> list[tuple]:
    """The chain's plan on torch's products (feature-major; CSR tensors alias the buffers)."""
    first = next(s for s in chain.steps if type(s) is _FeatureMajorLinear)
    plan: list[tuple] = [(_ENTER, chain.in_features,
                          first.values if first.sparse else first.weight)]
    for step in chain.steps:
        if type(step) is _FeatureMajorLinear:
            bias = step._buffers["bias"]
            plan.append((_MM, step.matrix(), None) if bias is None
                        else (_ADDMM, step.matrix(), bias))
        else:
            plan.append((_RELU, None, None) if type(step) is nn.ReLU else (_CALL, step, None))
    plan.append((_EXIT, chain.out_features, None))
    return plan


def _kernel_chain_plan(chain: SparseLinearChain) -> list[tuple] | None:
    """The chain's plan on the compiled kernels; ``None`` where they do not apply.

    ``(_PACK, in_features, dtype)`` packs the input into panels and ``(_UNPACK,
    out_features, None)`` unpacks the result; between them ``(_K_CSR, product, relu)`` for
    a layer computed by a :class:`~rest_fair.sparse.kernels.CSRProduct` (``relu`` when the
    ReLU that follows it is fused into its store), ``(_K_DENSE, weight, bias_column)`` for
    a dense product, and element-wise steps.
    """
    linears = [s for s in chain.steps if type(s) is _FeatureMajorLinear]
    tensors = [s.values if s.sparse else s.weight for s in linears]
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64) or any(
        t.dtype != dtype or t.device.type != "cpu" for t in tensors
    ) or kernels.load() is None:
        return None
    plan: list[tuple] = [(_PACK, chain.in_features, dtype)]
    for step in chain.steps:
        kind = type(step)
        if kind is _FeatureMajorLinear:
            bias = step._buffers["bias"]
            if step.sparse:
                crow, col, values = step.crow_indices, step.col_indices, step.values
            elif step.out_features <= _KERNEL_DENSE_MAX_OUT:
                crow, col = kernels.csr_pattern(torch.ones_like(step.weight, dtype=torch.bool))[1:3]
                values = step.weight.reshape(-1)
            else:
                plan.append((_K_DENSE, step.weight, bias))
                continue
            bias = None if bias is None else bias.reshape(-1).contiguous()
            plan.append((_K_CSR, kernels.CSRProduct(crow, col, values, bias), False))
        elif kind is nn.ReLU and plan[-1][0] == _K_CSR and not plan[-1][2]:
            plan[-1] = (_K_CSR, plan[-1][1], True)
        else:
            plan.append((_RELU, None, None) if kind is nn.ReLU else (_CALL, step, None))
    plan.append((_UNPACK, chain.out_features, None))
    return plan


# Below this many samples a chain runs on torch's sparse products: a kernel panel holds at
# least 16 samples, and torch's sparse matrix-vector products were faster for batches of
# 1-4 (measured on the 784-2048-2048-10 MLP at 99 %: batch 1 22x dense against 13x, batch
# 8 17x against 18x, batch 32 10x against 30x).
_KERNEL_MIN_BATCH = 8


def _kernel_input(plan: list[tuple], x: torch.Tensor) -> bool:
    """Whether the compiled kernels take ``x`` (no gradient is computed through them)."""
    _, n_in, dtype = plan[0]
    return (x.device.type == "cpu" and x.dtype == dtype
            and x.numel() >= _KERNEL_MIN_BATCH * n_in
            and not (x.requires_grad and torch.is_grad_enabled()))


_even_splits = functools.cache(kernels.even_splits)


def _build_plan(module: nn.Module) -> list[tuple] | None:
    """The forward pass of ``module`` as a flat list of operations, if it is a pipeline.

    A pipeline is an ``nn.Sequential``, a :class:`~rest_fair.models.MLP` (whose forward
    applies its ``layers``) or a chain; ``None`` for anything else.
    """
    if type(module) is MLP:
        module = module.layers
    if type(module) is SparseLinearChain:
        return module._flat_plan()
    if type(module) is not nn.Sequential:
        return None
    plan: list[tuple] = []
    for sub in module:
        if type(sub) is nn.Flatten:
            plan.append((_FLATTEN, sub.start_dim, sub.end_dim))
        elif type(sub) is SparseLinearChain:
            plan.extend(sub._flat_plan())
        elif type(sub) is nn.ReLU:
            plan.append((_RELU_OUT, None, None))
        else:
            plan.append((_CALL, sub, None))
    return plan


def _check_features(h: torch.Tensor, n_features: int) -> None:
    if h.dim() == 0 or h.shape[-1] != n_features:
        raise ValueError(_BAD_INPUT.format(n=n_features, shape=tuple(h.shape)))


def _check_torch_input(h: torch.Tensor, weight: torch.Tensor) -> None:
    """Refuse, naming the remedy, inputs that torch's sparse products of a chain cannot take:
    another dtype than the weights', or a CPU dtype without a CSR product."""
    dtype = weight.dtype
    if h.dtype != dtype:
        # the network's cast is named only where its sparse layers could compute in it
        castable = h.dtype.is_floating_point and (
            weight.device.type != "cpu" or h.dtype in (torch.float32, torch.float64))
        network = _CAST_NETWORK.format(dtype=h.dtype) if castable else ""
        raise TypeError(_BAD_DTYPE.format(dtype=dtype, got=h.dtype, network=network))
    if weight.device.type == "cpu" and dtype not in (torch.float32, torch.float64):
        raise TypeError(_NO_CPU_DTYPE.format(dtype=dtype))


def _refuse_recording() -> None:
    """Raise where tracing (``torch.jit.trace``, ``torch.onnx.export``) or ``torch.export``
    records the forward pass: the CSR products of a chain cannot be recorded."""
    if torch.jit.is_tracing():
        raise RuntimeError(_NOT_RECORDABLE.format(tool="torch.jit.trace (and torch.onnx.export)"))
    if torch.compiler.is_exporting():
        raise RuntimeError(_NOT_RECORDABLE.format(tool="torch.export (and torch.onnx.export)"))


def _run_chain(kernel_plan: list[tuple] | None, torch_plan: list[tuple],
               x: torch.Tensor) -> torch.Tensor:
    """A chain's output: on its kernel plan where the kernels take ``x``, else on its torch
    plan. Under autocast the chain computes in its weights' dtype (a floating input is
    cast to it), as :class:`~rest_fair.sparse.csr_linear.CSRLinear` does: torch's CSR
    products have no reduced-precision CPU version."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            dtype = torch_plan[0][2].dtype  # the first layer's weights (_ENTER)
            return _run_chain(kernel_plan, torch_plan,
                              x.to(dtype) if x.is_floating_point() else x)
    plan = kernel_plan if kernel_plan is not None and _kernel_input(kernel_plan, x) else torch_plan
    return _run_plan(plan, x)


def _run_plan(plan: list[tuple], x: torch.Tensor) -> torch.Tensor:
    h = x
    lead: torch.Size | None = None
    batch = nv = padded = n_threads = 0
    for op, a, b in plan:
        if op == _ADDMM:
            h = torch.addmm(b, a, h)
        elif op == _K_CSR:
            h = a(h, nv, padded, n_threads, relu=b)
        elif op == _RELU:
            h = torch.relu_(h)
        elif op == _MM:
            h = torch.mm(a, h)
        elif op == _ENTER:
            _check_features(h, a)
            _check_torch_input(h, b)
            lead = h.shape[:-1]
            # A contiguous feature-major copy is cheaper than the sparse product reading a
            # transposed view (measured ~15 % on a 2048-wide layer, batch 64).
            h = h.reshape(-1, a).t().contiguous()
        elif op == _EXIT:
            h = h.t().reshape(*lead, a)
        elif op == _PACK:
            _check_features(h, a)
            lead = h.shape[:-1]
            h = h.reshape(-1, a)
            batch, n_threads = h.shape[0], torch.get_num_threads()
            nv, width = kernels.panel_width(b, batch, n_threads)
            h, _ = kernels.pack(h, _even_splits(a, n_threads), nv)
            padded = h.shape[0] * width  # padding columns are computed too: rows stored whole
        elif op == _K_DENSE:
            if h.shape[0] == 1:
                h = (torch.mm(a, h[0]) if b is None else torch.addmm(b, a, h[0])).unsqueeze(0)
            else:
                h = torch.matmul(a, h) if b is None else torch.matmul(a, h).add_(b)
        elif op == _UNPACK:
            h = h.transpose(1, 2).reshape(-1, a)[:batch].reshape(*lead, a)
        elif op == _FLATTEN:
            h = h.flatten(a, b)
        elif op == _RELU_OUT:
            h = torch.relu(h)
        elif op == _CHAIN:
            _refuse_recording()
            h = _run_chain(a, b, h)
        else:
            h = a(h)
    return h


class SparseExport(_Cached):
    """Wrapper returned by :func:`export_sparse`.

    When the converted network is a pipeline (an ``nn.Sequential`` or the estimator's
    MLP), ``forward`` runs it as a flat list of tensor operations built on the first call
    (about 0.15 ms less Python per call, measured on the 784-2048-2048-10 MLP), rebuilt
    when the model is moved or cast; forward hooks on the inner modules are then not
    called (``export.module(x)`` runs the modules one by one). Further arguments (a
    padding mask, ...) go to the converted network.

    Parameters
    ----------
    module : nn.Module
        The converted network.
    num_threads : int or None
        Torch CPU threads used during ``forward`` (restored afterwards); ``None`` keeps
        the current setting.
    """

    _CACHE: ClassVar[dict[str, Any]] = {"_plan": None, "_planned": False}

    def __init__(self, module: nn.Module, num_threads: int | None = None) -> None:
        super().__init__()
        self.module = module
        self.num_threads = num_threads
        # compressed layers hold buffers only: an empty parameter serves code that finds
        # the device with ``next(model.parameters())`` (as RESTClassifier.predict does)
        first = next(iter([*module.parameters(), *module.buffers()]), None)
        self.device_anchor = nn.Parameter(
            torch.empty(0, device=first.device if first is not None else None),
            requires_grad=False,
        )
        self._plan: list[tuple] | None = None
        self._planned = False

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """The converted network's output for its arguments (any the network takes)."""
        if not self._planned:
            self._plan, self._planned = _build_plan(self.module), True
        n, previous = self.num_threads, torch.get_num_threads()
        switch = n is not None and n != previous
        if switch:
            torch.set_num_threads(n)
        try:
            if self._plan is None or args or kwargs:
                return self.module(x, *args, **kwargs)
            return _run_plan(self._plan, x)
        finally:
            if switch:
                torch.set_num_threads(previous)


def module_nbytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers of ``module`` (CSR values plus indices).

    Parameters
    ----------
    module : nn.Module

    Returns
    -------
    int
    """
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _remove_dead(layers: list[dict], acts: list[list[nn.Module]]) -> None:
    """Drop dead neurons between consecutive layers of a chain, in place.

    ``layers[j]`` holds dense masked ``weight``, ``mask`` and ``bias``; ``acts[j]`` the
    element-wise modules between layer ``j`` and ``j + 1``.
    """

    def drop(j: int, keep: torch.Tensor) -> None:
        for key in ("weight", "mask", "bias"):  # rows of layer j, columns of layer j + 1
            layers[j][key] = layers[j][key][keep]
        for key in ("weight", "mask"):
            layers[j + 1][key] = layers[j + 1][key][:, keep]

    # Forward: empty rows output act(bias), a constant; fold it into the next bias.
    for j in range(len(layers) - 1):
        layer, nxt = layers[j], layers[j + 1]
        empty = ~layer["mask"].any(dim=1)
        if empty.all():
            empty[0] = False  # keep one neuron so every product keeps a valid shape
        if not empty.any():
            continue
        const = layer["bias"][empty]
        for act in acts[j]:
            const = act(const)
        nxt["bias"] = nxt["bias"] + nxt["weight"][:, empty] @ const
        drop(j, ~empty)
    # Backward: neurons whose outgoing column is empty are never read.
    for j in range(len(layers) - 2, -1, -1):
        unused = ~layers[j + 1]["mask"].any(dim=0)
        if unused.all():
            unused[0] = False
        if unused.any():
            drop(j, ~unused)


def _build_chain(
    linears: list[nn.Linear],
    acts: list[list[nn.Module]],
    tail: list[nn.Module],
    masks: Mapping[str, torch.Tensor],
    names: list[str],
    sparse: Container[str],
    remove_dead: bool,
) -> SparseLinearChain:
    """The chain of ``linears`` (named ``names``), ``acts[j]`` after layer ``j``, then ``tail``."""
    layers = []
    for lin, name in zip(linears, names, strict=True):
        weight = lin.weight.detach()
        mask = masks.get(f"{name}.weight" if name else "weight")
        if mask is None:
            mask = torch.ones_like(weight, dtype=torch.bool)
        mask = mask.to(weight.device)
        has_bias = lin.bias is not None
        bias = lin.bias.detach().clone() if has_bias else weight.new_zeros(weight.shape[0])
        layers.append(dict(weight=weight * mask, mask=mask, bias=bias, has_bias=has_bias,
                           sparse=name in sparse))
    if remove_dead and len(layers) > 1:  # detached tensors: no graph is recorded
        _remove_dead(layers, acts)
    steps: list[nn.Module] = []
    for j, layer in enumerate(layers):
        # A layer without bias only gets one when dead-neuron folding gave it one.
        bias = layer["bias"]
        if not layer["has_bias"] and not bool(bias.ne(0).any()):
            bias = None
        steps.append(_FeatureMajorLinear(layer["weight"], layer["mask"], bias,
                                         sparse=layer["sparse"]))
        if j < len(acts):
            steps.extend(acts[j])
    steps.extend(tail)
    return SparseLinearChain(steps)


def _convert_sequential(
    seq: nn.Sequential,
    prefix: str,
    masks: Mapping[str, torch.Tensor],
    sparse: Container[str],
    remove_dead: bool,
) -> set[str]:
    """Replace chains in ``seq`` in place; return the names of the converted linears."""
    items = list(seq._modules.items())
    new: list[tuple[str, nn.Module]] = []
    done: set[str] = set()
    i = 0
    while i < len(items):
        key, sub = items[i]
        i += 1
        if f"{prefix}{key}" not in sparse:
            new.append((key, sub))
            continue
        # A chain starts at a sparse linear and runs through element-wise modules and plain
        # linears (subclasses, e.g. the out-projection of nn.MultiheadAttention, may be used
        # through their weights rather than their forward, so they are left alone).
        linears, names, acts, pending = [sub], [f"{prefix}{key}"], [], []
        while i < len(items) and type(items[i][1]) in (*ELEMENTWISE, nn.Linear):
            k_key, k_sub = items[i]
            i += 1
            if type(k_sub) is nn.Linear:
                acts.append(pending)
                pending = []
                linears.append(k_sub)
                names.append(f"{prefix}{k_key}")
            else:
                pending.append(k_sub)
        new.append((key, _build_chain(linears, acts, pending, masks, names, sparse, remove_dead)))
        done.update(names)
    seq._modules = OrderedDict(new)
    return done


def export_sparse(
    module: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    *,
    density_threshold: float = 0.2,
    num_threads: int | None = None,
    remove_dead: bool = True,
) -> SparseExport:
    """Copy a masked network into one that computes its sparse linear layers sparsely.

    Parameters
    ----------
    module : nn.Module
        The trained network; it is not modified.
    masks : dict of str to bool tensor, or None
        Parameter name -> mask (as ``RESTClassifier.masks_``). Weights without a mask are
        dense. A weight shared by several layers has its mask under its first name, and
        every layer that holds it is exported with that mask.
    density_threshold : float, default=0.2
        Linear layers whose mask density is at or below it become CSR layers. Near a
        density of 0.2 sparse and dense products take about the same time on CPU.
    num_threads : int or None, default=None
        Torch CPU threads for ``forward`` of the exported model (the previous setting is
        restored after each call). For batches of a few samples on a shared host one
        thread is often as fast as more. ``None`` keeps the process setting.
    remove_dead : bool, default=True
        Remove dead neurons between consecutive layers of a chain.

    Returns
    -------
    SparseExport
        An ``nn.Module`` in evaluation mode. Its ``module`` attribute is the converted
        copy; :func:`module_nbytes` gives its weight bytes.

    Notes
    -----
    Without the kernels, chains compute ``torch.mm``/``torch.addmm`` on
    ``torch.sparse_csr_tensor`` (int32 indices, which they accept on CPU with torch 2.14);
    ``F.linear`` with a CSR weight and COO tensors are avoided: both are several times
    slower.
    """
    threshold = check_threshold(density_threshold, "density_threshold")
    if num_threads is not None and not _THREADS.accepts(num_threads):
        raise ValueError(_BAD_THREADS.format(allowed=_THREADS.describe(), value=num_threads))
    if masks is not None and not isinstance(masks, Mapping):
        raise TypeError(_BAD_MASKS.format(type=type(masks).__name__))
    masks = dict(masks or {})
    check_masks(module, masks)
    exported = copy.deepcopy(module)
    exported.eval()
    params = dict(exported.named_parameters())
    with torch.no_grad():
        for key, mask in masks.items():
            params[key].mul_(mask.to(params[key].device))
    # a weight shared by several layers (a head tied to an embedding) is masked under its
    # first name: every layer that holds it reads that mask
    by_weight = {id(params[key]): mask for key, mask in masks.items()}
    masks = {name: by_weight[id(p)]
             for name, p in exported.named_parameters(remove_duplicate=False)
             if id(p) in by_weight}
    sparse = sparse_linear_layers(exported, masks, threshold)

    converted: set[str] = set()
    for name, sub in list(exported.named_modules()):
        # a subclass with a forward of its own may index its modules, which chains merge
        if isinstance(sub, nn.Sequential) and type(sub).forward is nn.Sequential.forward:
            prefix = f"{name}." if name else ""
            converted |= _convert_sequential(sub, prefix, masks, sparse, remove_dead)
    # Remaining sparse linears (outside a plain Sequential, or the module itself) one by one.
    for name, sub in sparse.items():
        if name not in converted:
            chain = _build_chain([sub], [], [], masks, [name], sparse, remove_dead)
            if name:
                set_submodule(exported, name, chain)
            else:
                exported = chain
    return SparseExport(exported, num_threads=num_threads).eval()
