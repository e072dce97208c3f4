"""FLOPs and parameter accounting (rest_fair.efficiency.flops), checked by hand."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback, Checkpoint
from rest_fair.efficiency import efficiency_report
from rest_fair.models import build_module
from tests._support.callbacks import StopAt


class _Tiny(nn.Module):
    """conv 1->2 (3x3) on 1x5x5, BN, flatten (18), linear 18->4, ReLU, linear 4->3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(18, 4), nn.ReLU(), nn.Linear(4, 3))

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def _tiny_masks(net):
    conv = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    conv.view(-1)[[0, 3, 7, 9, 17]] = True  # 5 active of 18
    lin = torch.zeros(4, 18, dtype=torch.bool)
    lin.view(-1)[torch.arange(0, 72, 7)[:10]] = True  # 10 active of 72
    return {"conv.weight": conv, "head.1.weight": lin}


def test_hand_counted_network():
    net = _Tiny()
    report = efficiency_report(net, _tiny_masks(net), (1, 5, 5), update_interval=10)
    # conv: 18 weights x 9 output positions (3x3), 5 active; multiply-add = 2 FLOPs
    assert report.loc["conv", "inference_flops_dense"] == 2 * 18 * 9 == 324
    assert report.loc["conv", "inference_flops"] == 2 * 5 * 9 == 90
    assert report.loc["head.1", "inference_flops_dense"] == 144
    assert report.loc["head.1", "inference_flops"] == 20
    assert report.loc["head.3", "inference_flops"] == 24  # no mask: dense
    total = report.loc["total"]
    assert total["inference_flops_dense"] == 324 + 144 + 24 == 492
    assert total["inference_flops"] == 90 + 20 + 24 == 134
    assert total["inference_flops_fraction"] == pytest.approx(134 / 492)
    # parameters: conv 18+2, linear 72+4, linear 12+3, BN 2+2 ("(other)" row)
    assert report.loc["conv", "params_dense"] == 20
    assert report.loc["conv", "params_active"] == 7
    assert report.loc["head.1", "params_active"] == 14
    assert report.loc["(other)", "params_dense"] == 4
    assert total["params_dense"] == 20 + 76 + 15 + 4 == 115
    assert total["params_active"] == 7 + 14 + 15 + 4 == 40
    # RigL: 3 f_S per sample + (f_D - f_S) once every 10 steps
    assert total["training_flops"] == pytest.approx(3 * 134 + (492 - 134) / 10)  # 437.8
    assert total["training_flops_dense"] == 3 * 492
    assert total["training_flops_fraction"] == pytest.approx(437.8 / 1476)


def test_measured_updates_and_run_totals():
    net = _Tiny()
    report = efficiency_report(
        net, _tiny_masks(net), (1, 5, 5), n_topology_updates=3, n_train_steps=30, batch_size=8
    )
    total = report.loc["total"]
    assert total["training_flops"] == pytest.approx(437.8)
    assert total["training_flops_run"] == pytest.approx(437.8 * 30 * 8)
    assert total["training_flops_run_dense"] == 1476 * 30 * 8
    assert report.attrs["topology_update_rate"] == pytest.approx(0.1)
    # the samples actually trained, where given, instead of full batches
    report = efficiency_report(net, _tiny_masks(net), (1, 5, 5), n_topology_updates=3,
                               n_train_steps=30, batch_size=8, n_train_samples=203)
    assert report.loc["total", "training_flops_run"] == pytest.approx(437.8 * 203)
    assert report.loc["total", "training_flops_run_dense"] == 1476 * 203


def test_random_regrowth_needs_no_dense_gradient_and_no_updates():
    net = _Tiny()
    masks = _tiny_masks(net)
    random = efficiency_report(net, masks, (1, 5, 5), update_interval=10, regrow="random")
    none = efficiency_report(net, masks, (1, 5, 5))
    assert random.loc["total", "training_flops"] == 3 * 134
    assert none.loc["total", "training_flops"] == 3 * 134


def test_dense_network_and_mode_restored():
    net = build_module("mlp", input_shape=(6,), n_classes=2,
                       module_params={"hidden_layer_sizes": (5,)})
    net.train()
    report = efficiency_report(net, None, (6,))
    assert net.training
    assert report.loc["total", "inference_flops"] == 2 * (6 * 5 + 5 * 2)
    assert report.loc["total", "density"] == 1.0
    assert report.loc["total", "inference_flops_fraction"] == 1.0
    assert list(report["layer"]) == ["layers.1", "layers.3", "total"]


def test_linear_on_sequences_counts_positions():
    net = nn.Sequential(nn.Linear(4, 3))
    report = efficiency_report(net, {}, (7, 4))  # 7 positions per sample
    assert report.loc["0", "inference_flops"] == 2 * 12 * 7


def test_errors():
    net = _Tiny()
    with pytest.raises(KeyError, match="not a parameter"):
        efficiency_report(net, {"nope.weight": torch.ones(1, dtype=torch.bool)}, (1, 5, 5))
    with pytest.raises(ValueError, match="has shape"):
        efficiency_report(net, {"conv.weight": torch.ones(3, dtype=torch.bool)}, (1, 5, 5))
    with pytest.raises(ValueError, match="update_interval"):
        efficiency_report(net, {}, (1, 5, 5), update_interval=0)
    with pytest.raises(ValueError, match="n_train_steps"):
        efficiency_report(net, {}, (1, 5, 5), n_topology_updates=3)
    with pytest.raises(ValueError, match="regrow"):
        efficiency_report(net, {}, (1, 5, 5), regrow="magic")
    with pytest.raises(ValueError, match="n_train_samples must be a non-negative int"):
        efficiency_report(net, {}, (1, 5, 5), n_train_samples=-1)
    for bad in ((), (0, 5, 5), (-1,), 5, (1.5, 5, 5)):
        with pytest.raises(ValueError, match="input_shape must be a non-empty tuple"):
            efficiency_report(net, {}, bad)
    # torch's shape error used to come out alone, not naming input_shape; no hook is left
    with pytest.raises(ValueError, match=r"input_shape \(5, 5\) does not go through"):
        efficiency_report(net, {}, (5, 5))
    assert not any(m._forward_hooks for m in net.modules())
    assert math.isnan(efficiency_report(nn.Sequential(nn.ReLU()), {}, (3,))
                      .loc["total", "density"])


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_shared_weight_is_stored_once_and_multiplied_at_every_use():
    # one 4x4 weight with 4 active entries, used twice: 16 parameters, 2 * 2 * 4 FLOPs
    report = efficiency_report(_Tied(), {"a.weight": torch.eye(4, dtype=torch.bool)}, (4,))
    total = report.loc["total"]
    assert (total["params_dense"], total["params_active"]) == (16, 4)
    assert (total["inference_flops_dense"], total["inference_flops"]) == (64, 16)


def test_transformers_conv1d_is_a_linear_layer():
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    report = efficiency_report(nn.Sequential(conv1d(6, 4)), {}, (4,))  # 4 -> 6 features
    assert report.loc["0", "kind"] == "Conv1D"
    assert report.loc["total", "inference_flops"] == 2 * 24


class _ReadsItsChildsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        return nn.functional.linear(x, self.proj.weight, self.proj.bias)


def test_a_layer_used_without_its_module_call_is_named():
    with pytest.warns(UserWarning, match=r"\['proj'\] were not called"):
        report = efficiency_report(_ReadsItsChildsWeight(), {}, (4,))
    assert report.attrs["layers_not_called"] == ["proj"]


def test_a_transformer_layer_counts_its_attention_projections():
    # d = 8, 5 tokens: q, k, v projections 3 x 2 x 64 x 5, out_proj 2 x 64 x 5, feed-forward
    # 2 x (2 x 128 x 5); the attention products (no weights) are not counted
    for batch_first in (True, False):
        encoder = nn.Sequential(nn.TransformerEncoderLayer(
            d_model=8, nhead=2, dim_feedforward=16, batch_first=batch_first))
        report = efficiency_report(encoder, {}, (5, 8))
        assert report.attrs["layers_not_called"] == []
        flops = report["inference_flops_dense"]
        assert flops["0.self_attn"] == 3 * 2 * 64 * 5 == 1920
        assert flops["0.self_attn.out_proj"] == 2 * 64 * 5 == 640
        assert flops["total"] == 1920 + 640 + 2 * 1280
        assert report.loc["0.self_attn", "params_dense"] == 24 * 8 + 24
        assert report.loc["0.self_attn", "shape"] == (24, 8)


class _CrossAttention(nn.Module):
    """3 query tokens of width 8 attend to 7 key tokens of width 6 and values of width 4."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=4, add_bias_kv=True,
                                          batch_first=True)

    def forward(self, x):
        return self.attn(x[:, :3], key=x[:, :, :6], value=x[:, :, :4], need_weights=False)[0]


def test_cross_attention_with_masks_is_counted_by_hand():
    net = _CrossAttention()
    q_mask = torch.zeros(8, 8, dtype=torch.bool)
    q_mask[:4] = True  # 32 of 64 active
    out_mask = torch.eye(8, dtype=torch.bool)  # 8 of 64
    masks = {"attn.q_proj_weight": q_mask, "attn.out_proj.weight": out_mask}
    report = efficiency_report(net, masks, (7, 8), update_interval=4)
    row = report.loc["attn"]
    # query 8x8 on 3 tokens, key 8x6 and value 8x4 on 7 tokens
    assert row["inference_flops_dense"] == 2 * (64 * 3 + 48 * 7 + 32 * 7) == 1504
    assert row["inference_flops"] == 2 * (32 * 3 + 48 * 7 + 32 * 7) == 1312
    assert row["training_flops"] == 3 * 1312 + (1504 - 1312) / 4
    # weights 64 + 48 + 32, in_proj_bias 24, bias_k and bias_v 8 each (dense)
    assert (row["params_dense"], row["params_active"]) == (144 + 40, 112 + 40)
    assert row["shape"] == ((8, 8), (8, 6), (8, 4))
    assert report.loc["attn.out_proj", "inference_flops"] == 2 * 8 * 3
    assert "(other)" not in report.index


def test_a_transposed_convolution_applies_its_weights_at_every_input_position():
    # 4 -> 8 channels, 4x4 kernel, stride 2 on 5x5: 5 * 5 input positions (10 x 10 outputs)
    net = nn.Sequential(nn.ConvTranspose2d(4, 8, 4, stride=2, padding=1),
                        nn.Conv2d(8, 2, 3, padding=1), nn.Flatten(2),
                        nn.ConvTranspose1d(2, 3, 2, stride=2))
    mask = torch.zeros(4, 8, 4, 4, dtype=torch.bool)
    mask.view(-1)[::8] = True  # 64 active of 512
    report = efficiency_report(net, {"0.weight": mask}, (4, 5, 5))
    assert report.loc["0", "inference_flops_dense"] == 2 * 512 * 25
    assert report.loc["0", "inference_flops"] == 2 * 64 * 25
    assert report.loc["1", "inference_flops_dense"] == 2 * 144 * 100
    assert report.loc["3", "inference_flops_dense"] == 2 * 12 * 100  # 1-D, 100 inputs


def test_a_parametrized_weight_counts_the_parameters_behind_it_once():
    from torch.nn.utils import parametrizations

    net = nn.Sequential(parametrizations.weight_norm(nn.Linear(10, 20)), nn.ReLU(),
                        parametrizations.spectral_norm(nn.Linear(20, 30)), nn.ReLU(),
                        nn.Linear(30, 2))
    report = efficiency_report(net, {}, (10,))
    assert report.loc["total", "params_dense"] == sum(p.numel() for p in net.parameters())
    assert report.loc["0", "params_dense"] == 20 + 200 + 20  # g, v, bias
    assert report.loc["2", "params_dense"] == 600 + 30
    assert "(other)" not in report.index
    assert report.loc["0", "inference_flops"] == 2 * 200


def test_a_network_in_training_mode_keeps_all_its_state():
    # the probe pass and the reading of a parametrized weight run in evaluation mode: no
    # batch-norm statistics, no step of a spectral norm's power iteration
    from torch.nn.utils import parametrizations

    net = nn.Sequential(parametrizations.spectral_norm(nn.Linear(6, 5)), nn.BatchNorm1d(5),
                        nn.ReLU(), nn.Dropout(), nn.Linear(5, 2)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = efficiency_report(net, {"4.weight": torch.eye(2, 5, dtype=torch.bool)}, (6,))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(m.training for m in net.modules())
    assert report.loc["total", "inference_flops"] == 2 * (30 + 2)


class _Recurrent(nn.Module):
    """A packed bidirectional LSTM with projections over 5 steps, a GRU cell called twice."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 8, proj_size=4, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(3, 5)

    def forward(self, x):
        packed = nn.utils.rnn.pack_padded_sequence(x, [x.shape[1]] * x.shape[0],
                                                   batch_first=True)
        out = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True)[0]
        h = self.cell(x[:, 0])
        return out.sum() + self.cell(x[:, 1], h).sum()


def test_recurrent_layers_apply_every_weight_once_per_time_step():
    net = _Recurrent()
    ih = torch.zeros(32, 3, dtype=torch.bool)
    ih.view(-1)[:10] = True  # 10 of 96 active
    report = efficiency_report(net, {"lstm.weight_ih_l0": ih}, (5, 3), update_interval=2)
    assert report.attrs["layers_not_called"] == []
    row = report.loc["lstm"]
    # per direction: weight_ih 32x3, weight_hh 32x4, weight_hr 4x8 = 256 weights; 5 steps
    assert row["inference_flops_dense"] == 2 * 512 * 5
    assert row["inference_flops"] == 2 * (512 - 86) * 5
    assert row["training_flops"] == 3 * 4260 + (5120 - 4260) / 2
    assert (row["params_dense"], row["params_active"]) == (512 + 128, 426 + 128)
    assert row["shape"] == ((32, 3), (32, 4), (4, 8)) * 2
    # the cell: weight_ih 15x3 and weight_hh 15x5, one row per call
    assert report.loc["cell", "inference_flops_dense"] == 2 * 120 * 2
    assert "(other)" not in report.index



def test_whole_run_flops_count_the_samples_trained_not_full_batches(tmp_path):
    # 100 samples, 90 trained after the validation split, one partial batch of 256 per
    # epoch: full batches counted 4 * 256 = 1024 samples
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    params = dict(max_epochs=4, random_state=0, module_params={"hidden_layer_sizes": (8,)})

    def samples(clf):
        total = clf.efficiency_report().loc["total"]
        assert total["training_flops_run_dense"] == (
            total["training_flops_dense"] * total["training_flops_run"]
            / total["training_flops"])
        return total["training_flops_run"] / total["training_flops"]

    clf = RESTClassifier(**params).fit(X, y)
    assert [h["n_train_samples"] for h in clf.history_] == [90] * 4
    assert samples(clf) == 4 * 90
    # a warm start adds its epochs' samples
    clf.set_params(warm_start=True).fit(X, y)
    assert samples(clf) == 8 * 90
    # a resumed checkpoint counts the epochs trained before the interruption once
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(3), Checkpoint(tmp_path)]).fit(X, y)
    resumed = RESTClassifier(**params).fit(X, y, resume_from=tmp_path)
    assert samples(resumed) == 4 * 90
    # a model file keeps the count
    resumed.save(tmp_path / "m.rest")
    assert samples(RESTClassifier.load(tmp_path / "m.rest")) == 4 * 90
    # records without the count (older files) fall back to full batches
    for record in resumed.history_:
        del record["n_train_samples"]
    assert samples(resumed) == resumed.n_train_steps_ * 256 == 1024


class _Reports(Callback):
    """The estimator's efficiency report as callbacks read it while it trains."""

    def __init__(self):
        self.begin, self.ends, self.updates = None, [], []

    def on_train_begin(self, net, **kwargs):
        self.begin = net.efficiency_report()

    def on_topology_update(self, net, *, step, **kwargs):
        self.updates.append((step, net.n_train_steps_, net.n_topology_updates_))

    def on_epoch_end(self, net, **kwargs):
        self.ends.append((net.efficiency_report(), net.n_train_steps_, net.n_topology_updates_))
        self.sparsity, self.exported = net.sparsity_report(), net.export_sparse()


@pytest.mark.parametrize("sparse_compute", ["masked", "csr"])
def test_a_callback_reads_the_efficiency_of_the_run_so_far(sparse_compute):
    # it failed during a first fit (no n_topology_updates_ yet) and, as the sparsity
    # report and the export did, on layers training in CSR form; a warm start's callbacks
    # read the counts of the fit before it
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 6)).astype(np.float32), np.arange(64) % 2
    reports = _Reports()
    clf = RESTClassifier(max_epochs=2, batch_size=16, update_interval=2, validation_fraction=0.0,
                         sparse_compute=sparse_compute, random_state=0,
                         callbacks=[reports]).fit(X, y)
    assert bool(clf.sparse_compute_layers_) == (sparse_compute == "csr")
    assert reports.begin.loc["total", "training_flops_run"] == 0
    assert [u[1:] for u in reports.updates] == [(step, n + 1) for n, (step, _, _)
                                                in enumerate(reports.updates)]
    for epoch, (report, steps, updates) in enumerate(reports.ends, start=1):
        total = report.loc["total"]
        assert steps == 4 * epoch
        assert total["training_flops_run"] == total["training_flops"] * 64 * epoch
        assert report.attrs["topology_update_rate"] == updates / steps
    pd.testing.assert_frame_equal(reports.ends[-1][0], clf.efficiency_report())
    pd.testing.assert_frame_equal(reports.sparsity, clf.sparsity_report())
    inputs = torch.from_numpy(X)
    torch.testing.assert_close(reports.exported(inputs), clf.export_sparse()(inputs))
    before = clf.n_topology_updates_
    reports.__init__()
    clf.set_params(warm_start=True, max_epochs=1).fit(X, y)
    report, steps, updates = reports.ends[0]
    assert (steps, updates) == (clf.n_train_steps_, clf.n_topology_updates_)
    assert steps == 12 and updates > before
    assert report.loc["total", "training_flops_run"] == report.loc[
        "total", "training_flops"] * 64 * 3
