"""Overlap consistency: how well each pair of tiles agrees where they overlap, at the final positions.

A link that was rejected, or that the global solve could not satisfy, leaves
its two tiles where the *other* links put them; if that is wrong the fused
image ghosts there (a mark seen twice).  The registration report shows, per
pair, the Pearson correlation of the two tiles over their common area at the
final positions, next to the best correlation the pair reached on its own
(the pairwise step's), so that such a pair shows without looking at the
image: it is :meth:`~tilefuse.registration.api.RegistrationResult.warnings`'
"overlap correlates at 0.39 at the final positions, 0.62 at its best
alignment".

Reading every overlap again would double the reading of registration, so a
link whose final relative position is within :data:`TOLERANCE` of its own
measured shift takes its measured correlation (it *is* the correlation at
that alignment, to the sub-pixel part); only the others are read and
correlated, at the final positions with linear interpolation, in dask tasks
of up to :data:`_BATCH` pairs (through :func:`tilefuse._compute.compute`, on
the registration's threads or cluster) rather than one after another in the
client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
from scipy import ndimage

from ..project.project import Project
from .pairwise import Link, RegistrationGroups, _Plan, _read_group

__all__ = ["TOLERANCE", "overlap_consistency", "correlation_at"]

log = logging.getLogger(__name__)

#: World units: a link this close to the final relative position keeps its measured correlation.
TOLERANCE = 0.5


def correlation_at(fixed: np.ndarray, moving: np.ndarray, shift: Sequence[float]) -> float:
    """Pearson correlation of ``fixed[x]`` and ``moving[x - shift]`` where both exist (sub-pixel, linear).

    NaN when fewer than 16 pixels overlap or either side is constant there.
    """
    moved = ndimage.shift(moving.astype(np.float64), shift, order=1, mode="constant", cval=np.nan)
    both = np.isfinite(moved)
    if np.count_nonzero(both) < 16:
        return float("nan")
    a, b = fixed.astype(np.float64)[both], moved[both]
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / den) if den > 0 else float("nan")


#: Most re-read pairs per dask task.
_BATCH = 16


class _Reads:
    """The re-reads of one task (an object, so that dask does not walk its contents looking for keys)."""

    def __init__(self, jobs: list) -> None:
        self.jobs = jobs


def _correlate_batch(loader, batch: _Reads) -> list[float]:
    """One dask task: read each pair's two overlap crops and correlate them at the final relative shift."""
    out = []
    for read, final, w0_a, w0_b, spacing in batch.jobs:
        fixed = _read_group(loader, read.views_a, read.level, read.region_a, read.factors)
        moving = _read_group(loader, read.views_b, read.level, read.region_b, read.factors)
        shape = tuple(min(p, q) for p, q in zip(fixed.shape, moving.shape))
        fixed = fixed[tuple(slice(0, n) for n in shape)]
        moving = moving[tuple(slice(0, n) for n in shape)]
        # as in pairwise: A_crop[x] ≈ B_crop[x - d] when t_b - t_a = w0_a - w0_b + spacing * d
        d = (final - (w0_a - w0_b)) / spacing
        d = np.where(np.asarray(shape) > 1, d, 0.0)
        out.append(correlation_at(fixed, moving, d) if min(shape) > 0 else float("nan"))
    return out


def _run_reads(loader, jobs: list, client) -> list[float]:
    """Compute ``jobs`` in batched tasks sharing one loader node; one value per job, in order."""
    from .._compute import batched_tasks, compute

    if not jobs:
        return []
    batches = [_Reads(jobs[i : i + _BATCH]) for i in range(0, len(jobs), _BATCH)]
    results = compute(*batched_tasks("tilefuse-consistency", loader, _correlate_batch, batches), client=client)
    return [value for batch in results for value in batch]


def overlap_consistency(project: Project, groups: RegistrationGroups, links: Sequence[Link],
                        translations: dict, *, client=None) -> list[float]:
    """Per link, the correlation of its two groups over their overlap at the final positions.

    Parameters
    ----------
    project : Project
        The project registered (its current models are the *stage* positions).
    groups : RegistrationGroups
    links : sequence of Link
        The links of a solve (their overlap, measured shift and correlation).
    translations : dict
        Group key -> final world correction (``zyx``), as solved.
    client : distributed.Client, optional
        Read and correlate the pairs on this cluster; default: local threads.

    Returns
    -------
    list of float
        One per link (NaN when the overlap has no pixels in common at the
        final positions, or is constant).
    """
    first = {key: views[0] for key, views in groups.used.items()}
    layouts: dict = {}
    plan = None
    out: list[float] = []
    jobs, where_read = [], []
    for link in links:
        final = np.asarray(translations[link.b], dtype=np.float64) - np.asarray(translations[link.a], dtype=np.float64)
        if link.valid and np.isfinite(link.correlation) and np.linalg.norm(final - link.shift) <= TOLERANCE:
            out.append(float(link.correlation))
            continue
        if plan is None:  # full resolution: only the few pairs that moved are read
            plan = _Plan(project, layouts, (1, 1, 1))
        for key in (link.a, link.b):
            for view in groups.used[key]:
                if view not in layouts:  # checked here, before any task reads it
                    layouts[view] = project.check_view(view)
        read, meta = plan.pair(groups, first, SimpleNamespace(a=link.a, b=link.b, overlap=link.overlap))
        spacing, w0_a, w0_b = meta[:3]
        jobs.append((read, final, w0_a, w0_b, spacing))
        where_read.append(len(out))
        out.append(float("nan"))
    if jobs:
        for i, value in zip(where_read, _run_reads(project.loader, jobs, client)):
            out[i] = value
    log.debug("overlap consistency: %d of %d pairs read again (the others agree with the solution within %g)",
              len(jobs), len(links), TOLERANCE)
    return out
