"""``rest-fair bench --dataset fashion_mnist`` and the ``scale`` preset, on tiny idx files."""

from __future__ import annotations

import json
import re

import pytest

from rest_fair import cli
from rest_fair.benchmarks import preset, run_sweep
from rest_fair.exceptions import DatasetNotFoundError
from tests._support.idx import write_folder


def test_scale_preset():
    config = preset("scale")
    assert config.dataset == "fashion_mnist" and config.split_sizes is None
    assert config.module == "mlp" and config.module_params == {"hidden_layer_sizes": [300] * 3}
    assert config.ratios == (0.01, 0.05) and config.seeds == (41, 42, 43)
    assert len(config.runs()) == 2 * 2 * 4 * 3


def test_bench_on_fashion_mnist_files(tmp_path, capsys):
    pytest.importorskip("torch")
    root = write_folder(tmp_path / "idx", 200, 100)
    out = tmp_path / "bench"
    argv = ["bench", "--preset", "tiny", "--dataset", "fashion_mnist", "--data-root", str(root),
            "--split-sizes", "100,40,50", "--epochs", "1", "--methods", "rest",
            "--sparsities", "0.9", "--no-plots", "--no-progress", "--out-dir", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| REST | 0.9 | train |" in printed
    assert "Colored Fashion-MNIST (100 / 40 / 50 train / valid / test images" in printed
    assert str(root) in printed
    record = json.loads((out / "results.jsonl").read_text())
    assert record["status"] == "ok" and record["n_train"] == 100
    assert record["n_conflicting_train"] == 5


@pytest.mark.parametrize("sizes", [(100.5, 40, 50), (0.7, 0.1, 0.2)])
def test_split_sizes_that_are_not_counts_are_refused_as_given(tmp_path, sizes):
    # 100.5 was cut to 100 images, and fractions read as (0, 0, 0) in the error
    root = write_folder(tmp_path / "idx", 200, 100)
    config = preset("tiny", dataset="fashion_mnist", data_root=str(root), split_sizes=sizes)
    with pytest.raises(ValueError, match=rf"got {re.escape(repr(sizes))}"):
        config.check_requirements()


def test_missing_fashion_mnist_files_fail_before_any_run(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv = ["bench", "--preset", "tiny", "--dataset", "fashion_mnist", "--data-root",
            str(empty), "--out-dir", str(out), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and str(empty) in err
    assert not out.exists()
    config = preset("tiny", dataset="fashion_mnist", data_root=str(empty))
    with pytest.raises(DatasetNotFoundError, match="dataset-fashion-mnist"):
        run_sweep(config, tmp_path / "python", progress=False)
    assert not (tmp_path / "python").exists()
