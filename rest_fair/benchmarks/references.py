"""Published reference numbers shown beside our results (from the project's anchors notes).

These come from other protocols (full 60k MNIST with an MLP, or ResNet-18 on the DFA
releases), so they are context, not a like-for-like comparison: every table that prints
them says so.
"""

from __future__ import annotations

__all__ = ["COLORED_MNIST_REFERENCE", "DEBIASING_REFERENCES", "REFERENCE_NOTE"]

#: Footnote of the benchmark tables for the published reference numbers.
REFERENCE_NOTE = (
    "Published number from a different protocol (DFA: the full 60k-image Colored MNIST "
    "release, MLP 3x100, the authors' training recipe), shown for context only."
)

#: Vanilla (ERM) unbiased test accuracy (%) on the DFA Colored MNIST release, MLP.
#: Source: DFA (Lee et al., NeurIPS 2021), as cited in FairKL's Table 4.
COLORED_MNIST_REFERENCE: dict[float, dict[str, object]] = {
    0.005: {"method": "Vanilla (ERM)", "value": 35.19,
            "source": "DFA (Lee et al., NeurIPS 2021) via FairKL Tab. 4"},
    0.05: {"method": "Vanilla (ERM)", "value": 82.17,
           "source": "DFA (Lee et al., NeurIPS 2021) via FairKL Tab. 4"},
}

#: Unbiased test accuracy (%) on Corrupted CIFAR-10 (0.5/1/2/5 %) and BFFHQ (0.5 %),
#: ResNet-18 from scratch, DFA protocol; "bias labels" = uses bias labels in training.
DEBIASING_REFERENCES: list[dict[str, object]] = [
    {"method": "Vanilla (ERM)", "bias labels": "no",
     "cifar10c": (23.08, 25.82, 30.06, 39.42), "bffhq": 56.87},
    {"method": "LfF", "bias labels": "no",
     "cifar10c": (28.57, 33.07, 39.91, 50.27), "bffhq": 62.2},
    {"method": "DFA", "bias labels": "no",
     "cifar10c": (29.95, 36.49, 41.78, 51.13), "bffhq": 63.87},
    {"method": "EnD", "bias labels": "yes",
     "cifar10c": (19.38, 23.12, 34.07, 36.57), "bffhq": 56.87},
]
DEBIASING_SOURCE = "DFA (Lee et al., NeurIPS 2021) as reported in FairKL Table 4"


def reference_markdown() -> str:
    """The separate reference table (Corrupted CIFAR-10, BFFHQ) as Markdown."""
    lines = [
        "Published reference numbers (unbiased test accuracy, %; ResNet-18 from scratch on the "
        "DFA releases; **different data sets and protocol**, not comparable with the table "
        f"above). Source: {DEBIASING_SOURCE}.",
        "",
        "| method | bias labels in training | Corrupted CIFAR-10 0.5 / 1 / 2 / 5 % | BFFHQ 0.5 % |",
        "| --- | --- | --- | --- |",
    ]
    for row in DEBIASING_REFERENCES:
        cifar = " / ".join(f"{v:.2f}" for v in row["cifar10c"])  # type: ignore[union-attr]
        lines.append(f"| {row['method']} | {row['bias labels']} | {cifar} | {row['bffhq']} |")
    low, high = (COLORED_MNIST_REFERENCE[share]["value"] for share in (0.005, 0.05))
    lines += [
        "",
        f"Colored MNIST, Vanilla (ERM), MLP 3x100 on the full DFA release: {low} at 0.5 % and "
        f"{high} at 5 % conflicting (same source; different protocol: 60k digits, MLP).",
    ]
    return "\n".join(lines)
