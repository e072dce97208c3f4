"""The training loop behind :meth:`RESTClassifier.fit`.

Kept apart from the estimator so the estimator stays a thin layer of validation and
bookkeeping. :func:`train` runs the epochs: weighted sampling, forward/backward, optimizer
step, mask re-application and topology updates (:mod:`rest_fair.sparse`), validation,
worst-group model selection, learning-rate schedule and callbacks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._data import BatchSource
from .metrics import worst_group_accuracy
from .objectives import make_objective
from .reweighting import draw_indices
from .sparse import DropSchedule, DynamicSparsity, MaskSet

__all__ = ["EvalSet", "TrainResult", "TrainSet", "predict_logits", "train"]


@dataclass
class TrainSet:
    """Training data in the form the loop needs."""

    source: BatchSource
    y: torch.Tensor  # class codes (long)
    loss_weights: torch.Tensor  # per-sample loss weights, mean 1
    groups: torch.Tensor  # group codes (long)
    n_groups: int
    draw_weights: np.ndarray | None  # sampler weights, or None for a plain shuffle


@dataclass
class EvalSet:
    """Validation data."""

    source: BatchSource
    y: np.ndarray  # class codes
    groups: np.ndarray | None  # group codes, None when unknown


@dataclass
class TrainResult:
    """What the loop hands back to the estimator."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    n_topology_updates: int = 0
    n_steps: int = 0
    group_weight_history: list[list[float]] | None = None


def _make_optimizer(est: Any, module: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if est.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=est.lr, momentum=est.momentum, weight_decay=est.weight_decay
        )
    cls = torch.optim.Adam if est.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=est.lr, weight_decay=est.weight_decay)


def _make_scheduler(est: Any, optimizer: torch.optim.Optimizer) -> Any:
    if est.lr_scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=5)
    if est.lr_scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=est.max_epochs)
    return None


@torch.no_grad()
def predict_logits(
    module: nn.Module, source: BatchSource, *, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits of every sample of ``source`` in order, on the CPU."""
    was_training = module.training
    module.eval()
    order = torch.arange(source.n_samples)
    out = [module(x).float().cpu() for x, _ in source.batches(order, batch_size, device)]
    module.train(was_training)
    if not out:
        return torch.empty(0)
    return torch.cat(out)


def _evaluate(module: nn.Module, data: EvalSet, *, batch_size: int, device: torch.device) -> dict:
    logits = predict_logits(module, data.source, batch_size=batch_size, device=device)
    y = torch.as_tensor(data.y)
    loss = float(nn.functional.cross_entropy(logits, y))
    pred = logits.argmax(1).numpy()
    acc = float(np.mean(pred == data.y))
    wga = acc if data.groups is None else worst_group_accuracy(data.y, pred, data.groups)
    return {"valid_loss": loss, "valid_acc": acc, "valid_worst_group_acc": wga}


def _epoch_order(data: TrainSet, generator: torch.Generator) -> torch.Tensor:
    n = data.source.n_samples
    if data.draw_weights is None:
        return torch.randperm(n, generator=generator)
    return draw_indices(data.draw_weights, n, generator=generator)


def _n_batches(n: int, batch_size: int) -> int:
    # a trailing batch of one sample is skipped: BatchNorm cannot train on it
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


def resolve_update_interval(est: Any, steps_per_epoch: int) -> int:
    """``update_interval``, with ``"auto"`` meaning once per epoch."""
    return steps_per_epoch if est.update_interval == "auto" else int(est.update_interval)


def train(
    est: Any,
    module: nn.Module,
    data: TrainSet,
    valid: EvalSet | None,
    *,
    device: torch.device,
    generator: torch.Generator,
    callbacks: list,
    progress: Any = None,
) -> TrainResult:
    """Train ``module`` in place and load the selected checkpoint into it.

    Parameters
    ----------
    est : RESTClassifier
        Source of the hyper-parameters; its ``history_`` is updated every epoch.
    module : nn.Module
        The network, on ``device``.
    data : TrainSet
        Training data.
    valid : EvalSet or None
        Validation data; without it the last epoch is kept.
    device : torch.device
        Where to train.
    generator : torch.Generator
        CPU generator for masks, sampling and random regrowth.
    callbacks : list of Callback
        Training hooks.
    progress : tqdm or None
        Progress bar over epochs.

    Returns
    -------
    TrainResult
    """
    steps_per_epoch = _n_batches(data.source.n_samples, est.batch_size)
    total_steps = steps_per_epoch * est.max_epochs
    optimizer = _make_optimizer(est, module)
    scheduler = _make_scheduler(est, optimizer)
    objective = make_objective(
        est.objective, n_groups=data.n_groups, eta=est.groupdro_eta, device=device
    )

    sparsity: DynamicSparsity | None = None
    if est.sparsity > 0:
        masks = MaskSet.from_module(
            module,
            density=1.0 - est.sparsity,
            distribution=est.layer_density,
            init=est.sparse_init,
            dense_layers=est.dense_layers or (),
            generator=generator,
        )
        masks.apply_()
        if est.sparse_init == "random":  # pretrained weights keep their scale
            masks.rescale_init_()
        sparsity = DynamicSparsity(
            masks,
            schedule=DropSchedule(
                est.drop_fraction, int(est.update_end * total_steps), est.drop_schedule
            ),
            update_interval=resolve_update_interval(est, steps_per_epoch),
            regrow=est.regrow,
            generator=generator,
        )

    y_all = data.y.to(device)
    w_all = data.loss_weights.to(device)
    g_all = data.groups.to(device)
    result = TrainResult()
    best_key: tuple | None = None
    best_state: dict | None = None
    step = 0
    est.history_ = result.history
    for cb in callbacks:
        cb.on_train_begin(est)

    module.train()
    for epoch in range(1, est.max_epochs + 1):
        for cb in callbacks:
            cb.on_epoch_begin(est, epoch)
        start = time.perf_counter()
        order = _epoch_order(data, generator)[: steps_per_epoch * est.batch_size]
        loss_sum = torch.zeros((), device=device)
        seen = 0
        updates_before = sparsity.n_updates if sparsity is not None else 0
        for x, idx in data.source.batches(order, est.batch_size, device):
            idx = idx.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = objective(module(x), y_all[idx], w_all[idx], g_all[idx])
            loss.backward()
            optimizer.step()
            step += 1
            if sparsity is not None:
                sparsity.after_step(step, optimizer)
            loss_sum += loss.detach() * len(idx)
            seen += len(idx)
            if callbacks:
                lv = float(loss.detach())
                for cb in callbacks:
                    cb.on_batch_end(est, step, lv)

        record: dict[str, Any] = {"epoch": epoch, "train_loss": float(loss_sum) / max(seen, 1)}
        if valid is not None:
            record.update(_evaluate(module, valid, batch_size=max(est.batch_size, 512),
                                    device=device))
        record["density"] = sparsity.masks.density() if sparsity is not None else 1.0
        record["lr"] = optimizer.param_groups[0]["lr"]
        record["n_topology_updates"] = (
            sparsity.n_updates - updates_before if sparsity is not None else 0
        )
        if hasattr(objective, "end_epoch"):
            objective.end_epoch()

        key = (
            (record["valid_worst_group_acc"], record["valid_acc"])
            if valid is not None
            else (epoch,)
        )
        if best_key is None or key > best_key:
            best_key = key
            result.best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            result.masks = sparsity.masks.to_dict() if sparsity is not None else {}
        record["best"] = result.best_epoch == epoch

        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(record.get("valid_loss", record["train_loss"]))
            else:
                scheduler.step()
        record["dur"] = time.perf_counter() - start
        result.history.append(record)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(
                {k: f"{record[k]:.3f}" for k in ("train_loss", "valid_acc",
                                                 "valid_worst_group_acc") if k in record}
            )
        stop = False
        for cb in callbacks:
            stop = bool(cb.on_epoch_end(est, record)) or stop
        if stop:
            break

    for cb in callbacks:
        cb.on_train_end(est)
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    result.n_topology_updates = sparsity.n_updates if sparsity is not None else 0
    result.n_steps = step
    if hasattr(objective, "history"):
        result.group_weight_history = objective.history
    return result
