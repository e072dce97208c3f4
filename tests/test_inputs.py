"""The input containers ``fit`` and ``predict`` read (``rest_fair._inputs``, ``_data``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import DataConversionWarning

from rest_fair import RESTClassifier

ONE_EPOCH = dict(max_epochs=1, batch_size=32, lr=0.05, random_state=0, device="cpu",
                 validation_fraction=0.0, module_params={"hidden_layer_sizes": (8,)})


def _clf(**params) -> RESTClassifier:
    return RESTClassifier(**{**ONE_EPOCH, **params})


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int)


def test_arrays_of_negative_strides_are_read_as_their_copies(small):
    # torch refuses a numpy array with a negative stride (X[::-1], np.flip): fit,
    # validation_data and predict failed with torch's own message
    X, y = small
    flipped, labels = X[::-1, ::-1], y[::-1]
    clf = _clf().fit(flipped, labels, validation_data=(flipped, labels))
    copied = _clf().fit(flipped.copy(), labels, validation_data=(flipped.copy(), labels))
    np.testing.assert_array_equal(clf.predict_proba(flipped), copied.predict_proba(flipped.copy()))


def test_dataset_items_of_negative_strides_are_read(small):
    # a Dataset that flips its numpy items (a common augmentation) failed in the batch
    # collation
    X, y = small

    class Flipped(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(X)

        def __getitem__(self, i):
            return X[i, ::-1], y[i]

    plain = _clf().fit(X[:, ::-1].copy(), y).predict_proba(X[:, ::-1].copy())
    np.testing.assert_allclose(_clf().fit(Flipped(), y).predict_proba(Flipped()), plain,
                               atol=1e-6)


def test_a_read_only_item_is_copied_not_shared():
    # torch shares a read-only array's memory (with a warning that writing is undefined)
    from rest_fair._data import _first_element

    item = np.zeros(3, dtype=np.float32)
    item.flags.writeable = False
    _first_element(item).add_(1.0)
    assert not item.any()


def test_labels_that_mix_strings_and_numbers_are_named(small):
    # an int among strings failed in scikit-learn's sort with "'<' not supported between
    # instances of 'int' and 'str'", or read as "Unknown label type: unknown"
    X, y = small
    for first in ("a", 1):
        mixed = np.array([first] + ["a" if v else 1 for v in y[1:]], dtype=object)
        with pytest.raises(ValueError, match=r"^y mixes strings with labels of other types "
                                             r"\(int, str\); the labels must be all strings"):
            _clf().fit(X, mixed)
    as_str = np.array([np.str_("a"), "b"] * 30, dtype=object)  # numpy and Python strings
    assert _clf().fit(X, as_str).classes_.tolist() == ["a", "b"]


def test_validation_labels_and_groups_are_checked_under_their_names(small):
    X, y = small
    labels = np.where(y, "a", "b")
    val_labels = labels[:10].astype(object)
    val_labels[0] = None  # failed in a sort: "'<' not supported between 'str' and 'NoneType'"
    with pytest.raises(ValueError, match=r"^validation y must not contain missing values "
                                         r"\(NaN/None\); found 1\.$"):
        _clf().fit(X, labels, validation_data=(X[:10], val_labels))
    with pytest.raises(ValueError, match="validation y must not contain missing values"):
        _clf().fit(X, y, validation_data=(X[:10], np.r_[np.nan, y[1:10]]))  # read as unseen
    val_labels[0] = 3
    with pytest.raises(ValueError, match="validation y mixes strings"):
        _clf().fit(X, labels, validation_data=(X[:10], val_labels))
    with pytest.raises(ValueError, match=r"^validation_data has labels not seen in training: "
                                         r"\['c'\]\.$"):
        _clf().fit(X, labels, validation_data=(X[:10], np.full(10, "c")))
    with pytest.raises(ValueError, match=r"^validation groups has 5 samples but X has 10"):
        _clf().fit(X, y, groups=y, validation_data=(X[:10], y[:10], y[:5]))
    with pytest.raises(ValueError, match=r"^validation groups must not contain missing"):
        _clf().fit(X, y, groups=y, validation_data=(X[:10], y[:10], np.r_[np.nan, y[1:10]]))
    with pytest.warns(DataConversionWarning):  # as fit's own y of one column
        _clf().fit(X, y, validation_data=(X[:10], y[:10, None]))


def test_a_single_class_is_named_as_a_plain_value(small):
    X, _ = small
    with pytest.raises(ValueError, match=r"at least 2 classes to fit; got 1 class \('a'\)\.$"):
        _clf().fit(X, np.full(len(X), "a"))
