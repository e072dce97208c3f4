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
    """The fixed-seed predictions recorded by ``tests/golden_fits.py``."""
    from golden_fits import load_golden

    return load_golden()
