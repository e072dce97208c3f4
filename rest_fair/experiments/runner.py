"""The experiment runner: every run of an experiment, recorded in one results file, resumable.

``rest-fair bench`` and ``rest-fair wilds`` both run through :func:`run_sweep`; what they
train and measure is their :class:`~rest_fair.experiments.run.Experiment`.

The results file (:data:`RESULTS_FILE` in the output folder) holds one JSON record per line,
each written (flushed and fsynced) as soon as its run finishes, keyed by the run's
``run_id``; for an id written twice (an error, then a success) the last line counts.
Running the same experiment again runs only the runs that are not :func:`finished`, so an
interrupted sweep resumes without repeating or losing runs; a run that ended in an
``"error"`` is retried.

Runs execute in this process, in local joblib processes (``n_jobs``), or on a
``dask.distributed`` cluster (:mod:`~rest_fair.experiments.dask_backend`); this process
alone writes the results file. A sweep holds its output folder (:func:`lock_folder`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from numbers import Real
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere output folders are not locked
    from fcntl import LOCK_EX, LOCK_NB, flock
except ImportError:  # pragma: no cover
    def flock(handle: Any, operation: int) -> None:
        """No lock where the system has no ``flock``."""

    LOCK_EX = LOCK_NB = 0

from .dask_backend import active_joblib_client, connect, dask_records
from .run import Experiment, check_run_params, error_record, run_one, split_threads

__all__ = ["BACKENDS", "LOCK_FILE", "LOG_INTERVAL", "PROGRESS_MODES", "RESULTS_FILE",
           "OneValue", "append_record", "finished", "interrupted", "locate", "lock_folder",
           "named_by_flag", "option_flags", "parse_path", "parse_upweight", "pending",
           "read_own_json", "read_results", "report_failed", "run_sweep", "set_aside"]

#: Name of the results file in an experiment's output folder (one JSON record per line).
RESULTS_FILE = "results.jsonl"
#: Name of the lock file in an output folder, locked by the run working there.
LOCK_FILE = ".rest-fair.lock"

#: Where the runs of a sweep execute.
BACKENDS = ("local", "dask")

#: Values of ``run_sweep(progress=...)``; ``True`` means ``"auto"`` and ``False`` ``"none"``.
PROGRESS_MODES = ("auto", "bar", "log", "none")
#: In ``"log"`` mode, the least number of seconds between two progress lines (a failed
#: run and the last run are always reported).
LOG_INTERVAL = 10.0

_EMPTY_PATH = "expected a folder, got {!r}; give '.' for the working directory."
_BAD_UPWEIGHT = "--upweight: expected 'balanced', 'none' or a positive number; got {!r}."
_NOT_A_FILE = ("cannot keep the results in {folder}: {path} is not a file (the results file, "
               "one JSON line per finished run); move it away or choose another output "
               "folder.")
_CORRUPT_LINE = "Ignoring an unreadable line {line} of {path} (an interrupted write?)."
_BAD_BACKEND = "backend must be one of {backends} or None; got {backend!r}."
_NEEDS_DASK = ("{name} is only used by backend='dask'; got {name}={value!r} with "
               "backend={backend!r}.")
_BAD_LIMIT = "{name} must be a number {rule} or None; got {value!r}."
_BAD_OUT_DIR = "cannot keep the results in {path}: {error}."
_IN_USE = ("{folder} is in use by another rest-fair run (it holds {lock}); wait until that run "
           "ends or choose another output folder.")
_INTERRUPTED = "{command}: interrupted; the finished runs are kept in {path}; to continue, {how}."
_REPORT_FAILED = ("{command}: cannot write the report: {error}; the finished runs are kept in "
                  "{path}; to write it, {how}.")
_NOT_OURS = (
    "{path} was not written by {command} (it is not a JSON object with the keys "
    "{keys}); the report would overwrite it, so nothing was written: move it away or "
    "choose another output folder."
)
_N_JOBS_IGNORED = (
    "n_jobs={n_jobs} is ignored with backend='dask': the cluster runs as many runs at once "
    "as it has worker processes."
)
_BAD_PROGRESS = "progress must be True, False, 'auto', 'bar', 'log' or 'none'; got {!r}."
_GIVEN_TWICE = "{given}: one flag given two values; give it once."
_TWO_FLAGS = "{given}: two flags of one setting, given two values; give one of them."


def parse_upweight(value: str) -> float | str:
    """``--upweight`` of ``rest-fair bench`` and ``rest-fair wilds``: ``"balanced"`` (every
    group drawn equally often), ``"none"`` (no reweighting) or a positive number λ (the
    factor of the minority samples), returned as a float; anything else raises
    :class:`argparse.ArgumentTypeError`."""
    if value in ("balanced", "none"):
        return value
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(_BAD_UPWEIGHT.format(value))
    return number


def parse_path(value: str) -> Path:
    """A path option of ``rest-fair bench`` and ``rest-fair wilds`` (``--out-dir``,
    ``--root-dir``), a leading ``~`` read as the home folder (the shell leaves it in
    ``--out-dir=~/x``). An empty one (``--out-dir "$UNSET"``, the working directory) raises
    :class:`argparse.ArgumentTypeError`."""
    if not value.strip():
        raise argparse.ArgumentTypeError(_EMPTY_PATH.format(value))
    return Path(value).expanduser()


class OneValue(argparse.Action):
    """The default ``store`` action of ``rest-fair bench`` and ``rest-fair wilds``: it
    refuses a setting given two values, naming both, whether by one flag given twice
    (``--lr 0.1 --lr 0.2``, ``--seeds 0 1 --seeds 2``) or by two flags of one destination
    (``message``; e.g. ``--quick``, a flag of ``nargs=0`` giving ``const``, and
    ``--preset``). The same value given twice is taken once."""

    def __init__(self, *args: Any, message: str = _TWO_FLAGS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.message = message

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if self.nargs == 0:
            values = self.const
        given = vars(namespace).setdefault("_given_" + self.dest, [])
        given.append((self, option_string, values))
        if len({str(v) for _, _, v in given}) > 1:
            message = _GIVEN_TWICE if len({a for a, _, _ in given}) == 1 else self.message
            parser.error(message.format(given=" and ".join(
                flag if action.nargs == 0
                else " ".join([flag, *map(str, v)]) if isinstance(v, list)
                else f"{flag} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                for action, flag, v in given)))
        setattr(namespace, self.dest, values)


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The flag of each setting of ``parser``'s command line: the destination of an option
    (``max_epochs``) -> its flag (``--epochs``; the last name of an option with several),
    of the first option where several set one destination."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            flags.setdefault(action.dest, action.option_strings[-1])
    return flags


def named_by_flag(error: BaseException | str, flags: dict[str, str]) -> str:
    """The message of ``error`` with the setting it opens with (``"max_epochs must be >=
    1; ..."``) named by the flag that sets it (``"--epochs must be >= 1; ..."``, ``flags``
    from :func:`option_flags`); other messages as they are."""
    message = str(error)
    match = re.match(r"[a-z_]+\b", message)
    if match is None or match.group() not in flags:
        return message
    return flags[match.group()] + message[match.end():]


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Records of a results file, skipping unreadable (e.g. half-written) lines; for a run
    id present several times the last record wins.

    Raises
    ------
    ValueError
        When ``path`` exists and is not a file (a folder), naming it.
    """
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise ValueError(_NOT_A_FILE.format(folder=path.parent, path=path))
    records: dict[str, dict] = {}
    with path.open("rb") as handle:  # a line that is not UTF-8 is skipped like any other
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                records[record["run_id"]] = record
            except (ValueError, KeyError, TypeError):  # ValueError: JSON, UTF-8
                warnings.warn(_CORRUPT_LINE.format(line=number, path=path), stacklevel=2)
    return list(records.values())


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of the results file ``path``, flushed and fsynced."""
    # A previous interrupted write may have left a partial last line: start on a new line.
    needs_newline = False
    if path.exists() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            needs_newline = handle.read(1) != b"\n"
    with path.open("a", encoding="utf-8") as handle:
        if needs_newline:
            handle.write("\n")
        handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


#: The output folders this process holds: resolved path -> [id of the holding thread, the
#: locked file, the number of blocks holding it].
_held: dict[Path, list] = {}


@contextlib.contextmanager
def lock_folder(folder: str | Path) -> Iterator[Path]:
    """Create the output folder ``folder`` and hold it while the block runs: an exclusive
    advisory lock (``fcntl.flock``; none on systems without it) on its :data:`LOCK_FILE`,
    released when the last block holding it ends (or the process does). The holding thread
    may enter the block again, the blocks ending in any order; the worker processes of a
    sweep do not take it.

    Raises
    ------
    BlockingIOError
        When another run (process or thread) holds the folder.
    ValueError
        When ``folder`` cannot be made a folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        file = next((p for p in (folder, *folder.parents) if p.is_file()), None)
        error = exc if file is None else f"{file} is a file, not a folder"
        raise ValueError(_BAD_OUT_DIR.format(path=folder, error=error)) from exc
    key, me = folder.resolve(), threading.get_ident()
    hold = _held.get(key)
    if hold is None or hold[0] != me:
        handle = (folder / LOCK_FILE).open("a")
        try:
            flock(handle, LOCK_EX | LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise BlockingIOError(_IN_USE.format(folder=folder, lock=folder / LOCK_FILE)) from None
        hold = _held[key] = [me, handle, 0]
    hold[2] += 1
    try:
        yield folder
    finally:
        hold[2] -= 1
        if hold[2] == 0:
            del _held[key]
            hold[1].close()


def set_aside(paths: Sequence[Path]) -> list[Path]:
    """Rename those of ``paths`` that exist with one date-time suffix that none of their
    new names holds yet (``results.jsonl`` -> ``results.20260101-120000.jsonl``, or
    ``results.20260101-120000-2.jsonl``), so that nothing is overwritten; returns the new
    paths."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in itertools.count(1):
        suffix = stamp if k == 1 else f"{stamp}-{k}"
        targets = [p.with_name(f"{p.stem}.{suffix}{p.suffix}") for p in existing]
        if not any(t.exists() or t.is_symlink() for t in targets):
            break
    for path, target in zip(existing, targets, strict=True):
        path.rename(target)
    return targets


def read_own_json(path: str | Path, keys: Mapping[str, type], command: str
                  ) -> dict[str, Any] | None:
    """The JSON object in ``path`` as ``command`` wrote it: an object with each of ``keys``
    holding a value of its type (``object``: any); None when there is no ``path``.

    Raises
    ------
    FileExistsError
        Naming ``path`` when it is not one of ``command``'s (unreadable, not JSON, without
        those keys), which its report never overwrites.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = None
    if not (isinstance(info, dict)
            and all(key in info and isinstance(info[key], kind) for key, kind in keys.items())):
        raise FileExistsError(_NOT_OURS.format(path=path, command=command,
                                               keys=", ".join(keys)))
    return info


def report_failed(command: str, out_dir: str | Path, error: OSError, how: str) -> int:
    """Say on stderr that ``command`` could not write its report (``error``: a full disk, a
    folder in the way), that its finished runs are kept in the results file of ``out_dir``
    and ``how`` to write it; returns the exit status 2."""
    return _kept_runs(_REPORT_FAILED, 2, out_dir, command=command, error=error, how=how)


def interrupted(command: str, out_dir: str | Path, how: str) -> int:
    """Say on stderr that ``command`` was interrupted, that its finished runs are kept in
    the results file of ``out_dir`` and ``how`` to continue; returns the exit status 130."""
    return _kept_runs(_INTERRUPTED, 130, out_dir, command=command, how=how)


def _kept_runs(message: str, status: int, out_dir: str | Path, **fields: Any) -> int:
    print(message.format(path=Path(out_dir) / RESULTS_FILE, **fields), file=sys.stderr)
    return status


def finished(record: dict[str, Any], folder: str | Path | None = None) -> bool:
    """Whether resuming keeps ``record``: it succeeded and the files it lists still exist,
    or it failed for good (``"status": "failed"``).

    A relative path of ``"submission_files"`` is looked up as :func:`locate` does.
    """
    if record.get("status") == "failed":
        return True
    files = record.get("submission_files") or ()
    return record.get("status") == "ok" and all(
        locate(f, folder).exists() for f in files)


def locate(file: str | Path, folder: str | Path | None = None) -> Path:
    """The path of a file a record lists: ``folder / file`` when ``file`` is relative and
    there, else ``file`` as it is (absolute, or relative to the working directory)."""
    path = Path(file)
    if folder is not None and not path.is_absolute() and (Path(folder) / path).exists():
        return Path(folder) / path
    return path


def pending(specs: Sequence[Any], path: str | Path) -> list[Any]:
    """The runs of ``specs`` without a finished record in the results file ``path``, each
    run id once (a run listed twice is one run)."""
    done = {r["run_id"] for r in read_results(path) if finished(r, Path(path).parent)}
    return [spec for spec in _unique(specs) if spec.run_id not in done]


def _unique(specs: Sequence[Any]) -> list[Any]:
    """``specs`` without the repeats of a run id, in the order of their first listing."""
    return list({spec.run_id: spec for spec in specs}.values())


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


class _Progress:
    """Progress over the runs: a tqdm bar (``"bar"``), plain lines (``"log"``, for logs,
    where a redrawn bar turns into noise) or nothing (``"none"``)."""

    def __init__(self, mode: str, name: str, labels: dict[str, str], total: int, done: int):
        self.mode, self.name, self.labels, self.total, self.done = mode, name, labels, total, done
        self.todo, self.new, self.bar = len(labels), 0, None
        self.start = self.last = time.perf_counter()
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc="runs", unit="run", leave=True)
        elif mode == "log":
            self._write(f"{self.todo} runs to do, {done} of {total} already done")

    def _write(self, text: str) -> None:
        print(f"[{self.name}] {text}", file=sys.stderr, flush=True)

    def update(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.new += 1
        label, status = self.labels[record["run_id"]], record.get("status")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{label} {status}")
        now = time.perf_counter()
        failed = status != "ok"
        if self.mode != "log" or not (
            failed or self.new == self.todo or now - self.last >= LOG_INTERVAL
        ):
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / self.new * (self.todo - self.new)
        status = f"error: {record.get('error')}" if failed else status
        self._write(f"{self.done}/{self.total} runs; last: {label} {status}; "
                    f"elapsed {_duration(elapsed)}, about {_duration(left)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(
    experiment: Experiment,
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
    scheduler_timeout: float | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished run of ``experiment`` and return the records of all its runs.

    Parameters
    ----------
    experiment : Experiment
        E.g. a :class:`~rest_fair.benchmarks.BenchConfig`.
    out_dir : str or Path
        Folder of the results file :data:`RESULTS_FILE` (created), held for the sweep
        (:func:`lock_folder`).
    n_jobs : int, default=1
        Parallel runs (joblib processes) and torch threads per run as
        :func:`~rest_fair.experiments.run.split_threads` gives them (``-1``: one run per
        core). Not used by the dask backend, whose parallelism is the cluster's worker
        processes.
    resume : bool, default=True
        Skip the runs already finished (:func:`pending`); False moves the old results file
        aside (``results.<date>-<time>.jsonl``) and runs everything.
    progress : bool or {"auto", "bar", "log", "none"}, default=True
        ``"bar"``: a tqdm bar over runs and, with ``n_jobs=1``, the estimator's bar over
        epochs. ``"log"``: plain lines on stderr (at most one every :data:`LOG_INTERVAL`
        seconds, plus every failure and the last run). ``"auto"`` (``True``): bars when
        stderr is a terminal, else lines. ``"none"`` (``False``): silent.
    max_runs : int or None
        Stop after this many new runs (rerun to continue).
    time_limit : float or None
        Start no new run (batch) after this many seconds.
    on_result : callable or None
        ``on_result(record, k)`` after the ``k``-th new record is saved (an exception it
        raises interrupts the sweep).
    backend : {"local", "dask"} or None, default=None
        Where runs execute: ``"local"`` (this process or joblib processes) or ``"dask"``
        (a ``dask.distributed`` cluster). None picks ``"dask"`` when ``scheduler`` is given
        or inside ``joblib.parallel_config(backend="dask")``, else ``"local"``.
    scheduler : str, distributed.Client or None
        With the dask backend: as :func:`~rest_fair.experiments.dask_backend.connect`
        takes it (e.g. ``"tcp://host:8786"``).
    scheduler_timeout : float or None, default=None
        With the dask backend: the ``timeout`` of
        :func:`~rest_fair.experiments.dask_backend.connect` (None: 10).
    on_start : callable or None
        ``on_start(where)`` before the first run, with ``out_dir`` held (a block of
        :func:`lock_folder` entered here keeps it held after the sweep), with where the
        runs execute: ``{"backend": "local", "n_jobs": ..., "torch_threads_per_job": ...}``
        or ``{"backend": "dask", "scheduler": ..., "dask_workers": ...,
        "dask_worker_threads": ...}``.

    Returns
    -------
    list of dict
        The records of the experiment's runs found in the results file
        (:func:`~rest_fair.experiments.run.run_one`), in the order of ``experiment.runs()``,
        one per run id. With the dask backend each new record also names its ``worker``.

    Raises
    ------
    ImportError
        Before any run, when a package the runs need is missing
        (``experiment.check_requirements()``).
    DatasetNotFoundError
        Before any run, when data files the runs read are missing (likewise).
    ValueError
        Before any run: for data settings the data set cannot meet (likewise); for invalid
        estimator parameters of the first run of each ``method`` and ``sparsity`` (if the
        runs have them), the network and its ``module_params`` included
        (:func:`~rest_fair.experiments.run.check_run_params`); for a negative or infinite
        ``max_runs``, a negative ``time_limit``, a ``scheduler_timeout`` that is not
        positive and finite, or an ``out_dir`` that cannot be made a folder; with the local
        backend, for a CUDA ``device`` on a machine without CUDA, and for a ``scheduler``
        or ``scheduler_timeout``.
    BlockingIOError
        Before any run, when another run holds ``out_dir``.
    FileNotFoundError
        Before any run, for pretrained weights named by a path that does not exist.
    """
    for name, value, positive, finite in (("max_runs", max_runs, False, True),
                                          ("time_limit", time_limit, False, False),
                                          ("scheduler_timeout", scheduler_timeout, True, True)):
        if value is None:
            continue
        number = isinstance(value, Real) and not isinstance(value, bool)
        if (not number or not (value > 0 if positive else value >= 0)
                or (finite and not math.isfinite(value))):
            rule = ("> 0" if positive else ">= 0") + (" and finite" if finite else "")
            raise ValueError(_BAD_LIMIT.format(name=name, rule=rule, value=value))
    split_threads(n_jobs)  # an n_jobs of another type is refused before any work
    mode = _progress_mode(progress, sys.stderr)
    experiment.check_requirements()
    backend = _resolve_backend(backend, scheduler, scheduler_timeout)
    # the first run of each method and sparsity (a method's dense runs read fewer estimator
    # parameters than its sparse ones); a run without them: of all
    firsts: dict[Any, Any] = {}
    for spec in experiment.runs():
        firsts.setdefault((getattr(spec, "method", None), getattr(spec, "sparsity", None)),
                          spec)
    for spec in firsts.values():  # the settings its runs share fail here, not per run
        check_run_params(experiment, spec, here=backend == "local")
    if backend == "dask" and n_jobs not in (1, None):
        warnings.warn(_N_JOBS_IGNORED.format(n_jobs=n_jobs), UserWarning, stacklevel=2)
    with contextlib.ExitStack() as stack:
        out_dir = stack.enter_context(lock_folder(out_dir))
        path = out_dir / RESULTS_FILE
        if path.exists() and not path.is_file():
            raise ValueError(_NOT_A_FILE.format(folder=out_dir, path=path))
        client = None
        if backend == "dask":
            timeout = {} if scheduler_timeout is None else {"timeout": scheduler_timeout}
            client = stack.enter_context(connect(scheduler, **timeout))
            workers = client.nthreads()
            where = {"backend": backend, "scheduler": client.scheduler.address,
                     "dask_workers": len(workers), "dask_worker_threads": sum(workers.values())}
        else:
            jobs, threads = split_threads(n_jobs)
            where = {"backend": backend, "n_jobs": jobs, "torch_threads_per_job": threads}
        if on_start is not None:
            on_start(where)
        if not resume:
            set_aside([path])
        specs = _unique(experiment.runs())
        todo = pending(specs, path)
        n_done = len(specs) - len(todo)
        todo = todo if max_runs is None else todo[: max(0, int(max_runs))]
        start = time.perf_counter()

        def out_of_time() -> bool:
            return time_limit is not None and time.perf_counter() - start > time_limit

        if client is not None:
            records = dask_records(client, todo, experiment, out_of_time)
        else:
            # nested bars (runs, then epochs) only on a terminal
            records = _local_records(todo, experiment, jobs, threads, mode == "bar",
                                     out_of_time)
        stack.enter_context(contextlib.closing(records))
        labels = {spec.run_id: spec.label for spec in todo}
        reporter = _Progress(mode, experiment.name, labels, len(specs), n_done)
        stack.callback(reporter.close)
        for count, record in enumerate(records, start=1):
            append_record(path, record)
            reporter.update(record)
            if on_result is not None:
                on_result(record, count)
        found = {r["run_id"]: r for r in read_results(path)}
    return [found[s.run_id] for s in specs if s.run_id in found]


def _resolve_backend(backend: str | None, scheduler: Any, scheduler_timeout: Any) -> str:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(_BAD_BACKEND.format(backends=BACKENDS, backend=backend))
    if backend is None:
        backend = "dask" if scheduler is not None or active_joblib_client() else "local"
    for name, value in (("scheduler", scheduler), ("scheduler_timeout", scheduler_timeout)):
        if value is not None and backend != "dask":
            raise ValueError(_NEEDS_DASK.format(name=name, value=value, backend=backend))
    return backend


def _local_records(
    todo: Sequence[Any], experiment: Experiment, n_jobs: int, threads: int, progress: bool,
    stop: Callable[[], bool],
) -> Iterator[dict[str, Any]]:
    """Records of ``todo``, run in this process or in batches of ``n_jobs`` processes.

    A run that ends its worker process (killed for memory, a crash in native code) breaks
    the whole batch: the runs of the batch without a record then run again one at a time,
    each in a process of its own, so that only the culprit gets an error record.
    """
    from joblib import Parallel, delayed

    for i in range(0, len(todo), n_jobs):
        if stop():
            return
        batch = todo[i : i + n_jobs]
        if len(batch) == 1:
            yield run_one(batch[0], experiment, n_threads=threads,
                          verbose=int(progress and n_jobs == 1))
            continue
        # local processes, even inside a joblib.parallel_config
        parallel = Parallel(n_jobs=len(batch), backend="loky", return_as="generator_unordered")
        returned = set()
        try:
            with _deaf_to_ctrl_c():
                records = parallel(delayed(run_one)(spec, experiment, n_threads=threads)
                                   for spec in batch)
            for record in records:
                returned.add(record["run_id"])
                yield record
        except BrokenProcessPool:
            for spec in batch:
                if spec.run_id not in returned:
                    yield _run_in_own_process(spec, experiment, threads)


def _run_in_own_process(spec: Any, experiment: Experiment, threads: int) -> dict[str, Any]:
    """:func:`run_one` in a worker process of its own; an error record if that process
    ends before the run returns."""
    from joblib import Parallel, delayed

    try:
        # two workers allowed for one task: joblib runs n_jobs=1 in this process
        with _deaf_to_ctrl_c():
            records = Parallel(n_jobs=2, backend="loky", return_as="generator")(
                [delayed(run_one)(spec, experiment, n_threads=threads)])
        (record,) = records
    except BrokenProcessPool as exc:
        return error_record(spec, exc)
    return record


@contextlib.contextmanager
def _deaf_to_ctrl_c() -> Iterator[None]:
    """Start worker processes in the block that ignore SIGINT for good.

    In the main thread SIGINT is ignored (the processes started meanwhile inherit that) and
    blocked until the block ends, then SIGINT's handler and the signal mask are restored,
    also when a Ctrl-C raises meanwhile; a Ctrl-C of the block's milliseconds is delivered
    then (or lost, when a thread that does not block it takes it: torch's, or this one once
    multiprocessing's resource tracker, which unblocks SIGINT as it starts, was started). A
    Ctrl-C in a terminal then reaches this process alone, whose ``KeyboardInterrupt`` ends
    the workers (joblib terminates them). An ignored SIGINT (``nohup``) stays ignored.
    Elsewhere (another thread, no ``pthread_sigmask``, a SIGINT handler not set from
    Python) the block runs as it is.
    """
    if (threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "pthread_sigmask") or signal.getsignal(signal.SIGINT) is None):
        yield
        return
    # the Python handlers of signals caught meanwhile run as pthread_sigmask and signal are
    # called, before or after these change anything: what they raise must not keep SIGINT
    # blocked or ignored
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    handler = signal.getsignal(signal.SIGINT)
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        yield
    finally:
        try:
            _once_more(signal.signal, signal.SIGINT, handler)
        finally:
            _once_more(signal.pthread_sigmask, signal.SIG_SETMASK, mask)


def _once_more(call: Callable[..., Any], *args: Any) -> None:
    """``call(*args)``, called again where what it raised (a Ctrl-C handled meanwhile) may
    have cut it short, and then raised."""
    try:
        call(*args)
    except BaseException:
        call(*args)
        raise
