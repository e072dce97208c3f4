"""Where does sparsity help group robustness? REST vs dense reweighting by network width.

The REST paper's claim is about over-parameterised networks. This sweep trains REST
(reweighting + RigL) at sparsity 0 (= dense reweighting), 0.9, 0.95 and 0.99 on Colored MNIST
(the 5,000 bundled digits, 1 % and 5 % bias-conflicting) for MLPs of widths 3x100, 3x300 and
3x1000, three seeds each, with the ``medium`` preset's recipe (batch 128, SGD lr 0.05, plateau
schedule) and ``--epochs`` epochs. Every width is a resumable ``rest-fair bench`` sweep of its
own (``<out>/w<width>/results.jsonl``), so the study can be run in chunks::

    flock /tmp/torch.lock python benchmarks/bench_width_study.py --time-limit 600   # repeat

When every run is done (or with ``--report``) it writes ``<out>/width_study.md`` (the table)
and ``<out>/width_study.png`` (worst-group accuracy vs sparsity, one panel per ratio, one
line per width).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _args import positive_int

from rest_fair.benchmarks import preset, run_sweep
from rest_fair.benchmarks.report import summarize

WIDTHS = (100, 300, 1000)
SPARSITIES = (0.0, 0.9, 0.95, 0.99)
RATIOS = (0.01, 0.05)
SEEDS = (41, 42, 43)


def _config(width: int, epochs: int):
    return preset("medium", ratios=RATIOS, sparsities=SPARSITIES, seeds=SEEDS,
                  methods=("rest",), max_epochs=epochs,
                  module_params={"hidden_layer_sizes": [width] * 3})


def _table(frames: dict) -> str:
    lines = ["| width | conflicting % | sparsity | unbiased acc (mean ± std) | "
             "worst-group acc (mean ± std) | seeds | s per run |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for width, frame in frames.items():
        for row in frame.itertuples():
            unbiased = (100 * row.test_unbiased_acc_mean, 100 * row.test_unbiased_acc_std)
            worst = (100 * row.test_worst_group_acc_mean, 100 * row.test_worst_group_acc_std)
            lines.append(
                f"| 3×{width} | {row.ratio * 100:g} | {row.sparsity:g} | "
                f"{unbiased[0]:.1f} ± {unbiased[1]:.1f} | {worst[0]:.1f} ± {worst[1]:.1f} | "
                f"{row.n_seeds} | {row.fit_seconds_mean:.0f} |")
    return "\n".join(lines)


def _plot(frames: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RATIOS), figsize=(5 * len(RATIOS), 3.6), sharey=True)
    for ax, ratio in zip(axes, RATIOS, strict=True):
        for width, frame in frames.items():
            rows = frame[frame["ratio"] == ratio].sort_values("sparsity")
            x = [str(s) for s in rows["sparsity"]]
            ax.errorbar(x, 100 * rows["test_worst_group_acc_mean"], yerr=100 * rows[
                "test_worst_group_acc_std"].fillna(0), marker="o", capsize=3, label=f"3×{width}")
        ax.set_title(f"{ratio:.0%} conflicting")
        ax.set_xlabel("sparsity (0 = dense reweighting)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("worst-group test accuracy (%)")
    axes[-1].legend(title="MLP width")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="rest_fair_results/width_study")
    parser.add_argument("--epochs", type=positive_int, default=40)
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    parser.add_argument("--time-limit", type=float, default=None,
                        help="start no new run after this many seconds (resume later)")
    parser.add_argument("--report", action="store_true", help="only write the report")
    args = parser.parse_args(argv)
    out = Path(args.out)
    widths = [int(w) for w in args.widths.split(",")]
    start = time.monotonic()
    frames, complete = {}, True
    for width in widths:
        config = _config(width, args.epochs)
        limit = None if args.time_limit is None else args.time_limit - (time.monotonic() - start)
        if args.report or (limit is not None and limit <= 0):
            from rest_fair.experiments.runner import RESULTS_FILE, read_results

            path = out / f"w{width}" / RESULTS_FILE
            records = read_results(path) if path.exists() else []
        else:
            records = run_sweep(config, out / f"w{width}", time_limit=limit, progress=False)
        n_ok = sum(r.get("status") == "ok" for r in records)
        expected = len(RATIOS) * len(SPARSITIES) * len(SEEDS)
        complete &= n_ok >= expected
        print(f"width 3x{width}: {n_ok}/{expected} runs done")
        if n_ok:
            frames[width] = summarize(records, config)
    if frames and (complete or args.report):
        (out / "width_study.md").write_text(_table(frames) + "\n", encoding="utf-8")
        _plot(frames, out / "width_study.png")
        print(_table(frames))
        print(f"wrote {out / 'width_study.md'} and {out / 'width_study.png'}")


if __name__ == "__main__":
    main()
