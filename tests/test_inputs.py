"""The input containers ``fit`` and ``predict`` read (``rest_fair._inputs``, ``_data``)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.exceptions import DataConversionWarning

from rest_fair import RESTClassifier
from rest_fair.sparse.compute import measure_layer

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


@pytest.mark.parametrize("what", ["labels", "groups"])
def test_validation_labels_of_another_type_are_named_as_such(small, what):
    # '0'/'1' against 0/1 were labels "not seen in training", and groups that the
    # validation set "has no samples of" (a warning), as if data were missing
    X, y = small

    def fit(train_type, val_type):
        y_fit, g_fit = y.astype(train_type), y.astype(train_type)
        y_val, g_val = y_fit[:10], g_fit[:10]
        if what == "labels":
            y_val = y_val.astype(val_type)
        else:
            g_val = g_val.astype(val_type)
        _clf().fit(X, y_fit, groups=g_fit, validation_data=(X[:10], y_val, g_val))

    with pytest.raises(ValueError, match=rf"^the {what} of validation_data and of training "
                                         r"differ in type: validation_data holds str values "
                                         r"where training holds int ones \(e\.g\. '[01]' "
                                         r"against [01]\).*\.astype\(int\)\.$"):
        fit(int, str)
    with pytest.raises(ValueError, match=rf"^the {what} .* holds int values where training "
                                         r"holds str ones \(e\.g\. [01] against '[01]'\)"):
        fit(str, int)
    # validation groups are compared only with groups given to fit
    with pytest.warns(UserWarning, match="fewer than 10 samples"):
        _clf().fit(X, y, validation_data=(X[:10], y[:10], y[:10].astype(str)))


@pytest.mark.parametrize("what", ["labels", "groups"])
@pytest.mark.parametrize("train, val", [(str, float), (float, str)])
def test_validation_labels_of_whole_floats_against_text_are_named_as_such(small, what, train,
                                                                         val):
    # 1.0 against '1' were labels "not seen in training": the text of 1.0 is '1.0'
    X, y = small
    y_fit, y_val = y.astype(train), y[:10].astype(val)
    g_val = y_fit[:10]
    if what == "groups":
        y_val, g_val = y_fit[:10], y_val
    with pytest.raises(ValueError, match=rf"^the {what} of validation_data and of training "
                                         rf"differ in type: validation_data holds "
                                         rf"{val.__name__} values where training holds "
                                         rf"{train.__name__} ones"):
        _clf().fit(X, y_fit, groups=y_fit, validation_data=(X[:10], y_val, g_val))


def test_validation_groups_of_several_columns_of_another_type_are_named_as_such(small):
    # a DataFrame of attribute columns read as text for validation was taken for groups
    # the validation set "has no samples of" (a warning), as if data were missing
    X, y = small
    groups = pd.DataFrame({"a": y, "b": 1 - y, "c": ["x"] * len(y)})
    with pytest.raises(ValueError, match=r"^the groups of validation_data and of training "
                                         r"differ in type: validation_data holds str values "
                                         r"where training holds int ones \(e\.g\. \('[01]', "
                                         r"'[01]', 'x'\) against \([01], [01], 'x'\)\)"):
        _clf().fit(X, y, groups=groups,
                   validation_data=(X[:10], y[:10], groups[:10].astype(str)))
    with pytest.raises(ValueError, match=r"holds int values where training holds str ones"):
        _clf().fit(X, y, groups=groups.astype(str),
                   validation_data=(X[:10], y[:10], groups[:10]))


def test_validation_groups_of_another_number_of_columns_are_refused_naming_both(small):
    X, y = small
    groups = pd.DataFrame({"a": y, "b": 1 - y})
    with pytest.raises(ValueError, match=r"^the groups of validation_data have 1 column\(s\) "
                                         r"\(shape \(10,\)\) and the training groups 2 "
                                         r"\(shape \(60, 2\)\)"):
        _clf().fit(X, y, groups=groups, validation_data=(X[:10], y[:10], y[:10]))
    with pytest.raises(ValueError, match=r"have 3 column\(s\) \(shape \(10, 3\)\) and the "
                                         r"training groups 2 \(shape \(60, 2\)\)"):
        _clf().fit(X, y, groups={"a": y, "b": 1 - y},
                   validation_data=(X[:10], y[:10], [(a, 1 - a, 0) for a in y[:10]]))
    # one column, 1-D or 2-D, labels groups alike (a one-epoch fit updates no topology)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _clf(drop_fraction=0.0).fit(X, y, groups=y[:, None], validation_data=(X, y, y))


def test_a_single_class_is_named_as_a_plain_value(small):
    X, _ = small
    with pytest.raises(ValueError, match=r"at least 2 classes to fit; got 1 class \('a'\)\.$"):
        _clf().fit(X, np.full(len(X), "a"))


# ------------------------------------------- predict's X: plain float arrays skip sklearn
def _sklearn_checked(est, X):
    """What ``check_x`` returns for ``X`` through scikit-learn's checks (or what they raise
    or warn, as text)."""
    import warnings

    from sklearn.utils.validation import validate_data

    from rest_fair._inputs import _ARRAYS, _refuse_beyond_float32

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = _refuse_beyond_float32(validate_data(est, X, reset=False, **_ARRAYS))
        except (TypeError, ValueError) as exc:
            out = f"{type(exc).__name__}: {exc}"
    return out, [str(w.message) for w in caught]


def _checked(est, X):
    import warnings

    from rest_fair._inputs import check_x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = check_x(est, X)
        except (TypeError, ValueError) as exc:
            out = f"{type(exc).__name__}: {exc}"
    return out, [str(w.message) for w in caught]


def _plain_arrays(X):
    read_only = X.copy()
    read_only.setflags(write=False)
    return {"float32": X, "float64": X.astype(np.float64), "fortran": np.asfortranarray(X),
            "strided": X[::2], "negative strides": X[::-1], "read-only": read_only}


def test_plain_float_arrays_skip_scikit_learns_checks_and_are_returned_as_they_do(
        small, monkeypatch):
    import rest_fair._inputs as inputs

    X, y = small
    clf = _clf().fit(X, y)
    for name, array in _plain_arrays(X).items():
        assert _checked(clf, array) == (array, []), name
        assert _sklearn_checked(clf, array)[0] is array, name
    calls = []
    monkeypatch.setattr(inputs, "validate_data", lambda *a, **k: calls.append(a))
    proba = clf.predict_proba(X)
    assert not calls  # most of a small batch's prediction time
    monkeypatch.undo()
    assert np.array_equal(clf.predict_proba(X.tolist()), proba)  # through scikit-learn


def _other_arrays(X):
    nan, inf, overflow = X.copy(), X.astype(np.float64), X.astype(np.float64)
    nan[3, 1] = np.nan
    inf[0, 0], overflow[:, 0] = -np.inf, 1e308  # overflow: finite, but its sum is not
    return {"NaN": nan, "inf": inf, "sum overflows": overflow, "3 features": X[:, :3],
            "1-D": X[0], "no samples": X[:0], "no features": X[:, :0],
            "big-endian": X.astype(">f4"), "float16": X.astype(np.float16),
            "int": X.astype(np.int64), "3-D": X[:, :, None], "subclass": X.view(_Subclass)}


class _Subclass(np.ndarray):
    """An ndarray subclass: scikit-learn returns it as a plain ndarray."""


def test_arrays_off_the_plain_path_get_scikit_learns_checks_and_messages(small):
    X, y = small
    clf = _clf().fit(X, y)
    for name, array in _other_arrays(X).items():
        out, warned = _checked(clf, array)
        if name == "3-D":  # as many features, but not the samples fit was given
            assert out == ("ValueError: X holds samples of shape (5, 1), but the estimator "
                           "was fitted on samples of shape (5,); the network reads samples "
                           "of that shape only."), name
            continue
        expected, expected_warned = _sklearn_checked(clf, array)
        assert warned == expected_warned, name
        if isinstance(expected, str):
            assert out == expected, name
        else:
            assert type(out) is type(expected) and np.array_equal(out, expected), name
    assert _checked(clf, X[:, :3])[0].startswith("ValueError: X has 3 features")


def test_an_array_for_an_estimator_fitted_with_feature_names_is_warned_about(small):
    import pandas as pd

    X, y = small
    clf = _clf().fit(pd.DataFrame(X, columns=list("abcde")), y)
    out, warned = _checked(clf, X)
    assert out is X
    assert warned == _sklearn_checked(clf, X)[1]
    assert warned == ["X does not have valid feature names, but RESTClassifier was fitted "
                      "with feature names"]
    renamed = pd.DataFrame(X, columns=list("abcdz"))
    assert _checked(clf, renamed)[0] == _sklearn_checked(clf, renamed)[0]
    assert "Feature names unseen at fit time" in _checked(clf, renamed)[0]


def test_a_refit_on_a_dataset_forgets_the_column_names_of_a_dataframe_fit(small):
    # they stayed, so arrays given to predict were warned about as lacking feature names
    X, y = small
    clf = _clf().fit(pd.DataFrame(X, columns=list("abcde")), y)
    clf.fit(torch.utils.data.TensorDataset(torch.from_numpy(X)), y)
    assert not hasattr(clf, "feature_names_in_")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.predict(X)


def test_a_dict_of_group_columns_that_cross_validation_passed_whole_is_explained():
    import sklearn
    from sklearn.model_selection import cross_validate

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    groups = {"a": rng.integers(0, 2, 80), "b": rng.integers(0, 2, 80)}
    estimator = RESTClassifier(max_epochs=1, device="cpu", random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        estimator.set_fit_request(groups=True)
        # scikit-learn splits arrays and DataFrames by fold, not a dict: each fold's fit gets
        # the whole data set's columns
        with pytest.raises(ValueError, match=r"groups has 80 samples but X has 40.*A dict of "
                           r"columns is passed whole.*pandas\.DataFrame\(groups\)"):
            cross_validate(estimator, X, y, params={"groups": groups}, cv=2,
                           error_score="raise")
        result = cross_validate(estimator, X, y, params={"groups": pd.DataFrame(groups)},
                                cv=2, return_estimator=True)
    assert len(result["estimator"][0].groups_) == 4


# ------------------------------------------------ samples of another shape than fit's
def test_samples_of_another_shape_with_as_many_features_are_named(small):
    # the second axis matched, so the network failed inside torch (a matrix product or a
    # convolution of the wrong shape)
    X, y = small
    mlp = _clf().fit(X, y)
    with pytest.raises(ValueError, match=r"samples of shape \(5, 3\), but the estimator was "
                       r"fitted on samples of shape \(5,\)"):
        mlp.predict(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"samples of shape \(5, 3\)"):
        mlp.predict_proba(np.zeros((2, 5, 3)).tolist())  # off the plain path
    with pytest.raises(ValueError, match=r"samples of shape \(5, 2\)"):
        _clf().fit(X, y, validation_data=(np.zeros((4, 5, 2), np.float32), y[:4]))
    images = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    labels = np.arange(40) % 2
    cnn = _clf(module_params=None).fit(images, labels)
    for shape in [(2, 1, 8), (2, 1, 64), (2, 1, 4, 4), (2, 1, 8, 8, 1)]:
        with pytest.raises(ValueError, match=r"fitted on samples of shape \(1, 8, 8\)"):
            cnn.predict(np.zeros(shape, np.float32))
    assert cnn.predict(images[:3]).shape == (3,)


def test_a_validation_x_that_cannot_be_read_is_named_as_such(small):
    # scikit-learn's messages name it X, which read as the training X
    X, y = small
    nan = X[:10].copy()
    nan[0, 0] = np.nan
    for X_val, problem in [(nan, "Input X contains NaN"),
                           (X[:10, :3], "X has 3 features, but RESTClassifier is expecting 5"),
                           (X[:0], r"Found array with 0 sample\(s\)")]:
        with pytest.raises(ValueError, match=rf"^validation_data's X_val cannot be read: "
                                             rf"{problem}"):
            _clf().fit(X, y, validation_data=(X_val, y[:len(X_val)]))


@pytest.mark.parametrize("groups", [np.empty((60, 0)), pd.DataFrame(index=range(60))],
                         ids=["array", "DataFrame"])
def test_groups_without_columns_are_refused(small, groups):
    # an (n, 0) array was read as one group, the empty tuple, without a word
    X, y = small
    with pytest.raises(ValueError, match=r"groups has no columns \(shape \(60, 0\)\)"):
        _clf().fit(X, y, groups=groups)


@pytest.mark.parametrize(("what", "bad"), [("dict", {"sex": "f"}), ("set", {1})])
def test_unhashable_group_labels_are_named(small, what, bad):
    # pandas' bare "TypeError: unhashable type: 'dict'" named no input
    X, y = small
    groups = [bad] * len(y)
    for fit in (lambda: _clf().fit(X, y, groups=groups),
                lambda: _clf().fit(X, y, groups=np.arange(60) % 2,
                                   validation_data=(X, y, groups))):
        with pytest.raises(ValueError, match=r"groups must hold hashable labels \(numbers, "
                                             rf".*got unhashable type: '{what}'"):
            fit()


def test_a_warm_start_with_other_classes_prints_them_as_python_values(small):
    X, y = small
    clf = _clf(warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match=r"it was \[0, 1\], now \[0, 2\]"):
        clf.fit(X, np.where(y == 1, 2, 0))


class _Items(torch.utils.data.Dataset):
    """60 items, each ``make(i)``."""

    def __init__(self, make) -> None:
        self.make = make

    def __len__(self) -> int:
        return 60

    def __getitem__(self, i):
        return self.make(i)


@pytest.mark.parametrize("item", [torch.tensor(0.5), torch.zeros(0), torch.zeros(3, 0, 4)])
def test_dataset_items_without_features_are_refused(small, item):
    # a 0-d item stopped in the network's Flatten with "Dimension out of range"; an item
    # with an axis of size 0 trained a network on no input at all
    _, y = small
    with pytest.raises(ValueError, match=r"must hold at least one feature.*the first item's "
                                         rf"input has shape {re.escape(str(tuple(item.shape)))}"):
        _clf().fit(_Items(lambda i: (item, 0)), y)


def test_a_dataset_item_of_the_wrong_kind_is_named_by_its_first_element(small):
    X, y = small
    with pytest.raises(TypeError, match=r"; got a tuple whose first element is a list\.$"):
        _clf().fit(_Items(lambda i: (X[i].tolist(), y[i])), y)
    with pytest.raises(TypeError, match=r"; got a dict\.$"):
        _clf().fit(_Items(lambda i: {"x": X[i]}), y)


def test_dataset_items_that_require_grad_are_read_as_data(small):
    # items computed by a module outside torch.no_grad(): without workers the fit
    # backpropagated into the user's module (its .grad filled); a worker could not send
    # the batch back ("Cowardly refusing to serialize non-leaf tensor") and the fit hung
    from multiprocessing.reduction import ForkingPickler

    from rest_fair._data import _collate_inputs

    X, y = small
    encoder = torch.nn.Linear(5, 5)
    items = _Items(lambda i: encoder(torch.from_numpy(X[i])))
    batch = _collate_inputs([items[0], items[1]])
    assert not batch.requires_grad
    ForkingPickler.dumps(batch)  # how a worker sends it (with torch.multiprocessing's reductions)
    _clf().fit(items, y)
    assert encoder.weight.grad is None


class _TokenBag(torch.nn.Module):
    """Mean of the embeddings of a sample's token ids, then a linear head."""

    def __init__(self, input_shape=None, n_classes=2):
        super().__init__()
        self.embed = torch.nn.Embedding(300, 4)
        self.head = torch.nn.Linear(4, n_classes)

    def forward(self, x):
        return self.head(self.embed(x).mean(1))


def test_integer_token_ids_reach_a_network_that_starts_with_an_embedding_as_int64():
    # integer X reached the network as float32, and torch's embedding refused it
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, size=(48, 5))
    y = (ids[:, 0] > 150).astype(int)
    given = ids.copy()
    clf = _clf(module=_TokenBag, module_params=None, max_epochs=2, sparsity=0.5)
    clf.fit(ids.astype(np.uint16), y, validation_data=(ids.astype(np.int32), y))
    logits = clf.predict_logits(ids)
    for dtype in (np.int16, np.uint16, np.int32):
        np.testing.assert_array_equal(clf.predict_logits(ids.astype(dtype)), logits)
    for given_as in (ids.tolist(), torch.from_numpy(ids), pd.DataFrame(ids)):
        np.testing.assert_array_equal(clf.predict_logits(given_as), logits)
    assert "head" in clf.efficiency_report().index  # its zero sample holds token id 0
    items = torch.utils.data.TensorDataset(torch.from_numpy(ids))
    np.testing.assert_array_equal(clf.predict_logits(items), logits)
    _clf(module=_TokenBag, module_params=None, validation_fraction=0.25).fit(items, y)
    _clf(module=_TokenBag, module_params=None, validation_fraction=0.25).fit(ids, y)
    np.testing.assert_array_equal(ids, given)


def test_token_ids_outside_the_embedding_are_named():
    # torch failed with "index out of range in self" (on a GPU, a device-side assert)
    ids = np.random.default_rng(0).integers(0, 300, size=(48, 5))
    y = (ids[:, 0] > 150).astype(int)
    message = (r"^X holds integers outside \[0, 300\), the token ids that the network's "
               r"first layer, an nn.Embedding of 300 embeddings, reads: {} value\(s\), "
               r"e.g. {}\.$")
    beyond = ids.copy()
    beyond[3, 1:3] = 300
    with pytest.raises(ValueError, match=message.format(2, 300)):
        _clf(module=_TokenBag, module_params=None).fit(beyond, y)
    clf = _clf(module=_TokenBag, module_params=None).fit(ids, y)
    with pytest.raises(ValueError, match=message.format(1, -1)):
        clf.predict(np.r_[ids[:3], [[1, 2, -1, 4, 5]]])


def test_integer_features_of_other_networks_are_read_as_float32(small):
    X, y = small
    counts = np.rint(X * 10).astype(np.int64)
    clf = _clf().fit(counts, y)
    as_float = _clf().fit(counts.astype(np.float32), y)
    np.testing.assert_array_equal(clf.predict_logits(counts),
                                  as_float.predict_logits(counts.astype(np.float32)))


def test_tensors_of_any_dtype_are_read_as_their_arrays(small):
    # a bfloat16 tensor failed in numpy with "Got unsupported ScalarType BFloat16"
    X, y = small
    clf = _clf().fit(torch.from_numpy(X).bfloat16(), y)
    rounded = torch.from_numpy(X).bfloat16().float().numpy()
    np.testing.assert_array_equal(clf.predict_logits(torch.from_numpy(rounded).bfloat16()),
                                  clf.predict_logits(rounded))
    assert clf.score(torch.from_numpy(X).double(), y) == clf.score(X, y)


def test_dataset_items_of_the_other_byte_order_are_read_as_native_ones(small):
    # torch refused them: "given numpy array has byte order different from the native"
    X, y = small
    swapped = X.astype(X.dtype.newbyteorder())
    clf = _clf().fit(_Items(lambda i: swapped[i]), y)
    np.testing.assert_array_equal(clf.predict_logits(_Items(lambda i: swapped[i])),
                                  clf.predict_logits(X))


def test_masked_values_of_a_masked_array_are_refused(small):
    # scikit-learn's checks read the values under the mask as data, silently
    X, y = small
    masked = np.ma.masked_greater(X, 1.5)
    count = int(masked.mask.sum())
    message = rf"^X is a masked array with {count} masked value\(s\)"
    with pytest.raises(ValueError, match=message):
        _clf().fit(masked, y)
    clf = _clf().fit(np.ma.masked_array(X), y)  # nothing masked: its data
    with pytest.raises(ValueError, match=message):
        clf.predict(masked)
    with pytest.raises(ValueError, match="validation_data's X_val cannot be read: X is a masked"):
        _clf().fit(X, y, validation_data=(masked, y))


def test_dataframe_columns_that_are_no_numbers_are_named(small):
    # scikit-learn's error named a value ("could not convert string to float: 'x'") or
    # numpy's dtypes (a datetime column), not the column
    X, y = small
    frame = pd.DataFrame(X, columns=list("abcde"))
    odd = frame.assign(colour=pd.Categorical(np.where(y, "red", "blue")),
                       day=pd.date_range("2024-01-01", periods=len(y)))
    message = (r"^X must hold numbers \(or booleans\); its column\(s\) 'colour' \(category\), "
               r"'day' \(datetime64\[\w+\]\) cannot be read as numbers\. Encode them")
    with pytest.raises(ValueError, match=message):
        _clf().fit(odd, y)
    clf = _clf().fit(frame.assign(colour=np.where(y, "1", "2"), day=1.0), y)  # numbers' text
    with pytest.raises(ValueError, match=message):
        clf.predict(odd)
    with pytest.raises(ValueError, match=r"its column\(s\) 'colour' \(float64\) hold 60\. "):
        clf.predict(frame.assign(colour=np.nan, day=1.0))


@pytest.mark.parametrize("dtype", ["Int64", "Int32", "UInt16"])
def test_nullable_integer_columns_reach_an_embedding_as_token_ids(dtype):
    # scikit-learn's checks read them as float32, which torch's embedding refused
    ids = np.random.default_rng(0).integers(0, 300, size=(48, 5))
    y = (ids[:, 0] > 150).astype(int)
    frame = pd.DataFrame(ids, columns=list("abcde")).astype(dtype)
    clf = _clf(module=_TokenBag, module_params=None).fit(frame, y, validation_data=(frame, y))
    plain = _clf(module=_TokenBag, module_params=None).fit(ids, y, validation_data=(ids, y))
    np.testing.assert_array_equal(clf.predict_logits(frame), plain.predict_logits(ids))
    assert list(clf.feature_names_in_) == list("abcde")
    assert (frame.dtypes == dtype).all()  # the caller's DataFrame is left as it was


def test_missing_values_of_nullable_columns_are_named():
    # the error was scikit-learn's "Input X contains NaN", naming no column
    ids = np.random.default_rng(0).integers(0, 300, size=(48, 3))
    y = (ids[:, 0] > 150).astype(int)
    frame = pd.DataFrame(ids, columns=["a", "b", "c"]).astype("Int64")
    frame.iloc[[2, 5], 1] = pd.NA
    message = (r"^X must not contain missing values \(NaN, None or pd.NA\); its column\(s\) "
               r"'b' \(Int64\) hold 2\. Fill them")
    with pytest.raises(ValueError, match=message):
        _clf(module=_TokenBag, module_params=None).fit(frame, y)
    with pytest.raises(ValueError, match=message):
        _clf().fit(frame, y)
    clf = _clf().fit(frame.fillna(0), y)
    with pytest.raises(ValueError, match=message):
        clf.predict(frame)
    numbers = frame.fillna(0).assign(b=np.array([None] + [1.0] * 47, dtype=object))
    with pytest.raises(ValueError, match=r"column\(s\) 'b' \(object\) hold 1\. "):
        clf.predict(numbers)


@pytest.mark.parametrize("values", [
    np.arange(120).astype("datetime64[s]").reshape(60, 2),
    np.arange(120).astype("timedelta64[D]").reshape(60, 2),
    [[np.datetime64("2024-01-01") + i] for i in range(60)],
])
def test_dates_and_durations_are_refused(small, values):
    # they were read as counts of their unit (nanoseconds), and trained on silently
    y = small[1]
    with pytest.raises(ValueError, match=r"^X must hold numbers \(or booleans\); it holds "
                                         r"(dates|durations) \((datetime|timedelta)64"):
        _clf().fit(values, y)
    clf = _clf().fit(np.zeros((60, np.shape(values)[1])), y)
    with pytest.raises(ValueError, match="it holds"):
        clf.predict(values)


@pytest.mark.parametrize("column", [pd.date_range("2024-01-01", periods=60),
                                    pd.to_timedelta(np.arange(60), "s")])
def test_dataframes_of_dates_or_durations_only_are_refused_naming_them(small, column):
    # scikit-learn's checks read such a DataFrame as nanoseconds (the fit diverged, or
    # trained on them)
    y = small[1]
    frame = pd.DataFrame({"start": column, "end": column})
    with pytest.raises(ValueError, match=r"column\(s\) 'start' \((datetime|timedelta)64\[\w+\]\), "
                                         r"'end' \(.+\) cannot be read as numbers"):
        _clf().fit(frame, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_network_of_another_float_dtype_gets_inputs_in_its_dtype(small, dtype):
    # inputs came as float32, and torch failed in the forward pass ("mat1 and mat2 must
    # have the same dtype, but got Float and Double")
    X, y = small
    X64 = X.astype(np.float64) + 1e-9  # values float32 cannot hold
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 2)).to(dtype)
    clf = _clf(module=net, module_params=None, sparsity=0.5).fit(
        X64, y, validation_data=(X64, y))
    assert next(clf.module_.parameters()).dtype == dtype
    assert next(net.parameters()).dtype == dtype  # the caller's module is not converted
    with torch.no_grad():
        expected = clf.module_(torch.from_numpy(X64).to(dtype)).float().numpy()
    np.testing.assert_array_equal(clf.predict_logits(X64), expected)
    np.testing.assert_array_equal(clf.predict_logits(sp.csr_matrix(X64)), expected)
    items = torch.utils.data.TensorDataset(torch.from_numpy(X64))
    np.testing.assert_array_equal(clf.predict_logits(items), expected)
    _clf(module=net, module_params=None).fit(items, y)
    _clf(module=net, module_params=None).fit(sp.csr_matrix(X64), y)



@pytest.mark.parametrize("to_input", [np.asarray, sp.csr_matrix], ids=["dense", "sparse"])
def test_a_float64_network_trains_and_validates_on_the_float64_rows(small, to_input):
    # the rows held out by validation_fraction (and a sparse X's training rows) were
    # rounded to float32, while a dense X's training rows reached the network in float64
    X64 = small[0].astype(np.float64) + 1e-9  # values float32 cannot hold
    seen = {True: [], False: []}

    class Recorder(torch.nn.Linear):
        def forward(self, x):
            seen[self.training].append(x.detach())
            return super().forward(x)

    _clf(module=Recorder(5, 2).double(), module_params=None, sparsity=0.0,
         validation_fraction=0.3).fit(to_input(X64), small[1])
    for training in (True, False):
        rows = torch.cat(seen[training]).numpy()
        assert rows.dtype == np.float64
        assert np.isin(rows[:, 0], X64[:, 0]).all()

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_auto_sparse_compute_keeps_layers_of_a_dtype_without_csr_kernels_masked(
        small, dtype, monkeypatch):
    # measuring the CSR pass failed with "addmm_out_sparse_csr_impl_mkl" not implemented
    # for 'BFloat16' (torch has no CPU CSR product in half precision)
    from rest_fair.sparse import compute

    assert measure_layer((16, 24), 40, 8, dtype=dtype).csr == float("inf")
    X, y = small
    net = torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 2)).to(dtype)
    monkeypatch.setattr(compute, "measure_layer", measure_layer)  # not the tests' tie
    clf = _clf(module=net, module_params=None, sparsity=0.9, sparse_compute_threshold=1.0)
    assert clf.fit(X, y).sparse_compute_layers_ == []


def test_sparse_tensors_are_read_as_their_entries(small):
    # numpy refused them: "can't convert Sparse layout tensor to numpy"
    X, y = small
    dense = _clf().fit(X, y)
    expected = dense.predict_logits(X)
    rows, cols = np.nonzero(X)
    doubled = torch.sparse_coo_tensor(  # every entry given twice as its halves: summed
        np.stack([np.r_[rows, rows], np.r_[cols, cols]]),
        np.r_[X[rows, cols], X[rows, cols]] / 2, X.shape, dtype=torch.float32)
    tensor = torch.from_numpy(X)
    for sparse in (tensor.to_sparse(), tensor.to_sparse_csr(), doubled):
        np.testing.assert_allclose(dense.predict_logits(sparse), expected, rtol=1e-6)
        np.testing.assert_array_equal(_clf().fit(sparse, y).predict_logits(X), expected)
    assert not doubled.is_coalesced()  # the caller's tensor is left as it was
    images = torch.from_numpy(X.reshape(60, 1, 1, 5))
    clf = _clf(module="mlp").fit(images.to_sparse(), y)
    np.testing.assert_array_equal(clf.predict_logits(images), expected)


def test_a_list_of_samples_of_different_lengths_is_named():
    # numpy's "setting an array element with a sequence" named no input
    with pytest.raises(ValueError, match=r"^X must hold samples of one shape .*: setting an"):
        _clf().fit([[1.0, 2.0], [3.0, 4.0], [5.0]], [0, 1, 0])


@pytest.mark.parametrize(("dtype", "numpy_dtype"), [("Int64", np.int64), ("UInt8", np.uint8),
                                                     ("boolean", np.bool_)])
def test_labels_of_a_nullable_dtype_keep_their_type(small, dtype, numpy_dtype):
    # scikit-learn's checks read them as float64: classes_ were 0.0 and 1.0, and predict
    # gave floats for boolean labels
    X, y = small
    labels = pd.Series(y, index=np.arange(60)[::-1]).astype(dtype)
    clf = _clf().fit(X, labels, validation_data=(X, labels))
    assert clf.classes_.dtype == numpy_dtype
    assert clf.predict(X).dtype == numpy_dtype
    items = torch.utils.data.TensorDataset(torch.from_numpy(X))
    assert _clf().fit(items, labels).classes_.dtype == numpy_dtype
    assert labels.dtype == dtype


@pytest.mark.parametrize("weights", [np.ones(60) + 1j, np.arange(60).astype("timedelta64[s]"),
                                     np.array(["1"] * 59 + ["heavy"])])
def test_sample_weights_that_are_no_real_numbers_are_refused(small, weights):
    # numpy dropped the imaginary part (with a ComplexWarning) and counted seconds, and a
    # text's error named no input
    X, y = small
    with pytest.raises(ValueError, match=r"^sample_weight must be finite and non-negative; "
                                         r"it holds values that are no real numbers \("):
        _clf().fit(X, y, sample_weight=weights)


def test_sample_weights_of_a_bfloat16_tensor_are_read(small):
    # numpy failed with "Got unsupported ScalarType BFloat16"
    X, y = small
    weights = torch.rand(60, generator=torch.Generator().manual_seed(0)).bfloat16()
    np.testing.assert_array_equal(
        _clf().fit(X, y, sample_weight=weights.clone().requires_grad_()).predict_logits(X),
        _clf().fit(X, y, sample_weight=weights.float().numpy()).predict_logits(X))


def test_labels_and_groups_of_tensors_numpy_cannot_read_are_read(small):
    # numpy failed with "Got unsupported ScalarType BFloat16" (and a GPU tensor with "can't
    # convert cuda:0 device type tensor to numpy")
    X, y = small
    groups = (X[:, 1] > 0).astype(int)
    as_tensor = torch.from_numpy(y).bfloat16(), torch.from_numpy(groups).bfloat16()
    clf = _clf().fit(X, *as_tensor, validation_data=(X, *as_tensor))
    plain = _clf().fit(X, y.astype(np.float32), groups.astype(np.float32),
                       validation_data=(X, y, groups))
    assert clf.groups_ == plain.groups_ == [0.0, 1.0]
    np.testing.assert_array_equal(clf.classes_, plain.classes_)
    np.testing.assert_array_equal(clf.predict_logits(X), plain.predict_logits(X))


_STAMPS = np.array(["2020-01-01T00:00:00.000000001", "2021-06-01"], dtype="M8[ns]")


@pytest.mark.parametrize("form, kind", [
    (lambda d: d, np.datetime64),
    (lambda d: d.astype("M8[D]"), np.datetime64),
    (lambda d: list(d), np.datetime64),
    (lambda d: d - d[0], np.timedelta64),
    (pd.Series, pd.Timestamp),
    (pd.DatetimeIndex, pd.Timestamp),
    (lambda d: pd.DataFrame({"when": d}), pd.Timestamp),
    (lambda d: {"when": d}, np.datetime64),
    (lambda d: {"when": pd.Series(d)}, pd.Timestamp),
    (lambda d: pd.Series(d, dtype="category"), pd.Timestamp),
    (lambda d: pd.Series(d).dt.tz_localize("UTC"), pd.Timestamp),
    (lambda d: pd.Series(d - d[0]), pd.Timedelta),
])
def test_dated_group_labels_keep_their_values_and_type(form, kind):
    # numpy's nanosecond dates were ints, pandas' ones matched no label (code -1: the last
    # group) and a DataFrame column's were of another type than a Series'
    from rest_fair._inputs import encode_groups

    given = form(_STAMPS[[1, 0, 1, 1, 0]])
    values = list(given["when"] if isinstance(given, (dict, pd.DataFrame)) else given)
    codes, labels = encode_groups(given, 5)
    assert [labels[c] for c in codes] == values
    assert all(type(label) is kind for label in labels)
    assert [type(labels[c]) for c in codes] == [type(v) for v in values]
    assert labels == sorted(set(values)) and len(labels) == 2
    if kind is np.datetime64:  # the unit given, nothing rounded
        assert all(label.dtype == np.asarray(values).dtype for label in labels)


def test_groups_of_numpy_dates_fit_and_weigh_by_the_dates_given(small):
    X, y = small
    stamps = _STAMPS[np.arange(len(y)) % 2]
    rows = np.stack([stamps, stamps[::-1]], axis=1)
    for groups, keys in ((stamps, list(_STAMPS)), (pd.Series(stamps), list(pd.Series(_STAMPS))),
                         (rows, [tuple(r) for r in rows[:2]])):
        clf = _clf(upweight=dict.fromkeys(keys, 2.0)).fit(X, y, groups=groups)
        assert clf.groups_ == sorted(keys)
        assert [type(g) for g in clf.groups_] == [type(k) for k in sorted(keys)]
        assert sorted(clf.group_weights_.values()) == [2.0] * len(clf.group_weights_)


@pytest.mark.parametrize("given, labels", [
    (np.array(["b", "a"]), ["a", "b"]),
    (np.array([b"b", b"a"]), [b"a", b"b"]),
    (np.array([True, False]), [False, True]),
    (np.array([2, 1], dtype=np.int8), [1, 2]),
    (np.array([2, 1], dtype=">i4"), [1, 2]),
    (np.array([2**64 - 1, 1], dtype=np.uint64), [1, 2**64 - 1]),
    (pd.Series(["b", "a"], dtype="category"), ["a", "b"]),
    (pd.Series([2, 1], dtype="Int64"), [1, 2]),
    (np.array([[2, 1], [1, 2]], dtype=np.int16), [(1, 2), (2, 1)]),
])
def test_numpy_and_pandas_scalars_are_labelled_by_their_python_values(given, labels):
    from rest_fair._inputs import encode_groups

    codes, got = encode_groups(given, 2)
    assert got == labels and [type(g) for g in got] == [type(v) for v in labels]
    assert [type(v) for g in got if isinstance(g, tuple) for v in g] == [int] * 4 * (
        np.ndim(given) == 2)
    assert codes.tolist() == [1, 0]


def test_validation_groups_of_pandas_dates_are_the_training_groups_of_numpy_dates(small):
    # a nanosecond date hashes otherwise as np.datetime64 and as pandas.Timestamp: the
    # validation groups were named as groups without validation samples
    X, y = small
    stamps = _STAMPS[np.arange(len(y)) % 2]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no validation samples")
        clf = _clf(upweight={pd.Timestamp(_STAMPS[0]): 2.0, pd.Timestamp(_STAMPS[1]): 0.5}).fit(
            X, y, groups=stamps, validation_data=(X, y, pd.Series(stamps)))
    assert [type(g) for g in clf.groups_] == [np.datetime64] * 2
    assert sorted(clf.group_weights_.values()) == [0.5, 0.5, 2.0, 2.0]
