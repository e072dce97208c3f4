"""Initial masks: random vs. magnitude, layers kept dense, embeddings, option tuples."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from rest_fair.sparse import (
    DENSE_LAYER_ALIASES,
    LAYER_DENSITIES,
    SPARSE_INITS,
    MaskSet,
    active_counts,
    erk_densities,
    maskable_parameters,
    resolve_dense_layers,
    uniform_densities,
    unmasked_weights,
)


class _TextNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(50, 8)
        self.norm = nn.LayerNorm(8)
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.norm(self.tokens(ids)).mean(1))))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 5),
    )


def test_option_tuples_are_exported():
    assert SPARSE_INITS == ("random", "magnitude")
    assert LAYER_DENSITIES == ("erk", "uniform")
    assert set(DENSE_LAYER_ALIASES) >= {"first", "head"}


def test_embeddings_are_maskable_norms_and_biases_are_not():
    names = [n for n, _ in maskable_parameters(_TextNet())]
    assert names == ["tokens.weight", "hidden.weight", "out.weight"]


def test_tied_weight_gets_one_mask():
    net = _TextNet()
    net.out = nn.Linear(8, 50)
    net.out.weight = net.tokens.weight  # weight tying, as language-model heads do
    names = [n for n, _ in maskable_parameters(net)]
    assert names == ["tokens.weight", "hidden.weight"]


def test_erk_handles_embedding_shapes():
    net = _TextNet()
    masks = MaskSet.from_module(net, density=0.3, layer_density="erk")
    shapes = {n: tuple(p.shape) for n, p in maskable_parameters(net)}
    expected = active_counts(shapes, erk_densities(shapes, 0.3))
    assert masks.n_active() == expected
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(expected.values()) == pytest.approx(0.3 * total, abs=len(shapes))
    # ERK: density proportional to (rows + cols) / (rows * cols)
    d = {r["layer"]: r["density"] for r in masks.report()}
    assert d["tokens.weight"] / d["out.weight"] == pytest.approx(
        ((50 + 8) / 400) / ((16 + 3) / 48), rel=0.05)


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_magnitude_init_keeps_exactly_the_largest_weights(distribution):
    net = _cnn()
    masks = MaskSet.from_module(net, density=0.25, layer_density=distribution,
                                sparse_init="magnitude")
    shapes = {n: tuple(p.shape) for n, p in maskable_parameters(net)}
    fn = erk_densities if distribution == "erk" else uniform_densities
    counts = active_counts(shapes, fn(shapes, 0.25))
    assert masks.n_active() == counts
    params = dict(net.named_parameters())
    for name in masks.names:
        w = params[name].detach().abs().reshape(-1)
        m = masks.mask(name).reshape(-1)
        kept = torch.sort(w, descending=True).values[: counts[name]]
        # the kept magnitudes are exactly the top-k ones
        assert torch.equal(torch.sort(w[m], descending=True).values, kept)
        if (~m).any():
            assert w[m].min() >= w[~m].max()


def test_magnitude_ties_are_broken_by_index_deterministically():
    net = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 2.0, 0.5], [2.0, 1.0, -1.0, 3.0]]))
    masks = MaskSet.from_module(net, density=0.5, layer_density="uniform", sparse_init="magnitude")
    # |w| flat: 1 2 2 .5 2 1 1 3 -> top 4: 3 (7), then the 2s at 1, 2, 4
    assert masks.mask("0.weight").reshape(-1).tolist() == [
        False, True, True, False, True, False, False, True]
    again = MaskSet.from_module(net, density=0.5, layer_density="uniform", sparse_init="magnitude")
    assert torch.equal(masks.mask("0.weight"), again.mask("0.weight"))


def test_magnitude_init_ignores_the_generator():
    net = _cnn()
    a = MaskSet.from_module(net, density=0.1, sparse_init="magnitude",
                            generator=torch.Generator().manual_seed(1))
    b = MaskSet.from_module(net, density=0.1, sparse_init="magnitude",
                            generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a.mask(n), b.mask(n)) for n in a.names)


def test_the_head_alias_finds_a_head_tied_to_an_embedding():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.hidden = nn.Linear(8, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight  # listed once, as emb.weight

    # the head is the last linear layer, whose mask is under its weight's first name
    assert resolve_dense_layers(Tied(), ["head"]) == ["emb.weight"]


def test_dense_layers_aliases_and_names():
    net = _cnn()
    assert resolve_dense_layers(net, ["first"]) == ["0.weight"]
    assert resolve_dense_layers(net, ("head",)) == ["6.weight"]
    assert resolve_dense_layers(net, ["head", "4.weight", "first"]) == [
        "0.weight", "4.weight", "6.weight"]
    assert resolve_dense_layers(net, ()) == [] and resolve_dense_layers(net, None) == []
    text = _TextNet()
    assert resolve_dense_layers(text, ["first"]) == ["hidden.weight"]  # embeddings skipped
    assert resolve_dense_layers(text, ["embeddings"]) == ["tokens.weight"]
    assert resolve_dense_layers(text, ["head"]) == ["out.weight"]


def test_dense_layers_stay_dense_and_leave_the_density_budget():
    net = _cnn()
    masks = MaskSet.from_module(net, density=0.2, layer_density="uniform",
                                dense_layers=("first", "head"),
                                generator=torch.Generator().manual_seed(0))
    assert masks.names == ["4.weight"]
    assert masks.density() == pytest.approx(0.2, abs=1e-3)  # all of it on the rest
    before = net[0].weight.detach().clone()
    masks.apply_()
    assert torch.equal(net[0].weight, before)  # the dense first layer is not touched
    erk = MaskSet.from_module(net, density=0.2, dense_layers=["6.weight"])
    shapes = {"0.weight": (8, 3, 3, 3), "4.weight": (64, 288)}
    assert erk.n_active() == active_counts(shapes, erk_densities(shapes, 0.2))


def test_every_layer_dense_gives_an_empty_mask_set():
    net = _cnn()
    masks = MaskSet.from_module(net, density=0.1, dense_layers=["0.weight", "4.weight",
                                                                "6.weight"])
    assert masks.names == [] and masks.density() == 1.0


@pytest.mark.parametrize(
    ("dense_layers", "match"),
    [
        (["fc.weight"], r"names 'fc.weight', which is not maskable.*0.weight, 4.weight, "
                        r"6.weight"),
        (["1.weight", "4.bias"], r"'1.weight', '4.bias', which are not maskable"),
        ("first", "must be a sequence"),
        ([3], "must be a sequence"),
    ],
)
def test_dense_layers_errors_list_the_maskable_names(dense_layers, match):
    with pytest.raises(ValueError, match=match):
        MaskSet.from_module(_cnn(), density=0.5, dense_layers=dense_layers)


def test_bad_init_and_distribution():
    with pytest.raises(ValueError, match="sparse_init must be one of"):
        MaskSet.from_module(_cnn(), density=0.5, sparse_init="lottery")
    with pytest.raises(ValueError, match="layer_density must be one of"):
        MaskSet.from_module(_cnn(), density=0.5, layer_density="erdos")


def test_head_alias_needs_a_linear_layer():
    with pytest.raises(ValueError, match="no linear layer"):
        resolve_dense_layers(nn.Sequential(nn.Conv2d(1, 2, 3)), ["head"])


def test_from_module_old_keyword_names_still_work_with_a_warning():
    net = _cnn()
    new = MaskSet.from_module(net, density=0.5, layer_density="uniform",
                              sparse_init="magnitude")
    with pytest.warns(FutureWarning, match="layer_density"):
        with pytest.warns(FutureWarning, match="sparse_init"):
            old = MaskSet.from_module(net, density=0.5, distribution="uniform",
                                      init="magnitude")
    assert all(torch.equal(new.mask(n), old.mask(n)) for n in new.names)


def test_masks_given_in_another_order_than_the_weights_apply_to_their_own_weights():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    params = dict(maskable_parameters(net))
    names = list(params)
    masks = {name: torch.rand(4, 4, generator=torch.Generator().manual_seed(i)) < 0.5
             for i, name in enumerate(names)}
    mask_set = MaskSet(params, dict(reversed(list(masks.items()))))
    mask_set.apply_()
    for name in names:
        assert torch.equal(params[name] != 0, masks[name])


class _Varied(nn.Module):
    """Layers of every kind: those masked, and weights the masks do not reach."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(3, 8, 5)
        self.conv3d = nn.Conv3d(2, 4, 3)
        self.up = nn.ConvTranspose2d(8, 12, 3, groups=4)  # weight (in, out / groups, k, k)
        self.depthwise = nn.Conv2d(16, 16, 3, groups=16)
        self.linear = nn.Linear(10, 20, bias=False)
        self.bag = nn.EmbeddingBag(30, 4)
        self.norm = nn.LayerNorm(8)
        self.bilinear = nn.Bilinear(4, 5, 6)
        self.lstm = nn.LSTM(8, 16)
        self.attention = nn.MultiheadAttention(8, 2)
        self.position = nn.Parameter(torch.zeros(1, 7, 8))  # not a layer's weight
        self.normed = torch.nn.utils.parametrizations.weight_norm(nn.Linear(6, 6))


def test_every_conv_linear_and_embedding_weight_is_masked_in_its_own_layout():
    net = _Varied()
    assert [n for n, _ in maskable_parameters(net)] == [
        "conv1d.weight", "conv3d.weight", "up.weight", "depthwise.weight", "linear.weight",
        "bag.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "attention.in_proj_weight",
        "attention.out_proj.weight"]
    with pytest.warns(UserWarning, match="sparsity masks the weights"):
        masks = MaskSet.from_module(net, density=0.2, generator=torch.Generator().manual_seed(0))
    masks.apply_()
    shapes = {n: tuple(p.shape) for n, p in maskable_parameters(net)}
    assert masks.n_active() == active_counts(shapes, erk_densities(shapes, 0.2))
    assert masks.mask("up.weight").shape == (8, 3, 3, 3)
    assert not net.up.weight[~masks.mask("up.weight")].any()


def test_weights_left_dense_are_named_in_a_warning():
    net = _Varied()
    unmasked = ["bilinear.weight", "normed.parametrizations.weight.original0",
                "normed.parametrizations.weight.original1"]
    assert [n for n, _ in unmasked_weights(net)] == unmasked
    with pytest.warns(UserWarning) as record:
        MaskSet.from_module(net, density=0.2)
    message = str(record[0].message)
    assert "'bilinear.weight', 'normed.parametrizations" in message
    assert "'position'" not in message
    n = sum(net.get_parameter(name).numel() for name in unmasked)
    assert f"{n} weights" in message and "and 0 more" not in message
    # the deprecated hook form of weight norm: weight_g and weight_v are the parameters
    with pytest.warns(FutureWarning):
        old = torch.nn.utils.weight_norm(nn.Linear(4, 4))
    assert [n for n, _ in unmasked_weights(nn.Sequential(old))] == ["0.weight_g", "0.weight_v"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaskSet.from_module(_cnn(), density=0.2)  # nothing left out: no warning


def test_listing_the_weights_does_not_step_a_spectral_norm_in_training_mode():
    # a parametrized weight is computed on each read, and a training-mode spectral norm
    # then advances its power iteration: listing weights must not read it
    net = nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(nn.Linear(6, 5)),
                        nn.Linear(5, 2)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert [n for n, _ in maskable_parameters(net)] == ["1.weight"]
    assert [n for n, _ in unmasked_weights(net)] == ["0.parametrizations.weight.original"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_a_layer_without_weights_gets_density_one():
    assert erk_densities({"empty": (0, 5), "b": (40, 40)}, 0.5) == {"empty": 1.0, "b": 0.5}
    net = nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 3), nn.Linear(3, 30))
    masks = MaskSet.from_module(net, density=0.3, generator=torch.Generator().manual_seed(0))
    assert masks.n_active() == {"0.weight": 0, "1.weight": 0, "2.weight": 27}
