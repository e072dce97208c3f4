"""``rest-fair wilds --protocol wilds`` on synthetic layouts, and WILDS' own evaluator
(the calls of examples/evaluate.py, through the real wilds package) scoring the files."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import warnings
from ast import literal_eval

import numpy as np
import pytest
import torch

from tests._support.backbones import save_tiny_distilbert, save_torchvision_state_dict

pytest.importorskip("transformers", reason="needs rest-fair[text]")

from rest_fair.cli import build_parser
from rest_fair.cli import main as rest_fair_main
from rest_fair.experiments.run import jsonable
from rest_fair.wilds import (
    dataset_spec,
    load_wilds,
    read_predictions,
    submission_filename,
    wilds_eval,
)
from rest_fair.wilds.experiment import (
    RUN_SETTINGS,
    WildsExperiment,
    adopt_seed_files,
    check_resumable,
    resolve_settings,
    run_settings,
)
from rest_fair.wilds.protocol import WILDS_RECIPES, recipe_for

HAS_TORCH_SCATTER = importlib.util.find_spec("torch_scatter") is not None


@pytest.fixture(scope="module")
def civil_run(tmp_path_factory):
    """Five seeds of the CivilComments recipe with a tiny local DistilBERT."""
    base = tmp_path_factory.mktemp("protocol_civil")
    model = save_tiny_distilbert(base / "tiny-distilbert")
    out = base / "out"
    status = rest_fair_main([
        "wilds", "--protocol", "wilds", "--dataset", "civilcomments", "--synthetic",
        "--root-dir", str(base / "data"), "--out-dir", str(out),
        "--module", f"hf:{model}", "--max-length", "16", "--max-epochs", "1",
        "--batch-size", "32", "--lr", "1e-3", "--device", "cpu",
    ])
    assert status == 0
    return base / "data", out


def test_recipes_are_the_wilds_reference_settings():
    water, celeba, civil = (recipe_for(n) for n in ("waterbirds", "celeba", "civilcomments"))
    assert (water.module, water.weights, water.optimizer, water.lr, water.weight_decay,
            water.batch_size, water.max_epochs, water.n_seeds) == (
        "resnet50", "IMAGENET1K_V1", "sgd", 1e-5, 1.0, 128, 300, 3)
    assert (celeba.lr, celeba.weight_decay, celeba.batch_size, celeba.max_epochs) == (
        1e-3, 0.0, 64, 200)
    assert (civil.module, civil.optimizer, civil.lr, civil.weight_decay, civil.batch_size,
            civil.max_epochs, civil.max_length, civil.seeds) == (
        "hf:distilbert-base-uncased", "adamw", 1e-5, 0.01, 16, 5, 300, [0, 1, 2, 3, 4])
    assert all("p-lambda/wilds" in r.source for r in WILDS_RECIPES.values())
    assert any("max_grad_norm" in d for d in civil.deviations)
    with pytest.raises(ValueError, match="No WILDS recipe"):
        recipe_for("fmow")


def _settings(*argv, name="waterbirds"):
    args = build_parser().parse_args(["wilds", "--dataset", name, "--root-dir", "x", *argv])
    return resolve_settings(args, dataset_spec(name))


def test_command_line_overrides_the_recipe():
    settings = _settings("--protocol", "wilds", "--max-epochs", "2", "--lr", "1e-5")
    assert settings["max_epochs"] == 2 and settings["lr"] == 1e-5
    assert settings["weight_decay"] == 1.0 and settings["batch_size"] == 128
    assert settings["module"] == "resnet50" and settings["weights"] == "IMAGENET1K_V1"
    assert settings["sparse_init"] == "magnitude"
    assert settings["dense_layers"] == ("first", "head")
    assert settings["seeds"] == [0, 1, 2] and settings["overridden"] == ["max_epochs"]
    other = _settings("--protocol", "wilds", "--module", "resnet18", "--seeds", "7")
    assert other["weights"] is None and other["seeds"] == [7]
    scratch = _settings("--protocol", "wilds", "--weights", "none")
    assert scratch["module"] == "resnet50" and scratch["weights"] is None
    assert scratch["overridden"] == ["weights"]
    custom = _settings()
    assert (custom["module"], custom["max_epochs"], custom["lr"], custom["seeds"]) == (
        "auto", 10, 0.01, [0])
    assert custom["sparse_init"] == "random" and "recipe" not in custom


def test_seed_is_run_or_named_as_not_run():
    # --protocol wilds ran the recipe's seeds 0, 1, 2, and --seeds left --seed 5 unread,
    # without a word
    assert _settings("--protocol", "wilds", "--seed", "5")["seeds"] == [5]
    assert _settings("--protocol", "wilds")["seeds"] == [0, 1, 2]
    with pytest.warns(UserWarning, match=r"--seed 5 is not run: --seeds names the seeds "
                                         r"that run \(1, 2\)"):
        assert _settings("--seeds", "1", "2", "--seed", "5")["seeds"] == [1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the seed of the layout
        assert _settings("--seeds", "1", "--seed", "5", "--synthetic")["seeds"] == [1]


@pytest.mark.parametrize("module", ["mlp", "hf:distilbert-base-uncased"])
def test_weights_for_a_module_that_is_not_torchvision_are_refused(module):
    with pytest.raises(ValueError, match="--weights needs a torchvision --module"):
        _settings("--module", module, "--weights", "DEFAULT")


@pytest.mark.parametrize(("argv", "message"), [
    (("--frac", "2"), r"--frac must be a number in \(0, 1\]; got 2.0"),
    (("--frac", "0"), r"--frac must be a number in \(0, 1\]"),
    (("--max-features", "0"), r"--max-features must be an integer in \[1, 2\*\*63\)"),
    (("--image-size", "-4"), "--image-size must be"),
    (("--max-length", "0"), "--max-length must be"),
    (("--seeds", "0", "0"), r"--seeds must be distinct integers in \[0, 4294967295\]; "
                            r"got \[0, 0\]"),
    (("--seeds", "-1"), "--seeds must be distinct"),
    # the estimator's random_state named no option
    (("--seeds", "4294967296"), "--seeds must be distinct integers in"),
    (("--seed", "4294967296"), r"--seed must be an integer in \[0, 4294967295\]"),
    (("--seed", "-1"), r"--seed must be an integer in \[0, 4294967295\]; got -1"),
    (("--seed", "-1", "--protocol", "wilds"), "--seed must be an integer in"),
])
def test_data_settings_are_refused_before_any_seed_runs(argv, message):
    # these used to fail each seed at its data loading, or run one seed twice
    with pytest.raises(ValueError, match=message):
        _settings(*argv)


@pytest.mark.parametrize(("name", "base", "extra"), [
    # --sparsity 0 kept the mask settings, which a dense run does not read, in its run id
    ("waterbirds", ["--sparsity", "0"],
     {"sparse-init": "magnitude", "layer-density": "uniform", "dense-layers": "head"}),
    ("waterbirds", [], {"max-features": "5", "max-length": "7"}),
    ("civilcomments", [], {"image-size": "5", "max-length": "7", "momentum": "0.5"}),
    ("civilcomments", ["--module", "hf:x"], {"max-features": "5"}),
])
def test_settings_a_run_does_not_read_enter_no_run_id(tmp_path, name, base, extra):
    # equal runs had other ids, and --resume refused the folder as one of other settings
    flags = [w for k, v in extra.items() for w in (f"--{k}", v)]
    with pytest.warns(UserWarning) as seen:  # they were accepted without a word
        settings = _settings(*base, *flags, name=name)
    named = [str(w.message).split(": not read by the runs")[0].split(", ") for w in seen]
    assert len(named) == 1 and sorted(named[0]) == sorted(f"--{k}" for k in extra)
    given = run_settings(settings)
    assert given == run_settings(_settings(*base, name=name))
    assert all(given[k.replace("-", "_")] is None for k in extra)
    if base == ["--sparsity", "0"]:  # a sparse run reads them
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert run_settings(_settings(*flags)) != run_settings(_settings())
    # a seed that an earlier version recorded with their values is resumed, re-keyed
    dataset = argparse.Namespace(dataset_name=name, data_dir=tmp_path)
    experiment = WildsExperiment(dataset, settings, tmp_path)
    earlier = jsonable({k: v for k, v in settings.items() if k in RUN_SETTINGS})
    (tmp_path / "results.jsonl").write_text(json.dumps({
        "run_id": "seed=0|earlier", "seed": 0, "status": "ok", "settings": earlier}) + "\n")
    adopt_seed_files(tmp_path)
    with pytest.warns(UserWarning, match="recorded by an earlier version without their data"):
        check_resumable(experiment)
    assert experiment.runs()[0].run_id in (tmp_path / "results.jsonl").read_text()


def test_waterbirds_protocol_writes_every_seed_and_mean_std(tmp_path, capsys):
    weights = save_torchvision_state_dict("resnet18", tmp_path / "r18.pt")
    out = tmp_path / "out"
    status = rest_fair_main([
        "wilds", "--protocol", "wilds", "--dataset", "waterbirds", "--synthetic",
        "--root-dir", str(tmp_path / "data"), "--out-dir", str(out),
        "--module", "resnet18", "--weights", str(weights), "--image-size", "16",
        "--max-epochs", "1", "--batch-size", "64", "--lr", "1e-3", "--device", "cpu",
    ])
    assert status == 0
    names = sorted(p.name for p in (out / "submission").iterdir())
    assert names == [f"waterbirds_split:{split}_seed:{k}_epoch:best_pred.csv"
                     for split in ("test", "val") for k in range(3)]
    record = json.loads((out / "metrics.json").read_text())
    assert record["seeds"] == [0, 1, 2] and len(record["runs"]) == 3
    assert set(record["metrics"]) == {"val", "test"}
    per_seed = [r["metrics"]["test"]["acc_wg"] for r in record["runs"]]
    assert record["metrics"]["test"]["acc_wg"] == pytest.approx(np.mean(per_seed))
    assert record["metrics_std"]["test"]["acc_wg"] == pytest.approx(np.std(per_seed, ddof=1))
    assert record["runs"][0]["density"] < 0.2
    assert "resnet18" in record["protocol"] and "WILDS recipe" in record["protocol"]
    assert "overridden: batch_size, image_size, lr, max_epochs, module, weights" in (
        record["protocol"])
    printed = capsys.readouterr().out
    assert "| ERM | none | 74.9 | 98.1 |" in printed and "±" in printed
    comparison = (out / "comparison.md").read_text()
    ours = next(line for line in comparison.splitlines() if line.startswith("| REST"))
    assert "±" in ours and "| 3 |" in ours


def test_resume_reuses_finished_seeds(tmp_path, monkeypatch, capsys):
    argv = ["wilds", "--dataset", "celebA", "--synthetic", "--root-dir", str(tmp_path / "d"),
            "--out-dir", str(tmp_path / "out"), "--module", "mlp", "--image-size", "8",
            "--max-epochs", "1", "--seeds", "0", "1", "--device", "cpu"]
    assert rest_fair_main(argv) == 0
    first = json.loads((tmp_path / "out" / "metrics.json").read_text())

    def no_training(*args, **kwargs):
        raise RuntimeError("a finished seed was trained again")

    monkeypatch.setattr(WildsExperiment, "training_data", no_training)
    assert rest_fair_main([*argv, "--resume"]) == 0
    again = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert again["metrics"] == first["metrics"]
    capsys.readouterr()
    # the seeds of other settings would overwrite these seeds' submission files
    for change, what in ((["--lr", "0.05"], "lr: 0.01 -> 0.05"),
                         (["--sparsity", "0.5"], "sparsity: 0.9 -> 0.5"),
                         (["--upweight", "none"], "upweight: 'balanced' -> None")):
        assert rest_fair_main([*argv, "--resume", *change]) == 2
        err = capsys.readouterr().err
        assert "holds seed 0 run with other settings" in err and what in err, err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == again

    # without --resume the earlier outputs are renamed, all of them, and kept
    monkeypatch.undo()
    assert rest_fair_main([*argv[:argv.index("--seeds")], "--seeds", "2",
                           "--device", "cpu"]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    stamp = next(n for n in names if n.startswith("results.2")).split(".")[1]
    assert {f"results.{stamp}.jsonl", f"submission.{stamp}", f"metrics.{stamp}.json",
            f"comparison.{stamp}.md", "results.jsonl", "submission", "metrics.json",
            "comparison.md"} <= set(names)
    assert {p.name.split("_")[2] for p in (tmp_path / "out" / "submission").iterdir()} == {
        "seed:2"}
    assert json.loads((tmp_path / "out" / f"metrics.{stamp}.json").read_text()) == again


def test_civilcomments_protocol_writes_five_seeds(civil_run):
    _, out = civil_run
    record = json.loads((out / "metrics.json").read_text())
    assert record["seeds"] == [0, 1, 2, 3, 4]
    files = sorted(p.name for p in (out / "submission").iterdir())
    assert len(files) == 10 and all(f.startswith("civilcomments_split:") for f in files)
    assert record["settings"]["max_length"] == 16
    assert record["settings"]["optimizer"] == "adamw"
    assert "tiny-distilbert (Hugging Face, pretrained) on text, 16 tokens" in record["protocol"]
    assert "overridden: batch_size, lr, max_epochs, max_length, module" in record["protocol"]
    assert "no gradient clipping" in record["protocol"]
    comparison = (out / "comparison.md").read_text()
    assert "ERM [WILDS]" in comparison and "SYNTHETIC DATA" in comparison


# ----------------------------------------------------------- WILDS' own evaluator
def _wilds_evaluate_benchmark(dataset_name: str, predictions_dir, root_dir) -> dict:
    """What examples/evaluate.py's evaluate_benchmark does, with the real wilds package:
    get_dataset, then per eval split and replicate: find the file, literal_eval each line,
    dataset.eval(pred, subset.y_array, subset.metadata_array); mean and std (ddof=1)."""
    import pandas as pd
    import wilds
    from wilds import get_dataset

    assert dataset_name in wilds.benchmark_datasets
    seeds = range(0, 5) if dataset_name == "civilcomments" else range(0, 3)
    metrics = ["acc_wg", "acc_avg"]
    with warnings.catch_warnings():
        # wilds 2.0's CivilComments loader needs pandas' pre-3 string inference
        warnings.filterwarnings("ignore", message=".*future.infer_string.*")
        with pd.option_context("future.infer_string", False):
            dataset = get_dataset(dataset=dataset_name, root_dir=str(root_dir),
                                  download=True)
    splits = [s for s in dataset.split_dict if s != "train"]
    per_replicate: dict = {}
    aggregated: dict = {}
    for split in splits:
        per_replicate[split] = {m: [] for m in metrics}
        per_replicate[split]["full"] = []
        for seed in seeds:
            run_id = f"{dataset_name}_split:{split}_seed:{seed}"
            names = [f for f in os.listdir(predictions_dir)
                     if f.startswith(run_id) and f.endswith(".csv")]
            assert names, run_id
            with open(os.path.join(predictions_dir, names[0])) as f:
                labels = [literal_eval(line.rstrip()) for line in f if line.rstrip()]
            predicted = torch.from_numpy(np.array(labels))
            subset = dataset.get_subset(split)
            if predicted.shape != subset.y_array.shape:
                predicted.unsqueeze_(-1)
            result = dataset.eval(predicted, subset.y_array, subset.metadata_array)[0]
            per_replicate[split]["full"].append(result)
            for m in metrics:
                per_replicate[split][m].append(result[m])
        aggregated[split] = {}
        for m in metrics:
            aggregated[split][f"{m}_std"] = np.std(per_replicate[split][m], ddof=1)
            aggregated[split][m] = np.mean(per_replicate[split][m])
    return {"aggregated": aggregated, "per_replicate": per_replicate}


@pytest.mark.skipif(not HAS_TORCH_SCATTER,
                    reason="torch_scatter is not importable (dataset.eval needs it; "
                           "make test builds it)")
def test_wilds_evaluator_scores_our_submission_like_our_metrics(civil_run):
    root, out = civil_run
    theirs = _wilds_evaluate_benchmark("civilcomments", out / "submission", root)
    record = json.loads((out / "metrics.json").read_text())
    dataset = load_wilds("civilcomments", root)
    assert set(theirs["aggregated"]) == set(record["metrics"]) == {"val", "test"}
    for split, aggregate in theirs["aggregated"].items():
        for metric in ("acc_wg", "acc_avg"):
            assert record["metrics"][split][metric] == pytest.approx(aggregate[metric],
                                                                     abs=1e-6)
            assert record["metrics_std"][split][metric] == pytest.approx(
                aggregate[f"{metric}_std"], abs=1e-6)
        subset = dataset.get_subset(split)
        for seed, full in enumerate(theirs["per_replicate"][split]["full"]):
            path = out / "submission" / submission_filename("civilcomments", split, seed)
            ours = wilds_eval(subset, read_predictions(path))
            assert set(ours) == set(full)
            for key, value in full.items():
                assert ours[key] == pytest.approx(float(value), abs=1e-6), (split, seed, key)
            assert record["runs"][seed]["metrics"][split] == pytest.approx(ours, abs=1e-12)


def test_wilds_evaluator_sees_a_wrong_file(civil_run, tmp_path):
    """The comparison can fail: flipping one seed's predictions changes WILDS' numbers."""
    if not HAS_TORCH_SCATTER:
        pytest.skip("torch_scatter is not importable")
    root, out = civil_run
    broken = tmp_path / "sub"
    broken.mkdir()
    for path in (out / "submission").iterdir():
        text = path.read_text()
        if "split:test_seed:0" in path.name:  # one label of one seed flipped
            labels = text.split()
            labels[0] = str(1 - int(labels[0]))
            text = "".join(f"{v}\n" for v in labels)
        (broken / path.name).write_text(text)
    theirs = _wilds_evaluate_benchmark("civilcomments", broken, root)
    record = json.loads((out / "metrics.json").read_text())
    assert theirs["aggregated"]["test"]["acc_avg"] != pytest.approx(
        record["metrics"]["test"]["acc_avg"], abs=1e-6)


def test_parser_keeps_custom_defaults_unset():
    args = build_parser().parse_args(["wilds", "--dataset", "celeba", "--root-dir", "x"])
    assert isinstance(args, argparse.Namespace)
    assert args.protocol == "custom" and args.module is None and args.seeds is None
