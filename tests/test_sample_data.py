"""Synthetic mosaics: tiles agree at their true positions, and only there."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from tilefuse.sample_data import load_truth, make_mosaic


def _resample_error(mosaic, a, b, pos_a, pos_b, margin=3):
    """RMS difference between tile ``b`` and tile ``a`` cubic-sampled at ``b``'s voxels.

    Positions are world positions of voxel 0; the tiles' calibration is applied.
    """
    tile_a, tile_b = mosaic.tile(a).astype(float), mosaic.tile(b).astype(float)
    cal = mosaic.calibration
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in tile_b.shape], indexing="ij")
    # voxel v of b is at world pos_b + v*cal = pos_a + u*cal  =>  u = v + (pos_b - pos_a)/cal
    u = np.stack([g + (pb - pa) / c for g, pa, pb, c in zip(grids, pos_a, pos_b, cal)])
    inside = np.ones(tile_b.shape, bool)
    for ax, n in enumerate(tile_a.shape):
        m = min(margin, max(0, (n - 1) // 2 - 1))
        inside &= (u[ax] >= m) & (u[ax] <= n - 1 - m)
    assert inside.sum() > 100, "tiles do not overlap"
    sampled = ndimage.map_coordinates(tile_a, u, order=3, mode="nearest")
    return float(np.sqrt(np.mean((sampled[inside] - tile_b[inside]) ** 2))), float(tile_b.std())


@pytest.mark.parametrize("texture", ["procedural", "photo"])
def test_2d_neighbours_agree_at_true_positions_only(texture):
    m = make_mosaic(
        (2, 2), (128, 160), 0.15, noise=False, illumination=False, dtype=np.float32,
        texture=texture, seed=3,
    )
    for a, b in [(0, 1), (0, 2), (1, 3)]:
        err_true, spread = _resample_error(m, a, b, m.true_positions[a], m.true_positions[b])
        err_stage, _ = _resample_error(m, a, b, m.stage_positions[a], m.stage_positions[b])
        # interpolation error only: ~0.1 % of the contrast; wrong positions: tens of %
        assert err_true < 0.01 * spread, (a, b, err_true, spread)
        assert err_stage > 0.2 * spread, (a, b, err_stage, spread)


def test_3d_anisotropic_neighbours_agree():
    m = make_mosaic(
        (2, 1, 2), (16, 48, 48), (0.4, 0.25, 0.25), noise=False, illumination=False, dtype=np.float32,
        max_offset=4.0, seed=5,
    )
    assert m.voxel_size == (3.0, 1.0, 1.0)
    np.testing.assert_allclose(m.calibration, [3, 1, 1])
    # stage step in world units includes the z calibration
    np.testing.assert_allclose(m.stage_positions[2], [16 * 3 * 0.6, 0, 0])
    np.testing.assert_allclose(m.stage_positions[1], [0, 0, 48 * 0.75])
    for a, b in [(0, 1), (0, 2)]:
        err_true, spread = _resample_error(m, a, b, m.true_positions[a], m.true_positions[b], 2)
        err_stage, _ = _resample_error(m, a, b, m.stage_positions[a], m.stage_positions[b], 2)
        assert err_true < 0.05 * spread, (a, b, err_true, spread)
        assert err_stage > 4 * err_true, (a, b, err_stage, err_true)


def test_tile_zero_matches_ground_truth_exactly():
    m = make_mosaic((2, 3), (64, 80), noise=False, illumination=False, dtype=np.float32)
    np.testing.assert_array_equal(m.true_positions[0], 0)
    truth = m.ground_truth((slice(0, 64), slice(0, 80)))
    np.testing.assert_allclose(m.tile(0), truth, rtol=1e-5)
    # default region covers every tile
    full = m.ground_truth()
    hi = m.true_positions.max(axis=0) + np.array([63, 79])
    assert full.shape[0] >= hi[0] and full.shape[1] >= hi[1]


def test_bspline_evaluation_matches_map_coordinates():
    from tilefuse.sample_data import _apply, _bspline_weights

    rng = np.random.default_rng(1)
    coeffs = rng.uniform(-1, 1, (30, 40))
    y = 3.3 + np.arange(50) * 0.37
    x = 5.1 + np.arange(60) * 0.41
    Wy, fy = _bspline_weights(y)
    Wx, fx = _bspline_weights(x)
    window = coeffs[fy : fy + Wy.shape[1], fx : fx + Wx.shape[1]]
    ours = _apply(Wx, _apply(Wy, window, 0), 1)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    ref = ndimage.map_coordinates(coeffs, [yy, xx], order=3, prefilter=False)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_offsets_bounded_and_first_tile_fixed():
    m = make_mosaic((4, 5), (32, 32), max_offset=6.0, seed=11)
    off = m.offsets
    np.testing.assert_array_equal(off[0], 0)
    assert np.all(np.abs(off[1:]) <= 6.0)
    assert np.all(np.abs(off[1:]) >= 1.5)  # "a few" pixels at least
    assert len(np.unique(np.round(off[1:], 6))) > 10  # sub-pixel, not all equal
    assert np.any(np.abs(off[1:] - np.round(off[1:])) > 0.05)
    # nominal grid: rows/cols step = tile * (1 - overlap)
    np.testing.assert_allclose(m.stage_positions[6], [1 * 32 * 0.9, 1 * 32 * 0.9])
    assert m.grid_index(6) == (1, 1)


def test_deterministic_with_seed():
    a = make_mosaic((2, 2), (64, 64), seed=7)
    b = make_mosaic((2, 2), (64, 64), seed=7)
    c = make_mosaic((2, 2), (64, 64), seed=8)
    np.testing.assert_array_equal(a.true_positions, b.true_positions)
    np.testing.assert_array_equal(a.tile(3), b.tile(3))
    assert not np.array_equal(a.tile(3), c.tile(3))
    assert not np.allclose(a.true_positions, c.true_positions)


def test_empty_tiles_are_flat_background():
    m = make_mosaic((2, 2), (64, 64), empty_tiles=[(1, 0)], noise=False)
    assert m.empty_tiles == {2}
    flat = m.tile(2)
    assert flat.dtype == np.uint16
    np.testing.assert_array_equal(flat, 100)
    assert m.tile(1).std() > 50
    noisy = make_mosaic((2, 2), (64, 64), empty_tiles=[2], noise=True).tile(2).astype(float)
    # Poisson: variance equals mean
    assert abs(noisy.mean() - 100) < 1.5
    assert 80 < noisy.var() < 120


def test_illumination_and_noise():
    clean = make_mosaic((1, 2), (128, 128), noise=False, illumination=False, seed=2)
    lit = make_mosaic((1, 2), (128, 128), noise=False, illumination=True, seed=2)
    ratio = (lit.tile(0).astype(float) - 100) / (clean.tile(0).astype(float) - 100)
    # vignetting: centre brighter than corners, within the documented range
    assert ratio[60:68, 60:68].mean() > ratio[:8, :8].mean() * 1.15
    assert 0.4 < ratio.min() and ratio.max() < 1.2
    noisy = make_mosaic((1, 2), (128, 128), noise=True, illumination=False, seed=2)
    diff = noisy.tile(0).astype(float) - clean.tile(0).astype(float)
    expected_var = clean.tile(0).astype(float).mean()
    assert 0.8 < diff.var() / expected_var < 1.2


def test_phase_correlation_recovers_true_offset():
    from skimage.registration import phase_cross_correlation

    m = make_mosaic((1, 2), (256, 256), overlap=0.25, seed=1)
    a, b = m.tile(0).astype(float), m.tile(1).astype(float)
    step = int(round(m.stage_positions[1][1]))
    shift, _, _ = phase_cross_correlation(
        a[:, step:], b[:, : 256 - step], upsample_factor=10, normalization=None
    )
    expected = m.true_positions[1] - m.true_positions[0] - [0, step]
    np.testing.assert_allclose(shift, expected, atol=1.0)


def test_uint8_and_float_dtypes():
    m8 = make_mosaic((1, 2), (64, 64), dtype=np.uint8, seed=4)
    t = m8.tile(1)
    assert t.dtype == np.uint8 and t.max() < 255 and t.min() > 0
    mf = make_mosaic((1, 2), (64, 64), dtype=np.float32, noise=False, seed=4)
    assert mf.tile(1).dtype == np.float32


def test_tile_dask_and_iteration():
    m = make_mosaic((2, 2), (32, 48), seed=9)
    d = m.tile_dask(3)
    assert d.shape == (32, 48) and d.dtype == np.uint16
    np.testing.assert_array_equal(d.compute(), m.tile(3))
    tiles = list(m.tiles())
    assert len(tiles) == len(m) == 4
    np.testing.assert_array_equal(tiles[2], m.tile(2))
    with pytest.raises(IndexError):
        m.tile(4)


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_truth_round_trip(tmp_path, suffix):
    m = make_mosaic((2, 2, 2), (8, 16, 16), empty_tiles=[5], seed=4)
    path = m.save_truth(tmp_path / f"truth{suffix}")
    assert not (tmp_path / f"truth{suffix}.partial").exists()
    t = load_truth(path)
    np.testing.assert_array_equal(t["tile"], np.arange(8))
    np.testing.assert_allclose(t["stage_positions"], m.stage_positions)
    np.testing.assert_allclose(t["true_positions"], m.true_positions)
    assert t["empty"].tolist() == [i == 5 for i in range(8)]
    text = path.read_text()
    for column in ("true_x", "true_y", "true_z", "stage_x", "stage_z"):
        assert column in text
    if suffix == ".json":
        import json

        rec = json.loads(text)["tiles"][3]
        assert rec["true_xyz"] == rec["true_zyx"][::-1]
        assert rec["true_x"] == rec["true_zyx"][2]
        again = make_mosaic(**t["params"])
        np.testing.assert_array_equal(again.tile(3), m.tile(3))


def test_one_512_tile_timing(capsys):
    m = make_mosaic((20, 30), (512, 512), seed=0)
    m.tile(1)  # warm up
    t0 = time.perf_counter()
    for i in range(2, 7):
        m.tile(i)
    per_tile = (time.perf_counter() - t0) / 5
    with capsys.disabled():
        print(f"\n[sample_data] one 512x512 uint16 tile: {per_tile * 1e3:.1f} ms")
    # 600 tiles in ~30 s on 2 cores allows ~0.1 s per tile; keep a generous bound
    assert per_tile < 0.5
