"""Deprecated alias of the experiment runner, :mod:`rest_fair.experiments.runner`, for one
release (use :mod:`rest_fair.benchmarks` or :mod:`rest_fair.experiments.runner`)."""

from __future__ import annotations

import warnings
from typing import Any

from .._requirements import Requirement
from ..experiments.run import available_cores, run_one, split_threads  # noqa: F401
from ..experiments.runner import *  # noqa: F403

warnings.warn("rest_fair.benchmarks.runner is deprecated and will be removed in the next "
              "release; use rest_fair.experiments.runner.", FutureWarning, stacklevel=2)


def bench_requirements(config: Any, *, plots: bool = False) -> list[Requirement]:
    """Deprecated: ``config.requirements(plots=plots)``."""
    return config.requirements(plots=plots)


def check_bench_requirements(config: Any, *, plots: bool = False) -> None:
    """Deprecated: ``config.check_requirements(plots=plots)``."""
    config.check_requirements(plots=plots)
