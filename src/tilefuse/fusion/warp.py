"""Fast resampling of rotated and sheared views: compiled loops over the output grid.

The separable fast paths of :mod:`tilefuse.fusion.resample` need a diagonal
``L`` (translation, axis-aligned scaling).  A view at another angle of a
multi-view acquisition, or any view after an affine registration, has a full
``L``: every output voxel needs its own eight (3D) or four (2D) source voxels
and fractions.  ``scipy.ndimage.affine_transform`` does that at ~19 Mvox/s per
core.  Done with numpy arrays (coordinates, flat indices, ``np.take`` of every
corner, corner pairs packed into wider elements, lerps) it stayed at 2.1-2.4x
that on a 64x256x256 chunk of a view rotated by 45 degrees: every step is a
pass over memory and each gather costs ~1.3 ns per voxel.  So the loops are
compiled with numba (7x scipy on that chunk; ``benchmarks/bench_affine.py``),
one pass over the output with nothing stored per voxel:

* source coordinates are computed along each output row in float64 and in
  the same order as :func:`~tilefuse.fusion.resample.source_coordinates`
  (so the inside test is the same as
  :func:`~tilefuse.fusion.resample.inside_mask`'s);
* values are interpolated on the crop with edge extension as
  ``scipy.ndimage.affine_transform(mode="nearest", prefilter=False)`` does
  (linear, in float32 lerps; nearest rounds half up), stored as float32;
* :func:`blend_warped` folds in everything the fusion engine's general path
  applies to a sample - the inside test, BigStitcher's cosine weights floored
  per axis (or 1 for average blending), content-based weights interpolated
  from their own grid, the intensity correction - and adds ``w * I`` and
  ``w`` to the chunk's accumulators.  No coordinate, mask, weight or value
  array exists: memory is the crop and the accumulators.

Rules are those of :mod:`tilefuse.fusion.resample` (module notes) and
:mod:`tilefuse.fusion.blending`; tests compare with the scipy path.  A 2D
problem is run as a 3D one with a singleton first axis.  The kernels are
compiled on first use (a few seconds, then cached on disk by numba) and
release the GIL, so dask's threads run them in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from numba import uint64

from .resample import INSIDE_TOL

__all__ = ["warp_values", "blend_warped", "KERNEL_DTYPES"]

#: Pixel types the kernels read directly; others are converted to float32 first
#: (one compiled kernel per type, so the list is short).
KERNEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


#: Output block (z, y, x) the kernels walk at a time: the source voxels a block
#: of a rotated view needs stay in cache while it is done (~10 % faster than
#: whole rows on a 45-degree view; 8x32x32 .. 16x16x64 measured alike).
_BZ, _BY, _BX = 8, 32, 32

# Compiled on first use, then loaded from numba's on-disk cache.  error_model="numpy": no
# Python-style zero-division checks in the loops (the one division, by a ramp width, is
# guarded), worth 15 % on a cosine-blended chunk.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_inline = numba.njit(inline="always", cache=True)


@_inline
def _axis_taps(u, hi, imax, order):
    """Lower index and fraction along one axis at crop-local ``u`` (``hi = m - 1``, ``imax = max(m - 2, 0)``)."""
    # scipy's mode="nearest": coordinates beyond the crop take its edge value
    u = min(max(u, 0.0), hi)
    if order == 0:
        return int(u + 0.5), np.float32(0.0)  # u + 0.5 >= 0: truncation is floor (round half up)
    i = min(int(u), imax)
    return i, np.float32(u - i)


@_inline
def _geometry(data):
    """What the samplers need of an array's shape, computed once per call rather than per voxel."""
    m0, m1, m2 = data.shape
    # steps to the upper neighbour in the raveled array (0 along a singleton axis)
    return (m0, m1, m2, m0 - 1.0, m1 - 1.0, m2 - 1.0, max(m0 - 2, 0), max(m1 - 2, 0), max(m2 - 2, 0),
            uint64(m1 * m2 if m0 > 1 else 0), uint64(m2 if m1 > 1 else 0), uint64(1 if m2 > 1 else 0))


@_inline
def _taps(geo, u0, u1, u2, order):
    """Flat index of the lower corner and the three fractions at crop-local ``(u0, u1, u2)``."""
    m0, m1, m2, h0, h1, h2, j0, j1, j2, d0, d1, d2 = geo
    i0, f0 = _axis_taps(u0, h0, j0, order)
    i1, f1 = _axis_taps(u1, h1, j1, order)
    i2, f2 = _axis_taps(u2, h2, j2, order)
    return (i0 * m1 + i1) * m2 + i2, f0, f1, f2


@_inline
def _lerp(flat, geo, k, f0, f1, f2, order):
    """The value from the lower corner ``k`` and the fractions: linear (float32 lerps) or nearest."""
    d0, d1, d2 = geo[9], geo[10], geo[11]
    k = uint64(k)  # unsigned: no negative-index wrap checks
    if order == 0:
        return np.float32(flat[k])
    p = np.float32(flat[k])
    v00 = p + f2 * (np.float32(flat[k + d2]) - p)
    p = np.float32(flat[k + d1])
    v01 = p + f2 * (np.float32(flat[k + d1 + d2]) - p)
    p = np.float32(flat[k + d0])
    v10 = p + f2 * (np.float32(flat[k + d0 + d2]) - p)
    p = np.float32(flat[k + d0 + d1])
    v11 = p + f2 * (np.float32(flat[k + d0 + d1 + d2]) - p)
    v0 = v00 + f1 * (v01 - v00)
    v1 = v10 + f1 * (v11 - v10)
    return v0 + f0 * (v1 - v0)


@_inline
def _sample(flat, geo, u0, u1, u2, order):
    """Value at crop-local ``(u0, u1, u2)``."""
    k, f0, f1, f2 = _taps(geo, u0, u1, u2, order)
    return _lerp(flat, geo, k, f0, f1, f2, order)


@_inline
def _inside(c, n, tol):
    if n == 1:
        return abs(c) <= 0.5 + tol
    return c >= -tol and c <= (n - 1) + tol


#: BigStitcher's ramp ``0.5 * (1 + cos((1 - t) * pi)) = sin(pi t / 2) ** 2``, with the sine
#: tabulated on ``t = 0, 1/N, .., 1`` and interpolated linearly, then squared: within 5e-8 of
#: the exact value *relative to it* (float32 rounding, also for the tiny weights near a view's
#: edge, where an absolute error would be amplified in ``sum w I / sum w``), and cheaper than a
#: cosine per voxel.  BigStitcher itself looks the cosine up in a table of step 0.001.
_RAMP_STEPS = 4096
_SINE = np.sin(np.linspace(0.0, np.pi / 2, _RAMP_STEPS + 1))


@_inline
def _cosine(c, n, rng, border, floor):
    """One axis's floored cosine weight, float32 (as ``cosine_profile`` then the floor)."""
    if n <= 1:
        return np.float32(1.0)
    dist = min(c - border, (n - 1) - c - border)
    if rng <= 0.0:
        p = 1.0 if dist > 0.0 else 0.0
    elif dist <= 0.0:
        p = 0.0
    elif dist < rng:
        t = dist / rng * _RAMP_STEPS
        i = min(int(t), _RAMP_STEPS - 1)
        p = _SINE[i] + (t - i) * (_SINE[i + 1] - _SINE[i])
        p = p * p
    else:
        p = 1.0
    return max(np.float32(p), floor)


@_jit
def _warp(crop, m, start, order, out):
    """``out[x] = crop(M x - start)`` with edge extension, float32."""
    flat = crop.ravel()
    geo = _geometry(crop)
    res = out.ravel()
    nz, ny, nx = out.shape
    # Per row segment, first the indices and fractions (a loop the compiler vectorises),
    # then the gathers: 1.8x faster than one loop doing both (64x256x256 chunk, 45 degrees).
    idx = np.empty(_BX, np.int64)
    fr0 = np.empty(_BX, np.float32)
    fr1 = np.empty(_BX, np.float32)
    fr2 = np.empty(_BX, np.float32)
    for z0 in range(0, nz, _BZ):
        for y0 in range(0, ny, _BY):
            for x0 in range(0, nx, _BX):
                x1 = min(x0 + _BX, nx)
                for z in range(z0, min(z0 + _BZ, nz)):
                    for y in range(y0, min(y0 + _BY, ny)):
                        # row start, summed as source_coordinates does
                        r0 = (m[0, 3] + m[0, 0] * z) + m[0, 1] * y
                        r1 = (m[1, 3] + m[1, 0] * z) + m[1, 1] * y
                        r2 = (m[2, 3] + m[2, 0] * z) + m[2, 1] * y
                        for x in range(x0, x1):
                            idx[x - x0], fr0[x - x0], fr1[x - x0], fr2[x - x0] = _taps(
                                geo, (r0 + m[0, 2] * x) - start[0], (r1 + m[1, 2] * x) - start[1],
                                (r2 + m[2, 2] * x) - start[2], order)
                        row = (z * ny + y) * nx
                        for x in range(x0, x1):
                            i = x - x0
                            res[uint64(row + x)] = _lerp(flat, geo, idx[i], fr0[i], fr1[i], fr2[i], order)


@_inline
def _flat(c_first, c_last, n, rng, border):
    """Whether an axis's cosine profile is 1 all along a row segment (both ends beyond the ramp).

    The coordinate is monotonic along the segment, so both ends suffice; the
    test is the one :func:`_cosine` makes, so skipping it changes nothing.
    """
    if n <= 1:
        return True
    return min(c_first - border, (n - 1) - c_first - border) >= rng > 0.0 and \
        min(c_last - border, (n - 1) - c_last - border) >= rng


@_jit
def _blend(crop, m, start, order, shape, cos_w, rng, border, floor, gain, offset, adjust,
           content, mc, num, den):
    """Accumulate ``w * (gain * I + offset)`` and ``w`` over the samples inside the view."""
    tol = INSIDE_TOL
    flat = crop.ravel()
    geo = _geometry(crop)
    has_content = content.shape[0] > 0
    cflat = content.ravel()
    cgeo = _geometry(content)
    idx = np.empty(_BX, np.int64)
    fr0 = np.empty(_BX, np.float32)
    fr1 = np.empty(_BX, np.float32)
    fr2 = np.empty(_BX, np.float32)
    acc_v = num.ravel()
    acc_w = den.ravel()
    nz, ny, nx = num.shape
    for z0 in range(0, nz, _BZ):
        for y0 in range(0, ny, _BY):
            for x0 in range(0, nx, _BX):
                x1 = min(x0 + _BX, nx)
                for z in range(z0, min(z0 + _BZ, nz)):
                    for y in range(y0, min(y0 + _BY, ny)):
                        r0 = (m[0, 3] + m[0, 0] * z) + m[0, 1] * y
                        r1 = (m[1, 3] + m[1, 0] * z) + m[1, 1] * y
                        r2 = (m[2, 3] + m[2, 0] * z) + m[2, 1] * y
                        q0 = (mc[0, 3] + mc[0, 0] * z) + mc[0, 1] * y
                        q1 = (mc[1, 3] + mc[1, 0] * z) + mc[1, 1] * y
                        q2 = (mc[2, 3] + mc[2, 0] * z) + mc[2, 1] * y
                        # The segment's ends decide for all of it (coordinates are monotonic
                        # along it and the inside set is an interval): skip per-voxel tests
                        # and cosines where they cannot change anything.
                        a0, a1, a2 = r0 + m[0, 2] * x0, r1 + m[1, 2] * x0, r2 + m[2, 2] * x0
                        b0, b1, b2 = r0 + m[0, 2] * (x1 - 1), r1 + m[1, 2] * (x1 - 1), r2 + m[2, 2] * (x1 - 1)
                        in_a = _inside(a0, shape[0], tol) and _inside(a1, shape[1], tol) and _inside(a2, shape[2], tol)
                        in_b = _inside(b0, shape[0], tol) and _inside(b1, shape[1], tol) and _inside(b2, shape[2], tol)
                        test = not (in_a and in_b)
                        ramp0 = cos_w and not _flat(a0, b0, shape[0], rng[0], border[0])
                        ramp1 = cos_w and not _flat(a1, b1, shape[1], rng[1], border[1])
                        ramp2 = cos_w and not _flat(a2, b2, shape[2], rng[2], border[2])
                        for x in range(x0, x1):  # indices and fractions first (vectorised)
                            idx[x - x0], fr0[x - x0], fr1[x - x0], fr2[x - x0] = _taps(
                                geo, (r0 + m[0, 2] * x) - start[0], (r1 + m[1, 2] * x) - start[1],
                                (r2 + m[2, 2] * x) - start[2], order)
                        row = (z * ny + y) * nx
                        for x in range(x0, x1):
                            c0 = r0 + m[0, 2] * x
                            c1 = r1 + m[1, 2] * x
                            c2 = r2 + m[2, 2] * x
                            if test and not (_inside(c0, shape[0], tol) and _inside(c1, shape[1], tol)
                                             and _inside(c2, shape[2], tol)):
                                continue
                            w = np.float32(1.0)
                            if ramp0:
                                w = w * _cosine(c0, shape[0], rng[0], border[0], floor)
                            if ramp1:
                                w = w * _cosine(c1, shape[1], rng[1], border[1], floor)
                            if ramp2:
                                w = w * _cosine(c2, shape[2], rng[2], border[2], floor)
                            if has_content:
                                cw = _sample(cflat, cgeo, q0 + mc[0, 2] * x, q1 + mc[1, 2] * x,
                                             q2 + mc[2, 2] * x, 1)
                                w = w * max(cw, floor)
                            i = x - x0
                            v = _lerp(flat, geo, idx[i], fr0[i], fr1[i], fr2[i], order)
                            if adjust:
                                v = v * gain
                                v = v + offset
                            k = uint64(row + x)
                            acc_v[k] += v * w
                            acc_w[k] += w


def _as_3d(matrix: np.ndarray, nd: int) -> np.ndarray:
    """A ``(nd+1, nd+1)`` output -> source matrix as the 3x4 block of a 3D one (2D: a singleton first axis)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (nd + 1, nd + 1):
        raise ValueError(f"expected a {(nd + 1, nd + 1)} matrix for {nd}D data, got {matrix.shape}")
    if nd == 3:
        return np.ascontiguousarray(matrix[:3])
    m = np.zeros((3, 4))
    m[1:, 1:3] = matrix[:2, :2]
    m[1:, 3] = matrix[:2, 2]
    return m  # first axis: source coordinate 0 for every output voxel


def _kernel_input(data: np.ndarray, nd: int) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != nd:
        raise ValueError(f"expected {nd}D data, got shape {data.shape}")
    if data.size == 0:
        raise ValueError("cannot resample an empty crop")
    if data.dtype not in KERNEL_DTYPES:
        data = data.astype(np.float32)
    data = np.ascontiguousarray(data)
    return data if nd == 3 else data[None]


def _check(nd: int, order: int) -> None:
    if nd not in (2, 3):
        raise ValueError(f"the compiled resampler handles 2D and 3D data, got {nd}D")
    if order not in (0, 1):
        raise ValueError(f"interpolation order must be 0 (nearest) or 1 (linear), got {order!r}")


def warp_values(
    crop: np.ndarray, crop_start: Sequence[int], matrix: np.ndarray, out_shape: Sequence[int], order: int = 1
) -> np.ndarray:
    """Resample ``crop`` onto an output grid through any affine: the compiled form of ``resample_affine``.

    Parameters
    ----------
    crop : ndarray
        Region of the view starting at voxel ``crop_start`` (2D or 3D).
    crop_start : sequence of int
    matrix : (ndim+1, ndim+1) ndarray
        Output voxel -> *view* voxel.
    out_shape : sequence of int
    order : {0, 1}
        Nearest (round half up) or linear interpolation.

    Returns
    -------
    values : float32 ndarray of ``out_shape``
        Edge-extended values, equal to
        :func:`~tilefuse.fusion.resample.resample_affine` within float
        rounding; combine with :func:`~tilefuse.fusion.resample.inside_mask`.
    """
    nd = np.ndim(crop)
    _check(nd, order)
    out_shape = tuple(int(n) for n in out_shape)
    if len(out_shape) != nd:
        raise ValueError(f"output shape {out_shape} does not match the {nd}D crop")
    data = _kernel_input(crop, nd)
    start = np.zeros(3)
    start[3 - nd:] = np.asarray(crop_start, dtype=np.float64)
    out = np.empty(((1,) if nd == 2 else ()) + out_shape, dtype=np.float32)
    _warp(data, _as_3d(matrix, nd), start, int(order), out)
    return out[0] if nd == 2 else out


_NO_CONTENT = np.zeros((0, 1, 1), dtype=np.float32)


def blend_warped(
    crop: np.ndarray,
    crop_start: Sequence[int],
    matrix: np.ndarray,
    view_shape: Sequence[int],
    num: np.ndarray,
    den: np.ndarray,
    *,
    order: int = 1,
    cosine: tuple[Sequence[float], Sequence[float]] | None = None,
    floor: float = 0.0,
    intensity: tuple[float, float] = (1.0, 0.0),
    content: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Add one view's weighted samples to a chunk's accumulators, in place.

    For every output voxel ``x`` whose source coordinate ``y = M x`` is
    inside the view (:func:`~tilefuse.fusion.resample.inside_mask`'s rule)::

        num[x] += w * (a * I(y) + b)
        den[x] += w

    with ``I`` interpolated on ``crop`` as in :func:`warp_values` and ``w``
    the product of BigStitcher's cosine profiles of ``y`` (each floored at
    ``floor``; 1 without ``cosine``) and of the content weight.

    Parameters
    ----------
    crop : ndarray
        Region of the view starting at voxel ``crop_start``; it must hold
        every voxel an inside sample interpolates from (see
        :func:`~tilefuse.fusion.resample.source_region`).
    matrix : (ndim+1, ndim+1) ndarray
        Output voxel -> view voxel.
    view_shape : sequence of int
        The whole view's shape (the inside test and the weights refer to it).
    num, den : float32 ndarray
        The chunk's accumulators (C-contiguous), updated in place.
    order : {0, 1}
    cosine : (range_vox, border_vox), optional
        Per-axis ramp width and border in view voxels; ``None`` weighs 1
        (average blending).
    floor : float
        Least value of each axis's cosine profile and of the content weight.
    intensity : (a, b)
        Intensity correction applied before weighting.
    content : (weights, matrix), optional
        A small weight image and the matrix from output voxels to its voxels;
        sampled linearly with edge extension.
    """
    nd = len(view_shape)
    _check(nd, order)
    if num.shape != den.shape or num.ndim != nd or num.dtype != np.float32 or den.dtype != np.float32:
        raise ValueError(f"num and den must be float32 arrays of one {nd}D shape")
    if not (num.flags.c_contiguous and den.flags.c_contiguous):
        raise ValueError("num and den must be C-contiguous (they are updated in place)")
    data = _kernel_input(crop, nd)
    start = np.zeros(3)
    start[3 - nd:] = np.asarray(crop_start, dtype=np.float64)
    shape = np.ones(3, dtype=np.int64)
    shape[3 - nd:] = [int(n) for n in view_shape]
    rng = np.zeros(3)
    border = np.zeros(3)
    if cosine is not None:
        rng[3 - nd:] = np.broadcast_to(np.asarray(cosine[0], dtype=np.float64), (nd,))
        border[3 - nd:] = np.broadcast_to(np.asarray(cosine[1], dtype=np.float64), (nd,))
    if content is None:
        weights, mc = _NO_CONTENT, np.zeros((3, 4))
    else:
        weights = np.ascontiguousarray(np.asarray(content[0], dtype=np.float32))
        if weights.ndim != nd or weights.size == 0:
            raise ValueError(f"content weights must be a non-empty {nd}D array, got shape {weights.shape}")
        weights = weights if nd == 3 else weights[None]
        mc = _as_3d(content[1], nd)
    a, b = (float(v) for v in intensity)
    _blend(data, _as_3d(matrix, nd), start, int(order), shape, cosine is not None, rng, border,
          np.float32(floor), np.float32(a), np.float32(b), (a, b) != (1.0, 0.0), weights, mc,
          num if nd == 3 else num[None], den if nd == 3 else den[None])
