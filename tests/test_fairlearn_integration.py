"""RESTClassifier with scikit-learn metadata routing and the real fairlearn mitigators."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
from fairlearn.metrics import MetricFrame
from fairlearn.postprocessing import ThresholdOptimizer
from fairlearn.reductions import DemographicParity, ExponentiatedGradient
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate

from rest_fair import RESTClassifier
from rest_fair.metrics import fairness_report, make_worst_group_scorer, worst_group_accuracy

# fairlearn 0.15's reductions use pandas idioms deprecated in pandas 3 (Pandas4Warning)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Setting a value on a Series via .at"),
    pytest.mark.filterwarnings("ignore:Setting an item of incompatible dtype"),
]

TINY = {
    "module": "mlp",
    "module_params": {"hidden_layer_sizes": (8,)},
    "max_epochs": 2,
    "batch_size": 32,
    "sparsity": 0.5,
    "random_state": 0,
    "device": "cpu",
}


class SpyREST(RESTClassifier):
    """Records what every fit (of every clone) receives."""

    calls: list = []  # noqa: RUF012 - shared across clones on purpose

    def fit(self, X, y, groups=None, sample_weight=None, validation_data=None):
        SpyREST.calls.append(
            {
                "n": len(y),
                "groups": None if groups is None else np.asarray(groups).copy(),
                "sample_weight": None if sample_weight is None else np.asarray(sample_weight),
            }
        )
        return super().fit(
            X, y, groups=groups, sample_weight=sample_weight, validation_data=validation_data
        )


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 96
    groups = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    X[:, 1] += 1.5 * groups
    y = (X[:, 0] + 0.8 * groups > 0.4).astype(np.int64)
    return X, y, groups


@pytest.fixture(autouse=True)
def _reset_spy():
    SpyREST.calls = []
    yield
    SpyREST.calls = []


def test_default_grid_search_sends_groups_only_to_splitter(data):
    """What we document as the trap: without routing, fit never sees groups."""
    X, y, groups = data
    search = GridSearchCV(SpyREST(**TINY), {"lr": [0.01]}, cv=GroupKFold(n_splits=2))
    search.fit(X, y, groups=groups)
    assert SpyREST.calls, "fit was never called"
    assert all(call["groups"] is None for call in SpyREST.calls)
    assert list(search.best_estimator_.groups_) == [0]  # one group: group-blind


def test_routed_grid_search_passes_groups_to_fit_and_scorer(data):
    X, y, groups = data
    with sklearn.config_context(enable_metadata_routing=True):
        estimator = SpyREST(**TINY).set_fit_request(groups=True)
        search = GridSearchCV(
            estimator,
            {"lr": [0.01, 0.05]},
            scoring=make_worst_group_scorer(),
            cv=GroupKFold(n_splits=2),
        )
        search.fit(X, y, groups=groups)
    # 2 candidates x 2 folds + refit; every fit got the groups of its own rows
    assert len(SpyREST.calls) == 5
    for call in SpyREST.calls[:-1]:
        assert call["groups"] is not None
        assert len(call["groups"]) == call["n"] < len(y)
        # GroupKFold: each training fold holds exactly one of the two groups
        assert len(np.unique(call["groups"])) == 1
    refit = SpyREST.calls[-1]
    np.testing.assert_array_equal(refit["groups"], groups)
    assert sorted(search.best_estimator_.groups_) == [0, 1]
    # the score is worst-group accuracy on the held-out fold's groups
    assert 0.0 <= search.best_score_ <= 1.0


def test_routed_cross_validate_scores_are_worst_group_accuracy(data):
    X, y, groups = data
    with sklearn.config_context(enable_metadata_routing=True):
        result = cross_validate(
            RESTClassifier(**TINY).set_fit_request(groups=True),
            X,
            y,
            params={"groups": groups},
            scoring=make_worst_group_scorer(),
            cv=2,
            return_estimator=True,
            return_indices=True,
        )
    for est, test_idx, score in zip(
        result["estimator"], result["indices"]["test"], result["test_score"], strict=True
    ):
        expected = worst_group_accuracy(y[test_idx], est.predict(X[test_idx]), groups[test_idx])
        assert score == pytest.approx(expected)
        assert sorted(est.groups_) == [0, 1]


def test_exponentiated_gradient_fits_rest_with_sample_weight(data):
    X, y, groups = data
    mitigator = ExponentiatedGradient(
        SpyREST(**TINY), constraints=DemographicParity(), max_iter=4, nu=1e-3
    )
    mitigator.fit(X, y, sensitive_features=groups)
    assert SpyREST.calls
    for call in SpyREST.calls:
        w = call["sample_weight"]
        assert w is not None and len(w) == call["n"] == len(y)
    y_pred = mitigator.predict(X)
    assert set(np.unique(y_pred)) <= {0, 1}
    frame = fairness_report(y=y, y_pred=y_pred, groups=groups).frame
    assert isinstance(frame, MetricFrame)


def test_threshold_optimizer_with_rest(data):
    X, y, groups = data
    postprocessor = ThresholdOptimizer(
        estimator=RESTClassifier(**TINY),
        constraints="demographic_parity",
        predict_method="predict_proba",
    )
    postprocessor.fit(X, y, sensitive_features=groups)
    y_pred = postprocessor.predict(X, sensitive_features=groups, random_state=0)
    assert y_pred.shape == y.shape
    assert set(np.unique(y_pred)) <= {0, 1}
    # the wrapped estimator really is a fitted RESTClassifier
    assert hasattr(postprocessor.estimator_, "module_")


def test_threshold_optimizer_passes_groups_to_rest_fit(data):
    """docs/fairness.md: ``ThresholdOptimizer.fit(..., groups=a)`` trains REST with the groups
    (fairlearn passes its other keyword arguments to the estimator's fit)."""
    X, y, groups = data
    postprocessor = ThresholdOptimizer(
        estimator=SpyREST(**TINY),
        constraints="demographic_parity",
        predict_method="predict_proba",
    )
    postprocessor.fit(X, y, sensitive_features=groups, groups=groups)
    np.testing.assert_array_equal(SpyREST.calls[-1]["groups"], groups)
    assert sorted(postprocessor.estimator_.groups_) == [0, 1]
