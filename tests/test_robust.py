"""Group-label-free REST (JTT) and GroupDRO."""

from __future__ import annotations

import io
import re
import threading
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.base import clone

import rest_fair.jtt as jtt
from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback
from rest_fair.jtt import overlap_report
from rest_fair.objectives import GroupDROObjective
from rest_fair.reweighting import minority_mask


def _spurious(n=1200, minority=0.05, seed=0):
    """Binary task with a strong, easy spurious feature that disagrees with y on `minority`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    conflict = rng.random(n) < minority
    s = np.where(conflict, 1 - y, y)
    core = (2 * y - 1) * 0.6 + rng.normal(0, 1.0, n)  # weak, noisy true signal
    X = np.column_stack([core, 3.0 * (2 * s - 1) + rng.normal(0, 0.1, n),
                         rng.normal(0, 1, (n, 4))]).astype(np.float32)
    return X, y, conflict


FAST = dict(module_params={"hidden_layer_sizes": (32,)}, batch_size=64, lr=0.05,
            random_state=0, device="cpu")


def test_error_set_is_the_identification_models_mistakes(monkeypatch):
    X, y, _ = _spurious()
    seen = {}
    real = jtt.identify_errors

    def spy(est, X_, y_, *, seed, sample_weight=None):
        errors = real(est, X_, y_, seed=seed, sample_weight=sample_weight)
        # the same identification model, refitted, makes exactly these mistakes
        from sklearn.base import clone
        model = clone(est).set_params(**jtt.identification_params(est, seed=seed)).fit(
            X_, y_, sample_weight=sample_weight)
        seen["expected"] = model.predict(X_) != y_
        seen["errors"] = errors
        return errors

    monkeypatch.setattr("rest_fair._fit.identify_errors", spy)
    clf = RESTClassifier(infer_groups="jtt", jtt_epochs=2, upweight=20.0, sparsity=0.5,
                         max_epochs=3, validation_fraction=0.0, **FAST).fit(X, y)
    assert np.array_equal(seen["errors"], seen["expected"])
    assert np.array_equal(clf.inferred_groups_, seen["errors"])
    assert 0 < clf.inferred_groups_.sum() < len(y)
    # the error set is the upweighted group
    assert clf.groups_ == [False, True]
    assert {w for (_, g), w in clf.group_weights_.items() if g} == {20.0}


def test_error_set_is_enriched_in_the_true_minority():
    X, y, conflict = _spurious()
    clf = RESTClassifier(infer_groups="jtt", jtt_epochs=3, upweight=20.0, sparsity=0.8,
                         max_epochs=4, **FAST).fit(X, y, groups=conflict)
    report = clf.inferred_groups_overlap_
    assert report["base_rate"] == pytest.approx(conflict.mean(), abs=0.01)
    assert report["precision"] > 5 * report["base_rate"]
    assert report["recall"] > 0.5


def test_identify_errors_flags_each_sample_of_a_column_of_labels():
    # fit takes y of shape (n, 1), with sklearn's DataConversionWarning; the predictions
    # were compared with it by broadcasting, an (n, n) mask
    X, y, _ = _spurious(n=100)
    est = RESTClassifier(jtt_epochs=1, sparsity=0.0, **FAST)
    errors = jtt.identify_errors(est, X, y, seed=0)
    with pytest.warns(Warning, match="column-vector y"):
        column = jtt.identify_errors(est, X, y.reshape(-1, 1), seed=0)
    assert column.shape == (100,)
    assert np.array_equal(column, errors)


def test_overlap_report_by_hand():
    inferred = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    truth = np.array([1, 0, 0, 1, 1, 0], dtype=bool)
    r = overlap_report(inferred, truth)
    assert r == {"n_inferred": 3, "n_minority": 3, "precision": 2 / 3, "recall": 2 / 3,
                 "base_rate": 0.5}
    y = np.array([0, 0, 0, 1, 1, 1])
    g = np.array([0, 0, 1, 1, 1, 0])
    assert minority_mask(y, g).tolist() == [False, False, True, False, False, True]


@pytest.mark.parametrize("inferred, minority", [
    ([True], [True, False, False, True]),  # broadcast: precision 2.0
    ([True, False], [True, False, False]),
    ([[True, False], [False, True]], [[True, False], [True, True]]),
])
def test_overlap_report_refuses_flags_of_other_samples(inferred, minority):
    with pytest.raises(ValueError, match=r"one-dimensional of the same length; got shapes"):
        overlap_report(np.array(inferred), np.array(minority))


@pytest.mark.parametrize("groups, shown", [
    ([0, 1, 2, 2], "got 2 among them"),  # read as "not group 0"
    (["a", "b", "a", "b"], "got 'a' among them"),  # read as all minority: base rate 1.0
    ([0.5, 0.0, 1.0, 1.0], "got 0.5 among them"),
])
def test_overlap_report_refuses_group_labels_for_flags(groups, shown):
    inferred = [True, False, False, True]
    with pytest.raises(ValueError, match=rf"needs minority as flags, .* {shown}\. Group "
                       r"labels are not minority flags: rest_fair\.reweighting\.minority_mask"):
        overlap_report(inferred, groups)
    with pytest.raises(ValueError, match=r"needs inferred as flags"):
        overlap_report(groups, inferred)
    flags = overlap_report(np.array(inferred, dtype=int), [1.0, 0.0, 1.0, 0.0])
    assert flags == overlap_report(inferred, [True, False, True, False])


def test_groupdro_moves_weight_to_the_worst_group():
    X, y, conflict = _spurious(minority=0.1)
    clf = RESTClassifier(objective="groupdro", groupdro_eta=0.05, upweight=None,
                         sparsity=0.0, max_epochs=6, **FAST).fit(X, y, groups=conflict)
    history = np.array(clf.group_weight_history_)
    assert history.shape == (6, 2)
    assert np.allclose(history.sum(1), 1.0)
    # the conflicting group (index 1, label True) has the higher loss and gains weight
    assert history[-1, 1] > 0.5 and history[-1, 1] > history[0, 1] - 1e-9
    erm = RESTClassifier(objective="erm", upweight=None, sparsity=0.0, max_epochs=6,
                         **FAST).fit(X, y, groups=conflict)
    dro_acc = np.mean(clf.predict(X[conflict]) == y[conflict])
    erm_acc = np.mean(erm.predict(X[conflict]) == y[conflict])
    assert dro_acc > erm_acc


@pytest.mark.parametrize("eta", [100.0, 1e30, float(torch.finfo(torch.float32).max)])
def test_groupdro_weights_stay_finite_when_their_update_overflows(eta):
    # q * exp(eta * loss) overflowed float32 (exp(230) at eta=100 and a loss of 2.3): q
    # became inf / inf = NaN and fit reported a diverged training blaming the lr
    dro = GroupDROObjective(3, eta=eta, device=torch.device("cpu"))
    dro.update(torch.tensor([2.3, 2.0, 0.0]), torch.tensor([True, True, False]))
    assert torch.isfinite(dro.q).all() and float(dro.q.sum()) == pytest.approx(1.0)
    # the weight goes to the worst group: exp(-eta * 0.3) of it stays on the other one
    assert dro.q.tolist() == pytest.approx([1.0, np.exp(-eta * 0.3), 0.0], rel=1e-5, abs=0)
    dro.update(torch.tensor([0.5, 4.0, 0.0]), torch.tensor([True, True, False]))
    assert torch.isfinite(dro.q).all() and float(dro.q.sum()) == pytest.approx(1.0)
    # a NaN loss still makes the weights NaN (fit then reports the divergence)
    dro.update(torch.tensor([float("nan"), 1.0, 0.0]), torch.tensor([True, True, False]))
    assert torch.isnan(dro.q).any()


def test_groupdro_update_without_overflow_is_the_plain_formula():
    dro = GroupDROObjective(3, eta=0.1, device=torch.device("cpu"))
    q = dro.q.clone()
    loss, present = torch.tensor([2.3, 0.7, 0.0]), torch.tensor([True, True, False])
    dro.update(loss, present)
    expected = q * torch.exp(0.1 * loss * present)
    assert torch.equal(dro.q, expected / expected.sum())


def test_groupdro_weight_that_rounds_to_zero_comes_back_when_its_group_is_worst():
    # q_1 = e^-150 rounds to 0 in float32; then 0 * exp(eta * loss) kept it 0 for good,
    # though the published update gives group 1 all the weight once its loss is the largest
    dro = GroupDROObjective(2, eta=1.0, device=torch.device("cpu"))
    present = torch.tensor([True, True])
    for _ in range(30):
        dro.update(torch.tensor([5.0, 0.0]), present)
    assert dro.q.tolist() == [1.0, 0.0]
    for _ in range(60):
        dro.update(torch.tensor([0.0, 5.0]), present)
    assert dro.q.tolist() == pytest.approx([0.0, 1.0], abs=1e-30)
    # a resumed run goes on from the same log weights
    resumed = GroupDROObjective(2, eta=1.0, device=torch.device("cpu"))
    resumed.load_state_dict(dro.state_dict())
    for objective in (dro, resumed):
        objective.update(torch.tensor([5.0, 0.0]), present)
    assert torch.equal(resumed.q, dro.q)


def test_groupdro_weight_history_of_a_warm_start_has_its_own_epochs_as_documented():
    X, y, conflict = _spurious(n=300)
    clf = RESTClassifier(objective="groupdro", groupdro_eta=1.0, upweight=None, sparsity=0.0,
                         max_epochs=2, warm_start=True, validation_fraction=0.0, **FAST)
    clf.fit(X, y, groups=conflict).set_params(max_epochs=1).fit(X, y, groups=conflict)
    assert len(clf.history_) == 3 and len(clf.group_weight_history_) == 1


class _StartingGroupWeights(Callback):
    """Records GroupDRO's group weights as each fit's training begins."""

    def __init__(self):
        self.q = []

    def on_train_begin(self, net, *, run, **kwargs):
        self.q.append(run.parts.objective.q.tolist())


@pytest.mark.parametrize("validation_fraction", [0.0, 0.3])
def test_groupdro_warm_start_continues_the_group_weights_of_the_kept_epoch(
        validation_fraction):
    # every warm start began at uniform weights: the group the fit had learnt to weigh
    # most lost its weight, and the next epochs trained closer to ERM
    X, y, conflict = _spurious(n=300, minority=0.3)
    starts = _StartingGroupWeights()
    clf = RESTClassifier(objective="groupdro", groupdro_eta=1.0, upweight=None, sparsity=0.0,
                         max_epochs=3, warm_start=True, callbacks=[starts],
                         validation_fraction=validation_fraction, **FAST)
    first = clf.fit(X, y, groups=conflict).group_weight_history_
    kept = first[clf.best_epoch_ - 1]
    assert kept != [0.5, 0.5]
    clf.set_params(max_epochs=1).fit(X, y, groups=conflict)
    assert starts.q == [[0.5, 0.5], pytest.approx(kept, rel=1e-6)]
    # from a model file too, and anew where the groups are others
    starts = _StartingGroupWeights()
    loaded = RESTClassifier.load(_saved(clf.set_params(callbacks=None)))
    loaded.set_params(callbacks=[starts])
    loaded.fit(X, y, groups=conflict)
    assert starts.q == [pytest.approx(clf.group_weight_history_[-1], rel=1e-6)]
    loaded.fit(X, y, groups=np.where(conflict, "b", "a"))
    assert starts.q[-1] == [0.5, 0.5]


def test_groupdro_continued_weights_keep_untrained_groups_out_and_zeros_alive():
    dro = GroupDROObjective(3, eta=1.0, device=torch.device("cpu"),
                            group_sizes=torch.tensor([5, 5, 0]))
    dro.continue_from([0.0, 0.25, 0.75])  # group 2 has no training sample in this run
    assert dro.q.tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-30)
    assert float(dro.q[0]) > 0 and float(dro.q[2]) == 0.0
    for _ in range(100):  # group 0, at weight 0 in q, gains it once its loss is the largest
        dro.update(torch.tensor([5.0, 0.0, 0.0]), torch.tensor([True, True, False]))
    assert dro.q.tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="for 2 groups, this run has 3"):
        dro.continue_from([0.5, 0.5])


def _saved(clf):
    buffer = io.BytesIO()
    clf.save(buffer)
    buffer.seek(0)
    return buffer


def test_groupdro_with_a_large_step_size_fits():
    X, y, conflict = _spurious(n=600)
    clf = RESTClassifier(objective="groupdro", groupdro_eta=100.0, upweight=None,
                         sparsity=0.0, max_epochs=2, **FAST).fit(X, y, groups=conflict)
    assert np.isfinite(clf.group_weight_history_).all()
    assert np.isfinite(clf.predict_proba(X)).all()


@pytest.mark.parametrize("params", [
    {"objective": "groupdro", "upweight": None},
    {"infer_groups": "jtt", "jtt_epochs": 1, "upweight": 10.0},
])
def test_robust_modes_work_sparse(params):
    X, y, conflict = _spurious(n=600)
    clf = RESTClassifier(sparsity=0.9, max_epochs=3, **FAST, **params).fit(X, y, groups=conflict)
    report = clf.sparsity_report()
    assert report["n_active"].sum() / report["n_weights"].sum() == pytest.approx(0.1, abs=0.02)
    assert clf.predict(X).shape == (600,)


def test_plain_none_groups_is_one_group():
    X, y, _ = _spurious(n=300)
    clf = RESTClassifier(max_epochs=2, **FAST).fit(X, y)
    assert clf.groups_ == [0] and clf.inferred_groups_ is None


def test_the_error_set_is_upweighted_in_every_class():
    # a rare class that the identification model gets wrong: its error set is the larger
    # part of the class, and is still the part that is drawn lambda times as often
    rng = np.random.RandomState(0)
    y = (rng.rand(600) < 0.1).astype(int)
    X = rng.randn(600, 4).astype(np.float32)  # noise: the model predicts the common class
    clf = RESTClassifier(sparsity=0.5, module_params={"hidden_layer_sizes": (8,)},
                         max_epochs=1, jtt_epochs=2, batch_size=64, random_state=0,
                         device="cpu", validation_fraction=0.0, infer_groups="jtt",
                         upweight=20.0, optimizer="adam", lr=1e-3).fit(X, y)
    errors = clf.inferred_groups_
    assert errors[y == 1].mean() > 0.5
    assert clf.group_weights_ == {(0, False): 1.0, (0, True): 20.0,
                                  (1, False): 1.0, (1, True): 20.0}


def test_the_identification_model_is_trained_with_the_sample_weights(monkeypatch):
    # a third of the labels flipped and given weight 0: a model that sees the weights is
    # not trained on the noise, so its mistakes differ from an unweighted model's
    X, y, _ = _spurious(n=600)
    rng = np.random.default_rng(1)
    noisy = rng.random(len(y)) < 1 / 3
    y = np.where(noisy, 1 - y, y)
    sw = np.where(noisy, 0.0, 1.0)
    seen = {}
    real = jtt.identify_errors

    def spy(est, X_, y_, *, seed, **kwargs):
        seen.update(est=est, seed=seed, errors=real(est, X_, y_, seed=seed, **kwargs))
        return seen["errors"]

    monkeypatch.setattr("rest_fair._fit.identify_errors", spy)
    RESTClassifier(infer_groups="jtt", jtt_epochs=2, upweight=5.0, max_epochs=1,
                   validation_fraction=0.0, sparsity=0.0, **FAST).fit(X, y, sample_weight=sw)
    from sklearn.base import clone
    params = jtt.identification_params(seen["est"], seed=seen["seed"])
    model = clone(seen["est"]).set_params(**params)
    weighted = model.fit(X, y, sample_weight=sw).predict(X) != y
    unweighted = clone(model).fit(X, y).predict(X) != y
    assert not np.array_equal(weighted, unweighted)
    assert np.array_equal(seen["errors"], weighted)


def test_groupdro_weights_stay_finite_where_the_exponential_overflows():
    # eta * loss = 95 overflows float32's exp; q is the same normalised update
    obj = GroupDROObjective(3, eta=10.0, device=torch.device("cpu"))
    logits = torch.tensor([[9.5, 0.0], [0.0, 9.5], [0.0, 0.0]], requires_grad=True)
    y, g = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])
    value = obj(logits, y, None, g)
    losses = torch.nn.functional.cross_entropy(logits.detach().double(), y, reduction="none")
    expected = torch.softmax(10.0 * losses, 0)
    torch.testing.assert_close(obj.q.double(), expected, rtol=1e-5, atol=1e-30)
    assert torch.isfinite(value)
    torch.autograd.grad(value, logits)
    # a weight that underflowed to 0 meets a loss whose exponential overflows: still finite
    obj.q = torch.tensor([0.0, 1.0, 0.0])
    obj(logits, y, None, g)
    assert torch.equal(obj.q, torch.tensor([0.0, 1.0, 0.0]))
    # without overflow the update is exactly the plain product, as before
    obj = GroupDROObjective(3, eta=0.1, device=torch.device("cpu"))
    obj(logits, y, None, g)
    plain = torch.full((3,), 1 / 3) * torch.exp(0.1 * losses.float())
    assert torch.equal(obj.q, plain / plain.sum())


@pytest.mark.parametrize("which, advice", [("none", "Fewer jtt_epochs"),
                                            ("all", "learnt nothing: more jtt_epochs")])
def test_an_error_set_of_no_sample_or_of_every_sample_is_named(monkeypatch, which, advice):
    # an identification model that gets every training sample right (or wrong) leaves no
    # group to upweight: the fit says so, with the advice for that case, instead of
    # quietly training plain ERM
    X, y, _ = _spurious(n=300)
    monkeypatch.setattr("rest_fair._fit.identify_errors",
                        lambda est, X_, y_, **kw: np.full(len(y_), which == "all"))
    with pytest.warns(UserWarning, match=rf"misclassified {which} of the 300 training "
                                         rf"samples.*{advice}"):
        clf = RESTClassifier(infer_groups="jtt", jtt_epochs=1, upweight=20.0, max_epochs=1,
                             validation_fraction=0.0, **FAST).fit(X, y)
    assert (clf.inferred_groups_ == (which == "all")).all()


@pytest.mark.parametrize("lr", [1e12, Fraction(10**12)], ids=["float", "fraction"])
def test_a_diverged_identification_model_is_named_with_the_parameters_training_it(lr):
    from rest_fair.exceptions import TrainingDivergedError

    X, y, _ = _spurious(n=100)
    clf = RESTClassifier(infer_groups="jtt", jtt_epochs=2, max_epochs=1, **{**FAST, "lr": lr})
    with pytest.raises(TrainingDivergedError, match=r"^JTT's identification model .* "
                       r"jtt_epochs=2 epochs .*optimizer='sgd', lr=1e\+12 .* Training diverged"):
        clf.fit(X, y)


def test_a_dict_upweight_must_name_jtts_two_groups():
    X, y, _ = _spurious(n=300)
    clf = RESTClassifier(infer_groups="jtt", upweight={"majority": 1.0, "minority": 5.0},
                         jtt_epochs=1, max_epochs=1, **FAST)
    with pytest.raises(ValueError, match=r"upweight is a dict of weights by group \('majority', "
                       r"'minority'\), but with infer_groups='jtt' the groups it weighs are "
                       r"JTT's error set \(True\)"):
        clf.fit(X, y)
    assert not hasattr(clf, "inferred_groups_")
    partial = RESTClassifier(infer_groups="jtt", upweight={True: 5.0}, jtt_epochs=1,
                             max_epochs=1, **FAST)
    with pytest.raises(ValueError, match=r"pass upweight=\{False: 1.0, True: lambda\}"):
        partial.fit(X, y)


@pytest.mark.parametrize("upweight", [None, 1.0, {False: 2.0, True: 2.0}])
def test_an_error_set_that_nothing_uses_is_named(upweight):
    # ERM with the error set weighed as the rest trains as without JTT: the identification
    # model was trained for inferred_groups_ alone, and nothing said so
    X, y, _ = _spurious(n=300)
    params = dict(jtt_epochs=1, max_epochs=1, **FAST)
    with pytest.warns(UserWarning, match=rf"infer_groups='jtt' with upweight="
                      rf"{re.escape(repr(upweight))} and objective='erm': upweight gives "
                      r"JTT's error set the weight of the other samples .* identification "
                      r"model \(jtt_epochs=1\) trains only to fill inferred_groups_"):
        clf = RESTClassifier(infer_groups="jtt", upweight=upweight, **params).fit(X, y)
    plain = RESTClassifier(upweight=None, **params).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), plain.predict_proba(X))
    for used in (dict(upweight=5.0), dict(upweight=None, objective="groupdro")):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            RESTClassifier(infer_groups="jtt", **used, **params).fit(X, y)
        assert not [w for w in record if "infer_groups='jtt' with" in str(w.message)]


def test_an_error_set_of_samples_of_weight_zero_is_named_empty(monkeypatch):
    # the identification model's only mistakes are samples of weight 0, which are absent
    # from training: the error set of the training that counts is empty, and not upweighted
    X, y, _ = _spurious(n=300)
    weight = np.r_[np.zeros(100), np.ones(200)]
    monkeypatch.setattr("rest_fair._fit.identify_errors",
                        lambda est, X_, y_, **kw: weight == 0)
    with pytest.warns(UserWarning, match=r"misclassified none of the 200 training samples"):
        clf = RESTClassifier(infer_groups="jtt", jtt_epochs=1, upweight=20.0, max_epochs=1,
                             validation_fraction=0.0, **FAST).fit(X, y, sample_weight=weight)
    assert {group for _, group in clf.group_weights_} == {False}
    assert not clf.inferred_groups_.any()


def test_the_error_set_and_its_overlap_leave_out_samples_of_weight_zero():
    # a third of the samples weigh 0: the error set and its overlap with the true minority
    # are those of the fit without them (they counted in both, though never trained on)
    X, y, conflict = _spurious(n=600)
    weight = np.where(np.arange(600) % 3 == 0, 0.0, 1.0)
    kept = weight > 0
    params = dict(infer_groups="jtt", jtt_epochs=1, upweight=10.0, max_epochs=1,
                  validation_fraction=0.0, **FAST)
    clf = RESTClassifier(**params).fit(X, y, groups=conflict, sample_weight=weight)
    removed = RESTClassifier(**params).fit(X[kept], y[kept], groups=conflict[kept])
    assert not clf.inferred_groups_[~kept].any()
    assert np.array_equal(clf.inferred_groups_[kept], removed.inferred_groups_)
    assert clf.inferred_groups_overlap_ == removed.inferred_groups_overlap_
# ------------------------------------------------------------ GroupDRO's group adjustment
def _batches():
    """Three batches of (logits, y, w, g) over 3 groups; group 2 absent from the first."""
    gen = torch.Generator().manual_seed(5)
    groups = [torch.tensor([0, 0, 1, 1, 0]), torch.tensor([2, 1, 0, 2, 1, 0]),
              torch.tensor([2, 2, 1])]
    out = []
    for g in groups:
        logits = torch.randn(len(g), 2, generator=gen)
        y = torch.randint(0, 2, (len(g),), generator=gen)
        w = torch.rand(len(g), generator=gen) + 0.5
        out.append((logits, y, w, g))
    return out


def test_groupdro_adjustment_q_update_by_hand():
    # n_g = 100, 25, 4 and C = 2: the adjustments are 0.2, 0.4 and 1.0
    eta, sizes = 0.3, torch.tensor([100, 25, 4])
    obj = GroupDROObjective(3, eta=eta, device=torch.device("cpu"), adjustment=2.0,
                            group_sizes=sizes)
    torch.testing.assert_close(obj.group_adjustment, torch.tensor([0.2, 0.4, 1.0]))
    q = [1 / 3] * 3
    for logits, y, w, g in _batches():
        logits = logits.clone().requires_grad_(True)
        value = obj(logits, y, w, g)
        per_sample = torch.nn.functional.cross_entropy(
            logits.detach().double(), y, reduction="none").tolist()
        loss = {}
        for k in set(g.tolist()):  # the weighted mean loss of every group present
            rows = [i for i in range(len(g)) if g[i] == k]
            loss[k] = sum(per_sample[i] * float(w[i]) for i in rows) / sum(float(w[i])
                                                                         for i in rows)
        q = [q[k] * np.exp(eta * (loss[k] + 2.0 / np.sqrt(float(sizes[k]))))
             if k in loss else q[k] for k in range(3)]
        q = [v / sum(q) for v in q]
        np.testing.assert_allclose(obj.q.double().numpy(), q, rtol=1e-6)
        # the loss the network minimises is not adjusted
        expected = sum(q[k] * loss[k] for k in loss)
        assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
        (grad,) = torch.autograd.grad(value, logits)
        per_group = torch.nn.functional.cross_entropy(logits, y, reduction="none") * w
        plain = sum(obj.q[k] * per_group[g == k].sum() / w[g == k].sum() for k in loss)
        torch.testing.assert_close(grad, torch.autograd.grad(plain, logits)[0])
    # the adjustment moved q towards the small group: without it, q differs
    unadjusted = GroupDROObjective(3, eta=eta, device=torch.device("cpu"))
    for logits, y, w, g in _batches():
        unadjusted(logits, y, w, g)
    assert float(obj.q[2]) > float(unadjusted.q[2])


def test_groupdro_without_adjustment_is_bitwise_plain_groupdro():
    plain = GroupDROObjective(3, eta=0.3, device=torch.device("cpu"))
    zero = GroupDROObjective(3, eta=0.3, device=torch.device("cpu"), adjustment=0.0,
                             group_sizes=torch.tensor([100, 25, 4]))
    q = torch.full((3,), 1 / 3)
    for logits, y, w, g in _batches():
        a, b = plain(logits, y, w, g), zero(logits, y, w, g)
        assert torch.equal(a, b) and torch.equal(plain.q, zero.q)
        # q_g * exp(eta * loss_g) on the groups present, renormalised, as before
        sums, counts = plain.group_sums(logits, y, w, g)
        present = counts > 0
        loss = torch.where(present, sums / counts.clamp_min(1e-12), 0.0)
        scaled = q * torch.exp(0.3 * loss * present)
        q = scaled / scaled.sum()
        assert torch.equal(plain.q, q)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"adjustment": -1.0, "group_sizes": torch.tensor([3, 4])}, "finite number >= 0; got -1"),
    ({"adjustment": float("nan"), "group_sizes": torch.tensor([3, 4])}, "got nan"),
    ({"adjustment": 1.0}, "needs group_sizes"),
    ({"adjustment": 1.0, "group_sizes": torch.tensor([3, 4, 5])}, "each of the 2 groups"),
    ({"adjustment": 1.0, "group_sizes": torch.tensor([3.0, -1.0])}, "finite count >= 0"),
])
def test_groupdro_adjustment_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupDROObjective(2, eta=0.1, device=torch.device("cpu"), **kwargs)


@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf"), "2", None, True])
def test_groupdro_adjustment_parameter_is_checked(value):
    X, y, conflict = _spurious(n=200)
    clf = RESTClassifier(objective="groupdro", groupdro_adjustment=value, **FAST)
    with pytest.raises(ValueError,
                       match=r"groupdro_adjustment must be a number in \[0, 3.40282\d*e\+38\]"):
        clf.fit(X, y, groups=conflict)


class _SeeObjective(Callback):
    def on_train_begin(self, net, *, run, **kwargs):
        self.adjustment = run.parts.objective.group_adjustment.clone()


@pytest.mark.parametrize("infer_groups", [None, "jtt"])
def test_groupdro_adjustment_counts_training_samples_that_weigh(infer_groups):
    X, y, conflict = _spurious(n=400)
    sw = np.where(np.arange(400) % 5 == 0, 0.0, 1.0 + np.arange(400) % 3)  # some weigh 0
    seen = _SeeObjective()
    params = dict(objective="groupdro", groupdro_adjustment=3.0, upweight=None,
                  infer_groups=infer_groups, jtt_epochs=1, sparsity=0.0, max_epochs=1,
                  validation_fraction=0.0, callbacks=[seen], **FAST)
    clf = RESTClassifier(**params).fit(X, y, groups=conflict, sample_weight=sw)
    groups = conflict if infer_groups is None else clf.inferred_groups_
    sizes = np.bincount(groups[sw > 0].astype(int), minlength=2)
    assert 0 < sizes.min()
    np.testing.assert_allclose(seen.adjustment.numpy(), 3.0 / np.sqrt(sizes), rtol=1e-6)
    assert clone(clf).get_params()["groupdro_adjustment"] == 3.0


def test_groupdro_adjustment_counts_only_the_training_split():
    X, y, conflict = _spurious(n=400)
    seen = _SeeObjective()
    RESTClassifier(objective="groupdro", groupdro_adjustment=1.0, upweight=None,
                   sparsity=0.0, max_epochs=1, validation_fraction=0.25, callbacks=[seen],
                   **FAST).fit(X, y, groups=conflict)
    sizes = 1.0 / seen.adjustment.double().numpy() ** 2
    np.testing.assert_allclose(sizes.sum(), 300, rtol=1e-5)  # not the 100 held out


def test_groupdro_adjustment_gives_small_groups_more_weight():
    X, y, conflict = _spurious(minority=0.1, n=600)
    params = dict(objective="groupdro", groupdro_eta=0.05, upweight=None, sparsity=0.0,
                  max_epochs=3, **FAST)
    plain = RESTClassifier(**params).fit(X, y, groups=conflict)
    adjusted = RESTClassifier(**params, groupdro_adjustment=5.0).fit(X, y, groups=conflict)
    assert np.array(adjusted.group_weight_history_)[-1, 1] > \
        np.array(plain.group_weight_history_)[-1, 1]
    explicit_zero = RESTClassifier(**params, groupdro_adjustment=0.0).fit(X, y, groups=conflict)
    assert np.array_equal(explicit_zero.predict_logits(X), plain.predict_logits(X))
    assert explicit_zero.group_weight_history_ == plain.group_weight_history_


def test_groupdro_gives_no_weight_to_a_group_without_training_samples():
    # group 1 has no training sample: q is that of GroupDRO over groups 0 and 2 alone
    sizes = torch.tensor([100, 0, 4])
    three = GroupDROObjective(3, eta=0.3, device=torch.device("cpu"), group_sizes=sizes)
    two = GroupDROObjective(2, eta=0.3, device=torch.device("cpu"))
    assert three.q.tolist() == [0.5, 0.0, 0.5]
    for logits, y, w, g in _batches():
        keep = g != 1
        three(logits[keep], y[keep], w[keep], g[keep])
        two(logits[keep], y[keep], w[keep], torch.where(g[keep] == 2, 1, 0))
        assert float(three.q[1]) == 0.0
        torch.testing.assert_close(three.q[[0, 2]], two.q, rtol=0, atol=1e-7)
    # every group has samples: q starts uniform over all of them, as without sizes
    full = GroupDROObjective(3, eta=0.3, device=torch.device("cpu"),
                             group_sizes=torch.tensor([1, 2, 3]))
    assert torch.equal(full.q, torch.full((3,), 1 / 3))


def test_groupdro_fit_gives_no_weight_to_a_group_held_out_whole():
    X, y, conflict = _spurious(n=400)
    groups = np.where(conflict, "minority", "majority").astype(object)
    groups[5] = "one sample"
    weights = []
    for seed in range(8):  # the one sample is held out by some seeds, trained on by others
        clf = RESTClassifier(objective="groupdro", upweight=None, sparsity=0.0, max_epochs=1,
                             validation_fraction=0.5, **{**FAST, "random_state": seed})
        clf.fit(X, y, groups=groups)
        assert list(clf.groups_) == ["majority", "minority", "one sample"]
        weights.append(clf.group_weight_history_[-1][2])
    assert 0.0 in weights  # held out: no weight, the other groups share it
    assert max(weights) > 0.3  # trained on: a third to start with


@pytest.mark.parametrize("reweight", ["sampler", "loss"])
def test_groupdro_fit_gives_no_weight_to_a_group_upweight_weighs_zero(reweight):
    # upweight 0 keeps a group out of every loss, as a sample_weight of 0 does
    X, y, conflict = _spurious(n=400)
    groups = np.where(conflict, "minority", "majority").astype(object)
    groups[:60] = "ignored"
    params = dict(objective="groupdro", reweight=reweight, sparsity=0.0, max_epochs=1,
                  validation_fraction=0.0, **FAST)
    by_upweight = RESTClassifier(
        upweight={"majority": 1.0, "minority": 1.0, "ignored": 0.0}, **params,
    ).fit(X, y, groups=groups)
    by_weight = RESTClassifier(upweight=None, **params).fit(
        X, y, groups=groups, sample_weight=np.where(groups == "ignored", 0.0, 1.0))
    assert by_weight.group_weight_history_[-1][0] == 0.0  # "ignored" sorts first
    assert by_upweight.group_weight_history_[-1][0] == 0.0


def _with_ignored_group(n=600):
    """Groups with an "ignored" group of flipped labels, which no fit learns."""
    X, y, conflict = _spurious(n=n, minority=0.2)
    groups = np.where(conflict, "minority", "majority").astype(object)
    groups[:100] = "ignored"
    y = y.copy()
    y[:100] = 1 - y[:100]
    return X, y, groups


@pytest.mark.parametrize("objective", ["erm", "groupdro"])
def test_a_group_upweight_weighs_zero_takes_no_part_in_model_selection(objective):
    # it was held out and chose the epoch kept: the worst validation group was the one
    # the fit never trains on, as if removed; now the fit is that with sample_weight 0
    X, y, groups = _with_ignored_group()
    params = dict(objective=objective, sparsity=0.0, max_epochs=3, validation_fraction=0.3,
                  **FAST)
    by_upweight = RESTClassifier(
        upweight={"majority": 1.0, "minority": 3.0, "ignored": 0.0}, **params,
    ).fit(X, y, groups=groups)
    by_weight = RESTClassifier(
        upweight={"majority": 1.0, "minority": 3.0, "ignored": 1.0}, **params,
    ).fit(X, y, groups=groups, sample_weight=np.where(groups == "ignored", 0.0, 1.0))
    keys = ("valid_loss", "valid_acc", "valid_worst_group_acc", "train_loss", "best")
    assert [[r[k] for k in keys] for r in by_upweight.history_] == [
        [r[k] for k in keys] for r in by_weight.history_]
    assert np.array_equal(by_upweight.predict_proba(X), by_weight.predict_proba(X))
    kept = groups != "ignored"  # and the fit without the group's samples
    removed = RESTClassifier(upweight={"majority": 1.0, "minority": 3.0}, **params).fit(
        X[kept], y[kept], groups=groups[kept])
    assert np.array_equal(by_upweight.predict_proba(X), removed.predict_proba(X))


def test_validation_data_of_a_group_upweight_weighs_zero_is_left_out_of_its_scores():
    X, y, groups = _with_ignored_group()
    upweight = {"majority": 1.0, "minority": 3.0, "ignored": 0.0}
    params = dict(sparsity=0.0, max_epochs=2, upweight=upweight, **FAST)
    kept = groups != "ignored"
    clf = RESTClassifier(**params).fit(X, y, groups=groups,
                                       validation_data=(X, y, groups))
    without = RESTClassifier(**params).fit(X, y, groups=groups,
                                           validation_data=(X[kept], y[kept], groups[kept]))
    for mine, theirs in zip(clf.history_, without.history_, strict=True):
        assert mine["valid_acc"] == theirs["valid_acc"]
        assert mine["valid_worst_group_acc"] == theirs["valid_worst_group_acc"]
        assert mine["valid_loss"] == pytest.approx(theirs["valid_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="validation_data holds only samples of groups "
                                         r"that upweight weighs 0: \['ignored'\]"):
        RESTClassifier(**params).fit(X, y, groups=groups,
                                     validation_data=(X[~kept], y[~kept], groups[~kept]))


# ------------------------------------------------ GroupDRO against its published definition
def _reference_groupdro(q, logits, y, w, g, *, eta, adjustment):
    """One step of Sagawa et al.'s Algorithm 1 on a batch, in float64 and plain loops: the
    (weighted) mean loss of every group present, ``q_g * exp(eta * (loss_g + adj_g))`` on
    those groups, renormalised, and ``sum_g q_g * loss_g`` with the new ``q``."""
    logits = logits.detach().double().requires_grad_(True)
    per_sample = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    w = torch.ones_like(per_sample) if w is None else w.double()
    losses = {}
    for k in range(len(q)):
        rows = (g == k) & (w > 0)
        if rows.any():
            losses[k] = (per_sample[rows] * w[rows]).sum() / w[rows].sum()
    scaled = [q[k] * np.exp(eta * (float(losses[k].detach()) + adjustment[k])) if k in losses
              else q[k] for k in range(len(q))]
    q = [v / sum(scaled) for v in scaled]
    value = sum(q[k] * loss for k, loss in losses.items())
    return q, float(value.detach()), torch.autograd.grad(value, logits)[0]


@pytest.mark.parametrize("adjustment", [0.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_groupdro_steps_follow_the_published_algorithm(weighted, adjustment):
    gen = torch.Generator().manual_seed(1)
    sizes = torch.tensor([50, 10, 3, 200])
    obj = GroupDROObjective(4, eta=0.7, device=torch.device("cpu"), adjustment=adjustment,
                            group_sizes=sizes)
    q = [0.25] * 4
    for step in range(6):
        g = torch.randint(0, 4, (16,), generator=gen)
        if step in (1, 3):  # a group absent from the batch keeps its weight
            g = torch.where(g == 2, 1, g)
        logits = torch.randn(16, 3, generator=gen) * 2
        y = torch.randint(0, 3, (16,), generator=gen)
        w = torch.rand(16, generator=gen) * 2 if weighted else None
        if weighted:
            w[0] = 0.0
        leaf = logits.clone().requires_grad_(True)
        value = obj(leaf, y, w, g)
        (grad,) = torch.autograd.grad(value, leaf)
        q, expected, expected_grad = _reference_groupdro(
            q, logits, y, w, g, eta=0.7,
            adjustment=(adjustment / sizes.double().sqrt()).tolist())
        np.testing.assert_allclose(obj.q.double().numpy(), q, rtol=0, atol=1e-6)
        assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=0, atol=1e-6)


def test_groupdro_matches_wilds_group_losses_and_update():
    # WILDS' group-wise loss (absent groups: 0) and its GroupDRO update of the weights
    loss_module = pytest.importorskip("wilds.common.metrics.loss")
    wilds_loss = loss_module.ElementwiseLoss(
        loss_fn=torch.nn.CrossEntropyLoss(reduction="none"))
    gen = torch.Generator().manual_seed(2)
    obj = GroupDROObjective(4, eta=0.01, device=torch.device("cpu"))
    weights = torch.full((4,), 0.25)
    for step in range(5):
        g = torch.randint(0, 4 if step % 2 else 3, (16,), generator=gen)  # 3 absent at times
        logits = torch.randn(16, 3, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        ours, theirs = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        value = obj(ours, y, None, g)
        group_losses, _, _ = wilds_loss.compute_group_wise(theirs, y, g, 4, return_dict=False)
        weights = weights * torch.exp(0.01 * group_losses.detach())
        weights = weights / weights.sum()
        reference = group_losses @ weights
        torch.testing.assert_close(obj.q, weights)
        torch.testing.assert_close(value, reference)
        torch.testing.assert_close(torch.autograd.grad(value, ours)[0],
                                   torch.autograd.grad(reference, theirs)[0])


@pytest.mark.parametrize("scale", [1e-3, 1e-13, 1e-30])
def test_groupdro_group_loss_is_its_weighted_mean_at_any_weight_scale(scale):
    # a group's weights summed to less than 1e-12 in a batch: its loss was divided by
    # 1e-12 instead of their sum, so scaling the weights of a group changed its loss
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.0]])
    y, g = torch.tensor([1, 0, 1, 0]), torch.tensor([0, 0, 1, 1])
    unit = GroupDROObjective(2, eta=1.0, device=torch.device("cpu"))
    scaled = GroupDROObjective(2, eta=1.0, device=torch.device("cpu"))
    for _ in range(3):
        a = unit(logits, y, torch.tensor([1.0, 1.0, 1.0, 3.0]), g)
        b = scaled(logits, y, torch.tensor([1.0, 1.0, scale, 3 * scale]), g)
        torch.testing.assert_close(scaled.q, unit.q)
        torch.testing.assert_close(b, a)


def test_an_upweight_dict_of_the_given_groups_is_refused_before_jtt_trains(monkeypatch):
    # with JTT the dict weighs the error set (True) and the rest (False): a dict keyed by
    # the groups given to fit warned that the error set was unused, trained the
    # identification model, then failed naming groups [False, True] without saying why
    X, y, conflict = _spurious(n=300)
    groups = np.where(conflict, "b", "a")

    def no_training(*args, **kwargs):
        raise AssertionError("the identification model was trained")

    monkeypatch.setattr("rest_fair._fit.identify_errors", no_training)
    params = dict(infer_groups="jtt", jtt_epochs=1, max_epochs=1, validation_fraction=0.0, **FAST)
    clf = RESTClassifier(upweight={"a": 1.0, "b": 5.0}, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(ValueError, match=r"upweight is a dict of weights by group \('a', "
                           r"'b'\), but with infer_groups='jtt' .* error set \(True\) and the "
                           r"other samples \(False\)"):
            clf.fit(X, y, groups=groups)
    assert not hasattr(clf, "module_")
    monkeypatch.undo()
    fitted = RESTClassifier(upweight={0: 1.0, 1: 5.0}, **params).fit(X, y, groups=groups)
    assert {w for (_, g), w in fitted.group_weights_.items() if g} == {5.0}


@pytest.mark.parametrize("reweight", ["sampler", "loss"])
def test_an_upweight_dict_that_leaves_a_class_untrained_warns(reweight):
    # every group of class 1's samples weighs 0: the class was never learnt, silently,
    # where a class whose sample_weight are all 0 is named in a warning
    X, y, conflict = _spurious(n=200)
    groups = np.where(y == 1, "a", np.where(conflict, "b", "a"))
    with pytest.warns(UserWarning, match=r"1 class\(es\) have no training sample that "
                      r"upweight=\{'a': 0.0, 'b': 1.0\} weighs above 0: 1\.") as record:
        RESTClassifier(upweight={"a": 0.0, "b": 1.0}, reweight=reweight, max_epochs=1,
                       sparsity=0.0, validation_fraction=0.0, **FAST).fit(X, y, groups=groups)
    assert [w.filename for w in record if "weighs above 0" in str(w.message)] == [__file__]
    with warnings.catch_warnings():  # a class left some weight trains without it
        warnings.simplefilter("error", UserWarning)
        RESTClassifier(upweight={"a": 0.0, "b": 1.0}, max_epochs=1, sparsity=0.0,
                       validation_fraction=0.0, **FAST).fit(
            X, y, groups=np.where(conflict, "b", "a"))


@pytest.mark.parametrize("with_groups", [False, True])
def test_an_upweight_lambda_that_weighs_nothing_warns(with_groups):
    # without groups, or with groups that never vary within a class, lambda drew every
    # sample alike: plain ERM, silently
    X, y, conflict = _spurious(n=200)
    groups = y.copy() if with_groups else None
    why = "each class are all in one group" if with_groups else "fit got no groups"
    with pytest.warns(UserWarning, match=rf"upweight=30.0 draws .* but .*{why}") as record:
        RESTClassifier(upweight=30.0, max_epochs=1, sparsity=0.0, validation_fraction=0.0,
                       **FAST).fit(X, y, groups=groups)
    assert [w.filename for w in record if "draws the samples" in str(w.message)] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for upweight, g in ((30.0, conflict), (1.0, None), ("balanced", None)):
            RESTClassifier(upweight=upweight, max_epochs=1, sparsity=0.0,
                           validation_fraction=0.0, **FAST).fit(X, y, groups=g)


@pytest.mark.parametrize("case", ["no groups", "one trained"])
def test_groupdro_over_one_group_warns_that_it_trains_as_erm(case):
    # without groups (forgotten), or with every other group weighed 0, GroupDRO's one
    # weight is 1 throughout: plain ERM, silently
    X, y, conflict = _spurious(n=200)
    groups, upweight, why = None, None, "fit got no groups"
    if case == "one trained":
        groups, upweight = conflict, {False: 1.0, True: 0.0}
        why = r"only the group False has training samples"
    params = dict(objective="groupdro", max_epochs=1, sparsity=0.0, validation_fraction=0.0,
                  **FAST)
    with pytest.warns(UserWarning, match=rf"objective='groupdro' .*{why}.*as ERM") as record:
        RESTClassifier(upweight=upweight, **params).fit(X, y, groups=groups)
    assert [w.filename for w in record if "groupdro" in str(w.message)] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        RESTClassifier(upweight=None, **params).fit(X, y, groups=conflict)


def test_the_identification_model_does_not_repeat_the_fits_warnings():
    # a class of weight 0, a layer kept denser than asked and a deprecated sparse_init: the
    # identification model's fit warned of each again
    X, y, _ = _spurious(n=300)
    y = np.where(np.arange(300) % 10 == 0, 2, y)
    weight = np.where(y == 2, 0.0, 1.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        RESTClassifier(infer_groups="jtt", jtt_epochs=1, upweight=5.0, max_epochs=1,
                       sparsity=0.999, sparse_init="erk", validation_fraction=0.0, **FAST).fit(
            X, y, sample_weight=weight)
    messages = [str(w.message) for w in record]
    for start in ("1 class(es) have no sample of positive sample_weight",
                  "density 0.001 asks for", "sparse_init='erk' is deprecated"):
        assert len([m for m in messages if m.startswith(start)]) == 1, messages
    images = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype(np.float32)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        RESTClassifier(module="resnet18", module_params={"width": 4}, infer_groups="jtt",
                       jtt_epochs=1, upweight=5.0, max_epochs=1, sparsity=0.0,
                       validation_fraction=0.0, batch_size=16, random_state=0,
                       device="cpu").fit(images, y[:32])
    assert len([w for w in record if "look channels-last" in str(w.message)]) == 1


_inside, _warned = threading.Event(), threading.Event()


class _WaitingNet(torch.nn.Module):
    """A linear network whose first forward pass (in JTT's identification fit) waits until
    another thread has warned."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.linear = torch.nn.Linear(input_shape[0], n_classes)

    def forward(self, x):
        if not _inside.is_set():
            _inside.set()
            _warned.wait(60)
        return self.linear(x)


def test_the_identification_fit_keeps_the_warnings_of_other_threads():
    # the identification fit recorded all warnings of the process and gave back only those
    # naming jtt_epochs: another thread's warning given meanwhile was lost
    entered = []

    def other():
        entered.append(_inside.wait(60))
        warnings.warn("another thread's warning", UserWarning, stacklevel=1)
        _warned.set()

    _inside.clear()
    _warned.clear()
    X, y, _ = _spurious(n=64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        RESTClassifier(module=_WaitingNet, infer_groups="jtt", jtt_epochs=1, upweight=5.0,
                       max_epochs=1, sparsity=0.0, validation_fraction=0.0, batch_size=32,
                       device="cpu", random_state=0).fit(X, y)
        thread.join()
    assert entered == [True]  # it warned while the identification model trained
    assert [str(w.message) for w in record].count("another thread's warning") == 1
