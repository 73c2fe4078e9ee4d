"""Sub-pixel refinement of a winning integer shift.

Step 5 of :func:`~tilefuse.registration.phase_correlation.pairwise_shift`:
Gauss-Newton on the band-passed overlap with a gain ramp and an offset
(:func:`refine_gradient`, the default), the maximum of the upsampled
cross-correlation of the aligned overlaps (:func:`refine_overlap`), or
BigStitcher's parabola through the phase-correlation matrix
(:func:`refine_quadratic`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from .candidates import overlap_slices
from .peaks import apodised, centred

__all__ = ["prepare_refinement", "refine_gradient", "refine_overlap", "refine_quadratic"]

# Sub-pixel grid of the upsampled cross-correlation (see refine_overlap).
_UPSAMPLE = 20

#: Voxels an overlap window needs along an axis for :func:`refine_gradient` to refine
#: that axis (a finite difference needs 2).
_MIN_REFINE_DEPTH = 2


def _bspline3_weights(t: float) -> np.ndarray:
    """Cubic B-spline weights of the four samples around a point at fraction ``t`` in [0, 1)."""
    return np.array([(1 - t) ** 3, 4 - 6 * t**2 + 3 * t**3, 1 + 3 * t + 3 * t**2 - 3 * t**3, t**3]) / 6.0


def _sample_shifted(coeffs: np.ndarray, region, offset) -> np.ndarray:
    """Cubic-spline samples of ``coeffs`` at ``x + offset`` for ``x`` in ``region``.

    A constant offset makes spline interpolation separable: per axis, a
    4-tap weighted sum of shifted slices (indices clamped at the border, like
    ``mode="nearest"``).  Several times faster than ``map_coordinates``,
    which builds and walks a coordinate array per voxel.  The coefficients
    are first cut to the taps' reach (edge-padded where it leaves the array),
    so every pass works on slices of the region alone.
    """
    bases = [math.floor(u) for u in offset]
    lo = np.array([sl.start + b - 1 for sl, b in zip(region, bases)])
    hi = np.array([sl.stop + b + 2 for sl, b in zip(region, bases)])
    shape = np.array(coeffs.shape)
    sub = coeffs[tuple(slice(a, b) for a, b in zip(np.clip(lo, 0, shape), np.clip(hi, 0, shape)))]
    pad = list(zip(np.maximum(0, -lo), np.maximum(0, hi - shape)))
    if any(a or b for a, b in pad):
        sub = np.pad(sub, pad, mode="edge") if sub.size else np.full(hi - lo, coeffs.flat[0])
    out = sub
    for axis, (sl, u, b) in enumerate(zip(region, offset, bases)):
        n = sl.stop - sl.start
        weights = _bspline3_weights(u - b).astype(out.dtype)
        head = (slice(None),) * axis
        acc = out[head + (slice(0, n),)] * weights[0]
        for j in (1, 2, 3):
            acc += out[head + (slice(j, j + n),)] * weights[j]
        out = acc
    return out


def _band_pass(a: np.ndarray, low: float = 1.0, high: float = 4.0) -> np.ndarray:
    """Difference of Gaussians: drops pixel noise and smooth illumination (vignetting).

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
    flat = flat / _smooth_illumination(flat, 4 * high)
    return (ndimage.gaussian_filter(flat, low, mode="nearest")
            - ndimage.gaussian_filter(flat, high, mode="nearest", truncate=3.0))


def _smooth_illumination(a: np.ndarray, sigma: float, factor: int = 4) -> np.ndarray:
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
    coarse = ndimage.gaussian_filter(coarse, [sigma / f for f in factors], mode="nearest", truncate=2.0)
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


def prepare_refinement(f: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band-passed crops, and cubic-spline coefficients of the band-passed moving crop.

    Computed once per pair and shared by the candidate ranking and every
    candidate :func:`refine_gradient` tries.
    """
    ms = _band_pass(m)
    return _band_pass(f), ms, ndimage.spline_filter(ms, order=3, mode="nearest", output=np.float32)


def refine_gradient(fs, spline, masks, start, min_count, iterations: int = 8) -> tuple[np.ndarray, bool]:
    """Gauss-Newton refinement of a sub-pixel shift on the aligned overlap.

    Minimises ``sum w (f(x) - a*m(x - s) - b)^2`` over the shift ``s`` (and a
    gain ``a`` and offset ``b``, which absorb uneven illumination), linearising
    ``m`` around the current estimate and resampling it with cubic splines at
    every step (Lucas-Kanade).  Both crops are smoothed by the same small
    Gaussian first, which does not move the optimum but keeps noise out of the
    gradients (noisy gradients bias the estimate towards zero).

    Why not only the upsampled cross-correlation: its taper is a window shared
    by both crops, and on narrow overlaps (a 25 px wide overlap of which 7 px
    are lost to the shift) the window dominates and pulls the peak by up to
    0.9 px.  Measured on the 3D demo sample: 0.03-0.06 px error with this step
    against 0.5-0.9 px without it along the thin axis.
    """
    shift = np.asarray(start, dtype=np.float64).copy()
    c = tuple(int(v) for v in np.round(shift))
    gain = None  # (a, r) of the previous iteration
    axes01 = None  # per-axis coordinates in [-1, 1] over the window
    for _ in range(iterations):
        # Keep the integer anchor (and so the overlap window) fixed unless the
        # estimate moves a pixel away: re-rounding every step makes the window
        # flip when the answer lies near a half pixel, and the fit then
        # oscillates around it instead of converging.
        if np.any(np.abs(shift - np.asarray(c)) > 1.0):
            c = tuple(int(v) for v in np.round(shift))
        sf, sm = overlap_slices(c, fs.shape)
        # Interior of the overlap: 2 px away from the crop borders, where the
        # resampled values are extrapolated.
        inner = tuple(slice(a.start + 4, a.stop - 4) if a.stop - a.start > 3 * 4 else a for a in sf)
        inner_m = tuple(slice(b.start + (i.start - a.start), b.start + (i.stop - a.start))
                        for a, b, i in zip(sf, sm, inner))
        target = fs[inner]
        if target.size < max(min_count / 4, 16):
            return np.asarray(start, dtype=np.float64), False
        delta = shift - np.asarray(c)
        # g(x) = m(x - c - delta) on the overlap: sample the spline at x - delta.
        g = _sample_shifted(spline, inner_m, -delta)
        # Only axes along which the overlap is a few voxels deep can be
        # refined: a narrow nominal overlap (10 % of a 64 px tile is 6 px) at
        # a candidate shift of 5 px leaves one voxel, where no gradient exists
        # (np.gradient raised) and a gain ramp would duplicate the gain.
        # Those axes keep their current (integer) shift.
        active = [k for k, n in enumerate(g.shape) if n >= _MIN_REFINE_DEPTH]
        if not active:
            return np.asarray(start, dtype=np.float64), False
        grads = [np.gradient(g, axis=k) for k in active]
        w = None
        if masks is not None:
            w = (masks[0][inner] & masks[1][inner_m]).ravel().astype(np.float64)
        # f ≈ G(x) g(x - d) + b with a gain G = a + sum_k r_k x_k that has a
        # linear ramp per axis: two tiles' vignetting runs in opposite
        # directions across their overlap, and what the flat-fielding in
        # _band_pass leaves of it would leak into the shift (measured: 12 %
        # lower per-link error with the ramps).  Linearised around the
        # current shift, f ≈ G g - G (∇g·d) + b; the gradient columns use the
        # gain of the previous iteration, so the system stays linear in
        # (a, b, d, r).  (Folding the gain into the shift as p = a*d instead
        # ignores the ramp's share of G: on a low-texture overlap with strong
        # vignetting that made every step overshoot by ~1.8x, oscillating
        # around the answer past the iteration limit.)
        if axes01 is None or axes01[0].shape != g.shape or len(axes01) != len(active):
            if gain is not None and len(gain[1]) != len(active):
                gain = None  # ramps along other axes than this window's
            axes01 = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in g.shape], indexing="ij")
            axes01 = [axes01[k] for k in active]
        gain_prev = gain[0] + sum(r * x for r, x in zip(gain[1], axes01)) if gain is not None else None
        # The design matrix, one row per unknown (contiguous rows fill and
        # multiply faster than column_stack's interleaved columns):
        # a, b, d_k, r_k.
        n_ax = len(grads)
        design = np.empty((2 + 2 * n_ax, g.size))
        design[0] = g.ravel()
        design[1] = 1.0
        for k, gr in enumerate(grads):
            design[2 + k] = (gr if gain_prev is None else gain_prev * gr).ravel()
            design[2 + k] *= -1.0
            design[2 + n_ax + k] = (g * axes01[k]).ravel()
        rhs = target.ravel()
        if w is not None:
            design *= w
            rhs = rhs * w
        try:  # normal equations: a (2 ndim + 2)-square system
            sol = np.linalg.solve(design @ design.T, design @ rhs)
        except np.linalg.LinAlgError:
            return np.asarray(start, dtype=np.float64), False
        if not np.isfinite(sol).all() or abs(sol[0]) < 1e-6:
            return np.asarray(start, dtype=np.float64), False
        gain = (sol[0], sol[2 + n_ax:])
        step = sol[2 : 2 + n_ax]
        shift[active] += step
        if np.any(np.abs(shift - np.asarray(start)) > 1.5):
            return np.asarray(start, dtype=np.float64), False  # diverged: not this candidate
        if np.all(np.abs(step) < 1e-3):
            return shift, True
    return shift, bool(np.all(np.abs(step) < 0.05))


def refine_overlap(f, m, masks, shift, workers) -> np.ndarray:
    """Sub-pixel residual between the two crops aligned at integer ``shift``.

    Cuts the overlap of both crops, so that what remains differs by less than
    a pixel, and locates the maximum of their (tapered, not whitened)
    cross-correlation on a 1/_UPSAMPLE px grid with an upsampled DFT, then a
    parabola through that grid.  Why this and not the PCM:

    * whitening gives noise-only high frequencies the same weight as signal,
      which on smooth (optically band-limited) or noisy data shifts the PCM
      peak by up to ~0.3 px; plain cross-correlation weights frequencies by
      their power, which is the matched filter for white noise;
    * the PCM of the full crops is biased towards zero shift by the taper,
      which matters for shifts of several pixels but not for the < 1 px
      residual of aligned crops.

    Measured on shifts up to 15 px (64-96 px crops, Poisson noise): mean
    error 0.02-0.06 px where BigStitcher's quadratic PCM fit gives 0.1-0.3 px.
    """
    sf, sm = overlap_slices(shift, f.shape)
    if masks is None:
        a, b = f[sf] - f[sf].mean(), m[sm] - m[sm].mean()
    else:
        a, b = centred(f[sf], masks[0][sf]), centred(m[sm], masks[1][sm])
    fft_shape = tuple(sfft.next_fast_len(n, real=True) for n in a.shape)
    axes = tuple(range(a.ndim))
    spectrum = sfft.rfftn(apodised(a), s=fft_shape, axes=axes, workers=workers)
    spectrum *= np.conj(sfft.rfftn(apodised(b), s=fft_shape, axes=axes, workers=workers))
    return _upsampled_peak(spectrum, fft_shape)


def _upsampled_peak(spectrum: np.ndarray, fft_shape) -> np.ndarray:
    """Position of the maximum of ``irfftn(spectrum)`` within +-0.75 px of 0.

    The correlation is evaluated on ``(2*half+1)**ndim`` points ``j/u`` by
    contracting one axis at a time with a small DFT matrix (the
    matrix-multiply DFT of Guizar-Sicairos et al. 2008,
    doi:10.1364/OL.33.000156), one pass over the spectrum instead of an FFT
    of a ``u`` times larger array.  A parabola through the grid maximum and
    its neighbours gives the final sub-grid position.
    """
    u = _UPSAMPLE
    half = int(math.ceil(0.75 * u))
    offsets = np.arange(-half, half + 1) / u
    ndim = len(fft_shape)
    data = spectrum
    for axis in reversed(range(ndim)):
        n = fft_shape[axis]
        if axis == ndim - 1:
            # rfft half spectrum: conjugate pairs fold into weight 2 (DC and
            # Nyquist appear once); the real part is taken at the end.
            k = np.arange(data.shape[axis])
            weight = np.full(k.size, 2.0)
            weight[0] = 1.0
            if n % 2 == 0:
                weight[-1] = 1.0
        else:
            k = sfft.fftfreq(n, 1.0 / n)
            weight = np.ones(n)
        # float32 phases are exact enough (|k x / n| <= 0.4 turns) and
        # several times faster to evaluate than complex128 exponentials.
        phase = np.outer(k, offsets).astype(np.float32) * np.float32(2 * np.pi / n)
        kernel = np.empty(phase.shape, dtype=data.dtype)
        kernel.real = np.cos(phase) * weight[:, None]
        kernel.imag = np.sin(phase) * weight[:, None]
        # matmul contracts the last axis; the result axes are rotated back
        # into place after each step (the copy is of an already small array).
        data = np.moveaxis(np.moveaxis(data, axis, -1) @ kernel, -1, axis)
    values = data.real
    best = np.unravel_index(int(np.argmax(values)), values.shape)
    out = offsets[np.array(best)]
    for d in range(ndim):
        if 0 < best[d] < values.shape[d] - 1:
            lo, hi = list(best), list(best)
            lo[d] -= 1
            hi[d] += 1
            out[d] += _parabola_vertex(values[tuple(lo)], values[best], values[tuple(hi)]) / u
    return out


def _parabola_vertex(lo: float, mid: float, hi: float) -> float:
    """Vertex offset of the parabola through (-1, lo), (0, mid), (1, hi), in [-0.5, 0.5]."""
    denom = lo - 2.0 * mid + hi
    if not denom < 0:  # not a maximum (or NaN)
        return 0.0
    return float(np.clip(0.5 * (lo - hi) / denom, -0.5, 0.5))


def refine_quadratic(pcm: np.ndarray, shift) -> np.ndarray:
    """BigStitcher's refinement: per-axis parabola through the PCM at peak +- 1 (periodic)."""
    idx = np.array(shift) % np.array(pcm.shape)
    out = np.zeros(pcm.ndim)
    mid = pcm[tuple(idx)]
    for d in range(pcm.ndim):
        lo_i, hi_i = idx.copy(), idx.copy()
        lo_i[d] = (idx[d] - 1) % pcm.shape[d]
        hi_i[d] = (idx[d] + 1) % pcm.shape[d]
        out[d] = _parabola_vertex(pcm[tuple(lo_i)], mid, pcm[tuple(hi_i)])
    return out
