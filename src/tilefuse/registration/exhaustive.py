"""The exhaustive check of a doubtful pair: every shift scored, periodic content set aside.

The phase-correlation peaks (:mod:`.peaks`) give a handful of candidate
shifts.  On a periodic sample (a grid, woven or crystalline material, muscle)
the phase-correlation matrix is a lattice of near-equal peaks, the true
alignment need not be among the highest, and its periodic aliases correlate
almost as well as it does: only a few distinct marks tell them apart.  When
the candidates of a pair are in doubt (:func:`doubtful`), :func:`check`
scores *every* shift at once:

1. both crops are band-passed (illumination divided out, a difference of
   Gaussians of sigma 1 and 16: marks of a few to a few tens of pixels stay);
2. their periodic part is removed: spectral peaks the two crops share (far
   above the local level of the spectrum) are zeroed, which leaves the marks,
   the part that is *not* the same at every period;
3. the Pearson correlation ``r`` of what is left, over the overlap at every
   integer shift, comes from a handful of FFTs (sums over the overlap as
   correlations with the crops' masks: the masked normalised
   cross-correlation of Padfield 2012, doi:10.1109/TIP.2011.2181402);
4. each shift is scored by the evidence ``atanh(r) * sqrt(n)`` of its ``n``
   overlapping pixels (Fisher's z statistic up to a constant: how far the
   correlation is from chance for that many pixels), so that a modest
   correlation over a large overlap beats a high one over a sliver (small
   overlaps at large shifts correlate well by chance, and a vignetted
   gradient correlates well with its neighbour's);
5. the best local maximum is taken when it is *clearly* best: its evidence
   exceeds every other local maximum's by :data:`CLEAR_MARGIN`.

Measured on the periodic sample (:mod:`tilefuse.sample_periodic`, two seeds,
18 pairs, stage errors up to 20 % of a 50 % overlap): the true shift was the
best local maximum in all 18, by 1.66-5x over the next.  Without step 2
(band-passed crops only) it was best in 18 but by as little as 1.1x (band
pass of sigma 4) or 1.38x (sigma 8); on raw intensities it lost in 4 of 9
pairs to a small-overlap corner.

scikit-image has the masked normalised cross-correlation only as a private
function (``skimage.registration._masked_phase_cross_correlation``); private
functions change without notice, so the few lines are written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..downsample import block_mean
from .bandpass import band_pass

__all__ = ["CLEAR_MARGIN", "MIN_EVIDENCE", "PERIODIC_SHARE", "ExhaustiveResult", "check", "doubtful",
           "periodic_part_removed", "evidence_map"]

#: The best shift must have this many times the evidence of any other local maximum and, on periodic
#: content, lead it by :data:`MIN_EVIDENCE` (the ratio alone passed aliases of overlaps holding no mark: on
#: 64-128 px crops what is left of the lattice at the crop borders made one alias lead the next by
#: 1.3-1.9x, 9-31 in evidence; true alignments of the 256 px periodic samples lead by 1.66-5x and 40-400).
CLEAR_MARGIN = 1.25
#: Crops that lost this share of their spectral energy to the periodic part are periodic content.  The
#: periodic samples' crops lose 0.1-0.97; the unclear checks of the ordinary samples (photo, procedural,
#: 3D, thin and corner overlaps) lost 0.0, but for two background-only overlaps (0.05, 0.1: weak answers
#: with nothing distinct, which stay and are rejected by the solve's correlation threshold).
PERIODIC_SHARE = 0.05
#: Crops shorter than this along an axis are never taken for periodic content: over two or three
#: periods of a lattice, nothing tells its spectral peaks from the lowest frequencies of ordinary
#: content (the 25 x 160 px overlap of a procedural sample lost 0.3 of its energy as "periodic").
_PERIODIC_AXIS = 32
#: Evidence below this is chance: the best of every shift of two noise crops reaches 8-16 (measured on
#: overlaps with an empty tile), of a bare lattice with noise 30; true alignments of the periodic sample
#: reach 58-450.
MIN_EVIDENCE = 40.0
#: Candidates within this of the winner's raw correlation make a pair doubtful; so does a winner below
#: WEAK_R.  Measured on the samples: a right winner on non-periodic content leads the next distinct
#: candidate by 0.2-0.6, a periodic alias trails the truth by 0.01-0.1.  WEAK_R was 0.5: on a 128 px periodic
#: sample an alias won at r = 0.506, its nearest rival 0.15 behind and the highest phase-correlation peak its
#: own.  With 0.6 and the trigger of doubtful() on the phase-correlation peaks, the checks of the benchmark's
#: 6x8 photo sample went from 26 to 28 of 82 pairs, of its 5x6 procedural speed sample they stayed 1 of 49.
AMBIGUOUS_GAP = 0.1
WEAK_R = 0.6
SMALL_OVERLAP = 0.5
#: Stage errors of ordinary acquisitions are well below a quarter of the overlap (the samples: 8 px on
#: 26-51 px overlaps); a winner beyond it is checked, along wide axes (on thinner ones stage errors of
#: ordinary acquisitions often exceed it: 32 px would check a tenth of the pairs of the 512 px speed samples).
LARGE_SHIFT = 0.25
_WIDE_AXIS = 64
#: Band pass of the check: wide enough to keep marks of a few tens of pixels (see the module notes).
_HIGH_SIGMA = 16.0
#: A spectral coefficient whose |F1||F2| exceeds this many times the local geometric mean is periodic.
_PEAK_FACTOR = 30.0
#: Crops larger than this (voxels) are checked block-averaged (the 2x-padded FFTs of a 48x192x20 crop
#: took 4 s and 300 MB at full resolution on the loaded benchmark machine).
_CHECK_SIZE = 2**16
#: Crops thinner than this along an axis are not checked.
_MIN_AXIS = 16
#: Local maxima within this many pixels of the best are part of its peak.
_SAME_PEAK = 3
#: Frequencies within this many bins of zero are never notched (illumination, not a lattice).
_LOW_BINS = 3


class ExhaustiveResult:
    """The best shift of the exhaustive check and how clearly it won.

    Attributes
    ----------
    shift : tuple of int
        The best integer shift (``fixed[x] ≈ moving[x - shift]``).
    evidence : float
        Its ``atanh(r) * sqrt(n)`` on the crops without their periodic part.
    runner_up : float
        The evidence of the next local maximum (0 if none).
    periodic_fraction : float
        Share of the crops' spectral energy (above the lowest frequencies) that was periodic and removed.
    """

    def __init__(self, shift, evidence, runner_up, periodic_fraction, evidence_at, shape=()) -> None:
        self.shift, self.evidence, self.runner_up = shift, float(evidence), float(runner_up)
        self.periodic_fraction = float(periodic_fraction)
        self._at = evidence_at
        self._thin = any(1 < n < _PERIODIC_AXIS for n in shape)

    @property
    def periodic(self) -> bool:
        """Whether a periodic part was removed (:data:`PERIODIC_SHARE` of the spectral energy or more) from
        crops long enough along every axis to tell a lattice (:data:`_PERIODIC_AXIS`)."""
        return self.periodic_fraction >= PERIODIC_SHARE and not self._thin

    @property
    def clear(self) -> bool:
        """Whether the best shift is clearly best: above chance (:data:`MIN_EVIDENCE`), by
        :data:`CLEAR_MARGIN` times the next local maximum's evidence and, on periodic content, by at
        least :data:`MIN_EVIDENCE` more than it."""
        runner_up = max(self.runner_up, 0.0)
        return (self.evidence >= MIN_EVIDENCE and self.evidence >= CLEAR_MARGIN * runner_up
                and (not self.periodic or self.evidence - runner_up >= MIN_EVIDENCE))

    def evidence_at(self, shift: Sequence[int]) -> float:
        """The evidence of any integer shift (``-inf`` outside the searched range)."""
        return float(self._at(tuple(int(v) for v in shift)))


def doubtful(winner_r: float, winner: Sequence[int], candidates, overlap_fraction: float = 1.0,
             shape: Sequence[int] | None = None) -> bool:
    """Whether a pair's phase-correlation answer needs the exhaustive check.

    Doubtful: the winner correlates weakly (below :data:`WEAK_R`), keeps less
    than :data:`SMALL_OVERLAP` of the crops overlapping (a sliver correlates
    well by chance: on the periodic sample a 17 px sliver of a 128 px overlap
    won at r = 0.86 over the truth at 0.63), moves by more than
    :data:`LARGE_SHIFT` of the crop (``shape``) along an axis at least 64 px
    long (a periodic alias 38 px off on a 128 px overlap won at r = 0.70), another
    candidate at least 2 px away correlates within :data:`AMBIGUOUS_GAP` of
    it (the signature of periodic aliases), or the highest phase-correlation
    peak is not the winner's.  ``candidates`` are ``(r, shift, peak height)``
    tuples as scored by the pairwise step.
    """
    # (plain Python numbers: numpy calls per candidate held the GIL ~40 us per pair)
    if not math.isfinite(winner_r) or winner_r < WEAK_R or overlap_fraction < SMALL_OVERLAP:
        return True
    w = [int(v) for v in winner]
    if shape is not None:
        # not along thin axes (a 19 px deep overlap is routinely off by 8 px: nothing periodic there)
        if any(abs(v) > LARGE_SHIFT * n and n >= _WIDE_AXIS for v, n in zip(w, shape)):
            return True
    for c in candidates:
        if c[0] >= winner_r - AMBIGUOUS_GAP and math.isfinite(c[0]) and \
                max(abs(int(a) - b) for a, b in zip(c[1], w)) >= 2:
            return True
    # The two scores disagree: the highest phase-correlation peak is not the winner (the raw overlap
    # correlation picked another shift).  On the 64-128 px periodic samples aliases won this way at
    # r = 0.58-0.88 over the truth, whose peak was the highest (a 14 px alias on a 32 px overlap, too
    # thin for the large-shift rule, and rivals 0.11-0.15 behind, outside AMBIGUOUS_GAP).
    if candidates and len(candidates[0]) > 2:
        top = max(c[2] for c in candidates)
        if all(max(abs(int(a) - b) for a, b in zip(c[1], w)) > 1 for c in candidates if c[2] == top):
            return True
    return False


def periodic_part_removed(f: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The two crops without the spectral peaks they share, and the share of energy removed.

    A periodic pattern concentrates its energy in a few sharp spectral peaks;
    where ``|F1||F2|`` exceeds :data:`_PEAK_FACTOR` times its local geometric
    mean (a Gaussian of the log spectrum, sigma 3 bins) both spectra are
    zeroed, with a one-bin margin.  Content that is not periodic has no
    such peaks: a random texture's spectrum exceeds 30 times its local level
    with probability ~1e-6 per bin.
    """
    axes = tuple(range(f.ndim))
    # No taper: a tapered lattice is a modulated one whose spectral peaks spread past the notch, and
    # what is left of it near the borders makes periodic aliases correlate there (measured on the
    # periodic sample: 51 of 54 pairs right with a taper, 52 without).  The crops' border discontinuity
    # spreads along the axes, not into peaks.
    ff = sfft.rfftn(f, axes=axes)
    fm = sfft.rfftn(m, axes=axes)
    g = (np.abs(ff) * np.abs(fm)).astype(np.float32)
    # (the half spectrum's last axis is not periodic: "nearest" there; peaks are never at its ends)
    level = np.exp(ndimage.gaussian_filter(np.log(g + 1e-30 * max(float(g.max()), 1e-30)), 3.0,
                                           mode=["wrap"] * (f.ndim - 1) + ["nearest"]))
    freqs = np.meshgrid(*[np.abs(sfft.fftfreq(n) * n) for n in f.shape[:-1]],
                        sfft.rfftfreq(f.shape[-1]) * f.shape[-1], indexing="ij")
    low = np.all([q < _LOW_BINS for q in freqs], axis=0)
    peaks = (g > _PEAK_FACTOR * level) & ~low
    if peaks.any():
        peaks = ndimage.binary_dilation(peaks, iterations=1) & ~low
    total = g[~low].sum()
    fraction = float(g[peaks].sum() / total) if total > 0 else 0.0
    ff[peaks] = 0
    fm[peaks] = 0
    return (sfft.irfftn(ff, s=f.shape, axes=axes), sfft.irfftn(fm, s=f.shape, axes=axes), fraction)


def evidence_map(f: np.ndarray, m: np.ndarray, masks=None, min_count: float = 2, reach=None):
    """``atanh(r) * sqrt(n)`` at every integer shift, and the padded shape (index ``i`` is shift ``i`` or ``i - N``).

    ``r`` is the Pearson correlation of ``f[x]`` and ``m[x - s]`` over the
    ``n`` pixels where both exist (and both masks are True); shifts with
    fewer than ``min_count`` such pixels, or beyond ``reach`` (per axis,
    unmasked crops only), are ``-inf``.
    """
    shape = f.shape
    axes = tuple(range(f.ndim))
    fft_shape = tuple(sfft.next_fast_len(2 * n - 1, real=True) for n in shape)
    f = np.asarray(f, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)

    def spectrum(a):
        return sfft.rfftn(a, s=fft_shape, axes=axes)

    def corr(a, b):  # sum_x a(x) b(x - s), at index s (mod the padded shape)
        return sfft.irfftn(a * np.conj(b), s=fft_shape, axes=axes)

    if masks is None:
        # The overlap at every shift is a box: its count and the sums of f, f², m, m² over it come
        # from cumulative sums (a pass per axis); only the cross term needs FFTs (3 instead of 12).
        # Only shifts within reach are evaluated (an eighth of the map in 3D when the check wants half of
        # the crops to overlap), then put in place in the full map.
        reach = [n - 1 for n in shape] if reach is None else [min(int(q), n - 1) for q, n in zip(reach, shape)]
        index = [np.concatenate([np.arange(q + 1), np.arange(big - q, big)]) for q, big in zip(reach, fft_shape)]
        lo_f, hi_f, lo_m, hi_m = [], [], [], []
        for n, big, idx in zip(shape, fft_shape, index):
            sh = np.where(idx < n, idx, idx - big)
            lo_f.append(np.clip(sh, 0, n))
            hi_f.append(np.clip(n + np.minimum(sh, 0), lo_f[-1], n))
            lo_m.append(np.clip(-sh, 0, n))
            hi_m.append(np.clip(n - np.maximum(sh, 0), lo_m[-1], n))
        n = np.ones(tuple(len(idx) for idx in index))
        for axis, (lo, hi) in enumerate(zip(lo_f, hi_f)):
            n = n * (hi - lo).reshape((-1,) + (1,) * (len(shape) - axis - 1))
        sa, saa = _box_sums(f, lo_f, hi_f), _box_sums(f * f, lo_f, hi_f)
        sb, sbb = _box_sums(m, lo_m, hi_m), _box_sums(m * m, lo_m, hi_m)
        sab = corr(spectrum(f), spectrum(m))[np.ix_(*index)]
    else:
        index = None
        wf, wm = masks[0].astype(np.float64), masks[1].astype(np.float64)
        f, m = f * wf, m * wm
        w1, s1, q1 = spectrum(wf), spectrum(f), spectrum(f * f)
        w2, s2, q2 = spectrum(wm), spectrum(m), spectrum(m * m)
        n = np.rint(corr(w1, w2))
        sa, saa = corr(s1, w2), corr(q1, w2)
        sb, sbb = corr(w1, s2), corr(w1, q2)
        sab = corr(s1, s2)
    with np.errstate(divide="ignore", invalid="ignore"):
        va = saa - sa * sa / n
        vb = sbb - sb * sb / n
        r = (sab - sa * sb / n) / np.sqrt(va * vb)
        z = np.arctanh(np.clip(r, -0.999, 0.999)) * np.sqrt(n)
    # round-off of the FFT sums: a variance this small is a constant overlap
    floor = 1e-9 * (np.abs(saa).max() + np.abs(sbb).max() + 1e-300)
    z[(n < max(min_count, 2)) | ~(va > floor) | ~(vb > floor) | ~np.isfinite(z)] = -np.inf
    if index is not None:
        full = np.full(fft_shape, -np.inf)
        full[np.ix_(*index)] = z
        z = full
    return z, fft_shape


def _box_sums(a: np.ndarray, lo: Sequence[np.ndarray], hi: Sequence[np.ndarray]) -> np.ndarray:
    """Sums of ``a`` over the boxes ``[lo[d][i], hi[d][i])`` for every index combination (a pass per axis)."""
    out = a
    for axis, (start, stop) in enumerate(zip(lo, hi)):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (1, 0)
        table = np.pad(np.cumsum(out, axis=axis), pad)
        out = np.take(table, stop, axis=axis) - np.take(table, start, axis=axis)
    return out


def _coarsening(shape) -> tuple[int, ...]:
    """Block-mean factors that bring a crop to at most :data:`_CHECK_SIZE` voxels (axes over 32 halved first)."""
    factors = [1] * len(shape)
    while np.prod([n // k for n, k in zip(shape, factors)]) > _CHECK_SIZE:
        sizes = [n // k if n // k > 32 else 0 for n, k in zip(shape, factors)]
        if max(sizes) == 0:
            break
        factors[int(np.argmax(sizes))] *= 2
    return tuple(factors)


def check(raw_f: np.ndarray, raw_m: np.ndarray, masks, limit, min_count: float) -> ExhaustiveResult | None:
    """Score every integer shift of two same-shape crops (see the module notes); None if none can be.

    ``limit`` bounds ``|shift|`` per axis; ``raw_f``/``raw_m`` are the crops'
    intensities (float32).
    """
    if any(1 < n < _MIN_AXIS for n in raw_f.shape):
        return None  # too thin for a band pass of sigma 16 to leave anything to compare
    full_shape = raw_f.shape
    factors = _coarsening(raw_f.shape)
    if any(k > 1 for k in factors):
        # Large (3D) crops are checked coarse: the check only needs the shift to a pixel or two (the
        # refinement climbs from there at full resolution), and its FFTs are of twice the crop size.
        raw_f = block_mean(raw_f, factors, edge="trim")
        raw_m = block_mean(raw_m, factors, edge="trim")
        if masks is not None:
            masks = tuple(block_mean(mk.astype(np.float32), factors, edge="trim") > 0.5 for mk in masks)
        limit = np.asarray(limit, dtype=np.float64) / factors
        min_count = min_count / np.prod(factors)
    f = band_pass(raw_f, 1.0, _HIGH_SIGMA).astype(np.float64)
    m = band_pass(raw_m, 1.0, _HIGH_SIGMA).astype(np.float64)
    f, m, fraction = periodic_part_removed(f, m)
    # Only shifts that keep half of the crops: slivers correlate by chance (two unrelated marks
    # match), and stage errors that large are not what the check is for.
    # (half of the crops overlapping needs |shift| <= half the crop along every axis)
    reach = [min(n // 2, lim) if np.isfinite(lim) else n // 2 for n, lim in zip(raw_f.shape, limit)]
    z, fft_shape = evidence_map(f, m, masks, max(min_count, SMALL_OVERLAP * raw_f.size), reach)
    shape = raw_f.shape
    # signed shift of every index; outside the crops or the limit: not searched
    for axis, (n, big, lim) in enumerate(zip(shape, fft_shape, limit)):
        s = np.arange(big)
        s = np.where(s < n, s, s - big)
        bad = (np.abs(s) >= n) | (np.abs(s) > lim)
        z[(slice(None),) * axis + (bad,)] = -np.inf
    if not np.isfinite(z).any():
        return None
    finite = np.where(np.isfinite(z), z, -np.inf)
    is_max = (finite >= ndimage.maximum_filter(finite, size=3, mode="wrap")) & np.isfinite(finite)
    idx = np.flatnonzero(is_max)
    order = idx[np.argsort(finite.ravel()[idx])[::-1]]

    def signed(i):
        return tuple(int(c if c < n else c - big) for c, n, big in
                     zip(np.unravel_index(i, z.shape), shape, fft_shape))

    best = tuple(int(v * k) for v, k in zip(signed(order[0]), factors))
    # the runner-up is another alignment, not a ripple of the best one's peak
    runner_up = next((float(finite.ravel()[i]) for i in order[1:]
                      if max(abs(a * k - b) for a, k, b in zip(signed(i), factors, best)) > _SAME_PEAK), 0.0)

    def at(shift):
        shift = tuple(int(round(s / k)) for s, k in zip(shift, factors))
        if any(abs(s) >= n for s, n in zip(shift, shape)):
            return -np.inf
        return finite[tuple(s % big for s, big in zip(shift, fft_shape))]

    return ExhaustiveResult(best, float(finite.ravel()[order[0]]), runner_up, fraction, at, full_shape)
