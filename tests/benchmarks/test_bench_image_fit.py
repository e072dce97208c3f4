"""benchmarks/bench_image_fit.py runs end to end on a small idx folder, plain loop included."""

from __future__ import annotations

import re

import pytest

from tests._support.idx import write_folder
from tests._support.scripts import load_benchmark

pytest.importorskip("torch")


def test_image_fit_benchmark_with_the_plain_loop(tmp_path, capsys):
    bench = load_benchmark("bench_image_fit")
    root = write_folder(tmp_path / "fashion", n_train=6400, n_test=10, gz=False)
    bench.main(["--root", str(root), "--n-images", "6400", "--hidden", "32", "32",
                "--sparsity", "0.9", "--epochs", "1", "--repeats", "1", "--threads", "1",
                "--plain-loop"])
    printed = capsys.readouterr().out
    assert re.search(r"\| 0\.9 \| \d+\.\d{3} \| ", printed)
    loop = re.search(r"Minimal torch loop \(400 images, 1 epochs.*takes (\d+\.\d{3})x", printed)
    assert loop and float(loop.group(1)) > 0
