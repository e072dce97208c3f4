"""Training checkpoints: exact resume after SIGKILL, refusal of foreign or damaged files."""

from __future__ import annotations

import collections
import datetime
import enum
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rest_fair import RESTClassifier
from rest_fair import _fit as _fit_module
from rest_fair.callbacks import Callback, Checkpoint, EarlyStopping
from rest_fair.exceptions import CheckpointError
from rest_fair.persistence import checkpoint as ckpt_format
from tests._support.callbacks import StopAt

DATA = """
import numpy as np
from sklearn.datasets import make_classification

X, y = make_classification(700, 12, n_informative=6, n_classes=3, random_state=0)
X = X.astype(np.float32)
g = np.where(X[:, 0] > 0.8, "minority", "majority")
"""
METHODS = {
    "rest": dict(sparsity=0.9),
    "groupdro": dict(sparsity=0.8, objective="groupdro", upweight=None),
    "jtt": dict(sparsity=0.8, infer_groups="jtt", jtt_epochs=2, upweight=5.0),
}
# sparse_compute="masked": the killed fit runs in another process, where "auto" would time
# the layers itself and could choose other kernels (so other rounding) than the fits here
COMMON = dict(max_epochs=6, batch_size=64, lr=0.05, random_state=3, device="cpu",
              module_params={"hidden_layer_sizes": (32, 32)}, sparse_compute="masked")

SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)
{data}
from rest_fair import RESTClassifier
from rest_fair import _fit as _fit_module
from rest_fair.callbacks import Callback, Checkpoint


class KillAt(Callback):
    def on_batch_end(self, net, *, step, **kwargs):
        if step == {kill_step}:
            os.kill(os.getpid(), signal.SIGKILL)


params = {params!r}
RESTClassifier(**params, callbacks=[KillAt(), Checkpoint({dirname!r})]).fit(X, y, groups=g)
"""


class _Mode(str, enum.Enum):
    A = "a"


def _data():
    scope: dict = {}
    exec(DATA, scope)
    return scope["X"], scope["y"], scope["g"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_after_sigkill_is_bitwise_identical(tmp_path, method):
    params = {**COMMON, **METHODS[method]}
    kill_step = 2 * 10 + 4  # in the middle of epoch 3 (10 steps per epoch)
    script = SCRIPT.format(data=DATA, kill_step=kill_step, params=params,
                           dirname=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    manifest = json.loads((tmp_path / ckpt_format.MANIFEST).read_text())
    assert manifest["epoch"] == 2

    torch.set_num_threads(1)
    try:
        X, y, g = _data()
        resumed = RESTClassifier(**params, callbacks=[Checkpoint(tmp_path)]).fit(
            X, y, groups=g, resume_from=tmp_path)
        whole = RESTClassifier(**params).fit(X, y, groups=g)
    finally:
        torch.set_num_threads(2)
    assert [h["epoch"] for h in resumed.history_] == list(range(1, 7))
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))
    for key, value in whole.module_.state_dict().items():
        assert torch.equal(resumed.module_.state_dict()[key], value)
    assert resumed.best_epoch_ == whole.best_epoch_
    assert resumed.n_train_steps_ == whole.n_train_steps_ == 60
    assert resumed.n_topology_updates_ == whole.n_topology_updates_
    if method == "groupdro":
        assert resumed.group_weight_history_ == whole.group_weight_history_
    if method == "jtt":
        assert np.array_equal(resumed.inferred_groups_, whole.inferred_groups_)
    assert json.loads((tmp_path / ckpt_format.MANIFEST).read_text())["epoch"] == 6


def _fit(tmp_path, **params):
    X, y, g = _data()
    clf = RESTClassifier(**{**COMMON, "max_epochs": 3, **params},
                         callbacks=[Checkpoint(tmp_path, every=1)])
    return clf.fit(X, y, groups=g), (X, y, g)


def test_checkpoints_hold_the_whole_state_and_load_safely(tmp_path):
    _fit(tmp_path, objective="groupdro")
    files = sorted(p.name for p in tmp_path.glob("epoch-*.pt"))
    assert files == ["epoch-000002.pt", "epoch-000003.pt"]  # keep=2
    state = ckpt_format.read_checkpoint(tmp_path)
    assert set(state) >= {"module", "optimizer", "scheduler", "objective", "sparsity",
                          "generator", "torch_rng", "train_state", "callbacks"}
    assert state["train_state"]["epoch"] == 3 and state["train_state"]["step"] == 30
    assert state["objective"]["q"].shape == (2,)
    assert state["train_state"]["best_module_state"] is not None
    # the state file is an ordinary torch archive that loads with weights_only=True
    torch.load(tmp_path / "epoch-000003.pt", weights_only=True)


def test_a_run_taking_over_a_finished_runs_folder_keeps_keep_files_of_its_own(tmp_path):
    X, y, g = _data()
    RESTClassifier(**{**COMMON, "max_epochs": 5},
                   callbacks=[Checkpoint(tmp_path)]).fit(X, y, groups=g)
    RESTClassifier(**{**COMMON, "max_epochs": 3},
                   callbacks=[Checkpoint(tmp_path)]).fit(X + 1.0, y, groups=g)
    files = sorted(p.name for p in tmp_path.glob("epoch-*.pt"))
    # the first run's epochs 4 and 5 are gone, and the second run's epoch 2 is kept
    assert files == ["epoch-000002.pt", "epoch-000003.pt"]
    assert ckpt_format.read_checkpoint(tmp_path)["train_state"]["epoch"] == 3


def test_state_files_are_kept_by_epoch_number(tmp_path):
    for epoch in (999_999, 1_000_000, 1_000_001):
        ckpt_format.write_checkpoint(tmp_path, {"x": torch.zeros(1)}, epoch=epoch,
                                     fingerprint={"run": 1})
    files = sorted(p.name for p in tmp_path.glob("epoch-*.pt"))
    assert files == ["epoch-1000000.pt", "epoch-1000001.pt"]


def test_only_ascii_epoch_numbers_name_state_files(tmp_path):
    # "²" passes str.isdigit but not int(); "٣" (Arabic-Indic three) int() reads as 3
    others = ["epoch-\u00b2.pt", "epoch-\u0663.pt", "epoch-1\u00b2.pt"]
    for name in others:
        (tmp_path / name).write_bytes(b"not ours")
    for epoch in (1, 2, 3, 4):
        ckpt_format.write_checkpoint(tmp_path, {"x": torch.zeros(1)}, epoch=epoch,
                                     fingerprint={"run": 1})
    files = sorted(p.name for p in tmp_path.glob("epoch-*.pt"))
    assert files == sorted(["epoch-000003.pt", "epoch-000004.pt", *others])


def test_resume_of_a_finished_run_trains_no_more(tmp_path):
    done, (X, y, g) = _fit(tmp_path)
    again = RESTClassifier(**{**COMMON, "max_epochs": 3}).fit(X, y, groups=g,
                                                              resume_from=tmp_path)
    assert len(again.history_) == 3 and again.n_train_steps_ == done.n_train_steps_
    assert np.array_equal(again.predict(X), done.predict(X))


def test_resume_from_an_empty_directory_starts_a_new_run(tmp_path):
    X, y, g = _data()
    clf = RESTClassifier(**{**COMMON, "max_epochs": 2}).fit(
        X, y, groups=g, resume_from=tmp_path / "new")
    assert len(clf.history_) == 2


def test_early_stopping_state_is_resumed(tmp_path):
    X, y, g = _data()

    def stop():  # no epoch after the first improves by 10: a stop after 2 more epochs
        return EarlyStopping(patience=2, monitor="valid_loss", lower_is_better=True,
                             threshold=10.0)

    class Interrupted(Exception):
        pass

    class InterruptAt3(Callback):
        def on_epoch_begin(self, net, *, epoch, **kwargs):
            if epoch == 3:
                raise Interrupted

    whole = RESTClassifier(**COMMON, callbacks=[stop()]).fit(X, y, groups=g)
    assert len(whole.history_) == 3
    with pytest.raises(Interrupted):
        RESTClassifier(**COMMON, callbacks=[stop(), Checkpoint(tmp_path), InterruptAt3()]
                       ).fit(X, y, groups=g)
    state = ckpt_format.read_checkpoint(tmp_path)
    assert state["train_state"]["epoch"] == 2 and not state["train_state"]["stopped"]
    assert state["callbacks"]["EarlyStopping:0"]["wait"] == 1
    # a fresh EarlyStopping takes the saved wait: the run stops where the whole one did,
    # also with another callback added before it (states are found by class, not place)
    resumed = RESTClassifier(**COMMON, callbacks=[Callback(), stop()]).fit(
        X, y, groups=g, resume_from=tmp_path)
    assert len(resumed.history_) == len(whole.history_)
    assert np.array_equal(resumed.predict(X), whole.predict(X))
    # a checkpoint written before kept the states by position: read the same way
    from rest_fair.training.loop import _keyed_by_class

    assert _keyed_by_class({"0:EarlyStopping": 1, "2:Mine": 2, "3:EarlyStopping": 3}) == {
        "EarlyStopping:0": 1, "Mine:0": 2, "EarlyStopping:1": 3}
    # a state no callback takes is named, not dropped silently
    with pytest.warns(UserWarning, match=r"callbacks \['EarlyStopping:0'\].*not restored"):
        RESTClassifier(**COMMON).fit(X, y, groups=g, resume_from=tmp_path)


class SaveWhenStopping(Callback):
    """A user's checkpoint callback: only the public ``run`` argument, no private state."""

    runs_last = True

    def __init__(self, dirname):
        self.dirname, self.saw_stop = dirname, []

    def on_epoch_end(self, net, *, record, run, **kwargs):
        self.saw_stop.append(run.state.stopped)
        if run.state.stopped:
            run.save_checkpoint(self.dirname)


def test_a_callback_of_your_own_writes_checkpoints_after_the_stop_decision(tmp_path):
    X, y, g = _data()
    mine = SaveWhenStopping(tmp_path)
    stop = EarlyStopping(patience=1, monitor="valid_loss", lower_is_better=True,
                         threshold=10.0)
    clf = RESTClassifier(**COMMON, callbacks=[mine, stop]).fit(X, y, groups=g)
    assert mine.saw_stop == [False, True]  # it ran after EarlyStopping, listed before it
    state = ckpt_format.read_checkpoint(tmp_path)
    assert state["train_state"]["epoch"] == len(clf.history_) == 2
    assert list(state["callbacks"]) == ["EarlyStopping:0"]  # the first of its class


class StopLastAt(Callback):
    """A user's callback that runs last and stops the run after epoch ``epoch``."""

    runs_last = True

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, net, *, record, **kwargs):
        return record["epoch"] >= self.epoch


def test_checkpoint_writes_the_stop_of_a_runs_last_callback_listed_after_it(tmp_path):
    # listed after the Checkpoint, the stop came after its write: with every=5 the run
    # stopped at epoch 2 unwritten (and with every=1 its checkpoint said "not finished")
    X, y, g = _data()
    callbacks = [Checkpoint(tmp_path, every=5), StopLastAt(2)]
    clf = RESTClassifier(**COMMON, callbacks=callbacks).fit(X, y, groups=g)
    assert len(clf.history_) == 2
    manifest = json.loads((tmp_path / ckpt_format.MANIFEST).read_text())
    assert manifest["epoch"] == 2 and manifest["finished"]
    assert [type(cb).__name__ for cb in clf.callbacks] == ["Checkpoint", "StopLastAt"]


class SaveInside(Callback):
    """A user's callback that writes a checkpoint from the hook ``hook`` (once)."""

    def __init__(self, dirname, hook):
        self.dirname, self.hook, self.saved = dirname, hook, False
        setattr(self, hook, self._save)

    def _save(self, net, *, run, epoch=None, **kwargs):
        if not self.saved and epoch != 1:
            self.saved = True
            run.save_checkpoint(self.dirname)


@pytest.mark.parametrize("hook", ["on_batch_end", "on_topology_update"])
def test_a_checkpoint_from_inside_an_epoch_is_refused(tmp_path, hook):
    # it resumed at the start of its epoch with the weights of the middle, training part
    # of the epoch twice (other predictions, steps counted twice)
    X, y, g = _data()
    with pytest.raises(RuntimeError, match=r"epoch 1 between its first and last batch.*"
                                           r"on_epoch_end or on_epoch_begin"):
        RESTClassifier(**{**COMMON, "max_epochs": 2},
                       callbacks=[SaveInside(tmp_path, hook)]).fit(X, y, groups=g)
    assert not ckpt_format.has_checkpoint(tmp_path)


def test_a_checkpoint_from_the_beginning_of_an_epoch_resumes_exactly(tmp_path):
    X, y, g = _data()
    params = {**COMMON, "max_epochs": 3}
    whole = RESTClassifier(**params).fit(X, y, groups=g)
    first = RESTClassifier(**params, callbacks=[SaveInside(tmp_path, "on_epoch_begin"),
                                                StopAt(2)])
    with pytest.raises(KeyboardInterrupt):
        first.fit(X, y, groups=g)
    resumed = RESTClassifier(**params).fit(X, y, groups=g, resume_from=tmp_path)
    assert resumed.n_train_steps_ == whole.n_train_steps_
    np.testing.assert_array_equal(resumed.predict_proba(X), whole.predict_proba(X))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(params={"lr": 0.1}), "params.lr was 0.05, now 0.1"),
        (dict(params={"max_epochs": 5}), r"params.max_epochs was 3, now 5 \(to train that run "
                                         r"further, resume it with max_epochs=3, then fit again "
                                         r"with warm_start=True"),
        (dict(params={"groupdro_adjustment": 2.0}), "params.groupdro_adjustment was 0.0, now 2.0"),
        (dict(y_shift=True), "other y than that run's"),
        (dict(rows=600), "n_samples was 700, now 600"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(tmp_path, change, match):
    _fit(tmp_path)
    X, y, g = _data()
    n = change.get("rows", len(y))
    y = np.roll(y, 1) if change.get("y_shift") else y
    clf = RESTClassifier(**{**COMMON, "max_epochs": 3, **change.get("params", {})})
    with pytest.raises(CheckpointError, match=f"different run.*{match}"):
        clf.fit(X[:n], y[:n], groups=g[:n], resume_from=tmp_path)


@pytest.mark.parametrize("changed", ["X", "y", "groups", "sample_weight"])
def test_other_data_is_refused_naming_the_input_that_differs(tmp_path, changed):
    X, y, g = _interrupted(tmp_path)
    inputs = {"X": X, "y": y, "groups": g, "sample_weight": None}
    inputs[changed] = {"X": X + 1, "y": np.roll(y, 1), "groups": np.roll(g, 1),
                       "sample_weight": np.full(len(y), 2.0)}[changed]
    with pytest.raises(CheckpointError) as info:
        RESTClassifier(**{**COMMON, "max_epochs": 3}).fit(
            inputs["X"], inputs["y"], groups=inputs["groups"],
            sample_weight=inputs["sample_weight"], resume_from=tmp_path)
    message = str(info.value)
    assert f": other {changed} than that run's. Resume" in message
    assert "sha256" not in message


def test_a_checkpoint_without_the_digest_of_each_input_resumes(tmp_path):
    X, y, g = _interrupted(tmp_path)
    _edit_fingerprint(tmp_path, _without("data_sha256_of"))  # as an older release wrote
    with pytest.raises(CheckpointError, match=r"different run.*: data_sha256 was '[0-9a-f]+', "
                                              r"now '[0-9a-f]+'\. Resume"):
        RESTClassifier(**{**COMMON, "max_epochs": 3}).fit(X, np.roll(y, 1), groups=g,
                                                          resume_from=tmp_path)
    resumed = RESTClassifier(**{**COMMON, "max_epochs": 3}).fit(X, y, groups=g,
                                                                resume_from=tmp_path)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]


def test_truncated_or_tampered_checkpoints_are_refused_and_kept(tmp_path):
    _fit(tmp_path)
    X, y, g = _data()
    latest = tmp_path / "epoch-000003.pt"
    original = latest.read_bytes()
    clf = RESTClassifier(**{**COMMON, "max_epochs": 3})
    latest.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match="truncated or modified"):
        clf.fit(X, y, groups=g, resume_from=tmp_path)
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    latest.write_bytes(bytes(tampered))
    with pytest.raises(CheckpointError, match="truncated or modified"):
        clf.fit(X, y, groups=g, resume_from=tmp_path)
    assert latest.exists() and (tmp_path / "epoch-000002.pt").exists()  # nothing deleted
    (tmp_path / ckpt_format.MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid rest_fair checkpoint manifest"):
        clf.fit(X, y, groups=g, resume_from=tmp_path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_pickle_in_a_checkpoint_runs_no_code(tmp_path):
    import hashlib
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    payload = pickle.dumps({"module": Evil()})
    (tmp_path / "epoch-000001.pt").write_bytes(payload)
    (tmp_path / ckpt_format.MANIFEST).write_text(json.dumps({
        "format": ckpt_format.FORMAT_NAME, "version": 1, "file": "epoch-000001.pt",
        "sha256": hashlib.sha256(payload).hexdigest(), "epoch": 1, "fingerprint": {}}))
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        ckpt_format.read_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _fit(tmp_path)
    before = (tmp_path / ckpt_format.MANIFEST).read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_format.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt_format.write_checkpoint(tmp_path, {"x": torch.ones(3)}, epoch=9,
                                     fingerprint=ckpt_format.saved_fingerprint(tmp_path))
    monkeypatch.undo()
    assert (tmp_path / ckpt_format.MANIFEST).read_text() == before
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was removed
    assert ckpt_format.read_checkpoint(tmp_path)["train_state"]["epoch"] == 3


def test_checkpoint_parameters_are_checked(tmp_path):
    X, y, _ = _data()
    with pytest.raises(ValueError, match="every must be a positive int"):
        RESTClassifier(**COMMON, callbacks=[Checkpoint(tmp_path, every=0)]).fit(X, y)
    with pytest.raises(ValueError, match="keep must be a positive int"):
        RESTClassifier(**COMMON, callbacks=[Checkpoint(tmp_path, keep=True)]).fit(X, y)
    # numpy integers (from np.arange, a config array) are counts too; they were refused
    RESTClassifier(**{**COMMON, "max_epochs": 3},
                   callbacks=[Checkpoint(tmp_path, every=np.int64(2), keep=np.int64(1))]).fit(X, y)
    assert ckpt_format.read_checkpoint(tmp_path)["train_state"]["epoch"] == 3
    assert len(list(tmp_path.glob("epoch-*"))) == 1


class _Count(Callback):
    def on_train_begin(self, net, **kwargs):
        self.n = 0

    def on_epoch_end(self, net, *, record, **kwargs):
        self.n += 1


def test_every_n_epochs_and_the_last_epoch_are_written(tmp_path, monkeypatch):
    X, y, _ = _data()
    written = []
    real = ckpt_format.write_checkpoint

    def spy(dirname, state, *, epoch, **kwargs):
        written.append(epoch)
        return real(dirname, state, epoch=epoch, **kwargs)

    monkeypatch.setattr("rest_fair.training.loop.write_checkpoint", spy)
    RESTClassifier(**{**COMMON, "max_epochs": 5},
                   callbacks=[Checkpoint(tmp_path, every=2), _Count()]).fit(X, y)
    assert written == [2, 4, 5]
    assert Path(tmp_path / "epoch-000005.pt").exists()


def test_resume_from_a_file_is_refused(tmp_path):
    X, y, g = _data()
    a_file = tmp_path / "latest.json"
    a_file.write_text("{}")
    with pytest.raises(CheckpointError, match="is a file; resume_from"):
        RESTClassifier(**{**COMMON, "max_epochs": 1}).fit(X, y, groups=g, resume_from=a_file)


def test_a_dataset_with_other_content_is_another_run(tmp_path):
    X, y, g = _data()

    class Items(torch.utils.data.Dataset):
        def __init__(self, X):
            self.X = torch.as_tensor(X)

        def __len__(self):
            return len(self.X)

        def __getitem__(self, i):
            return self.X[i]

    RESTClassifier(**{**COMMON, "max_epochs": 1}, callbacks=[Checkpoint(tmp_path)]).fit(
        Items(X), y, groups=g)
    with pytest.raises(CheckpointError, match="different run"):  # same length, other values
        RESTClassifier(**{**COMMON, "max_epochs": 1}).fit(
            Items(X * 100 + 5), y, groups=g, resume_from=tmp_path)


def test_a_bytes_folder_is_written_and_resumed(tmp_path):
    # resume_from=b"..." failed inside pathlib with a TypeError that named no argument
    dirname = os.fsencode(tmp_path / "run")
    X, y, g = _data()
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**{**COMMON, "max_epochs": 3},
                       callbacks=[StopAt(3), Checkpoint(dirname)]).fit(X, y, groups=g)
    resumed = RESTClassifier(**{**COMMON, "max_epochs": 3}).fit(X, y, groups=g,
                                                                resume_from=dirname)
    whole = RESTClassifier(**{**COMMON, "max_epochs": 3}).fit(X, y, groups=g)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))


@pytest.mark.parametrize(("resume_from", "error", "match"), [
    ("", ValueError, "must name a folder"), (b"", ValueError, "must name a folder"),
    ("run\0", ValueError, "must name a folder"), (3, TypeError, "got int 3"),
    (["run"], TypeError, "got list"),
])
def test_resume_from_that_names_no_folder_is_refused_by_name(tmp_path, monkeypatch,
                                                             resume_from, error, match):
    # "" resumed the working directory's checkpoint or started a new run; a NUL started one
    monkeypatch.chdir(tmp_path)
    X, y, g = _data()
    with pytest.raises(error, match=rf"^resume_from .*{match}"):
        RESTClassifier(**{**COMMON, "max_epochs": 1}).fit(X, y, groups=g,
                                                          resume_from=resume_from)


@pytest.mark.parametrize("dirname", ["", None, "file"])
def test_a_checkpoint_folder_must_be_a_folder(tmp_path, dirname):
    X, y, g = _data()
    if dirname == "file":
        dirname = tmp_path / "taken"
        dirname.write_text("x")
    with pytest.raises(ValueError, match="Checkpoint dirname"):
        RESTClassifier(**{**COMMON, "max_epochs": 1}, callbacks=[Checkpoint(dirname)]).fit(
            X, y, groups=g)


@pytest.mark.parametrize(("edit", "match"), [
    ({"file": ""}, "bad file name"),
    ({"file": ".."}, "bad file name"),
    ({"version": -1}, "version is -1"),
    ({"version": 1.9}, "version is 1.9"),
    ({"file": "sub"}, "missing its state file"),  # a folder where the state file should be
    ({"sha256": None}, "sha256 is None"),  # was compared as the text 'None'
])
def test_a_damaged_manifest_is_a_checkpoint_error(tmp_path, edit, match):
    _fit(tmp_path)
    (tmp_path / "sub").mkdir()
    manifest_path = tmp_path / ckpt_format.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, **edit}))
    with pytest.raises(CheckpointError, match=match):
        ckpt_format.read_checkpoint(tmp_path)


def test_an_edited_digest_names_the_manifest_too(tmp_path):
    _fit(tmp_path)
    manifest_path = tmp_path / ckpt_format.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match=f"its manifest {re.escape(str(manifest_path))}"):
        ckpt_format.read_checkpoint(tmp_path)


def test_a_folder_at_the_manifest_is_refused_before_training(tmp_path):
    # it read as no checkpoint: the fit started anew and failed writing after an epoch
    X, y, g = _data()
    (tmp_path / "epoch-000002.pt").write_bytes(b"state")
    (tmp_path / ckpt_format.MANIFEST).mkdir()
    clf = RESTClassifier(**COMMON, callbacks=[Checkpoint(tmp_path)])
    with pytest.raises(CheckpointError, match=r"latest\.json is not a valid .*Is a directory"):
        clf.fit(X, y, groups=g, resume_from=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-000002.pt", "latest.json"]


def test_a_folder_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    # it failed writing after the first `every` epochs; os.access stands in for a read-only
    # file system (mode bits do not stop root)
    X, y, g = _data()
    access = os.access
    monkeypatch.setattr(ckpt_format.os, "access",
                        lambda path, mode: Path(path) != tmp_path and access(path, mode))
    monkeypatch.setattr("rest_fair.training.TrainingRun.run_single_epoch",
                        lambda run: pytest.fail("an epoch trained"))
    clf = RESTClassifier(**COMMON, callbacks=[Checkpoint(tmp_path / "run")])
    with pytest.raises(PermissionError, match=f"no checkpoint can be written.*{tmp_path}'"):
        clf.fit(X, y, groups=g)
    assert not (tmp_path / "run").exists()


def test_a_folder_under_a_file_is_refused_before_training(tmp_path, monkeypatch):
    X, y, g = _data()
    (tmp_path / "notes").write_text("x")
    monkeypatch.setattr("rest_fair.training.TrainingRun.run_single_epoch",
                        lambda run: pytest.fail("an epoch trained"))
    clf = RESTClassifier(**COMMON, callbacks=[Checkpoint(tmp_path / "notes" / "run")])
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'notes'}'"):
        clf.fit(X, y, groups=g)


def test_a_deeply_nested_manifest_is_a_checkpoint_error(tmp_path):
    (tmp_path / ckpt_format.MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="not a valid rest_fair checkpoint manifest"):
        ckpt_format.read_checkpoint(tmp_path)


def test_a_resumed_warm_start_counts_the_steps_of_the_fit_it_continued(tmp_path):
    X, y, g = _data()
    params = {**COMMON, "max_epochs": 2, "warm_start": True}
    whole = RESTClassifier(**params).fit(X, y, groups=g).fit(X, y, groups=g)
    first = RESTClassifier(**params, callbacks=[Checkpoint(tmp_path)]).fit(X, y, groups=g)
    first.callbacks = [StopAt(4), Checkpoint(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        first.fit(X, y, groups=g)
    resumed = RESTClassifier(**{**params, "warm_start": False}).fit(
        X, y, groups=g, resume_from=tmp_path)
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4]
    assert resumed.n_train_steps_ == whole.n_train_steps_ == 40
    assert resumed.n_topology_updates_ == whole.n_topology_updates_ > 0


class _WidthNet(nn.Module):
    """A user's network class: the fingerprint records it by name, not by its code."""

    width = 16

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_shape[0], self.width), nn.ReLU(),
                                  nn.Linear(self.width, n_classes))

    def forward(self, x):
        return self.body(x)


def test_a_network_class_whose_code_changed_is_named_not_a_size_mismatch(tmp_path,
                                                                          monkeypatch):
    X, y, g = _data()
    params = {**COMMON, "max_epochs": 3, "module": _WidthNet, "module_params": None}
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(3), Checkpoint(tmp_path)]).fit(
            X, y, groups=g)
    monkeypatch.setattr(_WidthNet, "width", 32)
    with pytest.raises(CheckpointError, match=r"another network than this run's \(body.0."
                                              r"weight is \(16, 12\) in the checkpoint, "
                                              r"\(32, 12\) here; "):
        RESTClassifier(**params).fit(X, y, groups=g, resume_from=tmp_path)


@pytest.mark.parametrize("random_state", [None, "RandomState"])
def test_an_unseeded_run_resumes_with_the_seed_it_drew(tmp_path, random_state):
    X, y, g = _data()

    def params():
        rs = np.random.RandomState(7) if random_state == "RandomState" else None
        return {**COMMON, "max_epochs": 4, "random_state": rs}

    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params(), callbacks=[StopAt(3), Checkpoint(tmp_path)]).fit(
            X, y, groups=g)
    seed = ckpt_format.saved_fingerprint(tmp_path)["seed"]
    assert isinstance(seed, int)
    # each resume draws a new seed of its own and must take the checkpoint's instead: the
    # same validation split and generators, so the same network every time
    first, second = (RESTClassifier(**params()).fit(X, y, groups=g, resume_from=tmp_path)
                     for _ in range(2))
    assert [h["epoch"] for h in first.history_] == [1, 2, 3, 4]
    assert first.history_[:2] == second.history_[:2]
    assert np.array_equal(first.predict_proba(X), second.predict_proba(X))
    assert ckpt_format.saved_fingerprint(tmp_path)["seed"] == seed  # not rewritten

    # a checkpoint that did not record its seed cannot be resumed by an unseeded run
    manifest_path = tmp_path / ckpt_format.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["fingerprint"]["seed"]
    manifest_path.write_text(json.dumps(manifest))
    lost = (r"that run drew its seed from random_state=(None|<a RandomState>), and its "
            r"checkpoint \(an older rest_fair wrote it\) does not record that seed: no "
            r"random_state continues that run")
    with pytest.raises(CheckpointError, match=lost):
        RESTClassifier(**params()).fit(X, y, groups=g, resume_from=tmp_path)
    with pytest.raises(CheckpointError, match=lost):  # nor by a seeded one
        RESTClassifier(**{**params(), "random_state": 0}).fit(X, y, groups=g,
                                                              resume_from=tmp_path)


def test_a_seeded_run_records_no_drawn_seed(tmp_path):
    _fit(tmp_path)
    assert ckpt_format.saved_fingerprint(tmp_path)["seed"] is None


@pytest.mark.parametrize("first, second", [(None, 3), (3, None), (3, 4)])
def test_resuming_with_another_random_state_says_which_to_pass(tmp_path, first, second):
    X, y, g = _data()
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**{**COMMON, "max_epochs": 3, "random_state": first},
                       callbacks=[StopAt(2), Checkpoint(tmp_path)]).fit(X, y, groups=g)
    # "seed was 123, now None" (the seed drawn for random_state=None) named no parameter
    with pytest.raises(CheckpointError, match=re.escape(
            f"cannot be resumed here: random_state differs: that run had random_state={first}, "
            f"this one has random_state={second}; pass random_state={first} to continue that "
            "run. Resume")):
        RESTClassifier(**{**COMMON, "max_epochs": 3, "random_state": second}).fit(
            X, y, groups=g, resume_from=tmp_path)
    RESTClassifier(**{**COMMON, "max_epochs": 3, "random_state": first}).fit(
        X, y, groups=g, resume_from=tmp_path)


def test_a_new_unseeded_run_into_an_unseeded_runs_folder_names_the_seeds(tmp_path):
    X, y, g = _data()
    params = {**COMMON, "max_epochs": 3, "random_state": None}
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(2), Checkpoint(tmp_path)]).fit(
            X, y, groups=g)
    with pytest.raises(CheckpointError, match=r"another run, not finished \(random_state=None "
                                              r"drew the seed \d+ for that run and \d+ for "
                                              r"this one; resuming \(resume_from\) continues "
                                              r"that run with its seed\)"):
        RESTClassifier(**params, callbacks=[Checkpoint(tmp_path)]).fit(X, y, groups=g)


def test_a_seeded_checkpoint_without_a_seed_entry_resumes(tmp_path):
    X, y, g = _data()
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**{**COMMON, "max_epochs": 3},
                       callbacks=[StopAt(2), Checkpoint(tmp_path)]).fit(X, y, groups=g)
    # as a seeded run wrote its fingerprint before every fingerprint had a seed entry
    manifest_path = tmp_path / ckpt_format.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["fingerprint"]["seed"]
    manifest_path.write_text(json.dumps(manifest))
    clf = RESTClassifier(**{**COMMON, "max_epochs": 3}).fit(X, y, groups=g,
                                                            resume_from=tmp_path)
    assert [h["epoch"] for h in clf.history_] == [1, 2, 3]


class _NumpyRecord(Callback):
    """Adds numpy values to the history and to its own state, as user callbacks do."""

    def __init__(self, array=False):
        self.array = array
        self.seen = 0

    def on_epoch_end(self, net, *, record, **kwargs):
        record["stat"] = np.float32(0.5)
        self.seen += 1

    def state_dict(self):
        return {"seen": np.int64(self.seen), **({"hist": np.zeros(3)} if self.array else {})}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def test_numpy_scalars_in_a_checkpoint_are_read_back(tmp_path):
    X, y, g = _data()
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**{**COMMON, "max_epochs": 3},
                       callbacks=[_NumpyRecord(), StopAt(3), Checkpoint(tmp_path)]).fit(
            X, y, groups=g)
    counter = _NumpyRecord()
    clf = RESTClassifier(**{**COMMON, "max_epochs": 3}, callbacks=[counter]).fit(
        X, y, groups=g, resume_from=tmp_path)
    assert counter.seen == 3 and [h["stat"] for h in clf.history_] == [0.5] * 3


def test_a_numpy_array_in_a_checkpoint_is_refused_when_written(tmp_path):
    X, y, g = _data()
    with pytest.raises(TypeError, match=r"\['callbacks'\].*\['hist'\] is a numpy array"):
        RESTClassifier(**{**COMMON, "max_epochs": 1},
                       callbacks=[_NumpyRecord(array=True), Checkpoint(tmp_path)]).fit(
            X, y, groups=g)
    assert not (tmp_path / ckpt_format.MANIFEST).exists()


class _Keeps(Callback):
    """Keeps a value of its own in the history or its state, as user callbacks may."""

    def __init__(self, where, value):
        self.where, self.value = where, value

    def on_epoch_end(self, net, *, record, **kwargs):
        if self.where == "record":
            record["when"] = self.value

    def state_dict(self):
        return {"kept": self.value} if self.where == "state" else {}


@pytest.mark.parametrize(("where", "value", "match"), [
    ("record", datetime.date(2026, 12, 6), r"\['history'\]\[0\]\['when'\] is a date"),
    ("state", collections.deque([1, 2]), r"\['_Keeps:0'\]\['kept'\] is a deque"),
    ("state", collections.defaultdict(int), r"\['kept'\] is a defaultdict"),
    ("state", {_Mode.A: 1}, r"a key of \['callbacks'\]\['_Keeps:0'\]\['kept'\] is a _Mode"),
])
def test_a_value_a_checkpoint_cannot_read_back_is_refused_when_written(tmp_path, where, value,
                                                                        match):
    X, y, g = _data()
    with pytest.raises(TypeError, match=match + ".*could not be resumed"):
        RESTClassifier(**{**COMMON, "max_epochs": 1},
                       callbacks=[_Keeps(where, value), Checkpoint(tmp_path)]).fit(X, y, groups=g)
    assert not (tmp_path / ckpt_format.MANIFEST).exists()


def test_an_unfinished_run_of_another_kind_is_never_replaced(tmp_path):
    X, y, g = _data()
    with pytest.raises(KeyboardInterrupt):  # a run that could still be resumed
        RESTClassifier(**{**COMMON, "max_epochs": 3},
                       callbacks=[StopAt(2), Checkpoint(tmp_path)]).fit(X, y, groups=g)
    manifest = (tmp_path / ckpt_format.MANIFEST).read_text()
    files = sorted(p.name for p in tmp_path.iterdir())
    other = RESTClassifier(**{**COMMON, "max_epochs": 2, "lr": 0.1},
                           callbacks=[Checkpoint(tmp_path)])
    with pytest.raises(CheckpointError, match=r"holds the checkpoint of another run, not "
                                              r"finished \(.*params.lr was 0.05, now 0.1"):
        other.fit(X, y, groups=g)
    assert (tmp_path / ckpt_format.MANIFEST).read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    # resumed, it finishes; then the directory may hold the next run (a refit, a search's
    # next fold), as before
    RESTClassifier(**{**COMMON, "max_epochs": 3}, callbacks=[Checkpoint(tmp_path)]).fit(
        X, y, groups=g, resume_from=tmp_path)
    assert json.loads((tmp_path / ckpt_format.MANIFEST).read_text())["finished"] is True
    other.fit(X, y, groups=g)
    assert ckpt_format.saved_fingerprint(tmp_path)["params"]["lr"] == 0.1


class _Steps(Callback):
    """Counts the optimizer steps of the run."""

    def __init__(self):
        self.steps = 0

    def on_batch_end(self, net, *, step, **kwargs):
        self.steps = step


def test_another_unfinished_run_is_refused_before_the_first_step(tmp_path):
    X, y, g = _data()
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**{**COMMON, "max_epochs": 3},
                       callbacks=[StopAt(2), Checkpoint(tmp_path)]).fit(X, y, groups=g)
    steps = _Steps()
    with pytest.raises(CheckpointError, match=r"params.lr was 0.05, now 0.1"):
        RESTClassifier(**{**COMMON, "max_epochs": 3, "lr": 0.1},
                       callbacks=[steps, Checkpoint(tmp_path)]).fit(X, y, groups=g)
    assert steps.steps == 0
    # the same run, and a resumed one, still train and write there
    RESTClassifier(**{**COMMON, "max_epochs": 3}, callbacks=[steps, Checkpoint(tmp_path)]).fit(
        X, y, groups=g, resume_from=tmp_path)
    assert steps.steps > 0


class _Augmented(torch.utils.data.Dataset):
    """Items through a random transform drawn from torch's global generator (a random crop
    or flip does the same)."""

    def __init__(self, X):
        self.X = torch.as_tensor(X)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] + 0.3 * torch.rand(self.X.shape[1:])


def test_a_dataset_with_a_random_transform_resumes_exactly(tmp_path):
    X, y, g = _data()
    params = {**COMMON, "max_epochs": 3}
    whole = RESTClassifier(**params).fit(_Augmented(X), y, groups=g)
    # the checkpoint's fingerprint reads items: the same ones every time, and without
    # taking draws from the training
    written = RESTClassifier(**params, callbacks=[Checkpoint(tmp_path / "whole")]).fit(
        _Augmented(X), y, groups=g)
    assert np.array_equal(written.predict_proba(X), whole.predict_proba(X))
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(2), Checkpoint(tmp_path / "cut")]).fit(
            _Augmented(X), y, groups=g)
    resumed = RESTClassifier(**params).fit(_Augmented(X), y, groups=g,
                                           resume_from=tmp_path / "cut")
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))


def test_a_run_weighting_intersectional_groups_by_a_dict_resumes(tmp_path):
    X, y, g = _data()
    groups = np.stack([g, np.where(X[:, 1] > 0, "p", "n")], axis=1)  # groups are tuples
    upweight = {("majority", "n"): 1.0, ("majority", "p"): 1.0, ("minority", "n"): 2.0,
                ("minority", "p"): 3.0}
    params = {**COMMON, "max_epochs": 3, "upweight": upweight}
    whole = RESTClassifier(**params).fit(X, y, groups=groups)
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(2), Checkpoint(tmp_path)]).fit(
            X, y, groups=groups)
    resumed = RESTClassifier(**params).fit(X, y, groups=groups, resume_from=tmp_path)
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))
    other = {**upweight, ("minority", "p"): 4.0}
    with pytest.raises(CheckpointError, match=r"params\.upweight\.\('minority', 'p'\) was 3\.0, "
                                              r"now 4\.0"):
        RESTClassifier(**{**params, "upweight": other}).fit(X, y, groups=groups,
                                                            resume_from=tmp_path)


def test_other_validation_data_is_another_run(tmp_path):
    X, y, g = _data()
    params = {**COMMON, "max_epochs": 3}
    validation = (X[:100], y[:100], g[:100])
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(2), Checkpoint(tmp_path)]).fit(
            X[100:], y[100:], groups=g[100:], validation_data=validation)
    # the same number of validation samples, other ones: the epoch kept would differ
    with pytest.raises(CheckpointError, match=r"different run.*validation_sha256 was"):
        RESTClassifier(**params).fit(X[100:], y[100:], groups=g[100:],
                                     validation_data=(X[-100:], y[-100:], g[-100:]),
                                     resume_from=tmp_path)
    resumed = RESTClassifier(**params).fit(X[100:], y[100:], groups=g[100:],
                                           validation_data=validation, resume_from=tmp_path)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]


class _DropoutNet(torch.nn.Module):
    """Dropout draws from torch's global generator in the main process."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(input_shape[0], 16), torch.nn.ReLU(),
                                        torch.nn.Dropout(0.3), torch.nn.Linear(16, n_classes))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("module", ["auto", _DropoutNet])
def test_a_dataset_read_by_worker_processes_resumes_exactly(tmp_path, module):
    X, y, g = _data()
    params = {**COMMON, "max_epochs": 3, "num_workers": 2, "module": module,
              "module_params": COMMON["module_params"] if module == "auto" else None}
    whole = RESTClassifier(**params).fit(_Augmented(X), y, groups=g)
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(3), Checkpoint(tmp_path)]).fit(
            _Augmented(X), y, groups=g)
    resumed = RESTClassifier(**params).fit(_Augmented(X), y, groups=g, resume_from=tmp_path)
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))


def _edit_fingerprint(dirname, edit):
    """Rewrites the manifest's fingerprint with ``edit`` (the state file's digest, which the
    manifest checks, stays valid): the checkpoint of another release."""
    path = Path(dirname) / ckpt_format.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest["fingerprint"])
    path.write_text(json.dumps(manifest))


def _without(*paths):
    """An edit removing the fingerprint entries at the dotted ``paths``."""
    def edit(fingerprint):
        for path in paths:
            *parents, key = path.split(".")
            entry = fingerprint
            for parent in parents:
                entry = entry[parent]
            del entry[key]
    return edit


def _interrupted(tmp_path, **params):
    """An unfinished run's checkpoint in ``tmp_path``: 2 of 3 epochs."""
    X, y, g = _data()
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**{**COMMON, "max_epochs": 3, **params},
                       callbacks=[StopAt(3), Checkpoint(tmp_path)]).fit(X, y, groups=g)
    assert json.loads((tmp_path / ckpt_format.MANIFEST).read_text())["epoch"] == 2
    return X, y, g


class _DropoutNet(nn.Module):
    """A network that draws from torch's global generator while it trains."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_shape[0], 32), nn.Dropout(0.5),
                                    nn.ReLU(), nn.Linear(32, n_classes))

    def forward(self, x):
        return self.layers(x)


def test_a_checkpoint_before_per_rank_random_states_resumes_bitwise(tmp_path):
    """A checkpoint holds every rank's generator state, a row per rank ("torch_rngs"); one
    written before holds rank 0's only ("torch_rng"), which one process resumes as before."""
    params = {"module": _DropoutNet, "module_params": None, "validation_fraction": 0.0}
    X, y, g = _data()
    whole = RESTClassifier(**{**COMMON, "max_epochs": 3, **params}).fit(X, y, groups=g)
    _interrupted(tmp_path, **params)
    manifest_path = tmp_path / ckpt_format.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    state = torch.load(tmp_path / manifest["file"], weights_only=True)
    assert state["torch_rngs"].shape == (1, *state["torch_rng"].shape)
    assert torch.equal(state["torch_rngs"][0], state["torch_rng"])
    for edit in (False, True):
        if edit:  # as an older release wrote it
            del state["torch_rngs"]
            payload = _saved(state)
            (tmp_path / manifest["file"]).write_bytes(payload)
            manifest.update(sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
            manifest_path.write_text(json.dumps(manifest))
        resumed = RESTClassifier(**{**COMMON, "max_epochs": 3, **params}).fit(
            X, y, groups=g, resume_from=tmp_path)
        assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X)), edit


def _saved(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("params", [{}, {"infer_groups": "jtt", "jtt_epochs": 2}])
def test_a_directory_of_another_run_is_refused_before_anything_trains(tmp_path, monkeypatch,
                                                                     params):
    # JTT's identification model trained its jtt_epochs before the refusal
    X, y, g = _interrupted(tmp_path)
    epochs = []
    monkeypatch.setattr("rest_fair.training.TrainingRun.run_single_epoch",
                        lambda run: epochs.append(run) or pytest.fail("an epoch trained"))
    checked = []

    class _Seen(Callback):
        def on_fit_begin(self, net, *, check_checkpoint, **kwargs):
            checked.append(check_checkpoint)

    clf = RESTClassifier(**{**COMMON, "max_epochs": 3, "lr": 0.1, **params},
                         callbacks=[_Seen(), Checkpoint(tmp_path)])
    with pytest.raises(CheckpointError, match=r"another run, not finished.*params.lr was"):
        clf.fit(X, y, groups=g)
    assert epochs == []
    # the hook's check is the one Checkpoint refuses with, open to any callback
    with pytest.raises(CheckpointError, match="another run, not finished"):
        checked[0](tmp_path)
    checked[0](tmp_path / "other")


@pytest.mark.parametrize("dropped", [("params.groupdro_adjustment",), tuple(_fit_module._NEUTRAL)])
def test_a_checkpoint_from_before_a_parameter_resumes_with_its_neutral_value(tmp_path, dropped):
    params = dict(objective="groupdro", upweight=None)
    X, y, g = _interrupted(tmp_path, **params)
    _edit_fingerprint(tmp_path, _without(*dropped))  # written before these entries existed
    resumed = RESTClassifier(**{**COMMON, "max_epochs": 3, **params},
                             callbacks=[Checkpoint(tmp_path)]).fit(X, y, groups=g,
                                                                    resume_from=tmp_path)
    whole = RESTClassifier(**{**COMMON, "max_epochs": 3, **params}).fit(X, y, groups=g)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]
    assert resumed.n_train_steps_ == whole.n_train_steps_ == 30
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))
    for key, value in whole.module_.state_dict().items():
        assert torch.equal(resumed.module_.state_dict()[key], value)
    assert resumed.group_weight_history_ == whole.group_weight_history_
    # the checkpoints it wrote record this release's whole fingerprint
    saved = ckpt_format.saved_fingerprint(tmp_path)
    assert saved["params"]["groupdro_adjustment"] == 0.0 and "validation_sha256" in saved


def test_a_checkpoint_from_before_a_parameter_is_refused_with_another_value(tmp_path):
    X, y, g = _interrupted(tmp_path, objective="groupdro", upweight=None)
    _edit_fingerprint(tmp_path, _without("params.groupdro_adjustment"))
    manifest = (tmp_path / ckpt_format.MANIFEST).read_text()
    other = RESTClassifier(**{**COMMON, "max_epochs": 3, "objective": "groupdro",
                              "upweight": None, "groupdro_adjustment": 0.5},
                           callbacks=[Checkpoint(tmp_path)])
    predates = (r"params.groupdro_adjustment was not recorded, now 0.5: the checkpoint predates "
                r"params.groupdro_adjustment \(an older rest_fair wrote it\), so pass "
                r"groupdro_adjustment=0.0 to continue that run")
    with pytest.raises(CheckpointError, match=f"different run.*{predates}"):
        other.fit(X, y, groups=g, resume_from=tmp_path)
    with pytest.raises(CheckpointError, match=f"another run, not finished.*{predates}"):
        other.fit(X, y, groups=g)  # a new run would replace the older one
    assert (tmp_path / ckpt_format.MANIFEST).read_text() == manifest


def test_a_run_with_samples_of_weight_zero_resumes_bitwise_and_refuses_older_checkpoints(
        tmp_path):
    X, y, g = _data()
    weight = np.where(np.arange(len(y)) % 3 == 0, 0.0, 1.0)
    params = {**COMMON, "max_epochs": 3, "upweight": "balanced"}
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(3), Checkpoint(tmp_path)]).fit(
            X, y, groups=g, sample_weight=weight)
    resumed = RESTClassifier(**params).fit(X, y, groups=g, sample_weight=weight,
                                           resume_from=tmp_path)
    whole = RESTClassifier(**params).fit(X, y, groups=g, sample_weight=weight)
    assert resumed.n_train_steps_ == whole.n_train_steps_
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))
    # an older release drew and weighed these samples otherwise: its checkpoint is refused
    _edit_fingerprint(tmp_path, _without("weighted_counts"))
    with pytest.raises(CheckpointError, match=r"different run.*weighted_counts was not "
                                              r"recorded, now True: the checkpoint predates "
                                              r"weighted_counts \(an older rest_fair wrote "
                                              r"it\), and no setting of this rest_fair "
                                              r"continues that run\. Resume"):
        RESTClassifier(**params).fit(X, y, groups=g, sample_weight=weight,
                                     resume_from=tmp_path)


@pytest.mark.parametrize("reweight", ["loss", "sampler"])
def test_an_older_checkpoint_of_a_group_weighed_zero_is_refused(tmp_path, reweight):
    # equal sample weights, but an older release visited the group weighed 0 (its epochs
    # were as long as the whole training set): resuming its run would draw other epochs
    X, y, g = _interrupted(tmp_path, upweight={"majority": 1.0, "minority": 0.0},
                           reweight=reweight)
    _edit_fingerprint(tmp_path, _without("weighted_counts"))
    with pytest.raises(CheckpointError, match=r"different run.*weighted_counts was not "
                                              r"recorded, now True"):
        RESTClassifier(**{**COMMON, "max_epochs": 3, "reweight": reweight,
                          "upweight": {"majority": 1.0, "minority": 0.0}}).fit(
            X, y, groups=g, resume_from=tmp_path)


@pytest.mark.parametrize("validation", ["fraction", "data"])
def test_an_older_checkpoint_of_a_group_left_out_of_selection_is_refused(tmp_path, validation):
    # an older release chose the epoch kept with the group weighed 0 (and held out its
    # samples): resuming went on under this release's rule, or was refused as n_valid only
    X, y, g = _data()
    g = np.where(X[:, 1] > 1.0, "third", g)
    given = {} if validation == "fraction" else {"validation_data": (X[:90], y[:90], g[:90])}
    params = {**COMMON, "max_epochs": 3, "objective": "groupdro",
              "upweight": {"majority": 1.0, "minority": 1.0, "third": 0.0}}
    with pytest.raises(KeyboardInterrupt):
        RESTClassifier(**params, callbacks=[StopAt(3), Checkpoint(tmp_path)]).fit(
            X, y, groups=g, **given)
    resumed = RESTClassifier(**params).fit(X, y, groups=g, resume_from=tmp_path, **given)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]
    _edit_fingerprint(tmp_path, lambda fingerprint: fingerprint.pop("left_out_of_selection", 0))
    with pytest.raises(CheckpointError, match=r"different run.*left_out_of_selection was not "
                                              r"recorded, now \['third'\].*no setting of this "
                                              r"rest_fair continues that run"):
        RESTClassifier(**params).fit(X, y, groups=g, resume_from=tmp_path, **given)


def test_a_checkpoint_without_an_entry_that_has_no_neutral_value_is_refused(tmp_path):
    X, y, g = _interrupted(tmp_path)
    _edit_fingerprint(tmp_path, _without("params.lr"))
    clf = RESTClassifier(**{**COMMON, "max_epochs": 3})
    with pytest.raises(CheckpointError, match=r"different run.*params.lr was not recorded, now "
                                              r"0.05: the checkpoint predates params.lr \(an "
                                              r"older rest_fair wrote it\), and no setting "
                                              r"of this rest_fair continues that run\. "
                                              r"Resume"):
        clf.fit(X, y, groups=g, resume_from=tmp_path)


def test_a_checkpoint_of_a_newer_release_is_refused(tmp_path):
    X, y, g = _interrupted(tmp_path)
    _edit_fingerprint(tmp_path, lambda fingerprint: fingerprint["params"].update(future=None))
    newer = (r"params.future was None, which this rest_fair does not know: the checkpoint is "
             r"from a newer release")
    clf = RESTClassifier(**{**COMMON, "max_epochs": 3}, callbacks=[Checkpoint(tmp_path)])
    with pytest.raises(CheckpointError, match=f"different run.*{newer}"):
        clf.fit(X, y, groups=g, resume_from=tmp_path)
    with pytest.raises(CheckpointError, match=f"another run, not finished.*{newer}"):
        clf.fit(X, y, groups=g)


# the parameters the fingerprint recorded when checkpoints began recording one
_FIRST_FINGERPRINTED = {
    "sparsity", "layer_density", "sparse_init", "dense_layers", "regrow", "drop_fraction",
    "drop_schedule", "update_interval", "update_end", "upweight", "reweight", "objective",
    "groupdro_eta", "infer_groups", "jtt_epochs", "module", "module_params", "max_epochs",
    "batch_size", "lr", "optimizer", "momentum", "weight_decay", "lr_scheduler",
    "validation_fraction", "precision", "random_state",
}


def test_every_parameter_added_since_has_its_neutral_value_declared():
    """A parameter added to the estimator that changes what a run computes must say how an
    older checkpoint, which lacks it, resumes: with its neutral value in ``_NEUTRAL``."""
    fingerprinted = set(RESTClassifier().get_params()) - set(_fit_module._RUN_INDEPENDENT)
    added = {f"params.{name}" for name in fingerprinted - _FIRST_FINGERPRINTED}
    assert added == {path for path in _fit_module._NEUTRAL if path.startswith("params.")}
    defaults = RESTClassifier().get_params()
    for path, value in _fit_module._NEUTRAL.items():
        if path.startswith("params."):  # the default trains as before the parameter existed
            assert defaults[path.removeprefix("params.")] == value


def test_numpy_scalar_parameters_are_recorded_as_numbers(tmp_path):
    # as parameters taken from np.arange grids are
    _interrupted(tmp_path, random_state=np.int64(3), batch_size=np.int64(64),
                 lr=np.float32(0.5), module_params={"hidden_layer_sizes": (np.int64(32),)})
    params = ckpt_format.saved_fingerprint(tmp_path)["params"]
    assert (params["random_state"], params["batch_size"]) == (3, 64)
    assert type(params["random_state"]) is int and params["lr"] == float(np.float32(0.5))
    assert params["module_params"] == {"hidden_layer_sizes": [32]}


def _as_numpy_reprs(fingerprint):
    """The edit of a fingerprint written by a release that recorded numpy scalar parameters
    by their repr (numpy 2's ``np.int64(3)``, numpy 1's bare ``3``)."""
    fingerprint["params"].update(random_state="np.int64(3)", batch_size="64",
                                 max_epochs="np.int32(3)", lr="np.float64(0.05)",
                                 module_params={"hidden_layer_sizes": ["np.int64(32)", "32"]})


@pytest.mark.parametrize("numpy", [False, True])
def test_a_checkpoint_recording_numpy_scalars_by_repr_resumes(tmp_path, numpy):
    X, y, g = _interrupted(tmp_path)
    _edit_fingerprint(tmp_path, _as_numpy_reprs)
    number = np.int64 if numpy else int
    params = {**COMMON, "max_epochs": number(3), "random_state": number(3),
              "batch_size": number(64), "module_params": {"hidden_layer_sizes": (32, 32)}}
    resumed = RESTClassifier(**params, callbacks=[Checkpoint(tmp_path)]).fit(
        X, y, groups=g, resume_from=tmp_path)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]


def test_a_checkpoint_recording_numpy_scalars_by_repr_names_them_as_numbers(tmp_path):
    X, y, g = _interrupted(tmp_path)
    _edit_fingerprint(tmp_path, _as_numpy_reprs)
    other = RESTClassifier(**{**COMMON, "max_epochs": 4, "random_state": 4})
    with pytest.raises(CheckpointError, match=re.escape(
            "random_state differs: that run had random_state=3, this one has random_state=4; "
            "pass random_state=3 to continue that run; params.max_epochs was 3, now 4 (to "
            "train that run further, resume it with max_epochs=3, ")):
        other.fit(X, y, groups=g, resume_from=tmp_path)


def _storages(tensors):
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}


def test_a_checkpoint_at_the_best_epoch_holds_its_weights_and_masks_once(tmp_path):
    # without validation data every epoch is the best so far
    _fit(tmp_path, validation_fraction=0.0)
    state = torch.load(tmp_path / "epoch-000003.pt", weights_only=True)
    train = state["train_state"]
    assert train["best_epoch"] == 3
    for kind, current, kept in [("weights", state["module"], train["best_module_state"]),
                                ("masks", state["sparsity"]["masks"], train["best_masks"])]:
        assert set(kept) == set(current), kind
        for key, tensor in kept.items():
            assert torch.equal(tensor, current[key]), (kind, key)
            assert tensor.untyped_storage().data_ptr() == \
                current[key].untyped_storage().data_ptr(), (kind, key)


class _CheckBestIsItsOwn(Callback):
    """Asserts, as the resumed loop starts, that no live tensor shares the best copy's memory."""

    def on_train_begin(self, net, *, run, **kwargs):
        masks = run.parts.sparsity.masks
        live = _storages([*run.parts.module.parameters(), *run.parts.module.buffers(),
                          *(masks.mask(name) for name in masks.names)])
        best = [*run.state.best_module_state.values(), *run.state.best_masks.values()]
        assert run.state.best_epoch == 2 and best
        assert not live & _storages(best)
        self.checked = True


def test_resumed_best_weights_and_masks_are_not_the_live_ones(tmp_path):
    X, y, g = _interrupted(tmp_path, validation_fraction=0.0)
    check = _CheckBestIsItsOwn()
    params = {**COMMON, "max_epochs": 3, "validation_fraction": 0.0}
    resumed = RESTClassifier(**params, callbacks=[check]).fit(X, y, groups=g,
                                                               resume_from=tmp_path)
    assert check.checked
    whole = RESTClassifier(**params).fit(X, y, groups=g)
    assert np.array_equal(resumed.predict_proba(X), whole.predict_proba(X))


def test_a_checkpoint_holding_the_best_weights_twice_resumes_the_same(tmp_path):
    # checkpoints written before the best copy shared the current one's storage in the file
    X, y, g = _interrupted(tmp_path / "shared", validation_fraction=0.0)
    manifest = json.loads((tmp_path / "shared" / ckpt_format.MANIFEST).read_text())
    state = ckpt_format.read_checkpoint(tmp_path / "shared")
    train = state["train_state"]
    train["best_module_state"] = {k: v.clone() for k, v in train["best_module_state"].items()}
    train["best_masks"] = {k: v.clone() for k, v in train["best_masks"].items()}
    old = ckpt_format.write_checkpoint(tmp_path / "twice", state, epoch=2,
                                       fingerprint=manifest["fingerprint"])
    assert old.stat().st_size > (tmp_path / "shared" / manifest["file"]).stat().st_size
    params = {**COMMON, "max_epochs": 3, "validation_fraction": 0.0}
    fits = [RESTClassifier(**params).fit(X, y, groups=g, resume_from=tmp_path / name)
            for name in ("shared", "twice")]
    assert np.array_equal(fits[0].predict_proba(X), fits[1].predict_proba(X))
    for key, value in fits[0].module_.state_dict().items():
        assert torch.equal(fits[1].module_.state_dict()[key], value)
    assert fits[0].best_epoch_ == fits[1].best_epoch_ == 3


@pytest.mark.parametrize("lr", [np.float32(0.1), np.float32(0.5), np.float16(0.1)])
def test_a_checkpoint_recording_numpy_1_float_reprs_resumes(tmp_path, lr):
    # numpy 1 wrote the repr of np.float32(0.1) as '0.1', which was read as a string only
    X, y, g = _interrupted(tmp_path, lr=lr)

    def as_numpy_1(fingerprint):
        fingerprint["params"]["lr"] = str(lr)

    _edit_fingerprint(tmp_path, as_numpy_1)
    if float(lr) != float(str(lr)):  # the Python float of the text is another value
        with pytest.raises(CheckpointError, match=re.escape(
                f"params.lr was {str(lr)!r}, now {float(str(lr))}")):
            RESTClassifier(**{**COMMON, "max_epochs": 3, "lr": float(str(lr))}).fit(
                X, y, groups=g, resume_from=tmp_path)
    resumed = RESTClassifier(**{**COMMON, "max_epochs": 3, "lr": lr},
                             callbacks=[Checkpoint(tmp_path)]).fit(
        X, y, groups=g, resume_from=tmp_path)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]


def test_a_folder_under_the_home_folder_may_be_written_with_a_tilde(tmp_path, monkeypatch):
    # Checkpoint("~/run") made a folder named "~" in the working directory, and
    # resume_from="~/run" looked there too
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    X, y, g = _data()
    params = {**COMMON, "max_epochs": 2}
    first = RESTClassifier(**params, callbacks=[Checkpoint("~/run")]).fit(X, y, groups=g)
    assert (home / "run" / ckpt_format.MANIFEST).is_file() and not (work / "~").exists()
    assert ckpt_format.has_checkpoint("~/run")
    resumed = RESTClassifier(**params).fit(X, y, groups=g, resume_from="~/run")
    assert [r["epoch"] for r in resumed.history_] == [1, 2]
    np.testing.assert_array_equal(resumed.predict_proba(X), first.predict_proba(X))


def test_a_path_parameter_fingerprints_as_its_string():
    # resuming with module_params={"weights": Path(...)} where the run was given the path's
    # string (or the reverse) is the same run
    from pathlib import Path

    from rest_fair._fit import _json_value

    as_json = [json.dumps({"module_params": {"weights": w}}, default=_json_value)
               for w in ("runs/w.pt", Path("runs/w.pt"))]
    assert as_json[0] == as_json[1]
