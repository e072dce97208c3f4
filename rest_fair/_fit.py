"""Everything :meth:`RESTClassifier.fit` does between validating and training.

Input validation, label and group encoding, the validation split, reweighting, seeding,
model construction and the hand-over to :func:`rest_fair._training.train`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _num_samples, column_or_1d, validate_data

from ._data import _first_element, is_torch_dataset, make_source
from ._training import EvalSet, TrainSet, train
from ._validation import BAD_LENGTH, ONE_CLASS, check_sample_weight, encode_groups
from .models import build_module
from .reweighting import cell_weights, sample_weights_for
from .text import fit_text_input, text_input

__all__ = ["fit_estimator", "resolve_device", "take"]

NO_CUDA = "device={!r} was requested but CUDA is not available on this machine."
BAD_DEVICE = "device must be 'auto', 'cpu', 'cuda', 'cuda:<i>' or a torch.device; got {!r}."
DATASET_NEEDS_Y = "when X is a torch Dataset, y must be an array of its labels; got None."
BAD_VALIDATION_DATA = (
    "validation_data must be a tuple (X_val, y_val) or (X_val, y_val, groups_val); got {!r}."
)
EMPTY_DATASET = "X is an empty torch Dataset; fit needs at least one sample."


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


def _validate_xy(est: Any, X: Any, y: Any) -> tuple[Any, np.ndarray]:
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


def fit_estimator(
    est: Any, X: Any, y: Any, groups: Any, sample_weight: Any, validation_data: Any
) -> Any:
    """Validate, prepare and train; sets the fitted attributes of ``est``."""
    from tqdm.auto import tqdm

    est.__dict__.pop("inference_module_", None)  # belongs to the previous fit
    X, y = _validate_xy(est, X, y)
    n = len(y)
    classes, y_codes = _encode_labels(y)
    group_codes, group_labels = encode_groups(groups, n)
    sw = check_sample_weight(sample_weight, n)
    seed = int(check_random_state(est.random_state).randint(0, 2**31 - 1))
    device = resolve_device(est.device)

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

    X_train = take(X, train_idx) if len(train_idx) < n else X
    y_train, sw_train = y_codes[train_idx], sw[train_idx]
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)

        if est.infer_groups == "jtt":
            from .jtt import identify_errors

            errors = identify_errors(est, X_train, classes[y_train], seed=seed)
            g_train, train_group_labels = errors.astype(np.int64), [False, True]
            if not errors.any():
                g_train = np.zeros(len(errors), dtype=np.int64)
            est.inferred_groups_ = np.zeros(n, dtype=bool)
            est.inferred_groups_[train_idx] = errors
            est.inferred_groups_overlap_ = None
            if groups is not None:
                from .jtt import overlap_report
                from .reweighting import minority_mask

                truth = minority_mask(y_train, group_codes[train_idx])
                est.inferred_groups_overlap_ = overlap_report(errors, truth)
        else:
            g_train, train_group_labels = group_codes[train_idx], group_labels
            est.inferred_groups_ = None
            est.inferred_groups_overlap_ = None

        weights = cell_weights(y_train, g_train, train_group_labels, est.upweight)
        per_sample = sample_weights_for(y_train, g_train, weights)
        loss_w = sw_train * (per_sample if est.reweight == "loss" else 1.0)
        draw = None
        if est.reweight == "sampler" and len(set(weights.values())) > 1:
            draw = per_sample
        data = TrainSet(
            source=make_source(X_train, device=device, num_workers=est.num_workers),
            y=torch.as_tensor(y_train, dtype=torch.long),
            loss_weights=torch.as_tensor(loss_w / loss_w.mean(), dtype=torch.float32),
            groups=torch.as_tensor(g_train, dtype=torch.long),
            n_groups=len(train_group_labels),
            draw_weights=draw,
        )
        module = build_module(
            est.module,
            input_shape=data.source.sample_shape,
            n_classes=len(classes),
            module_params=est.module_params,
        ).to(device)
        with tqdm(total=est.max_epochs, desc="REST", disable=not est.verbose,
                  leave=False) as progress:
            result = train(est, module, data, valid, device=device, generator=generator,
                           callbacks=list(est.callbacks or []), progress=progress)

    est.classes_ = classes
    est.module_ = module
    est.masks_ = result.masks
    est.history_ = result.history
    est.best_epoch_ = result.best_epoch
    est.n_topology_updates_ = result.n_topology_updates
    est.n_train_steps_ = result.n_steps
    est.group_weight_history_ = result.group_weight_history
    est.groups_ = list(train_group_labels)
    est.group_weights_ = {
        (classes[c].item() if hasattr(classes[c], "item") else classes[c],
         train_group_labels[g]): w
        for (c, g), w in weights.items()
    }
    return est
