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
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from .resample import SHIFT_TOL
from .warp import KERNEL_DTYPES

__all__ = ["blend_shifted", "normalise_cast", "NORMALISE_DTYPES"]

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
