"""One run of an experiment: build the estimator, fit it, score it, one JSON-ready record.

An :class:`Experiment` says what its runs are, what each trains on and how it is scored;
:func:`run_one` does the rest, in this process, a joblib worker or a Dask worker alike.
Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
import time
import traceback
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["Experiment", "available_cores", "check_run_params", "density", "digest",
           "error_record", "jsonable", "run_one", "split_threads", "standard_error",
           "unread_params"]


class Experiment(Protocol):
    """What the experiment runner needs of an experiment.

    ``runs()`` are frozen dataclasses with a ``run_id`` (their key in the results file) and
    a ``label`` (for progress lines); their fields open a run's record. ``name`` says who
    runs it (``"rest-fair bench"``). An experiment whose runs execute in other processes
    (joblib, Dask) must pickle. It may also have ``final_errors``, exception types that
    are an outcome of the run (a diverged training): such a run is recorded as
    ``"failed"`` and not retried.
    """

    name: str

    def runs(self) -> list[Any]:
        """Every run, in order."""

    def check_requirements(self) -> None:
        """Raise, before any run, when something the runs need is missing: ImportError
        for a package, :class:`~rest_fair.exceptions.DatasetNotFoundError` for data files,
        ValueError for data settings the data cannot meet."""

    def estimator_params(self, spec: Any) -> dict[str, Any]:
        """The :class:`~rest_fair.RESTClassifier` parameters of a run."""

    def training_data(self, spec: Any) -> tuple[Any, Any, dict[str, Any]]:
        """``(X, y, fit_params)``: what ``fit`` receives in a run."""

    def score(self, spec: Any, clf: Any) -> dict[str, Any]:
        """The JSON-ready results of a run, from its fitted estimator."""


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_threads(n_jobs: int, cores: int | None = None) -> tuple[int, int]:
    """Parallel runs and torch threads per run, with ``n_jobs * threads <= cores``.

    Parameters
    ----------
    n_jobs : int or None
        Requested parallel runs, at most ``cores``; negative values count back as in joblib
        (``-1`` one per core, ``-2`` all but one: ``cores + 1 + n_jobs``, at least 1); ``0``
        or None: 1.
    cores : int or None
        Available cores (default: :func:`available_cores`).

    Returns
    -------
    (n_jobs, threads_per_job) : tuple of int

    Raises
    ------
    TypeError
        If ``n_jobs`` is neither an int nor None.
    """
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral)):
        raise TypeError(f"n_jobs must be an int or None; got {n_jobs!r}.")
    cores = cores or available_cores()
    n_jobs = n_jobs or 1
    if n_jobs < 0:
        n_jobs += cores + 1
    n_jobs = max(1, min(int(n_jobs), cores))
    return n_jobs, max(1, cores // n_jobs)


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value, default=list))


def digest(value: Any) -> str:
    """A short hash of a JSON-ready value (of its JSON with sorted keys), for run ids."""
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def density(clf: Any) -> float:
    """Share of active weights over the masked layers of a fitted estimator (1.0 if dense)."""
    masks = getattr(clf, "masks_", None) or {}
    total = sum(int(m.numel()) for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 1.0


def run_one(
    spec: Any, experiment: Experiment, *, n_threads: int | None = None, verbose: int = 0
) -> dict[str, Any]:
    """Train and score one run; returns its JSON-ready record.

    Parameters
    ----------
    spec : dataclass
        One of ``experiment.runs()``.
    experiment : Experiment
    n_threads : int or None
        ``torch.set_num_threads`` for this run (set inside the worker process).
    verbose : int
        The estimator's ``verbose`` (``> 0``: a progress bar over epochs), unless the
        experiment's parameters set it.

    Returns
    -------
    dict
        ``run_id`` and the run's fields, ``experiment.score(spec, clf)``, ``fit_seconds``,
        ``model_bytes`` (:func:`model_file_bytes`), ``best_epoch``, ``epochs_run``,
        ``density`` (:func:`density`), ``n_threads``, ``status`` and ``finished_at``. A run
        that raises gets the record of :func:`error_record` instead, ``"failed"`` when the
        error's type is one of the experiment's ``final_errors``, else ``"error"``.
    """
    record = _identity(spec)
    try:
        record.update(_fit_and_score(spec, experiment, n_threads=n_threads, verbose=verbose))
    except Exception as exc:  # recorded; retried on resume unless final
        final = isinstance(exc, tuple(getattr(experiment, "final_errors", ())))
        return error_record(spec, exc, final=final)
    record["status"] = "ok"
    record["finished_at"] = _now()
    return record


def check_run_params(experiment: Experiment, spec: Any, *, here: bool = True) -> None:
    """Check the estimator parameters of run ``spec`` as ``fit`` would, before any run:
    their values, the network they name with its ``module_params``
    (:func:`~rest_fair.models.check_module`), and with ``here`` (the runs execute on this
    machine) that this machine has its ``device`` and that a Hugging Face ``module``
    (``"hf:..."``) can train with its ``module_params`` (:func:`~rest_fair.backbones.check_hf`
    loads its tokenizer and configuration, not its weights).

    Raises
    ------
    ValueError
        Naming the first invalid parameter (a setting the command line gave, say), a
        CUDA device on a machine without CUDA, or what a Hugging Face model cannot do
        (pad, read ``module_params['max_length']`` tokens).
    FileNotFoundError
        For pretrained weights named by a path that does not exist.
    OSError
        When a Hugging Face model's tokenizer or configuration cannot be loaded.
    """
    from .._fit import resolve_device
    from .._validation import check_params
    from ..backbones import HF_PREFIX, check_hf
    from ..estimator import RESTClassifier  # imports torch: not at `rest-fair --help`
    from ..models import check_module

    clf = RESTClassifier(**experiment.estimator_params(spec))
    check_params(clf)
    check_module(clf.module, clf.module_params)
    if here:
        resolve_device(clf.device)
        if isinstance(clf.module, str) and clf.module.startswith(HF_PREFIX):
            check_hf(clf.module, clf.module_params)


def unread_params(params: Mapping[str, Any]) -> list[str]:
    """The :class:`~rest_fair.RESTClassifier` parameters that a fit with ``params`` (every
    parameter, as ``get_params`` gives them) does not read: those the others leave unused
    (``_used_only_when``: ``momentum`` without SGD, ...), and in a dense fit (``sparsity``
    0) those of sparse training (of :class:`~rest_fair.training.parts.SparsityConfig` but
    ``sparsity``, and ``sparse_compute``, ``sparse_compute_threshold``)."""
    from .._validation import unused_params
    from ..estimator import RESTClassifier
    from ..training.parts import SparsityConfig

    unread = list(unused_params(RESTClassifier, params))
    if params["sparsity"] == 0:
        unread += [f.name for f in dataclasses.fields(SparsityConfig) if f.name != "sparsity"]
        unread += ["sparse_compute", "sparse_compute_threshold"]
    return unread


def _fit_and_score(
    spec: Any, experiment: Experiment, *, n_threads: int | None, verbose: int
) -> dict[str, Any]:
    import torch

    from ..estimator import RESTClassifier  # imports torch: not at `rest-fair --help`

    if n_threads:
        torch.set_num_threads(int(n_threads))
    clf = RESTClassifier(**{"verbose": verbose, **experiment.estimator_params(spec)})
    X, y, fit_params = experiment.training_data(spec)
    _warm_up()
    start = time.perf_counter()
    clf.fit(X, y, **fit_params)
    fit_seconds = time.perf_counter() - start
    best_epoch = getattr(clf, "best_epoch_", None)
    return {
        **experiment.score(spec, clf),
        "fit_seconds": fit_seconds,
        "model_bytes": model_file_bytes(clf),
        "best_epoch": None if best_epoch is None else int(best_epoch),
        "epochs_run": len(getattr(clf, "history_", None) or []),
        "density": density(clf),
        "n_threads": int(torch.get_num_threads()),
    }


@functools.cache
def _warm_up() -> None:
    """Pay, once per process and before the clock starts, what only a process's first fit
    pays (torch imports ``torch._dynamo``, 1-2 s on a CPU, at the first optimizer), so
    that ``fit_seconds`` does not depend on which run of a process came first."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def model_file_bytes(clf: Any) -> int | None:
    """Size in bytes of ``clf.save``'s file (active weights, masks, header), or None for a
    network the model file cannot hold (a custom module class)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return int(clf.save(Path(tmp) / "model.rest"))
        except ValueError:
            return None


def _identity(spec: Any) -> dict[str, Any]:
    return {"run_id": spec.run_id, **dataclasses.asdict(spec)}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def error_record(spec: Any, exc: BaseException, *, final: bool = False) -> dict[str, Any]:
    """The record of a run that raised ``exc``: ``"status": "error"`` (retried on resume),
    or ``"failed"`` when ``final`` (a finished run, not retried)."""
    record = _identity(spec)
    record["status"] = "failed" if final else "error"
    record["error"] = f"{type(exc).__name__}: {exc}"
    record["traceback"] = "".join(traceback.format_exception(exc, limit=8))
    record["finished_at"] = _now()
    return record


def standard_error(std: Any, n: Any) -> Any:
    """Standard error of a mean, ``std / sqrt(n)`` (``std`` with ddof=1; NaN for n < 2),
    of numbers or of pandas or numpy arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        se = std / np.sqrt(n)
    few = np.asarray(n) < 2
    if hasattr(se, "mask"):  # pandas: keeps the index
        return se.mask(few)
    if np.ndim(se):
        return np.where(few, np.nan, se)
    return math.nan if few else float(se)
