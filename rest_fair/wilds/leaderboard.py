"""Our WILDS metrics beside published numbers, with sources and protocol notes.

The published numbers are test accuracies in % as collected in the project's
reference notes. ``verified`` says whether the number was read in the primary
source (``"primary"``) or in a later paper's table that cites it (``"cited"``).
``group_labels`` says how a method uses group labels: ``"none"``, ``"val"``
(validation / model selection only) or ``"train"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PUBLISHED", "PublishedResult", "comparison_table", "to_markdown"]

_IMAGE_PROTOCOL = "ResNet-50, ImageNet-pretrained, fine-tuned"
_TEXT_PROTOCOL = "BERT-family model, pretrained, fine-tuned"
_WILDS_TEXT = "DistilBERT, pretrained, fine-tuned; mean (std) over 5 seeds"
_DFR = "DFR (Kirichenko et al., ICLR 2023), Tab. 2"
_JTT = "JTT (Liu et al., ICML 2021), Tab. 1"
_GDRO = "Group DRO (Sagawa et al., ICLR 2020), cited by JTT/DFR"
_IDRISSI = "Idrissi et al., CLeaR 2022"
_WILDS15 = "WILDS (Koh et al., ICML 2021), Tab. 15"
_UNKNOWN = "No published numbers for {!r}; known: {}."
_NO_RUNS = "results is an empty sequence; give one result dict per seed."


@dataclass(frozen=True)
class PublishedResult:
    """One published result."""

    dataset: str
    method: str
    group_labels: str
    worst_group_acc: float | None
    average_acc: float | None
    source: str
    verified: str
    protocol: str


def _rows() -> list[PublishedResult]:
    table = [
        # method, groups, Waterbirds (wga, avg), CelebA (wga, avg), CivilComments wga, source
        ("ERM", "none", (74.9, 98.1), (46.9, 95.3), 55.6, f"{_DFR} (ERM row)"),
        ("JTT", "val", (86.7, 93.3), (81.1, 88.0), 69.3, _JTT),
        ("Group DRO", "train", (91.4, 93.5), (88.9, 92.9), 69.9, _GDRO),
        ("Reweight groups (RWG)", "train", (87.6, None), (84.3, None), 72.0, _IDRISSI),
        ("Subsample groups (SUBG)", "train", (89.1, None), (85.6, None), None,
         f"{_IDRISSI}, cited by DFR"),
        ("DFR", "val (trains on val)", (92.9, 94.2), (88.3, 91.3), 70.1, _DFR),
    ]
    rows = []
    for method, groups, water, celeba, civil, source in table:
        rows.append(PublishedResult("waterbirds", method, groups, water[0], water[1], source,
                                    "cited", _IMAGE_PROTOCOL + "; avg = adj_acc_avg"))
        rows.append(PublishedResult("celebA", method, groups, celeba[0], celeba[1], source,
                                    "cited", _IMAGE_PROTOCOL))
        if civil is not None:
            rows.append(PublishedResult("civilcomments", method, groups, civil, None, source,
                                        "cited", _TEXT_PROTOCOL))
    wilds_civil = [
        ("ERM", "none", 92.2, 56.0),
        ("Reweighted (label)", "train", 89.8, 69.2),
        ("Group DRO (label)", "train", 90.2, 69.1),
        ("Reweighted (label x Black)", "train", 89.2, 66.2),
        ("IRM (label x Black)", "train", 88.8, 66.3),
        ("Group DRO (label x Black)", "train", 89.9, 70.0),
    ]
    for method, groups, avg, wga in wilds_civil:
        rows.append(PublishedResult("civilcomments", f"{method} [WILDS]", groups, wga, avg,
                                    _WILDS15, "primary", _WILDS_TEXT))
    return rows


#: All published rows (test accuracy in %).
PUBLISHED: tuple[PublishedResult, ...] = tuple(_rows())


def comparison_table(
    dataset: str | Any,
    results: Mapping[str, float] | Sequence[Mapping[str, float]],
    *,
    protocol: str,
    method: str = "REST (rest_fair)",
    group_labels: str = "train",
) -> pd.DataFrame:
    """Our test metrics beside the published ones for ``dataset``.

    Parameters
    ----------
    dataset : str or WILDSDataset
        ``"waterbirds"``, ``"celebA"`` or ``"civilcomments"``.
    results : dict or sequence of dict
        Our test-split result of :func:`rest_fair.wilds.wilds_eval` (fractions), or one
        per seed: our row then shows their mean, and the columns
        ``worst_group_acc_std``, ``average_acc_std`` (sample standard deviation,
        ``ddof=1``, as WILDS' ``examples/evaluate.py`` computes it) and ``n_seeds`` are
        added (empty for the published rows).
    protocol : str
        How our number was obtained (backbone, pretraining, epochs, input size,
        sparsity), shown in the ``protocol`` column beside the published protocols.
    method : str, default="REST (rest_fair)"
        Name of our row.
    group_labels : str, default="train"
        How our run used group labels (``"none"``, ``"val"``, ``"train"``).

    Returns
    -------
    pandas.DataFrame
        Columns ``method, group_labels, worst_group_acc, average_acc, source,
        verified, protocol``; accuracies in %. Our row comes first. ``average_acc``
        is ``adj_acc_avg`` for Waterbirds and ``acc_avg`` otherwise.
    """
    name = str(getattr(dataset, "dataset_name", dataset))
    published = [r for r in PUBLISHED if r.dataset.lower() == name.lower()]
    if not published:
        known = sorted({r.dataset for r in PUBLISHED})
        raise ValueError(_UNKNOWN.format(name, known))
    runs = [results] if isinstance(results, Mapping) else list(results)
    if not runs:
        raise ValueError(_NO_RUNS)
    worst = [_percent(r.get("acc_wg")) for r in runs]
    average = [_percent(r.get("adj_acc_avg", r.get("acc_avg"))) for r in runs]
    ours = PublishedResult(published[0].dataset, method, group_labels, _mean(worst),
                           _mean(average), "this run (rest_fair.wilds.wilds_eval)", "measured",
                           protocol)
    frame = pd.DataFrame([asdict(r) for r in [ours, *published]]).drop(columns="dataset")
    if isinstance(results, Mapping):
        return frame
    n = len(frame)
    frame.insert(3, "worst_group_acc_std", [_std(worst)] + [np.nan] * (n - 1))
    frame.insert(5, "average_acc_std", [_std(average)] + [np.nan] * (n - 1))
    frame.insert(6, "n_seeds", pd.array([len(runs)] + [None] * (n - 1), dtype="Int64"))
    return frame


def _mean(values: list[float | None]) -> float | None:
    """The mean; None when a value is missing."""
    return float(np.mean(values)) if values and None not in values else None


def _std(values: list[float | None]) -> float:
    """The sample standard deviation (ddof=1); NaN for fewer than two values or a missing one."""
    return float(np.std(values, ddof=1)) if len(values) > 1 and None not in values else np.nan


def to_markdown(frame: pd.DataFrame, *, digits: int = 1) -> str:
    """Render a comparison table as a Markdown table (no extra dependency).

    A column ``<name>_std`` is merged into ``<name>``: cells read ``mean ± std`` where
    the standard deviation is known.
    """
    columns = [c for c in frame.columns if not (c.endswith("_std") and c[:-4] in frame)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            std = row.get(f"{column}_std")
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                cells.append("–")
            elif isinstance(value, (float, np.floating)):
                known_std = std is not None and not pd.isna(std)
                cells.append(f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if known_std else ""))
            else:
                cells.append(str(value).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * float(value)
