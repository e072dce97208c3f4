"""Schedules of the drop fraction used by prune-and-regrow updates."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DROP_FLOOR", "DROP_SCHEDULES", "DropSchedule"]

#: Decays of the drop fraction over training (``drop_schedule``).
DROP_SCHEDULES = ("cosine", "cosine_floor", "constant")
#: Where ``"cosine_floor"`` ends: the ``eta_min`` of the cosine annealing in the
#: sparselearning code that the REST authors' released code builds on.
DROP_FLOOR = 0.005


@dataclass(frozen=True)
class DropSchedule:
    """Fraction ``f_t`` of active weights replaced at topology update ``t``.

    ``"cosine"`` is RigL's schedule ``f_t = f_0 / 2 * (1 + cos(pi * t / T_end))`` (Evci et al.,
    2020). ``"cosine_floor"`` is the cosine annealing of the REST authors' code, which never
    falls below :data:`DROP_FLOOR`: ``f_t = f_min + (f_0 - f_min) / 2 * (1 + cos(pi * t /
    T_end))`` with ``f_min = min(DROP_FLOOR, f_0)``. ``"constant"`` keeps ``f_0``. No update
    happens after ``end_step``.

    Parameters
    ----------
    initial : float
        ``f_0``, the fraction at step 0.
    end_step : int
        ``T_end``: last step at which the topology may change.
    kind : {"cosine", "cosine_floor", "constant"}, default="cosine"
        Shape of the schedule.
    """

    initial: float
    end_step: int
    kind: str = "cosine"

    def __post_init__(self) -> None:
        if self.kind not in DROP_SCHEDULES:
            raise ValueError(f"drop schedule must be one of {DROP_SCHEDULES}; got {self.kind!r}.")
        if not (0.0 <= self.initial <= 1.0):
            raise ValueError(f"drop_fraction must be in [0, 1]; got {self.initial!r}.")

    def __call__(self, step: int) -> float:
        """Drop fraction at ``step`` (0 after ``end_step``)."""
        if step > self.end_step or self.end_step <= 0:
            return 0.0
        if self.kind == "constant":
            return self.initial
        floor = min(DROP_FLOOR, self.initial) if self.kind == "cosine_floor" else 0.0
        return floor + (self.initial - floor) / 2.0 * (
            1.0 + math.cos(math.pi * step / self.end_step))
