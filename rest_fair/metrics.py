"""Group metrics: per-group and worst-group accuracy, and a scikit-learn scorer of them.

:func:`fairness_report` is :mod:`rest_fair.fairness`'s, imported on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils.validation import column_or_1d

from ._lazy import lazy_attributes
from ._validation import (
    DICT_NOT_SPLIT,
    MISSING_VALUES,
    checked_groups,
    checked_labels,
    checked_weights,
)

if TYPE_CHECKING:  # imported lazily at run time (fairlearn, pandas)
    from .fairness import FairnessReport, fairness_report

__all__ = [
    "FairnessReport",
    "fairness_report",
    "group_accuracies",
    "make_worst_group_scorer",
    "worst_group_accuracy",
    "worst_group_accuracy_score",
]

_LENGTH_MISMATCH = "y_true, y_pred and groups must have the same length; got {}."
_MIXED_LABELS = (
    "y_true and y_pred must hold labels of one kind (all strings or all numbers); got "
    "dtypes {} and {}."
)
_NO_WEIGHT = (
    "sample_weight is 0 for all {n} samples: no group has an accuracy. Give some samples "
    "a positive weight."
)
_GROUPS_NOT_ROUTED = (
    "The worst-group accuracy scorer received no `groups`. Enable metadata routing with "
    "sklearn.set_config(enable_metadata_routing=True), build the scorer with "
    "make_worst_group_scorer() and pass groups to the search, e.g. "
    "GridSearchCV(...).fit(X, y, groups=groups) or "
    "cross_validate(..., params={'groups': groups}). A set_score_request call on the "
    "scorer replaces its request for groups unless it passes groups=True too."
)
_BAD_SCORER_WEIGHT = "sample_weight must be True, False or None; got {value!r}."
_GROUPS_REQUEST_REPLACED = (
    " It received sample_weight: scikit-learn's set_score_request replaces a scorer's "
    "requests, so set_score_request(sample_weight=True) dropped the one for groups. Use "
    "make_worst_group_scorer(sample_weight=True), or "
    "set_score_request(groups=True, sample_weight=True)."
)
_ROUTING_DISABLED = (
    "make_worst_group_scorer needs scikit-learn metadata routing, otherwise `groups` never "
    "reaches the scorer (nor the estimator's fit). Call "
    "sklearn.set_config(enable_metadata_routing=True) first."
)

__getattr__, __dir__ = lazy_attributes(
    __name__, {".fairness": ["FairnessReport", "fairness_report"]})


def group_accuracies(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, *,
                     sample_weight: ArrayLike | None = None) -> dict:
    """Accuracy of each group present in ``groups``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels.
    groups : array-like of shape (n_samples,) or (n_samples, n_columns), or dict of columns
        Group label of each sample (hashable, not missing); several columns (or a dict of
        them by name, as fairlearn's ``sensitive_features``) form intersectional groups,
        labelled by tuples of their values in column order (one column by its values).
    sample_weight : array-like of shape (n_samples,), optional
        Finite, non-negative weight of each sample: a group's accuracy is then the
        weighted share of its samples predicted correctly, and a group whose samples all
        weigh 0 is left out, as model selection in ``fit`` leaves it out.

    Returns
    -------
    dict
        Group label -> accuracy (a Python float), for every group with at least one sample
        (of positive weight, with ``sample_weight``).

    Raises
    ------
    ValueError
        On a length mismatch, labels of more than one column, missing values in the labels
        or groups, labels of two kinds (strings and others), invalid weights, or weights
        that are 0 for every sample.
    """
    y_true = column_or_1d(checked_labels(y_true, "y_true"), warn=True)
    y_pred = column_or_1d(checked_labels(y_pred, "y_pred"), warn=True)
    # every value of an object array; an array of another dtype holds values of one kind
    text = {isinstance(v, str) for a in (y_true, y_pred)
            for v in (a if a.dtype == object else a[:1])}
    if len(text) > 1:
        raise ValueError(_MIXED_LABELS.format(y_true.dtype, y_pred.dtype))
    # numpy's dates stay numpy's, of their unit, as fit labels them (pandas' are Timestamps)
    numpy_dates = isinstance(groups, np.ndarray) and groups.dtype.kind in "mM"
    columns = isinstance(groups, Mapping)
    if columns:
        import pandas as pd

        groups = pd.DataFrame({name: np.asarray(col) for name, col in groups.items()})
    groups = checked_groups(groups)
    if not (len(y_true) == len(y_pred) == len(groups)):
        raise ValueError(_LENGTH_MISMATCH.format((len(y_true), len(y_pred), len(groups)))
                         + (DICT_NOT_SPLIT if columns else ""))
    codes, labels = _factorize(groups, numpy_dates=numpy_dates)
    correct = (y_true == y_pred).astype(np.float64)
    if sample_weight is None:
        counts = np.bincount(codes, minlength=len(labels))
    else:
        weights = checked_weights(sample_weight, len(y_true))
        counts = np.bincount(codes, weights=weights, minlength=len(labels))
        if len(weights) and not np.any(counts > 0):
            raise ValueError(_NO_WEIGHT.format(n=len(weights)))
        correct *= weights
    hits = np.bincount(codes, weights=correct, minlength=len(labels))
    return {label: float(hits[i] / counts[i]) for i, label in enumerate(labels) if counts[i] > 0}


def worst_group_accuracy(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, *,
                         sample_weight: ArrayLike | None = None) -> float:
    """Smallest accuracy over the groups present in ``groups``.

    Parameters
    ----------
    y_true, y_pred, groups, sample_weight
        As in :func:`group_accuracies` (a group whose samples all weigh 0 takes no part).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        As :func:`group_accuracies`, and without samples.
    """
    accs = group_accuracies(y_true, y_pred, groups, sample_weight=sample_weight)
    if not accs:
        raise ValueError("worst_group_accuracy needs at least one sample.")
    return float(min(accs.values()))


def worst_group_accuracy_score(
    y_true: ArrayLike, y_pred: ArrayLike, *, groups: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
) -> float:
    """:func:`worst_group_accuracy` with ``groups`` as a keyword, for a scorer: a clear
    error when ``groups`` is missing (scikit-learn did not route it).

    Parameters
    ----------
    y_true, y_pred, groups, sample_weight
        As in :func:`group_accuracies`; ``groups`` is required.

    Returns
    -------
    float
    """
    if groups is None:
        raise ValueError(_GROUPS_NOT_ROUTED + (
            "" if sample_weight is None else _GROUPS_REQUEST_REPLACED))
    return worst_group_accuracy(y_true, y_pred, groups, sample_weight=sample_weight)


def make_worst_group_scorer(*, sample_weight: bool | None = None) -> Any:
    """Scikit-learn scorer for worst-group accuracy that requests ``groups``.

    For :class:`~sklearn.model_selection.GridSearchCV`,
    :func:`~sklearn.model_selection.cross_validate` and friends, with metadata routing
    enabled: the groups passed to the search are sliced per fold and sent to this scorer
    (and to the estimator, with ``RESTClassifier(...).set_fit_request(groups=True)``).
    Without routing, ``GridSearchCV(...).fit(X, y, groups=g)`` sends ``g`` only to the CV
    splitter.

    Parameters
    ----------
    sample_weight : bool or None, default=None
        ``True``: also request ``sample_weight``, for a weighted worst-group accuracy (see
        :func:`group_accuracies`). ``False``: do not, and score unweighted when a search
        passes it (to the estimator's fit). ``None``: scikit-learn's default, as its own
        scorers: a search given ``sample_weight`` raises
        :class:`~sklearn.exceptions.UnsetMetadataPassedError`. ``set_score_request``
        replaces a scorer's requests: on this scorer, call it with ``groups=True`` too.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y, groups=...)``; greater is better.

    Raises
    ------
    RuntimeError
        If metadata routing is not enabled.
    ValueError
        If ``sample_weight`` is not True, False or None.

    Examples
    --------
    >>> import sklearn
    >>> sklearn.set_config(enable_metadata_routing=True)
    >>> scorer = make_worst_group_scorer()
    >>> sklearn.set_config(enable_metadata_routing=False)
    """
    from sklearn import get_config
    from sklearn.metrics import make_scorer

    if not get_config().get("enable_metadata_routing", False):
        raise RuntimeError(_ROUTING_DISABLED)
    if sample_weight is not None and not isinstance(sample_weight, (bool, np.bool_)):
        raise ValueError(_BAD_SCORER_WEIGHT.format(value=sample_weight))
    return make_scorer(worst_group_accuracy_score).set_score_request(
        groups=True, sample_weight=None if sample_weight is None else bool(sample_weight))


def _factorize(values: np.ndarray, *, numpy_dates: bool = False) -> tuple[np.ndarray, list]:
    import pandas as pd

    if values.ndim > 1:
        # several columns: a group is a tuple of their values (intersectional groups); a
        # missing value inside a tuple is not a missing key to factorize, so look for it here
        missing = pd.isna(values).any(axis=tuple(range(1, values.ndim)))
        if missing.any():
            raise ValueError(MISSING_VALUES.format(what="groups", count=int(missing.sum())))
        values = pd.Series([tuple(row) for row in values], dtype=object)
    codes, uniques = pd.factorize(values if numpy_dates and values.ndim == 1
                                  else pd.Series(values))
    if (codes < 0).any():
        raise ValueError(MISSING_VALUES.format(what="groups", count=int((codes < 0).sum())))
    return np.asarray(codes, dtype=np.intp), list(uniques)
