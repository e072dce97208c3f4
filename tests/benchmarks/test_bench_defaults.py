"""benchmarks/bench_defaults.py runs end to end on tiny idx files and pairs runs by seed."""

from __future__ import annotations

import pytest

from tests._support.idx import write_folder
from tests._support.scripts import load_benchmark

pytest.importorskip("torch")


def test_defaults_ablation_smoke(tmp_path, capsys):
    bench = load_benchmark("bench_defaults")
    root = write_folder(tmp_path / "idx", 200, 100)
    argv = ["--out", str(tmp_path / "runs"), "--data-root", str(root), "--split-sizes",
            "100", "40", "50", "--epochs", "1", "--seeds", "41", "42", "--sparsities", "0.9",
            "--variants", "defaults", "update_end=1.0"]
    table = bench.main(argv)
    rows = [line for line in table.splitlines() if line.startswith("| 0.9 |")]
    assert [row.split(" | ")[1] for row in rows] == ["defaults", "update_end=1.0"]
    assert all(row.split(" | ")[2] == "2" for row in rows)
    assert rows[0].split(" | ")[4] == "-" and "±" in rows[1].split(" | ")[4]
    # a second call resumes: nothing is run again, the same table comes back
    assert bench.main([*argv, "--report-only"]) == table
