"""benchmarks/bench_backbones.py runs end to end on a CPU at a tiny size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torchvision", reason="the backbone benchmark needs torchvision")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_backbones.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_backbones", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backbone_benchmark_runs_tiny_on_cpu(tmp_path, capsys):
    bench = _load()
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
