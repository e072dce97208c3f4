"""Behaviour pinned across refactorings: fixed-seed fits predict what they predicted before.

The recorded probabilities (``tests/data/golden_predictions.npz``, made by
``python -m tests._support.golden_fits``) are compared bitwise where the torch version and CPU
capability equal the recording machine's; on another machine float rounding may differ,
and then a fit must agree to a tolerance and in nearly every predicted class.
"""

from __future__ import annotations

import pytest

from tests._support.golden_fits import FITS, assert_same_as_recorded, predict


@pytest.mark.parametrize("name", sorted(FITS))
def test_fit_predicts_as_recorded(golden, name):
    assert_same_as_recorded(golden, name, predict(name))


def test_every_fit_has_a_record(golden):
    assert set(FITS) <= set(golden)
