"""Resample a cropped region of a view onto an output grid.  Pure functions.

Frames
------
An output grid (a whole fused volume or one of its chunks) has voxel ``x``
(numpy order) at world ``A_out @ [x, 1]``, where ``A_out`` is built by
:func:`grid_affine` from the grid's origin and spacing.  A view maps its voxel
``y`` to world with ``A_src``.  So the output voxel ``x`` samples the view at

    y = M @ [x, 1],      M = inv(A_src) @ A_out = [[L, o], [0, 1]]

Only a crop of the view is read: voxels ``y0 .. y0 + m`` (``y0`` = the crop's
start).  In the crop's local frame ``y' = y - y0 = L x + (o - y0)``, so the
crop is resampled with matrix ``L`` and offset ``o - y0``
(:func:`local_offset`).

Sampling rules (the same for both paths, and equal to
``scipy.ndimage.affine_transform`` on the whole view with ``mode="constant"``):

* linear (order 1) or nearest (order 0, ``round half up``) interpolation;
* a sample is *inside* the view when ``0 <= y_d <= n_d - 1`` on every axis
  (closed interval of voxel centres, up to :data:`INSIDE_TOL`) — except on an
  axis of length 1, where ``|y_d| <= 0.5`` counts as inside so a 2D plane stored
  as ``z == 1`` still contributes to nearby output planes;
* values are computed with edge extension (scipy ``mode="nearest"``), and the
  validity mask from :func:`inside_mask` is returned separately, so callers
  set weights to 0 outside instead of dealing with NaN.

Four paths compute the values:

* :func:`resample_affine` — any affine, through ``scipy.ndimage.affine_transform``
  on the crop (the reference);
* :func:`tilefuse.fusion.warp.warp_values` — any 2D or 3D affine (rotated,
  sheared views), compiled loops over the output (~5x scipy's speed);
* :func:`resample_shift` — ``L`` is the identity (pure translation, and output
  spacing equal to the view's voxel size, the usual stitching case).  Every
  output voxel is then the same sub-voxel shift away from a source voxel, so
  linear interpolation is separable: one two-tap pass per axis over shifted
  slices of the crop (no pass where the shift is integral), with separable
  blending weights folded into the taps.  No coordinate arrays.
* :func:`resample_diagonal` — ``L`` is diagonal (axis-aligned scaling, e.g. an
  isotropic output of anisotropic views): still separable, with per-index
  taps gathered along each axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "INSIDE_TOL",
    "grid_affine",
    "output_to_source",
    "split_affine",
    "is_shift",
    "is_diagonal",
    "local_offset",
    "source_coordinates",
    "inside_mask",
    "source_region",
    "inside_box",
    "resample_affine",
    "resample_shift",
    "resample_diagonal",
    "resample",
]

#: Slack (in source voxels) of the inside test, so that samples landing on the
#: last voxel centre up to float rounding are not lost between chunks.
INSIDE_TOL = 1e-6

#: A sub-voxel shift this close to an integer is treated as integral (plain slice).
SHIFT_TOL = 1e-6


def grid_affine(origin: Sequence[float], spacing: Sequence[float], start: Sequence[int] | None = None) -> np.ndarray:
    """Homogeneous matrix of an output grid: voxel ``x`` -> world ``origin + (start + x) * spacing``."""
    origin = np.asarray(origin, dtype=np.float64)
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), origin.shape)
    start = np.zeros_like(origin) if start is None else np.asarray(start, dtype=np.float64)
    m = np.eye(origin.size + 1)
    m[np.arange(origin.size), np.arange(origin.size)] = spacing
    m[:-1, -1] = origin + start * spacing
    return m


def output_to_source(src_affine: np.ndarray, out_affine: np.ndarray) -> np.ndarray:
    """``M = inv(A_src) @ A_out``: output voxel -> source voxel."""
    return np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(out_affine, dtype=np.float64)


def split_affine(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a homogeneous matrix into its linear block ``L`` and offset ``o``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix[:-1, :-1].copy(), matrix[:-1, -1].copy()


def is_shift(matrix: np.ndarray, atol: float = 1e-9) -> bool:
    """True if ``matrix`` only translates (its linear block is the identity)."""
    lin, _ = split_affine(matrix)
    return bool(np.allclose(lin, np.eye(lin.shape[0]), rtol=0.0, atol=atol))


def is_diagonal(matrix: np.ndarray) -> bool:
    """True if the linear part of ``matrix`` is diagonal (no rotation or shear)."""
    return _is_diagonal(split_affine(matrix)[0])


def _is_diagonal(lin: np.ndarray, atol: float = 1e-12) -> bool:
    return bool(np.all(np.abs(lin - np.diag(np.diag(lin))) <= atol))


def local_offset(matrix: np.ndarray, crop_start: Sequence[int]) -> np.ndarray:
    """Offset of ``matrix`` in the frame of a crop starting at ``crop_start``.

    With ``y = L x + o`` and crop-local ``y' = y - y0``: ``y' = L x + (o - y0)``.
    (dask-image's form ``o + L x0 - y0`` has the chunk start ``x0`` folded into
    ``o`` here, because ``M`` is built from the chunk's own grid affine.)
    """
    _, offset = split_affine(matrix)
    return offset - np.asarray(crop_start, dtype=np.float64)


def _open_grid(shape: Sequence[int]) -> list[np.ndarray]:
    nd = len(shape)
    return [
        np.arange(n, dtype=np.float64).reshape((1,) * d + (n,) + (1,) * (nd - d - 1))
        for d, n in enumerate(shape)
    ]


def source_coordinates(matrix: np.ndarray, out_shape: Sequence[int]) -> list[np.ndarray]:
    """Source voxel coordinate of every output voxel, one array per source axis.

    When ``L`` is diagonal (translation and axis-aligned scaling) the arrays
    form an open grid (each varies along one axis only), so nothing of the full
    output size is allocated; otherwise each is a full ``out_shape`` array.
    """
    lin, offset = split_affine(matrix)
    grid = _open_grid(out_shape)
    if _is_diagonal(lin):
        return [lin[d, d] * grid[d] + offset[d] for d in range(len(out_shape))]
    coords = []
    for d in range(len(out_shape)):
        c = np.full(tuple(out_shape), offset[d], dtype=np.float64)
        for k in range(len(out_shape)):
            if lin[d, k] != 0.0:
                c += lin[d, k] * grid[k]
        coords.append(c)
    return coords


def inside_mask(coords: Sequence[np.ndarray], src_shape: Sequence[int], tol: float = INSIDE_TOL) -> np.ndarray:
    """Where the coordinates fall inside the view (see the module notes).

    Returns a boolean array broadcast from ``coords`` (open grids give the full
    product shape).
    """
    mask = None
    for c, n in zip(coords, src_shape):
        if n == 1:
            m = np.abs(c) <= 0.5 + tol
        else:
            m = (c >= -tol) & (c <= (n - 1) + tol)
        mask = m if mask is None else mask & m
    return mask


def inside_box(matrix: np.ndarray, out_shape: Sequence[int], src_shape: Sequence[int]) -> tuple[slice, ...] | None:
    """For a diagonal ``L``: the box of output voxels that fall inside the view.

    With translation and axis-aligned scaling the inside test is separable and
    each axis's inside set is one interval, so the inside region is a box.
    Working on that box alone skips every masked operation.  Returns ``None``
    when the box is empty; raises ``ValueError`` if ``L`` is not diagonal.
    """
    lin, _ = split_affine(matrix)
    if not _is_diagonal(lin):
        raise ValueError("inside_box needs a diagonal linear part")
    box = []
    for d, c in enumerate(source_coordinates(matrix, out_shape)):
        inside = np.flatnonzero(inside_mask([c.ravel()], [src_shape[d]]))
        if inside.size == 0:
            return None
        box.append(slice(int(inside[0]), int(inside[-1]) + 1))
    return tuple(box)


def source_region(
    matrix: np.ndarray, out_shape: Sequence[int], src_shape: Sequence[int], order: int = 1
) -> tuple[slice, ...] | None:
    """The region of the view that an output grid needs, or ``None``.

    The grid's ``2**ndim`` corner voxels are back-projected through ``matrix``;
    their bounding box is widened to whole voxels (floor / ceil) plus one voxel
    of interpolation reach and clipped to the view.  ``None`` when no output
    voxel can fall inside the view (so nothing needs reading).
    """
    out_shape = np.asarray(out_shape)
    src_shape = np.asarray(src_shape)
    corners = np.array(list(product(*[(0, n - 1) for n in out_shape])), dtype=np.float64)
    lin, offset = split_affine(matrix)
    mapped = corners @ lin.T + offset
    cmin, cmax = mapped.min(axis=0), mapped.max(axis=0)
    valid_lo = np.where(src_shape == 1, -0.5, 0.0) - INSIDE_TOL
    valid_hi = np.where(src_shape == 1, 0.5, src_shape - 1.0) + INSIDE_TOL
    if np.any(cmax < valid_lo) or np.any(cmin > valid_hi):
        return None
    reach = 1  # linear needs floor and floor + 1; nearest stays within floor..ceil
    lo = np.clip(np.floor(cmin).astype(np.int64) - reach, 0, src_shape)
    hi = np.clip(np.ceil(cmax).astype(np.int64) + reach + 1, 0, src_shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _check_order(order: int) -> int:
    if order not in (0, 1):
        raise ValueError(f"interpolation order must be 0 (nearest) or 1 (linear), got {order!r}")
    return int(order)


def resample_affine(
    crop: np.ndarray, crop_start: Sequence[int], matrix: np.ndarray, out_shape: Sequence[int], order: int = 1
) -> np.ndarray:
    """General path: resample ``crop`` with ``scipy.ndimage.affine_transform``.

    Parameters
    ----------
    crop : ndarray
        Region of the view starting at voxel ``crop_start``.
    matrix : (ndim+1, ndim+1) ndarray
        Output voxel -> *view* voxel (not crop-local; the crop offset is
        applied here, see :func:`local_offset`).
    out_shape : tuple of int
    order : {0, 1}

    Returns
    -------
    values : float32 ndarray of ``out_shape``
        Edge-extended values; combine with :func:`inside_mask`.
    """
    order = _check_order(order)
    crop = np.asarray(crop, dtype=np.float32)
    lin, _ = split_affine(matrix)
    offset = local_offset(matrix, crop_start)
    # A 1D matrix lets scipy use its cheaper zoom/shift code for diagonal maps.
    mat = np.diag(lin).copy() if _is_diagonal(lin) else lin
    return ndi.affine_transform(
        crop, mat, offset=offset, output_shape=tuple(int(n) for n in out_shape),
        order=order, mode="nearest", output=np.float32, prefilter=False,
    )


def _separable_inputs(crop, out_shape, axis_weights):
    """Shared checks of the separable paths: a non-empty crop whose products with
    float32 taps stay float32, the output shape as ints, one weight slot per axis."""
    crop = np.asarray(crop)
    if crop.size == 0:
        raise ValueError("cannot resample an empty crop")
    if not (crop.dtype == np.float32 or (crop.dtype.kind in "uib" and crop.dtype.itemsize <= 2)):
        # numpy would promote wider integers and float64 with float32 taps to float64
        crop = crop.astype(np.float32)
    out_shape = tuple(int(n) for n in out_shape)
    if axis_weights is None:
        axis_weights = (None,) * crop.ndim
    return crop, out_shape, axis_weights


def resample_shift(
    crop: np.ndarray,
    crop_start: Sequence[int],
    shift: Sequence[float],
    out_shape: Sequence[int],
    order: int = 1,
    axis_weights: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Fast path for ``y = x + shift``: linear interpolation one axis at a time.

    Per axis the crop-local shift ``t = shift - crop_start`` splits into an
    integer ``k`` and a fraction ``f``.  With a pure translation every output
    voxel sits the same fraction ``f`` past a source voxel, so linear
    interpolation is separable: along each axis in turn,
    ``v <- (1 - f) * v[k : k + n] + f * v[k + 1 : k + 1 + n]`` (one plain slice
    where ``f == 0``).  That is ``ndim`` passes of two products and a sum,
    against ``2**ndim`` products and sums for the corner-by-corner form, and
    no coordinate arrays.  Nearest takes the one tap ``k = floor(t + 1/2)``.
    Where the taps run past the crop (only at the view's own edges, or beyond
    it) the crop is edge-padded once, which reproduces scipy's ``mode="nearest"``.

    Parameters
    ----------
    crop : ndarray
        Region of the view starting at voxel ``crop_start``.
    crop_start : sequence of int
    shift : sequence of float
        ``y = x + shift`` in view voxels (not crop-local).
    out_shape : tuple of int
    order : {0, 1}
    axis_weights : sequence of 1D arrays (or None), optional
        Separable weights ``w = prod_d axis_weights[d][x_d]`` to multiply the
        result by, one vector of length ``out_shape[d]`` per axis (``None`` for
        an axis with weight 1).  They are folded into each axis's two taps,
        so ``w * values`` costs nothing extra - this is how the fusion engine
        applies blending weights.

    Returns
    -------
    values : float32 ndarray of ``out_shape``
    """
    order = _check_order(order)
    crop, out_shape, axis_weights = _separable_inputs(crop, out_shape, axis_weights)
    nd = crop.ndim
    t = np.asarray(shift, dtype=np.float64) - np.asarray(crop_start, dtype=np.float64)
    if order == 0:
        k = np.floor(t + 0.5)
        f = np.zeros_like(t)
    else:
        k = np.floor(t)
        f = t - k
        up = f > 1.0 - SHIFT_TOL
        k[up] += 1.0
        f[up | (f < SHIFT_TOL)] = 0.0
    k = k.astype(np.int64)
    taps = np.where(f > 0.0, 2, 1)
    need_lo = k
    need_hi = k + np.asarray(out_shape) + taps - 1
    pad_before = np.maximum(0, -need_lo)
    pad_after = np.maximum(0, need_hi - np.asarray(crop.shape))
    if np.any(pad_before) or np.any(pad_after):
        crop = np.pad(crop, list(zip(pad_before, pad_after)), mode="edge")
        k = k + pad_before
    # Restrict every axis to the taps' reach first, so the passes below touch
    # only what they use.
    v = crop[tuple(slice(k[d], k[d] + out_shape[d] + taps[d] - 1) for d in range(nd))]
    fresh = False  # whether v is a new array yet (else a view of the caller's crop)
    # Interpolate the last (contiguous) axis first: its pass reads the most data.
    for d in reversed(range(nd)):
        n = out_shape[d]
        bcast = (slice(None),) + (None,) * (nd - d - 1)
        w = axis_weights[d]
        if w is not None:
            w = np.asarray(w, dtype=np.float32)
            if w.shape != (n,):
                raise ValueError(f"axis_weights[{d}] has shape {w.shape}, expected ({n},)")
        lo = tuple(slice(None) for _ in range(d)) + (slice(0, n),)
        if taps[d] == 1:
            if w is None:
                continue  # a plain slice: v already holds it
            v = np.multiply(v[lo], w[bcast], dtype=np.float32)
            fresh = True
            continue
        hi = tuple(slice(None) for _ in range(d)) + (slice(1, n + 1),)
        a = np.full(n, 1.0 - f[d], dtype=np.float32)
        b = np.full(n, f[d], dtype=np.float32)
        if w is not None:
            a *= w
            b *= w
        out = np.multiply(v[lo], a[bcast], dtype=np.float32)
        out += np.multiply(v[hi], b[bcast], dtype=np.float32)
        v = out
        fresh = True
    if not fresh:  # integral shift without weights: a copy, never a view of the input
        v = v.astype(np.float32)
    return v


def resample_diagonal(
    crop: np.ndarray,
    crop_start: Sequence[int],
    scale: Sequence[float],
    offset: Sequence[float],
    out_shape: Sequence[int],
    order: int = 1,
    axis_weights: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Fast path for ``y_d = scale_d * x_d + offset_d``: separable taps gathered per axis.

    Axis-aligned scaling (an isotropic output of anisotropic views, a
    downsampled output without a matching pyramid level) keeps linear
    interpolation separable, but every output index now has its own two
    source indices and fraction, so each axis's pass gathers with
    :func:`numpy.take` instead of slicing.  Axes that shrink the data most
    go first.  Indices are clamped at the crop's edges (scipy's
    ``mode="nearest"``).  Equal to :func:`resample_affine` within float
    rounding; ``axis_weights`` as in :func:`resample_shift`.  Pure
    translations should use :func:`resample_shift` (slices are cheaper).

    Returns
    -------
    values : float32 ndarray of ``out_shape``
    """
    order = _check_order(order)
    crop, out_shape, axis_weights = _separable_inputs(crop, out_shape, axis_weights)
    nd = crop.ndim
    scale = np.asarray(scale, dtype=np.float64)
    local = np.asarray(offset, dtype=np.float64) - np.asarray(crop_start, dtype=np.float64)
    v = crop
    # most shrinking axis first: later passes then work on less data
    for d in sorted(range(nd), key=lambda a: -abs(scale[a])):
        n, m = out_shape[d], v.shape[d]
        coords = scale[d] * np.arange(n, dtype=np.float64) + local[d]
        w = axis_weights[d]
        w = np.ones(n, dtype=np.float32) if w is None else np.asarray(w, dtype=np.float32)
        if w.shape != (n,):
            raise ValueError(f"axis_weights[{d}] has shape {w.shape}, expected ({n},)")
        bcast = (slice(None),) + (None,) * (nd - d - 1)
        if order == 0:
            idx = np.clip(np.floor(coords + 0.5).astype(np.int64), 0, m - 1)
            v = np.multiply(np.take(v, idx, axis=d), w[bcast], dtype=np.float32)
            continue
        i0 = np.floor(coords)
        f = (coords - i0).astype(np.float32)
        i0 = i0.astype(np.int64)
        lo = np.take(v, np.clip(i0, 0, m - 1), axis=d)
        hi = np.take(v, np.clip(i0 + 1, 0, m - 1), axis=d)
        out = np.multiply(lo, ((1.0 - f) * w)[bcast], dtype=np.float32)
        out += np.multiply(hi, (f * w)[bcast], dtype=np.float32)
        v = out
    return v


def resample(
    crop: np.ndarray,
    crop_start: Sequence[int],
    matrix: np.ndarray,
    out_shape: Sequence[int],
    order: int = 1,
    fast: bool = True,
) -> np.ndarray:
    """Resample ``crop`` onto the output grid, choosing the fast path when it applies.

    Translations go through :func:`resample_shift`, axis-aligned scalings
    through :func:`resample_diagonal`, any other 2D or 3D affine through
    the compiled :func:`tilefuse.fusion.warp.warp_values`, the rest through
    :func:`resample_affine`; ``fast=False`` always uses the latter (the
    reference, for tests and benchmarks).
    """
    if fast and is_shift(matrix):
        return resample_shift(crop, crop_start, split_affine(matrix)[1], out_shape, order)
    if fast and is_diagonal(matrix):
        lin, offset = split_affine(matrix)
        return resample_diagonal(crop, crop_start, np.diag(lin), offset, out_shape, order)
    if fast and np.ndim(crop) in (2, 3):
        from .warp import warp_values  # compiled with numba: imported when a rotated view needs it

        return warp_values(crop, crop_start, matrix, out_shape, order)
    return resample_affine(crop, crop_start, matrix, out_shape, order)
