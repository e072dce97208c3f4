"""What does data-parallel training cost or gain? N ranks vs 1, with the same global batch.

Each configuration is a real ``RESTClassifier.fit`` (the paper's small CNN on random
3x28x28 images, sparsity 0.9, RigL, global batch 128 by default). All of them run inside
one torchrun job of ``--ranks`` ranks, so no configuration pays for starting processes
and they can be interleaved: in every repetition, in a rotating order,

- "plain, T threads": rank 0 alone fits in one process (``distributed=False``) with ``T``
  threads while the other ranks wait at a barrier -- T = 1 and T = ``--ranks`` on the CPU
  (the latter uses the same cores as the ranks), one GPU on CUDA;
- "DDP": all ranks fit together (``distributed=True``; gloo with 1 thread per rank on the
  CPU, NCCL with one GPU per rank on CUDA). With ``--ranks 1`` on CUDA this is the cost
  of the DDP wrapper alone (a one-rank NCCL group) against the plain fit.

Printed, against the first "plain" configuration: the median time of an optimizer step
(``on_batch_end`` to ``on_batch_end``, leaving out the first epoch and the first step of
every epoch) as a ratio within each repetition, their median and range; and for DDP the
*communication share* of a step, ``1 - t(no_sync) / t(sync)``, where both are forward +
backward + optimizer steps of the fitted network on one rank's slice of the batch, with
the gradient all-reduce or inside ``DistributedDataParallel.no_sync()``, interleaved. No
absolute time is printed.

Run it alone on the machine:
``flock /tmp/torch.lock python benchmarks/bench_ddp.py`` (CPU, 2 ranks), or on a GPU
machine ``python benchmarks/bench_ddp.py --device cuda --ranks 1`` (wrapper overhead) and
``--ranks 8`` (8 GPUs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _args import positive_int

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


# ------------------------------------------------------------------------------ worker
def _fit_step_time(args: argparse.Namespace, distributed: bool) -> tuple[float, object]:
    """Median optimizer-step time of one fit, and the fitted estimator."""
    import numpy as np

    from rest_fair import RESTClassifier
    from rest_fair.callbacks import Callback

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n_samples, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, args.n_samples)

    class StepTimes(Callback):
        def __init__(self) -> None:
            self.times: list[list[float]] = []

        def on_epoch_begin(self, net, **kwargs):
            self.times.append([])

        def on_batch_end(self, net, **kwargs):  # the loop has synchronised (float(loss))
            self.times[-1].append(time.perf_counter())

    timer = StepTimes()
    clf = RESTClassifier(
        module="cnn", sparsity=0.9, regrow="gradient", max_epochs=args.epochs,
        batch_size=args.batch_size, lr=0.01, upweight=None, validation_fraction=0.0,
        lr_scheduler="constant", random_state=0, device=args.device, callbacks=[timer],
        distributed=distributed,
    ).fit(X, y)
    steps = [b - a for epoch in timer.times[1:] for a, b in itertools.pairwise(epoch)]
    return statistics.median(steps), clf


def _configs(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """``(name, threads of the plain fit or None for DDP)``."""
    n = args.nproc
    if args.device == "cuda":
        return [("plain, 1 GPU", 1), (f"DDP, {n} rank(s), 1 GPU each", None)]
    return [("plain, 1 thread", 1), (f"plain, {n} threads", n),
            (f"DDP, {n} ranks (gloo), 1 thread each", None)]


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank = dist.get_rank()
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    configs = _configs(args)
    step_s: dict[str, list[float]] = {name: [] for name, _ in configs}
    shares: list[float] = []
    for rep in range(args.repeats):
        k = rep % len(configs)
        for name, threads in configs[k:] + configs[:k]:
            if threads is None:
                torch.set_num_threads(1)
                t, clf = _fit_step_time(args, True)
                shares.append(_comm_share(clf, args))
                step_s[name].append(t)
            else:
                if rank == 0:
                    torch.set_num_threads(threads)
                    step_s[name].append(_fit_step_time(args, False)[0])
                dist.barrier()  # the other ranks wait, idle
        if rank == 0:
            print(f"repetition {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"step_s": step_s, "comm_share": shares}))
    dist.destroy_process_group()


def _comm_share(clf, args: argparse.Namespace) -> float:
    """``1 - t(no_sync) / t(sync)`` of a training step of the fitted network."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    device = next(clf.module_.parameters()).device
    world = torch.distributed.get_world_size()
    module = clf.module_.train()
    ddp = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                  else None)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size // world, 3, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (len(x),), generator=gen).to(device)

    def step(sync: bool) -> float:
        start = time.perf_counter()
        context = torch.enable_grad() if sync else ddp.no_sync()
        with context:
            loss = torch.nn.functional.cross_entropy(ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(3):  # warm-up of both paths
        step(True)
        step(False)
    synced, unsynced = [], []
    for i in range(args.comm_steps):  # interleaved, order alternating
        for sync in ((True, False) if i % 2 == 0 else (False, True)):
            (synced if sync else unsynced).append(step(sync))
    # every rank decides the same number of steps; rank 0's medians are reported
    return 1.0 - statistics.median(unsynced) / statistics.median(synced)


# ------------------------------------------------------------------------------ driver
def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    # "--ranks", not "--nproc": torchrun reads every argument, the script's too, and refuses
    # "--nproc" as an ambiguous abbreviation of its own "--nproc-per-node"
    parser.add_argument("--ranks", "--nproc", dest="nproc", type=positive_int, default=2,
                        help="ranks (one GPU each on CUDA); --nproc is accepted too")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=128, help="global batch")
    parser.add_argument("--n-samples", type=positive_int, default=1024)
    parser.add_argument("--comm-steps", type=positive_int, default=10)
    parser.add_argument("--json", help="also write the measured ratios here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.n_samples < 2 * args.batch_size:
        # the first epoch (warm-up) is left out of the timings, and so is each epoch's
        # first step: fewer would leave nothing to time
        parser.error("needs --epochs >= 2 and --n-samples >= 2 * --batch-size; got "
                     f"{args.epochs}, {args.n_samples} and {args.batch_size}")
    if args.worker:
        _worker(args)
        return

    import tempfile

    def _forwarded(args_in: list[str]) -> list[str]:
        return [a.replace("--nproc", "--ranks", 1) if a.startswith("--nproc") else a
                for a in args_in]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc}", str(HERE), "--worker", "--out", str(out),
               *_forwarded(argv if argv is not None else sys.argv[1:])]
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"the benchmark job failed (exit code {proc.returncode})")
        result = json.loads(out.read_text())

    step_s, shares = result["step_s"], result["comm_share"]
    names = list(step_s)
    base = names[0]
    ratios = {name: [a / b for a, b in zip(step_s[name], step_s[base], strict=True)]
              for name in names[1:]}
    print(f"device={args.device}  ranks={args.nproc}  global batch={args.batch_size}  "
          f"samples={args.n_samples}  epochs={args.epochs}  repeats={args.repeats}")
    print(f"step time relative to '{base}' (same global batch; < 1 is faster):")
    for name, values in ratios.items():
        print(f"  {name}: {_summary(values)}")
    print(f"communication share of a DDP step, 1 - t(no_sync) / t(sync): {_summary(shares)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ratios": ratios, "comm_share": shares,
                                               "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
