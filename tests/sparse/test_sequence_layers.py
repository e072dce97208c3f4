"""Masks on the input projections of attention and on the weights of recurrent layers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback
from rest_fair.efficiency import efficiency_report, load, save
from rest_fair.sparse import (
    MaskSet,
    active_counts,
    erk_densities,
    maskable_parameters,
    resolve_dense_layers,
    unmasked_weights,
)
from tests._support.golden_fits import _resumed, table_data

_STEP = 4  # the tables of table_data() have 12 features: 3 time steps of 4


class _Attention(nn.Module):
    """Self-attention over the time steps of a table read as a sequence."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.inp = nn.Linear(_STEP, 16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, n_classes)

    def forward(self, x):
        h = self.inp(x.reshape(x.shape[0], -1, _STEP))
        h = self.attention(h, h, h, need_weights=False)[0]
        return self.head(h.mean(dim=1))


class _Recurrent(nn.Module):
    """A two-layer bidirectional LSTM or GRU over the time steps, then linear layers."""

    def __init__(self, input_shape, n_classes, kind="lstm", hidden=(), dtype=torch.float32):
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = cls(_STEP, 12, num_layers=2, bidirectional=True, batch_first=True)
        layers, n_in = [], 24
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        self.head = nn.Sequential(*layers, nn.Linear(n_in, n_classes))
        self.dtype = dtype
        self.to(dtype)

    def forward(self, x):
        h = self.rnn(x.to(self.dtype).reshape(x.shape[0], -1, _STEP))[0]
        return self.head(h.mean(dim=1))


_MODULES = {
    "attention": dict(module=_Attention),
    "lstm": dict(module=_Recurrent, module_params={"kind": "lstm"}),
    "gru": dict(module=_Recurrent, module_params={"kind": "gru"}),
}
_SEQUENCE_WEIGHTS = {
    "attention": ["attention.in_proj_weight"],
    **{kind: [f"rnn.weight_{w}_l{k}{d}" for k in (0, 1) for d in ("", "_reverse")
              for w in ("ih", "hh")] for kind in ("lstm", "gru")},
}


def _params(which, **extra):
    base = dict(sparsity=0.9, max_epochs=4, batch_size=64, lr=0.05, random_state=0,
                device="cpu", sparse_compute="masked", validation_fraction=0.0,
                update_interval=3, **_MODULES[which])
    return {**base, **extra}


class _Steps(Callback):
    """The masks at every optimizer step; whether an inactive weight was ever non-zero."""

    def on_train_begin(self, net, **kwargs):
        self.masks, self.leaks = [], []

    def on_batch_end(self, net, *, step, loss, **kwargs):
        masks = {k: v.clone() for k, v in net.masks_.items()}
        params = dict(net.module_.named_parameters())
        self.masks.append(masks)
        self.leaks += [name for name, m in masks.items() if params[name][~m].any()]


def test_attention_and_recurrent_weights_are_maskable_and_not_warned_about():
    net = nn.ModuleDict({
        "self": nn.MultiheadAttention(8, 2),
        "cross": nn.MultiheadAttention(8, 2, kdim=6, vdim=4),
        "lstm": nn.LSTM(3, 8, proj_size=4, bidirectional=True),
        "cell": nn.GRUCell(3, 5),
        "bilinear": nn.Bilinear(4, 5, 6),
    })
    assert [name for name, _ in maskable_parameters(net)] == [
        "self.in_proj_weight", "self.out_proj.weight",
        "cross.q_proj_weight", "cross.k_proj_weight", "cross.v_proj_weight",
        "cross.out_proj.weight",
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_hr_l0",
        "lstm.weight_ih_l0_reverse", "lstm.weight_hh_l0_reverse", "lstm.weight_hr_l0_reverse",
        "cell.weight_ih", "cell.weight_hh"]
    assert [name for name, _ in unmasked_weights(net)] == ["bilinear.weight"]
    with pytest.warns(UserWarning, match="'bilinear.weight' ") as record:
        masks = MaskSet.from_module(net, density=0.2, generator=torch.Generator().manual_seed(0))
    assert len(record) == 1
    # one (3E, E) linear layer for ERK, each recurrent weight an (n_out, n_in) one
    shapes = {name: tuple(p.shape) for name, p in maskable_parameters(net)}
    assert shapes["self.in_proj_weight"] == (24, 8) and shapes["lstm.weight_hh_l0"] == (32, 4)
    assert masks.n_active() == active_counts(shapes, erk_densities(shapes, 0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaskSet.from_module(nn.LSTM(3, 4), density=0.5)


def test_the_first_and_head_aliases_count_only_conv_and_linear_layers():
    attention = _Attention((12,), 3)
    assert resolve_dense_layers(attention, ["first", "head"]) == ["inp.weight", "head.weight"]
    recurrent = _Recurrent((12,), 3, hidden=(8,))
    assert resolve_dense_layers(recurrent, ["first"]) == ["head.0.weight"]
    # attention without other layers: its out_proj is the head, its input projection is not
    alone = nn.Sequential(nn.MultiheadAttention(8, 2))
    assert resolve_dense_layers(alone, ["first", "head"]) == ["0.out_proj.weight"]
    assert resolve_dense_layers(recurrent, ["rnn.weight_hh_l1_reverse"]) == [
        "rnn.weight_hh_l1_reverse"]


@pytest.mark.parametrize("which", ["attention", "lstm", "gru"])
def test_a_fit_masks_them_at_erk_density_and_rigl_moves_them(which):
    X, y, _ = table_data()
    steps = _Steps()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="sparsity masks the weights")
        clf = RESTClassifier(**_params(which), callbacks=[steps]).fit(X, y)
    names = _SEQUENCE_WEIGHTS[which]
    assert set(names) <= set(clf.masks_)
    params = dict(clf.module_.named_parameters())
    shapes = {name: tuple(params[name].shape) for name in clf.masks_}
    expected = active_counts(shapes, erk_densities(shapes, 0.1))
    assert all(int(m.sum()) == expected[name] for step in steps.masks
               for name, m in step.items())
    assert steps.leaks == []  # inactive weights exactly 0 after every optimizer step
    assert all(not params[name][~clf.masks_[name]].any() for name in names)
    assert sum(h["n_topology_updates"] for h in clf.history_) > 0
    moved = [name for name in names if not torch.equal(steps.masks[0][name], clf.masks_[name])]
    assert moved == names
    report = efficiency_report(clf.module_, clf.masks_, (12,))
    layer = "attention" if which == "attention" else "rnn"
    biases = sum(p.numel() for n, p in params.items()
                 if n.startswith(f"{layer}.") and "bias" in n and "out_proj" not in n)
    assert report.loc[layer, "params_active"] == sum(
        int(clf.masks_[n].sum()) for n in names) + biases
    assert report.loc[layer, "density"] < 0.5


def test_a_recurrent_layer_can_be_kept_dense_by_name():
    X, y, _ = table_data()
    kept = ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    clf = RESTClassifier(**_params("lstm", max_epochs=1, dense_layers=kept)).fit(X, y)
    assert not set(kept) & set(clf.masks_)
    assert "rnn.weight_ih_l1" in clf.masks_
    assert all(bool((clf.module_.get_parameter(name) != 0).all()) for name in kept)


@pytest.mark.parametrize("which", ["attention", "lstm"])
def test_save_load_and_checkpoint_resume_keep_them(tmp_path, which):
    X, y, g = table_data()
    params = _params(which, max_epochs=6)
    del params["validation_fraction"]
    whole = RESTClassifier(**params).fit(X, y, groups=g)
    resumed = _resumed(**params)
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))
    assert all(torch.equal(resumed.masks_[k], whole.masks_[k]) for k in whole.masks_)

    save((whole.module_, whole.masks_, None), tmp_path / "m.rest")
    fresh = _MODULES[which]["module"]((12,), 3, **_MODULES[which].get("module_params", {}))
    module, masks, _ = load(tmp_path / "m.rest", module=fresh)
    assert masks.keys() == whole.masks_.keys()
    assert all(torch.equal(masks[k], whole.masks_[k]) for k in masks)
    state = whole.module_.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("mode", ["csr", "auto"])
def test_a_recurrent_layer_stays_masked_beside_csr_linear_layers(mode):
    X, y, _ = table_data()
    extra = dict(module_params={"kind": "lstm", "hidden": (64,), "dtype": torch.float64},
                 sparse_compute_threshold=0.5)
    masked = RESTClassifier(**_params("lstm", **extra)).fit(X, y)
    clf = RESTClassifier(**{**_params("lstm", **extra), "sparse_compute": mode}).fit(X, y)
    if mode == "csr":
        assert "head.0" in clf.sparse_compute_layers_
    assert clf.masks_.keys() == masked.masks_.keys()
    assert all(torch.equal(clf.masks_[k], masked.masks_[k]) for k in clf.masks_)
    np.testing.assert_allclose(clf.predict_proba(X), masked.predict_proba(X), atol=1e-9)
    params = dict(clf.module_.named_parameters())
    assert all(not params[n][~clf.masks_[n]].any() for n in _SEQUENCE_WEIGHTS["lstm"])
