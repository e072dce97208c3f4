"""The mutable state of a training run: counters, history and the best checkpoint so far.

Together with the state of the parts (weights, masks, optimizer, scheduler, objective,
precision) and of the random generators, :class:`TrainState` is everything needed to
continue a run exactly where it stopped (see :mod:`rest_fair.persistence.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

__all__ = ["TrainState"]

#: Builds ``(best_module_state, best_masks)`` from copies kept in a packed form.
Unpack = Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]


class _BestCopy:
    """A best-epoch copy of a :class:`TrainState` (a dataclass field): the value set, or
    the one that the packed copies of :meth:`TrainState.keep_best` give, built when either
    copy is first read or set."""

    def __init__(self, empty: Callable[[], Any]) -> None:
        self.empty = empty  # what None stands for

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, state: TrainState | None, owner: type | None = None) -> Any:
        if state is None:
            return None  # the field's default
        state._unpack_best()
        return state.__dict__[self.name]

    def __set__(self, state: TrainState, value: Any) -> None:
        state._unpack_best()  # the other copy of a packed pair stays as it was
        state.__dict__[self.name] = self.empty() if value is None else value


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
        Optimizer steps and topology updates of those earlier fits (the fitted counters
        go on, also when a checkpoint of the warm start is resumed); ``step_offset`` also
        holds the steps a resumed checkpoint took beyond this run's count of its epochs.
    """

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_key: tuple | None = None
    best_epoch: int = 0
    best_module_state: dict[str, torch.Tensor] | None = _BestCopy(lambda: None)  # type: ignore[assignment]
    best_masks: dict[str, torch.Tensor] = _BestCopy(dict)  # type: ignore[assignment]
    stopped: bool = False
    epoch_offset: int = 0
    step_offset: int = 0
    update_offset: int = 0

    def keep_best(self, key: tuple, epoch: int, unpack: Unpack) -> None:
        """Make ``epoch`` (selection key ``key``) the best one, its weights and masks held
        in a packed form until :attr:`best_module_state` or :attr:`best_masks` is read:
        ``unpack()`` builds both (a sparse run's CSR layers are densified only then, not
        at every epoch that becomes the best)."""
        self.best_key, self.best_epoch = key, epoch
        self.__dict__.update(best_module_state=None, best_masks={}, _unpack=unpack)

    def _unpack_best(self) -> None:
        unpack = self.__dict__.pop("_unpack", None)
        if unpack is not None:
            self.__dict__["best_module_state"], self.__dict__["best_masks"] = unpack()

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
