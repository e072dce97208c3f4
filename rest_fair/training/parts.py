"""The parts a training run is built from, and :func:`build_parts`, which builds them.

:class:`~rest_fair.training.TrainingRun` trains a :class:`TrainingParts` and reads
nothing else.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .._data import BatchSource, _collate_inputs, _DatasetSource, fixed_global_rngs
from .._probe import evaluation
from .._validation import IDENTIFYING
from ..objectives import make_objective
from ..sparse import DropSchedule, DynamicSparsity, MaskSet
from ..sparse.compute import SparseComputeConfig, make_sparse_compute
from .distributed import LocalContext
from .precision import Precision
from .sampler import EpochSampler

__all__ = [
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "EvalSet",
    "SparsityConfig",
    "TrainConfig",
    "TrainSet",
    "TrainingParts",
    "build_parts",
    "make_optimizer",
    "make_scheduler",
    "make_sparsity",
]

#: Values of ``RESTClassifier(optimizer=...)``.
OPTIMIZERS = ("sgd", "adam", "adamw")
#: Values of ``RESTClassifier(lr_scheduler=...)``.
LR_SCHEDULERS = ("plateau", "cosine", "constant")
#: An Adam step size that overflows float32, where Adam computes it.
ADAM_LR_OVERFLOW = (
    "lr={lr:g} is too large for optimizer={name!r}: its first step size, lr / (1 - beta1) "
    "= {step:g}, is beyond the largest float32 ({limit:.4g}), in which the optimizer "
    "computes. Use lr <= {most:.4g}, or optimizer='sgd'."
)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: Adam or AdamW asked to train a layer whose gradient is sparse.
SPARSE_GRADIENTS = (
    "{setting} cannot train {layers}: an nn.Embedding or nn.EmbeddingBag built with "
    "sparse=True has sparse gradients, {which}. Use {instead}, or build the layer with "
    "sparse=False."
)
#: Dynamic sparse training asked for (a drop fraction above 0) in a fit too short for it.
NO_TOPOLOGY_UPDATE = (
    "update_interval={interval} with update_timing={timing!r} puts the first topology "
    "update at optimizer step {first}, but this fit takes {total} steps "
    "({epochs_name}={epochs}, {per_epoch} per epoch) and may change the topology up to step "
    "{last} only (update_end={update_end:g}, drop_schedule={schedule!r}): the masks will "
    "never change, so the network trains with its initial masks (static sparse training) "
    "although drop_fraction={drop:g} asks for dynamic sparse training. Use a smaller "
    "update_interval ('auto' updates once per epoch), more {epochs_name} or a larger "
    "update_end; drop_fraction=0 trains a static mask without this warning."
)


@dataclass(frozen=True)
class SparsityConfig:
    """How the weights are masked and their topology updated.

    The fields are the parameters of :class:`~rest_fair.RESTClassifier` of the same names
    (``sparse_init`` is ``"random"`` or ``"magnitude"``); ``sparsity=0`` trains densely.
    """

    sparsity: float
    layer_density: str
    sparse_init: str
    rescale_init: bool
    dense_layers: Sequence[str] | None
    regrow: str
    drop_fraction: float
    drop_schedule: str
    update_interval: int | str
    update_end: float
    update_timing: str


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`build_parts` builds a run from.

    The fields are the parameters of :class:`~rest_fair.RESTClassifier` of the same names
    (as Python floats where float); ``sparse`` holds the sparse-training ones.
    """

    sparse: SparsityConfig
    sparse_compute: str
    sparse_compute_threshold: float
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    lr_scheduler: str
    objective: str
    groupdro_eta: float
    groupdro_adjustment: float
    max_epochs: int
    batch_size: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainConfig:
        """The configuration in ``params`` (e.g. ``RESTClassifier.get_params()``), by name."""
        def pick(kind: type) -> dict:
            return {f.name: float(params[f.name]) if f.type == "float" else params[f.name]
                    for f in fields(kind) if f.name != "sparse"}

        return cls(sparse=SparsityConfig(**pick(SparsityConfig)), **pick(cls))


@dataclass
class TrainSet:
    """Training data in the form the loop needs.

    ``group_sizes`` holds the training samples of every group (GroupDRO's ``n_g``, the
    whole training set's on every rank; default: counted from ``groups``). With
    ``n_classes``, the loop refuses an output that is not one logit per class.
    """

    source: BatchSource
    y: torch.Tensor  # class codes (long)
    loss_weights: torch.Tensor | None  # per-sample loss weights (mean 1), None if all 1
    groups: torch.Tensor  # group codes (long)
    n_groups: int
    sampler: EpochSampler
    group_sizes: torch.Tensor | None = None  # samples per group (long)
    n_classes: int | None = None

    def __post_init__(self) -> None:
        if self.group_sizes is None:
            self.group_sizes = torch.bincount(self.groups, minlength=self.n_groups)


@dataclass
class EvalSet:
    """Validation data.

    ``weights`` are the samples' weights in the validation loss and accuracies (the held-out
    rows' ``sample_weight``; for ``validation_data``, 0 for the groups an ``upweight`` dict
    weighs 0, else 1); ``None``: each sample counts once.
    """

    source: BatchSource
    y: np.ndarray  # class codes
    groups: np.ndarray | None  # group codes, None when unknown
    weights: np.ndarray | None = None  # non-negative, some positive; None if all equal


@dataclass
class TrainingParts:
    """Everything one training run needs; built by :func:`build_parts`, read by the loop.

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
    """The optimizer named by ``RESTClassifier(optimizer=...)``.

    Its multi-tensor implementation (``foreach=True``), on every device: on the CPU bitwise
    the per-tensor loop's results, with less overhead per step.

    Raises
    ------
    ValueError
        For Adam or AdamW with an ``lr`` whose first step size overflows float32
        (:data:`ADAM_LR_OVERFLOW`).
    """
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               foreach=True)
    if name not in ("adam", "adamw"):
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {name!r}.")
    adam = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    optimizer = adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    # Adam's step size lr / (1 - beta1 ** t) is largest at t = 1 (schedulers only lower lr)
    correction = 1 - optimizer.defaults["betas"][0]
    if lr / correction > _FLOAT32_MAX:
        raise ValueError(ADAM_LR_OVERFLOW.format(lr=lr, name=name, step=lr / correction,
                                                 limit=_FLOAT32_MAX,
                                                 most=_FLOAT32_MAX * correction))
    return optimizer


def _check_sparse_gradients(config: TrainConfig, module: nn.Module) -> None:
    """Refuse Adam, AdamW and weight decay for a module with trainable embeddings of sparse
    gradients (:data:`SPARSE_GRADIENTS`) before torch does, at the first step."""
    sparse = ", ".join(repr(n) for n, sub in module.named_modules()
                       if isinstance(sub, (nn.Embedding, nn.EmbeddingBag)) and sub.sparse
                       and sub.weight.requires_grad)
    if sparse and config.optimizer in ("adam", "adamw"):
        raise ValueError(SPARSE_GRADIENTS.format(
            setting=f"optimizer={config.optimizer!r}", layers=sparse, instead="optimizer='sgd'",
            which="which torch's Adam and AdamW do not take"))
    if sparse and config.weight_decay > 0:
        raise ValueError(SPARSE_GRADIENTS.format(
            setting=f"weight_decay={config.weight_decay:g}", layers=sparse,
            which="to which torch's SGD cannot add weight decay", instead="weight_decay=0"))


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
    config: SparsityConfig,
    *,
    steps_per_epoch: int,
    max_epochs: int,
    generator: torch.Generator,
    masks: dict[str, torch.Tensor] | None = None,
    warn: bool = True,
) -> DynamicSparsity | None:
    """The sparse engine of a run, with its initial masks applied (``None`` when dense).

    Random masks rescale the weights by ``1/sqrt(density)`` unless
    ``config.rescale_init`` is false; ``"magnitude"`` keeps each layer's largest weights as
    they are. ``steps_per_epoch`` and ``max_epochs`` place the updates and scale the drop
    schedule; ``generator`` draws masks and random regrowth; ``masks`` (a warm start)
    replace new ones. Warns (:data:`NO_TOPOLOGY_UPDATE`) where topology updates are asked
    for and none falls in the run, and of weights no mask reaches and layers kept denser
    than asked (:meth:`MaskSet.from_module`, not in JTT's identification fit); not at all
    where ``warn`` is false (data-parallel ranks other than 0).
    """
    if config.sparsity <= 0:
        return None
    if masks is not None:
        params = dict(module.named_parameters())
        mask_set = MaskSet({name: params[name] for name in masks}, masks)
    else:
        mask_set = MaskSet.from_module(
            module, density=1.0 - config.sparsity, layer_density=config.layer_density,
            sparse_init=config.sparse_init, dense_layers=tuple(config.dense_layers or ()),
            generator=generator, warn=warn and not IDENTIFYING.get(),
        )
    mask_set.zero_inactive_(rescale=masks is None and config.sparse_init == "random"
                            and config.rescale_init)
    total_steps = steps_per_epoch * max_epochs
    # a product a rounding error short of a whole step (0.29 * 100 = 28.999999999999996)
    # ends at that step
    end = config.update_end * total_steps
    end = round(end) if math.isclose(end, round(end), rel_tol=1e-9) else math.floor(end)
    interval = config.update_interval
    engine = DynamicSparsity(
        mask_set,
        schedule=DropSchedule(config.drop_fraction, end, config.drop_schedule),
        update_interval=steps_per_epoch if interval == "auto" else int(interval),
        regrow=config.regrow,
        generator=generator,
        steps_per_epoch=steps_per_epoch,
        update_timing=config.update_timing,
    )
    first, end = engine.first_due_step(), engine.schedule.end_step
    if (warn and config.drop_fraction > 0 and config.update_end > 0
            and not engine.is_update_step(first)):
        warnings.warn(NO_TOPOLOGY_UPDATE.format(
            interval=f"'auto' (= {steps_per_epoch})" if interval == "auto" else interval,
            timing=config.update_timing, first=first, total=total_steps, epochs=max_epochs,
            epochs_name="jtt_epochs" if IDENTIFYING.get() else "max_epochs",
            per_epoch=steps_per_epoch, last=end if engine.schedule(end) > 0 else max(end - 1, 0),
            update_end=config.update_end, schedule=config.drop_schedule,
            drop=config.drop_fraction), UserWarning, stacklevel=7)
    return engine


def _example_batch(data: TrainSet, batch_size: int,
                   device: torch.device) -> tuple[Callable[[], Any] | None, float]:
    """An example batch, on demand, for timing layers at their real row counts.

    Returns the callable (the first two samples where all have one shape, else the first
    batch; ``None`` for a torch Dataset, whose loader would start its workers) and how many
    times larger a training batch is.
    """
    source = data.source
    if isinstance(source, _DatasetSource):
        return None, 1.0
    n = min(source.n_samples, batch_size)
    size = min(2, n) if source.uniform_samples else n

    def first() -> Any:
        return next(iter(source.batches(torch.arange(size), size, device)))[0]

    return first, n / size


def _materialise_lazy(module: nn.Module, source: BatchSource, device: torch.device) -> None:
    """Give the lazy layers of ``module`` (``nn.LazyLinear``, ...) their parameters: the
    first training sample goes through the network once.

    The pass runs in evaluation mode without gradients (modes restored); a torch Dataset's
    item is read with the global generators fixed. The lazy layers draw their weights from
    torch's global generator, as at their first call. Other networks are not touched.
    """
    if not any(isinstance(sub, LazyModuleMixin) and sub.has_uninitialized_params()
               for sub in module.modules()):
        return
    if isinstance(source, _DatasetSource):
        with fixed_global_rngs():
            x = _collate_inputs([source.dataset[0]], ids=source.ids,
                                dtype=source.dtype).to(device)
    else:
        x = next(iter(source.batches(torch.arange(1), 1, device)))[0]
    with evaluation(module):
        module(x)


def build_parts(
    config: TrainConfig,
    module: nn.Module,
    train: TrainSet,
    valid: EvalSet | None,
    *,
    world: LocalContext,
    precision: Precision,
    generator: torch.Generator,
    callbacks: list,
    masks: dict[str, torch.Tensor] | None = None,
    sparse_layers: Sequence[str] | None = None,
) -> TrainingParts:
    """The parts of a run, assembled once and made this process's by ``world.prepare``.

    ``module`` is on ``world.device``; ``generator`` draws masks and random regrowth;
    ``masks`` are a warm start's and ``sparse_layers`` the layers a resumed run trained in
    CSR form (see :func:`~rest_fair.sparse.compute.make_sparse_compute`). Lazy layers get
    their parameters first; sparse-gradient embeddings refuse Adam, AdamW and weight decay.
    """
    device, batch_size = world.device, config.batch_size
    _check_sparse_gradients(config, module)
    _materialise_lazy(module, train.source, device)
    sparsity = make_sparsity(module, config.sparse, steps_per_epoch=train.sampler.steps_per_epoch,
                             max_epochs=config.max_epochs, generator=generator, masks=masks,
                             warn=world.is_main)
    example, example_scale = _example_batch(train, batch_size, device)
    sparsity = make_sparse_compute(module, sparsity, SparseComputeConfig(
        mode=config.sparse_compute, threshold=config.sparse_compute_threshold,
        batch_size=batch_size, device=device, autocast_dtype=precision.dtype,
        grad_scaling=precision.scaler is not None, distributed=world.data_parallel,
    ), layers=sparse_layers, example=example, example_scale=example_scale)
    optimizer = make_optimizer(config.optimizer, module.parameters(), lr=config.lr,
                               momentum=config.momentum, weight_decay=config.weight_decay)
    if sparsity is not None:
        sparsity.bind_optimizer(optimizer)
    parts = TrainingParts(
        module=module,
        optimizer=optimizer,
        scheduler=make_scheduler(config.lr_scheduler, optimizer, max_epochs=config.max_epochs),
        objective=make_objective(config.objective, n_groups=train.n_groups,
                                 eta=config.groupdro_eta, device=device,
                                 all_reduce=world.all_reduce, world_size=world.world_size,
                                 adjustment=config.groupdro_adjustment,
                                 group_sizes=train.group_sizes),
        sparsity=sparsity, train=train, valid=valid, precision=precision, device=device,
        max_epochs=config.max_epochs, batch_size=batch_size,
        eval_batch_size=max(batch_size, 512), callbacks=callbacks, world=world,
    )
    world.prepare(parts)
    return parts
