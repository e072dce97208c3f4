"""The input checks of ``fit`` (:func:`check_inputs`) and ``predict`` (:func:`check_x`),
and the encoding of labels and groups as integer codes. Error messages are module constants
so that tests and users can match them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _num_samples, column_or_1d, validate_data

from ._data import _first_element, fixed_global_rngs, is_torch_dataset
from ._validation import BAD_LENGTH, DICT_NOT_SPLIT, MISSING_VALUES, refuse_missing
from .reweighting import group_key
from .text import fit_text_input, text_input

__all__ = ["FitData", "check_inputs", "check_sample_weight", "check_x", "encode_groups", "take"]

BAD_GROUPS_TYPE = (
    "groups must hold one label per sample (an array, a list, a Series, a DataFrame or a "
    "dict of columns); got the string {value!r}."
)
MIXED_LABELS = (
    "{what} mixes strings with labels of other types ({types}); the labels must be all "
    "strings or all numbers."
)
UNSEEN_LABELS = "validation_data has labels not seen in training: {labels}."
TYPES_DIFFER = (
    "the {what} of validation_data and of training differ in type: validation_data holds "
    "{val_type} values where training holds {train_type} ones (e.g. {val!r} against "
    "{train!r}), and values of different types are different labels. Give both the same "
    "type, e.g. convert the validation {what} with .astype({train_type})."
)
UNHASHABLE_GROUPS = (
    "{what} must hold hashable labels (numbers, strings, bools, or tuples of them for "
    "several columns), one per sample; got {problem}."
)
BAD_GROUP_NDIM = (
    "groups must be 1-D (one label per sample) or 2-D (one column per attribute); got an "
    "array of shape {shape}."
)
NO_GROUP_COLUMNS = (
    "{what} has no columns (shape {shape}): give one column per attribute, or groups=None "
    "for one group."
)
GROUP_COLUMNS_DIFFER = (
    "the groups of validation_data have {val} column(s) (shape {val_shape}) and the training "
    "groups {train} (shape {train_shape}); a group is labelled by all its columns, so the "
    "validation groups must have the training groups' columns, in the same order."
)
BAD_SAMPLE_WEIGHT = "sample_weight must be finite and non-negative; {problem}."
ONE_CLASS = "RESTClassifier needs samples of at least 2 classes to fit; got 1 class ({label!r})."
DATASET_NEEDS_Y = "when X is a torch Dataset, y must be an array of its labels; got None."
BAD_VALIDATION_DATA = (
    "validation_data must be a tuple (X_val, y_val) or (X_val, y_val, groups_val); got {!r}."
)
BAD_VALIDATION_X = "validation_data's X_val cannot be read: {problem}"
EMPTY_DATASET = "X is an empty torch Dataset; fit needs at least one sample."
EMPTY_DATASET_TO_PREDICT = "X is an empty torch Dataset; there is no sample to predict."
NO_ITEM_FEATURES = (
    "the items of a torch Dataset given as X must hold at least one feature: an input of at "
    "least 1 dimension and no axis of size 0 (x.reshape(1) for a single feature); the first "
    "item's input has shape {shape}."
)
DATASET_SHAPE_CHANGED = (
    "X is a torch Dataset of items of shape {shape}, but the estimator was fitted on items "
    "of shape {fitted}."
)
SAMPLE_SHAPE_CHANGED = (
    "X holds samples of shape {shape}, but the estimator was fitted on samples of shape "
    "{fitted}; the network reads samples of that shape only."
)
WARM_START_MISMATCH = (
    "warm_start=True continues the fitted network, but {what} changed: it was {before!r}, "
    "now {after!r}. Fit a new estimator (or set warm_start=False) for other data."
)
BEYOND_FLOAT32 = (
    "X holds values beyond the float32 range ({count} of magnitude above {limit:.4g}); the "
    "network computes in float32, where they would be infinite. Rescale the features, "
    "e.g. with sklearn's StandardScaler."
)
MASKED_VALUES = (
    "X is a masked array with {count} masked value(s), which would be read as the values "
    "under the mask; fill them (X.filled(value)), or give X.data to train on those values."
)
NON_NUMERIC_COLUMNS = (
    "X must hold numbers (or booleans); its column(s) {columns} cannot be read as numbers. "
    "Encode them first, e.g. with scikit-learn's OneHotEncoder or OrdinalEncoder in a "
    "ColumnTransformer (a Pipeline keeps it with the estimator)."
)
DATES = (
    "X must hold numbers (or booleans); it holds {what} ({dtype}), which would be read as "
    "counts of their time unit. Convert them to the numbers the network should read "
    "first, e.g. days since a start date: (X - start) / np.timedelta64(1, 'D')."
)
RAGGED = (
    "X must hold samples of one shape (a row of as many features for each); numpy cannot "
    "make an array of this list: {problem}"
)
MISSING_IN_COLUMNS = (
    "X must not contain missing values (NaN, None or pd.NA); its column(s) {columns} hold "
    "{count}. Fill them first (e.g. with scikit-learn's SimpleImputer in a Pipeline), or "
    "drop those rows."
)
# what validate_data accepts as X: floats, and integers in their dtype (token ids)
_INTEGERS = (np.int64, np.int32, np.int16, np.int8, np.uint64, np.uint32, np.uint16, np.uint8)
_ARRAYS = {"accept_sparse": "csr", "allow_nd": True,
           "dtype": (np.float32, np.float64, *_INTEGERS)}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # native byte order


def take(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array, sparse matrix or torch Dataset, in ``X``'s dtype (a batch
    source converts each batch to the dtype the network reads)."""
    if is_torch_dataset(X):
        return torch.utils.data.Subset(X, idx.tolist())
    return X[idx]


@dataclass
class FitData:
    """``fit``'s inputs, checked and encoded."""

    X: Any  # array, sparse matrix, torch Dataset or TokenizedText
    y: np.ndarray  # class codes
    classes: np.ndarray
    groups: np.ndarray  # group codes (all 0 without groups)
    group_labels: list
    has_groups: bool
    sample_weight: np.ndarray
    validation: tuple | None  # validation_data: (X_val, class codes, group codes or None)
    validation_group_labels: list | None = None  # the labels of validation_data's group codes
    X_rows: np.ndarray | None = None  # the rows of an array X this data holds (None: all)

    def rows(self, idx: np.ndarray) -> FitData:
        """The data of the rows ``idx`` (sorted). A dense or sparse ``X`` is not copied:
        ``X_rows`` names its rows, which a batch source reads in place and :meth:`inputs`
        indexes; other inputs are indexed."""
        X, X_rows = self.X, self.X_rows
        if len(idx) < len(self.y):
            if isinstance(X, np.ndarray) or sp.issparse(X):
                X_rows = idx if X_rows is None else X_rows[idx]
            else:
                X = take(X, idx)
        return replace(self, X=X, X_rows=X_rows, y=self.y[idx], groups=self.groups[idx],
                       sample_weight=self.sample_weight[idx])

    def inputs(self) -> Any:
        """``X`` of this data's rows (the rows :func:`take` gives of an array)."""
        return self.X if self.X_rows is None else take(self.X, self.X_rows)


def check_inputs(est: Any, X: Any, y: Any, groups: Any, sample_weight: Any,
                 validation_data: Any, *, warm: bool) -> FitData:
    """Check and encode ``fit``'s inputs; with ``warm``, against the previous fit's.

    Sets ``n_features_in_``, ``input_shape_`` (and ``feature_names_in_``) on ``est``, as
    ``validate_data`` does, and ``classes_``, so that a callback can predict.
    """
    shape_before = getattr(est, "input_shape_", None)
    X, y = _validate_xy(est, X, y, reset=not warm)
    encoder = LabelEncoder().fit(y)
    classes, y_codes = encoder.classes_, encoder.transform(y)
    if len(classes) < 2:
        raise ValueError(ONE_CLASS.format(label=_plain(classes[0])))
    if warm:
        _check_warm_start(est.classes_, classes, shape_before, est.input_shape_)
    est.classes_ = classes
    group_codes, group_labels = encode_groups(groups, len(y))
    validation, validation_group_labels = (
        (None, None) if validation_data is None
        else _check_validation(est, validation_data, classes,
                               None if groups is None else (groups, group_labels)))
    return FitData(
        X, y_codes, classes, group_codes, group_labels, groups is not None,
        check_sample_weight(sample_weight, len(y)), validation, validation_group_labels,
    )


def _validate_xy(est: Any, X: Any, y: Any, *, reset: bool = True) -> tuple[Any, np.ndarray]:
    X, y = _from_tensor(X), _from_tensor(y)
    if y is not None:
        _check_label_values(y, "y")  # before scikit-learn's checks, which fail on None
        y = _numpy_labels(y)
    if (text := fit_text_input(X, y, est.module, est.module_params)) is not None:
        est.n_features_in_, est.input_shape_ = 1, ()  # one text per sample
        est.__dict__.pop("feature_names_in_", None)
        return text
    if is_torch_dataset(X):
        if y is None:
            raise ValueError(DATASET_NEEDS_Y)
        shape = _item_shape(X, EMPTY_DATASET)
        y = column_or_1d(np.asarray(y), warn=True)
        if len(y) != len(X):
            raise ValueError(BAD_LENGTH.format(what="y", got=len(y), n=len(X)))
        est.n_features_in_ = int(shape[0])
        est.input_shape_ = shape
        if reset:  # a Dataset has no column names: a previous DataFrame's are gone
            est.__dict__.pop("feature_names_in_", None)
        check_classification_targets(y)
        return X, y
    if y is not None and not isinstance(y, str) and hasattr(y, "__len__"):
        try:
            n_x = _num_samples(X)
        except TypeError:
            n_x = None
        if n_x is not None and len(y) != n_x:
            raise ValueError(BAD_LENGTH.format(what="y", got=len(y), n=n_x))
    X, y = _validate_data(est, X, y, reset=reset)
    _refuse_beyond_float32(X)
    check_classification_targets(y)
    est.input_shape_ = tuple(int(s) for s in X.shape[1:])
    return X, y


def _from_tensor(X: Any) -> Any:
    """A torch tensor as a detached numpy array on the CPU (whose integers scikit-learn's
    checks keep; a tensor's they read as float32), bfloat16 as float32; a sparse 2-D tensor
    as a CSR matrix, other sparse ones dense. Other inputs are returned as they are."""
    if not torch.is_tensor(X):
        return X
    X = X.detach().cpu()
    if X.dtype == torch.bfloat16:
        X = X.float()
    if X.layout == torch.strided:
        return X.numpy()
    coo = X.to_sparse_coo().coalesce()
    if X.dim() != 2 or coo.values().dim() != 1:
        return X.to_dense().numpy()
    rows, cols = coo.indices().numpy()
    return sp.csr_matrix((coo.values().numpy(), (rows, cols)), shape=tuple(X.shape))


def _validate_data(est: Any, X: Any, *args: Any, reset: bool) -> Any:
    """``validate_data(est, _array_input(X), *args)``; for a DataFrame it refuses, the error
    of :func:`_frame_problem`, which names the columns."""
    array = _array_input(X)
    try:
        return validate_data(est, array, *args, reset=reset, **_ARRAYS)
    except (TypeError, ValueError) as exc:
        if not _is_frame(X) or (problem := _frame_problem(X)) is None:
            raise
        raise ValueError(problem) from exc


def _frame_problem(frame: Any) -> str | None:
    """The columns that keep a DataFrame from being read as numbers: those with missing
    values (:data:`MISSING_IN_COLUMNS`), else those of no numbers
    (:data:`NON_NUMERIC_COLUMNS`); None if neither."""
    from pandas.api.types import is_numeric_dtype

    counts = np.asarray(frame.isna().sum())
    if missing := [i for i, dtype in enumerate(frame.dtypes) if counts[i] and (
            is_numeric_dtype(dtype) or _numbers(frame.iloc[:, i]))]:
        return MISSING_IN_COLUMNS.format(columns=_name_columns(frame, missing),
                                         count=int(counts[missing].sum()))
    if columns := [i for i in range(frame.shape[1]) if not _numbers(frame.iloc[:, i])]:
        return NON_NUMERIC_COLUMNS.format(columns=_name_columns(frame, columns))
    return None


def _is_frame(X: Any) -> bool:
    """Whether ``X`` is a DataFrame (2-D and indexed by position with ``iloc``)."""
    return hasattr(X, "iloc") and getattr(X, "ndim", 0) == 2


def _name_columns(frame: Any, columns: list[int]) -> str:
    """The names and dtypes of a DataFrame's ``columns`` (positions), the first 5 of them."""
    names = [f"{frame.columns[i]!r} ({frame.dtypes.iloc[i]})" for i in columns[:5]]
    more = f", and {len(columns) - 5} more" if len(columns) > 5 else ""
    return ", ".join(names) + more


def _numbers(column: Any) -> bool:
    """Whether a DataFrame's ``column`` reads as numbers: not dates or durations (which
    numpy would cast), and each value a number or a number's text."""
    if _dates(column.dtype):
        return False
    try:
        np.asarray(column, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _dates(dtype: Any) -> bool:
    """Whether ``dtype`` (numpy's or pandas') holds dates or durations."""
    return getattr(dtype, "kind", None) in ("m", "M")


def _array_input(X: Any) -> Any:
    """``X`` as scikit-learn's checks are to read it: a list or tuple as a numpy array (so
    that integers keep their dtype), a DataFrame as :func:`_frame_input` gives it.

    Raises
    ------
    ValueError
        For masked values (:data:`MASKED_VALUES`), dates or durations (:data:`DATES`) and a
        list of samples of different shapes (:data:`RAGGED`).
    """
    if np.ma.isMaskedArray(X) and (count := int(np.count_nonzero(np.ma.getmaskarray(X)))):
        raise ValueError(MASKED_VALUES.format(count=count))
    if isinstance(X, (list, tuple)):
        try:
            X = np.asarray(X)
        except ValueError as exc:  # numpy's message names no input
            raise ValueError(RAGGED.format(problem=exc)) from None
    if isinstance(X, np.ndarray) and _dates(X.dtype):
        raise ValueError(DATES.format(
            what="durations" if X.dtype.kind == "m" else "dates", dtype=X.dtype))
    return _frame_input(X) if _is_frame(X) else X


def _frame_input(frame: Any) -> Any:
    """``frame`` with its nullable columns (``Int64``, ``boolean``, ...) as numpy columns of
    their dtype (in a shallow copy), so that integers stay integers.

    Raises
    ------
    ValueError
        :func:`_frame_problem`'s, for dates or durations or missing nullable values.
    """
    dtypes = list(frame.dtypes)
    nullable = [i for i, dtype in enumerate(dtypes) if _numpy_dtype(dtype) is not None]
    if (any(_dates(dtype) for dtype in dtypes)
            or any(frame.iloc[:, i].hasnans for i in nullable)):
        raise ValueError(_frame_problem(frame))
    if not nullable:
        return frame
    frame = frame.copy(deep=False)
    for i in nullable:
        frame.isetitem(i, frame.iloc[:, i].to_numpy(dtype=_numpy_dtype(dtypes[i])))
    return frame


def _numpy_dtype(dtype: Any) -> np.dtype | None:
    """The numpy dtype of a pandas nullable dtype of numbers or booleans (``Int64``:
    int64, ``boolean``: bool); None for any other dtype."""
    numpy_dtype = getattr(dtype, "numpy_dtype", None)
    return numpy_dtype if getattr(numpy_dtype, "kind", "") in tuple("biuf") else None


def _numpy_labels(y: Any) -> Any:
    """``y``, a Series of a nullable dtype as the numpy array of its dtype (scikit-learn's
    checks would read ``Int64`` or ``boolean`` labels as floats)."""
    dtype = _numpy_dtype(getattr(y, "dtype", None))
    return y if dtype is None else y.to_numpy(dtype=dtype)


def _refuse_beyond_float32(X: Any) -> Any:
    """``X`` (validated), unless it holds values that are infinite in float32."""
    values = X.data if sp.issparse(X) else X
    if values.dtype.kind != "f" or values.dtype == np.float32 or values.size == 0:
        return X
    if values.max() > _FLOAT32_MAX or values.min() < -_FLOAT32_MAX:
        count = int(np.count_nonzero(np.abs(values) > _FLOAT32_MAX))
        raise ValueError(BEYOND_FLOAT32.format(count=count, limit=_FLOAT32_MAX))
    return X


def _item_shape(X: Any, empty: str) -> tuple:
    """The input shape of a torch Dataset's first item (read with fixed generators); raises
    ``empty`` without items, :data:`NO_ITEM_FEATURES` for an input without a feature."""
    if len(X) == 0:
        raise ValueError(empty)
    with fixed_global_rngs():
        shape = tuple(_first_element(X[0]).shape)
    if not shape or 0 in shape:
        raise ValueError(NO_ITEM_FEATURES.format(shape=shape))
    return shape


def _check_label_values(y: Any, what: str) -> None:
    """Refuse missing labels and labels that mix strings with other types, naming ``what``
    (scikit-learn's sort fails on them naming no input); other shapes are left to its
    checks."""
    try:
        labels = np.asarray(y)
    except ValueError:  # ragged: left to the shape checks
        return
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "fcO":
        return
    refuse_missing(labels, what)
    if labels.dtype == object:
        strings = np.fromiter((isinstance(v, str) for v in labels), bool, len(labels))
        if strings.any() and not strings.all():
            types = sorted({type(v).__name__ for v in labels[~strings]} | {"str"})
            raise ValueError(MIXED_LABELS.format(what=what, types=", ".join(types)))


def _check_warm_start(classes_before: np.ndarray, classes: np.ndarray,
                      shape_before: tuple, shape: tuple) -> None:
    if not np.array_equal(np.asarray(classes_before), classes):
        raise ValueError(WARM_START_MISMATCH.format(
            what="the classes", before=[_plain(c) for c in classes_before],
            after=[_plain(c) for c in classes]))
    if tuple(shape_before) != tuple(shape):
        raise ValueError(WARM_START_MISMATCH.format(
            what="the input shape", before=tuple(shape_before), after=shape))


def _check_validation(
    est: Any, validation_data: Any, classes: np.ndarray, groups: tuple[Any, list] | None
) -> tuple[tuple[Any, np.ndarray, np.ndarray | None], list | None]:
    """``(X_val, class codes, group codes or None)`` and the labels of the group codes,
    checked against the training ``classes`` and ``groups`` (the groups and their labels;
    None without groups)."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError(BAD_VALIDATION_DATA.format(type(validation_data).__name__))
    try:
        X_val = check_x(est, validation_data[0])
    except ValueError as exc:  # its messages call it X, as predict's
        raise ValueError(BAD_VALIDATION_X.format(problem=exc)) from exc
    y_val = _from_tensor(validation_data[1])
    groups_val = validation_data[2] if len(validation_data) == 3 else None
    n = len(X_val) if is_torch_dataset(X_val) else _num_samples(X_val)
    _check_label_values(y_val, "validation y")
    y_val = column_or_1d(np.asarray(_numpy_labels(y_val)), warn=True)
    if len(y_val) != n:
        raise ValueError(BAD_LENGTH.format(what="validation y", got=len(y_val), n=n))
    unknown = sorted(_plain(v) for v in set(np.unique(y_val)) - set(classes))
    if unknown:
        _check_types(unknown, [_plain(c) for c in classes], "labels")
        raise ValueError(UNSEEN_LABELS.format(labels=unknown))
    g_codes, g_labels = (None, None) if groups_val is None else encode_groups(
        groups_val, n, what="validation groups")
    if g_labels is not None and groups is not None:
        columns = (_n_columns(g_labels), _n_columns(groups[1]))
        if None not in columns and columns[0] != columns[1]:
            raise ValueError(GROUP_COLUMNS_DIFFER.format(
                val=columns[0], val_shape=_group_shape(groups_val), train=columns[1],
                train_shape=_group_shape(groups[0])))
        _check_types(g_labels, groups[1], "groups")
        known = set(groups[1])  # a label equal to a training one of another type is that one
        g_labels = [v if (key := group_key(known, v)) is None else key for v in g_labels]
    return (X_val, np.searchsorted(classes, y_val), g_codes), g_labels


def _n_columns(labels: list) -> int | None:
    """The number of group columns of :func:`encode_groups`'s ``labels``; None if ragged."""
    widths = {len(label) if isinstance(label, tuple) else 1 for label in labels}
    return widths.pop() if len(widths) == 1 else None


def _group_shape(groups: Any) -> tuple:
    """The shape of ``groups`` as given; a dict of columns's as a DataFrame's."""
    if isinstance(groups, Mapping):
        return (len(next(iter(groups.values()), ())), len(groups))
    return tuple(np.shape(groups))


def _check_types(values: list, known: list, what: str) -> None:
    """Refuse validation ``values`` that read as training ``known`` ones of another type
    (``'1'`` for ``1``, ``1.0`` for ``'1'``, column by column for tuples) with
    :data:`TYPES_DIFFER`; other unseen values are left to the caller."""
    as_text: dict = {}
    for k in known:
        for text in _as_texts(k):
            as_text.setdefault(text, k)
    known = set(known)
    for value in values:
        if value in known:
            continue
        train = next((as_text[t] for t in _as_texts(value) if t in as_text), None)
        if train is not None:
            val_item, train_item = value, train
            if isinstance(value, tuple):
                val_item, train_item = next(
                    ((v, t) for v, t in zip(value, train, strict=True)
                     if type(v) is not type(t)), (value, train))
            raise ValueError(TYPES_DIFFER.format(
                what=what, val=value, train=train, val_type=type(val_item).__name__,
                train_type=type(train_item).__name__))


def _as_texts(value: Any) -> list[Hashable]:
    """A label's texts: as given, and with integer-valued floats as integers (``1.0``:
    ``'1.0'``, ``'1'``); a tuple's column by column."""
    def text(v: Any, whole: bool) -> str:
        return str(int(v)) if whole and isinstance(v, float) and v.is_integer() else str(v)

    if isinstance(value, tuple):
        return [tuple(text(v, whole) for v in value) for whole in (False, True)]
    return [text(value, whole) for whole in (False, True)]


def check_x(est: Any, X: Any, *, fitted: Any = None) -> Any:
    """``X`` of ``validation_data`` or (with ``fitted``, the fitted module) of ``predict``:
    text tokenized, anything else checked against ``fit``'s inputs and sample shape."""
    X = _from_tensor(X)
    if (tokens := text_input(X, est.module, est.module_params, fitted=fitted)) is not None:
        return tokens
    if is_torch_dataset(X):
        _check_sample_shape(_item_shape(X, EMPTY_DATASET_TO_PREDICT), est.input_shape_,
                            DATASET_SHAPE_CHANGED)
        return X
    if not _passes_validation(est, X):
        X = _validate_data(est, X, reset=False)
        _check_sample_shape(tuple(X.shape[1:]), est.input_shape_, SAMPLE_SHAPE_CHANGED)
    return _refuse_beyond_float32(X)


def _check_sample_shape(shape: tuple, fitted: Any, message: str) -> None:
    """Refuse samples of another ``shape`` than the ``fitted`` one (not only the number of
    features: images of another height have as many)."""
    if shape != tuple(fitted):
        raise ValueError(message.format(shape=shape, fitted=tuple(fitted)))


def _passes_validation(est: Any, X: Any) -> bool:
    """Whether ``validate_data(est, X, reset=False, **_ARRAYS)`` would return ``X`` itself
    without a warning: a non-empty, finite float32 or float64 ndarray of ``est``'s sample
    shape, for an estimator fitted without feature names. Skipping the checks then saves
    most of a small batch's prediction time."""
    if (type(X) is not np.ndarray or X.dtype not in _FLOATS or X.ndim < 2 or X.size == 0
            or X.shape[1] != getattr(est, "n_features_in_", None)
            or X.shape[1:] != tuple(getattr(est, "input_shape_", ()))
            or hasattr(est, "feature_names_in_")):
        return False
    with np.errstate(over="ignore"):  # a sum that overflows is left to scikit-learn
        return bool(np.isfinite(X.sum()))


def encode_groups(groups: Any, n_samples: int, *,
                  what: str = "groups") -> tuple[np.ndarray, list[Hashable]]:
    """Integer codes of the groups of each sample.

    Parameters
    ----------
    groups : None, array-like of shape (n_samples,) or (n_samples, n_columns), DataFrame, \
or dict of columns
        Group label of each sample. Several columns (e.g. sensitive features, or a dict of
        them by name, as fairlearn takes them) define intersectional groups, labelled by
        tuples of the column values.
    n_samples : int
        Expected length.
    what : str, default="groups"
        The name errors give the input (e.g. ``"validation groups"``).

    Returns
    -------
    codes : ndarray of int64
        Index into ``labels`` of each sample's group.
    labels : list
        The distinct group labels, sorted where they can be compared, as given (numpy
        scalars as Python's, but numpy's dates and durations of their unit, pandas' as
        ``Timestamp`` / ``Timedelta``; see ``RESTClassifier.groups_``).
    """
    if groups is None:
        return np.zeros(n_samples, dtype=np.int64), [0]
    import pandas as pd

    groups = _from_tensor(groups)  # numpy reads no GPU or bfloat16 tensor

    if isinstance(groups, (str, bytes)):
        raise ValueError(BAD_GROUPS_TYPE.format(value=groups))
    columns = None
    if isinstance(groups, Mapping):  # sensitive features by name, as fairlearn takes them
        columns = [_column(v) for v in groups.values()]
        if lengths := [len(c) for c in columns if len(c) != n_samples]:
            # e.g. a whole data set's, given to one fold's fit
            raise ValueError(BAD_LENGTH.format(what=what, got=lengths[0], n=n_samples)
                             + DICT_NOT_SPLIT)

    ndim = getattr(groups, "ndim", None)
    if ndim is None and isinstance(groups, (list, tuple)):
        with contextlib.suppress(ValueError):  # ragged nested lists
            ndim = np.ndim(np.asarray(groups, dtype=object))
    if ndim is not None and ndim > 2:
        raise ValueError(BAD_GROUP_NDIM.format(shape=np.shape(groups)))
    if columns is not None or isinstance(groups, pd.DataFrame) or ndim == 2:
        if columns is None:  # a nested list as its columns too
            columns = ([groups.iloc[:, i] for i in range(groups.shape[1])]
                       if isinstance(groups, pd.DataFrame) else list(_numpy_groups(groups).T))
        if not columns:
            raise ValueError(NO_GROUP_COLUMNS.format(what=what, shape=_group_shape(groups)))
        if len(columns) == 1:
            values = columns[0]
        else:
            if missing := sum(int(pd.isna(column).sum()) for column in columns):
                raise ValueError(MISSING_VALUES.format(what=what, count=missing))
            values = pd.Series(list(zip(*columns, strict=True)), dtype=object)
    elif isinstance(groups, list) and groups and isinstance(groups[0], (list, tuple)):
        rows = [tuple(g) for g in groups]  # ragged: rows of different lengths
        if missing := sum(bool(pd.isna(v)) for row in rows for v in row):
            raise ValueError(MISSING_VALUES.format(what=what, count=missing))
        values = pd.Series(rows, dtype=object)
    else:
        values = _column(groups)
    if len(values) != n_samples:
        raise ValueError(BAD_LENGTH.format(what=what, got=len(values), n=n_samples))
    refuse_missing(values, what)
    try:
        codes, uniques = pd.factorize(values)
    except TypeError as exc:  # e.g. a dict or a set as a sample's label
        raise ValueError(UNHASHABLE_GROUPS.format(what=what, problem=exc)) from None
    uniques = list(uniques)
    try:
        order = np.array(sorted(range(len(uniques)), key=uniques.__getitem__), dtype=np.int64)
    except TypeError:  # labels that cannot be compared keep the order they came in
        order = np.arange(len(uniques))
    return np.argsort(order)[codes], [_plain(uniques[i]) for i in order]


def _column(groups: Any) -> Any:
    """One column of group labels: pandas' as a Series, anything else as a 1-D array."""
    import pandas as pd

    if isinstance(groups, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)):
        return pd.Series(groups)
    return _numpy_groups(groups).ravel()


def _numpy_groups(groups: Any) -> np.ndarray:
    """``groups`` as a numpy array: an array in its dtype of native byte order, anything
    else as an array of its objects (unconverted)."""
    if not isinstance(groups, np.ndarray):
        return np.asarray(groups, dtype=object)
    return groups.astype(groups.dtype.newbyteorder("="), copy=False)


def _plain(value: Any) -> Hashable:
    """numpy scalars as Python's, but numpy's dates and durations (of any unit) as they are."""
    if isinstance(value, np.generic) and not isinstance(value, (np.datetime64, np.timedelta64)):
        return value.item()
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """Validated float64 sample weights (ones when ``None``).

    Raises
    ------
    ValueError
        On values that are no real numbers, a length mismatch, NaN/inf, negative values or
        all zeros.
    """
    if sample_weight is None:
        return np.ones(n_samples, dtype=np.float64)
    given = np.asarray(_from_tensor(sample_weight))  # a tensor's on the CPU, as data
    try:
        if given.dtype.kind in "cmM":  # numpy would drop the imaginary part, or count units
            raise TypeError(f"dtype {given.dtype}")
        sw = given.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(BAD_SAMPLE_WEIGHT.format(
            problem=f"it holds values that are no real numbers ({exc})")) from None
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
