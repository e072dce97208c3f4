"""Compiled CPU kernels of the CSR linear layers, with the pure-torch path as fallback.

The C source ``_csr_kernels.c`` (next to this file) is compiled on first use with the
host's C compiler (``$CC``, else Python's, ``cc``, ``gcc`` or ``clang``; ``-O3
-march=native -fopenmp``, or ``-mcpu=native``, or neither, whichever compiles) into
``$REST_FAIR_CACHE/kernels`` (by default, also where it is empty,
``~/.cache/rest_fair/kernels``) and loaded with :mod:`ctypes`. The file name carries a
digest of the source, the flags, the compiler and the CPU, so a shared home directory
never loads a library built for another machine. Loaded after torch, the library uses
torch's OpenMP runtime (same soname) and so its threads; each call runs on
``torch.get_num_threads()`` of them.

The layers' products (float32 and float64, int32 CSR indices, CPU tensors) are
:func:`pack`, :func:`csr_forward` and :func:`csr_backward`. :func:`randperm_prefix` and
:func:`uniform_` draw what torch draws, bitwise and faster (random masks, initial
weights); :class:`TopKScan` ranks RigL's regrowth. Each output entry is computed by one
thread in a fixed order, so results do not depend on the thread count. A quick check
against torch runs once after loading. Where the kernels are unavailable (:func:`load`)
the layers use torch's sparse products.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._downloads import cache_dir

__all__ = [
    "ENV_SWITCH",
    "CSRProduct",
    "Splits",
    "TopKScan",
    "available",
    "balanced_splits",
    "csr_backward",
    "csr_forward",
    "csr_pattern",
    "csr_pattern_of_flat",
    "even_splits",
    "huge_pages",
    "inverse_permutation",
    "load",
    "mask_scale_",
    "new_zeros",
    "pack",
    "panel_width",
    "randperm_prefix",
    "searchsorted_sorted",
    "sorted_values",
    "unavailable_reason",
    "uniform_",
]

#: Environment variable that switches the compiled kernels off when set to ``0``
#: (``false``, ``no``, ``off``): the CSR layers and exported chains then use torch's sparse
#: products.
ENV_SWITCH = "REST_FAIR_NATIVE_KERNELS"
_SOURCE = Path(__file__).with_name("_csr_kernels.c")
# Tried in order; the first set that compiles is used.
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-mcpu=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
)
_COMPILE_TIMEOUT_S = 180
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
# lanes of a 64-byte vector; a panel holds 1, 2 or 4 vectors per feature
_LANES = {torch.float32: 16, torch.float64: 8}
# a row of a product costs about as much as this many active weights (set-up, store)
_ROW_COST = 8
# threads' row ranges start at multiples of this many rows (64 bytes of float32)
_ALIGN = 16

# below this many vector multiply-adds (or packed values) a call runs on one thread: the
# work takes about as long as waking the others. Measured on 2 threads: the forward product
# of a 300x300 layer with 967 active weights at batch 128 (7.7k units, one panel per
# thread) took 10.9 us on one thread and 7.5 us on two; with the bound at 2**12 instead of
# 2**16, 99 % fits of an MLP 3x300 on 54k images took 7 % less time
_MIN_PARALLEL_WORK = 1 << 12

_lib: ctypes.CDLL | None = None
_reason: str | None = None
_tried = False
# the entry points per dtype: pack, csr_forward, csr_backward
_FUNCS: dict[torch.dtype, tuple] = {}
_ONE_THREAD: dict[int, torch.Tensor] = {}

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p
_c_int = ctypes.c_int
_c_float = ctypes.c_float


def _cpu_signature() -> str:
    """What the CPU can run (``-march=native`` builds for exactly this)."""
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    parts.append(line.strip())
                if len(parts) >= 5:
                    break
    except OSError:
        pass
    return "\n".join(parts)


def _compiler() -> str | None:
    names = [os.environ.get("CC", ""), (sysconfig.get_config_var("CC") or "").split(" ")[0],
             "cc", "gcc", "clang"]
    found = (shutil.which(name) for name in names if name)
    return next((path for path in found if path), None)


def _build(compiler: str) -> Path:
    """Compile the source (or reuse a build of it for this CPU); the library's path."""
    source = _SOURCE.read_bytes()
    folder = cache_dir("kernels")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "rest_fair_kernels"
        folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _FLAG_SETS:
        digest = hashlib.sha256(
            b"\0".join([source, " ".join(flags).encode(), compiler.encode(),
                        _cpu_signature().encode(), sys.platform.encode()])
        ).hexdigest()[:20]
        target = folder / f"csr_kernels-{digest}.so"
        if target.exists():
            return target
        # build beside the target, then rename: concurrent processes never see half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        cmd = [compiler, *flags, "-fPIC", "-shared", "-o", tmp, str(_SOURCE)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=_COMPILE_TIMEOUT_S, check=False)
            if done.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-500:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("; ".join(errors))


# argument and return types of the entry points; "{}" stands for each dtype's suffix
_SIGNATURES = {
    "pack_{}": ([_c_int, _ptr, _c_int, _ptr, _i64, _i64, _i64, _i64, _i64, _ptr, _ptr, _ptr],
                None),
    "csr_forward_{}": ([_c_int, _ptr, _c_int, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr,
                        _c_int, _ptr, _i64, _i64, _i64], None),
    "csr_backward_{}": ([_c_int, _ptr, _c_int, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr,
                         _i64, _i64, _i64, _ptr, _i64, _i64, _i64, _ptr, _ptr], None),
    "lanes_{}": ([], _c_int),
    "randperm_prefix": ([_i64, _i64, _ptr, _ptr], _c_int),
    "uniform_f32": ([_i64, _c_float, _c_float, _ptr, _ptr], None),
    "mask_scale_f32": ([_ptr, _ptr, _i64, _c_float, _c_int], None),
    "sorted_positions": ([_ptr, _i64, _ptr, _i64, _ptr], None),
    "topk_scan_f32": ([_ptr, _i64, _i64, _ptr, _i64, _i64, _c_int, _ptr, _ptr, _ptr], _c_int),
    "topk_finish": ([_ptr, _i64, _i64], _i64),
    "csr_pattern_arrays": ([_i64, _ptr, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr],
                           None),
}


def _declare(lib: ctypes.CDLL) -> None:
    for name, (argtypes, restype) in _SIGNATURES.items():
        for suffix in _SUFFIX.values() if "{}" in name else ("",):
            fn = getattr(lib, name.format(suffix))
            fn.argtypes, fn.restype = argtypes, restype
    for dtype, suffix in _SUFFIX.items():
        _FUNCS[dtype] = tuple(getattr(lib, f"{kind}_{suffix}")
                              for kind in ("pack", "csr_forward", "csr_backward"))


def _threads(splits: torch.Tensor, work: int, end: int) -> tuple[int, int]:
    """Thread count and splits pointer of a call: one thread for small work.

    ``end`` is the last entry of ``splits`` (the rows or features split), which the caller
    knows from the shapes: reading it from the tensor would cost more than the choice.
    """
    if work >= _MIN_PARALLEL_WORK or splits.numel() <= 2:
        return splits.numel() - 1, splits.data_ptr()
    one = _ONE_THREAD.get(end)
    if one is None:
        one = _ONE_THREAD[end] = torch.tensor([0, end], dtype=torch.int64)
    return 1, one.data_ptr()


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; ``None`` where unavailable.

    Returns
    -------
    ctypes.CDLL or None
        ``None`` when ``REST_FAIR_NATIVE_KERNELS=0``, no C compiler is found, the build
        fails, or the loaded kernels disagree with torch on a small problem;
        :func:`unavailable_reason` says which.
    """
    global _lib, _reason, _tried
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _tried:
        return _lib
    _tried = True
    compiler = _compiler()
    if compiler is None:
        _reason = "no C compiler found ($CC, cc, gcc or clang)"
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
        _declare(lib)
        _lib = lib
        _self_check()
    except Exception as exc:  # any failure leaves the pure-torch path in place
        _lib = None
        _FUNCS.clear()
        _reason = f"{type(exc).__name__}: {exc}"
    return _lib


def available() -> bool:
    """Whether :func:`load` gives the compiled kernels in this process."""
    return load() is not None


def unavailable_reason() -> str | None:
    """Why the compiled kernels are not used (``None`` when they are)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"disabled by {ENV_SWITCH}"
    load()
    return _reason


def panel_width(dtype: torch.dtype, batch: int, n_threads: int | None = None,
                ) -> tuple[int, int]:
    """Vectors per panel row and samples per panel for a batch of ``batch`` samples.

    One vector (16 floats, 8 doubles) for batches of at most one vector, two for at most
    two, four above that (33 and more floats, 17 and more doubles): the panel is as narrow
    as the batch allows, so that a batch of one sample computes no padding it does not
    need.

    With ``n_threads`` (for forward products alone, as inference runs them) the widest of
    four and two vectors whose panels divide evenly among the threads is taken where one
    exists: each thread then computes whole panels from data it packed itself (a batch of
    64 floats on 2 threads: two panels of 32 instead of one of 64, measured 1.4x faster
    for the 784-2048-2048-10 MLP at 99 %). A forward product gives bitwise the same
    outputs at every width, so the choice does not change results. Training keeps the
    width of the batch alone: its weight gradients sum panel by panel.

    Returns
    -------
    nv, width : int
    """
    lanes = _LANES[dtype]
    nv = 1 if batch <= lanes else 2 if batch <= 2 * lanes else 4
    if n_threads is not None and n_threads > 1 and nv > 1:
        for wide in (4, 2):
            panels = -(-batch // (wide * lanes))
            if panels % n_threads == 0:
                return wide, wide * lanes
    return nv, nv * lanes


def balanced_splits(crow: torch.Tensor, n_threads: int) -> torch.Tensor:
    """Row ranges of a CSR pattern for ``n_threads`` threads with about equal work.

    A row costs its active weights plus a fixed amount (loop set-up and its store). Each
    range starts at a multiple of 16 rows (the nearest to the balanced split), so that two
    threads writing a sample-major output (a row of the pattern is a column there) never
    share a 64-byte line of it: measured on 2 threads, the backward product of a 784 x 300
    layer at batch 128 with a sample-major input gradient took 18 us with aligned ranges
    and 32 us with a split at column 394.

    Returns
    -------
    int64 Tensor of shape (n_threads + 1,)
    """
    n_rows = crow.numel() - 1
    cost = crow.long() + _ROW_COST * torch.arange(n_rows + 1)
    targets = torch.linspace(0, float(cost[-1]), n_threads + 1)
    splits = torch.searchsorted(cost, targets)
    splits = ((splits + _ALIGN // 2) // _ALIGN * _ALIGN).clamp_(0, n_rows)
    splits[0], splits[-1] = 0, n_rows
    return splits.contiguous()


def even_splits(n_features: int, n_threads: int) -> torch.Tensor:
    """Feature ranges (whole blocks of 16) of a packing for ``n_threads`` threads."""
    blocks = -(-n_features // 16)
    edges = [min(n_features, 16 * (blocks * t // n_threads)) for t in range(n_threads + 1)]
    edges[-1] = n_features
    return torch.tensor(edges, dtype=torch.int64)


class Splits:
    """How one pattern's training work is divided between ``n_threads`` threads.

    Parameters
    ----------
    crow, crow_t : int32 Tensor
        Row pointers of the pattern and of its transpose.
    n_threads : int

    Attributes
    ----------
    rows, cols : int64 Tensor of shape (n_threads + 1,)
        :func:`balanced_splits` of the forward product's rows and the backward product's
        columns.
    out_features, in_features : int64 Tensor of shape (n_threads + 1,)
        :func:`even_splits` for packing the output gradient and the input.
    """

    def __init__(self, crow: torch.Tensor, crow_t: torch.Tensor, n_threads: int) -> None:
        self.n_threads = int(n_threads)
        self.rows = balanced_splits(crow, self.n_threads)
        self.cols = balanced_splits(crow_t, self.n_threads)
        self.out_features = even_splits(crow.numel() - 1, self.n_threads)
        self.in_features = even_splits(crow_t.numel() - 1, self.n_threads)


def _p(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _out_strides(out: torch.Tensor, width: int) -> tuple[int, int, int]:
    """Strides (panel, sample in panel, feature) of a sample-major 2-D or a panel output."""
    if out.dim() == 3:  # panels (n_panels, features, width)
        return out.stride(0), out.stride(2), out.stride(1)
    return width * out.stride(0), out.stride(0), out.stride(1)


def pack(a: torch.Tensor, splits: torch.Tensor, nv: int, *, column_sums: bool = False,
         gate: torch.Tensor | None = None, batch: int | None = None,
         out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Panels ``P[p, j, i] = A[p * width + i, j]`` (zero-padded) of the CPU tensor ``a``,
    and its column sums if asked.

    ``a`` is a matrix ``(batch, k)`` with any strides, or panels ``(n_panels, k, width)`` of
    ``batch`` samples (as this function or :func:`csr_forward` writes them). With ``gate``
    (a ReLU's output, of ``a``'s shape and strides) the panels hold the gradient behind that
    ReLU instead: 0 where ``gate <= 0``, else ``a``, bitwise what
    ``torch.ops.aten.threshold_backward(a, gate, 0)`` gives, and the column sums are
    those of this gradient.

    Parameters
    ----------
    a : Tensor of shape (batch, k) or (n_panels, k, width)
    splits : int64 Tensor
        :func:`even_splits` of ``k``.
    nv : int
        Vectors per panel row (:func:`panel_width`); for panels, their width's.
    column_sums : bool, default=False
        The sums add each column's samples in order where the columns of ``a`` are
        contiguous (a feature-major matrix, or panels).
    gate : Tensor, optional
    batch : int, optional
        The samples of panels ``a`` (required for them).
    out : Tensor, optional
        The panels to write (new ones when not given); may be panels ``a`` itself.

    Returns
    -------
    panels : Tensor of shape (ceil(batch / width), k, width)
    sums : Tensor of shape (k,) or None
    """
    width = nv * _LANES[a.dtype]
    if a.dim() == 3:
        if batch is None or a.shape[2] != width or a.stride(2) != 1:
            raise ValueError("pack: panels need their batch and contiguous panel rows of "
                             "the width nv gives")
        k = a.shape[1]
        s0, s1, sq = 1, a.stride(1), a.stride(0)
    else:
        batch, k = a.shape
        s0, s1 = a.stride(0), a.stride(1)
        sq = width * s0
    panels = a.new_empty((-(-batch // width), k, width)) if out is None else out
    sums = a.new_empty(k) if column_sums else None
    n, splits_ptr = _threads(splits, batch * k // 4, k)
    if gate is not None and (gate.shape != a.shape or gate.stride() != a.stride()):
        raise ValueError("pack: the gate must have the shape and strides of the input")
    _FUNCS[a.dtype][0](n, splits_ptr, nv, a.data_ptr(), s0, s1, sq, batch, k,
                       panels.data_ptr(), _p(sums), _p(gate))
    return panels, sums


def csr_forward(panels: torch.Tensor, nv: int, batch: int, crow: torch.Tensor,
                col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
                splits: torch.Tensor, out: torch.Tensor, *, relu: bool = False,
                ) -> torch.Tensor:
    """``out = X W^T + bias`` (then ReLU if ``relu``) for packed ``X``.

    ``out`` is ``(batch, n_out)`` with any strides, or the next layer's panels
    ``(n_panels, n_out, width)``; ``splits`` is :func:`balanced_splits` of ``crow``.
    ``bias`` may have any strides (the kernel reads a contiguous copy).
    """
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    sq, si, sr = _out_strides(out, panels.shape[2])
    n, splits_ptr = _threads(splits, values.numel() * nv * panels.shape[0], crow.numel() - 1)
    _FUNCS[values.dtype][1](
        n, splits_ptr, nv, crow.data_ptr(), col.data_ptr(), values.data_ptr(),
        panels.data_ptr(), batch, panels.shape[1], _p(bias), int(relu), out.data_ptr(), sq, si,
        sr)
    return out


def csr_backward(grad_panels: torch.Tensor, x_panels: torch.Tensor, nv: int, batch: int,
                 crow_t: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor,
                 values: torch.Tensor, splits: torch.Tensor, grad_x: torch.Tensor | None,
                 grad_values: torch.Tensor | None, *,
                 inverse_perm_t: torch.Tensor | None = None) -> None:
    """Fill ``grad_x`` (``G W``, any strides) and ``grad_values`` (``G^T X`` at the pattern).

    Either may be ``None`` (not computed). The pattern is given by its transpose:
    ``crow_t``, ``row_t`` and ``perm_t`` (position of each entry in ``values``);
    ``splits`` is :func:`balanced_splits` of ``crow_t``. The weight gradient is computed in
    the transposed order and then gathered into the order of ``values`` through
    ``inverse_perm_t`` (:func:`inverse_permutation` of ``perm_t``, computed here when not
    given), each thread writing one range of ``grad_values``.
    """
    if grad_x is None and grad_values is None:
        return
    scratch = inverse = None
    if grad_values is not None:
        scratch = torch.empty_like(grad_values)
        inverse = inverse_permutation(perm_t) if inverse_perm_t is None else inverse_perm_t
    sq, si, sr = (0, 0, 0) if grad_x is None else _out_strides(grad_x, x_panels.shape[2])
    n, splits_ptr = _threads(splits, 2 * values.numel() * nv * x_panels.shape[0],
                             crow_t.numel() - 1)
    _FUNCS[values.dtype][2](
        n, splits_ptr, nv, crow_t.data_ptr(), row_t.data_ptr(), perm_t.data_ptr(),
        _p(inverse), values.data_ptr(), grad_panels.data_ptr(), x_panels.data_ptr(), batch,
        grad_panels.shape[1], x_panels.shape[1], _p(grad_x), sq, si, sr, _p(grad_values),
        _p(scratch))


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inverse[perm[j]] = j``, in the dtype of the permutation ``perm``."""
    inverse = torch.empty_like(perm)
    inverse[perm.long()] = torch.arange(perm.numel(), dtype=perm.dtype, device=perm.device)
    return inverse


class TopKScan:
    """The ``k`` largest ``|v|`` of a long float32 vector that arrives block by block.

    Blocks must come in increasing order of their flat offsets. Of equal magnitudes the
    lowest flat index is kept, as :func:`~rest_fair.sparse.rigl.top_k_first` keeps it over
    the whole vector. Each of torch's threads ranks one range of every long block into its
    own buffer of ``2k`` candidates, about one vectorised pass over its entries (see
    ``_csr_kernels.c``); :meth:`result` merges the buffers. The entries kept do not depend
    on the number of threads.

    Parameters
    ----------
    k : int
        Entries to keep.
    """

    def __init__(self, k: int) -> None:
        if load() is None:
            raise RuntimeError(f"the compiled kernels are not available: {unavailable_reason()}")
        self.k = int(k)
        self._threads = max(1, min(torch.get_num_threads(), 64))
        # per thread, 2k candidates as the kernels' struct: float32 score at byte 0, int64
        # index at 8
        self._buffer = torch.empty((self._threads, max(2 * self.k, 1), 16), dtype=torch.uint8)
        self._count = torch.zeros(self._threads, dtype=torch.int64)
        self._bound = torch.full((self._threads,), -1.0, dtype=torch.float32)

    def add(self, block: torch.Tensor, offset: int, exclude: torch.Tensor) -> bool:
        """Rank the entries of ``block`` (flat indices ``offset`` on), except ``exclude``.

        ``exclude`` holds sorted flat indices inside the block. Returns ``False``, changing
        nothing, when the kernels cannot rank the block: it holds a NaN, or it is not a
        contiguous float32 CPU tensor.
        """
        if (block.dtype != torch.float32 or block.device.type != "cpu"
                or not block.is_contiguous() or exclude.device.type != "cpu"):
            return False
        exclude = exclude.to(torch.int64).contiguous()
        status = _lib.topk_scan_f32(
            block.data_ptr(), block.numel(), int(offset), exclude.data_ptr(), exclude.numel(),
            self.k, self._threads, self._buffer.data_ptr(), self._count.data_ptr(),
            self._bound.data_ptr())
        return status == 0

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, flat indices)`` of the ``k`` best entries so far, in no particular order."""
        kept = torch.cat([self._buffer[t, :n] for t, n in enumerate(self._count.tolist())])
        n = _lib.topk_finish(kept.data_ptr(), kept.shape[0], self.k)
        kept = kept[:n]
        scores = kept[:, :4].contiguous().view(torch.float32).reshape(-1)
        return scores, kept[:, 8:].contiguous().view(torch.int64).reshape(-1)


class CSRProduct:
    """``X W^T + b`` for one fixed CSR matrix, as inference calls it many times.

    The matrix's pointers and its row splits per thread count are prepared once, so a call
    costs one foreign call and an allocation. The tensors must not be replaced or resized
    afterwards (their values may change in place).

    Parameters
    ----------
    crow, col : int32 Tensor
        The pattern (CPU, contiguous).
    values : Tensor
        float32 or float64, contiguous.
    bias : Tensor of shape (n_out,) or None
    """

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        self.tensors = (crow, col, values, bias)  # kept alive for the pointers below
        self.n_out = crow.numel() - 1
        self.nnz = values.numel()
        self.dtype = values.dtype
        self._fn = _FUNCS[values.dtype][1]
        self._pointers = (crow.data_ptr(), col.data_ptr(), values.data_ptr())
        self._bias = _p(bias)
        self._splits: dict[int, torch.Tensor] = {}

    def __call__(self, panels: torch.Tensor, nv: int, batch: int, n_threads: int, *,
                 relu: bool = False) -> torch.Tensor:
        """The output as panels ``(n_panels, n_out, width)`` of ``panels``' width.

        ``batch`` counts the samples computed; a chain passes the whole panels' width
        (padding included) so that every row is stored whole.
        """
        n_panels, k, width = panels.shape
        out = panels.new_empty((n_panels, self.n_out, width))
        splits = self._splits.get(n_threads)
        if splits is None:
            splits = self._splits[n_threads] = balanced_splits(self.tensors[0], n_threads)
        n, splits_ptr = _threads(splits, self.nnz * nv * n_panels, self.n_out)
        crow, col, values = self._pointers
        self._fn(n, splits_ptr, nv, crow, col, values, panels.data_ptr(), batch, k, self._bias,
                 int(relu), out.data_ptr(), self.n_out * width, 1, width)
        return out


def csr_pattern(mask: torch.Tensor, *, inverse: bool = False) -> tuple[torch.Tensor, ...]:
    """The index arrays the kernels take for the pattern of a 2-D bool ``mask`` (on its device).

    Returns
    -------
    flat : LongTensor
        Flat indices of the active positions, row-major (the order of ``values``).
    crow, col : IntTensor
        CSR row pointers and column indices of the pattern.
    crow_t, row_t, perm : IntTensor
        The transposed pattern: row pointers over input features, the output row of each
        entry, and each entry's position in ``values``.
    inverse : IntTensor
        With ``inverse=True`` only: :func:`inverse_permutation` of ``perm``, the position of
        each entry of ``values`` in the transposed pattern.
    """
    return csr_pattern_of_flat(flat_nonzero(mask), mask.shape, inverse=inverse)


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Sorted flat (row-major) indices of the ``True`` entries of the bool tensor ``mask``.

    On the CPU numpy's scan gives them (about 3 times as fast as ``nonzero`` on 2 threads
    for a 2048 x 2048 mask); the result is the same int64 tensor.
    """
    if mask.device.type != "cpu":
        return mask.reshape(-1).nonzero().squeeze(1)
    return torch.from_numpy(np.flatnonzero(mask.numpy()).astype(np.int64, copy=False))


# transparent huge pages: a 2 MiB page, and madvise's MADV_HUGEPAGE (Linux)
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14
_madvise: Any = None


def _libc_madvise() -> Any:
    """libc's ``madvise`` on Linux, else ``False``."""
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
            except (OSError, AttributeError):
                return _madvise
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            _madvise = fn
    return _madvise


def huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, whose memory, when it is a CPU tensor of several MiB on Linux, is asked
    to come in transparent huge pages; call it before the memory is first written.

    A first write to freshly mapped memory faults once per page; with 2 MiB pages instead
    of 4 KiB, zeroing a new 16 MiB buffer took 1.9 instead of 3.7 ms on a virtual machine
    whose page faults cost 1.5 µs each (with ``/sys/kernel/mm/transparent_hugepage/
    enabled`` at ``madvise``, a common default). Elsewhere, and where the system refuses,
    nothing changes.
    """
    nbytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or nbytes < 4 * _HUGE_PAGE:
        return tensor
    madvise = _libc_madvise()
    if madvise:
        start = (tensor.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (tensor.data_ptr() + nbytes) & ~(_HUGE_PAGE - 1)
        madvise(start, end - start, _MADV_HUGEPAGE)
    return tensor


def new_zeros(like: torch.Tensor, n: int) -> torch.Tensor:
    """``like.new_zeros(n)``, in :func:`huge_pages` memory."""
    return huge_pages(like.new_empty(n)).zero_()


def searchsorted_sorted(sorted_sequence: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``torch.searchsorted(sorted_sequence, values)`` of sorted int64 ``values``.

    On the CPU with the compiled kernels, one merge pass over both (the positions of a new
    pattern's flat indices in the old one: 1 ms to a few dozen µs for 42k of them);
    elsewhere torch's binary searches, which give the same positions.
    """
    if (load() is None or sorted_sequence.device.type != "cpu"
            or values.device.type != "cpu" or sorted_sequence.dtype != torch.int64
            or values.dtype != torch.int64 or sorted_sequence.dim() != 1
            or values.dim() != 1):
        return torch.searchsorted(sorted_sequence, values)
    sorted_sequence, values = sorted_sequence.contiguous(), values.contiguous()
    out = torch.empty_like(values)
    _lib.sorted_positions(sorted_sequence.data_ptr(), sorted_sequence.numel(),
                          values.data_ptr(), values.numel(), out.data_ptr())
    return out


def sorted_values(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.sort().values`` of a 1-D integer tensor.

    On the CPU numpy sorts (its vectorised sort: 0.24 against 0.83 ms for 42k int64 on 2
    threads); sorted integers are the same whichever sort orders them.
    """
    if tensor.device.type != "cpu" or tensor.dtype.is_floating_point:
        return tensor.sort().values
    return torch.from_numpy(np.sort(tensor.numpy()))


def csr_pattern_of_flat(flat: torch.Tensor, shape: tuple[int, int], *, inverse: bool = False,
                        ) -> tuple[torch.Tensor, ...]:
    """:func:`csr_pattern` of the pattern given by its sorted, distinct flat indices.

    With ``inverse``, a seventh array follows: :func:`inverse_permutation` of ``perm``. On
    the CPU the compiled kernels build all of them in two passes over ``flat`` (a counting
    sort by column); elsewhere torch's sort gives the same arrays.
    """
    n_out, n_in = shape
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n_out * n_in):
        raise ValueError(f"flat indices must lie in [0, {n_out * n_in}) for the shape "
                         f"{(n_out, n_in)}; got {int(flat.min())} to {int(flat.max())}.")
    if flat.device.type == "cpu" and load() is not None:
        flat = flat.to(torch.int64).contiguous()
        crow = torch.empty(n_out + 1, dtype=torch.int32)
        crow_t = torch.empty(n_in + 1, dtype=torch.int32)
        col, row_t, perm, inv = (torch.empty(flat.numel(), dtype=torch.int32)
                                 for _ in range(4))
        scratch = torch.empty(n_in, dtype=torch.int32)
        _lib.csr_pattern_arrays(flat.numel(), flat.data_ptr(), n_out, n_in, crow.data_ptr(),
                                col.data_ptr(), crow_t.data_ptr(), row_t.data_ptr(),
                                perm.data_ptr(), inv.data_ptr(), scratch.data_ptr())
        arrays = (flat, crow, col, crow_t, row_t, perm)
        return (*arrays, inv) if inverse else arrays
    rows, cols = flat // n_in, flat % n_in
    device = flat.device
    crow = torch.zeros(n_out + 1, dtype=torch.int32, device=device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_out), 0)
    order = torch.argsort(cols * n_out + rows)
    crow_t = torch.zeros(n_in + 1, dtype=torch.int32, device=device)
    crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=n_in), 0)
    perm = order.to(torch.int32)
    arrays = (flat, crow, cols.to(torch.int32), crow_t, rows[order].to(torch.int32), perm)
    return (*arrays, inverse_permutation(perm)) if inverse else arrays


# torch's CPU randperm draws one 32-bit number per position below this size (it uses
# another method above uint32 max / 20); the prefix also keeps positions in int32
_RANDPERM_MAX = 1 << 27
# size of a CPU generator's state (CPUGeneratorImplState), whose layout the kernel reads
_STATE_BYTES = 5056
_prefix_ok: bool | None = None


def _advanced(generator: torch.Generator, draw: Callable[[int], Any]) -> Any:
    """``draw(address)`` of a copy of ``generator``'s state, which the kernels advance as
    torch's draws would; the state is then set back into ``generator``."""
    state = generator.get_state()
    result = draw(state.data_ptr())
    generator.set_state(state)
    return result


def _same_as_torch(cases: tuple[tuple[int, int, tuple], ...], ours: Callable[..., Any],
                   theirs: Callable[..., Any]) -> bool:
    """Whether ``ours(generator, *args)`` equals ``theirs(generator, *args)``, generator
    state included, for each ``(seed, before, args)`` of ``cases``: twin CPU generators
    seeded with ``seed`` that drew ``before`` numbers each. ``False`` where the state
    layout is not the one the kernels read."""
    for seed, before, args in cases:
        twins = torch.Generator(), torch.Generator()
        for gen in twins:
            gen.manual_seed(seed)
            torch.rand(before, generator=gen)
        if twins[0].get_state().numel() != _STATE_BYTES:
            return False
        try:
            got = ours(twins[0], *args)
        except RuntimeError:  # set_state refused the state: another layout
            return False
        if not (torch.equal(got, theirs(twins[1], *args))
                and torch.equal(twins[0].get_state(), twins[1].get_state())):
            return False
    return True


def _draw_prefix(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    out = torch.empty(k, dtype=torch.int64)
    if _advanced(generator, lambda state: _lib.randperm_prefix(n, k, state,
                                                               out.data_ptr())) != 0:
        raise MemoryError(f"randperm_prefix: no memory for {n} positions")
    return out


def _check_prefix() -> bool:
    """Whether :func:`_draw_prefix` equals this torch's randperm, generator state included."""
    return _same_as_torch(((0, 3, (1000, 17)), (1, 3, (3000, 2998)), (2, 3, (5, 0))),
                          lambda gen, n, k: _draw_prefix(n, k, gen),
                          lambda gen, n, k: torch.randperm(n, generator=gen)[:k])


_uniform_ok: bool | None = None
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _uniform_f32(tensor: torch.Tensor, low: float, high: float,
                 generator: torch.Generator) -> None:
    _advanced(generator, lambda state: _lib.uniform_f32(tensor.numel(), low, high, state,
                                                        tensor.data_ptr()))


def _check_uniform() -> bool:
    """Whether the kernels' uniform draws equal this torch's ``uniform_``, values and
    generator state (torch's CPU build rounds ``x * (to - from) + from`` once)."""

    def ours(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
        out = torch.empty(n)
        _uniform_f32(out, low, high, gen)
        return out

    return _same_as_torch(
        ((0, 0, (1000, -0.1, 0.1)), (1, 3, (5000, -0.02, 0.03)), (2, 622, (623, 0.0, 1.0)),
         (3, 1, (1500, -3.7, 11.3))),
        ours, lambda gen, n, low, high: torch.empty(n).uniform_(low, high, generator=gen))


def uniform_(tensor: torch.Tensor, low: float = 0.0, high: float = 1.0, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``tensor.uniform_(low, high, generator=generator)``, bitwise, faster on the CPU.

    For a contiguous float32 CPU tensor and a CPU generator the compiled kernels draw the
    same numbers from the generator's state and leave it where ``uniform_`` leaves it, a
    run of draws at a time (about 15 times as fast as torch's one-at-a-time loop for the 4
    million weights of a 2048 x 2048 layer: 0.8 against 13 ms). A check against torch
    runs once per process; without the kernels, when it fails, and for other tensors or
    generators this calls ``tensor.uniform_``. Like it, it refuses a tensor that requires
    a gradient while gradients are recorded.
    """
    global _uniform_ok
    gen = torch.default_generator if generator is None else generator
    low, high = float(low), float(high)
    if (not (-_FLOAT32_MAX <= low <= high <= _FLOAT32_MAX
             and high - low <= _FLOAT32_MAX)  # torch's messages for what it refuses
            or tensor.dtype != torch.float32 or tensor.device.type != "cpu"
            or not tensor.is_contiguous() or gen.device.type != "cpu"
            or (tensor.requires_grad and torch.is_grad_enabled()) or load() is None):
        return tensor.uniform_(low, high, generator=generator)
    if _uniform_ok is None:
        _uniform_ok = _check_uniform()
    if not _uniform_ok:
        return tensor.uniform_(low, high, generator=generator)
    _uniform_f32(tensor, low, high, gen)
    torch.autograd.graph.increment_version(tensor)  # written as an in-place op would
    return tensor


def mask_scale_(weight: torch.Tensor, mask: torch.Tensor, scale: float | None = None) -> bool:
    """``weight.mul_(mask)``, then ``weight.mul_(scale)`` unless ``scale`` is ``None``, in
    one pass of the compiled kernels without a float copy of the boolean ``mask``.

    The products are torch's, each rounded once in float32 (zeros keep the weight's sign,
    NaN and infinities give NaN). Returns ``False``, changing nothing, where the kernels
    do not apply: no kernels, a weight that is not a contiguous float32 CPU tensor, or a
    mask of another shape or not a contiguous bool CPU tensor.
    """
    if (load() is None or weight.dtype != torch.float32 or weight.device.type != "cpu"
            or not weight.is_contiguous() or mask.dtype != torch.bool
            or mask.device.type != "cpu" or not mask.is_contiguous()
            or mask.shape != weight.shape):
        return False
    _lib.mask_scale_f32(weight.data_ptr(), mask.data_ptr(), weight.numel(),
                        1.0 if scale is None else float(scale), int(scale is not None))
    torch.autograd.graph.increment_version(weight)
    return True


def randperm_prefix(n: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``torch.randperm(n, generator=generator)[:k]``, in ``O(k)`` work plus ``n`` draws.

    The result and the generator's state afterwards are bitwise those of
    ``torch.randperm`` (a check against it runs once per process): the kernel carries out
    only the first ``k`` steps of its shuffle and skips the other draws. Without the
    compiled kernels, when the check fails, for a non-CPU generator or for
    ``n >= 2**27`` this calls ``torch.randperm``.

    Parameters
    ----------
    n : int
    k : int
        Entries wanted, at most ``n``.
    generator : torch.Generator, optional
        Default: torch's global CPU generator.

    Returns
    -------
    LongTensor of shape (k,)
    """
    global _prefix_ok
    generator = torch.default_generator if generator is None else generator
    k = max(0, min(int(k), int(n)))
    if (k >= n - 1 or n >= _RANDPERM_MAX or generator.device.type != "cpu"
            or load() is None):
        return torch.randperm(n, generator=generator)[:k]
    if _prefix_ok is None:
        _prefix_ok = _check_prefix()
    if not _prefix_ok:
        return torch.randperm(n, generator=generator)[:k]
    return _draw_prefix(n, k, generator)


def _self_check() -> None:
    """Compare the kernels with torch on a small random layer; raise on a mismatch."""
    gen = torch.Generator().manual_seed(0)
    n_out, n_in = 37, 29
    for dtype, batch in ((torch.float32, 70), (torch.float64, 5)):
        if int(getattr(_lib, f"lanes_{_SUFFIX[dtype]}")()) != _LANES[dtype]:
            raise RuntimeError("the compiled kernels use another vector width")
        mask = torch.rand(n_out, n_in, generator=gen) < 0.3
        weight = torch.randn(n_out, n_in, generator=gen, dtype=dtype) * mask
        bias = torch.randn(n_out, generator=gen, dtype=dtype)
        x = torch.randn(batch, n_in, generator=gen, dtype=dtype)
        g = torch.randn(batch, n_out, generator=gen, dtype=dtype)
        flat, crow, col, crow_t, row_t, perm = csr_pattern(mask)
        values = weight.reshape(-1)[flat].contiguous()
        splits = Splits(crow, crow_t, 2)
        nv, _ = panel_width(dtype, batch)
        xp, _ = pack(x, splits.in_features, nv)
        y = csr_forward(xp, nv, batch, crow, col, values, bias, splits.rows,
                        x.new_empty(batch, n_out))
        gp, gsum = pack(g, splits.out_features, nv, column_sums=True)
        gx, gv = torch.empty_like(x), torch.empty_like(values)
        csr_backward(gp, xp, nv, batch, crow_t, row_t, perm, values, splits.cols, gx, gv)
        tol = {"rtol": 1e-4, "atol": 1e-4}
        torch.testing.assert_close(y, x @ weight.t() + bias, **tol)
        torch.testing.assert_close(gx, g @ weight, **tol)
        torch.testing.assert_close(gv, (g.t() @ x).reshape(-1)[flat], **tol)
        torch.testing.assert_close(gsum, g.sum(0), **tol)
