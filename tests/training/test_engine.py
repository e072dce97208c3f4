"""The training engine: update placement, live callbacks, divergence, precision, input checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_classification

from rest_fair import RESTClassifier
from rest_fair._data import make_source
from rest_fair.callbacks import Callback, EarlyStopping
from rest_fair.exceptions import TrainingDivergedError
from rest_fair.models import build_module
from rest_fair.training import EpochSampler, Precision, TrainingRun, TrainSet, predict_logits
from rest_fair.training.distributed import LocalContext
from rest_fair.training.parts import TrainConfig, build_parts

FAST = dict(max_epochs=6, batch_size=64, lr=0.05, random_state=0, device="cpu",
            module_params={"hidden_layer_sizes": (32, 32)})


def _clf(**params) -> RESTClassifier:
    return RESTClassifier(**{**FAST, **params})


def _zero_share(clf: RESTClassifier) -> float:
    report = clf.sparsity_report()
    return 1.0 - report["n_nonzero"].sum() / report["n_active"].sum()


# ------------------------------------------------------- no selection right after a prune
def _toy():
    X, y = make_classification(2000, 20, n_informative=8, random_state=1)
    return X.astype(np.float32), y, (X[:, 0] > 1.0).astype(int)


def _digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y, (X[:, 20] > 8).astype(int)


def _images():
    from rest_fair.datasets import make_colored_digits

    d = make_colored_digits(conflict_ratio=0.05, random_state=0)
    return d.X_train, d.y_train, d.conflict_train


@pytest.mark.parametrize("make", [_toy, _digits, _images], ids=["toy", "digits", "images"])
def test_kept_model_has_no_freshly_regrown_zeros(make):
    # defaults (sparsity 0.9, update_interval="auto"); only the run length is shortened
    X, y, g = make()
    clf = RESTClassifier(max_epochs=8, random_state=0, device="cpu").fit(X, y, groups=g)
    assert clf.n_topology_updates_ > 0
    assert _zero_share(clf) <= 0.01


class _UpdateLog(Callback):
    """Records, per epoch, the optimizer steps since the last topology update."""

    def on_train_begin(self, net, **kwargs):
        self.last_update = None
        self.steps_since = []

    def on_topology_update(self, net, *, step, **kwargs):
        self.last_update = step

    def on_batch_end(self, net, *, step, **kwargs):
        self.step = step

    def on_epoch_end(self, net, *, record, **kwargs):
        if self.last_update is not None:
            # the update at step s precedes that step's optimizer update
            self.steps_since.append(self.step - self.last_update + 1)
        record["steps_since_update"] = self.steps_since[-1] if self.steps_since else None


@pytest.mark.parametrize("interval", ["auto", 4, 5, 1])
def test_no_validated_epoch_directly_follows_an_update(data, interval):
    X, y, g = data
    log = _UpdateLog()
    clf = _clf(update_interval=interval, callbacks=[log]).fit(X, y, groups=g)
    steps_per_epoch = 540 // 64 + 1  # 540 training samples after the 10 % split
    assert clf.n_topology_updates_ > 0 and log.steps_since
    # at least the update step's own optimizer step and one more step
    assert min(log.steps_since) >= 2
    if interval == "auto":  # mid-epoch: half an epoch of training before validation
        assert min(log.steps_since) >= steps_per_epoch // 2
    assert "steps_since_update" in clf.history_[-1]  # callbacks may add keys


def test_with_one_step_per_epoch_updates_fall_on_the_epochs_last_step_as_documented(data):
    # every step ends an epoch: there is no other step to move an update to
    X, y, g = data
    log = _UpdateLog()
    clf = _clf(batch_size=1024, max_epochs=4, callbacks=[log]).fit(X, y, groups=g)
    assert clf.n_train_steps_ == 4 and clf.n_topology_updates_ == 2  # steps 1 and 2
    assert log.steps_since[:2] == [1, 1]  # validated after the update's own step only
    doc = " ".join(RESTClassifier.__doc__.split())
    assert "With one step per epoch (e.g. a training set of at most ``batch_size`` " \
        "samples) every step is an epoch's last and updates fall there" in doc
    assert "and never on the last step of an epoch" not in doc
    guide = " ".join((Path(__file__).parents[2] / "docs" / "estimator.md").read_text(
        encoding="utf-8").split())
    assert "never on the last step of an epoch" not in guide


def _topology_warnings(record) -> list:
    return [w for w in record if "the masks will never change" in str(w.message)]


@pytest.mark.parametrize("timing", ["after_step", "mid_interval"])
def test_a_fit_too_short_for_its_update_interval_warns_once_at_the_start(data, timing):
    # the authors' recipe updates every 1000 steps: a 540-sample fit of 2 epochs takes 18
    from rest_fair.recipes import authors_recipe

    X, y, g = data
    recipe = {**authors_recipe(), "max_epochs": 2, "batch_size": 64, "update_timing": timing}
    with pytest.warns(UserWarning, match="the masks will never change") as record:
        clf = RESTClassifier(sparsity=0.9, random_state=0, **recipe).fit(X, y, groups=g)
    [warned] = _topology_warnings(record)
    message = str(warned.message)
    first = 1000 if timing == "after_step" else 500
    assert clf.n_topology_updates_ == 0 and clf.n_train_steps_ == 18
    assert f"update_interval=1000 with update_timing={timing!r} puts the first topology " \
        f"update at optimizer step {first}, but this fit takes 18 steps (max_epochs=2, 9 " \
        "per epoch) and may change the topology up to step 18 only (update_end=1, " \
        "drop_schedule='cosine_floor')" in message
    assert "Use a smaller update_interval ('auto' updates once per epoch)" in message
    assert warned.filename == __file__  # the caller of fit
    # an interval short enough updates, and says nothing
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clf = RESTClassifier(sparsity=0.9, random_state=0, **{**recipe, "update_interval": 16}
                             ).fit(X, y, groups=g)
    assert clf.n_topology_updates_ == 1 and _topology_warnings(record) == []


def test_jtts_identification_model_too_short_for_its_update_interval_names_jtt_epochs(data):
    # the identification model trains for jtt_epochs (1 epoch, 5 steps); its max_epochs is
    # set by the estimator from jtt_epochs, not by the user, whose max_epochs is 3
    X, y, _ = data
    with pytest.warns(UserWarning, match="the masks will never change") as record:
        _clf(infer_groups="jtt", upweight=5, jtt_epochs=1, max_epochs=3, batch_size=128,
             update_interval=6).fit(X, y)
    [warned] = _topology_warnings(record)
    message = str(warned.message)
    assert "this fit takes 5 steps (jtt_epochs=1, 5 per epoch)" in message
    assert "more jtt_epochs or a larger update_end" in message
    assert "max_epochs" not in message


@pytest.mark.parametrize("params, warning", [
    ({"update_interval": 1000}, "masks will never change"),  # a fit too short for it
    ({"sparsity": 0.9999}, "would have none"),  # layers kept denser than asked
])
def test_only_rank_0_warns_of_the_sparsity_it_builds(params, warning):
    X, y, _ = _toy()
    cpu = torch.device("cpu")
    config = TrainConfig.from_params(_clf(max_epochs=1, **params).get_params())
    for rank, expected in [(0, 1), (1, 0)]:
        generator = torch.Generator().manual_seed(0)
        train = TrainSet(make_source(X, device=cpu), torch.as_tensor(y), None,
                         torch.zeros(len(y), dtype=torch.long), 1,
                         EpochSampler(len(y), config.batch_size, None, generator))
        module = build_module("mlp", input_shape=(20,), n_classes=2, module_params=None)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            build_parts(config, module, train, None, world=LocalContext(rank=rank, world_size=2),
                        precision=Precision("32", cpu), generator=generator, callbacks=[])
        assert len([w for w in record if warning in str(w.message)]) == expected


@pytest.mark.parametrize("params", [{"drop_fraction": 0.0}, {"update_end": 0.0},
                                    {"sparsity": 0.0}], ids=["no-drop", "no-end", "dense"])
def test_static_masks_and_dense_fits_are_not_warned_about_topology_updates(data, params):
    X, y, g = data
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clf = _clf(max_epochs=1, update_interval=1000, **params).fit(X, y, groups=g)
    assert clf.n_topology_updates_ == 0 and _topology_warnings(record) == []


@pytest.mark.parametrize(("update_end", "total", "end"),
                         [(0.29, 100, 29), (0.57, 100, 57), (0.75, 10, 7), (1.0, 9, 9),
                          (0.5, 3, 1)])
def test_update_end_ends_on_its_whole_step_despite_float_rounding(update_end, total, end):
    # 0.29 * 100 is 28.999999999999996: the topology froze at step 28, and an update due
    # at step 29 (update_interval=29) never came
    from rest_fair.training.parts import SparsityConfig, make_sparsity

    config = SparsityConfig(
        sparsity=0.5, layer_density="erk", sparse_init="random", rescale_init=True,
        dense_layers=None, regrow="gradient", drop_fraction=0.5, drop_schedule="constant",
        update_interval=1, update_end=update_end, update_timing="after_step")
    engine = make_sparsity(torch.nn.Linear(4, 4), config, steps_per_epoch=1,
                           max_epochs=total, generator=torch.Generator().manual_seed(0))
    assert engine.schedule.end_step == end
    assert engine.is_update_step(end) and not engine.is_update_step(end + 1)


class _BagOfWords(torch.nn.Module):
    def __init__(self, n_classes, frozen=False):
        super().__init__()
        self.emb = torch.nn.Embedding(40, 8, sparse=True).requires_grad_(not frozen)
        self.head = torch.nn.Linear(8, n_classes)

    def forward(self, x):
        return self.head(self.emb(x.long()).mean(1))


@pytest.mark.parametrize(("params", "setting", "instead"), [
    ({"optimizer": "adam"}, "optimizer='adam'", "optimizer='sgd'"),
    ({"optimizer": "adamw"}, "optimizer='adamw'", "optimizer='sgd'"),
    ({"optimizer": "sgd", "weight_decay": 0.01}, "weight_decay=0.01", "weight_decay=0"),
])
def test_what_sparse_embedding_gradients_cannot_take_is_refused(params, setting, instead):
    # torch raised at the first optimizer step: Adam pointing to SparseAdam, which fit does
    # not offer, and SGD's weight decay with "add(sparse, dense) is not supported"
    X = np.random.default_rng(0).integers(0, 40, size=(60, 5))
    y = (X[:, 0] > 20).astype(int)
    clf = _clf(module=_BagOfWords, module_params=None, max_epochs=1, drop_fraction=0.0,
               **params)
    with pytest.raises(ValueError, match=rf"{setting} cannot train 'emb'.*Use {instead}, "):
        clf.fit(X, y)
    clf.set_params(module_params={"frozen": True}).fit(X, y)  # a frozen one has none
    clf.set_params(module_params=None, optimizer="sgd", weight_decay=0.0).fit(X, y)


# ------------------------------------------------------------------ lazy layers
def _lazy_net(n_classes):
    return torch.nn.Sequential(torch.nn.LazyLinear(32), torch.nn.LazyBatchNorm1d(),
                               torch.nn.ReLU(), torch.nn.Dropout(0.2),
                               torch.nn.LazyLinear(n_classes))


def _eager_net(n_classes):
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.BatchNorm1d(32),
                               torch.nn.ReLU(), torch.nn.Dropout(0.2),
                               torch.nn.Linear(32, n_classes))


@pytest.mark.parametrize("as_dataset", [False, True], ids=["array", "dataset"])
def test_lazy_layers_get_their_parameters_before_the_masks(data, as_dataset):
    # masks were built on uninitialised parameters: torch's "uninitialized parameter"
    # error. One sample materialises them, drawing nothing else: the lazy network trains
    # exactly as the same network built with its sizes
    X, y, g = data
    X_in = torch.utils.data.TensorDataset(torch.from_numpy(X)) if as_dataset else X
    lazy = _clf(module=_lazy_net, module_params=None, max_epochs=2).fit(X_in, y, groups=g)
    eager = _clf(module=_eager_net, module_params=None, max_epochs=2).fit(X_in, y, groups=g)
    assert sorted(lazy.masks_) == ["0.weight", "4.weight"] and lazy.n_topology_updates_ > 0
    np.testing.assert_array_equal(lazy.predict_proba(X), eager.predict_proba(X))
    given = torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.LazyLinear(3))
    _clf(module=given, module_params=None, max_epochs=1).fit(X_in, y)
    assert given[0].has_uninitialized_params()  # the user's module is not trained in place


# ----------------------------------------------------------------- live callbacks
def test_callbacks_see_the_live_network(data):
    X, y, g = data
    seen = []

    class DensityLog(Callback):
        def on_epoch_end(self, net, *, record, **kwargs):
            params = dict(net.module_.named_parameters())
            record["layer_density"] = {name: float(m.float().mean())
                                       for name, m in net.masks_.items()}
            seen.append((net.optimizer_ is not None, net.history_[-1] is record,
                         len(net.history_), params.keys() >= net.masks_.keys()))

    clf = _clf(callbacks=[DensityLog()]).fit(X, y, groups=g)
    assert seen == [(True, True, i, True) for i in range(1, 7)]
    assert set(clf.history_[0]["layer_density"]) == set(clf.masks_)


def test_a_hook_set_on_a_callback_instance_is_called(data):
    X, y, _ = data
    steps, epochs = [], []
    cb = Callback()
    cb.on_batch_end = lambda net, *, step, loss, **kwargs: steps.append((step, loss))
    cb.on_epoch_begin = lambda net, *, epoch, **kwargs: epochs.append(epoch)
    _clf(max_epochs=2, callbacks=[cb]).fit(X, y)
    assert epochs == [1, 2]
    assert len(steps) >= 2
    assert [step for step, _ in steps] == list(range(1, len(steps) + 1))
    assert all(np.isfinite(loss) for _, loss in steps)


def test_misused_callbacks_are_refused(data):
    X, y, _ = data
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a str, not a rest_fair"):
        _clf(callbacks=["print"]).fit(X, y)
    with pytest.raises(TypeError, match="pass an instance: EarlyStopping"):
        _clf(callbacks=[EarlyStopping]).fit(X, y)
    with pytest.raises(ValueError, match="callbacks must be a list"):
        _clf(callbacks=EarlyStopping()).fit(X, y)


def test_callbacks_show_their_changed_arguments_in_the_estimators_repr():
    from rest_fair.callbacks import Checkpoint

    class Mine(Callback):
        def __init__(self, scale, weights=None):
            self.scale, self.weights = scale, weights

    assert repr(EarlyStopping()) == "EarlyStopping()"
    assert repr(Checkpoint("ckpt", keep=3)) == "Checkpoint(dirname='ckpt', keep=3)"
    assert repr(Mine(2)) == "Mine(scale=2)"
    assert repr(Mine(2, np.ones(2))) == "Mine(scale=2, weights=array([1., 1.]))"
    assert "callbacks=[EarlyStopping(patience=3)]" in repr(
        RESTClassifier(callbacks=[EarlyStopping(patience=3)]))


class _Returns(Callback):
    def __init__(self, value):
        self.value = value

    def on_epoch_end(self, net, *, record, **kwargs):
        return self.value


@pytest.mark.parametrize("value", [{"epoch": 1}, "no", [False], 1])
def test_an_epoch_end_result_that_is_no_decision_is_refused(data, value):
    # a callback returning its record (a non-empty dict, so truthy) silently stopped training
    X, y, _ = data
    with pytest.raises(TypeError, match=r"_Returns.on_epoch_end returned a value of type"):
        _clf(max_epochs=3, callbacks=[_Returns(value)]).fit(X, y)


@pytest.mark.parametrize("value, epochs", [(None, 3), (False, 3), (np.True_, 1),
                                           (torch.tensor(False), 3), (torch.tensor([True]), 1)])
def test_an_epoch_end_decision_stops_or_goes_on(data, value, epochs):
    X, y, _ = data
    clf = _clf(max_epochs=3, callbacks=[_Returns(value)]).fit(X, y)
    assert len(clf.history_) == epochs


@pytest.mark.parametrize("verbose", [1.5, "yes", -1])
def test_non_integer_verbose_is_refused(data, verbose):
    X, y, _ = data
    with pytest.raises(ValueError, match="verbose must be"):
        _clf(verbose=verbose).fit(X, y)


def test_groups_of_more_than_two_dimensions_are_refused(data):
    X, y, g = data
    with pytest.raises(ValueError, match=r"groups must be 1-D .* shape \(600, 1, 1\)"):
        _clf().fit(X, y, groups=g.reshape(-1, 1, 1))
    with pytest.raises(ValueError, match="groups must be 1-D"):
        _clf().fit(X, y, groups=[[[0]]] * 600)


# --------------------------------------------------------------------- divergence
def test_divergence_is_an_error_naming_the_epoch(data):
    X, y, g = data
    with pytest.raises(TrainingDivergedError, match=r"epoch \d+.*learning rate.*lr=1e\+06"):
        _clf(lr=1e6, lr_scheduler="constant").fit(X, y, groups=g)
    with pytest.raises(TrainingDivergedError, match="large magnitude") as plain:
        _clf().fit(X * np.float32(1e30), y, groups=g)
    assert "weight_decay" not in str(plain.value)


def test_divergence_under_a_strong_weight_decay_names_it(data):
    X, y, g = data
    with pytest.raises(TrainingDivergedError,
                       match=r"weight_decay=1000, lr \* weight_decay = 10\)"):
        _clf(lr=0.01, weight_decay=1e3, lr_scheduler="constant").fit(X, y, groups=g)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
@pytest.mark.parametrize("params", [{}, {"infer_groups": "jtt", "jtt_epochs": 1}])
def test_an_adam_step_size_beyond_float32_is_named(data, optimizer, params):
    # lr / (1 - beta1) overflowed inside torch's Adam ("value cannot be converted to type
    # float without overflow"); a smaller lr that diverges is named as divergence
    X, y, g = data
    with pytest.raises(ValueError, match=rf"lr=5e\+37 is too large for optimizer='{optimizer}'"
                       r".* Use lr <= 3\.403e\+37"):
        _clf(lr=5e37, optimizer=optimizer, max_epochs=1, **params).fit(X, y, groups=g)
    with pytest.raises(TrainingDivergedError, match=r"lr=3e\+37"):
        _clf(lr=3e37, optimizer=optimizer, max_epochs=1, **params).fit(X, y, groups=g)


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_a_kept_last_epoch_whose_output_overflows_is_an_error(data, precision):
    # without validation data the last epoch is kept; one step at lr 1e30 leaves finite
    # weights whose output overflows, and fit returned them (only predict raised)
    X, y, _ = data
    clf = _clf(lr=1e30, validation_fraction=0.0, max_epochs=1, batch_size=len(X) + 1,
               precision=precision)
    with pytest.raises(TrainingDivergedError,
                       match="epoch 1: the network output on the training data became"):
        clf.fit(X[:64], y[:64])
    assert not hasattr(clf, "module_")


def test_predictions_are_never_non_finite(data):
    X, y, _ = data
    clf = _clf(max_epochs=2).fit(X, y)
    with torch.no_grad():
        next(clf.module_.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="not finite"):
        clf.predict_proba(X)


# ---------------------------------------------------------------------- precision
def test_bf16_on_cpu_keeps_masks_exact_and_learns(data):
    X, y, g = data
    clf = _clf(precision="bf16", max_epochs=10).fit(X, y, groups=g)
    params = dict(clf.module_.named_parameters())
    for name, mask in clf.masks_.items():
        assert params[name].dtype == torch.float32  # master weights stay float32
        assert torch.all(params[name].detach()[~mask] == 0)
    assert clf.score(X, y) > 0.6
    ref = _clf(max_epochs=10).fit(X, y, groups=g)
    assert abs(clf.score(X, y) - ref.score(X, y)) < 0.1
    # the forward passes ran in bfloat16: the same run in float32 ends elsewhere
    assert not np.array_equal(clf.predict_proba(X), ref.predict_proba(X))


def test_float16_mixed_needs_cuda(data):
    X, y, _ = data
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=r"16-mixed.*needs a CUDA device.*bf16"):
        _clf(precision="16-mixed").fit(X, y)
    with pytest.raises(ValueError, match="precision must be one of"):
        _clf(precision="fp8").fit(X, y)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "16-mixed"])
def test_reduced_precision_on_cuda(data, precision):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    X, y, g = data
    clf = _clf(device="cuda", precision=precision, max_epochs=10).fit(X, y, groups=g)
    params = dict(clf.module_.named_parameters())
    for name, mask in clf.masks_.items():
        assert params[name].dtype == torch.float32
        assert torch.all(params[name].detach()[~mask.to(params[name].device)] == 0)
    assert clf.score(X, y) > 0.6


@pytest.mark.parametrize(("value", "finite"), [(1.0, True), (float("inf"), False),
                                               (float("nan"), False)])
@pytest.mark.parametrize("where", ["weight", "bias"])
def test_an_overflowed_gradient_chooses_no_topology(value, finite, where):
    # with a gradient scaler (CUDA) a topology update reads only finite gradients: the
    # scaler skips a step where any gradient overflowed, a dense bias's too (the masked
    # weights' alone were read); an embedding's gradient may be sparse
    from types import SimpleNamespace

    weight = torch.nn.Parameter(torch.zeros(6, 2))
    bias = torch.nn.Parameter(torch.zeros(2))
    weight.grad = torch.sparse_coo_tensor(
        torch.tensor([[1, 3]]), torch.tensor([[1.0, value if where == "weight" else 1.0],
                                              [1.0, 1.0]]), (6, 2), check_invariants=True)
    bias.grad = torch.tensor([1.0, value if where == "bias" else 1.0])
    run = SimpleNamespace(parts=SimpleNamespace(
        precision=SimpleNamespace(scaler=object()),
        optimizer=torch.optim.SGD([weight, bias], lr=0.1),
        sparsity=SimpleNamespace(masks=SimpleNamespace(params={"weight": weight}))))
    assert TrainingRun._gradients_finite(run) is finite


# ------------------------------------------------------------------ warm start, data
def test_warm_start_continues_the_fitted_network(data):
    X, y, g = data
    clf = _clf(max_epochs=3, warm_start=True).fit(X, y, groups=g)
    first = {k: v.clone() for k, v in clf.module_.state_dict().items()}

    class StartingWeights(Callback):
        def on_train_begin(self, net, **kwargs):
            self.state = {k: v.clone() for k, v in net.module_.state_dict().items()}

    start = StartingWeights()
    clf.set_params(callbacks=[start]).fit(X, y, groups=g)
    assert all(torch.equal(start.state[k], v) for k, v in first.items())  # carried over
    assert [h["epoch"] for h in clf.history_] == [1, 2, 3, 4, 5, 6]
    assert clf.n_train_steps_ == 6 * 9
    assert clf.best_epoch_ >= 4  # chosen among the continued epochs
    cold = _clf(max_epochs=3).fit(X, y, groups=g)
    assert all(torch.equal(first[k], v) for k, v in cold.module_.state_dict().items())
    with pytest.raises(ValueError, match=r"warm_start=True continues.*classes"):
        clf.fit(X, (y + 1) % 4, groups=g)
    # what defines the network and its masks cannot change under a warm start
    for name, value in (("sparsity", 0.5), ("module_params", {"hidden_layer_sizes": (3,)})):
        changed = clf.set_params(callbacks=None, **{name: value})
        with pytest.raises(ValueError, match=rf"warm_start=True continues .* but {name} changed"):
            changed.fit(X, y, groups=g)
        clf.set_params(**{name: _clf().get_params()[name]})
    clf.fit(X, y, groups=g)  # back to the fitted values: the warm start goes on


def test_a_warm_start_refuses_network_parameters_edited_in_place(data):
    # a list (dense_layers) and a list inside module_params were kept as the same objects,
    # so editing them in place went unseen and the old masks and network were continued
    X, y, _ = data
    for name, value, edit in (
            ("dense_layers", ["first"], lambda v: v.append("head")),
            ("module_params", {"hidden_layer_sizes": [8]},
             lambda v: v["hidden_layer_sizes"].append(4))):
        clf = _clf(max_epochs=1, warm_start=True, **{name: value}).fit(X, y)
        edit(value)
        with pytest.raises(ValueError, match=rf"warm_start=True continues .* but {name} changed"):
            clf.fit(X, y)


def test_one_dataloader_per_fit(data, monkeypatch):
    X, y, _ = data
    created = []
    real_init = torch.utils.data.DataLoader.__init__

    def counting_init(self, *args, **kwargs):
        created.append(kwargs.get("persistent_workers"))
        real_init(self, *args, **kwargs)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return torch.from_numpy(X[i])

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", counting_init)
    _clf(max_epochs=4).fit(Items(), y)
    assert len(created) == 2  # one for training, one for validation, for all 4 epochs


def test_a_failed_fit_stops_its_loader_workers(data):
    import multiprocessing

    X, y, _ = data

    class Breaks(torch.utils.data.Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            if i == 17:  # in the middle of the first epoch
                raise OSError("a broken item")
            return torch.from_numpy(X[i])

    before = set(multiprocessing.active_children())
    for _ in range(2):  # the failed fit's traceback sits in a reference cycle until collected
        try:
            _clf(num_workers=2, batch_size=8).fit(Breaks(), y)
        except OSError:
            pass
    assert set(multiprocessing.active_children()) <= before  # no worker outlives its fit


def test_old_sparse_init_values_are_read_as_layer_density(data):
    X, y, g = data
    with pytest.warns(FutureWarning, match="layer_density='uniform'"):
        old = _clf(sparse_init="uniform", max_epochs=2).fit(X, y, groups=g)
    new = _clf(layer_density="uniform", max_epochs=2).fit(X, y, groups=g)
    assert np.array_equal(old.predict_proba(X), new.predict_proba(X))
    densities = old.sparsity_report()["density"]
    assert densities.max() - densities.min() < 0.02  # uniform, not ERK


# ------------------------------------------------------------ a run without an estimator
def test_a_run_is_built_from_a_config_alone():
    """build_parts takes a TrainConfig (the estimator's parameters by name), not the estimator."""
    X, y, _ = _toy()
    cpu = torch.device("cpu")
    config = TrainConfig.from_params(_clf(sparsity=0.8, max_epochs=2).get_params())
    generator = torch.Generator().manual_seed(0)
    train = TrainSet(make_source(X, device=cpu), torch.as_tensor(y), None,
                     torch.zeros(len(y), dtype=torch.long), 1,
                     EpochSampler(len(y), config.batch_size, None, generator))
    module = build_module("mlp", input_shape=(20,), n_classes=2, module_params=None)
    parts = build_parts(config, module, train, None, world=LocalContext(device=cpu),
                        precision=Precision("32", cpu), generator=generator, callbacks=[])
    assert parts.forward_module is module and parts.batch_size == 64  # one process
    state = TrainingRun(parts, generator=generator).fit_loop(type("Net", (), {})())
    assert [r["epoch"] for r in state.history] == [1, 2]
    assert state.history[-1]["density"] == pytest.approx(0.2, abs=0.01)


def test_torch_dataset_inputs_that_do_not_fit_are_named(data):
    X, y, _ = data

    class Items(torch.utils.data.Dataset):
        def __init__(self, rows, ragged_at=None):
            self.rows, self.ragged_at = rows, ragged_at

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            x = torch.from_numpy(self.rows[i])
            return x[:-1] if i == self.ragged_at else x

    with pytest.raises(ValueError, match="must all have one shape; a batch holds items"):
        _clf(max_epochs=1).fit(Items(X, ragged_at=5), y)
    clf = _clf(max_epochs=1).fit(Items(X), y)
    with pytest.raises(ValueError, match=r"items of shape \(11,\), but the estimator was "
                                         r"fitted on items of shape \(12,\)"):
        clf.predict(Items(X[:, :11]))
    with pytest.raises(ValueError, match="empty torch Dataset; there is no sample"):
        clf.predict(Items(X[:0]))

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(torch.from_numpy(X))

    with pytest.raises(TypeError, match=r"IterableDataset .* must be a map-style Dataset"):
        _clf(max_epochs=1).fit(Stream(), y)


# ----------------------------------------------------------------- predict_logits' mode
def _net_with_dropout() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Dropout(0.5),
                               torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _logits(net: torch.nn.Module, X: np.ndarray) -> torch.Tensor:
    cpu = torch.device("cpu")
    return predict_logits(net, make_source(X, device=cpu), batch_size=256, device=cpu)


def _counting_train_calls(net: torch.nn.Module) -> list:
    calls = []
    for m in net.modules():
        m.train = lambda mode=True, m=m, train=m.train: (calls.append(mode), train(mode))[1]
    return calls


def test_predicting_leaves_a_module_in_evaluation_mode_alone(data):
    X = data[0]
    net = _net_with_dropout().eval()
    expected = _logits(net, X)
    calls = _counting_train_calls(net)
    assert torch.equal(_logits(net, X), expected)
    assert calls == []  # no eval() and train() walk over the module
    net[1].train()  # one submodule in training mode: the module is evaluated without it
    calls.clear()
    assert torch.equal(_logits(net, X), expected)
    assert calls  # and each submodule is put back in its own mode
    assert [m.training for m in net.modules()] == [m is net[1] for m in net.modules()]


def test_predicting_puts_a_training_module_back_in_training_mode(data):
    X = data[0]
    net = _net_with_dropout().eval()
    expected = _logits(net, X)
    net.train()
    assert torch.equal(_logits(net, X), expected)  # dropout off while predicting
    assert all(m.training for m in net.modules())


def test_non_finite_outputs_are_counted_by_sample(data):
    X, y, _ = data
    clf = _clf(max_epochs=1).fit(X, y)
    with torch.no_grad():
        clf.module_.layers[1].weight.abs_()
    big = X.copy()
    big[[2, 7, 9]] = 3e38  # finite in float32; the first layer's sums overflow
    with pytest.raises(TrainingDivergedError, match=rf"not finite for 3 of {len(X)} samples"):
        clf.predict_proba(big)


def test_predicting_keeps_a_module_whose_own_train_freezes_a_part(data):
    class FrozenNorm(torch.nn.Sequential):  # a common pattern: normalisation kept in eval
        def train(self, mode: bool = True):
            super().train(mode)
            self[1].eval()
            return self

    X = data[0]
    torch.manual_seed(0)
    net = FrozenNorm(torch.nn.Linear(12, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3))
    net.train()
    before = [m.training for m in net.modules()]
    assert before == [True, True, False, True]
    _logits(net, X)
    assert [m.training for m in net.modules()] == before
