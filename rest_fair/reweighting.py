"""Minority reweighting: how often each training sample is drawn.

:func:`cell_weights` turns ``upweight`` into one weight per ``(class, group)`` cell,
:func:`sample_weights_for` spreads them over samples, and :func:`draw_indices` draws an
epoch with replacement in proportion to them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from numbers import Real

import numpy as np
import torch

from ._validation import Interval, summable_weights

__all__ = [
    "REWEIGHT_MODES",
    "aligned_groups",
    "cell_weights",
    "draw_indices",
    "group_key",
    "minority_mask",
    "sample_weights_for",
]

#: How ``upweight`` is applied: by drawing samples (``"sampler"``) or weighting the loss.
REWEIGHT_MODES = ("sampler", "loss")

_BAD_UPWEIGHT = (
    "upweight must be None, 'balanced', a positive number (lambda) or a dict mapping every "
    "group to a non-negative weight; got {!r}."
)
#: A weight of an ``upweight`` dict: any real number (a ``fractions.Fraction`` too) >= 0.
_DICT_WEIGHT = Interval(Real, 0, float("inf"), "left")
_MISSING_GROUPS = "upweight dict has no weight for groups {}; give one for every group."
#: The most categories :func:`torch.multinomial` draws from.
_MULTINOMIAL_MAX = 2**24
_ALL_ZERO = "upweight gives every training sample a weight of 0."
_UNBALANCEABLE = (
    "upweight='balanced' cannot weigh these groups: their summed sample_weight differ by a "
    "factor float64 cannot hold, so the weight of the lightest overflows. Give sample_weight "
    "a narrower range."
)


def group_key(keys: Iterable[Hashable], label: Hashable) -> Hashable | None:
    """The key of ``keys`` (a dict's or a set's) that names the group ``label``:
    ``label`` itself, else a key equal to it of a type that hashes it otherwise (a
    ``pandas.Timestamp`` of nanoseconds for the ``np.datetime64`` one); None without one.
    """
    if label in keys:
        return label
    for key in keys:
        with contextlib.suppress(TypeError, ValueError):  # a comparison the types refuse
            if key == label:
                return key
    return None


def cell_weights(
    y_codes: np.ndarray,
    group_codes: np.ndarray,
    group_labels: Sequence[Hashable],
    upweight: str | float | Mapping[Hashable, float] | None,
    sample_weight: np.ndarray | None = None,
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
    sample_weight : ndarray of float, optional
        Non-negative weight of each sample (``None``: 1). A cell's size is then the sum of
        its samples' weights, as ``compute_class_weight("balanced", sample_weight=...)``
        counts classes: a sample of weight ``k`` counts as ``k`` copies (0: absent).

    Returns
    -------
    dict of (int, int) to float

    Raises
    ------
    ValueError
        On an invalid ``upweight``, a dict without a weight for a present group, or
        ``"balanced"`` weights that overflow (group sizes too far apart for float64).
    """
    if (sample_weight is not None and len(sample_weight)
            and sample_weight.min() == sample_weight.max() > 0):
        sample_weight = None  # equal weights count as the samples themselves, bit for bit
    if sample_weight is not None:  # the sizes' ratios are what counts
        sample_weight = summable_weights(sample_weight)
    classes, groups, sizes, _ = _cells(y_codes, group_codes, sample_weight)
    present = sizes > 0
    classes, groups, sizes = classes[present], groups[present], sizes[present]
    cells = [(int(c), int(g)) for c, g in zip(classes, groups, strict=True)]
    if upweight is None:
        return dict.fromkeys(cells, 1.0)
    if isinstance(upweight, str):
        if upweight != "balanced":
            raise ValueError(_BAD_UPWEIGHT.format(upweight))
        group_size = np.bincount(groups, weights=sizes, minlength=len(group_labels))
        n_present = int((group_size > 0).sum())
        total = group_size.sum()  # one group weighs exactly 1
        with np.errstate(over="ignore"):
            weights = {(c, g): total / (n_present * group_size[g]) for c, g in cells}
        if not all(np.isfinite(w) for w in weights.values()):
            raise ValueError(_UNBALANCEABLE)
        return weights
    if isinstance(upweight, Mapping):
        keys = {g: group_key(upweight, group_labels[g]) for g in sorted({g for _, g in cells})}
        if missing := [group_labels[g] for g, key in keys.items() if key is None]:
            raise ValueError(_MISSING_GROUPS.format(missing))
        weights = {}
        for c, g in cells:
            w = upweight[keys[g]]
            if not _DICT_WEIGHT.accepts(w):
                raise ValueError(_BAD_UPWEIGHT.format(upweight))
            weights[(c, g)] = float(w)
        return weights
    if isinstance(upweight, Real) and not isinstance(upweight, bool):
        lam = float(upweight)
        if not np.isfinite(lam) or lam <= 0:
            raise ValueError(_BAD_UPWEIGHT.format(upweight))
        aligned = _aligned(classes, groups, sizes)
        return {(c, g): 1.0 if aligned[c] == g else lam for c, g in cells}
    raise ValueError(_BAD_UPWEIGHT.format(upweight))


def _cells(y_codes: np.ndarray, group_codes: np.ndarray, sample_weight: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct ``(class, group)`` cells of the samples, in memory and time that grow
    with the number of samples only.

    Returns
    -------
    classes, groups : ndarray of int64
        Class and group code of each cell, sorted by class, then group.
    counts : ndarray of int64, or of float64 with ``sample_weight``
        Samples in each cell, or the sum of their ``sample_weight``.
    inverse : ndarray of int64
        Cell of each sample.
    """
    y_codes = np.asarray(y_codes, dtype=np.int64).ravel()
    group_codes = np.asarray(group_codes, dtype=np.int64).ravel()
    width = int(group_codes.max()) + 1 if len(group_codes) else 1
    keys, inverse, counts = np.unique(y_codes * width + group_codes, return_inverse=True,
                                      return_counts=True)
    inverse = inverse.ravel()
    if sample_weight is not None:
        counts = np.bincount(inverse, weights=sample_weight, minlength=len(keys))
    return keys // width, keys % width, counts, inverse


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
    classes, groups, counts, _ = _cells(y_codes, group_codes)
    return _aligned(classes, groups, counts)


def _aligned(classes: np.ndarray, groups: np.ndarray, counts: np.ndarray) -> dict[int, int]:
    """:func:`aligned_groups` from the cells :func:`_cells` returns."""
    # within each class, the largest count first and among equal counts the smallest group
    order = np.lexsort((groups, -counts, classes))
    first = np.ones(len(order), dtype=bool)
    first[1:] = classes[order][1:] != classes[order][:-1]
    return {int(c): int(g) for c, g in zip(classes[order][first], groups[order][first],
                                            strict=True)}


def minority_mask(y_codes: np.ndarray, group_codes: np.ndarray) -> np.ndarray:
    """Whether each sample lies outside the aligned group of its class."""
    classes, groups, counts, inverse = _cells(y_codes, group_codes)
    aligned = _aligned(classes, groups, counts)
    outside = np.array([aligned[int(c)] != int(g) for c, g in zip(classes, groups, strict=True)],
                       dtype=bool)
    return outside[inverse]


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

    Raises
    ------
    ValueError
        If every sample gets a weight of 0.
    """
    classes, groups, _, inverse = _cells(y_codes, group_codes)
    per_cell = np.array([weights.get((int(c), int(g)), 0.0) for c, g in
                         zip(classes, groups, strict=True)], dtype=np.float64)
    out = per_cell[inverse]
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

    Notes
    -----
    Up to ``2**24`` samples the draw is :func:`torch.multinomial`'s; beyond, where
    ``torch.multinomial`` refuses, each draw is a uniform number located in the cumulative
    weights (the same distribution, other draws).
    """
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if len(w) <= _MULTINOMIAL_MAX:
        return torch.multinomial(w, n, replacement=True, generator=generator)
    cumulative = torch.cumsum(w, 0)
    u = torch.rand(n, dtype=torch.float64, generator=generator) * cumulative[-1]
    last = int(torch.nonzero(w > 0)[-1])  # where rounding puts u at the total
    return torch.searchsorted(cumulative, u, right=True).clamp_(max=last)
