"""Compiled fusion of translated views: one pass per view and chunk, nothing chunk-sized in between.

The common stitching case is a view that only translates relative to the
output grid (``L`` the identity).  Every output voxel is then the same
sub-voxel fraction ``f_d`` past a source voxel on each axis, and the
blending weight is a product of per-axis profiles.  The numpy form
(:func:`~tilefuse.fusion.resample.resample_shift` with the weights folded in
its taps) makes one pass over memory per axis, then adds the weighted values
and the weights to the chunk's accumulators: on the 3D benchmark that was
~40 % of a chunk's time, mostly spent streaming slab-sized temporaries.

:func:`blend_shifted` does the same sums in one compiled loop per output
row: the two (or one, where the fraction is 0) source rows of each of the
first two axes are combined into one row buffer of the chunk's width, then
each output voxel takes its two taps along the last axis from that buffer
and adds ``w * (a * I + b)`` and ``w`` straight into ``num`` and ``den``.
An integral shift (``f_d == 0``, and always with nearest interpolation)
skips that axis's interpolation.  Results equal the numpy path's within
float32 rounding (the lerps run in another order); the tests compare both.

Rules are those of :mod:`tilefuse.fusion.resample`: linear interpolation or
nearest (round half up), edge extension where taps run past the crop (they
only do at the view's own edges), a 2D problem run as 3D with a singleton
first axis.  The kernels release the GIL, so dask's threads run them in
parallel, and are compiled on first use (then cached on disk by numba).

:func:`normalise_cast` is the chunk's last step, ``num / den`` (``fill``
where ``den == 0``) rounded, clipped and cast to the output type, in one
pass instead of the four of numpy's divide / rint / clip / astype.

:func:`fuse_shifted` runs a whole output chunk in one call: every view's
taps, both sums slab by slab and the normalisation, with the GIL released
throughout.  A 2D mosaic chunk meets ~17 small views; calling
:func:`blend_shifted` per view and slab held the GIL for its Python
set-up (taps, weights, checks) longer than the kernel ran, so dask's
threads queued on it (issue 14: 1.40 of 2 cores busy while fusing).  The
arithmetic, and so every output bit, is that of :func:`blend_shifted` then
:func:`normalise_cast` on the same slabs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np

from .resample import SHIFT_TOL
from .warp import KERNEL_DTYPES

__all__ = ["blend_shifted", "fuse_shifted", "normalise_cast", "NORMALISE_DTYPES"]

#: Output types :func:`normalise_cast` writes directly (the others go through numpy).
NORMALISE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

# error_model="numpy": no zero-division checks in the loops (there is no division by a
# variable that can be 0 except in normalise_cast, which tests den > 0 first).
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_inline = numba.njit(inline="always", cache=True)


@_inline
def _source_row(data, z0, z1, fz, gz, y0, y1, fy, gy, ix, x0, contiguous, row):  # pragma: no cover
    """The source row at ``(z + fz, y + fy)``, at every x tap, into ``row``."""
    width = row.shape[0]
    if contiguous:
        # The taps are x0, x0 + 1, ...: slices indexed from 0 in a range loop, so that
        # numba emits no negative-index wrap checks and LLVM vectorises the loops.
        r00 = data[z0, y0, x0:x0 + width]
        r01 = data[z0, y1, x0:x0 + width]
        r10 = data[z1, y0, x0:x0 + width]
        r11 = data[z1, y1, x0:x0 + width]
        if fz == 0.0 and fy == 0.0:
            for s in range(width):
                row[s] = np.float32(r00[s])
        elif fz == 0.0:
            for s in range(width):
                row[s] = gy * np.float32(r00[s]) + fy * np.float32(r01[s])
        elif fy == 0.0:
            for s in range(width):
                row[s] = gz * np.float32(r00[s]) + fz * np.float32(r10[s])
        else:
            for s in range(width):
                row[s] = gz * (gy * np.float32(r00[s]) + fy * np.float32(r01[s])) + fz * (
                    gy * np.float32(r10[s]) + fy * np.float32(r11[s]))
        return
    for s in range(width):  # taps clamped at the view's edge (edge extension): gathered
        x = ix[s]
        v0 = gy * np.float32(data[z0, y0, x]) + fy * np.float32(data[z0, y1, x])
        v1 = gy * np.float32(data[z1, y0, x]) + fy * np.float32(data[z1, y1, x])
        row[s] = gz * v0 + fz * v1


@_jit
def _blend_shift3(data, iz0, iz1, fz, iy0, iy1, fy, ix, fx, pz, py, px, a, b, num, den, box):  # pragma: no cover
    bz, by, bx = box
    nz, ny, nx = pz.shape[0], py.shape[0], px.shape[0]
    gz, gy, gx = np.float32(1.0) - fz, np.float32(1.0) - fy, np.float32(1.0) - fx
    width = ix.shape[0]  # nx + 1 taps along x when fx > 0, else nx
    x0 = ix[0]
    contiguous = ix[width - 1] - x0 == width - 1
    row = np.empty(width, dtype=np.float32)
    lo = row[:nx]
    hi = row[width - nx:]  # row[1:] with two taps; row itself with one (then unused)
    for i in range(nz):
        for j in range(ny):
            _source_row(data, iz0[i], iz1[i], fz, gz, iy0[j], iy1[j], fy, gy, ix, x0, contiguous, row)
            wzy = pz[i] * py[j]
            # rows of the C-contiguous accumulators, sliced to the box: contiguous, indexed from 0
            nrow = num[bz + i, by + j, bx:bx + nx]
            drow = den[bz + i, by + j, bx:bx + nx]
            if fx == 0.0:
                for k in range(nx):
                    w = wzy * px[k]
                    nrow[k] += w * (a * lo[k] + b)
                    drow[k] += w
            else:
                for k in range(nx):
                    w = wzy * px[k]
                    nrow[k] += w * (a * (gx * lo[k] + fx * hi[k]) + b)
                    drow[k] += w


def _axis_taps(t: float, n: int, m: int, order: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Source indices (clamped to the crop: edge extension) of the two taps along one axis, and the fraction.

    ``t`` is the crop-local shift, ``n`` the output length, ``m`` the crop's.
    The split into integer and fraction is :func:`resample_shift`'s, so both
    paths take the same taps.
    """
    if order == 0:
        k, f = int(np.floor(t + 0.5)), 0.0
    else:
        k = int(np.floor(t))
        f = t - k
        if f > 1.0 - SHIFT_TOL:
            k, f = k + 1, 0.0
        elif f < SHIFT_TOL:
            f = 0.0
    idx = np.clip(np.arange(k, k + n + 1, dtype=np.int64), 0, m - 1)
    return idx[:n], idx[1:], f


def blend_shifted(
    crop: np.ndarray,
    crop_start: Sequence[int],
    shift: Sequence[float],
    num: np.ndarray,
    den: np.ndarray,
    *,
    box: tuple[slice, ...] | None = None,
    order: int = 1,
    profiles: Sequence[np.ndarray | None] | None = None,
    intensity: tuple[float, float] = (1.0, 0.0),
) -> None:
    """Add one translated view's weighted samples to a chunk's accumulators, in place.

    For every voxel ``x`` of the ``box`` of ``num``'s grid (which must lie
    inside the view: the engine passes the chunk's inside box)::

        num[box][x] += w(x) * (a * I(x + shift) + b)
        den[box][x] += w(x),      w(x) = prod_d profiles[d][x_d]

    with ``I`` interpolated on ``crop`` as by
    :func:`~tilefuse.fusion.resample.resample_shift`.

    Parameters
    ----------
    crop : ndarray
        Region of the view starting at voxel ``crop_start`` (2D or 3D).
    crop_start : sequence of int
    shift : sequence of float
        ``y = x + shift`` in view voxels, ``x`` indexing the box (not crop-local).
    num, den : float32 ndarray
        The chunk's accumulators, C-contiguous, updated in place.
    box : tuple of slice, optional
        The part of the accumulators to add to (step 1); default all of it.
    order : {0, 1}
        Nearest or linear interpolation.
    profiles : sequence of 1D float32 arrays (or None), optional
        Per-axis weights, one of the box's length per axis; ``None`` for an
        axis weighing 1.
    intensity : (a, b)
        Intensity correction applied before weighting.
    """
    crop = np.asarray(crop)
    nd = crop.ndim
    if nd not in (2, 3):
        raise ValueError(f"the compiled translation kernel handles 2D and 3D data, got {nd}D")
    if order not in (0, 1):
        raise ValueError(f"interpolation order must be 0 (nearest) or 1 (linear), got {order!r}")
    if crop.size == 0:
        raise ValueError("cannot resample an empty crop")
    if (num.shape != den.shape or num.ndim != nd or num.dtype != np.float32 or den.dtype != np.float32
            or not (num.flags.c_contiguous and den.flags.c_contiguous)):
        raise ValueError(f"num and den must be C-contiguous float32 arrays of one {nd}D shape")
    box = tuple(slice(0, n) for n in num.shape) if box is None else tuple(box)
    starts = [b.indices(n)[0] for b, n in zip(box, num.shape)]
    shape = tuple(len(range(*b.indices(n))) for b, n in zip(box, num.shape))
    if len(box) != nd or any(b.step not in (None, 1) for b in box) or 0 in shape:
        raise ValueError(f"box {box} is not a non-empty box of step 1 in {num.shape}")
    if crop.dtype not in KERNEL_DTYPES:
        crop = crop.astype(np.float32)
    crop = np.ascontiguousarray(crop)
    t = np.asarray(shift, dtype=np.float64) - np.asarray(crop_start, dtype=np.float64)
    taps, weights = [], []
    for d, n in enumerate(shape):
        taps.append(_axis_taps(float(t[d]), n, crop.shape[d], order))
        p = None if profiles is None else profiles[d]
        p = np.ones(n, dtype=np.float32) if p is None else np.ascontiguousarray(p, dtype=np.float32)
        if p.shape != (n,):
            raise ValueError(f"profiles[{d}] has shape {p.shape}, expected ({n},)")
        weights.append(p)
    if nd == 2:
        crop, num, den = crop[None], num[None], den[None]
        zero = np.zeros(1, dtype=np.int64)
        taps.insert(0, (zero, zero, 0.0))
        weights.insert(0, np.ones(1, dtype=np.float32))
        starts.insert(0, 0)
    (iz0, iz1, fz), (iy0, iy1, fy), (ix0, ix1, fx) = taps
    ix = np.append(ix0, ix1[-1:]) if fx > 0.0 else ix0
    a, b = (np.float32(v) for v in intensity)
    _blend_shift3(crop, iz0, iz1, np.float32(fz), iy0, iy1, np.float32(fy), np.ascontiguousarray(ix),
                  np.float32(fx), *weights, a, b, num, den, (int(starts[0]), int(starts[1]), int(starts[2])))


@_inline
def _taps(t, n, m, order, idx):  # pragma: no cover
    """:func:`_axis_taps` in compiled form: ``idx[:n + 1]`` the clamped source indices from ``floor(t)``,
    returns the fraction (same float64 operations, so the same taps and fraction)."""
    if order == 0:
        k = np.floor(t + 0.5)
        f = 0.0
    else:
        k = np.floor(t)
        f = t - k
        if f > 1.0 - SHIFT_TOL:
            k, f = k + 1.0, 0.0
        elif f < SHIFT_TOL:
            f = 0.0
    k0 = int(k)
    for s in range(n + 1):
        idx[s] = min(max(k0 + s, 0), m - 1)
    return f


@_jit
def _fuse_shifted(crops, crop_start, offset, box, prof, prof_start, inten, order, axis, step, dims, num, den,
                  fill, lo, hi, rounding, out):  # pragma: no cover
    """One chunk, slab by slab along ``axis`` (0, or 1 for a 2D chunk run as ``(1, y, x)``).

    Per slab: zero the sums, add every view whose box meets the slab (as
    :func:`blend_shifted` on the slab's part of the box, its shift moved by
    the rows skipped), then normalise into ``out`` (rows of the slab axis by
    the rest, flattened) as :func:`normalise_cast`.  ``num`` and ``den`` are
    flat buffers of one slab; ``dims`` the chunk's two other axes (3D) or
    its width (2D, twice).
    """
    n_rows, plane = out.shape[0], out.shape[1]
    for s0 in range(0, n_rows, step):
        s1 = min(n_rows, s0 + step)
        rows = s1 - s0
        sh = (rows, dims[0], dims[1]) if axis == 0 else (1, rows, dims[1])
        nflat = num[:rows * plane]
        dflat = den[:rows * plane]
        nflat[:] = 0.0
        dflat[:] = 0.0
        n3 = nflat.reshape(sh)
        d3 = dflat.reshape(sh)
        for v in range(box.shape[0]):  # not len(crops): an empty chunk gets one dummy crop
            b0, b1 = box[v, axis, 0], box[v, axis, 1]
            z0, z1 = max(b0, s0), min(b1, s1)
            if z0 >= z1:
                continue
            crop = crops[v]
            starts = np.empty(3, dtype=np.int64)
            lengths = np.empty(3, dtype=np.int64)
            firsts = np.empty(3, dtype=np.int64)  # first profile value used, per axis
            t = np.empty(3, dtype=np.float64)
            for d in range(3):
                if d == axis:
                    starts[d] = z0 - s0
                    lengths[d] = z1 - z0
                    firsts[d] = prof_start[v, d] + (z0 - b0)
                    shift = offset[v, d] + (z0 - b0)  # as the slab's shift[0] += z0 - box.start
                else:
                    starts[d] = box[v, d, 0]
                    lengths[d] = box[v, d, 1] - box[v, d, 0]
                    firsts[d] = prof_start[v, d]
                    shift = offset[v, d]
                t[d] = shift - np.float64(crop_start[v, d])
            nz, ny, nx = lengths[0], lengths[1], lengths[2]
            iz = np.empty(nz + 1, dtype=np.int64)
            iy = np.empty(ny + 1, dtype=np.int64)
            ix = np.empty(nx + 1, dtype=np.int64)
            fz = _taps(t[0], nz, crop.shape[0], order, iz)
            fy = _taps(t[1], ny, crop.shape[1], order, iy)
            fx = _taps(t[2], nx, crop.shape[2], order, ix)
            _blend_shift3(crop, iz[:nz], iz[1:], np.float32(fz), iy[:ny], iy[1:], np.float32(fy),
                          ix if fx > 0.0 else ix[:nx], np.float32(fx),
                          prof[firsts[0]:firsts[0] + nz], prof[firsts[1]:firsts[1] + ny],
                          prof[firsts[2]:firsts[2] + nx], inten[v, 0], inten[v, 1], n3, d3,
                          (starts[0], starts[1], starts[2]))
        _normalise_cast(nflat, dflat, fill, lo, hi, rounding, out[s0:s1].reshape(rows * plane))


@_jit
def _normalise_cast(num, den, fill, lo, hi, rounding, out):  # pragma: no cover
    for i in range(num.shape[0]):
        d = den[i]
        v = np.float32(num[i] / d) if d > 0 else fill
        if rounding:
            v = np.rint(v)
            if not v >= lo:  # NaN too: as numpy's clip then astype gives no defined value, say lo
                v = lo
            elif v > hi:
                v = hi
        out[i] = v


def normalise_cast(num: np.ndarray, den: np.ndarray, fill_value, dtype) -> np.ndarray:
    """``num / den`` (``fill_value`` where ``den == 0``), rounded and clipped into ``dtype``, in one pass.

    ``num`` and ``den`` are C-contiguous float32 arrays of one shape;
    ``dtype`` one of :data:`NORMALISE_DTYPES`.  Same result as the engine's
    numpy form (float32 divide, then :func:`tilefuse._numeric.cast_to_dtype`).
    """
    dtype = np.dtype(dtype)
    if dtype not in NORMALISE_DTYPES:
        raise ValueError(f"normalise_cast writes {NORMALISE_DTYPES}, not {dtype}")
    out = np.empty(num.shape, dtype=dtype)
    rounding = dtype.kind == "u"
    lo, hi = (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)) if rounding else (0.0, 0.0)
    # the fill value goes through the same rounding and clipping as the data (as in cast_to_dtype)
    _normalise_cast(num.reshape(-1), den.reshape(-1), np.float32(fill_value), np.float32(lo), np.float32(hi),
                    rounding, out.reshape(-1))
    return out


def fuse_shifted(
    crops: Sequence[np.ndarray],
    crop_start: np.ndarray,
    offset: np.ndarray,
    box: np.ndarray,
    profiles: np.ndarray,
    profile_start: np.ndarray,
    intensity: np.ndarray,
    out_shape: Sequence[int],
    *,
    order: int = 1,
    slab_voxels: int = 2**19,
    fill_value=0,
    dtype=np.float32,
) -> np.ndarray:
    """Fuse a chunk of translated views in one compiled call (cosine or average weights).

    Every view ``v`` adds, for the voxels ``x`` of its box of the chunk::

        num[x] += w(x) * (a_v * I_v(x + offset_v) + b_v),   den[x] += w(x)

    as :func:`blend_shifted` does with ``shift = offset[v]`` (``offset`` is
    relative to the box's first voxel); the result is ``num / den``
    (``fill_value`` where ``den == 0``) as :func:`normalise_cast` gives it.
    The sums are kept for a slab of about ``slab_voxels`` voxels along the
    first axis at a time, as the engine's former per-view loop did.

    Parameters
    ----------
    crops : sequence of ndarray
        Per view, the region read (2D or 3D, as the chunk).
    crop_start : (n, ndim) int ndarray
        Where each crop starts in its view.
    offset : (n, ndim) float ndarray
        View voxel of each box's first voxel.
    box : (n, ndim, 2) int ndarray
        Each view's box of the chunk, ``[start, stop)`` per axis, non-empty.
    profiles : 1D float32 ndarray
        Every view's per-axis weights, concatenated: the weights of view ``v``
        along axis ``d`` start at ``profile_start[v, d]`` (one per voxel of its box).
    profile_start : (n, ndim) int ndarray
    intensity : (n, 2) float ndarray
        ``(a, b)`` per view.
    out_shape : tuple of int
        The chunk's shape.
    order : {0, 1}
        Nearest or linear interpolation.
    slab_voxels : int
        Voxels per slab of sums.
    fill_value : scalar
    dtype : numpy dtype
        Output type: one of :data:`NORMALISE_DTYPES` is written directly,
        another goes through float32 and :func:`~tilefuse._numeric.cast_to_dtype`.
    """
    from numba.typed import List

    from .._numeric import cast_to_dtype

    out_shape = tuple(int(n) for n in out_shape)
    nd = len(out_shape)
    if nd not in (2, 3):
        raise ValueError(f"the compiled translation kernel handles 2D and 3D chunks, got {nd}D")
    if order not in (0, 1):
        raise ValueError(f"interpolation order must be 0 (nearest) or 1 (linear), got {order!r}")
    n = len(crops)
    crop_start = np.asarray(crop_start, dtype=np.int64).reshape(n, nd)
    offset = np.asarray(offset, dtype=np.float64).reshape(n, nd)
    box = np.asarray(box, dtype=np.int64).reshape(n, nd, 2)
    profile_start = np.asarray(profile_start, dtype=np.int64).reshape(n, nd)
    profiles = np.ascontiguousarray(profiles, dtype=np.float32)
    if n and (np.any(box[..., 0] < 0) or np.any(box[..., 1] > np.array(out_shape)) or np.any(box[..., 1] <= box[..., 0])
              or np.any(profile_start < 0) or np.any(profile_start + box[..., 1] - box[..., 0] > profiles.size)):
        raise ValueError("boxes must be non-empty and inside the chunk, with a profile value per voxel")
    dtype = np.dtype(dtype)
    direct = dtype in NORMALISE_DTYPES
    # one pixel type for the typed list: the crops' own when shared and read directly, else float32 (exact
    # for every type the kernel reads: the kernel converts each sample to float32 anyway)
    types = {np.asarray(c).dtype for c in crops}
    kind = types.pop() if len(types) == 1 else np.dtype(np.float32)
    if kind not in KERNEL_DTYPES:
        kind = np.dtype(np.float32)
    typed = List()
    for c in crops:
        c = np.ascontiguousarray(c, dtype=kind)
        if c.ndim != nd or c.size == 0:
            raise ValueError(f"crops must be non-empty {nd}D arrays, got shape {c.shape}")
        typed.append(c[None] if nd == 2 else c)
    if not crops:
        typed.append(np.zeros((1, 1, 1), dtype=kind))  # types the empty list; no view is read from it
    inten = np.asarray(intensity, dtype=np.float32).reshape(n, 2)
    if nd == 2:  # run as (1, y, x): a leading axis of one voxel with integral taps and weight 1
        axis = 1
        crop_start = np.concatenate([np.zeros((n, 1), np.int64), crop_start], axis=1)
        offset = np.concatenate([np.zeros((n, 1)), offset], axis=1)
        box = np.concatenate([np.tile(np.array([[[0, 1]]], np.int64), (n, 1, 1)), box], axis=1)
        profile_start = np.concatenate([np.full((n, 1), profiles.size, np.int64), profile_start], axis=1)
        profiles = np.append(profiles, np.float32(1.0))
        shape3 = (1,) + out_shape
    else:
        axis = 0
        shape3 = out_shape
    rows = shape3[axis]
    step = max(1, int(slab_voxels) // max(1, math.prod(out_shape[1:])))
    plane = math.prod(out_shape[1:])
    num = np.empty(min(step, rows) * plane, dtype=np.float32)
    den = np.empty_like(num)
    dims = (shape3[1], shape3[2]) if axis == 0 else (shape3[2], shape3[2])
    out = np.empty(out_shape, dtype=dtype if direct else np.float32)
    rounding = out.dtype.kind == "u"
    lo, hi = (float(np.iinfo(out.dtype).min), float(np.iinfo(out.dtype).max)) if rounding else (0.0, 0.0)
    _fuse_shifted(typed, crop_start, offset, box, profiles, profile_start, inten, int(order), axis, step, dims,
                  num, den, np.float32(fill_value), np.float32(lo), np.float32(hi), rounding, out.reshape(rows, plane))
    return out if direct else cast_to_dtype(out, dtype, overwrite=True)
