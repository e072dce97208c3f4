"""Everything :meth:`RESTClassifier.fit` does before the training loop.

Input validation, label and group encoding, the validation split, reweighting, seeding,
and the construction of the training parts (:mod:`rest_fair.training.parts`) that are
handed to :class:`rest_fair.training.TrainingRun`; resuming from a checkpoint and warm
starts; finally the fitted attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _num_samples, column_or_1d, validate_data

from ._data import _first_element, is_torch_dataset, make_source
from ._validation import BAD_LENGTH, ONE_CLASS, check_sample_weight, encode_groups
from .callbacks import check_callbacks
from .models import build_module
from .objectives import make_objective
from .reweighting import cell_weights, sample_weights_for
from .sparse.compute import make_sparse_compute
from .text import fit_text_input, text_input
from .training import (
    EpochSampler,
    EvalSet,
    Precision,
    TrainingParts,
    TrainingRun,
    TrainSet,
    TrainState,
    make_optimizer,
    make_scheduler,
    make_sparsity,
)
from .training.distributed import LocalContext

__all__ = ["fit_estimator", "resolve_device", "take"]

NO_CUDA = "device={!r} was requested but CUDA is not available on this machine."
BAD_DEVICE = "device must be 'auto', 'cpu', 'cuda', 'cuda:<i>' or a torch.device; got {!r}."
DATASET_NEEDS_Y = "when X is a torch Dataset, y must be an array of its labels; got None."
BAD_VALIDATION_DATA = (
    "validation_data must be a tuple (X_val, y_val) or (X_val, y_val, groups_val); got {!r}."
)
EMPTY_DATASET = "X is an empty torch Dataset; fit needs at least one sample."
WARM_START_MISMATCH = (
    "warm_start=True continues the fitted network, but {what} changed: it was {before!r}, "
    "now {after!r}. Fit a new estimator (or set warm_start=False) for other data."
)
SPARSE_INIT_RENAMED = (
    "sparse_init={value!r} is deprecated: the layer densities are now set by "
    "layer_density={value!r}, and sparse_init chooses how masks start ('random' or "
    "'magnitude'). sparse_init={value!r} is read as layer_density={value!r}, "
    "sparse_init='random'; the old spelling will stop working in a future release."
)
# parameters that do not change what a run computes: they may differ on resume
_RUN_INDEPENDENT = ("verbose", "callbacks", "device", "num_workers", "warm_start",
                    "distributed", "distributed_timeout", "sparse_compute",
                    "sparse_compute_threshold")


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; checks that CUDA exists if asked for."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(BAD_DEVICE.format(device)) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(NO_CUDA.format(device))
    return dev


def take(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array, sparse matrix or torch Dataset."""
    if is_torch_dataset(X):
        return torch.utils.data.Subset(X, idx.tolist())
    return X[idx]


def _validate_xy(est: Any, X: Any, y: Any, *, reset: bool = True) -> tuple[Any, np.ndarray]:
    if (text := fit_text_input(est, X, y)) is not None:
        return text
    if is_torch_dataset(X):
        if y is None:
            raise ValueError(DATASET_NEEDS_Y)
        n = len(X)
        if n == 0:
            raise ValueError(EMPTY_DATASET)
        y = column_or_1d(np.asarray(y), warn=True)
        if len(y) != n:
            raise ValueError(BAD_LENGTH.format(what="y", got=len(y), n=n))
        shape = tuple(_first_element(X[0]).shape)  # reads one item, once
        est.n_features_in_ = int(shape[0]) if shape else 1
        est.input_shape_ = shape
        check_classification_targets(y)
        return X, y
    if y is not None and not isinstance(y, str) and hasattr(y, "__len__"):
        try:
            n_x = _num_samples(X)
        except TypeError:
            n_x = None
        if n_x is not None and len(y) != n_x:
            raise ValueError(BAD_LENGTH.format(what="y", got=len(y), n=n_x))
    X, y = validate_data(
        est,
        X,
        y,
        reset=reset,
        accept_sparse="csr",
        allow_nd=True,
        dtype=(np.float32, np.float64),
    )
    check_classification_targets(y)
    est.input_shape_ = tuple(int(s) for s in X.shape[1:])
    return X, y


def _encode_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    encoder = LabelEncoder().fit(y)
    if len(encoder.classes_) < 2:
        raise ValueError(ONE_CLASS.format(label=encoder.classes_[0]))
    return encoder.classes_, encoder.transform(y)


def _split(
    y_codes: np.ndarray, group_codes: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Hold out ``fraction`` of the samples, stratified by (class, group) where possible."""
    from sklearn.model_selection import train_test_split

    n = len(y_codes)
    idx = np.arange(n)
    if fraction <= 0 or round(n * fraction) < 1 or n - round(n * fraction) < 2:
        return idx, None
    cells = y_codes * (int(group_codes.max()) + 1) + group_codes
    for stratify in (cells, y_codes, None):
        try:
            train_idx, val_idx = train_test_split(
                idx, test_size=fraction, random_state=seed, stratify=stratify
            )
        except ValueError:
            continue
        if len(np.unique(y_codes[train_idx])) >= 2:
            return np.sort(train_idx), np.sort(val_idx)
    return idx, None


def _eval_set(
    est: Any, validation_data: Any, classes: np.ndarray, device: torch.device
) -> EvalSet:
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError(BAD_VALIDATION_DATA.format(type(validation_data).__name__))
    X_val, y_val = validation_data[0], validation_data[1]
    groups_val = validation_data[2] if len(validation_data) == 3 else None
    if (tokens := text_input(est, X_val, fitting=True)) is not None:
        X_val = tokens
    elif not is_torch_dataset(X_val):
        X_val = validate_data(
            est, X_val, reset=False, accept_sparse="csr", allow_nd=True,
            dtype=(np.float32, np.float64),
        )
    n = len(X_val) if is_torch_dataset(X_val) else _num_samples(X_val)
    y_val = column_or_1d(np.asarray(y_val))
    if len(y_val) != n:
        raise ValueError(BAD_LENGTH.format(what="validation y", got=len(y_val), n=n))
    unknown = set(np.unique(y_val)) - set(classes)
    if unknown:
        raise ValueError(f"validation_data has labels not seen in training: {sorted(unknown)}.")
    y_codes = np.searchsorted(classes, y_val)
    g_codes = None if groups_val is None else encode_groups(groups_val, n)[0]
    return EvalSet(make_source(X_val, device=device, num_workers=est.num_workers), y_codes,
                   g_codes)


def _layer_density(est: Any) -> tuple[str, str]:
    """``(layer_density, sparse_init)``, reading the deprecated ``sparse_init='erk'``."""
    if est.sparse_init in ("erk", "uniform"):
        import warnings

        warnings.warn(SPARSE_INIT_RENAMED.format(value=est.sparse_init), FutureWarning,
                      stacklevel=4)
        return est.sparse_init, "random"
    return est.layer_density, est.sparse_init


def _update_interval(est: Any, steps_per_epoch: int) -> int:
    """``update_interval``, with ``"auto"`` meaning once per epoch."""
    return steps_per_epoch if est.update_interval == "auto" else int(est.update_interval)


def _plain(value: Any) -> Any:
    """A JSON form of a parameter value that is the same in every process."""
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    if isinstance(value, torch.nn.Module):
        return f"instance of {type(value).__module__}.{type(value).__qualname__}"
    return value


def _digest(*arrays: Any) -> str:
    import hashlib

    import scipy.sparse as sp

    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
        elif sp.issparse(a):
            a = a.tocsr()
            for part in (a.data, a.indices, a.indptr):
                h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(a, np.ndarray):
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).data)
        else:  # a torch Dataset: only its length is known without reading it
            h.update(f"dataset:{type(a).__qualname__}:{len(a)}".encode())
    return h.hexdigest()


def _fingerprint(est: Any, X: Any, y_codes: np.ndarray, group_codes: np.ndarray,
                 sw: np.ndarray, classes: np.ndarray, valid: EvalSet | None) -> dict:
    import json

    params = {k: _plain(v) for k, v in est.get_params(deep=False).items()
              if k not in _RUN_INDEPENDENT}
    return {
        "n_samples": len(y_codes),
        "input_shape": list(est.input_shape_),
        "classes": [str(c) for c in classes],
        "data_sha256": _digest(X, y_codes, group_codes, sw),
        "n_valid": None if valid is None else len(valid.y),
        "params": json.loads(json.dumps(params, default=repr, sort_keys=True)),
    }


def _train_groups(est: Any, X_train: Any, y_train: np.ndarray, classes: np.ndarray,
                  group_codes: np.ndarray, group_labels: list, groups: Any,
                  train_idx: np.ndarray, n: int, seed: int,
                  saved_errors: torch.Tensor | None,
                  world: LocalContext) -> tuple[np.ndarray, list, dict]:
    """Group codes the reweighting uses: the given groups, or JTT's error set."""
    if est.infer_groups != "jtt":
        est.inferred_groups_ = None
        est.inferred_groups_overlap_ = None
        return group_codes[train_idx], group_labels, {}
    from .jtt import identify_errors, overlap_report
    from .reweighting import minority_mask

    if saved_errors is not None:
        errors = saved_errors.numpy().astype(bool)
    else:
        errors = identify_errors(est, X_train, classes[y_train], seed=seed)
        # every rank upweights rank 0's error set
        errors = world.broadcast_(torch.as_tensor(errors, dtype=torch.uint8)).numpy() > 0
    g_train = errors.astype(np.int64) if errors.any() else np.zeros(len(errors), np.int64)
    est.inferred_groups_ = np.zeros(n, dtype=bool)
    est.inferred_groups_[train_idx] = errors
    est.inferred_groups_overlap_ = None
    if groups is not None:
        truth = minority_mask(y_train, group_codes[train_idx])
        est.inferred_groups_overlap_ = overlap_report(errors, truth)
    return g_train, [False, True], {"jtt_errors": torch.as_tensor(errors)}


def _check_warm_start(est: Any, classes: np.ndarray, shape_before: tuple) -> None:
    if not np.array_equal(np.asarray(est.classes_), classes):
        raise ValueError(WARM_START_MISMATCH.format(
            what="the classes", before=list(est.classes_), after=list(classes)))
    if tuple(shape_before) != tuple(est.input_shape_):
        raise ValueError(WARM_START_MISMATCH.format(
            what="the input shape", before=tuple(shape_before), after=est.input_shape_))


def _example_batch(data: TrainSet, batch_size: int,
                   device: torch.device) -> Callable[[], Any] | None:
    """One training batch, on demand, for timing layers at their real row counts.

    ``None`` for a torch Dataset, whose loader would start its workers just for this.
    """
    from ._data import _DatasetSource

    source = data.source
    if isinstance(source, _DatasetSource):
        return None

    def first() -> Any:
        order = torch.arange(min(source.n_samples, batch_size))
        return next(iter(source.batches(order, batch_size, device)))[0]

    return first


def _build_parts(est: Any, module: torch.nn.Module, data: TrainSet, valid: EvalSet | None,
                 *, world: LocalContext, precision: Precision, generator: torch.Generator,
                 callbacks: list, warm_masks: dict | None,
                 sparse_layers: list[str] | None = None) -> TrainingParts:
    device = world.device
    steps_per_epoch = data.sampler.steps_per_epoch
    layer_density, init = _layer_density(est)
    sparsity = make_sparsity(
        module,
        sparsity=est.sparsity,
        layer_density=layer_density,
        init=init,
        dense_layers=tuple(est.dense_layers or ()),
        regrow=est.regrow,
        drop_fraction=est.drop_fraction,
        drop_schedule=est.drop_schedule,
        update_interval=_update_interval(est, steps_per_epoch),
        update_end=est.update_end,
        steps_per_epoch=steps_per_epoch,
        max_epochs=est.max_epochs,
        generator=generator,
        masks=warm_masks,
    )
    sparsity = make_sparse_compute(
        module, sparsity, mode=est.sparse_compute, threshold=est.sparse_compute_threshold,
        batch_size=est.batch_size, device=device, autocast_dtype=precision.dtype,
        grad_scaling=precision.scaler is not None, distributed=world.data_parallel,
        layers=sparse_layers, example=_example_batch(data, est.batch_size, device),
    )
    optimizer = make_optimizer(est.optimizer, module.parameters(), lr=est.lr,
                               momentum=est.momentum, weight_decay=est.weight_decay)
    if sparsity is not None:
        sparsity.bind_optimizer(optimizer)
    parts = TrainingParts(
        module=module,
        optimizer=optimizer,
        scheduler=make_scheduler(est.lr_scheduler, optimizer, max_epochs=est.max_epochs),
        objective=make_objective(est.objective, n_groups=data.n_groups, eta=est.groupdro_eta,
                                 device=device, all_reduce=world.all_reduce,
                                 world_size=world.world_size),
        sparsity=sparsity,
        train=data,
        valid=valid,
        precision=precision,
        device=device,
        max_epochs=est.max_epochs,
        batch_size=est.batch_size,
        eval_batch_size=max(est.batch_size, 512),
        callbacks=callbacks,
        world=world,
    )
    world.prepare(parts)  # this process's parts: a data-parallel rank's
    return parts


def fit_estimator(
    est: Any,
    X: Any,
    y: Any,
    *,
    groups: Any = None,
    sample_weight: Any = None,
    validation_data: Any = None,
    resume_from: Any = None,
) -> Any:
    """Validate, prepare and train; sets the fitted attributes of ``est``."""
    from tqdm.auto import tqdm

    from .persistence.checkpoint import has_checkpoint, read_checkpoint
    from .training.distributed import resolve_distributed

    callbacks = check_callbacks(est.callbacks)
    warm = bool(est.warm_start) and hasattr(est, "module_") and resume_from is None
    shape_before = getattr(est, "input_shape_", None)
    est.__dict__.pop("inference_module_", None)  # belongs to the previous fit
    X, y = _validate_xy(est, X, y, reset=not warm)
    n = len(y)
    classes, y_codes = _encode_labels(y)
    if warm:
        _check_warm_start(est, classes, shape_before)
    group_codes, group_labels = encode_groups(groups, n)
    sw = check_sample_weight(sample_weight, n)
    seed = int(check_random_state(est.random_state).randint(0, 2**31 - 1))
    device = resolve_device(est.device)
    world = resolve_distributed(est.distributed, device, timeout=est.distributed_timeout)
    device = world.device
    seed = world.broadcast_object(seed)  # one split, one generator for all ranks
    precision = Precision(est.precision, device)

    valid = None
    train_idx = np.arange(n)
    if validation_data is not None:
        valid = _eval_set(est, validation_data, classes, device)
    else:
        train_idx, val_idx = _split(y_codes, group_codes, est.validation_fraction, seed)
        if val_idx is not None:
            valid = EvalSet(
                make_source(take(X, val_idx), device=device, num_workers=est.num_workers),
                y_codes[val_idx],
                group_codes[val_idx] if groups is not None else None,
            )
    fingerprint = _fingerprint(est, X, y_codes, group_codes, sw, classes, valid)
    world.check_same("data or parameters", fingerprint)
    # rank 0 reads; every rank resumes from its copy
    checkpoint = world.run_on_main(lambda: read_checkpoint(resume_from, fingerprint=fingerprint)
                                   if resume_from is not None and has_checkpoint(resume_from)
                                   else None)

    X_train = take(X, train_idx) if len(train_idx) < n else X
    y_train, sw_train = y_codes[train_idx], sw[train_idx]
    devices = [device.index or 0] if device.type == "cuda" else []
    sources = [] if valid is None else [valid.source]
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            saved_errors = (checkpoint or {}).get("extra", {}).get("jtt_errors")
            g_train, train_group_labels, extra = _train_groups(
                est, X_train, y_train, classes, group_codes, group_labels, groups,
                train_idx, n, seed, saved_errors, world)

            weights = cell_weights(y_train, g_train, train_group_labels, est.upweight)
            per_sample = sample_weights_for(y_train, g_train, weights)
            loss_w = sw_train * (per_sample if est.reweight == "loss" else 1.0)
            draw = None
            if est.reweight == "sampler" and len(set(weights.values())) > 1:
                draw = per_sample
            source = make_source(X_train, device=device, num_workers=est.num_workers)
            sources.append(source)
            data = TrainSet(
                source=source,
                y=torch.as_tensor(y_train, dtype=torch.long),
                loss_weights=None if np.all(loss_w == loss_w[0])
                else torch.as_tensor(loss_w / loss_w.mean(), dtype=torch.float32),
                groups=torch.as_tensor(g_train, dtype=torch.long),
                n_groups=len(train_group_labels),
                sampler=EpochSampler(source.n_samples, est.batch_size, draw, generator,
                                     rank=world.rank, world_size=world.world_size),
            )
            if warm:
                module = est.module_.to(device)
                module.train()
            else:
                module = build_module(
                    est.module,
                    input_shape=source.sample_shape,
                    n_classes=len(classes),
                    module_params=est.module_params,
                ).to(device)
            parts = _build_parts(est, module, data, valid, world=world, precision=precision,
                                 generator=generator, callbacks=callbacks,
                                 warm_masks=dict(est.masks_) if warm and est.masks_ else None,
                                 sparse_layers=(checkpoint or {}).get("sparse_compute_layers"))
            state = None
            if warm:
                state = TrainState(history=list(est.history_),
                                   epoch_offset=len(est.history_))
            run = TrainingRun(parts, generator=generator, state=state,
                              fingerprint=fingerprint, extra=extra)
            if checkpoint is not None:
                run.load_state_dict(checkpoint)
            with tqdm(total=est.max_epochs, initial=run.state.epoch, desc="REST",
                      disable=not est.verbose or not world.is_main,
                      leave=False) as progress:
                parts.progress = progress
                state = run.fit_loop(est)
    finally:
        for s in sources:
            s.close()

    steps_before = est.n_train_steps_ if warm else 0
    updates_before = est.n_topology_updates_ if warm else 0
    est.classes_ = classes
    est.module_ = parts.module
    est.masks_ = state.best_masks
    est.history_ = state.history
    est.best_epoch_ = state.best_epoch
    est.n_topology_updates_ = updates_before + (
        parts.sparsity.n_updates if parts.sparsity is not None else 0)
    est.n_train_steps_ = steps_before + state.step
    est.sparse_compute_layers_ = list(getattr(parts.sparsity, "converted", ()))
    est.group_weight_history_ = getattr(parts.objective, "history", None)
    est.groups_ = list(train_group_labels)
    est.group_weights_ = {
        (classes[c].item() if hasattr(classes[c], "item") else classes[c],
         train_group_labels[g]): w
        for (c, g), w in weights.items()
    }
    return est
