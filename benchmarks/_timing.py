"""Interleaved timing shared by the benchmark scripts (run as ``python benchmarks/<script>``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int,
                        warmup: int) -> dict[str, float]:
    """Median seconds of each step over ``repeats`` rounds, the steps taking turns.

    Every step runs ``warmup`` times first. Round ``i`` starts at step ``i % len(steps)``,
    so no step always runs first (right after another step warmed the caches).
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
