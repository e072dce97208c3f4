"""The training loop: :class:`TrainingRun` runs epochs over the parts ``fit`` built.

Split like skorch's ``NeuralNet``: :meth:`TrainingRun.fit_loop` runs
:meth:`~TrainingRun.run_single_epoch` until ``max_epochs`` or a callback stops it; an
epoch is :meth:`~TrainingRun.train_step` over its batches, then
:meth:`~TrainingRun.validate` and :meth:`~TrainingRun.select` (worst-group model
selection). Every callback hook receives the estimator (``net``) and keyword arguments,
among them (all but ``on_fit_begin``) ``run``, the live :class:`TrainingRun`; while it is
live the estimator carries ``module_``, ``optimizer_``, ``masks_`` and ``history_``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .._data import BatchSource
from .._validation import summable_weights
from ..callbacks import Callback, run_order
from ..exceptions import CheckpointError, TrainingDivergedError
from ..persistence.checkpoint import check_writable, write_checkpoint
from ..persistence.model_file import shape_differences
from ..sparse.engine import CopiedState
from ..sparse.modules import snapshot
from .distributed import shard_range
from .parts import EvalSet, TrainingParts
from .state import TrainState

__all__ = ["LiveMasks", "TrainingRun", "check_checkpoint", "predict_logits"]


def _clear_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Set the gradient of every parameter of ``optimizer`` to ``None``.

    ``optimizer.zero_grad(set_to_none=True)`` without its profiler range and compiler
    guard (measured in a loop of 1 ms steps: 40 us against 5 us).
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


#: Message of :class:`~rest_fair.exceptions.TrainingDivergedError` raised by the loop.
DIVERGED = (
    "Training diverged in epoch {epoch}: the {what} became {value}. Likely causes: a "
    "learning rate too high for this network (lr={lr:g}; try 10x smaller), inputs of "
    "very large magnitude (standardise the features, e.g. with sklearn's StandardScaler), "
    "or inputs holding NaN or infinite values (a torch Dataset's items are not checked "
    "before training). No model was kept."
)
#: Added to :data:`DIVERGED` where the weight decay alone can make the weights grow.
STRONG_DECAY = (
    " Here the weight decay is also strong for this learning rate (weight_decay={decay:g}, "
    "lr * weight_decay = {product:g}): each step's decay term then overshoots the weights "
    "instead of shrinking them; keep lr * weight_decay well below 1."
)
#: A network whose output is not one logit per class (e.g. a module of the user's own
#: with one output for two classes, which cross-entropy reads as a one-class task).
BAD_OUTPUT = (
    "the network's output for a batch of {n} samples is {got}; it must be a tensor of "
    "shape ({n}, {n_classes}), one logit per class of the {n_classes} classes. A module of "
    "your own must end in {n_classes} outputs (a class or callable given as module "
    "receives n_classes= when its signature takes it)."
)
#: Error of a resume whose checkpoint holds a network of other tensors than the run's.
OTHER_NETWORK = (
    "the checkpoint holds another network than this run's ({details}): a module given as a "
    "class or factory is recorded by its name only, so its code may have changed since "
    "the checkpoint was written. Resume with the network that wrote it, or start a new "
    "run in another directory."
)
#: A callback's ``on_epoch_end`` returned something other than a stop decision.
BAD_STOP = (
    "{name}.on_epoch_end returned a value of type {type}; it must return True to stop "
    "training, or False or None to go on (another value, e.g. the record, is no decision)."
)
#: A checkpoint asked for while an epoch's batches are being trained.
MID_EPOCH_CHECKPOINT = (
    "save_checkpoint was called in epoch {epoch} between its first and last batch; a "
    "checkpoint holds the run between two epochs (a resumed run trains an epoch from its "
    "beginning, so a checkpoint from inside one would train part of it twice). Call it "
    "from on_epoch_end or on_epoch_begin."
)
#: Warning of a resume whose checkpoint holds callback states no callback takes.
CALLBACK_STATES_LEFT = (
    "the checkpoint holds the state of callbacks {keys} (class name: its place among the "
    "callbacks of that class), which this fit has no callback for; they are not restored."
)


class LiveMasks(Mapping):
    """Read-only view of a run's current masks: ``net.masks_`` while training.

    A mask is looked up when read: the view is always current, and layers that train in
    CSR form (``sparse_compute``) build their dense mask only when a callback asks for it.

    Parameters
    ----------
    sparsity : DynamicSparsity or None
        The run's sparse engine (``None``: dense training, no masks).
    """

    def __init__(self, sparsity: Any) -> None:
        self._sparsity = sparsity

    def _names(self) -> list[str]:
        return [] if self._sparsity is None else self._sparsity.masks.names

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names():
            raise KeyError(name)
        return self._sparsity.masks.mask(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"LiveMasks({self._names()!r})"


def check_checkpoint(dirname: Any, fingerprint: Callable[[], dict], *, world: Any,
                     neutral: Mapping[str, Any] | None = None) -> None:
    """Refuse now, on every rank, a ``dirname`` that a run may not write its checkpoints to.

    Rank 0 reads the directory; its refusal is raised on every rank of ``world``. ``fit``
    passes this check to the callbacks' ``on_fit_begin`` hook, before anything trains.

    Parameters
    ----------
    dirname : str or path
        Checkpoint directory.
    fingerprint : callable returning a dict
        The run's fingerprint (computed on rank 0 only).
    world : LocalContext
        The run's world (:mod:`~rest_fair.training.distributed`).
    neutral : mapping, optional
        Neutral values of fingerprint entries that older checkpoints lack.

    Raises
    ------
    CheckpointError
        If ``dirname`` is a file or holds the checkpoint of another, unfinished run (see
        :func:`~rest_fair.persistence.checkpoint.check_writable`).
    """
    world.run_on_main(lambda: check_writable(dirname, fingerprint(), neutral=neutral))


@torch.no_grad()
def predict_logits(
    module: nn.Module,
    source: BatchSource,
    *,
    batch_size: int,
    device: torch.device,
    autocast: Any = None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of the samples ``order`` (default: all, in order), as float32 on the CPU.

    The module runs in evaluation mode; each submodule's mode is restored afterwards, also
    when a batch fails (``module.train(mode)`` first, so a module's own ``train`` runs,
    then any flag that still differs). A module already all in evaluation mode is not
    walked. Without ``autocast`` a caller's autocast on ``device`` is turned off.
    """
    if autocast is None:
        autocast = (functools.partial(torch.autocast, device.type, enabled=False)
                    if torch.is_autocast_enabled(device.type) else contextlib.nullcontext)
    was_training = module.training
    modes = [(m, m.training) for m in module.modules()]
    switch = any(training for _, training in modes)
    if switch:
        module.eval()
    if order is None:
        order = torch.arange(source.n_samples)
    out = []
    try:
        for x, _ in source.batches(order, batch_size, device):
            with autocast():
                out.append(module(x).float().cpu())
    finally:
        if switch:
            module.train(was_training)
            for m, training in modes:
                m.training = training
    return torch.cat(out) if out else torch.empty(0)


def _overrides(callback: Any, hook: str) -> bool:
    """Whether ``callback`` has a ``hook`` of its own: from its class, or set on the instance
    (``cb.on_batch_end = fn``), as :meth:`TrainingRun.notify` would call it."""
    method = getattr(callback, hook, None)
    return getattr(method, "__func__", method) is not getattr(Callback, hook)


def _stop_requested(callback: Any, value: Any) -> bool:
    """Whether a callback's ``on_epoch_end`` result ``value`` stops training: a bool, or a
    bool array or tensor of one element; ``None`` goes on; any other value is refused."""
    if value is None:
        return False
    kind = str(getattr(value, "dtype", type(value).__name__))
    if kind not in ("bool", "torch.bool") or math.prod(getattr(value, "shape", ())) != 1:
        raise TypeError(BAD_STOP.format(name=type(callback).__name__,
                                        type=type(value).__name__))
    return bool(value)


class TrainingRun:
    """One training run over :class:`TrainingParts`, resumable from its state.

    Callbacks receive it as ``run``: its :attr:`parts`, its progress (:attr:`state`, with
    the ``history`` and whether the run is ``stopped``), :meth:`save_checkpoint` and
    :meth:`state_dict` / :meth:`load_state_dict`.

    Parameters
    ----------
    parts : TrainingParts
        What to train with.
    generator : torch.Generator
        The run's CPU generator (sampling, masks, random regrowth); saved in checkpoints.
    state : TrainState, optional
        Progress to start from (a warm start); a new run starts at epoch 0.
    fingerprint : dict or callable returning one, optional
        What identifies the run's data and parameters; written into checkpoints and
        compared on resume. A callable is called once, when :attr:`fingerprint` is first
        read (by a checkpoint, or by data-parallel ranks comparing their runs).
    neutral : mapping, optional
        For fingerprint entries added by later releases, by dotted path
        (``"params.<name>"``): the value that computes what the run computed before the
        entry existed; a checkpoint without the entry matches a run holding that value
        (see :func:`~rest_fair.persistence.checkpoint.check_writable`).
    extra : dict, optional
        More state to save in checkpoints (e.g. the JTT error set).
    """

    def __init__(
        self,
        parts: TrainingParts,
        *,
        generator: torch.Generator,
        state: TrainState | None = None,
        fingerprint: dict | Callable[[], dict] | None = None,
        neutral: Mapping[str, Any] | None = None,
        extra: dict | None = None,
    ) -> None:
        self.parts = parts
        self.generator = generator
        self.state = state if state is not None else TrainState()
        self._fingerprint = fingerprint or {}
        self.neutral = dict(neutral or {})
        self.extra = dict(extra or {})
        self.net: Any = None
        # callbacks that run last see the others' effects; a Checkpoint runs after them all
        self.callbacks = run_order(parts.callbacks)
        self._batch_callbacks = [cb for cb in self.callbacks if _overrides(cb, "on_batch_end")]
        self._pending_callback_states: dict | None = None
        self._in_epoch = False  # between an epoch's first and last batch
        self._gradients_checked = False  # the first step's gradients checked for DDP
        train, device = parts.train, parts.device
        self._y = train.y.to(device)
        self._w = None if train.loss_weights is None else train.loss_weights.to(device)
        self._g = train.groups.to(device)
        self._n_classes = train.n_classes

    @property
    def fingerprint(self) -> dict:
        """What identifies the run's data and parameters (computed on first read)."""
        if callable(self._fingerprint):
            self._fingerprint = self._fingerprint()
        return self._fingerprint

    # ------------------------------------------------------------------ callbacks
    def notify(self, hook: str, **kwargs: Any) -> list:
        """Call ``hook(net, run=self, **kwargs)`` on every callback; return their results."""
        return [getattr(cb, hook)(self.net, run=self, **kwargs) for cb in self.callbacks]

    def _attach(self, net: Any) -> None:
        self.net = net
        net.module_ = self.parts.module
        net.optimizer_ = self.parts.optimizer
        net.history_ = self.state.history
        net.masks_ = LiveMasks(self.parts.sparsity)
        self._count(self.state.step)

    def _count(self, step: int) -> None:
        """Keep ``net.n_train_steps_`` and ``net.n_topology_updates_`` at the run's counts
        up to ``step`` (a warm start's and a resumed run's counted on), for callbacks."""
        s, sparsity = self.state, self.parts.sparsity
        self.net.n_train_steps_ = s.step_offset + step
        self.net.n_topology_updates_ = s.update_offset + (
            sparsity.n_updates if sparsity is not None else 0)

    # ------------------------------------------------------------------- training
    def fit_loop(self, net: Any) -> TrainState:
        """Train until ``max_epochs`` epochs are done or a callback stops; keep the best.

        Parameters
        ----------
        net : RESTClassifier
            The estimator; callbacks receive it and see the live training through it.

        Returns
        -------
        TrainState
        """
        self._attach(net)
        try:  # a hook that raises also gets the module back in its dense form
            self.notify("on_train_begin")
            if self._pending_callback_states is not None:
                self._load_callback_states(self._pending_callback_states)
            self.parts.forward_module.train()
            while self.state.epoch < self.parts.max_epochs and not self.state.stopped:
                self.run_single_epoch()
            if self.parts.valid is None:
                self._check_kept_output()
        finally:
            if self.parts.sparsity is not None:
                # sparse-compute layers go back to dense nn.Linear (with their optimizer state)
                self.parts.sparsity.finish(self.parts.optimizer)
        self.notify("on_train_end")
        self.state.load_best(self.parts.module)
        self.parts.module.eval()
        return self.state

    def run_single_epoch(self) -> dict:
        """Train one epoch, validate, select, step the LR schedule and call back."""
        p, s = self.parts, self.state
        epoch = s.epoch_offset + s.epoch + 1
        self.notify("on_epoch_begin", epoch=epoch)
        start = time.perf_counter()
        updates_before = p.sparsity.n_updates if p.sparsity is not None else 0
        order = p.train.sampler.epoch_order()
        loss_sum = torch.zeros((), device=p.device)
        seen = 0
        self._in_epoch = True
        for x, idx in p.train.source.batches(order, p.batch_size, p.device):
            idx = idx.to(p.device, non_blocking=True)
            loss = self.train_step(x, idx)
            n = len(idx)
            loss_sum += loss * n
            seen += n
            if self._batch_callbacks:
                value = float(loss)
                for cb in self._batch_callbacks:
                    cb.on_batch_end(self.net, run=self, step=s.step, loss=value)
        self._in_epoch = False
        loss_sum, seen = p.world.end_train_epoch(p.module, p.sparsity, loss_sum, seen,
                                                 epoch=epoch)
        train_loss = float(loss_sum) / max(seen, 1)
        if not np.isfinite(train_loss):
            self._diverged(epoch, "training loss", train_loss)

        record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss,
                                  "n_train_samples": seen}
        if p.valid is not None:
            record.update(self.validate(epoch))
        record["density"] = p.sparsity.masks.density() if p.sparsity is not None else 1.0
        record["lr"] = p.optimizer.param_groups[0]["lr"]
        record["n_topology_updates"] = (
            p.sparsity.n_updates - updates_before if p.sparsity is not None else 0
        )
        if hasattr(p.objective, "end_epoch"):
            p.objective.end_epoch()
        record["best"] = self.select(record, epoch)
        self._step_scheduler(record)
        record["dur"] = p.world.max(time.perf_counter() - start)  # the slowest rank's
        s.history.append(record)
        s.epoch += 1
        if p.progress is not None:
            p.progress.update(1)
            p.progress.set_postfix(
                {k: f"{record[k]:.3f}" for k in ("train_loss", "valid_acc",
                                                 "valid_worst_group_acc") if k in record}
            )
        for last in (False, True):  # the last ones see the others' stop decision
            for cb in self.callbacks:
                if bool(cb.runs_last) == last and _stop_requested(
                        cb, cb.on_epoch_end(self.net, run=self, record=record)):
                    s.stopped = True
            s.stopped = p.world.any(s.stopped)  # one rank's stop stops all
        return record

    def train_step(self, x: Any, idx: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch; returns the detached batch loss.

        Order: the sparse engine prepares the step, forward and loss (under autocast),
        backward, the topology update when due (from this batch's dense gradient, so the
        optimizer step trains the regrown weights), optimizer step, masks re-applied. With
        ``update_timing="after_step"`` the update comes last, from the same gradient.
        """
        p, s = self.parts, self.state
        step = s.step + 1
        sparsity = p.sparsity
        if sparsity is not None:
            sparsity.prepare_step(step)
        with p.precision.autocast():
            logits = p.forward_module(x)
            self._check_output(logits, len(idx))
            # index_select: half the time of indexing with a tensor, the same values
            loss = p.objective(logits, self._y.index_select(0, idx),
                               None if self._w is None else self._w.index_select(0, idx),
                               self._g.index_select(0, idx))
        _clear_gradients(p.optimizer)
        p.precision.backward(loss)
        if not self._gradients_checked:
            p.world.check_gradients(p.module)
            self._gradients_checked = True
        update = sparsity is not None and sparsity.is_update_step(step)
        if update:
            p.precision.unscale_(p.optimizer)
            update = self._gradients_finite()
        if update and not sparsity.after_optimizer_step:
            self._update_topology(step)
        p.precision.step(p.optimizer)
        if sparsity is not None:
            sparsity.after_step()
        if update and sparsity.after_optimizer_step:
            self._update_topology(step)
        s.step = step
        self._count(step)
        return loss.detach()

    def _check_output(self, logits: Any, n: int) -> None:
        """Refuse an output other than ``n`` rows of one logit per class (:data:`BAD_OUTPUT`)."""
        if self._n_classes is None or (torch.is_tensor(logits)
                                       and logits.shape == (n, self._n_classes)):
            return
        got = (f"of shape {tuple(logits.shape)}" if torch.is_tensor(logits)
               else f"a {type(logits).__name__}, not a tensor")
        raise ValueError(BAD_OUTPUT.format(n=n, got=got, n_classes=self._n_classes))

    def _update_topology(self, step: int) -> None:
        regrown = self.parts.sparsity.before_step(step, self.parts.optimizer)
        self._count(step)
        self.notify("on_topology_update", step=step, n_regrown=regrown)

    def _gradients_finite(self) -> bool:
        # the scaler skips a float16 step where any gradient it unscaled overflowed (a
        # dense bias's too); such a step's gradients must not choose the topology either
        if self.parts.precision.scaler is None:
            return True
        grads = [p.grad for group in self.parts.optimizer.param_groups
                 for p in group["params"] if p.grad is not None]
        # a sparse gradient (nn.Embedding(sparse=True)) is finite where its values are
        return all(bool(torch.isfinite(g.coalesce().values() if g.is_sparse else g).all())
                   for g in grads)

    # ---------------------------------------------------------- validation, selection
    def validate(self, epoch: int) -> dict:
        """Validation loss, accuracy and worst-group accuracy of the current weights.

        With the validation set's ``weights``, each sample counts as much as its weight in
        all three (a group whose samples all weigh 0 is left out of the worst group; weights
        whose sum overflows float64 are divided by their largest first). In a
        data-parallel fit each rank scores its part and the sums are summed over the ranks.
        """
        valid: EvalSet = self.parts.valid
        world = self.parts.world
        y = torch.as_tensor(valid.y)
        groups = (torch.zeros(len(y), dtype=torch.long) if valid.groups is None
                  else torch.as_tensor(valid.groups, dtype=torch.long))
        n_groups = int(groups.max()) + 1 if len(groups) else 1
        order = shard_range(len(y), world.rank, world.world_size)
        y, groups = y[order], groups[order]
        weights = (None if valid.weights is None else torch.as_tensor(
            summable_weights(np.asarray(valid.weights, dtype=np.float64)))[order])
        logits = predict_logits(self.parts.module, valid.source,
                                batch_size=self.parts.eval_batch_size,
                                device=self.parts.device,
                                autocast=self.parts.precision.autocast, order=order)
        if world.any(not bool(torch.isfinite(logits).all())):
            self._diverged(epoch, "network output on the validation data", "non-finite")
        if len(y) and weights is None:
            loss_sum = float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct = (logits.argmax(1) == y).double()
        elif len(y):
            losses = nn.functional.cross_entropy(logits, y, reduction="none").double()
            loss_sum = float((losses * weights).sum())
            correct = (logits.argmax(1) == y).double() * weights
        else:  # a rank with no validation sample
            loss_sum, correct = 0.0, torch.zeros(0, dtype=torch.float64)
        hits = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, correct)
        totals = torch.bincount(groups, weights=weights, minlength=n_groups).double()
        loss_sum, hits, totals = world.sum_over_ranks(loss_sum, hits, totals)
        n = float(totals.sum())
        present = totals > 0
        acc = float(hits.sum()) / n
        wga = float((hits[present] / totals[present]).min()) if present.any() else acc
        return {"valid_loss": float(loss_sum) / n, "valid_acc": acc, "valid_worst_group_acc": wga}

    def _check_kept_output(self) -> None:
        """Without validation data the last epoch is kept, unseen since its last step: raise
        :class:`~rest_fair.exceptions.TrainingDivergedError` on every rank if its float32
        output on one evaluation batch of training samples is not finite."""
        p, s = self.parts, self.state
        sampler = p.train.sampler
        order = torch.arange(min(sampler.n_samples, p.eval_batch_size))
        order = (order if sampler.rows is None else sampler.rows[order])[
            shard_range(len(order), p.world.rank, p.world.world_size)]
        logits = predict_logits(p.module, p.train.source, batch_size=p.eval_batch_size,
                                device=p.device, order=order)
        if p.world.any(not bool(torch.isfinite(logits).all())):
            self._diverged(s.epoch_offset + s.epoch, "network output on the training data",
                           "non-finite")

    def select(self, record: dict, epoch: int) -> bool:
        """Keep the weights of this epoch if it is the best so far; return whether it is.

        The key is ``(worst-group accuracy, accuracy)`` on validation data (ties keep the
        earlier epoch), or the epoch number without validation data (the last is kept).
        """
        s = self.state
        key = ((record["valid_worst_group_acc"], record["valid_acc"])
               if "valid_worst_group_acc" in record else (epoch,))
        if s.best_key is not None and not key > s.best_key:
            return False
        module, sparsity = self.parts.module, self.parts.sparsity
        s.keep_best(key, epoch, sparsity.best_copy(module) if sparsity is not None
                    else CopiedState(module, {}))
        return True

    def _step_scheduler(self, record: dict) -> None:
        scheduler = self.parts.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(record.get("valid_loss", record["train_loss"]))
        elif scheduler is not None:
            scheduler.step()

    def _diverged(self, epoch: int, what: str, value: Any) -> None:
        group = self.parts.optimizer.param_groups[0]
        lr, decay = float(group["lr"]), float(group.get("weight_decay", 0.0))
        message = DIVERGED.format(epoch=epoch, what=what, value=value, lr=lr)
        if lr * decay >= 1:
            message += STRONG_DECAY.format(decay=decay, product=lr * decay)
        raise TrainingDivergedError(message)

    # ----------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (plain containers and tensors).

        Every rank's state of torch's global generators (its own stream, see
        :meth:`~rest_fair.training.distributed.LocalContext.seed_own_stream`) is gathered
        into ``"torch_rngs"`` (and ``"cuda_rngs"``), a row per rank; ``"torch_rng"`` and
        ``"cuda_rng"`` are rank 0's. In a data-parallel fit every rank must call it.
        """
        p = self.parts
        rngs = self._rng_states()
        state = {
            "train_state": self.state.state_dict(),
            "module": p.module.state_dict(),
            "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
            "objective": p.objective.state_dict() if hasattr(p.objective, "state_dict")
            else None,
            "sparsity": p.sparsity.state_dict() if p.sparsity is not None else None,
            # which layers trained in CSR form: a resumed "auto" run converts the same ones
            "sparse_compute_layers": list(getattr(p.sparsity, "converted", ())),
            "precision": p.precision.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": rngs["torch_rngs"][0],
            "callbacks": self._callback_states(),
            "extra": self.extra,
            **rngs,
        }
        if "cuda_rngs" in rngs:
            state["cuda_rng"] = rngs["cuda_rngs"][0]
        return state

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Every rank's state of torch's global generators, a row per rank (a collective)."""
        p = self.parts
        rngs = {"torch_rngs": p.world.all_gather(torch.get_rng_state())}
        if p.device.type == "cuda":
            rngs["cuda_rngs"] = p.world.all_gather(torch.cuda.get_rng_state(p.device))
        return rngs

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (callback states are restored when the loop starts).

        Each rank takes its own row of the saved generator states; a rank without one (the
        saving run had fewer ranks, or kept rank 0's only) keeps the fresh stream derived
        from the seed and its rank.

        The step counter resumes at the next epoch's start in this run's steps per epoch
        (another number of ranks may keep or drop a trailing partial batch), so updates and
        drop schedule follow this run's epochs; ``step_offset`` keeps the steps taken.
        """
        p = self.parts
        details = shape_differences({k: v.shape for k, v in state["module"].items()},
                                    {k: v.shape for k, v in p.module.state_dict().items()},
                                    ("in the checkpoint", "here"))
        if details:
            raise CheckpointError(OTHER_NETWORK.format(details=details))
        # masks first: a sparse-compute layer reads its weights at its current pattern
        if p.sparsity is not None:
            p.sparsity.load_state_dict(state["sparsity"])
        p.module.load_state_dict(state["module"])
        p.optimizer.load_state_dict(state["optimizer"])
        if p.scheduler is not None and state["scheduler"] is not None:
            p.scheduler.load_state_dict(state["scheduler"])
        if state["objective"] is not None:
            p.objective.load_state_dict(state["objective"])
        p.precision.load_state_dict(state["precision"])
        self.generator.set_state(state["generator"])
        rank = p.world.rank
        own = _own_rng(state, "torch_rng", rank)
        if own is not None:
            torch.set_rng_state(own)
        own = _own_rng(state, "cuda_rng", rank)
        if own is not None and p.device.type == "cuda":
            torch.cuda.set_rng_state(own, p.device)
        self.state = TrainState.from_state_dict(state["train_state"])
        steps = self.state.epoch * p.train.sampler.steps_per_epoch
        self.state.step_offset += self.state.step - steps
        self.state.step = steps
        # a checkpoint written at the best epoch holds the best weights and masks once, in
        # storage shared with the current ones, which become live: the best copy gets its own
        loaded = [t for key, value in state.items() if key != "train_state"
                  for t in _tensors(value)]
        if self.state.best_module_state is not None:
            self.state.best_module_state = snapshot(self.state.best_module_state, loaded)
        self.state.best_masks = snapshot(self.state.best_masks, loaded)
        self.extra = dict(state.get("extra") or {})
        self._pending_callback_states = state.get("callbacks") or {}

    def save_checkpoint(self, dirname: Any, *, keep: int = 2) -> None:
        """Write the run's state to ``dirname`` (see :mod:`rest_fair.persistence.checkpoint`).

        In a data-parallel fit every rank must call it, as the ``Checkpoint`` callback
        does (:meth:`state_dict` gathers the ranks' random states); rank 0 writes. At the
        best epoch the best weights and masks are written as the current ones where bitwise
        equal (:func:`torch.save` writes a storage once); :meth:`load_state_dict` separates
        them again.

        Raises
        ------
        RuntimeError
            When called between an epoch's first and last batch (from ``on_batch_end`` or
            ``on_topology_update``): a checkpoint holds the run between two epochs.
        """
        if self._in_epoch:
            s = self.state
            raise RuntimeError(MID_EPOCH_CHECKPOINT.format(epoch=s.epoch_offset + s.epoch + 1))
        if not self.parts.world.is_main:
            self._rng_states()  # rank 0's state_dict gathers them
            return
        s = self.state
        state = self.state_dict()
        if s.best_epoch == s.epoch_offset + s.epoch:
            state = _best_as_current(state)
        write_checkpoint(dirname, state, epoch=s.epoch_offset + s.epoch,
                         fingerprint=self.fingerprint, neutral=self.neutral, keep=keep,
                         finished=s.stopped or s.epoch >= self.parts.max_epochs)

    def check_checkpoint(self, dirname: Any) -> None:
        """Refuse now, on every rank, a ``dirname`` that :meth:`save_checkpoint` would refuse
        (:func:`check_checkpoint` of this run's fingerprint)."""
        check_checkpoint(dirname, lambda: self.fingerprint, world=self.parts.world,
                         neutral=self.neutral)

    def _callback_keys(self) -> list[str]:
        """``"<class name>:<k>"`` for the k-th callback of its class: a callback added or
        removed on a restart does not shift the keys of the others."""
        return _numbered(type(cb).__name__ for cb in self.callbacks)

    def _callback_states(self) -> dict:
        keys = self._callback_keys()
        return {key: cb.state_dict() for key, cb in zip(keys, self.callbacks, strict=True)
                if hasattr(cb, "state_dict")}

    def _load_callback_states(self, states: dict) -> None:
        states = _keyed_by_class(states)
        keys = self._callback_keys()
        for key, cb in zip(keys, self.callbacks, strict=True):
            if key in states and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(states[key])
        left = sorted(set(states) - set(keys))
        if left and self.parts.world.is_main:  # every rank resumes the same states
            warnings.warn(CALLBACK_STATES_LEFT.format(keys=left), UserWarning, stacklevel=2)


def _own_rng(state: Mapping[str, Any], key: str, rank: int) -> torch.Tensor | None:
    """``rank``'s saved state of a global generator: its row of ``key + "s"``, or in a
    checkpoint written before those rows, ``key`` for rank 0; None where there is none."""
    rows = state.get(key + "s")
    if rows is None:
        return state.get(key) if rank == 0 else None
    return rows[rank].clone() if rank < len(rows) else None


def _best_as_current(state: dict[str, Any]) -> dict[str, Any]:
    """:meth:`TrainingRun.state_dict` whose best weights and masks are the current tensors
    where they are bitwise equal to them (for writing only: the result shares storage with
    the live weights)."""
    train = dict(state["train_state"])
    train["best_module_state"] = _reused(train["best_module_state"], state["module"])
    if state["sparsity"] is not None:
        train["best_masks"] = _reused(train["best_masks"], state["sparsity"]["masks"])
    return {**state, "train_state": train}


def _reused(best: Mapping[str, torch.Tensor] | None,
            current: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """``best`` with each tensor bitwise equal to ``current``'s of its key replaced by it."""
    if best is None:
        return None
    return {key: current[key] if key in current and _same_bits(tensor, current[key])
            else tensor for key, tensor in best.items()}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two dense tensors hold the same bits (``-0.0`` is not ``0.0``, a NaN is
    itself) in the same dtype, shape and device."""
    if (a.dtype != b.dtype or a.shape != b.shape or a.device != b.device
            or a.layout != torch.strided or b.layout != torch.strided
            or a.is_quantized or b.is_quantized):
        return False
    if a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() \
            and a.storage_offset() == b.storage_offset() and a.stride() == b.stride():
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (Mapping, list, tuple)):
        for item in value.values() if isinstance(value, Mapping) else value:
            yield from _tensors(item)


def _keyed_by_class(states: dict) -> dict:
    """Callback states of a checkpoint keyed ``"<class name>:<k>"``; checkpoints written
    before, keyed by position (``"<i>:<class name>"``), are read the same way."""
    if not all(k.partition(":")[0].isdigit() for k in states):
        return states
    old = sorted(states, key=lambda k: int(k.partition(":")[0]))
    new = _numbered(key.partition(":")[2] for key in old)
    return {key: states[before] for key, before in zip(new, old, strict=True)}


def _numbered(names: Iterable[str]) -> list[str]:
    """``"<name>:<k>"`` for the k-th occurrence of each name, in order."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        keys.append(f"{name}:{seen.get(name, 0)}")
        seen[name] = seen.get(name, 0) + 1
    return keys
