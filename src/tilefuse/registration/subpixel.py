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

import numba
import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from .bandpass import band_pass
from .candidates import _bp_r, overlap_slices
from .peaks import apodised, centred

__all__ = ["prepare_refinement", "refine_gradient", "refine_overlap", "refine_quadratic"]

# Sub-pixel grid of the upsampled cross-correlation (see refine_overlap).
_UPSAMPLE = 20

#: Voxels an overlap window needs along an axis for :func:`refine_gradient` to refine
#: that axis (a finite difference needs 2).
_MIN_REFINE_DEPTH = 2

# Compiled on first use, then loaded from numba's on-disk cache; releases the GIL, so the
# registration threads run it in parallel.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


def _bspline3_weights(t: float) -> np.ndarray:
    """Cubic B-spline weights of the four samples around a point at fraction ``t`` in [0, 1)."""
    return np.array([(1 - t) ** 3, 4 - 6 * t**2 + 3 * t**3, 1 + 3 * t + 3 * t**2 - 3 * t**3, t**3]) / 6.0


def _sample_shifted(coeffs: np.ndarray, region, offset) -> np.ndarray:
    """Cubic-spline samples of ``coeffs`` at ``x + offset`` for ``x`` in ``region``.

    A constant offset makes spline interpolation separable: per axis, a
    4-tap weighted sum of shifted slices (indices clamped at the border, like
    ``mode="nearest"``).  Several times faster than ``map_coordinates``,
    which builds and walks a coordinate array per voxel; compiled, one pass
    per axis over the region and its taps' reach (3x faster than the same
    sums as numpy slices, padded copies and temporaries).
    """
    nd = coeffs.ndim
    lead = 3 - nd
    c3 = coeffs.reshape((1,) * lead + coeffs.shape)
    start = np.zeros(3, dtype=np.int64)
    size = np.ones(3, dtype=np.int64)
    taps = np.ones(3, dtype=np.int64)
    weights = np.zeros((3, 4), dtype=np.float32)
    weights[:, 0] = 1.0  # the leading axes added for the kernel: identity
    for axis, (sl, u) in enumerate(zip(region, offset), start=lead):
        b = math.floor(u)
        start[axis] = sl.start + b - 1
        size[axis] = sl.stop - sl.start
        taps[axis] = 4
        weights[axis] = _bspline3_weights(u - b)
    out = np.empty(tuple(size), dtype=np.float32)
    _spline_sample(c3, start, size, taps, weights, out)
    return out.reshape(out.shape[lead:])


@_jit
def _spline_sample(c, start, size, taps, w, out):  # pragma: no cover - compiled
    """``out[x] = sum_j w[0,j0] w[1,j1] w[2,j2] c[clamp(start + x + j)]``, separably (x, then y, then z)."""
    n0, n1, n2 = size[0], size[1], size[2]
    t0, t1, t2 = taps[0], taps[1], taps[2]
    e0, e1, m2 = n0 + t0 - 1, n1 + t1 - 1, n2 + t2 - 1
    c0, c1, c2 = c.shape
    along_x = np.empty((e0, e1, n2), dtype=np.float32)
    row = np.empty(m2, dtype=np.float32)
    for a in range(e0):
        ia = min(max(start[0] + a, 0), c0 - 1)
        for b in range(e1):
            ib = min(max(start[1] + b, 0), c1 - 1)
            for q in range(m2):
                row[q] = c[ia, ib, min(max(start[2] + q, 0), c2 - 1)]
            for x in range(n2):
                along_x[a, b, x] = 0.0
            for j in range(t2):
                wj = w[2, j]
                for x in range(n2):
                    along_x[a, b, x] += wj * row[x + j]
    along_y = np.zeros((e0, n1, n2), dtype=np.float32)
    for a in range(e0):
        for y in range(n1):
            for j in range(t1):
                wj = w[1, j]
                for x in range(n2):
                    along_y[a, y, x] += wj * along_x[a, y + j, x]
    for z in range(n0):
        for y in range(n1):
            for x in range(n2):
                out[z, y, x] = 0.0
            for j in range(t0):
                wj = w[0, j]
                for x in range(n2):
                    out[z, y, x] += wj * along_y[z + j, y, x]


def prepare_refinement(f: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band-passed crops, and cubic-spline coefficients of the band-passed moving crop.

    Computed once per pair and shared by the candidate ranking and every
    candidate :func:`refine_gradient` tries.
    """
    ms = band_pass(m)
    return band_pass(f), ms, spline_coefficients(ms)


def spline_coefficients(a: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.spline_filter(a, 3, mode="nearest", output=np.float32)`` (float32 rounding apart).

    1-3D arrays whose axes are 1 or at least :data:`_MIN_COMPILED_SPLINE` long are filtered by a
    compiled recursive filter (causal and anticausal pass per axis, in float64), 2.5-4x faster than
    scipy's line-buffered one on a pair's crops; others by scipy.
    """
    if a.ndim > 3 or any(1 < n < _MIN_COMPILED_SPLINE for n in a.shape):
        return ndimage.spline_filter(a, order=3, mode="nearest", output=np.float32)
    a3 = a.reshape((1,) * (3 - a.ndim) + a.shape)
    out = np.empty(a3.shape, dtype=np.float32)
    _spline_prefilter(a3, out)
    return out.reshape(a.shape)


#: Shortest axis (other than 1) :func:`spline_coefficients` filters itself: on shorter ones scipy's
#: boundary handling differs from the half-sample-symmetric one below by up to 5e-4 (relative).
_MIN_COMPILED_SPLINE = 5

# The cubic B-spline's pole, and the terms of the causal filter's initial sum (|pole|**28 < 1e-16).
_POLE = math.sqrt(3.0) - 2.0
_HORIZON = 28


@_jit
def _reflected(i, n):  # pragma: no cover - compiled
    """Index ``i`` of a length-``n`` axis extended half-sample symmetrically (x[-1] = x[0])."""
    p = 2 * n
    i = i % p
    return i if i < n else p - 1 - i


@_jit
def _spline_prefilter(a, out):  # pragma: no cover - compiled
    """Cubic B-spline coefficients of a 3D array (each axis longer than 1), half-sample symmetric borders.

    Per axis the recursive filter of Unser et al. (IEEE PAMI 13(3), 1991): a causal pass started
    from the sum over the reflected signal, an anticausal pass started from its closed form, and
    the gain 6.  Along the first two axes the recursion runs on whole rows (vectorised).
    """
    n0, n1, n2 = a.shape
    z = _POLE
    zk = np.empty(_HORIZON)
    for k in range(_HORIZON):
        zk[k] = z**k
    end = z / (z - 1.0)
    # the reflected indices of the causal filters' initial sums, once per axis (not a modulo per term and line)
    ref0 = np.empty(_HORIZON, dtype=np.int64)
    ref1 = np.empty(_HORIZON, dtype=np.int64)
    ref2 = np.empty(_HORIZON, dtype=np.int64)
    for k in range(_HORIZON):
        ref0[k] = _reflected(-k, n0)
        ref1[k] = _reflected(-k, n1)
        ref2[k] = _reflected(-k, n2)
    w = np.empty((n0, n1, n2))
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                w[i0, i1, i2] = a[i0, i1, i2]
    gain = 1.0
    if n2 > 1:
        gain *= 6.0
        for i0 in range(n0):
            for i1 in range(n1):
                x = w[i0, i1]
                s = 0.0
                for k in range(_HORIZON):
                    s += zk[k] * x[ref2[k]]
                x[0] = s
                for i in range(1, n2):
                    x[i] += z * x[i - 1]
                x[n2 - 1] *= end
                for i in range(n2 - 2, -1, -1):
                    x[i] = z * (x[i + 1] - x[i])
    if n1 > 1:
        gain *= 6.0
        s = np.empty(n2)
        for i0 in range(n0):
            p = w[i0]
            s[:] = 0.0
            for k in range(_HORIZON):
                row = p[ref1[k]]
                for i2 in range(n2):
                    s[i2] += zk[k] * row[i2]
            p[0, :] = s
            for i in range(1, n1):
                for i2 in range(n2):
                    p[i, i2] += z * p[i - 1, i2]
            for i2 in range(n2):
                p[n1 - 1, i2] *= end
            for i in range(n1 - 2, -1, -1):
                for i2 in range(n2):
                    p[i, i2] = z * (p[i + 1, i2] - p[i, i2])
    if n0 > 1:
        gain *= 6.0
        s2 = np.zeros((n1, n2))
        for k in range(_HORIZON):
            sl = w[ref0[k]]
            for i1 in range(n1):
                for i2 in range(n2):
                    s2[i1, i2] += zk[k] * sl[i1, i2]
        w[0] = s2
        for i in range(1, n0):
            for i1 in range(n1):
                for i2 in range(n2):
                    w[i, i1, i2] += z * w[i - 1, i1, i2]
        for i1 in range(n1):
            for i2 in range(n2):
                w[n0 - 1, i1, i2] *= end
        for i in range(n0 - 2, -1, -1):
            for i1 in range(n1):
                for i2 in range(n2):
                    w[i, i1, i2] = z * (w[i + 1, i1, i2] - w[i, i1, i2])
    for i0 in range(n0):
        for i1 in range(n1):
            for i2 in range(n2):
                out[i0, i1, i2] = w[i0, i1, i2] * gain


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

    Compiled as one call per refinement (:func:`_gauss_newton`): the Python
    loop around the compiled steps held the GIL ~0.4 ms per pair (the
    registration threads waited on each other), the kernel holds it only
    while its arguments are unboxed.
    """
    fs = np.asarray(fs, dtype=np.float32)
    spline = np.asarray(spline, dtype=np.float32)
    lead = (1,) * (3 - fs.ndim)  # the compiled kernel sees every crop as 3D
    m0, m1 = (_NO_MASK, _NO_MASK) if masks is None else (masks[0].reshape(lead + fs.shape),
                                                          masks[1].reshape(lead + fs.shape))
    start3 = np.zeros(3)
    start3[len(lead):] = start
    out = np.empty(3)
    converged = _gauss_newton(fs.reshape(lead + fs.shape), spline.reshape(lead + fs.shape), m0, m1,
                              masks is not None, len(lead), start3, float(min_count), iterations, out)
    return out[len(lead):].copy(), bool(converged)


_NO_MASK = np.ones((1, 1, 1), dtype=bool)

#: Gauss-Newton stops when no axis moves by more than this (px).  A Gauss-Newton step from within a
#: tenth of a pixel leaves an error of second order, far below the ~0.02-0.05 px the step achieves:
#: on the 600-tile grid 0.001 -> 0.01 cut the iterations from 3.0 to 2.4 per pair and, with the
#: parabolic start (:func:`_refine_candidate`), 0.01 -> 0.03 cut them from 1.8 to 1.35
#: (~18 % of a pair's CPU), every link's error the same (mean 0.0209, max 0.0966 px; shifts moved by
#: at most 0.005 px).
_TOL = 3e-2


@_jit
def _gauss_newton(fs, spline, m0, m1, use_w, lead, start, min_count, iterations, out):  # pragma: no cover
    """:func:`refine_gradient` on 3D crops whose first ``lead`` axes were added (length 1): the
    refined shift into ``out``; returns whether it converged (``out`` is ``start`` when not).

    Per iteration: the overlap window at the integer anchor ``c`` less 4 px at each border, the
    moving crop's spline sampled there at ``x - (shift - c)`` (:func:`_spline_sample`), the
    normal equations (:func:`_normal_equations`) and their solution (:func:`_solve_small`).
    """
    shift = start.copy()
    c = np.rint(shift)  # numpy's round: halves to even
    use_gain = False
    gain_a = 1.0
    gain_r = np.zeros(3)
    n_gain = 0  # active axes of the previous iteration's gain ramps
    step = np.zeros(3)
    n_step = 0
    lo = np.zeros(3, dtype=np.int64)  # the window in fs, and where it starts in the moving crop
    lo_m = np.zeros(3, dtype=np.int64)
    size = np.ones(3, dtype=np.int64)
    taps = np.ones(3, dtype=np.int64)
    wts = np.zeros((3, 4), dtype=np.float32)
    tap0 = np.zeros(3, dtype=np.int64)
    for _ in range(iterations):
        # Keep the integer anchor (and so the overlap window) fixed unless the estimate moves a
        # pixel away (see refine_gradient).
        moved = False
        for d in range(3):
            if abs(shift[d] - c[d]) > 1.0:
                moved = True
        if moved:
            c = np.rint(shift)
        count = 1
        for d in range(3):
            n = fs.shape[d]
            ci = int(c[d])
            a0, a1 = max(0, ci), n + min(0, ci)
            b0 = max(0, -ci)
            if a1 - a0 > 12:  # interior: 4 px from the borders, where the resampled values are extrapolated
                lo[d], lo_m[d], size[d] = a0 + 4, b0 + 4, a1 - a0 - 8
            else:
                lo[d], lo_m[d], size[d] = a0, b0, max(a1 - a0, 0)
            count *= size[d]
        if count < max(min_count / 4, 16):
            out[:] = start
            return False
        # g(x) = m(x - c - delta) on the window: the spline sampled at x - delta (lead axes: identity)
        for d in range(3):
            wts[d, :] = 0.0
            if d < lead:
                tap0[d], taps[d] = lo_m[d], 1
                wts[d, 0] = 1.0
            else:
                u = -(shift[d] - c[d])
                b = math.floor(u)
                t = u - b
                tap0[d], taps[d] = lo_m[d] + int(b) - 1, 4
                wts[d, 0] = (1 - t) ** 3 / 6.0
                wts[d, 1] = (4 - 6 * t**2 + 3 * t**3) / 6.0
                wts[d, 2] = (1 + 3 * t + 3 * t**2 - 3 * t**3) / 6.0
                wts[d, 3] = t**3 / 6.0
        g = np.empty((size[0], size[1], size[2]), dtype=np.float32)
        _spline_sample(spline, tap0, size, taps, wts, g)
        n_act = 0
        active = np.empty(3, dtype=np.int64)
        for d in range(lead, 3):
            if size[d] >= _MIN_REFINE_DEPTH:
                active[n_act] = d
                n_act += 1
        if n_act == 0:
            out[:] = start
            return False
        if use_gain and n_gain != n_act:
            use_gain = False  # ramps along other axes than this window's
        target = fs[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]]
        if use_w:
            w = m0[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] & \
                m1[lo_m[0]:lo_m[0] + size[0], lo_m[1]:lo_m[1] + size[1], lo_m[2]:lo_m[2] + size[2]]
        else:
            w = m0
        k = 2 + 2 * n_act
        ata = np.zeros((k, k))
        atb = np.zeros(k)
        _normal_equations(g, target, w, use_w, active[:n_act], gain_a if use_gain else 1.0,
                          gain_r[:n_act], use_gain, ata, atb)
        sol = np.empty(k)
        if not _solve_small(ata, atb, sol):
            out[:] = start
            return False
        finite = True
        for i in range(k):
            if not np.isfinite(sol[i]):
                finite = False
        if not finite or abs(sol[0]) < 1e-6:
            out[:] = start
            return False
        use_gain, gain_a, n_gain = True, sol[0], n_act
        for j in range(n_act):
            gain_r[j] = sol[2 + n_act + j]
            step[j] = sol[2 + j]
            shift[active[j]] += sol[2 + j]
        n_step = n_act
        for d in range(3):
            if abs(shift[d] - start[d]) > 1.5:  # diverged: not this candidate
                out[:] = start
                return False
        small = True
        for j in range(n_step):
            if not abs(step[j]) < _TOL:
                small = False
        if small:
            out[:] = shift
            return True
    out[:] = shift
    for j in range(n_step):
        if not abs(step[j]) < 0.05:
            return False
    return True


@_jit
def _refine_candidate(fs, ms, spline, m0, m1, use_w, ndim, cand, min_count, depth, out):  # pragma: no cover
    """Gauss-Newton (:func:`_gauss_newton`) from an integer candidate of 3D crops (the first ``3 - ndim``
    axes added), started at the vertex of the parabola through the band-passed correlation at ``cand``
    and its two neighbours along every axis at least ``depth`` deep, and once more from ``cand``
    itself when that does not converge.  The shift goes into ``out``; returns whether it converged.

    (``phase_correlation._refine_best`` says why; one compiled call per candidate.)
    """
    lead = 3 - ndim
    start = cand.astype(np.float64)
    mid = _bp_r(fs, ms, m0, m1, use_w, ndim, cand, min_count)
    if np.isfinite(mid):
        s = cand.copy()
        for d in range(lead, 3):
            if fs.shape[d] - abs(cand[d]) - 1 < depth:
                continue
            s[d] = cand[d] - 1
            r_lo = _bp_r(fs, ms, m0, m1, use_w, ndim, s, min_count)
            s[d] = cand[d] + 1
            r_hi = _bp_r(fs, ms, m0, m1, use_w, ndim, s, min_count)
            s[d] = cand[d]
            if np.isfinite(r_lo) and np.isfinite(r_hi):
                denom = r_lo - 2.0 * mid + r_hi
                if denom < 0:
                    start[d] += min(max(0.5 * (r_lo - r_hi) / denom, -0.5), 0.5)
    converged = _gauss_newton(fs, spline, m0, m1, use_w, lead, start, min_count, 8, out)
    if not converged:
        moved = False
        for d in range(3):
            if start[d] != cand[d]:
                moved = True
        if moved:  # as before the parabolic start: from the integer shift
            converged = _gauss_newton(fs, spline, m0, m1, use_w, lead, cand.astype(np.float64), min_count, 8,
                                      out)
    return converged


@_jit
def _solve_small(a, b, x):  # pragma: no cover - compiled
    """``x = solve(a, b)`` for a small square system (LU with partial pivoting, as LAPACK's gesv);
    False when a pivot is exactly 0 (where gesv raises).  ``a`` and ``b`` are overwritten.

    Written here because the system (at most 8 x 8) is solved inside the compiled Gauss-Newton
    loop: numpy's solve from Python held the GIL for ~10 us a call, numba's calls into LAPACK
    (whose BLAS may start threads next to the registration's).
    """
    n = b.size
    for col in range(n):
        p = col
        for r in range(col + 1, n):
            if abs(a[r, col]) > abs(a[p, col]):
                p = r
        if a[p, col] == 0.0:
            return False
        if p != col:
            for j in range(n):
                a[col, j], a[p, j] = a[p, j], a[col, j]
            b[col], b[p] = b[p], b[col]
        for r in range(col + 1, n):
            f = a[r, col] / a[col, col]
            if f != 0.0:
                for j in range(col, n):
                    a[r, j] -= f * a[col, j]
                b[r] -= f * b[col]
    for i in range(n - 1, -1, -1):
        s = b[i]
        for j in range(i + 1, n):
            s -= a[i, j] * x[j]
        x[i] = s / a[i, i]
    return True


@_jit
def _normal_equations(g, target, w, use_w, active, gain_a, gain_r, use_gain, ata, atb):  # pragma: no cover
    """The Gauss-Newton normal equations of :func:`refine_gradient`, summed over the window's voxels.

    Each voxel gives one row of the design: ``g``, ``1``, ``-G * dg/dx_k``
    and ``g * x_k`` per active axis ``k``, with ``x_k`` in [-1, 1] over the
    window, ``G = a + sum_k r_k x_k`` the previous gain (1 without one) and
    ``dg/dx_k`` as :func:`numpy.gradient` computes it (central differences,
    one-sided at the window's ends); its target is ``target``.  Voxels
    outside the mask ``w`` are left out.  Adds ``row^T row`` to ``ata`` and
    ``row * target`` to ``atb`` (float32 rows, float64 sums).

    Compiled, with no BLAS: BLAS starts its own threads next to the
    registration's, which on 2 loaded cores doubled the registration's wall
    time (600 tiles: 25.2 s, 11.9 s with BLAS on one thread).  The design is
    built column by column (float32, a masked voxel's row all zero) and each
    of the ``k (k + 1) / 2`` products is then one contiguous pass the
    compiler vectorises: 3-4x faster than summing ``row^T row`` voxel by
    voxel, whose inner loops over the ``2 + 2 ndim`` entries do not vectorise.
    """
    n0, n1, n2 = g.shape
    na = active.size
    k = 2 + 2 * na
    size = n0 * n1 * n2
    cols = np.empty((k + 1, n0, n1, n2), dtype=np.float32)  # the design's columns, then the target
    lin0, lin1, lin2 = _ramp(n0), _ramp(n1), _ramp(n2)
    gain = np.empty((n0, n1, n2), dtype=np.float32)  # G, 0 outside the mask
    r = np.zeros(3, dtype=np.float32)  # the gain's ramp per axis
    if use_gain:
        for j in range(na):
            r[active[j]] = np.float32(gain_r[j])
    a0 = np.float32(gain_a) if use_gain else np.float32(1.0)
    # Every loop below runs along the contiguous last axis without branches, so it vectorises.
    for i0 in range(n0):
        for i1 in range(n1):
            base = a0 + r[0] * lin0[i0] + r[1] * lin1[i1]
            for i2 in range(n2):
                keep = np.float32(w[i0, i1, i2]) if use_w else np.float32(1.0)
                cols[0, i0, i1, i2] = g[i0, i1, i2] * keep
                cols[1, i0, i1, i2] = keep
                cols[k, i0, i1, i2] = target[i0, i1, i2] * keep
                gain[i0, i1, i2] = (base + r[2] * lin2[i2]) * keep
    for j in range(na):
        ax = active[j]
        grad = cols[2 + j]
        ramp = cols[2 + na + j]
        for i0 in range(n0):
            for i1 in range(n1):
                if ax == 2:
                    for i2 in range(1, n2 - 1):
                        grad[i0, i1, i2] = (g[i0, i1, i2 + 1] - g[i0, i1, i2 - 1]) * np.float32(0.5)
                    grad[i0, i1, 0] = g[i0, i1, 1] - g[i0, i1, 0]
                    grad[i0, i1, n2 - 1] = g[i0, i1, n2 - 1] - g[i0, i1, n2 - 2]
                    for i2 in range(n2):
                        ramp[i0, i1, i2] = cols[0, i0, i1, i2] * lin2[i2]
                else:
                    if ax == 1:
                        lo, hi, i, n, x = (max(i1 - 1, 0), min(i1 + 1, n1 - 1), i1, n1, lin1[i1])
                        glo, ghi = g[i0, lo], g[i0, hi]
                    else:
                        lo, hi, i, n, x = (max(i0 - 1, 0), min(i0 + 1, n0 - 1), i0, n0, lin0[i0])
                        glo, ghi = g[lo, i1], g[hi, i1]
                    half = np.float32(0.5) if 0 < i < n - 1 else np.float32(1.0)
                    for i2 in range(n2):
                        grad[i0, i1, i2] = (ghi[i2] - glo[i2]) * half
                        ramp[i0, i1, i2] = cols[0, i0, i1, i2] * x
                for i2 in range(n2):
                    grad[i0, i1, i2] *= -gain[i0, i1, i2]
    flat = cols.reshape(k + 1, size)
    for a in range(k):
        for b in range(a, k + 1):
            ata_ab = _dot(flat[a], flat[b])
            if b == k:
                atb[a] += ata_ab
            else:
                ata[a, b] += ata_ab
    for a in range(k):
        for b in range(a):
            ata[a, b] = ata[b, a]


# Reassociation lets the compiler vectorise the float64 sum (it differs from a sequential sum by rounding).
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _dot(x, y):  # pragma: no cover - compiled
    """``sum(float64(x) * float64(y))`` of two float32 vectors."""
    s = 0.0
    for i in range(x.size):
        s += np.float64(x[i]) * np.float64(y[i])
    return s


@_jit
def _ramp(n):  # pragma: no cover - compiled
    """``np.linspace(-1, 1, n)`` in float32."""
    return np.linspace(-1.0, 1.0, n).astype(np.float32)


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
