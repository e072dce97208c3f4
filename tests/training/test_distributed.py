"""Data-parallel fit: sharding, exact GroupDRO, and real 2-rank runs under torchrun (gloo).

The multi-process tests launch ``torchrun --standalone --nproc_per_node=2`` (CPU, gloo, one
thread per rank) on tests/_support/ddp_worker.py, which writes what every rank saw; the tests
compare the ranks with each other and with the same fits in this process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import rest_fair
from rest_fair import RESTClassifier
from rest_fair.exceptions import DistributedError
from rest_fair.objectives import GroupDROObjective
from rest_fair.training import n_batches
from rest_fair.training.distributed import (
    GlobalGroupDRO,
    LocalContext,
    check_world,
    resolve_distributed,
    shard_order,
    shard_range,
    translate_failures,
)
from tests._support.golden_fits import DDP_SCENARIOS, assert_same_as_recorded

WORKER = Path(__file__).resolve().parents[1] / "_support" / "ddp_worker.py"
ROOT = Path(rest_fair.__file__).resolve().parents[1]  # the rest_fair under test
# A guard against a launch that hangs, not a time limit of the tests: a two-rank launch
# takes seconds here, and a machine many times slower or busier must still pass.
LAUNCH_TIMEOUT = 600

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    path = env.get("PYTHONPATH")
    env.update(PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


# ------------------------------------------------------------------ sharding, no processes
@pytest.mark.parametrize("n, batch_size, world_size", [
    (684, 64, 2), (100, 10, 2), (97, 12, 4), (64, 64, 2), (7, 8, 2), (50, 16, 1),
])
def test_shard_order_partitions_every_global_batch(n, batch_size, world_size):
    order = torch.randperm(1000)[:n]
    shares = [shard_order(order, batch_size, r, world_size) for r in range(world_size)]
    local = batch_size // world_size
    full, rest = divmod(n, batch_size)
    tail = rest // world_size
    for r, share in enumerate(shares):
        assert len(share) == full * local + tail
        for b in range(full):  # rank r holds slice r of global batch b
            start = b * batch_size + r * local
            assert torch.equal(share[b * local:(b + 1) * local], order[start:start + local])
    drawn = torch.cat(shares)
    kept = full * batch_size + tail * world_size
    assert len(drawn) == kept and len(set(drawn.tolist())) == kept  # disjoint
    assert set(drawn.tolist()) == set(order[:kept].tolist())
    if world_size == 1:
        assert torch.equal(shares[0], order)


def test_shard_order_rejects_batches_that_do_not_split():
    with pytest.raises(ValueError, match=r"batch_size=10 .* multiple of 3; use e.g. batch_size=9"):
        shard_order(torch.arange(30), 10, 0, 3)
    with pytest.raises(ValueError, match="rank must be in"):
        shard_order(torch.arange(30), 10, 2, 2)


def test_steps_per_epoch_with_ranks():
    # a trailing batch is kept when each rank gets at least two of its samples
    assert n_batches(684, 64) == n_batches(684, 64, 2) == 11
    assert n_batches(67, 64, 2) == 1  # 3 left over: one each, dropped
    assert n_batches(68, 64, 2) == 2
    assert n_batches(65, 64) == 1 and n_batches(66, 64) == 2
    assert n_batches(3, 64, 2) == 1  # the only batch is kept with one sample each
    for n in range(1, 40):  # one process: unchanged rule
        full, rest = divmod(n, 8)
        assert n_batches(n, 8) == full + (rest > 1 or (rest == 1 and full == 0))


def test_shard_range_covers_validation_once():
    parts = [shard_range(11, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts), torch.arange(11))
    assert [len(p) for p in parts] == [4, 4, 3]


def test_check_world_errors():
    check_world(10, 8, 2)
    with pytest.raises(ValueError, match="multiple of 3"):
        check_world(100, 64, 3)
    # the samples counted are those trained on, which need not be all the samples given
    with pytest.raises(ValueError, match=r"3 training samples cannot be shared by 4 ranks.*"
                                         r"sample_weight 0, and those of a group an upweight "
                                         r"dict weighs 0, are not trained on"):
        check_world(3, 8, 4)


@pytest.mark.parametrize("adjustment", [0.0, 3.0])
def test_groupdro_over_ranks_is_the_global_batch_objective(adjustment):
    """Rank slices + all-reduced group sums give the one-process GroupDRO exactly, with
    the group adjustment from the whole training set's group sizes on every rank."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 5, generator=gen)
    y = torch.randint(0, 3, (24,), generator=gen)
    g = torch.randint(0, 4, (24,), generator=gen)
    w = torch.rand(24, generator=gen) + 0.5
    g[:12] = torch.where(g[:12] == 3, 0, g[:12])  # group 3 only on the second rank
    weight = torch.randn(5, 3, generator=gen, requires_grad=True)

    sizes = torch.tensor([40, 9, 16, 4])  # n_g of the whole training set
    one = GroupDROObjective(4, eta=0.5, device=torch.device("cpu"), adjustment=adjustment,
                            group_sizes=sizes)
    for _ in range(2):  # two steps, so the second uses an updated q
        expected = one(x @ weight, y, w, g)
    (grad_one,) = torch.autograd.grad(expected, weight)

    world = 2
    totals: list[torch.Tensor] = []

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        return totals[-1]  # what the sum over both ranks returns

    objs = [GroupDROObjective(4, eta=0.5, device=torch.device("cpu"), all_reduce=all_reduce,
                              world_size=world, adjustment=adjustment, group_sizes=sizes)
            for _ in range(world)]
    slices = [slice(0, 12), slice(12, 24)]
    for _ in range(2):
        sums = [objs[r].group_sums((x[s] @ weight).detach(), y[s], w[s], g[s])
                for r, s in enumerate(slices)]
        totals.append(torch.stack([sums[0][0] + sums[1][0], sums[0][1] + sums[1][1]]))
        losses = [objs[r](x[s] @ weight, y[s], w[s], g[s]) for r, s in enumerate(slices)]
    grads = [torch.autograd.grad(loss, weight)[0] for loss in losses]
    for r in range(world):
        assert torch.allclose(objs[r].q, one.q, atol=1e-7)
        assert float(losses[r].detach()) == pytest.approx(float(expected.detach()), abs=1e-6)
    # what DDP applies: the average of the ranks' gradients
    assert torch.allclose((grads[0] + grads[1]) / world, grad_one, atol=1e-6)
    plain = GroupDROObjective(4, eta=0.5, device=torch.device("cpu"))
    for _ in range(2):
        plain(x @ weight, y, w, g)
    assert torch.equal(plain.q, one.q) == (adjustment == 0)


def test_one_process_is_a_world_of_one():
    world = LocalContext(device=torch.device("cpu"))
    assert (world.rank, world.world_size, world.is_main, world.data_parallel) == (0, 1, True, False)
    t = torch.arange(3.0)
    assert world.all_reduce(t) is t and world.broadcast_(t) is t
    assert world.broadcast_object({"a": 1}) == {"a": 1}
    assert world.any(True) and not world.any(False) and world.max(2.5) == 2.5
    assert world.run_on_main(lambda: 7) == 7
    decision = {"w": (torch.ones(2, dtype=torch.bool), torch.tensor([1]))}
    assert world.broadcast_decision(decision) is decision
    world.check_same("data", 1)
    world.check_masks(None, when="now")


def test_each_rank_gets_its_own_stream_of_the_global_generator():
    """Rank 0 (one process) keeps its stream; rank r > 0 gets one from the seed and r."""
    def draws(rank: int, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            LocalContext(rank=rank, world_size=4).seed_own_stream(seed)
            return torch.rand(64)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        one_process = torch.rand(64)
    assert torch.equal(draws(0, 7), one_process)
    streams = [draws(rank, 7) for rank in range(4)]
    assert torch.equal(streams[2], draws(2, 7))  # derived, not drawn
    assert not torch.equal(streams[2], draws(2, 8))
    assert len({tuple(s.tolist()) for s in streams}) == 4


def test_global_groupdro_is_deprecated():
    obj = GroupDROObjective(2, eta=0.1, device=torch.device("cpu"))
    with pytest.warns(FutureWarning, match="GlobalGroupDRO is deprecated"):
        assert GlobalGroupDRO(obj, lambda t: t, 2) is obj
    assert obj.world_size == 2


# ------------------------------------------------------------------- choosing the mode
def _clear_torchrun_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def test_auto_is_one_process_without_torchrun(monkeypatch):
    _clear_torchrun_env(monkeypatch)
    cpu = torch.device("cpu")
    assert resolve_distributed("auto", cpu, timeout=10) == LocalContext(device=cpu)
    assert resolve_distributed(False, cpu, timeout=10) == LocalContext(device=cpu)
    monkeypatch.setenv("WORLD_SIZE", "1")
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "29500")):
        monkeypatch.setenv(key, value)
    assert resolve_distributed("auto", cpu, timeout=10) == LocalContext(device=cpu)  # 1 rank
    assert not dist.is_initialized()


def test_distributed_true_needs_a_process_group(monkeypatch):
    _clear_torchrun_env(monkeypatch)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedError, match=r"torchrun .*WORLD_SIZE, LOCAL_RANK"):
        RESTClassifier(distributed=True, max_epochs=1, device="cpu").fit(
            np.random.default_rng(0).random((20, 3)), np.arange(20) % 2)


@pytest.mark.parametrize("params, match", [
    ({"distributed": "yes"}, "distributed"),
    ({"distributed_timeout": 0}, "distributed_timeout"),
])
def test_bad_distributed_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        RESTClassifier(**params).fit(np.random.default_rng(0).random((20, 3)), np.arange(20) % 2)


@pytest.mark.parametrize("timeout", [2592001.0, 1234567, 1e-05])
def test_a_failed_rendezvous_quotes_distributed_timeout_as_given(timeout):
    # it was formatted by ":g", to 6 digits: 2592001.0 read 2.592e+06
    with pytest.raises(DistributedError, match="rendezvous failed") as caught:
        with translate_failures(timeout):
            raise dist.DistError("rendezvous failed")
    assert f"longer than distributed_timeout={timeout} s," in str(caught.value)


def test_the_timeout_quoted_is_the_process_groups(tmp_path, monkeypatch):
    import datetime

    from rest_fair.training import distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=90))
    try:
        assert distributed._timeout_named(90) == "distributed_timeout=90 s"
        assert distributed._timeout_named(1800.0) == (
            "the process group's timeout, 90.0 s (distributed_timeout=1800.0 s sets it only "
            "when fit initialises the group)")
        # a torch that does not tell a group's timeout
        monkeypatch.delattr(dist.ProcessGroup, "_get_backend")
        assert distributed._timeout_named(1800.0) == (
            "the process group's timeout (distributed_timeout=1800.0 s when fit initialised "
            "the group)")
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


def test_one_rank_process_group_trains_through_ddp_exactly(tmp_path, monkeypatch):
    """distributed=True on a 1-rank gloo group: DDP wraps the module, results unchanged."""
    _clear_torchrun_env(monkeypatch)
    worker = _worker_module()
    X, y, g = worker.TRAIN
    params = {**worker.PARAMS, "max_epochs": 2}
    plain = RESTClassifier(**params, distributed=False).fit(X, y, groups=g)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        record = worker.Record()
        auto = RESTClassifier(**params, callbacks=[record]).fit(X, y, groups=g)
        assert record.forward_module == "MLP"  # "auto" with one rank: one process
        record = worker.Record()
        ddp = RESTClassifier(**params, callbacks=[record], distributed=True).fit(
            X, y, groups=g)
        assert record.forward_module == "DistributedDataParallel"
    finally:
        dist.destroy_process_group()
    assert type(ddp.module_).__name__ == "MLP"
    for fitted in (auto, ddp):
        np.testing.assert_array_equal(fitted.predict_logits(X), plain.predict_logits(X))
        for a, b in zip(fitted.history_, plain.history_, strict=True):
            assert {k: v for k, v in a.items() if k != "dur"} == \
                {k: v for k, v in b.items() if k != "dur"}


# ----------------------------------------------------------- two ranks under torchrun
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every scenario of ddp_worker.py, run once by 2 ranks under torchrun."""
    out = tmp_path_factory.mktemp("ddp")
    single = out / "single-process-checkpoint"  # resumed by 2 ranks
    _worker_module().interrupted_fit(single, False)
    logs = out / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "--redirects=3", f"--log-dir={logs}", str(WORKER),
           str(out), "all"]
    proc = subprocess.run(cmd, env=_env(REST_FAIR_TEST_SINGLE_CHECKPOINT=str(single)),
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    per_rank = ["".join(p.read_text() for p in sorted(logs.glob(f"**/{r}/std*.log")))
                for r in range(2)]
    assert proc.returncode == 0, _tail(proc.stdout + proc.stderr + per_rank[0] + per_rank[1])
    results = {}
    for name in _worker_module().SCENARIOS:
        results[name] = [torch.load(out / f"{name}-rank{r}.pt", weights_only=False)
                         for r in range(2)]
    results["logs"] = per_rank
    results["single_checkpoint"] = single
    results["two_rank_checkpoint"] = out / "two-rank-checkpoint"
    results["threads_at_exit"] = [
        json.loads((out / f"threads-rank{r}.json").read_text()) for r in range(2)]
    return results


@pytest.fixture(scope="module")
def one_process():
    """The same fits in this process (same global batch), for comparison."""
    worker = _worker_module()
    log = worker.DrawLog()
    try:
        return {name: worker.SCENARIOS[name](log, None, False)
                for name in ("rest", "groupdro", "groupdro_adjusted", "jtt", "weighted")}
    finally:
        log.restore()


@pytest.mark.parametrize("scenario", DDP_SCENARIOS)
def test_two_rank_fits_predict_as_recorded(two_ranks, golden, scenario):
    logits = np.asarray(two_ranks[scenario][0]["logits"])
    assert_same_as_recorded(golden, f"ddp_{scenario}", logits)


def test_masks_identical_on_every_rank_after_every_topology_update(two_ranks, one_process):
    rank0, rank1 = two_ranks["rest"]
    assert rank0["forward_module"] == "DistributedDataParallel"
    assert len(rank0["updates"]) == rank0["n_topology_updates"] > 3
    for (step0, masks0), (step1, masks1) in zip(rank0["updates"], rank1["updates"],
                                                strict=True):
        assert step0 == step1 and masks0 == masks1
    # the same topology schedule as one process with the same global batch
    assert [s for s, _ in rank0["updates"]] == [s for s, _ in one_process["rest"]["updates"]]
    assert rank0["n_train_steps"] == one_process["rest"]["n_train_steps"]


@pytest.mark.parametrize("scenario",
                         ["rest", "groupdro", "groupdro_adjusted", "jtt", "weighted", "resume"])
def test_fitted_state_identical_across_ranks(two_ranks, scenario):
    rank0, rank1 = two_ranks[scenario]
    np.testing.assert_array_equal(rank0["logits"], rank1["logits"])
    np.testing.assert_array_equal(rank0["pred"], rank1["pred"])
    for key in ("masks", "weights", "history", "n_train_steps", "n_topology_updates"):
        assert rank0[key] == rank1[key], key
    assert rank0["module_type"] == "MLP"  # module_ is the unwrapped network


@pytest.mark.parametrize("scenario", ["rest", "groupdro", "jtt"])
def test_worst_group_accuracy_close_to_one_process(two_ranks, one_process, scenario):
    ddp, one = two_ranks[scenario][0]["wga"], one_process[scenario]["wga"]
    assert abs(ddp - one) <= 0.05, (ddp, one)
    assert ddp > 0.55  # learnt more than the shortcut (which gets ~0 on conflicting groups)


def test_weighted_validation_over_ranks_is_the_one_process_validation(two_ranks, one_process):
    """Held-out rows keep their sample_weight (zeros too); each rank scores its part.

    Two ranks and one process train the same model up to the order of floating-point sums
    (the all-reduce, the split of the validation sums), so the epoch records agree to float
    tolerance, the same epoch is kept and the predictions are the same.
    """
    worker = _worker_module()
    ddp, one = two_ranks["weighted"][0], one_process["weighted"]
    assert [s for s, _ in ddp["updates"]] == [s for s, _ in one["updates"]]
    history_ddp, history_one = json.loads(ddp["history"]), json.loads(one["history"])
    assert len(history_ddp) == len(history_one) == worker.PARAMS["max_epochs"]
    for a, b in zip(history_ddp, history_one, strict=True):
        assert a.keys() == b.keys()
        for key in ("train_loss", "valid_loss", "valid_acc", "valid_worst_group_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
        assert [a[k] for k in ("epoch", "best", "n_topology_updates")] == \
            [b[k] for k in ("epoch", "best", "n_topology_updates")]
    # the weights are in effect: accuracy is not a share of whole held-out samples
    n_valid = round(0.1 * len(worker.TRAIN[1]))
    assert any(abs(r["valid_acc"] * n_valid - round(r["valid_acc"] * n_valid)) > 1e-6
               for r in history_one)
    assert ddp["best_epoch"] == one["best_epoch"]
    np.testing.assert_array_equal(ddp["pred"], one["pred"])
    np.testing.assert_allclose(ddp["logits"], one["logits"], atol=1e-4)


def test_ranks_never_draw_a_training_sample_of_weight_zero(two_ranks, one_process):
    """The ranks share the one-process order of the samples of positive weight."""
    rank0, rank1 = two_ranks["weighted"]
    weights = rank0["loss_weights"]
    assert torch.equal(weights, one_process["weighted"]["loss_weights"])
    assert (weights == 0).sum() > 50
    for epoch, single in enumerate(one_process["weighted"]["global_orders"]):
        union = torch.cat([rank0["local_orders"][epoch], rank1["local_orders"][epoch]])
        assert sorted(union.tolist()) == sorted(single.tolist())
        assert bool((weights[union] > 0).all())


def test_groupdro_weights_identical_and_close_to_one_process(two_ranks, one_process):
    rank0, rank1 = two_ranks["groupdro"]
    np.testing.assert_array_equal(rank0["q"], rank1["q"])
    np.testing.assert_allclose(rank0["q"], one_process["groupdro"]["q"], atol=0.05)


def test_groupdro_adjustment_is_the_whole_training_sets_on_every_rank(two_ranks, one_process):
    """Every rank adjusts by the group sizes of the whole training set, not of its share."""
    rank0, rank1 = two_ranks["groupdro_adjusted"]
    one = one_process["groupdro_adjusted"]
    np.testing.assert_array_equal(rank0["adjustment"], one["adjustment"])
    np.testing.assert_array_equal(rank1["adjustment"], one["adjustment"])
    np.testing.assert_array_equal(rank0["q"], rank1["q"])
    np.testing.assert_allclose(rank0["q"], one["q"], atol=0.05)
    # the adjustment is in effect: the small groups (1, 2) end with more weight
    plain = two_ranks["groupdro"][0]["q"]
    assert rank0["q"][-1, 1:3].sum() > plain[-1, 1:3].sum() + 0.05


def test_jtt_error_set_identical_across_ranks(two_ranks, one_process):
    rank0, rank1 = two_ranks["jtt"]
    np.testing.assert_array_equal(rank0["inferred"], rank1["inferred"])
    agree = np.mean(rank0["inferred"] == one_process["jtt"]["inferred"])
    assert agree > 0.9


def test_dataset_input_trains_like_arrays(two_ranks):
    for rank in two_ranks["rest"]:
        from_dataset, from_arrays = rank["dataset"], rank
        np.testing.assert_array_equal(from_dataset["logits"], from_arrays["logits"])
        assert from_dataset["masks"] == from_arrays["masks"]


def test_union_of_rank_draws_is_the_one_process_draw(two_ranks, one_process):
    """Disjoint slices of one global order: each group drawn lambda times as often."""
    worker = _worker_module()
    rank0, rank1 = two_ranks["rest"]
    n_epochs = worker.PARAMS["max_epochs"]
    single = one_process["rest"]["global_orders"][:n_epochs]
    counts = np.zeros(len(single[0]) + 100, dtype=np.int64)
    for epoch in range(n_epochs):
        assert torch.equal(rank0["global_orders"][epoch], rank1["global_orders"][epoch])
        assert torch.equal(rank0["global_orders"][epoch], single[epoch])
        local0, local1 = rank0["local_orders"][epoch], rank1["local_orders"][epoch]
        union = torch.cat([local0, local1])
        # 684 = 10 full batches + 44: nothing is trimmed, so the union is the whole order
        assert sorted(union.tolist()) == sorted(single[epoch].tolist())
        np.add.at(counts, union.numpy(), 1)
    # statistical check on the union: draws per sample of each group vs. its weight
    g_train = rank0["train_groups"].numpy()
    counts = counts[: len(g_train)]
    minority = (g_train == 1) | (g_train == 2)  # group = 2 * y + b; b != y
    ratio = counts[minority].mean() / counts[~minority].mean()
    # standard error of the ratio of two Poisson rates, from the expected draws
    lam, total = worker.LAMBDA, n_epochs * len(g_train)
    p_min = minority.sum() * lam / (minority.sum() * lam + (~minority).sum())
    se = lam * np.sqrt(1 / (p_min * total) + 1 / ((1 - p_min) * total))
    assert abs(ratio - lam) < 4 * se, (ratio, se)
    assert 0.15 * lam < 4 * se < 0.5 * lam  # the check has power: it tells 5 from 3.5


def test_checkpoints_written_by_rank_0_and_resume_under_torchrun(two_ranks):
    rank0, rank1 = two_ranks["resume"]
    assert rank0["writes"] == [1, 2, 3, 4] and rank1["writes"] == []
    # interrupted after epoch 2 and resumed: the same model as the uninterrupted run
    assert rank0["weights"] == two_ranks["rest"][0]["weights"]
    np.testing.assert_array_equal(rank0["logits"], two_ranks["rest"][0]["logits"])


def test_two_ranks_resume_a_one_process_checkpoint(two_ranks, one_process):
    from rest_fair.persistence.checkpoint import read_checkpoint

    rank0, rank1 = two_ranks["resume_other_world"]
    np.testing.assert_array_equal(rank0["logits"], rank1["logits"])
    assert rank0["history"] == rank1["history"]
    saved = read_checkpoint(two_ranks["single_checkpoint"])["train_state"]["history"]
    assert len(saved) == 2 and len(rank0["history_list"]) == 4
    assert rank0["history_list"][:2] == saved  # continued, not restarted
    assert abs(rank0["wga"] - one_process["rest"]["wga"]) <= 0.05


def test_a_checkpoint_of_more_steps_per_epoch_resumes_on_this_runs_epochs(two_ranks):
    """The step counter went on from the one-process run's 8 steps, so the resumed epochs
    ended at steps 11 and 14 and the drop schedule, whose end (step 9) is counted in the
    two ranks' steps, had passed: no topology update followed."""
    for result in two_ranks["resume_fewer_steps"]:
        resumed, full = result["resumed"], result["full"]
        assert resumed["epoch_ends"] == full["epoch_ends"][2:] == [9, 12]
        assert resumed["updates"] == [s for s in full["updates"] if s > 6] != []
        assert result["n_train_steps"] == 2 * 4 + 2 * 3  # the steps taken


def test_one_process_resumes_a_two_rank_checkpoint(two_ranks, one_process):
    """Written by rank 0 of two after epoch 2, continued in one process: the model that
    the uninterrupted runs train, up to the order of floating-point sums."""
    from rest_fair.persistence.checkpoint import read_checkpoint

    worker = _worker_module()
    X, y, g = worker.TRAIN
    directory = two_ranks["two_rank_checkpoint"]
    saved = read_checkpoint(directory)["train_state"]["history"]
    clf = RESTClassifier(**worker.PARAMS, distributed=False).fit(X, y, groups=g,
                                                                 resume_from=directory)
    assert len(saved) == 2 and clf.history_[:2] == saved  # continued, not restarted
    for uninterrupted in (one_process["rest"], two_ranks["rest"][0]):
        history = json.loads(uninterrupted["history"])
        assert [r["best"] for r in clf.history_] == [r["best"] for r in history]
        for a, b in zip(clf.history_, history, strict=True):
            for key in ("train_loss", "valid_loss", "valid_acc", "valid_worst_group_acc"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
        assert clf.n_train_steps_ == uninterrupted["n_train_steps"]
        assert {k: worker.digest(v) for k, v in clf.masks_.items()} == uninterrupted["masks"]
        np.testing.assert_array_equal(clf.predict(worker.TEST[0]), uninterrupted["pred"])


def test_a_kept_epoch_whose_output_overflows_fails_on_every_rank(two_ranks):
    for result in two_ranks["diverge_unvalidated"]:
        assert "epoch 1: the network output on the training data became non-finite" in (
            result["error"] or "")


def test_ranks_given_different_data_are_refused(two_ranks):
    for result in two_ranks["different_data"]:
        assert result["error"] is not None
        assert "rank 1 was given different data or parameters than rank 0" in result["error"]


def test_ranks_given_different_validation_data_are_refused(two_ranks):
    for result in two_ranks["different_validation"]:
        assert "rank 1 was given different data or parameters than rank 0" in (
            result["error"] or "")


def test_a_callbacks_own_error_is_not_called_a_failed_collective(two_ranks):
    for result in two_ranks["callback_error"]:
        assert result["error"] == ("RuntimeError: metrics upload failed: connection refused "
                                   "by the tracking server")


def test_a_modules_own_error_is_not_called_a_failed_collective(two_ranks):
    for result in two_ranks["module_error"]:
        assert result["error"] == "RuntimeError: feature store lookup timed out"


def test_mask_divergence_is_detected_on_every_rank(two_ranks):
    for result in two_ranks["diverge"]:
        assert result["error"] is not None
        assert "masks differ across ranks" in result["error"]
        assert f"layer(s) [{result['layer']!r}]" in result["error"]
        assert "on rank(s) [1] than on rank 0" in result["error"]


def test_only_rank_0_shows_progress(two_ranks):
    logs = two_ranks["logs"]
    assert "REST" in logs[0]  # the fit with verbose=1 shows its bar on rank 0 ...
    assert "REST" not in logs[1]  # ... and only there


def test_warnings_of_the_parameters_data_network_and_resume_come_from_rank_0_only(two_ranks):
    """A job of N ranks showed every such warning N times."""
    rank0, rank1 = (result["warnings"] for result in two_ranks["warnings"])
    for expected in ("DataConversionWarning: A column-vector y was passed",
                     "groupdro_eta=0.5 is only used when objective is 'groupdro'",
                     "FutureWarning: sparse_init='erk' is deprecated",
                     "every masked layer keeps at least one active weight",
                     "module='resnet18' reads samples of shape (8, 8, 3)",
                     "the checkpoint holds the state of callbacks ['Stateful:0']"):
        assert sum(expected in message for message in rank0) == 1, (expected, rank0)
    assert rank1 == []


def test_no_gloo_thread_outlives_the_exit_handler(two_ranks):
    """The process group rest_fair initialised is torn down before Python shuts down.

    A gloo worker thread still alive when the interpreter finalises can drop a finished
    collective's tensors then; taking the GIL to do so kills the process (SIGABRT,
    "terminate called without an active exception"), so torchrun fails the job. That
    happened only now and then; whether the threads are gone is checked every time.
    """
    for rank, names in enumerate(two_ranks["threads_at_exit"]):
        if names is None:
            pytest.skip("threads are listed from /proc/self/task (Linux)")
        assert not [n for n in names if n.startswith(("gloo", "pt_gloo"))], (rank, names)


# ----------------------------------------------------------------- a dead or hung rank
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(out: Path, how: str) -> tuple[list[subprocess.Popen], list[Path]]:
    """Two ranks of ddp_worker.py ``how`` (writing to ``out``), started like torchrun's
    workers but without its agent (as under srun), which would stop rank 0 when rank 1
    fails; their processes and logs."""
    port = str(_free_port())
    procs, logs = [], []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        logs.append(out / f"rank{rank}.log")
        with logs[-1].open("w") as log:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), how],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs, logs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_dead_or_hung_rank_fails_the_others_within_the_timeout(tmp_path, how):
    """Two ranks started like torchrun's workers, but without its agent (as under srun).

    The timeout is the point of this test, but it also bounds every collective of the
    ranks' set-up (the rendezvous, DDP's first wrap, which imports torch._dynamo), so it
    must be long enough for that on this machine under its present load. It is derived
    from a baseline measured in this run: how long the ranks took to start (import torch
    and rest_fair), which scales with the same speed. The ranks then call fit together
    (``start_signal`` in tests/_support/ddp_worker.py), so their start-up skew does not count.
    The bounds on ``elapsed`` are fractions of that timeout.
    """
    launched = time.time()
    procs, logs = _start_ranks(tmp_path, how)
    try:
        ready = [tmp_path / f"ready-rank{rank}" for rank in range(2)]
        while not all(r.is_file() for r in ready):
            assert all(p.poll() is None for p in procs), _tail(
                "".join(log.read_text() for log in logs))
            assert time.time() < launched + LAUNCH_TIMEOUT, "the ranks never got ready"
            time.sleep(0.05)
        startup = max(float(r.read_text()) for r in ready) - launched
        timeout = max(4.0, round(2.0 * startup, 1))
        go = tmp_path / "go.tmp"
        go.write_text(repr(timeout))
        go.replace(tmp_path / "go")
        # only a guard against a test that hangs: the verdict does not depend on it
        procs[0].wait(timeout=LAUNCH_TIMEOUT)
    finally:
        _stop(procs)
    assert procs[0].returncode == 3, _tail(logs[0].read_text())
    error = json.loads((tmp_path / "error-rank0.json").read_text())
    failed_at = float((tmp_path / "failed_at").read_text())
    elapsed = error["time"] - failed_at
    assert error["type"] == "DistributedError"
    assert "distributed fit failed on rank 0 of 2" in error["message"]
    assert f"distributed_timeout={timeout} s" in error["message"]
    # the failed group is torn down at exit too: no gloo thread outlives the interpreter
    # (one that does can abort the process at exit, which then reports SIGABRT)
    names = json.loads((tmp_path / "threads-rank0.json").read_text())
    if names is not None:
        assert not [n for n in names if n.startswith(("gloo", "pt_gloo"))], names
    if how == "kill":  # gloo sees the closed connection at once, long before the timeout
        assert 0 <= elapsed < 0.5 * timeout, (elapsed, timeout)
    else:  # nothing to see: the collective's timeout ends the wait
        assert 0.75 * timeout <= elapsed < 1.5 * timeout, (elapsed, timeout)
        assert "timed out" in error["message"].lower()


def test_a_failure_in_a_process_group_of_the_callers_quotes_the_groups_timeout(tmp_path):
    """The group the caller initialised keeps its own timeout, which distributed_timeout does
    not change: the message quoted distributed_timeout as the time waited for."""
    procs, logs = _start_ranks(tmp_path, "kill_in_own_group")
    try:
        procs[0].wait(timeout=LAUNCH_TIMEOUT)
    finally:
        _stop(procs)
    assert procs[0].returncode == 3, _tail(logs[0].read_text())
    message = json.loads((tmp_path / "error-rank0.json").read_text())["message"]
    assert "distributed fit failed on rank 0 of 2" in message
    assert ("hung for longer than the process group's timeout, 300.0 s "
            "(distributed_timeout=7.0 s sets it only when fit initialises the group)") in message


def test_groupdro_through_ddp_on_two_gloo_ranks_is_the_one_process_run(tmp_path):
    """Real collectives and DDP's gradient averaging: the group weights, the loss and the
    applied gradients of every step are those of one process on the global batch, with and
    without the group adjustment."""
    script = WORKER.parent / "groupdro_ranks.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(script), str(tmp_path), "0.0", "3.0"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, _tail(proc.stdout + proc.stderr)
    spec = importlib.util.spec_from_file_location("groupdro_ranks", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for adjustment in (0.0, 3.0):
        one = module.run_steps(0, 1, adjustment)
        ranks = [torch.load(tmp_path / f"{adjustment}-rank{r}.pt", weights_only=False)
                 for r in range(2)]
        for step, (q, loss, grads) in enumerate(one):
            for r in range(2):
                q_r, loss_r, grads_r = ranks[r][step]
                torch.testing.assert_close(q_r, q, rtol=0, atol=1e-6)
                assert loss_r == pytest.approx(loss, abs=1e-5), (adjustment, step, r)
                for a, b in zip(grads_r, grads, strict=True):
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_every_rank_draws_its_own_dropout_and_resumes_its_own_stream(two_ranks):
    """Dropout draws independently on the two ranks (one process draws it independently
    across the whole batch), the network stays the same on both, and a resumed run
    continues every rank's stream where it was."""
    rank0, rank1 = two_ranks["dropout"]
    for key in ("masks", "weights", "history"):
        assert rank0[key] == rank1[key], key
    drawn0, drawn1 = rank0["drawn"], rank1["drawn"]
    assert len(drawn0) == len(drawn1) == 4 * 11  # 4 epochs of 11 steps
    agree = np.mean([float((a == b).float().mean()) for a, b in zip(drawn0, drawn1,
                                                                     strict=True)])
    assert 0.45 < agree < 0.55, agree  # independent masks of p=0.5 agree on about half
    for result in (rank0, rank1):
        resumed = result["resumed_drawn"]
        assert len(resumed) == 2 * 11  # epochs 3 and 4
        assert all(torch.equal(a, b) for a, b in zip(resumed, result["drawn"][22:],
                                                      strict=True))
        assert result["resumed"]["weights"] == result["weights"]
        np.testing.assert_array_equal(result["resumed"]["logits"], result["logits"])
    # a one-process checkpoint holds no stream for rank 1, which takes a fresh one
    other0, other1 = rank0["other_world_drawn"], rank1["other_world_drawn"]
    assert len(other0) == len(other1) == 2 * 11
    agree = np.mean([float((a == b).float().mean()) for a, b in zip(other0, other1,
                                                                     strict=True)])
    assert 0.45 < agree < 0.55, agree


class _PartlyUsed(torch.nn.Module):
    """A network whose second layer's parameters never reach the output."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.fc = torch.nn.Linear(int(np.prod(input_shape)), n_classes)
        self.unused = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)


def test_a_parameter_without_gradient_is_named_under_ddp(tmp_path, monkeypatch):
    """DDP needs every trainable parameter in the loss; its own error (at the next step)
    advises a DistributedDataParallel argument that fit does not take. Refused at the first
    step instead, naming the parameters and the remedy; frozen ones train as documented."""
    _clear_torchrun_env(monkeypatch)
    X, y = np.random.default_rng(0).random((64, 6), dtype=np.float32), np.arange(64) % 2
    params = dict(module=_PartlyUsed, sparsity=0.0, max_epochs=1, batch_size=16,
                  device="cpu", random_state=0, distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        with pytest.raises(ValueError, match=r"'unused\.weight', 'unused\.bias'.*"
                                             r"requires_grad_\(False\)"):
            RESTClassifier(**params).fit(X, y)

        class Frozen(_PartlyUsed):
            def __init__(self, input_shape, n_classes):
                super().__init__(input_shape, n_classes)
                self.unused.requires_grad_(False)

        RESTClassifier(**{**params, "module": Frozen}).fit(X, y)
    finally:
        dist.destroy_process_group()
