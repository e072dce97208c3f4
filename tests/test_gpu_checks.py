"""The GPU session's script, run here in its CPU smoke mode so no step fails on a typo."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_checks.py"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

def _script():
    spec = importlib.util.spec_from_file_location("gpu_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_past_its_time_limit_is_stopped():
    gpu_checks = _script()
    start = time.perf_counter()
    with pytest.raises(gpu_checks.StepTimeout, match="'slow' ran past its time limit of 1 s"):
        with gpu_checks._time_limit("slow", 1, grace=0):
            time.sleep(30)
    assert time.perf_counter() - start < 10
    with gpu_checks._time_limit("quick", 1, grace=0):  # a step within its limit: no alarm
        pass
    time.sleep(1.5)


@pytest.mark.parametrize("argv", [["--device", "bogus"], ["--limit-scale", "nan"],
                                  ["--limit-scale", "0"], ["--epochs", "0"]])
def test_bad_arguments_are_refused_by_the_parser(tmp_path, argv, capsys):
    with pytest.raises(SystemExit):
        _script().parse_args([str(tmp_path), "--device", "cpu", *argv])
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_every_step_runs_in_smoke_mode(tmp_path):
    pytest.importorskip("torchvision", reason="the throughput step builds a torchvision ResNet")
    steps = ["tests", "precision", "throughput", "sparse_compute", "ddp"]
    if (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        steps.append("colored_fashion_mnist")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--device", "cpu", "--smoke",
         "--steps", *steps],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    results = json.loads((tmp_path / "results.json").read_text())
    failed = {name: step.get("error") for name, step in results["steps"].items()
              if step["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:])
    assert list(results["steps"]) == steps
    steps_run = results["steps"]
    assert steps_run["precision"]["32"]["inactive_nonzero"] == 0
    assert steps_run["precision"]["32"]["layers_checked"] > 0
    for precision in ("32", "bf16"):
        row = steps_run["throughput"]["images_per_s"][precision]
        assert all(row[k] > 0 for k in ("plain_loop", "rest_fair_dense", "rest_fair_rest_0.9"))
    for sparsity in ("0.9", "0.99"):
        assert steps_run["sparse_compute"][sparsity]["auto_chose"] in ("csr", "masked")
    if "colored_fashion_mnist" in steps_run:
        runs = steps_run["colored_fashion_mnist"]["runs"]
        assert {r["method"] for r in runs} == {"erm", "dense_reweighting", "rest_0.9",
                                               "rest_0.99"}
