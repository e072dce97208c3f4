"""Batch sources (rest_fair._data): what they hold and the batches they yield."""

import warnings

import numpy as np
import torch

from rest_fair import RESTClassifier
from rest_fair._data import make_source

CPU = torch.device("cpu")


def _batches(source, batch_size=7):
    return [x for x, _ in source.batches(torch.arange(source.n_samples), batch_size, CPU)]


def test_a_float64_array_is_converted_batch_by_batch_not_copied_whole():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    source = make_source(X, device=CPU)
    # the source reads the caller's array in place: no float32 copy of all of it is held
    assert source.data.data_ptr() == X.__array_interface__["data"][0]
    batches = _batches(source)
    assert all(b.dtype == torch.float32 for b in batches)
    np.testing.assert_array_equal(torch.cat(batches).numpy(), X.astype(np.float32))
    # images keep their memory format through the per-batch conversion
    images = rng.standard_normal((9, 4, 5, 3)).transpose(0, 3, 1, 2)  # NHWC memory
    batch = _batches(make_source(images, device=CPU), 9)[0]
    np.testing.assert_array_equal(batch.numpy(), images.astype(np.float32))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    # a read-only array is read in place too: batches are gathered into new memory
    X.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's from_numpy warns of a read-only array
        source = make_source(X, device=CPU)
    assert source.data.data_ptr() == X.__array_interface__["data"][0]
    np.testing.assert_array_equal(torch.cat(_batches(source)).numpy(), X.astype(np.float32))


def test_read_only_and_memory_mapped_float32_arrays_are_trained_and_predicted_uncopied(
        tmp_path, monkeypatch):
    import rest_fair._fit
    import rest_fair.estimator

    sources = []

    def kept(X, **kwargs):
        sources.append(make_source(X, **kwargs))
        return sources[-1]

    monkeypatch.setattr(rest_fair._fit, "make_source", kept)
    monkeypatch.setattr(rest_fair.estimator, "make_source", kept)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((48, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    np.save(tmp_path / "X.npy", X)
    frozen = X.copy()
    frozen.flags.writeable = False
    for array in (np.load(tmp_path / "X.npy", mmap_mode="r"), frozen):
        sources.clear()
        clf = RESTClassifier(max_epochs=2, random_state=0, batch_size=16)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*not writable")
            clf.fit(array, y, validation_data=(array, y))
            proba = clf.predict_proba(array)
        assert len(sources) == 3  # training, validation, prediction
        assert all(np.shares_memory(s.data.numpy(), array) for s in sources)
        np.testing.assert_array_equal(array, X)
        np.testing.assert_array_equal(proba, clf.predict_proba(X))
        # with rows held out for validation, the training rows are read in place too
        sources.clear()
        split = RESTClassifier(max_epochs=2, random_state=0, batch_size=16,
                               validation_fraction=0.25).fit(array, y)
        train = sources[-1]
        assert np.shares_memory(train.data.numpy(), array) and train.n_samples == 36
        copied = RESTClassifier(max_epochs=2, random_state=0, batch_size=16,
                                validation_fraction=0.25).fit(X.copy(), y)
        np.testing.assert_array_equal(split.predict_proba(X), copied.predict_proba(X))
        np.testing.assert_array_equal(array, X)


def test_predictions_on_float64_equal_those_on_float32():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 5))
    y = (X[:, 0] > 0).astype(int)
    clf = RESTClassifier(max_epochs=1, random_state=0, batch_size=32).fit(X, y)
    np.testing.assert_array_equal(clf.predict_logits(X), clf.predict_logits(X.astype(np.float32)))


def test_sparse_batches_are_the_float32_rows_in_every_format_and_dtype():
    import scipy.sparse as sp

    for dtype in (np.float32, np.float64):
        for fmt in ("csr", "csc", "coo"):
            X = sp.random(30, 50, density=0.1, format=fmt, dtype=dtype, random_state=0)
            order = torch.from_numpy(np.random.default_rng(0).permutation(30))
            source = make_source(X, device=CPU)
            batches = [x for x, _ in source.batches(order, 7, CPU)]
            assert all(b.dtype == torch.float32 for b in batches)
            want = X.toarray().astype(np.float32)[order.numpy()]
            np.testing.assert_array_equal(torch.cat(batches).numpy(), want)
            assert X.dtype == dtype and X.format == fmt  # the caller's matrix is unchanged


def test_a_source_of_some_rows_copies_only_those_off_the_cpu():
    # the held-out rows are read in place on the CPU; a source on a GPU, which copies its
    # array there, would otherwise copy the whole array for a few validation rows
    X = np.random.default_rng(0).standard_normal((40, 6))
    source = make_source(X, device=torch.device("meta"), rows=np.array([5, 2, 9]))
    assert source.n_samples == 3 and source.data.shape == (3, 6)
