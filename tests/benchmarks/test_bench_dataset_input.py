"""benchmarks/bench_dataset_input.py and bench_sparse_input.py run end to end on a few rows."""

from __future__ import annotations

import re

import pytest

from tests._support.scripts import load_benchmark

pytest.importorskip("torch")


def test_dataset_input_benchmark_prints_a_ratio_per_input(capsys):
    load_benchmark("bench_dataset_input").main(["--rows", "600", "--epochs", "1",
                                                "--repeats", "1"])
    printed = capsys.readouterr().out
    for name in ("array", "TensorDataset", "subclass"):
        assert re.search(rf"\| {name} \| \d+\.\d\dx \|", printed), printed


def test_sparse_input_benchmark_prints_a_ratio_per_input(capsys):
    load_benchmark("bench_sparse_input").main(["--rows", "300", "--features", "2000",
                                               "--nnz", "10", "--repeats", "1"])
    printed = capsys.readouterr().out
    for name in ("array", "scipy.sparse CSR"):
        assert re.search(rf"\| {name} \| \d+\.\d\dx \|", printed), printed
