"""One sparse linear layer's training step: dense vs ``CSRLinear`` vs sparseprop.

A 2048 x 2048 linear layer (bias included) at batch 256: forward pass, then backward pass
with the gradients of the input, the weights and the bias, for mask densities 0.10 / 0.05 /
0.02 / 0.01. The three contenders get the same weights, mask, input and output gradient:

- ``dense``: ``nn.Linear`` with the masked weights (what a masked layer computes);
- ``ours``: :class:`rest_fair.sparse.csr_linear.CSRLinear` (``sparse_compute="csr"``),
  with the compiled kernels of :mod:`rest_fair.sparse.kernels`;
- ``ours (torch)``: the same layer on its pure-torch path (``torch.sparse`` CSR products),
  what runs where the kernels cannot be built;
- ``sparseprop``: ``sparseprop.modules.SparseLinear`` (IST-DASLab's CPU sparse
  backpropagation, compiled with ``-march=native``), when it is importable; it is not a
  dependency of rest_fair, and its column is left out with a note otherwise.

The repetitions are interleaved (each round runs every contender once, the order rotating),
and only ratios of the medians measured in this run are printed. Before timing, the
outputs and gradients of each sparse contender are checked against the dense layer's.

Run it alone on the machine, e.g.
``flock /tmp/torch.lock python benchmarks/bench_layer_step.py --threads 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable

import torch
from _args import density_arg, positive_int
from _timing import interleaved_medians
from torch import nn

from rest_fair.sparse import kernels
from rest_fair.sparse.csr_linear import CSRLinear

try:  # the peer is measured when installed; it is not a dependency
    from sparseprop.modules import SparseLinear
except ImportError as exc:  # pragma: no cover - depends on the machine
    SparseLinear = None
    _PEER_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _PEER_ERROR = ""


@contextlib.contextmanager
def _pure_torch():
    """The CSR layers' pure-torch path, for the duration of the block."""
    previous = os.environ.get(kernels.ENV_SWITCH)
    os.environ[kernels.ENV_SWITCH] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[kernels.ENV_SWITCH]
        else:
            os.environ[kernels.ENV_SWITCH] = previous


def _contenders(n_out: int, n_in: int, batch: int, density: float, seed: int,
                input_grad: bool) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """Step functions of every contender on one layer; each returns its gradients."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_out, n_in, generator=gen) < density
    weight = torch.randn(n_out, n_in, generator=gen).div_(n_in ** 0.5)
    # no active weight may be exactly zero: sparseprop builds its pattern from the values
    weight = torch.where(weight == 0, torch.full_like(weight, 1e-3), weight) * mask
    bias = torch.randn(n_out, generator=gen)
    x = torch.randn(batch, n_in, generator=gen).requires_grad_(input_grad)
    grad = torch.randn(batch, n_out, generator=gen)

    dense = nn.Linear(n_in, n_out)
    with torch.no_grad():
        dense.weight.copy_(weight)
        dense.bias.copy_(bias)
    ours = CSRLinear(nn.Linear(n_in, n_out), mask)
    with torch.no_grad():
        ours.values.copy_(weight[mask])
        ours.bias.copy_(bias)

    def step(layer: nn.Module, params: list[torch.Tensor],
             context=contextlib.nullcontext) -> Callable[[], list[torch.Tensor]]:
        def run() -> list[torch.Tensor]:
            for p in params:
                p.grad = None
            x.grad = None
            with context():
                layer(x).backward(grad)
            return [x.grad] + [p.grad for p in params]
        return run

    steps = {
        "dense": step(dense, [dense.weight, dense.bias]),
        "ours": step(ours, [ours.values, ours.bias]),
        "ours (torch)": step(ours, [ours.values, ours.bias], _pure_torch),
    }
    if SparseLinear is not None:
        peer = SparseLinear.from_dense(dense)
        steps["sparseprop"] = step(peer, [peer.W_val, peer.bias])
    return steps, mask


def _check(steps, mask: torch.Tensor) -> None:
    """The sparse contenders' gradients equal the dense layer's (at the mask)."""
    ref = steps["dense"]()
    for name, run in steps.items():
        if name == "dense":
            continue
        got = run()
        for a, b in ((got[0], ref[0]), (got[1], ref[1][mask]), (got[2], ref[2])):
            if a is None and b is None:
                continue
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch CPU threads (default 2)")
    parser.add_argument("--size", type=positive_int, default=2048, help="in and out features")
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--densities", type=density_arg, nargs="+",
                        default=[0.10, 0.05, 0.02, 0.01])
    parser.add_argument("--repeats", type=positive_int, default=40,
                        help="timed rounds per density (every contender once per round)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-input-grad", action="store_true",
                        help="no gradient of the input (a network's first layer)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"# bench_layer_step: {args.size}x{args.size} linear layer, batch {args.batch}, "
          f"forward + backward (input gradient: {'no' if args.no_input_grad else 'yes'}), "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}, float32 CPU; "
          f"{args.repeats} interleaved rounds per density, medians")
    if not kernels.available():
        print(f"# compiled kernels unavailable ({kernels.unavailable_reason()}): 'ours' "
              "runs the pure-torch path too")
    if SparseLinear is None:
        print(f"# sparseprop not importable ({_PEER_ERROR}): its column is left out")
    peer = SparseLinear is not None
    head = ("| density | ours vs dense | ours (pure torch) vs dense "
            "| ours vs ours (pure torch) |")
    if peer:
        head += " sparseprop vs dense | ours vs sparseprop |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for density in args.densities:
        steps, mask = _contenders(args.size, args.size, args.batch, density, seed=0,
                                  input_grad=not args.no_input_grad)
        _check(steps, mask)
        med = interleaved_medians(steps, args.repeats, args.warmup)
        line = (f"| {density:g} | {med['dense'] / med['ours']:.1f}x"
                f" | {med['dense'] / med['ours (torch)']:.1f}x"
                f" | {med['ours (torch)'] / med['ours']:.2f}x |")
        if peer:
            line += (f" {med['dense'] / med['sparseprop']:.1f}x"
                     f" | {med['sparseprop'] / med['ours']:.2f}x |")
        lines.append(line)
        print(line, file=sys.stderr, flush=True)
    print()
    print("\n".join(lines))
    print()
    print(f"# total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
