"""Fits that tests/training/test_distributed.py runs under torchrun (and in one process, to
compare).

Run as ``torchrun --standalone --nproc_per_node=2 tests/_support/ddp_worker.py OUT_DIR
[scenario]``; every rank writes ``OUT_DIR/<scenario>-rank<r>.pt`` with what the tests compare
across ranks. ``scenario`` ``"all"`` (default) runs the fits of :data:`SCENARIOS`; ``"kill"``
and ``"hang"`` make rank 1 die or hang mid-training, and ``"kill_in_own_group"`` die in a
fit on a process group initialised before it (launched without torchrun's agent, see the
tests).
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback, Checkpoint
from rest_fair.exceptions import DistributedError, MaskDivergenceError, TrainingDivergedError
from rest_fair.training import sampler as sampler_module

LAMBDA = 5.0
PARAMS = dict(
    sparsity=0.8, regrow="gradient", update_interval=4, max_epochs=4, batch_size=64,
    lr=0.05, upweight=LAMBDA, random_state=0, device="cpu", lr_scheduler="constant",
    module_params={"hidden_layer_sizes": (32, 32)},
)


def make_data(n: int, seed: int, conflicting: float) -> tuple[np.ndarray, ...]:
    """Two classes; a strong spurious feature agrees with the class except on a minority."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    b = np.where(rng.random(n) < conflicting, 1 - y, y)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X[:, 0] += 3.0 * (2 * b - 1)
    X[:, 1:4] += 0.8 * (2 * y - 1)[:, None]
    return X, y, y * 2 + b


TRAIN = make_data(760, 0, 0.1)
TEST = make_data(800, 1, 0.5)


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def worst_group_accuracy(pred: np.ndarray) -> float:
    _, y, g = TEST
    return float(min(np.mean(pred[g == k] == y[g == k]) for k in np.unique(g)))


class Record(Callback):
    """Mask digests after every topology update; which module the loop trains through."""

    def __init__(self) -> None:
        self.updates: list = []
        self.forward_module = None
        self.train_groups = None

    def on_train_begin(self, net, *, run, **kwargs):
        self.forward_module = type(run.parts.forward_module).__name__
        self.train_groups = run.parts.train.groups.clone()
        self.loss_weights = run.parts.train.loss_weights

    def on_topology_update(self, net, *, step, n_regrown, **kwargs):
        self.updates.append((step, {k: digest(v) for k, v in net.masks_.items()}))


class DrawLog:
    """Wraps the epoch sampler to record every order it hands out."""

    def __init__(self) -> None:
        self.local: list = []
        self.glob: list = []
        cls = sampler_module.EpochSampler
        self._epoch_order, self._global_order = cls.epoch_order, cls.global_order
        log = self

        def global_order(sampler):
            order = log._global_order(sampler)
            log.glob.append(order.clone())
            return order

        def epoch_order(sampler):
            order = log._epoch_order(sampler)
            log.local.append(order.clone())
            return order

        cls.global_order, cls.epoch_order = global_order, epoch_order

    def reset(self) -> None:
        self.local, self.glob = [], []

    def restore(self) -> None:
        cls = sampler_module.EpochSampler
        cls.epoch_order, cls.global_order = self._epoch_order, self._global_order


def _summary(clf: RESTClassifier) -> dict:
    X_test = TEST[0]
    pred = clf.predict(X_test)
    return {
        "pred": pred,
        "logits": clf.predict_logits(X_test),
        "wga": worst_group_accuracy(pred),
        "masks": {k: digest(v) for k, v in clf.masks_.items()},
        "weights": digest(torch.cat([p.detach().flatten()
                                     for p in clf.module_.parameters()])),
        "history": json.dumps(clf.history_, sort_keys=True),
        "n_train_steps": clf.n_train_steps_,
        "n_topology_updates": clf.n_topology_updates_,
        "module_type": type(clf.module_).__name__,
    }


def scenario_rest(log: DrawLog, out: Path, distributed) -> dict:
    X, y, g = TRAIN
    record = Record()
    log.reset()
    clf = RESTClassifier(**PARAMS, callbacks=[record], distributed=distributed,
                         verbose=1).fit(X, y, groups=g)
    result = _summary(clf)
    result.update(updates=record.updates, forward_module=record.forward_module,
                  train_groups=record.train_groups,
                  local_orders=list(log.local), global_orders=list(log.glob))
    # the same fit reading X as a torch Dataset
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(X))
    clf = RESTClassifier(**PARAMS, distributed=distributed).fit(dataset, y, groups=g)
    result["dataset"] = _summary(clf)
    return result


def scenario_groupdro(log: DrawLog, out: Path, distributed) -> dict:
    X, y, g = TRAIN
    params = {**PARAMS, "objective": "groupdro", "upweight": None, "groupdro_eta": 0.1}
    clf = RESTClassifier(**params, distributed=distributed).fit(X, y, groups=g)
    return {**_summary(clf), "q": np.asarray(clf.group_weight_history_)}


class SeeObjective(Callback):
    """The adjustment GroupDRO's objective adds to every group's loss in its update."""

    adjustment = None

    def on_train_begin(self, net, *, run, **kwargs):
        self.adjustment = run.parts.objective.group_adjustment.cpu().numpy().copy()


def scenario_groupdro_adjusted(log: DrawLog, out: Path, distributed) -> dict:
    X, y, g = TRAIN
    params = {**PARAMS, "objective": "groupdro", "upweight": None, "groupdro_eta": 0.1,
              "groupdro_adjustment": 4.0}
    seen = SeeObjective()
    clf = RESTClassifier(**params, callbacks=[seen], distributed=distributed).fit(
        X, y, groups=g)
    return {**_summary(clf), "q": np.asarray(clf.group_weight_history_),
            "adjustment": seen.adjustment}


def scenario_jtt(log: DrawLog, out: Path, distributed) -> dict:
    X, y, g = TRAIN
    params = {**PARAMS, "infer_groups": "jtt", "jtt_epochs": 2}
    clf = RESTClassifier(**params, distributed=distributed).fit(X, y, groups=g)
    return {**_summary(clf), "inferred": clf.inferred_groups_}


def sample_weights(n: int) -> np.ndarray:
    """Uneven sample weights, a fifth of them 0 (held-out rows keep theirs for validation)."""
    rng = np.random.default_rng(5)
    return rng.choice([0.0, 0.5, 1.0, 3.0], size=n, p=[0.2, 0.3, 0.3, 0.2])


def scenario_weighted(log: DrawLog, out: Path, distributed) -> dict:
    """Uneven sample weights: the held-out rows are validated with theirs."""
    X, y, g = TRAIN
    record = Record()
    log.reset()
    clf = RESTClassifier(**PARAMS, callbacks=[record], distributed=distributed).fit(
        X, y, groups=g, sample_weight=sample_weights(len(y)))
    return {**_summary(clf), "best_epoch": clf.best_epoch_, "updates": record.updates,
            "loss_weights": record.loss_weights, "local_orders": list(log.local),
            "global_orders": list(log.glob)}


class Preempt(Callback):
    """Stops the process (every rank) at the start of an epoch, as a preemption would."""

    def on_epoch_begin(self, net, *, epoch, **kwargs):
        if epoch == 3:
            raise KeyboardInterrupt


def scenario_resume(log: DrawLog, out: Path, distributed) -> dict:
    import rest_fair.training.loop as ckpt  # the loop writes through its write_checkpoint

    X, y, g = TRAIN
    directory = out / "checkpoints"
    writes = []
    original = ckpt.write_checkpoint

    def counting(*args, **kwargs):
        writes.append(kwargs.get("epoch"))
        return original(*args, **kwargs)

    ckpt.write_checkpoint = counting
    try:
        interrupted_fit(directory, distributed)
        if rank() == 0:  # kept as written after epoch 2, for one process to resume
            shutil.copytree(directory, out / "two-rank-checkpoint")
        clf = RESTClassifier(**PARAMS, callbacks=[Checkpoint(directory)],
                             distributed=distributed).fit(X, y, groups=g,
                                                          resume_from=directory)
    finally:
        ckpt.write_checkpoint = original
    return {**_summary(clf), "writes": writes}


def interrupted_fit(directory: Path, distributed, **params) -> None:
    """A fit (of :data:`PARAMS` updated by ``params``) with checkpoints that is stopped at
    the start of epoch 3."""
    X, y, g = TRAIN
    try:
        RESTClassifier(**{**PARAMS, **params}, callbacks=[Checkpoint(directory), Preempt()],
                       distributed=distributed).fit(X, y, groups=g)
    except KeyboardInterrupt:
        pass


def scenario_resume_other_world(log: DrawLog, out: Path, distributed) -> dict:
    """Resume a checkpoint that one process wrote (the test prepares it)."""
    directory = os.environ.get("REST_FAIR_TEST_SINGLE_CHECKPOINT")
    if not directory:
        return {"skipped": True}
    X, y, g = TRAIN
    clf = RESTClassifier(**PARAMS, distributed=distributed).fit(X, y, groups=g,
                                                                resume_from=directory)
    return {**_summary(clf), "history_list": clf.history_}


class Updates(Callback):
    """The steps of the topology updates and of the epoch ends."""

    def __init__(self) -> None:
        self.updates: list = []
        self.epoch_ends: list = []

    def on_topology_update(self, net, *, step, **kwargs):
        self.updates.append(step)

    def on_epoch_end(self, net, *, run, **kwargs):
        self.epoch_ends.append(run.state.step)


def scenario_resume_fewer_steps(log: DrawLog, out: Path, distributed) -> dict:
    """Two ranks resume a one-process checkpoint of 195 samples in batches of 64: one
    process trains 4 steps an epoch, two ranks 3 (the trailing 3 samples, one a rank, are
    dropped). Rank 0 writes the checkpoint (after epoch 2) while rank 1 waits."""
    X, y, _ = make_data(195, 2, 0.1)
    params = {**PARAMS, "update_interval": 2, "validation_fraction": 0.0}
    directory = out / "fewer-steps-checkpoint"
    if rank() == 0:
        try:
            RESTClassifier(**params, callbacks=[Checkpoint(directory), Preempt()],
                           distributed=False).fit(X, y)
        except KeyboardInterrupt:
            pass
    resumed, full = Updates(), Updates()
    clf = RESTClassifier(**params, callbacks=[resumed], distributed=distributed).fit(
        X, y, resume_from=directory)
    RESTClassifier(**params, callbacks=[full], distributed=distributed).fit(X, y)
    return {"resumed": vars(resumed), "full": vars(full), "n_train_steps": clf.n_train_steps_}


class Tamper(Callback):
    """Changes one mask position on rank 1 only (what the divergence check must catch)."""

    layer = None

    def on_epoch_begin(self, net, *, epoch, run, **kwargs):
        masks = run.parts.sparsity.masks
        self.layer = masks.names[0]
        if epoch == 2 and rank() == 1:
            name = self.layer
            mask = masks.mask(name).clone()
            flat = mask.view(-1)
            flat[0] = ~flat[0]
            masks.set_mask(name, mask)


def scenario_diverge(log: DrawLog, out: Path, distributed) -> dict:
    X, y, g = TRAIN
    tamper = Tamper()
    try:
        RESTClassifier(**PARAMS, callbacks=[tamper], distributed=distributed).fit(
            X, y, groups=g)
    except MaskDivergenceError as exc:
        return {"error": str(exc), "layer": tamper.layer}
    return {"error": None, "layer": tamper.layer}


def scenario_diverge_unvalidated(log: DrawLog, out: Path, distributed) -> dict:
    """No validation data, one step at lr 1e30: the kept weights' output overflows."""
    X, y, g = TRAIN
    try:
        RESTClassifier(**{**PARAMS, "lr": 1e30, "max_epochs": 1, "batch_size": 1024},
                       validation_fraction=0.0, distributed=distributed).fit(X, y, groups=g)
    except TrainingDivergedError as exc:
        return {"error": str(exc)}
    return {"error": None}


def scenario_different_data(log: DrawLog, out: Path, distributed) -> dict:
    """Rank 1 calls fit with one value changed: refused on every rank before training."""
    X, y, g = TRAIN
    X = X.copy()
    if rank() == 1:
        X[0, 0] += 1.0
    try:
        RESTClassifier(**PARAMS, distributed=distributed).fit(X, y, groups=g)
    except DistributedError as exc:
        return {"error": str(exc)}
    return {"error": None}


def scenario_different_validation(log: DrawLog, out: Path, distributed) -> dict:
    """Rank 1 validates on other labels: refused on every rank before training."""
    X, y, g = TRAIN
    y_val = y[:40].copy()
    if rank() == 1:
        y_val[0] = 1 - y_val[0]
    try:
        RESTClassifier(**PARAMS, distributed=distributed).fit(
            X, y, groups=g, validation_data=(X[:40], y_val))
    except DistributedError as exc:
        return {"error": str(exc)}
    return {"error": None}


class _Upload(Callback):
    def on_epoch_end(self, net, **kwargs):
        raise RuntimeError("metrics upload failed: connection refused by the tracking server")


def scenario_callback_error(log: DrawLog, out: Path, distributed) -> dict:
    """A callback's own RuntimeError, whatever its words, reaches the user unchanged."""
    X, y, g = TRAIN
    try:
        RESTClassifier(**PARAMS, callbacks=[_Upload()], distributed=distributed).fit(
            X, y, groups=g)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"error": None}


class LookupNet(nn.Module):
    """A linear network whose third forward fails with an error of its own."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.fc = nn.Linear(int(np.prod(input_shape)), n_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("feature store lookup timed out")
        return self.fc(x)


def scenario_module_error(log: DrawLog, out: Path, distributed) -> dict:
    """A module's own RuntimeError, whatever its words, reaches the user unchanged."""
    X, y, g = TRAIN
    try:
        RESTClassifier(**{**PARAMS, "module": LookupNet, "module_params": None},
                       distributed=distributed).fit(X, y, groups=g)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"error": None}


#: each training forward's dropout mask of :class:`DropoutNet`, in this process
DROPOUT_MASKS: list = []


class DropoutNet(nn.Module):
    """A hidden layer with dropout; records the positions each training forward kept."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.hidden = nn.Linear(int(np.prod(input_shape)), 32)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(32, n_classes)

    def forward(self, x):
        h = self.drop(self.hidden(x))
        if self.training:
            DROPOUT_MASKS.append(h.detach() != 0)
        return self.out(torch.relu(h))


#: the parameters of the fits of :class:`DropoutNet`
DROPOUT_PARAMS = {"module": DropoutNet, "module_params": None}


def scenario_dropout(log: DrawLog, out: Path, distributed) -> dict:
    """A network with dropout: trained whole; interrupted after epoch 2 and resumed; and
    resumed from the checkpoint of one process."""
    X, y, g = TRAIN
    params = {**PARAMS, **DROPOUT_PARAMS}
    DROPOUT_MASKS.clear()
    whole = RESTClassifier(**params, distributed=distributed).fit(X, y, groups=g)
    result = {**_summary(whole), "drawn": list(DROPOUT_MASKS)}
    directory = out / "dropout-checkpoints"
    interrupted_fit(directory, distributed, **DROPOUT_PARAMS)
    DROPOUT_MASKS.clear()
    resumed = RESTClassifier(**params, callbacks=[Checkpoint(directory)],
                             distributed=distributed).fit(X, y, groups=g,
                                                          resume_from=directory)
    result.update(resumed=_summary(resumed), resumed_drawn=list(DROPOUT_MASKS))
    single = out / "dropout-one-process-checkpoint"
    if rank() == 0:  # written by one process, resumed by the two ranks
        interrupted_fit(single, False, **DROPOUT_PARAMS)
    torch.distributed.barrier()
    DROPOUT_MASKS.clear()
    RESTClassifier(**params, distributed=distributed).fit(X, y, groups=g, resume_from=single)
    result["other_world_drawn"] = list(DROPOUT_MASKS)
    return result


class Stateful(Callback):
    """A callback whose state checkpoints hold."""

    def state_dict(self) -> dict:
        return {"calls": 1}

    def load_state_dict(self, state: dict) -> None:
        pass


def scenario_warnings(log: DrawLog, out: Path, distributed) -> dict:
    """Fits warned about (labels as a column, a parameter the method leaves unused, the
    deprecated ``sparse_init="erk"``, a layer kept at one weight, channels-last images, a
    resumed checkpoint holding the state of a callback the fit has not): every warning each
    rank gave."""
    X, y, _ = TRAIN
    images = np.zeros((32, 8, 8, 3), dtype=np.float32)
    directory = out / "stateful-checkpoint"
    try:
        RESTClassifier(**PARAMS, callbacks=[Checkpoint(directory), Stateful(), Preempt()],
                       distributed=distributed).fit(X, y)
    except KeyboardInterrupt:
        pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RESTClassifier(**PARAMS, distributed=distributed).fit(X, y, resume_from=directory)
        RESTClassifier(**{**PARAMS, "max_epochs": 1, "sparsity": 0.999}, groupdro_eta=0.5,
                       sparse_init="erk", distributed=distributed).fit(X, y[:, None])
        RESTClassifier(**{**PARAMS, "max_epochs": 1, "batch_size": 16, "module": "resnet18",
                          "module_params": {"width": 2}}, validation_fraction=0.0,
                       distributed=distributed).fit(images, np.arange(32) % 2)
    return {"warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


SCENARIOS = {
    "rest": scenario_rest,
    "groupdro": scenario_groupdro,
    "groupdro_adjusted": scenario_groupdro_adjusted,
    "jtt": scenario_jtt,
    "weighted": scenario_weighted,
    "resume": scenario_resume,
    "resume_other_world": scenario_resume_other_world,
    "resume_fewer_steps": scenario_resume_fewer_steps,
    "diverge": scenario_diverge,
    "diverge_unvalidated": scenario_diverge_unvalidated,
    "different_data": scenario_different_data,
    "different_validation": scenario_different_validation,
    "callback_error": scenario_callback_error,
    "module_error": scenario_module_error,
    "dropout": scenario_dropout,
    "warnings": scenario_warnings,
}


class Fail(Callback):
    """Rank 1 kills itself (SIGKILL) or hangs at optimizer step 3."""

    def __init__(self, how: str, out: Path) -> None:
        self.how, self.out = how, out

    def on_batch_end(self, net, *, step, loss, **kwargs):
        if rank() == 1 and step == 3:
            (self.out / "failed_at").write_text(repr(time.time()))
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)  # hung until the test kills it, whatever the timeout


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def start_signal(out: Path) -> float:
    """Say this rank is ready (imports done) and wait for the test's go; its timeout.

    The test writes ``OUT/go`` (holding ``distributed_timeout``) once both ranks are
    ready, so they call fit together however long each took to start.
    """
    write_atomically(out / f"ready-rank{rank()}", repr(time.time()))
    go = out / "go"
    while not go.is_file():
        time.sleep(0.01)
    return float(go.read_text())


#: The timeout of the process group that ``"kill_in_own_group"`` initialises before fit
OWN_GROUP_TIMEOUT = 300.0


def failure(how: str, out: Path) -> None:
    """A fit in which rank 1 dies or hangs; ``"kill_in_own_group"`` kills it in a fit on a
    process group initialised before fit, with a timeout other than distributed_timeout."""
    X, y, g = TRAIN
    if how == "kill_in_own_group":
        torch.distributed.init_process_group(
            "gloo", timeout=datetime.timedelta(seconds=OWN_GROUP_TIMEOUT))
        atexit.register(torch.distributed.destroy_process_group)
        how, timeout = "kill", 7.0
    else:
        timeout = start_signal(out)
    try:
        RESTClassifier(**{**PARAMS, "max_epochs": 50}, callbacks=[Fail(how, out)],
                       distributed_timeout=timeout).fit(X, y, groups=g)
    except DistributedError as exc:
        (out / f"error-rank{rank()}.json").write_text(json.dumps(
            {"time": time.time(), "type": type(exc).__name__, "message": str(exc)}))
        sys.exit(3)
    (out / f"error-rank{rank()}.json").write_text(json.dumps({"time": time.time(),
                                                              "type": None}))


def threads_alive() -> list[str] | None:
    """Names of this process's threads (Linux ``/proc``), or None where they cannot be read."""
    task = Path("/proc/self/task")
    if not task.is_dir():
        return None
    names = []
    for entry in sorted(task.iterdir()):
        try:
            names.append((entry / "comm").read_text().strip())
        except OSError:  # ended meanwhile
            pass
    return names


def record_threads_at_exit(out: Path) -> None:
    """At exit, after rest_fair's own exit handler, write which threads are still alive.

    atexit runs its handlers last-registered first, so registering this one before the
    first fit (which registers rest_fair's) makes it run after rest_fair's teardown.
    """
    atexit.register(lambda: (out / f"threads-rank{rank()}.json").write_text(
        json.dumps(threads_alive())))


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)  # one thread per rank
    out = Path(argv[1])
    which = argv[2] if len(argv) > 2 else "all"
    record_threads_at_exit(out)
    if which in ("kill", "hang", "kill_in_own_group"):
        failure(which, out)
        return
    log = DrawLog()
    for name, fn in SCENARIOS.items():
        if which in ("all", name):
            result = fn(log, out, "auto")
            torch.save(result, out / f"{name}-rank{rank()}.pt")


if __name__ == "__main__":
    main(sys.argv)
