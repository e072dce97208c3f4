"""Minority reweighting: how often each training sample is drawn.

REST draws bias-conflicting samples ``lambda`` times more often than bias-aligned ones.
:func:`cell_weights` turns the user's ``upweight`` option into one weight per
``(class, group)`` cell, :func:`sample_weights_for` spreads them over samples, and
:func:`draw_indices` draws an epoch with replacement in proportion to them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from numbers import Real

import numpy as np
import torch

__all__ = [
    "REWEIGHT_MODES",
    "aligned_groups",
    "cell_weights",
    "draw_indices",
    "minority_mask",
    "sample_weights_for",
]

#: How ``upweight`` is applied: by drawing samples (``"sampler"``) or weighting the loss.
REWEIGHT_MODES = ("sampler", "loss")

_BAD_UPWEIGHT = (
    "upweight must be None, 'balanced', a positive number (lambda) or a dict mapping every "
    "group to a non-negative weight; got {!r}."
)
_MISSING_GROUPS = "upweight dict has no weight for groups {}; give one for every group."
_ALL_ZERO = "upweight gives every training sample a weight of 0."


def cell_weights(
    y_codes: np.ndarray,
    group_codes: np.ndarray,
    group_labels: Sequence[Hashable],
    upweight: str | float | Mapping[Hashable, float] | None,
) -> dict[tuple[int, int], float]:
    """Weight of every ``(class code, group code)`` cell present in the data.

    Parameters
    ----------
    y_codes : ndarray of int
        Class index of each sample.
    group_codes : ndarray of int
        Group index of each sample (index into ``group_labels``).
    group_labels : sequence
        The group labels.
    upweight : None, "balanced", float or dict
        - ``None``: every sample weight 1 (no reweighting).
        - ``"balanced"``: each group is drawn equally often overall.
        - float ``lambda``: within each class the most frequent group is the aligned one
          (weight 1); every other group of that class gets ``lambda``.
        - dict ``group label -> weight``: explicit weights per group.

    Returns
    -------
    dict of (int, int) to float
    """
    pairs = np.unique(np.stack([y_codes, group_codes], axis=1), axis=0)
    cells = [(int(c), int(g)) for c, g in pairs]
    if upweight is None:
        return dict.fromkeys(cells, 1.0)
    if isinstance(upweight, str):
        if upweight != "balanced":
            raise ValueError(_BAD_UPWEIGHT.format(upweight))
        group_count = np.bincount(group_codes, minlength=len(group_labels)).astype(np.float64)
        n_present = int((group_count > 0).sum())
        return {(c, g): len(group_codes) / (n_present * group_count[g]) for c, g in cells}
    if isinstance(upweight, Mapping):
        missing = [group_labels[g] for g in sorted({g for _, g in cells})
                   if group_labels[g] not in upweight]
        if missing:
            raise ValueError(_MISSING_GROUPS.format(missing))
        weights = {}
        for c, g in cells:
            w = upweight[group_labels[g]]
            if not isinstance(w, Real) or not np.isfinite(w) or w < 0:
                raise ValueError(_BAD_UPWEIGHT.format(upweight))
            weights[(c, g)] = float(w)
        return weights
    if isinstance(upweight, Real) and not isinstance(upweight, bool):
        lam = float(upweight)
        if not np.isfinite(lam) or lam <= 0:
            raise ValueError(_BAD_UPWEIGHT.format(upweight))
        aligned = aligned_groups(y_codes, group_codes)
        return {(c, g): 1.0 if aligned[c] == g else lam for c, g in cells}
    raise ValueError(_BAD_UPWEIGHT.format(upweight))


def aligned_groups(y_codes: np.ndarray, group_codes: np.ndarray) -> dict[int, int]:
    """The most frequent group of each class (ties: the smallest group code).

    Parameters
    ----------
    y_codes, group_codes : ndarray of int
        Class and group index of each sample.

    Returns
    -------
    dict of int to int
        Class code -> code of its aligned (majority) group.
    """
    table = np.zeros((int(y_codes.max()) + 1, int(group_codes.max()) + 1), dtype=np.int64)
    np.add.at(table, (y_codes, group_codes), 1)
    return {int(c): int(np.argmax(table[c])) for c in np.unique(y_codes)}


def minority_mask(y_codes: np.ndarray, group_codes: np.ndarray) -> np.ndarray:
    """Whether each sample lies outside the aligned group of its class."""
    aligned = aligned_groups(y_codes, group_codes)
    return np.array([aligned[c] != g for c, g in zip(y_codes, group_codes, strict=True)],
                    dtype=bool)


def sample_weights_for(
    y_codes: np.ndarray, group_codes: np.ndarray, weights: Mapping[tuple[int, int], float]
) -> np.ndarray:
    """Per-sample weights from per-cell weights.

    Parameters
    ----------
    y_codes, group_codes : ndarray of int
        Class and group index of each sample.
    weights : mapping of (int, int) to float
        Output of :func:`cell_weights`.

    Returns
    -------
    ndarray of float64
    """
    n_groups = int(group_codes.max()) + 1 if len(group_codes) else 1
    table = np.zeros((int(y_codes.max()) + 1, n_groups))
    for (c, g), w in weights.items():
        table[c, g] = w
    out = table[y_codes, group_codes]
    if not np.any(out > 0):
        raise ValueError(_ALL_ZERO)
    return out


def draw_indices(
    weights: np.ndarray | torch.Tensor, n: int, *, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``n`` sample indices with replacement, in proportion to ``weights``.

    Parameters
    ----------
    weights : array of float, shape (n_samples,)
        Non-negative, not all zero.
    n : int
        Number of draws (the epoch length).
    generator : torch.Generator
        CPU generator.

    Returns
    -------
    LongTensor of shape (n,)
    """
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    return torch.multinomial(w, n, replacement=True, generator=generator)
