"""Training objectives: weighted empirical risk and online GroupDRO."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ERMObjective", "GroupDROObjective", "make_objective"]


class ERMObjective:
    """Mean of per-sample cross-entropies, each multiplied by its weight.

    Weights are normalised by the caller so that they average to 1 over the training set;
    with all weights 1 this is plain cross-entropy.
    """

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        return (F.cross_entropy(logits, y, reduction="none") * w).mean()


class GroupDROObjective:
    """Online GroupDRO (Sagawa et al., ICLR 2020, Algorithm 1).

    Keeps a distribution ``q`` over groups. Each batch computes the (weighted) mean loss of
    every group present, updates ``q_g <- q_g * exp(eta * loss_g)`` and renormalises, and
    returns ``sum_g q_g * loss_g``, so the groups with the highest loss get the most weight.

    Parameters
    ----------
    n_groups : int
        Number of groups.
    eta : float
        Step size of the exponentiated-gradient update of ``q``.
    device : torch.device
        Where ``q`` lives.
    """

    def __init__(self, n_groups: int, *, eta: float, device: torch.device) -> None:
        self.eta = float(eta)
        self.q = torch.full((n_groups,), 1.0 / n_groups, device=device)
        self.history: list[list[float]] = []

    def __call__(
        self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        n_groups = len(self.q)
        per_sample = F.cross_entropy(logits, y, reduction="none") * w
        loss_sum = torch.zeros(n_groups, device=logits.device).index_add(0, g, per_sample)
        count = torch.zeros(n_groups, device=logits.device).index_add(0, g, w)
        present = count > 0
        group_loss = torch.where(present, loss_sum / count.clamp_min(1e-12), 0.0)
        with torch.no_grad():
            self.q = self.q * torch.exp(self.eta * group_loss.detach() * present)
            self.q = self.q / self.q.sum()
        return (self.q * group_loss).sum()

    def end_epoch(self) -> None:
        """Record the current group weights (one row per epoch)."""
        self.history.append(self.q.detach().cpu().tolist())


def make_objective(
    name: str, *, n_groups: int, eta: float, device: torch.device
) -> ERMObjective | GroupDROObjective:
    """Objective named by ``RESTClassifier(objective=...)``."""
    if name == "groupdro":
        return GroupDROObjective(n_groups, eta=eta, device=device)
    return ERMObjective()
