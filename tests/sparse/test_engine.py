"""The sparse engine: ERK densities, masks, prune-and-regrow, schedules."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rest_fair.sparse import (
    DropSchedule,
    DynamicSparsity,
    MaskSet,
    active_counts,
    erk_densities,
    maskable_parameters,
    prune_and_regrow,
    uniform_densities,
    update_topology,
)
from rest_fair.sparse import masks as masks_module

SHAPES = {
    "conv1": (64, 3, 4, 4),
    "conv2": (128, 64, 4, 4),
    "conv3": (256, 128, 4, 4),
    "fc": (10, 256),
}


def _total(shapes, densities):
    return sum(densities[n] * math.prod(s) for n, s in shapes.items())


def test_erk_matches_formula_and_target():
    density = 0.1
    d = erk_densities(SHAPES, density)
    n_total = sum(math.prod(s) for s in SHAPES.values())
    assert _total(SHAPES, d) == pytest.approx(density * n_total, rel=1e-12)
    dense = [n for n in SHAPES if d[n] == 1.0]
    sparse = [n for n in SHAPES if d[n] < 1.0]
    # re-solve eps by hand from the layers that stayed sparse
    budget = density * n_total - sum(math.prod(SHAPES[n]) for n in dense)
    eps = budget / sum(sum(SHAPES[n]) for n in sparse)  # raw * numel == sum(shape)
    for n in sparse:
        assert d[n] == pytest.approx(eps * sum(SHAPES[n]) / math.prod(SHAPES[n]), rel=1e-12)


def test_erk_makes_small_layers_dense_and_resolves():
    shapes = {"tiny": (10, 3), "big": (1000, 1000)}
    d = erk_densities(shapes, 0.05)
    assert d["tiny"] == 1.0  # eps * 13/30 would exceed 1
    assert d["big"] == pytest.approx((0.05 * 1_000_030 - 30) / 1_000_000)
    assert _total(shapes, d) == pytest.approx(0.05 * 1_000_030)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=6
    ),
    density=st.floats(0.001, 1.0),
)
def test_erk_property(shapes, density):
    shapes = {f"l{i}": s for i, s in enumerate(shapes)}
    d = erk_densities(shapes, density)
    assert all(0 < v <= 1.0 + 1e-12 for v in d.values())
    n_total = sum(math.prod(s) for s in shapes.values())
    assert _total(shapes, d) == pytest.approx(density * n_total, rel=1e-9)


def test_uniform_densities():
    assert set(uniform_densities(SHAPES, 0.2).values()) == {0.2}
    with pytest.raises(ValueError, match="density"):
        uniform_densities(SHAPES, 0.0)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 5),
    )


def test_maskable_parameters_are_conv_and_linear_weights_only():
    names = [n for n, _ in maskable_parameters(_net())]
    assert names == ["0.weight", "4.weight", "6.weight"]


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_random_masks_have_exact_counts_and_zero_weights(distribution):
    net = _net()
    masks = MaskSet.from_module(net, density=0.2, layer_density=distribution,
                                generator=torch.Generator().manual_seed(0))
    masks.apply_()
    shapes = {n: tuple(p.shape) for n, p in maskable_parameters(net)}
    fn = erk_densities if distribution == "erk" else uniform_densities
    expected = active_counts(shapes, fn(shapes, 0.2))
    assert masks.n_active() == expected
    for name, p in masks.params.items():
        assert torch.all(p[~masks.mask(name)] == 0)
    assert net[1].weight.abs().sum() > 0  # BatchNorm untouched


@pytest.mark.cuda
def test_apply_follows_weights_moved_to_the_gpu_after_it_ran():
    # apply_ keeps its multipliers between calls: they must follow the weights to the
    # GPU (a multiplier left on the CPU cannot multiply a CUDA weight)
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    masks = MaskSet.from_module(net, density=0.5, generator=torch.Generator().manual_seed(0))
    masks.apply_()
    net.cuda()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    masks.apply_()
    assert torch.equal(net[0].weight.cpu(), masks.mask("0.weight").float())


def test_apply_multiplies_by_the_current_mask_in_the_weights_current_dtype():
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    masks = MaskSet.from_module(net, density=0.5, generator=torch.Generator().manual_seed(0))
    before = {name: p.detach().clone() for name, p in masks.params.items()}
    new = torch.zeros(5, 6, dtype=torch.bool)
    new[:, 0] = True
    masks.set_mask("0.weight", new)  # before any apply_: this mask is the one applied
    masks.apply_()
    assert torch.equal(net[0].weight, before["0.weight"] * new)
    assert torch.equal(net[2].weight, before["2.weight"] * masks.mask("2.weight"))
    net.double()  # the weights change dtype after the masks were set
    masks.params = dict(maskable_parameters(net))
    masks.set_mask("0.weight", torch.ones(5, 6, dtype=torch.bool))
    masks.apply_()
    assert net[0].weight.dtype == torch.float64
    assert torch.equal(net[0].weight, (before["0.weight"] * new).double())
    assert torch.equal(net[2].weight,
                       (before["2.weight"] * masks.mask("2.weight")).double())


def test_layers_kept_at_one_active_weight_are_named_when_the_network_gets_denser():
    # a 4-8-2 MLP at density 0.01 asks for 0.48 weights; each layer keeps one, so the
    # network ended up at density 0.042 without a word
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match=r"density 0.01 asks for 0.48 of the 48 masked "
                      r"weights.*'0.weight', '2.weight' would have none: 2 weights are "
                      r"active, density 0.0417"):
        masks = MaskSet.from_module(net, density=0.01)
    assert sum(masks.n_active().values()) == 2


def test_no_word_where_the_minimum_of_one_weight_changes_little():
    import warnings

    net = nn.Sequential(nn.Linear(400, 200), nn.ReLU(), nn.Linear(200, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the output layer rounds to no weight at 0.001 and keeps one: 81 active for 80.4
        MaskSet.from_module(net, density=0.001, layer_density="uniform")
        MaskSet.from_module(net, density=0.5)


def test_prune_removes_smallest_active_and_rigl_regrows_largest_gradient():
    weight = torch.tensor([5.0, -0.1, 3.0, 0.2, -4.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    grad = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -9.0, 1.0, 7.0])
    new, dropped, grown = prune_and_regrow(weight, mask, 2, regrow="gradient", grad=grad)
    assert set(dropped.tolist()) == {1, 3}  # |w| = 0.1 and 0.2 are the smallest active
    assert set(grown.tolist()) == {5, 7}  # |grad| = 9 and 7 are the largest inactive
    assert new.tolist() == [True, False, True, False, True, True, False, True]
    assert int(new.sum()) == int(mask.sum())


def test_rigl_can_regrow_a_just_pruned_weight_if_its_gradient_is_largest():
    weight = torch.tensor([1.0, 2.0, 0.0])
    mask = torch.tensor([True, True, False])
    grad = torch.tensor([50.0, 0.0, 1.0])
    new, dropped, grown = prune_and_regrow(weight, mask, 1, regrow="gradient", grad=grad)
    assert dropped.tolist() == [0] and grown.tolist() == [0]
    assert new.tolist() == [True, True, False]


def test_set_regrows_random_inactive_positions_reproducibly():
    weight = torch.randn(1000)
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[:100] = True
    outs = [
        prune_and_regrow(weight, mask, 30, regrow="random",
                         generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(outs[0][0], outs[1][0])
    new, dropped, grown = outs[0]
    assert int(new.sum()) == 100
    assert bool(torch.all(~mask[grown] | torch.isin(grown, dropped)))
    assert grown.max() >= 100  # not merely the pruned slots back


def test_gradient_regrow_needs_gradient():
    with pytest.raises(ValueError, match="gradient"):
        prune_and_regrow(torch.ones(4), torch.tensor([1, 1, 0, 0]).bool(), 1, regrow="gradient")


class _WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(8, 2), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


@pytest.mark.parametrize("sparse_compute", ["masked", "csr"])
def test_a_weight_forward_never_uses_is_named_when_rigl_needs_its_gradient(sparse_compute):
    from rest_fair import RESTClassifier

    X = np.random.default_rng(0).random((200, 8), dtype=np.float32)
    y = np.arange(200) % 2
    params = dict(module=lambda input_shape, n_classes: _WithUnusedLayer(), sparsity=0.5,
                  max_epochs=2, batch_size=32, sparse_compute=sparse_compute, random_state=0)
    with pytest.raises(ValueError, match=r"'unused.weight' has none: the module's forward "
                       r"does not use it.*dense_layers=\['unused.weight'\]"):
        RESTClassifier(**params).fit(X, y)
    # the advice works: kept dense, it is out of the topology updates
    clf = RESTClassifier(**params, dense_layers=["unused.weight"]).fit(X, y)
    assert "unused.weight" not in clf.masks_


def _partly_frozen() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 2))
    for layer in net[:3]:
        layer.requires_grad_(False)  # a pretrained backbone that is not fine-tuned
    return net


@pytest.mark.parametrize(("regrow", "sparse_compute"),
                         [("gradient", "masked"), ("random", "masked"), ("gradient", "csr")])
def test_frozen_weights_keep_their_mask_and_values(regrow, sparse_compute):
    # RigL found no gradient on a frozen weight and failed naming it as unused; SET pruned
    # its weights and regrew zeros that its optimizer never updates
    from rest_fair import RESTClassifier

    X = np.random.default_rng(0).random((200, 8), dtype=np.float32)
    y = np.arange(200) % 2
    net = _partly_frozen()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    clf = RESTClassifier(module=net, sparsity=0.9, sparse_init="magnitude", regrow=regrow,
                         sparse_compute=sparse_compute, max_epochs=3, batch_size=32,
                         update_interval=2, random_state=0, device="cpu").fit(X, y)
    assert clf.n_topology_updates_ > 0
    after = dict(clf.module_.named_parameters())
    for name in ("0.weight", "2.weight"):
        start = MaskSet.from_module(_partly_frozen(), density=0.1,
                                    sparse_init="magnitude").mask(name)
        assert torch.equal(clf.masks_[name].cpu(), start.cpu()), name
        assert torch.equal(after[name].detach(), before[name] * start), name
        assert not after[name].requires_grad
    for name in ("0.bias", "2.bias"):
        assert torch.equal(after[name].detach(), before[name])
    assert not torch.equal(clf.masks_["4.weight"], MaskSet.from_module(
        _partly_frozen(), density=0.1, sparse_init="magnitude").mask("4.weight"))


def test_update_topology_keeps_counts_zeroes_and_resets_optimizer_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 4))
    masks = MaskSet.from_module(net, density=0.3, generator=torch.Generator().manual_seed(1))
    masks.apply_()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        masks.apply_()
    before = {n: m.clone() for n, m in masks._bool.items()}
    counts = masks.n_active()
    changed = update_topology(masks, 0.3, regrow="gradient", optimizer=opt)
    assert changed > 0
    assert masks.n_active() == counts
    for name, p in masks.params.items():
        m = masks.mask(name)
        assert torch.all(p[~m] == 0)
        regrown = m & ~before[name]
        assert torch.all(p[regrown] == 0)
        assert torch.all(opt.state[p]["momentum_buffer"][regrown] == 0)


@pytest.mark.parametrize("regrow", ["gradient", "random"])
def test_a_channels_last_convolution_updates_as_a_contiguous_one(regrow):
    # the flat indices of an update are row-major; a channels-last weight and its
    # momentum have other strides
    runs = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        conv = nn.Conv2d(4, 8, 3)
        if channels_last:
            conv.to(memory_format=torch.channels_last)
        masks = MaskSet.from_module(conv, density=0.3, generator=torch.Generator().manual_seed(2))
        masks.apply_()
        opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))
        for _ in range(2):
            opt.zero_grad()
            conv(x).square().sum().backward()
            opt.step()
            masks.apply_()
        update_topology(masks, 0.5, regrow=regrow, optimizer=opt,
                        generator=torch.Generator().manual_seed(4))
        runs.append((masks.mask("weight"), conv.weight.detach(),
                     opt.state[conv.weight]["momentum_buffer"]))
    (mask, weight, buf), (mask_cl, weight_cl, buf_cl) = runs
    assert weight_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(mask_cl, mask)
    # the same weights and momentum (up to the convolution's summation order), zeros
    # where weights grew
    torch.testing.assert_close(weight_cl, weight)
    torch.testing.assert_close(buf_cl, buf)
    assert torch.equal(weight_cl == 0, weight == 0) and torch.equal(buf_cl == 0, buf == 0)


@pytest.mark.parametrize("regrow", ["gradient", "random"])
def test_an_embedding_with_sparse_gradients_updates_as_one_with_dense_ones(regrow):
    # nn.EmbeddingBag(sparse=True): a sparse gradient, and SGD's momentum sparse too
    runs = []
    for sparse in (False, True):
        torch.manual_seed(0)
        emb = nn.EmbeddingBag(30, 4, sparse=sparse)
        masks = MaskSet.from_module(emb, density=0.3, generator=torch.Generator().manual_seed(1))
        masks.apply_()
        opt = torch.optim.SGD(emb.parameters(), lr=0.1, momentum=0.9)
        tokens = torch.randint(0, 30, (8, 5), generator=torch.Generator().manual_seed(2))
        for _ in range(2):
            opt.zero_grad()
            emb(tokens).square().sum().backward()
            opt.step()
            masks.apply_()
        before = masks.mask("weight").clone()
        update_topology(masks, 0.5, regrow=regrow, optimizer=opt,
                        generator=torch.Generator().manual_seed(3))
        buf = opt.state[emb.weight]["momentum_buffer"]
        runs.append((before, masks.mask("weight"), emb.weight.detach(),
                     buf.to_dense() if sparse else buf))
    (before, mask, weight, buf), (_, mask_sp, weight_sp, buf_sp) = runs
    assert torch.equal(mask_sp, mask)
    grown = mask & ~before
    assert grown.any() and not weight_sp[grown].any() and not buf_sp[grown].any()
    torch.testing.assert_close(weight_sp, weight)
    torch.testing.assert_close(buf_sp, buf)


@pytest.mark.parametrize(("mask", "error", "words"), [
    (torch.tensor([[0.5, 0.0, 1.0], [0.1, 0.0, 0.0]]), TypeError, "bool"),
    (torch.ones(3, 2, dtype=torch.bool), ValueError, r"shape \(3, 2\).*\(2, 3\)"),
])
def test_a_mask_that_is_not_a_bool_tensor_of_the_weights_shape_is_refused(mask, error, words):
    linear = nn.Linear(3, 2)
    with pytest.raises(error, match=words):
        MaskSet({"weight": linear.weight}, {"weight": mask})
    masks = MaskSet({"weight": linear.weight}, {"weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(error, match=words):
        masks.set_mask("weight", mask)
    assert masks.mask("weight").all()


def _pruned_and_regrown_case():
    """A 1x4 layer: w[0] is pruned (smallest |w|) and regrown (largest |grad|), w[3] grows."""
    linear = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.25, 2.0, 3.0, 0.0]]))
    mask = torch.tensor([[True, True, True, False]])
    new_mask = torch.tensor([[True, False, True, True]])
    grown = torch.tensor([0, 3])  # position 0 was active before: pruned and regrown
    return linear, mask, new_mask, grown


def test_a_pruned_and_regrown_weight_keeps_its_value_and_state_in_both_storages():
    from rest_fair.sparse.csr_linear import CSRLinear
    from rest_fair.sparse.rigl import apply_decision

    linear, mask, new_mask, grown = _pruned_and_regrown_case()
    masks = MaskSet({"w": linear.weight}, {"w": mask})
    opt = torch.optim.SGD([linear.weight], lr=0.1, momentum=0.9)
    opt.state[linear.weight]["momentum_buffer"] = torch.tensor([[0.5, 0.625, 0.75, 0.875]])
    assert apply_decision(masks, "w", new_mask, grown, optimizer=opt) == 1
    masks.apply_()
    assert linear.weight.detach().tolist() == [[0.25, 0.0, 3.0, 0.0]]
    assert opt.state[linear.weight]["momentum_buffer"].tolist() == [[0.5, 0.625, 0.75, 0.0]]

    linear, mask, new_mask, grown = _pruned_and_regrown_case()
    layer = CSRLinear(linear, mask)
    opt = torch.optim.SGD([layer.values], lr=0.1, momentum=0.9)
    opt.state[layer.values]["momentum_buffer"] = torch.tensor([0.5, 0.625, 0.75])
    assert layer.apply(new_mask, grown, optimizer=opt) == 1
    assert layer.dense_weight().tolist() == [[0.25, 0.0, 3.0, 0.0]]
    assert opt.state[layer.values]["momentum_buffer"].tolist() == [0.5, 0.75, 0.0]


def test_dense_layers_are_left_alone():
    net = nn.Sequential(nn.Linear(3, 2))
    masks = MaskSet(dict(maskable_parameters(net)), {"0.weight": torch.ones(2, 3, dtype=bool)})
    w = net[0].weight.detach().clone()
    net[0].weight.grad = torch.randn(2, 3)
    assert update_topology(masks, 0.5) == 0
    assert torch.equal(net[0].weight.detach(), w)


def test_cosine_schedule_values():
    s = DropSchedule(0.5, 1000, "cosine")
    assert s(0) == pytest.approx(0.5)
    assert s(500) == pytest.approx(0.25)
    assert s(250) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)))
    assert s(1000) == pytest.approx(0.0, abs=1e-12)
    assert s(1001) == 0.0
    values = [s(t) for t in range(0, 1001, 50)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert DropSchedule(0.3, 10, "constant")(5) == 0.3


def test_cosine_floor_schedule_anneals_to_the_authors_floor():
    s = DropSchedule(0.5, 1000, "cosine_floor")
    assert s(0) == pytest.approx(0.5)
    assert s(500) == pytest.approx(0.005 + 0.495 / 2)
    assert s(1000) == pytest.approx(0.005)
    assert s(1001) == 0.0  # no update after end_step
    assert DropSchedule(0.001, 1000, "cosine_floor")(1000) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="drop schedule"):
        DropSchedule(0.3, 10, "linear")


def test_engine_during_training_keeps_exact_density():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 3))
    masks = MaskSet.from_module(net, density=0.1, generator=torch.Generator().manual_seed(0))
    masks.apply_()
    counts = masks.n_active()
    engine = DynamicSparsity(masks, schedule=DropSchedule(0.5, 60), update_interval=5,
                             regrow="gradient")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.randn(256, 30), torch.randint(0, 3, (256,))
    changed_masks = 0
    for step in range(1, 81):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        prev = {n: m.clone() for n, m in masks._bool.items()}
        regrown = engine.before_step(step, opt)
        # mid-interval phase: steps 2, 7, 12, ... up to the schedule's end at step 60
        assert (regrown > 0) == (step % 5 == 2 and step < 60)
        opt.step()
        engine.after_step()
        changed_masks += any(not torch.equal(prev[n], masks.mask(n)) for n in prev)
        assert masks.n_active() == counts
        for name, p in masks.params.items():
            assert torch.all(p[~masks.mask(name)] == 0)
    assert engine.n_updates == 12 and changed_masks == 12
    assert masks.density() == pytest.approx(sum(counts.values()) / sum(
        m.numel() for m in masks._bool.values()))


@torch.no_grad()
def test_rescale_init_preserves_signal():
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(400, 400, bias=False) for _ in range(4)])
    x = torch.randn(512, 400)
    dense_std = float(net(x).std())
    masks = MaskSet.from_module(net, density=0.05, layer_density="uniform",
                                generator=torch.Generator().manual_seed(0))
    masks.apply_()
    silent_std = float(net(x).std())
    masks.rescale_init_()
    rescaled_std = float(net(x).std())
    assert silent_std < 0.01 * dense_std
    assert rescaled_std == pytest.approx(dense_std, rel=0.3)


@given(n=st.integers(1, 6000), fraction=st.floats(0, 1), seed=st.integers(0, 2**31))
@settings(max_examples=200, deadline=None)
def test_the_counted_density_is_the_float32_mean_of_the_mask(n, fraction, seed):
    # rescale_init_ divides by the square root of this density: one rounding apart would
    # change every sparse initialisation
    from rest_fair.sparse.masks import _float32_mean

    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: round(fraction * n)]] = True
    assert _float32_mean(mask) == float(mask.float().mean())


@pytest.mark.parametrize("count", [1, 12345, 2**24 - 1, 2**24, 2**24 + 1, 2**24 + 3])
def test_the_counted_density_of_a_large_mask_is_the_float32_mean(count):
    # past 2**24 entries the number of weights is no float32; past a count of 2**24 the
    # float32 sum may round, and the float copy is taken
    from rest_fair.sparse.masks import _float32_mean

    mask = torch.zeros(4099 * 4099, dtype=torch.bool)  # 16,801,801 > 2**24
    mask[torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(count))[:count]] \
        = True
    assert _float32_mean(mask) == float(mask.float().mean())
    assert _float32_mean(mask.view(4099, 4099)) == float(mask.float().mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_zero_inactive_is_apply_without_the_multipliers(monkeypatch, dtype):
    # blocks smaller than a layer, a layer not a multiple of them; signed zeros, NaN and inf
    # come out of the products as apply_'s
    monkeypatch.setattr(masks_module, "_ZERO_BLOCK", 1000)
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(60, 70), nn.Linear(70, 5)).to(dtype) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        with torch.no_grad():
            net[0].weight[0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, -1.0])
    twins = [copy.deepcopy(net) for net in nets]
    sets = [MaskSet.from_module(net, density=0.3, generator=torch.Generator().manual_seed(1))
            for net in nets]
    sets[0].apply_()
    sets[1].zero_inactive_()
    assert sets[1]._mult == {}
    twin_sets = [MaskSet.from_module(net, density=0.3, generator=torch.Generator().manual_seed(1))
                 for net in twins]
    twin_sets[0].apply_()
    twin_sets[0].rescale_init_()
    twin_sets[1].zero_inactive_(rescale=True)
    for a, b in zip(twins[0].parameters(), twins[1].parameters(), strict=True):
        assert _same_bits(a, b)
    weight = nets[1][0].weight
    assert bool(((weight == 0) & torch.signbit(weight)).any())  # negative zeros among them
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert _same_bits(a, b)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    ints = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}
    return torch.equal(a.detach().view(ints[a.dtype]), b.detach().view(ints[b.dtype]))


def test_random_masks_are_reproducible_and_seed_dependent():
    def masks(seed):
        net = nn.Sequential(nn.Linear(50, 50))
        return MaskSet.from_module(net, density=0.2,
                                   generator=torch.Generator().manual_seed(seed)).to_dict()
    assert torch.equal(masks(3)["0.weight"], masks(3)["0.weight"])
    assert not torch.equal(masks(3)["0.weight"], masks(4)["0.weight"])
    assert np.isclose(float(masks(3)["0.weight"].float().mean()), 0.2)


def test_updates_never_fall_on_the_last_step_of_an_epoch():
    net = nn.Sequential(nn.Linear(8, 8))
    masks = MaskSet.from_module(net, density=0.5, generator=torch.Generator().manual_seed(0))
    for interval, spe in [(4, 4), (3, 4), (1, 5), (7, 3), (10, 10)]:
        engine = DynamicSparsity(masks, schedule=DropSchedule(0.3, 10_000),
                                 update_interval=interval, steps_per_epoch=spe)
        due = [s for s in range(1, 201) if engine.is_update_step(s)]
        assert due and all(s % spe != 0 for s in due)
        if interval > 1:  # moving an update never loses it: one per interval
            assert abs(len(due) - 200 // interval) <= 1
    # with one step per epoch there is no other place: the update comes before that
    # step's optimizer update, which then trains the regrown weights
    engine = DynamicSparsity(masks, schedule=DropSchedule(0.3, 10_000), update_interval=1,
                             steps_per_epoch=1)
    assert all(engine.is_update_step(s) for s in range(1, 20))


@pytest.mark.parametrize("timing", ["mid_interval", "after_step"])
def test_the_first_due_step_is_the_first_update_and_none_follows_if_it_is_not(timing):
    net = nn.Sequential(nn.Linear(8, 8))
    masks = MaskSet.from_module(net, density=0.5, generator=torch.Generator().manual_seed(0))
    for interval, spe in [(1, 1), (1, 5), (2, 4), (8, 4), (9, 4), (1000, 2), (30, 7)]:
        for end in (10_000, 20, 3, 0):
            engine = DynamicSparsity(masks, schedule=DropSchedule(0.3, end), update_timing=timing,
                                     update_interval=interval, steps_per_epoch=spe)
            due = [s for s in range(1, 2_001) if engine.is_update_step(s)]
            first = engine.first_due_step()
            assert (due[:1] == [first]) if engine.is_update_step(first) else due == []


def test_a_tied_weight_regrows_by_the_gradient_of_all_its_uses():
    # one nn.Linear called twice and a second layer holding the same weight: one mask,
    # exact counts, and RigL reads the summed gradient of the three uses
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    other = nn.Linear(8, 8)
    other.weight = shared.weight
    net = nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), other)
    masks = MaskSet.from_module(net, density=0.25, generator=torch.Generator().manual_seed(0))
    masks.apply_()
    assert masks.names == ["0.weight"]
    x = torch.randn(16, 8)
    net(x).square().sum().backward()
    grad = shared.weight.grad.clone()
    parts = []
    for i in range(3):  # the gradient of each use alone, the others' weights held fixed
        w = shared.weight.detach().requires_grad_(True)
        h = x
        for j, layer in enumerate([shared, shared, other]):
            h = nn.functional.linear(h, w if j == i else w.detach(), layer.bias.detach())
            h = torch.tanh(h) if j < 2 else h
        h.square().sum().backward()
        parts.append(w.grad)
    torch.testing.assert_close(grad, sum(parts))
    old = masks.mask("0.weight").clone()
    _, _, expected = prune_and_regrow(shared.weight, old, 4, grad=grad)
    update_topology(masks, 4 / int(old.sum()))
    assert int(masks.mask("0.weight").sum()) == int(old.sum())
    assert set(expected.tolist()) <= set(masks.mask("0.weight").reshape(-1).nonzero()
                                         .reshape(-1).tolist())
    assert not other.weight[~masks.mask("0.weight")].any()
