"""The phase-correlation matrix of two crops and its peaks: where the candidate shifts come from.

Steps 1-3 of :func:`~tilefuse.registration.phase_correlation.pairwise_shift`:
centre and taper the crops, whiten their cross-power spectrum, and take the
highest periodic local maxima of its inverse, each standing for ``2**ndim``
shifts (``p`` or ``p - N`` per axis).
"""

from __future__ import annotations

import functools
from itertools import product

import numba
import numpy as np
import scipy.fft as sfft
from scipy import ndimage

__all__ = ["apodised", "centred", "periodic_candidates", "periodic_peaks", "phase_correlation_matrix"]

# Border taper, in pixels per side (capped at a quarter of the axis), applied
# to the centred crops before every FFT.  Measured on 64-96 px crops with
# shifts up to +-15 px: 8 px is as good as 16 px and better than 4 px for the
# sub-pixel step; for peak detection BigStitcher's 10 px blended mirror
# extension fails as often as the taper (25 vs 27 of 250 noisy camera crops,
# almost all of them flat, ill-posed regions) and costs larger FFTs.
_TAPER = 8

# Relative magnitude below which a cross-power coefficient is treated as zero:
# its phase is round-off, and whitening would amplify it to full weight.
_EPS = 1e-7


def centred(a: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """float64 copy with the (masked) mean removed and masked pixels at 0."""
    if mask is None and a.ndim <= 3 and a.dtype.isnative and (a.dtype.kind in "biu" or a.dtype.char in "fd"):
        # one compiled pass instead of numpy's copy, mean and subtraction (their calls held the GIL ~20 us a crop)
        out = np.empty(a.shape, dtype=np.float64)
        shape3 = (1,) * (3 - a.ndim) + a.shape
        _centred(a.reshape(shape3), out.reshape(shape3))
        return out
    out = np.array(a, dtype=np.float64)
    if mask is None:
        out -= out.mean()
    else:
        out[~mask] = 0.0
        n = np.count_nonzero(mask)
        if n:
            out -= out.sum() / n
        out[~mask] = 0.0
    return out


# Reassociation lets the compiler vectorise the sum (it differs from numpy's pairwise sum by rounding).
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _centred(a, out):  # pragma: no cover - compiled
    """``out = a - mean(a)`` in float64 for a 3D array."""
    total = 0.0
    for i0 in range(a.shape[0]):
        for i1 in range(a.shape[1]):
            for i2 in range(a.shape[2]):
                v = np.float64(a[i0, i1, i2])
                out[i0, i1, i2] = v
                total += v
    mean = total / a.size
    for i0 in range(a.shape[0]):
        for i1 in range(a.shape[1]):
            for i2 in range(a.shape[2]):
                out[i0, i1, i2] -= mean


@functools.lru_cache(maxsize=256)  # a mosaic's pairs share a few crop shapes
def _taper(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Per-axis Tukey windows: cosine ramps of ``_TAPER`` px at both ends (read-only, shared)."""
    windows = []
    for n in shape:
        w = np.ones(n, dtype=np.float32)
        k = min(_TAPER, n // 4)
        if k > 0:
            ramp = 0.5 * (1.0 - np.cos(np.pi * (np.arange(k) + 0.5) / k))
            w[:k] = ramp
            w[n - k:] = ramp[::-1]
        w.flags.writeable = False
        windows.append(w)
    return tuple(windows)


def apodised(a: np.ndarray) -> np.ndarray:
    out = a.astype(np.float32)
    for axis, w in enumerate(_taper(a.shape)):
        out *= w.reshape((-1,) + (1,) * (a.ndim - axis - 1))
    return out


@numba.njit(cache=True, nogil=True)
def _apodise_pair(f, m, w0, w1, w2, out):  # pragma: no cover - compiled
    """``out[0], out[1] = apodised(f), apodised(m)`` for 3D crops, into the start of each axis of ``out``
    (which may be larger): float32, times the windows per axis (in :func:`apodised`'s order, so the
    same float32 numbers)."""
    for i0 in range(f.shape[0]):
        for i1 in range(f.shape[1]):
            for i2 in range(f.shape[2]):
                out[0, i0, i1, i2] = np.float32(f[i0, i1, i2]) * w0[i0] * w1[i1] * w2[i2]
                out[1, i0, i1, i2] = np.float32(m[i0, i1, i2]) * w0[i0] * w1[i1] * w2[i2]


def phase_correlation_matrix(f: np.ndarray, m: np.ndarray, workers):
    """Phase-correlation matrix of two centred crops, and its (padded) shape."""
    fft_shape = tuple(sfft.next_fast_len(n, real=True) for n in f.shape)
    axes = tuple(range(f.ndim))
    if f.ndim <= 3:
        # Both crops tapered in one compiled pass and transformed in one call (stacked): the same
        # numbers as two apodised() and rfftn() calls, whose Python side held the GIL ~50 us per pair.
        # Written straight into the zero-padded buffer (scipy would pad a copy).
        lead = (1,) * (3 - f.ndim)
        both = np.zeros((2,) + fft_shape, dtype=np.float32)
        windows = (np.ones(1, dtype=np.float32),) * len(lead) + _taper(f.shape)
        _apodise_pair(f.reshape(lead + f.shape), m.reshape(lead + f.shape), *windows,
                      both.reshape((2,) + lead + fft_shape))
        spectra = sfft.rfftn(both, axes=tuple(a + 1 for a in axes), workers=workers, overwrite_x=True)
        ff, fm = spectra[0], spectra[1]
    else:
        ff = sfft.rfftn(apodised(f), s=fft_shape, axes=axes, workers=workers)
        fm = sfft.rfftn(apodised(m), s=fft_shape, axes=axes, workers=workers)
    # F1 conj(F2) / |F1 conj(F2)|: its inverse has a delta at d for
    # f(x) = m(x - d).  Coefficients with negligible magnitude carry no
    # reliable phase and are zeroed instead of amplified.
    _whiten(ff.reshape(-1).view(np.float32), fm.reshape(-1).view(np.float32), _EPS)
    pcm = sfft.irfftn(ff, s=fft_shape, axes=axes, workers=workers)
    return pcm, fft_shape


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp"})
def _whiten(ff, fm, eps):  # pragma: no cover - compiled
    """``ff = ff conj(fm) / |ff conj(fm)|`` in place, 0 where the magnitude is <= ``eps`` times its maximum.

    ``ff`` and ``fm`` are complex64 spectra viewed as interleaved float32 (real, imaginary): two
    vectorised passes instead of numpy's six over the spectrum (3x faster).
    """
    n = ff.size // 2
    top = np.float32(0.0)
    for i in range(n):
        ar, ai, br, bi = ff[2 * i], ff[2 * i + 1], fm[2 * i], fm[2 * i + 1]
        re = ar * br + ai * bi
        im = ai * br - ar * bi
        ff[2 * i] = re
        ff[2 * i + 1] = im
        top = max(top, re * re + im * im)
    floor = np.float32(eps * eps) * top  # on squared magnitudes
    for i in range(n):
        re, im = ff[2 * i], ff[2 * i + 1]
        m2 = re * re + im * im
        scale = np.float32(1.0) / np.sqrt(m2) if m2 > floor else np.float32(0.0)
        ff[2 * i] = re * scale
        ff[2 * i + 1] = im * scale


def periodic_peaks(pcm: np.ndarray, n_peaks: int):
    """Indices and values of the ``n_peaks`` highest local maxima (periodic).

    A local maximum is >= its ``3**ndim - 1`` neighbours, with wrap-around
    borders since the PCM is periodic.  1-3D: one compiled pass that tests
    the neighbours only of values above the lowest maximum kept so far (6x
    faster than selecting the highest values with ``argpartition`` first);
    more axes: the highest values are tested first, a full maximum filter is
    the fallback when they hold too few maxima.
    """
    ndim = pcm.ndim
    if ndim <= 3:
        index, values = top_local_maxima(pcm, n_peaks)
        peaks = np.stack(np.unravel_index(index, pcm.shape), axis=1)
        return [tuple(int(v) for v in p) for p in peaks], values
    flat = pcm.ravel()
    k = min(flat.size, 2 * 3**ndim * n_peaks + 16)
    top = np.argpartition(flat, flat.size - k)[flat.size - k:] if k < flat.size else np.arange(flat.size)
    coords = np.stack(np.unravel_index(top, pcm.shape), axis=1)  # (k, ndim)
    steps = np.array([s for s in product((-1, 0, 1), repeat=ndim) if any(s)])
    neigh = (coords[:, None, :] + steps[None]) % np.array(pcm.shape)
    neigh_vals = pcm[tuple(np.moveaxis(neigh, -1, 0))]  # (k, 3**ndim - 1)
    is_max = flat[top] >= neigh_vals.max(axis=1)
    if np.count_nonzero(is_max) < n_peaks and k < flat.size:
        mask = pcm >= ndimage.maximum_filter(pcm, size=3, mode="wrap")
        top = np.flatnonzero(mask)
    else:
        top = top[is_max]
    values = flat[top]
    order = np.argsort(values)[::-1][:n_peaks]
    peaks = np.stack(np.unravel_index(top[order], pcm.shape), axis=1)
    return [tuple(int(v) for v in p) for p in peaks], values[order]


def top_local_maxima(pcm: np.ndarray, n_peaks: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and values of the ``n_peaks`` highest periodic local maxima of a 1-3D array, highest first."""
    n = min(n_peaks, pcm.size)
    index = np.empty(n, dtype=np.int64)
    values = np.empty(n, dtype=pcm.dtype)
    found = _top_local_maxima(pcm.reshape((1,) * (3 - pcm.ndim) + pcm.shape), index, values)
    return index[:found], values[:found]


@numba.njit(cache=True, nogil=True)
def _top_local_maxima(pcm, index, values):  # pragma: no cover - compiled
    """The ``index.size`` highest periodic local maxima of a 3D array, highest first: flat indices
    into ``index``, values into ``values``; returns how many were found (fewer only in tiny arrays)."""
    n0, n1, n2 = pcm.shape
    cap = index.size
    found = 0
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                v = pcm[i0, i1, i2]
                if found == cap and not v > values[cap - 1]:
                    continue
                is_max = True
                for d0 in range(-1, 2):
                    j0 = (i0 + d0) % n0
                    for d1 in range(-1, 2):
                        j1 = (i1 + d1) % n1
                        for d2 in range(-1, 2):
                            if pcm[j0, j1, (i2 + d2) % n2] > v:
                                is_max = False
                if not is_max:
                    continue
                # insert, keeping the list sorted (highest first; ties keep scan order)
                pos = found if found < cap else cap - 1
                while pos > 0 and values[pos - 1] < v:
                    if pos < cap:
                        values[pos] = values[pos - 1]
                        index[pos] = index[pos - 1]
                    pos -= 1
                values[pos] = v
                index[pos] = (i0 * n1 + i1) * n2 + i2
                if found < cap:
                    found += 1
    return found


def periodic_candidates(peak, fft_shape, shape, limit):
    """The periodic alternatives ``p`` or ``p - N`` per axis that can overlap."""
    per_axis = []
    for p, big, n, lim in zip(peak, fft_shape, shape, limit):
        opts = [s for s in (p, p - big) if abs(s) < n and abs(s) <= lim]
        if not opts:
            return []
        per_axis.append(opts)
    return list(product(*per_axis))
