"""Sparse compute: which layers of a run train with CSR kernels (``sparse_compute``).

Masked training (:class:`~rest_fair.sparse.DynamicSparsity` alone) keeps dense weights
and zeroes the inactive ones after every step, so a step costs as much as a dense one.
:func:`make_sparse_compute` replaces the plain ``nn.Linear`` layers whose mask density is
at or below a threshold by :class:`~rest_fair.sparse.csr_linear.CSRLinear` layers, which
store and train only their active weights, and returns the
:class:`~rest_fair.sparse.csr_engine.CSRDynamicSparsity` engine that updates their
topology with the masked path's semantics.

``mode="auto"`` converts only the layers whose CSR pass :func:`measure_layer` finds clearly
faster, and on the CPU also a layer that would end a chain of CSR layers
(:mod:`~rest_fair.sparse.csr_chain`) where :func:`measure_chain_link` finds the chained
pair at least as fast (the output layer of an MLP, slower alone in CSR form than masked,
is faster as part of the chain). Convolutions always keep the masked path, and so do runs
with gradient scaling, data-parallel runs and the linear layers a CSR layer cannot stand
in for (:func:`candidate_layers`, ``example`` in :func:`make_sparse_compute`).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .._probe import probe_pass
from . import kernels
from .csr_chain import FusedReLU, hooked, link_chains
from .csr_engine import CSRDynamicSparsity
from .csr_linear import CSRLinear
from .engine import DynamicSparsity
from .masks import MaskSet
from .modules import check_threshold, sparse_linear_layers, within_threshold

__all__ = [
    "SPARSE_COMPUTE_MODES",
    "CSRDynamicSparsity",
    "CSRLinear",
    "LayerTiming",
    "SparseComputeConfig",
    "candidate_layers",
    "layer_rows",
    "make_sparse_compute",
    "measure_chain_link",
    "measure_layer",
]

#: Values of ``RESTClassifier(sparse_compute=...)``.
SPARSE_COMPUTE_MODES = ("auto", "masked", "csr")

_BAD_MODE = "sparse_compute must be one of {modes}; got {value!r}."

_CSR_NEEDS_DEVICE = (
    "sparse_compute='csr' runs on CPU or CUDA devices; got device {device!r}. Use "
    "sparse_compute='masked' (or 'auto', which falls back to it) on this device."
)

_CSR_NO_SCALER = (
    "sparse_compute='csr' does not support precision='16-mixed' (float16 with gradient "
    "scaling); use precision='32' or 'bf16', or sparse_compute='masked'."
)

# torch's CPU sparse products, and the compiled kernels, compute in these dtypes only
_CPU_CSR_DTYPES = (torch.float32, torch.float64)

_CSR_CPU_DTYPE = (
    "sparse_compute='csr' trains linear layers of float32 or float64 weights on the CPU; "
    "layer(s) {layers} hold another dtype. Use sparse_compute='masked' (or 'auto', which "
    "keeps such layers masked), or a float32 network (precision='bf16' trains a float32 "
    "network under bfloat16 autocast)."
)

_CSR_NO_DDP = (
    "sparse_compute='csr' does not support data-parallel training: a RigL update reads "
    "the dense gradient of the global batch, which DistributedDataParallel all-reduces only "
    "for parameters. Use sparse_compute='masked' (or 'auto', which falls back to it) "
    "under torchrun."
)

# "auto" converts a layer only when its CSR step is at least this much faster
_AUTO_MARGIN = 0.9


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


@dataclass(frozen=True)
class SparseComputeConfig:
    """What :func:`make_sparse_compute` decides from: the setting and the run's conditions.

    Parameters
    ----------
    mode : {"auto", "masked", "csr"}, default="auto"
        ``"masked"``: no layer is converted. ``"csr"``: every candidate layer (plain
        ``nn.Linear``, density at or below ``threshold``) is converted. ``"auto"``: the
        candidates whose CSR pass :func:`measure_layer` finds faster on ``device``.
    threshold : float in [0, 1], default=0.2
        Highest layer density considered: converted (``"csr"``) or timed alone
        (``"auto"``). Under ``"auto"`` a layer that would end a chain of converted layers
        is timed in that chain at any density.
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

    Raises
    ------
    ValueError
        For an unknown ``mode`` or a ``threshold`` outside [0, 1].
    """

    mode: str = "auto"
    threshold: float = 0.2
    batch_size: int = 256
    device: torch.device | str = "cpu"
    autocast_dtype: torch.dtype | None = None
    grad_scaling: bool = False
    distributed: bool = False

    def __post_init__(self) -> None:
        if self.mode not in SPARSE_COMPUTE_MODES:
            raise ValueError(_BAD_MODE.format(modes=SPARSE_COMPUTE_MODES, value=self.mode))
        object.__setattr__(self, "threshold",
                           check_threshold(self.threshold, "sparse_compute_threshold"))
        object.__setattr__(self, "device", torch.device(self.device))


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
        With ``csr`` infinite where torch has no CSR product in ``dtype`` on ``device``.
    """
    device = torch.device(device)
    key = (tuple(shape), int(nnz), int(batch_size), bool(input_grad), str(device), dtype,
           autocast_dtype, torch.get_num_threads())
    cached = _TIMINGS.get(key)
    if cached is not None:
        return cached
    gen = torch.Generator().manual_seed(0)
    linear, mask = _masked_linear(shape, nnz, gen, dtype)
    linear, mask = linear.to(device), mask.to(device)
    csr = CSRLinear(linear, mask)
    x = torch.randn(batch_size, linear.in_features, generator=gen, dtype=dtype).to(device)
    x.requires_grad_(input_grad)
    grad = torch.randn(batch_size, linear.out_features, generator=gen, dtype=dtype).to(device)

    def masked_pass() -> None:
        linear.weight.grad = linear.bias.grad = x.grad = None
        with torch.autocast(device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            out = linear(x)
        out.backward(grad.to(out.dtype))

    def csr_pass() -> None:
        csr.values.grad = linear.bias.grad = x.grad = None
        csr(x).backward(grad)

    masked_pass()  # warm-up (allocations, kernel selection)
    try:
        csr_pass()
    except NotImplementedError:  # torch has no CSR product in this dtype here (CPU float16)
        _TIMINGS[key] = LayerTiming(_timed(masked_pass, device), math.inf)
    else:
        _TIMINGS[key] = _alternating(masked_pass, csr_pass, repeats, device)
    return _TIMINGS[key]


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device's queued work included."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _alternating(masked_pass: Callable[[], None], csr_pass: Callable[[], None], repeats: int,
                 device: torch.device) -> LayerTiming:
    """Median times of the two passes, called in turns (the order swapped every round) for
    ``repeats`` rounds at most: fewer once one is more than twice as fast as the other."""
    t_masked: list[float] = []
    t_csr: list[float] = []
    for i in range(max(1, int(repeats))):
        pair = ((masked_pass, t_masked), (csr_pass, t_csr))
        for fn, store in pair if i % 2 == 0 else pair[::-1]:
            store.append(_timed(fn, device))
        if i >= 1 and (max(t_csr) < 0.5 * min(t_masked) or min(t_csr) > 2 * max(t_masked)):
            break  # clear either way
    return LayerTiming(statistics.median(t_masked), statistics.median(t_csr))


def _masked_linear(shape: tuple[int, int], nnz: int, gen: torch.Generator,
                   dtype: torch.dtype) -> tuple[nn.Linear, torch.Tensor]:
    """A CPU ``nn.Linear`` of random weights with ``nnz`` of them active, and its mask."""
    n_out, n_in = (int(s) for s in shape)
    linear = nn.Linear(n_in, n_out, device="meta")
    linear.weight = nn.Parameter(torch.randn(n_out, n_in, generator=gen, dtype=dtype)
                                 .div_(math.sqrt(n_in)))
    linear.bias = nn.Parameter(torch.zeros(n_out, dtype=dtype))
    mask = torch.zeros(n_out * n_in, dtype=torch.bool)
    mask[kernels.randperm_prefix(n_out * n_in, nnz, gen)] = True
    mask = mask.view(n_out, n_in)
    with torch.no_grad():
        linear.weight.mul_(mask)
    return linear, mask


def measure_chain_link(
    before: tuple[tuple[int, int], int],
    shape: tuple[int, int],
    nnz: int,
    batch_size: int,
    *,
    input_grad: bool = True,
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
) -> LayerTiming:
    """Time a layer after a CSR layer and its ReLU: masked, or in CSR form chained to it.

    ``before`` is the shape and active count of the CSR layer; the layer timed has
    ``shape`` and ``nnz`` active weights. Both sides run the two layers (one forward and
    backward pass of the pair), on the CPU with the compiled kernels: ``masked`` with
    the second layer a masked ``nn.Linear`` whose mask is re-applied after the pass (as
    the masked path does after each optimizer step), ``csr`` with both as one chain of CSR
    layers (:mod:`~rest_fair.sparse.csr_chain`), which a layer timed alone does not show.
    Private random state; cached as :func:`measure_layer` caches.

    Returns
    -------
    LayerTiming
    """
    key = ("chain", tuple(before[0]), int(before[1]), tuple(shape), int(nnz),
           int(batch_size), bool(input_grad), dtype, torch.get_num_threads())
    cached = _TIMINGS.get(key)
    if cached is not None:
        return cached
    gen = torch.Generator().manual_seed(0)
    first, first_mask = _masked_linear(before[0], before[1], gen, dtype)
    second, second_mask = _masked_linear(shape, nnz, gen, dtype)
    pairs = {}
    for chained in (False, True):
        lead = CSRLinear(first, first_mask)
        lead.relu_output = True
        tail = CSRLinear(second, second_mask) if chained else second
        holder = nn.Module()
        holder.seq = nn.Sequential(lead, FusedReLU(), tail)
        if chained:
            link_chains(holder)
        pairs[chained] = (holder.seq, [lead.values, lead.bias, tail.bias,
                                       tail.values if chained else tail.weight])
    x = torch.randn(batch_size, first.in_features, generator=gen, dtype=dtype)
    x.requires_grad_(input_grad)
    grad = torch.randn(batch_size, second.out_features, generator=gen, dtype=dtype)

    def run(chained: bool) -> None:
        seq, params = pairs[chained]
        for param in params:
            param.grad = None
        x.grad = None
        seq(x).backward(grad)
        if not chained:
            with torch.no_grad():
                second.weight.mul_(second_mask)

    run(False)  # warm-up
    run(True)
    cpu = torch.device("cpu")
    timing = _TIMINGS[key] = _alternating(lambda: run(False), lambda: run(True), repeats, cpu)
    return timing


def _chain_ends(module: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """``{layer: the layer before it}`` for each of ``names`` that follows another layer
    through one plain ``nn.ReLU`` without hooks in an ``nn.Sequential``: where that layer
    trains in CSR form, the two would form a chain (:mod:`~rest_fair.sparse.csr_chain`)."""
    out = {}
    for prefix, seq in module.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = [(f"{prefix}.{key}" if prefix else key, sub)
                    for key, sub in seq.named_children()]
        for (before, _), (_, relu), (name, _) in zip(children, children[1:], children[2:],
                                                     strict=False):
            if name in names and type(relu) is nn.ReLU and not hooked(relu):
                out[name] = before
    return out


def _shared_weights(module: nn.Module) -> set[int]:
    """``id`` of every parameter held by more than one submodule, or by one submodule
    registered under several names."""
    holders = Counter(id(param) for _, sub in module.named_modules(remove_duplicate=False)
                      for param in sub.parameters(recurse=False))
    return {key for key, n in holders.items() if n > 1}


def candidate_layers(
    module: nn.Module, masks: MaskSet, threshold: float
) -> list[tuple[str, nn.Linear, int]]:
    """The masked sub-layers :func:`~rest_fair.sparse.modules.sparse_linear_layers` selects.

    A layer whose weight is shared with another module (tied weights, or the same layer
    registered twice) is left out: a CSR layer holds its own copy of the active weights,
    and the dense weight the other module reads is released while the layer is converted.

    Returns
    -------
    list of (name, layer, nnz)
        In module order; fully dense layers and the root module are never candidates.
    """
    by_name = {name: masks.mask(name) for name in masks.names}
    shared = _shared_weights(module)
    out = []
    for name, sub in sparse_linear_layers(module, by_name, threshold).items():
        mask = by_name.get(f"{name}.weight")
        if not name or mask is None or id(sub.weight) in shared:
            continue
        nnz = int(torch.count_nonzero(mask))
        if nnz < mask.numel():
            out.append((name, sub, nnz))
    return out


@contextlib.contextmanager
def _counting_calls(module: nn.Module, names: Sequence[str]) -> Iterator[dict[str, int]]:
    """How many times each named submodule is called while the block runs."""
    calls = dict.fromkeys(names, 0)

    def count(name: str) -> None:
        calls[name] += 1

    handles = [module.get_submodule(name).register_forward_pre_hook(
        lambda _layer, _inputs, name=name: count(name)) for name in names]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _first_layer(module: nn.Module) -> str | None:
    # the first module holding parameters gets the network's input, which needs no gradient
    for name, sub in module.named_modules():
        if any(True for _ in sub.parameters(recurse=False)):
            return name
    return None


def layer_rows(module: nn.Module, names: Sequence[str], example: Any) -> dict[str, int]:
    """Rows of input each named linear layer multiplies in one forward pass of ``example``.

    The pass runs in eval mode (batch-norm statistics are not updated) without gradients;
    the module's mode is restored.
    """
    rows: dict[str, int] = {}

    def record(name: str, layer: nn.Module, inputs: tuple) -> None:
        rows[name] = max(rows.get(name, 0), inputs[0].numel() // max(layer.in_features, 1))

    handles = [module.get_submodule(name).register_forward_pre_hook(
        lambda layer, inputs, name=name: record(name, layer, inputs)) for name in names]
    probe_pass(module, example, handles)
    return rows


def make_sparse_compute(
    module: nn.Module,
    sparsity: DynamicSparsity | None,
    config: SparseComputeConfig | None = None,
    *,
    layers: Sequence[str] | None = None,
    example: Callable[[], Any] | None = None,
    example_scale: float = 1.0,
    timings: dict[str, LayerTiming] | None = None,
    **settings: Any,
) -> DynamicSparsity | None:
    """Convert the layers that train faster with CSR kernels; return the engine to use.

    Parameters
    ----------
    module : nn.Module
        The network with its masks applied; converted layers are replaced in place.
    sparsity : DynamicSparsity or None
        The masked engine (``None`` for dense training, returned as is).
    config : SparseComputeConfig, optional
        The mode, threshold and run conditions (default: ``SparseComputeConfig()``).
    layers : sequence of str, optional
        For ``"auto"``: convert exactly these candidate layers instead of measuring (a
        resumed run passes the layers its checkpoint trained in CSR form, so that it
        continues with the same kernels and the same rounding).
    example : callable, optional
        Returns one training batch (called only when there are candidate layers), for one
        forward pass (:func:`layer_rows`). A candidate that this pass calls more than once
        (its weights used twice) or never (its parent reads its weight directly) keeps the
        masked path. For ``"auto"``, each candidate is timed at the number of rows it
        multiplies in that pass (``batch_size`` times the sequence length for a
        transformer's layers) instead of at ``batch_size`` rows.
    example_scale : float, default=1.0
        How many times more samples a training batch holds than ``example``: the rows
        counted on the example are multiplied by it (an example of a few samples standing
        for a batch of samples of the same shape).
    timings : dict, optional
        Filled with the measured :class:`LayerTiming` of each candidate (``"auto"``).
    **settings
        Fields of :class:`SparseComputeConfig` that replace those of ``config``, e.g.
        ``mode="csr", threshold=0.3``.

    Returns
    -------
    DynamicSparsity or None
        ``sparsity`` itself when no layer is converted, else a :class:`CSRDynamicSparsity`.
    """
    config = replace(config or SparseComputeConfig(), **settings)
    mode, device = config.mode, config.device
    if sparsity is None or mode == "masked":
        return sparsity
    refused = device.type not in ("cpu", "cuda") or config.grad_scaling or config.distributed
    if mode == "csr" and refused:
        if device.type not in ("cpu", "cuda"):
            raise ValueError(_CSR_NEEDS_DEVICE.format(device=str(device)))
        raise ValueError(_CSR_NO_SCALER if config.grad_scaling else _CSR_NO_DDP)
    if refused:
        return sparsity
    # under "auto" a layer denser than the threshold may still end a chain (timed below)
    candidates = candidate_layers(module, sparsity.masks,
                                  1.0 if mode == "auto" else config.threshold)
    rows = {}
    if candidates and example is not None and not (mode == "auto" and layers is not None):
        names = [name for name, _, _ in candidates]
        with _counting_calls(module, names) as calls:
            rows = {name: round(n * example_scale)
                    for name, n in layer_rows(module, names, example()).items()}
        # a CSR layer must be called once per forward pass, as a module
        candidates = [c for c in candidates if calls[c[0]] == 1]
    if mode == "auto" and layers is not None:
        wanted = set(layers)
        chosen = [name for name, _, _ in candidates if name in wanted]
    elif mode == "auto":
        first = _first_layer(module)
        chosen = []
        for name, layer, nnz in candidates:
            if not within_threshold(nnz / layer.weight.numel(), config.threshold):
                continue  # timed only as the end of a chain, below
            timing = measure_layer(tuple(layer.weight.shape), nnz,
                                   rows.get(name, config.batch_size), input_grad=name != first,
                                   device=device, dtype=layer.weight.dtype,
                                   autocast_dtype=config.autocast_dtype)
            if timings is not None:
                timings[name] = timing
            if timing.csr_faster:
                chosen.append(name)
        if device.type == "cpu" and kernels.available():
            # A layer slower alone in CSR form, or denser than the threshold, may still
            # pay as the end of a chain: it is converted when the chained pair is at least
            # as fast, since the pair's timing leaves out per-step work that only the
            # masked layer does (its dense gradient's optimizer update).
            by_name = {name: (layer, nnz) for name, layer, nnz in candidates}
            for name, before in _chain_ends(module, [n for n in by_name
                                                     if n not in chosen]).items():
                if before not in chosen:
                    continue
                (lead, lead_nnz), (layer, nnz) = by_name[before], by_name[name]
                if layer.weight.dtype != lead.weight.dtype:
                    continue
                timing = measure_chain_link(
                    (tuple(lead.weight.shape), lead_nnz), tuple(layer.weight.shape), nnz,
                    rows.get(name, config.batch_size), input_grad=before != first,
                    dtype=layer.weight.dtype)
                if timings is not None:
                    timings[name] = timing
                if timing.csr <= timing.masked:
                    chosen.append(name)
            chosen = [name for name in by_name if name in chosen]
    else:
        chosen = [name for name, _, _ in candidates]
        unsupported = [f"{name!r} ({layer.weight.dtype})" for name, layer, _ in candidates
                       if device.type == "cpu" and layer.weight.dtype not in _CPU_CSR_DTYPES]
        if unsupported:
            raise ValueError(_CSR_CPU_DTYPE.format(layers=", ".join(unsupported)))
    if not chosen:
        return sparsity
    return CSRDynamicSparsity(sparsity, module, chosen)
