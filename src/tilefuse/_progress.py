"""Progress bars: the one place that decides how tilefuse shows progress.

Every stage of tilefuse (writing a project, registering the pairs, matching
intensities over the overlaps, fusing and writing) shows at most one bar,
opened with :func:`progress_bar` and advanced through the :class:`Progress`
it yields; the functions doing the work take that object, not a flag, so a
stage made of many steps (views, pyramid levels, batches) still draws one
bar.  The rules live here:

* a bar is a :mod:`tqdm` bar on stderr (a widget in a notebook), left on
  screen when done;
* a disabled bar is a :class:`Progress` that does nothing, so callers never
  test a flag;
* a bar opened while another is open (one stage calling another, e.g. a
  fused BigStitcher project written through the project writer) is disabled:
  the outer stage's bar is the one the user sees;
* a :class:`Progress` sent to another process (pickled with a task for a
  dask worker) arrives disabled: only the process that shows the bar counts.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Progress", "progress_bar", "writing"]

#: Whether a bar is open in this context: bars never nest.
_OPEN: contextvars.ContextVar[bool] = contextvars.ContextVar("tilefuse_progress_open", default=False)


class Progress:
    """A bar to advance; the one made without a bar (``Progress()``) does nothing."""

    def __init__(self, bar: Any = None) -> None:
        self._bar = bar

    @property
    def enabled(self) -> bool:
        """Whether updates are shown."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        if self._bar is not None and n:
            self._bar.update(int(n))

    def add_total(self, n: int) -> None:
        """Count ``n`` more units to do (when the work is only known once it starts)."""
        if self._bar is not None and n:
            self._bar.total = (self._bar.total or 0) + int(n)
            self._bar.refresh()

    def __reduce__(self):
        # A tqdm bar cannot travel to a dask worker, and a worker has no terminal to draw on.
        return (Progress, ())


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, *, unit: str, enabled: bool) -> Iterator[Progress]:
    """Show one bar over the block (a do-nothing :class:`Progress` when disabled or nested).

    Parameters
    ----------
    description : str
        What the stage does, e.g. ``"writing dataset.n5"``.
    total : int, optional
        Units to do; more can be added with :meth:`Progress.add_total`.
    unit : str
        What is counted, singular: ``"chunk"``, ``"pair"``, ``"overlap"``, ``"plane"``...
    enabled : bool
        Show the bar; False yields a :class:`Progress` that does nothing.

    Yields
    ------
    Progress
    """
    if not enabled or _OPEN.get():
        yield Progress()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=True, dynamic_ncols=True)
    token = _OPEN.set(True)
    try:
        yield Progress(bar)
    finally:
        _OPEN.reset(token)
        bar.close()


def writing(path: str | os.PathLike) -> str:
    """The description of a bar writing ``path``: ``"writing dataset.n5"``.

    Writers are often handed the temporary ``<name>.partial`` (see
    :mod:`tilefuse.writers._atomic`); the user knows the output by its final name.
    """
    return f"writing {Path(path).name.removesuffix('.partial')}"
