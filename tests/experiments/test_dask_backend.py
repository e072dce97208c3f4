"""Benchmark sweeps on a dask.distributed cluster: same numbers, resume, driver-only writes.

The cluster is a LocalCluster of two single-threaded worker processes, started once for
the module; each worker imports torch, so keep the runs tiny.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections import Counter

import pytest

from rest_fair import cli
from rest_fair.benchmarks import RandomSearch, preset, run_sweep, split_threads
from rest_fair.experiments import runner as runner_mod

# Fields that legitimately differ between two executions of the same run (the model file
# holds the fit's history, epoch durations included, so its compressed size varies by bytes).
VOLATILE = {"fit_seconds", "model_bytes", "finished_at", "worker"}


def tiny_config(**overrides):
    overrides.setdefault("max_epochs", 2)
    return preset("tiny", **overrides)


def numbers(records):
    return {r["run_id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in records}


def result_lines(out_dir):
    text = (out_dir / runner_mod.RESULTS_FILE).read_text()
    return [json.loads(x) for x in text.splitlines() if x.endswith("}")]


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("torch")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as local_cluster,
        distributed.Client(local_cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture
def counted_appends(monkeypatch):
    """Every write of the results file made by this (the driver) process."""
    calls = []
    real = runner_mod.append_record

    def counting(path, record):
        calls.append(record["run_id"])
        real(path, record)

    monkeypatch.setattr(runner_mod, "append_record", counting)
    return calls


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ on the cluster
def test_dask_sweep_has_the_numbers_of_a_local_run(cluster, tmp_path, counted_appends):
    # erm, rest x sparsity 0, 0.9 = 4 runs; each process would time the layers for
    # sparse_compute="auto" itself and could choose other kernels: pin them
    config = tiny_config(extra_params={"sparse_compute": "masked"})
    # two local processes give each run the torch threads a 2-worker host gives
    local = run_sweep(config, tmp_path / "local", n_jobs=2, progress=False)
    del counted_appends[:]
    address = cluster.scheduler.address
    remote = run_sweep(config, tmp_path / "dask", scheduler=address, progress=False)
    assert all(r["status"] == "ok" for r in local + remote), [r.get("error") for r in remote]
    assert len(remote) == 4
    assert numbers(remote) == numbers(local)
    workers = set(cluster.nthreads())
    assert {r["worker"] for r in remote} <= workers
    assert {r["n_threads"] for r in remote} == {split_threads(2)[1]}
    # the driver wrote every line of the results file, one per run
    lines = result_lines(tmp_path / "dask")
    assert sorted(counted_appends) == sorted(r["run_id"] for r in lines)
    assert Counter(r["run_id"] for r in lines) == Counter(s.run_id for s in config.runs())


def test_runs_in_threads_of_one_worker_have_the_numbers_of_a_serial_run(tmp_path):
    """A worker with several threads (dask's default) or an in-process cluster runs fits
    side by side in one process, where they share torch's global random state."""
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("torch")
    config = tiny_config(seeds=(0, 1), extra_params={"sparse_compute": "masked"})  # 8 runs
    serial = run_sweep(config, tmp_path / "serial", progress=False)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                 dashboard_address=":0") as local_cluster,
        distributed.Client(local_cluster, set_as_default=False) as client,
    ):
        threaded = run_sweep(config, tmp_path / "dask", scheduler=client, progress=False)
    assert all(r["status"] == "ok" for r in threaded), [r.get("error") for r in threaded]
    # one process on this host: each run gets the cores a serial run gets
    assert numbers(threaded) == numbers(serial)


def test_interrupted_dask_sweep_resumes_only_missing_runs(cluster, tmp_path, counted_appends):
    config = tiny_config()
    out = tmp_path / "sweep"

    class Killed(Exception):
        pass

    def kill_after_first(record, k):
        raise Killed

    # out of time before the first run: nothing is submitted
    assert run_sweep(config, out, scheduler=cluster, progress=False, time_limit=0) == []
    assert counted_appends == []
    with pytest.raises(Killed):
        run_sweep(config, out, scheduler=cluster, progress=False, on_result=kill_after_first)
    assert len(result_lines(out)) == 1 == len(counted_appends)
    # a kill in the middle of writing the next line
    with (out / runner_mod.RESULTS_FILE).open("a") as handle:
        handle.write('{"run_id": "half-writ')
    new: list[str] = []
    with pytest.warns(UserWarning, match="unreadable"):
        records = run_sweep(
            config, out, scheduler=cluster, progress=False,
            on_result=lambda record, k: new.append(record["run_id"]),
        )
    first = counted_appends[0]
    assert sorted(new) == sorted(s.run_id for s in config.runs() if s.run_id != first)
    assert sorted(r["run_id"] for r in records) == sorted(s.run_id for s in config.runs())
    assert all(r["status"] == "ok" for r in records)
    lines = result_lines(out)
    assert Counter(r["run_id"] for r in lines) == Counter(s.run_id for s in config.runs())
    assert len(lines) == len(counted_appends) == 4


def test_joblib_dask_config_and_default_client_use_the_cluster(cluster, tmp_path):
    joblib = pytest.importorskip("joblib")
    config = tiny_config(methods=("erm",))  # 2 runs
    out = tmp_path / "sweep"
    workers = set(cluster.nthreads())
    with cluster.as_current(), joblib.parallel_config(backend="dask"):
        first = run_sweep(config, out, progress=False, max_runs=1)
    assert len(first) == 1 and first[0]["worker"] in workers
    with cluster.as_current(), pytest.warns(UserWarning, match="n_jobs=2 is ignored"):
        both = run_sweep(config, out, backend="dask", n_jobs=2, progress=False)
    assert len(both) == 2 and all(r["worker"] in workers for r in both)


def test_cli_runs_a_sweep_on_the_scheduler(cluster, tmp_path, capsys):
    out = tmp_path / "bench"
    address = cluster.scheduler.address
    argv = ["bench", "--preset", "tiny", "--epochs", "2", "--methods", "erm", "--backend",
            "dask", "--scheduler", address, "--out-dir", str(out), "--no-progress", "--no-plots"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert f"dask scheduler {address} (2 workers, 2 threads)" in printed.err
    assert "| ERM (dense) |" in printed.out
    assert len(result_lines(out)) == 2
    info = json.loads((out / "config.json").read_text())
    assert info["backend"] == "dask" and info["dask_workers"] == 2
    assert info["scheduler"] == address


def test_study_runs_on_the_scheduler_with_the_numbers_of_a_local_run(cluster, tmp_path,
                                                                      capsys):
    search = RandomSearch(tiny_config(max_epochs=1), budget=2, methods=("erm", "rest_0.9"))
    local = run_sweep(search, tmp_path / "local", n_jobs=2, progress=False)
    address = cluster.scheduler.address
    out = tmp_path / "dask"
    argv = ["bench", "--preset", "tiny", "--epochs", "1", "--search", "random", "--budget", "2",
            "--methods", "erm,rest_0.9", "--backend", "dask", "--scheduler", address,
            "--out-dir", str(out), "--no-progress", "--no-plots"]
    assert cli.main(argv) == 0
    assert "random search: 2 methods x 1 ratios x 2 configurations" in capsys.readouterr().err
    remote = result_lines(out)
    assert len(remote) == 4 and all(r["status"] == "ok" for r in remote)
    assert numbers(remote) == numbers(local)


# ------------------------------------------------------------- setup errors (no torch)
def test_unreachable_scheduler_fails_fast(tmp_path, capsys):
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"{address}.*within 1 s"):
        run_sweep(tiny_config(), tmp_path, scheduler=address, scheduler_timeout=1)
    # the 1 s timeout plus well under a second of work here, so a machine many times slower
    # passes; dask's own connect timeout (30 s) would not
    assert time.perf_counter() - start < 10
    with pytest.raises(ConnectionError, match="'not an address'"):
        run_sweep(tiny_config(), tmp_path, scheduler="not an address", scheduler_timeout=1)
    argv = ["bench", "--preset", "tiny", "--scheduler", address, "--scheduler-timeout", "1",
            "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    assert f"Could not connect to the Dask scheduler at '{address}'" in capsys.readouterr().err
    assert not (tmp_path / runner_mod.RESULTS_FILE).exists()


def test_scheduler_without_workers_fails_fast(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=0, processes=False, dashboard_address=":0"
    ) as empty:
        start = time.perf_counter()
        with pytest.raises(ConnectionError, match="no workers after 1 s"):
            run_sweep(tiny_config(), tmp_path, scheduler=empty.scheduler_address,
                      scheduler_timeout=1)
        assert time.perf_counter() - start < 10  # generous, as above


def test_dask_backend_without_a_scheduler_is_explained(tmp_path, monkeypatch):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    with dask.config.set({"scheduler-address": None}):
        with pytest.raises(ValueError, match="needs a scheduler"):
            run_sweep(tiny_config(), tmp_path, backend="dask")


def test_missing_dask_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    with pytest.raises(ImportError, match=r"pip install 'rest-fair\[dask\]'"):
        run_sweep(tiny_config(), tmp_path, scheduler="tcp://127.0.0.1:8786")


def test_backend_arguments_are_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="backend must be one of"):
        run_sweep(tiny_config(), tmp_path, backend="spark")
    with pytest.raises(ValueError, match="only used by backend='dask'"):
        run_sweep(tiny_config(), tmp_path, backend="local", scheduler="tcp://h:8786")
    argv = ["bench", "--backend", "local", "--scheduler", "tcp://h:8786", "--out-dir",
            str(tmp_path)]
    assert cli.main(argv) == 2
    assert "only used by backend='dask'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "--backend", "spark"])
    # a timeout the local backend does not read was accepted without a word
    with pytest.raises(ValueError, match="scheduler_timeout is only used by backend='dask'"):
        run_sweep(tiny_config(), tmp_path, scheduler_timeout=5)
    assert cli.main(["bench", "--preset", "tiny", "--scheduler-timeout", "5", "--out-dir",
                     str(tmp_path)]) == 2
    assert ("rest-fair bench: error: --scheduler-timeout is only used by backend='dask'; got "
            "scheduler_timeout=5.0 with backend='local'.") in capsys.readouterr().err


def test_thread_plan_splits_each_host_between_its_worker_processes():
    pytest.importorskip("distributed")
    from rest_fair.experiments.dask_backend import thread_plan, worker_processes

    class FakeClient:
        def run(self, function, on_error):
            return {  # (pid, cores); the two workers of 10.0.0.3 share a process
                "tcp://10.0.0.1:1": (11, 8), "tcp://10.0.0.1:2": (12, 8),
                "tcp://10.0.0.2:1": (21, 8),
                "tcp://10.0.0.3:1": (31, 8), "tcp://10.0.0.3:2": (31, 8),
            }

    processes = worker_processes(FakeClient())
    assert processes["tcp://10.0.0.3:2"] == ("10.0.0.3", 31, 8)
    # a worker's threads take turns (fits share its process's random state): a host runs
    # one run per worker process at a time, whatever the threads of each
    assert thread_plan(processes) == {
        "tcp://10.0.0.1:1": 4, "tcp://10.0.0.1:2": 4, "tcp://10.0.0.2:1": 8,
        "tcp://10.0.0.3:1": 8, "tcp://10.0.0.3:2": 8,
    }
