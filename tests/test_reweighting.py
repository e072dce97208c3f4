"""Per-sample weights and aligned groups of :mod:`rest_fair.reweighting`."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from scipy import stats

from rest_fair.reweighting import (
    aligned_groups,
    cell_weights,
    draw_indices,
    group_key,
    minority_mask,
    sample_weights_for,
)


def _reference_aligned(y: np.ndarray, g: np.ndarray) -> dict[int, int]:
    """Most frequent group of each class, ties to the smallest code, by counting."""
    out = {}
    for c in np.unique(y):
        counts = np.bincount(g[y == c], minlength=int(g.max()) + 1)
        out[int(c)] = int(np.argmax(counts))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_aligned_groups_and_minority_mask_match_counting(seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.integers(0, 7, n)
    g = rng.integers(0, 5, n) * rng.integers(1, 3, n)  # skewed: ties and empty cells
    expected = _reference_aligned(y, g)
    assert aligned_groups(y, g) == expected
    np.testing.assert_array_equal(minority_mask(y, g),
                                  np.array([expected[c] != k for c, k in zip(y, g, strict=True)]))


@pytest.mark.parametrize("upweight", [None, "balanced", 6.0])
def test_sample_weights_are_the_weights_of_each_sample_cell(upweight):
    rng = np.random.default_rng(3)
    y, g = rng.integers(0, 4, 300), rng.integers(0, 9, 300)
    weights = cell_weights(y, g, list(range(9)), upweight)
    per_sample = sample_weights_for(y, g, weights)
    np.testing.assert_array_equal(per_sample,
                                  [weights[(int(c), int(k))] for c, k in zip(y, g, strict=True)])


def test_a_cell_without_a_weight_weighs_zero():
    y, g = np.array([0, 0, 1]), np.array([0, 1, 1])
    np.testing.assert_array_equal(sample_weights_for(y, g, {(0, 0): 2.0, (1, 1): 3.0}),
                                  [2.0, 0.0, 3.0])


@pytest.mark.parametrize("upweight", ["balanced", 5.0])
def test_many_classes_and_groups_take_memory_of_the_samples_not_of_their_product(upweight):
    # 3,000 samples in 3,000 classes x 30,000 groups: a (class, group) table would hold
    # 90 million cells (720 MB as float64), of which at most 3,000 are not empty
    rng = np.random.default_rng(0)
    n, n_classes, n_groups = 3000, 3000, 30000
    y, g = rng.integers(0, n_classes, n), rng.integers(0, n_groups, n)
    g[0] = n_groups - 1
    tracemalloc.start()
    try:
        weights = cell_weights(y, g, list(range(n_groups)), upweight)
        per_sample = sample_weights_for(y, g, weights)
        mask = minority_mask(y, g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert per_sample.shape == mask.shape == (n,)


@pytest.mark.parametrize("upweight", [None, "balanced", 6.0, {0: 1.0, 1: 2.0, 2: 0.5}])
def test_a_sample_of_weight_zero_counts_as_removed_and_weight_k_as_k_copies(upweight):
    # class 0's most frequent group (0) is mostly of weight 0, so among the samples that
    # count its aligned group is group 1; group 2 holds only samples of weight 0
    y = np.r_[np.zeros(60, dtype=int), np.zeros(30, dtype=int), np.ones(40, dtype=int),
              np.ones(10, dtype=int)]
    g = np.r_[np.zeros(60, dtype=int), np.ones(30, dtype=int), np.zeros(40, dtype=int),
              np.full(10, 2)]
    rng = np.random.default_rng(0)
    weight = rng.integers(1, 4, len(y)).astype(float)
    weight[:50] = 0.0
    weight[g == 2] = 0.0
    kept = weight > 0
    labels = [0, 1, 2]
    absent = cell_weights(y[kept], g[kept], labels, upweight, sample_weight=weight[kept])
    assert cell_weights(y, g, labels, upweight, sample_weight=weight) == absent
    copies = np.repeat(np.arange(len(y)), weight.astype(int))
    assert cell_weights(y, g, labels, upweight, sample_weight=weight) == pytest.approx(
        cell_weights(y[copies], g[copies], labels, upweight))
    # equal weights count as the samples themselves, bit for bit (0.1 sums inexactly)
    for equal in (1.0, 0.1):
        assert (cell_weights(y, g, labels, upweight, sample_weight=np.full(len(y), equal))
                == cell_weights(y, g, labels, upweight))
    if upweight == 6.0:
        assert absent == {(0, 0): 6.0, (0, 1): 1.0, (1, 0): 1.0}


def test_sample_weights_whose_sum_overflows_give_finite_cell_weights():
    y, g = np.zeros(4, dtype=int), np.array([0, 0, 1, 1])
    weights = cell_weights(y, g, [0, 1], "balanced", sample_weight=np.array([1e308] * 3 + [1.0]))
    assert all(np.isfinite(w) and w > 0 for w in weights.values())


def test_group_sums_too_far_apart_to_balance_are_named():
    # a balanced weight of 1e300 / 1e-300 overflows: named, not a NaN in the epoch's draws
    y, g = np.zeros(4, dtype=int), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"upweight='balanced' cannot weigh these groups: "
                                         r"their summed sample_weight differ by a factor "
                                         r"float64 cannot hold"):
        cell_weights(y, g, [0, 1], "balanced", sample_weight=np.array([1e300] * 2 + [1e-300] * 2))


def test_more_samples_than_torch_multinomial_takes_are_drawn_by_weight():
    # torch.multinomial refuses more than 2**24 categories; the last sample weighs 0
    weights = np.zeros(2**24 + 2)
    weights[[0, 5, 2**24]] = [1.0, 3.0, 4.0]
    draws = draw_indices(weights, 8000, generator=torch.Generator().manual_seed(0)).numpy()
    assert set(np.unique(draws)) == {0, 5, 2**24}
    observed = [int((draws == i).sum()) for i in (0, 5, 2**24)]
    assert stats.chisquare(observed, [1000, 3000, 4000]).pvalue > 1e-3


def test_an_upweight_dict_keyed_by_pandas_timestamps_weighs_numpy_nanosecond_dates():
    # equal, but hashed otherwise: the dict had "no weight" for the group
    import pandas as pd

    labels = list(np.array(["2020-01-01T00:00:00.000000001", "2021-06-01"], dtype="M8[ns]"))
    stamps = [pd.Timestamp(label) for label in labels]
    y, groups = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    weights = cell_weights(y, groups, labels, {stamps[0]: 3.0, stamps[1]: 1.0})
    assert weights == {(0, 0): 3.0, (0, 1): 1.0, (1, 0): 3.0, (1, 1): 1.0}
    assert group_key({stamps[0]: 3.0}, labels[0]) is stamps[0]
    assert group_key({stamps[0], "a"}, labels[1]) is None
    with pytest.raises(ValueError, match=r"no weight for groups \[np\.datetime64\('2021"):
        cell_weights(y, groups, labels, {stamps[0]: 3.0})
