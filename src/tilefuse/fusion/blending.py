"""BigStitcher's cosine blending weights, evaluated on voxel coordinates.

The weight of a view at a point with voxel coordinates ``l`` (numpy order) is
separable (multiview-reconstruction ``BlendingRealRandomAccess``): per axis

    dist_d = min(l_d - border_d, (n_d - 1) - l_d - border_d)

i.e. the distance to the nearer end of the voxel-centre interval ``[0, n_d-1]``
shrunk by the border.  If any ``dist_d <= 0`` the weight is 0; otherwise it is

    w = prod_{d : dist_d < range_d} 0.5 * (1 + cos((1 - dist_d / range_d) * pi))

a cosine ramp from 0 at the border to 1 at ``border + range``.  BigStitcher
looks the cosine up in a table with step 0.001; we evaluate it exactly.

Two deliberate choices:

* An axis of length 1 (a 2D image stored as 3D with ``z == 1``) does not
  blend: its profile is 1.  BigStitcher drops singleton axes for the same
  reason — with ``[0, n-1] = [0, 0]`` every point would have ``dist <= 0``.
* The profiles here are BigStitcher's exactly, so the outermost voxel of a
  view has weight 0.  The fusion engine, not this module, keeps such voxels
  from turning black where no other view covers them (see
  :data:`tilefuse.fusion.engine.EDGE_WEIGHT`).

Ranges and borders are in *voxels of the view*; :func:`adjust_blending`
converts BigStitcher's world-unit values per axis, like ``FusionTools.adjustBlending``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry.affine import axis_scales

__all__ = ["cosine_profile", "cosine_profiles", "cosine_weights", "adjust_blending"]


def cosine_profile(coords: np.ndarray, n: int, blend_range: float, border: float = 0.0) -> np.ndarray:
    """Blending weight along one axis of a view of length ``n``.

    Parameters
    ----------
    coords : ndarray
        Voxel coordinates along this axis (any shape).
    n : int
        Length of the view along this axis.
    blend_range : float
        Width of the cosine ramp in voxels; ``<= 0`` means a hard edge.
    border : float
        Distance from each end, in voxels, where the weight is 0.

    Returns
    -------
    weights : float32 ndarray, same shape as ``coords``
    """
    coords = np.asarray(coords, dtype=np.float64)
    if n <= 1:
        return np.ones(coords.shape, dtype=np.float32)
    dist = np.minimum(coords - border, (n - 1) - coords - border)
    if blend_range <= 0:
        return (dist > 0).astype(np.float32)
    w = np.ones(coords.shape, dtype=np.float32)
    # The cosine only where the ramp is: most voxels of a view lie beyond it.
    ramp = dist < blend_range
    d = dist[ramp]
    w[ramp] = 0.5 * (1.0 + np.cos((1.0 - np.clip(d / blend_range, 0.0, 1.0)) * np.pi))
    w[dist <= 0] = 0.0  # exactly 0 at and beyond the border, as in BigStitcher
    return w


def cosine_profiles(coords: np.ndarray, n, blend_range, border=0.0) -> np.ndarray:
    """:func:`cosine_profile` of many views at once: each element with its own ``n``, range and border.

    ``n``, ``blend_range`` and ``border`` broadcast against ``coords``.  Element
    by element the result is :func:`cosine_profile`'s, bit for bit (the same
    float64 operations); the fusion engine evaluates all the views of a
    chunk in one call instead of one call per view and axis.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), coords.shape)
    blend_range = np.broadcast_to(np.asarray(blend_range, dtype=np.float64), coords.shape)
    border = np.broadcast_to(np.asarray(border, dtype=np.float64), coords.shape)
    dist = np.minimum(coords - border, (n - 1) - coords - border)
    w = np.ones(coords.shape, dtype=np.float32)
    ramp = (dist < blend_range) & (blend_range > 0)  # a range <= 0 is a hard edge: 1 inside, 0 at the border
    d = dist[ramp]
    w[ramp] = 0.5 * (1.0 + np.cos((1.0 - np.clip(d / blend_range[ramp], 0.0, 1.0)) * np.pi))
    w[dist <= 0] = 0.0
    w[n <= 1] = 1.0
    return w


def _per_axis(value, ndim: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (ndim,))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


def cosine_weights(
    shape_or_coords,
    blend_range_vox,
    border_vox=0.0,
    *,
    view_shape: Sequence[int] | None = None,
    floor: float = 0.0,
) -> np.ndarray:
    """Cosine blending weights of a view, on its own grid or at given coordinates.

    Parameters
    ----------
    shape_or_coords : tuple of int, or sequence of ndarray
        Either the view's shape — weights are returned for every voxel of the
        view — or one coordinate array per axis (numpy order) in the view's
        voxel space.  Coordinate arrays only need to broadcast against each
        other: pass an open grid (``np.ogrid``-style 1D arrays) for the
        separable translation case, or full arrays for a rotated sampling.
    blend_range_vox, border_vox : float or sequence of float
        Ramp width and border per axis, in voxels of the view.
    view_shape : tuple of int, optional
        The view's shape; required when coordinates are given.
    floor : float
        Lower bound applied to each axis's profile before the product (the
        fusion engine's :data:`~tilefuse.fusion.engine.EDGE_WEIGHT`).

    Returns
    -------
    weights : float32 ndarray
        The product of the per-axis profiles, broadcast to the common shape.
    """
    items = list(shape_or_coords)
    is_shape = all(np.ndim(v) == 0 and float(v) == int(v) for v in items)
    if is_shape:
        view_shape = tuple(int(v) for v in items)
        coords = [
            np.arange(n, dtype=np.float64).reshape((1,) * d + (n,) + (1,) * (len(items) - d - 1))
            for d, n in enumerate(view_shape)
        ]
    else:
        if view_shape is None:
            raise ValueError("view_shape is required when coordinates are given")
        coords = [np.asarray(c, dtype=np.float64) for c in items]
    ndim = len(view_shape)
    if len(coords) != ndim:
        raise ValueError(f"got {len(coords)} coordinate arrays for a {ndim}D view")
    ranges = _per_axis(blend_range_vox, ndim, "blend_range_vox")
    borders = _per_axis(border_vox, ndim, "border_vox")
    out_shape = np.broadcast_shapes(*(c.shape for c in coords))
    weights = np.ones(out_shape, dtype=np.float32)
    for c, n, r, b in zip(coords, view_shape, ranges, borders):
        if n > 1:
            weights = weights * np.maximum(cosine_profile(c, int(n), float(r), float(b)), np.float32(floor))
    return weights


def adjust_blending(blend_range: float, border: float, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert world-unit blending range and border into a view's voxels, per axis.

    BigStitcher divides by the length of each voxel axis in world units
    (``FusionTools.adjustBlending``), so on data with 2.7x coarser z the z ramp
    is 40 / 2.7 voxels long but still 40 world units.

    Returns
    -------
    range_vox, border_vox : (ndim,) float64 ndarrays
    """
    scales = axis_scales(np.asarray(affine, dtype=np.float64))
    scales = np.where(scales > 0, scales, 1.0)
    return float(blend_range) / scales, float(border) / scales
