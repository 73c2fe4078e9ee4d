"""A stage axis running against the image's: seen in the pixels of the overlaps, before registration.

Vendors disagree on which way a stage axis runs relative to the camera (a
Leica system may record ``FlipY``, many Micro-Manager and Nikon setups need a
flipped y in BigStitcher), and a mirrored layout keeps every overlap's size,
so :func:`tilefuse.convert.layout.layout_warnings` cannot see it.  The pixels
can: :func:`flip_warning` compares the neighbours' overlaps as placed and with
x, y or both mirrored, and names the ``--stage-axes`` that makes them agree
when that is far better than the layout as placed.

The comparison is the best correlation of the two tiles' overlap on one
z-plane within a few pixels of shift (registration's phase correlation, so
that stage errors do not blur the answer); only side neighbours are compared,
at most :data:`MAX_PAIRS` overlaps per layout (the largest).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["flip_warning", "MAX_PAIRS"]

#: overlaps read per hypothesis (the largest ones)
MAX_PAIRS = 6
#: overlaps narrower than twice this are not compared (pixels)
_BLOCK = 4
#: the largest stage error looked for while comparing an overlap (pixels)
_MAX_SHIFT = 12
#: a hypothesis must beat the layout as placed by this much (correlation) and reach _GOOD
_MARGIN, _GOOD = 0.15, 0.5

_HYPOTHESES = {(1, 1): None, (1, -1): "x", (-1, 1): "y", (-1, -1): "x and y"}


def flip_warning(project, views, stage_axes: str, *, client=None) -> str | None:
    """A warning naming the ``--stage-axes`` under which the tiles' overlaps agree far better, or None.

    Parameters
    ----------
    project : Project
        The converted project (pixels are read through it, so every view is checked first).
    views : list of ViewId
        One view per tile (the same channel and timepoint).
    stage_axes : str
        The ``--stage-axes`` the project was made with (the suggestion changes its signs).
    client : distributed.Client, optional
        Where the overlaps are read (through :func:`tilefuse._compute.compute`).
    """
    from .._compute import compute

    if len(views) < 2:
        return None
    models = [project.model(v) for v in views]
    shapes = [np.array(project.loader.shape(v), dtype=float) for v in views]
    scales = np.array([np.diag(m)[:3] for m in models])
    if not np.allclose(np.array([m[:3, :3] for m in models]), np.array([np.diag(s) for s in scales])):
        return None  # rotated views: not a stage mosaic
    origins = np.array([m[:3, 3] for m in models])
    extents = scales * np.array(shapes)
    reads, plans = {}, {}
    for signs in _HYPOTHESES:
        mirrored = _mirror(origins, extents, signs)
        plans[signs] = _pairs(mirrored, extents)
        for i, j, box in plans[signs]:
            for k in (i, j):
                region = _region(box, mirrored[k], scales[k], shapes[k])
                if region is not None:
                    z, y0, y1, x0, x1 = region
                    reads.setdefault((k, region), project.image(views[k])[z:z + 1, y0:y1, x0:x1])
    if not reads:
        return None
    keys = list(reads)
    values = dict(zip(keys, compute(*(reads[k] for k in keys), client=client)))
    scores = {}
    for signs, pairs in plans.items():
        correlations = []
        mirrored = _mirror(origins, extents, signs)
        for i, j, box in pairs:
            ri = _region(box, mirrored[i], scales[i], shapes[i])
            rj = _region(box, mirrored[j], scales[j], shapes[j])
            if ri is not None and rj is not None:
                correlations.append(_ncc(values[i, ri], values[j, rj]))
        if correlations:
            scores[signs] = float(np.mean(correlations))
    given = scores.get((1, 1))
    if given is None or len(scores) < 2:
        return None
    log.debug("overlap correlation per stage flip (y, x signs): %s", scores)
    # The fewest flips among those about as good as the best (a 2-row grid may not tell x from x and y).
    top = max(scores.values())
    best = min((signs for signs in scores if scores[signs] >= top - 0.05), key=lambda signs: signs.count(-1))
    if best == (1, 1) or scores[best] < _GOOD or scores[best] - given < _MARGIN:
        return None
    suggestion = _flipped_spec(stage_axes, best)
    return (f"the tiles' overlaps agree far better with the stage's {_HYPOTHESES[best]} axis flipped (mean "
            f"correlation {scores[best]:.2f}, against {given:.2f} as placed): the stage probably runs against the "
            f"camera there; give --stage-axes={suggestion}")


def _mirror(origins: np.ndarray, extents: np.ndarray, signs: tuple[int, int]) -> np.ndarray:
    """Tile origins with y and/or x mirrored (``signs``: y, x): a tile's far edge becomes its near one."""
    out = origins.copy()
    for axis, sign in zip((1, 2), signs):
        if sign < 0:
            out[:, axis] = -(origins[:, axis] + extents[:, axis])
    return out


def _pairs(origins: np.ndarray, extents: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """The largest overlaps ``(i, j, (lo, hi))`` of tiles placed at ``origins``."""
    lo = np.maximum(origins[:, None], origins[None])
    hi = np.minimum(origins[:, None] + extents[:, None], origins[None] + extents[None])
    size = np.clip(hi - lo, 0, None)
    # Side neighbours only (sharing at least half a side): corner overlaps are small and say little.
    side = (size[..., 1] >= 0.5 * extents[:, None, 1]) | (size[..., 2] >= 0.5 * extents[:, None, 2])
    area = size[..., 1] * size[..., 2] * (size[..., 0] > 0) * side
    n = len(origins)
    pairs = [(area[i, j], i, j) for i in range(n) for j in range(i + 1, n) if area[i, j] > 0]
    pairs.sort(reverse=True)
    return [(i, j, np.stack([lo[i, j], hi[i, j]])) for _, i, j in pairs[:MAX_PAIRS]]


def _region(box: np.ndarray, origin: np.ndarray, scale: np.ndarray, shape: np.ndarray):
    """The voxels of a tile inside a world box: ``(z, y0, y1, x0, x1)``, one z-plane (the box's middle)."""
    lo = np.floor((box[0] - origin) / scale + 1e-6).astype(int)
    hi = np.ceil((box[1] - origin) / scale - 1e-6).astype(int)
    lo, hi = np.clip(lo, 0, shape.astype(int)), np.clip(hi, 0, shape.astype(int))
    if (hi[1:] - lo[1:] < 2 * _BLOCK).any():
        return None
    z = int(min(max((lo[0] + hi[0]) // 2, 0), int(shape[0]) - 1))
    return (z, int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))  # (plain ints: a dictionary key)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """The best correlation of two overlap planes within a few pixels of shift (stage errors), or 0.

    Registration's own phase correlation (integer shifts, no sub-pixel step), the shift limited to a
    third of the overlap's narrow side and to :data:`_MAX_SHIFT` pixels.
    """
    from scipy.ndimage import gaussian_filter

    from ..registration.phase_correlation import pairwise_shift

    a, b = np.asarray(a, dtype=np.float32)[0], np.asarray(b, dtype=np.float32)[0]
    ny, nx = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    if min(ny, nx) < 2 * _BLOCK:
        return 0.0
    # Band-pass first: vignetting and uneven illumination repeat in every tile, so any two strips
    # along the same edge would correlate through them, right layout or not.
    # (A band pass: the fine end keeps pixel noise out as well.)
    a, b = (gaussian_filter(x[:ny, :nx], 1.5, mode="nearest") - gaussian_filter(x[:ny, :nx], _BLOCK, mode="nearest")
            for x in (a, b))
    limit = max(1.0, min(_MAX_SHIFT, min(ny, nx) / 3))
    result = pairwise_shift(a[:ny, :nx], b[:ny, :nx], subpixel=False, max_shift=limit, min_overlap=0.5)
    return float(result.correlation) if result.valid and np.isfinite(result.correlation) else 0.0


def _flipped_spec(spec: str, signs: tuple[int, int]) -> str:
    """``spec`` (image x, y, z as stage axes) with image y and/or x negated as ``signs`` (y, x) say."""
    parts = [p.strip() for p in spec.split(",")]
    for index, sign in ((1, signs[0]), (0, signs[1])):  # parts are in x, y, z order
        if sign < 0:
            parts[index] = parts[index][1:] if parts[index].startswith("-") else "-" + parts[index].lstrip("+")
    return ",".join(parts)
