"""Checks of estimator parameters and of the arrays given to ``fit``.

Parameters are checked against a declarative table, ``RESTClassifier._parameter_constraints``
(as scikit-learn's estimators do): each name maps to a list of allowed forms, built from the
small constraint classes below. Error messages are module constants so that tests and users
can match them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

__all__ = [
    "Interval",
    "Options",
    "TypeOf",
    "check_params",
    "check_sample_weight",
    "encode_groups",
]

BAD_OPTION = "{name} must be one of {options}; got {value!r}."
BAD_RANGE = "{name} must be {rule}; got {value!r}."
BAD_LENGTH = "{what} has {got} samples but X has {n}; they must have the same length."
BAD_GROUP_VALUES = "groups must not contain missing values (NaN/None); found {count}."
BAD_GROUP_NDIM = (
    "groups must be 1-D (one label per sample) or 2-D (one column per attribute); got an "
    "array of shape {shape}."
)
BAD_SAMPLE_WEIGHT = "sample_weight must be finite and non-negative; {problem}."
ONE_CLASS = (
    "RESTClassifier needs samples of at least 2 classes to fit; got 1 class ({label!r})."
)


@dataclass(frozen=True)
class Interval:
    """A real (or integer) number in a range; ``closed`` says which ends are included."""

    kind: type
    low: float
    high: float
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind) or not np.isfinite(value):
            return False
        low_ok = value >= self.low if self.closed in ("both", "left") else value > self.low
        high_ok = value <= self.high if self.closed in ("both", "right") else value < self.high
        return bool(low_ok and high_ok)

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        what = "an integer" if self.kind is Integral else "a number"
        high = "inf" if self.high == float("inf") else self.high
        return f"{what} in {left}{self.low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed tuple of strings."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        return f"one of {self.values}"


@dataclass(frozen=True)
class TypeOf:
    """An instance of the given types (``None`` is spelled ``type(None)``)."""

    types: tuple
    description: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types) and not (
            isinstance(value, bool) and bool not in self.types
        )

    def describe(self) -> str:
        return self.description


def check_params(est: Any) -> None:
    """Validate the hyper-parameters of ``est`` against its ``_parameter_constraints``.

    Raises
    ------
    ValueError
        Naming the first parameter whose value is not allowed and what is allowed.
    """
    for name, allowed in est._parameter_constraints.items():
        value = getattr(est, name)
        if any(c.accepts(value) for c in allowed):
            continue
        options = tuple(v for c in allowed if isinstance(c, Options) for v in c.values)
        if options and (isinstance(value, str) or len(allowed) == 1):
            # a misspelt option: list the options rather than every allowed form
            raise ValueError(BAD_OPTION.format(name=name, options=options, value=value))
        rule = " or ".join(c.describe() for c in allowed)
        raise ValueError(BAD_RANGE.format(name=name, rule=rule, value=value))


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

    ndim = getattr(groups, "ndim", None)
    if ndim is None and isinstance(groups, (list, tuple)):
        try:
            ndim = np.ndim(np.asarray(groups, dtype=object))
        except ValueError:  # ragged nested lists
            ndim = None
    if ndim is not None and ndim > 2:
        raise ValueError(BAD_GROUP_NDIM.format(shape=np.shape(groups)))
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
    index = pd.Index(uniques, dtype=object, tupleize_cols=False)
    codes = index.get_indexer(series.to_numpy(dtype=object)).astype(np.int64)
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
