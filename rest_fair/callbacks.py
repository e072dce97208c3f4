"""Callbacks: hooks into the training loop of :class:`~rest_fair.RESTClassifier`.

A callback subclasses :class:`Callback` and overrides any of its hooks (or sets one on an
instance: ``cb.on_batch_end = fn`` is called as ``fn(net, **kwargs)``). Every hook receives
the estimator being fitted (``net``) and keyword arguments, so a callback sees the live
training: ``net.module_``, ``net.optimizer_``, ``net.masks_`` (updated at every topology
change), ``net.history_`` (one record per finished epoch), ``net.n_train_steps_`` and
``net.n_topology_updates_`` (so ``net.efficiency_report()`` reports the run so far), and
``run``, the live :class:`~rest_fair.training.TrainingRun` (``run.parts``, ``run.state``,
``run.save_checkpoint``; not given to ``on_fit_begin``, which comes before the run exists).
Hooks should accept ``**kwargs`` so that later versions can pass more.

``on_epoch_end`` may add keys to the epoch's record (they appear in ``history_``) and return
``True`` to stop training. Callbacks run in the order given, except that those with
``runs_last = True`` run after all others, and :class:`Checkpoint` callbacks after those; at
the end of an epoch they see the others' stop decision in ``run.state.stopped``. A callback
with ``state_dict()`` / ``load_state_dict()`` methods has its state saved in training
checkpoints (:class:`Checkpoint`) and restored on resume.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from numbers import Real
from typing import Any, ClassVar

import numpy as np

from ._validation import NON_NEGATIVE_INT, POSITIVE_INT, Interval

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "check_callbacks", "run_order"]

_NOT_A_LIST = "callbacks must be a list of Callback instances or None; got {type}."
_NOT_A_CALLBACK = (
    "callbacks[{index}] is a {type}, not a rest_fair.callbacks.Callback; subclass "
    "Callback and override its hooks."
)
_A_CLASS = "callbacks[{index}] is the class {name}; pass an instance: {name}(...)."
_TWICE = (
    "callbacks[{index}] is the same {name} instance as callbacks[{first}]: it would be called "
    "twice per hook (an EarlyStopping would count each epoch twice); give it once, or pass "
    "two separate instances."
)
_THRESHOLD = Interval(Real, 0, float("inf"))


class Callback:
    """Base class of training callbacks; every hook does nothing by default.

    A subclass that sets ``runs_last = True`` runs after every callback that does not, and
    before every :class:`Checkpoint`.
    """

    runs_last: ClassVar[bool] = False

    def __repr__(self) -> str:
        """``Name(argument=value, ...)``: the constructor's arguments kept as attributes
        of their own names whose values differ from the defaults (scikit-learn's form)."""
        shown = []
        for param in inspect.signature(type(self).__init__).parameters.values():
            if param.name == "self" or not hasattr(self, param.name):
                continue
            value = getattr(self, param.name)
            if param.default is param.empty or not _is_default(value, param.default):
                shown.append(f"{param.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def on_fit_begin(self, net: Any, *, check_checkpoint: Callable[[Any], None],
                     has_validation: bool = True, **kwargs: Any) -> None:
        """Called once when ``fit`` begins, before anything trains (also JTT's identification
        model): a callback refuses its settings here, so that a refusal wastes no training.

        ``check_checkpoint(dirname)`` raises a
        :class:`~rest_fair.exceptions.CheckpointError` if this run may not write its
        checkpoints to ``dirname`` (a file, or the checkpoint of another unfinished run).
        ``has_validation`` says whether the epoch records will hold validation scores
        (``valid_loss``, ``valid_acc``, ...).
        """

    def on_train_begin(self, net: Any, **kwargs: Any) -> None:
        """Called once before the first epoch (also when a run resumes)."""

    def on_epoch_begin(self, net: Any, *, epoch: int, **kwargs: Any) -> None:
        """Called before each epoch (``epoch`` counts from 1)."""

    def on_batch_end(self, net: Any, *, step: int, loss: float, **kwargs: Any) -> None:
        """Called after each optimizer step with the batch loss.

        ``step`` counts this fit's steps from 1, as in :meth:`on_topology_update` (a resumed
        run's count goes on; a warm start's starts anew, ``net.n_train_steps_`` going on).
        """

    def on_topology_update(self, net: Any, *, step: int, n_regrown: int, **kwargs: Any) -> None:
        """Called after each prune-and-regrow update.

        ``n_regrown`` counts the weights the update made active (not one pruned and regrown
        in the same update). The update, and this call, come before that step's optimizer
        step, or after it with ``update_timing="after_step"``.
        """

    def on_epoch_end(self, net: Any, *, record: dict, **kwargs: Any) -> bool | None:
        """Called after each epoch with its history record; return ``True`` to stop.

        ``False`` or ``None`` go on; another value (e.g. the record) makes ``fit`` raise a
        ``TypeError`` naming the callback.
        """
        return None

    def on_train_end(self, net: Any, **kwargs: Any) -> None:
        """Called once after training, before the best checkpoint is restored."""


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except (TypeError, ValueError):  # an array, or a value without a truth value
        return False


def run_order(callbacks: list[Callback]) -> list[Callback]:
    """``callbacks`` in the order their hooks are called: as given, except that those with
    ``runs_last = True`` come after the others, and :class:`Checkpoint` callbacks after
    those."""
    return sorted(callbacks, key=lambda cb: (bool(cb.runs_last), isinstance(cb, Checkpoint)))


def check_callbacks(callbacks: Any) -> list[Callback]:
    """The ``callbacks`` parameter as a list in :func:`run_order`, or a clear error.

    Raises
    ------
    TypeError
        If ``callbacks`` is not a list (or tuple) of :class:`Callback` instances.
    ValueError
        If one instance is given more than once.
    """
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(_NOT_A_LIST.format(type=type(callbacks).__name__))
    first: dict[int, int] = {}
    for i, cb in enumerate(callbacks):
        if isinstance(cb, type):
            raise TypeError(_A_CLASS.format(index=i, name=cb.__name__))
        if not isinstance(cb, Callback):
            raise TypeError(_NOT_A_CALLBACK.format(index=i, type=type(cb).__name__))
        if id(cb) in first:
            raise ValueError(_TWICE.format(index=i, first=first[id(cb)],
                                           name=type(cb).__name__))
        first[id(cb)] = i
    return run_order(list(callbacks))


class EarlyStopping(Callback):
    """Stop when a monitored history value has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str, default="valid_worst_group_acc"
        Key of the epoch record to watch.
    patience : int, default=10
        Epochs without improvement before stopping (0 stops at the first such epoch,
        as 1 does).
    lower_is_better : bool or None, default=None
        Whether a lower value is an improvement. ``None`` decides by the name: ``True``
        for a key that ends in ``"loss"`` (``train_loss``, ``valid_loss``), ``False``
        otherwise (accuracies).
    threshold : float, default=0.0
        Minimum change that counts as an improvement (finite, >= 0). A NaN value is
        never one (nor the best value).

    A bool value improves where it is ``True`` (``lower_is_better`` and ``threshold`` do
    not apply): ``monitor="best"`` stops after ``patience`` epochs without one that model
    selection keeps, following its key (worst-group accuracy, then accuracy), where
    ``"valid_worst_group_acc"`` sees no gain in accuracy alone. Invalid settings, and a
    ``monitor`` of a validation score (``"valid_..."``) in a fit that holds out no
    validation data, raise ``ValueError`` when ``fit`` begins, before anything trains.
    """

    def __init__(
        self,
        *,
        monitor: str = "valid_worst_group_acc",
        patience: int = 10,
        lower_is_better: bool | None = None,
        threshold: float = 0.0,
    ) -> None:
        self.monitor = monitor
        self.patience = patience
        self.lower_is_better = lower_is_better
        self.threshold = threshold

    def _check_settings(self, has_validation: bool) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"EarlyStopping monitor must name a key of the history record "
                             f"(a str); got {self.monitor!r}.")
        if not NON_NEGATIVE_INT.accepts(self.patience):
            raise ValueError(f"EarlyStopping patience must be an int >= 0 (epochs); got "
                             f"{self.patience!r}.")
        if self.lower_is_better is not None \
                and not isinstance(self.lower_is_better, (bool, np.bool_)):
            raise ValueError(f"EarlyStopping lower_is_better must be True, False or None "
                             f"(decided by the name of monitor); got {self.lower_is_better!r}.")
        if not _THRESHOLD.accepts(self.threshold):
            raise ValueError(f"EarlyStopping threshold must be a finite number >= 0; got "
                             f"{self.threshold!r}.")
        if self.monitor.startswith("valid_") and not has_validation:
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, but this fit holds out no "
                "validation data (validation_fraction=0, or too few samples to hold out "
                "any): monitor 'train_loss', or give validation_fraction or validation_data."
            )

    def on_fit_begin(self, net: Any, *, has_validation: bool = True, **kwargs: Any) -> None:
        self._check_settings(has_validation)

    def on_train_begin(self, net: Any, *, run: Any = None, **kwargs: Any) -> None:
        self._check_settings(run is None or getattr(run.parts, "valid", True) is not None)
        self.best_ = None
        self.wait_ = 0

    def on_epoch_end(self, net: Any, *, record: dict, **kwargs: Any) -> bool:
        value = record.get(self.monitor)
        if value is None:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r}, which is not in the history "
                f"record; available: {sorted(record)} (a key another callback adds is "
                "there only where that callback comes before EarlyStopping in callbacks)."
            )
        lower = (self.monitor.endswith("loss") if self.lower_is_better is None
                 else self.lower_is_better)
        sign = -1.0 if lower else 1.0
        if (bool(value) if isinstance(value, (bool, np.bool_))  # e.g. "best"
                else value == value and (self.best_ is None  # a NaN is never the best
                                         or sign * (value - self.best_) > self.threshold)):
            self.best_ = value
            self.wait_ = 0
            return False
        self.wait_ += 1
        return self.wait_ >= self.patience

    def state_dict(self) -> dict:
        """Best value and epochs waited, saved in training checkpoints."""
        return {"best": self.best_, "wait": self.wait_}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.best_ = state["best"]
        self.wait_ = int(state["wait"])


class Checkpoint(Callback):
    """Write a training checkpoint every ``every`` epochs, to resume a run exactly.

    A checkpoint holds everything needed to continue: weights, masks, optimizer and
    learning-rate scheduler state, GroupDRO weights, the random generators, epoch and step
    counters, the history, the best-so-far weights and the other callbacks' state. Continue
    a run with ``fit(X, y, groups=g, resume_from=dirname)``. Writes are atomic: a crash
    while writing leaves the previous checkpoint intact. The format is described in
    :mod:`rest_fair.persistence.checkpoint`.

    Checkpoint callbacks run after every other callback, wherever listed (among themselves,
    in the order given), so what they write includes the others' decisions (e.g. early
    stopping). To act on the files written at the end of an epoch, subclass ``Checkpoint``
    and act after ``super().on_epoch_end(...)``.

    Parameters
    ----------
    dirname : str, bytes or path-like
        Directory of the checkpoints (created if needed; a leading ``~`` is the home
        folder). Refused when ``fit`` begins, before anything trains: a directory holding
        the checkpoint of another unfinished run (a
        :class:`~rest_fair.exceptions.CheckpointError` names the differences), one this
        process cannot write (``PermissionError``: read-only, or not its own), and one under
        a file (``NotADirectoryError``).
    every : int, default=1
        Epochs between checkpoints; the last epoch of a run is always written.
    keep : int, default=2
        Checkpoint files kept (older ones, and an earlier finished run's, are deleted after a
        successful write).
    """

    runs_last = True

    def __init__(self, dirname: str | os.PathLike, *, every: int = 1, keep: int = 2) -> None:
        self.dirname = dirname
        self.every = every
        self.keep = keep

    def on_fit_begin(self, net: Any, *, check_checkpoint: Callable[[Any], None],
                     **kwargs: Any) -> None:
        if not POSITIVE_INT.accepts(self.every):
            raise ValueError(f"Checkpoint every must be a positive int; got {self.every!r}.")
        if not POSITIVE_INT.accepts(self.keep):
            raise ValueError(f"Checkpoint keep must be a positive int; got {self.keep!r}.")
        if not isinstance(self.dirname, (str, bytes, os.PathLike)) or not os.fspath(self.dirname):
            raise ValueError(f"Checkpoint dirname must name a folder; got {self.dirname!r}.")
        if os.path.isfile(os.path.expanduser(self.dirname)):
            raise ValueError(f"Checkpoint dirname {os.fspath(self.dirname)!r} is a file; it "
                             "must name a folder (made if missing).")
        check_checkpoint(self.dirname)

    def on_epoch_end(self, net: Any, *, record: dict, run: Any = None, **kwargs: Any) -> None:
        if run is None:
            return
        done = run.state.epoch >= run.parts.max_epochs or run.state.stopped
        if run.state.epoch % self.every == 0 or done:
            run.save_checkpoint(self.dirname, keep=self.keep)
