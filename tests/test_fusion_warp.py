"""The compiled resampler of rotated and sheared views equals scipy's, and is what fusion uses."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from tilefuse.fusion.engine import FusionSource, fuse_sources
from tilefuse.fusion.resample import inside_mask, resample, resample_affine, source_coordinates, source_region
from tilefuse.fusion.warp import blend_warped, warp_values


def _rotation(nd, rng, axis=None):
    if nd == 2:
        a = rng.uniform(-np.pi, np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if axis is None:
        return Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    angles = np.zeros(3)
    angles[axis] = rng.uniform(0.2, 3.0)
    return Rotation.from_euler("zyx", angles).as_matrix()


def _matrix(rng, nd, src_shape, out_shape, axis=None, shear=True):
    """Output voxel -> view voxel: rotation, anisotropic scale and shear, centred so the views meet."""
    lin = _rotation(nd, rng, axis) @ np.diag(rng.uniform(0.4, 2.5, nd))
    if shear:
        s = np.eye(nd)
        s[0, -1] = rng.uniform(-0.5, 0.5)
        lin = lin @ s
    m = np.eye(nd + 1)
    m[:nd, :nd] = lin
    m[:nd, nd] = (np.asarray(src_shape) - 1) / 2 + rng.uniform(-4, 4, nd) - lin @ ((np.asarray(out_shape) - 1) / 2)
    return m


CASES = [(nd, axis) for nd in (2,) for axis in (None,)] + [(3, a) for a in (0, 1, 2, None)]


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("nd,axis", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_warp_equals_scipy_on_crops(nd, axis, order, dtype, seed):
    """Random affines, crops that end inside the output (edge extension), every rotation axis."""
    rng = np.random.default_rng([seed, nd, 7 if axis is None else axis])
    src_shape = (37, 41) if nd == 2 else (13, 29, 33)
    out_shape = (31, 35) if nd == 2 else (17, 23, 19)
    view = (rng.uniform(0, 4000, src_shape)).astype(dtype)
    m = _matrix(rng, nd, src_shape, out_shape, axis)
    region = source_region(m, out_shape, src_shape, order)
    assert region is not None
    start = [r.start for r in region]
    crop = view[region]
    ours = warp_values(crop, start, m, out_shape, order)
    ref = resample_affine(crop, start, m, out_shape, order)
    assert ours.dtype == np.float32 and ours.shape == out_shape
    inside = np.broadcast_to(inside_mask(source_coordinates(m, out_shape), src_shape), out_shape)
    assert 0.1 < inside.mean() < 1.0  # part of the output lies beyond the view: edge extension is tested
    if order == 0:
        np.testing.assert_array_equal(ours, ref)
    else:
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * 4000)
        assert np.abs(ours - ref).max() < 2e-3  # float32 rounding of values up to 4000
        assert not np.allclose(ours % 1, 0)  # really interpolated


def test_singleton_axis_plane_rotated_in_plane():
    """A 2D plane stored as z == 1, rotated about z: samples at |z| <= 0.5 use the plane (scipy's edge rule)."""
    rng = np.random.default_rng(3)
    plane = rng.uniform(0, 100, (1, 40, 50)).astype(np.float32)
    lin = np.eye(3)
    lin[1:, 1:] = _rotation(2, rng)
    m = np.eye(4)
    m[:3, :3] = lin @ np.diag([0.25, 1.0, 1.0])
    m[:3, 3] = [-0.5, 20, 25] - m[:3, :3] @ [2, 15, 15]
    out_shape = (5, 31, 31)
    np.testing.assert_allclose(warp_values(plane, [0, 0, 0], m, out_shape),
                               resample_affine(plane, [0, 0, 0], m, out_shape), rtol=1e-5, atol=1e-3)


class ArrayReader:
    def __init__(self, array):
        self.array = array

    def __call__(self, region):
        return self.array[region]


class _Content:
    def __init__(self, weights, matrix):
        self.weights, self.matrix = weights, matrix

    def __call__(self):
        return self.weights, self.matrix


def _sources(rng, with_content):
    """Three views of a 3D scene: two rotated (about two axes, scaled like anisotropic z) and one shifted."""
    out = []
    for k, (rot, t, inten) in enumerate([
        (Rotation.from_euler("y", 0.7).as_matrix() @ np.diag([2.5, 1, 1]), (4.0, 3.0, -6.0), (1.0, 0.0)),
        (Rotation.from_euler("zx", [0.3, -1.1]).as_matrix() @ np.diag([2.0, 1.1, 0.9]), (30.0, 2.0, 40.0), (0.8, 12.0)),
        (np.eye(3), (2.3, -1.6, 5.4), (1.0, 0.0)),
    ]):
        arr = rng.uniform(0, 1000, (14, 40, 44)).astype(np.uint16 if k == 1 else np.float32)
        aff = np.eye(4)
        aff[:3, :3] = rot
        aff[:3, 3] = t
        content = None
        if with_content:
            weights = ndi.gaussian_filter(rng.uniform(0, 1, (5, 10, 11)), 1).astype(np.float32)
            to_view = np.diag([14 / 5, 4.0, 4.0, 1.0])  # a coarse grid over the view, like a pyramid level
            content = _Content(weights, to_view)
        out.append(FusionSource(k, arr.shape, aff, ArrayReader(arr), inten, dtype=arr.dtype, content=content))
    return out


@pytest.mark.parametrize("blending,interpolation,content", [
    ("cosine", "linear", False), ("average", "linear", False), ("cosine", "nearest", False),
    ("cosine", "linear", True), ("max", "linear", False), ("first", "nearest", False)])
def test_fusion_of_rotated_views_equals_the_scipy_path(blending, interpolation, content):
    rng = np.random.default_rng(11)
    sources = _sources(rng, content)
    kw = dict(origin=(-10.0, -8.0, -30.0), spacing=(1.5, 1.0, 1.2), shape=(33, 51, 71), chunks=(9, 20, 33),
              blending=blending, interpolation=interpolation, blend_range=12.0, dtype=np.float32)
    fast = fuse_sources(sources, fast_path=True, **kw).compute(scheduler="threads")
    ref = fuse_sources(sources, fast_path=False, **kw).compute(scheduler="threads")
    covered = ref != 0
    assert covered.mean() > 0.3
    np.testing.assert_array_equal(fast != 0, covered)  # the same samples count
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=2e-3)


def test_rotated_views_do_not_go_through_scipy(monkeypatch):
    """With the fast path on, no rotated view is resampled by scipy (this is what makes fusion ~5x faster)."""
    rng = np.random.default_rng(5)
    sources = _sources(rng, True)

    def refuse(*args, **kwargs):
        raise AssertionError("scipy.ndimage resampling used on the fast path")

    monkeypatch.setattr(ndi, "affine_transform", refuse)
    monkeypatch.setattr(ndi, "map_coordinates", refuse)
    for blending in ("cosine", "max"):
        out = fuse_sources(sources, origin=(0, 0, 0), spacing=1.0, shape=(20, 30, 30), chunks=(10, 15, 30),
                           blending=blending, dtype=np.float32).compute(scheduler="sync")
        assert (out > 0).mean() > 0.3


def test_blend_warped_skips_outside_samples_even_with_nan_at_the_edge():
    view = np.ones((6, 20, 20), np.float32)
    view[:, :, -1] = np.nan  # the view's own last column: NaN there stays, nothing leaks beyond
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("z", 0.2).as_matrix()
    num = np.zeros((6, 30, 30), np.float32)
    den = np.zeros_like(num)
    blend_warped(view, [0, 0, 0], m, view.shape, num, den, cosine=([2, 2, 2], [0, 0, 0]), floor=1e-6)
    inside = np.broadcast_to(inside_mask(source_coordinates(m, num.shape), view.shape), num.shape)
    assert np.array_equal(den > 0, inside)
    np.testing.assert_array_equal(num[~inside], 0)
    finite = inside & np.isfinite(num)
    np.testing.assert_allclose(num[finite] / den[finite], 1.0, rtol=1e-5)


def test_warp_is_several_times_faster_than_scipy():
    """The point of the module (benchmarks/bench_affine.py measures it: ~5x); generous here for busy machines."""
    rng = np.random.default_rng(2)
    src_shape, out_shape = (40, 120, 120), (32, 96, 96)
    view = rng.integers(0, 4000, src_shape).astype(np.uint16)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("y", np.pi / 4).as_matrix().T @ np.diag([1 / 3, 1, 1])
    m[:3, 3] = (np.asarray(src_shape) - 1) / 2 - m[:3, :3] @ ((np.asarray(out_shape) - 1) / 2)
    region = source_region(m, out_shape, src_shape)
    crop, start = view[region], [r.start for r in region]
    warp_values(crop, start, m, out_shape)  # compile / load
    t_fast, t_scipy = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        warp_values(crop, start, m, out_shape)
        t1 = time.perf_counter()
        resample(crop, start, m, out_shape, fast=False)
        t2 = time.perf_counter()
        t_fast.append(t1 - t0)
        t_scipy.append(t2 - t1)
    assert min(t_scipy) > 2.5 * min(t_fast), (min(t_scipy), min(t_fast))
