"""pairwise_shift against crops cut from known images at known sub-pixel shifts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tilefuse.errors import RegistrationError
from tilefuse.registration.phase_correlation import PairwiseShift, pairwise_shift


def _fourier_shift(image, shift):
    """``out[x] = image[x - shift]`` (periodic, band-limited)."""
    spectrum = ndimage.fourier_shift(np.fft.fftn(image), shift)
    return np.fft.ifftn(spectrum).real


@pytest.fixture(scope="module")
def texture2d():
    rng = np.random.default_rng(7)
    img = ndimage.gaussian_filter(rng.random((256, 256)), 1.5)
    return (img - img.min()) / np.ptp(img)


@pytest.fixture(scope="module")
def camera():
    skdata = pytest.importorskip("skimage.data")
    return skdata.camera().astype(np.float64) / 255.0


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(3)
    vol = ndimage.gaussian_filter(rng.random((100, 128, 128)), 2.0)
    return (vol - vol.min()) / np.ptp(vol)


def _pair(image, shift, origin, size, rng, photons, fourier=True):
    """fixed = image crop, moving such that fixed[x] = moving[x - shift]."""
    moved = _fourier_shift(image, -np.asarray(shift)) if fourier else ndimage.shift(
        image, -np.asarray(shift), order=3, mode="reflect")
    sl = tuple(slice(o, o + n) for o, n in zip(origin, size))
    fixed = rng.poisson(np.clip(image[sl], 0, None) * photons).astype(np.uint16)
    moving = rng.poisson(np.clip(moved[sl], 0, None) * photons).astype(np.uint16)
    return fixed, moving


def test_accuracy_2d_camera(camera):
    """Sub-pixel shifts up to +-15 px, 96 px crops of a textured region, Poisson noise."""
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(12):
        shift = rng.uniform(-15, 15, 2)
        origin = (rng.integers(300, 380), rng.integers(150, 300))
        fixed, moving = _pair(camera, shift, origin, (96, 96), rng, photons=200)
        res = pairwise_shift(fixed, moving)
        assert res.valid
        errors.append(np.abs(res.shift - shift).max())
    errors = np.array(errors)
    assert errors.mean() <= 0.1, errors
    assert errors.max() <= 0.25, errors


@pytest.mark.parametrize("size", [64, 128])
def test_accuracy_2d_spline_shift(texture2d, size):
    rng = np.random.default_rng(size)
    errors = []
    for _ in range(8):
        shift = rng.uniform(-15, 15, 2)
        fixed, moving = _pair(texture2d, shift, (60, 60), (size, size), rng, photons=300,
                              fourier=False)
        errors.append(np.abs(pairwise_shift(fixed, moving).shift - shift).max())
    errors = np.array(errors)
    assert errors.mean() <= 0.1, errors
    assert errors.max() <= 0.25, errors


def test_accuracy_3d(volume):
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(3):
        shift = rng.uniform(-15, 15, 3)
        fixed, moving = _pair(volume, shift, (18, 16, 16), (64, 96, 96), rng, photons=100,
                              fourier=False)
        res = pairwise_shift(fixed, moving)
        assert res.shift.shape == (3,)
        errors.append(np.abs(res.shift - shift).max())
    errors = np.array(errors)
    assert errors.mean() <= 0.1, errors
    assert errors.max() <= 0.25, errors


def test_subpixel_beats_bigstitcher_quadratic(texture2d):
    rng = np.random.default_rng(5)
    err_cc, err_quad = [], []
    for _ in range(8):
        shift = rng.uniform(-10, 10, 2)
        fixed, moving = _pair(texture2d, shift, (70, 70), (96, 96), rng, photons=300)
        err_cc.append(np.abs(pairwise_shift(fixed, moving).shift - shift).max())
        quad = pairwise_shift(fixed, moving, subpixel="quadratic").shift
        err_quad.append(np.abs(quad - shift).max())
    assert np.mean(err_quad) < 0.5  # the BigStitcher method works, just less well
    assert np.mean(err_cc) < 0.5 * np.mean(err_quad)


def test_opposite_vignetting_on_a_low_texture_overlap():
    """Two tiles whose gains run 2:1 opposite ways across a thin overlap that is mostly flat.

    Raw-intensity correlation then prefers spurious corner overlaps and the
    gain-ramp refinement converges there too; ranking candidates on the
    band-passed crops keeps every pair right, and the refinement converges
    to the sub-pixel shift (it oscillated around it when the ramp's share of
    the gain was left out of its gradient columns).
    """
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(12):
        scene = ndimage.gaussian_filter(rng.normal(size=(560, 120)), 2.0)
        scene[:380] *= 0.03  # sky: noise only over two thirds of the overlap
        scene = 1000 + 6000 * np.abs(scene)
        shift = np.array([rng.uniform(5, 15), rng.uniform(-3, 3)])
        fixed = scene[20:532, 30:81]
        moving = ndimage.shift(scene, -shift, order=3, mode="nearest")[20:532, 30:81]
        ramp = np.linspace(0.0, 1.0, fixed.shape[1])
        fixed = rng.poisson(fixed * (1.0 - 0.5 * ramp)).astype(np.uint16)
        moving = rng.poisson(moving * (0.5 + 0.5 * ramp)).astype(np.uint16)
        errors.append(np.abs(pairwise_shift(fixed, moving).shift - shift).max())
    assert max(errors) < 0.05, np.round(errors, 3)


def test_integer_shift_convention_and_fields(texture2d):
    fixed = texture2d[50:146, 40:136]
    moving = texture2d[53:149, 35:131]  # moving[x] = fixed[x + (3, -5)]
    res = pairwise_shift(fixed, moving, subpixel=False)
    assert isinstance(res, PairwiseShift)
    np.testing.assert_array_equal(res.shift, [3, -5])
    np.testing.assert_array_equal(res.integer_shift, [3, -5])
    assert res.correlation == pytest.approx(1.0, abs=1e-9)
    assert res.overlap_fraction == pytest.approx(93 * 91 / 96**2)
    assert res.n_candidates >= 1 and res.valid and res.reason == ""
    # scikit-image convention: shifting moving by the result reproduces fixed
    back = ndimage.shift(moving.astype(float), res.shift, order=0)
    np.testing.assert_allclose(back[3:, :-5], fixed[3:, :-5])
    sub = pairwise_shift(fixed, moving)
    np.testing.assert_allclose(sub.shift, [3, -5], atol=0.02)


def test_zero_shift(texture2d):
    crop = texture2d[:80, :80]
    res = pairwise_shift(crop, crop)
    np.testing.assert_allclose(res.shift, 0, atol=0.01)
    assert res.correlation == pytest.approx(1.0)


@pytest.mark.parametrize("shift", [(40, -37), (-45, 30)])
def test_large_shift_needs_wraparound_alternative(texture2d, shift):
    """Shifts beyond half the crop appear at p - N in the PCM."""
    o = np.array([80, 80])
    fixed = texture2d[o[0]:o[0] + 96, o[1]:o[1] + 96]
    m0 = o + np.array(shift)
    moving = texture2d[m0[0]:m0[0] + 96, m0[1]:m0[1] + 96]
    # fixed[x] = image[o + x] = moving[x - shift]  with moving[y] = image[o + shift + y]
    res = pairwise_shift(fixed, moving, min_overlap=0.05)
    np.testing.assert_allclose(res.shift, shift, atol=0.05)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.float16, np.float32,
                                   np.float64])
def test_dtypes(texture2d, dtype):
    scale = 250 if np.issubdtype(dtype, np.integer) else 1.0
    img = (texture2d * scale).astype(dtype)
    res = pairwise_shift(img[20:100, 20:100], img[22:102, 26:106])
    np.testing.assert_allclose(res.shift, [2, 6], atol=0.05)


def test_singleton_axes(texture2d):
    fixed = texture2d[20:100, 20:100]
    moving = texture2d[24:104, 17:97]
    a = pairwise_shift(fixed[None], moving[None])
    np.testing.assert_allclose(a.shift, [0, 4, -3], atol=0.05)
    assert a.integer_shift.tolist() == [0, 4, -3]
    b = pairwise_shift(fixed[:, None, :], moving[:, None, :])
    np.testing.assert_allclose(b.shift, [4, 0, -3], atol=0.05)


def test_max_shift_and_min_overlap(texture2d):
    fixed = texture2d[20:100, 20:100]
    moving = texture2d[32:112, 20:100]  # true shift (12, 0)
    assert pairwise_shift(fixed, moving, max_shift=(15, 1)).shift[0] == pytest.approx(12, abs=0.05)
    capped = pairwise_shift(fixed, moving, max_shift=5)
    assert not capped.valid or np.all(np.abs(capped.integer_shift) <= 5)
    none = pairwise_shift(fixed, moving, min_overlap=0.9)  # 68/80 = 0.85 of the crop
    assert not none.valid
    assert none.correlation == -np.inf
    assert np.all(np.isnan(none.shift))
    assert "min_overlap" in none.reason


def test_masks_ignore_invalid_pixels(texture2d):
    fixed = texture2d[40:120, 40:120].copy()
    moving = texture2d[45:125, 37:117].copy()
    moving[:, :12] = np.nan  # e.g. outside the tile
    with pytest.raises(RegistrationError, match="moving_mask=np.isfinite"):
        pairwise_shift(fixed, moving)
    res = pairwise_shift(fixed, moving, moving_mask=np.isfinite(moving))
    np.testing.assert_allclose(res.shift, [5, -3], atol=0.1)
    assert res.correlation > 0.99


def test_constant_image_is_invalid_not_an_error(texture2d):
    res = pairwise_shift(np.full((64, 64), 7.0), texture2d[:64, :64])
    assert not res.valid
    assert np.isnan(res.correlation)


@pytest.mark.parametrize(
    "fixed, moving, match",
    [
        (np.zeros((10, 12)), np.zeros((10, 13)), r"\(10, 12\) and \(10, 13\)"),
        (np.zeros((0, 5)), np.zeros((0, 5)), "empty"),
        (np.ones((1, 1)), np.ones((1, 1)), "no axis longer than 1"),
        (np.full((8, 8), np.inf), np.zeros((8, 8)), "NaN or infinite"),
        (np.zeros((8, 8), complex), np.zeros((8, 8), complex), "complex"),
    ],
)
def test_bad_input_raises(fixed, moving, match):
    with pytest.raises(RegistrationError, match=match):
        pairwise_shift(fixed, moving)


def test_bad_parameters_raise(texture2d):
    crop = texture2d[:32, :32]
    with pytest.raises(RegistrationError, match="n_peaks"):
        pairwise_shift(crop, crop, n_peaks=0)
    with pytest.raises(RegistrationError, match="max_shift"):
        pairwise_shift(crop, crop, max_shift=(1, 2, 3))
    with pytest.raises(RegistrationError, match="subpixel"):
        pairwise_shift(crop, crop, subpixel="sinc")
    with pytest.raises(RegistrationError, match="fixed_mask"):
        pairwise_shift(crop, crop, fixed_mask=np.ones((3, 3), bool))


@pytest.mark.parametrize("shape", [(300,), (64, 51), (1, 40, 33), (12, 20, 30)])
def test_compiled_gaussian_is_scipys(shape):
    """The band pass's compiled filters give scipy's gaussian_filter (mode="nearest") to float32 rounding."""
    from tilefuse.registration.bandpass import gaussian

    a = np.random.default_rng(1).random(shape).astype(np.float32) * 1000
    for sigma, truncate in ((1.0, 4.0), (4.0, 3.0), (2.5, 2.0)):
        ref = ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=truncate)
        np.testing.assert_allclose(gaussian(a, sigma, truncate), ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    per_axis = [1.0 + d for d in range(len(shape))]
    np.testing.assert_allclose(gaussian(a, per_axis), ndimage.gaussian_filter(a, per_axis, mode="nearest"),
                               rtol=0, atol=2e-3)
    assert gaussian(a, 0.0) is not a and np.array_equal(gaussian(a, 0.0), a)


@pytest.mark.parametrize("shape", [(200,), (40, 23), (6, 9, 11)])
def test_gauss_newton_normal_equations_are_numpys(shape):
    """The compiled normal equations of the sub-pixel step, rows g, 1, -G dg/dx_k (np.gradient), g x_k per axis."""
    from tilefuse.registration.subpixel import _normal_equations

    rng = np.random.default_rng(2)
    g = rng.random(shape).astype(np.float32)
    target = rng.random(shape).astype(np.float32)
    mask = rng.random(shape) > 0.3
    active = [k for k in range(len(shape))][-2:]
    ramps = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    gain_a, gain_r = 1.3, np.array([0.2, -0.1])[: len(active)]
    lead = (1,) * (3 - len(shape))
    for use_gain in (False, True):
        for use_mask in (False, True):
            gain = gain_a + sum(r * ramps[k] for r, k in zip(gain_r, active)) if use_gain else 1.0
            rows = [g, np.ones(shape)] + [-gain * np.gradient(g, axis=k) for k in active] + \
                   [g * ramps[k] for k in active]
            keep = mask if use_mask else np.ones(shape, bool)
            design = np.stack([r[keep] for r in rows]).astype(np.float64)
            k = design.shape[0]
            ata, atb = np.zeros((k, k)), np.zeros(k)
            _normal_equations(g.reshape(lead + shape), target.reshape(lead + shape), mask.reshape(lead + shape),
                              use_mask, np.asarray(active) + len(lead), gain_a, gain_r, use_gain, ata, atb)
            np.testing.assert_allclose(ata, design @ design.T, rtol=1e-5, atol=1e-6 * keep.sum())
            np.testing.assert_allclose(atb, design @ target[keep], rtol=1e-5, atol=1e-6 * keep.sum())


@pytest.mark.parametrize(("shape", "region", "offset"), [
    ((60, 50), (slice(5, 40), slice(0, 50)), (0.3, -1.7)),
    ((6, 9, 11), (slice(0, 6), slice(2, 7), slice(1, 11)), (-0.4, 2.2, 0.9)),
    ((40,), (slice(3, 38),), (1.5,)),
])
def test_compiled_spline_sampling_is_scipys(shape, region, offset):
    """The sub-pixel step's resampling gives map_coordinates' cubic spline (mode="nearest"), borders included."""
    from tilefuse.registration.subpixel import _sample_shifted

    coeffs = np.random.default_rng(3).random(shape).astype(np.float32)
    coords = np.meshgrid(*[np.arange(sl.start, sl.stop) + u for sl, u in zip(region, offset)], indexing="ij")
    ref = ndimage.map_coordinates(coeffs, coords, order=3, mode="nearest", prefilter=False)
    np.testing.assert_allclose(_sample_shifted(coeffs, region, offset), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(512, 51), (51, 512), (1, 40, 33), (12, 20, 30), (5, 9), (300,), (3, 40), (2, 2, 9)])
def test_compiled_spline_coefficients_are_scipys(shape):
    """The sub-pixel step's cubic B-spline coefficients are scipy's spline_filter (mode="nearest")."""
    from tilefuse.registration.subpixel import spline_coefficients

    a = np.random.default_rng(4).random(shape).astype(np.float32) * 1000 - 300
    ref = ndimage.spline_filter(a, order=3, mode="nearest", output=np.float32)
    got = spline_coefficients(a)
    assert got.dtype == np.float32 and got.shape == a.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("shape", [(7,), (30, 40), (1, 64, 54), (5, 6, 7), (2, 3)])
def test_periodic_peaks_are_the_highest_wrapped_local_maxima(shape):
    """The compiled peak search returns the highest local maxima (wrap-around neighbours), highest first."""
    from tilefuse.registration.peaks import periodic_peaks

    pcm = np.random.default_rng(5).random(shape).astype(np.float32)
    is_max = pcm >= ndimage.maximum_filter(pcm, size=3, mode="wrap")
    order = np.argsort(pcm[is_max])[::-1]
    expected = np.argwhere(is_max)[order]
    for n in (1, 5, 20):
        peaks, values = periodic_peaks(pcm, n)
        assert peaks == [tuple(int(v) for v in p) for p in expected[:n]]
        np.testing.assert_array_equal(values, pcm[is_max][order][:n])
