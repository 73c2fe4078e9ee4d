"""The band pass the sub-pixel step and the candidate ranking work on: illumination out, then a DoG.

:func:`band_pass` divides a crop by a smooth estimate of its illumination
(vignetting, per-tile gain) and takes a difference of Gaussians (sigma 1 and
4), which drops pixel noise and what is left of the background.  The
Gaussians are separable correlations with scipy's kernels and its
``mode="nearest"`` border, compiled with numba (2x scipy's ``gaussian_filter``
on a 512x51 overlap, 4x on a 60x50x256 one: scipy's loop accumulates in
double and walks every axis through a line buffer); they agree with
``scipy.ndimage.gaussian_filter`` to float32 rounding (3e-7 relative).
"""

from __future__ import annotations

import functools

import numba
import numpy as np

__all__ = ["band_pass", "gaussian", "smooth_illumination"]

# Compiled on first use, then loaded from numba's on-disk cache; they release the GIL.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


def band_pass(a: np.ndarray, low: float = 1.0, high: float = 4.0) -> np.ndarray:
    """Difference of Gaussians of the flat-fielded crop: drops pixel noise and smooth illumination.

    ``high`` was chosen by measurement: on the 3D demo sample and on shifted
    ``camera`` crops, sigma 4 gave 0.01-0.03 px mean error, 8 gave 0.02-0.04
    and 16 gave 0.03-0.07 (wider filters keep more of the illumination
    difference between tiles, which biases the fit).
    """
    a = a.astype(np.float32, copy=False)
    if a.ndim <= 3 and a.size <= _FUSED_MAX:  # the same steps in one compiled call (see _band_pass)
        shape3 = (1,) * (3 - a.ndim) + a.shape
        out = np.empty(a.shape, dtype=np.float32)
        _band_pass(a.reshape(shape3), float(low), float(high), out.reshape(shape3))
        return out
    # Divide out the smooth illumination first: blurring a product v*T of a
    # slowly varying gain v and the texture T moves T's features by about
    # sigma^2 * grad(v)/v, in opposite directions in two tiles whose
    # vignetting runs opposite ways across their overlap.  Measured on the
    # sample mosaics: the mean error per link along its overlap axis fell
    # from -0.011 to -0.004 px, and on a 20x30 grid, where it accumulates,
    # the mean/max position error from 0.114/0.252 to 0.052/0.116 px.
    # Intensities must be positive for the ratio; shift them if they are not.
    flat = a if a.min() > 0 else a - a.min() + max(float(np.ptp(a)) * 1e-3, 1e-6)
    flat = flat / smooth_illumination(flat, 4 * high)
    out = gaussian(flat, low)
    out -= gaussian(flat, high, truncate=3.0)
    return out


#: Crops up to this many voxels are band-passed in one compiled call; larger ones step by step, whose
#: temporaries numpy allocates (with huge pages: on a 128 x 25 x 256 crop the compiled call's own
#: allocations made it 30 % slower, while the ~20 calls cost nothing next to the work).
_FUSED_MAX = 2**17


def smooth_illumination(a: np.ndarray, sigma: float, factor: int = 4) -> np.ndarray:
    """A Gaussian blur of width ``sigma`` for estimating smooth illumination, computed coarse.

    The estimate only needs to be smooth, so it is blurred on ``factor``-fold
    block means (sigma / factor, kernel cut at 2 sigma; the last block of an
    axis is padded with its edge value) and interpolated back linearly
    (multilinear, block ``j``'s centre at fine coordinate ``(j + 0.5) factor -
    0.5``, clamped at the ends): 1/factor**ndim of the voxels and a quarter of
    the taps.  On the small 3D benchmark this made the band pass 3x cheaper
    (it was a third of the registration time) without changing the measured
    errors.  1-3D float32.
    """
    a = np.asarray(a, dtype=np.float32)
    factors = [factor if n >= 2 * factor else 1 for n in a.shape]
    lead = (1,) * (3 - a.ndim)
    f3 = (1,) * len(lead) + tuple(factors)
    a3 = a.reshape(lead + a.shape)
    coarse = np.empty(tuple(-(-n // f) for n, f in zip(a3.shape, f3)), dtype=np.float32)
    _block_mean(a3, np.asarray(f3, dtype=np.int64), coarse)
    coarse = gaussian(coarse, [sigma / f for f in f3], truncate=2.0)
    taps = []
    for n, f, m in zip(a3.shape, f3, coarse.shape):
        taps += _upsampling_taps(n, f, m)
    out = np.empty(a3.shape, dtype=np.float32)
    _interpolate_up(coarse, *taps, out)
    return out.reshape(a.shape)


@functools.lru_cache(maxsize=256)  # a mosaic's crops share a few shapes
def _upsampling_taps(n: int, f: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation from ``m`` block centres (blocks of ``f``) to ``n`` voxels: lower and upper
    block, and the fraction between them (read-only, shared)."""
    pos = np.clip((np.arange(n) + 0.5) / f - 0.5, 0, m - 1)
    j0 = np.minimum(pos.astype(np.int64), max(m - 2, 0))
    taps = (j0, np.minimum(j0 + 1, m - 1), (pos - j0).astype(np.float32))
    for t in taps:
        t.flags.writeable = False
    return taps


def gaussian(a: np.ndarray, sigma, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=truncate)`` for 1-3D float32.

    ``sigma`` is a number or one per axis; axes of length 1 (which the filter
    leaves unchanged) are skipped.  Returns a new float32 array.
    """
    a = np.asarray(a, dtype=np.float32)
    if a.ndim > 3:
        raise ValueError(f"gaussian filters 1-3D arrays, got {a.ndim}D")
    sigmas = [float(v) for v in sigma] if np.ndim(sigma) else [float(sigma)] * a.ndim
    if len(sigmas) != a.ndim:
        raise ValueError(f"one sigma or one per axis ({a.ndim}), got {sigma!r}")
    shape3 = (1,) * (3 - a.ndim) + a.shape
    cur, filtered = a.reshape(shape3), False
    for axis, s in enumerate(sigmas, start=3 - a.ndim):
        if shape3[axis] == 1 or s <= 0:
            continue
        out = np.empty(shape3, dtype=np.float32)
        _correlate_nearest(cur, _kernel(float(s), truncate), axis, out)
        cur, filtered = out, True
    return cur.reshape(a.shape) if filtered else a.copy()


@functools.lru_cache(maxsize=64)  # the band pass asks for the same few kernels for every crop
def _kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy's Gaussian kernel: radius ``int(truncate * sigma + 0.5)``, weights summing to 1 (float32)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x * x)
    w = (w / w.sum()).astype(np.float32)
    w.flags.writeable = False  # shared by every caller (cached)
    return w


@_jit
def _band_pass(a, low, high, out):  # pragma: no cover - compiled
    """:func:`band_pass` of a 3D float32 array into ``out``, in one call.

    The steps of the Python version (flat-fielding by :func:`smooth_illumination`, then the two
    :func:`gaussian` filters), with the kernels and interpolation taps computed here: its ~20
    calls into compiled code and numpy per crop held the GIL ~0.2 ms per pair.
    """
    lo = a.min()
    if lo > 0:
        flat = a
    else:
        flat = a - lo + np.float32(max(float(a.max() - lo) * 1e-3, 1e-6))
    illumination = _smooth_illumination(flat, 4 * high, 4)
    flat = flat / illumination
    blurred = _gaussian3(flat, low, low, low, 4.0)
    background = _gaussian3(flat, high, high, high, 3.0)
    for i0 in range(a.shape[0]):
        for i1 in range(a.shape[1]):
            for i2 in range(a.shape[2]):
                out[i0, i1, i2] = blurred[i0, i1, i2] - background[i0, i1, i2]


@_jit
def _smooth_illumination(a, sigma, factor):  # pragma: no cover - compiled
    """:func:`smooth_illumination` of a 3D float32 array (a new array)."""
    f = np.ones(3, dtype=np.int64)
    for d in range(3):
        if a.shape[d] >= 2 * factor:
            f[d] = factor
    coarse = np.empty((-(-a.shape[0] // f[0]), -(-a.shape[1] // f[1]), -(-a.shape[2] // f[2])), dtype=np.float32)
    _block_mean(a, f, coarse)
    coarse = _gaussian3(coarse, sigma / f[0], sigma / f[1], sigma / f[2], 2.0)
    lo0, hi0, t0 = _taps(a.shape[0], f[0], coarse.shape[0])
    lo1, hi1, t1 = _taps(a.shape[1], f[1], coarse.shape[1])
    lo2, hi2, t2 = _taps(a.shape[2], f[2], coarse.shape[2])
    out = np.empty(a.shape, dtype=np.float32)
    _interpolate_up(coarse, lo0, hi0, t0, lo1, hi1, t1, lo2, hi2, t2, out)
    return out


@_jit
def _taps(n, f, m):  # pragma: no cover - compiled
    """:func:`_upsampling_taps`, compiled."""
    pos = np.minimum(np.maximum((np.arange(n) + 0.5) / f - 0.5, 0.0), m - 1.0)
    j0 = np.minimum(pos.astype(np.int64), max(m - 2, 0))
    return j0, np.minimum(j0 + 1, m - 1), (pos - j0).astype(np.float32)


@_jit
def _gaussian3(a, s0, s1, s2, truncate):  # pragma: no cover - compiled
    """:func:`gaussian` of a 3D float32 array, one sigma per axis (a new array)."""
    cur = a
    filtered = False
    for axis in range(3):
        s = (s0, s1, s2)[axis]
        if a.shape[axis] == 1 or s <= 0:
            continue
        out = np.empty(a.shape, dtype=np.float32)
        _correlate_nearest(cur, _kernel_compiled(s, truncate), axis, out)
        cur = out
        filtered = True
    return cur if filtered else a.copy()


@_jit
def _kernel_compiled(sigma, truncate):  # pragma: no cover - compiled
    """:func:`_kernel`, compiled."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1).astype(np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x * x)
    return (w / w.sum()).astype(np.float32)


@_jit
def _correlate_nearest(a, w, axis, out):  # pragma: no cover - compiled
    """``out = correlate1d(a, w, axis, mode="nearest")`` for a 3D float32 array and an odd, symmetric kernel.

    The innermost loop always runs along the last (contiguous) axis, so it
    vectorises; along it the row is first copied into an edge-padded buffer.
    Across rows (the first two axes) each pass adds two pairs of mirrored
    taps of the symmetric kernel, ``w[k] (x[-k] + x[k])``, so ``out`` is
    loaded and stored once per four taps instead of once per tap (1.4x faster).
    """
    n0, n1, n2 = a.shape
    r = (w.size - 1) // 2
    wc = w[r]
    if axis == 2:
        buf = np.empty(n2 + 2 * r, np.float32)
        for i0 in range(n0):
            for i1 in range(n1):
                for x in range(n2):
                    buf[r + x] = a[i0, i1, x]
                for x in range(r):
                    buf[x] = a[i0, i1, 0]
                    buf[r + n2 + x] = a[i0, i1, n2 - 1]
                # (one tap per pass here: with the mirrored taps of the buffer the loop did not vectorise)
                for x in range(n2):
                    out[i0, i1, x] = 0.0
                for k in range(w.size):
                    wk = w[k]
                    for x in range(n2):
                        out[i0, i1, x] += wk * buf[x + k]
    elif axis == 1:
        for i0 in range(n0):
            for y in range(n1):
                for x in range(n2):
                    out[i0, y, x] = wc * a[i0, y, x]
                for k in range(0, r, 2):
                    k2 = min(k + 1, r - 1)
                    wk, w1 = w[k], (w[k2] if k2 > k else np.float32(0.0))
                    lo1, hi1 = max(y - (r - k), 0), min(y + (r - k), n1 - 1)
                    lo2, hi2 = max(y - (r - k2), 0), min(y + (r - k2), n1 - 1)
                    for x in range(n2):
                        out[i0, y, x] += wk * (a[i0, lo1, x] + a[i0, hi1, x]) + w1 * (a[i0, lo2, x] + a[i0, hi2, x])
    else:
        for z in range(n0):
            for y in range(n1):
                for x in range(n2):
                    out[z, y, x] = wc * a[z, y, x]
            for k in range(0, r, 2):
                k2 = min(k + 1, r - 1)
                wk, w1 = w[k], (w[k2] if k2 > k else np.float32(0.0))
                lo1, hi1 = max(z - (r - k), 0), min(z + (r - k), n0 - 1)
                lo2, hi2 = max(z - (r - k2), 0), min(z + (r - k2), n0 - 1)
                for y in range(n1):
                    for x in range(n2):
                        out[z, y, x] += wk * (a[lo1, y, x] + a[hi1, y, x]) + w1 * (a[lo2, y, x] + a[hi2, y, x])


@_jit
def _block_mean(a, factors, out):  # pragma: no cover - compiled
    """Means of ``factors``-sized blocks of a 3D array; a partial last block repeats its edge value."""
    n0, n1, n2 = a.shape
    f0, f1, f2 = factors[0], factors[1], factors[2]
    scale = np.float32(1.0 / (f0 * f1 * f2))
    for j0 in range(out.shape[0]):
        for j1 in range(out.shape[1]):
            for j2 in range(out.shape[2]):
                acc = np.float32(0.0)
                for k0 in range(f0):
                    i0 = min(j0 * f0 + k0, n0 - 1)
                    for k1 in range(f1):
                        i1 = min(j1 * f1 + k1, n1 - 1)
                        for k2 in range(f2):
                            acc += a[i0, i1, min(j2 * f2 + k2, n2 - 1)]
                out[j0, j1, j2] = acc * scale


@_jit
def _interpolate_up(c, lo0, hi0, t0, lo1, hi1, t1, lo2, hi2, t2, out):  # pragma: no cover - compiled
    """Multilinear interpolation of ``c``: per axis, between indices ``lo`` and ``hi`` at fraction ``t``.

    Separably, last axis first (the same operations in the same order as the trilinear formula, so
    the same result), and on whole rows along the first two: 2.5x faster than 7 lerps per voxel.
    """
    m0, m1 = c.shape[0], c.shape[1]
    n0, n1, n2 = out.shape
    along2 = np.empty((m0, m1, n2), dtype=np.float32)
    for j0 in range(m0):
        for j1 in range(m1):
            for i2 in range(n2):
                a = c[j0, j1, lo2[i2]]
                along2[j0, j1, i2] = a + (c[j0, j1, hi2[i2]] - a) * t2[i2]
    along1 = np.empty((m0, n1, n2), dtype=np.float32)
    for j0 in range(m0):
        for i1 in range(n1):
            a, b, u = along2[j0, lo1[i1]], along2[j0, hi1[i1]], t1[i1]
            for i2 in range(n2):
                along1[j0, i1, i2] = a[i2] + (b[i2] - a[i2]) * u
    for i0 in range(n0):
        a, b, u = along1[lo0[i0]], along1[hi0[i0]], t0[i0]
        for i1 in range(n1):
            for i2 in range(n2):
                out[i0, i1, i2] = a[i1, i2] + (b[i1, i2] - a[i1, i2]) * u
