"""Debiasing benchmarks: ERM, reweighting, REST and friends on Colored MNIST.

``rest-fair bench`` (:mod:`rest_fair.benchmarks.cli`) runs a sweep; from Python::

    from rest_fair.benchmarks import preset, run_sweep, write_outputs
    config = preset("quick", seeds=(0, 1))
    records = run_sweep(config, "out/quick")
    write_outputs(records, config, "out/quick")

``run_sweep`` is the experiment runner (:mod:`rest_fair.experiments.runner`);
``run_sweep(config, out, scheduler="tcp://host:8786")`` runs on a ``dask.distributed``
cluster (the ``dask`` extra). Every method is a row of :data:`METHODS` (a configuration of
:class:`rest_fair.RESTClassifier`), every data set a row of
:data:`~rest_fair.benchmarks.data.DATASETS`.

The equal-budget study (``rest-fair bench --search random --budget K``) is a
:class:`RandomSearch` over the rows of :data:`STUDY_METHODS`::

    from rest_fair.benchmarks import RandomSearch, preset, run_sweep, write_study_outputs
    search = RandomSearch(preset("scale"), budget=8)
    records = run_sweep(search, "out/study")
    write_study_outputs(records, search, "out/study")
"""

from __future__ import annotations

from ..experiments.run import run_one, split_threads
from ..experiments.runner import read_results, run_sweep
from .config import PRESETS, BenchConfig, RunSpec, preset
from .methods import LAMBDA_BY_RATIO, METHODS, Method, estimator_params, lambda_for_ratio
from .report import summarize, to_markdown, write_outputs
from .search import SEARCH_SPACES, equal_cost_width
from .study import SELECTION_RULES, STUDY_METHODS, RandomSearch, StudyMethod
from .study_report import select, write_study_outputs

__all__ = [
    "LAMBDA_BY_RATIO",
    "METHODS",
    "PRESETS",
    "SEARCH_SPACES",
    "SELECTION_RULES",
    "STUDY_METHODS",
    "BenchConfig",
    "Method",
    "RandomSearch",
    "RunSpec",
    "StudyMethod",
    "equal_cost_width",
    "estimator_params",
    "lambda_for_ratio",
    "preset",
    "read_results",
    "run_one",
    "run_sweep",
    "select",
    "split_threads",
    "summarize",
    "to_markdown",
    "write_outputs",
    "write_study_outputs",
]
