"""RESTClassifier: behaviour, inputs, errors, model selection, reweighting, devices."""

from __future__ import annotations

import copy
import importlib.util
import math
import pickle
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy import stats
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import rest_fair.training.sampler as training
from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback, Checkpoint, EarlyStopping
from rest_fair.exceptions import MissingDependencyError
from rest_fair.reweighting import cell_weights, draw_indices, sample_weights_for

FAST = dict(max_epochs=8, batch_size=64, lr=0.05, random_state=0, device="cpu",
            module_params={"hidden_layer_sizes": (32, 32)})


def _clf(**params) -> RESTClassifier:
    return RESTClassifier(**{**FAST, **params})


# ----------------------------------------------------------------- basic behaviour
def test_fit_predict_and_fitted_attributes(data):
    X, y, g = data
    clf = _clf(sparsity=0.9).fit(X, y, groups=g)
    assert clf.score(X, y) > 0.6
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(1), 1)
    assert list(clf.classes_) == [0, 1, 2] and clf.n_features_in_ == 12
    assert clf.groups_ == ["majority", "minority"]
    # plain Python values, as the labels ("balanced" gave numpy floats)
    assert {type(w) for w in clf.group_weights_.values()} == {float}
    assert len(clf.history_) == 8
    assert set(clf.history_[0]) >= {"epoch", "train_loss", "valid_loss", "valid_acc",
                                    "valid_worst_group_acc", "density", "lr", "dur",
                                    "n_topology_updates"}
    report = clf.sparsity_report()
    assert (report["n_active"].sum() / report["n_weights"].sum()) == pytest.approx(0.1, abs=0.01)
    params = dict(clf.module_.named_parameters())
    for name, mask in clf.masks_.items():
        assert torch.all(params[name].detach()[~mask] == 0)
    assert clf.n_topology_updates_ > 0


def test_dense_has_no_masks(data):
    X, y, _ = data
    clf = _clf(sparsity=0.0).fit(X, y)
    assert clf.masks_ == {} and clf.history_[-1]["density"] == 1.0


def test_same_seed_same_predictions_and_global_rng_untouched(data):
    X, y, g = data
    state = torch.random.get_rng_state()
    p1 = _clf().fit(X, y, groups=g).predict_proba(X)
    assert torch.equal(state, torch.random.get_rng_state())
    p2 = _clf().fit(X, y, groups=g).predict_proba(X)
    p3 = _clf(random_state=1).fit(X, y, groups=g).predict_proba(X)
    assert np.array_equal(p1, p2)
    assert not np.array_equal(p1, p3)


@pytest.mark.parametrize("sparse_compute", ["masked", "csr"])
def test_best_checkpoint_is_restored(data, sparse_compute):
    # the kept weights are a copy: later epochs (in place, or through a CSR layer's
    # values) do not change them
    X, y, g = data
    X_val, y_val, g_val = X[:150], y[:150], g[:150]
    clf = _clf(max_epochs=10, lr=0.2, sparsity=0.9, sparse_compute=sparse_compute).fit(
        X[150:], y[150:], groups=g[150:], validation_data=(X_val, y_val, g_val))
    keys = [(h["valid_worst_group_acc"], h["valid_acc"]) for h in clf.history_]
    best = max(range(len(keys)), key=lambda i: (keys[i], -i))
    assert clf.best_epoch_ == best + 1
    assert [h["best"] for h in clf.history_].count(True) >= 1
    pred = clf.predict(X_val)
    assert np.mean(pred == y_val) == pytest.approx(clf.history_[best]["valid_acc"])


def test_clone_pickle_pipeline_gridsearch(data):
    X, y, g = data
    clf = _clf()
    assert clone(clf).get_params() == clf.get_params()
    clf.fit(X, y, groups=g)
    optimizer = clf.optimizer_
    restored = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(restored.predict_proba(X), clf.predict_proba(X))
    assert clf.optimizer_ is optimizer and "optimizer_" not in vars(restored)
    pipe = make_pipeline(StandardScaler(), _clf())
    pipe.fit(X, y, restclassifier__groups=g)
    assert pipe.named_steps["restclassifier"].groups_ == ["majority", "minority"]
    search = GridSearchCV(_clf(max_epochs=3), {"sparsity": [0.0, 0.8]}, cv=2,
                          error_score="raise").fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_params_["sparsity"] in (0.0, 0.8)


# --------------------------------------------------------------------- inputs
def test_string_labels_dataframe_and_intersectional_groups(data):
    X, y, g = data
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(12)])
    labels = np.array(["cat", "dog", "eel"])[y]
    sensitive = pd.DataFrame({"a": g, "b": (X[:, 1] > 0).astype(int)})
    clf = _clf().fit(frame, labels, groups=sensitive)
    assert list(clf.feature_names_in_) == list(frame.columns)
    assert set(clf.predict(frame)) <= {"cat", "dog", "eel"}
    assert ("minority", 1) in clf.groups_ and len(clf.groups_) == 4


def test_sparse_input_and_torch_dataset(data):
    X, y, _ = data
    dense = _clf().fit(X, y)
    from_sparse = _clf().fit(sp.csr_matrix(X), y)
    np.testing.assert_allclose(from_sparse.predict_proba(sp.csr_matrix(X)),
                               dense.predict_proba(X), atol=1e-5)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return torch.from_numpy(X[i]), int(y[i]), {"meta": i}

    from_dataset = _clf().fit(Items(), y)
    np.testing.assert_allclose(from_dataset.predict_proba(Items()), dense.predict_proba(X),
                               atol=1e-5)


def test_images_with_cnn():
    rng = np.random.default_rng(0)
    X = rng.random((120, 3, 12, 12), dtype=np.float32)
    y = (X[:, 0].mean((1, 2)) > X[:, 1].mean((1, 2))).astype(int)
    clf = _clf(module="auto", max_epochs=3, module_params=None).fit(X, y)
    assert type(clf.module_).__name__ == "SmallCNN"
    assert clf.predict(X).shape == (120,)
    assert clf.input_shape_ == (3, 12, 12)


def test_user_module_factory(data):
    X, y, _ = data

    def factory(input_shape, n_classes, width=8):
        return torch.nn.Sequential(torch.nn.Linear(input_shape[0], width), torch.nn.ReLU(),
                                   torch.nn.Linear(width, n_classes))

    clf = _clf(module=factory, module_params={"width": 16}).fit(X, y)
    assert clf.module_[0].out_features == 16
    assert set(clf.masks_) == {"0.weight", "2.weight"}


@pytest.mark.parametrize("n_out", [1, 4])
def test_a_user_module_without_one_logit_per_class_is_refused(data, n_out):
    # 3 classes: one output failed inside cross-entropy ("Target 1 is out of bounds"), and
    # four trained and gave predict_proba four columns beside three classes_
    X, y, _ = data
    net = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, n_out))
    clf = _clf(module=net, module_params=None, max_epochs=1)
    with pytest.raises(ValueError, match=rf"is of shape \(64, {n_out}\); it must be a tensor "
                                         r"of shape \(64, 3\), one logit per class"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"sparsity": 1.0}, "sparsity must be a number in \\[0, 1\\)"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparse_init": "lottery"}, "sparse_init must be one of"),
        ({"layer_density": "random"}, "layer_density must be one of"),
        ({"dense_layers": "head"}, "dense_layers must be"),
        ({"regrow": "magnitude"}, "regrow must be one of"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"upweight": "inverse"}, "upweight must be one of"),
        ({"upweight": -2.0}, "upweight"),
        ({"reweight": "both"}, "reweight must be one of"),
        pytest.param({"module": "transformer"}, "module must be one of",
                     marks=pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                              reason="without torchvision: the next test")),
        ({"device": "tpu"}, "device must be"),
        ({"device": "bogus"}, "device must be"),
        ({"random_state": -1}, "random_state must be None, a RandomState or an integer"),
        ({"random_state": 2**40}, "random_state must be"),
        ({"random_state": np.random.default_rng(0)}, "random_state must be"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"update_interval": "often"}, "update_interval"),
        ({"lr_scheduler": "step"}, "lr_scheduler must be one of"),
        # beyond float32's range: torch's optimizer failed with "value cannot be converted
        # to type float without overflow", and GroupDRO's weights became NaN
        ({"lr": 1e40}, r"lr must be a number in \(0, 3.4028234663852886e\+38\] \(the largest "
                       r"float32"),
        ({"weight_decay": 1e40}, r"weight_decay must be a number in \[0, 3.40282"),
        ({"groupdro_eta": 1e300}, r"groupdro_eta must be a number in \(0, 3.40282"),
        # integers beyond int64, and beyond float's range: numpy's "ufunc 'isfinite' not
        # supported for the input types" named no parameter
        ({"batch_size": 2**70}, r"batch_size must be an integer in \[1, 2\*\*63\); got 1180"),
        ({"max_epochs": 2**70}, r"max_epochs must be an integer in \[1, 2\*\*63\)"),
        ({"upweight": 10**400}, r"upweight must be None or a dict .* a number in \(0, inf\)"),
    ],
)
def test_bad_parameters_name_the_problem(data, params, match):
    X, y, _ = data
    with pytest.raises(ValueError, match=match):
        _clf(**params).fit(X, y)


def test_real_parameters_of_any_real_type_fit_as_their_floats(data):
    # a Fraction passed validation (a numbers.Real) and then failed in torch's optimizer
    # ("_foreach_add_() received an invalid combination of arguments") or in a message's
    # ":g" format; update_interval=1000 warns, formatting drop_fraction and update_end
    from fractions import Fraction as F

    X, y, g = data
    g = (g == "minority").astype(int)
    floats = dict(lr=0.05, weight_decay=0.001, momentum=0.5, sparsity=0.75, drop_fraction=0.25,
                  update_end=0.5, validation_fraction=0.25, sparse_compute_threshold=0.5,
                  groupdro_eta=0.125, groupdro_adjustment=0.5, distributed_timeout=10.0)
    fractions = {name: F(value).limit_denominator() for name, value in floats.items()}
    fits = []
    for params, upweight in ((floats, {0: 1.0, 1: 2.5}), (fractions, {0: F(1), 1: F(5, 2)})):
        with pytest.warns(UserWarning, match="update_end=0.5, .* drop_fraction=0.25 asks"):
            fits.append(_clf(max_epochs=2, objective="groupdro", update_interval=1000,
                             upweight=upweight, **params).fit(X, y, groups=g))
    np.testing.assert_array_equal(fits[0].predict_proba(X), fits[1].predict_proba(X))
    assert fits[1].get_params()["lr"] == F(1, 20)  # the parameters are as given
    assert isinstance(fits[1].lr, F) and fits[1].upweight == {0: F(1), 1: F(5, 2)}
    fit = _clf(max_epochs=1, upweight=F(4)).fit(X, y, groups=g)
    assert set(fit.group_weights_.values()) == {1.0, 4.0}


def test_integer_parameters_end_below_two_to_the_63():
    # 2**63 passed numpy's isfinite, so max_epochs=2**63 was taken (a fit without end)
    est = _clf(max_epochs=2**63)
    with pytest.raises(ValueError, match=r"max_epochs must be an integer in \[1, 2\*\*63\)"):
        est._validate_params()
    _clf(max_epochs=2**63 - 1)._validate_params()


def test_an_unknown_module_name_without_torchvision_names_both(data, monkeypatch):
    # a name that is not built in could be a torchvision model: without torchvision the
    # error says it is not built in and what would run it
    X, y, _ = data
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(MissingDependencyError,
                       match=r"module='transformer' \(not a built-in network .*torchvision"):
        _clf(module="transformer").fit(X, y)


def test_scikit_learns_parameter_hook_uses_our_constraints():
    # BaseEstimator._validate_params read our constraint table as its own and failed with
    # "Unknown constraint type" for every estimator, valid or not
    RESTClassifier()._validate_params()
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        RESTClassifier(sparsity=1.5)._validate_params()


def _unused_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "is only used when" in str(w.message)]


@pytest.mark.parametrize(("params", "message"), [
    ({"groupdro_eta": 0.5}, "groupdro_eta=0.5 is only used when objective is 'groupdro'; "
                            "with objective='erm' it is ignored (its default is 0.01)."),
    ({"groupdro_adjustment": 1.0}, "groupdro_adjustment=1.0 is only used when objective is "
                                   "'groupdro'; with objective='erm' it is ignored"),
    ({"jtt_epochs": 2}, "jtt_epochs=2 is only used when infer_groups is 'jtt'; with "
                        "infer_groups=None it is ignored (its default is 5)."),
    ({"momentum": 0.5, "optimizer": "adam"}, "momentum=0.5 is only used when optimizer is "
                                             "'sgd'; with optimizer='adam' it is ignored"),
    # JTT's identification model (plain ERM) leaves GroupDRO's and its own unused: not
    # warned about, and the final model's unused momentum once
    ({"momentum": 0.5, "optimizer": "adam", "infer_groups": "jtt", "objective": "groupdro",
      "groupdro_eta": 0.5, "jtt_epochs": 1}, "momentum=0.5 is only used when optimizer"),
], ids=["eta", "adjustment", "jtt_epochs", "momentum", "jtt"])
def test_a_parameter_its_method_leaves_unused_is_warned_about_once(data, params, message):
    # as scikit-learn's "l1_ratio parameter is only used when penalty is 'elasticnet'"; it
    # was ignored silently
    X, y, g = data
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _clf(max_epochs=1, **params).fit(X, y, groups=g)
    [warned] = _unused_warnings(record)
    assert message in warned
    assert [w.filename for w in record if str(w.message) == warned] == [__file__]


def test_parameters_at_their_defaults_or_used_are_not_warned_about(data):
    X, y, g = data
    for params in ({}, {"objective": "groupdro", "groupdro_eta": 0.5, "groupdro_adjustment": 1.0},
                   {"infer_groups": "jtt", "jtt_epochs": 1, "upweight": 5},
                   {"optimizer": "adamw"}, {"momentum": 0.5}):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            _clf(max_epochs=1, **params).fit(X, y, groups=g)
        assert _unused_warnings(record) == [], params


def test_bad_inputs_name_the_problem(data):
    X, y, g = data
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _clf().fit(bad, y)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        _clf().fit(bad, y)
    with pytest.raises(ValueError, match="y has 599 samples but X has 600"):
        _clf().fit(X, y[:-1])
    with pytest.raises(ValueError, match="groups has 10 samples but X has 600"):
        _clf().fit(X, y, groups=g[:10])
    with pytest.raises(ValueError, match="sample_weight has 5 samples"):
        _clf().fit(X, y, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="negative"):
        _clf().fit(X, y, sample_weight=-np.ones(600))
    with pytest.raises(ValueError, match="at least 2 classes"):
        _clf().fit(X, np.zeros(600))
    with pytest.raises(ValueError, match="missing values"):
        _clf().fit(X, y, groups=np.where(g == "minority", None, g))
    with pytest.raises(ValueError, match="no weight for groups"):
        _clf(upweight={"majority": 1.0}).fit(X, y, groups=g)
    with pytest.raises(ValueError, match="validation_data"):
        _clf().fit(X, y, validation_data=X)
    with pytest.raises(ValueError, match="CUDA is not available"):
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        _clf(device="cuda").fit(X, y)


@pytest.mark.parametrize("to_input", [np.asarray, sp.csr_matrix], ids=["dense", "sparse"])
def test_float64_values_beyond_float32_are_refused_at_input(data, to_input):
    # 1e39 is finite in float64 and infinite in the network's float32: the fit ran an epoch
    # and reported a diverged training, predict a non-finite network output
    X, y, _ = data
    big = X.astype(np.float64)
    big[3, 2], big[5, 1] = 1e39, -1e300
    match = r"X holds values beyond the float32 range \(2 of magnitude above 3.403e\+38\)"
    with pytest.raises(ValueError, match=match):
        _clf().fit(to_input(big), y)
    clf = _clf(max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match=match):
        clf.predict_proba(to_input(big))
    with pytest.raises(ValueError, match=match):
        _clf().fit(X, y, validation_data=(to_input(big), y))


def test_inputs_are_not_modified(data):
    X, y, g = data
    X0, y0, g0, w = X.copy(), y.copy(), g.copy(), np.ones(len(y))
    _clf().fit(X, y, groups=g, sample_weight=w)
    assert np.array_equal(X, X0) and np.array_equal(y, y0) and np.array_equal(g, g0)
    assert np.array_equal(w, np.ones(len(y)))


@pytest.mark.parametrize("to_input", [np.asarray, sp.csr_matrix], ids=["dense", "sparse"])
def test_a_float64_input_holds_no_more_memory_than_a_float32_one_during_fit(to_input):
    # the training and validation rows of a float64 X are read in place and each batch is
    # converted for the float32 network: no float64 copy stays alive through the fit
    import tracemalloc

    X = np.random.default_rng(0).standard_normal((20_000, 50))
    y = (X[:, 0] > 0).astype(int)

    def held_during_fit(X, y):
        held = []

        class Measure(Callback):
            def on_epoch_end(self, net, **kwargs):
                held.append(tracemalloc.get_traced_memory()[0] - before)

        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            _clf(max_epochs=1, batch_size=2000, callbacks=[Measure()]).fit(X, y)
        finally:
            tracemalloc.stop()
        return held[0]

    held_during_fit(to_input(X[:500]), y[:500])  # the first fit's one-time allocations
    in_float32 = held_during_fit(to_input(X.astype(np.float32)), y)
    in_float64 = held_during_fit(to_input(X), y)
    assert in_float64 < in_float32 + 0.2 * X.size * 4


@pytest.mark.parametrize("dtype", [np.float16, np.int64, bool])
@pytest.mark.parametrize("sparse_compute", ["masked", "csr"])
def test_bf16_fits_of_any_input_dtype_keep_exact_masks_and_output_dtypes(data, dtype,
                                                                          sparse_compute):
    X, y, _ = data
    X = (X > 0) if dtype is bool else (X * 4).astype(dtype)
    clf = _clf(sparsity=0.9, precision="bf16", sparse_compute=sparse_compute,
               max_epochs=3).fit(X, y)
    params = dict(clf.module_.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}
    for name, mask in clf.masks_.items():
        assert torch.all(params[name].detach()[~mask] == 0)
    assert clf.predict_logits(X).dtype == np.float32
    proba, log_proba = clf.predict_proba(X), clf.predict_log_proba(X)
    assert proba.dtype == log_proba.dtype == np.float64
    assert np.isfinite(proba).all() and np.abs(proba.sum(1) - 1).max() < 1e-12


def test_float64_sparse_rows_match_the_dense_fit(data):
    X, y, _ = data
    X64 = X.astype(np.float64)
    dense = _clf().fit(X, y)
    np.testing.assert_array_equal(_clf().fit(X64, y).predict_proba(X), dense.predict_proba(X))
    np.testing.assert_allclose(_clf().fit(sp.csr_matrix(X64), y).predict_proba(X),
                               dense.predict_proba(X), atol=1e-5)


# ------------------------------------------------------------------ reweighting
def test_lambda_semantics_balanced_and_dict():
    y = np.array([0] * 90 + [0] * 10 + [1] * 80 + [1] * 20)
    g = np.array([0] * 90 + [1] * 10 + [1] * 80 + [0] * 20)
    w = cell_weights(y, g, ["a", "b"], 30.0)
    assert w == {(0, 0): 1.0, (0, 1): 30.0, (1, 0): 30.0, (1, 1): 1.0}
    bal = sample_weights_for(y, g, cell_weights(y, g, ["a", "b"], "balanced"))
    share_b = bal[g == 1].sum() / bal.sum()
    assert share_b == pytest.approx(0.5)
    w = cell_weights(y, g, ["a", "b"], {"a": 1.0, "b": 4.0})
    assert w[(0, 1)] == 4.0 and w[(1, 0)] == 1.0


def test_sampler_draws_groups_with_requested_frequency():
    # 950 aligned, 50 conflicting, lambda = 10 -> expected conflicting share 500 / 1450
    y = np.zeros(1000, dtype=int)
    g = np.r_[np.zeros(950, dtype=int), np.ones(50, dtype=int)]
    weights = sample_weights_for(y, g, cell_weights(y, g, [0, 1], 10.0))
    draws = draw_indices(weights, 200_000, generator=torch.Generator().manual_seed(0)).numpy()
    observed = np.bincount(g[draws], minlength=2)
    expected = 200_000 * np.array([950, 500]) / 1450
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # and a wrong frequency (lambda ignored, i.e. 1) is firmly rejected
    assert stats.chisquare(observed, 200_000 * np.array([0.95, 0.05])).pvalue < 1e-12


@pytest.mark.parametrize("lam", [1.0, 10.0, 80.0])
def test_lambda_reaches_the_training_loop(data, monkeypatch, lam):
    X, y, _ = data
    conflict = np.zeros(len(y), dtype=bool)
    conflict[::20] = True  # 5 % "conflicting"
    drawn = []
    real = training.draw_indices

    def spy(weights, n, *, generator):
        idx = real(weights, n, generator=generator)
        drawn.append(idx.numpy())
        return idx

    monkeypatch.setattr(training, "draw_indices", spy)
    clf = _clf(upweight=lam, validation_fraction=0.0, max_epochs=20).fit(X, y, groups=conflict)
    if lam == 1.0:
        assert drawn == []  # equal weights: plain shuffling, no sampler
        return
    share = conflict[np.concatenate(drawn)].mean()
    n_c = conflict.sum()
    expected = lam * n_c / (len(y) - n_c + lam * n_c)
    assert share == pytest.approx(expected, rel=0.1)
    assert {w for (_, grp), w in clf.group_weights_.items() if grp} == {lam}


@pytest.fixture
def epoch_orders(monkeypatch) -> list:
    """The order of every epoch's samples that the fits of the test draw, as they draw them."""
    orders = []
    real = training.EpochSampler.global_order

    def spy(self):
        order = real(self)
        orders.append(order.numpy().copy())
        return order

    monkeypatch.setattr(training.EpochSampler, "global_order", spy)
    return orders


@pytest.mark.parametrize("upweight", [5.0, {0: 1.0, 1: 4.0, 2: 0.5}, {0: 0.0, 1: 4.0, 2: 1.0},
                                      "balanced"])
def test_epochs_draw_every_cell_in_proportion_to_its_weight(epoch_orders, upweight):
    # three classes; class 0 holds groups 0 and 1, class 1 groups 1 and 2, class 2 only
    # group 2
    rng = np.random.RandomState(0)
    y = rng.randint(0, 3, 600)
    g = np.where(y == 0, rng.rand(600) < 0.1, np.where(y == 1, 1 + (rng.rand(600) < 0.2), 2))
    X = rng.randn(600, 5).astype(np.float32)
    orders = epoch_orders
    params = dict(upweight=upweight, validation_fraction=0.0, max_epochs=60, batch_size=200,
                  sparsity=0.0, module_params={"hidden_layer_sizes": (4,)})
    clf = _clf(**params).fit(X, y, groups=g)
    cells = y * 3 + g
    cell_weight = np.array([clf.group_weights_.get((c, k), 0.0)
                            for c in range(3) for k in range(3)])
    # an epoch draws as many as there are samples of a positive weight (a group weighed 0
    # is left out)
    assert [len(o) for o in orders] == [np.count_nonzero(cell_weight[cells])] * 60
    drawn = np.bincount(cells[np.concatenate(orders)], minlength=9)
    share = np.bincount(cells, minlength=9) * cell_weight
    expected = share / share.sum() * drawn.sum()
    assert np.all(drawn[expected == 0] == 0)
    assert stats.chisquare(drawn[expected > 0], expected[expected > 0]).pvalue > 1e-3
    if upweight == 5.0:  # the minority of a class is its less frequent group
        assert clf.group_weights_ == {(0, 0): 1.0, (0, 1): 5.0, (1, 1): 1.0, (1, 2): 5.0,
                                      (2, 2): 1.0}
    # a sample of weight 0 is never drawn: an epoch draws as many as weigh more (less a
    # trailing batch of one sample)
    orders.clear()
    weight = rng.choice([0.0, 1.0, 3.0], 600)
    _clf(**params).fit(X, y, groups=g, sample_weight=weight)
    n_drawn = np.count_nonzero((weight > 0) & (cell_weight[cells] > 0))
    drawn_per_epoch = min(n_drawn, training.n_batches(n_drawn, 200) * 200)
    assert [len(o) for o in orders] == [drawn_per_epoch] * 60
    assert np.all(weight[np.concatenate(orders)] > 0)


@pytest.mark.parametrize(("upweight", "reweight", "validation_fraction"),
                         [(None, "sampler", 0.0), ("balanced", "sampler", 0.0),
                          (5.0, "sampler", 0.0), ("balanced", "loss", 0.0),
                          ("balanced", "sampler", 0.1), (5.0, "loss", 0.3)])
def test_a_sample_of_weight_zero_trains_as_if_removed(epoch_orders, monkeypatch, upweight,
                                                      reweight, validation_fraction):
    import rest_fair._fit as fit_module

    # half of group 0 (the majority of class 0) weighs 0, as a bagging ensemble's
    # out-of-bag rows: the cell weights, the epochs' samples, the validation split and the
    # fitted network are those of the fit without these rows
    rng = np.random.RandomState(1)
    y = rng.randint(0, 2, 400)
    g = (rng.rand(400) < np.where(y == 0, 0.4, 0.6)).astype(int)
    X = (rng.randn(400, 5) + y[:, None]).astype(np.float32)
    weight = rng.choice([1.0, 2.0], 400)
    weight[(g == 0) & (y == 0) & (rng.rand(400) < 0.5)] = 0.0
    kept = np.flatnonzero(weight)
    orders, trained = epoch_orders, []  # the epochs draw from the training rows of a fit
    real = fit_module._hold_out

    def spy(*args, **kwargs):
        train_idx, valid = real(*args, **kwargs)
        trained.append(train_idx)
        return train_idx, valid

    monkeypatch.setattr(fit_module, "_hold_out", spy)
    params = dict(upweight=upweight, reweight=reweight,
                  validation_fraction=validation_fraction, max_epochs=3, sparsity=0.5)
    removed = _clf(**params).fit(X[kept], y[kept], groups=g[kept], sample_weight=weight[kept])
    expected = [kept[trained[0][o]] for o in orders]
    orders.clear()
    clf = _clf(**params).fit(X, y, groups=g, sample_weight=weight)
    assert clf.group_weights_ == removed.group_weights_
    assert all(np.array_equal(trained[1][a], b) for a, b in zip(orders, expected, strict=True))
    # no sample of weight 0 is held out: each is a training row, which no epoch draws
    assert np.all(np.isin(np.flatnonzero(weight == 0), trained[1]))
    np.testing.assert_array_equal(clf.predict_proba(X), removed.predict_proba(X))
    assert [{k: v for k, v in h.items() if k != "dur"} for h in clf.history_] == [
        {k: v for k, v in h.items() if k != "dur"} for h in removed.history_]


@pytest.mark.parametrize("reweight", ["loss", "sampler"])
def test_a_group_that_upweight_weighs_zero_is_never_visited(epoch_orders, reweight):
    # group 0 weighs 0: its samples are in no loss, so no epoch visits them, and the fit is
    # the one without them (with the sampler too: the epochs are shuffles, not draws)
    rng = np.random.RandomState(2)
    y = rng.randint(0, 2, 300)
    g = rng.randint(0, 2, 300)
    X = (rng.randn(300, 5) + y[:, None]).astype(np.float32)
    kept = np.flatnonzero(g == 1)
    orders = epoch_orders
    params = dict(reweight=reweight, validation_fraction=0.0, max_epochs=3, sparsity=0.5)
    clf = _clf(upweight={0: 0.0, 1: 1.0}, **params).fit(X, y, groups=g)
    assert [len(o) for o in orders] == [len(kept)] * 3
    assert np.all(g[np.concatenate(orders)] == 1)
    visited = [o.copy() for o in orders]
    orders.clear()
    removed = _clf(upweight={1: 1.0}, **params).fit(X[kept], y[kept], groups=g[kept])
    assert all(np.array_equal(a, kept[b]) for a, b in zip(visited, orders, strict=True))
    np.testing.assert_array_equal(clf.predict_proba(X), removed.predict_proba(X))


def test_loss_reweighting_uses_weights_not_sampler(data, monkeypatch):
    X, y, g = data
    monkeypatch.setattr(training, "draw_indices", lambda *a, **k: pytest.fail("sampler used"))
    clf = _clf(reweight="loss").fit(X, y, groups=g)
    assert clf.score(X, y) > 0.5
    # the same run (same order of batches) with equal weights ends elsewhere: the loss
    # weights were used
    unweighted = _clf(reweight="loss", upweight=1.0).fit(X, y, groups=g)
    assert not np.allclose(clf.predict_proba(X), unweighted.predict_proba(X), atol=1e-3)


def test_held_out_sample_weights_weigh_the_validation_scores():
    # half the labels are wrong and weigh 0: the fit learns the others, and the held-out
    # rows judge its epochs by them too (unweighted, the validation accuracy stayed near 0.55
    # and the validation loss rose every epoch: the selection and the plateau schedule read
    # the rows the fit was told to ignore)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    wrong = rng.random(600) < 0.5
    clf = _clf(sparsity=0.0, upweight=None, max_epochs=6).fit(
        X, np.where(wrong, 1 - y, y), sample_weight=np.where(wrong, 0.0, 1.0))
    assert clf.history_[clf.best_epoch_ - 1]["valid_acc"] > 0.9
    assert clf.history_[-1]["valid_loss"] < 0.3
    assert clf.score(X, y) > 0.9


def test_no_sample_of_weight_zero_is_held_out(data):
    X, y, g = data
    # the split holds out samples of positive weight only: a group whose samples all weigh
    # 0 is neither trained on nor validated, and no warning names it
    groups = np.where(np.arange(len(y)) < 500, g, "absent")
    weights = np.r_[np.ones(500), np.zeros(100)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        clf = _clf(max_epochs=2).fit(X, y, groups=groups, sample_weight=weights)
    assert not [w for w in seen if "absent" in str(w.message)]
    assert "valid_acc" in clf.history_[-1]
    # a class whose samples all weigh 0 is never learnt: a warning names it
    weights = (y != y[0]).astype(float)
    with pytest.warns(UserWarning, match=rf"1 class\(es\) have no sample of positive "
                      rf"sample_weight: {int(y[0])}\.") as seen:
        clf = _clf(max_epochs=1).fit(X, y, sample_weight=weights)
    assert seen[0].filename == __file__
    assert list(clf.classes_) == sorted(set(y))


# --------------------------------------------------------------------- callbacks
def test_callbacks_and_early_stopping(data):
    X, y, _ = data

    class Count(Callback):
        def on_train_begin(self, estimator, **kw):
            self.steps = 0

        def on_batch_end(self, estimator, step, loss, **kw):
            self.steps = step

    counter = Count()
    stop = EarlyStopping(monitor="valid_acc", patience=1, threshold=1.0)
    clf = _clf(max_epochs=20, callbacks=[counter, stop]).fit(X, y)
    assert len(clf.history_) == 2  # no epoch improves by more than 1.0
    assert counter.steps == 2 * len(range(0, 540, 64))


def test_a_callback_predicts_with_the_labels_of_the_fit_under_way(data):
    # predict and score failed in a first fit (no classes_), and a refit on other labels
    # predicted the labels of the previous fit
    X, y, _ = data

    class Predict(Callback):
        def on_epoch_end(self, net, **kw):
            self.labels, self.score = set(net.predict(X[:50])), net.score(X, net.predict(X))

    spy = Predict()
    clf = _clf(max_epochs=1, callbacks=[spy]).fit(X, np.array(["a", "b", "c"])[y])
    assert spy.labels <= {"a", "b", "c"} and spy.score == 1.0
    clf.fit(X, y)
    assert spy.labels <= {0, 1, 2}


def test_verbose_shows_progress(data, capsys):
    X, y, _ = data
    _clf(max_epochs=2, verbose=1).fit(X, y)
    assert "REST" in capsys.readouterr().err


# ------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_cuda_fit_matches_cpu_and_pickles_to_cpu(data):
    X, y, g = data
    gpu = _clf(device="cuda").fit(X, y, groups=g)
    assert next(gpu.module_.parameters()).is_cuda
    cpu = _clf(device="cpu").fit(X, y, groups=g)
    assert np.mean(gpu.predict(X) == cpu.predict(X)) > 0.9
    restored = pickle.loads(pickle.dumps(gpu))
    assert next(restored.module_.parameters()).device.type == "cpu"
    assert next(gpu.module_.parameters()).is_cuda  # the pickled estimator stays on the GPU
    np.testing.assert_allclose(restored.predict_proba(X), gpu.predict_proba(X), atol=1e-4)


@pytest.mark.cuda
@cuda
def test_cuda_images_and_dataset_path():
    rng = np.random.default_rng(0)
    X = rng.random((256, 3, 16, 16), dtype=np.float32)
    y = (X[:, 0].mean((1, 2)) > 0.5).astype(int)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    clf = _clf(device="cuda", module="cnn", module_params=None, max_epochs=2).fit(ds, y)
    assert clf.predict(ds).shape == (256,)


def test_predicting_through_the_sparse_export(data):
    X, y, g = data
    clf = _clf(sparsity=0.95, module_params={"hidden_layer_sizes": (64, 64)}).fit(X, y, groups=g)
    reference = clf.predict_proba(X)
    assert clf.use_sparse_inference(density_threshold=0.5) is clf
    assert clf.inference_module_ is not clf.module_
    assert any(name.endswith("crow_indices") for name, _ in clf.inference_module_.named_buffers())
    np.testing.assert_allclose(clf.predict_proba(X), reference, atol=1e-5)
    assert "inference_module_" not in pickle.loads(pickle.dumps(clf)).__dict__
    assert "inference_module_" not in copy.copy(clf).__dict__
    assert "inference_module_" in clf.__dict__  # the pickled estimator keeps it
    clf.fit(X, y, groups=g)
    assert "inference_module_" not in clf.__dict__


# ------------------------------------------------------------ inputs at the edges
def test_huge_loss_weights_still_train(data):
    X, y, _ = data
    w = np.ones(len(y))
    w[:5] = 1e308  # their sum overflows float64
    clf = _clf(max_epochs=2).fit(X, y, sample_weight=w)
    assert all(np.isfinite(h["train_loss"]) and h["train_loss"] > 0 for h in clf.history_)


def test_held_out_weights_whose_sum_overflows_give_finite_validation_scores(data):
    # every held-out sum overflowed float64: NaN scores, and the first epoch was kept
    X, y, g = data
    w = np.linspace(1.0, 2.0, len(y)) * 1e307
    clf = _clf(max_epochs=2).fit(X, y, groups=g, sample_weight=w)
    for h in clf.history_:
        assert 0 < h["valid_worst_group_acc"] <= h["valid_acc"] <= 1
        assert np.isfinite(h["valid_loss"])


@pytest.mark.parametrize("device", ["meta", torch.device("meta")])
def test_devices_other_than_cpu_and_cuda_are_refused(data, device):
    X, y, _ = data
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda'"):
        _clf(device=device).fit(X, y)


@pytest.mark.parametrize("sizes", [(0,), (8, -3), -3, "abc", (8.5,), (True,)])
def test_bad_hidden_layer_sizes_are_named(data, sizes):
    X, y, _ = data
    with pytest.raises(ValueError, match="hidden_layer_sizes'] must be a sequence of positive"):
        _clf(module_params={"hidden_layer_sizes": sizes}).fit(X, y)


def test_images_too_small_for_the_cnn_are_named():
    X = np.random.default_rng(0).random((40, 1, 6, 6), dtype=np.float32)
    y = np.arange(40) % 2
    with pytest.raises(ValueError, match=r"too small for module='cnn'.*convolution 3"):
        _clf(module="cnn", module_params=None).fit(X, y)


@pytest.mark.parametrize("patience", [-1, 1.5, True, "3"])
def test_early_stopping_patience_is_checked(data, patience):
    X, y, _ = data
    with pytest.raises(ValueError, match="EarlyStopping patience must be an int >= 0"):
        _clf(callbacks=[EarlyStopping(patience=patience)]).fit(X, y)


@pytest.mark.parametrize(("setting", "message"), [
    ({"threshold": "0.1"}, "threshold must be a finite number >= 0"),
    ({"threshold": float("nan")}, "threshold must be a finite number >= 0"),
    ({"threshold": -0.5}, "threshold must be a finite number >= 0"),
    ({"lower_is_better": "no"}, "lower_is_better must be True, False or None"),
    ({"monitor": None}, "monitor must name a key of the history record"),
])
def test_early_stopping_settings_are_refused_before_training(data, setting, message):
    X, y, _ = data

    class Trained(Callback):
        def on_train_begin(self, net, **kwargs):
            raise AssertionError("training began")

    with pytest.raises(ValueError, match=f"EarlyStopping {message}"):
        _clf(callbacks=[Trained(), EarlyStopping(**setting)]).fit(X, y)


@pytest.mark.parametrize("monitor", ["valid_loss", "train_loss"])
def test_early_stopping_on_a_loss_watches_it_go_down_by_default(data, monitor):
    # lower_is_better defaulted to False, so a falling loss never improved and training
    # stopped after patience epochs without a word
    X, y, _ = data

    def fit(**direction):
        stop = EarlyStopping(monitor=monitor, patience=2, **direction)
        clf = _clf(max_epochs=8, lr_scheduler="constant", callbacks=[stop]).fit(X, y)
        return [r[monitor] for r in clf.history_]

    default, lower, higher = fit(), fit(lower_is_better=True), fit(lower_is_better=False)
    assert default == lower
    assert len(higher) == 3 < len(default)


@pytest.mark.parametrize("lower", [False, True])
def test_early_stopping_takes_a_nan_for_no_improvement(lower):
    # a NaN first value (a metric undefined in epoch 1) became the best, which no later
    # value beats: training stopped after patience epochs of steady improvement
    stop = EarlyStopping(monitor="score", patience=2, lower_is_better=lower)
    stop.on_train_begin(None)
    values = [math.nan, *((-1 if lower else 1) * np.arange(1.0, 6.0))]
    stops = [stop.on_epoch_end(None, record={"score": v}) for v in values]
    assert not any(stops) and stop.best_ == values[-1]
    assert [stop.on_epoch_end(None, record={"score": math.nan}) for _ in range(2)] == [
        False, True]


def test_early_stopping_on_best_waits_for_a_new_kept_epoch():
    # "best" (whether model selection kept the epoch) is a bool: a new kept epoch (True
    # after True) was no improvement, so it stopped after patience epochs of new bests
    stop = EarlyStopping(monitor="best", patience=2)
    stop.on_train_begin(None)
    stops = [stop.on_epoch_end(None, record={"best": b})
             for b in (True, True, False, True, False, False)]
    assert stops == [False, False, False, False, False, True]


def test_early_stopping_on_validation_scores_without_validation_data_is_refused(data):
    # the default monitor failed with a KeyError after the first epoch had trained
    X, y, _ = data
    stop = EarlyStopping()  # monitors valid_worst_group_acc
    with pytest.raises(ValueError, match=r"monitors 'valid_worst_group_acc', but this fit "
                       r"holds out no validation data"):
        _clf(validation_fraction=0.0, callbacks=[stop]).fit(X, y)
    assert not hasattr(stop, "best_")
    _clf(validation_fraction=0.0, callbacks=[EarlyStopping(monitor="train_loss")]).fit(X, y)


def test_early_stopping_without_validation_data_is_refused_before_jtt_trains(data, monkeypatch):
    # the refusal came in on_train_begin, after JTT's identification model had trained
    import rest_fair._fit as fit_module

    def identification(*args, **kwargs):
        raise AssertionError("the identification model trained")

    monkeypatch.setattr(fit_module, "_jtt_errors", identification)
    X, y, _ = data
    with pytest.raises(ValueError, match=r"holds out no validation data"):
        _clf(validation_fraction=0.0, infer_groups="jtt", jtt_epochs=1,
             callbacks=[EarlyStopping()]).fit(X, y)


def test_a_validation_fraction_that_leaves_no_validation_set_warns():
    X = np.random.default_rng(0).random((6, 3), dtype=np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    with pytest.warns(UserWarning, match=r"validation_fraction=0.05 leaves no usable") as seen:
        clf = _clf(validation_fraction=0.05, max_epochs=2).fit(X, y)
    assert seen[0].filename == __file__  # points at the caller's fit
    assert clf.best_epoch_ == 2  # the last epoch is kept


def _group_data(n_small: int, n_tiny: int):
    rng = np.random.default_rng(0)
    n = 300 + n_small + n_tiny
    X = rng.random((n, 4), dtype=np.float32)
    y = np.arange(n) % 2
    g = np.array(["big"] * 300 + ["small"] * n_small + ["tiny"] * n_tiny)
    return X, y, g


def _selection_warnings(record) -> list[str]:
    return [str(w.message) for w in record
            if "validation" in str(w.message) and "group" in str(w.message)]


def test_worst_group_selection_that_cannot_see_a_group_warns():
    X, y, g = _group_data(60, 3)  # 3 'tiny' samples: a 10 % split holds none of them out
    with pytest.warns(UserWarning, match=r"1 group\(s\) with training samples have no "
                      r"validation samples: 'tiny'") as seen:
        _clf(max_epochs=1).fit(X, y, groups=g)
    assert seen[0].filename == __file__  # points at the caller's fit
    # validation_data without groups: the epoch is chosen by accuracy alone
    with pytest.warns(UserWarning, match="validation_data has none") as seen:
        _clf(max_epochs=1).fit(X, y, groups=g, validation_data=(X[:50], y[:50]))
    assert seen[0].filename == __file__
    # validation_data whose groups miss one of the training groups
    with pytest.warns(UserWarning, match=r"no validation samples: 'small', 'tiny'"):
        _clf(max_epochs=1).fit(X, y, groups=g, validation_data=(X[:50], y[:50], g[:50]))


def test_small_validation_groups_are_named_with_their_sizes():
    X, y, g = _group_data(60, 3)
    X_val, y_val, g_val = X[250:], y[250:], g[250:]  # big 50, small 60, tiny 3
    with pytest.warns(UserWarning, match=r"1 validation group\(s\) have fewer than 10 "
                      r"samples: 'tiny' \(3\)") as seen:
        _clf(max_epochs=1).fit(X, y, groups=g, validation_data=(X_val, y_val, g_val))
    assert len(_selection_warnings(seen)) == 1
    # groups for the selection only (none in training), as the group-blind baselines use them
    with pytest.warns(UserWarning, match=r"fewer than 10 samples: 'tiny' \(3\)") as seen:
        _clf(max_epochs=1).fit(X, y, validation_data=(X_val, y_val, g_val))
    assert len(_selection_warnings(seen)) == 1
    # enough validation samples of every group: no warning about the selection
    X, y, g = _group_data(60, 10)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _clf(max_epochs=1).fit(X, y, groups=g, validation_data=(X[250:], y[250:], g[250:]))
        _clf(max_epochs=1).fit(X, y)  # no groups: selection by accuracy, as asked
    assert _selection_warnings(seen) == []


def test_small_validation_groups_are_named_when_fit_got_no_groups():
    # JTT's setting: no training groups, validation groups alone choose the epoch kept
    X, y, g = _group_data(60, 3)
    X_val, y_val, g_val = X[250:], y[250:], g[250:]  # big 50, small 60, tiny 3
    for params in ({}, {"infer_groups": "jtt", "jtt_epochs": 1}):
        with pytest.warns(UserWarning, match=r"1 validation group\(s\) have fewer than 10 "
                          r"samples: 'tiny' \(3\)") as seen:
            _clf(max_epochs=1, **params).fit(X, y, validation_data=(X_val, y_val, g_val))
        assert seen[0].filename == __file__
        assert "validation_fraction" not in str(seen[0].message)  # not read here


def test_selection_warnings_advise_for_where_the_validation_set_comes_from():
    X, y, g = _group_data(60, 3)
    with pytest.warns(UserWarning, match=r"cannot see them\. Hold out more "
                      r"\(validation_fraction\)"):
        _clf(max_epochs=1).fit(X, y, groups=g)
    with pytest.warns(UserWarning, match=r"cannot see them\. Give validation_data more "
                      r"samples of these groups\.$"):
        _clf(max_epochs=1).fit(X, y, groups=g, validation_data=(X[:50], y[:50], g[:50]))


def test_a_group_weighed_zero_in_training_is_not_missed_by_the_selection():
    # its samples train nothing: no validation sample of it is no blind spot
    X, y, g = _group_data(60, 3)
    weight = np.where(g == "tiny", 0.0, 1.0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _clf(max_epochs=1).fit(X, y, groups=g, sample_weight=weight)
        _clf(max_epochs=1).fit(X, y, groups=g, sample_weight=weight,
                               validation_data=(X[:50], y[:50], g[:50]))  # big only
    assert [m for m in _selection_warnings(seen) if "no validation samples" in m] == [
        "1 group(s) with training samples have no validation samples: 'small'. The "
        "worst-group accuracy that chooses the epoch kept cannot see them. Give "
        "validation_data more samples of these groups."]


def test_the_sparsity_report_of_a_dense_fit_has_its_columns(data):
    X, y, _ = data
    report = _clf(sparsity=0.0, max_epochs=1).fit(X, y).sparsity_report()
    assert report.empty
    assert list(report.columns) == ["layer", "shape", "n_weights", "n_active", "density",
                                    "n_nonzero"]


# ------------------------------------------------------- a fit that raises changes nothing
class _Interrupt(Callback):
    def on_epoch_end(self, net, **kwargs):
        raise KeyboardInterrupt


def _fitted_view(clf):
    return ({k: v for k, v in vars(clf).items() if k.endswith("_") and not k.startswith("__")},
            {k: v.clone() for k, v in clf.module_.state_dict().items()})


@pytest.mark.parametrize("failure", ["inputs", "interrupted", "diverged"])
def test_a_refit_that_raises_keeps_the_previous_model(data, failure):
    from rest_fair.exceptions import TrainingDivergedError

    X, y, g = data
    clf = _clf(max_epochs=2).fit(X, y, groups=g)
    attributes, weights = _fitted_view(clf)
    proba = clf.predict_proba(X)
    X2 = X[:, :5]
    if failure == "inputs":  # the features are taken before the groups are refused
        with pytest.raises(ValueError, match="groups has"):
            clf.fit(X2, y, groups=g[:-1])
    elif failure == "interrupted":  # a new network, new classes, then Ctrl-C
        with pytest.raises(KeyboardInterrupt):
            clf.set_params(callbacks=[_Interrupt()], sparsity=0.0).fit(
                X2, np.where(y == 0, "a", "b"))
    else:
        with pytest.raises(TrainingDivergedError):
            clf.set_params(lr=1e30, optimizer="sgd").fit(X2 * 1e4, y)
    assert vars(clf).keys() >= attributes.keys()
    assert all(getattr(clf, k) is v for k, v in attributes.items())
    assert not clf.module_.training
    assert np.array_equal(clf.predict_proba(X), proba)
    assert all(torch.equal(v, weights[k]) for k, v in clf.module_.state_dict().items())


def test_an_interrupted_warm_start_restores_the_network(data):
    X, y, g = data
    clf = _clf(max_epochs=2, warm_start=True).fit(X, y, groups=g)
    _, weights = _fitted_view(clf)
    history = list(clf.history_)
    proba = clf.predict_proba(X)
    with pytest.raises(KeyboardInterrupt):  # the network trains in place, then Ctrl-C
        clf.set_params(callbacks=[_Interrupt()]).fit(X, y, groups=g)
    assert clf.history_ == history and not clf.module_.training
    assert all(torch.equal(v, weights[k]) for k, v in clf.module_.state_dict().items())
    assert np.array_equal(clf.predict_proba(X), proba)
    clf.set_params(callbacks=None).fit(X, y, groups=g)  # and it still continues
    assert len(clf.history_) == 4


class _FailAtStart(Callback):
    def on_train_begin(self, net, **kwargs):
        raise RuntimeError("my own error")


def test_a_warm_start_whose_first_hook_raises_keeps_the_dense_network(data):
    X, y, g = data
    clf = _clf(max_epochs=1, sparsity=0.95, sparse_compute="csr", warm_start=True,
               module_params={"hidden_layer_sizes": (64, 64)}).fit(X, y, groups=g)
    assert clf.sparse_compute_layers_  # the warm start trains them in CSR form
    layers = [type(m) for m in clf.module_.modules()]
    proba = clf.predict_proba(X)
    with pytest.raises(RuntimeError, match="my own error"):
        clf.set_params(callbacks=[_FailAtStart()]).fit(X, y, groups=g)
    assert [type(m) for m in clf.module_.modules()] == layers
    assert np.array_equal(clf.predict_proba(X), proba)
    clf.set_params(callbacks=None).fit(X, y, groups=g)  # and it still continues
    assert len(clf.history_) == 2


def test_a_refused_warm_start_keeps_the_dense_network(data):
    X, y, g = data
    clf = _clf(max_epochs=1, sparsity=0.95, sparse_compute="csr", warm_start=True,
               module_params={"hidden_layer_sizes": (64, 64)}).fit(X, y, groups=g)
    layers = [type(m) for m in clf.module_.modules()]
    proba = clf.predict_proba(X)
    # refused when the optimizer is made, after the layers were swapped for CSR ones
    with pytest.raises(ValueError, match="too large for optimizer='adam'"):
        clf.set_params(optimizer="adam", lr=1e38).fit(X, y, groups=g)
    assert [type(m) for m in clf.module_.modules()] == layers
    assert np.array_equal(clf.predict_proba(X), proba)
    clf.set_params(optimizer="sgd", lr=0.05).fit(X, y, groups=g)  # and it still continues
    assert len(clf.history_) == 2


def test_one_callback_instance_given_twice_is_refused(data):
    X, y, _ = data
    stop = EarlyStopping(monitor="valid_acc", patience=4)
    with pytest.raises(ValueError, match=r"callbacks\[1\] is the same EarlyStopping instance "
                                         r"as callbacks\[0\]"):
        _clf(callbacks=(stop, stop)).fit(X, y)
    assert not hasattr(stop, "wait_")  # refused before anything trains
    _clf(max_epochs=1, callbacks=[stop, EarlyStopping()]).fit(X, y)  # two instances are fine


@pytest.mark.parametrize("runs_last", [None, 1])
def test_on_epoch_end_is_called_whatever_truth_value_runs_last_has(data, runs_last):
    # runs_last = None matched neither pass of the epoch end: the hook was never called
    class Mark(Callback):
        def on_epoch_end(self, net, *, record, **kwargs):
            record["marked"] = True

    X, y, _ = data
    mark = Mark()
    mark.runs_last = runs_last
    clf = _clf(max_epochs=2, callbacks=[mark]).fit(X, y)
    assert [record.get("marked") for record in clf.history_] == [True, True]


def test_every_hook_calls_the_callbacks_in_one_order(data, tmp_path):
    # on_fit_begin called them as listed, the other hooks runs_last ones (and Checkpoints)
    # after the others
    calls = []

    class Log(Callback):
        def __init__(self, name):
            self.name = name

        def on_fit_begin(self, net, **kwargs):
            calls.append(("fit", self.name))

        def on_train_begin(self, net, **kwargs):
            calls.append(("train", self.name))

    class LogLast(Log):
        runs_last = True

    class LogCheckpoint(Checkpoint):
        def on_fit_begin(self, net, **kwargs):
            super().on_fit_begin(net, **kwargs)
            calls.append(("fit", "checkpoint"))

        def on_train_begin(self, net, **kwargs):
            calls.append(("train", "checkpoint"))

    X, y, _ = data
    _clf(max_epochs=1, callbacks=[LogCheckpoint(tmp_path), LogLast("last"), Log("first")]
         ).fit(X, y)
    order = ["first", "last", "checkpoint"]
    assert calls == [("fit", name) for name in order] + [("train", name) for name in order]


def test_a_first_fit_that_raises_leaves_the_estimator_unfitted(data):
    from sklearn.exceptions import NotFittedError

    X, y, g = data
    clf = _clf(max_epochs=2, callbacks=[_Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        clf.fit(X, y, groups=g)
    assert not [k for k in vars(clf) if k.endswith("_") and not k.startswith("__")]
    with pytest.raises(NotFittedError):
        clf.predict(X)


def test_a_warm_start_and_a_checkpoint_cannot_both_be_continued(data, tmp_path):
    X, y, g = data
    clf = _clf(max_epochs=1, warm_start=True).fit(X, y, groups=g)
    with pytest.raises(ValueError, match="warm_start=True continues this fitted"):
        clf.fit(X, y, groups=g, resume_from=tmp_path / "no-checkpoint-yet")
    assert len(clf.history_) == 1
    _clf(max_epochs=1, warm_start=True).fit(X, y, groups=g, resume_from=tmp_path / "c")


@pytest.mark.parametrize("reweight", ["loss", "sampler"])
def test_training_weights_that_combine_to_zero_are_refused(data, reweight):
    X, y, g = data
    groups = (g == "minority").astype(int)
    # each factor weighs some samples, their product none: the fit learnt nothing
    # (sampler) or ignored the weights (loss)
    with pytest.raises(ValueError, match="every training sample has a weight of 0"):
        _clf(max_epochs=1, upweight={0: 0.0, 1: 1.0}, reweight=reweight).fit(
            X, y, groups=groups, sample_weight=(groups == 0).astype(float))


def test_nested_list_groups_are_read_as_columns():
    from rest_fair._inputs import encode_groups

    with pytest.raises(ValueError, match="missing values"):
        encode_groups([[0, None if i == 4 else 1] for i in range(6)], 6)
    with pytest.raises(ValueError, match="missing values"):
        encode_groups([(0, np.nan if i == 4 else 1) for i in range(6)], 6)
    with pytest.raises(ValueError, match="missing values"):  # rows of different lengths
        encode_groups([[0, 1]] * 3 + [[1, None, 2]] * 3, 6)
    column = [[v] for v in (0, 1, 0, 1, 1, 0)]  # one column, as g[:, None] is read
    assert encode_groups(column, 6)[1] == encode_groups(np.array(column), 6)[1] == [0, 1]
    pairs = [[0, "a"], [1, "b"]] * 3
    assert encode_groups(pairs, 6)[1] == [(0, "a"), (1, "b")]


def test_a_dict_upweight_needs_groups(data):
    X, y, _ = data
    with pytest.raises(ValueError, match=r"upweight is a dict of weights by group \('a', 'b'\)"
                                         r", but fit got no groups"):
        _clf(max_epochs=1, upweight={"a": 1.0, "b": 5.0}).fit(X, y)



def test_more_input_forms_are_read_or_named(data):
    X, y, g = data
    # a tensor that requires grad is data like any other (and stays as it was)
    tensor = torch.from_numpy(X).requires_grad_()
    clf = _clf(max_epochs=1).fit(tensor, y)
    assert tensor.requires_grad and clf.predict(tensor).shape == (len(y),)
    weights = torch.ones(len(y), requires_grad=True)  # e.g. a learnt weighting's output
    _clf(max_epochs=1).fit(X, y, sample_weight=weights)
    assert weights.requires_grad
    # groups as a dict of columns, as fairlearn's sensitive_features
    by_dict = _clf(max_epochs=1).fit(X, y, groups={"g": g, "h": y % 2})
    assert by_dict.groups_ == sorted({(a, b) for a, b in zip(g, y % 2, strict=True)})
    with pytest.raises(ValueError, match="got the string 'g'"):
        _clf(max_epochs=1).fit(X, y, groups="g")
    labels = np.array(["a", "b", "c"], dtype=object)[y]
    labels[3] = None
    with pytest.raises(ValueError, match=r"y must not contain missing values \(NaN/None\); "
                                         "found 1"):
        _clf(max_epochs=1).fit(X, labels)


def test_predict_log_proba_is_the_log_of_predict_proba(data):
    from sklearn.model_selection import cross_val_predict

    X, y, _ = data
    clf = _clf(max_epochs=1).fit(X, y)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), clf.predict_proba(X),
                               rtol=1e-12)
    assert np.isfinite(clf.predict_log_proba(X * 1e3)).all()  # no log(0) where proba rounds
    assert cross_val_predict(_clf(max_epochs=1), X, y, cv=2,
                             method="predict_log_proba").shape == (len(y), 3)


class _FailingItems(torch.utils.data.Dataset):
    """Items of 4 zeros; the item ``fail_at`` raises."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at = n, fail_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError("unreadable item")
        return torch.full((4,), float(i % 3))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_predicting_a_dataset_leaves_the_global_random_state_and_the_mode(num_workers):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 4)).astype(np.float32), np.arange(60) % 2
    clf = RESTClassifier(max_epochs=1, random_state=0, num_workers=num_workers).fit(X, y)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(X))
    torch.manual_seed(7)
    state = torch.get_rng_state()
    clf.predict_proba(dataset)  # its DataLoader drew a seed from the global generator
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(clf.predict_logits(dataset), clf.predict_logits(X))
    clf.module_.train()  # a mode the user set survives a prediction, also a failed one
    with pytest.raises(RuntimeError, match="unreadable item"):
        clf.predict(_FailingItems(1200, fail_at=1100))
    assert clf.module_.training
    assert torch.is_grad_enabled()


class _NumpyDrawingItems(torch.utils.data.Dataset):
    """Items through a 'transform' that draws from numpy's and Python's global generators."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        import random

        np.random.rand()  # noqa: NPY002
        random.random()
        return torch.from_numpy(self.X[i])


def test_predicting_leaves_numpy_and_python_generators_for_datasets_and_arrays():
    import random

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)).astype(np.float32), np.arange(40) % 2
    clf = RESTClassifier(max_epochs=1, random_state=0).fit(X, y)
    for data in (_NumpyDrawingItems(X), X):
        np.random.seed(3)  # noqa: NPY002
        random.seed(3)
        numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
        clf.predict_proba(data)
        assert random.getstate() == python_state
        after = np.random.get_state()  # noqa: NPY002
        assert all(np.array_equal(a, b) for a, b in zip(after, numpy_state, strict=True))
