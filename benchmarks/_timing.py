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


def print_fit_ratios(inputs: dict[str, object], fit: Callable[[object], object], repeats: int,
                     header: str) -> None:
    """Fit each of ``inputs`` in turn (:func:`interleaved_medians`, one warm-up fit each),
    then print ``header`` and each input's median fit time as a ratio to the first's."""
    medians = interleaved_medians({name: (lambda data=data: fit(data))
                                   for name, data in inputs.items()}, repeats=repeats, warmup=1)
    first = next(iter(medians))
    print(f"{header}; medians of {repeats} interleaved rounds")
    print(f"| input | fit time / {first} fit |")
    print("|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds / medians[first]:.2f}x |")
