"""Compressed, pickle-free model files (rest_fair.efficiency.serialization)."""

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback
from rest_fair.efficiency import ModelFileError, load, save
from rest_fair.models import build_module
from rest_fair.persistence import register_estimator_class

META = {"module": "mlp", "input_shape": (20,), "n_classes": 3,
        "module_params": {"hidden_layer_sizes": (256, 128)}, "note": "x"}


def _masked_mlp(density, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_module("mlp", input_shape=(20,), n_classes=3,
                       module_params={"hidden_layer_sizes": (256, 128)})
    masks = {}
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight"):
                masks[name] = torch.rand(p.shape, generator=g) < density
                p.mul_(masks[name])
                p[masks[name] & (torch.rand(p.shape, generator=g) < 0.2)] = 0.0  # regrown
    return net, masks


def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("density", [0.5, 0.05, 0.002])
def test_module_round_trip(tmp_path, density):
    net, masks = _masked_mlp(density)
    path = tmp_path / "m.rest"
    size = save((net, masks, META), path)
    assert size == os.path.getsize(path)
    net2, masks2, meta2 = load(path)
    assert _state_equal(net, net2)
    assert masks2.keys() == masks.keys()
    assert all(torch.equal(masks2[k], masks[k]) for k in masks)
    assert meta2 == META
    # an instance of the architecture may be given instead
    net3, _, _ = load(path, module=build_module("mlp", input_shape=(20,), n_classes=3,
                                                module_params={"hidden_layer_sizes": (256, 128)}))
    assert _state_equal(net, net3)


def test_compressed_file_is_small(tmp_path):
    torch.manual_seed(0)
    dense = build_module("mlp", input_shape=(20,), n_classes=3,
                         module_params={"hidden_layer_sizes": (256, 128)})
    dense_size = save((dense, None, None), tmp_path / "dense.rest")
    state_bytes = sum(t.numel() * t.element_size() for t in dense.state_dict().values())
    assert dense_size > 0.8 * state_bytes
    net, masks = _masked_mlp(0.01)
    sparse_size = save((net, masks, None), tmp_path / "sparse.rest")
    assert sparse_size < 0.06 * dense_size
    net, masks = _masked_mlp(0.1)
    assert save((net, masks, None), tmp_path / "s10.rest") < 0.2 * dense_size


def test_unknown_architecture_needs_module(tmp_path):
    net, masks = _masked_mlp(0.1)
    save((net, masks, {"what": 1}), tmp_path / "m.rest")
    with pytest.raises(ModelFileError, match="pass load"):
        load(tmp_path / "m.rest")


def test_metadata_naming_a_built_in_network_without_its_shape_says_so(tmp_path):
    net, masks = _masked_mlp(0.1)
    save((net, masks, {"module": "mlp", "n_classes": 3}), tmp_path / "m.rest")
    with pytest.raises(ModelFileError, match="'mlp' but its metadata lacks input_shape"):
        load(tmp_path / "m.rest")
    loaded, _, _ = load(tmp_path / "m.rest", module=net)
    assert _state_equal(loaded, net)


def test_a_module_with_lazy_layers_loads_the_files_shapes(tmp_path):
    # the shape check read the lazy layers' uninitialised shapes and failed
    def lazy():
        return torch.nn.Sequential(torch.nn.LazyLinear(256), torch.nn.ReLU(),
                                   torch.nn.LazyLinear(128), torch.nn.ReLU(),
                                   torch.nn.LazyLinear(3))

    net, masks = _masked_mlp(0.1)
    flat = torch.nn.Sequential(*[layer for layer in net.modules()
                                 if isinstance(layer, (torch.nn.Linear, torch.nn.ReLU))])
    flat_masks = {f"{i}.weight": masks[name] for i, name in
                  zip((0, 2, 4), [n for n in masks], strict=True)}
    save((flat, flat_masks, {}), tmp_path / "m.rest")
    loaded, loaded_masks, _ = load(tmp_path / "m.rest", module=lazy())
    assert _state_equal(loaded, flat) and loaded_masks.keys() == flat_masks.keys()
    with pytest.raises(ModelFileError, match="do not match the architecture"):
        load(tmp_path / "m.rest", module=torch.nn.Sequential(*lazy(), torch.nn.LazyLinear(2)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_a_module_comes_back_in_the_dtype_it_was_saved_in(tmp_path, dtype):
    net, masks = _masked_mlp(0.1)
    net = net.to(dtype)
    with torch.no_grad():  # values float32 cannot hold
        for p in net.parameters():
            p.mul_(1 + torch.finfo(dtype).eps)
    save((net, masks, META), tmp_path / "m.rest")
    loaded, _, _ = load(tmp_path / "m.rest")
    assert {t.dtype for t in loaded.state_dict().values()} == {dtype}
    assert _state_equal(loaded, net)
    x = torch.randn(5, 20, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    into, _, _ = load(tmp_path / "m.rest", module=build_module(
        "mlp", input_shape=(20,), n_classes=3, module_params=META["module_params"]))
    assert {t.dtype for t in into.state_dict().values()} == {torch.float32}  # module='s


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.rest"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _RunsCode(marker)}, fh)
    with pytest.raises(ModelFileError, match="not a rest_fair model file"):
        load(evil)
    # the same payload hidden in a zip/npz member (an object array is a pickle)
    evil_npz = tmp_path / "evil_npz.rest"
    np.savez(evil_npz, __header__=np.array([_RunsCode(marker)], dtype=object))
    os.replace(str(evil_npz) + ".npz", evil_npz)
    with pytest.raises(ModelFileError, match=r"holds pickled Python objects.*not loaded"):
        load(evil_npz)
    # a torch.save file is a zip holding a pickle
    evil_pt = tmp_path / "evil.pt"
    torch.save({"x": _RunsCode(marker)}, evil_pt)
    with pytest.raises(ModelFileError, match="has no valid rest_fair header"):
        load(evil_pt)
    assert not marker.exists()


def test_refuses_truncated_and_tampered(tmp_path):
    net, masks = _masked_mlp(0.1)
    path = tmp_path / "m.rest"
    save((net, masks, META), path)
    data = path.read_bytes()
    truncated = tmp_path / "t.rest"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupted or truncated"):
        load(truncated)
    flipped = tmp_path / "f.rest"
    middle = len(data) // 2
    flipped.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    with pytest.raises(ModelFileError, match=r"corrupted or truncated|SHA-256"):
        load(flipped)
    # a valid zip whose arrays were edited (zip CRCs fine): caught by the SHA-256
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    values = next(k for k in arrays if k.endswith(".values"))
    arrays[values] = arrays[values] * 2
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    edited = tmp_path / "e.rest"
    edited.write_bytes(buf.getvalue())
    assert zipfile.is_zipfile(edited)
    with pytest.raises(ModelFileError, match="SHA-256"):
        load(edited)


def test_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="save"):
        save("not a model", tmp_path / "x.rest")
    net, _ = _masked_mlp(0.5)
    with pytest.raises(TypeError, match="JSON"):
        save((net, None, {"f": object()}), tmp_path / "x.rest")
    with pytest.raises(KeyError, match="'nope', which is not a weight"):
        save((net, {"nope": torch.ones(1, dtype=torch.bool)}, None), tmp_path / "x.rest")
    norm = torch.nn.BatchNorm1d(4)  # a buffer's values would be lost where its mask is off
    with pytest.raises(KeyError, match="'running_mean', which is not a weight"):
        save((norm, {"running_mean": torch.ones(4, dtype=torch.bool)}, None),
             tmp_path / "x.rest")
    assert not (tmp_path / "x.rest").exists()


# ----------------------------------------------------------------- the estimator
def _fitted(**kw):
    from rest_fair import RESTClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 10)).astype(np.float32)
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 1).astype(int)]
    groups = (X[:, 2] > 0).astype(int)
    params = {"sparsity": 0.9, "module": "mlp", "module_params": {"hidden_layer_sizes": (64,)},
              "max_epochs": 2, "batch_size": 32, "random_state": 0, "device": "cpu"}
    params.update(kw)
    return RESTClassifier(**params).fit(X, y, groups=groups), X


def test_estimator_round_trip(tmp_path):
    clf, X = _fitted()
    path = tmp_path / "clf.rest"
    save(clf, path)
    with pytest.warns(FutureWarning, match=r"RESTClassifier\.load\(path\)"):
        loaded = load(path)  # deprecated for estimators
    assert type(loaded).__name__ == "RESTClassifier"
    assert loaded.get_params() == clf.get_params()
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    assert loaded.input_shape_ == clf.input_shape_
    assert loaded.n_features_in_ == clf.n_features_in_
    assert _state_equal(loaded.module_, clf.module_)
    assert all(torch.equal(loaded.masks_[k], clf.masks_[k]) for k in clf.masks_)
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.history_ == clf.history_


def test_estimator_pickle_and_joblib_still_work(tmp_path):
    import joblib

    clf, X = _fitted()
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))
    joblib.dump(clf, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict(X), clf.predict(X))


def test_estimator_with_custom_module_is_refused(tmp_path):
    from rest_fair.models import MLP

    clf, _ = _fitted(module=MLP, module_params={"hidden_layer_sizes": (8,)})
    with pytest.raises(ValueError, match="built-in names"):
        save(clf, tmp_path / "c.rest")
    from rest_fair import RESTClassifier

    with pytest.raises(ValueError, match="not fitted"):
        save(RESTClassifier(), tmp_path / "c.rest")


def test_estimator_methods_and_sparse_prediction(tmp_path):
    import copy

    from rest_fair import RESTClassifier

    clf, X = _fitted(update_interval=2)
    assert sum(h["n_topology_updates"] for h in clf.history_) > 0
    size = clf.save(tmp_path / "m.rest")
    assert size == os.path.getsize(tmp_path / "m.rest")
    loaded = RESTClassifier.load(tmp_path / "m.rest")
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    # the estimator predicts through the exported sparse network
    fast = copy.copy(clf)
    fast.module_ = clf.export_sparse(density_threshold=0.5)
    np.testing.assert_allclose(fast.predict_proba(X), clf.predict_proba(X), atol=1e-5)
    np.testing.assert_array_equal(fast.predict(X), clf.predict(X))
    with pytest.raises(ValueError, match=r"compressed export.*use_sparse_inference"):
        fast.save(tmp_path / "fast.rest")  # the file holds the fitted network and masks
    assert not (tmp_path / "fast.rest").exists()
    clf.use_sparse_inference(density_threshold=0.5)
    clf.save(tmp_path / "fast.rest")
    np.testing.assert_array_equal(RESTClassifier.load(tmp_path / "fast.rest").predict(X),
                                  clf.predict(X))
    report = clf.efficiency_report()
    weights = sum(m.numel() for m in clf.masks_.values())
    active = sum(int(m.sum()) for m in clf.masks_.values())
    assert report.loc["total", "inference_flops"] == 2 * active
    assert report.loc["total", "inference_flops_dense"] == 2 * weights
    total = report.loc["total"]
    assert total["training_flops"] > 3 * total["inference_flops"]
    # updates amortized over the steps really made
    rate = sum(h["n_topology_updates"] for h in clf.history_) / clf.n_train_steps_
    expected = 3 * total["inference_flops"] + rate * (
        total["inference_flops_dense"] - total["inference_flops"])
    assert total["training_flops"] == pytest.approx(expected)
    assert total["training_flops_run"] == pytest.approx(
        expected * sum(h["n_train_samples"] for h in clf.history_))
    net, masks = _masked_mlp(0.1)
    save((net, masks, META), tmp_path / "module.rest")
    with pytest.raises(TypeError, match="not a RESTClassifier"):
        RESTClassifier.load(tmp_path / "module.rest")
    with pytest.warns(FutureWarning, match="does nothing"):
        assert register_estimator_class(RESTClassifier) is RESTClassifier


def _rewrite_header(src, dst, edit):
    import json

    from rest_fair.persistence.model_file import _digest

    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays.pop("__header__").tobytes())
    arrays.pop("__sha256__")
    edit(header)
    header_bytes = json.dumps(header, sort_keys=True).encode()
    digest = _digest(header_bytes, arrays)  # a forger recomputes the checksum
    arrays["__header__"] = np.frombuffer(header_bytes, dtype=np.uint8)
    arrays["__sha256__"] = np.frombuffer(digest.encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    dst.write_bytes(buf.getvalue())


def test_refuses_files_that_do_not_match_their_architecture(tmp_path):
    net, masks = _masked_mlp(0.1)
    path = tmp_path / "m.rest"
    save((net, masks, META), path)
    huge = tmp_path / "huge.rest"

    def claim_huge(header):  # would be 10^12 weights if built for real
        header["metadata"]["module_params"]["hidden_layer_sizes"] = [10**6, 10**6]

    _rewrite_header(path, huge, claim_huge)
    with pytest.raises(ModelFileError, match="do not match"):
        load(huge)
    wrong = build_module("mlp", input_shape=(20,), n_classes=3,
                         module_params={"hidden_layer_sizes": (8,)})
    with pytest.raises(ModelFileError, match=r"do not match the architecture it names: "
                                             r"layers\.1\.weight is \(256, 20\) in the file, "
                                             r"\(8, 20\) in the network; "):
        load(path, module=wrong)
    newer = tmp_path / "newer.rest"
    _rewrite_header(path, newer, lambda h: h.update(format_version=99))
    with pytest.raises(ModelFileError, match="format version 99"):
        load(newer)


def test_a_newer_format_version_is_named_before_the_arrays_are_checked(tmp_path):
    net, masks = _masked_mlp(0.1)
    path = tmp_path / "m.rest"
    save((net, masks, META), path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["t0.scales"] = np.zeros(2, dtype=[("a", "<f4")])  # a kind of array version 1 lacks
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    newer = tmp_path / "newer.rest"
    newer.write_bytes(buffer.getvalue())
    _rewrite_header(newer, newer, lambda h: h.update(format_version=2))
    with pytest.raises(ModelFileError, match="format version 2; this rest_fair reads"):
        load(newer)
    _rewrite_header(newer, newer, lambda h: h.update(format_version=1))
    with pytest.raises(ModelFileError, match=r"damaged.*t0\.scales"):  # in version 1: damaged
        load(newer)


@pytest.mark.parametrize("version", ["1", 0, True, None])
def test_a_format_version_that_is_not_a_positive_int_is_a_bad_header(tmp_path, version):
    net, masks = _masked_mlp(0.1)
    save((net, masks, META), tmp_path / "m.rest")
    _rewrite_header(tmp_path / "m.rest", tmp_path / "m.rest",
                    lambda h: h.update(format_version=version))
    with pytest.raises(ModelFileError, match=f"no valid.*format_version {version!r} is not a"):
        load(tmp_path / "m.rest")


@pytest.mark.parametrize(
    ("edit", "match"),
    [(lambda h: h["params"].update(future=1),
      r"sets parameters \['future'\] that this RESTClassifier does not have: a newer"),
     (lambda h: h["params"].update(module="transformer"),
      r"module='transformer', which this rest_fair cannot rebuild .*a newer rest_fair")],
)
def test_an_estimator_file_of_a_newer_release_is_named_so(tmp_path, edit, match):
    clf, _ = _fitted()
    clf.save(tmp_path / "clf.rest")
    _rewrite_header(tmp_path / "clf.rest", tmp_path / "newer.rest", edit)
    with pytest.raises(ModelFileError, match=match):
        RESTClassifier.load(tmp_path / "newer.rest")


@pytest.mark.parametrize("change", [{"module_params": {"hidden_layer_sizes": (16,)}},
                                    {"sparsity": 0.5}])
def test_parameters_set_after_fit_keep_the_fitted_network_in_the_file(tmp_path, change):
    clf, X = _fitted()
    clf.set_params(**change)
    clf.save(tmp_path / "clf.rest")
    loaded = RESTClassifier.load(tmp_path / "clf.rest")  # the network fitted, not of change
    assert loaded.get_params() == clf.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    for est in (clf, loaded):  # a warm start refuses the change, as before the save
        with pytest.raises(ValueError, match=f"{next(iter(change))} changed"):
            est.set_params(warm_start=True).fit(X, clf.predict(X))


def test_a_file_written_before_network_params_loads_the_network_of_its_parameters(tmp_path):
    clf, X = _fitted()
    clf.save(tmp_path / "clf.rest")
    _rewrite_header(tmp_path / "clf.rest", tmp_path / "old.rest",
                    lambda h: h.pop("network_params"))
    loaded = RESTClassifier.load(tmp_path / "old.rest")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    with pytest.raises(ValueError, match="sparsity changed"):
        loaded.set_params(warm_start=True, sparsity=0.5).fit(X, clf.predict(X))


def test_binary_file_objects_are_written_and_read(tmp_path):
    clf, X = _fitted()
    buffer = io.BytesIO()
    size = clf.save(buffer)
    assert size == len(buffer.getvalue())
    loaded = RESTClassifier.load(io.BytesIO(buffer.getvalue()))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    with open(tmp_path / "clf.rest", "wb") as fh:
        clf.save(fh)
    with open(tmp_path / "clf.rest", "rb") as fh:
        assert load(fh, estimator_class=RESTClassifier).get_params() == clf.get_params()
    net, masks = _masked_mlp(0.1)
    buffer = io.BytesIO()
    save((net, masks, META), buffer)
    assert _state_equal(load(io.BytesIO(buffer.getvalue()))[0], net)
    with open(tmp_path / "cut.rest", "wb") as fh:
        fh.write(buffer.getvalue()[:-40])
    with open(tmp_path / "cut.rest", "rb") as fh, \
            pytest.raises(ModelFileError, match=r"cut\.rest is corrupted or truncated"):
        load(fh)
    with pytest.raises(ModelFileError, match="<BytesIO> is corrupted or truncated"):
        load(io.BytesIO(buffer.getvalue()[:-40]))
    with open(tmp_path / "cut.rest", encoding="latin-1") as fh, \
            pytest.raises(TypeError, match=r"text mode.*open\(path, 'rb'\)"):
        load(fh)


def test_a_path_must_be_a_path_not_a_file_descriptor(tmp_path):
    net, masks = _masked_mlp(0.1)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with open(victim, "a") as fh, pytest.raises(TypeError):
        save((net, masks, META), fh.fileno())
    assert victim.read_text() == "keep me"


def test_a_loaded_estimator_warm_starts_only_with_its_own_network(tmp_path):
    X = np.random.default_rng(0).random((60, 5), dtype=np.float32)
    y = np.arange(60) % 2
    clf = RESTClassifier(sparsity=0.9, max_epochs=1, warm_start=True, random_state=0,
                         module_params={"hidden_layer_sizes": (16,)}).fit(X, y)
    clf.save(tmp_path / "m.rest")
    loaded = RESTClassifier.load(tmp_path / "m.rest")
    with pytest.raises(ValueError, match="but sparsity changed"):
        loaded.set_params(sparsity=0.5).fit(X, y)
    loaded.set_params(sparsity=0.9).fit(X, y)  # its own network: the warm start goes on
    assert len(loaded.history_) == 2


def test_a_failed_save_leaves_the_existing_file_as_it_was(tmp_path, monkeypatch):
    from rest_fair.persistence import files

    net, masks = _masked_mlp(0.1)
    path = tmp_path / "model.rest"
    path.write_text("an earlier file")
    mode = path.stat().st_mode

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save((net, masks, META), path)
    assert path.read_text() == "an earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.rest"]  # no temporary left
    monkeypatch.undo()
    save((net, masks, META), os.fsencode(path))  # a bytes path, as open() takes
    assert _state_equal(net, load(path)[0])
    assert path.stat().st_mode == mode  # a new file's permissions, not a temporary's 0600


def test_an_estimator_with_callbacks_or_a_random_state_object_saves(tmp_path):
    import warnings

    from rest_fair.callbacks import EarlyStopping

    X = np.random.default_rng(0).random((80, 5), dtype=np.float32)
    y = np.arange(80) % 2
    clf = RESTClassifier(sparsity=0.9, max_epochs=2, random_state=np.random.RandomState(0),
                         callbacks=[EarlyStopping(patience=3)],
                         module_params={"hidden_layer_sizes": (16,)}).fit(X, y)
    clf.use_sparse_inference()  # derived state: not saved, and not warned about
    with pytest.warns(UserWarning, match=r"\['callbacks', 'random_state'\] hold objects"):
        clf.save(tmp_path / "m.rest")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = RESTClassifier.load(tmp_path / "m.rest")
    assert loaded.callbacks is None and loaded.random_state is None
    assert isinstance(clf.random_state, np.random.RandomState)  # the estimator keeps its own
    # (clf predicts through its sparse export: the same up to rounding)
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an estimator without them saves silently
        clf.set_params(callbacks=None, random_state=0).save(tmp_path / "n.rest")


def test_load_of_an_estimator_file_reads_its_arrays_once(tmp_path, monkeypatch):
    from rest_fair.persistence import model_file

    clf, X = _fitted()
    path = tmp_path / "clf.rest"
    clf.save(path)
    reads = []
    read_array = model_file._read_array
    monkeypatch.setattr(model_file, "_read_array",
                        lambda archive, info: reads.append(info.filename)
                        or read_array(archive, info))
    loaded = load(path, estimator_class=RESTClassifier)
    payload = [name for name in reads if not name.startswith("__")]
    assert payload and len(payload) == len(set(payload))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))


def test_a_bytes_path_reads_what_it_wrote(tmp_path):
    net, masks = _masked_mlp(0.1)
    path = os.fsencode(tmp_path / "modèle b.rest")
    save((net, masks, META), path)  # a bytes path, as open() takes
    assert _state_equal(net, load(path)[0])
    X = np.random.default_rng(0).random((40, 5), dtype=np.float32)
    clf = RESTClassifier(max_epochs=1, random_state=0,
                         module_params={"hidden_layer_sizes": (8,)}).fit(X, np.arange(40) % 2)
    clf.save(path)
    assert np.array_equal(RESTClassifier.load(path).predict_proba(X), clf.predict_proba(X))
    (tmp_path / "cut.rest").write_bytes(open(path, "rb").read()[:200])
    with pytest.raises(ModelFileError, match=r"cut\.rest is corrupted or truncated"):
        RESTClassifier.load(os.fsencode(tmp_path / "cut.rest"))


class _SaveEachEpoch(Callback):
    def __init__(self, folder):
        self.folder, self.saved = folder, []

    def on_epoch_end(self, net, *, record, **kwargs):
        path = self.folder / f"epoch{record['epoch']}.rest"
        save((net.module_, dict(net.masks_), None), self.folder / "module.rest")
        with pytest.warns(UserWarning, match="'callbacks'"):  # this one, kept as None
            net.save(path)
        state = {k: v.clone() for k, v in net.module_.state_dict().items()}
        self.saved.append((path, state, {k: v.clone() for k, v in net.masks_.items()}))


def test_a_network_training_csr_layers_saves_from_a_callback(tmp_path):
    # a layer training as CSR has its dense weight in the state dict, not in its parameters
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    clf = RESTClassifier(max_epochs=1, sparsity=0.9, layer_density="uniform",
                         sparse_compute="csr", validation_fraction=0.0, random_state=0,
                         module_params={"hidden_layer_sizes": (16,)}).fit(X, y)
    spy = _SaveEachEpoch(tmp_path)
    clf.set_params(warm_start=True, callbacks=[spy]).fit(X, y)
    assert clf.sparse_compute_layers_
    (path, state, masks), = spy.saved
    loaded = RESTClassifier.load(path)
    assert all(torch.equal(loaded.module_.state_dict()[k], v) for k, v in state.items())
    assert loaded.masks_.keys() == masks.keys()
    assert all(torch.equal(loaded.masks_[k], v) for k, v in masks.items())
    net, module_masks, _ = load(tmp_path / "module.rest", module=loaded.module_)
    assert _state_equal(net, loaded.module_) and module_masks.keys() == masks.keys()


def test_saving_during_the_first_fit_is_refused_not_written(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)

    class SaveEstimator(Callback):
        def on_epoch_end(self, net, **kwargs):
            net.save(tmp_path / "model.rest")

    with pytest.raises(NotFittedError, match="not yet the attributes fit sets when it ends"):
        RESTClassifier(max_epochs=1, validation_fraction=0.0,
                       callbacks=[SaveEstimator()]).fit(X, y)
    assert list(tmp_path.iterdir()) == []


def test_tensors_a_callback_adds_to_the_history_are_saved_and_a_warm_start_goes_on(tmp_path):
    # without them, history_ was left out of the file and a warm start of it failed
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)

    class Norms(Callback):
        def on_epoch_end(self, net, *, record, **kwargs):
            weights = [p.detach() for p in net.module_.parameters()]
            record["norm"] = torch.stack([w.norm() for w in weights]).sum()
            record["norms"] = torch.stack([w.norm() for w in weights]).to(torch.bfloat16)

    clf = RESTClassifier(max_epochs=1, validation_fraction=0.0, random_state=0,
                         callbacks=[Norms()]).fit(X, y)
    with pytest.warns(UserWarning, match="'callbacks'"):
        clf.save(tmp_path / "m.rest")
    loaded = RESTClassifier.load(tmp_path / "m.rest")
    (record,), (saved,) = clf.history_, loaded.history_
    for key in ("norm", "norms"):
        assert saved[key].dtype == record[key].dtype and torch.equal(saved[key], record[key])
    loaded.set_params(warm_start=True).fit(X, y)
    assert [h["epoch"] for h in loaded.history_] == [1, 2]


def test_history_entries_a_file_cannot_hold_are_left_out_and_a_warm_start_goes_on(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)

    class Tags(Callback):
        def on_epoch_end(self, net, *, record, **kwargs):
            record["tag"] = object()
            record["score"] = 0.5

    clf = RESTClassifier(max_epochs=1, validation_fraction=0.0, random_state=0,
                         callbacks=[Tags()]).fit(X, y)
    with pytest.warns(UserWarning, match=r"entries \['tag'\] of history_ not saved"):
        clf.save(tmp_path / "m.rest")
    loaded = RESTClassifier.load(tmp_path / "m.rest")
    (record,), (saved,) = clf.history_, loaded.history_
    assert saved == {k: v for k, v in record.items() if k != "tag"} and saved["score"] == 0.5
    loaded.set_params(warm_start=True, callbacks=None).fit(X, y)
    assert [h["epoch"] for h in loaded.history_] == [1, 2]


def test_a_history_with_entries_left_out_is_encoded_once(tmp_path, monkeypatch):
    # the fallback encoded the whole history, then every kept entry, then the kept records
    from rest_fair.persistence import model_file

    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    clf = RESTClassifier(max_epochs=3, validation_fraction=0.0, random_state=0).fit(X, y)
    for record in clf.history_:
        record["tag"], record["score"] = object(), [record["epoch"] + 0.5]
    scores = [record["score"] for record in clf.history_]
    encoded = []
    to_json = model_file.to_json
    monkeypatch.setattr(model_file, "to_json", lambda value, what: encoded.extend(
        [i for i, score in enumerate(scores) if value is score]) or to_json(value, what))
    with pytest.warns(UserWarning, match=r"entries \['tag'\] of history_ not saved"):
        clf.save(tmp_path / "m.rest")
    assert encoded == [0, 1, 2]
    loaded = RESTClassifier.load(tmp_path / "m.rest")
    assert loaded.history_ == [{k: v for k, v in r.items() if k != "tag"} for r in clf.history_]
    # a record whose keys a file cannot hold: history_ is left out, as before
    clf.history_[0][frozenset()] = 1.0
    with pytest.warns(UserWarning, match=r"fitted attributes not saved .*\['history_'\]"):
        clf.save(tmp_path / "n.rest")
    assert not hasattr(RESTClassifier.load(tmp_path / "n.rest"), "history_")


def test_a_file_without_history_predicts_and_refuses_a_warm_start_by_name(tmp_path):
    # earlier saves left history_ out where a callback stored objects in it: a warm start
    # of such a file failed with "AttributeError: ... 'history_'", as did efficiency_report
    X = np.random.default_rng(0).random((60, 5), dtype=np.float32)
    y = np.arange(60) % 2
    clf = RESTClassifier(sparsity=0.9, max_epochs=2, batch_size=16, random_state=0,
                         module_params={"hidden_layer_sizes": (16,)}).fit(X, y)
    clf.save(tmp_path / "m.rest")
    _rewrite_header(tmp_path / "m.rest", tmp_path / "old.rest",
                    lambda header: header["attributes"].pop("history_"))
    old = RESTClassifier.load(tmp_path / "old.rest")
    assert not hasattr(old, "history_")
    np.testing.assert_array_equal(old.predict(X), clf.predict(X))
    from rest_fair.efficiency import efficiency_report

    full_batches = efficiency_report(  # n_train_steps_ * batch_size samples
        old.module_, old.masks_, old.input_shape_, n_topology_updates=old.n_topology_updates_,
        n_train_steps=old.n_train_steps_, batch_size=16, n_train_samples=None, regrow="gradient")
    assert old.efficiency_report().loc["total", "training_flops_run"] == \
        full_batches.loc["total", "training_flops_run"] != \
        clf.efficiency_report().loc["total", "training_flops_run"]
    with pytest.raises(ValueError, match=r"warm_start=True continues the fitted network and "
                                         r"its history_, but this estimator has no history_"):
        old.set_params(warm_start=True).fit(X, y)
    np.testing.assert_array_equal(old.predict(X), clf.predict(X))  # untouched
    old.history_ = []  # as the message says: the network goes on, its history anew
    steps = old.n_train_steps_
    old.fit(X, y)
    assert [h["epoch"] for h in old.history_] == [1, 2] and old.n_train_steps_ > steps


def test_a_forged_tensor_value_is_a_model_file_error(tmp_path):
    net, masks = _masked_mlp(0.1)
    save((net, masks, {"t": torch.arange(3)}), tmp_path / "m.rest")
    assert torch.equal(load(tmp_path / "m.rest", module=net)[2]["t"], torch.arange(3))
    for forged in ({"__tensor__": [1], "dtype": "object"}, {"__tensor__": "abc", "dtype": "int64"}):
        _rewrite_header(tmp_path / "m.rest", tmp_path / "forged.rest",
                        lambda h, forged=forged: h["metadata"].update(t=forged))
        with pytest.raises(ModelFileError, match="no valid rest_fair header"):
            load(tmp_path / "forged.rest", module=net)


@pytest.mark.parametrize("name", ["predict_proba", "module_", "_warm_fixed_params",
                                  "inference_module_", "lr"])
def test_a_file_naming_attributes_save_never_writes_is_refused(tmp_path, name):
    # they would shadow a method or a parameter, or replace the network or private state
    clf, _ = _fitted()
    clf.save(tmp_path / "m.rest")
    _rewrite_header(tmp_path / "m.rest", tmp_path / "forged.rest",
                    lambda header: header["attributes"].update({name: "forged"}))
    with pytest.raises(ModelFileError, match=rf"names attributes \['{name}'\] that save"):
        RESTClassifier.load(tmp_path / "forged.rest")


def _dated_groups(n):
    import datetime

    import pandas as pd

    half = np.arange(n) // (n // 2)
    stamps = pd.to_datetime(["2020-01-01 00:00:00.000000001",
                             "2021-06-01 00:00:00.000000002"])[half]
    return {
        "datetime64": np.array(["2020-01-01", "2021-06-01"], dtype="M8[D]")[half],
        "datetime64_ns": np.asarray(stamps, dtype="M8[ns]"),
        "timedelta64": np.array([5, 7], dtype="m8[ms]")[half],
        "datetime64_pairs": np.stack([np.asarray(stamps), np.asarray(stamps)[::-1]], axis=1),
        "dates": [[datetime.date(2020, 1, 1), datetime.date(2021, 6, 1)][h] for h in half],
        "aware": pd.Series(stamps).dt.tz_localize("Europe/Paris"),
        "stamp_and_int": pd.DataFrame({"when": stamps, "site": np.arange(n) % 2}),
        "durations": pd.Series(pd.to_timedelta(half + 1, unit="s")),
        "periods": pd.Series(pd.period_range("2020-01", periods=2, freq="M")[half]),
        "bytes": np.array([b"a\xff", b"b"], dtype="S2")[half],
    }


@pytest.mark.parametrize("kind", list(_dated_groups(2)))
def test_dated_group_labels_come_back_of_their_types(tmp_path, kind):
    # such groups_ and group_weights_ (and bytes) were left out of the file, with a warning
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 2
    clf = RESTClassifier(module="mlp", module_params={"hidden_layer_sizes": (8,)},
                         max_epochs=1, validation_fraction=0.0, drop_fraction=0.0,
                         random_state=0).fit(X, y, groups=_dated_groups(40)[kind])
    clf.save(tmp_path / "m.rest")
    loaded = RESTClassifier.load(tmp_path / "m.rest")

    def typed(value):
        return (type(value).__name__, repr(value), getattr(value, "tzinfo", None) and
                str(value.tzinfo), tuple(typed(v) for v in value)
                if isinstance(value, tuple) else ())

    assert loaded.groups_ == clf.groups_
    assert [typed(g) for g in loaded.groups_] == [typed(g) for g in clf.groups_]
    assert loaded.group_weights_ == clf.group_weights_
    assert [typed(k) for k in loaded.group_weights_] == [typed(k) for k in clf.group_weights_]


def test_group_labels_a_file_cannot_hold_are_refused_when_saved(tmp_path):
    import datetime
    import enum

    class Site(enum.Enum):
        NORTH = 1
        SOUTH = 2

    class Level(enum.IntEnum):  # an int, which a file would give back as a plain one
        LOW = 1
        HIGH = 2

    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 2
    params = {"module": "mlp", "module_params": {"hidden_layer_sizes": (8,)}, "max_epochs": 1,
              "validation_fraction": 0.0, "drop_fraction": 0.0, "random_state": 0}
    paris = datetime.timezone(datetime.timedelta(hours=1), "Paris")  # not a fixed offset's name
    for groups, match in (([Site.NORTH, Site.SOUTH] * 20, "value of type Site"),
                          ([Level.LOW, Level.HIGH] * 20,
                           "<Level.LOW: 1>, of type Level, would be written, and read back, "
                           "as the int 1"),
                          ([datetime.datetime(2020, 1, 1, tzinfo=paris)] * 40,
                           "would not read back as itself")):
        clf = RESTClassifier(**params).fit(X, y, groups=groups)
        with pytest.raises(TypeError, match=rf"fitted attribute 'groups_'.*{match}.*group "
                                            r"labels given to fit"):
            clf.save(tmp_path / "m.rest")
        assert not (tmp_path / "m.rest").exists()


def test_parameters_and_metadata_of_a_subclass_of_int_float_or_str_are_refused(tmp_path):
    # an IntEnum parameter was written as a plain int and came back as one, so get_params()
    # after load differed from before save
    import enum

    class Width(enum.IntEnum):
        SMALL = 8

    class Ratio(float):
        pass

    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    clf = RESTClassifier(module="mlp", module_params={"hidden_layer_sizes": (Width.SMALL,)},
                         max_epochs=Width.SMALL, validation_fraction=0.0,
                         random_state=0).fit(X, np.arange(40) % 2)
    with pytest.raises(TypeError, match=r"parameter 'max_epochs': <Width.SMALL: 8>, of type "
                                        r"Width, would be written, and read back, as the int 8"):
        clf.save(tmp_path / "m.rest")
    assert not (tmp_path / "m.rest").exists()
    net, masks = _masked_mlp(0.1)
    with pytest.raises(TypeError, match=r"metadata: 0.5, of type Ratio, .* as the float 0.5"):
        save((net, masks, {"ratio": Ratio(0.5)}), tmp_path / "m.rest")
    save((net, masks, {"ratio": np.float64(0.5), "name": np.str_("a")}), tmp_path / "m.rest")
    assert load(tmp_path / "m.rest", module=net)[2] == {"ratio": 0.5, "name": "a"}


def test_numpy_dates_and_durations_keep_their_unit_and_type(tmp_path):
    # a nanosecond datetime64 in metadata was written as an int, and read back as one
    import pandas as pd

    net, masks = _masked_mlp(0.1)
    metadata = {"at": np.datetime64("2020-01-01T00:00:00.000000001"),
                "none": np.datetime64("NaT", "D"), "took": np.timedelta64(5, "ms"),
                "day": pd.Timestamp("2020-01-01").date(), "stamp": pd.Timestamp("2020-01-01"),
                "times": np.array(["2020-01-01T01", "NaT"], dtype="M8[h]")}
    save((net, masks, metadata), tmp_path / "m.rest")
    back = load(tmp_path / "m.rest", module=net)[2]
    for key in ("at", "took", "day", "stamp"):
        assert type(back[key]) is type(metadata[key]) and back[key] == metadata[key], key
    assert back["at"].dtype == metadata["at"].dtype and np.isnat(back["none"])
    assert back["none"].dtype == np.dtype("M8[D]")
    np.testing.assert_array_equal(back["times"], metadata["times"])
    assert back["times"].dtype == metadata["times"].dtype


def test_a_forged_date_is_a_model_file_error(tmp_path):
    net, masks = _masked_mlp(0.1)
    save((net, masks, {"t": np.datetime64("2020-01-01")}), tmp_path / "m.rest")
    for forged in ({"__date__": 5}, {"__datetime64__": [1, "<f8"]}, {"__timedelta__": [1e300]},
                   {"__timestamp__": ["noon", "ns", None]}, {"__period__": []}):
        _rewrite_header(tmp_path / "m.rest", tmp_path / "forged.rest",
                        lambda h, forged=forged: h["metadata"].update(t=forged))
        with pytest.raises(ModelFileError, match="no valid rest_fair header"):
            load(tmp_path / "forged.rest", module=net)


def test_a_file_open_in_text_mode_is_refused_naming_the_mode(tmp_path):
    # open(path) read the bytes as UTF-8 and failed with a UnicodeDecodeError; a file
    # opened with open(path, "w") failed with "write() argument must be str, not bytes"
    net, masks = _masked_mlp(0.1)
    save((net, masks, META), tmp_path / "m.rest")
    with open(tmp_path / "m.rest", encoding="utf-8") as fh, \
            pytest.raises(TypeError, match=r"m\.rest is open in text mode.*open\(path, 'rb'\)"):
        RESTClassifier.load(fh)
    with open(tmp_path / "t.rest", "w", encoding="utf-8") as fh, \
            pytest.raises(TypeError, match=r"t\.rest is open in text mode; a model file is "
                                           r"written to a binary file \(open\(path, 'wb'\)\)"):
        save((net, masks, META), fh)
    assert (tmp_path / "t.rest").read_bytes() == b""
    with pytest.raises(TypeError, match=r"<file object> is open in text mode"):
        save((net, masks, META), io.StringIO())
    with tempfile.NamedTemporaryFile("w+", encoding="utf-8", dir=tmp_path) as fh, \
            pytest.raises(TypeError, match="is open in text mode; a model file is written"):
        save((net, masks, META), fh)
    with tempfile.NamedTemporaryFile("r", encoding="utf-8", dir=tmp_path) as fh:
        with open(fh.name, "wb") as out:
            save((net, masks, META), out)
        with pytest.raises(TypeError, match="is open in text mode; a model file is read"):
            load(fh)


def test_dicts_come_back_with_their_keys_in_order(tmp_path):
    # the header's keys were sorted: pd.DataFrame(loaded.history_) had its columns sorted
    clf, _ = _fitted(infer_groups="jtt", jtt_epochs=1, upweight=3.0)
    clf.save(tmp_path / "m.rest")
    loaded = RESTClassifier.load(tmp_path / "m.rest")
    assert [list(r) for r in loaded.history_] == [list(r) for r in clf.history_]
    assert next(iter(loaded.history_[0])) == "epoch"
    assert list(loaded.inferred_groups_overlap_) == list(clf.inferred_groups_overlap_)
    assert list(loaded.group_weights_) == list(clf.group_weights_)
    net, masks = _masked_mlp(0.1)
    save((net, masks, {"z": 1, "a": {"y": 2, "b": 3}}), tmp_path / "n.rest")
    metadata = load(tmp_path / "n.rest", module=net)[2]
    assert list(metadata) == ["z", "a"] and list(metadata["a"]) == ["y", "b"]


def test_a_stream_holding_two_model_files_is_refused_not_read_as_the_second(tmp_path):
    # zipfile reads the last archive of its bytes: the first load gave the second network
    first, masks = _masked_mlp(0.1, seed=0)
    second, _ = _masked_mlp(0.1, seed=1)
    stream = io.BytesIO()
    save((first, masks, META), stream)
    save((second, masks, META), stream)
    stream.seek(0)
    with pytest.raises(ModelFileError, match=r"<BytesIO> is damaged .* its archive is not at "
                                             r"its start: other bytes come first"):
        load(stream)
    (tmp_path / "two.rest").write_bytes(stream.getvalue())
    with pytest.raises(ModelFileError, match=r"two\.rest is damaged .* not at its start"):
        RESTClassifier.load(tmp_path / "two.rest")


def test_a_leading_tilde_is_the_home_folder_as_for_checkpoints(tmp_path, monkeypatch):
    # save("~/m.rest") failed for want of a folder "~" in the working directory, or wrote
    # into one
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    (work / "~").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    clf, X = _fitted()
    clf.save("~/m.rest")
    assert (home / "m.rest").is_file() and not any((work / "~").iterdir())
    np.testing.assert_array_equal(RESTClassifier.load(b"~/m.rest").predict(X), clf.predict(X))
    net, masks = _masked_mlp(0.1)
    save((net, masks, META), Path("~/n.rest"))
    assert _state_equal(load("~/n.rest")[0], net) and not any((work / "~").iterdir())
