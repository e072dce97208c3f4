"""Argument types shared by the benchmark scripts: a bad value is an argparse error.

A count of 0, a negative or NaN size, or a sparsity outside its range would otherwise run
and fail deep inside torch or statistics, or print ratios of nothing.
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type, rule: str, ok) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {rule}; got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {rule}; got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (repeats, threads, epochs, sizes)."""
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a count that may be zero)."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (a scale)."""
    return _number(text, float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)


def sparsity_arg(text: str) -> float:
    """A sparsity in [0, 1)."""
    return _number(text, float, "a sparsity in [0, 1)", lambda v: 0 <= v < 1)


def density_arg(text: str) -> float:
    """A density in (0, 1]."""
    return _number(text, float, "a density in (0, 1]", lambda v: 0 < v <= 1)
