"""Tables, plots and the provenance file of a benchmark sweep."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._requirements import import_optional
from .._version import __version__
from ..experiments.run import standard_error
from ..experiments.runner import RESULTS_FILE, read_own_json, set_aside
from .config import BenchConfig
from .data import DATASETS
from .methods import get_method
from .references import COLORED_MNIST_REFERENCE, REFERENCE_NOTE, reference_markdown

__all__ = [
    "METRICS",
    "REPORT_FILES",
    "SELECTION_NOTE",
    "format_pct",
    "library_versions",
    "metric_cell",
    "plot_results",
    "read_config",
    "seed_statistics",
    "set_aside_report",
    "standard_error",
    "summarize",
    "to_markdown",
    "write_outputs",
]

#: Reported metrics: record key -> column title. All are test-set accuracies.
METRICS: dict[str, str] = {
    "test_unbiased_acc": "unbiased acc",
    "test_worst_group_acc": "worst-group acc",
    "test_conflicting_acc": "conflicting acc",
    "test_aligned_acc": "aligned acc",
    "test_worst_cell_acc": "worst cell acc",
}

#: How ``rest-fair bench``'s grid chooses what it reports (named in its table).
SELECTION_NOTE = (
    "Model selection: no hyperparameter search (every run uses the configuration above); "
    "the checkpoint of each run is chosen by validation worst-group accuracy (group labels "
    "`train` or `val`) or by validation accuracy (`none`)."
)

#: What names a run in a record (the other columns of ``summarize`` are averaged).
_LABELS = ("ratio", "method", "method_label", "sparsity", "seed", "group_labels")
#: The measured costs of a run (the FLOPs are counted, see ``_EFFICIENCY_TITLES``).
_COSTS = ("density", "fit_seconds", "model_bytes")
_COST_TITLES = {"fit_seconds": "fit time", "model_bytes": "model file"}
_COST_NOTES = {
    "fit_seconds": "*fit time*: wall time of `fit` in each run's process, mean over seeds "
                   "(runs in parallel, --n-jobs or Dask workers, share the machine's cores).",
    "model_bytes": "*model file*: size of the file `clf.save` writes (active weights, masks "
                   "as bitmaps or indices, header).",
}
_EFFICIENCY_TITLES = {
    "inference_flops_fraction": "inference FLOPs (× dense)",
    "training_flops_fraction": "training FLOPs (× dense)",
}


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a result depends on."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "rest_fair": __version__}
    for dist, key in (("torch", "torch"), ("numpy", "numpy"), ("scikit-learn", "sklearn"),
                      ("pandas", "pandas"), ("joblib", "joblib")):
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = "not installed"
    return versions


def seed_statistics(grouped: Any, metrics: Sequence[str]) -> dict[str, Any]:
    """The number of seeds with a value and the standard error of each of ``metrics``.

    Parameters
    ----------
    grouped : pandas.core.groupby.DataFrameGroupBy
        Run rows grouped by cell; a metric a run lacks is NaN.
    metrics : sequence of str
        Columns of the grouped frame.

    Returns
    -------
    dict
        Summary columns (with its index): ``<metric>_n`` (runs with a value) and
        ``<metric>_se`` (:func:`standard_error` of the std, ddof=1, over those runs).
    """
    out = {}
    for metric in metrics:
        count = grouped[metric].count()
        out[f"{metric}_n"] = count
        out[f"{metric}_se"] = standard_error(grouped[metric].std(), count)
    return out


def metric_cell(row: dict[str, Any], metric: str, n: int) -> str:
    """``row``'s ``metric`` in % as :func:`format_pct` writes it, over the
    ``<metric>_n`` seeds that have it, and followed by ``(n=k)`` when that is fewer than
    the row's ``n``."""
    k = int(row.get(f"{metric}_n", n))
    text = format_pct(row[f"{metric}_mean"], row[f"{metric}_se"], k)
    return text if k >= n or text == "–" else f"{text} (n={k})"


def format_pct(mean: float | None, se: float | None, n: int) -> str:
    """An accuracy in %, as ``"mean ± SE"`` when ``n > 1`` and the SE is known.

    ``"–"`` for a missing mean; the mean alone for one seed.
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if n > 1 and se is not None and not math.isnan(se):
        return f"{100 * mean:.1f} ± {100 * se:.1f}"
    return f"{100 * mean:.1f}"


def summarize(records: Sequence[dict[str, Any]], config: BenchConfig):
    """Mean, standard deviation and standard error over seeds per (ratio, method, sparsity).

    Parameters
    ----------
    records : sequence of dict
        Run records (only ``status == "ok"`` are used).
    config : BenchConfig
        Gives the row order.

    Returns
    -------
    pandas.DataFrame
        One row per cell with ``<metric>_mean``, ``<metric>_std`` (ddof=1; NaN for one
        seed), for the accuracies ``<metric>_n`` and ``<metric>_se``
        (:func:`seed_statistics`), ``n_seeds``, and, when recorded, ``density``,
        ``fit_seconds``, ``model_bytes`` and the efficiency fractions (``_mean``, ``_std``).
    """
    import pandas as pd

    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return pd.DataFrame()
    frame = pd.DataFrame([
        {**{k: r.get(k) for k in (*_LABELS, *_COSTS, "test_min_cell_size", *METRICS)},
         **{f"eff_{k}": v for k, v in (r.get("efficiency") or {}).items()},
         **{f"jtt_{k}": v for k, v in (r.get("jtt_overlap") or {}).items()
            if k in ("precision", "recall")}}
        for r in ok
    ])
    value_columns = [c for c in frame.columns if c not in _LABELS
                     and (c in METRICS or frame[c].notna().any())]
    frame[value_columns] = frame[value_columns].astype(float)
    grouped = frame.groupby(["ratio", "method", "sparsity"], sort=False)
    summary = grouped[value_columns].agg(["mean", "std"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    summary["n_seeds"] = grouped["seed"].nunique()
    for column, values in seed_statistics(grouped, list(METRICS)).items():
        summary[column] = values
    summary["method_label"] = grouped["method_label"].first()
    summary["group_labels"] = grouped["group_labels"].first()
    summary = summary.reset_index()
    order = {m: i for i, m in enumerate(config.methods)}
    summary["_order"] = summary["method"].map(order).fillna(len(order))
    summary = summary.sort_values(["ratio", "_order", "sparsity"]).drop(columns="_order")
    with_reference = DATASETS[config.dataset].reference(config)
    refs = [
        _reference(r.ratio, r.method, r.sparsity) if with_reference else None
        for r in summary.itertuples()
    ]
    summary["published_acc"] = [ref["value"] if ref else np.nan for ref in refs]
    summary["published_source"] = [ref["source"] if ref else "" for ref in refs]
    return summary.reset_index(drop=True)


def _reference(ratio: float, method: str, sparsity: float) -> dict | None:
    if method != "erm" or sparsity != 0:
        return None
    return next((ref for known, ref in COLORED_MNIST_REFERENCE.items()
                 if math.isclose(ratio, known)), None)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: ``header``, its rule, then one line per row."""
    return ["| " + " | ".join(cells) + " |"
            for cells in (header, ["---"] * len(header), *rows)]


def _cell_note(summary) -> str:
    column = "test_min_cell_size_mean"
    if column not in summary.columns or summary[column].isna().all():
        return "small cells"
    return f"at least {int(summary[column].min())} images per cell"


def to_markdown(summary, config: BenchConfig) -> str:
    """The result table as Markdown (accuracies in %, mean ± standard error over the n
    seeds of each row), with notes naming the data, the metrics and the selection rule."""
    eff_cols = [c for c in summary.columns if c.startswith("eff_") and c.endswith("_mean")]
    header = ["conflicting %", "method", "sparsity", "group labels", *METRICS.values()]
    header += [_EFFICIENCY_TITLES.get(c[4:-5], c[4:-5]) for c in eff_cols]
    costs = [c for c in _COST_TITLES if f"{c}_mean" in summary.columns]
    header += [_COST_TITLES[c] for c in costs]
    header += ["n", "published (different protocol)"]
    rows = []
    for row in summary.to_dict("records"):
        n = int(row["n_seeds"])
        dense = _dense_erm(summary, row["ratio"])
        rows.append([
            f"{100 * row['ratio']:g}",
            row["method_label"],
            f"{row['sparsity']:g}",
            row["group_labels"],
            *(metric_cell(row, m, n) for m in METRICS),
            *("–" if math.isnan(row[c]) else f"{row[c]:.3f}" for c in eff_cols),
            *(_cost_cell(c, row, dense) for c in costs),
            str(n),
            "" if math.isnan(row["published_acc"]) else f"{row['published_acc']:.2f} [ref]",
        ])
    data_name = DATASETS[config.dataset].describe(config)
    notes = [
        "",
        f"Data: {data_name}; unbiased test split (colour independent of the label). "
        "Accuracies in % on that test split, mean ± standard error (std / √n) over the "
        f"*n* seeds of each row (of seed{'s' * (len(config.seeds) > 1)} "
        f"{', '.join(map(str, config.seeds))}); a cell over "
        "fewer seeds (runs recorded without that metric) names its own n.",
        SELECTION_NOTE,
        "*unbiased acc*: all test samples; *conflicting acc*: test samples whose bias "
        "attribute (the colour) is not the one their class carries in training; *aligned "
        "acc*: the others; *worst-group acc*: the lower of aligned and conflicting accuracy "
        "(the two groups used in training and selection); *worst cell acc*: the lowest "
        "accuracy over the (class, bias attribute) cells of the test split "
        f"({_cell_note(summary)}, hence noisy).",
        "*group labels*: where a method uses the bias labels (colour/conflict flag): "
        "`train` = in training and for checkpoint selection (worst of aligned/conflicting "
        "validation accuracy), `val` = only for checkpoint selection, `none` = neither "
        "(selection by validation accuracy).",
        f"[ref] {REFERENCE_NOTE} Source: "
        + "; ".join(sorted({str(r['source']) for r in COLORED_MNIST_REFERENCE.values()}))
        + ".",
    ]
    if eff_cols:
        notes.append(
            "*FLOPs (× dense)*: per-sample FLOPs of the trained masks as a fraction of the "
            "dense network (rest_fair.efficiency; training counts RigL's dense gradient per "
            "topology update). Counted, not timed."
        )
    if costs:
        notes.append(" ".join(_COST_NOTES[c] for c in costs) + " In parentheses: the ratio "
                     "to ERM (dense) at the same share of conflicting samples, measured "
                     "in this sweep.")
    return "\n".join(_markdown_table(header, rows) + notes)


def _dense_erm(summary, ratio: float) -> dict | None:
    """The dense ERM row of ``summary`` at ``ratio``, the reference of the cost columns."""
    match = summary[(summary["method"] == "erm") & (summary["sparsity"] == 0)
                    & (summary["ratio"] == ratio)]
    return None if match.empty else match.iloc[0].to_dict()


def _cost_cell(column: str, row: dict, dense: dict | None) -> str:
    """A measured cost (fit seconds or model bytes), with its ratio to the dense ERM row."""
    value = row.get(f"{column}_mean", math.nan)
    if value is None or math.isnan(value):
        return "–"
    if column == "fit_seconds":  # two significant digits below a second, not "0.0 s"
        text = f"{value:.2g} s" if value < 1 else f"{value:.1f} s"
    else:
        text = f"{value / 1024:,.0f} KiB"
    reference = None if dense is None else dense.get(f"{column}_mean")
    if reference and not math.isnan(reference):
        text += f" ({value / reference:.2f}×)"
    return text


def _clipped_err(rows, metric: str) -> np.ndarray:
    """± one standard error in %, clipped to [0, 100] (accuracies cannot leave it)."""
    mean = 100 * rows[f"{metric}_mean"].to_numpy(dtype=float)
    se = 100 * rows[f"{metric}_se"].fillna(0.0).to_numpy(dtype=float)
    return np.vstack([np.minimum(se, mean), np.minimum(se, 100.0 - mean)])


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (an ImportError naming the extra if missing)."""
    matplotlib = import_optional("matplotlib", extra="bench", caller="The benchmark plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, *, layout: bool = True) -> Path:
    """Lay out ``fig`` (unless ``layout`` is false), write it to ``path`` as a PNG and close it."""
    import matplotlib.pyplot as plt

    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(summary, records: Sequence[dict], config: BenchConfig, out_dir: Path) -> list:
    """Accuracy vs. sparsity per ratio, and per-group bars; returns the PNG paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    ratios = sorted(summary["ratio"].unique())
    sparsities = sorted(summary["sparsity"].unique())
    xpos = {s: i for i, s in enumerate(sparsities)}
    panels = (("test_unbiased_acc", "unbiased test acc"),
              ("test_worst_group_acc", "worst-group test acc"))
    data_name = DATASETS[config.dataset].describe(config, short=True)
    fig, axes = plt.subplots(len(panels), len(ratios), figsize=(max(3.6 * len(ratios), 6), 6.2),
                             squeeze=False, sharey="row")
    for j, ratio in enumerate(ratios):
        part = summary[summary["ratio"] == ratio]
        for i, (metric, title) in enumerate(panels):
            ax = axes[i][j]
            for method in config.methods:
                rows = part[part["method"] == method].sort_values("sparsity")
                if rows.empty:
                    continue
                m = get_method(method)
                ax.errorbar(
                    [xpos[s] for s in rows["sparsity"]],
                    100 * rows[f"{metric}_mean"],
                    yerr=_clipped_err(rows, metric),
                    marker="o", capsize=3,
                    label=f"{m.dense_label.split(' (')[0]} / {m.sparse_label}",
                )
            ax.set_xticks(range(len(sparsities)), [f"{s:g}" for s in sparsities])
            ax.set_title(f"{100 * ratio:g} % conflicting")
            ax.set_xlabel("sparsity")
            if j == 0:
                ax.set_ylabel(f"{title} (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{data_name}: test accuracy vs. sparsity (mean ± SE over seeds)",
                 fontsize=10)
    paths = [_save(fig, out_dir / "accuracy_vs_sparsity.png")]

    fig, axes = plt.subplots(1, len(ratios), figsize=(max(4.2 * len(ratios), 6), 4.4),
                             squeeze=False, sharey=True)
    bars = (("test_aligned_acc", "aligned"), ("test_conflicting_acc", "conflicting"),
            ("test_worst_cell_acc", "worst cell"))
    width = 0.8 / len(bars)
    for j, ratio in enumerate(ratios):
        ax = axes[0][j]
        part = summary[summary["ratio"] == ratio].reset_index(drop=True)
        labels = [f"{r.method_label}\ns={r.sparsity:g}" for r in part.itertuples()]
        for k, (metric, name) in enumerate(bars):
            ax.bar(np.arange(len(part)) + (k - 1) * width, 100 * part[f"{metric}_mean"],
                   width, yerr=_clipped_err(part, metric), capsize=2, label=name)
        ax.set_xticks(np.arange(len(part)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{data_name}, {100 * ratio:g} % conflicting", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    return [*paths, _save(fig, out_dir / "group_bars.png")]


#: The keys of every ``config.json`` that :func:`write_outputs` writes, and their types.
_OWN_KEYS = {"config": dict, "config_hash": object, "outputs": list, "versions": object}
#: The names of the files of a report besides ``config.json`` (a grid's or a study's).
REPORT_FILES = ("references.md", "table.md", "table.csv", "configurations.csv",
                "accuracy_vs_sparsity.png", "group_bars.png", "worst_group_vs_sparsity.png",
                "worst_group_vs_cost.png")


def read_config(out_dir: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of ``out_dir`` as :func:`write_outputs` wrote it; None when the
    folder has none.

    Raises
    ------
    FileExistsError
        Naming a ``config.json`` that is not one of ours
        (:func:`~rest_fair.experiments.runner.read_own_json`).
    """
    return read_own_json(Path(out_dir) / "config.json", _OWN_KEYS, "rest-fair bench")


def _listed(out_dir: Path, info: dict[str, Any]) -> list[Path]:
    """The outputs in ``out_dir`` that the ``config.json`` read as ``info`` lists (names of
    files of the folder itself, never the results file)."""
    return [out_dir / name for name in info["outputs"]
            if isinstance(name, str) and Path(name).name == name
            and name not in ("config.json", RESULTS_FILE) and (out_dir / name).exists()]


def set_aside_report(out_dir: str | Path, experiment: Any, *, fresh: bool = False) -> list[Path]:
    """Rename with one date-time suffix (:func:`~rest_fair.experiments.runner.set_aside`)
    the report in ``out_dir`` of settings other than ``experiment``'s (other
    ``common_hash`` or kind of sweep): its ``config.json`` and the outputs that lists, or
    in a folder without a ``config.json`` the files of :data:`REPORT_FILES`; with
    ``fresh``, the report of any settings and the results file. Returns the new paths.

    Raises
    ------
    FileExistsError
        For a ``config.json`` not written by :func:`write_outputs` (:func:`read_config`).
    """
    out_dir = Path(out_dir)
    info = read_config(out_dir)
    if info is None:
        report = [path for path in (out_dir / name for name in REPORT_FILES) if path.is_file()]
    else:
        report = [out_dir / "config.json", *_listed(out_dir, info)]
    if fresh:
        return set_aside([out_dir / RESULTS_FILE, *report])
    if info is not None and (info["config_hash"] == experiment.common_hash()
                             and info["config"].get("search")
                             == experiment.to_dict().get("search")):
        return []
    return set_aside(report)


def _report_folder(out_dir: str | Path, experiment: Any) -> Path:
    """``out_dir``, created, with a report of settings other than ``experiment``'s set
    aside (:func:`set_aside_report`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_aside_report(out_dir, experiment)
    return out_dir


def _write_config(
    out_dir: Path, experiment: Any, records: Sequence[dict[str, Any]],
    run_info: dict[str, Any] | None, outputs: Sequence[Path],
) -> dict[str, list[Path]]:
    """Write ``config.json``: the experiment, its hash, the library versions, the number of
    runs in total and by status, ``run_info``, and the names of the other ``outputs``
    written this time. Returns ``{"files": [its path, *outputs], "kept": [paths]}``.

    Outputs that the previous ``config.json`` (of the same settings) lists and this call
    did not write again (plots now switched off, tables of a summary now empty) are kept,
    renamed with a date-time suffix (``kept``), so that the folder never shows results
    beside a configuration or runs they do not come from. Other files are left alone.
    """
    path = out_dir / "config.json"
    names = sorted(p.name for p in outputs)
    before = read_config(out_dir)
    kept = set_aside([p for p in ([] if before is None else _listed(out_dir, before))
                      if p.name not in names])
    info = {
        "config": experiment.to_dict(),
        "config_hash": experiment.common_hash(),
        "versions": library_versions(),
        "n_runs_in_grid": len(experiment.runs()),
        **{f"n_runs_{status}": sum(r.get("status") == status for r in records)
           for status in ("ok", "error", "failed")},
        "outputs": names,
        **(run_info or {}),
    }
    path.write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    return {"files": [path, *outputs], "kept": kept}


def _write_tables(out_dir: Path, markdown: str, tables: dict[str, Any]) -> list[Path]:
    """Write ``table.md`` and every frame of ``tables`` (file name -> DataFrame) as CSV,
    each number as its shortest exact form (a count above 10**6 keeps every digit)."""
    (out_dir / "table.md").write_text(markdown + "\n")
    for name, frame in tables.items():
        frame.to_csv(out_dir / name, index=False)
    return [out_dir / "table.md", *(out_dir / name for name in tables)]


def write_outputs(
    records: Sequence[dict[str, Any]],
    config: BenchConfig,
    out_dir: str | Path,
    *,
    run_info: dict[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``table.md``, ``table.csv``, ``references.md``, the PNG plots and ``config.json``.

    A report in ``out_dir`` of other settings is kept, renamed (:func:`set_aside_report`),
    as are the outputs of one of these settings that this one does not write (the plots,
    with ``plots=False``).

    Returns
    -------
    dict
        ``{"summary": DataFrame, "markdown": str, "files": [paths], "kept": [paths]}``
        (``kept``: the new names of the outputs kept aside).
    """
    out_dir = _report_folder(out_dir, config)
    files = [out_dir / "references.md"]
    files[0].write_text(reference_markdown() + "\n")
    summary = summarize(records, config)
    markdown = "" if summary.empty else to_markdown(summary, config)
    diverged = [r for r in records if r.get("status") == "failed"]
    if markdown and diverged:  # their cells have fewer seeds, or no row
        markdown += "\n\nDiverged (recorded as an outcome, not in the table): " + "; ".join(
            f"{r.get('method')} at {100 * r.get('ratio', 0):g} % conflicting, sparsity "
            f"{r.get('sparsity'):g}, seed {r.get('seed')}" for r in diverged) + "."
    if not summary.empty:
        files += _write_tables(out_dir, markdown, {"table.csv": summary})
        if plots:
            files += plot_results(summary, records, config, out_dir)
    return {"summary": summary, "markdown": markdown,
            **_write_config(out_dir, config, records, run_info, files)}
