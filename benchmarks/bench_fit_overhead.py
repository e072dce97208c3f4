"""What does ``RESTClassifier.fit`` cost over a minimal hand-written torch loop?

Both train the same MLP (hidden 256x256, plain :class:`rest_fair.models.MLP`) on the same
20,000 x 100 synthetic data for the same epochs, batch size and SGD optimizer, dense and at
90 % sparsity. The hand-written loop shuffles, indexes batches, steps the optimizer and, when
sparse, multiplies the weights by their masks after each step; ``fit`` does everything it
always does (validation split off, reweighting off so both see the same samples), including
its once-per-epoch topology updates.

Repetitions are interleaved (fit, loop, loop, fit, ...), and only the ratio of the medians
measured in this run is printed. Run it alone on the machine, e.g.::

    flock /tmp/torch.lock python benchmarks/bench_fit_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _args import positive_int
from torch import nn

from rest_fair import RESTClassifier
from rest_fair.models import build_module
from rest_fair.sparse import MaskSet

HIDDEN = (256, 256)


def _data(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, :5].sum(1) > 0).astype(np.int64)
    return X, y


def _fit(X, y, *, sparsity: float, epochs: int, batch_size: int, lr: float) -> float:
    clf = RESTClassifier(sparsity=sparsity, upweight=None, validation_fraction=0.0,
                         max_epochs=epochs, batch_size=batch_size, lr=lr,
                         lr_scheduler="constant", device="cpu", random_state=0,
                         module_params={"hidden_layer_sizes": HIDDEN})
    start = time.perf_counter()
    clf.fit(X, y)
    return time.perf_counter() - start


def _hand_loop(X, y, *, sparsity: float, epochs: int, batch_size: int, lr: float) -> float:
    start = time.perf_counter()
    torch.manual_seed(0)
    net = build_module("mlp", input_shape=(X.shape[1],), n_classes=2,
                       module_params={"hidden_layer_sizes": HIDDEN})
    masks = []
    if sparsity > 0:
        mask_set = MaskSet.from_module(net, density=1 - sparsity,
                                       generator=torch.Generator().manual_seed(0))
        masks = [(mask_set.params[n], mask_set.mask(n).float()) for n in mask_set.names]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    n = len(Xt)
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p, m in masks:
                    p.mul_(m)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    X, y = _data(args.n, args.features)
    settings = dict(epochs=args.epochs, batch_size=args.batch_size, lr=0.01)
    print(f"fit / hand-written loop, {args.n}x{args.features}, MLP {HIDDEN}, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.threads} threads, "
          f"median of {args.repeats} interleaved repetitions")
    for sparsity in (0.0, 0.9):
        _fit(X, y, sparsity=sparsity, **settings)  # warm-up
        _hand_loop(X, y, sparsity=sparsity, **settings)
        fit_times, loop_times = [], []
        for rep in range(args.repeats):
            pair = [("fit", _fit), ("loop", _hand_loop)]
            for name, run in pair if rep % 2 == 0 else pair[::-1]:
                t = run(X, y, sparsity=sparsity, **settings)
                (fit_times if name == "fit" else loop_times).append(t)
        ratio = statistics.median(fit_times) / statistics.median(loop_times)
        label = "dense" if sparsity == 0 else f"{sparsity:.0%} sparse"
        print(f"  {label:>11}: fit / loop = {ratio:.3f}x")


if __name__ == "__main__":
    main()
