"""The order in which an epoch visits the training samples.

With reweighting by sampler, an epoch draws as many samples as the training set has, with
replacement, each in proportion to its weight (so a group of weight ``lambda`` is drawn
``lambda`` times as often as a group of weight 1); otherwise it is a random permutation.
The order comes from one explicit CPU generator, so processes that share the seed draw the
same order.
"""

from __future__ import annotations

import numpy as np
import torch

from ..reweighting import draw_indices

__all__ = ["EpochSampler", "n_batches"]


def n_batches(n_samples: int, batch_size: int) -> int:
    """Optimizer steps of one epoch.

    A trailing batch of a single sample is dropped (BatchNorm cannot train on one sample),
    unless it is the only batch.
    """
    full, rest = divmod(n_samples, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


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
    """

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        weights: np.ndarray | None,
        generator: torch.Generator,
    ) -> None:
        self.n_samples = int(n_samples)
        self.batch_size = int(batch_size)
        self.weights = weights
        self.generator = generator
        self.steps_per_epoch = n_batches(self.n_samples, self.batch_size)

    def epoch_order(self) -> torch.Tensor:
        """Sample indices of the next epoch (``steps_per_epoch`` full batches' worth)."""
        if self.weights is None:
            order = torch.randperm(self.n_samples, generator=self.generator)
        else:
            order = draw_indices(self.weights, self.n_samples, generator=self.generator)
        return order[: self.steps_per_epoch * self.batch_size]
