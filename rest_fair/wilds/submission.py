"""WILDS leaderboard prediction files.

The leaderboard takes, per dataset, seed and evaluation split, a file
``{dataset}_split:{split}_seed:{seed}_epoch:best_pred.csv`` holding one predicted
label per line, in the order of the split's samples (``dataset.get_subset(split)``
order), with no header. The training split is not submitted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .datasets import _check_split

__all__ = ["read_predictions", "submission_filename", "write_submission"]

_TRAIN = "The training split is not part of a WILDS submission; drop predictions['train']."
_EMPTY = "predictions is empty; give at least one evaluation split (e.g. 'val', 'test')."
_BAD_NAME = "{what} must be a non-empty string without '/' or ':'; got {value!r}."
_SIZE = "predictions[{split!r}] has {n} labels but {dataset}'s {split} split has {expected}."
_NOT_1D = "predictions[{split!r}] must be one label per sample (1-D); got shape {shape}."
_SEED = "seed must be a non-negative integer; got {!r}."


def submission_filename(dataset: str | Any, split: str, seed: int = 0) -> str:
    """Leaderboard file name, e.g. ``waterbirds_split:test_seed:0_epoch:best_pred.csv``.

    Parameters
    ----------
    dataset : str or WILDSDataset
        WILDS dataset name (``dataset.dataset_name``, e.g. ``"celebA"``).
    split : str
        Evaluation split, e.g. ``"val"`` or ``"test"``.
    seed : int, default=0
        Replicate number.

    Returns
    -------
    str
    """
    name = getattr(dataset, "dataset_name", dataset)
    _check_name("dataset", name)
    _check_name("split", split)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(_SEED.format(seed))
    return f"{name}_split:{split}_seed:{int(seed)}_epoch:best_pred.csv"


def write_submission(
    predictions: Mapping[str, ArrayLike],
    *,
    dataset: str | Any,
    out_dir: str | os.PathLike,
    seed: int = 0,
) -> list[Path]:
    """Write leaderboard prediction files, one per evaluation split.

    Parameters
    ----------
    predictions : mapping
        Split name -> predicted labels (integers) in the split's sample order.
    dataset : str or WILDSDataset
        Dataset name, or the dataset object -- then each split's length is checked.
    out_dir : path
        Folder for the files (created if needed).
    seed : int, default=0
        Replicate number in the file names.

    Returns
    -------
    list of pathlib.Path
        The written files.

    Raises
    ------
    ValueError
        If ``predictions`` contains ``"train"``, is empty, or a split has the wrong
        number of predictions.
    """
    if not predictions:
        raise ValueError(_EMPTY)
    if "train" in predictions:
        raise ValueError(_TRAIN)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = getattr(dataset, "dataset_name", dataset)
    written = []
    for split, labels in predictions.items():
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(_NOT_1D.format(split=split, shape=labels.shape))
        expected = _split_size(dataset, split)
        if expected is not None and expected != len(labels):
            raise ValueError(_SIZE.format(split=split, n=len(labels), dataset=name,
                                          expected=expected))
        path = out / submission_filename(name, split, seed)
        path.write_text("".join(f"{_label(v)}\n" for v in labels.tolist()))
        written.append(path)
    return written


def read_predictions(path: str | os.PathLike) -> np.ndarray:
    """Read a prediction file back (one label per line) as an integer array."""
    lines = Path(path).read_text().split()
    return np.asarray([int(v) for v in lines], dtype=np.int64)


def _label(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _split_size(dataset: Any, split: str) -> int | None:
    split_dict = getattr(dataset, "split_dict", None)
    if split_dict is None:
        return None
    _check_split(dataset, split)
    return int(np.sum(np.asarray(dataset.split_array) == split_dict[split]))


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value or any(c in value for c in "/:"):
        raise ValueError(_BAD_NAME.format(what=what, value=value))
