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

__all__ = ["OverlapScorer", "band_passed_r", "hill_climb", "overlap_slices", "overlap_sums"]

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
    """Pearson correlation of the band-passed crops overlapping at integer shift ``cand``."""
    fs, ms = prepared[0], prepared[1]
    sf, sm = overlap_slices(cand, fs.shape)
    # Every second voxel per axis: the band-passed crops are smooth (sigma >= 1),
    # and ranking needs no more (2**ndim times cheaper).
    sf = tuple(slice(s.start, s.stop, 2) for s in sf)
    sm = tuple(slice(s.start, s.stop, 2) for s in sm)
    a, b = fs[sf], ms[sm]
    if masks is not None:
        both = masks[0][sf] & masks[1][sm]
        if np.count_nonzero(both) < max(min_count / 2**both.ndim, 2):
            return -np.inf
        a, b = a[both], b[both]
    n = a.size
    if n == 0:
        return -np.inf
    sa, sb, saa, sbb, sab = overlap_sums(a, b)
    den = math.sqrt(max(saa - sa * sa / n, 0.0) * max(sbb - sb * sb / n, 0.0))
    return (sab - sa * sb / n) / den if den > 0 else -np.inf


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
