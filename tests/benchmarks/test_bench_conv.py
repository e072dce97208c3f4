"""benchmarks/bench_conv.py runs end to end in its smoke mode, with and without the peer."""

from __future__ import annotations

import pytest

from tests._support.scripts import load_benchmark

pytest.importorskip("torch")


@pytest.mark.parametrize("peer", [True, False], ids=["with-sparseprop", "without-sparseprop"])
def test_conv_benchmark_smoke(peer, monkeypatch, capsys):
    bench = load_benchmark("bench_conv")
    if peer and bench.SparseConv2d is None:
        pytest.skip("sparseprop is not installed")
    if not peer:
        monkeypatch.setattr(bench, "SparseConv2d", None)
        monkeypatch.setattr(bench, "_PEER_ERROR", "ImportError: hidden by the test")
    results = bench.main(["--smoke", "--threads", "1", "--sparsities", "0.9",
                          "--layer-densities", "erk"])
    printed = capsys.readouterr().out
    assert len(results["layers"]) == 3 and len(results["steps"]) == 1
    assert all(r["ours_vs_masked"] > 0 for r in results["layers"] + results["steps"])
    assert "| 0.9 | erk | 8 | features.3 | 16x8x4x4 |" in printed
    assert ("sparseprop vs masked" in printed) is peer
    assert ("sparseprop not importable (ImportError: hidden by the test)" in printed) is not peer
    assert "smoke run" in printed and "| - (" in printed
