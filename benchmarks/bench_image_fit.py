"""A full-scale image fit: 54,000 Fashion-MNIST images, dense against 99 % sparse.

Both fit ``RESTClassifier`` (MLP, default ``sparse_compute="auto"``, group reweighting off,
6,000 images held out for validation) on the first 54,000 training images of the real
Fashion-MNIST (Debian's ``dataset-fashion-mnist``, or ``--root``), flattened to 784
float32 features in [0, 1]. The two take turns ``--repeats`` times; printed are the median
fit times, the sparse fit's as a ratio to the dense one, and where the sparse fit's time
goes: outside the epochs (input checks, building the run, the ``"auto"`` timing pass,
restoring the chosen epoch), validation, and the training steps; ``--profile N`` prints
one sparse fit's top functions.

``--plain-loop`` adds the floor of this structure: a minimal hand-written torch loop (SGD
with the same learning rate and momentum, batches drawn in a random order, no validation,
no reweighting, no topology updates) over the same 48,000 training images and epochs,
once with the dense network and once with the sparse fit's final masks on the same
``CSRLinear`` layers, timed in turns. Its sparse/dense ratio is what eager PyTorch with
our kernels gives before any of ``fit``'s own work. Run it alone on the machine::

    flock /tmp/torch.lock python benchmarks/bench_image_fit.py
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import numpy as np
import torch
from _args import positive_int

from rest_fair import RESTClassifier
from rest_fair.datasets import load_fashion_mnist
from rest_fair.sparse.csr_linear import CSRLinear
from rest_fair.sparse.modules import set_submodule


def load(root: str | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_fashion_mnist(root, split="train")
    return (images[:n].reshape(n, -1).astype(np.float32) / 255.0), labels[:n]


def estimator(args, sparsity: float) -> RESTClassifier:
    return RESTClassifier(sparsity=sparsity, upweight=None, max_epochs=args.epochs,
                          batch_size=args.batch, lr=0.05, random_state=0,
                          validation_fraction=6000 / args.n_images,
                          module_params={"hidden_layer_sizes": args.hidden})


def fit(args, X, y, sparsity: float) -> dict[str, float]:
    clf = estimator(args, sparsity)
    start = time.perf_counter()
    clf.fit(X, y)
    seconds = time.perf_counter() - start
    epochs = sum(r["dur"] for r in clf.history_)
    return {"seconds": seconds, "outside": (seconds - epochs) / seconds,
            "valid_acc": max(r["valid_acc"] for r in clf.history_),
            "sparse_layers": ", ".join(clf.sparse_compute_layers_) or "-"}


def plain_networks(args, X, y) -> dict[float, torch.nn.Module]:
    """The dense network of a short fit on 256 images, and the network of a 2,048-image
    sparse fit with its final masks on ``CSRLinear`` layers at the layers that fit ran on
    the kernels (the weights' values do not change the timing)."""
    sparse_fit = estimator(args, args.sparsity).fit(X[:2048], y[:2048])
    sparse = sparse_fit.module_
    for name in sparse_fit.sparse_compute_layers_:
        mask = sparse_fit.masks_[f"{name}.weight"]
        set_submodule(sparse, name, CSRLinear(sparse.get_submodule(name), mask))
    dense = estimator(args, 0.0).fit(X[:256], y[:256]).module_
    return {0.0: dense.train(), args.sparsity: sparse.train()}


def plain_epochs(args, network: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of ``args.epochs`` epochs of the minimal loop."""
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(X))
        for first in range(0, len(X), args.batch):
            idx = order[first:first + args.batch]
            loss = torch.nn.functional.cross_entropy(network(X.index_select(0, idx)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="Folder of the four idx files.")
    parser.add_argument("--n-images", type=int, default=54000)
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 300, 300])
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--profile", type=int, default=0)
    parser.add_argument("--plain-loop", action="store_true",
                        help="also time a minimal torch loop on the same networks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    X, y = load(args.root, args.n_images)
    fit(args, X[:2048], y[:2048], args.sparsity)  # warm-up: first-call costs of both paths
    runs: dict[float, list[dict]] = {0.0: [], args.sparsity: []}
    for rep in range(args.repeats):
        order = [0.0, args.sparsity] if rep % 2 == 0 else [args.sparsity, 0.0]
        for sparsity in order:
            runs[sparsity].append(fit(args, X, y, sparsity))
    dense = statistics.median(r["seconds"] for r in runs[0.0])
    print(f"# bench_image_fit: Fashion-MNIST, {args.n_images} training images (6,000 of them "
          f"for validation), MLP {args.hidden}, {args.epochs} epochs, batch {args.batch}, "
          f"torch {torch.__version__}, threads={args.threads}; {args.repeats} interleaved "
          "fits each, medians\n")
    print("| sparsity | fit time / dense | outside epochs | best valid acc | layers on sparse "
          "kernels |")
    print("|---|---|---|---|---|")
    for sparsity, fits in runs.items():
        seconds = statistics.median(r["seconds"] for r in fits)
        print(f"| {sparsity:g} | {seconds / dense:.3f} | "
              f"{statistics.median(r['outside'] for r in fits):.1%} | "
              f"{statistics.median(r['valid_acc'] for r in fits):.3f} | "
              f"{fits[0]['sparse_layers']} |")
    if args.plain_loop:
        n_train = args.n_images - 6000
        X_train, y_train = torch.from_numpy(X[:n_train]), torch.from_numpy(y[:n_train]).long()
        networks = plain_networks(args, X, y)
        seconds: dict[float, list[float]] = {s: [] for s in networks}
        for rep in range(args.repeats):
            for sparsity in (list(networks) if rep % 2 == 0 else list(networks)[::-1]):
                seconds[sparsity].append(plain_epochs(args, networks[sparsity], X_train,
                                                      y_train))
        dense_loop = statistics.median(seconds[0.0])
        step_ms = 1e3 * dense_loop / args.epochs / -(-n_train // args.batch)
        print(f"\nMinimal torch loop ({n_train} images, {args.epochs} epochs, "
              f"{args.repeats} interleaved runs, medians): the {args.sparsity:g} network "
              f"takes {statistics.median(seconds[args.sparsity]) / dense_loop:.3f}x the "
              f"dense one's time; a dense step takes {step_ms:.2f} ms.")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        estimator(args, args.sparsity).fit(X, y)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.profile)
        print("\n## One sparse fit under cProfile (by own time)\n")
        print(text.getvalue())


if __name__ == "__main__":
    main()
