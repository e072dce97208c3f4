"""Training objectives: weighted empirical risk and online GroupDRO."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["OBJECTIVES", "ERMObjective", "GroupDROObjective", "make_objective"]

#: Values of ``RESTClassifier(objective=...)``.
OBJECTIVES = ("erm", "groupdro")

BAD_ADJUSTMENT = "the GroupDRO adjustment must be a finite number >= 0; got {value!r}."
NO_GROUP_SIZES = (
    "a GroupDRO adjustment of {value!r} needs group_sizes, the number of training "
    "samples of every group."
)
BAD_GROUP_SIZES = (
    "group_sizes must hold a finite count >= 0 for each of the {n_groups} groups; "
    "got {sizes}."
)


class ERMObjective:
    """Mean of per-sample cross-entropies times their weights (which the caller scales to
    average 1 over the training set; ``w=None`` is plain cross-entropy)."""

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, g: torch.Tensor
    ) -> torch.Tensor:
        if w is None:
            return F.cross_entropy(logits, y)
        return (F.cross_entropy(logits, y, reduction="none") * w).mean()


def _one_process(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _group_adjustment(n_groups: int, adjustment: float, group_sizes: torch.Tensor | None,
                      *, device: torch.device) -> torch.Tensor:
    """``adjustment / sqrt(n_g)`` of every group (0 for an empty group), as float32;
    refuses a bad ``adjustment`` or ``group_sizes``."""
    if not math.isfinite(adjustment) or adjustment < 0:
        raise ValueError(BAD_ADJUSTMENT.format(value=adjustment))
    if group_sizes is None:
        if adjustment > 0:
            raise ValueError(NO_GROUP_SIZES.format(value=adjustment))
        return torch.zeros(n_groups, device=device)
    sizes = torch.as_tensor(group_sizes, dtype=torch.float64).detach().cpu()
    if sizes.shape != (n_groups,) or not bool(torch.all(torch.isfinite(sizes) & (sizes >= 0))):
        raise ValueError(BAD_GROUP_SIZES.format(n_groups=n_groups, sizes=sizes.tolist()))
    term = torch.where(sizes > 0, adjustment / sizes.where(sizes > 0, 1.0).sqrt(), 0.0)
    return term.to(device=device, dtype=torch.float32)


class GroupDROObjective:
    """Online GroupDRO (Sagawa et al., ICLR 2020, Algorithm 1), with group adjustments.

    Keeps a distribution ``q`` over groups. Each batch computes the (weighted) mean loss of
    every group present, updates ``q_g <- q_g * exp(eta * (loss_g + C / sqrt(n_g)))``,
    renormalises, and returns ``sum_g q_g * loss_g``. The group adjustment ``C / sqrt(n_g)``
    (the paper's Section 3.3) makes the weight of a group with few training samples grow
    faster; it enters the update of ``q`` only, and ``C = 0`` (the default) is Algorithm 1
    as published. Groups absent from a batch keep their weight before the renormalisation.
    ``q`` starts uniform over the groups with training samples (``n_g > 0``, as in WILDS'
    GroupDRO); a group without any (e.g. all held out for validation) keeps weight 0.

    Over data-parallel ranks, ``all_reduce`` sums the per-group sums of losses and weights,
    so group losses, ``q`` and the value are those of the global batch; the gradient is
    that of ``world_size * sum_g q_g * S_g / C_g`` (``S_g``: this rank's loss sum of group
    ``g``, ``C_g``: its global weight), whose average over the ranks (what DDP applies) is
    the global objective's.

    Parameters
    ----------
    n_groups : int
        Number of groups.
    eta : float
        Step size of the exponentiated-gradient update of ``q``.
    device : torch.device
        Where ``q`` lives.
    all_reduce : callable, optional
        Sums a tensor over the ranks; by default returns it (one process).
    world_size : int, default=1
    adjustment : float, default=0.0
        The constant ``C >= 0`` of the group adjustment ``C / sqrt(n_g)``.
    group_sizes : Tensor of shape (n_groups,), optional
        ``n_g``: the whole training set's number of samples of every group, the same on
        every rank. Needed when ``adjustment > 0``; a group of size 0 gets no adjustment and
        no weight. Without it, ``q`` starts uniform over all ``n_groups``.

    Attributes
    ----------
    q : Tensor of shape (n_groups,)
        The current group weights.
    group_adjustment : Tensor of shape (n_groups,)
        ``C / sqrt(n_g)`` of every group (zeros when ``C = 0``).
    """

    def __init__(self, n_groups: int, *, eta: float, device: torch.device,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] = _one_process,
                 world_size: int = 1, adjustment: float = 0.0,
                 group_sizes: torch.Tensor | None = None) -> None:
        self.eta = float(eta)
        self.adjustment = float(adjustment)
        self.group_adjustment = _group_adjustment(n_groups, self.adjustment, group_sizes,
                                                  device=device)
        # uniform over the groups with training samples (all of them, without sizes)
        trained = (torch.ones(n_groups, dtype=torch.bool) if group_sizes is None
                   else torch.as_tensor(group_sizes).cpu() > 0)
        if not trained.any():
            trained[:] = True
        self.q = torch.where(trained.to(device), 1.0 / int(trained.sum()), 0.0)
        self.history: list[list[float]] = []
        self.all_reduce = all_reduce
        self.world_size = int(world_size)

    @property
    def q(self) -> torch.Tensor:
        """The current group weights (float32)."""
        return self._q

    @q.setter
    def q(self, value: torch.Tensor) -> None:
        self._q = value
        self._log_q = torch.log(value.detach().double())  # float64: a weight never underflows

    def continue_from(self, q: Sequence[float]) -> None:
        """Start from the group weights ``q`` of an earlier fit (a warm start).

        The groups with training samples share the weight in ``q``'s proportions, a weight 0
        in ``q`` raised to the smallest normal float32 so that it can grow again; the others
        keep weight 0.
        """
        given = torch.as_tensor(q, dtype=torch.float64).cpu()
        if given.shape != self.q.shape:
            raise ValueError(f"GroupDRO weights of an earlier fit are for {len(given)} "
                             f"groups, this run has {len(self.q)}.")
        given = given.clamp_min(torch.finfo(torch.float32).tiny)
        given = torch.where(self.q.cpu() > 0, given, 0.0)
        self.q = (given / given.sum()).to(device=self.q.device, dtype=self.q.dtype)

    def group_sums(
        self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group sums of the weighted losses (with gradient) and of the weights."""
        n_groups = len(self.q)
        per_sample = F.cross_entropy(logits.float(), y, reduction="none")
        if w is None:
            w = torch.ones_like(per_sample)
        per_sample = per_sample * w
        loss_sum = torch.zeros(n_groups, device=logits.device).index_add(0, g, per_sample)
        count = torch.zeros(n_groups, device=logits.device).index_add(0, g, w)
        return loss_sum, count

    @torch.no_grad()
    def update(self, group_loss: torch.Tensor, present: torch.Tensor) -> None:
        """Exponentiated-gradient step of ``q`` on the groups present in the batch.

        ``group_loss`` holds the batch's mean loss of every group; the step uses the
        adjusted ``loss_g + C / sqrt(n_g)``. The weights are also kept in log space and
        float64, ``log q <- log_softmax(log q + eta * loss)``. Where the float32 update
        overflows (a large ``eta``) or rounds a positive weight to 0, ``q`` is the log-space
        one: the weight goes to the groups of the largest loss instead of becoming NaN, and
        a tiny weight grows again when its group's loss is the largest.
        """
        loss = group_loss.detach() + self.group_adjustment
        scaled = self._q * torch.exp(self.eta * loss * present)
        total = scaled.sum()
        self._log_q = torch.log_softmax(self._log_q + self.eta * loss.double() * present, dim=0)
        plain = scaled / total
        underflowed = ((plain == 0) & torch.isfinite(self._log_q)).any()
        self._q = torch.where(torch.isfinite(total) & ~underflowed, plain,
                              self._log_q.exp().to(scaled.dtype))

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, g: torch.Tensor
    ) -> torch.Tensor:
        loss_sum, count = self.group_sums(logits, y, w, g)
        total = self.all_reduce(torch.stack([loss_sum.detach(), count]))
        present = total[1] > 0
        # a group's weights may sum to any positive value: its loss is their weighted mean
        denominator = torch.where(present, total[1], 1.0)
        group_loss = torch.where(present, total[0] / denominator, 0.0)
        self.update(group_loss, present)
        value = (self.q * group_loss).sum()
        local = self.world_size * (self.q * torch.where(present, loss_sum / denominator,
                                                        0.0)).sum()
        return value + (local - local.detach())

    def end_epoch(self) -> None:
        """Record the current group weights (one row per epoch)."""
        self.history.append(self.q.detach().cpu().tolist())

    def state_dict(self) -> dict:
        """Group weights (also in log space) and their history (a tensor of one row per
        epoch), to resume exactly."""
        history = torch.tensor(self.history, dtype=self.q.dtype).reshape(-1, len(self.q))
        return {"q": self.q.detach().cpu().clone(), "log_q": self._log_q.detach().cpu().clone(),
                "history": history}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        if state["q"].shape != self.q.shape:
            raise ValueError(f"saved GroupDRO weights are for {len(state['q'])} groups, "
                             f"this run has {len(self.q)}.")
        self.q = state["q"].to(self.q.device)
        if "log_q" in state:  # not in checkpoints of earlier releases
            self._log_q = state["log_q"].to(self.q.device)
        history = state["history"]  # a list of rows in checkpoints of earlier releases
        self.history = (history.tolist() if isinstance(history, torch.Tensor)
                        else [list(r) for r in history])


def make_objective(
    name: str, *, n_groups: int, eta: float, device: torch.device,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = _one_process, world_size: int = 1,
    adjustment: float = 0.0, group_sizes: torch.Tensor | None = None,
) -> ERMObjective | GroupDROObjective:
    """Objective named by ``RESTClassifier(objective=...)``; see :class:`GroupDROObjective`."""
    if name == "groupdro":
        return GroupDROObjective(n_groups, eta=eta, device=device, all_reduce=all_reduce,
                                 world_size=world_size, adjustment=adjustment,
                                 group_sizes=group_sizes)
    if name == "erm":
        return ERMObjective()
    raise ValueError(f"objective must be one of {OBJECTIVES}; got {name!r}.")
