"""RESTClassifier's reproducibility promises: the same seed gives the same fit, and a fit
leaves the process's global state (generators, grad mode, dtype) as it found it."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import warnings

import numpy as np
import pytest
import torch

from rest_fair import RESTClassifier

FAST = dict(max_epochs=2, batch_size=64, random_state=0, device="cpu",
            sparse_compute="masked", module_params={"hidden_layer_sizes": (16,)})


def _clf(**params) -> RESTClassifier:
    return RESTClassifier(**{**FAST, **params})


def test_a_cpu_fit_does_not_seed_the_cuda_generators(data, monkeypatch):
    # torch.manual_seed also seeds every CUDA device (queued until CUDA starts): a CPU fit
    # would leave the GPUs' generators at its seed
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", seeded.append)
    X, y, g = data
    _clf(random_state=7).fit(X, y, groups=g)
    assert seeded == []


class _NoisyItems(torch.utils.data.Dataset):
    """Items with noise drawn from torch's, numpy's and Python's global generators, as
    random transforms draw it (torchvision from torch's, albumentations from the others)."""

    def __init__(self, X: np.ndarray) -> None:
        self.X = X

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> torch.Tensor:
        noise = (torch.randn(self.X.shape[1]).numpy() + np.random.randn(self.X.shape[1])  # noqa: NPY002
                 + random.gauss(0.0, 1.0))
        return torch.from_numpy(self.X[i] + 0.1 * noise.astype(np.float32))


def _global_states() -> tuple:
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002
    return torch.get_rng_state(), numpy_state, random.getstate()


def _same_states(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_random_transforms_draw_the_same_with_and_without_workers(data):
    X, y, g = data
    X, y, g = X[:200], y[:200], g[:200]
    np.random.seed(1)  # noqa: NPY002 (the generator a transform's np.random.* uses)
    random.seed(1)
    before = _global_states()
    without = _clf(num_workers=0).fit(_NoisyItems(X), y, groups=g)
    # reading the items in the main process draws nothing from the caller's generators
    assert _same_states(before, _global_states())
    np.random.seed(2)  # noqa: NPY002
    random.seed(2)
    again = _clf(num_workers=0).fit(_NoisyItems(X), y, groups=g)
    workers = _clf(num_workers=1).fit(_NoisyItems(X), y, groups=g)
    expected = without.predict_proba(X)
    assert np.array_equal(expected, again.predict_proba(X))
    assert np.array_equal(expected, workers.predict_proba(X))


@pytest.fixture(params=["forkserver", "spawn"])
def start_method(request):
    """Data-loading workers started by ``forkserver`` (Python 3.14's default on Linux) or
    ``spawn`` (macOS, Windows): the Dataset and what wraps it travel to them pickled."""
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(request.param, force=True)
    yield request.param
    multiprocessing.set_start_method(before, force=True)


def test_workers_started_without_fork_read_the_same_items(data, start_method):
    X, y, g = data
    X, y, g = X[:200], y[:200], g[:200]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tiny validation groups
        expected = _clf(max_epochs=1).fit(_NoisyItems(X), y, groups=g)
        workers = _clf(max_epochs=1, num_workers=1).fit(_NoisyItems(X), y, groups=g)
    assert np.array_equal(expected.predict_proba(X), workers.predict_proba(X))
    assert np.array_equal(expected.predict_proba(_NoisyItems(X)),
                          workers.predict_proba(_NoisyItems(X)))


class _NoisyTensorDataset(torch.utils.data.TensorDataset):
    """A TensorDataset subclass whose items draw: it is seeded like any other Dataset."""

    def __getitem__(self, index):
        (x,) = super().__getitem__(index)
        return (x + 0.1 * torch.randn(x.shape),)


def test_a_tensor_dataset_reads_as_the_array_and_a_drawing_subclass_is_seeded(data):
    # a TensorDataset's items draw nothing, so they are read without per-item seeding: the
    # fit equals the fit of the array, and leaves the caller's generators alone
    X, y, g = data
    X, y, g = X[:200], y[:200], g[:200]
    before = _global_states()
    tensors = _clf().fit(torch.utils.data.TensorDataset(torch.from_numpy(X)), y, groups=g)
    assert _same_states(before, _global_states())
    assert np.array_equal(tensors.predict_proba(X), _clf().fit(X, y, groups=g).predict_proba(X))
    # a subclass may draw: its items are read under their (index, seed) keys as any Dataset's
    from rest_fair._data import _SeededItems

    assert not _SeededItems(torch.utils.data.TensorDataset(torch.from_numpy(X))).draws
    noisy = _SeededItems(_NoisyTensorDataset(torch.from_numpy(X)))
    assert noisy.draws
    assert torch.equal(noisy[(3, 7)][0], noisy[(3, 7)][0])
    assert not torch.equal(noisy[(3, 7)][0], noisy[(3, 8)][0])


def test_predicting_a_dataset_leaves_the_global_generators(data):
    X, y, g = data
    clf = _clf().fit(X, y, groups=g)
    before = _global_states()
    clf.predict_proba(_NoisyItems(X))
    assert _same_states(before, _global_states())


def _default_float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)


@pytest.mark.parametrize("mode", [
    torch.no_grad, torch.inference_mode,
    lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    contextlib.contextmanager(_default_float64),
], ids=["no_grad", "inference_mode", "autocast", "default_float64"])
def test_the_callers_torch_modes_do_not_change_the_fit(data, mode):
    # each failed (no gradient; float64 weights meeting float32 inputs) or trained in
    # bfloat16 although precision="32"
    X, y, g = data
    expected = _clf().fit(X, y, groups=g).predict_proba(X)
    with mode():
        clf = _clf().fit(X, y, groups=g)
    assert torch.get_default_dtype() == torch.float32
    assert next(clf.module_.parameters()).dtype == torch.float32
    assert np.array_equal(clf.predict_proba(X), expected)


def test_bf16_inside_the_callers_autocast_trains_as_outside(data):
    # torch empties autocast's cache of cast weights only when the outermost autocast
    # exits: inside the caller's, every step saw the first step's weights
    X, y, g = data
    expected = _clf(precision="bf16").fit(X, y, groups=g).predict_proba(X)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clf = _clf(precision="bf16").fit(X, y, groups=g)
    assert np.array_equal(clf.predict_proba(X), expected)


def test_predicting_inside_the_callers_autocast_computes_in_float32(data):
    # the caller's bfloat16 autocast reached the network: logits off by about 1e-3
    X, y, g = data
    clf = _clf(sparsity=0.9).fit(X, y, groups=g)
    expected = clf.predict_logits(X)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert np.array_equal(clf.predict_logits(X), expected)
        assert torch.is_autocast_enabled("cpu")
