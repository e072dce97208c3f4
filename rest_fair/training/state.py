"""The mutable state of a training run: counters, history and the best checkpoint so far.

With the state of the parts and of the random generators, :class:`TrainState` continues a
run exactly where it stopped (see :mod:`rest_fair.persistence.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["BestCopy", "TrainState"]


class BestCopy(Protocol):
    """A copy of a run's module state and masks, kept in whatever form is cheapest until
    they are needed (:meth:`rest_fair.sparse.DynamicSparsity.best_copy` makes them)."""

    def module_state(self) -> dict[str, torch.Tensor]:
        """The module's ``state_dict()`` as it was copied."""

    def masks(self) -> dict[str, torch.Tensor]:
        """The masks (CPU, boolean) as they were copied."""

    def load_into(self, module: nn.Module) -> None:
        """``module.load_state_dict(self.module_state())``, without building it where the
        copy can be written into the module's tensors in place."""


class _Best:
    """A best-epoch field of :class:`TrainState`: the value set, or the one that the
    :class:`BestCopy` given to :meth:`TrainState.keep_best` builds when first read."""

    def __init__(self, empty: Callable[[], Any], build: str) -> None:
        self.empty = empty  # what None stands for
        self.build = build  # the BestCopy method that builds it

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, state: TrainState | None, owner: type | None = None) -> Any:
        if state is None:
            return None  # the field's default
        pending = state.__dict__.get("_pending")
        if pending is not None and self.name in pending["fields"]:
            state.__dict__[self.name] = getattr(pending["copy"], self.build)()
            _built(state, self.name)
        return state.__dict__[self.name]

    def __set__(self, state: TrainState, value: Any) -> None:
        _built(state, self.name)
        state.__dict__[self.name] = self.empty() if value is None else value


def _built(state: TrainState, name: str) -> None:
    """Field ``name`` of ``state`` no longer comes from its pending copy (dropped once no
    field does)."""
    pending = state.__dict__.get("_pending")
    if pending is not None:
        pending["fields"].discard(name)
        if not pending["fields"]:
            del state.__dict__["_pending"]


@dataclass
class TrainState:
    """Progress of one run.

    Attributes
    ----------
    epoch : int
        Epochs completed.
    step : int
        Optimizer steps completed.
    history : list of dict
        One record per completed epoch.
    best_key : tuple or None
        Selection key of the best epoch: ``(worst-group acc, acc)`` on validation data,
        else ``(epoch,)``.
    best_epoch : int
        The epoch whose weights are kept (0 before the first epoch).
    best_module_state : dict or None
        Copy of the module's ``state_dict()`` at ``best_epoch``.
    best_masks : dict
        Masks at ``best_epoch`` (``None`` given stands for none).
    stopped : bool
        A callback asked to stop.
    epoch_offset : int
        Epochs of earlier fits continued by a warm start (history numbering goes on).
    step_offset, update_offset : int
        Optimizer steps and topology updates of those earlier fits (the fitted counters go
        on); ``step_offset`` also holds the steps a resumed checkpoint took beyond this
        run's count of its epochs.
    """

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_key: tuple | None = None
    best_epoch: int = 0
    best_module_state: dict[str, torch.Tensor] | None = _Best(  # type: ignore[assignment]
        lambda: None, "module_state")
    best_masks: dict[str, torch.Tensor] = _Best(dict, "masks")  # type: ignore[assignment]
    stopped: bool = False
    epoch_offset: int = 0
    step_offset: int = 0
    update_offset: int = 0

    def keep_best(self, key: tuple, epoch: int, copy: BestCopy) -> None:
        """Make ``epoch`` (selection key ``key``) the best one, its weights and masks held
        by ``copy`` until :attr:`best_module_state` or :attr:`best_masks` is first read (CSR
        layers are densified only then) or :meth:`load_best` writes them into the module."""
        self.best_key, self.best_epoch = key, epoch
        self.__dict__.update(best_module_state=None, best_masks={}, _pending={
            "copy": copy, "fields": {"best_module_state", "best_masks"}})

    def load_best(self, module: nn.Module) -> None:
        """Load the best epoch's weights into ``module`` (nothing before a best epoch);
        weights still held by :meth:`keep_best`'s copy are written in place."""
        pending = self.__dict__.get("_pending")
        if pending is not None and "best_module_state" in pending["fields"]:
            pending["copy"].load_into(module)
        elif self.best_module_state is not None:
            module.load_state_dict(self.best_module_state)

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors (loadable with ``torch.load(weights_only=True)``)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state.update(history=[dict(r) for r in self.history],
                     best_key=list(self.best_key) if self.best_key is not None else None)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainState:
        """Inverse of :meth:`state_dict` (a state without an offset starts it at 0)."""
        key = state["best_key"]
        return cls(**{**state, "history": [dict(r) for r in state["history"]],
                      "best_key": tuple(key) if key is not None else None,
                      "best_masks": dict(state["best_masks"])})
