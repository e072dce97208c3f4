"""Official WILDS metrics, computed without torch_scatter.

``dataset.eval`` in wilds 2.0.0 averages per group with ``torch_scatter``, which is
not declared by wilds and has no wheel on PyPI. :func:`wilds_eval` reproduces the
same numbers and key names with numpy, using WILDS' own groupers for the group ids
and names:

- every dataset: ``acc_avg`` (plain accuracy) and ``acc_wg`` (lowest accuracy over the
  non-empty groups), and per group ``acc_<group>`` and ``count_<group>``, where
  ``<group>`` is the grouper's field string (``y:landbird_background:land``);
  empty groups get accuracy 0 and count 0, as in WILDS;
- Waterbirds: ``adj_acc_avg`` (group accuracies weighted by the training counts
  3498/184/56/1057) *replaces* ``acc_avg``, as WILDS does;
- CivilComments: the 16 overlapping groups (each of 8 identities x label, identity
  present), ``acc_wg`` is the minimum over those 16 -- including, exactly as WILDS,
  any identity group that is empty in the evaluated split (accuracy 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ._compat import import_wilds_module
from .datasets import _CIVIL_IDENTITIES

__all__ = ["WATERBIRDS_TRAIN_COUNTS", "wilds_eval"]

#: Training-set group counts WILDS hard-codes for Waterbirds' ``adj_acc_avg``.
WATERBIRDS_TRAIN_COUNTS = {
    "y:landbird_background:land": 3498,
    "y:landbird_background:water": 184,
    "y:waterbird_background:land": 56,
    "y:waterbird_background:water": 1057,
}
_STANDARD = {"waterbirds": ("background", "y"), "celeba": ("male", "y")}
_UNSUPPORTED = (
    "wilds_eval knows the official metrics of waterbirds, celebA and civilcomments; "
    "got {!r}."
)
_LENGTHS = "y_pred has {} predictions but the evaluated data has {} samples."
_NEED_TRUTH = "Pass y_true and metadata together, or neither (they are read from `data`)."


def wilds_eval(
    data: Any,
    y_pred: ArrayLike,
    y_true: ArrayLike | None = None,
    metadata: Any = None,
) -> dict[str, float]:
    """Official WILDS metrics of predicted labels, as ``dataset.eval`` returns them.

    Parameters
    ----------
    data : WILDSDataset, WILDSSubset or WILDSSplit
        The evaluated data (or, with ``y_true`` and ``metadata``, any object of the
        same dataset; only its full dataset is used for the grouper).
    y_pred : array-like of shape (n_samples,)
        Predicted labels, in the order of ``data``.
    y_true : array-like of shape (n_samples,), optional
        True labels; default: ``data``'s.
    metadata : array-like or Tensor of shape (n_samples, n_fields), optional
        WILDS metadata rows; default: ``data``'s.

    Returns
    -------
    dict
        WILDS' result dictionary: ``acc_avg`` (``adj_acc_avg`` for Waterbirds),
        ``acc_wg``, ``acc_<group>`` and ``count_<group>``; plain floats.
    """
    base, y_true, metadata = _resolve(data, y_true, metadata)
    y_pred = np.asarray(y_pred).ravel()
    if len(y_pred) != len(y_true):
        raise ValueError(_LENGTHS.format(len(y_pred), len(y_true)))
    correct = (y_pred == y_true).astype(np.float64)
    name = base.dataset_name.lower()
    Grouper = import_wilds_module("wilds.common.grouper").CombinatorialGrouper

    if name in _STANDARD:
        grouper = Grouper(dataset=base, groupby_fields=list(_STANDARD[name]))
        group_results, worst = _group_results(correct, grouper, metadata)
        results = {"acc_avg": _mean(correct), **group_results, "acc_wg": worst}
        if name == "waterbirds":
            adjusted = sum(results[f"acc_{g}"] * n for g, n in WATERBIRDS_TRAIN_COUNTS.items())
            results["adj_acc_avg"] = adjusted / sum(WATERBIRDS_TRAIN_COUNTS.values())
            del results["acc_avg"]
        return results
    if name == "civilcomments":
        results = {"acc_avg": _mean(correct)}
        worst_values = []
        for identity in _CIVIL_IDENTITIES:
            grouper = Grouper(dataset=base, groupby_fields=[identity, "y"])
            group_results, _ = _group_results(correct, grouper, metadata, keep=f"{identity}:1")
            results.update(group_results)
            worst_values += [v for k, v in group_results.items() if k.startswith("acc_")]
        results["acc_wg"] = min(worst_values) if worst_values else 0.0
        return results
    raise ValueError(_UNSUPPORTED.format(base.dataset_name))


def _group_results(
    correct: np.ndarray, grouper: Any, metadata: torch.Tensor, keep: str | None = None
) -> tuple[dict[str, float], float]:
    """Per-group accuracy and count with WILDS' key names (only of the groups whose name
    contains ``keep``, if given); worst over non-empty groups."""
    g = grouper.metadata_to_group(metadata).numpy().astype(np.int64)
    n_groups = int(grouper.n_groups)
    counts = np.bincount(g, minlength=n_groups).astype(np.float64)
    hits = np.bincount(g, weights=correct, minlength=n_groups)
    accs = np.divide(hits, counts, out=np.zeros(n_groups), where=counts > 0)
    results: dict[str, float] = {}
    for idx in range(n_groups):
        label = grouper.group_field_str(idx)
        if keep is not None and keep not in label:
            continue
        results[f"acc_{label}"] = float(accs[idx])
        results[f"count_{label}"] = float(counts[idx])
    nonempty = accs[counts > 0]
    worst = float(nonempty.min()) if nonempty.size else 0.0
    return results, worst


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def _resolve(data: Any, y_true: Any, metadata: Any) -> tuple[Any, np.ndarray, torch.Tensor]:
    subset = getattr(data, "subset", data)  # a WILDSSplit wraps its WILDS subset
    base = getattr(subset, "dataset", subset)
    if (y_true is None) != (metadata is None):
        raise ValueError(_NEED_TRUTH)
    if y_true is None:
        if hasattr(data, "metadata_array") and hasattr(data, "y") and data is not subset:
            y_true, metadata = data.y, data.metadata_array
        else:
            y_true, metadata = subset.y_array, subset.metadata_array
    y_true = np.asarray(y_true).ravel()
    metadata = torch.as_tensor(np.asarray(metadata)) if not torch.is_tensor(metadata) else metadata
    return base, y_true, metadata.long()
