"""Shared test fixtures."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification


@pytest.fixture(scope="session")
def data():
    """600 samples, 12 features, 3 classes, a 'minority' group of about a fifth."""
    X, y = make_classification(600, 12, n_informative=6, n_classes=3, random_state=0)
    groups = np.where(X[:, 0] > 0.8, "minority", "majority")
    return X.astype(np.float32), y, groups


@pytest.fixture(scope="session")
def golden():
    """The fixed-seed predictions recorded by ``tests/_support/golden_fits.py``."""
    from tests._support.golden_fits import load_golden

    return load_golden()


@pytest.fixture(autouse=True)
def _auto_sparse_compute_measures_a_tie(monkeypatch):
    """``sparse_compute="auto"`` decides by timing each layer; in the tests, a tie.

    With the real measurement, which layers "auto" trains in CSR form would depend on the
    machine's speed and load, and with it every result compared exactly with another fit.
    A tie (neither kernel clearly faster) makes "auto" keep the masked path in every fit of
    the test process. Tests of the choice itself patch ``measure_layer`` their own way
    (tests/sparse/test_compute.py, which also times real layers by calling it directly);
    fits in other processes whose results are compared pass ``sparse_compute="masked"``.
    """
    try:
        from rest_fair.sparse import compute
    except ImportError:  # no torch: nothing is fitted
        return
    monkeypatch.setattr(compute, "measure_layer",
                        lambda *args, **kwargs: compute.LayerTiming(masked=1.0, csr=1.0))
