"""Running the runs of a sweep on a ``dask.distributed`` cluster.

The driver (the process calling :func:`~rest_fair.experiments.runner.run_sweep`) keeps as
many runs in flight as the cluster has worker processes and alone writes the results file:
workers receive a run's spec and its experiment, never a path, and call
:func:`~rest_fair.experiments.run.run_one`, with torch threads set so that the runs sharing
a machine do not oversubscribe its cores (:func:`thread_plan`).

``distributed`` is imported only when this backend is used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .._requirements import import_optional
from .run import Experiment, available_cores, error_record, run_one, split_threads

__all__ = ["active_joblib_client", "connect", "dask_records", "thread_plan", "worker_processes"]

_UNREACHABLE = (
    "Could not connect to the Dask scheduler at {address!r} within {timeout:g} s ({error}). "
    "Check the address (e.g. tcp://HOST:8786) and that `dask scheduler` is running there."
)
_NO_WORKERS = (
    "The Dask scheduler at {address} has no workers after {timeout:g} s; start some with "
    "`dask worker {address} --nthreads 1`."
)
_NO_CLIENT = (
    "backend='dask' needs a scheduler: pass its address (scheduler=... or --scheduler), "
    "create a distributed.Client first, or call run_sweep inside "
    "joblib.parallel_config(backend='dask')."
)


def import_distributed() -> Any:
    """The ``distributed`` module, or an ImportError saying how to install it."""
    return import_optional("distributed", extra="dask", caller="The dask backend",
                           package="dask[distributed]")


def active_joblib_client() -> Any:
    """The Client of an enclosing ``joblib.parallel_config(backend="dask")``, else None."""
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    if type(backend).__name__ == "DaskDistributedBackend":
        return getattr(backend, "client", None)
    return None


def _probe(address: str, timeout: float) -> None:
    """Open and close one connection to ``address``, retrying until ``timeout``.

    A failed ``distributed.Client`` leaves a finalizer that blocks for twice the timeout
    and prints errors; probing first makes a wrong address one clear exception. The probe
    runs its own event loop in a thread, so it works under a running one (Jupyter).
    """
    from distributed.comm import connect as comm_connect

    async def attempt() -> None:
        comm = await comm_connect(address, timeout=timeout)
        comm.abort()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, attempt()).result()


@contextlib.contextmanager
def connect(scheduler: Any = None, *, timeout: float = 10.0) -> Iterator[Any]:
    """A ``distributed.Client`` with at least one worker, for the duration of a sweep.

    Parameters
    ----------
    scheduler : str, distributed.Client or None
        Scheduler address (``tcp://host:8786``), a connected Client, or None: the Client of
        an enclosing ``joblib.parallel_config(backend="dask")``, else the default Client,
        else dask's ``scheduler-address`` setting (``DASK_SCHEDULER_ADDRESS``).
    timeout : float, default=10.0
        Seconds to wait for the scheduler to answer and for a first worker to join.

    Yields
    ------
    distributed.Client
        Closed on exit only when this function opened it.

    Raises
    ------
    ImportError
        ``distributed`` is not installed.
    ConnectionError
        The scheduler cannot be reached or has no workers within ``timeout``.
    ValueError
        No scheduler is given and none is active.
    """
    distributed = import_distributed()
    import dask  # present whenever distributed is
    client = None
    if scheduler is not None and not isinstance(scheduler, str):
        client = scheduler
    elif scheduler is None:
        client = active_joblib_client()
        if client is None:
            with contextlib.suppress(ValueError):
                client = distributed.get_client()
        if client is None:
            scheduler = dask.config.get("scheduler-address", None)
            if scheduler is None:
                raise ValueError(_NO_CLIENT)
    owned = client is None
    if owned:
        try:
            if "://" not in scheduler or scheduler.startswith("tcp://"):
                _probe(scheduler, timeout)
            client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
        except Exception as exc:
            raise ConnectionError(
                _UNREACHABLE.format(address=scheduler, timeout=timeout, error=exc)
            ) from exc
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, asyncio.TimeoutError) as exc:
            address = client.scheduler.address if client.scheduler else scheduler
            raise ConnectionError(_NO_WORKERS.format(address=address, timeout=timeout)) from exc
        yield client
    finally:
        if owned:
            client.close()


def worker_processes(client: Any) -> dict[str, tuple[str, int, int]]:
    """The host, process id and usable cores of every worker of ``client``.

    Returns
    -------
    dict
        Worker address to ``(host, pid, cores)``; workers that do not answer are left out.
    """
    from distributed.comm import get_address_host

    found = client.run(_process_and_cores, on_error="ignore")
    return {address: (get_address_host(address), int(pid), int(cores))
            for address, (pid, cores) in found.items()}


def _process_and_cores() -> tuple[int, int]:
    return os.getpid(), available_cores()


def _processes_per_host(processes: Mapping[str, tuple[str, int, int]]) -> Counter[str]:
    """Distinct worker processes of each host (a process may serve several addresses)."""
    return Counter(host for host, _ in {(host, pid) for host, pid, _ in processes.values()})


def thread_plan(processes: Mapping[str, tuple[str, int, int]]) -> dict[str, int]:
    """Torch threads per run for every worker: the host's cores over its worker processes.

    Fits in threads of one process take turns (they share its torch random state, see
    :meth:`rest_fair.RESTClassifier.fit`), so a host runs as many runs at once as it has
    worker processes; each gets ``split_threads(processes_on_host, cores_of_worker)``
    threads.

    Parameters
    ----------
    processes : mapping
        :func:`worker_processes` of the cluster.

    Returns
    -------
    dict
        Worker address to torch threads.
    """
    per_host = _processes_per_host(processes)
    return {address: split_threads(per_host[host], cores)[1]
            for address, (host, _, cores) in processes.items()}


def run_on_worker(spec: Any, experiment: Experiment, plan: Mapping[str, int]) -> dict:
    """One run inside a Dask worker: torch threads from ``plan``, worker recorded."""
    from distributed import get_worker

    worker = get_worker()
    threads = plan.get(worker.address)
    if threads is None:  # a worker that joined after the plan was made
        threads = split_threads(worker.state.nthreads)[1]
    record = run_one(spec, experiment, n_threads=threads)
    record["worker"] = worker.address
    return record


def dask_records(
    client: Any,
    todo: Sequence[Any],
    experiment: Experiment,
    stop: Callable[[], bool],
) -> Iterator[dict[str, Any]]:
    """Records of ``todo`` run on the cluster, in completion order.

    As many runs as the cluster has worker processes are in flight (counted again after each
    result, for workers that join later); none is submitted once ``stop()`` is true. A run
    lost to the cluster (a worker that died) comes back as an error record. Closing the
    generator cancels the runs in flight.
    """
    distributed = import_distributed()
    queue = iter(todo)
    running: dict[Any, Any] = {}
    completed = distributed.as_completed(loop=client.loop)
    plan: dict[str, int] = {}
    planned_for: set[str] = set()
    capacity = 1

    def fill() -> None:
        nonlocal plan, planned_for, capacity
        workers = set(client.nthreads())
        if workers != planned_for:
            processes = worker_processes(client)
            plan, planned_for = thread_plan(processes), workers
            capacity = max(1, sum(_processes_per_host(processes).values()))
        while len(running) < capacity and not stop():
            spec = next(queue, None)
            if spec is None:
                return
            future = client.submit(
                run_on_worker, spec, experiment, plan,
                key=f"rest-fair-run-{uuid.uuid4().hex}",
            )
            running[future] = spec
            completed.add(future)

    try:
        fill()
        for future in completed:
            spec = running.pop(future)
            try:
                record = future.result()
            except Exception as exc:
                record = error_record(spec, exc)
            yield record
            fill()
    finally:
        if running:
            client.cancel(list(running))
