"""What does one ``predict_proba`` call on a few rows cost over the network itself?

A default ``RESTClassifier`` (an MLP, 90 % sparse) is fitted on small synthetic data of 20
features. For each batch size, ``predict_proba`` on a float32 array of that many rows is
timed against the floor: the fitted module called on the same rows as a float32 tensor
under ``torch.no_grad()``. The same is done after ``use_sparse_inference()``, whose floor is
the compressed module. All calls take turns (``_timing.interleaved_medians``); the medians
per call and their ratios, measured in this run, are printed as a markdown table.

``--profile`` adds where a call's time goes at one batch size: the cumulative time of each
stage under cProfile, as a share of ``predict_proba``'s (cProfile's own cost per Python call
inflates the Python stages against the torch kernels). Run it alone on the machine, e.g.::

    flock /tmp/torch.lock python benchmarks/bench_predict_latency.py --profile
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats

import numpy as np
import torch
from _args import positive_int
from _timing import interleaved_medians

from rest_fair import RESTClassifier

#: Stages of a call: (label, file name ending, function name) as cProfile names them.
STAGES = (
    ("input checks (`check_x`)", "rest_fair/_inputs.py", "check_x"),
    ("  of which scikit-learn's `validate_data`", "sklearn/utils/validation.py",
     "validate_data"),
    ("batch source (`make_source`)", "rest_fair/_data.py", "make_source"),
    ("`training.predict_logits`", "rest_fair/training/loop.py", "predict_logits"),
    ("  of which mode switches (`Module.train`)", "torch/nn/modules/module.py", "train"),
    ("  of which the network (`Module.__call__`)", "torch/nn/modules/module.py",
     "_wrapped_call_impl"),
    ("softmax (`torch.softmax`)", "~", "<built-in method torch.softmax>"),
)


def _fitted(features: int, rows: int, epochs: int) -> tuple[RESTClassifier, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, features)).astype(np.float32)
    y = (X[:, :3].sum(1) > 0).astype(np.int64)
    clf = RESTClassifier(max_epochs=epochs, device="cpu", random_state=0).fit(X, y)
    return clf, X


def _floor(module: torch.nn.Module, x: torch.Tensor):
    def call() -> None:
        with torch.no_grad():
            module(x)
    return call


def _profile(clf: RESTClassifier, X: np.ndarray, calls: int) -> list[tuple[str, float]]:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        clf.predict_proba(X)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)

    def cumulative(path: str, name: str) -> float:
        return sum(ct for (file, _, func), (_, _, _, ct, _) in stats.items()
                   if func == name and file.replace("\\", "/").endswith(path))

    total = cumulative("rest_fair/estimator.py", "predict_proba")
    return [(label, cumulative(path, name) / total) for label, path, name in STAGES]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=positive_int, default=20)
    parser.add_argument("--rows", type=positive_int, default=2000,
                        help="training rows")
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+",
                        default=[1, 8, 64, 1024])
    parser.add_argument("--repeats", type=positive_int, default=1000)
    parser.add_argument("--warmup", type=positive_int, default=50)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--profile", action="store_true",
                        help="also print each stage's share of a call under cProfile")
    parser.add_argument("--profile-batch", type=positive_int, default=8)
    parser.add_argument("--profile-calls", type=positive_int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clf, X = _fitted(args.features, args.rows, args.epochs)
    sparse_clf = copy.copy(clf).use_sparse_inference()  # clf keeps predicting densely
    models = {"dense module": (clf, clf.module_),
              "use_sparse_inference()": (sparse_clf, sparse_clf.inference_module_)}
    steps = {}
    for model, (est, module) in models.items():
        for n in args.batch_sizes:
            rows = np.ascontiguousarray(X[:n])
            steps[model, n, "predict_proba"] = lambda est=est, rows=rows: est.predict_proba(rows)
            steps[model, n, "floor"] = _floor(module, torch.from_numpy(rows))
    medians = interleaved_medians(steps, repeats=args.repeats, warmup=args.warmup)
    print(f"# predict_proba per call, MLP {clf.module_params or 'default'} on "
          f"{args.features} features, sparsity {clf.sparsity}; torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}; medians of {args.repeats} interleaved calls")
    print("| model | rows | predict_proba (µs) | module call (µs) | ratio | overhead (µs) |")
    print("|---|---|---|---|---|---|")
    for model in models:
        for n in args.batch_sizes:
            call, floor = medians[model, n, "predict_proba"], medians[model, n, "floor"]
            print(f"| {model} | {n} | {call * 1e6:.0f} | {floor * 1e6:.0f} | "
                  f"{call / floor:.1f}x | {(call - floor) * 1e6:.0f} |")
    if args.profile:
        rows = np.ascontiguousarray(X[:args.profile_batch])
        print(f"\n# share of predict_proba's time under cProfile, {args.profile_batch} rows, "
              f"{args.profile_calls} calls")
        print("| stage | dense module | use_sparse_inference() |")
        print("|---|---|---|")
        shares = {model: _profile(est, rows, args.profile_calls)
                  for model, (est, _) in models.items()}
        for i, (label, _, _) in enumerate(STAGES):
            cells = " | ".join(f"{shares[model][i][1]:.0%}" for model in models)
            print(f"| {label} | {cells} |")


if __name__ == "__main__":
    main()
