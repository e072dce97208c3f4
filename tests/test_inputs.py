"""The input containers ``fit`` and ``predict`` read (``rest_fair._inputs``, ``_data``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
