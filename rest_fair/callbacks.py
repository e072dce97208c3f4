"""Callbacks: hooks into the training loop of :class:`~rest_fair.RESTClassifier`.

A callback subclasses :class:`Callback` and overrides any of its hooks. The estimator is
passed to every hook, so a callback can read ``estimator.history_`` (updated each epoch).
``on_epoch_end`` may return ``True`` to stop training early.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callback", "EarlyStopping"]


class Callback:
    """Base class of training callbacks; every hook does nothing by default."""

    def on_train_begin(self, estimator: Any, **kwargs: Any) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, estimator: Any, epoch: int, **kwargs: Any) -> None:
        """Called before each epoch (``epoch`` counts from 1)."""

    def on_batch_end(self, estimator: Any, step: int, loss: float, **kwargs: Any) -> None:
        """Called after each optimizer step (``step`` counts from 1) with the batch loss."""

    def on_epoch_end(self, estimator: Any, record: dict, **kwargs: Any) -> bool | None:
        """Called after each epoch with its history record; return ``True`` to stop."""
        return None

    def on_train_end(self, estimator: Any, **kwargs: Any) -> None:
        """Called once after training, before the best checkpoint is restored."""


class EarlyStopping(Callback):
    """Stop when a monitored history value has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str, default="valid_worst_group_acc"
        Key of the epoch record to watch.
    patience : int, default=10
        Epochs without improvement before stopping.
    lower_is_better : bool, default=False
        ``True`` for losses.
    threshold : float, default=0.0
        Minimum change that counts as an improvement.
    """

    def __init__(
        self,
        *,
        monitor: str = "valid_worst_group_acc",
        patience: int = 10,
        lower_is_better: bool = False,
        threshold: float = 0.0,
    ) -> None:
        self.monitor = monitor
        self.patience = patience
        self.lower_is_better = lower_is_better
        self.threshold = threshold

    def on_train_begin(self, estimator: Any, **kwargs: Any) -> None:
        self.best_ = None
        self.wait_ = 0

    def on_epoch_end(self, estimator: Any, record: dict, **kwargs: Any) -> bool:
        value = record.get(self.monitor)
        if value is None:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r}, which is not in the history "
                f"record; available: {sorted(record)}."
            )
        sign = -1.0 if self.lower_is_better else 1.0
        if self.best_ is None or sign * (value - self.best_) > self.threshold:
            self.best_ = value
            self.wait_ = 0
            return False
        self.wait_ += 1
        return self.wait_ >= self.patience
