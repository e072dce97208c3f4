"""Checks of estimator parameters, and of the labels, groups and weights of the metrics.

Parameters are checked against ``RESTClassifier._parameter_constraints``, which maps each
name to its allowed forms (the constraint classes below), as scikit-learn's estimators do.
Error messages are module constants so that tests and users can match them.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

__all__ = [
    "IDENTIFYING",
    "NON_NEGATIVE_INT",
    "POSITIVE_INT",
    "RANDOM_STATE",
    "Interval",
    "Options",
    "TypeOf",
    "check_param",
    "check_params",
    "checked_groups",
    "checked_labels",
    "checked_weights",
    "refuse_missing",
    "summable_weights",
    "unused_params",
    "warn_unused_params",
    "warnings_if",
]

#: True while JTT's identification model, a fit inside the fit, is fitted (in this thread or
#: task): it leaves the warnings of the data and network to the final fit, and its warnings
#: name its epochs ``jtt_epochs``.
IDENTIFYING: ContextVar[bool] = ContextVar("IDENTIFYING", default=False)

BAD_OPTION = "{name} must be one of {options}; got {value!r}."
BAD_RANGE = "{name} must be {rule}; got {value!r}."
UNUSED_PARAM = (
    "{name}={value!r} is only used when {setting} is {options}; with {setting}={current!r} "
    "it is ignored (its default is {default!r})."
)
BAD_WEIGHTS = (
    "sample_weight must hold one finite, non-negative weight per sample ({n}); got shape "
    "{shape} or values that are NaN, infinite or negative."
)
BAD_GROUPS_SHAPE = (
    "groups must be 1-D (one label per sample) or 2-D (one column per attribute, at least "
    "one); got shape {shape}."
)
BAD_LABELS_SHAPE = (
    "{what} must hold one label per sample (shape (n_samples,) or (n_samples, 1)); got shape "
    "{shape}. Class probabilities or one-hot rows? Pass the labels, e.g. estimator.predict(X)."
)
#: Added to a length error of groups given as a dict of columns.
DICT_NOT_SPLIT = (
    " A dict of columns is passed whole by scikit-learn's cross-validation and searches, "
    "which split only arrays and DataFrames of one row per sample: pass "
    "pandas.DataFrame(groups) there."
)
MISSING_VALUES = "{what} must not contain missing values (NaN/None); found {count}."
#: Integers go to numpy and torch as int64: an integer interval ends below this.
_INT64_END = 2**63
BAD_LENGTH = "{what} has {got} samples but X has {n}; they must have the same length."


@dataclass(frozen=True)
class Interval:
    """A real (or integer) number in a range; ``closed`` says which ends are included."""

    kind: type
    low: float
    high: float
    closed: str = "both"  # "both", "left", "right", "neither"
    note: str = ""  # why the range is what it is, added to the description

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        try:
            if not math.isfinite(value):
                return False
        except OverflowError:  # an int beyond float's range
            return False
        if self.kind is Integral and not -_INT64_END <= value < _INT64_END:
            return False
        low_ok = value >= self.low if self.closed in ("both", "left") else value > self.low
        high_ok = value <= self.high if self.closed in ("both", "right") else value < self.high
        return bool(low_ok and high_ok)

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        what = "an integer" if self.kind is Integral else "a number"
        high = "inf" if self.high == float("inf") else self.high
        if self.kind is Integral and self.high >= _INT64_END:
            high, right = "2**63", ")"
        note = f" ({self.note})" if self.note else ""
        return f"{what} in {left}{self.low}, {high}{right}{note}"


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


#: A count or size: an integer >= 1.
POSITIVE_INT = Interval(Integral, 1, float("inf"))
#: A count that may be 0: an integer >= 0.
NON_NEGATIVE_INT = Interval(Integral, 0, float("inf"))

#: The ``random_state`` forms of the estimator, as ``sklearn.utils.check_random_state``
#: takes them (a RandomState's seed is an integer in [0, 2**32 - 1]).
RANDOM_STATE = [TypeOf((type(None), np.random.RandomState), "None, a RandomState"),
                Interval(Integral, 0, 2**32 - 1, "both")]
#: The seeds of ``RANDOM_STATE``, None, or a numpy Generator to draw from: what the data
#: builders hand to ``numpy.random.default_rng``.
GENERATOR_SEED = [TypeOf((type(None), np.random.Generator), "None, a Generator"),
                  *RANDOM_STATE[1:]]


def check_param(name: str, value: Any, allowed: list) -> None:
    """Check that ``value`` has one of the ``allowed`` forms (constraint objects).

    Raises
    ------
    ValueError
        Naming the parameter ``name``, what is allowed and ``value``.
    """
    if any(c.accepts(value) for c in allowed):
        return
    options = tuple(v for c in allowed if isinstance(c, Options) for v in c.values)
    if options and (isinstance(value, str) or len(allowed) == 1):
        # a misspelt option: list the options rather than every allowed form
        raise ValueError(BAD_OPTION.format(name=name, options=options, value=value))
    rule = " or ".join(c.describe() for c in allowed)
    raise ValueError(BAD_RANGE.format(name=name, rule=rule, value=value))


def check_params(est: Any) -> None:
    """Validate the hyper-parameters of ``est`` against its ``_parameter_constraints``.

    Raises
    ------
    ValueError
        As :func:`check_param`, for the first parameter whose value is not allowed.
    """
    for name, allowed in est._parameter_constraints.items():
        check_param(name, getattr(est, name), allowed)


def unused_params(kind: type, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters, with their defaults, that the other ``params`` of an estimator of
    class ``kind`` leave unused, as ``kind._used_only_when`` declares them (a parameter
    name -> the parameter and its values that read the first)."""
    defaults = inspect.signature(kind).parameters
    return {name: defaults[name].default
            for name, (setting, values) in kind._used_only_when.items()
            if params[setting] not in values}


def warn_unused_params(est: Any, *, stacklevel: int = 3) -> None:
    """Warn of each parameter of ``est`` given a value other than its default that its
    other parameters leave unused (:func:`unused_params`); ``stacklevel`` 3 names the
    caller of the method that calls this one."""
    params = est.get_params(deep=False)
    for name, default in unused_params(type(est), params).items():
        if params[name] != default:
            setting, values = est._used_only_when[name]
            warnings.warn(UNUSED_PARAM.format(
                name=name, value=params[name], setting=setting, current=params[setting],
                default=default, options=" or ".join(map(repr, values))),
                UserWarning, stacklevel=stacklevel)


@contextlib.contextmanager
def warnings_if(warn: bool) -> Iterator[None]:
    """The block's warnings where ``warn`` is true (rank 0 of a data-parallel fit), none
    otherwise; only a silenced block sets a (process-wide) filter."""
    if warn:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def summable_weights(weights: np.ndarray) -> np.ndarray:
    """Non-negative float64 ``weights`` as they are, or divided by their largest where their
    sum overflows float64 (where only their ratios count: scores, a mean of 1)."""
    with np.errstate(over="ignore"):
        return weights if np.isfinite(weights.sum()) else weights / weights.max()


def checked_weights(sample_weight: Any, n: int) -> np.ndarray:
    """``sample_weight`` as float64 :func:`summable_weights` of ``n`` samples.

    Raises
    ------
    ValueError
        If it is not one finite, non-negative weight per sample (:data:`BAD_WEIGHTS`).
    """
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(BAD_WEIGHTS.format(n=n, shape=weights.shape))
    return summable_weights(weights)


def refuse_missing(values: np.ndarray, what: str) -> None:
    """Raise :data:`MISSING_VALUES` naming ``what`` if ``values`` hold NaN, None or pandas.NA."""
    import pandas as pd

    count = int(np.count_nonzero(pd.isna(values)))
    if count:
        raise ValueError(MISSING_VALUES.format(what=what, count=count))


def checked_labels(labels: Any, what: str) -> np.ndarray:
    """``labels`` as an array, refused naming ``what`` if it holds more than one column
    (:data:`BAD_LABELS_SHAPE`) or a missing value (:func:`refuse_missing`)."""
    array = np.asarray(labels)
    if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 1):
        raise ValueError(BAD_LABELS_SHAPE.format(what=what, shape=array.shape))
    refuse_missing(array, what)
    return array


def checked_groups(groups: Any) -> np.ndarray:
    """``groups`` (not a dict or DataFrame) as an array (a list's or tuple's of its objects,
    lest numpy turn a row ``("a", 1)`` into ``("a", "1")``; one column as its values),
    refused unless 1-D or 2-D with a column (:data:`BAD_GROUPS_SHAPE`)."""
    array = np.asarray(groups, dtype=object if isinstance(groups, (list, tuple)) else None)
    if array.ndim == 2 and array.shape[1] == 1:  # one column: its values, as fit reads it
        array = array[:, 0]
    if array.ndim not in (1, 2) or array.shape[1:] == (0,):  # a string, no column, ...
        raise ValueError(BAD_GROUPS_SHAPE.format(shape=array.shape))
    return array
