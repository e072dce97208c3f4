"""Launch a short two-rank fit under torchrun many times in a row; count the aborted launches.

A distributed fit must not only train right, it must let every process exit cleanly:
``torchrun`` kills the other ranks and fails the job when one rank dies at exit. Each
launch here is ``torchrun --standalone --nproc_per_node=2`` (CPU, gloo, one thread per
rank) running, on every rank,

1. a short fit with a progress bar (shown on rank 0),
2. a fit stopped at its second epoch by an exception (the estimator keeps its training
   run in a reference cycle),
3. a fit that rank 1 calls with different data, refused on every rank right after a
   collective (so the process exits at once after it),

and then records which threads are still alive once rest_fair's exit handler has torn
the process group down (read from ``/proc/self/task``; Linux only). ``--scenario tests``
launches instead what tests/training/test_distributed.py launches: every scenario of
``tests/_support/ddp_worker.py`` (a dozen fits; about 10 s per launch here).

Printed: launches, aborted launches (a rank killed by a signal, e.g. SIGABRT with
"terminate called without an active exception"), other failures, and launches in which a
gloo thread outlived the teardown. The exit status is 1 if any launch failed.

Run it alone on the machine (about 8 s per launch of the short scenario on 2 CPU cores)::

    flock /tmp/torch.lock python benchmarks/ddp_launch_stress.py --runs 20

``--root`` names the rest_fair checkout to launch (default: the one holding this file).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
GLOO_THREADS = ("gloo", "pt_gloo")  # gloo's transport loop and the process group's workers


# ------------------------------------------------------------------------------ worker
def _threads() -> list[str] | None:
    task = Path("/proc/self/task")
    if not task.is_dir():
        return None
    names = []
    for entry in sorted(task.iterdir()):
        try:
            names.append((entry / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return names


def _record_threads(out: Path, rank: int) -> None:
    (out / f"threads-rank{rank}.json").write_text(json.dumps(_threads()))


def worker(out: Path) -> None:
    import numpy as np
    import torch

    from rest_fair import RESTClassifier
    from rest_fair.callbacks import Callback
    from rest_fair.exceptions import DistributedError

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    # registered before any fit, so it runs after rest_fair's own exit handler
    atexit.register(_record_threads, out, rank)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    groups = (X[:, 1] > 0).astype(int)
    params = dict(sparsity=0.8, update_interval=2, max_epochs=3, batch_size=32,
                  random_state=0, device="cpu", module_params={"hidden_layer_sizes": (16,)})

    RESTClassifier(**params, verbose=1).fit(X, y, groups=groups)

    class Stop(Callback):
        def on_epoch_begin(self, net, *, epoch, **kwargs):
            if epoch == 2:
                raise KeyboardInterrupt

    try:
        RESTClassifier(**params, callbacks=[Stop()]).fit(X, y, groups=groups)
    except KeyboardInterrupt:
        pass

    X_other = X.copy()
    if rank == 1:
        X_other[0, 0] += 1.0
    try:
        RESTClassifier(**params).fit(X_other, y, groups=groups)
    except DistributedError:
        pass
    else:
        raise AssertionError("a fit with different data on rank 1 was not refused")


# ------------------------------------------------------------------------------ driver
def launch(root: Path, out: Path, scenario: str, timeout: float) -> dict:
    """One torchrun launch; what became of it."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    path = env.get("PYTHONPATH")
    env.update(PYTHONPATH=str(root) + (os.pathsep + path if path else ""),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    logs = out / "logs"
    script = [str(HERE), "--worker", str(out)] if scenario == "short" else [
        str(root / "tests" / "_support" / "ddp_worker.py"), str(out), "all"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "--redirects=3", f"--log-dir={logs}", *script]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    text = proc.stdout + proc.stderr + "".join(
        p.read_text(errors="replace") for p in sorted(logs.glob("**/std*.log")))
    gloo_alive = []
    for rank in range(2):
        record = out / f"threads-rank{rank}.json"
        names = json.loads(record.read_text()) if record.is_file() else None
        if names and any(n.startswith(GLOO_THREADS) for n in names):
            gloo_alive.append(rank)
    aborted = "SIGABRT" in text or "terminate called" in text or "Signal 6" in text
    return {"returncode": proc.returncode, "aborted": aborted, "seconds": seconds,
            "gloo_threads_alive_at_exit": gloo_alive,
            "tail": "" if proc.returncode == 0 else text[-3000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="launches (default 20)")
    parser.add_argument("--scenario", choices=("short", "tests"), default="short",
                        help="the short fits above (default) or tests/_support/ddp_worker.py's")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="rest_fair checkout to launch (default: this one)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one launch may take before it counts as hung")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0

    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="ddp_launch_") as tmp:
            try:
                result = launch(args.root.resolve(), Path(tmp), args.scenario,
                                args.timeout)
            except subprocess.TimeoutExpired:
                result = {"returncode": None, "aborted": False, "seconds": args.timeout,
                          "gloo_threads_alive_at_exit": [], "tail": "timed out"}
        results.append(result)
        status = "ok" if result["returncode"] == 0 else (
            "ABORTED" if result["aborted"] else "FAILED")
        print(f"launch {i + 1:3d}/{args.runs}: {status} ({result['seconds']:.1f} s)"
              + (f", gloo threads alive at exit on rank(s) {result['gloo_threads_alive_at_exit']}"
                 if result["gloo_threads_alive_at_exit"] else ""), flush=True)
        if result["returncode"] != 0:
            print(result["tail"], file=sys.stderr)

    aborted = sum(r["aborted"] for r in results)
    failed = sum(r["returncode"] != 0 for r in results) - aborted
    lingering = sum(bool(r["gloo_threads_alive_at_exit"]) for r in results)
    print(f"\n{args.runs} launches ({args.scenario}) of {args.root.resolve()}: {aborted} aborted, "
          f"{failed} other failures, {lingering} with gloo threads alive at exit")
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": args.runs, "aborted": aborted,
                                        "failed": failed, "lingering": lingering,
                                        "results": results}, indent=1))
    return 1 if aborted or failed else 0


if __name__ == "__main__":
    sys.exit(main())
