"""Scoring candidate shifts: the Pearson correlation of two crops over their overlap.

Step 4 of :func:`~tilefuse.registration.phase_correlation.pairwise_shift`:
every candidate the phase-correlation peaks give (:mod:`.peaks`) is scored by
how well the crops correlate where they overlap at that integer shift, and the
winner may climb to a better-correlated neighbour.
"""

from __future__ import annotations

import math
from itertools import product

import numba
import numpy as np

__all__ = ["OverlapScorer", "band_passed_r", "hill_climb", "overlap_slices", "overlap_sums", "peak_candidates"]

# Crops larger than this (pixels) get summed-area tables for the correlation.
_TABLE_MIN_SIZE = 2**18


def overlap_slices(shift, shape):
    """Slices of ``fixed`` and ``moving`` that overlap when fixed[x] = moving[x - shift]."""
    sf, sm = [], []
    for s, n in zip(shift, shape):
        sf.append(slice(max(0, s), n + min(0, s)))
        sm.append(slice(max(0, -s), n - max(0, s)))
    return tuple(sf), tuple(sm)


class OverlapScorer:
    """Pearson correlation of two crops over their overlap at integer shifts.

    Without masks the first and second moments of both crops come from one
    stacked summed-area table (``2**ndim`` look-ups per candidate); only the
    cross term is a pass over the overlap, through strided views (no copies).
    """

    def __init__(self, f: np.ndarray, m: np.ndarray, masks):
        self.f, self.m, self.shape = f, m, f.shape
        self.masks = masks
        # A pair's candidates, their climbs and the final answer revisit the same shifts: each is
        # scored once.
        self._pearson: dict[tuple[int, ...], float] = {}
        ndim = f.ndim
        self._sum_spec = "{0},{0}->".format("".join(chr(105 + d) for d in range(ndim)))
        self.table = None
        # Unmasked crops without tables are scored by one compiled call per shift (_pearson)
        self._lead = 3 - ndim
        self._f3 = self._m3 = None
        if masks is None and ndim <= 3 and not f.size > _TABLE_MIN_SIZE:
            self._f3, self._m3 = f.reshape((1,) * self._lead + f.shape), m.reshape((1,) * self._lead + m.shape)
        # Building the table costs ~30 passes over the crop (numpy's cumsum is
        # slow); a direct evaluation costs 5.  With the ~10-30 evaluations of a
        # typical call the table only pays off on large crops.
        if masks is None and f.size > _TABLE_MIN_SIZE:
            table = np.zeros((4,) + tuple(n + 1 for n in f.shape))
            inner = (slice(1, None),) * ndim
            table[(0,) + inner] = f
            np.multiply(f, f, out=table[(1,) + inner])
            table[(2,) + inner] = m
            np.multiply(m, m, out=table[(3,) + inner])
            for axis in range(1, ndim + 1):
                np.cumsum(table, axis=axis, out=table)
            self.table = table
            self.bits = np.array(list(product((0, 1), repeat=ndim)), dtype=bool)
            self.signs = (-1.0) ** (ndim - self.bits.sum(axis=1))

    def _moments(self, which: slice, sl) -> np.ndarray:
        """(sum, sum of squares) over box ``sl`` of the tables ``which``."""
        lo = np.array([s.start for s in sl])
        hi = np.array([s.stop for s in sl])
        corners = np.where(self.bits, hi, lo)
        return self.table[(which,) + tuple(corners.T)] @ self.signs

    def count(self, shift) -> int:
        if self.masks is None:
            return math.prod(max(n - abs(s), 0) for s, n in zip(shift, self.shape))
        sf, sm = overlap_slices(shift, self.shape)
        return int(np.count_nonzero(self.masks[0][sf] & self.masks[1][sm]))

    def pearson(self, shift) -> float:
        key = tuple(shift)
        r = self._pearson.get(key)
        if r is None:
            r = self._pearson[key] = self._compute_pearson(shift)
        return r

    def _compute_pearson(self, shift) -> float:
        if self._f3 is not None:
            c = np.zeros(3, dtype=np.int64)
            c[self._lead:] = shift
            return float(_pearson(self._f3, self._m3, c))
        sf, sm = overlap_slices(shift, self.shape)
        a, b = self.f[sf], self.m[sm]
        if self.table is not None:
            n = a.size
            sa, saa = self._moments(slice(0, 2), sf)
            sb, sbb = self._moments(slice(2, 4), sm)
            sab = float(np.einsum(self._sum_spec, a, b))
        elif self.masks is None:
            n = a.size
            sa, sb, saa, sbb, sab = overlap_sums(a, b)
        else:
            w = self.masks[0][sf] & self.masks[1][sm]
            n = np.count_nonzero(w)
            if n < 2:
                return float("nan")
            a, b = a[w], b[w]
            sa, saa, sb, sbb, sab = a.sum(), np.dot(a, a), b.sum(), np.dot(b, b), np.dot(a, b)
        va = saa - sa * sa / n
        vb = sbb - sb * sb / n
        # Differences of summed-area tables carry rounding of the order of
        # eps * (table magnitude); a variance below that is "constant".
        floor = 1e-10 * (abs(saa) + abs(sbb) + 1e-300)
        if va <= floor or vb <= floor:
            return float("nan")
        return float((sab - sa * sb / n) / math.sqrt(va * vb))


def hill_climb(scorer: OverlapScorer, shift, shape, limit, min_count, max_steps=8, score=None):
    """Move to the integer neighbour with the best correlation until none is better.

    The PCM peak of two crops is pulled towards zero shift by the taper (the
    windows of the two crops overlap best at zero), so its integer position can
    be one pixel off the best-correlated one; the overlap correlation has no
    such bias.  ``score(shift)`` replaces the overlap correlation when given.
    """
    score = scorer.pearson if score is None else score
    cur = tuple(shift)
    cur_r = score(cur)
    for _ in range(max_steps):
        best, best_r = cur, cur_r
        for d in range(len(shape)):
            for step in (-1, 1):
                s = list(cur)
                s[d] += step
                s = tuple(s)
                if abs(s[d]) >= shape[d] or abs(s[d]) > limit[d] or scorer.count(s) < min_count:
                    continue
                r = score(s)
                if r > best_r:
                    best, best_r = s, r
        if best == cur:
            break
        cur, cur_r = best, best_r
    return cur, cur_r


def band_passed_r(prepared, masks, cand, min_count) -> float:
    """Pearson correlation of the band-passed crops overlapping at integer shift ``cand``.

    Every second voxel per axis: the band-passed crops are smooth (sigma >= 1),
    and ranking needs no more (``2**ndim`` times cheaper).  ``-inf`` when fewer
    than ``min_count / 2**ndim`` of those voxels are in both masks.
    """
    fs, ms = prepared[0], prepared[1]
    lead = (1,) * (3 - fs.ndim)
    m0, m1 = _masks3(masks, lead)
    c = np.zeros(3, dtype=np.int64)
    c[len(lead):] = cand
    return _bp_r(fs.reshape(lead + fs.shape), ms.reshape(lead + ms.shape), m0, m1, masks is not None, fs.ndim, c,
                 float(min_count))


_NO_MASK = np.ones((1, 1, 1), dtype=bool)


def _masks3(masks, lead):
    """The masks as the compiled kernels take them (3D; a 1x1x1 placeholder without masks)."""
    if masks is None:
        return _NO_MASK, _NO_MASK
    return masks[0].reshape(lead + masks[0].shape), masks[1].reshape(lead + masks[1].shape)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _bp_r(fs, ms, m0, m1, use_w, ndim, c, min_count):  # pragma: no cover - compiled
    """:func:`band_passed_r` of 3D crops at the 3D integer shift ``c`` (``ndim``: the crops' own axes)."""
    a0, a1, a2 = max(0, c[0]), max(0, c[1]), max(0, c[2])
    b0, b1, b2 = max(0, -c[0]), max(0, -c[1]), max(0, -c[2])
    e0 = fs.shape[0] + min(0, c[0]) - a0  # overlap extents
    e1 = fs.shape[1] + min(0, c[1]) - a1
    e2 = fs.shape[2] + min(0, c[2]) - a2
    if not use_w:  # the strided sums of the unmasked overlap (vectorised)
        if e0 <= 0 or e1 <= 0 or e2 <= 0:
            return -np.inf
        sa, sb, saa, sbb, sab = _sums(fs[a0:a0 + e0:2, a1:a1 + e1:2, a2:a2 + e2:2],
                                      ms[b0:b0 + e0:2, b1:b1 + e1:2, b2:b2 + e2:2])
        n = ((e0 + 1) // 2) * ((e1 + 1) // 2) * ((e2 + 1) // 2)
        den = math.sqrt(max(saa - sa * sa / n, 0.0) * max(sbb - sb * sb / n, 0.0))
        return (sab - sa * sb / n) / den if den > 0 else -np.inf
    sa = sb = saa = sbb = sab = 0.0
    n = 0
    for i0 in range(0, e0, 2):
        for i1 in range(0, e1, 2):
            for i2 in range(0, e2, 2):
                if use_w and not (m0[a0 + i0, a1 + i1, a2 + i2] and m1[b0 + i0, b1 + i1, b2 + i2]):
                    continue
                x = np.float64(fs[a0 + i0, a1 + i1, a2 + i2])
                y = np.float64(ms[b0 + i0, b1 + i1, b2 + i2])
                sa += x
                sb += y
                saa += x * x
                sbb += y * y
                sab += x * y
                n += 1
    if use_w and n < max(min_count / 2**ndim, 2):
        return -np.inf
    if n == 0:
        return -np.inf
    den = math.sqrt(max(saa - sa * sa / n, 0.0) * max(sbb - sb * sb / n, 0.0))
    return (sab - sa * sb / n) / den if den > 0 else -np.inf


@numba.njit(cache=True, nogil=True)
def _bp_r_many(fs, ms, m0, m1, use_w, ndim, cands, min_count, out):  # pragma: no cover - compiled
    """:func:`_bp_r` of each row of ``cands`` (3D shifts) into ``out``."""
    for i in range(cands.shape[0]):
        out[i] = _bp_r(fs, ms, m0, m1, use_w, ndim, cands[i], min_count)


@numba.njit(cache=True, nogil=True)
def _count(shape, m0, m1, use_w, s):  # pragma: no cover - compiled
    """:meth:`OverlapScorer.count` of 3D crops at the 3D integer shift ``s``."""
    e = np.empty(3, dtype=np.int64)
    for d in range(3):
        e[d] = max(shape[d] - abs(s[d]), 0)
    if not use_w:
        return e[0] * e[1] * e[2]
    a0, a1, a2 = max(0, s[0]), max(0, s[1]), max(0, s[2])
    b0, b1, b2 = max(0, -s[0]), max(0, -s[1]), max(0, -s[2])
    n = 0
    for i0 in range(e[0]):
        for i1 in range(e[1]):
            for i2 in range(e[2]):
                if m0[a0 + i0, a1 + i1, a2 + i2] and m1[b0 + i0, b1 + i1, b2 + i2]:
                    n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _climb_band_passed(fs, ms, m0, m1, use_w, ndim, start, limit, min_count, max_steps):  # pragma: no cover
    """:func:`hill_climb` on :func:`_bp_r` (3D crops, the first ``3 - ndim`` axes added): the shift
    climbed to (a new array) and its band-passed correlation."""
    cur = start.copy()
    cur_r = _bp_r(fs, ms, m0, m1, use_w, ndim, cur, min_count)
    s = np.empty(3, dtype=np.int64)
    best = np.empty(3, dtype=np.int64)
    for _ in range(max_steps):
        best[:] = cur
        best_r = cur_r
        for d in range(3 - ndim, 3):
            for step in (-1, 1):
                s[:] = cur
                s[d] += step
                if abs(s[d]) >= fs.shape[d] or abs(s[d]) > limit[d] or _count(fs.shape, m0, m1, use_w, s) < min_count:
                    continue
                r = _bp_r(fs, ms, m0, m1, use_w, ndim, s, min_count)
                if r > best_r:
                    best[:] = s
                    best_r = r
        same = True
        for d in range(3):
            if best[d] != cur[d]:
                same = False
        if same:
            break
        cur[:] = best
        cur_r = best_r
    return cur, cur_r


def peak_candidates(scorer: OverlapScorer, index: np.ndarray, fft_shape, limit, min_count: float):
    """The candidate shifts of phase-correlation peaks, their overlap counts and correlations.

    ``index``: flat indices of peaks in the (1-3D) padded phase-correlation matrix of shape
    ``fft_shape``.  Every peak ``p`` stands for ``p`` or ``p - N`` per axis; those that can
    overlap (``|s| < n``) within ``limit`` are returned in the order of
    :func:`.peaks.periodic_candidates` for each peak in turn: ``(candidates (k, ndim) int64,
    peak of each (k,), count of each (k,), r of each (k,))``.  ``r`` is computed for candidates
    with at least ``min_count`` overlapping pixels (and stored in the scorer), NaN for the others.

    One compiled call for all of them (``_peak_candidates``): unboxing the candidates, slicing the
    overlaps and summing them one by one from Python held the GIL ~0.15 ms per pair.
    """
    f = scorer.f
    ndim = f.ndim
    lead = (1,) * (3 - ndim)
    shape3 = lead + f.shape
    m0, m1 = _masks3(scorer.masks, lead)
    limit3 = np.full(3, np.inf)
    limit3[3 - ndim:] = limit
    # the compiled sums only without masks or summed-area tables (large crops: scored one by one below)
    compiled = scorer.masks is None and scorer.table is None
    cap = index.size * 2**ndim
    cands = np.empty((cap, 3), dtype=np.int64)
    which = np.empty(cap, dtype=np.int64)
    counts = np.empty(cap, dtype=np.int64)
    rs = np.full(cap, np.nan)
    n = _peak_candidates(f.reshape(shape3), scorer.m.reshape(shape3), m0, m1, scorer.masks is not None, compiled,
                         index, np.asarray(lead + tuple(fft_shape), dtype=np.int64), limit3, float(min_count),
                         cands, which, counts, rs)
    cands, which, counts, rs = cands[:n, 3 - ndim:], which[:n], counts[:n], rs[:n]
    keys = [tuple(c) for c in cands.tolist()]
    if compiled:
        for key, r, c in zip(keys, rs.tolist(), counts.tolist()):
            if c >= min_count:
                scorer._pearson[key] = r
    else:
        for i, (key, c) in enumerate(zip(keys, counts.tolist())):
            if c >= min_count:
                rs[i] = scorer.pearson(key)
    return keys, which, counts, rs


@numba.njit(cache=True, nogil=True)
def _peak_candidates(f, m, m0, m1, use_w, score, index, fft, limit, min_count,  # pragma: no cover
                     cands, which, counts, rs):
    """The candidates of the peaks at flat ``index`` of a padded 3D PCM of shape ``fft`` (see
    :func:`peak_candidates`); returns how many were written."""
    n = 0
    opts = np.empty((3, 2), dtype=np.int64)
    n_opts = np.empty(3, dtype=np.int64)
    c = np.empty(3, dtype=np.int64)
    for p in range(index.size):
        q = index[p]
        peak = (q // (fft[1] * fft[2]), (q // fft[2]) % fft[1], q % fft[2])
        for d in range(3):
            k = 0
            for s in (peak[d], peak[d] - fft[d]):
                if abs(s) < f.shape[d] and abs(s) <= limit[d]:
                    opts[d, k] = s
                    k += 1
            n_opts[d] = k
        for j0 in range(n_opts[0]):
            for j1 in range(n_opts[1]):
                for j2 in range(n_opts[2]):  # itertools.product's order: the last axis fastest
                    c[0], c[1], c[2] = opts[0, j0], opts[1, j1], opts[2, j2]
                    cands[n] = c
                    which[n] = p
                    counts[n] = _count(f.shape, m0, m1, use_w, c)
                    if score and counts[n] >= min_count:
                        rs[n] = _pearson(f, m, c)
                    n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _pearson(f, m, c):  # pragma: no cover - compiled
    """:meth:`OverlapScorer._compute_pearson` of unmasked 3D crops at the 3D shift ``c`` (no tables)."""
    a0, a1, a2 = max(0, c[0]), max(0, c[1]), max(0, c[2])
    b0, b1, b2 = max(0, -c[0]), max(0, -c[1]), max(0, -c[2])
    e0 = f.shape[0] + min(0, c[0]) - a0
    e1 = f.shape[1] + min(0, c[1]) - a1
    e2 = f.shape[2] + min(0, c[2]) - a2
    sa, sb, saa, sbb, sab = _sums(f[a0:a0 + e0, a1:a1 + e1, a2:a2 + e2], m[b0:b0 + e0, b1:b1 + e1, b2:b2 + e2])
    n = e0 * e1 * e2
    va = saa - sa * sa / n
    vb = sbb - sb * sb / n
    floor = 1e-10 * (abs(saa) + abs(sbb) + 1e-300)
    if va <= floor or vb <= floor:
        return np.nan
    return (sab - sa * sb / n) / math.sqrt(va * vb)


def overlap_sums(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float, float]:
    """``(sum a, sum b, sum a², sum b², sum ab)`` in float64 over two same-shape 1-3D arrays (views allowed).

    One compiled pass instead of five numpy reductions over strided views
    (the candidates of one pair call this ~25 times).
    """
    if a.ndim > 3:
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        return a64.sum(), b64.sum(), a64 @ a64, b64 @ b64, a64 @ b64
    lead = (1,) * (3 - a.ndim)
    return _sums(a.reshape(lead + a.shape), b.reshape(lead + b.shape))


# Reassociation lets the compiler vectorise the float64 sums (results differ from a sequential sum by rounding).
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _sums(a, b):  # pragma: no cover - compiled
    sa = sb = saa = sbb = sab = 0.0
    for i0 in range(a.shape[0]):
        for i1 in range(a.shape[1]):
            for i2 in range(a.shape[2]):
                x = np.float64(a[i0, i1, i2])
                y = np.float64(b[i0, i1, i2])
                sa += x
                sb += y
                saa += x * x
                sbb += y * y
                sab += x * y
    return sa, sb, saa, sbb, sab
