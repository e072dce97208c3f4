"""Colored MNIST / Colored Digits construction (numpy only, no torch needed)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from rest_fair.datasets import (
    PALETTE,
    colorize,
    load_mnist_5k,
    make_colored_digits,
    make_colored_mnist,
    n_conflicting,
)


@pytest.fixture(scope="module")
def mnist():
    return make_colored_mnist(conflict_ratio=0.01, random_state=3)


def test_mnist_5k_is_real_mnist():
    images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_shapes_dtypes_and_sizes(mnist):
    for split, n in (("train", 3500), ("valid", 500), ("test", 1000)):
        X, y, bias, conflict, group = mnist.split(split)
        assert X.shape == (n, 3, 28, 28) and X.dtype == np.float32
        assert 0.0 <= X.min() and X.max() <= 1.0
        assert y.shape == bias.shape == conflict.shape == group.shape == (n,)
        assert conflict.dtype == bool
        np.testing.assert_array_equal(conflict, bias != y)
        np.testing.assert_array_equal(group, y * 10 + bias)
        # stratified: same number of each digit
        assert len(set(np.bincount(y).tolist())) == 1
    assert mnist.image_shape == (3, 28, 28)


@pytest.mark.parametrize("ratio", [0.005, 0.01, 0.02, 0.05])
def test_exact_conflicting_share(ratio):
    data = make_colored_digits(conflict_ratio=ratio, random_state=1)
    expected = n_conflicting(ratio, len(data.y_train))
    assert int(data.conflict_train.sum()) == expected
    assert expected == int(np.floor(ratio * len(data.y_train) + 0.5))


def test_n_conflicting_rounds_half_up():
    assert [n_conflicting(r, 3500) for r in (0.005, 0.01, 0.02, 0.05)] == [18, 35, 70, 175]
    assert n_conflicting(0.0, 100) == 0
    with pytest.raises(ValueError, match="n_train must be an int >= 0"):
        n_conflicting(0.5, -10)


def test_training_colours_follow_protocol(mnist):
    y, bias, conflict = mnist.y_train, mnist.bias_train, mnist.conflict_train
    np.testing.assert_array_equal(bias[~conflict], y[~conflict])
    assert np.all(bias[conflict] != y[conflict])
    # each image is painted with exactly its palette colour: pixel = grey * colour
    X = mnist.X_train
    for i in np.flatnonzero(conflict)[:5]:
        bright = X[i].max(axis=0) > 0.5
        colour = X[i][:, bright] / X[i][:, bright].max(axis=0, keepdims=True)
        expected = PALETTE[bias[i]] / PALETTE[bias[i]].max()
        np.testing.assert_allclose(colour.mean(axis=1), expected, atol=1e-5)


def test_eval_splits_are_unbiased(mnist):
    for split in ("valid", "test"):
        _, y, bias, conflict, _ = mnist.split(split)
        table = np.zeros((10, 10), int)
        np.add.at(table, (y, bias), 1)
        # every label appears in every colour, equally often
        assert table.min() == table.max() == len(y) // 100
        assert conflict.mean() == pytest.approx(0.9)


def test_iid_colours_independent_of_label_chi_square():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=2000)
    images = rng.random((2000, 4, 4)).astype(np.float32)
    _, bias, _ = colorize(images, labels, conflict_ratio=None, random_state=0)
    table = np.zeros((10, 10), int)
    np.add.at(table, (labels, bias), 1)
    assert chi2_contingency(table).pvalue > 0.01
    # and the biased mode is strongly dependent
    _, bias_b, _ = colorize(images, labels, conflict_ratio=0.05, random_state=0)
    table_b = np.zeros((10, 10), int)
    np.add.at(table_b, (labels, bias_b), 1)
    assert chi2_contingency(table_b).pvalue < 1e-10


def test_conflicting_colours_spread_over_other_colours():
    labels = np.zeros(5000, dtype=int)
    images = np.ones((5000, 2, 2), np.float32)
    _, bias, conflict = colorize(images, labels, conflict_ratio=0.5, random_state=0)
    counts = np.bincount(bias[conflict], minlength=10)
    assert counts[0] == 0
    assert counts[1:].min() > 0.7 * counts[1:].mean()


def test_seed_determinism_and_sensitivity():
    a = make_colored_digits(conflict_ratio=0.02, random_state=5)
    b = make_colored_digits(conflict_ratio=0.02, random_state=5)
    c = make_colored_digits(conflict_ratio=0.02, random_state=6)
    for split in ("train", "valid", "test"):
        for x, y in zip(a.split(split), b.split(split), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.bias_test, c.bias_test) or not np.array_equal(
        a.y_train, c.y_train
    )
    assert not np.array_equal(a.conflict_train, c.conflict_train)


def test_digits_variant_upsampling_and_fraction_sizes():
    data = make_colored_digits(conflict_ratio=0.01, image_size=16, random_state=0)
    assert data.X_train.shape[1:] == (3, 16, 16)
    assert sum(len(data.split(s).y) for s in ("train", "valid", "test")) == 1797
    assert (len(data.y_valid), len(data.y_test)) == (180, 359)
    assert data.source == "digits" and "digits" in repr(data)
    sub = make_colored_mnist(conflict_ratio=0.02, split_sizes=(1000, 200, 300), random_state=0)
    assert (len(sub.y_train), len(sub.y_valid), len(sub.y_test)) == (1000, 200, 300)
    assert int(sub.conflict_train.sum()) == 20


@pytest.mark.parametrize("split_sizes", [(1437, 180, 179), (1437, 180, 175), (1200, 585, 10)])
def test_counts_that_leave_a_few_images_unused_are_drawn(split_sizes):
    # 1 or 5 digits left out of the train + valid draw (fewer than the 10 classes): sklearn's
    # stratified split refused them ("test_size = 1 should be greater or equal to the number
    # of classes"), an error that does not name split_sizes, for counts the docstring allows
    a = make_colored_digits(split_sizes=split_sizes, random_state=4)
    b = make_colored_digits(split_sizes=split_sizes, random_state=4)
    sizes = tuple(len(a.split(s).y) for s in ("train", "valid", "test"))
    assert sizes == split_sizes
    for name in ("train", "valid", "test"):
        for left, right in zip(a.split(name), b.split(name), strict=True):
            np.testing.assert_array_equal(left, right)
    per_class = np.bincount(np.concatenate([a.y_train, a.y_valid, a.y_test]), minlength=10)
    for name, size in zip(("train", "valid", "test"), split_sizes, strict=True):
        expected = per_class * size / per_class.sum()  # stratified: each class its share
        assert np.abs(np.bincount(a.split(name).y, minlength=10) - expected).max() < 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"conflict_ratio": 1.5}, "conflict_ratio"),
        ({"conflict_ratio": "1pct"}, "conflict_ratio"),
        ({"split_sizes": (0.5, 0.5)}, "split_sizes"),
        ({"split_sizes": (0.5, 0.4, 0.3)}, "split_sizes"),
        ({"split_sizes": (3000, 500, 1000)}, "split_sizes"),
        ({"image_size": 0}, "image_size"),
        ({"palette": np.ones((10, 4))}, "palette"),
        ({"palette": np.full((10, 3), 2.0)}, "palette"),
        ({"palette": np.zeros((3, 3))}, "palette has 3 colours but the labels go up to 9"),
        ({"color_std": -1.0}, "color_std must be a finite number >= 0"),
        ({"color_std": float("nan")}, "color_std must be a finite number >= 0"),
        ({"color_std": "x"}, "color_std must be a finite number >= 0"),
        ({"split_sizes": (1, 1, 1)}, r"a train split of 1 images, fewer than the 10 classes"),
        ({"split_sizes": (0.998, 0.001, 0.001)}, "fewer than the 10 classes"),
        ({"split_sizes": (float("nan"), 0.5, 0.5)}, "split_sizes must be three positive"),
        ({"split_sizes": (True, 10, 10)}, "split_sizes must be three positive"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_colored_digits(**kwargs)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "0", True, np.random.RandomState(0)])
def test_a_seed_the_estimator_refuses_is_named_random_state(seed):
    match = (r"random_state must be None, a Generator or an integer in \[0, 4294967295\]; "
             rf"got {re.escape(repr(seed))}\.")
    with pytest.raises(ValueError, match=match):
        make_colored_digits(random_state=seed)
    with pytest.raises(ValueError, match=match):
        colorize(np.zeros((2, 4, 4)), [0, 1], conflict_ratio=None, random_state=seed)
    colorize(np.zeros((2, 4, 4)), [0, 1], conflict_ratio=None,
             random_state=np.random.default_rng(0))


def test_split_name_checked(mnist):
    with pytest.raises(ValueError, match="split"):
        mnist.split("validation")


def test_colorize_checks_labels():
    with pytest.raises(ValueError, match="labels"):
        colorize(np.zeros((3, 2, 2)), [0, 1, 12], conflict_ratio=0.1)
    with pytest.raises(ValueError, match="images"):
        colorize(np.zeros((3, 4)), [0, 1, 2], conflict_ratio=0.1)


def test_colorize_reads_uint8_as_levels_0_255():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    labels = np.arange(20) % 10
    from_uint8, bias, _ = colorize(grey, labels, conflict_ratio=0.1, random_state=4)
    from_float, bias_f, _ = colorize(grey / 255.0, labels, conflict_ratio=0.1, random_state=4)
    np.testing.assert_array_equal(bias, bias_f)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
    assert from_uint8.max() <= 1.0


@pytest.mark.parametrize("images", [np.full((2, 4, 4), 255, dtype=np.int64),
                                    np.full((2, 4, 4), 255.0), np.full((2, 4, 4), -0.5),
                                    np.full((2, 4, 4), np.nan)])
def test_colorize_refuses_levels_outside_0_1_unless_uint8(images):
    # they were painted as given: "images in [0, 1]" with values up to 242
    with pytest.raises(ValueError, match=r"grey levels in \[0, 1\], or uint8"):
        colorize(images, [0, 1], conflict_ratio=0.0)
    painted, _, _ = colorize(np.full((2, 4, 4), 255, dtype=np.uint8), [0, 1],
                             conflict_ratio=0.0)
    assert painted.max() <= 1.0
