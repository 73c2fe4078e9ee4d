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


def smooth_illumination(a: np.ndarray, sigma: float, factor: int = 4) -> np.ndarray:
    """A Gaussian blur of width ``sigma`` for estimating smooth illumination, computed coarse.

    The estimate only needs to be smooth, so it is blurred on ``factor``-fold
    block means (sigma / factor, kernel cut at 2 sigma) and interpolated back
    linearly: 1/factor**ndim of the voxels and a quarter of the taps.  On the
    small 3D benchmark this made the band pass 3x cheaper (it was a third of
    the registration time) without changing the measured errors.
    """
    factors = [factor if n >= 2 * factor else 1 for n in a.shape]
    pad = [(0, (-n) % f) for n, f in zip(a.shape, factors)]
    padded = np.pad(a, pad, mode="edge") if any(p for _, p in pad) else a
    blocks = padded.reshape([v for n, f in zip(padded.shape, factors) for v in (n // f, f)])
    coarse = blocks.mean(axis=tuple(range(1, 2 * a.ndim, 2)), dtype=np.float32)
    coarse = gaussian(coarse, [sigma / f for f in factors], truncate=2.0)
    out = coarse
    for axis, (n, f) in enumerate(zip(a.shape, factors)):
        if f == 1:
            continue
        # block j's centre is at fine coordinate (j + 0.5) f - 0.5
        pos = np.clip((np.arange(n) + 0.5) / f - 0.5, 0, out.shape[axis] - 1)
        j0 = np.minimum(pos.astype(np.int64), out.shape[axis] - 2) if out.shape[axis] > 1 else np.zeros(n, int)
        t = (pos - j0).astype(np.float32).reshape((-1,) + (1,) * (a.ndim - axis - 1))
        lo = np.take(out, j0, axis=axis)
        hi = np.take(out, np.minimum(j0 + 1, out.shape[axis] - 1), axis=axis)
        out = lo + (hi - lo) * t
    return out


def gaussian(a: np.ndarray, sigma, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=truncate)`` for 1-3D float32.

    ``sigma`` is a number or one per axis; axes of length 1 (which the filter
    leaves unchanged) are skipped.  Returns a new float32 array.
    """
    a = np.asarray(a, dtype=np.float32)
    if a.ndim > 3:
        raise ValueError(f"gaussian filters 1-3D arrays, got {a.ndim}D")
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (a.ndim,))
    shape3 = (1,) * (3 - a.ndim) + a.shape
    cur, filtered = a.reshape(shape3), False
    for axis, s in enumerate(sigmas, start=3 - a.ndim):
        if shape3[axis] == 1 or s <= 0:
            continue
        out = np.empty(shape3, dtype=np.float32)
        _correlate_nearest(cur, _kernel(float(s), truncate), axis, out)
        cur, filtered = out, True
    return cur.reshape(a.shape) if filtered else a.copy()


def _kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy's Gaussian kernel: radius ``int(truncate * sigma + 0.5)``, weights summing to 1 (float32)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x * x)
    return (w / w.sum()).astype(np.float32)


@_jit
def _correlate_nearest(a, w, axis, out):  # pragma: no cover - compiled
    """``out = correlate1d(a, w, axis, mode="nearest")`` for a 3D float32 array and an odd, centred kernel.

    The innermost loop always runs along the last (contiguous) axis, so it
    vectorises; along it the row is first copied into an edge-padded buffer.
    """
    n0, n1, n2 = a.shape
    r = (w.size - 1) // 2
    if axis == 2:
        buf = np.empty(n2 + 2 * r, np.float32)
        for i0 in range(n0):
            for i1 in range(n1):
                for x in range(n2):
                    buf[r + x] = a[i0, i1, x]
                for x in range(r):
                    buf[x] = a[i0, i1, 0]
                    buf[r + n2 + x] = a[i0, i1, n2 - 1]
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
                    out[i0, y, x] = 0.0
                for k in range(w.size):
                    src = min(max(y + k - r, 0), n1 - 1)
                    wk = w[k]
                    for x in range(n2):
                        out[i0, y, x] += wk * a[i0, src, x]
    else:
        for z in range(n0):
            for y in range(n1):
                for x in range(n2):
                    out[z, y, x] = 0.0
            for k in range(w.size):
                src = min(max(z + k - r, 0), n0 - 1)
                wk = w[k]
                for y in range(n1):
                    for x in range(n2):
                        out[z, y, x] += wk * a[src, y, x]
