"""Data-parallel training with PyTorch's ``DistributedDataParallel``, launched by torchrun.

A script that calls ``RESTClassifier(...).fit(X, y, groups=g)`` runs unchanged under
``torchrun --nproc_per_node=N script.py``: :func:`resolve_distributed` finds (or
initialises) the process group and :meth:`DistributedContext.prepare` makes the training
parts one rank's. A fit in one process gets a :class:`LocalContext`: the same interface,
with collectives that return their input, so ``fit`` and the loop have one code path.

What is synchronised and which checks compare the ranks is tabulated in
``docs/scaling.md`` ("What is synchronised, and why the masks cannot diverge"). Masks or
weights that differ raise :class:`~rest_fair.exceptions.MaskDivergenceError`; data or
parameters that differ raise :class:`~rest_fair.exceptions.DistributedError`, as does, on
the other ranks, a rank that dies or hangs for ``distributed_timeout`` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import hashlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from ..callbacks import Callback
from ..exceptions import DistributedError, MaskDivergenceError

__all__ = [
    "TORCHRUN_ENV",
    "DistributedContext",
    "GlobalGroupDRO",
    "LocalContext",
    "check_world",
    "resolve_distributed",
    "shard_order",
    "shard_range",
    "translate_failures",
]

#: What torchrun (and any launcher using the env:// rendezvous) sets for every worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

NO_PROCESS_GROUP = (
    "distributed=True needs a torch.distributed process group, but none is initialised "
    "and the torchrun environment is incomplete ({missing} not set). Launch the script "
    "with torchrun (e.g. `torchrun --nproc_per_node=2 script.py`), or call "
    "torch.distributed.init_process_group() before fit; distributed='auto' trains in one "
    "process when neither is present."
)
NO_TORCH_DISTRIBUTED = (
    "distributed=True, but this torch build has no torch.distributed support "
    "(torch.distributed.is_available() is False)."
)
NCCL_ON_CPU = (
    "the process group uses the NCCL backend, which only communicates CUDA tensors, but "
    "fit runs on {device}. Initialise the group with backend='gloo' for CPU training, or "
    "fit on CUDA."
)
INDIVISIBLE_BATCH = (
    "batch_size={batch_size} is the global batch of one optimizer step, shared equally by "
    "the {world_size} ranks, so it must be a multiple of {world_size}; use e.g. "
    "batch_size={suggestion}."
)
TOO_FEW_SAMPLES = (
    "{n_samples} training samples cannot be shared by {world_size} ranks: every rank "
    "needs at least one sample of every batch (samples of sample_weight 0, and those of a "
    "group an upweight dict weighs 0, are not trained on, and not counted)."
)
RANK_FAILED = (
    "distributed fit failed on rank {rank} of {world_size}: a collective operation with "
    "the other ranks did not complete. Another rank probably died (see its log), hung for "
    "longer than {timeout}, or stopped calling fit. The error from torch.distributed was: "
    "{error}"
)
#: :data:`RANK_FAILED`'s timeout where the group's is another than ``distributed_timeout``
#: (initialised by the caller or an earlier fit), and where torch does not tell it.
GROUP_TIMEOUT = (
    "the process group's timeout, {group} s (distributed_timeout={timeout} s sets it only "
    "when fit initialises the group)"
)
UNKNOWN_GROUP_TIMEOUT = (
    "the process group's timeout (distributed_timeout={timeout} s when fit initialised the "
    "group)"
)
MASKS_DIVERGED = (
    "the sparse masks differ across ranks {when}: layer(s) {layers} hold a different "
    "topology on rank(s) {ranks} than on rank 0. Every rank must see the same weights and "
    "all-reduced gradients; something changed the masks on some ranks only (e.g. a "
    "callback that edits masks or weights on one rank, or a module that is not wrapped by "
    "DistributedDataParallel)."
)
WEIGHTS_DIVERGED = (
    "the weights differ across ranks {when}: parameter(s) {names} on rank(s) {ranks} are "
    "not those of rank 0. DistributedDataParallel keeps them identical unless something "
    "edits them on some ranks only (a callback, a non-deterministic in-place operation)."
)
NO_GRADIENT = (
    "parameter(s) {names} got no gradient in the first training step: the module's forward "
    "does not use them, or nothing they compute reaches the loss. Data-parallel training "
    "(DistributedDataParallel) needs every trainable parameter in the loss: use them in "
    "forward, or freeze them with requires_grad_(False)."
)
DIFFERENT_RUN = (
    "rank {rank} was given different {what} than rank 0 (digest {ours} vs {theirs}). "
    "Every rank of a distributed fit must call fit with the same data and parameters; "
    "load the data deterministically on every rank."
)
GLOBAL_GROUPDRO_DEPRECATED = (
    "GlobalGroupDRO is deprecated: GroupDROObjective(n_groups, eta=..., device=..., "
    "all_reduce=context.all_reduce, world_size=context.world_size) is GroupDRO over the "
    "global batch. GlobalGroupDRO will be removed in a future release."
)

# substrings of the errors that gloo, NCCL and the c10d store raise when a peer is gone
_COMM_ERROR_MARKERS = ("gloo", "nccl", "c10d", "connection", "timed out", "timeout",
                       "peer", "socket", "broken pipe", "watchdog")
_CHECKSUM_PRIME = 1_000_000_007


# ------------------------------------------------------------------ sharding (no processes)
def shard_order(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of a global epoch order.

    Rank ``r`` takes positions ``[r * b, (r + 1) * b)`` of every global batch of
    ``batch_size`` samples, ``b = batch_size // world_size``. A trailing partial batch is
    cut into ``world_size`` equal slices (its remainder, at most ``world_size - 1``
    samples, is not drawn), so the average of the ranks' mean losses is the mean loss of
    the global batch.

    Parameters
    ----------
    order : LongTensor of shape (n,)
        The global order (identical on every rank).
    batch_size : int
        Global batch size; a multiple of ``world_size``.
    rank, world_size : int
        This rank and the number of ranks.

    Returns
    -------
    LongTensor
        Concatenated slices; consecutive chunks of ``batch_size // world_size`` are this
        rank's batches (the last may be shorter).
    """
    batch_size, rank, world_size = int(batch_size), int(rank), int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}); got {rank}.")
    local = _rank_batch(batch_size, world_size)
    full = len(order) // batch_size
    body = order[: full * batch_size].view(full, world_size, local)[:, rank].reshape(-1)
    tail = order[full * batch_size:]
    share = len(tail) // world_size
    return torch.cat([body, tail[rank * share: (rank + 1) * share]])


def shard_range(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Indices of this rank's contiguous part of ``range(n)`` (parts differ by at most 1)."""
    return torch.tensor_split(torch.arange(int(n)), int(world_size))[int(rank)]


def _rank_batch(batch_size: int, world_size: int) -> int:
    """One rank's share of a global batch, which must split equally."""
    if batch_size % world_size:
        raise ValueError(INDIVISIBLE_BATCH.format(
            batch_size=batch_size, world_size=world_size,
            suggestion=max(world_size, round(batch_size / world_size) * world_size)))
    return batch_size // world_size


def check_world(n_samples: int, batch_size: int, world_size: int) -> None:
    """Check that ``n_samples`` and ``batch_size`` can be shared by ``world_size`` ranks.

    Raises
    ------
    ValueError
        If ``batch_size`` is not a multiple of ``world_size``, or there are fewer samples
        than ranks.
    """
    _rank_batch(batch_size, world_size)
    if n_samples < world_size:
        raise ValueError(TOO_FEW_SAMPLES.format(n_samples=n_samples, world_size=world_size))


# ---------------------------------------------------------------- process-group discovery
def _bind_world_defaults_to_none() -> None:
    # torch.distributed.nn.functional binds ``group.WORLD`` as its functions' default
    # when first imported (DistributedDataParallel imports it on its first wrap). After
    # the group is initialised that default holds the group forever: gloo's threads then
    # outlive the interpreter and die taking the GIL (SIGABRT, "terminate called without
    # an active exception"). Imported before, the default is None (looked up per call).
    import torch.distributed.nn.functional  # noqa: F401


def _destroy_at_exit() -> None:
    # Joins gloo's threads while they can still take the GIL to release their tensors
    # (else SIGABRT at exit, also after a failed collective, whose work has ended). The
    # group's last reference must go first: collect the cycles that may still reach a
    # DistributedDataParallel wrapper (an interrupted fit's run holds one).
    if dist.is_initialized():
        gc.collect()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def resolve_distributed(
    distributed: bool | str, device: torch.device, *, timeout: float
) -> LocalContext:
    """The world of a fit: a :class:`DistributedContext`, or a :class:`LocalContext`.

    Parameters
    ----------
    distributed : {"auto", True, False}
        ``"auto"``: data-parallel when a process group with more than one rank is
        initialised, or the torchrun environment says ``WORLD_SIZE > 1``. ``True``: always
        (a single rank too), failing when there is no process group to use. ``False``:
        never.
    device : torch.device
        The resolved ``device`` parameter; ``cuda`` without an index becomes
        ``cuda:LOCAL_RANK`` (modulo the number of visible devices).
    timeout : float
        Seconds a collective may wait for the other ranks; used when the process group is
        initialised here (an existing group keeps its own).

    Returns
    -------
    DistributedContext or LocalContext
        A :class:`LocalContext` on ``device`` to train in one process.

    Raises
    ------
    DistributedError
        ``distributed=True`` without a process group or torchrun environment, or on a
        torch build without ``torch.distributed``; an NCCL process group for a fit that
        does not run on CUDA.
    """
    auto = isinstance(distributed, str)
    if not auto and not distributed:
        return LocalContext(device=device)
    if not dist.is_available():
        if auto:
            return LocalContext(device=device)
        raise DistributedError(NO_TORCH_DISTRIBUTED)
    env = {k: os.environ.get(k) for k in TORCHRUN_ENV}
    missing = [k for k, v in env.items() if not v]
    initialised = dist.is_initialized()
    if initialised:
        world_size, rank = dist.get_world_size(), dist.get_rank()
        local_rank = os.environ.get("LOCAL_RANK", rank)
    elif not missing:
        world_size, rank, local_rank = int(env["WORLD_SIZE"]), int(env["RANK"]), env["LOCAL_RANK"]
    elif auto:
        return LocalContext(device=device)
    else:
        raise DistributedError(NO_PROCESS_GROUP.format(missing=", ".join(missing)))
    if auto and world_size < 2:
        return LocalContext(device=device)
    local_rank = int(local_rank)
    if device.type == "cuda":
        if device.index is None:  # one GPU per local rank unless the user named one
            device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    if initialised:
        backend = str(dist.get_backend())
    else:
        backend = "nccl" if device.type == "cuda" else "gloo"
        _bind_world_defaults_to_none()
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout)))
        atexit.register(_destroy_at_exit)
    if backend == "nccl" and device.type != "cuda":
        raise DistributedError(NCCL_ON_CPU.format(device=str(device)))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank,
                              device=device, backend=backend, timeout=float(timeout))


def _from_user_code(exc: BaseException) -> bool:
    """Whether ``exc`` is a user's error, whatever it says: raised inside a callback, or
    raised by code outside torch and rest_fair (a module's ``forward``, a Dataset's item)."""
    tb, raised_in = exc.__traceback__, None
    while tb is not None:
        if isinstance(tb.tb_frame.f_locals.get("self"), Callback):
            return True
        raised_in = os.path.abspath(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    ours = (os.path.dirname(os.path.abspath(torch.__file__)),
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return raised_in is not None and not raised_in.startswith(tuple(p + os.sep for p in ours))


@contextlib.contextmanager
def translate_failures(timeout: float) -> Iterator[None]:
    """Turn a failed collective into a :class:`DistributedError` that says what happened.

    Translated are communication errors (``torch.distributed.DistError``, or a
    ``RuntimeError`` naming gloo, NCCL, c10d, a connection or a timeout, raised inside
    torch or rest_fair, not by a callback) while a group of more than one rank is
    initialised, and the ``DistError`` of a failed rendezvous (rank and world size then
    from the environment); everything else passes through. The message quotes ``timeout``
    (``distributed_timeout``) as given, or the group's own where that is another.
    """
    try:
        yield
    except DistributedError:
        raise
    except Exception as exc:
        dist_error = isinstance(exc, getattr(dist, "DistError", ()))  # torch >= 2.1
        comm_error = dist_error or (isinstance(exc, RuntimeError) and any(
            m in str(exc).lower() for m in _COMM_ERROR_MARKERS) and not _from_user_code(exc))
        if dist.is_available() and dist.is_initialized():
            if dist.get_world_size() < 2 or not comm_error:
                raise
            rank, world_size = dist.get_rank(), dist.get_world_size()
        elif dist_error:  # the rendezvous itself failed
            rank = os.environ.get("RANK", "?")
            world_size = os.environ.get("WORLD_SIZE", "?")
        else:
            raise
        raise DistributedError(RANK_FAILED.format(
            rank=rank, world_size=world_size, timeout=_timeout_named(timeout),
            error=str(exc).strip())) from exc


def _timeout_named(timeout: float) -> str:
    """The timeout a failed collective waited for: ``distributed_timeout`` as given where it
    is the group's (or no group is initialised), else the group's own where torch tells it."""
    if not dist.is_initialized():
        return f"distributed_timeout={timeout} s"
    try:  # the options of the group's backend: no public accessor
        backend = str(dist.get_backend())
        device = torch.device("cuda" if "nccl" in backend else "cpu")
        group = dist.distributed_c10d._get_default_group()._get_backend(device)
        seconds = group.options._timeout.total_seconds()
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return UNKNOWN_GROUP_TIMEOUT.format(timeout=timeout)
    if abs(seconds - float(timeout)) < 1e-3:  # kept in whole milliseconds
        return f"distributed_timeout={timeout} s"
    return GROUP_TIMEOUT.format(group=seconds, timeout=timeout)


# ------------------------------------------------------------------------ the context
def _mask_checksum(mask: torch.Tensor) -> torch.Tensor:
    # count, sum and a second moment of the active positions: a swap changes both sums
    idx = mask.reshape(-1).nonzero().squeeze(1)
    return torch.stack([
        torch.tensor(len(idx), device=idx.device), idx.sum(),
        ((idx * idx) % _CHECKSUM_PRIME).sum(),
    ]).to(torch.int64)


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class LocalContext:
    """A fit in one process: rank 0 of a world of one, on ``device``.

    The interface of :class:`DistributedContext`; here the collectives return their
    input, the checks pass and :meth:`prepare` leaves the parts as they are; what is
    built on the collectives (:meth:`any`, :meth:`end_train_epoch`, ...) is shared.
    ``data_parallel`` says whether the module trains through ``DistributedDataParallel``
    (the mask and weight checks compare the ranks only then).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    data_parallel: ClassVar[bool] = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (which writes files and shows progress)."""
        return self.rank == 0

    # -- collectives -------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` reduced over the ranks (``op`` ``"sum"`` or ``"max"``)."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor``, stacked along a new first axis, on the CPU."""
        return tensor.detach().cpu()[None]

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (in place where possible); returns it."""
        return tensor

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's picklable ``value`` on every rank."""
        return value

    def broadcast_decision(
        self, decisions: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Rank 0's prune-and-regrow decision, ``{name: (new_mask, regrown indices)}``."""
        return decisions

    # -- checks ------------------------------------------------------------------------
    def check_same(self, what: str, value: Any) -> None:
        """Raise on every rank unless all ranks hold the same ``value`` (by digest).

        A callable ``value`` is called for the value only where there are ranks to compare
        (never in one process), so that a costly value is computed only when needed.
        """

    def check_masks(self, masks: Any, *, when: str) -> None:
        """Raise :class:`MaskDivergenceError` on every rank unless all hold the same masks."""
        names = list(masks.names) if self.data_parallel else []
        if names:
            local = torch.stack([_mask_checksum(masks.mask(n)) for n in names])
            self._check_equal(local, names, MASKS_DIVERGED, when)

    def check_weights(self, module: nn.Module, *, when: str) -> None:
        """Raise :class:`MaskDivergenceError` on every rank unless all hold the same weights."""
        named = dict(module.named_parameters()) if self.data_parallel else {}
        if named:
            local = torch.stack([p.detach().double().sum() for p in named.values()])
            self._check_equal(local, list(named), WEIGHTS_DIVERGED, when)

    def check_gradients(self, module: nn.Module) -> None:
        """Raise ``ValueError`` if a trainable parameter of ``module`` has no gradient after
        a backward pass: ``DistributedDataParallel`` all-reduces only parameters that get
        one (checked in a data-parallel fit only; one process trains without them)."""
        missing = [name for name, p in module.named_parameters()
                   if p.requires_grad and p.grad is None] if self.data_parallel else []
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ValueError(NO_GRADIENT.format(names=", ".join(map(repr, missing[:5])) + more))

    def _check_equal(self, local: torch.Tensor, names: list[str], message: str,
                     when: str) -> None:
        """Raise ``message`` unless every rank's ``local`` (a row per name) is rank 0's."""
        # compared bit for bit: identical NaNs (a diverged run) are not a divergence
        gathered = self.all_gather(local).view(torch.int64)
        differs = (gathered != gathered[0]).reshape(self.world_size, len(names), -1).any(dim=2)
        if bool(differs.any()):
            ranks = differs.any(dim=1).nonzero().flatten().tolist()
            found = [names[i] for i in differs.any(dim=0).nonzero().flatten().tolist()]
            raise MaskDivergenceError(message.format(when=when, ranks=ranks, layers=found,
                                                     names=found[:5]))

    def prepare(self, parts: Any) -> None:
        """Turn one process's :class:`TrainingParts` into this rank's."""

    def seed_own_stream(self, seed: int) -> None:
        """Give this rank a stream of torch's global generators of its own.

        Called once everything the ranks share is built, so that dropout or a Dataset's
        random transforms draw independently on every rank. Rank 0 (so one process) keeps
        its stream; rank ``r > 0`` seeds torch's CPU generator, and the CUDA generator of
        its device, from ``numpy.random.SeedSequence(seed, spawn_key=(r,))``.
        """
        if self.rank == 0:
            return
        own = int(np.random.SeedSequence(seed, spawn_key=(self.rank,)).generate_state(
            1, np.uint64)[0])
        torch.default_generator.manual_seed(own)
        if self.device.type == "cuda":
            torch.cuda.default_generators[self.device.index or 0].manual_seed(own)

    # -- built on the collectives --------------------------------------------------------
    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        return bool(self.all_reduce(torch.tensor([float(bool(flag))]), "max").item())

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        return float(self.all_reduce(torch.tensor([float(value)], dtype=torch.float64),
                                     "max").item())

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run by rank 0 only; its result, or its exception, on every rank."""
        result: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                result = (True, fn())
            except Exception as exc:  # re-raised on every rank below
                result = (False, exc)
        ok, value = self.broadcast_object(result)
        if not ok:
            raise value
        return value

    def sum_over_ranks(self, *values: torch.Tensor | float) -> list[torch.Tensor]:
        """``values`` (numbers or tensors) summed over the ranks, as float64 CPU tensors."""
        parts = [torch.as_tensor(v, dtype=torch.float64).detach().reshape(-1).cpu()
                 for v in values]
        return list(self.all_reduce(torch.cat(parts)).split([len(p) for p in parts]))

    def end_train_epoch(
        self, module: nn.Module, sparsity: Any, loss_sum: torch.Tensor, seen: int, *,
        epoch: int,
    ) -> tuple[torch.Tensor, int]:
        """Synchronise buffers, check masks and weights, and sum the epoch's training loss.

        Rank 0's buffers (BatchNorm statistics) go to every rank: the last forward of an
        epoch updated them from each rank's own slice.

        Returns
        -------
        loss_sum, seen
            Summed over the ranks (identical everywhere).
        """
        for buf in module.buffers():
            self.broadcast_(buf.data)
        when = f"at the end of epoch {epoch}"
        if sparsity is not None:
            self.check_masks(sparsity.masks, when=when)
        self.check_weights(module, when=when)
        loss_sum, seen = self.sum_over_ranks(loss_sum, seen)
        return loss_sum, round(float(seen))


@dataclass(kw_only=True)
class DistributedContext(LocalContext):
    """This process's place in a data-parallel fit and the collectives it takes part in.

    It differs from :class:`LocalContext` only in its collectives, :meth:`check_same` and
    :meth:`prepare`. ``rank``, ``world_size`` and ``local_rank`` (from ``LOCAL_RANK``) are
    the process group's, ``device`` is where this rank trains (on CUDA, the device the user
    named, else ``cuda:LOCAL_RANK``), ``backend`` the group's (``"nccl"`` or ``"gloo"``
    where ``fit`` initialised it) and ``timeout`` ``distributed_timeout`` in seconds, for
    error messages.
    """

    backend: str
    timeout: float
    data_parallel: ClassVar[bool] = True

    # -- collectives on tensors ------------------------------------------------------
    def _comm_device(self) -> torch.device:
        # NCCL communicates CUDA tensors; gloo CPU tensors (and CUDA ones, but slower)
        return self.device if self.device.type == "cuda" and "nccl" in self.backend \
            else torch.device("cpu")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduced copy of ``tensor`` (``op`` ``"sum"`` or ``"max"``), on its own device."""
        buf = tensor.detach().to(self._comm_device()).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return buf.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        buf = tensor.detach().to(self._comm_device()).contiguous()
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        return torch.stack([t.cpu() for t in out])

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        buf = tensor.to(self._comm_device())
        dist.broadcast(buf, src=0)
        if buf is not tensor:
            tensor.copy_(buf)
        return tensor

    def broadcast_object(self, value: Any) -> Any:
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def broadcast_decision(
        self, decisions: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Rank 0's decision, packed in one ``uint8`` tensor (bit 0: active, bit 1: regrown)."""
        if not decisions:
            return decisions
        codes, shapes = [], []
        for new_mask, grown in decisions.values():
            code = new_mask.reshape(-1).to(torch.uint8)
            code[grown] |= 2
            codes.append(code)
            shapes.append(new_mask.shape)
        flat = self.broadcast_(torch.cat(codes))
        out, start = {}, 0
        for name, shape in zip(decisions, shapes, strict=True):
            n = int(np.prod(shape)) if len(shape) else 1
            code = flat[start: start + n]
            start += n
            out[name] = ((code & 1).bool().view(shape), (code & 2).nonzero().squeeze(1))
        return out

    # -- checks ----------------------------------------------------------------------
    def check_same(self, what: str, value: Any) -> None:
        digests: list[Any] = [None] * self.world_size
        dist.all_gather_object(digests, _digest(value() if callable(value) else value))
        for rank, theirs in enumerate(digests):
            if theirs != digests[0]:
                raise DistributedError(DIFFERENT_RUN.format(
                    rank=rank, what=what, ours=theirs, theirs=digests[0]))

    # -- setting a run up ------------------------------------------------------------
    def prepare(self, parts: Any) -> None:
        """Turn one process's :class:`TrainingParts` into this rank's.

        Checks the data and ``batch_size`` (:func:`check_world`), applies rank 0's masks,
        wraps the module in ``DistributedDataParallel`` (which broadcasts rank 0's weights
        and buffers) as ``parts.forward_module`` (``parts.module`` stays the plain one),
        sets the per-rank batch size and routes topology decisions and mask checks here.
        """
        from torch.nn.parallel import DistributedDataParallel

        check_world(parts.train.sampler.n_samples, parts.batch_size, self.world_size)
        sparsity = parts.sparsity
        if sparsity is not None:
            masks = sparsity.masks
            for name in masks.names:
                mask = masks.mask(name).to(torch.uint8)
                masks.set_mask(name, self.broadcast_(mask).bool())
            masks.apply_()
            sparsity.sync = self
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # masks zero weights without cutting the graph: every weight gets its dense
        # gradient, all-reduced, which RigL reads
        parts.forward_module = DistributedDataParallel(
            parts.module, device_ids=device_ids, find_unused_parameters=False)
        parts.batch_size = parts.batch_size // self.world_size


def GlobalGroupDRO(objective: Any, all_reduce: Callable[[torch.Tensor], torch.Tensor],
                   world_size: int) -> Any:
    """Deprecated: ``objective`` made to reduce its group sums with ``all_reduce``.

    :class:`~rest_fair.objectives.GroupDROObjective` takes ``all_reduce`` and
    ``world_size`` itself; this sets them on ``objective`` and returns it.
    """
    warnings.warn(GLOBAL_GROUPDRO_DEPRECATED, FutureWarning, stacklevel=2)
    objective.all_reduce, objective.world_size = all_reduce, int(world_size)
    return objective
