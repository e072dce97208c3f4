"""optimizer_step: bitwise torch's step, and torch's own step wherever it does more."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from rest_fair.training.optimizer_step import optimizer_step

SHAPES = [(7, 5), (5,), (3, 7), (3,), (1000,), (33,)]


def _params(seed: int, dtype=torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def _set_grads(params, step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _pair(**kwargs):
    """Two SGDs over equal weights, split into two groups (the second at half the lr)."""
    out = []
    for _ in range(2):
        params = _params(0)
        groups = [{"params": params[:3]}, {"params": params[3:], "lr": 0.05}]
        out.append((params, torch.optim.SGD(groups, lr=0.1, foreach=True, **kwargs)))
    return out


def _count_torch_steps(monkeypatch) -> list[int]:
    calls = [0]
    original = torch.optim.SGD.step

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counted)
    return calls


@pytest.mark.parametrize("kwargs", [
    {"momentum": 0.9},
    {"momentum": 0.9, "weight_decay": 1e-2},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    {"momentum": 0.5, "dampening": 0.3},
    {"momentum": 0.0},
    {"momentum": 0.0, "weight_decay": 1e-3},
])
def test_bitwise_torch_step_and_shortcut_taken(kwargs, monkeypatch):
    (ours, ours_opt), (ref, ref_opt) = _pair(**kwargs)
    calls = _count_torch_steps(monkeypatch)
    for step in range(6):
        _set_grads(ours, step)
        _set_grads(ref, step)
        if step == 3:  # a learning-rate change between steps, as schedulers make
            for opt in (ours_opt, ref_opt):
                opt.param_groups[0]["lr"] = 0.02
        optimizer_step(ours_opt)
        ref_opt.step()
        for a, b in zip(ours, ref, strict=True):
            assert torch.equal(a, b)
            assert torch.equal(a.grad, b.grad)
            if kwargs["momentum"]:
                assert torch.equal(ours_opt.state[a]["momentum_buffer"],
                                   ref_opt.state[b]["momentum_buffer"])
    # ours went through torch's step only for the first step, which creates the buffers
    # (with momentum), or never (without)
    assert calls[0] == 6 + (1 if kwargs["momentum"] else 0)
    assert ours_opt.state_dict()["state"].keys() == ref_opt.state_dict()["state"].keys()


def test_weights_without_gradient_are_left_alone(monkeypatch):
    (ours, ours_opt), (ref, ref_opt) = _pair(momentum=0.9)
    calls = _count_torch_steps(monkeypatch)
    for step in range(3):
        for params in (ours, ref):
            _set_grads(params, step)
            if step == 2:
                params[1].grad = None
        optimizer_step(ours_opt)
        ref_opt.step()
    assert calls[0] == 3 + 1
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def _one_sgd(**kwargs):
    params = _params(0)
    return params, torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True, **kwargs)


def _first_two_steps(params, opt, monkeypatch) -> int:
    _set_grads(params, 0)
    opt.step()  # creates the buffers
    calls = _count_torch_steps(monkeypatch)
    _set_grads(params, 1)
    optimizer_step(opt)
    return calls[0]


def test_step_hooks_run(monkeypatch):
    params, opt = _one_sgd()
    seen = []
    opt.register_step_pre_hook(lambda *a: seen.append("pre"))
    opt.register_step_post_hook(lambda *a: seen.append("post"))
    assert _first_two_steps(params, opt, monkeypatch) == 1
    assert seen == ["pre", "post", "pre", "post"]


def test_global_hooks_run(monkeypatch):
    params, opt = _one_sgd()
    seen = []
    handle = register_optimizer_step_post_hook(lambda *a: seen.append("post"))
    try:
        assert _first_two_steps(params, opt, monkeypatch) == 1
    finally:
        handle.remove()
    assert seen == ["post", "post"]


def test_profiler_sees_the_step(monkeypatch):
    params, opt = _one_sgd()
    with torch.autograd.profiler.profile() as prof:
        assert _first_two_steps(params, opt, monkeypatch) == 1
    names = [e.name for e in prof.function_events]
    assert names.count("Optimizer.step#SGD.step") == 2


def test_a_replaced_step_is_called(monkeypatch):
    params, opt = _one_sgd()
    seen = []
    original = opt.step

    def logged(*args, **kwargs):
        seen.append("step")
        return original(*args, **kwargs)

    opt.step = logged
    _first_two_steps(params, opt, monkeypatch)
    assert seen == ["step", "step"]


def test_a_schedulers_wrapper_is_no_reason_to_leave_the_shortcut(monkeypatch):
    params, opt = _one_sgd()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    assert _first_two_steps(params, opt, monkeypatch) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler.step()


def test_a_scheduler_before_any_step_leaves_it_to_torch(monkeypatch):
    params, opt = _one_sgd()
    torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    _set_grads(params, 0)
    opt.step()
    opt._opt_called = False  # as if that first step had not gone through the wrapper
    optimizer_step(opt)
    assert opt._opt_called


@pytest.mark.parametrize("kwargs", [{"maximize": True}, {"foreach": False},
                                    {"lr": torch.tensor(0.1)}])
def test_other_settings_go_through_torch(kwargs, monkeypatch):
    params = _params(0)
    settings = {"lr": 0.1, "momentum": 0.9, "foreach": True, **kwargs}
    opt = torch.optim.SGD(params, **settings)
    assert _first_two_steps(params, opt, monkeypatch) == 1


def test_mixed_dtypes_go_through_torch(monkeypatch):
    params = _params(0)
    params[-1] = torch.nn.Parameter(params[-1].detach().double())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)
    assert _first_two_steps(params, opt, monkeypatch) == 1


def test_other_optimizers_go_through_their_step():
    params = _params(0)
    opt = torch.optim.Adam(params, lr=0.1, foreach=True)
    ref_params = _params(0)
    ref = torch.optim.Adam(ref_params, lr=0.1, foreach=True)
    for step in range(3):
        _set_grads(params, step)
        _set_grads(ref_params, step)
        optimizer_step(opt)
        ref.step()
    for a, b in zip(params, ref_params, strict=True):
        assert torch.equal(a, b)
    assert opt.state[params[0]]["step"] == 3


@pytest.mark.parametrize("sparse_compute", ["masked", "csr"])
def test_a_fit_steps_through_torch_once(sparse_compute, monkeypatch):
    from sklearn.datasets import make_classification

    from rest_fair import RESTClassifier

    X, y = make_classification(200, 12, n_informative=6, random_state=0)
    calls = _count_torch_steps(monkeypatch)
    clf = RESTClassifier(sparsity=0.8, sparse_compute=sparse_compute, max_epochs=3,
                         batch_size=32, update_interval=2, lr_scheduler="cosine",
                         random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        clf.fit(X.astype("float32"), y)
    assert sum(r["n_topology_updates"] for r in clf.history_) > 0
    assert calls[0] == 1
