"""The parts a training run is built from, and the functions that build them.

:meth:`RESTClassifier.fit` builds a :class:`TrainingParts` -- module, optimizer,
learning-rate scheduler, objective, sparsity engine, data, precision, callbacks -- and
hands it to :func:`rest_fair.training.loop.fit_loop`. The loop reads nothing else; in
particular it never reads estimator parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._data import BatchSource
from ..sparse import DropSchedule, DynamicSparsity, MaskSet
from .distributed import LocalContext
from .precision import Precision
from .sampler import EpochSampler

__all__ = [
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "EvalSet",
    "TrainSet",
    "TrainingParts",
    "make_optimizer",
    "make_scheduler",
    "make_sparsity",
]

#: Values of ``RESTClassifier(optimizer=...)``.
OPTIMIZERS = ("sgd", "adam", "adamw")
#: Values of ``RESTClassifier(lr_scheduler=...)``.
LR_SCHEDULERS = ("plateau", "cosine", "constant")


@dataclass
class TrainSet:
    """Training data in the form the loop needs."""

    source: BatchSource
    y: torch.Tensor  # class codes (long)
    loss_weights: torch.Tensor | None  # per-sample loss weights (mean 1), None if all 1
    groups: torch.Tensor  # group codes (long)
    n_groups: int
    sampler: EpochSampler


@dataclass
class EvalSet:
    """Validation data."""

    source: BatchSource
    y: np.ndarray  # class codes
    groups: np.ndarray | None  # group codes, None when unknown


@dataclass
class TrainingParts:
    """Everything one training run needs; built by ``fit``, consumed by the loop.

    Attributes
    ----------
    module : nn.Module
        The network, on ``device``.
    optimizer : torch.optim.Optimizer
    scheduler : LR scheduler or None
        Stepped once per epoch (``ReduceLROnPlateau`` with the validation loss).
    objective : callable
        ``objective(logits, y, weights, groups) -> loss``.
    sparsity : DynamicSparsity or None
        The sparse engine; ``None`` trains densely.
    train : TrainSet
    valid : EvalSet or None
        Without it the last epoch is kept.
    precision : Precision
    device : torch.device
    max_epochs : int
    batch_size : int
        Samples per optimizer step on this process (a data-parallel rank's share of the
        global batch).
    eval_batch_size : int
    callbacks : list of Callback
    progress : tqdm-like or None
        Progress bar over epochs.
    forward_module : nn.Module or None
        What training batches go through: ``module`` itself, or its
        ``DistributedDataParallel`` wrapper in a data-parallel fit (``None``: ``module``).
    world : LocalContext or DistributedContext
        The processes the run trains in (:mod:`rest_fair.training.distributed`).
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    objective: Any
    sparsity: DynamicSparsity | None
    train: TrainSet
    valid: EvalSet | None
    precision: Precision
    device: torch.device
    max_epochs: int
    batch_size: int
    eval_batch_size: int
    callbacks: list = field(default_factory=list)
    progress: Any = None
    forward_module: nn.Module | None = None
    world: LocalContext = field(default_factory=LocalContext)

    def __post_init__(self) -> None:
        if self.forward_module is None:
            self.forward_module = self.module


def make_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimizer named by ``RESTClassifier(optimizer=...)``."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {name!r}.")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, *, max_epochs: int) -> Any:
    """The per-epoch learning-rate scheduler named by ``lr_scheduler`` (or ``None``)."""
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=5)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    if name == "constant":
        return None
    raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}; got {name!r}.")


def make_sparsity(
    module: nn.Module,
    *,
    sparsity: float,
    layer_density: str,
    init: str,
    dense_layers: Sequence[str],
    regrow: str,
    drop_fraction: float,
    drop_schedule: str,
    update_interval: int,
    update_end: float,
    steps_per_epoch: int,
    max_epochs: int,
    generator: torch.Generator,
    masks: dict[str, torch.Tensor] | None = None,
) -> DynamicSparsity | None:
    """The sparse engine of a run, with its initial masks applied (``None`` when dense).

    Parameters
    ----------
    module : nn.Module
    sparsity : float
        Global fraction of zero weights; ``0`` returns ``None``.
    layer_density : {"erk", "uniform"}
    init : {"random", "magnitude"}
        Random masks (training from scratch; weights are then rescaled by
        ``1/sqrt(density)``) or the largest-magnitude weights of each layer (pretrained
        weights, kept as they are).
    dense_layers : sequence of str
        Layers left dense (see :meth:`MaskSet.from_module`).
    regrow, drop_fraction, drop_schedule, update_interval, update_end
        As the estimator's parameters (``update_interval`` already an int).
    steps_per_epoch, max_epochs : int
        Length of the run, for the drop schedule and the placement of updates.
    generator : torch.Generator
        CPU generator of masks and random regrowth.
    masks : dict of str to bool Tensor, optional
        Masks to start from (a warm start) instead of new ones.
    """
    if sparsity <= 0:
        return None
    if masks is not None:
        params = dict(module.named_parameters())
        mask_set = MaskSet({name: params[name] for name in masks}, masks)
    else:
        mask_set = MaskSet.from_module(
            module, density=1.0 - sparsity, distribution=layer_density, init=init,
            dense_layers=tuple(dense_layers), generator=generator,
        )
    mask_set.apply_()
    if masks is None and init == "random":
        mask_set.rescale_init_()
    total_steps = steps_per_epoch * max_epochs
    return DynamicSparsity(
        mask_set,
        schedule=DropSchedule(drop_fraction, int(update_end * total_steps), drop_schedule),
        update_interval=update_interval,
        regrow=regrow,
        generator=generator,
        steps_per_epoch=steps_per_epoch,
    )
