"""Translation between two overlapping crops by phase correlation.

This is the pairwise step of stitching: two same-shape crops that cover the
same nominal world region of two tiles go in, the residual translation between
them comes out.  The algorithm follows BigStitcher's (Preibisch et al. 2009,
doi:10.1093/bioinformatics/btp184; Hörl et al. 2019,
doi:10.1038/s41592-019-0501-0), except where a change measurably improves
accuracy (see :mod:`.peaks`' taper and :mod:`.subpixel`):

1. subtract the mean and taper the borders with a cosine (Tukey) window
   (BigStitcher: blended mirror extension), so that the crop edges do not
   put a spurious peak at zero shift;
2. zero-pad to fast FFT sizes, compute the normalised cross-power spectrum
   and its inverse, the phase-correlation matrix (PCM);
3. take the top ``n_peaks`` periodic local maxima of the PCM; every peak ``p``
   stands for ``2**ndim`` shifts (``p`` or ``p - N`` per axis) because the PCM
   is periodic;
4. score every candidate by the Pearson correlation of the two crops over
   their actual overlap at that integer shift; the best wins;
5. refine the winner to sub-pixel precision on the cross-correlation of the
   two overlaps (BigStitcher: quadratic fit to the PCM, ``subpixel="quadratic"``).

6. when the answer is doubtful (a weak winner, a sliver of overlap, or other
   candidates nearly as good: periodic content), score every shift at once
   on the crops without their periodic part (:mod:`.exhaustive`) and take
   a clearly better one; one the check cannot decide is marked
   :data:`AMBIGUOUS` (with ``exhaustive="always"`` every pair is checked).

Steps 1-3 live in :mod:`.peaks`, step 4 in :mod:`.candidates`, step 5 in
:mod:`.subpixel`, step 6 in :mod:`.exhaustive`; this module checks the input
and runs them.  No I/O and no
project knowledge: arrays in, a :class:`PairwiseShift` out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from numpy.typing import ArrayLike

from ..errors import RegistrationError
from .candidates import OverlapScorer, _bp_r, _bp_r_many, _climb_band_passed, _masks3, hill_climb, peak_candidates
from .exhaustive import MIN_EVIDENCE, WEAK_R, doubtful
from .exhaustive import check as exhaustive_check
from .peaks import centred, periodic_candidates, periodic_peaks, phase_correlation_matrix, top_local_maxima
from .subpixel import _refine_candidate, prepare_refinement, refine_gradient, refine_overlap, refine_quadratic

__all__ = ["AMBIGUOUS", "PairwiseShift", "pairwise_shift"]


@dataclass(frozen=True, eq=False)
class PairwiseShift:
    """Result of :func:`pairwise_shift`.

    Attributes
    ----------
    shift : ndarray of float64, shape (ndim,)
        Translation in numpy axis order such that ``fixed[x] ≈ moving[x - shift]``
        (add it to a point of ``moving`` to land on the matching point of
        ``fixed``).  0 on singleton axes; NaN when ``valid`` is False.
    correlation : float
        Pearson correlation of the two crops over their overlap at the integer
        part of the shift; ``-inf`` when no candidate had enough overlap,
        ``nan`` when an image is constant.
    overlap_fraction : float
        Pixels in that overlap divided by pixels in a crop.
    n_candidates : int
        Number of distinct candidate shifts considered (peaks times their
        periodic alternatives, before the overlap and max_shift tests).
    valid : bool
        False when no candidate could be scored; ``reason`` says why.
    integer_shift : ndarray of int64, shape (ndim,)
        The winning integer candidate (before sub-pixel refinement).
    peak_height : float
        PCM value at the winning peak (1.0 for a perfect, noise-free shift).
    reason : str
        Empty when valid, otherwise why no shift was found.
    checked : str
        What the exhaustive check of a doubtful pair found (:mod:`.exhaustive`); empty when it did
        not run.
    undetermined : tuple of int
        Axes longer than 1 along which neither crop changes: the data cannot tell a shift along
        them, and ``shift`` is 0 there (the views keep their current relative position).
    """

    shift: np.ndarray
    correlation: float
    overlap_fraction: float
    n_candidates: int
    valid: bool
    integer_shift: np.ndarray
    peak_height: float
    reason: str = ""
    checked: str = ""
    undetermined: tuple[int, ...] = ()


def pairwise_shift(
    fixed: ArrayLike,
    moving: ArrayLike,
    *,
    n_peaks: int = 5,
    subpixel: bool | str = True,
    min_overlap: float = 0.1,
    max_shift: float | Sequence[float] | None = None,
    fixed_mask: ArrayLike | None = None,
    moving_mask: ArrayLike | None = None,
    workers: int | None = None,
    exhaustive: bool | str = True,
) -> PairwiseShift:
    """Find the translation between two crops of the same world region.

    Parameters
    ----------
    fixed, moving : array_like
        Same-shape crops (any real dtype, 1-D to 3-D or more).  Axes of length
        1, and axes along which neither crop changes (the shift along them is
        undetermined), are ignored; the returned shift has 0 on them.
    n_peaks : int, optional
        How many local maxima of the phase-correlation matrix to check.  The
        PCM only knows the shift modulo the padded size, so each peak is
        expanded into its ``2**ndim`` periodic alternatives and every
        alternative is scored by the Pearson correlation over its overlap.
    subpixel : bool or {"gradient", "cc", "quadratic"}, optional
        Refine the winning shift.  ``True``/``"gradient"`` (default): rank the
        best candidates on band-passed crops, climb to the integer shift of
        highest overlap correlation, then Gauss-Newton on the band-passed
        overlap with a gain ramp and an offset (most accurate, see Notes);
        a candidate whose refinement diverges gives way to the next
        (crops with more than three axes longer than 1 use ``"cc"``).
        ``"cc"``: the maximum of the cross-correlation of the two aligned
        overlaps on a 1/20 px grid (upsampled DFT).  ``"quadratic"``: a
        parabola through the PCM per axis around the peak, as BigStitcher
        does.  ``False``: integer shift of highest overlap correlation.
    min_overlap : float, optional
        Candidates whose overlap holds fewer than ``min_overlap`` times the
        pixels of a crop are rejected.
    max_shift : float or sequence of float, optional
        Reject candidates with ``|shift[d]| > max_shift[d]`` (a scalar applies
        to every axis; sequences are in numpy axis order, one per input axis).
    fixed_mask, moving_mask : array_like of bool, optional
        True where a crop holds real data.  Masked-out pixels are ignored in
        the correlation and neutralised in the PCM; they may be non-finite.
    workers : int, optional
        Threads for :mod:`scipy.fft`.
    exhaustive : bool, optional
        With the default refinement, check a doubtful answer (a weak winner,
        or other candidates nearly as good: periodic content) against every
        shift (:mod:`.exhaustive`) and take a clearly better one, or mark the
        pair :data:`AMBIGUOUS` when the check cannot decide; ``"always"``:
        check every pair (when the stage is known to be far off).

    Returns
    -------
    PairwiseShift
        ``valid`` is False (and ``correlation`` is ``-inf`` or ``nan``) when no
        candidate passes the overlap/max_shift tests or an image is constant.

    Raises
    ------
    RegistrationError
        On bad input: shapes differ, empty arrays, non-finite pixels, complex
        data, bad parameters.

    Notes
    -----
    Convention as in :func:`skimage.registration.phase_cross_correlation`:
    ``scipy.ndimage.shift(moving, result.shift)`` approximates ``fixed``.

    The PCM finds the shift robustly but its peak is biased on crops of
    non-periodic, smooth or noisy data (whitening gives noise the weight of
    signal, and the border taper pulls the peak towards 0).  The sub-pixel
    step therefore works on the overlap of the aligned crops; on the test
    data it has 0.01-0.06 px mean error against 0.1-0.3 px for the quadratic
    PCM fit.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(0)
    >>> image = ndimage.gaussian_filter(rng.random((96, 96)), 2)
    >>> fixed, moving = image[10:74, 10:74], image[13:77, 8:72]
    >>> pairwise_shift(fixed, moving).shift.round(1)
    array([ 3., -2.])
    """
    fixed_a, moving_a, keep, masks = _validate(fixed, moving, fixed_mask, moving_mask)
    full_ndim = fixed_a.ndim
    determined = _determined_axes(fixed_a, moving_a, masks, keep).tolist()  # plain ints from here on
    undetermined = tuple(d for d in keep.tolist() if d not in determined)
    keep = determined
    if n_peaks < 1:
        raise RegistrationError(f"n_peaks must be >= 1, got {n_peaks}")
    if not 0.0 <= min_overlap <= 1.0:
        raise RegistrationError(f"min_overlap must be in [0, 1], got {min_overlap}")
    method = _subpixel_method(subpixel)
    limit = _max_shift_per_axis(max_shift, full_ndim)[keep]

    shape = tuple(fixed_a.shape[d] for d in keep)
    if method == "gradient" and len(shape) > 3:
        method = "cc"  # the compiled Gauss-Newton step handles up to three axes
    # One slice along the dropped axes (length 1, or crops that do not change along them).
    reduced = tuple(slice(None) if d in keep else 0 for d in range(full_ndim))
    f = fixed_a[reduced]
    m = moving_a[reduced]
    if masks is not None:
        masks = (masks[0][reduced], masks[1][reduced])

    # Centred float64 copies: the scorer's sums stay well conditioned and the
    # FFT input has no DC term to leak into the PCM.
    # The refinement divides out illumination, so it needs the raw intensities.
    raw = (f.astype(np.float32, copy=False), m.astype(np.float32, copy=False))
    f = centred(f, None if masks is None else masks[0])
    m = centred(m, None if masks is None else masks[1])

    checked = ""

    def result(valid, corr, frac, n_cand, ishift, shift, height, reason="", checked=""):
        # Re-insert the singleton axes that were dropped.
        full_shift = np.zeros(full_ndim)
        full_int = np.zeros(full_ndim, dtype=np.int64)
        full_shift[keep] = shift
        full_int[keep] = ishift
        return PairwiseShift(full_shift, float(corr), float(frac), int(n_cand), bool(valid),
                             full_int, float(height), reason, checked, undetermined)

    pcm, fft_shape = phase_correlation_matrix(f, m, workers)
    scorer = OverlapScorer(f, m, masks)
    total = math.prod(shape)
    min_count = max(min_overlap * total, 2)
    seen: set[tuple[int, ...]] = set()

    def score_peaks(count: int) -> list[tuple[float, tuple[int, ...], float]]:
        """(r, candidate, peak height) of every not yet scored candidate of the top peaks."""
        if pcm.ndim <= 3:  # compiled, all candidates at once
            index, heights = top_local_maxima(pcm, count)
            cands, which, counts, rs = peak_candidates(scorer, index, fft_shape, limit, min_count)
            scored = []
            for cand, p, n, r in zip(cands, which.tolist(), counts.tolist(), rs.tolist()):
                if cand not in seen:
                    seen.add(cand)
                    if n >= min_count:
                        scored.append((r, cand, heights[p]))
            return scored
        peaks, heights = periodic_peaks(pcm, count)
        scored = []
        for peak, height in zip(peaks, heights):
            for cand in periodic_candidates(peak, fft_shape, shape, limit):
                if cand in seen:
                    continue
                seen.add(cand)
                if scorer.count(cand) >= min_count:
                    scored.append((scorer.pearson(cand), cand, height))
        return scored

    scored = score_peaks(n_peaks)
    if not scored:
        reason = "no candidate shift overlaps by at least min_overlap"
        if max_shift is not None:
            reason += " within max_shift"
        return result(False, -np.inf, 0.0, len(seen), (0,) * len(shape), np.nan, np.nan, reason)
    finite = [c for c in scored if np.isfinite(c[0])]
    if not finite:
        r, cand, height = scored[0]
        return result(False, np.nan, scorer.count(cand) / total, len(seen), cand, np.nan, height,
                      "an image is constant over the overlap; correlation is undefined")
    r, cand, height = max(finite, key=lambda c: c[0])

    if method == "quadratic":
        shift = np.asarray(cand, dtype=np.float64) + refine_quadratic(pcm, cand)
    elif method is None:
        cand, r = hill_climb(scorer, cand, shape, limit, min_count)
        shift = np.asarray(cand, dtype=np.float64)
    elif method == "cc":
        # The PCM peak can be an integer off the true shift (its bias towards
        # 0, see refine_overlap); re-centre when the maximum sits at the
        # edge of the +-0.75 px search window.
        centre = cand
        for _ in range(4):
            offset = refine_overlap(f, m, masks, centre, workers)
            shift = np.asarray(centre, dtype=np.float64) + offset
            nearest = tuple(int(v) for v in np.round(shift))
            if np.all(np.abs(offset) < 0.7) or scorer.count(nearest) < min_count:
                break
            centre = nearest
        if nearest != cand and scorer.count(nearest) >= min_count:
            cand, r = nearest, scorer.pearson(nearest)
    else:
        prepared = prepare_refinement(*raw)
        kernels = _Kernels(prepared, masks, limit)
        band_passed: dict[tuple[int, ...], float] = {}  # each shift scored once (the climbs revisit them)

        def r_bp(s):
            s = tuple(s)
            r = band_passed.get(s)
            if r is None:  # band_passed_r, on the arrays as the compiled step takes them
                r = band_passed[s] = _bp_r(*kernels.arrays, kernels.shift3(s), float(min_count))
            return r

        def r_bp_many(shifts) -> None:
            """r_bp of several shifts in one compiled call (they are then looked up)."""
            todo = [s for s in dict.fromkeys(shifts) if s not in band_passed]
            if todo:
                c3 = np.zeros((len(todo), 3), dtype=np.int64)
                c3[:, kernels.lead:] = todo
                out = np.empty(len(todo))
                _bp_r_many(*kernels.arrays, c3, float(min_count), out)
                band_passed.update(zip(todo, out.tolist()))

        cand, r, shift, height = _refine_best(kernels, scorer, r_bp, r_bp_many, finite, score_peaks, n_peaks,
                                              min_count)
        if exhaustive == "always" or exhaustive and doubtful(r, cand, finite, scorer.count(cand) / total, shape):
            cand, r, shift, checked = _check_exhaustively(raw, prepared, masks, scorer, r_bp, cand, r, shift,
                                                          shape, limit, min_count, exhaustive == "always")
    return result(True, r, scorer.count(cand) / total, len(seen), cand, shift, height, checked=checked)


def _check_exhaustively(raw, prepared, masks, scorer, r_bp, cand, r, shift, shape, limit, min_count, always):
    """:func:`.exhaustive.check` of a doubtful pair; its clearly best shift replaces the winner.

    Returns ``(cand, r, shift, checked)`` where ``checked`` says what the
    check found (for the log and the link's info).  An answer the check can
    neither confirm nor replace (:func:`_undecided`) is :data:`AMBIGUOUS`.
    """
    found = exhaustive_check(*raw, masks, limit, min_count)
    if found is None or not found.clear:
        if found is not None and _undecided(found, cand, r, always):
            # Every-shift scoring neither confirms nor replaces the answer: on periodic content, an
            # alias, or an overlap with no distinct mark.  Better no link (the tile keeps its stage
            # position relative to the others, and the pair is named) than a wrong one.  With or
            # without max_stage_error: keeping the phase-correlation answer of such pairs by default
            # left 64 px periodic samples 11 / 26 px off (mean / max) with no warning, worse than
            # their stage (2.6 / 3.7 px).
            return cand, r, shift, AMBIGUOUS
        return cand, r, shift, "exhaustive check: no clearly best shift, the phase-correlation answer stays"
    best = found.shift
    if max(abs(a - b) for a, b in zip(best, cand)) <= 1 or found.evidence <= found.evidence_at(cand):
        return cand, r, shift, "exhaustive check: confirmed"
    # climb and refine from the new start as from a phase-correlation candidate
    start, _ = hill_climb(scorer, best, shape, limit, min_count, score=r_bp)
    refined, converged = refine_gradient(prepared[0], prepared[2], masks, np.asarray(start, dtype=np.float64),
                                         min_count)
    if converged:
        nearest = tuple(int(v) for v in np.round(refined))
        if scorer.count(nearest) >= min_count:
            start = nearest
    else:
        refined = np.asarray(start, dtype=np.float64)
    if start == tuple(cand):
        return cand, r, shift, "exhaustive check: confirmed"
    return (start, scorer.pearson(start), refined,
            f"exhaustive check: moved from {tuple(int(v) for v in cand)} to {start} (evidence "
            f"{found.evidence:.0f}, next {found.runner_up:.0f}, periodic share {found.periodic_fraction:.2f})")


def _undecided(found, cand, r: float, always: bool) -> bool:
    """Whether an unclear exhaustive check leaves the pair undecided (no link rather than ``cand``).

    On periodic content (:attr:`.exhaustive.ExhaustiveResult.periodic`) every unclear answer is
    undecided unless there is nothing to decide: an answer too weak for the solve to keep (below
    :data:`_KEPT_R`) with nothing distinct anywhere in the overlap (evidence below
    :data:`.exhaustive.MIN_EVIDENCE`) stays, to be rejected there.  On the periodic samples (64-256
    px tiles, ten seeds) 16 of 95 unclear answers that agreed with the check's best, and every weak
    one kept, were aliases.  On other content (nothing periodic removed: the unclear checks of the
    ordinary samples were of background, noise, or small corner overlaps) only a strong-looking
    answer (``r`` at least :data:`.exhaustive.WEAK_R`) that the check contradicts or that nothing
    distinct supports, and only when every pair is checked (``always``: the user said the stage is
    far off); otherwise the answer stays, as before the check existed.
    """
    if found.periodic:
        return r >= _KEPT_R or found.evidence >= MIN_EVIDENCE
    elsewhere = max(abs(a - b) for a, b in zip(found.shift, cand)) > 1
    return always and r >= WEAK_R and (elsewhere or found.evidence < MIN_EVIDENCE)


#: The solve's default ``min_correlation``: a weaker answer is rejected there anyway.
_KEPT_R = 0.3


#: :attr:`PairwiseShift.checked` of a pair the exhaustive check could not decide (the link is rejected).
AMBIGUOUS = ("ambiguous: no clearly best alignment when every shift is scored without the periodic part "
             "(periodic content with no distinct mark in the overlap?)")


def _refine_best(k: _Kernels, scorer, r_bp, r_bp_many, scored, score_peaks, n_peaks, min_count):
    """Gradient refinement of the most similar candidates, more peaks if none converges.

    Candidates are ranked by their overlap correlation, and the best few are
    re-ranked by the correlation of the *band-passed* crops
    (:mod:`.subpixel`'s band pass: illumination divided out, noise and background
    removed).  Raw intensities favour spurious small overlaps when two tiles'
    vignetting runs opposite ways across their overlap (the true alignment
    then correlates less than a lucky corner, and the refinement, which fits
    a gain ramp, converges there too).  Measured on 20 synthetic pairs with
    opposite 2:1 gain ramps and a low-texture overlap: 20 right with the
    band-passed ranking, 15 with the raw one.

    At the right integer shift the Gauss-Newton refinement converges within a
    pixel; from a spurious one (a repetitive texture, a narrow overlap whose
    true PCM peak is weak) it usually diverges.  So candidates are tried in
    that order, and when the best three all diverge, four times as many PCM
    peaks are scored once more.  Measured on a photo mosaic with 10 %
    overlaps: a link 10 px off (r = 0.70, its true peak not among the top 10)
    is found right (r = 0.84) at the cost of one extra scan.
    """
    tried: set[tuple[int, ...]] = set()
    converged_at = []  # (band-passed r, candidate, r, shift, peak height) of weak convergences
    ranked = scored
    for expand in (False, True):
        if expand:
            ranked = [c for c in score_peaks(4 * n_peaks) if np.isfinite(c[0])]
        ranked = sorted(ranked, key=lambda c: -c[0])[:_RERANKED]
        r_bp_many([c[1] for c in ranked])
        ranked = sorted(ranked, key=lambda c: -r_bp(c[1]))
        for _, cand0, height in ranked[:3]:
            # The PCM's integer winner can be a pixel or two off on narrow,
            # tapered overlaps; climb the correlation of the band-passed crops
            # first (the raw one leans with opposite vignetting: a photo link
            # climbed to 1.9 px from the truth, past the refinement's reach).
            climbed, _ = _climb_band_passed(*k.arrays, k.shift3(cand0), k.limit, float(min_count), 8)
            cand = tuple(int(v) for v in climbed[k.lead:])
            r = scorer.pearson(cand)
            if cand in tried:
                continue
            tried.add(cand)
            # Gauss-Newton from the parabola through the band-passed correlations around ``cand``, and
            # from ``cand`` itself when that does not converge (:func:`.subpixel._refine_candidate`):
            # starting within ~0.1 px instead of up to 0.5 px saves one of its ~2.5 iterations.  Only
            # along axes at least _PARABOLA_DEPTH deep: on thinner ones the (every-second-voxel)
            # correlations are too coarse, and on a 32 x 3 px overlap a start half a pixel off made the
            # right candidate diverge.
            out = np.empty(3)
            converged = _refine_candidate(*k.arrays[:2], k.spline, *k.arrays[2:], climbed, float(min_count),
                                          _PARABOLA_DEPTH, out)
            shift = out[k.lead:].copy()
            if converged:
                nearest = tuple(int(v) for v in np.round(shift))
                if nearest != cand and scorer.count(nearest) >= min_count:
                    cand, r = nearest, scorer.pearson(nearest)
                r_band = r_bp(cand)
                if r_band >= _CONFIDENT_R:
                    return cand, r, shift, height
                # Converging alone no longer proves a candidate right (the fit
                # with a gain ramp also settles on a spurious corner of a
                # repetitive photo: a link 60 px off, r = 0.31, where the
                # true one, r = 0.84, lay among 4x the peaks); keep looking.
                converged_at.append((r_band, cand, r, shift, height))
    if converged_at:  # only weak ones: the most similar after band-passing
        _, cand, r, shift, height = max(converged_at, key=lambda c: c[0])
        return cand, r, shift, height
    # Nothing converged (flat or noise-only overlap): the best integer shift.
    r, cand, height = max(scored + ranked, key=lambda c: c[0])
    cand, r = hill_climb(scorer, cand, scorer.shape, k.limit[k.lead:], min_count)
    return cand, r, np.asarray(cand, dtype=np.float64), height


class _Kernels:
    """A pair's band-passed crops, spline and masks as the compiled steps take them (3D, the first
    :attr:`lead` axes added), built once per pair."""

    def __init__(self, prepared, masks, limit) -> None:
        fs = prepared[0]
        self.lead = 3 - fs.ndim
        lead = (1,) * self.lead
        self.arrays = (fs.reshape(lead + fs.shape), prepared[1].reshape(lead + fs.shape), *_masks3(masks, lead),
                       masks is not None, fs.ndim)
        self.spline = prepared[2].reshape(lead + fs.shape)
        self.limit = np.full(3, np.inf)
        self.limit[self.lead:] = limit

    def shift3(self, shift) -> np.ndarray:
        out = np.zeros(3, dtype=np.int64)
        out[self.lead:] = shift
        return out


#: Overlap depth (voxels) along an axis below which Gauss-Newton starts from the integer shift there.
_PARABOLA_DEPTH = 16

#: A converged candidate whose band-passed crops correlate at least this well is taken at once.
_CONFIDENT_R = 0.5

#: Candidates (best by overlap correlation) re-ranked on the band-passed crops.
_RERANKED = 6


def _validate(fixed, moving, fixed_mask, moving_mask):
    f = np.asarray(fixed)
    m = np.asarray(moving)
    if f.shape != m.shape:
        raise RegistrationError(
            f"fixed and moving crops must have the same shape, got {f.shape} and {m.shape}")
    if f.size == 0:
        raise RegistrationError(f"crops are empty (shape {f.shape})")
    for name, a in (("fixed", f), ("moving", m)):
        if a.dtype.kind in "biuf":  # the usual case, without numpy's slower dtype tests
            continue
        if np.iscomplexobj(a):
            raise RegistrationError(f"{name} crop is complex ({a.dtype}); pass real images")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise RegistrationError(f"{name} crop has non-numeric dtype {a.dtype}")
    keep = np.array([d for d, n in enumerate(f.shape) if n > 1], dtype=np.intp)
    if keep.size == 0:
        raise RegistrationError(f"crops of shape {f.shape} have no axis longer than 1")

    masks = None
    if fixed_mask is not None or moving_mask is not None:
        fm = np.ones(f.shape, bool) if fixed_mask is None else np.asarray(fixed_mask, bool)
        mm = np.ones(f.shape, bool) if moving_mask is None else np.asarray(moving_mask, bool)
        for name, mk in (("fixed_mask", fm), ("moving_mask", mm)):
            if mk.shape != f.shape:
                raise RegistrationError(
                    f"{name} has shape {mk.shape}, the crops have shape {f.shape}")
        masks = (fm, mm)

    for i, (name, a) in enumerate((("fixed", f), ("moving", m))):
        if a.dtype.kind == "f":
            finite = np.isfinite(a)
            ok = finite.all() if masks is None else finite[masks[i]].all()
            if not ok:
                raise RegistrationError(
                    f"{name} crop contains NaN or infinite values; pass "
                    f"{name}_mask=np.isfinite({name}) to ignore them")
    return f, m, keep, masks


def _determined_axes(f: np.ndarray, m: np.ndarray, masks, keep: np.ndarray) -> np.ndarray:
    """``keep`` less the axes along which neither crop (nor its mask) changes.

    Along such an axis (a 3D stack whose planes are all the same, a 2D image copied into every
    plane) every shift correlates equally well: the data say nothing about it, and the candidate
    scoring, the hill climb and the Gauss-Newton step would "refine" it from ties and rounding (a
    stack of identical planes moved its tiles by several units in z).  The shift stays 0 there, so
    the tile keeps its current (stage) position along that axis.  Crops that are constant along
    every axis keep them all: they are reported as constant (no shift), not as having no axis.
    """
    arrays = (f, m) if masks is None else (f, m, *masks)
    if f.ndim <= 3 and all(a.dtype.isnative and (a.dtype.kind in "biu" or a.dtype.char in "fd") for a in arrays):
        # one compiled pass per array that stops at the first change (numpy's array_equal against a
        # broadcast slice, per axis and array, held the GIL ~60 us per pair)
        lead = (1,) * (3 - f.ndim)
        constant = np.ones(3, dtype=bool)
        for a in arrays:
            _constant_axes(a.reshape(lead + a.shape), constant)
        determined = np.array([d for d in keep if not constant[d + len(lead)]], dtype=np.intp)
    else:
        def constant_along(a: np.ndarray, d: int) -> bool:
            return bool(np.array_equal(a, np.broadcast_to(np.take(a, [0], axis=d), a.shape)))

        determined = np.array([d for d in keep if not all(constant_along(a, d) for a in arrays)], dtype=np.intp)
    return determined if determined.size else keep


@numba.njit(cache=True, nogil=True)
def _constant_axes(a, constant):  # pragma: no cover - compiled
    """``constant[d] &=`` whether the 3D array ``a`` is the same along axis ``d`` (NaN differs from itself)."""
    n0, n1, n2 = a.shape
    for d in range(3):
        if not constant[d]:
            continue
        same = True
        for i0 in range(n0):
            j0 = 0 if d == 0 else i0
            for i1 in range(n1):
                j1 = 0 if d == 1 else i1
                for i2 in range(n2):
                    if a[i0, i1, i2] != a[j0, j1, 0 if d == 2 else i2]:
                        same = False
                        break
                if not same:
                    break
            if not same:
                break
        constant[d] = same


def _subpixel_method(subpixel) -> str | None:
    if subpixel is True or subpixel == "gradient":
        return "gradient"
    if subpixel == "cc":
        return "cc"
    if subpixel is False or subpixel is None:
        return None
    if subpixel == "quadratic":
        return subpixel
    raise RegistrationError(
        f"subpixel must be True, False, 'gradient', 'cc' or 'quadratic', got {subpixel!r}")


def _max_shift_per_axis(max_shift, ndim: int) -> np.ndarray:
    if max_shift is None:
        return np.full(ndim, np.inf)
    limit = np.asarray(max_shift, dtype=np.float64)
    if limit.ndim == 0:
        return np.full(ndim, float(limit))
    if limit.shape != (ndim,):
        raise RegistrationError(
            f"max_shift must be a scalar or have one value per axis ({ndim}), got {limit.tolist()}")
    return limit
