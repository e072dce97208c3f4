"""fairness_report (fairlearn MetricFrame) and the worst-group scorer: values by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import sklearn
from fairlearn.metrics import MetricFrame
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning

from rest_fair.metrics import (
    fairness_report,
    group_accuracies,
    make_worst_group_scorer,
    worst_group_accuracy,
    worst_group_accuracy_score,
)

# 10 samples, groups a (4) and b (6).
Y = np.array([1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
P = np.array([1, 0, 0, 1, 1, 1, 0, 0, 0, 1])
G = np.array(["a", "a", "a", "a", "b", "b", "b", "b", "b", "b"])
# by hand:
# a: y=[1,1,0,0] p=[1,0,0,1] -> acc 2/4, TPR 1/2, FPR 1/2, selection 2/4, bal acc 1/2
# b: y=[1,1,1,0,0,0] p=[1,1,0,0,0,1] -> acc 4/6, TPR 2/3, FPR 1/3, selection 3/6,
#    bal acc (2/3 + 2/3)/2 = 2/3
# overall: acc 6/10, TPR 3/5, FPR 2/5, selection 5/10


def test_report_by_group_matches_hand_computation():
    report = fairness_report(y=Y, y_pred=P, groups=G)
    assert isinstance(report.frame, MetricFrame)
    by = report.by_group
    expected = {
        "a": {"accuracy": 0.5, "balanced_accuracy": 0.5, "selection_rate": 0.5,
              "true_positive_rate": 0.5, "false_positive_rate": 0.5, "count": 4},
        "b": {"accuracy": 4 / 6, "balanced_accuracy": 2 / 3, "selection_rate": 0.5,
              "true_positive_rate": 2 / 3, "false_positive_rate": 1 / 3, "count": 6},
    }
    for group, values in expected.items():
        for metric, value in values.items():
            assert by.loc[group, metric] == pytest.approx(value), (group, metric)
    overall = report.overall
    assert overall["accuracy"] == pytest.approx(0.6)
    assert overall["true_positive_rate"] == pytest.approx(0.6)
    assert overall["false_positive_rate"] == pytest.approx(0.4)
    assert overall["selection_rate"] == pytest.approx(0.5)


def test_report_summary_worst_group_and_gaps():
    report = fairness_report(y=Y, y_pred=P, groups=G)
    assert report.worst_group == "a"
    assert report.worst_group_accuracy == pytest.approx(0.5)
    assert report.worst_group_accuracy == pytest.approx(worst_group_accuracy(Y, P, G))
    s = report.summary
    assert s.loc["accuracy", "difference"] == pytest.approx(4 / 6 - 0.5)
    assert s.loc["accuracy", "ratio"] == pytest.approx(0.5 / (4 / 6))
    assert s.loc["false_positive_rate", "worst_group"] == "a"  # larger FPR is worse
    assert s.loc["true_positive_rate", "worst_group"] == "a"
    d = report.disparities
    assert d["demographic_parity_difference"] == pytest.approx(0.0)
    assert d["equal_opportunity_difference"] == pytest.approx(2 / 3 - 0.5)
    assert d["equalized_odds_difference"] == pytest.approx(max(2 / 3 - 0.5, 0.5 - 1 / 3))
    text = str(report)
    for needle in ("Overall", "By group", "Worst group (accuracy): a", "Disparities"):
        assert needle in text


def test_report_from_estimator_equals_report_from_predictions():
    class Fixed:
        classes_ = np.array([0, 1])

        def predict(self, X):
            return P[np.asarray(X).ravel()]

    X = np.arange(len(Y)).reshape(-1, 1)
    a = fairness_report(Fixed(), X, Y, groups=G).by_group
    b = fairness_report(y=Y, y_pred=P, groups=G).by_group
    pd.testing.assert_frame_equal(a, b)


def test_intersectional_groups_and_undefined_rates():
    sex = np.array(["f", "m"] * 5)
    report = fairness_report(y=Y, y_pred=P, groups={"sex": sex, "label": Y})
    by = report.by_group
    assert by.index.names == ["sex", "label"]
    mask = (sex == "f") & (Y == 0)
    assert by.loc[("f", 0), "accuracy"] == pytest.approx(np.mean(P[mask] == Y[mask]))
    assert by.loc[("f", 0), "count"] == mask.sum()
    # TPR is undefined without positives: NaN, not fairlearn's 0
    assert math.isnan(by.loc[("f", 0), "true_positive_rate"])
    assert math.isnan(by.loc[("m", 1), "false_positive_rate"])
    assert "sex=" in str(report)
    # a 2-D array works as well and gives the same numbers
    arr = fairness_report(y=Y, y_pred=P, groups=np.c_[sex, Y]).by_group
    np.testing.assert_allclose(arr["accuracy"].to_numpy(), by["accuracy"].to_numpy())


def test_multiclass_report_has_no_binary_rates():
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.array([0, 2, 2, 2, 1, 1])
    g = np.array([0, 0, 0, 1, 1, 1])
    report = fairness_report(y=y, y_pred=p, groups=g)
    assert set(report.by_group.columns) == {"accuracy", "balanced_accuracy", "count"}
    assert report.by_group.loc[0, "accuracy"] == pytest.approx(2 / 3)
    assert report.disparities == {}


def test_sample_weight_is_passed_to_metrics():
    w = np.where(G == "a", 1.0, 2.0)
    w[0] = 3.0  # the one correct positive of group a
    report = fairness_report(y=Y, y_pred=P, groups=G, sample_weight=w)
    # group a: weights [3,1,1,1], correct [1,0,1,0] -> 4/6
    assert report.by_group.loc["a", "accuracy"] == pytest.approx(4 / 6)
    assert report.by_group.loc["a", "count"] == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y": Y, "groups": G}, "either"),
        ({"y": Y, "y_pred": P, "groups": G[:3]}, "same number"),
        ({"y_pred": P, "groups": G}, "true labels"),
        ({"y": [], "y_pred": [], "groups": []}, "at least one sample"),
        ({"y": Y, "y_pred": P, "groups": G, "sample_weight": np.ones(len(Y) - 1)},
         "one finite, non-negative weight per sample"),
        ({"y": Y, "y_pred": P, "groups": G, "sample_weight": -np.ones(len(Y))},
         "one finite, non-negative weight per sample"),
        ({"y": np.array([0, "a"], dtype=object), "y_pred": np.array(["a", 0], dtype=object),
          "groups": [0, 1]}, "labels of one kind"),  # numpy's TypeError from sorting
    ],
)
def test_report_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fairness_report(**kwargs)


def test_group_accuracies_are_python_floats():
    # numpy floats printed as {'a': np.float64(0.5)}, unlike worst_group_accuracy's float
    for weights in (None, [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]):
        accs = group_accuracies(Y, P, G, sample_weight=weights)
        assert {type(a) for a in accs.values()} == {float}


def test_group_accuracies_unchanged():
    assert group_accuracies(Y, P, G) == pytest.approx({"a": 0.5, "b": 4 / 6})


def test_group_metrics_refuse_mixed_label_kinds_and_read_intersections():
    with pytest.raises(ValueError, match="labels of one kind"):
        group_accuracies(np.array(["0", "1"]), np.array([0, 1]), [0, 0])
    with pytest.raises(ValueError, match="labels of one kind"):  # "2" was scored wrong beside 2
        group_accuracies(np.array(["1", 2], dtype=object), np.array(["1", "2"]), [0, 0])
    with pytest.raises(ValueError, match="labels of one kind"):  # not scikit-learn's error
        fairness_report(y=np.array([0, 1]), y_pred=np.array(["0", "1"]), groups=[0, 0])
    two_columns = np.array([[0, "a"], [0, "b"], [0, "b"], [1, "a"]], dtype=object)
    assert group_accuracies([1, 1, 0, 1], [1, 0, 0, 1], two_columns) == {
        (0, "a"): 1.0, (0, "b"): 0.5, (1, "a"): 1.0}
    with pytest.warns(DataConversionWarning):  # a column vector of labels is read as 1-D
        assert group_accuracies(np.array([[1], [0]]), [1, 1], ["g", "g"]) == {"g": 0.5}


@pytest.mark.parametrize("missing", [None, math.nan])
def test_missing_group_labels_are_refused_by_name(missing):
    with pytest.raises(ValueError, match=r"groups must not contain missing values .*found 1"):
        group_accuracies([0, 1, 1], [0, 1, 0], [missing, 1, 1])
    for groups in ([missing, 1, 1], {"sex": ["f", "m", "m"], "age": [missing, 1, 1]}):
        with pytest.raises(ValueError, match=r"groups must not contain missing values .*found 1"):
            fairness_report(y=[0, 1, 1], y_pred=[0, 1, 0], groups=groups)


@pytest.mark.parametrize("groups", ["aaaaabbbbb", None, np.zeros((10, 1, 2)), np.zeros((10, 0)),
                                    pd.DataFrame(index=range(10)), {}])
def test_groups_neither_1d_nor_2d_are_refused_naming_their_shape(groups):
    with pytest.raises(ValueError, match=r"groups must be 1-D .* or 2-D .*; got shape \("):
        worst_group_accuracy(Y, P, groups)
    with pytest.raises(ValueError, match=r"groups must be 1-D .* or 2-D .*; got shape \("):
        fairness_report(y=Y, y_pred=P, groups=groups)


def test_scorer_needs_routing_and_groups():
    with pytest.raises(RuntimeError, match="enable_metadata_routing"):
        make_worst_group_scorer()
    with pytest.raises(ValueError, match="no `groups`"):
        worst_group_accuracy_score(Y, P)
    assert worst_group_accuracy_score(Y, P, groups=G) == pytest.approx(0.5)


def test_scorer_value_equals_worst_group_accuracy():
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Fixed(ClassifierMixin, BaseEstimator):
        classes_ = np.array([0, 1])

        def predict(self, X):
            return P[np.asarray(X).ravel()]

    X = np.arange(len(Y)).reshape(-1, 1)
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_worst_group_scorer()
        assert scorer(Fixed(), X, Y, groups=G) == pytest.approx(0.5)


def test_a_group_without_weight_has_no_metrics_and_is_not_the_worst():
    # as worst_group_accuracy and fit's model selection leave it out
    w = np.where(G == "a", 0.0, 1.0)
    report = fairness_report(y=Y, y_pred=P, groups=G, sample_weight=w)
    assert report.by_group.loc["a"].drop("count").isna().all()
    assert report.by_group.loc["a", "count"] == 4
    assert report.worst_group == "b"
    assert report.worst_group_accuracy == worst_group_accuracy(Y, P, G, sample_weight=w)
    only_b = fairness_report(y=Y[G == "b"], y_pred=P[G == "b"], groups=G[G == "b"])
    pd.testing.assert_frame_equal(report.summary, only_b.summary)
    assert report.disparities == only_b.disparities
    assert "b" in str(report)
    with pytest.raises(ValueError, match="sample_weight is 0 for all 10 samples"):
        fairness_report(y=Y, y_pred=P, groups=G, sample_weight=np.zeros(len(Y)))


def test_string_labels_take_the_larger_as_positive_without_an_estimator():
    y = np.array(["no", "yes", "yes", "no"])
    report = fairness_report(y=y, y_pred=np.array(["no", "yes", "no", "no"]),
                             groups=np.array([0, 0, 1, 1]))
    assert report.pos_label == "yes"


def test_a_group_whose_positives_all_weigh_zero_has_no_tpr():
    # dropping the zero-weight rows gives the same report: no gap that does not exist
    y = np.array([1, 0, 1, 0, 0, 0, 0, 1, 1])
    y_pred = np.array([1, 1, 0, 0, 1, 0, 0, 1, 0])
    g = np.array(list("aaaa") + list("ddd") + list("ee"))
    w = np.array([0, 1, 0, 1, 1, 1, 1, 1, 1.0])
    weighted = fairness_report(y=y, y_pred=y_pred, groups=g, sample_weight=w)
    kept = w > 0
    dropped = fairness_report(y=y[kept], y_pred=y_pred[kept], groups=g[kept])
    assert math.isnan(weighted.frame.by_group["true_positive_rate"]["a"])
    assert weighted.disparities == dropped.disparities


class _Predicts:
    """A fitted classifier stand-in: fixed predictions and its classes_."""

    def __init__(self, classes, predictions):
        self.classes_ = np.asarray(classes)
        self.predictions = np.asarray(predictions)

    def predict(self, X):
        return self.predictions


def test_a_multiclass_task_showing_two_classes_gets_no_binary_rates():
    y, p, g = np.array([0, 2, 0, 2]), np.array([0, 0, 2, 2]), np.array(list("aabb"))
    X = np.zeros((4, 1))
    for report in (fairness_report(y=y, y_pred=p, groups=g, labels=[0, 1, 2]),
                   fairness_report(_Predicts([0, 1, 2], p), X, y, groups=g)):
        assert report.pos_label is None and report.disparities == {}
        assert list(report.overall.index) == ["accuracy", "balanced_accuracy", "count"]


def test_a_binary_slice_without_positives_keeps_the_positive_class():
    y, p, g = np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]), np.array(list("aabb"))
    report = fairness_report(y=y, y_pred=p, groups=g, labels=[0, 1])
    assert report.pos_label == 1
    assert report.overall["selection_rate"] == pytest.approx(0.25)
    assert report.overall["false_positive_rate"] == pytest.approx(0.25)
    assert math.isnan(report.overall["true_positive_rate"])
    only_negatives = fairness_report(_Predicts([0, 1], y), np.zeros((4, 1)), y, groups=g)
    assert only_negatives.pos_label == 1 and only_negatives.overall["selection_rate"] == 0
    with pytest.warns(UserWarning, match=r"hold one label, 0.*positive class is 0"):
        assert fairness_report(y=y, y_pred=y, groups=g).pos_label == 0


def test_labels_outside_the_given_labels_are_refused():
    with pytest.raises(ValueError, match=r"y_pred holds labels \[3\] that are not among "
                                         r"labels=\[0, 1\]"):
        fairness_report(y=Y, y_pred=np.where(P == 1, 3, 0), groups=G, labels=[0, 1])
    # a test label the estimator never saw makes the task a larger one, as before
    y = np.where(Y == 1, 2, Y)
    report = fairness_report(_Predicts([0, 1], P), np.zeros((10, 1)), y, groups=G)
    assert report.pos_label is None


def test_weighted_group_accuracies_equal_repeated_and_dropped_samples():
    rng = np.random.RandomState(0)
    y, p, g = rng.randint(0, 2, 60), rng.randint(0, 2, 60), rng.randint(0, 3, 60)
    w = rng.randint(0, 4, 60)
    w[:3] = 1  # every group keeps some weight
    g[:3] = [0, 1, 2]
    repeated = np.repeat(np.arange(60), w)
    expected = group_accuracies(y[repeated], p[repeated], g[repeated])
    got = group_accuracies(y, p, g, sample_weight=w.astype(float))
    assert got == pytest.approx(expected)
    assert worst_group_accuracy(y, p, g, sample_weight=w) == pytest.approx(min(expected.values()))
    assert group_accuracies(Y, P, G, sample_weight=np.ones(len(Y))) == group_accuracies(Y, P, G)


def test_groups_named_by_other_than_strings_are_reported():
    # fit takes them; fairlearn refused them ("column names must be strings")
    columns = pd.DataFrame({0: G, 1: Y})  # as pd.DataFrame(array) names them
    report = fairness_report(y=Y, y_pred=P, groups=columns)
    assert report.worst_group_accuracy == pytest.approx(min(
        group_accuracies(Y, P, columns).values()))
    assert list(report.frame.sensitive_levels) == ["0", "1"]
    assert list(columns.columns) == [0, 1]
    series = pd.Series(G, name=0)
    assert fairness_report(y=Y, y_pred=P, groups=series).worst_group == "a"
    assert series.name == 0
    assert fairness_report(y=Y, y_pred=P, groups={0: G, 1: Y}).worst_group == ("a", 0)


def test_a_column_of_tuple_labels_is_reported():
    # the labels fit gives intersectional groups, in one column: .loc read the worst tuple
    # as one key per axis ("Too many indexers")
    labels = pd.Series(list(zip(G, Y, strict=True)))
    report = fairness_report(y=Y, y_pred=P, groups=labels)
    accuracies = group_accuracies(Y, P, labels)
    assert report.worst_group_accuracy == min(accuracies.values())
    assert accuracies[report.worst_group] == report.worst_group_accuracy


def test_weights_whose_sum_overflows_give_the_accuracies_of_their_ratios():
    w = np.linspace(0.5, 1.5, len(Y))
    huge = w * 1e308  # each finite, their sum is not
    assert group_accuracies(Y, P, G, sample_weight=huge) == pytest.approx(
        group_accuracies(Y, P, G, sample_weight=w))
    pd.testing.assert_frame_equal(
        fairness_report(y=Y, y_pred=P, groups=G, sample_weight=huge).by_group,
        fairness_report(y=Y, y_pred=P, groups=G, sample_weight=w).by_group)


def test_weighted_group_accuracies_refuse_bad_weights():
    with pytest.raises(ValueError, match=r"one finite, non-negative weight per sample \(10\)"):
        group_accuracies(Y, P, G, sample_weight=np.ones(9))
    with pytest.raises(ValueError, match="non-negative"):
        group_accuracies(Y, P, G, sample_weight=np.where(G == "a", -1.0, 1.0))
    with pytest.raises(ValueError, match="sample_weight is 0 for all 10 samples"):
        worst_group_accuracy(Y, P, G, sample_weight=np.zeros(len(Y)))


def test_a_group_whose_samples_all_weigh_zero_is_left_out_as_fit_leaves_it_out():
    # fit's model selection skips such a group (an upweight dict weighing it 0)
    only_a = (G == "a").astype(float)
    assert group_accuracies(Y, P, G, sample_weight=only_a) == {"a": 0.5}
    assert worst_group_accuracy(Y, P, G, sample_weight=only_a) == 0.5
    assert worst_group_accuracy_score(Y, P, groups=G, sample_weight=2 * only_a) == 0.5
    assert worst_group_accuracy(Y, P, G, sample_weight=1 - only_a) == pytest.approx(4 / 6)


def test_scorer_takes_sample_weight_when_requested():
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Fixed(ClassifierMixin, BaseEstimator):
        classes_ = np.array([0, 1])

        def predict(self, X):
            return P[np.asarray(X).ravel()]

    X = np.arange(len(Y)).reshape(-1, 1)
    w = np.where(P == Y, 3.0, 1.0)
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_worst_group_scorer().set_score_request(sample_weight=True)
        assert scorer(Fixed(), X, Y, groups=G, sample_weight=w) == pytest.approx(
            worst_group_accuracy(Y, P, G, sample_weight=w))
        assert scorer(Fixed(), X, Y, groups=G, sample_weight=w) > 0.5
    assert worst_group_accuracy_score(Y, P, groups=G, sample_weight=w) == pytest.approx(
        min(group_accuracies(Y, P, G, sample_weight=w).values()))


class _Fixed(ClassifierMixin, BaseEstimator):
    """Predicts ``np.tile(P, 2)[X]`` for ``X`` of row numbers, whatever it was fitted on."""

    def fit(self, X, y, groups=None, sample_weight=None):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.tile(P, 2)[np.asarray(X).ravel()]


def _routed_data():
    """Row numbers, labels and groups of ``_Fixed``, and weights (3 where it is right)."""
    y = np.tile(Y, 2)
    return np.arange(20).reshape(-1, 1), y, np.tile(G, 2), np.where(np.tile(P, 2) == y, 3.0, 1.0)


def test_weighted_scorer_gets_groups_and_weights_in_cross_validate():
    from sklearn.model_selection import KFold, cross_validate

    X, y, g, w = _routed_data()
    cv = KFold(2)
    expected = [worst_group_accuracy(y[te], np.tile(P, 2)[te], g[te], sample_weight=w[te])
                for _, te in cv.split(X)]
    with sklearn.config_context(enable_metadata_routing=True):
        est = _Fixed().set_fit_request(groups=True, sample_weight=False)
        scorer = make_worst_group_scorer(sample_weight=True)
        got = cross_validate(est, X, y, scoring=scorer, cv=cv, error_score="raise",
                             params={"groups": g, "sample_weight": w})["test_score"]
        assert got == pytest.approx(expected)
        # set_score_request replaces the requests: the error says how to keep groups
        replaced = make_worst_group_scorer().set_score_request(sample_weight=True)
        with pytest.raises(ValueError, match=r"make_worst_group_scorer\(sample_weight=True\)"):
            cross_validate(est, X, y, scoring=replaced, cv=cv, error_score="raise",
                           params={"groups": g, "sample_weight": w})


def test_scorer_given_a_whole_dict_of_group_columns_says_to_pass_a_dataframe():
    # scikit-learn slices arrays and DataFrames per fold, not a dict of columns
    from sklearn.model_selection import KFold, cross_validate

    X, y, g, _ = _routed_data()
    columns = {"g": g, "h": y}
    with sklearn.config_context(enable_metadata_routing=True):
        est = _Fixed().set_fit_request(groups=False)
        with pytest.raises(ValueError, match=r"pass pandas\.DataFrame\(groups\) there"):
            cross_validate(est, X, y, cv=KFold(2), scoring=make_worst_group_scorer(),
                           params={"groups": columns}, error_score="raise")
        scores = cross_validate(est, X, y, cv=KFold(2), scoring=make_worst_group_scorer(),
                                params={"groups": pd.DataFrame(columns)})["test_score"]
    assert np.all(np.isfinite(scores))


def test_scorer_told_not_to_weigh_scores_unweighted_where_a_search_passes_weights():
    from sklearn.exceptions import UnsetMetadataPassedError
    from sklearn.model_selection import KFold, cross_validate

    X, y, g, w = _routed_data()
    cv, params = KFold(2), {"groups": g, "sample_weight": w}
    expected = [worst_group_accuracy(y[te], np.tile(P, 2)[te], g[te]) for _, te in cv.split(X)]
    with sklearn.config_context(enable_metadata_routing=True):
        est = _Fixed().set_fit_request(groups=True, sample_weight=True)
        scorer = make_worst_group_scorer(sample_weight=False)
        assert cross_validate(est, X, y, scoring=scorer, cv=cv, error_score="raise",
                              params=params)["test_score"] == pytest.approx(expected)
        with pytest.raises(UnsetMetadataPassedError):  # scikit-learn's default: say which
            cross_validate(est, X, y, scoring=make_worst_group_scorer(), cv=cv,
                           error_score="raise", params=params)
        # scikit-learn's advice for that error drops the request for groups: said so
        replaced = make_worst_group_scorer().set_score_request(sample_weight=False)
        with pytest.raises(ValueError, match=r"replaces its request for groups"):
            cross_validate(est, X, y, scoring=replaced, cv=cv, error_score="raise",
                           params=params)
        with pytest.raises(ValueError, match="True, False or None"):
            make_worst_group_scorer(sample_weight="weights")


@pytest.mark.parametrize("missing", [None, math.nan])
def test_missing_values_in_one_of_several_group_columns_are_refused(missing):
    # each row holding NaN used to become a group of its own: (0, nan) twice gave two groups
    two_columns = np.array([[0, missing], [0, missing], [1, 1], [1, 1]], dtype=object)
    with pytest.raises(ValueError, match=r"groups must not contain missing values .*found 2"):
        group_accuracies([1, 0, 1, 0], [1, 1, 1, 0], two_columns)
    frame = pd.DataFrame({"a": [0, 0, 1, 1], "b": [math.nan, math.nan, 1.0, 1.0]})
    with pytest.raises(ValueError, match=r"groups must not contain missing values .*found 2"):
        worst_group_accuracy([1, 0, 1, 0], [1, 1, 1, 0], frame)


def test_pos_label_on_a_multiclass_task_is_refused():
    y, p, g = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 1, 1]), np.array([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"pos_label=1 applies to binary tasks only.*\[0, 1, 2\]"):
        fairness_report(y=y, y_pred=p, groups=g, pos_label=1)
    with pytest.raises(ValueError, match=r"binary tasks only.*\[0, 1, 2\]"):
        fairness_report(y=Y, y_pred=P, groups=G, pos_label=1, labels=[0, 1, 2])
    assert fairness_report(y=y, y_pred=p, groups=g).pos_label is None


def test_intersectional_report_leaves_out_combinations_no_sample_has():
    # sex=m and label=1 never occur together: fairlearn lists that cell as a row of NaN
    sex = np.array(list("ffffmm"))
    label = np.array([0, 1, 1, 0, 0, 0])
    y, p = np.array([1, 0, 1, 0, 1, 0]), np.array([1, 1, 1, 0, 0, 0])
    report = fairness_report(y=y, y_pred=p, groups={"sex": sex, "label": label})
    assert list(report.by_group.index) == [("f", 0), ("f", 1), ("m", 0)]
    assert report.by_group["count"].tolist() == [2, 2, 2]
    text = str(report)  # used to fail casting the NaN count of the absent cell to int
    assert "Worst group (accuracy): sex=f, label=1 with accuracy 0.500" in text


def test_a_dict_of_group_columns_is_read_as_the_frame_of_them():
    # a dict (fairlearn's sensitive_features, also taken by fit and fairness_report) failed
    # with "TypeError: len() of unsized object"
    import pandas as pd

    from rest_fair.metrics import group_accuracies, worst_group_accuracy

    y_true, y_pred = [1, 0, 1, 0, 1, 1], [1, 1, 1, 0, 0, 1]
    columns = {"sex": ["f", "f", "m", "m", "m", "f"], "age": [1, 2, 1, 2, 1, 1]}
    expected = group_accuracies(y_true, y_pred, pd.DataFrame(columns))
    assert group_accuracies(y_true, y_pred, columns) == expected
    assert expected[("m", 1)] == 0.5
    assert worst_group_accuracy(y_true, y_pred, columns) == min(expected.values())


def test_group_labels_are_those_fit_reads_for_rows_of_a_list_and_one_column():
    from rest_fair._inputs import encode_groups

    y_true, y_pred = [1, 0, 1, 0], [1, 1, 1, 0]
    rows = [("f", 1), ("f", 1), ("m", 2), ("m", 2)]  # numpy would read ("f", "1")
    accuracies = group_accuracies(y_true, y_pred, rows)
    assert list(accuracies) == encode_groups(rows, 4)[1] == [("f", 1), ("m", 2)]
    assert fairness_report(y=y_true, y_pred=y_pred, groups=rows).worst_group == ("f", 1)
    column = np.array([["f"], ["f"], ["m"], ["m"]])  # one column: its values, not 1-tuples
    assert group_accuracies(y_true, y_pred, column) == {"f": 0.5, "m": 1.0}
    assert group_accuracies(y_true, y_pred, pd.DataFrame({"sex": column[:, 0]})) == {
        "f": 0.5, "m": 1.0}
    with pytest.raises(ValueError, match="at least one sample"):  # not numpy's reshape error
        worst_group_accuracy([], [], np.zeros((0, 2)))


@pytest.mark.parametrize("missing", [np.nan, None, pd.NA])
def test_a_missing_label_or_prediction_is_refused_naming_it(missing):
    # it was scored as a wrong prediction (worst_group_accuracy), or failed in scikit-learn
    # naming neither argument (fairness_report: "several kinds" for None)
    for labels, name in ((Y, "y_true"), (P, "y_pred")):
        holed = labels.astype(object)
        holed[4] = missing
        given = {"y_true": Y, "y_pred": P, name: holed}
        with pytest.raises(ValueError, match=rf"^{name} must not contain missing values"):
            worst_group_accuracy(given["y_true"], given["y_pred"], G)
        report_name = "y" if name == "y_true" else name
        with pytest.raises(ValueError, match=rf"^{report_name} must not contain missing"):
            fairness_report(y=given["y_true"], y_pred=given["y_pred"], groups=G)
    nullable = pd.array(Y, dtype="Int64")
    nullable[0] = pd.NA
    with pytest.raises(ValueError, match=r"y_true must not contain missing values .* found 1"):
        group_accuracies(nullable, P, G)


def test_the_worst_group_holds_python_values_as_group_accuracies_keys_do():
    g = (G == "b").astype(np.int64)
    for groups, worst in ((g, 0), ({"s": G, "g": g}, ("a", 0)), ([("a", 0)] * 4 + [("b", 1)] * 6,
                                                              ("a", 0))):
        report = fairness_report(y=Y, y_pred=P, groups=groups)
        assert repr(report.worst_group) == repr(worst)
        assert worst in group_accuracies(Y, P, groups)


def test_labels_of_several_columns_are_refused_naming_them():
    # fairness_report read class probabilities as twice the samples ("same number of samples")
    proba = np.eye(2)[P]
    with pytest.raises(ValueError, match=r"^y_pred must hold one label per sample .* \(10, 2\)"):
        worst_group_accuracy(Y, proba, G)
    with pytest.raises(ValueError, match=r"^y_pred must hold one label per sample .* \(10, 2\)"):
        fairness_report(y=Y, y_pred=proba, groups=G)
    with pytest.raises(ValueError, match=r"^y must hold one label per sample .* \(5, 2\)"):
        fairness_report(y=np.eye(2)[Y[:5]], y_pred=P, groups=G)
    assert fairness_report(y=Y[:, None], y_pred=P[:, None], groups=G).worst_group_accuracy == 0.5


@pytest.mark.parametrize("form", [lambda d: d, lambda d: d.astype("M8[D]"), pd.Series,
                                  lambda d: d - d[0]], ids=["ns", "days", "Series", "durations"])
def test_group_accuracies_are_keyed_by_the_dates_fit_labels_groups_by(form):
    # numpy's dates were keyed by pandas' Timestamps, fit's groups_ by np.datetime64
    from rest_fair._inputs import encode_groups

    given = form(np.array(["2020-01-01T00:00:00.000000001", "2021-06-01"], dtype="M8[ns]")[
        np.arange(len(Y)) % 2])
    accuracies = group_accuracies(Y, P, given)
    labels = encode_groups(given, len(Y))[1]
    assert sorted(accuracies) == labels
    assert [type(k) for k in sorted(accuracies)] == [type(label) for label in labels]
