"""Sparse compute inside fit (rest_fair.sparse.compute): same training, sparse kernels."""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback, Checkpoint
from rest_fair.models import build_module
from rest_fair.persistence.checkpoint import read_checkpoint
from rest_fair.sparse import (
    DropSchedule,
    DynamicSparsity,
    MaskSet,
    compute,
    csr_engine,
    csr_linear,
    kernels,
)
from rest_fair.sparse.compute import (
    CSRDynamicSparsity,
    CSRLinear,
    LayerTiming,
    candidate_layers,
    make_sparse_compute,
    measure_chain_link,
    measure_layer,
)
from rest_fair.sparse.rigl import top_k_first


class DoubleMLP(nn.Module):
    """A float64 MLP (inputs are cast), so that two training paths compare to 1e-10."""

    def __init__(self, input_shape, n_classes, hidden=(64, 48)):
        super().__init__()
        n_in, layers = int(np.prod(input_shape)), []
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        layers.append(nn.Linear(n_in, n_classes))
        self.layers = nn.Sequential(*layers)
        self.double()

    def forward(self, x):
        return self.layers(x.double())


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(400, 30, n_informative=8, n_classes=3, random_state=0)
    return X.astype(np.float32), y


class Recorder(Callback):
    """Weights and masks after every optimizer step; steps of topology updates."""

    def on_train_begin(self, net, **kwargs):
        self.weights, self.masks, self.updates = [], [], []

    def on_batch_end(self, net, *, step, loss, **kwargs):
        self.weights.append({k: v.clone() for k, v in net.module_.state_dict().items()})
        self.masks.append({k: v.clone() for k, v in net.masks_.items()})

    def on_topology_update(self, net, *, step, n_regrown, **kwargs):
        self.updates.append(step)


class LiveLayers(Callback):
    """The live network's layer types and CSR layers' fused ReLUs, at the first epoch."""

    def on_epoch_begin(self, net, *, run, **kwargs):
        layers = run.parts.module.layers
        self.types = [type(m).__name__ for m in layers]
        self.relu_output = [m.relu_output for m in layers if isinstance(m, CSRLinear)]


def _clf(**params):
    base = dict(sparsity=0.95, max_epochs=3, batch_size=32, lr=0.05, random_state=0,
                device="cpu", validation_fraction=0.0, lr_scheduler="constant",
                module=DoubleMLP, update_interval=7, sparse_compute_threshold=0.3)
    return RESTClassifier(**{**base, **params})


def _counts(masks):
    return {k: int(v.sum()) for k, v in masks.items()}


@pytest.fixture
def small_blocks(monkeypatch):
    # scan the dense gradient (and draw SET scores) a few rows at a time
    monkeypatch.setattr(csr_linear, "_SCAN_ENTRIES", 100)


# ------------------------------------------------------------------- the layer itself
def _layer(seed=0, density=0.1, bias=True, dtype=torch.float64):
    torch.manual_seed(seed)
    linear = nn.Linear(40, 24, bias=bias).to(dtype)
    mask = torch.rand(24, 40) < density
    mask[3] = False  # an empty row
    with torch.no_grad():
        linear.weight.mul_(mask)
        linear.weight[mask & (torch.rand(24, 40) < 0.2)] = 0.0  # regrown zeros stay active
    return linear, mask


@pytest.mark.parametrize("bias", [True, False])
def test_layer_gradients_equal_masked_dense_gradients(bias):
    linear, mask = _layer(bias=bias)
    layer = CSRLinear(copy.deepcopy(linear), mask)
    x = torch.randn(3, 5, 40, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 5, 24, dtype=torch.float64)
    ((linear(x) - target) ** 2).sum().backward()
    grad_x, x.grad = x.grad.clone(), None
    out = layer(x)
    torch.testing.assert_close(out, linear(x).detach(), rtol=0, atol=1e-12)
    ((out - target) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, grad_x, rtol=0, atol=1e-12)
    assert layer.nnz == int(mask.sum())
    torch.testing.assert_close(layer.values.grad, linear.weight.grad[mask], rtol=0, atol=1e-12)
    if bias:
        torch.testing.assert_close(layer.bias.grad, linear.bias.grad, rtol=0, atol=1e-12)


def test_layer_state_dict_has_the_form_of_nn_linear():
    linear, mask = _layer()
    layer = CSRLinear(linear, mask)
    state = layer.state_dict()
    assert list(state) == ["weight", "bias"]
    torch.testing.assert_close(state["weight"], linear.weight.detach() * mask)
    other = CSRLinear(_layer(seed=1)[0], mask)
    other.load_state_dict(state)
    torch.testing.assert_close(other.values, layer.values)
    torch.testing.assert_close(other.bias, layer.bias)
    with pytest.raises(RuntimeError, match="Missing key"):
        other.load_state_dict({"weight": state["weight"]})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        other.load_state_dict({**state, "values": layer.values})
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        other.load_state_dict({**state, "weight": torch.zeros(3, 3)})
    assert torch.equal(layer.mask(), mask)


@pytest.mark.parametrize(
    ("mask", "error", "words"),
    [
        (torch.ones(40, 24, dtype=torch.bool), ValueError, "(40, 24)"),  # same size, transposed
        (torch.ones(960, dtype=torch.bool), ValueError, "(960,)"),
        (torch.ones(24, 40), TypeError, "torch.float32"),
    ],
)
def test_a_mask_of_another_shape_or_dtype_is_refused(mask, error, words):
    linear, good = _layer()
    layer = CSRLinear(linear, good, name="hidden")
    before = layer.dense_weight()
    with pytest.raises(error, match=r"'hidden\.weight'") as info:
        layer.set_mask(mask)
    assert words in str(info.value)
    if error is ValueError:
        assert "(24, 40)" in str(info.value)
    torch.testing.assert_close(layer.dense_weight(), before)
    with pytest.raises(error, match=r"'weight'"):
        CSRLinear(linear, mask)


def test_top_k_breaks_ties_by_lowest_index():
    score = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 2.0, 0.0])
    assert sorted(top_k_first(score, 3).tolist()) == [0, 2, 4]
    assert sorted(top_k_first(score, 3, largest=False).tolist()) == [1, 2, 6]
    order = torch.tensor([0, 1, 9, 8, 2, 7, 3])
    assert sorted(top_k_first(score, 3, order=order).tolist()) == [0, 4, 5]
    assert sorted(top_k_first(score, 10).tolist()) == list(range(7))
    assert top_k_first(score, 0).numel() == 0


@pytest.mark.parametrize("kernels_on", [True, False])
@pytest.mark.parametrize("levels", [5, None])
def test_chunked_top_k_equals_the_full_top_k(monkeypatch, levels, kernels_on):
    if kernels_on and not kernels.available():
        pytest.skip(f"compiled kernels unavailable: {kernels.unavailable_reason()}")
    if not kernels_on:
        monkeypatch.setattr(kernels, "load", lambda: None)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(37, 11, generator=g).reshape(-1) * 2 - 1  # ranked by magnitude
    if levels:  # many ties, of both signs
        scores = (scores * levels).round()
    exclude = torch.randperm(scores.numel(), generator=g)[:150].sort().values
    full = scores.abs()
    full[exclude] = -float("inf")
    expected = set(top_k_first(full, 60).tolist())
    for entries in (11, 50, 10_000):
        monkeypatch.setattr(csr_linear, "_SCAN_ENTRIES", entries)
        got_scores, got = csr_linear._chunked_topk(
            37, 11, lambda r0, r1: scores[r0 * 11 : r1 * 11].clone(), exclude, 60)
        assert got.numel() == 60
        assert set(got.tolist()) == expected
        assert torch.equal(got_scores, scores.abs()[got])  # each with its magnitude


@pytest.mark.parametrize("case", range(12))
def test_the_kernels_scan_keeps_the_top_k_of_long_blocks(case):
    # blocks long enough for the first one's histogram bound, of lengths no multiple of 16,
    # with ties (also at the bound), infinities, signed zeros and excluded entries
    if not kernels.available():
        pytest.skip(f"compiled kernels unavailable: {kernels.unavailable_reason()}")
    g = torch.Generator().manual_seed(case)
    n = int(torch.randint(2_000, 40_000, (1,), generator=g))
    scores = torch.randn(n, generator=g) * 10 ** float(torch.randint(-3, 4, (1,), generator=g))
    if case % 3 == 1:
        scores = (scores * 4).round() / 4  # a few levels: many ties
    if case % 3 == 2:
        scores[torch.randint(0, n, (50,), generator=g)] = float("inf")
        scores[torch.randint(0, n, (50,), generator=g)] = -0.0
    exclude = torch.randperm(n, generator=g)[: n // 7].sort().values
    k = int(torch.randint(1, n // 3, (1,), generator=g))
    full = scores.abs()
    full[exclude] = -float("inf")
    expected = set(top_k_first(full, k).tolist())
    edges = sorted({0, n, *torch.randint(1, n, (3,), generator=g).tolist()})
    scan = kernels.TopKScan(k)
    for a, b in itertools.pairwise(edges):
        inside = exclude[(exclude >= a) & (exclude < b)]
        assert scan.add(scores[a:b].clone(), a, inside)
    got_scores, got = scan.result()
    assert set(got.tolist()) == expected
    assert torch.equal(got_scores, scores.abs()[got])


@pytest.mark.parametrize("levels", [None, 9])
def test_the_kernels_scan_keeps_the_same_top_k_on_any_number_of_threads(levels):
    # each thread ranks one range of a long block into its own buffer; ties between the
    # ranges of two threads go to the lowest flat index as on one thread
    if not kernels.available():
        pytest.skip(f"compiled kernels unavailable: {kernels.unavailable_reason()}")
    g = torch.Generator().manual_seed(7)
    n = 300_000
    scores = torch.randn(n, generator=g)
    if levels:
        scores = (scores * levels).round()
    exclude = torch.randperm(n, generator=g)[: n // 50].sort().values
    full = scores.abs()
    full[exclude] = -float("inf")
    threads = torch.get_num_threads()
    for k in (1, 500, 20_000):
        expected = set(top_k_first(full, k).tolist())
        for n_threads in (1, 2, 3, 5):
            torch.set_num_threads(n_threads)
            try:
                scan = kernels.TopKScan(k)
                for a in range(0, n, 70_000):
                    b = min(n, a + 70_000)
                    assert scan.add(scores[a:b], a, exclude[(exclude >= a) & (exclude < b)])
                got_scores, got = scan.result()
            finally:
                torch.set_num_threads(threads)
            assert set(got.tolist()) == expected, (k, n_threads)
            assert torch.equal(got_scores, scores.abs()[got])


@pytest.mark.parametrize("case", ["excluded at the top", "ties at a bin edge"])
def test_the_kernels_first_block_bound_keeps_what_may_be_chosen(case):
    # the first block's bound counts only entries that may be chosen, and keeps the entries
    # equal to the lower edge of its histogram bin (1.0 and 1.5 are such edges)
    if not kernels.available():
        pytest.skip(f"compiled kernels unavailable: {kernels.unavailable_reason()}")
    n = 4096
    if case == "excluded at the top":
        scores = 1 + torch.arange(n, dtype=torch.float32) / n  # 1 <= s < 2: eight bins
        exclude, k = torch.arange(n - 1000, n), 500  # the top bin's 512 all excluded
    else:
        scores = torch.full((n,), 0.5)
        scores[torch.arange(100) * 40] = 1.0
        scores[torch.arange(50) * 40 + 7] = -1.5
        exclude, k = torch.arange(0), 120
    full = scores.abs()
    full[exclude] = -float("inf")
    scan = kernels.TopKScan(k)
    assert scan.add(scores, 0, exclude)
    assert set(scan.result()[1].tolist()) == set(top_k_first(full, k).tolist())


def test_chunked_top_k_hands_over_to_torch_at_a_nan(monkeypatch):
    # the kernels rank the blocks before the first NaN; torch ranks that block and the
    # rest from what they kept, exactly as when torch ranks every block
    if not kernels.available():
        pytest.skip(f"compiled kernels unavailable: {kernels.unavailable_reason()}")
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(40, 10, generator=g).reshape(-1)
    scores[255] = float("nan")
    exclude = torch.randperm(scores.numel(), generator=g)[:90].sort().values
    exclude = exclude[exclude != 255]
    monkeypatch.setattr(csr_linear, "_SCAN_ENTRIES", 50)

    def run():
        return csr_linear._chunked_topk(
            40, 10, lambda r0, r1: scores[r0 * 10 : r1 * 10].clone(), exclude, 30)[1]

    with_kernels = run()
    monkeypatch.setattr(kernels, "load", lambda: None)
    assert set(with_kernels.tolist()) == set(run().tolist())
    assert 255 in with_kernels.tolist()


# ---------------------------------------------------- fit: the same training, step by step
@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("timing", ["mid_interval", "after_step"])
def test_csr_training_equals_masked_training_step_by_step(data, timing):
    X, y = data
    runs = {}
    for mode in ("masked", "csr"):
        rec = Recorder()
        clf = _clf(sparse_compute=mode, update_timing=timing, callbacks=[rec]).fit(X, y)
        runs[mode] = (clf, rec)
    (masked, rec_m), (csr, rec_c) = runs["masked"], runs["csr"]
    assert masked.sparse_compute_layers_ == []
    assert csr.sparse_compute_layers_ == ["layers.0", "layers.2"]
    assert rec_m.updates == rec_c.updates and rec_m.updates  # some topology updates happened
    assert len(rec_m.weights) == len(rec_c.weights) > rec_m.updates[-1]
    # the same topology after every step (with "after_step", both prune the weights the
    # optimizer step left), and the same weights up to rounding
    for step, (wm, wc, mm, mc) in enumerate(
        zip(rec_m.weights, rec_c.weights, rec_m.masks, rec_c.masks, strict=True), start=1
    ):
        assert all(torch.equal(mm[k], mc[k]) for k in mm), (
            step, {k: int((mm[k] != mc[k]).sum()) for k in mm})
        for key in wm:
            torch.testing.assert_close(wc[key], wm[key], rtol=0, atol=1e-10)
    assert _counts(masked.masks_) == _counts(csr.masks_)


class DropoutMLP(DoubleMLP):
    """:class:`DoubleMLP` with a dropout between its two sparse layers."""

    def __init__(self, input_shape, n_classes):
        super().__init__(input_shape, n_classes)
        hidden = list(self.layers)
        self.layers = nn.Sequential(*hidden[:2], nn.Dropout(0.3), *hidden[2:])


def test_a_dropout_between_csr_layers_draws_as_in_the_masked_path(data):
    # a dropout draws its mask in the memory order of its input: the CSR layer before it
    # must hand it a row-major output, as the masked layer does
    X, y = data
    runs = {}
    for mode in ("masked", "csr"):
        rec = Recorder()
        clf = _clf(sparse_compute=mode, module=DropoutMLP, max_epochs=1, callbacks=[rec])
        runs[mode] = (clf.fit(X, y), rec)
    (csr, rec_c), (_, rec_m) = runs["csr"], runs["masked"]
    assert csr.sparse_compute_layers_ == ["layers.0", "layers.3"]
    for wm, wc, mm, mc in zip(rec_m.weights, rec_c.weights, rec_m.masks, rec_c.masks,
                              strict=True):
        assert all(torch.equal(mm[k], mc[k]) for k in mm)
        for key in wm:
            torch.testing.assert_close(wc[key], wm[key], rtol=0, atol=1e-10)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("timing", ["mid_interval", "after_step"])
def test_set_regrowth_draws_the_same_topology(data, timing):
    # random regrowth draws its scores from the run's generator in the same order and
    # chunks as the masked path: the topologies (and so the weights) stay the same; after
    # the optimizer step, both prune the weights that step left
    X, y = data
    recs = {}
    for mode in ("masked", "csr"):
        recs[mode] = Recorder()
        _clf(sparse_compute=mode, regrow="random", update_timing=timing,
             callbacks=[recs[mode]]).fit(X, y)
    assert recs["masked"].updates == recs["csr"].updates and recs["masked"].updates
    for mm, mc, wm, wc in zip(recs["masked"].masks, recs["csr"].masks,
                              recs["masked"].weights, recs["csr"].weights, strict=True):
        assert all(torch.equal(mm[k], mc[k]) for k in mm)
        for key in wm:
            torch.testing.assert_close(wc[key], wm[key], rtol=0, atol=1e-9)


def test_fitted_state_is_the_masked_state(data, tmp_path):
    X, y = data
    params = dict(module="mlp", module_params={"hidden_layer_sizes": (64, 48)})
    masked = _clf(sparse_compute="masked", **params).fit(X, y)
    csr = _clf(sparse_compute="csr", **params).fit(X, y)
    assert csr.sparse_compute_layers_
    assert all(type(m) is not CSRLinear for m in csr.module_.modules())
    assert list(csr.module_.state_dict()) == list(masked.module_.state_dict())
    assert _counts(csr.masks_) == _counts(masked.masks_)
    for name, mask in csr.masks_.items():  # inactive weights are exactly zero
        assert not dict(csr.module_.named_parameters())[name].detach()[~mask].any()
    # the optimizer trains the dense module's parameters again
    opt_params = {id(p) for g in csr.optimizer_.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in csr.module_.parameters()}
    for p, state in csr.optimizer_.state.items():
        assert state["momentum_buffer"].shape == p.shape
    # save / load and pickle as for any fitted estimator
    csr.save(tmp_path / "m.rest")
    loaded = RESTClassifier.load(tmp_path / "m.rest")
    np.testing.assert_allclose(loaded.predict_proba(X), csr.predict_proba(X), rtol=1e-6)
    again = pickle.loads(pickle.dumps(csr))
    np.testing.assert_array_equal(again.predict(X), csr.predict(X))
    report = csr.sparsity_report()
    assert (report["n_active"] == [int(m.sum()) for m in masked.masks_.values()]).all()


class BestCopies(Callback):
    """At each epoch that becomes the best: whether its copies were still packed, and the
    copies against the live network's state and masks."""

    def on_train_begin(self, net, **kwargs):
        self.seen = []

    def on_epoch_end(self, net, *, record, run=None, **kwargs):
        if not record["best"]:
            return
        packed = "_pending" in vars(run.state)
        state, masks = run.state.best_module_state, run.state.best_masks
        live = net.module_.state_dict()
        same = list(state) == list(live) and all(
            torch.equal(state[k], live[k]) for k in live)
        live_masks = run.parts.sparsity.masks
        same_masks = list(masks) == list(live_masks.params) and all(
            torch.equal(masks[k], live_masks.mask(k)) for k in masks)
        self.seen.append((packed, same, same_masks))


@pytest.mark.parametrize("mode", ["masked", "csr"])
def test_the_best_epoch_copies_equal_the_network_and_a_csr_run_keeps_them_packed(data, mode):
    X, y = data
    copies = BestCopies()
    clf = _clf(sparse_compute=mode, validation_fraction=0.25, callbacks=[copies]).fit(X, y)
    assert copies.seen and all(same and same_masks for _, same, same_masks in copies.seen)
    assert all(packed for packed, _, _ in copies.seen)
    assert clf.best_epoch_ == len(copies.seen)  # the validation accuracy only rose


def test_a_packed_best_copy_loads_into_the_dense_network_as_its_dense_state():
    # the copy is taken, the CSR layers then change pattern and weights and go back to
    # dense layers; loading the copy in place gives what loading its dense state gives
    net = build_module("mlp", input_shape=(30,), n_classes=3,
                       module_params={"hidden_layer_sizes": (64, 48)})
    engine = make_sparse_compute(net, _engine(net), mode="csr", threshold=0.3)
    assert engine.layers
    best = engine.best_copy(net)
    state_then, masks_then = copy.deepcopy(net.state_dict()), engine.masks.to_dict()
    step = next(s for s in range(1, 50) if engine.is_update_step(s))
    engine.prepare_step(step)
    nn.functional.cross_entropy(net(torch.randn(8, 30)), torch.randint(0, 3, (8,))).backward()
    assert engine.before_step(step) > 0
    with torch.no_grad():
        for layer in engine.layers.values():
            layer.values.mul_(3.0)
    engine.finish()
    assert not all(torch.equal(net.state_dict()[k], v) for k, v in state_then.items())
    twin = copy.deepcopy(net)
    best.load_into(net)
    twin.load_state_dict(best.module_state())
    for key, value in state_then.items():
        assert torch.equal(net.state_dict()[key], value)
        assert torch.equal(twin.state_dict()[key], value)
    assert all(torch.equal(best.masks()[k], m) for k, m in masks_then.items())
    with pytest.raises(RuntimeError, match="does not fit the network"):
        best.load_into(nn.Sequential(nn.Linear(30, 64)))


class StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, *, epoch, **kwargs):
        if epoch == self.epoch:
            self.module = net.module_  # the live module, which the fit then drops
            raise KeyboardInterrupt


def test_checkpoints_of_a_csr_run_resume_in_either_mode(data, tmp_path):
    X, y = data
    params = dict(max_epochs=4, module="mlp", module_params={"hidden_layer_sizes": (64, 48)},
                  validation_fraction=0.2)
    whole = _clf(sparse_compute="csr", **params).fit(X, y)
    with pytest.raises(KeyboardInterrupt):
        _clf(sparse_compute="csr", callbacks=[StopAt(3), Checkpoint(tmp_path)],
             **params).fit(X, y)
    stop = StopAt(3)
    interrupted = _clf(sparse_compute="csr", callbacks=[stop], **params)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(X, y)
    # a failed fit leaves the live module dense (a warm start's is restored from it), and
    # the estimator unfitted
    assert all(type(m) is not CSRLinear for m in stop.module.modules())
    assert not hasattr(interrupted, "module_")

    # the checkpoint has the masked format: dense weights and dense optimizer state
    state = read_checkpoint(tmp_path)
    shapes = {k: tuple(v.shape) for k, v in whole.module_.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state["module"].items()} == shapes
    weight_shapes = [tuple(p.shape) for p in whole.module_.parameters()]
    saved = state["optimizer"]["state"]
    assert [tuple(saved[i]["momentum_buffer"].shape) for i in sorted(saved)] == weight_shapes

    resumed = _clf(sparse_compute="csr", **params).fit(X, y, resume_from=tmp_path)
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3, 4]
    for key, value in whole.module_.state_dict().items():
        torch.testing.assert_close(resumed.module_.state_dict()[key], value)
    assert all(torch.equal(resumed.masks_[k], whole.masks_[k]) for k in whole.masks_)

    by_masked = _clf(sparse_compute="masked", **params).fit(X, y, resume_from=tmp_path)
    assert _counts(by_masked.masks_) == _counts(whole.masks_)
    assert by_masked.n_train_steps_ == whole.n_train_steps_


def test_warm_start_and_bf16_precision(data):
    X, y = data
    clf = _clf(sparse_compute="csr", module="mlp", precision="bf16",
               module_params={"hidden_layer_sizes": (64, 48)}).fit(X, y)
    assert clf.sparse_compute_layers_
    assert np.isfinite(clf.predict_proba(X)).all()
    counts = _counts(clf.masks_)
    clf.set_params(warm_start=True, precision="32").fit(X, y)
    assert len(clf.history_) == 6
    assert _counts(clf.masks_) == counts


# ------------------------------------------------------------------ choosing the layers
def _engine(module, sparsity=0.95, seed=0):
    masks = MaskSet.from_module(module, density=1 - sparsity,
                                generator=torch.Generator().manual_seed(seed))
    masks.apply_()
    return DynamicSparsity(masks, schedule=DropSchedule(0.3, 100), update_interval=10)


def test_auto_converts_only_the_layers_measured_faster(monkeypatch):
    net = build_module("mlp", input_shape=(30,), n_classes=3,
                       module_params={"hidden_layer_sizes": (64, 48)})
    engine = _engine(net)
    names = [name for name, _, _ in candidate_layers(net, engine.masks, 0.3)]
    assert names == ["layers.1", "layers.3"]

    def fake(shape, nnz, batch_size, **kwargs):
        return LayerTiming(masked=1.0, csr=0.5 if shape == (48, 64) else 0.95)

    monkeypatch.setattr(compute, "measure_layer", fake)
    # the output layer, behind layers.3, is timed as the end of its chain: slower here
    monkeypatch.setattr(compute, "measure_chain_link",
                        lambda *args, **kwargs: LayerTiming(masked=1.0, csr=2.0))
    timings = {}
    out = make_sparse_compute(net, engine, mode="auto", threshold=0.3, timings=timings)
    assert isinstance(out, CSRDynamicSparsity)
    assert out.converted == ("layers.3",)  # 0.95 of the masked time is within the margin
    assert set(timings) == {"layers.1", "layers.3"} | (
        {"layers.5"} if kernels.available() else set())
    assert type(net.layers[3]) is CSRLinear and type(net.layers[1]) is nn.Linear
    out.finish()
    assert type(net.layers[3]) is nn.Linear


@pytest.mark.parametrize("chained_time", [0.9, 1.1])
def test_auto_converts_a_layer_that_ends_a_chain_when_the_chained_pair_is_faster(
        monkeypatch, chained_time):
    # the second layer is slower alone in CSR form; behind a CSR layer and its ReLU it
    # would join that layer's chain, so the pair is timed both ways; the output layer,
    # denser than the threshold (never timed alone), is timed in the chain behind it
    if not kernels.available():
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    net = build_module("mlp", input_shape=(30,), n_classes=3,
                       module_params={"hidden_layer_sizes": (64, 48)})
    engine = _engine(net)
    pairs = []

    def alone(shape, nnz, batch_size, **kwargs):
        return LayerTiming(masked=1.0, csr=0.5 if shape == (64, 30) else 2.0)

    def chained(before, shape, nnz, batch_size, **kwargs):
        pairs.append((before[0], shape, batch_size))
        return LayerTiming(masked=1.0, csr=chained_time)

    monkeypatch.setattr(compute, "measure_layer", alone)
    monkeypatch.setattr(compute, "measure_chain_link", chained)
    timings = {}
    out = make_sparse_compute(net, engine, mode="auto", threshold=0.3, batch_size=16,
                              timings=timings)
    head_density = float(engine.masks.mask("layers.5.weight").float().mean())
    assert 0.3 < head_density < 1
    if chained_time < 1:  # layers.3 behind layers.1, then layers.5 behind layers.3
        assert pairs == [((64, 30), (48, 64), 16), ((48, 64), (3, 48), 16)]
        assert out.converted == ("layers.1", "layers.3", "layers.5")
        assert timings["layers.5"] == LayerTiming(1.0, chained_time)
    else:
        assert pairs == [((64, 30), (48, 64), 16)]
        assert out.converted == ("layers.1",)
    assert set(timings) == {"layers.1", "layers.3"} | (
        {"layers.5"} if chained_time < 1 else set())
    assert timings["layers.3"] == LayerTiming(1.0, chained_time)
    out.finish()
    # "csr" converts by the threshold alone
    out = make_sparse_compute(net, engine, mode="csr", threshold=0.3)
    assert out.converted == ("layers.1", "layers.3")
    out.finish()


def test_a_layer_behind_a_hooked_relu_ends_no_chain(monkeypatch):
    net = build_module("mlp", input_shape=(30,), n_classes=3,
                       module_params={"hidden_layer_sizes": (64, 48)})
    net.layers[2].register_forward_hook(lambda *args: None)
    engine = _engine(net)
    monkeypatch.setattr(compute, "measure_layer", lambda shape, *args, **kwargs: LayerTiming(
        masked=1.0, csr=0.5 if shape == (64, 30) else 2.0))
    monkeypatch.setattr(compute, "measure_chain_link", lambda *args, **kwargs: pytest.fail())
    out = make_sparse_compute(net, engine, mode="auto", threshold=0.3)
    assert out.converted == ("layers.1",)
    out.finish()


def test_measure_chain_link_times_both_pairs_and_is_cached():
    if not kernels.available():
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    state = torch.get_rng_state()
    timing = measure_chain_link(((32, 40), 64), (8, 32), 40, 24, repeats=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert 0 < timing.masked < math.inf and 0 < timing.csr < math.inf
    assert measure_chain_link(((32, 40), 64), (8, 32), 40, 24, repeats=2) is timing


def test_measure_layer_is_cached_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    timing = measure_layer((32, 40), 64, 16, repeats=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert timing.masked > 0 and timing.csr > 0
    assert measure_layer((32, 40), 64, 16, repeats=2) is timing


def test_masked_mode_convolutions_and_errors():
    net = build_module("cnn", input_shape=(3, 16, 16), n_classes=3,
                       module_params={"widths": (8, 16, 32)})
    engine = _engine(net, sparsity=0.99)
    assert [n for n, _, _ in candidate_layers(net, engine.masks, 1.0)] == ["classifier"]
    assert make_sparse_compute(net, engine, mode="masked") is engine
    assert make_sparse_compute(net, None, mode="csr") is None
    with pytest.raises(ValueError, match="sparse_compute must be one of"):
        make_sparse_compute(net, engine, mode="sparse")
    with pytest.raises(ValueError, match="sparse_compute_threshold"):
        make_sparse_compute(net, engine, mode="csr", threshold=1.5)
    with pytest.raises(ValueError, match="16-mixed"):
        make_sparse_compute(net, engine, mode="csr", grad_scaling=True)
    with pytest.raises(ValueError, match="CPU or CUDA"):
        make_sparse_compute(net, engine, mode="csr", device="meta")
    assert make_sparse_compute(net, engine, mode="auto", grad_scaling=True) is engine
    with pytest.raises(ValueError, match="data-parallel"):
        make_sparse_compute(net, engine, mode="csr", distributed=True)
    assert make_sparse_compute(net, engine, mode="auto", distributed=True) is engine
    with pytest.raises(ValueError, match="sparse_compute"):
        RESTClassifier(sparse_compute="sparse").fit(np.zeros((4, 2)), [0, 1, 0, 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_csr_refuses_cpu_layers_of_a_dtype_without_sparse_products(dtype):
    net = build_module("mlp", input_shape=(30,), n_classes=3,
                       module_params={"hidden_layer_sizes": (64, 48)})
    engine = _engine(net)
    net.to(dtype)
    with pytest.raises(ValueError, match=rf"'layers\.1' \({dtype}\).*sparse_compute='masked'"):
        make_sparse_compute(net, engine, mode="csr", threshold=0.3)
    assert make_sparse_compute(net, engine, mode="masked") is engine


def test_an_update_step_without_its_plan_is_refused():
    net = build_module("mlp", input_shape=(30,), n_classes=3,
                       module_params={"hidden_layer_sizes": (64, 48)})
    engine = make_sparse_compute(net, _engine(net), mode="csr", threshold=0.3)
    step = next(s for s in range(1, 50) if engine.is_update_step(s))
    net(torch.randn(4, 30)).sum().backward()
    with pytest.raises(RuntimeError, match="prepare_step"):
        engine.before_step(step)
    engine.prepare_step(step)
    with pytest.raises(RuntimeError, match="not used in the forward pass"):
        engine.before_step(step)


class Rank0:
    """A data-parallel synchronisation whose rank 0 decided differently."""

    def __init__(self, masks):
        self.masks, self.calls, self.decided = masks, [], {}

    def check_masks(self, masks, *, when):
        self.calls.append(when.split(" the ")[0])

    def broadcast_decision(self, decisions):
        self.calls.append("broadcast")
        g = torch.Generator().manual_seed(1)
        for name, (new_mask, _) in decisions.items():
            other = torch.zeros(new_mask.numel(), dtype=torch.bool)
            other[torch.randperm(new_mask.numel(), generator=g)[: int(new_mask.sum())]] = True
            other = other.view_as(new_mask)
            grown = (other & ~self.masks.mask(name)).reshape(-1).nonzero()[:, 0]
            self.decided[name] = (other, grown)
        return dict(self.decided)


def test_csr_layers_update_through_the_data_parallel_synchronisation():
    # the CSR layers take the masked path's update: masks checked before and after, and
    # the decision applied is the one the synchronisation returns
    net = build_module("mlp", input_shape=(30,), n_classes=3,
                       module_params={"hidden_layer_sizes": (64, 48)})
    engine = make_sparse_compute(net, _engine(net), mode="csr", threshold=0.3)
    assert set(engine.layers) == {"layers.1.weight", "layers.3.weight"}
    engine.sync = sync = Rank0(engine.masks)
    step = next(s for s in range(1, 50) if engine.is_update_step(s))
    engine.prepare_step(step)
    nn.functional.cross_entropy(net(torch.randn(8, 30)), torch.randint(0, 3, (8,))).backward()
    before, masks_before = copy.deepcopy(net.state_dict()), engine.masks.to_dict()
    assert engine.before_step(step) > 0
    assert sync.calls == ["before", "broadcast", "after"]
    assert set(sync.decided) == set(engine.masks.names)
    after = net.state_dict()
    for name, (new_mask, grown) in sync.decided.items():
        assert torch.equal(engine.masks.mask(name), new_mask)
        kept = new_mask & masks_before[name]
        kept.view(-1)[grown] = False
        assert torch.equal(after[name][kept], before[name][kept])
        assert not after[name].view(-1)[grown].any()
        assert not after[name][~new_mask].any()


def test_a_resumed_auto_run_converts_the_layers_its_checkpoint_used(data, tmp_path,
                                                                      monkeypatch):
    # "auto" decides from a timing; a resumed run must not decide again (another process
    # may time differently), so it takes the converted layers from the checkpoint
    X, y = data
    params = dict(max_epochs=3, module="mlp", module_params={"hidden_layer_sizes": (64, 48)})

    def timing(csr_faster):
        def fake(shape, nnz, batch_size, **kwargs):
            return LayerTiming(masked=1.0, csr=0.5 if csr_faster else 2.0)
        return fake

    monkeypatch.setattr(compute, "measure_layer", timing(True))
    whole = _clf(sparse_compute="auto", **params).fit(X, y)
    assert whole.sparse_compute_layers_
    with pytest.raises(KeyboardInterrupt):
        _clf(sparse_compute="auto", callbacks=[StopAt(2), Checkpoint(tmp_path)],
             **params).fit(X, y)
    assert read_checkpoint(tmp_path)["sparse_compute_layers"] == whole.sparse_compute_layers_
    monkeypatch.setattr(compute, "measure_layer", timing(False))
    assert _clf(sparse_compute="auto", **params).fit(X, y).sparse_compute_layers_ == []
    resumed = _clf(sparse_compute="auto", **params).fit(X, y, resume_from=tmp_path)
    assert resumed.sparse_compute_layers_ == whole.sparse_compute_layers_
    for key, value in whole.module_.state_dict().items():
        torch.testing.assert_close(resumed.module_.state_dict()[key], value)


def test_auto_times_each_layer_at_the_rows_it_multiplies(monkeypatch):
    # a linear layer applied to every position of a sequence multiplies batch x length rows
    class PerToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(30, 64)
            self.head = nn.Linear(64, 3)

        def forward(self, x):  # x: (batch, length, 30)
            return self.head(torch.relu(self.proj(x)).mean(dim=1))

    net = PerToken()
    engine = _engine(net, sparsity=0.95)
    assert compute.layer_rows(net, ["proj", "head"], torch.randn(4, 7, 30)) == {
        "proj": 28, "head": 4}
    assert net.training  # the timing pass leaves the mode as it was
    seen = {}

    def fake(shape, nnz, batch_size, **kwargs):
        seen[shape] = batch_size
        return LayerTiming(masked=1.0, csr=2.0)

    monkeypatch.setattr(compute, "measure_layer", fake)
    make_sparse_compute(net, engine, mode="auto", threshold=1.0, batch_size=4,
                        example=lambda: torch.randn(4, 7, 30))
    assert seen[(64, 30)] == 28
    make_sparse_compute(net, engine, mode="auto", threshold=1.0, batch_size=4)
    assert seen[(64, 30)] == 4
    # two samples standing for a batch of 12 samples of the same shape
    make_sparse_compute(net, engine, mode="auto", threshold=1.0, batch_size=12,
                        example=lambda: torch.randn(2, 7, 30), example_scale=6.0)
    assert seen[(64, 30)] == 84 and seen[(3, 64)] == 12


def test_auto_in_fit_times_layers_at_the_training_batch_rows(monkeypatch):
    # array inputs: a two-sample example stands for the batch; a token layer sees 5 rows each
    class PerToken(nn.Module):
        def __init__(self, input_shape, n_classes):
            super().__init__()
            self.proj = nn.Linear(input_shape[-1], 64)
            self.head = nn.Linear(64, n_classes)

        def forward(self, x):
            return self.head(torch.relu(self.proj(x)).mean(dim=1))

    seen, examples = {}, []

    def fake(shape, nnz, batch_size, **kwargs):
        seen[shape] = batch_size
        return LayerTiming(masked=1.0, csr=2.0)

    rows = compute.layer_rows
    monkeypatch.setattr(compute, "measure_layer", fake)
    monkeypatch.setattr(compute, "layer_rows",
                        lambda m, names, x: examples.append(x.shape[0]) or rows(m, names, x))
    X = np.random.default_rng(0).normal(size=(100, 5, 30)).astype(np.float32)
    _clf(module=PerToken, sparse_compute="auto", batch_size=24, max_epochs=1,
         sparse_compute_threshold=1.0).fit(X, np.arange(100) % 3)
    assert examples == [2]
    assert seen[(64, 30)] == 24 * 5 and seen[(3, 64)] == 24


def test_a_cnn_trains_its_sparse_classifier_in_csr_form_like_the_masked_path():
    # convolutions stay masked; the linear classifier behind them may train in CSR form
    X = np.random.default_rng(0).normal(size=(96, 3, 12, 12)).astype(np.float32)
    y = np.arange(96) % 3
    params = dict(module="cnn", module_params={"widths": (4, 8, 16)}, sparsity=0.99,
                  max_epochs=2, batch_size=16, random_state=0, device="cpu",
                  validation_fraction=0.0, sparse_compute_threshold=0.5)
    masked = RESTClassifier(sparse_compute="masked", **params).fit(X, y)
    csr = RESTClassifier(sparse_compute="csr", **params).fit(X, y)
    assert csr.sparse_compute_layers_ == ["classifier"]
    assert _counts(csr.masks_) == _counts(masked.masks_)
    np.testing.assert_allclose(csr.predict_proba(X), masked.predict_proba(X), atol=1e-4)


@pytest.mark.parametrize("native", [True, False])
def test_a_relu_fused_into_its_csr_layer_trains_bitwise_as_the_relu_module(
        data, monkeypatch, native):
    if native and not kernels.available():
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    if not native:
        monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    X, y = data
    params = dict(module="mlp", module_params={"hidden_layer_sizes": (64, 48)},
                  sparse_compute="csr", update_interval=5)
    runs = {}
    for fuse in (True, False):
        with monkeypatch.context() as patch:
            if not fuse:
                patch.setattr(csr_engine, "_fuse_relus", lambda module: {})
            rec, live = Recorder(), LiveLayers()
            clf = _clf(callbacks=[rec, live], **params).fit(X, y)
            runs[fuse] = (clf, rec)
            rec.live = live
    (fused, rec_f), (plain, rec_p) = runs[True], runs[False]
    assert fused.sparse_compute_layers_ == ["layers.1", "layers.3"]
    # the fused run trained with the ReLUs inside the CSR layers, the other with nn.ReLU
    assert rec_f.live.relu_output == [True, True] and rec_p.live.relu_output == [False, False]
    assert rec_f.live.types.count("FusedReLU") == 2 and "FusedReLU" not in rec_p.live.types
    assert rec_f.updates == rec_p.updates and rec_f.updates
    for wf, wp in zip(rec_f.weights, rec_p.weights, strict=True):
        for key in wf:
            assert torch.equal(wf[key], wp[key]), key
    assert np.array_equal(fused.predict_proba(X), plain.predict_proba(X))
    # the fitted module holds its own ReLU modules again
    assert [type(m) for m in fused.module_.layers] == [type(m) for m in plain.module_.layers]
    assert sum(type(m) is nn.ReLU for m in fused.module_.layers) == 2


class ChainCalls(Callback):
    """The live container of the layers, and the chain's autograd nodes in the first step."""

    def on_epoch_begin(self, net, *, run, **kwargs):
        self.container = type(run.parts.module.layers).__name__

    def on_batch_end(self, net, *, run, step, **kwargs):
        if step == 1:
            out = run.parts.module(torch.zeros(3, 30))
            self.nodes = _node_names(out.grad_fn)


def _node_names(node, seen=None):
    seen = set() if seen is None else seen
    if node is None or node in seen:
        return []
    seen.add(node)
    return [type(node).__name__] + [name for parent, _ in node.next_functions
                                    for name in _node_names(parent, seen)]


@pytest.mark.parametrize(("module", "regrow", "timing", "dtype"), [
    (DoubleMLP, "gradient", "mid_interval", "float64"),
    (DoubleMLP, "random", "after_step", "float64"),
    ("mlp", "gradient", "mid_interval", "float32"),
])
def test_a_chain_of_csr_layers_trains_bitwise_as_the_layers_one_by_one(
        data, monkeypatch, module, regrow, timing, dtype):
    # three sparse hidden layers run as one autograd node (panels passed between them);
    # batches of 24 leave 8 padding samples in a panel of 32 float32 or 16 float64 lanes
    if not kernels.available():
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    X, y = data
    hidden = (64, 48, 32)
    params = dict(module=module, sparse_compute="csr", update_interval=5, regrow=regrow,
                  update_timing=timing, batch_size=24,
                  module_params={"hidden" if module is DoubleMLP else
                                 "hidden_layer_sizes": hidden})
    runs = {}
    for linked in (True, False):
        with monkeypatch.context() as patch:
            if not linked:
                patch.setattr(csr_engine, "link_chains", lambda module: {})
            rec, calls = Recorder(), ChainCalls()
            clf = _clf(callbacks=[rec, calls], **params).fit(X, y)
            runs[linked] = (clf, rec, calls)
    (chained, rec_c, calls_c), (plain, rec_p, calls_p) = runs[True], runs[False]
    first = 0 if module is DoubleMLP else 1  # the estimator's MLP starts with a Flatten
    assert chained.sparse_compute_layers_ == [f"layers.{first + i}" for i in (0, 2, 4)]
    assert calls_c.container == "LinkedSequential" and calls_p.container == "Sequential"
    assert calls_c.nodes.count("_ChainFunctionBackward") == 1
    assert "_CSRFunctionBackward" not in calls_c.nodes
    assert calls_p.nodes.count("_CSRFunctionBackward") == 3
    assert rec_c.updates == rec_p.updates and rec_c.updates
    assert chained.module_.layers[first].weight.dtype == getattr(torch, dtype)
    for wc, wp in zip(rec_c.weights, rec_p.weights, strict=True):
        for key in wc:
            assert torch.equal(wc[key], wp[key]), key
    for mc, mp in zip(rec_c.masks, rec_p.masks, strict=True):
        for key in mc:
            assert torch.equal(mc[key], mp[key]), key
    assert np.array_equal(chained.predict_proba(X), plain.predict_proba(X))
    # the fitted module holds its own nn.Sequential again
    assert type(chained.module_.layers) is nn.Sequential


class HookOnLiveLayer(ChainCalls):
    """Hooks the middle CSR layer of the live network when training begins."""

    def on_train_begin(self, net, *, run, **kwargs):
        self.seen = []
        layer = run.parts.module.layers[2]
        assert isinstance(layer, CSRLinear)
        layer.register_forward_hook(lambda mod, inputs, out: self.seen.append(1))


def test_a_chain_whose_layer_has_a_hook_runs_layer_by_layer(data):
    X, y = data
    calls = HookOnLiveLayer()
    _clf(module=DoubleMLP, module_params={"hidden": (64, 48, 32)}, sparse_compute="csr",
         max_epochs=1, callbacks=[calls]).fit(X, y)
    assert calls.container == "LinkedSequential"
    assert len(calls.seen) >= 400 // 32  # the hooked layer ran in every training step
    assert "_ChainFunctionBackward" not in calls.nodes
    assert calls.nodes.count("_CSRFunctionBackward") == 3


def test_a_relu_with_a_hook_is_not_fused(data):
    X, y = data
    module = DoubleMLP((30,), 3)
    seen = []
    module.layers[1].register_forward_hook(lambda mod, inputs, out: seen.append(1))
    _clf(module=module, sparse_compute="csr", max_epochs=1).fit(X, y)
    assert len(seen) >= 400 // 32  # the hooked ReLU ran in every training step


# ------------------------------------------------- layers a CSR layer cannot stand in for
class _Reused(nn.Module):
    """An MLP whose ``mid`` weights are used twice: ``"twice"`` calls the layer twice,
    ``"tied"`` shares its weight with ``tied``, ``"direct"`` reads it with F.linear."""

    def __init__(self, input_shape, n_classes, how="twice"):
        super().__init__()
        self.how = how
        self.inp = nn.Linear(int(np.prod(input_shape)), 64)
        self.mid = nn.Linear(64, 64)
        self.tied = nn.Linear(64, 64)
        self.tied.weight = self.mid.weight
        self.out = nn.Linear(64, n_classes)
        self.double()

    def forward(self, x):
        h = torch.relu(self.inp(x.double()))
        if self.how == "direct":
            h = torch.relu(nn.functional.linear(h, self.mid.weight, self.mid.bias))
        else:
            h = torch.relu(self.mid(h))
            h = torch.relu((self.mid if self.how == "twice" else self.tied)(h))
        return self.out(h)


@pytest.mark.parametrize("how", ["twice", "tied", "direct"])
@pytest.mark.parametrize("mode", ["csr", "auto"])
def test_a_layer_whose_weights_are_used_twice_or_read_directly_stays_masked(
        data, monkeypatch, how, mode):
    # such a layer crashed a CSR run (at its first update, or at its first forward pass)
    X, y = data
    monkeypatch.setattr(compute, "measure_layer",
                        lambda *args, **kwargs: LayerTiming(masked=1.0, csr=0.1))
    kwargs = dict(module=_Reused, module_params={"how": how}, max_epochs=2,
                  sparse_compute_threshold=1.0)
    clf = _clf(sparse_compute=mode, **kwargs).fit(X, y)
    assert clf.sparse_compute_layers_ == ["inp", "out"]
    masked = _clf(sparse_compute="masked", **kwargs).fit(X, y)
    assert list(clf.masks_) == list(masked.masks_) == ["inp.weight", "mid.weight", "out.weight"]
    assert clf.module_.tied.weight is clf.module_.mid.weight
    for key, mask in clf.masks_.items():
        weight = clf.module_.get_parameter(key)
        assert not weight[~mask].any()
        assert torch.equal(mask, masked.masks_[key])
        torch.testing.assert_close(weight, masked.module_.get_parameter(key), rtol=1e-10,
                                   atol=1e-10)


def test_a_tied_layer_is_no_candidate_without_an_example():
    net = _Reused((30,), 3, how="tied")
    engine = _engine(net, sparsity=0.9)
    assert [name for name, _, _ in candidate_layers(net, engine.masks, 1.0)] == ["inp", "out"]
    shared = nn.Linear(64, 64)
    twice = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), shared, nn.ReLU(), shared)
    engine = _engine(twice, sparsity=0.9)
    assert [name for name, _, _ in candidate_layers(twice, engine.masks, 1.0)] == ["0"]


def test_csr_tensors_leave_other_warnings_alone(monkeypatch):
    # a warning given while a CSR tensor is built (by another thread, here simulated by
    # torch itself) is shown: only torch's one-time "beta" warning is filtered
    from rest_fair.sparse import csr_linear

    real = torch.sparse_csr_tensor

    def noisy(*args, **kwargs):
        warnings.warn("a warning of another thread", UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "sparse_csr_tensor", noisy)
    crow = torch.tensor([0, 1], dtype=torch.int32)
    col = torch.tensor([0], dtype=torch.int32)
    for _ in range(2):  # the first call of the process and a later one
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            matrix = csr_linear._csr(crow, col, torch.ones(1), (1, 1))
        assert matrix.to_dense().tolist() == [[1.0]]
        assert [str(w.message) for w in caught] == ["a warning of another thread"]
