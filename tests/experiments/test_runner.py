"""The experiment runner shared by ``rest-fair bench`` and ``rest-fair wilds``: one
``--upweight`` parser, one results file, one resume, results files of earlier versions."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import signal
import subprocess
import sys
import threading

import pytest

from rest_fair import cli
from rest_fair.benchmarks import METHODS, estimator_params, preset, to_markdown
from rest_fair.benchmarks.report import summarize
from rest_fair.experiments import runner
from rest_fair.experiments.runner import parse_upweight
from rest_fair.wilds import dataset_spec, import_wilds

BAD_UPWEIGHTS = ["x", "", "None", "0", "-3", "nan", "inf", "1e400"]

#: A results-file line as ``rest-fair bench`` wrote it before the runner was shared (the
#: tiny preset with 2 epochs and the method ``erm`` has the configuration hash 355b8405c8).
OLD_BENCH_LINE = (
    '{"best_epoch": 1, "config_hash": "355b8405c8", "density": 1.0, "efficiency": '
    '{"inference_flops_fraction": 1.0, "training_flops_fraction": 1.0}, "epochs_run": 2, '
    '"finished_at": "2026-12-04T17:28:18+0000", "fit_seconds": 0.5, "group_labels": "none", '
    '"method": "erm", "method_label": "ERM (dense)", "n_conflicting_train": 3, "n_threads": 2, '
    '"n_train": 60, "ratio": 0.05, "run_id": "erm|ratio=0.05|sparsity=0|seed=0|355b8405c8", '
    '"seed": 0, "sparsity": 0.0, "status": "ok", "test_aligned_acc": 0.9, "test_cell_acc": '
    '{"0": 1.0, "1": 0.0}, "test_conflicting_acc": 0.25, "test_min_cell_size": 1, '
    '"test_unbiased_acc": 0.3, "test_worst_cell_acc": 0.0, "test_worst_group_acc": 0.25, '
    '"upweight": null, "valid_acc": 0.3, "valid_worst_group_acc": 0.3}'
)


@pytest.mark.parametrize(("text", "value"),
                         [("none", "none"), ("balanced", "balanced"), ("30", 30.0),
                          ("0.5", 0.5), ("1e2", 100.0)])
@pytest.mark.parametrize("command", [["bench"], ["wilds", "--dataset", "celebA",
                                                 "--root-dir", "x"]])
def test_both_commands_read_upweight_alike(command, text, value):
    args = cli.build_parser().parse_args([*command, "--upweight", text])
    assert args.upweight == value == parse_upweight(text)


@pytest.mark.parametrize("text", BAD_UPWEIGHTS)
def test_bad_upweight_is_refused_with_what_is_accepted(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_upweight(text)
    expected = f"--upweight: expected 'balanced', 'none' or a positive number; got {text!r}."
    assert str(info.value) == expected
    for command in (["bench"], ["wilds", "--dataset", "celebA", "--root-dir", "x"]):
        with pytest.raises(SystemExit):
            cli.main([*command, "--upweight", text])
        assert expected in capsys.readouterr().err


def test_upweight_none_means_no_reweighting_in_both_commands():
    assert estimator_params(METHODS["rest"], sparsity=0.9, ratio=0.01, upweight="none") == {
        "upweight": None, "sparsity": 0.9}
    config = preset("tiny", upweight="none")
    assert {config.estimator_params(spec)["upweight"] for spec in config.runs()} == {None}
    assert preset("tiny").upweight is None  # unset: the lambda of each conflicting share
    from rest_fair.wilds.experiment import resolve_settings

    args = cli.build_parser().parse_args(["wilds", "--dataset", "celebA", "--root-dir", "x",
                                          "--upweight", "none"])
    assert resolve_settings(args, dataset_spec("celebA"))["upweight"] is None


def test_a_run_builds_the_first_optimizer_of_its_process_before_the_clock_starts(
        monkeypatch):
    # the first optimizer of a process imports torch's compiler stack (1-2 s), which the
    # first run's fit_seconds held: the bench's dense ERM row, the reference of the cost
    # ratios, was always that run
    torch = pytest.importorskip("torch")
    from rest_fair import RESTClassifier
    from rest_fair.experiments import run

    events = []
    build = torch.optim.Optimizer.__init__

    def built(self, *args, **kwargs):
        events.append("optimizer")
        build(self, *args, **kwargs)

    class Spy(RESTClassifier):
        def fit(self, *args, **kwargs):
            events.append("fit")
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", built)
    monkeypatch.setattr("rest_fair.estimator.RESTClassifier", Spy)
    # as in a fresh process, whatever ran in this one before
    fresh = getattr(run, "_warm_up", None)
    monkeypatch.setattr(run, "_warm_up", getattr(fresh, "__wrapped__", lambda: None),
                        raising=False)
    config = preset("tiny", max_epochs=1, methods=("erm",), sparsities=(0.0,))
    assert run.run_one(config.runs()[0], config)["status"] == "ok"
    assert events[:2] == ["optimizer", "fit"]


def test_outputs_set_aside_in_the_same_second_are_all_kept(tmp_path, monkeypatch):
    # the second command of a second renamed its results onto the first one's, which
    # were lost
    from rest_fair.wilds.experiment import set_aside_outputs

    monkeypatch.setattr(runner.time, "strftime", lambda *args: "20260101-120000")
    config = preset("tiny", methods=("erm",), sparsities=(0.0,))
    monkeypatch.setattr(runner, "run_one", lambda spec, experiment, **kwargs: {
        "run_id": spec.run_id, "status": "ok", "call": len(calls)})
    calls = []
    for _ in range(3):
        runner.run_sweep(config, tmp_path / "bench", resume=False, progress=False)
        calls.append(1)
    kept = {p.name: json.loads(p.read_text())["call"]
            for p in (tmp_path / "bench").glob("results*.jsonl")}
    assert kept == {"results.20260101-120000.jsonl": 0, "results.20260101-120000-2.jsonl": 1,
                    "results.jsonl": 2}

    out = tmp_path / "wilds"
    for call in range(2):
        (out / "submission").mkdir(parents=True)
        for name in ("results.jsonl", "metrics.json", "submission/pred.csv"):
            (out / name).write_text(str(call))
        set_aside_outputs(out)
    assert {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*.*")
            if p.is_file()} == {
        "results.20260101-120000.jsonl": "0", "metrics.20260101-120000.json": "0",
        "submission.20260101-120000/pred.csv": "0",
        "results.20260101-120000-2.jsonl": "1", "metrics.20260101-120000-2.json": "1",
        "submission.20260101-120000-2/pred.csv": "1"}


def test_bench_resumes_a_results_file_of_the_earlier_runner(tmp_path, monkeypatch):
    config = preset("tiny", max_epochs=2, methods=("erm",))
    (tmp_path / runner.RESULTS_FILE).write_text(OLD_BENCH_LINE + "\n")
    ran = []

    def fake_run_one(spec, experiment, **kwargs):
        ran.append(spec.run_id)
        return {**json.loads(OLD_BENCH_LINE), "run_id": spec.run_id, "sparsity": spec.sparsity,
                "method_label": "ERM (sparse, RigL)"}

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    records = runner.run_sweep(config, tmp_path, progress=False)
    assert ran == ["erm|ratio=0.05|sparsity=0.9|seed=0|355b8405c8"]
    assert records[0] == json.loads(OLD_BENCH_LINE)
    assert "| 5 | ERM (dense) | 0 | none | 30.0 |" in to_markdown(summarize(records, config),
                                                                  config)


def test_resume_is_one_code_path_for_both_commands(tmp_path, monkeypatch, capsys):
    try:
        import_wilds()
    except ImportError:
        pytest.skip("needs the optional extra rest-fair[wilds]")
    asked = []
    real = runner.pending

    def spy(specs, path):
        asked.append(path)
        return real(specs, path)

    monkeypatch.setattr(runner, "pending", spy)
    bench = tmp_path / "bench"
    assert cli.main(["bench", "--preset", "tiny", "--max-runs", "0", "--out-dir", str(bench),
                     "--no-plots", "--no-progress"]) == 0
    wilds = tmp_path / "wilds"
    _write_old_wilds_run(wilds / "out")
    assert cli.main([*OLD_WILDS_ARGV, "--root-dir", str(wilds / "d"), "--out-dir",
                     str(wilds / "out"), "--resume"]) == 0
    assert asked == [bench / runner.RESULTS_FILE, wilds / "out" / runner.RESULTS_FILE]


#: ``rest-fair wilds`` command of :data:`OLD_WILDS_SETTINGS` (with ``--root-dir`` and
#: ``--out-dir``).
OLD_WILDS_ARGV = ["wilds", "--dataset", "celebA", "--synthetic", "--module", "mlp",
                  "--image-size", "8", "--max-epochs", "1", "--seed", "0", "--device", "cpu"]
#: The settings of a seed's ``runs/seed_0.json`` as ``rest-fair wilds`` wrote them (with
#: the command above) before it recorded its seeds in ``results.jsonl``.
OLD_WILDS_SETTINGS = {
    "module": "mlp", "weights": None, "max_epochs": 1, "batch_size": 64, "lr": 0.01,
    "optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0, "lr_scheduler": "plateau",
    "image_size": 8, "max_length": None, "sparse_init": "random", "layer_density": "erk",
    "dense_layers": [], "sparsity": 0.9, "upweight": "balanced", "objective": "erm",
    "frac": 1.0, "max_features": 20000, "protocol": "custom",
}


def _write_old_wilds_run(out_dir):
    """``runs/seed_0.json`` and the submission files of a finished seed, as written before."""
    metrics = {"acc_avg": 0.75, "acc_wg": 0.5}
    files = [out_dir / "submission" / f"celebA_split:{split}_seed:0_epoch:best_pred.csv"
             for split in ("val", "test")]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("0\n1\n")
    record = {"seed": 0, "settings": OLD_WILDS_SETTINGS, "best_epoch": 0, "density": 0.1,
              "metrics": {split: metrics for split in ("train", "val", "test")},
              "fit_seconds": 1.5, "history": [{"epoch": 0, "train_loss": 0.7}],
              "submission_files": [str(p) for p in files]}
    (out_dir / "runs").mkdir(parents=True)
    (out_dir / "runs" / "seed_0.json").write_text(json.dumps(record, indent=2))
    return record


@pytest.fixture
def old_wilds_run(tmp_path, monkeypatch):
    """``(out, record, argv)``: the output folder of an earlier runner's finished seed, its
    record, and the command that resumes it; training again raises."""
    try:
        import_wilds()
    except ImportError:
        pytest.skip("needs the optional extra rest-fair[wilds]")
    from rest_fair.wilds.experiment import WildsExperiment

    def no_training(*args, **kwargs):
        raise RuntimeError("a finished seed was trained again")

    monkeypatch.setattr(WildsExperiment, "training_data", no_training)
    out = tmp_path / "out"
    record = _write_old_wilds_run(out)
    argv = [*OLD_WILDS_ARGV, "--root-dir", str(tmp_path / "d"), "--out-dir", str(out)]
    return out, record, argv


def test_wilds_resumes_the_seed_files_of_the_earlier_runner(old_wilds_run, capsys):
    out, old, argv = old_wilds_run
    with pytest.warns(UserWarning, match=r"holds seeds \[0\] recorded by an earlier version "
                                         r"without their data; they are reused"):
        assert cli.main([*argv, "--resume"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["test"] == {"acc_avg": 0.75, "acc_wg": 0.5}
    assert summary["runs"][0]["history"] == old["history"]
    assert "celebA test : acc_avg 0.7500  acc_wg 0.5000" in capsys.readouterr().out
    (records,) = [json.loads(line) for line in (out / runner.RESULTS_FILE).open()]
    assert records["status"] == "ok"
    # with the dataset, and the text settings an image dataset does not read as None
    assert records["settings"] == {**OLD_WILDS_SETTINGS, "dataset": "celebA",
                                   "max_features": None}
    # without the seed's submission files, or with other settings, it trains again
    (out / "submission" / "celebA_split:test_seed:0_epoch:best_pred.csv").unlink()
    assert cli.main([*argv, "--resume"]) == 1
    assert "trained again" in capsys.readouterr().err


def test_wilds_resumes_a_results_file_without_the_dataset_in_its_settings(old_wilds_run,
                                                                           capsys):
    # results.jsonl lines of the version before the dataset was a run setting: the
    # submission files name the dataset, and the seed is reused, not trained again
    from rest_fair.wilds.experiment import SeedRun

    out, old, argv = old_wilds_run
    (out / "runs" / "seed_0.json").unlink()
    line = {"run_id": SeedRun(0, OLD_WILDS_SETTINGS).run_id, "status": "ok", **old}
    (out / runner.RESULTS_FILE).write_text(json.dumps(line) + "\n")
    with pytest.warns(UserWarning, match=r"holds seeds \[0\] recorded by an earlier version"):
        assert cli.main([*argv, "--resume"]) == 0  # the seed once, not once per line
    assert "celebA test : acc_avg 0.7500  acc_wg 0.5000" in capsys.readouterr().out
    lines = [json.loads(text) for text in (out / runner.RESULTS_FILE).open()]
    assert lines[0] == line  # kept as it was
    assert lines[-1]["settings"] == {**OLD_WILDS_SETTINGS, "dataset": "celebA",
                                     "max_features": None}
    # the seed of another dataset's folder is not this dataset's
    waterbirds = [*argv, "--resume"]
    waterbirds[waterbirds.index("celebA")] = "waterbirds"
    assert cli.main(waterbirds) == 2
    assert "dataset: 'celebA' -> 'waterbirds'" in capsys.readouterr().err


def test_old_entry_points_still_work_with_a_deprecation_warning(monkeypatch, capsys):
    from rest_fair.wilds import cli as wilds_cli

    with pytest.warns(FutureWarning, match="use the `rest-fair wilds` command"):
        args = wilds_cli.build_parser().parse_args(["--dataset", "celeba", "--root-dir", "x"])
    assert args.dataset == "celebA" and args.upweight == "balanced"
    with pytest.warns(FutureWarning, match="python -m rest_fair.wilds.cli"), \
            pytest.raises(SystemExit):
        wilds_cli.main(["--help"])
    assert "--protocol" in capsys.readouterr().out
    monkeypatch.delitem(sys.modules, "rest_fair.benchmarks.runner", raising=False)
    with pytest.warns(FutureWarning, match="rest_fair.benchmarks.runner is deprecated"):
        old = importlib.import_module("rest_fair.benchmarks.runner")
    assert old.run_sweep is runner.run_sweep and old.RESULTS_FILE == "results.jsonl"
    assert old.bench_requirements(preset("tiny")) == []


def _needs_wilds():
    try:
        import_wilds()
    except ImportError:
        pytest.skip("needs the optional extra rest-fair[wilds]")


def _argv(command, out):
    """A command into ``out`` whose runs are fast: bench's tiny preset, wilds' tiny seeds."""
    if command == "bench":
        return ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress"]
    _needs_wilds()
    return [*OLD_WILDS_ARGV, "--seeds", "0", "1", "--root-dir", str(out.parent / "d"),
            "--out-dir", str(out)]


@pytest.mark.parametrize("command", ["bench", "wilds"])
def test_a_folder_another_process_holds_is_refused_and_left_alone(command, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / runner.RESULTS_FILE).write_text("earlier\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); sys.stdin.read()",
         str(out / runner.LOCK_FILE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()
        assert cli.main(_argv(command, out)) == 2
    finally:
        holder.communicate()
    assert f"{out} is in use by another rest-fair run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [runner.LOCK_FILE, runner.RESULTS_FILE]
    assert (out / runner.RESULTS_FILE).read_text() == "earlier\n"


def test_a_folder_is_held_once_and_released_however_the_block_ends(tmp_path):
    with runner.lock_folder(tmp_path), runner.lock_folder(tmp_path):  # the holder re-enters
        errors = []
        thread = threading.Thread(target=lambda: errors.append(_try_lock(tmp_path)))
        thread.start()
        thread.join()
        assert errors == [BlockingIOError]
    with pytest.raises(KeyError), runner.lock_folder(tmp_path):
        raise KeyError
    assert _try_lock(tmp_path) is None


def _try_lock(folder):
    try:
        with runner.lock_folder(folder):
            return None
    except BlockingIOError as exc:
        return type(exc)


@pytest.mark.parametrize(("command", "how"), [("bench", "rerun the same command"),
                                              ("wilds", "rerun it with --resume")])
def test_ctrl_c_keeps_the_finished_runs_and_says_how_to_continue(command, how, tmp_path,
                                                                  monkeypatch, capsys):
    argv = _argv(command, tmp_path / "out")
    ran = []

    def interrupted_run(spec, experiment, **kwargs):
        ran.append(spec.run_id)
        if len(ran) == 2:
            raise KeyboardInterrupt
        return {"run_id": spec.run_id, "seed": spec.seed, "status": "ok"}

    monkeypatch.setattr(runner, "run_one", interrupted_run)
    assert cli.main(argv) == 130
    path = tmp_path / "out" / runner.RESULTS_FILE
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"rest-fair {command}: interrupted; the finished runs are kept in {path}; to "
        f"continue, {how}.")
    assert [json.loads(line)["run_id"] for line in path.open()] == ran[:1]
    assert _try_lock(tmp_path / "out") is None


def _held_elsewhere(folder):
    """What another thread gets when it tries to hold ``folder``."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_try_lock(folder)))
    thread.start()
    thread.join()
    return seen[0]


def test_a_folder_stays_held_until_its_last_block_ends_in_any_order(tmp_path):
    # a block entered while the folder was held ended nothing, and the first block's end
    # released the folder while the later one still counted on it
    first = runner.lock_folder(tmp_path)
    first.__enter__()
    with contextlib.ExitStack() as later:
        later.enter_context(runner.lock_folder(tmp_path))
        first.__exit__(None, None, None)
        assert _held_elsewhere(tmp_path) is BlockingIOError
    assert _held_elsewhere(tmp_path) is None


@pytest.mark.parametrize(("command", "report", "how"), [
    ("bench", "rest_fair.benchmarks.cli.write_outputs", "rerun the same command"),
    ("wilds", "rest_fair.wilds.experiment.write_outputs", "rerun it with --resume")])
def test_the_report_is_written_with_the_folder_held_and_ctrl_c_there_ends_cleanly(
        command, report, how, tmp_path, monkeypatch, capsys):
    # bench wrote its report after letting the folder go (a second command could start
    # into it), and Ctrl-C while either command wrote its report showed a traceback
    argv = _argv(command, tmp_path / "out")
    monkeypatch.setattr(runner, "run_one", lambda spec, experiment, **kwargs: {
        "run_id": spec.run_id, "seed": spec.seed, "status": "ok"})
    held = []

    def interrupted_report(*args, **kwargs):
        held.append(_held_elsewhere(tmp_path / "out"))
        raise KeyboardInterrupt

    monkeypatch.setattr(report, interrupted_report)
    try:
        status = cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C while the report was written ended the command with a traceback")
    assert status == 130
    assert held == [BlockingIOError]
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"rest-fair {command}: interrupted; the finished runs are kept in "
        f"{tmp_path / 'out' / runner.RESULTS_FILE}; to continue, {how}.")
    assert _try_lock(tmp_path / "out") is None


def test_ctrl_c_while_wilds_loads_its_data_ends_cleanly(tmp_path, monkeypatch, capsys):
    # a Ctrl-C before the sweep started showed a traceback
    argv = _argv("wilds", tmp_path / "out")

    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("rest_fair.wilds.cli.load_wilds", interrupted_load)
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.splitlines() == [
        "rest-fair wilds: interrupted while loading the data; nothing was run."]


@pytest.mark.usefixtures("ctrl_c_raises")
@pytest.mark.parametrize("raised_by", ["blocking", "unblocking", "restoring the handler"])
def test_a_ctrl_c_as_workers_start_leaves_sigint_as_it_was(monkeypatch, raised_by):
    # the Python handler of a Ctrl-C caught meanwhile runs as pthread_sigmask or signal is
    # called: its KeyboardInterrupt, raised once the block had blocked SIGINT, or as it was
    # restoring the mask or handler, kept SIGINT blocked (or ignored) in the main thread
    real_mask, real_signal = signal.pthread_sigmask, signal.signal
    pending = [True]

    def interrupt_once():
        if pending:
            pending.clear()
            raise KeyboardInterrupt

    def pthread_sigmask(how, mask):
        if raised_by == "unblocking" and how == signal.SIG_SETMASK:
            interrupt_once()  # before the mask is set: signal.py's wrapper checks first
        previous = real_mask(how, mask)
        if raised_by == "blocking" and how == signal.SIG_BLOCK and signal.SIGINT in mask:
            interrupt_once()  # after: the C function checks for signals once it set it
        return previous

    def signal_(signalnum, handler):
        if raised_by == "restoring the handler" and handler is not signal.SIG_IGN:
            interrupt_once()
        return real_signal(signalnum, handler)

    handler = signal.getsignal(signal.SIGINT)
    mask = real_mask(signal.SIG_BLOCK, ())
    monkeypatch.setattr(signal, "pthread_sigmask", pthread_sigmask)
    monkeypatch.setattr(signal, "signal", signal_)
    with pytest.raises(KeyboardInterrupt), runner._deaf_to_ctrl_c():
        pass
    monkeypatch.undo()
    assert not pending
    assert real_mask(signal.SIG_BLOCK, ()) == mask
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_sweep_refuses_an_hf_model_that_cannot_train_before_any_run(tmp_path):
    # each run loaded the model and failed with the same error, recorded as one to retry
    import dataclasses

    pytest.importorskip("transformers")
    from tests._support.backbones import save_tiny_distilbert

    @dataclasses.dataclass(frozen=True)
    class Spec:
        run_id: str
        label: str = "run"

    class TooLong:
        name = "test"

        def runs(self):
            return [Spec("a"), Spec("b")]

        def check_requirements(self):
            pass

        def estimator_params(self, spec):
            return {"module": f"hf:{model}", "module_params": {"max_length": 100},
                    "device": "cpu"}

        def training_data(self, spec):
            raise AssertionError("a run started")

    model = save_tiny_distilbert(tmp_path / "model")
    with pytest.raises(ValueError, match=r"max_length'\]=100 is longer than .* take 64 tokens"):
        runner.run_sweep(TooLong(), tmp_path / "out", progress="none")
    assert not (tmp_path / "out").exists()
