"""Sparse convolutions against the masked path on the paper's CNN (``SmallCNN``).

rest_fair trains convolutions masked-dense: ``nn.Conv2d`` with zeros at inactive weights,
the masks re-applied after every optimizer step. This script measures whether a sparse
convolution would make training faster, on :class:`rest_fair.models.SmallCNN` (three
Conv(k=4, s=2, p=1) -> BN -> ReLU blocks of 64/128/256 channels, global average pooling,
a linear head) on 3 x 28 x 28 images, at the masks rest_fair draws
(:meth:`rest_fair.sparse.masks.MaskSet.from_module`, ERK and uniform layer densities).

Contenders, each given the same weights, masks and inputs:

- ``dense``: the convolutions with all their weights (a dense network's cost);
- ``masked``: rest_fair's masked path, ``nn.Conv2d`` on the weights zeroed outside the mask;
- ``sparseprop``: ``sparseprop.modules.SparseConv2d`` built by ``SparseConv2d.from_dense``
  from the masked convolution (IST-DASLab's CPU sparse backpropagation, compiled with
  ``-march=native``), in both of its loop orders: ``voo=False`` (batch innermost; the
  input is copied to (C, H, W, B) in the forward pass and the output comes back as a
  permuted view) and ``voo=True`` (the backward pass vectorised over output columns; its
  forward pass supports stride 1 only, so at stride 2 only the backward pass changes).
  It supports strides 1 and 2, square kernels, symmetric padding, no groups or dilation,
  float32 CPU tensors, batches that are multiples of 8 (other batch sizes give wrong
  outputs without an error), and builds its pattern from the nonzero weights. It is not a
  dependency of rest_fair: measured when importable, its columns left out with a note
  otherwise;
- ``ours``: ``F.unfold`` (im2col) and rest_fair's :class:`~rest_fair.sparse.csr_linear.CSRLinear`
  on its compiled kernels, the weights as an ``(out_channels, in_channels * k * k)`` CSR
  matrix: rest_fair's own sparse kernels on a convolution.

Two tables. Per layer: forward and backward of one convolution (gradients of the input,
except for the first layer, of the weights and of the bias). Whole step: forward, loss,
backward, SGD step (momentum 0.9) and, where masks remain, their re-application, for the
whole network; sparse variants replace every convolution whose mask density is below 1
(a layer that ERK makes dense stays ``nn.Conv2d``). ``sparseprop (where faster)`` replaces
only the convolutions where a sparseprop variant won the per-layer measurement, with the
faster variant: what a per-layer ``"auto"`` choice would run.

Before timing, the outputs and gradients of every sparse contender are checked against the
masked path's. Repetitions are interleaved (each round runs every contender once, the order
rotating); only ratios of medians measured in this run are printed: ``X vs masked`` is
masked time / X time, above 1 when X is faster.

Run it alone on the machine, e.g.
``flock /tmp/torch.lock python benchmarks/bench_conv.py --threads 2``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _args import positive_int, sparsity_arg
from _timing import interleaved_medians
from torch import nn

from rest_fair.models import SmallCNN
from rest_fair.sparse import kernels
from rest_fair.sparse.csr_linear import CSRLinear
from rest_fair.sparse.masks import MaskSet
from rest_fair.sparse.modules import set_submodule

try:  # the peer is measured when installed; it is not a dependency
    from sparseprop.modules import SparseConv2d
    from sparseprop.modules.utils import from_sparse_format_conv2d
except ImportError as exc:  # pragma: no cover - depends on the machine
    SparseConv2d = None
    from_sparse_format_conv2d = None
    _PEER_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _PEER_ERROR = ""

#: The 1.5x rule: a sparse convolution is worth using under ``"auto"`` only where the
#: whole training step gets at least this much faster than the masked path.
WORTH_IT = 1.5

#: sparseprop's convolution vectorises over the batch in groups of 8 floats: at other batch
#: sizes its outputs are wrong (measured at batch 4), so only multiples are measured.
PEER_BATCH_MULTIPLE = 8

_PEERS = ("sparseprop", "sparseprop (voo)")


class UnfoldCSRConv(nn.Module):
    """A convolution as ``F.unfold`` followed by a :class:`CSRLinear` (im2col).

    Parameters
    ----------
    conv : nn.Conv2d
        Square kernel, no groups, no dilation; its weights and bias are taken.
    mask : bool Tensor of the weight's shape
    """

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        linear = nn.Linear(conv.weight[0].numel(), conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        self.csr = CSRLinear(linear, mask.reshape(conv.out_channels, -1))

    def dense_weight(self) -> torch.Tensor:
        return self.csr.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        rows = cols.transpose(1, 2).reshape(b * oh * ow, -1)
        out = self.csr(rows).view(b, oh, ow, self.out_channels).permute(0, 3, 1, 2)
        # contiguous as nn.Conv2d's output: batch norm then takes the same path, where a
        # channels-last layout would sum a channel's statistics in another order
        return out.contiguous()


def _peer(conv: nn.Conv2d, voo: bool) -> nn.Module:
    return SparseConv2d.from_dense(conv, vectorizing_over_on=voo)


def _make_sparse(conv: nn.Conv2d, mask: torch.Tensor, kind: str) -> nn.Module:
    if kind == "ours":
        return UnfoldCSRConv(conv, mask)
    return _peer(conv, voo=kind == "sparseprop (voo)")


def _dense_weight(layer: nn.Module, grad: bool = False) -> torch.Tensor:
    """A convolution's weights (or their gradient) as a dense tensor, whatever the layer."""
    if isinstance(layer, nn.Conv2d):
        return layer.weight.grad if grad else layer.weight.detach()
    if isinstance(layer, UnfoldCSRConv):
        values = layer.csr.values
        return layer.csr.scatter(values.grad if grad else values.detach())
    values = layer.W_val.grad if grad else layer.W_val.detach()
    return from_sparse_format_conv2d(values, layer.W_idx, (layer.OC, layer.IC, layer.K, layer.K))


def _close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = 1e-4) -> None:
    """float32 agreement: relative 1e-3, absolute ``atol`` of the largest reference entry."""
    scale = float(want.abs().max()) if want.numel() else 1.0
    torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-3,
                               atol=atol * scale + 1e-7, msg=lambda m: f"{what}: {m}")


def _network(args, density: float, layer_density: str) -> tuple[nn.Module, MaskSet]:
    """The paper's CNN with rest_fair's masks applied to its weights."""
    torch.manual_seed(0)
    module = SmallCNN((3, args.image_size, args.image_size), args.n_classes,
                      widths=tuple(args.widths))
    masks = MaskSet.from_module(module, density=density, layer_density=layer_density,
                                generator=torch.Generator().manual_seed(0))
    masks.rescale_init_()
    with torch.no_grad():
        for param in masks.params.values():
            # sparseprop builds its pattern from the nonzero weights: none may be 0 exactly
            param.copy_(torch.where(param == 0, torch.full_like(param, 1e-3), param))
    masks.apply_()
    return module, masks


def _conv_inputs(module: nn.Module, batch: int, image_size: int) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}
    hooks = [m.register_forward_hook(
        lambda m, i, o, name=name: shapes.__setitem__(name, i[0].shape))
        for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module.eval()(torch.zeros(1, 3, image_size, image_size))
    module.train()
    for h in hooks:
        h.remove()
    return {name: torch.Size((batch, *shape[1:])) for name, shape in shapes.items()}


def _sparse_kinds() -> list[str]:
    return (list(_PEERS) if SparseConv2d is not None else []) + ["ours"]


# -- one layer ----------------------------------------------------------------------------
def layer_steps(conv: nn.Conv2d, mask: torch.Tensor, dense_weight: torch.Tensor,
                in_shape: torch.Size, input_grad: bool, seed: int = 0):
    """Forward-and-backward functions of every contender on one convolution, checked."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(in_shape, generator=gen).requires_grad_(input_grad)
    dense = copy.deepcopy(conv)
    with torch.no_grad():
        dense.weight.copy_(dense_weight)
    layers: dict[str, nn.Module] = {"dense": dense, "masked": conv}
    for kind in _sparse_kinds():
        layers[kind] = _make_sparse(conv, mask, kind)
    with torch.no_grad():
        grad = torch.randn(conv(x).shape, generator=gen)

    def step(layer: nn.Module) -> Callable[[], torch.Tensor]:
        params = [p for p in layer.parameters()]

        def run() -> torch.Tensor:
            for p in params:
                p.grad = None
            x.grad = None
            out = layer(x)
            out.backward(grad)
            return out
        return run

    steps = {name: step(layer) for name, layer in layers.items()}
    ref = steps["masked"]().detach()
    ref_x = None if x.grad is None else x.grad.clone()
    ref_w = conv.weight.grad * mask
    ref_b = conv.bias.grad.clone()
    for kind in _sparse_kinds():
        layer = layers[kind]
        _close(steps[kind]().detach(), ref, f"{kind} output")
        if ref_x is not None:
            _close(x.grad, ref_x, f"{kind} input gradient")
        _close(_dense_weight(layer, grad=True), ref_w, f"{kind} weight gradient")
        _close(layer.csr.bias.grad if kind == "ours" else layer.bias.grad, ref_b,
               f"{kind} bias gradient")
    return steps


# -- the whole network --------------------------------------------------------------------
class _Step:
    """One training step of a network: forward, loss, backward, SGD, masks re-applied."""

    def __init__(self, module: nn.Module, masks: MaskSet | None, x: torch.Tensor,
                 y: torch.Tensor) -> None:
        self.module, self.masks, self.x, self.y = module, masks, x, y
        self.optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)

    def __call__(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.module(self.x)
        F.cross_entropy(out, self.y).backward()
        self.optimizer.step()
        if self.masks is not None:
            self.masks.apply_()
        return out


def _variant(module: nn.Module, masks: MaskSet, kinds: dict[str, str]) -> tuple[nn.Module,
                                                                               MaskSet]:
    """A copy of ``module`` whose convolutions ``kinds`` (name -> kind) are replaced."""
    module = copy.deepcopy(module)
    params = dict(module.named_parameters())
    kept = {name: params[name] for name in masks.names
            if name.rpartition(".")[0] not in kinds}
    for name, kind in kinds.items():
        set_submodule(module, name, _make_sparse(module.get_submodule(name),
                                                 masks.mask(f"{name}.weight"), kind))
    return module, MaskSet(kept, {name: masks.mask(name) for name in kept})


def network_steps(args, density: float, layer_density: str, batch: int,
                  faster: dict[str, str]) -> tuple[dict[str, _Step], list[str]]:
    """Whole-step functions of every contender on the network, checked."""
    module, masks = _network(args, density, layer_density)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, args.image_size, args.image_size, generator=gen)
    y = torch.randint(args.n_classes, (batch,), generator=gen)
    convs = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    sparse = [name for name in convs if not bool(masks.mask(f"{name}.weight").all())]
    dense = copy.deepcopy(module)
    with torch.no_grad():  # the same network with all its weights
        for name, param in dense.named_parameters():
            if name in masks.params:
                param.copy_(torch.where(masks.mask(name), param,
                                        torch.randn(param.shape, generator=gen) * 0.05))
    variants: dict[str, tuple[nn.Module, MaskSet | None]] = {
        "dense": (dense, None), "masked": _variant(module, masks, {})}
    if SparseConv2d is not None:
        variants["sparseprop"] = _variant(module, masks,
                                          {n: faster.get(n, "sparseprop") for n in sparse})
        variants["sparseprop (where faster)"] = _variant(
            module, masks, {n: faster[n] for n in sparse if n in faster})
    variants["ours"] = _variant(module, masks, dict.fromkeys(sparse, "ours"))
    steps = {name: _Step(m, ms, x, y) for name, (m, ms) in variants.items()}
    # one step of each from the same state: the same logits, then the same weights. The
    # logits get a looser bound: batch norm divides a channel whose weights are (nearly) all
    # inactive by the square root of a variance close to 0, which magnifies float32 rounding
    # (the per-layer checks compare the convolutions themselves at 1e-4)
    ref = steps["masked"]().detach()
    ref_weights = {n: _dense_weight(variants["masked"][0].get_submodule(n)) for n in convs}
    for name in steps:
        if name in ("dense", "masked"):
            continue
        _close(steps[name]().detach(), ref, f"{name} logits (whole step)", atol=1e-2)
        for conv in convs:
            _close(_dense_weight(variants[name][0].get_submodule(conv)), ref_weights[conv],
                   f"{name} {conv} weights after one step")
    return steps, sparse


def _fmt(x: float) -> str:
    return f"{x:.2f}x"


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch CPU threads (default 2)")
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[128])
    parser.add_argument("--sparsities", type=sparsity_arg, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--layer-densities", nargs="+", default=["erk", "uniform"],
                        choices=["erk", "uniform"])
    parser.add_argument("--repeats", type=positive_int, default=20,
                        help="timed rounds per setting (every contender once per round)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--widths", type=positive_int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--n-classes", type=int, default=10)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and one round: checks that the script runs, no verdict")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.image_size, args.widths = [8], 12, [8, 16, 32]
        args.repeats, args.warmup = 1, 0
    if SparseConv2d is not None and any(b % PEER_BATCH_MULTIPLE for b in args.batches):
        parser.error(f"sparseprop's SparseConv2d needs batches that are multiples of "
                     f"{PEER_BATCH_MULTIPLE}; got {args.batches}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"# bench_conv: SmallCNN {args.widths} on 3x{args.image_size}x{args.image_size}, "
          f"{args.n_classes} classes, float32 CPU, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}; {args.repeats} interleaved rounds, medians; "
          "'X vs masked' = masked time / X time")
    if SparseConv2d is None:
        print(f"# sparseprop not importable ({_PEER_ERROR}): its columns are left out")
    if not kernels.available():
        print(f"# compiled kernels unavailable ({kernels.unavailable_reason()}): 'ours' "
              "runs the CSR layers' pure-torch path")
    peer = SparseConv2d is not None
    layer_head = "| sparsity | layers | batch | layer | weight | density | masked vs dense |"
    if peer:
        layer_head += " sparseprop vs masked | sparseprop (voo) vs masked |"
    layer_head += " ours (unfold+CSR) vs masked |"
    step_head = "| sparsity | layers | batch | densities | masked vs dense |"
    if peer:
        step_head += " sparseprop vs masked | sparseprop (where faster) vs masked |"
    step_head += f" ours vs masked | best >= {WORTH_IT}x? |"
    layer_lines = [layer_head, "|" + "---|" * (layer_head.count("|") - 1)]
    step_lines = [step_head, "|" + "---|" * (step_head.count("|") - 1)]
    results: dict[str, list[dict]] = {"layers": [], "steps": []}
    for sparsity in args.sparsities:
        for layer_density in args.layer_densities:
            module, masks = _network(args, 1.0 - sparsity, layer_density)
            for batch in args.batches:
                shapes = _conv_inputs(module, batch, args.image_size)
                faster: dict[str, str] = {}
                densities = []
                for i, (name, in_shape) in enumerate(shapes.items()):
                    conv = module.get_submodule(name)
                    mask = masks.mask(f"{name}.weight")
                    density = float(mask.float().mean())
                    densities.append(f"{density:.3f}")
                    gen = torch.Generator().manual_seed(2)
                    full = torch.where(mask, conv.weight.detach(),
                                       torch.randn(mask.shape, generator=gen) * 0.05)
                    steps = layer_steps(conv, mask, full, in_shape, input_grad=i > 0)
                    med = interleaved_medians(steps, args.repeats, args.warmup)
                    row = {"sparsity": sparsity, "layer_density": layer_density,
                           "batch": batch, "layer": name, "density": density,
                           **{f"{k}_vs_masked": med["masked"] / med[k] for k in med}}
                    results["layers"].append(row)
                    line = (f"| {sparsity:g} | {layer_density} | {batch} | {name} "
                            f"| {'x'.join(map(str, conv.weight.shape))} | {density:.3f} "
                            f"| {_fmt(med['dense'] / med['masked'])} |")
                    if peer:
                        line += "".join(f" {_fmt(row[f'{k}_vs_masked'])} |" for k in _PEERS)
                        best = max(_PEERS, key=lambda k: row[f"{k}_vs_masked"])
                        if row[f"{best}_vs_masked"] > 1.0 and density < 1.0:
                            faster[name] = best
                    line += f" {_fmt(row['ours_vs_masked'])} |"
                    layer_lines.append(line)
                    print(line, file=sys.stderr, flush=True)
                steps, sparse = network_steps(args, 1.0 - sparsity, layer_density, batch,
                                              faster)
                med = interleaved_medians(steps, args.repeats, args.warmup)
                row = {"sparsity": sparsity, "layer_density": layer_density, "batch": batch,
                       "sparse_layers": sparse, "where_faster": sorted(faster),
                       **{f"{k}_vs_masked": med["masked"] / med[k] for k in med}}
                best = max(v for k, v in row.items()
                           if k.endswith("_vs_masked") and k != "dense_vs_masked"
                           and k != "masked_vs_masked")
                row["worth_it"] = best >= WORTH_IT
                results["steps"].append(row)
                line = (f"| {sparsity:g} | {layer_density} | {batch} | {' / '.join(densities)} "
                        f"| {_fmt(med['dense'] / med['masked'])} |")
                if peer:
                    line += (f" {_fmt(row['sparseprop_vs_masked'])}"
                             f" | {_fmt(row['sparseprop (where faster)_vs_masked'])}"
                             f" ({', '.join(sorted(faster)) or 'none'}) |")
                verdict = "-" if args.smoke else "yes" if row["worth_it"] else "no"
                line += f" {_fmt(row['ours_vs_masked'])} | {verdict} ({_fmt(best)}) |"
                step_lines.append(line)
                print(line, file=sys.stderr, flush=True)
    print()
    print("Per layer: forward + backward of one convolution (weights, bias and, but for the "
          "first layer, input gradients)")
    print()
    print("\n".join(layer_lines))
    print()
    print("Whole training step: forward, cross-entropy, backward, SGD (momentum 0.9), masks "
          "re-applied")
    print()
    print("\n".join(step_lines))
    print()
    if args.smoke:
        print("# smoke run: tiny sizes, one round; the ratios mean nothing")
    print(f"# total wall time {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
