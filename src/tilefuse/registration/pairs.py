"""Which groups of views overlap, from their current transforms (no pixels read)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from ..geometry import Box

__all__ = ["OverlapPair", "overlapping_pairs"]


@dataclass(frozen=True)
class OverlapPair:
    """Two groups whose world boxes overlap, with the overlap box (world, ``zyx``)."""

    a: Hashable
    b: Hashable
    overlap: Box
    #: Overlap volume over the smaller group's volume.
    fraction: float


def overlapping_pairs(
    boxes: Mapping[Hashable, Box],
    *,
    min_fraction: float = 0.0,
    neighbours_only: bool = False,
    same: Mapping[Hashable, Hashable] | None = None,
) -> list[OverlapPair]:
    """All pairs of boxes that overlap by at least ``min_fraction``.

    Parameters
    ----------
    boxes : mapping
        Group key -> world box.
    min_fraction : float
        Minimum overlap volume relative to the smaller box (0-1).  Axes of
        zero extent (2D data) count as length 1.
    neighbours_only : bool
        Keep only grid neighbours: pairs whose overlap is thin along exactly
        one axis of the tile (face neighbours), dropping diagonal ones.
    same : mapping, optional
        Group key -> partition key (e.g. timepoint); only groups in the same
        partition are paired.

    Notes
    -----
    Sorting the boxes along their longest world axis (sweep and prune) keeps
    this near-linear for thousands of tiles.
    """
    keys = list(boxes)
    if len(keys) < 2:
        return []
    lo = np.array([boxes[k].lo for k in keys], dtype=np.float64)
    hi = np.array([boxes[k].hi for k in keys], dtype=np.float64)
    extent = np.maximum(hi - lo, 0.0) + 1.0  # voxel centres: a span of n-1 holds n voxels
    volume = np.prod(extent, axis=1)
    axis = int(np.argmax(hi.max(0) - lo.min(0)))
    order = np.argsort(lo[:, axis], kind="stable")
    pairs = []
    for pos, i in enumerate(order):
        # candidates j start before i ends along the sweep axis
        rest = order[pos + 1 :]
        rest = rest[lo[rest, axis] <= hi[i, axis]]
        if rest.size == 0:
            continue
        olo = np.maximum(lo[i], lo[rest])
        ohi = np.minimum(hi[i], hi[rest])
        ok = np.all(ohi >= olo, axis=1)
        for j, box_lo, box_hi in zip(rest[ok], olo[ok], ohi[ok]):
            ka, kb = keys[i], keys[j]
            if same is not None and same[ka] != same[kb]:
                continue
            ext = (box_hi - box_lo) + 1.0
            frac = float(np.prod(ext) / min(volume[i], volume[j]))
            if frac < min_fraction:
                continue
            if neighbours_only:
                thin = (ext / np.minimum(extent[i], extent[j])) < 0.5
                if int(thin.sum()) != 1:
                    continue
            a, b = (ka, kb) if i < j else (kb, ka)
            pairs.append(OverlapPair(a, b, Box.from_arrays(box_lo, box_hi), frac))
    index = {k: n for n, k in enumerate(keys)}
    pairs.sort(key=lambda p: (index[p.a], index[p.b]))
    return pairs


