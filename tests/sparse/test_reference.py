"""ERK, prune-and-regrow, the drop schedules and the sparse training loop against plain
restatements of the method."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback
from rest_fair.sparse.densities import erk_densities
from rest_fair.sparse.rigl import prune_and_regrow
from rest_fair.sparse.schedules import DropSchedule
from rest_fair.training import sampler


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


class _Start(Callback):
    """The network and masks a fit starts from (weights masked and rescaled)."""

    def on_train_begin(self, net, *, run, **kwargs):
        self.module = copy.deepcopy(run.parts.module)
        masks = run.parts.sparsity.masks
        self.masks = {name: masks.mask(name).clone() for name in masks.names}


def _reference_fit(start, X, y, orders, *, optimizer, lr, batch_size, timing, interval,
                   drop, end, floor):
    """The method statement as a plain loop: step, re-mask; update every ``interval`` steps
    (mid-interval before the optimizer step, moved off an epoch's last step, or after it at
    the interval's end) with ``ceil(f_t * n_active)`` weights; weights new to a mask and
    their optimizer state start at 0."""
    net = copy.deepcopy(start.module)
    params, masks = dict(net.named_parameters()), dict(start.masks)
    opt = (torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(net.parameters(), lr=lr))
    per_epoch = len(orders[0]) // batch_size

    def fraction(t):
        return floor + (drop - floor) / 2 * (1 + math.cos(math.pi * t / end)) if t <= end else 0

    def phase(t):
        return t % interval == interval // 2

    def update(t):
        for name, mask in masks.items():
            weight = params[name]
            k = math.ceil(fraction(t) * int(mask.sum()))
            new = _reference_update(weight.detach(), mask, weight.grad.abs(), k).view_as(mask)
            with torch.no_grad():
                born = new & ~mask
                for value in [weight, *opt.state[weight].values()]:
                    if value.shape == weight.shape:
                        value[born] = 0
                weight.mul_(new)
            masks[name] = new

    step = 0
    for order in orders:
        for idx in order.split(batch_size):
            step += 1
            loss = torch.nn.functional.cross_entropy(net(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if timing == "mid_interval" and fraction(step) > 0 and (
                    (phase(step) and step % per_epoch) or (phase(step - 1)
                                                           and (step - 1) % per_epoch == 0)):
                update(step)
            opt.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
            if timing == "after_step" and step % interval == 0 and fraction(step) > 0:
                update(step)
    return net, masks


@pytest.mark.parametrize("optimizer, timing, schedule, interval", [
    ("sgd", "mid_interval", "cosine", 4),  # updates due on an epoch's last step move
    ("adam", "after_step", "cosine_floor", 3),
])
def test_sparse_training_equals_the_method_statement(data, monkeypatch, optimizer, timing,
                                                     schedule, interval):
    # ERK masks with a dense layer (density 0.5), ties of regrown zeros, weights pruned and
    # regrown in one update: the fit equals the plain loop step for step
    X, y, _ = data
    orders = []
    draw = sampler.EpochSampler.epoch_order
    monkeypatch.setattr(sampler.EpochSampler, "epoch_order",
                        lambda self: orders.append(draw(self)) or orders[-1])
    start, lr = _Start(), (0.1 if optimizer == "sgd" else 0.01)
    clf = RESTClassifier(
        sparsity=0.5, optimizer=optimizer, lr=lr, batch_size=60, max_epochs=4,
        update_interval=interval, update_timing=timing, drop_schedule=schedule,
        update_end=0.75, upweight=None, lr_scheduler="constant", validation_fraction=0.0,
        sparse_compute="masked", module_params={"hidden_layer_sizes": (24, 24)},
        random_state=0, device="cpu", callbacks=[start]).fit(X, y)
    net, masks = _reference_fit(
        start, torch.as_tensor(X), torch.as_tensor(y), orders, optimizer=optimizer, lr=lr,
        batch_size=60, timing=timing, interval=interval, drop=0.5, end=30,
        floor=0.005 if schedule == "cosine_floor" else 0.0)
    assert clf.n_topology_updates_ >= 7 and min(m.float().mean() for m in masks.values()) < 1
    assert any(bool(m.all()) for m in masks.values())  # ERK made a layer dense
    fitted = dict(clf.module_.named_parameters())
    for name, param in net.named_parameters():
        if name in masks:
            assert torch.equal(clf.masks_[name].cpu(), masks[name])
        torch.testing.assert_close(fitted[name].detach(), param.detach(), rtol=0, atol=1e-6)
