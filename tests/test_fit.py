"""What ``fit`` shares with other fits of the same process, and its validation split."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rest_fair import RESTClassifier
from rest_fair._fit import _split

PARAMS = {"module": "mlp", "module_params": {"hidden_layer_sizes": (64, 64)}, "max_epochs": 3,
          "batch_size": 32, "sparsity": 0.9, "device": "cpu", "sparse_compute": "masked"}


def test_fits_in_threads_of_one_process_equal_fits_one_after_another():
    """A fit seeds torch's global random state (the module's initialisation draws from it):
    fits side by side in threads (a threaded joblib backend, a Dask worker with several
    threads) must not draw from each other's."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 20)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    groups = rng.integers(0, 2, len(y))

    def fit(seed):
        clf = RESTClassifier(random_state=seed, **PARAMS).fit(X, y, groups=groups)
        return clf.predict_proba(X)

    alone = {seed: fit(seed) for seed in range(4)}
    together = {}
    start = threading.Barrier(4)

    def fit_in_thread(seed):
        start.wait()
        together[seed] = fit(seed)

    threads = [threading.Thread(target=fit_in_thread, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed in range(4):
        np.testing.assert_array_equal(together[seed], alone[seed])


def test_predicting_in_another_thread_leaves_a_fits_random_state_alone():
    """Predicting restores torch's global generator afterwards: in a thread of its own,
    while another thread fits, it must not rewind the fit's draws."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 20)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    params = {**PARAMS, "module_params": {"hidden_layer_sizes": (256, 256, 256)},
              "max_epochs": 1}
    alone = RESTClassifier(random_state=0, **params).fit(X, y).predict_proba(X)
    other = RESTClassifier(random_state=1, **PARAMS).fit(X, y)
    done = threading.Event()
    predictions = []

    def predict_until_done():
        while not done.is_set():
            predictions.append(other.predict_proba(X[:8]))

    thread = threading.Thread(target=predict_until_done)
    thread.start()
    try:
        beside = RESTClassifier(random_state=0, **params).fit(X, y).predict_proba(X)
    finally:
        done.set()
        thread.join()
    assert predictions
    np.testing.assert_array_equal(beside, alone)


# ------------------------------------------------------------------ the validation split
@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_a_class_of_one_sample_is_trained_on_not_held_out(fraction):
    # it cannot be stratified: a random split held it out for some seeds, and the network
    # never trained on a class it predicts
    y = np.arange(80) % 2
    y[7] = 2
    groups = (np.arange(80) % 3 == 0).astype(np.int64)
    for seed in range(30):
        train, valid = _split(y, groups, fraction, seed)
        assert 7 in train and 7 not in valid, seed
        assert len(valid) >= round(80 * fraction) - 1  # nothing else moved
        assert np.array_equal(np.sort(np.r_[train, valid]), np.arange(80))
        assert set(y[valid]) == {0, 1}


def test_a_fit_trains_on_every_class():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    y[0] = 2
    seed = 2  # its split used to hold the one sample of class 2 out
    clf = RESTClassifier(**{**PARAMS, "max_epochs": 1, "random_state": seed}).fit(X, y)
    assert (2, 0) in clf.group_weights_
