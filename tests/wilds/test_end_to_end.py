"""Load -> fit RESTClassifier -> official metrics -> submission files, with the real wilds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline

from rest_fair import RESTClassifier
from rest_fair.cli import main as rest_fair_main
from rest_fair.wilds import (
    load_wilds,
    make_synthetic_layout,
    read_predictions,
    split_wilds,
    wilds_eval,
    write_submission,
)

TINY = {
    "module": "mlp",
    "module_params": {"hidden_layer_sizes": (16,)},
    "max_epochs": 2,
    "batch_size": 16,
    "sparsity": 0.5,
    "random_state": 0,
    "device": "cpu",
}


@pytest.mark.parametrize("name", ["waterbirds", "celebA"])
def test_image_dataset_end_to_end(tmp_path, name):
    make_synthetic_layout(name, tmp_path / "data", image_size=8)
    dataset = load_wilds(name, tmp_path / "data")
    parts = split_wilds(dataset, image_size=8)
    train, val, test = parts["train"], parts["val"], parts["test"]

    clf = RESTClassifier(**TINY)
    clf.fit(train.X, train.y, groups=train.groups, validation_data=val.validation_data())
    assert sorted(clf.groups_) == [0, 1, 2, 3]
    assert clf.input_shape_ == (3, 8, 8)

    predictions = {split: clf.predict(parts[split].X) for split in ("val", "test")}
    results = wilds_eval(test, predictions["test"])
    assert 0.0 <= results["acc_wg"] <= 1.0
    assert ("adj_acc_avg" in results) == (name == "waterbirds")

    files = write_submission(predictions, dataset=dataset, out_dir=tmp_path / "sub", seed=0)
    assert {p.name for p in files} == {
        f"{name}_split:val_seed:0_epoch:best_pred.csv",
        f"{name}_split:test_seed:0_epoch:best_pred.csv",
    }
    for path in files:
        split = "val" if "split:val" in path.name else "test"
        np.testing.assert_array_equal(read_predictions(path), predictions[split])
        assert len(path.read_text().splitlines()) == len(parts[split])


def test_civilcomments_tfidf_pipeline_end_to_end(tmp_path):
    make_synthetic_layout("civilcomments", tmp_path / "data")
    dataset = load_wilds("civilcomments", tmp_path / "data")
    parts = split_wilds(dataset)
    train, test = parts["train"], parts["test"]

    # TF-IDF gives scipy.sparse input; groups reach the REST step through the Pipeline
    pipe = make_pipeline(TfidfVectorizer(), RESTClassifier(**{**TINY, "max_epochs": 5}))
    pipe.fit(train.X, train.y, restclassifier__groups=train.groups)
    assert sp.issparse(pipe[0].transform(train.X[:2]))
    assert sorted(pipe[-1].groups_) == [0, 1, 2, 3]

    predictions = {split: pipe.predict(parts[split].X) for split in ("val", "test")}
    results = wilds_eval(test, predictions["test"])
    assert {"acc_avg", "acc_wg", "acc_y:1_black:1", "count_y:0_white:1"} <= set(results)
    files = write_submission(predictions, dataset=dataset, out_dir=tmp_path / "sub")
    assert len(files) == 2


def test_cli_runs_through_rest_fair_entry_point(tmp_path, capsys):
    out = tmp_path / "out"
    status = rest_fair_main([
        "wilds", "--dataset", "waterbirds", "--root-dir", str(tmp_path / "data"),
        "--out-dir", str(out), "--synthetic", "--max-epochs", "1", "--image-size", "8",
        "--module", "mlp", "--batch-size", "32", "--seed", "3", "--device", "cpu",
    ])
    assert status == 0
    assert (out / "submission" / "waterbirds_split:test_seed:3_epoch:best_pred.csv").exists()
    assert (out / "submission" / "waterbirds_split:val_seed:3_epoch:best_pred.csv").exists()
    assert not list((out / "submission").glob("*split:train*"))
    record = json.loads((out / "metrics.json").read_text())
    assert record["synthetic_data"] is True
    assert record["config"]["seed"] == 3 and "_given_seed" not in record["config"]
    assert set(record["metrics"]) == {"train", "val", "test"}
    assert "adj_acc_avg" in record["metrics"]["test"]
    comparison = (out / "comparison.md").read_text()
    assert "SYNTHETIC DATA" in comparison and "| ERM | none | 74.9 | 98.1 |" in comparison
    assert "acc_wg" in capsys.readouterr().out


def _two_seeds(tmp_path, out) -> list[str]:
    """A one-epoch synthetic Waterbirds run of seeds 0 and 1 into ``out``."""
    return ["wilds", "--dataset", "waterbirds", "--root-dir", str(tmp_path / "data"),
            "--out-dir", str(out), "--synthetic", "--max-epochs", "1", "--image-size", "8",
            "--module", "mlp", "--batch-size", "32", "--seeds", "0", "1", "--device", "cpu"]


def _with(argv: list[str], *changes: str) -> list[str]:
    """``argv`` with the flags of ``changes`` in place of its own (flags of one value)."""
    given = [i for i, arg in enumerate(argv) if arg.startswith("--") and arg in changes]
    drop = {*given, *(i + 1 for i in given)}
    return [arg for i, arg in enumerate(argv) if i not in drop] + list(changes)


def test_cli_says_the_spread_over_seeds_is_a_standard_deviation(tmp_path, capsys):
    out = tmp_path / "out"
    assert rest_fair_main(_two_seeds(tmp_path, out)) == 0
    record = json.loads((out / "metrics.json").read_text())
    wg = [run["metrics"]["test"]["acc_wg"] for run in record["runs"]]
    assert record["metrics"]["test"]["acc_wg"] == pytest.approx(np.mean(wg))
    assert record["metrics_std"]["test"]["acc_wg"] == pytest.approx(np.std(wg, ddof=1))
    se = np.std(wg, ddof=1) / np.sqrt(2)
    assert record["metrics_se"]["test"]["acc_wg"] == pytest.approx(se)
    test_line = next(line for line in capsys.readouterr().out.splitlines()
                     if line.startswith("waterbirds test"))
    assert f"[SE {se:.4f}]" in test_line
    assert test_line.endswith("(mean ± std, ddof=1 [standard error std/√n], over 2 seeds)")
    assert "mean ± std (ddof=1, as WILDS reports it) over seeds 0, 1" in (
        out / "comparison.md").read_text()


def test_resume_with_fewer_seeds_reports_every_finished_seed(tmp_path, capsys):
    # the report of seed 1 alone replaced that of seeds 0 and 1, whose submission files and
    # results stayed in the folder
    out = tmp_path / "out"
    assert rest_fair_main(_two_seeds(tmp_path, out)) == 0
    first = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert rest_fair_main([*_two_seeds(tmp_path, out)[:-5], "--seeds", "1", "--device", "cpu",
                           "--resume"]) == 0
    assert (f"rest-fair wilds: --resume: the report covers seeds 0, 1, of which 0 finished "
            f"into {out} by an earlier command with these settings and data."
            ) in capsys.readouterr().err
    record = json.loads((out / "metrics.json").read_text())
    assert (record["seeds"], record["earlier_seeds"]) == ([0, 1], [0])
    assert record["metrics"] == first["metrics"]
    assert record["submission_files"] == first["submission_files"]
    assert "over seeds 0, 1" in (out / "comparison.md").read_text()
    assert len((out / "results.jsonl").read_text().splitlines()) == 2  # nothing ran again


@pytest.mark.parametrize("bad", [["--max-epochs", "0"], ["--lr", "-1"], ["--device", "bogus"]])
def test_settings_refused_before_the_earlier_outputs_are_renamed(tmp_path, capsys, bad):
    # a command refused for its settings (exit 2) renamed the folder's earlier outputs
    # aside first, so that a typo took the previous results out of place
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"results.jsonl": "{}\n", "metrics.json": "{}", "comparison.md": "# earlier"}
    for name, text in earlier.items():
        (out / name).write_text(text)
    assert rest_fair_main(_with(_two_seeds(tmp_path, out), *bad)) == 2
    assert f"rest-fair wilds: {bad[0]} must be" in capsys.readouterr().err  # the flag typed
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()
            and not p.name.startswith(".")} == earlier


@pytest.mark.parametrize(("bad", "message"), [
    (["--dense-layers", "head", "bogus"], "--dense-layers names 'bogus', which is not"),
    (["--module", "cnn", "--image-size", "2"], "too small for module='cnn'"),
])
def test_a_network_every_seed_would_fail_on_is_refused_once_up_front(tmp_path, capsys, bad,
                                                                     message):
    # each seed failed on it in turn (exit 1, "rerun with --resume"), after the folder's
    # earlier outputs were renamed aside
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert rest_fair_main(_with(_two_seeds(tmp_path, out), *bad)) == 2
    err = capsys.readouterr().err
    assert err.count(message) == 1 and err.startswith("rest-fair wilds: ")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_weights_that_cannot_be_downloaded_are_refused_before_the_outputs_move(
        tmp_path, capsys, monkeypatch):
    # every seed failed on the download in turn (exit 1, "rerun with --resume"), after the
    # folder's earlier outputs were renamed aside
    import urllib.error

    import torch

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    argv = _with(_two_seeds(tmp_path, out), "--module", "resnet18", "--weights", "DEFAULT")
    assert rest_fair_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rest-fair wilds: Could not download the torchvision weights ")
    assert err.count("Could not download") == 1
    assert "module_params" not in err and "give its path as the weights" in err  # --weights
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_images_that_pretrained_weights_cannot_take_are_refused_before_the_download(
        tmp_path, capsys, monkeypatch):
    # the check built the model without its weights, after downloading them, and said to
    # build it for the images with module_params={'image_size': 8}, which the weights forbid
    from rest_fair import backbones

    def download(member, name, timeout):
        raise AssertionError(f"{member} downloaded before the images were checked")

    monkeypatch.setattr(backbones, "_download", download)
    out = tmp_path / "out"
    argv = _with(_two_seeds(tmp_path, out), "--module", "vit_b_16", "--weights", "DEFAULT")
    assert rest_fair_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rest-fair wilds: torchvision's vit_b_16 takes images of 224x224 ")
    assert "its pretrained position embeddings are those of this size" in err
    assert "module_params" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--module", "vit_b_16"], "Resize the images to 224x224 with --image-size 224."),
    (["--module", "maxvit_t"], "Resize the images to 224x224 with --image-size 224."),
    (["--module", "resnet18", "--weights", ""], "--weights must be 'none' (random init), a "
     "torchvision weights name (e.g. 'DEFAULT', 'IMAGENET1K_V2') or a path to a state-dict "
     "file; got ''."),
])
def test_errors_name_the_flags_instead_of_module_params(tmp_path, capsys, argv, message):
    # they said to pass module_params={'image_size': 8}, {'input_size': ...} or
    # module_params['weights'], which the command cannot pass, and --weights None or a
    # torchvision weights member, which it cannot take
    assert rest_fair_main(_with(_two_seeds(tmp_path, tmp_path / "out"), *argv)) == 2
    err = capsys.readouterr().err
    assert message in err and "module_params" not in err


@pytest.mark.parametrize(("argv", "message"), [
    ([], "no padding token"),
    (["--max-length", "100"], "--max-length=100 is longer than"),
    (["--max-length", "1"], "--max-length=1 is shorter than the 2 special tokens"),
])
def test_an_hf_model_that_cannot_train_is_refused_before_any_seed(tmp_path, capsys, argv,
                                                                  message):
    # every seed failed with the same error, and the command said to rerun with --resume;
    # the advice for a missing padding token names what the command takes, not module_params
    from transformers import AutoTokenizer

    from tests._support.backbones import save_tiny_distilbert

    model = save_tiny_distilbert(tmp_path / "model")
    if not argv:
        tokenizer = AutoTokenizer.from_pretrained(model)
        tokenizer.pad_token = None
        tokenizer.save_pretrained(model)
    capsys.readouterr()  # transformers' progress bars
    out = tmp_path / "out"
    assert rest_fair_main(["wilds", "--dataset", "civilcomments", "--root-dir",
                           str(tmp_path / "data"), "--out-dir", str(out), "--synthetic",
                           "--module", f"hf:{model}", "--seeds", "0", "1", "--max-epochs", "1",
                           "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rest-fair wilds: ") and message in err
    assert "seed 0 failed" not in err and "--resume" not in err and "module_params" not in err
    if not argv:
        assert "give --module hf:<folder> (tokenizer.pad_token = " in err
    assert not (out / "results.jsonl").exists()


def test_a_cuda_device_this_machine_lacks_is_refused_before_the_outputs_move(
        tmp_path, capsys, monkeypatch):
    # every seed failed with the same error, after the earlier outputs were renamed
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert rest_fair_main([*_two_seeds(tmp_path, out)[:-1], "cuda"]) == 2  # --device cuda
    assert "rest-fair wilds: --device='cuda' was requested" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_cli_says_why_the_report_cannot_be_written(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "comparison.md").mkdir(parents=True)  # in the way, as a full disk would be
    assert rest_fair_main([*_two_seeds(tmp_path, out), "--resume"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"rest-fair wilds: cannot write the report: [Errno 21] Is a directory: "
        f"'{out / 'comparison.md'}'; the finished runs are kept in {out / 'results.jsonl'}; "
        "to write it, rerun it with --resume.")
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_resume_keeps_a_report_it_did_not_write_aside(tmp_path, capsys):
    # --resume wrote its report over a comparison.md without the metrics.json that says
    # whose it is, and over the report of other settings whose seeds the results file no
    # longer held
    out = tmp_path / "out"
    out.mkdir()
    (out / "comparison.md").write_text("# my notes\n")
    argv = [*_two_seeds(tmp_path, out)[:-5], "--seed", "3", "--device", "cpu", "--resume"]
    assert rest_fair_main(argv) == 0
    kept = next(out.glob("comparison.2*.md"))
    assert kept.read_text() == "# my notes\n"
    note = f"rest-fair wilds: --resume: the report in {out} is not of these settings or data"
    assert f"{note}; it is kept as {kept}." in capsys.readouterr().err
    report = {name: (out / name).read_text() for name in ("metrics.json", "comparison.md")}
    (out / "results.jsonl").unlink()
    assert rest_fair_main([*argv, "--lr", "0.05"]) == 0
    stamp = next(out.glob("metrics.2*.json")).name.split(".")[1]
    assert {name: (out / name.replace(".", f".{stamp}.")).read_text()
            for name in report} == report
    assert note in capsys.readouterr().err
    # a report of these settings is this command's: replaced, not kept
    assert rest_fair_main([*argv, "--lr", "0.05"]) == 0
    assert note not in capsys.readouterr().err
    assert len(list(out.glob("metrics.*.json"))) == 1


def test_resume_refuses_a_submission_that_is_not_a_folder(tmp_path, capsys):
    # every seed failed on it (FileExistsError), and the command said to rerun it
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission").write_text("mine")
    assert rest_fair_main([*_two_seeds(tmp_path, out), "--resume"]) == 2
    assert (f"rest-fair wilds: --resume: {out / 'submission'} is not a folder; the seeds write "
            "their submission files there") in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()


def test_resume_refuses_a_results_file_that_is_a_folder(tmp_path, capsys):
    # it said only "[Errno 21] Is a directory"
    out = tmp_path / "out"
    (out / "results.jsonl").mkdir(parents=True)
    assert rest_fair_main([*_two_seeds(tmp_path, out), "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"rest-fair wilds: cannot keep the results in {out}: {out / 'results.jsonl'} is not a "
        "file (the results file, one JSON line per finished run); move it away or choose "
        "another output folder.\n")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "results.jsonl"]


def test_cli_refuses_a_root_dir_that_is_a_file(tmp_path, capsys):
    # --synthetic said only "[Errno 20] Not a directory: '.../waterbirds_v1.0'"
    root = tmp_path / "data"
    root.write_text("x")
    argv = _two_seeds(tmp_path, tmp_path / "out")
    assert rest_fair_main(argv) == 2
    assert capsys.readouterr().err == (
        f"rest-fair wilds: --root-dir: {root} is a file; expected the WILDS root folder holding "
        "waterbirds_v1.0/ (with --synthetic or --download, a folder to write it into).\n")
    assert not (tmp_path / "out").exists()


def test_cli_paths_after_an_equals_sign_are_in_the_home_folder(tmp_path, monkeypatch):
    # the shell leaves "--root-dir=~/d" as it is: the synthetic data went to a folder named
    # "~" and were then looked for in the home folder
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert rest_fair_main(["wilds", "--dataset", "waterbirds", "--root-dir=~/d",
                           "--out-dir=~/out", "--synthetic", "--max-epochs", "1",
                           "--image-size", "8", "--module", "mlp", "--device", "cpu"]) == 0
    assert (tmp_path / "home" / "out" / "metrics.json").exists()
    assert (tmp_path / "home" / "d" / "waterbirds_v1.0").is_dir()
    assert not (tmp_path / "~").exists()


def test_cli_refuses_a_negative_seed_before_writing_a_synthetic_layout(tmp_path, capsys):
    # numpy's "expected non-negative integer" named no option, after a partial layout
    assert rest_fair_main(["wilds", "--dataset", "waterbirds", "--root-dir",
                           str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"),
                           "--synthetic", "--seed", "-1"]) == 2
    assert "--seed must be an integer in [0, 4294967295]; got -1" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_resume_refuses_the_seeds_of_another_dataset(tmp_path, capsys):
    # the same settings and seed on another dataset are another run: --resume into the
    # folder of a waterbirds run must not report its seed as celebA's
    out = tmp_path / "out"
    common = ["--root-dir", str(tmp_path / "data"), "--out-dir", str(out), "--synthetic",
              "--max-epochs", "1", "--image-size", "8", "--module", "mlp", "--batch-size",
              "32", "--seed", "3", "--device", "cpu"]
    assert rest_fair_main(["wilds", "--dataset", "waterbirds", *common]) == 0
    comparison = (out / "comparison.md").read_text()
    capsys.readouterr()
    assert rest_fair_main(["wilds", "--dataset", "celebA", *common, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "dataset: 'waterbirds' -> 'celebA'" in err
    assert (out / "comparison.md").read_text() == comparison
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("status", ["ok", "failed"])
def test_resume_refuses_the_seeds_of_other_data(tmp_path, capsys, status):
    # a seed trained on synthetic data was reused against another --root-dir holding real
    # data, and reported as a real-data result; a seed that diverged there (an outcome,
    # not retried) was kept as this data's outcome
    out = tmp_path / "out"
    common = ["wilds", "--dataset", "waterbirds", "--out-dir", str(out), "--max-epochs", "1",
              "--image-size", "8", "--module", "mlp", "--batch-size", "32", "--seed", "3",
              "--device", "cpu"]
    assert rest_fair_main([*common, "--root-dir", str(tmp_path / "syn"), "--synthetic"]) == 0
    if status == "failed":
        record = json.loads((out / "results.jsonl").read_text())
        record = {k: v for k, v in record.items() if k not in ("metrics", "submission_files")}
        (out / "results.jsonl").write_text(json.dumps({**record, "status": "failed"}) + "\n")
    results = (out / "results.jsonl").read_text()
    make_synthetic_layout("waterbirds", tmp_path / "real", seed=7)
    (tmp_path / "real" / "waterbirds_v1.0" / "RELEASE_v1.0.txt").write_text("WILDS\n")
    capsys.readouterr()
    assert rest_fair_main([*common, "--root-dir", str(tmp_path / "real"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert (f"holds seed 3 trained on {tmp_path / 'syn' / 'waterbirds_v1.0'} (synthetic); "
            f"this command reads {tmp_path / 'real' / 'waterbirds_v1.0'} (not synthetic)"
            in err)
    assert "--root-dir" in err and (out / "results.jsonl").read_text() == results


def test_resume_finds_the_seeds_from_another_working_directory(tmp_path, monkeypatch):
    # a relative --out-dir recorded the submission files from the working directory: a
    # resume from elsewhere did not find them and trained the finished seed again
    from rest_fair.wilds.experiment import WildsExperiment

    common = ["wilds", "--dataset", "waterbirds", "--root-dir", str(tmp_path / "data"),
              "--synthetic", "--max-epochs", "1", "--image-size", "8", "--module", "mlp",
              "--batch-size", "32", "--seed", "3", "--device", "cpu"]
    monkeypatch.chdir(tmp_path)
    assert rest_fair_main([*common, "--out-dir", "runs/out"]) == 0

    def no_training(*args, **kwargs):
        raise RuntimeError("a finished seed was trained again")

    monkeypatch.setattr(WildsExperiment, "training_data", no_training)
    monkeypatch.chdir(tmp_path / "runs")
    assert rest_fair_main([*common, "--out-dir", "out", "--resume"]) == 0
    out = tmp_path / "runs" / "out"
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    files = json.loads((out / "metrics.json").read_text())["submission_files"]
    assert len(files) == 2 and all((tmp_path / "runs" / f).exists() for f in files)


def _diverge_for(monkeypatch, seeds):
    """Make the training of ``seeds`` diverge, as a NaN loss would."""
    from rest_fair.exceptions import TrainingDivergedError
    from rest_fair.wilds.experiment import WildsExperiment

    training_data = WildsExperiment.training_data

    def diverging(self, spec):
        if spec.seed in seeds:
            raise TrainingDivergedError(f"loss is NaN at epoch 1 (seed {spec.seed})")
        return training_data(self, spec)

    monkeypatch.setattr(WildsExperiment, "training_data", diverging)


def test_cli_reports_the_seeds_that_finished_when_one_diverged(tmp_path, monkeypatch, capsys):
    # a diverged seed (an outcome, never retried) stopped the report: no metrics.json or
    # comparison.md, exit status 1, and every --resume ended the same way
    _diverge_for(monkeypatch, {1})
    out = tmp_path / "out"
    argv = _two_seeds(tmp_path, out)
    for resume in ([], ["--resume"]):
        status = rest_fair_main([*argv, *resume])
        captured = capsys.readouterr()
        error = "TrainingDivergedError: loss is NaN at epoch 1 (seed 1)"
        record = json.loads((out / "metrics.json").read_text())
        assert record["seeds"] == [0] and record["n_seeds"] == 1
        assert record["settings"]["seeds"] == [0, 1]
        assert [(r["seed"], r["error"]) for r in record["diverged"]] == [(1, error)]
        assert [r["seed"] for r in record["runs"]] == [0]
        assert record["metrics"]["test"] == record["runs"][0]["metrics"]["test"]
        comparison = (out / "comparison.md").read_text()
        assert "over seeds 0 (n = 1 of the 2 seeds asked for" in comparison
        assert f"seed 1 ({error})" in comparison and "seeds 0 |" in comparison
        assert comparison in captured.out
        assert f"seed 1 diverged: {error}" in captured.err
        assert "over 1 of the 2 seeds (0)" in captured.err
        assert status == 3  # rest_fair.wilds.cli.DIVERGED_STATUS: not 1, which --resume retries
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_cli_writes_no_report_when_every_seed_diverged(tmp_path, monkeypatch, capsys):
    _diverge_for(monkeypatch, {0, 1})
    out = tmp_path / "out"
    assert rest_fair_main(_two_seeds(tmp_path, out)) == 3
    err = capsys.readouterr().err
    assert "seed 0 diverged" in err and "seed 1 diverged" in err
    assert "no seed finished" in err and "were not written (exit status 3)" in err
    assert not (out / "metrics.json").exists() and not (out / "comparison.md").exists()


def test_cli_waits_for_a_seed_to_retry_before_reporting(tmp_path, monkeypatch, capsys):
    # a seed that failed with an error is retried by --resume: no report over fewer seeds,
    # and exit status 1 (retry), not 3 (diverged, final)
    from rest_fair.exceptions import TrainingDivergedError
    from rest_fair.wilds.experiment import WildsExperiment

    def failing(self, spec):
        if spec.seed == 0:
            raise MemoryError("out of memory")
        raise TrainingDivergedError("loss is NaN at epoch 1")

    monkeypatch.setattr(WildsExperiment, "training_data", failing)
    out = tmp_path / "out"
    assert rest_fair_main(_two_seeds(tmp_path, out)) == 1
    err = capsys.readouterr().err
    assert "seed 0 failed: MemoryError: out of memory" in err and "seed 1 diverged" in err
    assert "--resume to retry" in err
    assert not (out / "metrics.json").exists() and not (out / "comparison.md").exists()


@pytest.mark.parametrize("name", ["waterbirds", "celebA", "civilcomments"])
def test_synthetic_smoke_run_learns(tmp_path, name):
    # The command's own defaults (epochs, optimizer, lr, sparsity, reweighting), with a
    # smaller image side to keep the test fast: on the balanced test split chance is 50 %.
    out = tmp_path / "out"
    argv = ["wilds", "--dataset", name, "--root-dir", str(tmp_path / "data"),
            "--out-dir", str(out), "--synthetic", "--device", "cpu", "--seed", "1"]
    if name != "civilcomments":
        argv += ["--image-size", "16"]
    assert rest_fair_main(argv) == 0
    record = json.loads((out / "metrics.json").read_text())
    test = record["metrics"]["test"]
    average = test["adj_acc_avg" if name == "waterbirds" else "acc_avg"]
    assert average >= 0.85, f"{name} smoke run did not learn: {test}"
    assert test["acc_wg"] >= 0.6, f"{name} smoke run fails a group: {test}"
    text = name == "civilcomments"
    assert record["settings"]["optimizer"] == ("adam" if text else "sgd")
    assert record["settings"]["lr"] == (1e-3 if text else 0.01)
    settings = record["settings"]
    assert f"{settings['optimizer']} lr {settings['lr']}" in record["protocol"]


def test_cli_missing_data_exits_with_message(tmp_path, capsys):
    status = rest_fair_main(["wilds", "--dataset", "celeba", "--root-dir", str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert "list_attr_celeba.csv" in err and str(tmp_path) in err


def test_resume_refuses_a_metrics_json_of_another_origin(tmp_path, capsys):
    # --resume trained the seed and wrote its report over a metrics.json it had not written
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    argv = ["wilds", "--dataset", "waterbirds", "--root-dir", str(tmp_path / "data"),
            "--synthetic", "--max-epochs", "1", "--image-size", "8", "--module", "mlp",
            "--batch-size", "32", "--seed", "3", "--device", "cpu", "--out-dir", str(out)]
    assert rest_fair_main([*argv, "--resume"]) == 2
    assert f"{out / 'metrics.json'} was not written by rest-fair wilds" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists() and not (out / "submission").exists()
    assert (out / "metrics.json").read_text() == '{"mine": 1}'
    # one of ours, from a first command, is resumed
    (out / "metrics.json").unlink()
    assert rest_fair_main(argv) == 0
    assert rest_fair_main([*argv, "--resume"]) == 0
