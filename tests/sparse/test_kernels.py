"""Compiled CSR kernels (rest_fair.sparse.kernels) and the pure-torch path they replace."""

from __future__ import annotations

import copy
import subprocess

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

from rest_fair import RESTClassifier
from rest_fair.sparse import kernels
from rest_fair.sparse.csr_linear import CSRLinear

needs_kernels = pytest.mark.skipif(not kernels.available(),
                                   reason=f"no compiled kernels: {kernels.unavailable_reason()}")


@pytest.fixture(params=["kernels", "torch"])
def path(request, monkeypatch):
    """Run the CSR layers on the compiled kernels, then on the pure-torch path."""
    if request.param == "kernels":
        if not kernels.available():
            pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    else:
        monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    calls = []
    forward = kernels.csr_forward
    monkeypatch.setattr(kernels, "csr_forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    yield request.param, calls


@pytest.fixture
def every_call_parallel(monkeypatch):
    """Split even the small test problems between threads."""
    monkeypatch.setattr(kernels, "_MIN_PARALLEL_WORK", 0)


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """A loader that has not tried yet, building into an empty cache (also where the
    environment switches the kernels off)."""
    monkeypatch.setenv("REST_FAIR_CACHE", str(tmp_path))
    monkeypatch.delenv(kernels.ENV_SWITCH, raising=False)
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_reason", None)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_FUNCS", {})
    return tmp_path


def _pattern(n_out, n_in, density, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_out, n_in, generator=gen) < density
    mask[1] = False  # an empty row
    mask[:, 2] = False  # an empty column
    return mask


def _csr_of(mask):
    return kernels.csr_pattern(mask)


def _run_kernels(mask, weight, bias, x, g, n_threads, out_layout="rows"):
    flat, crow, col, crow_t, row_t, perm = _csr_of(mask)
    values = weight.reshape(-1)[flat].contiguous()
    splits = kernels.Splits(crow, crow_t, n_threads)
    batch = x.shape[0]
    nv, width = kernels.panel_width(x.dtype, batch)
    xp, _ = kernels.pack(x, splits.in_features, nv)
    if out_layout == "rows":
        y = x.new_empty(batch, mask.shape[0])
    elif out_layout == "features":
        y = x.new_empty(mask.shape[0], batch).t()
    else:  # the next layer's panels
        panels = x.new_empty(xp.shape[0], mask.shape[0], width)
        kernels.csr_forward(xp, nv, batch, crow, col, values, bias, splits.rows, panels)
        y = panels.transpose(1, 2).reshape(-1, mask.shape[0])[:batch]
    if out_layout != "panels":
        kernels.csr_forward(xp, nv, batch, crow, col, values, bias, splits.rows, y)
    gp, gsum = kernels.pack(g, splits.out_features, nv, column_sums=True)
    gx, gv = torch.empty_like(x), torch.empty_like(values)
    kernels.csr_backward(gp, xp, nv, batch, crow_t, row_t, perm, values, splits.cols, gx, gv)
    return y, gx, gv, gsum, flat


@needs_kernels
@pytest.mark.usefixtures("every_call_parallel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 9, 16, 17, 31, 33, 64, 65, 200])
@pytest.mark.parametrize("layout", ["rows", "features", "strided", "panels"])
def test_kernels_equal_dense_products(dtype, batch, layout):
    n_out, n_in = 37, 53
    mask = _pattern(n_out, n_in, 0.2, seed=batch)
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=dtype) * mask
    weight[mask & (torch.rand(n_out, n_in, generator=gen) < 0.1)] = 0.0  # active zeros
    bias = torch.randn(n_out, generator=gen, dtype=dtype)
    x = torch.randn(batch, n_in, generator=gen, dtype=dtype)
    g = torch.randn(batch, n_out, generator=gen, dtype=dtype)
    if layout == "features":  # a feature-major view, as a preceding CSR layer passes it
        x = x.t().contiguous().t()
        g = g.t().contiguous().t()
    elif layout == "strided":
        x = torch.randn(batch, 2 * n_in, generator=gen, dtype=dtype)[:, ::2]
    for n_threads in (1, 2, 3):
        out = layout if layout in ("features", "panels") else "rows"
        y, gx, gv, gsum, flat = _run_kernels(mask, weight, bias, x, g, n_threads, out)
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0,
                                                                         "atol": 1e-12}
        torch.testing.assert_close(y, x @ weight.t() + bias, **tol)
        torch.testing.assert_close(gx, g @ weight, **tol)
        torch.testing.assert_close(gv, (g.t() @ x).reshape(-1)[flat], **tol)
        torch.testing.assert_close(gsum, g.sum(0), **tol)


@needs_kernels
@pytest.mark.usefixtures("every_call_parallel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [130, 256])  # 3 and 4 panels: split by panels or rows
def test_kernel_results_do_not_depend_on_the_thread_count(batch, dtype):
    # a thread's share of the weight gradient is summed a vector of entries at a time from
    # its first entry, the rest one by one: other thread counts group the entries otherwise
    mask = _pattern(300, 200, 0.05, seed=0)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 200, generator=gen, dtype=dtype) * mask
    bias = torch.randn(300, generator=gen, dtype=dtype)
    x = torch.randn(batch, 200, generator=gen, dtype=dtype)
    g = torch.randn(batch, 300, generator=gen, dtype=dtype)
    first = _run_kernels(mask, weight, bias, x, g, 1)
    for n_threads in (2, 3, 4, 7):
        again = _run_kernels(mask, weight, bias, x, g, n_threads)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_gradient_without_input_gradient_is_the_same(dtype):
    mask = _pattern(120, 90, 0.3, seed=3)
    gen = torch.Generator().manual_seed(3)
    flat, crow, _col, crow_t, row_t, perm = _csr_of(mask)
    values = torch.randn(flat.numel(), generator=gen, dtype=dtype)
    x = torch.randn(70, 90, generator=gen, dtype=dtype)
    g = torch.randn(70, 120, generator=gen, dtype=dtype)
    splits = kernels.Splits(crow, crow_t, 2)
    nv, _ = kernels.panel_width(dtype, 70)
    xp, _ = kernels.pack(x, splits.in_features, nv)
    gp, _ = kernels.pack(g, splits.out_features, nv)
    both, alone = torch.empty_like(values), torch.empty_like(values)
    kernels.csr_backward(gp, xp, nv, 70, crow_t, row_t, perm, values, splits.cols,
                         torch.empty_like(x), both)
    kernels.csr_backward(gp, xp, nv, 70, crow_t, row_t, perm, values, splits.cols, None, alone)
    assert torch.equal(both, alone)
    torch.testing.assert_close(alone, (g.t() @ x).reshape(-1)[flat])


@needs_kernels
@pytest.mark.usefixtures("every_call_parallel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_outputs_are_the_same_at_every_panel_width(dtype):
    # what lets inference choose the width by its thread count without changing results
    mask = _pattern(70, 90, 0.1, seed=2)
    gen = torch.Generator().manual_seed(2)
    flat, crow, col, crow_t, _, _ = kernels.csr_pattern(mask)
    values = torch.randn(flat.numel(), generator=gen, dtype=dtype)
    bias = torch.randn(70, generator=gen, dtype=dtype)
    x = torch.randn(100, 90, generator=gen, dtype=dtype)
    outs = []
    for nv in (1, 2, 4):
        for n_threads in (1, 2):
            splits = kernels.Splits(crow, crow_t, n_threads)
            xp, _ = kernels.pack(x, splits.in_features, nv)
            y = x.new_empty(100, 70)
            kernels.csr_forward(xp, nv, 100, crow, col, values, bias, splits.rows, y, relu=True)
            outs.append(y)
    assert all(torch.equal(outs[0], y) for y in outs[1:])


def test_inference_panels_divide_evenly_among_the_threads():
    f32 = torch.float32
    assert kernels.panel_width(f32, 64) == (4, 64)  # training: by the batch alone
    assert kernels.panel_width(f32, 64, 1) == (4, 64)
    assert kernels.panel_width(f32, 64, 2) == (2, 32)  # two panels, one per thread
    assert kernels.panel_width(f32, 48, 2) == (2, 32)
    assert kernels.panel_width(f32, 256, 2) == (4, 64)
    assert kernels.panel_width(f32, 256, 4) == (4, 64)
    assert kernels.panel_width(f32, 32, 2) == (2, 32)  # no even split: the batch's width
    assert kernels.panel_width(f32, 16, 2) == (1, 16)


@needs_kernels
def test_a_layer_without_active_weights():
    mask = torch.zeros(8, 5, dtype=torch.bool)
    weight, bias = torch.zeros(8, 5), torch.randn(8)
    x, g = torch.randn(4, 5), torch.randn(4, 8)
    y, gx, gv, gsum, _ = _run_kernels(mask, weight, bias, x, g, 2)
    torch.testing.assert_close(y, bias.expand(4, 8))
    assert gv.numel() == 0 and torch.equal(gx, torch.zeros(4, 5))
    torch.testing.assert_close(gsum, g.sum(0))


def _linear(dtype=torch.float32, bias=True, n_in=70, n_out=50, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out, bias=bias).to(dtype)
    mask = _pattern(n_out, n_in, 0.1, seed)
    with torch.no_grad():
        linear.weight.mul_(mask)
    return linear, mask


@pytest.mark.parametrize("feature_major", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_csr_layer_equals_masked_layer(path, feature_major, bias):
    kind, calls = path
    linear, mask = _linear(bias=bias)
    layer = CSRLinear(copy.deepcopy(linear), mask)
    layer.feature_major_output = feature_major
    for x in (torch.randn(2, 33, 70), torch.randn(70, 66).t()):  # leading dims; transposed
        x = x.requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        target = torch.randn(*x.shape[:-1], 50)
        out = layer(x)
        torch.testing.assert_close(out, linear(x_ref), rtol=1e-5, atol=1e-5)
        ((out - target) ** 2).sum().backward()
        ((linear(x_ref) - target) ** 2).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.values.grad, linear.weight.grad[mask],
                                   rtol=1e-4, atol=1e-4)
        if bias:
            torch.testing.assert_close(layer.bias.grad, linear.bias.grad, rtol=1e-4, atol=1e-4)
        layer.zero_grad()
        linear.zero_grad()
    assert bool(calls) == (kind == "kernels")


def test_csr_layer_first_layer_eval_and_bf16(path):
    linear, mask = _linear()
    layer = CSRLinear(copy.deepcopy(linear), mask)
    x = torch.randn(9, 70)  # no input gradient, as a network's first layer
    layer(x).sum().backward()
    linear(x).sum().backward()
    torch.testing.assert_close(layer.values.grad, linear.weight.grad[mask], rtol=1e-5,
                               atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    torch.testing.assert_close(out.float(), linear(x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", [(4, 2), (4, 140), (2, 2, 140), (140,), ()])
def test_an_input_of_another_width_is_refused_as_nn_linear_refuses_it(path, shape):
    # the kernels read the packed input at the pattern's columns: too few features read
    # past its panels, too many are silently taken for other samples
    linear, mask = _linear()
    layer = CSRLinear(linear, mask, name="hidden")
    x = torch.randn(shape)
    with pytest.raises(RuntimeError, match=r"'hidden' takes inputs of shape \(\.\.\., 70\)"):
        layer(x)
    with torch.no_grad(), pytest.raises(RuntimeError, match="in_features=70"):
        layer(x)
    with pytest.raises(RuntimeError, match=r"^the sparse layer takes"):
        CSRLinear(linear, mask)(x)


@pytest.mark.parametrize("layout", ["strided", "broadcast"])
def test_a_bias_of_any_strides_is_read_at_its_strides(path, layout):
    # the kernels read the bias as a contiguous vector
    linear, mask = _linear(n_out=50)
    source = torch.randn(50, 3) if layout == "strided" else torch.randn(1).expand(50)
    linear.bias = nn.Parameter(source[:, 1] if layout == "strided" else source)
    assert not linear.bias.is_contiguous()
    layer = CSRLinear(linear, mask)
    x = torch.randn(20, 70)
    out = layer(x)
    torch.testing.assert_close(out, linear(x), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    torch.testing.assert_close(layer.bias.grad, torch.full((50,), 20.0))


def test_fit_with_set_equals_masked_fit(path):
    # SET regrows by the run's generator, so both runs keep the same topologies; in float64
    # their weights agree to rounding on either kernel path
    X, y = make_classification(300, 30, n_informative=8, n_classes=3, random_state=0)
    X = X.astype(np.float32)

    class DoubleMLP(nn.Module):
        def __init__(self, input_shape, n_classes):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(int(np.prod(input_shape)), 64), nn.ReLU(),
                                        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, n_classes))
            self.double()

        def forward(self, x):
            return self.layers(x.double())

    fits = {}
    for mode in ("masked", "csr"):
        fits[mode] = RESTClassifier(
            sparsity=0.95, max_epochs=2, batch_size=32, lr=0.05, random_state=0,
            device="cpu", validation_fraction=0.0, lr_scheduler="constant", module=DoubleMLP,
            update_interval=4, sparse_compute_threshold=0.3, regrow="random",
            sparse_compute=mode).fit(X, y)
    assert fits["csr"].sparse_compute_layers_
    masked, csr = fits["masked"].module_.state_dict(), fits["csr"].module_.state_dict()
    for key in masked:
        torch.testing.assert_close(csr[key], masked[key], rtol=0, atol=1e-9)
    kind, calls = path
    assert bool(calls) == (kind == "kernels")


def test_kernels_build_where_a_compiler_exists(fresh_loader):
    if kernels._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert kernels.available(), kernels.unavailable_reason()
    assert kernels.unavailable_reason() is None


def test_build_is_cached_and_reused(fresh_loader, monkeypatch):
    if kernels._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert kernels.load() is not None
    built = list((fresh_loader / "kernels").glob("csr_kernels-*.so"))
    assert len(built) == 1
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_lib", None)

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert kernels.load() is not None


def test_without_a_working_compiler_the_layer_uses_torch(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(kernels, "_FLAG_SETS", (("-O2",),))
    monkeypatch.setattr(kernels.shutil, "which",
                        lambda name: "/bin/false" if name == "false" else None)
    assert kernels.load() is None and not kernels.available()
    assert "false" in kernels.unavailable_reason()
    linear, mask = _linear()
    layer = CSRLinear(copy.deepcopy(linear), mask)
    x = torch.randn(5, 70)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    assert kernels.load() is None
    assert "no C compiler" in kernels.unavailable_reason()


def test_an_empty_cache_variable_builds_into_the_default_folder(fresh_loader, monkeypatch):
    # REST_FAIR_CACHE= put the kernels into ./kernels of the current folder
    home, work = fresh_loader / "home", fresh_loader / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("REST_FAIR_CACHE", "")
    monkeypatch.chdir(work)
    monkeypatch.setenv("CC", "false")  # a failing compiler: the folder is made, no build
    monkeypatch.setattr(kernels, "_FLAG_SETS", (("-O2",),))
    monkeypatch.setattr(kernels.shutil, "which",
                        lambda name: "/bin/false" if name == "false" else None)
    assert kernels.load() is None
    assert (home / ".cache" / "rest_fair" / "kernels").is_dir()
    assert list(work.iterdir()) == []


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    assert kernels.load() is None
    assert kernels.ENV_SWITCH in kernels.unavailable_reason()


@needs_kernels
@pytest.mark.parametrize(("n", "k", "draws_before"), [
    (1000, 10, 0),        # a fresh generator: the first draw regenerates the words
    (5000, 50, 3),
    (5000, 4998, 623),    # k = n - 2: every step but the last
    (200_000, 2_000, 1),  # hundreds of regenerations skipped
    (624, 1, 622),        # the skip ends exactly on a regeneration
    (300_000, 150_000, 5),  # half the positions: a full table of moved positions
    (2048 * 2048, 41_943, 2),  # a 2048 x 2048 layer at 1 %
    (2, 0, 7),
])
def test_randperm_prefix_equals_torch_randperm_and_its_generator_state(n, k, draws_before):
    ours, theirs = torch.Generator(), torch.Generator()
    for gen in (ours, theirs):
        gen.manual_seed(n + k)
        torch.randint(0, 10, (draws_before,), generator=gen)
    want = torch.randperm(n, generator=theirs)[:k]
    got = kernels.randperm_prefix(n, k, ours)
    assert kernels._prefix_ok
    assert torch.equal(got, want)
    assert torch.equal(ours.get_state(), theirs.get_state())
    assert torch.equal(torch.rand(5, generator=ours), torch.rand(5, generator=theirs))


def test_randperm_prefix_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(kernels, "_prefix_ok", False)  # as when the check failed
    ours, theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(kernels.randperm_prefix(3000, 30, ours),
                       torch.randperm(3000, generator=theirs)[:30])
    assert torch.equal(ours.get_state(), theirs.get_state())
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    assert torch.equal(kernels.randperm_prefix(3000, 30, ours),
                       torch.randperm(3000, generator=theirs)[:30])


@needs_kernels
def test_randperm_prefix_check_refuses_an_unknown_state_layout(monkeypatch):
    monkeypatch.setattr(kernels, "_STATE_BYTES", 4096)
    assert not kernels._check_prefix()


def _random_mask(kind, n_out, n_in, gen):
    rand = torch.rand(n_out, n_in, generator=gen)
    if kind == "single":
        mask = torch.zeros(n_out, n_in, dtype=torch.bool)
        mask[n_out // 2, n_in - 1] = True
    elif kind == "empty":
        mask = torch.zeros(n_out, n_in, dtype=torch.bool)
    elif kind == "one heavy row":
        mask = rand < 0.01
        mask[n_out // 3] = True
    else:  # empty rows and columns, some full rows
        mask = rand < 0.2
        mask[torch.rand(n_out, generator=gen) < 0.3] = False
        mask[:, torch.rand(n_in, generator=gen) < 0.3] = False
        mask[torch.rand(n_out, generator=gen) < 0.1] = True
    return mask


def _random_input(layout, batch, n_in, dtype, gen):
    if layout == "transposed":
        return torch.randn(n_in, batch, generator=gen, dtype=dtype).t()
    if layout == "sliced":
        return torch.randn(batch + 3, n_in + 5, generator=gen, dtype=dtype)[2:-1, 3:-2]
    if layout == "strided":
        return torch.randn(2 * batch, 3 * n_in, generator=gen, dtype=dtype)[::2, ::3]
    if layout == "broadcast":
        return torch.randn(1, n_in, generator=gen, dtype=dtype).expand(batch, n_in)
    return torch.randn(batch, n_in, generator=gen, dtype=dtype)


def _outputs_and_gradients(module, x, g, *, x_grad, relu=False):
    """Output, then gradients of the input, the weights and the bias (``None`` where not
    computed) of ``module`` on ``x`` (then a ReLU where ``relu``) for the output gradient
    ``g``."""
    x = x.detach().requires_grad_(x_grad)
    y = module(x)
    if relu:
        y = torch.relu(y)
    if y.requires_grad:  # else nothing asks for a gradient
        y.backward(g)
    weight = module.values if isinstance(module, CSRLinear) else module.weight
    bias = None if module.bias is None else module.bias.grad
    return [y.detach(), x.grad, weight.grad, bias]


@needs_kernels
@pytest.mark.usefixtures("every_call_parallel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_layers_equal_the_masked_dense_layer_at_every_thread_count(dtype):
    # seeded random cases: odd sizes around the panel widths, degenerate patterns, input
    # layouts, with and without bias, fused ReLU, feature-major output, input and weight
    # gradients
    batches = [1, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 70, 255, 257]
    sizes = [1, 3, 15, 16, 17, 33, 64, 65, 129, 300]
    mask_kinds = ["single", "empty", "one heavy row", "uneven"]
    layouts = ["row-major", "transposed", "sliced", "strided", "broadcast"]
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4,
                                                                            "atol": 1e-4}
    previous = torch.get_num_threads()
    for case in range(40):
        gen = torch.Generator().manual_seed(case)
        pick = [int(i) for i in torch.randint(0, 1000, (9,), generator=gen)]
        batch, n_in, n_out = (batches[pick[0] % len(batches)], sizes[pick[1] % len(sizes)],
                              sizes[pick[2] % len(sizes)])
        has_bias, relu, x_grad, frozen = (bool(p % 2) for p in pick[3:7])
        mask = _random_mask(mask_kinds[case % len(mask_kinds)], n_out, n_in, gen)
        linear = nn.Linear(n_in, n_out, bias=has_bias).to(dtype)
        with torch.no_grad():
            linear.weight.mul_(mask)
        linear.weight.requires_grad_(not frozen)
        layer = CSRLinear(copy.deepcopy(linear), mask)
        layer.relu_output = relu
        layer.feature_major_output = bool(pick[8] % 2)
        x = _random_input(layouts[pick[7] % len(layouts)], batch, n_in, dtype, gen)
        g = torch.randn(batch, n_out, generator=gen, dtype=dtype)
        want = _outputs_and_gradients(linear, x, g, x_grad=x_grad, relu=relu)
        if not frozen:
            want[2] = want[2][mask]
        got = {}
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            layer.zero_grad(set_to_none=True)
            got[n_threads] = _outputs_and_gradients(layer, x, g, x_grad=x_grad)
        torch.set_num_threads(previous)
        for ours, theirs in zip(got[1], want, strict=True):
            assert (ours is None) == (theirs is None), case
            if ours is not None:
                torch.testing.assert_close(ours, theirs, **tol, msg=f"case {case}")
        for n_threads in (2, 3):
            assert all(a is b or torch.equal(a, b)
                       for a, b in zip(got[1], got[n_threads], strict=True)), case


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["row-major", "feature-major", "strided"])
@pytest.mark.parametrize(("batch", "k"), [(70, 37), (16, 48), (5, 3)])
def test_gated_pack_is_bitwise_the_pack_of_the_relu_gradient(dtype, layout, batch, k):
    gen = torch.Generator().manual_seed(batch + k)
    out = torch.relu(torch.randn(batch, k, generator=gen, dtype=dtype))
    out[0, 0] = float("nan")  # threshold_backward passes the gradient where the output is NaN
    grad = torch.randn(batch, k, generator=gen, dtype=dtype)
    want = torch.ops.aten.threshold_backward(grad, out, 0)

    def laid_out(t):
        if layout == "feature-major":
            return t.t().contiguous().t()
        return torch.cat([t, t], 1)[:, ::2] if layout == "strided" else t

    out, grad, want = laid_out(out), laid_out(grad), laid_out(want)
    splits = kernels.even_splits(k, 2)
    nv, _ = kernels.panel_width(dtype, batch)
    p_want, s_want = kernels.pack(want, splits, nv, column_sums=True)
    p_got, s_got = kernels.pack(grad, splits, nv, column_sums=True, gate=out)
    assert torch.equal(p_got, p_want) and torch.equal(s_got, s_want)
    with pytest.raises(ValueError, match="strides"):
        kernels.pack(grad, splits, nv, gate=out.contiguous() if layout != "row-major"
                     else out.t().contiguous().t())


@needs_kernels
@pytest.mark.usefixtures("every_call_parallel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["row-major", "feature-major", "strided"])
@pytest.mark.parametrize(("batch", "k"), [(200, 37), (70, 48), (16, 35), (5, 3)])
def test_column_sums_add_the_samples_in_a_fixed_order(dtype, layout, batch, k):
    gen = torch.Generator().manual_seed(batch * k)
    # magnitudes far apart make every order of the additions round differently
    a = torch.randn(batch, k, generator=gen, dtype=dtype) * 10.0 ** torch.randint(
        -6, 7, (batch, k), generator=gen)
    gate = torch.relu(torch.randn(batch, k, generator=gen, dtype=dtype))
    if layout == "feature-major":
        a, gate = a.t().contiguous().t(), gate.t().contiguous().t()
    elif layout == "strided":
        a, gate = torch.cat([a, a], 1)[:, ::2], torch.cat([gate, gate], 1)[:, ::2]
    nv, width = kernels.panel_width(dtype, batch)
    for g in (None, gate):
        values = (a if g is None else torch.ops.aten.threshold_backward(a, g, 0)).numpy()
        if layout == "feature-major":  # one running sum over all samples
            want = np.add.accumulate(values, axis=0)[-1]
        else:  # a running sum per panel of samples, the panels' sums added in order
            want = np.zeros(k, dtype=values.dtype)
            for b0 in range(0, batch, width):
                want = want + np.add.accumulate(values[b0:b0 + width], axis=0)[-1]
        _, sums = kernels.pack(a, kernels.even_splits(k, 2), nv, column_sums=True, gate=g)
        assert np.array_equal(sums.numpy(), want)


def test_the_pattern_of_flat_indices_is_the_pattern_of_the_mask():
    mask = torch.rand(13, 29, generator=torch.Generator().manual_seed(4)) < 0.2
    flat = mask.reshape(-1).nonzero().squeeze(1)
    for got, want in zip(kernels.csr_pattern_of_flat(flat, (13, 29)), kernels.csr_pattern(mask),
                         strict=True):
        assert torch.equal(got, want) and got.dtype == want.dtype


@needs_kernels
@pytest.mark.parametrize(("shape", "density"), [((13, 29), 0.2), ((40, 7), 0.5), ((1, 50), 0.3),
                                                ((50, 1), 0.3), ((6, 9), 0.0), ((6, 9), 1.0)])
def test_the_compiled_pattern_arrays_are_torchs(monkeypatch, shape, density):
    gen = torch.Generator().manual_seed(shape[0])
    mask = torch.rand(shape, generator=gen) < density
    mask[:, 0] = False  # an empty column, and below an empty row
    mask[-1] = False
    got = kernels.csr_pattern(mask, inverse=True)
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")  # torch's sort builds them
    want = kernels.csr_pattern(mask, inverse=True)
    assert len(got) == len(want) == 7
    for ours, theirs in zip(got, want, strict=True):
        assert torch.equal(ours, theirs) and ours.dtype == theirs.dtype
    flat, *_, perm, inverse = got
    assert torch.equal(inverse[perm.long()], torch.arange(flat.numel(), dtype=torch.int32))


@pytest.mark.parametrize("flat", [[-1, 3], [0, 54]])
def test_flat_indices_outside_the_shape_are_refused(flat):
    with pytest.raises(ValueError, match=r"flat indices must lie in \[0, 54\)"):
        kernels.csr_pattern_of_flat(torch.tensor(flat), (6, 9))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_sorted_values_sorts_as_torch(dtype):
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 17, 50_000):
        values = torch.randint(-10**6, 10**6, (n,), generator=g, dtype=torch.int64).to(dtype)
        got = kernels.sorted_values(values)
        assert got.dtype == dtype and torch.equal(got, values.sort().values)
    floats = torch.randn(100, generator=g)
    assert torch.equal(kernels.sorted_values(floats), floats.sort().values)


@needs_kernels
@pytest.mark.parametrize(("n", "low", "high", "draws_before"), [
    (0, 0.0, 1.0, 5),
    (1, -1.0, 1.0, 0),        # a fresh generator: the first draw regenerates the words
    (623, 0.0, 1.0, 1),       # ends exactly on a regeneration
    (5000, -0.02, 0.02, 622),
    (2048 * 64, -0.0220970869120796, 0.0220970869120796, 3),
])
def test_uniform_draws_what_torch_draws(n, low, high, draws_before):
    ours, theirs = torch.Generator(), torch.Generator()
    for gen in (ours, theirs):
        gen.manual_seed(n + draws_before)
        torch.rand(draws_before, generator=gen)
    got = kernels.uniform_(torch.empty(n), low, high, generator=ours)
    want = torch.empty(n).uniform_(low, high, generator=theirs)
    assert kernels._uniform_ok
    assert torch.equal(got, want)
    assert torch.equal(ours.get_state(), theirs.get_state())


@needs_kernels
def test_uniform_on_the_global_generator_bumps_the_version_and_refuses_as_torch():
    torch.manual_seed(3)
    weight = nn.Parameter(torch.empty(40, 30))
    version = weight._version
    with torch.no_grad():
        kernels.uniform_(weight, -0.5, 0.5)
    after = torch.rand(3)
    torch.manual_seed(3)
    want = torch.empty(40, 30).uniform_(-0.5, 0.5)
    assert torch.equal(weight.detach(), want) and torch.equal(after, torch.rand(3))
    assert weight._version > version
    with pytest.raises(RuntimeError, match="leaf Variable"):
        kernels.uniform_(weight, 0.0, 1.0)


@pytest.mark.parametrize(("low", "high"), [(5.5, -2.25), (0.0, float("inf")),
                                           (-3e38, 3e38), (-3.5e38, -3.4e38),
                                           (float("nan"), 1.0)])
def test_uniform_refuses_bounds_as_torch(low, high):
    with pytest.raises(RuntimeError) as ours:
        kernels.uniform_(torch.empty(5), low, high)
    with pytest.raises(RuntimeError) as theirs:
        torch.empty(5).uniform_(low, high)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("case", ["float64", "strided", "check failed", "no kernels"])
def test_uniform_falls_back_to_torch(monkeypatch, case):
    tensor = torch.empty(30, 20, dtype=torch.float64 if case == "float64" else torch.float32)
    if case == "strided":
        tensor = tensor.t()
    if case == "check failed":
        monkeypatch.setattr(kernels, "_uniform_ok", False)
    if case == "no kernels":
        monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    calls = []
    original = torch.Tensor.uniform_
    monkeypatch.setattr(torch.Tensor, "uniform_",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    want = original(tensor.clone(), -1.0, 2.0, generator=torch.Generator().manual_seed(0))
    got = kernels.uniform_(tensor, -1.0, 2.0, generator=torch.Generator().manual_seed(0))
    assert calls == [1] and torch.equal(got, want)


def test_new_zeros_asks_for_huge_pages_for_large_cpu_buffers_only(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "_madvise", lambda start, length, advice: calls.append(
        (start, length, advice)) or 0)
    like = torch.ones(3, dtype=torch.float64)
    small = kernels.new_zeros(like, 1000)
    assert small.dtype == torch.float64 and not small.any() and calls == []
    big = kernels.new_zeros(like, 3 * 2**20)  # 24 MiB
    assert big.shape == (3 * 2**20,) and big.dtype == torch.float64 and not big.any()
    (start, length, advice), = calls
    assert advice == kernels._MADV_HUGEPAGE
    assert start % 2**21 == 0 and length % 2**21 == 0 and length >= 2**21 * 10
    assert big.data_ptr() <= start and start + length <= big.data_ptr() + 24 * 2**20
    monkeypatch.setattr(kernels, "_madvise", False)  # not Linux
    assert not kernels.new_zeros(like, 3 * 2**20).any()


@needs_kernels
@pytest.mark.parametrize("seed", range(4))
def test_mask_scale_computes_torchs_products(seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(301, 77, generator=g) * 10 ** float(torch.randint(-30, 30, (1,),
                                                                             generator=g))
    weight.view(-1)[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0,
                                        -1e-45, 3e38])
    mask = torch.rand(301, 77, generator=g) < 0.3
    scale = float(torch.rand(1, generator=g)) * 40
    for s in (None, scale):
        want = weight.clone().mul_(mask)
        if s is not None:
            want.mul_(s)
        got = weight.clone()
        assert kernels.mask_scale_(got, mask, s)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_mask_scale_leaves_what_it_cannot_take_to_the_caller():
    mask = torch.ones(4, 3, dtype=torch.bool)
    for weight, m in [(torch.ones(4, 3, dtype=torch.float64), mask),
                      (torch.ones(3, 4).t(), mask), (torch.ones(4, 3), mask.t().t()[:, :2]),
                      (torch.ones(4, 3), mask.float())]:
        before = weight.clone()
        assert not kernels.mask_scale_(weight, m, 2.0)
        assert torch.equal(weight, before)


@pytest.mark.parametrize("case", range(5))
def test_searchsorted_of_sorted_values_is_torchs(case):
    g = torch.Generator().manual_seed(case)
    n, m = [(0, 5), (5, 0), (1000, 3000), (40_000, 40_000), (3, 1)][case]
    a = torch.randint(-50, 10**6, (n,), generator=g).sort().values  # with repeats
    b = torch.randint(-100, 10**6 + 100, (m,), generator=g).sort().values
    if m > 2:
        b[: m // 3] = a[torch.randint(0, max(n, 1), (m // 3,), generator=g)].sort().values \
            if n else b[: m // 3]
        b = b.sort().values
    assert torch.equal(kernels.searchsorted_sorted(a, b), torch.searchsorted(a, b))
