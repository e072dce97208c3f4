"""Dynamic sparse training: keep masks applied and update the topology on schedule.

A training step calls :meth:`DynamicSparsity.prepare_step` before the forward pass,
:meth:`DynamicSparsity.before_step` between ``backward()`` and ``optimizer.step()`` (where
the dense gradient of the batch is available) and :meth:`DynamicSparsity.after_step` after
it, the prepare / step / update-mask rhythm of ``torch.ao.pruning``. One
:func:`~rest_fair.sparse.rigl.update_topology` decides for every layer (a dense weight and
its mask in the :class:`MaskSet`, or a :class:`~rest_fair.sparse.rigl.LayerStorage` in
:attr:`DynamicSparsity.layers`), lets the data-parallel synchronisation replace the
decisions by rank 0's, and applies them.

Where updates fall
------------------
An update is *due* at optimizer step ``s`` (1-based) when ``s`` is on the update phase,
``s % update_interval == update_interval // 2``: updates sit in the middle of their
interval rather than at its end. Because validation (and so checkpoint selection) happens
after the last step of an epoch, an update that would fall on an epoch's last step is moved
to the first step of the next epoch, where an epoch has more than one step. Together with
the order inside a step (the topology changes *before* the optimizer step, so the batch
that chose the regrown weights also trains them), no model is validated right after losing
the fraction ``f_t`` of its weights to freshly regrown zeros: with
``update_interval="auto"`` (once per epoch), half an epoch of training separates each
update from the next validation. With one step per epoch every step is an epoch's last, and
an update stays on its step: the model validated after it has had that step's optimizer
step only.
"""

from __future__ import annotations

import torch
from torch import nn

from .masks import MaskSet
from .modules import snapshot
from .rigl import REGROW_MODES, LayerStorage, update_topology
from .schedules import DropSchedule

__all__ = ["UPDATE_TIMINGS", "CopiedState", "DynamicSparsity"]


class CopiedState:
    """A copy of ``module``'s state made now, with ``masks`` (copies already): the best
    epoch's copy of a dense or masked run (see
    :class:`~rest_fair.training.state.BestCopy`)."""

    def __init__(self, module: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self._state = snapshot(module.state_dict(), [*module.parameters(), *module.buffers()])
        self._masks = masks

    def module_state(self) -> dict[str, torch.Tensor]:
        """The module's ``state_dict()`` as it was copied."""
        return self._state

    def masks(self) -> dict[str, torch.Tensor]:
        """The masks given."""
        return self._masks

    def load_into(self, module: nn.Module) -> None:
        """``module.load_state_dict`` of the copy."""
        module.load_state_dict(self._state)


#: Where topology updates fall (``update_timing``): in the middle of each interval before
#: the optimizer step, not on the last step of an epoch of several steps; or at every
#: interval's end, after it.
UPDATE_TIMINGS = ("mid_interval", "after_step")
_NO_PLAN = (
    "the topology update of step {step} was not prepared; call prepare_step(step) before "
    "the forward pass of every training step."
)


class _OneProcess:
    """The topology synchronisation of one process: its own decision, nothing to compare."""

    def check_masks(self, masks: MaskSet, *, when: str) -> None:
        pass

    def broadcast_decision(self, decisions: dict) -> dict:
        return decisions


class DynamicSparsity:
    """Drives a :class:`MaskSet` through training.

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
    steps_per_epoch : int, optional
        Steps between two validations. When given (and larger than 1) no update falls on
        the last step of an epoch (see the module docstring); ``"mid_interval"`` only.
    update_timing : {"mid_interval", "after_step"}, default="mid_interval"
        ``"mid_interval"``: updates at steps ``s`` with ``s % update_interval ==
        update_interval // 2``, called between ``backward()`` and the optimizer step.
        ``"after_step"``: at every ``update_interval``-th step, and the training loop calls
        :meth:`before_step` after that step's optimizer step (:attr:`after_optimizer_step`),
        as the REST authors' code does.

    Attributes
    ----------
    layers : dict of str to LayerStorage
        Masked weights stored otherwise than as a dense weight and its mask, by name
        (empty for masked training).
    """

    def __init__(
        self,
        masks: MaskSet,
        *,
        schedule: DropSchedule,
        update_interval: int,
        regrow: str = "gradient",
        generator: torch.Generator | None = None,
        steps_per_epoch: int | None = None,
        update_timing: str = "mid_interval",
    ) -> None:
        if update_timing not in UPDATE_TIMINGS:
            raise ValueError(f"update_timing must be one of {UPDATE_TIMINGS}; "
                             f"got {update_timing!r}.")
        if regrow not in REGROW_MODES:
            raise ValueError(f"regrow must be one of {REGROW_MODES}; got {regrow!r}.")
        if update_interval < 1:
            raise ValueError(f"update_interval must be >= 1; got {update_interval!r}.")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch!r}.")
        self.masks = masks
        self.schedule = schedule
        self.update_interval = int(update_interval)
        self.regrow = regrow
        self.generator = generator
        self.steps_per_epoch = steps_per_epoch
        self.update_timing = update_timing
        self.layers: dict[str, LayerStorage] = {}
        self._prepared: int | None = None
        self.n_updates = 0
        self.n_regrown = 0
        # the world: ``check_masks(masks, when=)`` and ``broadcast_decision(decisions)``
        # (a data-parallel fit sets its context, see rest_fair.training.distributed)
        self.sync = _OneProcess()

    # -- schedule ---------------------------------------------------------------------
    def _on_phase(self, step: int) -> bool:
        return step >= 1 and step % self.update_interval == self.update_interval // 2

    def _epoch_end(self, step: int) -> bool:
        spe = self.steps_per_epoch
        return spe is not None and spe > 1 and step % spe == 0

    @property
    def after_optimizer_step(self) -> bool:
        """Whether the loop calls :meth:`before_step` after the optimizer step."""
        return self.update_timing == "after_step"

    def is_update_step(self, step: int) -> bool:
        """Whether the topology changes at optimizer step ``step`` (1-based)."""
        if self.after_optimizer_step:
            due = step % self.update_interval == 0
        else:
            due = (self._on_phase(step) and not self._epoch_end(step)) or (
                self._on_phase(step - 1) and self._epoch_end(step - 1)
            )
        return due and step <= self.schedule.end_step and self.schedule(step) > 0.0

    def first_due_step(self) -> int:
        """The first optimizer step that ``update_interval`` and ``update_timing`` make due.

        The topology changes there unless the step is past the schedule's ``end_step`` or
        its drop fraction is 0; the drop fraction never grows again, so when
        :meth:`is_update_step` is false there, no step of the run changes the topology.
        """
        if self.after_optimizer_step:
            return self.update_interval
        step = max(self.update_interval // 2, 1)
        return step + self._epoch_end(step)  # moved to the next epoch's first step

    # -- the calls of a training step -----------------------------------------------------
    def prepare_step(self, step: int) -> None:
        """Get ready for optimizer step ``step``; call before its forward pass.

        Each of :attr:`layers` plans the update if ``step`` changes the topology; masked
        layers have nothing to prepare (their dense gradient is always computed).
        """
        fraction = self.schedule(step) if self.is_update_step(step) else 0.0
        for layer in self.layers.values():
            layer.plan(step, fraction, regrow=self.regrow, after_step=self.after_optimizer_step)
        self._prepared = step

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Update the topology if due at ``step``; call after ``backward()``.

        Returns
        -------
        int
            Weights that changed from inactive to active (0 when no update was due).

        Raises
        ------
        RuntimeError
            When :attr:`layers` were not prepared by ``prepare_step(step)``.
        """
        if not self.is_update_step(step):
            return 0
        if self.layers and self._prepared != step:
            raise RuntimeError(_NO_PLAN.format(step=step))
        sync = self.sync
        sync.check_masks(self.masks, when=f"before the topology update of step {step}")
        regrown = update_topology(
            self.masks,
            self.schedule(step),
            layers=self.layers,
            regrow=self.regrow,
            optimizer=optimizer,
            generator=self.generator,
            synchronise=sync.broadcast_decision,
        )
        sync.check_masks(self.masks, when=f"after the topology update of step {step}")
        self.n_regrown += regrown
        self.n_updates += 1
        return regrown

    def after_step(self) -> None:
        """Re-apply the masks after ``optimizer.step()`` so inactive weights stay 0."""
        self.masks.apply_()

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Connect the run's optimizer (built over the module's current parameters).

        Nothing to do for masked training.
        """

    def finish(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """End of training: leave the module (and ``optimizer``) in their dense form.

        Masked training never changed them.
        """

    # -- state --------------------------------------------------------------------------
    def best_copy(self, module: nn.Module) -> CopiedState:
        """A copy of ``module``'s state and of the masks as they are now, for the best
        epoch so far (a :class:`~rest_fair.training.state.BestCopy`). Masked training
        copies both now."""
        return CopiedState(module, self.masks.to_dict())

    def state_dict(self) -> dict:
        """Masks and counters, to resume training exactly."""
        return {
            "masks": self.masks.to_dict(),
            "n_updates": self.n_updates,
            "n_regrown": self.n_regrown,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s masks (applied to the weights) and counters."""
        masks = state["masks"]
        if set(masks) != set(self.masks.names):
            raise ValueError(
                f"the saved masks are for layers {sorted(masks)}, the network has "
                f"{sorted(self.masks.names)}."
            )
        for name, mask in masks.items():
            self.masks.set_mask(name, mask)
        self.masks.apply_()
        self.n_updates = int(state["n_updates"])
        self.n_regrown = int(state["n_regrown"])
