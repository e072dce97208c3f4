"""Checks of estimator parameters and of the arrays given to ``fit``.

Error messages are module constants so that tests and users can match them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from .reweighting import REWEIGHT_MODES
from .sparse import DROP_SCHEDULES, LAYER_DENSITIES, REGROW_MODES, SPARSE_INITS

__all__ = ["check_params", "check_sample_weight", "encode_groups"]

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULERS = ("plateau", "cosine", "constant")
OBJECTIVES = ("erm", "groupdro")
INFER_GROUPS = ("jtt",)

BAD_OPTION = "{name} must be one of {options}; got {value!r}."
BAD_RANGE = "{name} must be {rule}; got {value!r}."
BAD_LENGTH = "{what} has {got} samples but X has {n}; they must have the same length."
BAD_GROUP_VALUES = "groups must not contain missing values (NaN/None); found {count}."
BAD_SAMPLE_WEIGHT = "sample_weight must be finite and non-negative; {problem}."
ONE_CLASS = (
    "RESTClassifier needs samples of at least 2 classes to fit; got 1 class ({label!r})."
)


def _option(name: str, value: Any, options: tuple) -> None:
    if not isinstance(value, str) or value not in options:
        raise ValueError(BAD_OPTION.format(name=name, options=options, value=value))


def _number(
    name: str, value: Any, *, low: float, high: float, low_open: bool, high_open: bool,
    integer: bool = False,
) -> None:
    kind = Integral if integer else Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        what = "an integer" if integer else "a number"
        rule = f"{what} in {left}{low}, {high}{right}"
        raise ValueError(BAD_RANGE.format(name=name, rule=rule, value=value))


def check_params(est: Any) -> None:
    """Validate the hyper-parameters of a :class:`~rest_fair.RESTClassifier`.

    Raises
    ------
    ValueError
        Naming the first parameter whose value is not allowed.
    """
    inf = float("inf")
    _number("sparsity", est.sparsity, low=0, high=1, low_open=False, high_open=True)
    _option("sparse_init", est.sparse_init, SPARSE_INITS)
    _option("layer_density", est.layer_density, LAYER_DENSITIES)
    if isinstance(est.dense_layers, str) or not all(
        isinstance(v, str) for v in (est.dense_layers or ())
    ):
        raise ValueError(BAD_RANGE.format(name="dense_layers", rule="a sequence of layer names",
                                          value=est.dense_layers))
    _option("regrow", est.regrow, REGROW_MODES)
    _number("drop_fraction", est.drop_fraction, low=0, high=1, low_open=False, high_open=False)
    _option("drop_schedule", est.drop_schedule, DROP_SCHEDULES)
    if est.update_interval != "auto":
        _number("update_interval", est.update_interval, low=1, high=inf, low_open=False,
                high_open=True, integer=True)
    _number("update_end", est.update_end, low=0, high=1, low_open=False, high_open=False)
    if not (est.upweight is None or isinstance(est.upweight, Mapping)):
        if isinstance(est.upweight, str):
            _option("upweight", est.upweight, ("balanced",))
        else:
            _number("upweight", est.upweight, low=0, high=inf, low_open=True, high_open=True)
    _option("reweight", est.reweight, REWEIGHT_MODES)
    _option("objective", est.objective, OBJECTIVES)
    _number("groupdro_eta", est.groupdro_eta, low=0, high=inf, low_open=True, high_open=True)
    if est.infer_groups is not None:
        _option("infer_groups", est.infer_groups, INFER_GROUPS)
    _number("jtt_epochs", est.jtt_epochs, low=1, high=inf, low_open=False, high_open=True,
            integer=True)
    _number("max_epochs", est.max_epochs, low=1, high=inf, low_open=False, high_open=True,
            integer=True)
    _number("batch_size", est.batch_size, low=1, high=inf, low_open=False, high_open=True,
            integer=True)
    _number("lr", est.lr, low=0, high=inf, low_open=True, high_open=True)
    _option("optimizer", est.optimizer, OPTIMIZERS)
    _number("momentum", est.momentum, low=0, high=1, low_open=False, high_open=True)
    _number("weight_decay", est.weight_decay, low=0, high=inf, low_open=False, high_open=True)
    _option("lr_scheduler", est.lr_scheduler, LR_SCHEDULERS)
    _number("validation_fraction", est.validation_fraction, low=0, high=1, low_open=False,
            high_open=True)
    _number("num_workers", est.num_workers, low=0, high=inf, low_open=False, high_open=True,
            integer=True)
    if not isinstance(est.device, str):
        import torch

        if not isinstance(est.device, torch.device):
            raise ValueError(BAD_RANGE.format(name="device", rule="'auto', 'cpu', 'cuda[:i]' "
                                              "or a torch.device", value=est.device))
    if est.module_params is not None and not isinstance(est.module_params, Mapping):
        raise ValueError(BAD_RANGE.format(name="module_params", rule="a dict or None",
                                          value=est.module_params))


def encode_groups(groups: Any, n_samples: int) -> tuple[np.ndarray, list[Hashable]]:
    """Integer codes of the groups of each sample.

    Parameters
    ----------
    groups : None, array-like of shape (n_samples,) or (n_samples, n_columns), or DataFrame
        Group label of each sample. Several columns (e.g. sensitive features) define
        intersectional groups, labelled by tuples of the column values.
    n_samples : int
        Expected length.

    Returns
    -------
    codes : ndarray of int64
        Index into ``labels`` of each sample's group.
    labels : list
        The distinct group labels, sorted where they can be compared.
    """
    if groups is None:
        return np.zeros(n_samples, dtype=np.int64), [0]
    import pandas as pd

    if isinstance(groups, pd.DataFrame) or (hasattr(groups, "ndim") and groups.ndim == 2):
        frame = pd.DataFrame(groups)
        if frame.shape[1] == 1:
            series = frame.iloc[:, 0]
        else:
            if frame.isna().to_numpy().any():
                raise ValueError(BAD_GROUP_VALUES.format(count=int(frame.isna().sum().sum())))
            series = pd.Series(list(frame.itertuples(index=False, name=None)))
    elif isinstance(groups, list) and groups and isinstance(groups[0], (list, tuple)):
        series = pd.Series([tuple(g) for g in groups])
    else:
        series = pd.Series(np.asarray(groups, dtype=object).ravel()
                           if not isinstance(groups, pd.Series) else groups.to_numpy())
    if len(series) != n_samples:
        raise ValueError(BAD_LENGTH.format(what="groups", got=len(series), n=n_samples))
    missing = int(series.isna().sum())
    if missing:
        raise ValueError(BAD_GROUP_VALUES.format(count=missing))
    uniques = list(pd.unique(series))
    try:
        uniques = sorted(uniques)
    except TypeError:
        pass
    index = {label: i for i, label in enumerate(uniques)}
    codes = np.fromiter((index[v] for v in series), dtype=np.int64, count=len(series))
    return codes, [_plain(u) for u in uniques]


def _plain(value: Any) -> Hashable:
    """numpy scalars -> Python scalars, so labels print and compare naturally."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """Validated float64 sample weights (ones when ``None``).

    Raises
    ------
    ValueError
        On a length mismatch, NaN/inf, negative values or all zeros.
    """
    if sample_weight is None:
        return np.ones(n_samples, dtype=np.float64)
    sw = np.asarray(sample_weight, dtype=np.float64)
    if sw.ndim == 0:
        sw = np.full(n_samples, float(sw))
    if sw.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D; got shape {sw.shape}.")
    if len(sw) != n_samples:
        raise ValueError(BAD_LENGTH.format(what="sample_weight", got=len(sw), n=n_samples))
    if not np.all(np.isfinite(sw)):
        raise ValueError(BAD_SAMPLE_WEIGHT.format(problem="found NaN or inf"))
    if np.any(sw < 0):
        raise ValueError(BAD_SAMPLE_WEIGHT.format(problem=f"found {int((sw < 0).sum())} "
                                                  "negative values"))
    if not np.any(sw > 0):
        raise ValueError(BAD_SAMPLE_WEIGHT.format(problem="all sample weights are zero"))
    return sw
