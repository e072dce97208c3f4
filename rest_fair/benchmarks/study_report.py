"""The equal-budget study's selection, tables and robustness–cost plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import DATASETS
from .report import (
    _clipped_err,
    _markdown_table,
    _pyplot,
    _report_folder,
    _save,
    _write_config,
    _write_tables,
    metric_cell,
    seed_statistics,
)
from .study import SELECTION_RULES, STUDY_METHODS, RandomSearch

__all__ = [
    "STUDY_METRICS",
    "plot_study",
    "select",
    "study_markdown",
    "summarize_configurations",
    "write_study_outputs",
]

#: Test accuracies reported for the chosen configurations: record key -> column title.
STUDY_METRICS: dict[str, str] = {
    "test_worst_group_acc": "worst-group acc",
    "test_unbiased_acc": "unbiased acc",
    "test_conflicting_acc": "conflicting acc",
    "test_aligned_acc": "aligned acc",
}
_VALID = ("valid_worst_group_acc", "valid_worst_class_acc", "valid_acc")
_COST = ("training_flops", "fit_seconds", "params_active", "inference_flops", "density")
_SHORT = {"lr": "lr", "weight_decay": "wd", "max_epochs": "epochs", "upweight": "λ",
          "drop_fraction": "drop", "update_interval": "ΔT", "groupdro_eta": "η",
          "jtt_epochs": "JTT epochs"}


def summarize_configurations(records: Sequence[dict[str, Any]], search: RandomSearch):
    """Every configuration's means over its seeds.

    Parameters
    ----------
    records : sequence of dict
        Run records of the study: the ``"ok"`` runs give the numbers, the ``"failed"``
        ones (training diverged) are counted.
    search : RandomSearch
        Gives the order of the methods and their drawn parameters.

    Returns
    -------
    pandas.DataFrame
        One row per (ratio, method, config) with ``n`` (seeds finished), ``n_failed`` (seeds
        whose training diverged), ``score_mean`` (the method's selection score),
        ``<key>_mean`` and ``<key>_std`` (ddof=1) for the validation and test accuracies and
        the costs, ``<metric>_n`` and ``<metric>_se`` for the test accuracies
        (:func:`~rest_fair.benchmarks.report.seed_statistics`), the label, group-label use,
        rule, the drawn ``hyperparameters`` and ``hidden_layer_sizes``.
    """
    import pandas as pd

    order = {name: i for i, name in enumerate(search.methods)}
    kept = [r for r in records if r.get("status") in ("ok", "failed")
            and r.get("method") in order]
    if not kept:
        return pd.DataFrame()
    values = ["score", *_VALID, *STUDY_METRICS, *_COST]
    frame = pd.DataFrame([
        {**{k: r.get(k) for k in ("ratio", "method", "config", "seed", *values[1:])},
         "score": r.get(STUDY_METHODS[r["method"]].rule.key),
         "ok": r["status"] == "ok", "failed": r["status"] == "failed"}
        for r in kept
    ])
    frame[values] = frame[values].astype(float)
    frame.loc[~frame["ok"], values] = np.nan
    grouped = frame.groupby(["ratio", "method", "config"], sort=False)
    summary = grouped[values].agg(["mean", "std"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    summary["n"] = grouped["ok"].sum().astype(int)
    summary["n_failed"] = grouped["failed"].sum().astype(int)
    for column, values in seed_statistics(grouped, list(STUDY_METRICS)).items():
        summary[column] = values
    summary = summary.reset_index()
    widths = {(r["ratio"], r["method"], r["config"]): r.get("hidden_layer_sizes")
              for r in kept if r["status"] == "ok"}
    keys = list(zip(summary["ratio"], summary["method"], summary["config"], strict=True))
    methods = [STUDY_METHODS[k[1]] for k in keys]
    for attribute in ("label", "group_labels", "selection", "sparsity", "cost_of"):
        summary[attribute] = [getattr(m, attribute) for m in methods]
    summary["hyperparameters"] = [search.searched_params(k[1], int(k[2]), k[0]) for k in keys]
    summary["hidden_layer_sizes"] = [widths.get(k) for k in keys]
    summary["_order"] = summary["method"].map(order)
    summary = summary.sort_values(["ratio", "_order", "config"]).drop(columns="_order")
    return summary.reset_index(drop=True)


def select(configurations):
    """The chosen configuration per (ratio, method).

    A configuration with a diverged run (``n_failed > 0``) is not eligible. Among the
    others with the most finished seeds, the one with the highest mean selection score is
    chosen, ties going to the lowest index. A method without an eligible configuration has
    no row.

    Parameters
    ----------
    configurations : pandas.DataFrame
        :func:`summarize_configurations`'s output.

    Returns
    -------
    pandas.DataFrame
        The chosen rows, with ``n_configs`` (configurations compared) added.
    """
    import pandas as pd

    if configurations.empty:
        return configurations
    chosen = []
    for _, part in configurations.groupby(["ratio", "method"], sort=False):
        eligible = part[(part["n_failed"] == 0) & (part["n"] > 0)]
        if eligible.empty:
            continue
        eligible = eligible[eligible["n"] == eligible["n"].max()]
        eligible = eligible.sort_values(["score_mean", "config"], ascending=[False, True],
                                        na_position="last")
        row = eligible.iloc[0].copy()
        row["n_configs"] = len(eligible)
        chosen.append(row)
    return pd.DataFrame(chosen).reset_index(drop=True)


def _hyperparameters(values: dict[str, Any]) -> str:
    texts = {name: f"{v:.3g}" if isinstance(v, float) else str(v) for name, v in values.items()}
    return ", ".join(f"{_SHORT.get(name, name)}={text}" for name, text in texts.items())


def _number(value: float | None, spec: str) -> str:
    """``value`` in the format ``spec`` (``"s"``: seconds, ``.2g`` below 1, ``.1f`` below
    10, else ``.0f``); "–" when missing."""
    if value is None or math.isnan(value):
        return "–"
    if spec == "s":
        spec = ".2g" if value < 1 else ".1f" if value < 10 else ".0f"
    return format(value, spec)


def study_markdown(chosen, search: RandomSearch, configurations=None) -> str:
    """The table of the chosen configurations as Markdown, with notes naming the data, the
    protocol and which rule chose what (and, given ``configurations``, the configurations
    that diverged)."""
    header = ["conflicting %", "method", "sparsity", "group labels", "chosen by", "config",
              "validation score", *STUDY_METRICS.values(), "n", "active weights",
              "training FLOPs", "fit s", "chosen hyperparameters"]
    rows = []
    for row in chosen.to_dict("records"):
        n = int(row["n"])
        widths = row.get("hidden_layer_sizes")
        hyper = dict(row["hyperparameters"])
        if STUDY_METHODS[row["method"]].cost_of is not None and widths:
            hyper["width"] = widths[0]
        rows.append([
            f"{100 * row['ratio']:g}",
            row["label"],
            f"{row['sparsity']:g}",
            row["group_labels"],
            SELECTION_RULES[row["selection"]].words.replace("validation ", "val. "),
            f"{int(row['config'])} of {int(row['n_configs'])}",
            f"{100 * row['score_mean']:.1f}",
            *(metric_cell(row, m, n) for m in STUDY_METRICS),
            str(n),
            _number(row["params_active_mean"], ",.0f"),
            _number(row["training_flops_mean"], ".2e"),
            _number(row["fit_seconds_mean"], "s"),
            _hyperparameters(hyper),
        ])
    bench = search.bench
    data = DATASETS[bench.dataset].describe(bench)
    rules = {}
    for name in search.methods:
        m = STUDY_METHODS[name]
        rules.setdefault(m.rule.words, []).append(m.label)
    chosen_by = "; ".join(f"by {words}: {', '.join(labels)}" for words, labels in rules.items())
    notes = [
        "",
        f"Data: {data}; unbiased validation and test splits. Equal-budget random search "
        f"(SubpopBench protocol): every method trained {search.budget} configurations drawn "
        f"from its search space (search seed {search.search_seed}), each with seeds "
        f"{', '.join(map(str, bench.seeds))}; epoch budget {bench.max_epochs}, batch "
        f"{bench.batch_size}.",
        "Selection: per method and share, the configuration with the best mean validation "
        "score over its seeds (*validation score*, %), among the configurations with the "
        "most finished seeds (*config*: chosen index of those compared); the checkpoint of "
        f"every run is chosen by the same score. Chosen {chosen_by}. Worst-group: the lower "
        "of aligned and conflicting accuracy; worst-class: the lowest accuracy over the "
        "classes (no bias label used).",
        "Test accuracies (%) of the chosen configuration: mean ± standard error (std / √n) "
        "over its *n* seeds (a cell over fewer, whose other runs lack that metric, names "
        "its own n). *active weights*: parameters of the trained network "
        "(biases included); *training FLOPs*: the whole run (rest_fair.efficiency, RigL's "
        "counting, JTT's identification model included); *fit s*: measured wall time of "
        "`fit`.",
    ]
    if configurations is not None and not configurations.empty:
        diverged = configurations[configurations["n_failed"] > 0]
        if not diverged.empty:
            notes.append(
                "Training diverged (not eligible): "
                + "; ".join(f"{r.label} at {100 * r.ratio:g} %, configuration {r.config} "
                            f"({r.n_failed} of {r.n + r.n_failed} seeds)"
                            for r in diverged.itertuples()) + "."
            )
    return "\n".join(_markdown_table(header, rows) + notes)


def _pareto(costs: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points no cheaper point beats: the robustness–cost frontier, by cost."""
    order = np.argsort(costs, kind="stable")
    costs, scores = costs[order], scores[order]
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], scores[:-1]]))
    keep = scores > best_before
    return costs[keep], scores[keep]


def _styles(plt: Any, methods: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """A colour per plot series (a method outside any series is its own) and a marker per
    :attr:`~rest_fair.benchmarks.StudyMethod.plot_sparsity`."""
    rows = {name: STUDY_METHODS[name] for name in methods}
    keys = list(dict.fromkeys(m.series or name for name, m in rows.items()))
    levels = sorted({m.plot_sparsity for m in rows.values()})
    colors = {name: plt.cm.tab10(keys.index(m.series or name) % 10) for name, m in rows.items()}
    markers = {name: "osD^v<>p"[levels.index(m.plot_sparsity) % 8] for name, m in rows.items()}
    return colors, markers


def plot_study(chosen, search: RandomSearch, out_dir: str | Path) -> list[Path]:
    """Worst-group test accuracy of the chosen configurations against sparsity and against
    training cost (FLOPs and fit wall time); returns the PNG paths.

    ``worst_group_vs_sparsity.png``: each series of :data:`STUDY_METHODS` as a line (the
    equal-cost rows at the sparsity whose cost they match), from dense reweighting at
    sparsity 0 when it was run; rows on their own as horizontal lines.
    ``worst_group_vs_cost.png``: every chosen row against training FLOPs and fit seconds
    (log scales), with the frontier of the rows no cheaper row beats. Bars: ± one SE.
    """
    plt = _pyplot()
    from matplotlib import ticker

    out_dir = Path(out_dir)
    ratios = sorted(chosen["ratio"].unique())
    colors, markers = _styles(plt, search.methods)
    metric = "test_worst_group_acc"
    title = DATASETS[search.bench.dataset].describe(search.bench, short=True)

    fig, axes = plt.subplots(1, len(ratios), figsize=(max(5.0 * len(ratios), 6), 4.4),
                             squeeze=False, sharey=True)
    for j, ratio in enumerate(ratios):
        ax = axes[0][j]
        part = chosen[chosen["ratio"] == ratio]
        x_of = {name: STUDY_METHODS[name].plot_sparsity for name in part["method"]}
        xpos = {x: i for i, x in enumerate(sorted({0.0, *x_of.values()}))}
        series: dict[str, list[str]] = {}
        dense: dict[str, str] = {}  # family -> its dense row drawn alone, where a series starts
        for name in part["method"]:
            m = STUDY_METHODS[name]
            if m.series:
                series.setdefault(m.series, []).append(name)
            elif m.sparsity == 0 and m.cost_of is None:
                dense.setdefault(m.family, name)
        for k, (label, names) in enumerate(series.items()):
            start = dense.get(STUDY_METHODS[names[0]].family)
            rows = part[part["method"].isin([*names, *([start] if start else [])])]
            rows = rows.assign(x=[xpos[x_of[n]] for n in rows["method"]]).sort_values("x")
            ax.errorbar(rows["x"], 100 * rows[f"{metric}_mean"], yerr=_clipped_err(rows, metric),
                        marker="os^v"[k % 4], markersize=7, capsize=3, linewidth=2,
                        color=colors[names[0]], label=label)
        alone = part[[not STUDY_METHODS[n].series for n in part["method"]]]
        for row in alone.itertuples():
            value = 100 * getattr(row, f"{metric}_mean")
            ax.axhline(value, linestyle="--", linewidth=1, color=colors[row.method],
                       label=row.label)
        ax.set_xticks(range(len(xpos)), [f"{x:g}" for x in xpos])
        ax.set_xlabel("sparsity (equal-cost rows: the sparsity whose cost they match)")
        ax.set_title(f"{title}, {100 * ratio:g} % conflicting", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("worst-group test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Chosen configurations (equal-budget random search), mean ± SE over seeds",
                 fontsize=10)
    paths = [_save(fig, out_dir / "worst_group_vs_sparsity.png")]

    costs = (("training_flops_mean", "training FLOPs of the run"),
             ("fit_seconds_mean", "fit wall time (s)"))
    fig, axes = plt.subplots(len(ratios), len(costs), figsize=(14, 4.2 * len(ratios)),
                             squeeze=False)
    for i, ratio in enumerate(ratios):
        part = chosen[chosen["ratio"] == ratio].reset_index(drop=True)
        for j, (column, xlabel) in enumerate(costs):
            ax = axes[i][j]
            x = part[column].to_numpy(dtype=float)
            y = 100 * part[f"{metric}_mean"].to_numpy(dtype=float)
            errors = _clipped_err(part, metric)
            for k, row in enumerate(part.itertuples()):
                ax.errorbar([x[k]], [y[k]], yerr=errors[:, [k]], marker=markers[row.method],
                            markersize=7, capsize=3, linestyle="none",
                            color=colors[row.method], label=row.label)
            valid = np.isfinite(x) & (x > 0) & np.isfinite(y)
            if valid.any():
                fx, fy = _pareto(x[valid], y[valid])
                ax.step(fx, fy, where="post", color="grey", linewidth=1, label="frontier")
                ax.set_xscale("log")
                if column == "fit_seconds_mean":
                    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel(xlabel)
            ax.set_ylabel("worst-group test accuracy (%)")
            ax.set_title(f"{title}, {100 * ratio:g} % conflicting", fontsize=9)
            ax.grid(alpha=0.3)
    fig.suptitle("Robustness–cost frontier of the chosen configurations, mean ± SE over seeds",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center left",
               bbox_to_anchor=(0.74, 0.5), fontsize=8, frameon=False)
    return [*paths, _save(fig, out_dir / "worst_group_vs_cost.png", layout=False)]


def write_study_outputs(
    records: Sequence[dict[str, Any]],
    search: RandomSearch,
    out_dir: str | Path,
    *,
    run_info: dict[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``table.md`` and ``table.csv`` (the chosen configurations),
    ``configurations.csv`` (every configuration), ``config.json`` and the two plots; a
    report kept aside as :func:`~rest_fair.benchmarks.report.write_outputs` keeps one.

    Returns
    -------
    dict
        ``{"summary": chosen DataFrame, "configurations": DataFrame, "markdown": str,
        "files": [paths], "kept": [paths]}`` (``kept``: the new names of the outputs kept
        aside).
    """
    out_dir = _report_folder(out_dir, search)
    configurations = summarize_configurations(records, search)
    chosen = select(configurations)
    markdown = "" if chosen.empty else study_markdown(chosen, search, configurations)
    files: list[Path] = []
    if not chosen.empty:
        files += _write_tables(out_dir, markdown, {
            name: frame.assign(hyperparameters=frame["hyperparameters"].map(json.dumps))
            for name, frame in (("table.csv", chosen), ("configurations.csv", configurations))
        })
        if plots:
            files += plot_study(chosen, search, out_dir)
    return {"summary": chosen, "configurations": configurations, "markdown": markdown,
            **_write_config(out_dir, search, records, run_info, files)}
