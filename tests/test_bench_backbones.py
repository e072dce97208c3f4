"""benchmarks/bench_backbones.py runs end to end on a CPU at a tiny size."""

from __future__ import annotations

import json

import pytest

from tests._support.scripts import load_benchmark

pytest.importorskip("torchvision", reason="the backbone benchmark needs torchvision")


def test_backbone_benchmark_runs_tiny_on_cpu(tmp_path, capsys):
    bench = load_benchmark("bench_backbones")
    out = tmp_path / "bench.json"
    rows = bench.main(["--device", "cpu", "--model", "resnet18", "--image-size", "32",
                       "--batch-size", "2", "--steps", "1", "--warmup", "1", "--repeats", "1",
                       "--dtypes", "fp32", "bf16", "--out", str(out)])
    assert [(r["dtype"], r["mode"]) for r in rows] == [
        ("fp32", "dense"), ("fp32", "masked"), ("bf16", "dense"), ("bf16", "masked")]
    assert all(r["images_per_s"] > 0 for r in rows)
    masked = [r for r in rows if r["mode"] == "masked"]
    assert all(0.05 < r["density"] < 0.15 and r["topology_update_s"] >= 0 for r in masked)
    record = json.loads(out.read_text())
    assert record["environment"]["device"] == "cpu" and len(record["rows"]) == 4
    printed = capsys.readouterr().out
    assert "| bf16 | masked |" in printed and "resnet18 32x32" in printed
