"""RESTClassifier's reproducibility promises: the same seed gives the same fit, and a fit
leaves the process's global state (generators, grad mode, dtype) as it found it."""

from __future__ import annotations

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
