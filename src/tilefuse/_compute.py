"""Running dask work: the one place that picks the scheduler, watches a cluster and counts progress.

Every computation of tilefuse goes through :func:`compute` (or :func:`store`,
its sibling for writing dask arrays into array-like targets).  ``client=None``
runs the local threaded scheduler; a ``distributed.Client`` runs on that
cluster.  The client is always passed explicitly: nothing here (or anywhere in
tilefuse) puts a client into dask's global configuration.  A client in
``dask.config`` cannot be pickled, and the nanny copies the configuration
into every worker process it starts - so a killed worker could not be
restarted and the run hung (issue 9).

Progress
--------
``progress=True`` draws a bar of its own (:mod:`tilefuse._progress`): over
the tasks locally, over the results as they arrive on a cluster.  A stage
that shows one bar over several computations passes its
:class:`~tilefuse._progress.Progress` instead, advanced once per result.

On a cluster
------------
* Tasks are submitted with ``retries=`` (:data:`RETRIES`): a task that
  *raises* (a transient I/O error on a network file system) runs again.  A
  task whose *worker dies* is recomputed by the scheduler on another worker
  anyway; after ``allowed-failures`` such deaths (the clusters tilefuse starts
  use :data:`RETRIES` here too) the scheduler gives up with ``KilledWorker``,
  which is raised as :class:`~tilefuse.errors.WorkerLostError`.
* While waiting, the cluster is polled every :data:`POLL_INTERVAL` seconds.
  If no worker has been alive for ``worker_timeout`` seconds (default
  :data:`WORKER_TIMEOUT`, or the environment variable
  ``TILEFUSE_WORKER_TIMEOUT``), the futures are cancelled and
  :class:`~tilefuse.errors.WorkerLostError` names the workers that were lost.
  The wait is therefore always bounded.
* Any exception while waiting, ``KeyboardInterrupt`` included, cancels the
  futures before it propagates, so the scheduler does not go on computing
  for nobody.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import dask

from ._progress import Progress, progress_bar
from .errors import TilefuseError, WorkerLostError

__all__ = ["compute", "store", "worker_timeout_seconds", "RETRIES", "WORKER_TIMEOUT", "POLL_INTERVAL"]

#: Automatic re-runs of a task that raised, and deaths of its worker tolerated
#: (``allowed-failures`` of the clusters tilefuse starts), before giving up.
RETRIES = 3
#: Seconds without any live worker before a computation is abandoned.
WORKER_TIMEOUT = 60.0
#: Environment variable overriding :data:`WORKER_TIMEOUT`.
WORKER_TIMEOUT_ENV = "TILEFUSE_WORKER_TIMEOUT"
#: Seconds between two looks at the cluster while waiting for results.
POLL_INTERVAL = 0.5
_WAIT_STEP = 0.01  # seconds between two looks for arrived results: small against a task


def worker_timeout_seconds(value: float | None = None) -> float:
    """The worker timeout in seconds: ``value``, else ``$TILEFUSE_WORKER_TIMEOUT``, else 60.

    Raises
    ------
    ValueError
        ``value`` is not a positive number.
    TilefuseError
        The environment variable is set but is not a positive number.
    """
    if value is not None:
        seconds = float(value)
        if not seconds > 0:  # also refuses NaN
            raise ValueError(f"worker_timeout must be a positive number of seconds, got {value!r}")
        return seconds
    raw = os.environ.get(WORKER_TIMEOUT_ENV, "").strip()
    if not raw:
        return WORKER_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise TilefuseError(f"{WORKER_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return seconds


class _TaskCounter:
    """A dask local-scheduler callback advancing ``bar``: per task, or per finished result.

    ``results`` (the collections computed) switches to counting results: a
    collection is finished when every one of its output keys has run.  What
    no task produced (literal values, non-dask arguments) counts when the
    computation ends.
    """

    def __init__(self, bar: Progress, results: Sequence | None = None) -> None:
        from dask.callbacks import Callback

        self.bar = bar
        self.per_result = results is not None
        self.owner: dict = {}
        self.left: list[int] = []
        self.counted = 0
        if results is not None:
            from dask.core import flatten

            for i, collection in enumerate(results):
                keys = set(flatten(collection.__dask_keys__())) if dask.is_dask_collection(collection) else set()
                self.left.append(len(keys))
                for key in keys:
                    self.owner[key] = i
        self.callback = Callback(start_state=self._start_state, posttask=self._posttask, finish=self._finish)

    def _start_state(self, dsk, state) -> None:
        if not self.per_result:  # counting tasks: the total is only known now
            self.bar.add_total(sum(len(state[k]) for k in ("ready", "waiting", "running", "finished")))

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if not self.per_result:
            self.bar.update(1)
            return
        i = self.owner.pop(key, None)
        if i is not None:
            self.left[i] -= 1
            if self.left[i] == 0:
                self.counted += 1
                self.bar.update(1)

    def _finish(self, dsk, state, errored) -> None:
        if self.per_result and not errored:
            self.bar.update(len(self.left) - self.counted)
            self.counted = len(self.left)


def _local_scheduler() -> str:
    """``"threads"``, or dask's synchronous scheduler when the user configured it (to debug).

    A distributed client set as dask's default is deliberately not used: it
    would run without the cluster watch; pass it as ``client=``.
    """
    configured = dask.config.get("scheduler", None)
    if configured in ("sync", "synchronous", "single-threaded"):
        return "synchronous"
    return "threads"


def batched_tasks(prefix: str, shared: Any, func: Callable, batches: Sequence) -> list:
    """One task ``func(shared, batch)`` per batch, every task reading one graph node that holds ``shared``.

    ``shared`` (typically a loader) is then a single node: sent to each worker once
    and not pickled into every task.  Returns the tasks as ``Delayed`` objects, in
    the order of ``batches``, for :func:`compute`.
    """
    import uuid

    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    name = f"{prefix}-{uuid.uuid4().hex}"
    shared_key = f"{name}-shared"
    dsk: dict = {shared_key: shared}
    keys = [(name, i) for i in range(len(batches))]
    for key, batch in zip(keys, batches):
        dsk[key] = (func, shared_key, batch)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return [Delayed(key, graph, layer=name) for key in keys]


def compute(*collections, client: Any = None, progress: bool | Progress = False, description: str = "computing",
            num_workers: int | None = None, retries: int = RETRIES, worker_timeout: float | None = None):
    """Compute dask collections like ``dask.compute``, locally or on ``client``.

    Parameters
    ----------
    *collections
        Dask collections (arrays, delayed); other values are returned as they are.
    client : distributed.Client, optional
        Run on this cluster.  By default the local threaded scheduler (or the
        synchronous one when ``dask.config`` asks for it, for debugging); a
        default distributed client is not picked up, pass it here.
    progress : bool or Progress
        True: show a bar of its own, over the tasks (locally) or over the
        results as they arrive (on a cluster, where the tasks run elsewhere).
        A :class:`~tilefuse._progress.Progress` of the caller's stage: advance
        it by one per collection as each is finished.
    description : str
        Label of the bar opened for ``progress=True``.
    num_workers : int, optional
        Threads of the local scheduler (default: one per core).
    retries : int
        On a cluster: re-runs of a task that raised before its error is final.
    worker_timeout : float, optional
        On a cluster: seconds without any live worker before giving up
        (default ``$TILEFUSE_WORKER_TIMEOUT`` or 60).

    Returns
    -------
    tuple
        One result per collection, as ``dask.compute`` returns them.

    Raises
    ------
    WorkerLostError
        On a cluster: no worker was alive for ``worker_timeout`` seconds, or a
        task's workers died more often than the scheduler allows.
    """
    with contextlib.ExitStack() as stack:
        if isinstance(progress, Progress):
            bar, per_result = progress, True
        else:
            total = len(collections) if client is not None else None
            bar = stack.enter_context(progress_bar(description, total, unit="task", enabled=bool(progress)))
            per_result = client is not None
        if client is None:
            kwargs: dict = {"scheduler": _local_scheduler()}
            if num_workers and kwargs["scheduler"] == "threads":
                kwargs["num_workers"] = num_workers
            if bar.enabled:
                stack.enter_context(_TaskCounter(bar, collections if per_result else None).callback)
            return dask.compute(*collections, **kwargs)
        return _compute_on_cluster(client, collections, retries, worker_timeout_seconds(worker_timeout), bar)


def store(sources: Sequence, targets: Sequence, *, client: Any = None, progress: bool | Progress = False,
          description: str = "writing", **compute_kwargs) -> None:
    """Write dask arrays into targets (``target[region] = block``) through :func:`compute`.

    ``dask.array.store`` without a lock: every target serialises its own
    writes where its format needs it.  On a cluster the targets are pickled
    to the workers, which then write to the (shared) file system themselves.
    """
    import dask.array as da

    writes = da.store(list(sources), list(targets), lock=False, compute=False)
    compute(writes, client=client, progress=progress, description=description, **compute_kwargs)


# ----------------------------------------------------------------------------
# on a cluster
# ----------------------------------------------------------------------------
#: Worker addresses seen on each client over all its computations: the workers may die between two
#: computations (two batches of chunks), and the error should still name them.
_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _ClusterWatch:
    """Remembers the workers seen and how long the cluster has had none."""

    def __init__(self, client: Any, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.seen: set[str] = _SEEN.setdefault(client, set())
        self.empty_since: float | None = None
        self.check(0, 0)  # the workers now, before any dies

    def check(self, n_done: int, n_total: int) -> None:
        try:
            alive = set(self.client.nthreads())
        except (OSError, TimeoutError):  # the scheduler is unreachable: no worker either
            alive = set()
        self.seen |= alive
        if alive:
            self.empty_since = None
            return
        now = time.monotonic()
        if self.empty_since is None:
            self.empty_since = now
        elif now - self.empty_since >= self.timeout:
            raise WorkerLostError(self._message(n_done, n_total))

    def _message(self, n_done: int, n_total: int) -> str:
        scheduler = getattr(self.client.scheduler, "address", "the scheduler")
        if self.seen:
            lost = ", ".join(sorted(self.seen))
            what = f"all dask workers were lost ({lost}) and none came back"
        else:
            what = f"no dask worker connected to {scheduler}"
        return (f"{what} within {self.timeout:g} s; {n_done} of {n_total} results of this step had arrived. "
                "Check the workers' logs (memory limit? killed by the batch system?), restart them, and run "
                f"again (an OME-Zarr output resumes from its finished chunks); {WORKER_TIMEOUT_ENV} sets the wait.")


def _killed_message(exc: Exception) -> str:
    worker = getattr(getattr(exc, "last_worker", None), "address", "unknown")
    deaths = getattr(exc, "allowed_failures", RETRIES) + 1
    return (f"task {getattr(exc, 'task', '?')!r} was running on {deaths} dask workers that all died "
            f"(the last one {worker}); tilefuse stops rather than keep killing workers. A task that kills "
            "every worker usually needs more memory than a worker has: use fewer threads per worker, smaller "
            "chunks, or more memory; the workers' logs say why they died.")


def _compute_on_cluster(client: Any, collections: tuple, retries: int, timeout: float,
                        bar: Progress = Progress()) -> tuple:
    from distributed import Future, KilledWorker, as_completed

    watch = _ClusterWatch(client, timeout)
    submitted = client.compute(list(collections), retries=int(retries))
    futures = [f for f in submitted if isinstance(f, Future)]
    results: dict = {}
    try:
        # Results are fetched in the background as tasks finish; this thread only polls, so a poll never
        # interrupts a transfer, and a result lost with its worker is simply recomputed and fetched again.
        arrivals = as_completed(futures, loop=client.loop, with_results=True, raise_errors=True)
        next_check = time.monotonic() + POLL_INTERVAL
        while arrivals.count():
            if arrivals.has_ready():
                future, result = next(arrivals)  # raises the error of a failed task
                if future.cancelled():  # by the scheduler, or the connection to it was lost
                    raise result
                results[future.key] = result
                bar.update(1)
            elif time.monotonic() >= next_check:
                watch.check(len(results), len(futures))
                next_check = time.monotonic() + POLL_INTERVAL
            else:
                time.sleep(_WAIT_STEP)
    except KilledWorker as exc:
        _cancel(client, futures)
        raise WorkerLostError(_killed_message(exc)) from None
    except BaseException:
        _cancel(client, futures)
        raise
    bar.update(len(submitted) - len(futures))  # values that were not dask collections
    return tuple(results[f.key] if isinstance(f, Future) else f for f in submitted)


def _cancel(client: Any, futures: list) -> None:
    """Cancel ``futures``; best effort, the client or the scheduler may be gone already."""
    with contextlib.suppress(Exception):
        client.cancel(futures)
