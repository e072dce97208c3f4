"""Which sparse-training defaults to ship: one change at a time on Colored Fashion-MNIST.

REST with the estimator's defaults (drop fraction 0.5 by a cosine to 0, one topology
update per epoch in the middle of the interval, updates until 75 % of training, initial
weights rescaled by ``1/sqrt(density)``) against the same runs with one of them changed, on
the ``scale`` preset's data (Colored Fashion-MNIST, 54,000 / 6,000 / 10,000 images, MLP
3×300, batch 128, learning rate 0.05, λ 30 at 1 % conflicting) at 90 % and 99 % sparsity.
The same seeds for every variant, so the table also gives each variant's difference to the
defaults paired by seed (mean ± standard error over the seeds).

Runs are resumable records of the benchmark runner (one folder per variant under
``--out``); the seeds go outermost, so an interrupted ablation holds whole seeds. Run it
alone on the machine::

    flock /tmp/torch.lock python benchmarks/bench_defaults.py --out /tmp/defaults
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

from _args import non_negative_int, positive_int, sparsity_arg

from rest_fair.benchmarks import preset, read_results, run_sweep
from rest_fair.experiments.runner import RESULTS_FILE

#: The variants: a name and the RESTClassifier parameters it changes.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "drop_fraction=0.3": {"drop_fraction": 0.3},
    "update_interval=1000": {"update_interval": 1000},
    "update_end=1.0": {"update_end": 1.0},
    "update_timing=after_step": {"update_timing": "after_step"},
    "rescale_init=False": {"rescale_init": False},
    "static mask (update_end=0)": {"update_end": 0.0},
}


def _mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{100 * mean:.1f} ± {100 * se:.1f}"


def _table(records: dict[str, list[dict[str, Any]]], sparsities: list[float]) -> str:
    lines = ["| sparsity | variant | n | worst-group acc | Δ vs defaults (paired) "
             "| unbiased acc | valid worst-group | best epochs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for sparsity in sparsities:
        base = {r["seed"]: r for r in records["defaults"] if r["sparsity"] == sparsity}
        for name, runs in records.items():
            runs = sorted((r for r in runs if r["sparsity"] == sparsity), key=lambda r: r["seed"])
            ok = [r for r in runs if r["status"] == "ok"]
            paired = [r["test_worst_group_acc"] - base[r["seed"]]["test_worst_group_acc"]
                      for r in ok if r["seed"] in base and base[r["seed"]]["status"] == "ok"]
            failed = len(runs) - len(ok)
            lines.append(
                f"| {sparsity:g} | {name} | {len(ok)}{f' (+{failed} failed)' if failed else ''} "
                f"| {_mean_se([r['test_worst_group_acc'] for r in ok])} "
                f"| {'-' if name == 'defaults' else _mean_se(paired)} "
                f"| {_mean_se([r['test_unbiased_acc'] for r in ok])} "
                f"| {_mean_se([r['valid_worst_group_acc'] for r in ok])} "
                f"| {', '.join(str(r['best_epoch']) for r in ok)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder of the runs (resumed)")
    parser.add_argument("--sparsities", type=sparsity_arg, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[41, 42, 43])
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--split-sizes", type=int, nargs=3, default=None,
                        help="train, valid and test sizes (default: the full data)")
    parser.add_argument("--data-root", default=None,
                        help="folder of the Fashion-MNIST idx files (default: Debian's)")
    parser.add_argument("--report-only", action="store_true", help="print the table, run nothing")
    args = parser.parse_args(argv)

    def config(name: str, seeds: list[int]):
        return preset("scale", ratios=(args.ratio,), sparsities=tuple(args.sparsities),
                      methods=("rest",), seeds=tuple(seeds), max_epochs=args.epochs,
                      split_sizes=tuple(args.split_sizes) if args.split_sizes else None,
                      data_root=args.data_root, extra_params=dict(VARIANTS[name]))

    if not args.report_only:
        for seed in args.seeds:
            for name in args.variants:
                run_sweep(config(name, [seed]), f"{args.out}/{name}", progress="log")
    records = {name: read_results(f"{args.out}/{name}/{RESULTS_FILE}") for name in args.variants}
    if args.report_only:  # what the stored runs were, not this command line's defaults
        seeds = sorted({r["seed"] for runs in records.values() for r in runs
                        if r.get("status") == "ok"})
        runs = f"the stored runs (seeds {seeds}; their epochs as when they ran)"
    else:
        runs = f"{args.epochs} epochs, seeds {args.seeds}"
    print(f"# bench_defaults: Colored Fashion-MNIST, {100 * args.ratio:g} % conflicting, "
          f"MLP 3x300, {runs}; test accuracies in %, mean ± standard error over the seeds\n")
    table = _table(records, args.sparsities)
    print(table)
    return table


if __name__ == "__main__":
    main()
