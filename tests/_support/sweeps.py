"""Experiments for the sweep tests, importable by the worker processes of a local sweep."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from rest_fair.benchmarks import BenchConfig


@dataclasses.dataclass
class ProcessEndingBench(BenchConfig):
    """A benchmark whose run with seed ``ending_seed`` ends its process (as the kernel's
    out-of-memory killer or a crash in native code would) when it loads its data."""

    ending_seed: int = -1

    def training_data(self, spec: Any) -> tuple[Any, Any, dict[str, Any]]:
        if spec.seed == self.ending_seed:
            os._exit(3)
        return super().training_data(spec)


@dataclasses.dataclass
class RepeatingBench(BenchConfig):
    """A benchmark that lists each of its runs twice."""

    def runs(self) -> list[Any]:
        return [spec for spec in super().runs() for _ in range(2)]
