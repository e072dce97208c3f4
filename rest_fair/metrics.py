"""Group metrics: worst-group accuracy and per-group accuracies.

These light-weight numpy functions are what the training loop uses for model selection;
fairlearn-based reports build on them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["group_accuracies", "worst_group_accuracy"]

_LENGTH_MISMATCH = "y_true, y_pred and groups must have the same length; got {}."


def group_accuracies(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike) -> dict:
    """Accuracy of each group present in ``groups``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels.
    groups : array-like of shape (n_samples,)
        Group label of each sample (any hashable values).

    Returns
    -------
    dict
        Group label -> accuracy, for every group with at least one sample.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    groups = np.asarray(groups)
    if not (len(y_true) == len(y_pred) == len(groups)):
        raise ValueError(_LENGTH_MISMATCH.format((len(y_true), len(y_pred), len(groups))))
    codes, labels = _factorize(groups)
    correct = (y_true == y_pred).astype(np.float64)
    counts = np.bincount(codes, minlength=len(labels))
    hits = np.bincount(codes, weights=correct, minlength=len(labels))
    return {label: hits[i] / counts[i] for i, label in enumerate(labels) if counts[i] > 0}


def worst_group_accuracy(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike) -> float:
    """Smallest accuracy over the groups present in ``groups``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels.
    groups : array-like of shape (n_samples,)
        Group label of each sample.

    Returns
    -------
    float
    """
    accs = group_accuracies(y_true, y_pred, groups)
    if not accs:
        raise ValueError("worst_group_accuracy needs at least one sample.")
    return float(min(accs.values()))


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list]:
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(list(values) if values.ndim > 1 else values))
    return np.asarray(codes, dtype=np.intp), list(uniques)
