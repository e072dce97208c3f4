"""The GPU session's script, run here in its CPU smoke mode so no step fails on a typo."""

from __future__ import annotations

import importlib.util
import json
import os
import re
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


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_child_past_its_limit_is_stopped_with_what_it_started(tmp_path):
    # a step's command that starts a process of its own (as bench_ddp.py starts torchrun):
    # stopping only the command would leave the grandchild running into the next step
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    gpu_checks = _script()
    start = time.perf_counter()
    with pytest.raises(gpu_checks.StepTimeout, match="ran past 3 s and was stopped"):
        gpu_checks._run_child([sys.executable, "-c", code], 3)
    assert time.perf_counter() - start < 20
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_the_steps_stay_within_the_budget(tmp_path, monkeypatch):
    gpu_checks = _script()
    ran = []

    def step(args, out):
        ran.append(args.limit("slow"))
        time.sleep(2.5)
        return {}

    monkeypatch.setattr(gpu_checks, "STEPS", {"slow": (step, 60), "late": (step, 60)})
    args = gpu_checks.parse_args([str(tmp_path), "--device", "cpu", "--budget", "7.9"])
    assert gpu_checks.run(args) == 1
    results = json.loads((tmp_path / "results.json").read_text())["steps"]
    assert ran and ran[0] <= 7.9 - gpu_checks.GRACE  # the budget, not the step's 60 s
    assert results["slow"]["status"] == "ok"
    assert results["late"]["status"] == "skipped"
    assert "no time left in the budget of 8 s" in results["late"]["error"]
    assert "## late: skipped" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_every_step_runs_in_smoke_mode(tmp_path):
    # the GPU session's command, bash benchmarks/gpu_checks.sh OUT: here on a Python where
    # setuptools cannot be imported, as it may be missing on the GPU machine, so nothing
    # may need a build backend
    pytest.importorskip("torchvision", reason="the throughput step builds a torchvision ResNet")
    steps = ["tests", "precision", "throughput", "sparse_compute", "ddp"]
    if (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        steps.append("colored_fashion_mnist")
    no_setuptools = tmp_path / "no_setuptools" / "setuptools"
    no_setuptools.mkdir(parents=True)
    (no_setuptools / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'setuptools'\", name='setuptools')\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(no_setuptools.parent),
           "REST_FAIR_GPU_SITE": str(tmp_path / "site"), "PIP_NO_INDEX": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_checks.sh"), str(out), "--device", "cpu",
         "--smoke", "--steps", *steps],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    assert (out / "results.json").exists(), (proc.stdout[-3000:], proc.stderr[-3000:])
    results = json.loads((out / "results.json").read_text())
    failed = {name: step.get("error") for name, step in results["steps"].items()
              if step["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:])
    assert list(results["steps"]) == steps
    # what the device tool brings back: at most 8 plain files, named in [A-Za-z0-9._-]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert all((out / f).is_file() for f in files), files
    summary = (out / "summary.md").read_text()
    assert all(f"## {name}: ok" in summary for name in steps), summary
    steps_run = results["steps"]
    assert steps_run["precision"]["32"]["inactive_nonzero"] == 0
    assert steps_run["precision"]["32"]["layers_checked"] > 0
    sequence = steps_run["precision"]["lstm_attention"]
    assert sequence["inactive_nonzero"] == 0 and sequence["all_finite"]
    assert "attention.in_proj_weight" in sequence["masked_sequence_weights"]
    assert "lstm.weight_hh_l0" in sequence["masked_sequence_weights"]
    for precision in ("32", "bf16"):
        row = steps_run["throughput"]["images_per_s"][precision]
        assert all(row[k] > 0 for k in ("plain_loop", "rest_fair_dense", "rest_fair_rest_0.9"))
    for sparsity in ("0.9", "0.99"):
        assert steps_run["sparse_compute"][sparsity]["auto_chose"] in ("csr", "masked")
    if "colored_fashion_mnist" in steps_run:
        runs = steps_run["colored_fashion_mnist"]["runs"]
        assert {r["method"] for r in runs} == {"erm", "dense_reweighting", "rest_0.9",
                                               "rest_0.99"}


def test_a_fashion_mnist_step_cut_off_keeps_the_fits_that_finished(tmp_path, monkeypatch):
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    gpu_checks = _script()
    import rest_fair

    real_fit, calls = rest_fair.RESTClassifier.fit, []

    def fit(self, *args, **kwargs):  # the second fit runs into the step's alarm
        calls.append(self.sparsity)
        if len(calls) == 2:
            raise gpu_checks.StepTimeout("step 'colored_fashion_mnist' ran past its limit")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(rest_fair.RESTClassifier, "fit", fit)
    args = gpu_checks.parse_args([str(tmp_path), "--device", "cpu", "--smoke",
                                  "--steps", "colored_fashion_mnist"])
    assert gpu_checks.run(args) == 0
    step = json.loads((tmp_path / "results.json").read_text())["steps"]["colored_fashion_mnist"]
    assert [r["method"] for r in step["runs"]] == ["erm"]
    assert step["stopped"] == "time limit: the dense_reweighting fit of seed 41 was cut off"
