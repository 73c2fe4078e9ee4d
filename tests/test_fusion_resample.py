"""Chunk-wise resampling must equal scipy's whole-tile affine_transform."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from tilefuse.fusion.resample import (
    grid_affine,
    inside_mask,
    is_shift,
    local_offset,
    output_to_source,
    resample,
    resample_affine,
    resample_shift,
    source_coordinates,
    source_region,
)


def _translation(t):
    m = np.eye(len(t) + 1)
    m[:-1, -1] = t
    return m


def _random_affine(rng, tile_shape, out_shape):
    """Output voxel -> tile voxel: rotation, anisotropic scale, shift keeping overlap."""
    nd = len(tile_shape)
    if nd == 2:
        a = rng.uniform(-0.6, 0.6)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    else:
        rot = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    lin = rot @ np.diag(rng.uniform(0.6, 1.7, nd))
    # Map the output centre near the tile centre, then shift a bit.
    c_out = (np.asarray(out_shape) - 1) / 2
    c_tile = (np.asarray(tile_shape) - 1) / 2 + rng.uniform(-3, 3, nd)
    m = np.eye(nd + 1)
    m[:-1, :-1] = lin
    m[:-1, -1] = c_tile - lin @ c_out
    return m


def _whole_reference(tile, m, out_shape, order):
    return ndi.affine_transform(
        tile.astype(np.float64), m[:-1, :-1], offset=m[:-1, -1], output_shape=out_shape,
        order=order, mode="constant", cval=np.nan,
    )


def _chunkwise(tile, m, out_shape, chunks, order, fast):
    """Resample chunk by chunk the way the engine does; NaN outside the tile."""
    out = np.full(out_shape, np.nan)
    starts = [range(0, n, c) for n, c in zip(out_shape, chunks)]
    n_read = 0
    for start in product(*starts):
        cshape = tuple(min(c, n - s) for s, c, n in zip(start, chunks, out_shape))
        mc = m @ _translation(start)  # chunk-local voxel -> tile voxel
        sl_out = tuple(slice(s, s + c) for s, c in zip(start, cshape))
        region = source_region(mc, cshape, tile.shape, order)
        if region is None:
            continue
        n_read += 1
        crop = tile[region]
        vals = resample(crop, [r.start for r in region], mc, cshape, order, fast=fast)
        valid = np.broadcast_to(inside_mask(source_coordinates(mc, cshape), tile.shape), cshape)
        block = np.where(valid, vals, np.nan)
        out[sl_out] = block
    return out, n_read


def _assert_same(ours, ref):
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert ok.sum() > 0
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_general_affine_matches_whole_tile(order, nd, seed):
    rng = np.random.default_rng(seed)
    tile_shape = (23, 31) if nd == 2 else (11, 17, 14)
    out_shape = (29, 26) if nd == 2 else (13, 16, 15)
    chunks = (6, 7) if nd == 2 else (5, 6, 4)
    tile = rng.uniform(0, 1000, tile_shape).astype(np.float32)
    m = _random_affine(rng, tile_shape, out_shape)
    ref = _whole_reference(tile, m, out_shape, order)
    ours, _ = _chunkwise(tile, m, out_shape, chunks, order, fast=False)
    _assert_same(ours, ref)
    if order == 1:
        # and the result really is interpolated, not nearest
        assert not np.allclose(ours[~np.isnan(ours)] % 1, 0)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("shift_kind", ["subpixel", "integral", "half"])
def test_shift_fast_path_matches_whole_tile(order, nd, shift_kind):
    rng = np.random.default_rng(7 + nd)
    tile_shape = (24, 30) if nd == 2 else (9, 20, 18)
    out_shape = (31, 22) if nd == 2 else (12, 17, 23)
    chunks = (6, 9) if nd == 2 else (5, 7, 4)
    tile = rng.integers(0, 4000, tile_shape).astype(np.uint16)
    t = rng.uniform(-6, 6, nd)
    if shift_kind == "integral":
        t = np.round(t)
    elif shift_kind == "half":
        t = np.floor(t) + 0.25  # a quarter: not ambiguous for nearest rounding
    m = _translation(t)
    assert is_shift(m)
    ref = _whole_reference(tile, m, out_shape, order)
    fast, _ = _chunkwise(tile, m, out_shape, chunks, order, fast=True)
    slow, _ = _chunkwise(tile, m, out_shape, chunks, order, fast=False)
    _assert_same(fast, ref)
    _assert_same(slow, ref)


def test_fast_path_equals_affine_on_crop_beyond_edges():
    rng = np.random.default_rng(3)
    crop = rng.normal(size=(7, 9, 8)).astype(np.float32)
    for _ in range(25):
        shift = rng.uniform(-12, 12, 3)
        start = rng.integers(0, 5, 3)
        m = _translation(shift)
        a = resample_shift(crop, start, shift, (6, 11, 5), order=1)
        b = resample_affine(crop, start, m, (6, 11, 5), order=1)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        a0 = resample_shift(crop, start, shift, (6, 11, 5), order=0)
        b0 = resample_affine(crop, start, m, (6, 11, 5), order=0)
        np.testing.assert_array_equal(a0, b0)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32, np.float64])
def test_fast_path_folds_separable_weights(dtype):
    """``axis_weights`` multiply the result by their outer product, fractional or integral shifts."""
    rng = np.random.default_rng(8)
    crop = (rng.random((9, 12, 10)) * 1000).astype(dtype)
    out_shape = (6, 8, 7)
    for shift in [(1.3, 2.7, 0.2), (1.0, 2.5, 2.0), (2.0, 1.0, 1.0), (-1.4, 0.5, 5.9)]:
        weights = [rng.random(n).astype(np.float32) for n in out_shape]
        weights[1] = None if shift[1] == 1.0 else weights[1]
        plain = resample_shift(crop, (0, 0, 0), shift, out_shape)
        w = np.ones(out_shape)
        for d, v in enumerate(weights):
            if v is not None:
                w = w * v.reshape((-1,) + (1,) * (2 - d))
        folded = resample_shift(crop, (0, 0, 0), shift, out_shape, axis_weights=weights)
        assert folded.dtype == np.float32 and folded.shape == out_shape
        np.testing.assert_allclose(folded, plain * w, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="axis_weights"):
        resample_shift(crop, (0, 0, 0), (1.5, 1, 1), out_shape, axis_weights=[np.ones(3), None, None])


def test_fast_path_never_returns_a_view_of_the_input():
    crop = np.arange(60, dtype=np.float32).reshape(6, 10)
    out = resample_shift(crop, (0, 0), (1.0, 2.0), (3, 4))
    out[:] = -1
    assert crop.min() == 0


def test_integral_shift_is_exact_slice():
    tile = np.arange(100, dtype=np.float32).reshape(10, 10)
    out = resample_shift(tile[2:8, 1:9], (2, 1), (3.0, 2.0), (4, 5), order=1)
    np.testing.assert_array_equal(out, tile[3:7, 2:7])


def test_local_offset_algebra():
    rng = np.random.default_rng(5)
    m = np.eye(4)
    m[:3, :3] = rng.normal(size=(3, 3))
    m[:3, 3] = rng.normal(size=3) * 10
    y0 = np.array([4, -2, 7])
    x = rng.normal(size=3)
    y = m[:3, :3] @ x + m[:3, 3]
    np.testing.assert_allclose(m[:3, :3] @ x + local_offset(m, y0), y - y0)


def test_grid_affine_and_output_to_source():
    a_out = grid_affine((10.0, -5.0), (2.0, 0.5), start=(3, 4))
    np.testing.assert_allclose(a_out @ [1, 2, 1], [10 + 4 * 2, -5 + 6 * 0.5, 1])
    a_src = np.diag([2.0, 0.5, 1.0])
    a_src[:2, 2] = (10, -5)
    m = output_to_source(a_src, a_out)
    np.testing.assert_allclose(m[:2, :2], np.eye(2))
    np.testing.assert_allclose(m[:2, 2], (3, 4))


def test_singleton_axis_linear_is_not_zero():
    """A 2D plane stored with z == 1 contributes within +-0.5 of the plane."""
    rng = np.random.default_rng(11)
    tile = rng.uniform(1, 2, (1, 12, 13)).astype(np.float32)
    for dz, inside in [(0.0, True), (0.3, True), (-0.49, True), (0.6, False), (-0.7, False)]:
        m = _translation((dz, 1.5, 2.0))
        region = source_region(m, (1, 8, 8), tile.shape, 1)
        if not inside:
            assert region is None
            continue
        crop = tile[region]
        start = [r.start for r in region]
        for fast in (True, False):
            vals = resample(crop, start, m, (1, 8, 8), order=1, fast=fast)
            valid = inside_mask(source_coordinates(m, (1, 8, 8)), tile.shape)
            assert np.all(valid)
            expect = ndi.shift(tile[0].astype(np.float64), (-1.5, -2.0), order=1)[:8, :8]
            np.testing.assert_allclose(vals[0], expect, rtol=1e-6)


def test_source_region_reads_only_what_is_needed():
    m = _translation((100.3, 200.7))
    region = source_region(m, (16, 16), (1000, 1000), 1)
    assert region == (slice(99, 118), slice(199, 218))
    assert source_region(_translation((-50.0, 0.0)), (16, 16), (1000, 1000), 1) is None
    assert source_region(_translation((0.0, 995.0)), (16, 16), (1000, 1000), 1) == (
        slice(0, 17), slice(994, 1000))


def test_inside_box_equals_inside_mask_for_diagonal_maps():
    from tilefuse.fusion.resample import inside_box

    rng = np.random.default_rng(9)
    for _ in range(40):
        src_shape = tuple(int(v) for v in rng.integers(1, 12, 3))
        m = np.diag(list(rng.uniform(0.3, 2.5, 3)) + [1.0])
        m[:3, 3] = rng.uniform(-10, 10, 3)
        out_shape = (7, 9, 5)
        mask = np.broadcast_to(inside_mask(source_coordinates(m, out_shape), src_shape), out_shape)
        box = inside_box(m, out_shape, src_shape)
        if box is None:
            assert not mask.any()
        else:
            expect = np.zeros(out_shape, bool)
            expect[box] = True
            np.testing.assert_array_equal(mask, expect)
    with pytest.raises(ValueError):
        inside_box(_random_affine(rng, (5, 5), (5, 5)), (5, 5), (5, 5))


@pytest.mark.parametrize("order", [1, 0])
def test_diagonal_path_equals_affine(order):
    """Axis-aligned scaling (up, down, mirrored) through separable gathers equals scipy on the crop."""
    from tilefuse.fusion.resample import resample_diagonal

    rng = np.random.default_rng(11)
    crop = (rng.random((9, 14, 12)) * 4000).astype(np.uint16)
    for scale in [(1 / 3, 1.0, 1.0), (2.0, 0.5, 1.5), (1.0, 1.0, -1.0), (0.37, 2.2, 0.8)]:
        offset = rng.uniform(-2, 6, 3)
        m = np.diag(np.append(scale, 1.0))
        m[:3, 3] = offset
        start = (1, 2, 0)
        out_shape = (7, 6, 8)
        a = resample_diagonal(crop, start, scale, offset, out_shape, order)
        b = resample_affine(crop, start, m, out_shape, order)
        assert a.dtype == np.float32 and a.shape == out_shape
        if order:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-2)
        else:  # nearest: ties at exactly .5 may round differently; they are rare
            assert np.mean(a != b) < 0.01
        w = [rng.random(n).astype(np.float32) for n in out_shape]
        folded = resample_diagonal(crop, start, scale, offset, out_shape, order, axis_weights=w)
        np.testing.assert_allclose(folded, a * w[0][:, None, None] * w[1][:, None] * w[2], rtol=1e-5, atol=1e-2)
