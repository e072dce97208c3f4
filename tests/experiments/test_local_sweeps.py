"""Local sweeps (this process or joblib processes): runs that end their process, runs
listed twice."""

from __future__ import annotations

from collections import Counter

import pytest

from rest_fair.benchmarks import PRESETS
from rest_fair.experiments import runner
from tests._support.sweeps import ProcessEndingBench, RepeatingBench


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
