"""The training engine behind :meth:`RESTClassifier.fit`.

- :mod:`~rest_fair.training.parts`: :class:`TrainingParts` and ``build_parts``, which
  assembles them from a ``TrainConfig``;
- :mod:`~rest_fair.training.loop`: :class:`TrainingRun` (``fit_loop`` ->
  ``run_single_epoch`` -> ``train_step``; ``validate``, ``select``);
- :mod:`~rest_fair.training.state`: :class:`TrainState`, the run's counters and history;
- :mod:`~rest_fair.training.sampler`: :class:`EpochSampler`, the (reweighted) epoch order;
- :mod:`~rest_fair.training.precision`: :class:`Precision` (float32, bf16, 16-mixed);
- :mod:`~rest_fair.training.distributed`: the world of a run, one process or a DDP rank.
"""

from __future__ import annotations

from .loop import TrainingRun, check_checkpoint, predict_logits
from .parts import (
    LR_SCHEDULERS,
    OPTIMIZERS,
    EvalSet,
    TrainingParts,
    TrainSet,
    make_optimizer,
    make_scheduler,
    make_sparsity,
)
from .precision import PRECISIONS, Precision
from .sampler import EpochSampler, n_batches
from .state import TrainState

__all__ = [
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "PRECISIONS",
    "EpochSampler",
    "EvalSet",
    "Precision",
    "TrainSet",
    "TrainState",
    "TrainingParts",
    "TrainingRun",
    "check_checkpoint",
    "make_optimizer",
    "make_scheduler",
    "make_sparsity",
    "n_batches",
    "predict_logits",
]
