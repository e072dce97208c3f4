"""Fairness reports: a fairlearn ``MetricFrame`` per group plus a readable summary.

fairlearn and scikit-learn compute the numbers; this module chooses the metrics and lays
the result out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._validation import (
    BAD_GROUPS_SHAPE,
    checked_groups,
    checked_labels,
    checked_weights,
    refuse_missing,
)

__all__ = ["FairnessReport", "fairness_report"]

_NEED_PRED = "Pass either a fitted `estimator` and `X`, or `y_pred`; got neither."
_BOTH_PRED = "Pass either `estimator` (with `X`) or `y_pred`, not both."
_NEED_X = "`X` is required to predict with `estimator`."
_NEED_Y = "`y` (the true labels) is required."
_NO_SAMPLES = "fairness_report needs at least one sample; got none."
_NO_WEIGHT = (
    "sample_weight is 0 for all {n} samples: no group has a metric. Give some samples a "
    "positive weight."
)
_LENGTHS = "y, y_pred and groups must have the same number of samples; got {}."
_BAD_POS_LABEL = "pos_label={!r} is not one of the labels {}."
_POS_LABEL_MULTICLASS = (
    "pos_label={pos_label!r} applies to binary tasks only, and this one has the labels "
    "{labels} (its report has no selection rate, TPR or FPR); leave pos_label out."
)
_UNORDERED_LABELS = (
    "y and the predictions must hold labels of one kind (all strings or all numbers); got "
    "labels of several kinds, which do not sort."
)
_UNKNOWN_LABELS = "{where} holds labels {found} that are not among labels={labels}."
_ONE_LABEL = (
    "y and the predictions hold one label, {label!r}, and neither `labels` nor an estimator "
    "with classes_ says which others the task has: it is read as a binary task whose "
    "positive class is {label!r}. Pass labels= (e.g. the classifier's classes_) to say "
    "which task it is."
)

#: How the worst group of a metric is found: the minimum where a larger value is better.
_WORST = {"accuracy": "idxmin", "balanced_accuracy": "idxmin", "true_positive_rate": "idxmin",
          "false_positive_rate": "idxmax"}


@dataclass
class FairnessReport:
    """Per-group metrics of a classifier, as returned by :func:`fairness_report`.

    Attributes
    ----------
    frame : fairlearn.metrics.MetricFrame
        ``frame.overall``, ``frame.by_group``, ``frame.difference()``, ``frame.ratio()``...
    summary : pandas.DataFrame
        One row per rate metric: ``overall``, ``group_min``, ``group_max``,
        ``difference`` (max - min over groups), ``ratio`` (min / max) and
        ``worst_group`` (the group with the worst value: minimum for accuracies and
        TPR, maximum for FPR, empty for selection rate).
    worst_group : object
        Group with the lowest accuracy (a tuple for several sensitive columns).
    worst_group_accuracy : float
        Its accuracy.
    disparities : dict
        Fairness gaps (binary tasks only): ``demographic_parity_difference``,
        ``demographic_parity_ratio``, ``equalized_odds_difference``,
        ``equal_opportunity_difference``, ``accuracy_difference``.
    pos_label : object or None
        Positive label for the rate metrics; ``None`` for multiclass tasks.
    """

    frame: Any
    summary: pd.DataFrame
    worst_group: Any
    worst_group_accuracy: float
    disparities: dict = field(default_factory=dict)
    pos_label: Any = None

    @property
    def by_group(self) -> pd.DataFrame:
        """Per-group table: ``frame.by_group`` without the rows of combinations of
        sensitive values that no sample has (fairlearn lists them, all NaN)."""
        by_group = self.frame.by_group
        return by_group[by_group["count"].notna()]

    @property
    def overall(self) -> pd.Series:
        """Metrics on all samples (``frame.overall``)."""
        return self.frame.overall

    def to_text(self, *, digits: int = 3) -> str:
        """Readable multi-line summary: overall, by group, worst group, largest gaps."""
        with pd.option_context("display.width", 120, "display.max_columns", 20):
            by_group = self.by_group.copy()
            if "count" in by_group:
                by_group["count"] = by_group["count"].astype(int)
            lines = [
                "Overall:",
                _indent(self.overall.drop(labels="count", errors="ignore").round(digits)),
                "",
                "By group:",
                _indent(by_group.round(digits)),
                "",
                f"Worst group (accuracy): {_group_name(self.worst_group, self.frame)} "
                f"with accuracy {self.worst_group_accuracy:.{digits}f}",
                "",
                "Largest gaps between groups:",
                _indent(self.summary.round(digits)),
            ]
            if self.disparities:
                lines += ["", "Disparities:"]
                lines += [f"  {k}: {v:.{digits}f}" for k, v in self.disparities.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def fairness_report(
    estimator: Any = None,
    X: Any = None,
    y: ArrayLike | None = None,
    *,
    groups: Any,
    y_pred: ArrayLike | None = None,
    pos_label: Any = None,
    sample_weight: ArrayLike | None = None,
    labels: ArrayLike | None = None,
) -> FairnessReport:
    """Per-group accuracy, counts and error rates of a classifier, via fairlearn.

    Parameters
    ----------
    estimator : fitted classifier, optional
        Used to predict ``X`` when ``y_pred`` is not given.
    X : array-like, optional
        Inputs for ``estimator.predict``.
    y : array-like of shape (n_samples,)
        True labels.
    groups : array-like of shape (n_samples,) or (n_samples, n_features), DataFrame or dict
        Sensitive feature(s). Several columns give intersectional groups (one row of
        ``by_group`` per combination present).
    y_pred : array-like of shape (n_samples,), optional
        Predicted labels, instead of ``estimator`` and ``X``.
    pos_label : label, optional
        Positive class for selection rate, TPR and FPR on binary tasks (an error on a
        task with more labels). Default: ``estimator.classes_[1]`` when available, else the
        larger of the two labels.
    sample_weight : array-like of shape (n_samples,), optional
        Weights of every metric but ``count``. A group whose samples all weigh 0 has NaN
        metrics and takes no part in the worst group and the gaps; weights 0 for every
        sample are an error.
    labels : array-like, optional
        Every class of the problem, as ``labels`` of :mod:`sklearn.metrics` (e.g. a
        classifier's ``classes_``): it decides whether the task is binary, also when the
        samples show fewer classes; a label of ``y`` or the predictions outside it is an
        error. Default: ``estimator.classes_`` (with any label of ``y`` it never saw) when
        the estimator has it, else the labels that ``y`` and the predictions hold.

    Returns
    -------
    FairnessReport
        ``report.frame`` is the :class:`fairlearn.metrics.MetricFrame`; ``str(report)``
        is a readable summary.

    Notes
    -----
    Metrics: ``accuracy``, ``balanced_accuracy`` and ``count`` always; for binary tasks
    (two ``labels``; without them, at most two labels in ``y`` and the predictions) also
    ``selection_rate``, ``true_positive_rate`` and ``false_positive_rate``. A group
    without positives (negatives) has an undefined TPR (FPR), reported as NaN instead of
    fairlearn's 0 so that groups defined by the label do not show fake gaps.
    """
    from fairlearn.metrics import MetricFrame

    y_true, y_hat = _predictions(estimator, X, y, y_pred)
    sensitive = _sensitive(groups)
    refuse_missing(sensitive, "groups")
    if not (len(y_true) == len(y_hat) == len(sensitive)):
        raise ValueError(_LENGTHS.format((len(y_true), len(y_hat), len(sensitive))))
    if len(y_true) == 0:
        raise ValueError(_NO_SAMPLES)

    if isinstance(y_true[0], str) != isinstance(y_hat[0], str):  # numpy would cast to str
        raise ValueError(_UNORDERED_LABELS)
    try:
        present = np.unique(np.concatenate([y_true, y_hat]))
    except TypeError:  # labels that do not compare, e.g. strings beside numbers
        raise ValueError(_UNORDERED_LABELS) from None
    classes = getattr(estimator, "classes_", None)
    if labels is not None:
        labels = np.unique(np.asarray(labels).ravel())
        for where, values in (("y", y_true), ("y_pred", y_hat)):
            unknown = np.unique(values[~np.isin(values, labels)])
            if len(unknown):
                raise ValueError(_UNKNOWN_LABELS.format(where=where, found=unknown.tolist(),
                                                        labels=labels.tolist()))
        binary = len(labels) == 2
    elif classes is not None:  # and a label of y the estimator never saw
        labels = np.unique(np.concatenate([np.asarray(classes).ravel(), present]))
        binary = len(labels) == 2
    else:
        labels, binary = present, len(present) <= 2
        if len(present) == 1 and pos_label is None:
            warnings.warn(_ONE_LABEL.format(label=present.tolist()[0]), UserWarning,
                          stacklevel=2)
    if not binary and pos_label is not None:
        raise ValueError(_POS_LABEL_MULTICLASS.format(pos_label=pos_label,
                                                      labels=labels.tolist()))
    pos_label = _pos_label(pos_label, estimator, labels) if binary else None
    metrics = _metric_functions(pos_label)
    sample_params = None
    if sample_weight is not None:
        w = checked_weights(sample_weight, len(y_true))
        if not np.any(w > 0):
            raise ValueError(_NO_WEIGHT.format(n=len(w)))
        sample_params = {name: {"sample_weight": w} for name in metrics if name != "count"}

    with warnings.catch_warnings():
        # balanced accuracy of a single-class group warns; its value (recall) is fine
        warnings.filterwarnings("ignore", message=".*y_pred contains classes not in y_true.*")
        warnings.filterwarnings("ignore", message=".*A single label was found in.*")
        frame = MetricFrame(
            metrics=metrics,
            y_true=y_true,
            y_pred=y_hat,
            sensitive_features=sensitive,
            sample_params=sample_params,
        )
    accuracy = frame.by_group["accuracy"]
    worst = accuracy.index.tolist()[accuracy.argmin()]  # Python scalars, not numpy's
    return FairnessReport(
        frame=frame,
        summary=_summary(frame),
        worst_group=worst,
        worst_group_accuracy=float(accuracy.min()),
        disparities=_disparities(frame) if binary else {},
        pos_label=pos_label,
    )


def _predictions(
    estimator: Any, X: Any, y: ArrayLike | None, y_pred: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray]:
    if y is None:
        raise ValueError(_NEED_Y)
    if y_pred is not None and estimator is not None:
        raise ValueError(_BOTH_PRED)
    if y_pred is None:
        if estimator is None:
            raise ValueError(_NEED_PRED)
        if X is None:
            raise ValueError(_NEED_X)
        y_pred = estimator.predict(X)
    return checked_labels(y, "y").ravel(), checked_labels(y_pred, "y_pred").ravel()


def _sensitive(groups: Any) -> Any:
    """``groups`` as fairlearn's sensitive features: a Series or DataFrame indexed by position,
    named by strings (fairlearn refuses other names, e.g. those of ``pd.DataFrame(array)``)."""
    if isinstance(groups, Mapping):
        groups = pd.DataFrame({k: np.asarray(v) for k, v in groups.items()})
    if isinstance(groups, pd.DataFrame):
        if groups.shape[1] == 0:
            raise ValueError(BAD_GROUPS_SHAPE.format(shape=groups.shape))
        return groups.reset_index(drop=True).rename(columns=str)
    if isinstance(groups, pd.Series):
        series = groups.reset_index(drop=True)
        series.name = None if groups.name is None else str(groups.name)
        return series
    arr = checked_groups(groups)
    if arr.ndim == 2:
        return pd.DataFrame(arr, columns=[f"sensitive_feature_{i}" for i in range(arr.shape[1])])
    return pd.Series(arr, name="group")


def _pos_label(pos_label: Any, estimator: Any, labels: np.ndarray) -> Any:
    if pos_label is None:
        classes = getattr(estimator, "classes_", None)
        if classes is not None and len(classes) == 2:
            return classes[1]
        return labels[-1]  # the larger label (np.unique sorts; max() refuses strings)
    if pos_label not in set(labels.tolist()) and len(labels) == 2:
        raise ValueError(_BAD_POS_LABEL.format(pos_label, labels.tolist()))
    return pos_label


def _metric_functions(pos_label: Any) -> dict[str, Callable]:
    from fairlearn.metrics import count, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    metrics: dict[str, Callable] = {
        "accuracy": _rate(accuracy_score, None, undefined=_empty),
        "balanced_accuracy": _rate(balanced_accuracy_score, None, undefined=_empty),
    }
    if pos_label is not None:
        metrics.update({
            "selection_rate": _rate(selection_rate, pos_label, undefined=_empty),
            "true_positive_rate": _rate(true_positive_rate, pos_label,
                                        undefined=lambda positive: not positive.any()),
            "false_positive_rate": _rate(false_positive_rate, pos_label, undefined=np.all),
        })
    metrics["count"] = count
    return metrics


def _rate(
    metric: Callable, pos_label: Any, *, undefined: Callable[[np.ndarray], bool]
) -> Callable:
    """``metric`` at ``pos_label`` (``None``: a metric without one); NaN for a group where
    ``undefined(y_true == pos_label)``, samples of weight 0 left out: a group whose samples
    all weigh 0 has no metric, and one whose positives all weigh 0 has no TPR either."""

    def rate(y_true: ArrayLike, y_pred: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        positive = np.asarray(y_true) == pos_label
        if sample_weight is not None:
            positive = positive[np.asarray(sample_weight) > 0]
        if undefined(positive):
            return np.nan
        at = {} if pos_label is None else {"pos_label": pos_label}
        return metric(y_true, y_pred, sample_weight=sample_weight, **at)

    return rate


def _empty(positive: np.ndarray) -> bool:
    return not positive.size


def _summary(frame: Any) -> pd.DataFrame:
    table = pd.DataFrame({
        "overall": frame.overall, "group_min": frame.group_min(), "group_max": frame.group_max(),
        "difference": frame.difference(), "ratio": frame.ratio(),
    }).drop(index="count")
    worst = {}
    for name in table.index:
        column = frame.by_group[name].dropna()
        pick = _WORST.get(name)
        worst[name] = (None if column.empty else "" if pick is None
                       else _group_name(getattr(column, pick)(), frame))
    table["worst_group"] = pd.Series(worst)
    return table


def _disparities(frame: Any) -> dict[str, float]:
    diff = frame.difference()
    ratio = frame.ratio()
    return {
        "accuracy_difference": float(diff["accuracy"]),
        "demographic_parity_difference": float(diff["selection_rate"]),
        "demographic_parity_ratio": float(ratio["selection_rate"]),
        "equal_opportunity_difference": float(diff["true_positive_rate"]),
        "equalized_odds_difference": float(
            np.nanmax([diff["true_positive_rate"], diff["false_positive_rate"]])
        ),
    }


def _group_name(group: Any, frame: Any) -> str:
    names = list(frame.sensitive_levels)
    if isinstance(group, tuple) and len(names) == len(group):
        return ", ".join(f"{n}={v}" for n, v in zip(names, group, strict=True))
    return str(group)


def _indent(obj: Any) -> str:
    return "\n".join("  " + line for line in obj.to_string().splitlines())
