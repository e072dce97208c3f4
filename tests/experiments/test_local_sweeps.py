"""Local sweeps (this process or joblib processes): runs that end their process, runs
listed twice, a Ctrl-C in a terminal."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import rest_fair
from rest_fair.benchmarks import PRESETS
from rest_fair.experiments import runner
from rest_fair.experiments.run import available_cores
from tests._support.sweeps import ProcessEndingBench, RepeatingBench

#: Holds the ``sitecustomize`` that stops local worker processes while they start.
STARTING_WORKER = Path(__file__).parents[1] / "_support" / "starting_worker"


def tiny(cls, **fields):
    return cls(**{**PRESETS["tiny"], "max_epochs": 1, "methods": ("erm",),
                  "sparsities": (0.0,), **fields})


def test_a_run_that_ends_its_worker_process_is_recorded_and_the_others_kept(tmp_path):
    pytest.importorskip("torch")
    config = tiny(ProcessEndingBench, seeds=(0, 1, 2), ending_seed=1)  # batches (0, 1), (2)
    records = runner.run_sweep(config, tmp_path, n_jobs=2, progress=False)
    by_seed = {r["seed"]: r for r in records}
    assert sorted(by_seed) == [0, 1, 2]
    assert by_seed[0]["status"] == by_seed[2]["status"] == "ok"
    ended = by_seed[1]
    assert ended["status"] == "error"  # retried by the next sweep
    assert "TerminatedWorkerError" in ended["error"] and "EXIT(3)" in ended["error"]
    assert ended["method"] == "erm" and ended["sparsity"] == 0.0  # the configuration
    lines = runner.read_results(tmp_path / runner.RESULTS_FILE)
    assert Counter(r["seed"] for r in lines) == Counter({0: 1, 1: 1, 2: 1})


def test_a_run_listed_twice_runs_once(tmp_path, monkeypatch):
    config = tiny(RepeatingBench, seeds=(0, 1))
    assert len(config.runs()) == 4
    calls = []

    def fake_run_one(spec, experiment, **kwargs):
        calls.append(spec.run_id)
        return {"run_id": spec.run_id, "seed": spec.seed, "status": "ok"}

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    records = runner.run_sweep(config, tmp_path, progress=False)
    ids = [spec.run_id for spec in config.runs()[::2]]
    assert calls == ids
    assert [r["run_id"] for r in records] == ids
    assert runner.pending(config.runs(), tmp_path / "elsewhere.jsonl") == config.runs()[::2]


def ignores_ctrl_c(pid):
    """Whether process ``pid`` ignores SIGINT now (False where ``/proc`` does not say)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith("SigIgn:"))
    except (OSError, StopIteration):
        return False
    return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_in_a_terminal_shows_one_line_and_leaves_no_worker_behind(tmp_path):
    # a Ctrl-C reaches the whole process group: worker processes still starting printed
    # their own KeyboardInterrupt tracebacks around the command's one line
    pytest.importorskip("torch")
    if available_cores() < 2:
        pytest.skip("two worker processes need two cores")
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    paths = [STARTING_WORKER, Path(rest_fair.__file__).parents[1], os.environ.get("PYTHONPATH")]
    env = {**os.environ, "REST_FAIR_TEST_MARKS": str(marks),
           "PYTHONPATH": os.pathsep.join(str(p) for p in paths if p)}
    command = subprocess.Popen(
        [sys.executable, "-m", "rest_fair.cli", "bench", "--preset", "tiny", "--n-jobs", "2",
         "--out-dir", str(out), "--no-plots", "--no-progress"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        # the workers start while the command ignores SIGINT (they inherit that); a Ctrl-C
        # then is lost, so it comes once the command takes SIGINT again, with the workers
        # still starting (held there by STARTING_WORKER)
        deadline = time.monotonic() + 60
        while ((not any(marks.iterdir()) or ignores_ctrl_c(command.pid))
               and command.poll() is None and time.monotonic() < deadline):
            time.sleep(0.01)
        os.killpg(command.pid, signal.SIGINT)
        _, err = command.communicate(timeout=60)  # ends when no process holds its stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, signal.SIGKILL)
    assert command.returncode == 130
    assert err.splitlines()[1:] == [
        f"rest-fair bench: interrupted; the finished runs are kept in "
        f"{out / runner.RESULTS_FILE}; to continue, rerun the same command."]
