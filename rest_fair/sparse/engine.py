"""Dynamic sparse training: keep masks applied and update the topology on schedule."""

from __future__ import annotations

import torch

from .masks import MaskSet
from .rigl import REGROW_MODES, update_topology
from .schedules import DropSchedule

__all__ = ["DynamicSparsity"]


class DynamicSparsity:
    """Drives a :class:`MaskSet` through training.

    Call :meth:`after_step` after every ``optimizer.step()`` and before the gradients are
    cleared: it re-applies the masks (so inactive weights stay exactly zero) and, every
    ``update_interval`` steps up to the schedule's end, runs the prune-and-regrow update of
    :mod:`rest_fair.sparse.rigl`.

    All randomness comes from ``generator``; with the same seed and the same (all-reduced)
    gradients every data-parallel rank therefore keeps identical masks.

    Parameters
    ----------
    masks : MaskSet
        The masks, already applied to the weights.
    schedule : DropSchedule
        Drop fraction per step; its ``end_step`` freezes the topology.
    update_interval : int
        Steps between topology updates.
    regrow : {"gradient", "random"}
        RigL or SET regrowth.
    generator : torch.Generator, optional
        CPU generator for random regrowth.
    """

    def __init__(
        self,
        masks: MaskSet,
        *,
        schedule: DropSchedule,
        update_interval: int,
        regrow: str = "gradient",
        generator: torch.Generator | None = None,
    ) -> None:
        if regrow not in REGROW_MODES:
            raise ValueError(f"regrow must be one of {REGROW_MODES}; got {regrow!r}.")
        if update_interval < 1:
            raise ValueError(f"update_interval must be >= 1; got {update_interval!r}.")
        self.masks = masks
        self.schedule = schedule
        self.update_interval = int(update_interval)
        self.regrow = regrow
        self.generator = generator
        self.n_updates = 0
        self.n_regrown = 0

    def is_update_step(self, step: int) -> bool:
        """Whether the topology changes after optimizer step ``step`` (1-based)."""
        return (
            step % self.update_interval == 0
            and step <= self.schedule.end_step
            and self.schedule(step) > 0.0
        )

    def after_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Re-apply masks after optimizer step ``step``; update the topology when due.

        Returns
        -------
        bool
            Whether the topology was updated.
        """
        self.masks.apply_()
        if not self.is_update_step(step):
            return False
        self.n_regrown += update_topology(
            self.masks,
            self.schedule(step),
            regrow=self.regrow,
            optimizer=optimizer,
            generator=self.generator,
        )
        self.n_updates += 1
        return True
