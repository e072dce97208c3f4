"""Training-step throughput of a torchvision backbone, dense vs. masked (REST's training).

For each dtype (``fp32``, ``bf16`` autocast) and each mode it times full optimizer steps
on random images of the requested size, after warm-up steps:

- ``dense``: forward, cross-entropy, backward, SGD-with-momentum step;
- ``masked``: the same plus re-applying the masks after every step, which is what
  :class:`rest_fair.RESTClassifier` does (masks from ``MaskSet.from_module`` with
  magnitude initialisation at the given sparsity, ERK densities, first convolution and
  classifier dense);

and reports images per second (median over ``--repeats`` timed blocks), the masked/dense
ratio, and the time of one RigL topology update (prune-and-regrow of every masked layer
from the last gradients). The default is the issue's real-size setting, ResNet-50 at
224x224, batch 64, on CUDA. On a CPU run something tiny, e.g.::

    python benchmarks/bench_backbones.py --device cpu --model resnet18 --image-size 32 \\
        --batch-size 2 --steps 1 --warmup 0 --repeats 1

Results go to stdout as a Markdown table and, with ``--out``, to a JSON file with the
environment (torch version, device name).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from typing import Any

import torch
from _args import positive_int
from torch import nn

from rest_fair.backbones import build_torchvision
from rest_fair.sparse import MaskSet, update_topology

_DTYPES = ("fp32", "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str) -> Any:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _setup(args: argparse.Namespace, device: torch.device, masked: bool, seed: int):
    torch.manual_seed(seed)
    model = build_torchvision(args.model, n_classes=args.n_classes, weights=None).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    masks = None
    if masked:
        masks = MaskSet.from_module(model, density=1.0 - args.sparsity, sparse_init="magnitude",
                                    dense_layers=("first", "head"))
        masks.apply_()
    return model, optimizer, masks


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, masks: MaskSet | None,
          x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: str) -> None:
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    if masks is not None:
        masks.apply_()


def measure(args: argparse.Namespace, device: torch.device, dtype: str, masked: bool) -> dict:
    """Images per second of one configuration (and one topology update when masked)."""
    model, optimizer, masks = _setup(args, device, masked, seed=0)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    y = torch.randint(0, args.n_classes, (args.batch_size,), generator=generator)
    x, y = x.to(device), y.to(device)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    for _ in range(args.warmup):
        _step(model, optimizer, masks, x, y, device, dtype)
    _sync(device)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            _step(model, optimizer, masks, x, y, device, dtype)
        _sync(device)
        rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
    row = {
        "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
        "dtype": dtype, "mode": "masked" if masked else "dense",
        "sparsity": args.sparsity if masked else 0.0,
        "images_per_s": statistics.median(rates), "images_per_s_all": rates,
    }
    if masks is not None:
        row["density"] = masks.density()
        _sync(device)
        start = time.perf_counter()
        update_topology(masks, 0.3, regrow="gradient", optimizer=optimizer)
        _sync(device)
        row["topology_update_s"] = time.perf_counter() - start
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    del model, optimizer, masks
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def _table(rows: list[dict]) -> list[str]:
    lines = ["| dtype | mode | images/s | vs dense | topology update (s) |",
             "|---|---|---|---|---|"]
    dense = {r["dtype"]: r["images_per_s"] for r in rows if r["mode"] == "dense"}
    for r in rows:
        ratio = r["images_per_s"] / dense[r["dtype"]] if r["dtype"] in dense else float("nan")
        update = f"{r['topology_update_s']:.3f}" if "topology_update_s" in r else "–"
        lines.append(f"| {r['dtype']} | {r['mode']} | {r['images_per_s']:.1f} | "
                     f"{ratio:.3f} | {update} |")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="torchvision model (resnet50)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-classes", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", choices=_DTYPES, default=list(_DTYPES))
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<i>")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = _environment(device)
    print(f"# bench_backbones: {args.model} {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, sparsity {args.sparsity}, {env['device_name']}, torch "
          f"{env['torch']}; median of {args.repeats} x {args.steps} steps after "
          f"{args.warmup} warm-up steps", flush=True)
    rows = []
    for dtype in args.dtypes:
        for masked in (False, True):
            rows.append(measure(args, device, dtype, masked))
            print(f"  {dtype} {rows[-1]['mode']}: {rows[-1]['images_per_s']:.1f} images/s",
                  file=sys.stderr, flush=True)
    print("\n".join(_table(rows)))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "argv": sys.argv if argv is None else argv,
                       "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
