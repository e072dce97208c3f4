"""ERK, prune-and-regrow and the drop schedules against plain restatements of the method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rest_fair.sparse.densities import erk_densities
from rest_fair.sparse.rigl import prune_and_regrow
from rest_fair.sparse.schedules import DropSchedule


def _erk_one_layer_at_a_time(shapes, density):
    """ERK making only the layer(s) of the largest raw density dense per round."""
    n = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / n[k] for k, s in shapes.items()}
    dense: set[str] = set()
    while True:
        sparse = [k for k in shapes if k not in dense]
        eps = (density * sum(n.values()) - sum(n[k] for k in dense)) / sum(
            raw[k] * n[k] for k in sparse)
        top = max(raw[k] for k in sparse)
        if top * eps <= 1:
            return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}
        dense |= {k for k in sparse if raw[k] == top}


@pytest.mark.parametrize("seed", range(40))
def test_erk_equals_the_one_layer_at_a_time_rule(seed):
    rng = np.random.default_rng(seed)
    shapes = {}
    for i in range(int(rng.integers(1, 7))):
        if rng.random() < 0.5:
            shapes[f"conv{i}"] = tuple(int(v) for v in rng.integers(1, [64, 64, 6, 6]))
        else:
            shapes[f"linear{i}"] = tuple(int(v) for v in rng.integers(1, [300, 300]))
    density = float(rng.choice([0.0005, 0.01, 0.1, 0.5, 0.9]))
    got, want = erk_densities(shapes, density), _erk_one_layer_at_a_time(shapes, density)
    for name in shapes:
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-15)


def _reference_update(weight, mask, score, k):
    """Prune the k smallest active |w|, regrow the k best-scored positions inactive after
    that; ties to the lowest flat index."""
    w, m = weight.reshape(-1).tolist(), mask.reshape(-1).tolist()
    active = [i for i, on in enumerate(m) if on]
    for i in sorted(active, key=lambda i: (abs(w[i]), i))[:k]:
        m[i] = False
    s = score.reshape(-1).tolist()
    for i in sorted((i for i, on in enumerate(m) if not on), key=lambda i: (-s[i], i))[:k]:
        m[i] = True
    return torch.tensor(m)


@pytest.mark.parametrize("seed", range(60))
def test_prune_and_regrow_equals_the_method_statement(seed):
    # ties in |w| and in |grad|, and layers where fewer inactive positions than k have a
    # non-zero gradient: regrowth still picks only positions inactive after the prune
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(int(v) for v in torch.randint(1, 12, (2,), generator=gen))
    mask = torch.rand(shape, generator=gen) < 0.4
    weight = torch.round(torch.randn(shape, generator=gen) * 2) / 2 * mask
    grad = torch.round(torch.randn(shape, generator=gen))
    grad = grad * (torch.rand(shape, generator=gen) < (0.1 if seed % 2 else 1.0))
    k = math.ceil(float(torch.rand(1, generator=gen)) * int(mask.sum()))
    new_mask, _, _ = prune_and_regrow(weight, mask, k, grad=grad)
    assert torch.equal(new_mask.reshape(-1), _reference_update(weight, mask, grad.abs(), k))
    random_mask, _, _ = prune_and_regrow(weight, mask, k, regrow="random",
                                         generator=torch.Generator().manual_seed(seed))
    scores = torch.rand(mask.numel(), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(random_mask.reshape(-1), _reference_update(weight, mask, scores, k))


def test_cosine_floor_follows_the_authors_cosine_annealing_step_by_step():
    # their drop fraction is the learning rate of a CosineAnnealingLR (eta_min 0.005) over
    # all training steps, stepped once before each step's update
    param = torch.nn.Parameter(torch.zeros(1))
    stepper = torch.optim.SGD([param], lr=0.5)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(stepper, 470, eta_min=0.005)
    schedule = DropSchedule(0.5, 470, "cosine_floor")
    for step in range(1, 471):
        stepper.step()
        annealing.step()
        assert schedule(step) == pytest.approx(stepper.param_groups[0]["lr"], abs=1e-12)
