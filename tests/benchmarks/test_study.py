"""The equal-budget study: search spaces, sampling, equal-cost width, selection, the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rest_fair import cli
from rest_fair.benchmarks import (
    SEARCH_SPACES,
    SELECTION_RULES,
    STUDY_METHODS,
    RandomSearch,
    StudyMethod,
    equal_cost_width,
    preset,
    run_sweep,
    select,
    write_study_outputs,
)
from rest_fair.benchmarks.search import (
    Distribution,
    choice,
    hyperparameters,
    log_int,
    log_uniform,
    mlp_weights,
    sample,
    sample_seed,
    uniform,
)
from rest_fair.benchmarks.study_report import study_markdown, summarize_configurations
from rest_fair.experiments import runner as runner_mod


def tiny_search(**kwargs) -> RandomSearch:
    kwargs.setdefault("budget", 2)
    bench = preset("tiny", max_epochs=kwargs.pop("max_epochs", 3))
    return RandomSearch(bench, **kwargs)


# ----------------------------------------------------------------------- sampling
def test_configurations_are_deterministic_per_method_and_index():
    for space in SEARCH_SPACES:
        first = [sample(space, "m", i, search_seed=3) for i in range(4)]
        assert first == [sample(space, "m", i, search_seed=3) for i in range(4)]
        assert len({json.dumps(p, sort_keys=True) for p in first}) == 4  # indices differ
    # the seed depends on (search seed, method name, index) alone
    assert sample_seed(0, "rest_0.9", 5) == [0, 809134310, 5]  # crc32: the same everywhere
    assert sample_seed(0, "rest_0.9", 5) != sample_seed(0, "rest_0.95", 5)
    assert sample("rest", "a", 0) != sample("rest", "b", 0)
    assert sample("rest", "a", 0, search_seed=1) != sample("rest", "a", 0)
    # growing the budget or the method list keeps the configurations already drawn
    small, large = tiny_search(budget=2), tiny_search(budget=4, methods=tuple(STUDY_METHODS))
    for name in small.methods:
        for i in range(2):
            assert small.point(name, i) == large.point(name, i)
    with pytest.raises(ValueError, match="index"):
        sample("erm", "erm", -1)


def test_draws_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    for dist, low, high in ((log_uniform(1e-3, 1e-1), 1e-3, 1e-1), (uniform(0.1, 0.5), 0.1, 0.5),
                            (log_int(50, 1000), 50, 1000)):
        values = [dist.draw(rng) for _ in range(200)]
        assert low <= min(values) and max(values) <= high
    assert all(isinstance(log_int(50, 1000).draw(rng), int) for _ in range(20))
    assert {choice(1, 2, 3).draw(rng) for _ in range(100)} == {1, 2, 3}
    for name, space in SEARCH_SPACES.items():
        for i in range(20):
            point = sample(space, name, i)
            for coordinate, value in point.items():
                dist = space[coordinate]
                if dist.kind == "choice":
                    assert value in dist.values
                else:
                    assert dist.low * 0.999 <= value <= dist.high * 1.001
    assert "log-uniform in [0.001, 0.1]" == SEARCH_SPACES["erm"]["lr"].describe()
    for bad in ({"kind": "normal"}, {"kind": "log_uniform", "low": 0.0, "high": 1.0},
                {"kind": "uniform", "low": 2.0, "high": 1.0}, {"kind": "choice"}):
        with pytest.raises(ValueError):
            Distribution(**bad)


def test_points_become_estimator_parameters():
    point = {"lr": 0.01, "weight_decay": 1e-5, "epoch_fraction": 1 / 3, "upweight_balance": 0.5,
             "drop_fraction": 0.3, "update_interval": 200, "jtt_epoch_fraction": 0.2}
    params = hyperparameters(point, ratio=0.01, max_epochs=30)
    assert params == {"lr": 0.01, "weight_decay": 1e-5, "max_epochs": 10, "upweight": 49.5,
                      "drop_fraction": 0.3, "update_interval": 200, "jtt_epochs": 6}
    assert hyperparameters({"epoch_fraction": 1 / 3}, ratio=0.05, max_epochs=1) == {
        "max_epochs": 1}
    # λ relative to balance: m = 1 draws aligned and conflicting samples equally often
    assert hyperparameters({"upweight_balance": 1.0}, ratio=0.05, max_epochs=1) == {
        "upweight": 19.0}
    with pytest.raises(ValueError, match="coordinate"):
        hyperparameters({"momentum": 0.5}, ratio=0.05, max_epochs=1)


# ------------------------------------------------------------- equal-cost width
def test_equal_cost_width_matches_the_active_weights():
    # the documented case: Colored Fashion-MNIST (3 x 28 x 28 inputs), MLP 3 x 300
    assert [equal_cost_width(2352, 10, [300] * 3, s) for s in (0.9, 0.95, 0.99)] == [36, 19, 4]
    assert mlp_weights(2352, 10, [300] * 3) == 2352 * 300 + 2 * 300 * 300 + 300 * 10
    for n_in, n_out, widths, sparsity in ((192, 10, [64, 64], 0.9), (784, 2, [1000] * 4, 0.99),
                                          (50, 3, [40], 0.5), (10, 10, [5, 5], 0.99)):
        target = (1 - sparsity) * mlp_weights(n_in, n_out, widths)
        low, high = 0.0, float(max(widths))  # bisection on W(h) = target, independently
        for _ in range(200):
            mid = (low + high) / 2
            weights = n_in * mid + (len(widths) - 1) * mid**2 + mid * n_out
            low, high = (mid, high) if weights < target else (low, mid)
        assert equal_cost_width(n_in, n_out, widths, sparsity) == max(1, round(low))
    assert equal_cost_width(2352, 10, [300] * 3, 0.0) == 300
    with pytest.raises(ValueError, match="equal hidden widths"):
        equal_cost_width(10, 2, [5, 6], 0.9)
    with pytest.raises(ValueError, match="sparsity"):
        equal_cost_width(10, 2, [5], 1.0)


# ---------------------------------------------------------------- the method table
def test_method_table_rules_and_group_labels():
    rules = {n: (m.selection, m.group_labels) for n, m in STUDY_METHODS.items()}
    assert rules["erm"] == rules["jtt"] == ("worst_class", "none")
    for name in ("reweighting", "rest_0.9", "rest_0.95", "rest_0.99", "groupdro",
                 "dense_cost_0.9", "dense_cost_0.99"):
        assert rules[name] == ("worst_group", "train"), name
    assert [STUDY_METHODS[f"rest_{s}"].sparsity for s in ("0.9", "0.95", "0.99")] == [
        0.9, 0.95, 0.99]
    assert STUDY_METHODS["dense_cost_0.9"].cost_of == 0.9
    assert STUDY_METHODS["dense_cost_0.9"].sparsity == 0.0
    assert SELECTION_RULES["worst_class"].key == "valid_worst_class_acc"
    with pytest.raises(ValueError, match="selection"):
        StudyMethod("x", "X", "rest", 0.9, "rest", "best_test")


def test_a_recipe_is_one_row(monkeypatch):
    def recipe() -> dict:
        return {"update_interval": 1000, "drop_fraction": 0.5, "update_end": 1.0}

    row = StudyMethod("rest_recipe_0.9", "REST, recipe (90 %)", "rest", 0.9, "reweighting",
                      "worst_group", fixed_params=recipe, series="REST, recipe")
    monkeypatch.setitem(STUDY_METHODS, row.name, row)
    search = tiny_search(methods=("rest_0.9", row.name))
    spec = next(s for s in search.runs() if s.method == row.name)
    params = search.estimator_params(spec)
    assert params["sparsity"] == 0.9 and params["update_end"] == 1.0
    assert params["update_interval"] == 1000 and params["drop_fraction"] == 0.5
    assert search.to_dict()["methods"][row.name]["fixed_params"] == recipe()


def test_runs_ids_and_order():
    search = tiny_search(budget=3, methods=("erm", "rest_0.9"))
    specs = search.runs()
    assert len(specs) == len({s.run_id for s in specs}) == 1 * 3 * 2 * 1
    # configuration-major: every method's configuration 0 comes first
    assert [(s.config, s.method) for s in specs[:2]] == [(0, "erm"), (0, "rest_0.9")]
    # ... across shares too, so a study stopped after configuration k is the study at budget k
    bench = preset("tiny", max_epochs=3, ratios=(0.01, 0.05))
    two_shares = RandomSearch(bench, budget=3, methods=("erm", "rest_0.9")).runs()
    assert [s.config for s in two_shares] == sorted(s.config for s in two_shares)
    assert {s.ratio for s in two_shares[:4]} == {0.01, 0.05}
    grown = tiny_search(budget=5, methods=("erm", "rest_0.9", "groupdro"))
    assert {s.run_id for s in specs} <= {s.run_id for s in grown.runs()}
    assert not {s.run_id for s in specs} & {s.run_id for s in
                                            tiny_search(budget=3, search_seed=1).runs()}
    assert not {s.run_id for s in specs} & {s.run_id for s in
                                            tiny_search(budget=3, max_epochs=4).runs()}


def test_estimator_parameters_and_data_of_a_trial():
    search = tiny_search(methods=("erm", "rest_0.9", "dense_cost_0.9", "jtt"))
    by_method = {s.method: s for s in search.runs() if s.config == 1}
    rest = search.estimator_params(by_method["rest_0.9"])
    drawn = hyperparameters(search.point("rest_0.9", 1), ratio=0.05, max_epochs=3)
    assert rest["sparsity"] == 0.9 and rest["random_state"] == 0
    assert {k: rest[k] for k in drawn} == drawn
    assert rest["module_params"] == {"hidden_layer_sizes": [64, 64]}
    dense = search.estimator_params(by_method["dense_cost_0.9"])
    # Colored Digits: 3 x 8 x 8 inputs, 10 classes
    width = equal_cost_width(192, 10, [64, 64], 0.9)
    assert dense["sparsity"] == 0.0 and dense["module_params"] == {
        "hidden_layer_sizes": [width, width]}
    erm = search.estimator_params(by_method["erm"])
    assert erm["upweight"] is None and "drop_fraction" not in erm
    jtt = search.estimator_params(by_method["jtt"])
    assert jtt["infer_groups"] == "jtt" and 5 <= jtt["upweight"] <= 200
    # label-free rows: no bias label in fit, classes as validation groups (worst class)
    fit = search.training_data(by_method["erm"])[2]
    assert fit["groups"] is None and fit["validation_data"][2] is fit["validation_data"][1]
    fit = search.training_data(by_method["rest_0.9"])[2]
    assert fit["groups"].dtype == bool and fit["validation_data"][2].dtype == bool


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"budget": 0}, "budget"), ({"methods": ("magic",)}, "magic"), ({"methods": ()}, "empty")],
)
def test_bad_search_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_search(**kwargs)
    with pytest.raises(ValueError, match="searched"):
        RandomSearch(preset("tiny", upweight=10.0))
    with pytest.raises(ValueError, match="module='mlp'"):
        RandomSearch(preset("tiny", module="cnn"), methods=("dense_cost_0.9",))
    # what the search draws or a row's method sets would silently replace extra_params
    with pytest.raises(ValueError, match=r"'weight_decay'.*'erm'"):
        RandomSearch(preset("tiny", extra_params={"weight_decay": 0.1}), methods=("erm",))
    with pytest.raises(ValueError, match=r"'infer_groups'.*'jtt'"):
        RandomSearch(preset("tiny", extra_params={"infer_groups": None}), methods=("jtt",))


# --------------------------------------------------------------------- selection
def _record(method, config, seed, *, wg, wc, test):
    return {
        "run_id": f"{method}|{config}|{seed}", "status": "ok", "method": method,
        "ratio": 0.05, "config": config, "seed": seed, "method_label":
        STUDY_METHODS[method].label, "group_labels": STUDY_METHODS[method].group_labels,
        "valid_worst_group_acc": wg, "valid_worst_class_acc": wc, "valid_acc": 0.9,
        "test_worst_group_acc": test, "test_unbiased_acc": test, "test_conflicting_acc": test,
        "test_aligned_acc": 1.0, "training_flops": 1e9, "fit_seconds": 2.0,
        "params_active": 1000, "inference_flops": 1e4, "density": 1.0,
        "hyperparameters": {"lr": 0.01 * (config + 1)}, "hidden_layer_sizes": [64, 64],
    }


def test_selection_rules_choose_the_known_configuration():
    search = tiny_search(budget=3, methods=("erm", "reweighting"), max_epochs=3)
    records = [
        # ERM is chosen by worst-class accuracy: config 1 (0.70) beats config 0 (0.55)
        # although config 0 has the better worst-group and test accuracy; config 2 has the
        # best score but one seed only, so it is not compared
        _record("erm", 0, 0, wg=0.9, wc=0.5, test=0.3),
        _record("erm", 0, 1, wg=0.9, wc=0.6, test=0.4),
        _record("erm", 1, 0, wg=0.1, wc=0.7, test=0.2),
        _record("erm", 1, 1, wg=0.1, wc=0.7, test=0.3),
        _record("erm", 2, 0, wg=0.1, wc=0.99, test=0.9),
        # reweighting by worst-group accuracy: configs 0 and 1 tie at 0.5, the lower wins
        _record("reweighting", 0, 0, wg=0.4, wc=0.1, test=0.45),
        _record("reweighting", 0, 1, wg=0.6, wc=0.1, test=0.55),
        _record("reweighting", 1, 0, wg=0.5, wc=0.9, test=0.9),
        _record("reweighting", 1, 1, wg=0.5, wc=0.9, test=0.9),
        # the best score, but one of its seeds diverged: not eligible
        _record("reweighting", 2, 0, wg=0.99, wc=0.9, test=0.9),
        {"run_id": "r2", "status": "failed", "method": "reweighting", "ratio": 0.05,
         "config": 2, "seed": 1, "error": "TrainingDivergedError: ..."},
        {"run_id": "x", "status": "error", "method": "erm", "ratio": 0.05, "config": 0,
         "seed": 0},
    ]
    configurations = summarize_configurations(records, search)
    assert len(configurations) == 6
    diverged = configurations.set_index(["method", "config"]).loc[("reweighting", 2)]
    assert diverged["n"] == 1 and diverged["n_failed"] == 1
    chosen = select(configurations).set_index("method")
    assert chosen.loc["erm", "config"] == 1 and chosen.loc["erm", "n_configs"] == 2
    assert chosen.loc["erm", "score_mean"] == pytest.approx(0.7)
    assert chosen.loc["reweighting", "config"] == 0
    assert chosen.loc["reweighting", "test_worst_group_acc_se"] == pytest.approx(
        np.std([0.45, 0.55], ddof=1) / math.sqrt(2))
    table = study_markdown(select(configurations), search, configurations)
    assert ("| 5 | ERM | 0 | none | val. worst-class accuracy | 1 of 2 | 70.0 | 25.0 ± 5.0 |"
            in table)
    assert ("| 5 | Reweighting (dense) | 0 | train | val. worst-group accuracy | 0 of 2 | 50.0 "
            "| 50.0 ± 5.0 |" in table)
    assert "mean ± standard error" in table and "by validation worst-class accuracy: ERM" in table
    assert ("Training diverged (not eligible): Reweighting (dense) at 5 %, configuration 2 "
            "(1 of 2 seeds)" in table)


def test_study_standard_error_counts_only_the_seeds_that_have_the_metric():
    search = tiny_search(budget=1, methods=("reweighting",), max_epochs=3)
    records = [_record("reweighting", 0, seed, wg=0.5, wc=0.5, test=test)
               for seed, test in enumerate((0.3, 0.4, 0.5))]
    del records[2]["test_conflicting_acc"]
    chosen = select(summarize_configurations(records, search)).iloc[0]
    assert chosen["test_conflicting_acc_se"] == pytest.approx(
        np.std([0.3, 0.4], ddof=1) / math.sqrt(2))
    table = study_markdown(select(summarize_configurations(records, search)), search)
    assert "| 40.0 ± 5.8 | 40.0 ± 5.8 | 35.0 ± 5.0 (n=2) | 100.0 ± 0.0 | 3 |" in table
    assert chosen["n"] == 3 and chosen["test_conflicting_acc_n"] == 2


def test_study_costs_that_no_record_has_are_shown_as_missing():
    # active weights and fit seconds printed "nan" (FLOPs already printed "–")
    search = tiny_search(budget=1, methods=("reweighting",), max_epochs=3)
    records = [_record("reweighting", 0, seed, wg=0.5, wc=0.5, test=0.4) for seed in range(2)]
    for record in records:
        for key in ("params_active", "training_flops", "fit_seconds"):
            record.pop(key, None)
    table = study_markdown(select(summarize_configurations(records, search)), search)
    row = next(line for line in table.splitlines() if line.startswith("| ") and "| 2 |" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert "nan" not in cells and cells[-4:-1] == ["–", "–", "–"]


def test_study_fit_seconds_under_a_second_keep_two_digits():
    search = tiny_search(budget=1, methods=("reweighting",), max_epochs=3)
    records = [{**_record("reweighting", 0, seed, wg=0.5, wc=0.5, test=0.4), "fit_seconds": 0.04}
               for seed in range(2)]
    table = study_markdown(select(summarize_configurations(records, search)), search)
    row = next(line for line in table.splitlines() if line.startswith("| ") and "| 2 |" in line)
    assert [cell.strip() for cell in row.strip("|").split("|")][-2] == "0.04"  # was "0.0"


# ------------------------------------------------------- the command (torch needed)
def test_study_command_runs_and_resumes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    calls: list[str] = []
    real_run_one = runner_mod.run_one

    def counting(spec, *args, **kwargs):
        calls.append(spec.run_id)
        return real_run_one(spec, *args, **kwargs)

    monkeypatch.setattr(runner_mod, "run_one", counting)
    out = tmp_path / "study"
    argv = ["bench", "--preset", "tiny", "--search", "random", "--budget", "2", "--methods",
            "erm,rest_0.9,dense_cost_0.9", "--epochs", "1", "--out-dir", str(out),
            "--no-progress"]
    assert cli.main([*argv, "--max-runs", "2"]) == 0  # a first chunk
    assert len(calls) == 2
    assert cli.main(argv) == 0  # the rest, resumed
    assert len(calls) == len(set(calls)) == 6
    printed = capsys.readouterr().out
    assert "| REST 90 % | 0.9 | train | val. worst-group accuracy |" in printed
    assert "| ERM | 0 | none | val. worst-class accuracy |" in printed
    for name in ("table.md", "table.csv", "configurations.csv", "config.json",
                 "worst_group_vs_sparsity.png", "worst_group_vs_cost.png"):
        assert (out / name).stat().st_size > 0, name
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["budget"] == 2 and info["n_runs_ok"] == 6
    assert "lr" in info["config"]["search_spaces"]["rest"]
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert {"valid_worst_group_acc", "valid_worst_class_acc", "training_flops",
            "hyperparameters", "fit_seconds"} <= set(record)
    # a larger budget keeps the runs done and runs only the new configurations
    assert cli.main([*argv[:6], "3", *argv[7:]]) == 0
    assert len(calls) == 9


class DivergingSearch(RandomSearch):
    """The study with a learning rate no network survives."""

    def estimator_params(self, spec):
        return {**super().estimator_params(spec), "lr": 1e30}


def test_a_diverged_run_is_an_outcome_not_retried(tmp_path):
    pytest.importorskip("torch")
    search = DivergingSearch(preset("tiny", max_epochs=1), budget=1, methods=("reweighting",))
    records = run_sweep(search, tmp_path, progress=False)
    assert [r["status"] for r in records] == ["failed"]
    assert "TrainingDivergedError" in records[0]["error"]
    assert run_sweep(search, tmp_path, progress=False) == records  # nothing rerun
    outputs = write_study_outputs(records, search, tmp_path, plots=False)
    assert outputs["summary"].empty and outputs["configurations"]["n_failed"].tolist() == [1]
    assert json.loads((tmp_path / "config.json").read_text())["n_runs_failed"] == 1


def test_study_command_refuses_searched_flags(capsys):
    assert cli.main(["bench", "--preset", "tiny", "--search", "random", "--lr", "0.1"]) == 2
    assert "--lr is not used with --search random" in capsys.readouterr().err
    assert cli.main(["bench", "--preset", "tiny", "--methods", "rest_0.9"]) == 2
    assert "--search grid" in capsys.readouterr().err


def test_study_with_missing_files_fails_before_any_run(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv = ["bench", "--preset", "tiny", "--dataset", "fashion_mnist", "--data-root", str(empty),
            "--search", "random", "--budget", "2", "--out-dir", str(out), "--no-progress"]
    assert cli.main(argv) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert not out.exists()


def test_extra_params_a_trial_leaves_unused_neither_reach_it_nor_enter_its_id():
    # groupdro_adjustment reached ERM's runs (a warning each) and changed their ids
    pytest.importorskip("torch")
    methods = ("erm", "groupdro")
    search = tiny_search(methods=methods, max_epochs=2)
    bench = preset("tiny", max_epochs=2, extra_params={"groupdro_adjustment": 1.0})
    default = {s.run_id for s in search.runs()}
    given = RandomSearch(bench, budget=2, methods=methods)
    for spec in given.runs():
        params = given.estimator_params(spec)
        if spec.method == "erm":
            assert "groupdro_adjustment" not in params and spec.run_id in default
        else:
            assert params["groupdro_adjustment"] == 1.0 and spec.run_id not in default


def test_a_name_where_names_are_expected_is_refused():
    # methods="erm" was read as the methods "e", "r", "m" ("Unknown study method 'e'")
    with pytest.raises(ValueError, match="methods must be a tuple or a list of values; got 'erm'"):
        tiny_search(methods="erm")
    with pytest.raises(ValueError, match="methods must be a tuple or a list of values"):
        preset("tiny", methods="erm")
    with pytest.raises(ValueError, match=r"ratios must be a tuple or a list of values; got 0\.05"):
        preset("tiny", ratios=0.05)
    assert preset("tiny", seeds=np.arange(2), sparsities=np.array([0.5])).seeds == (0, 1)


def test_the_learning_rate_of_the_configuration_enters_no_trial_id():
    # the search draws lr: the configuration's own lr (a preset's 0.05 or the default 0.01)
    # changed every id and the report's hash, so the same trials ran again
    pytest.importorskip("torch")
    ours, other = tiny_search(), RandomSearch(preset("tiny", max_epochs=3, lr=0.02), budget=2)
    assert [s.run_id for s in ours.runs()] == [s.run_id for s in other.runs()]
    assert ours.common_hash() == other.common_hash()
    assert "lr" not in ours.to_dict()["bench"]
    spec = ours.runs()[0]
    assert ours.estimator_params(spec) == other.estimator_params(spec)
