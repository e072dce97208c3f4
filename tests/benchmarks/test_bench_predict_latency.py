"""benchmarks/bench_predict_latency.py runs end to end on a few rows."""

from __future__ import annotations

import re

import pytest

from tests._support.scripts import load_benchmark

pytest.importorskip("torch")


def test_predict_latency_benchmark_prints_a_ratio_per_batch_and_the_stages(capsys):
    load_benchmark("bench_predict_latency").main([
        "--rows", "200", "--epochs", "1", "--batch-sizes", "1", "8", "--repeats", "3",
        "--warmup", "1", "--profile", "--profile-calls", "3"])
    printed = capsys.readouterr().out
    for model in ("dense module", "use_sparse_inference()"):
        for rows in (1, 8):
            assert re.search(rf"\| {re.escape(model)} \| {rows} \| \d+ \| \d+ \| \d+\.\dx \|",
                             printed), printed
    assert re.search(r"\| input checks \(`check_x`\) \| \d+% \| \d+% \|", printed), printed
