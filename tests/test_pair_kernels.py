"""The compiled steps of a pair's registration against the numpy/scipy computations they replace."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import scipy.fft as sfft
from scipy import ndimage

from tilefuse.registration import bandpass
from tilefuse.registration.candidates import (
    OverlapScorer,
    _climb_band_passed,
    _masks3,
    band_passed_r,
    hill_climb,
    overlap_slices,
    peak_candidates,
)
from tilefuse.registration.peaks import (
    _EPS,
    _whiten,
    apodised,
    centred,
    periodic_candidates,
    periodic_peaks,
    phase_correlation_matrix,
    top_local_maxima,
)
from tilefuse.registration.phase_correlation import _constant_axes, _determined_axes
from tilefuse.registration.subpixel import _solve_small, prepare_refinement, refine_gradient

SHAPES = [(40,), (48, 23), (9, 14, 17)]


def _texture(shape, seed=0, sigma=1.5):
    img = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return (img - img.min()) / np.ptp(img) + 0.2


def test_small_solve_is_lapacks():
    rng = np.random.default_rng(0)
    for n in (2, 4, 6, 8):
        a = rng.normal(size=(n, n)) + n * np.eye(n)
        a[[0, n - 1]] = a[[n - 1, 0]]  # a row swap: the pivoting is used
        b = rng.normal(size=n)
        x = np.empty(n)
        assert _solve_small(a.copy(), b.copy(), x)
        np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    singular = np.ones((4, 4))
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.solve(singular, np.ones(4))
    assert not _solve_small(singular, np.ones(4), np.empty(4))


@pytest.mark.parametrize("shape", SHAPES + [(7, 3), (1, 40)])
def test_band_pass_is_the_python_steps(shape):
    """The compiled band pass gives exactly what its steps give one by one (flat-field, then DoG)."""
    a = (_texture(shape) * 100 - 30).astype(np.float32)  # some intensities <= 0: shifted first
    for img in (a, a - a.min() + 1):
        flat = img if img.min() > 0 else img - img.min() + max(float(np.ptp(img)) * 1e-3, 1e-6)
        flat = flat / bandpass.smooth_illumination(flat, 16.0)
        ref = bandpass.gaussian(flat, 1.0) - bandpass.gaussian(flat, 4.0, truncate=3.0)
        np.testing.assert_array_equal(bandpass.band_pass(img), ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_phase_correlation_matrix_is_the_unbatched_one(shape):
    f, m = centred(_texture(shape, 1), None), centred(_texture(shape, 2), None)
    pcm, fft_shape = phase_correlation_matrix(f, m, None)
    axes = tuple(range(f.ndim))
    ff = sfft.rfftn(apodised(f), s=fft_shape, axes=axes)
    fm = sfft.rfftn(apodised(m), s=fft_shape, axes=axes)
    _whiten(ff.reshape(-1).view(np.float32), fm.reshape(-1).view(np.float32), _EPS)
    np.testing.assert_array_equal(pcm, sfft.irfftn(ff, s=fft_shape, axes=axes))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_peak_candidates_are_the_scorers(shape, masked):
    """Every peak's periodic candidates, in order, with the scorer's counts and correlations."""
    rng = np.random.default_rng(4)
    f, m = centred(_texture(shape, 5), None), centred(_texture(shape, 6), None)
    masks = (rng.random(shape) > 0.2, rng.random(shape) > 0.2) if masked else None
    pcm, fft_shape = phase_correlation_matrix(f, m, None)
    limit = np.full(f.ndim, np.inf)
    limit[-1] = shape[-1] // 3  # some candidates beyond max_shift
    min_count = 0.1 * f.size
    index, _ = top_local_maxima(pcm, 6)
    cands, which, counts, rs = peak_candidates(OverlapScorer(f, m, masks), index, fft_shape, limit, min_count)
    reference = OverlapScorer(f, m, masks)
    peaks, _ = periodic_peaks(pcm, 6)
    expected = [(c, p) for p, peak in enumerate(peaks) for c in periodic_candidates(peak, fft_shape, shape, limit)]
    assert cands == [c for c, _ in expected] and which.tolist() == [p for _, p in expected]
    assert counts.tolist() == [reference.count(c) for c in cands]
    scored = counts >= min_count
    assert scored.any()
    np.testing.assert_allclose(rs[scored], [reference.pearson(c) for c, s in zip(cands, scored) if s],
                               rtol=0, atol=1e-12)
    assert np.isnan(rs[~scored]).all()


def _band_passed_r_numpy(prepared, masks, cand, min_count):
    """band_passed_r as it was: Pearson of every second voxel of the band-passed overlap."""
    fs, ms = prepared[0], prepared[1]
    sf, sm = overlap_slices(cand, fs.shape)
    sf = tuple(slice(s.start, s.stop, 2) for s in sf)
    sm = tuple(slice(s.start, s.stop, 2) for s in sm)
    a, b = fs[sf].astype(np.float64), ms[sm].astype(np.float64)
    if masks is not None:
        both = masks[0][sf] & masks[1][sm]
        if np.count_nonzero(both) < max(min_count / 2**both.ndim, 2):
            return -np.inf
        a, b = a[both], b[both]
    if a.size == 0:
        return -np.inf
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt((a * a).sum() * (b * b).sum())
    return (a * b).sum() / den if den > 0 else -np.inf


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_band_passed_climb_is_hill_climb(shape, masked):
    rng = np.random.default_rng(8)
    image = _texture(tuple(n + 6 for n in shape), 9)
    true = (3,) * len(shape)
    fixed = image[tuple(slice(3, 3 + n) for n in shape)].astype(np.float32)
    moving = image[tuple(slice(0, n) for n in shape)].astype(np.float32)  # fixed[x] = moving[x + 3]
    masks = (rng.random(shape) > 0.1, rng.random(shape) > 0.1) if masked else None
    prepared = prepare_refinement(fixed, moving)
    min_count = 0.1 * fixed.size
    for cand in product(*[range(-2, 3)] * len(shape)):
        if cand[-1] != 1 and len(shape) == 3:
            continue  # a few dozen starts are enough
        np.testing.assert_allclose(band_passed_r(prepared, masks, cand, min_count),
                                   _band_passed_r_numpy(prepared, masks, cand, min_count), rtol=1e-9, atol=1e-12)
    scorer = OverlapScorer(centred(fixed, None), centred(moving, None), masks)
    limit = np.full(len(shape), np.inf)
    lead = 3 - len(shape)
    for start in [(0,) * len(shape), (-2,) * len(shape)]:
        climbed, r = _climb_band_passed(prepared[0].reshape((1,) * lead + shape),
                                        prepared[1].reshape((1,) * lead + shape), *_masks3(masks, (1,) * lead),
                                        masked, len(shape), np.array((0,) * lead + start), np.full(3, np.inf),
                                        float(min_count), 8)
        expected = hill_climb(scorer, start, shape, limit, min_count,
                              score=lambda s: _band_passed_r_numpy(prepared, masks, s, min_count))
        assert tuple(climbed[lead:]) == expected[0]
        if len(shape) < 3:  # (the 9 px deep axis of the 3D crops is too thin for every second voxel)
            assert expected[0] == tuple(-v for v in true)
        assert r == pytest.approx(expected[1], rel=1e-9)


@pytest.mark.parametrize("shape", [(64,), (64, 48), (24, 40, 36)])
def test_gauss_newton_finds_a_subpixel_shift(shape):
    """fixed[x] = moving[x - d] for a sub-pixel d: the compiled Gauss-Newton finds d from the integer shift,
    with all-True masks as without masks, and gives up (returns the start) on constant crops."""
    big = _texture(tuple(n + 16 for n in shape), 11, sigma=2.5)
    d = np.array([0.37, -1.28, 0.81][: len(shape)])
    moving = big[tuple(slice(8, 8 + n) for n in shape)]
    fixed = ndimage.shift(big, d, order=5, mode="nearest")[tuple(slice(8, 8 + n) for n in shape)]
    prepared = prepare_refinement(fixed.astype(np.float32), moving.astype(np.float32))
    start = np.round(d)
    shift, converged = refine_gradient(prepared[0], prepared[2], None, start, 0.1 * fixed.size)
    assert converged
    np.testing.assert_allclose(shift, d, atol=0.02)
    ones = (np.ones(shape, bool), np.ones(shape, bool))
    masked, converged_m = refine_gradient(prepared[0], prepared[2], ones, start, 0.1 * fixed.size)
    assert converged_m
    np.testing.assert_allclose(masked, shift, atol=1e-9)
    flat = np.ones(shape, np.float32)
    assert refine_gradient(flat, flat, None, start, 0.1 * fixed.size)[1] is False


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64, bool])
def test_constant_axes_are_array_equals(dtype):
    rng = np.random.default_rng(12)
    base = rng.random((5, 6, 7)) > 0.5 if dtype is bool else (rng.random((5, 6, 7)) * 100).astype(dtype)
    for axis in range(3):
        a = np.repeat(np.take(base, [2], axis=axis), base.shape[axis], axis=axis)  # constant along axis
        constant = np.ones(3, bool)
        _constant_axes(a, constant)
        expected = [np.array_equal(a, np.broadcast_to(np.take(a, [0], axis=d), a.shape)) for d in range(3)]
        assert constant.tolist() == expected and expected[axis]
        keep = np.arange(3)
        assert _determined_axes(a, a.copy(), None, keep).tolist() == [d for d in range(3) if not expected[d]]
    if dtype in (np.float32, np.float64):  # NaN differs from itself, as in array_equal
        a = np.zeros((3, 4, 5), dtype)
        a[1, 1, 1] = np.nan
        constant = np.ones(3, bool)
        _constant_axes(a, constant)
        assert not constant.any()


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_centred_is_numpys(dtype, shape):
    a = (_texture(shape, 13) * 1000).astype(dtype)
    expected = np.array(a, dtype=np.float64)
    expected -= expected.mean()
    got = centred(a, None)
    assert got.dtype == np.float64 and got.shape == shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
