"""What ``fit`` shares with other fits of the same process."""

from __future__ import annotations

import threading

import numpy as np

from rest_fair import RESTClassifier

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
