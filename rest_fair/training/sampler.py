"""The order in which an epoch visits the training samples.

With reweighting by sampler, an epoch draws as many samples as the training set has,
with replacement, each in proportion to its weight; otherwise it is a random permutation.
Either is cut to :func:`n_batches` batches. Where only some samples may be visited
(``rows``: those of positive sample weight), the epoch is that of the training set made of
those alone. The order comes from one explicit CPU generator; in a data-parallel fit every
rank draws the same global order and keeps its slice of every global batch
(:func:`rest_fair.training.distributed.shard_order`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..reweighting import draw_indices
from .distributed import shard_order

__all__ = ["EpochSampler", "n_batches"]


def n_batches(n_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps of one epoch.

    A trailing batch that would give each of the ``world_size`` ranks a single sample is
    dropped (BatchNorm cannot train on one sample), unless it is the only batch.
    """
    full, rest = divmod(n_samples, batch_size)
    share = rest // world_size
    return full + (1 if share > 1 or (share == 1 and full == 0) else 0)


class EpochSampler:
    """Draws the sample order of each epoch.

    Parameters
    ----------
    n_samples : int
        Training samples.
    batch_size : int
        Samples per optimizer step.
    weights : ndarray of float or None
        Sampling weights (reweighting by sampler), or ``None`` for a plain shuffle.
    generator : torch.Generator
        CPU generator, the only source of randomness.
    rank, world_size : int, default=0, 1
        This process's rank among ``world_size`` data-parallel ranks; ``batch_size`` is
        then the global batch, a multiple of ``world_size``.
    rows : ndarray of int or None, default=None
        The samples an epoch visits (increasing indices), or ``None`` for all;
        ``weights`` are still given for all ``n_samples``; the attribute ``n_samples`` is
        then ``len(rows)``.
    """

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        weights: np.ndarray | None,
        generator: torch.Generator,
        *,
        rank: int = 0,
        world_size: int = 1,
        rows: np.ndarray | None = None,
    ) -> None:
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long)
        self.n_samples = int(n_samples) if rows is None else len(rows)
        self.batch_size = int(batch_size)
        self.weights = weights if weights is None or rows is None else weights[rows]
        self.generator = generator
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.steps_per_epoch = n_batches(self.n_samples, self.batch_size, self.world_size)

    def global_order(self) -> torch.Tensor:
        """The next epoch's order for all ranks together (``steps_per_epoch`` batches)."""
        if self.weights is None:
            order = torch.randperm(self.n_samples, generator=self.generator)
        else:
            order = draw_indices(self.weights, self.n_samples, generator=self.generator)
        order = order[: self.steps_per_epoch * self.batch_size]
        return order if self.rows is None else self.rows[order]

    def epoch_order(self) -> torch.Tensor:
        """Sample indices this process visits in the next epoch, batch after batch."""
        order = self.global_order()
        if self.world_size == 1:
            return order
        return shard_order(order, self.batch_size, self.rank, self.world_size)
