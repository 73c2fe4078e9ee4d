"""Running dask work: one place that picks the scheduler and shows progress.

Every stage (pairwise registration, fusion, writing) computes through
:func:`compute` so that ``client=`` (a ``distributed.Client``) or the local
threaded scheduler is chosen the same way everywhere, and a progress bar is
shown only when asked (the CLI asks; the API is quiet by default).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask

__all__ = ["compute", "progress_bar", "scheduler_kwargs"]


def scheduler_kwargs(client: Any = None, num_workers: int | None = None) -> dict:
    """Keyword arguments for ``dask.compute``/``dask.array.store``."""
    if client is not None:
        return {"scheduler": client}
    kwargs: dict = {"scheduler": "threads"}
    if num_workers:
        kwargs["num_workers"] = num_workers
    return kwargs


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, client: Any = None) -> Iterator[None]:
    """Show a tqdm bar over the dask tasks run inside the block (local schedulers).

    With a distributed client the bar follows task completions reported by the
    local dask callbacks only when they run locally; on a cluster, use the
    dashboard.
    """
    if not enabled or client is not None:
        yield
        return
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    class _Bar(Callback):
        def _start_state(self, dsk, state):
            self._bar = tqdm(total=sum(len(state[k]) for k in ("ready", "waiting", "running", "finished")),
                             desc=description, unit="task", leave=True)

        def _posttask(self, key, result, dsk, state, worker_id):
            self._bar.update(1)

        def _finish(self, dsk, state, errored):
            self._bar.close()

    with _Bar():
        yield


def compute(*collections, client: Any = None, progress: bool = False, description: str = "computing",
            num_workers: int | None = None):
    """``dask.compute`` with tilefuse's scheduler choice and optional progress bar."""
    with progress_bar(progress, description, client):
        return dask.compute(*collections, **scheduler_kwargs(client, num_workers))
