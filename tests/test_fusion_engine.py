"""Chunked fusion vs a whole-tile reference (scipy affine_transform + numpy blending)."""

from __future__ import annotations

import pickle
import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from tilefuse.errors import FusionError, ImageDataError, TilefuseError
from tilefuse.fusion.engine import (
    EDGE_WEIGHT,
    FusionSource,
    fuse_sources,
    plan_chunks,
    source_world_boxes,
)
from tilefuse.geometry.boxes import boxes_intersecting


class ArrayReader:
    """Reads regions of an in-memory array (fine for the threaded scheduler)."""

    def __init__(self, array):
        self.array = array

    def __call__(self, region):
        return self.array[region]


class PatternReader:
    """Synthesises a smooth pattern on the fly: tiny when pickled, no stored pixels."""

    def __init__(self, offset, dtype="float32"):
        self.offset = tuple(offset)
        self.dtype = dtype

    def __call__(self, region):
        axes = [np.arange(s.start, s.stop, dtype=np.float32) + o for s, o in zip(region, self.offset)]
        out = np.zeros([len(a) for a in axes], dtype=np.float32)
        for d, a in enumerate(axes):
            shape = [1] * len(axes)
            shape[d] = len(a)
            out += np.sin(a / 17.0 + d).reshape(shape)
        return out.astype(self.dtype)


def _affine(lin=None, t=(0, 0)):
    nd = len(t)
    m = np.eye(nd + 1)
    if lin is not None:
        m[:nd, :nd] = lin
    m[:nd, nd] = t
    return m


def _source(key, array, affine, intensity=(1.0, 0.0)):
    return FusionSource(key, array.shape, affine, ArrayReader(array), intensity, dtype=array.dtype)


def reference_fuse(tiles, origin, spacing, shape, *, blending="cosine", blend_range=40.0, border=0.0,
                   order=1, fill=0.0, contents=None):
    """Whole-tile reference, written independently of tilefuse.fusion.

    ``tiles`` is a list of (array, affine, (a, b)); ``contents`` optionally one
    weight image per tile on the tile's own grid.  Returns float64.
    """
    nd = len(shape)
    a_out = _affine(np.diag(np.broadcast_to(spacing, (nd,)).astype(float)), origin)
    grid = np.indices(shape, dtype=np.float64).reshape(nd, -1)
    num = np.zeros(shape)
    den = np.zeros(shape)
    acc = np.full(shape, np.nan)
    for k, (arr, aff, (ia, ib)) in enumerate(tiles):
        m = np.linalg.inv(aff) @ a_out
        vals = ndi.affine_transform(arr.astype(np.float64), m[:nd, :nd], offset=m[:nd, nd],
                                    output_shape=shape, order=order, mode="constant", cval=np.nan)
        valid = ~np.isnan(vals)
        vals = np.where(valid, ia * vals + ib, 0.0)
        y = (m[:nd, :nd] @ grid + m[:nd, nd:]).reshape((nd,) + tuple(shape))
        scale = np.linalg.norm(aff[:nd, :nd], axis=0)
        w = np.ones(shape)
        for d in range(nd):
            n = arr.shape[d]
            r, b = blend_range / scale[d], border / scale[d]
            dist = np.minimum(y[d] - b, (n - 1) - y[d] - b)
            ramp = np.where(dist < r, 0.5 * (1 + np.cos((1 - dist / r) * np.pi)), 1.0)
            w *= np.maximum(np.where(dist <= 0, 0.0, ramp), EDGE_WEIGHT)  # floored per axis
        if blending == "average":
            w = np.ones(shape)
        if contents is not None:
            c = ndi.affine_transform(contents[k].astype(np.float64), m[:nd, :nd], offset=m[:nd, nd],
                                     output_shape=shape, order=1, mode="nearest")
            w = w * np.maximum(c, EDGE_WEIGHT)
        w = np.where(valid, w, 0.0)
        if blending in ("cosine", "average"):
            num += w * vals
            den += w
        elif blending == "max":
            acc = np.where(valid, np.fmax(acc, vals), acc)
        else:
            acc = np.where(np.isnan(acc) & valid, vals, acc)
    if blending in ("cosine", "average"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), fill)
    return np.where(np.isnan(acc), fill, acc)


def _mosaic_2d(rng, grid=(3, 3), tile=(40, 50), step=(32, 41), subpixel=True):
    tiles = []
    for i in range(grid[0]):
        for j in range(grid[1]):
            arr = rng.uniform(0, 1000, tile).astype(np.float32)
            t = np.array([i * step[0], j * step[1]], dtype=float)
            if subpixel:
                t += rng.uniform(-0.5, 0.5, 2)
            tiles.append((arr, _affine(t=t), (1.0, 0.0)))
    return tiles


def _fuse(tiles, **kw):
    sources = [_source(k, arr, aff, inten) for k, (arr, aff, inten) in enumerate(tiles)]
    return fuse_sources(sources, **kw)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("order", [1, 0])
def test_2d_translation_mosaic_matches_reference(fast, order):
    rng = np.random.default_rng(1)
    tiles = _mosaic_2d(rng)
    origin, shape = (-2.0, -3.0), (110, 140)
    interp = "linear" if order else "nearest"
    fused = _fuse(tiles, origin=origin, spacing=1.0, shape=shape, chunks=(23, 31), dtype=np.float32,
                  blend_range=12.0, interpolation=interp, fast_path=fast).compute(scheduler="threads")
    ref = reference_fuse(tiles, origin, 1.0, shape, blend_range=12.0, order=order)
    np.testing.assert_allclose(fused, ref, rtol=2e-5, atol=2e-3)
    assert fused.dtype == np.float32
    assert (fused[:2] == 0).all() and (fused[5:100, 5:130] > 0).all()


@pytest.mark.parametrize("fast", [True, False])
def test_3d_mosaic_with_rotated_scaled_view(fast):
    rng = np.random.default_rng(2)
    tiles = []
    aniso = np.diag([2.5, 1.0, 1.0])
    for i in range(2):
        for j in range(2):
            arr = rng.uniform(0, 500, (8, 30, 34)).astype(np.float32)
            t = (0.3, i * 24 + rng.uniform(-0.5, 0.5), j * 27 + rng.uniform(-0.5, 0.5))
            tiles.append((arr, _affine(aniso, t), (1.0, 0.0)))
    rot = Rotation.from_euler("zyx", [0.4, 0.1, -0.2]).as_matrix() @ np.diag([2.2, 0.9, 1.3])
    arr = rng.uniform(0, 500, (7, 20, 22)).astype(np.float32)
    tiles.append((arr, _affine(rot, (5.0, 20.0, 22.0)), (0.5, 10.0)))
    origin, spacing, shape = (0.0, -1.0, -1.0), (2.5, 1.0, 1.0), (9, 58, 64)
    fused = _fuse(tiles, origin=origin, spacing=spacing, shape=shape, chunks=(4, 13, 17),
                  dtype=np.float32, blend_range=10.0, fast_path=fast).compute(scheduler="threads")
    ref = reference_fuse(tiles, origin, spacing, shape, blend_range=10.0)
    np.testing.assert_allclose(fused, ref, rtol=2e-5, atol=2e-3)
    # the rotated view really contributes: without it the result differs
    without = reference_fuse(tiles[:4], origin, spacing, shape, blend_range=10.0)
    assert np.abs(without - ref).max() > 1.0


@pytest.mark.parametrize("slab_voxels", [None, 40])
@pytest.mark.parametrize("blending", ["cosine", "average"])
def test_3d_translation_fast_path_in_slabs_matches_reference(monkeypatch, slab_voxels, blending):
    """The translation path (separable taps, folded weights, slab by slab) equals the reference,
    uint16 input and intensity corrections included."""
    from tilefuse.fusion import engine

    if slab_voxels is not None:  # several slabs per chunk, the last one partial
        monkeypatch.setattr(engine, "_SLAB_VOXELS", slab_voxels)
    rng = np.random.default_rng(12)
    tiles = []
    for i in range(2):
        for j in range(2):
            arr = rng.integers(0, 4000, (9, 26, 30)).astype(np.uint16)
            t = (rng.uniform(-0.5, 0.5), i * 20 + rng.uniform(-0.5, 0.5), j * 23 + rng.uniform(-0.5, 0.5))
            inten = (1.0, 0.0) if (i, j) != (1, 0) else (1.5, -20.0)
            tiles.append((arr, _affine(t=t), inten))
    tiles.append((rng.integers(0, 4000, (6, 10, 12)).astype(np.uint16), _affine(t=(2.0, 14.0, 17.0)),
                  (0.8, 0.0)))  # integral shift: the no-tap axes
    origin, shape = (-1.0, -1.0, -1.0), (11, 48, 55)
    fused = _fuse(tiles, origin=origin, spacing=1.0, shape=shape, chunks=(5, 20, 24), dtype=np.float32,
                  blend_range=8.0, blending=blending).compute(scheduler="threads")
    ref = reference_fuse([(a.astype(np.float64), m, k) for a, m, k in tiles], origin, 1.0, shape,
                         blending=blending, blend_range=8.0)
    np.testing.assert_allclose(fused, ref, rtol=2e-5, atol=2e-2)
    assert (fused[2:-2, 3:-3, 3:-3] > 0).all()


@pytest.mark.parametrize("slab_voxels", [None, 300])
def test_isotropic_output_of_anisotropic_views_matches_reference(monkeypatch, slab_voxels):
    """z voxels 3x coarser, fused on an isotropic grid: the diagonal (scaling) fast path."""
    from tilefuse.fusion import engine

    if slab_voxels is not None:
        monkeypatch.setattr(engine, "_SLAB_VOXELS", slab_voxels)

    def no_scipy(*args, **kwargs):
        raise AssertionError("an axis-aligned scaling must not take the general affine path")

    monkeypatch.setattr("tilefuse.fusion.resample.resample_affine", no_scipy)
    rng = np.random.default_rng(13)
    tiles = []
    for j in range(3):
        arr = rng.integers(0, 3000, (6, 22, 26)).astype(np.uint16)
        t = (rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), j * 20 + rng.uniform(-0.5, 0.5))
        tiles.append((arr, _affine(np.diag([3.0, 1.0, 1.0]), t), (1.0, 0.0) if j != 1 else (1.2, 5.0)))
    origin, shape = (-0.5, -1.0, -1.0), (17, 24, 70)
    for blending in ("cosine", "average"):
        fused = _fuse(tiles, origin=origin, spacing=1.0, shape=shape, chunks=(6, 11, 29), dtype=np.float32,
                      blend_range=7.0, blending=blending).compute(scheduler="threads")
        ref = reference_fuse([(a.astype(np.float64), m, k) for a, m, k in tiles], origin, 1.0, shape,
                             blending=blending, blend_range=7.0)
        np.testing.assert_allclose(fused, ref, rtol=2e-5, atol=2e-2)
        assert (fused[2:14, 2:20, 2:-5] > 0).all()


class _Content:
    """Content weights of an in-memory tile, at full resolution (matrix = identity)."""

    def __init__(self, array, s1, s2):
        self.array, self.s1, self.s2 = array, s1, s2

    def __call__(self):
        from tilefuse.fusion.content import content_weights

        return content_weights(self.array, self.s1, self.s2), np.eye(self.array.ndim + 1)


@pytest.mark.parametrize("rotated", [False, True])
def test_content_based_weights_match_reference_and_favour_the_sharp_view(rotated):
    """Two views of one scene (as from two sides of a light sheet), each blurred on the half
    far from its side: content weights follow the reference and pick the sharp half of each."""
    from tilefuse.fusion.content import content_weights

    rng = np.random.default_rng(21)
    scene = ndi.gaussian_filter(rng.normal(size=(80, 120)), 1.0) * 300 + 1000
    blurred = ndi.gaussian_filter(scene, 2.5)
    left = np.concatenate([scene[:, :60], blurred[:, 60:]], axis=1).astype(np.float32)
    right = np.concatenate([blurred[:, :60], scene[:, 60:]], axis=1).astype(np.float32)
    aff_r = _affine(t=(0.0, 0.0))
    if rotated:  # the general (masked) path; the second view barely turned
        c, s = np.cos(0.001), np.sin(0.001)
        aff_r = _affine([[c, -s], [s, c]], (0.0, 0.0))
    tiles = [(left, _affine(t=(0.0, 0.0)), (1.0, 0.0)), (right, aff_r, (1.0, 0.0))]
    contents = [content_weights(t[0], 3.0, 6.0) for t in tiles]
    sources = [FusionSource(k, a.shape, aff, ArrayReader(a), dtype=a.dtype, content=_Content(a, 3.0, 6.0))
               for k, (a, aff, _) in enumerate(tiles)]
    shape = (80, 120)
    fused = fuse_sources(sources, origin=(0, 0), spacing=1, shape=shape, chunks=(30, 47), dtype=np.float32,
                         blend_range=10.0).compute(scheduler="threads")
    ref = reference_fuse(tiles, (0, 0), 1.0, shape, blend_range=10.0, contents=contents)
    np.testing.assert_allclose(fused, ref, rtol=2e-5, atol=2e-2)
    plain = reference_fuse(tiles, (0, 0), 1.0, shape, blend_range=10.0)
    inner = (slice(12, 68), slice(12, 108))
    err_content = np.abs(fused[inner] - scene[inner]).mean()
    err_plain = np.abs(plain[inner] - scene[inner]).mean()
    assert err_content < 0.6 * err_plain, (err_content, err_plain)


def test_downsampled_output_matches_reference():
    rng = np.random.default_rng(3)
    tiles = _mosaic_2d(rng, grid=(2, 2))
    origin, spacing, shape = (0.5, 0.25), (2.0, 3.0), (36, 30)
    fused = _fuse(tiles, origin=origin, spacing=spacing, shape=shape, chunks=(7, 8),
                  dtype=np.float64).compute()
    ref = reference_fuse(tiles, origin, spacing, shape)
    np.testing.assert_allclose(fused, ref, rtol=2e-5, atol=2e-3)


@pytest.mark.parametrize("blending", ["average", "max", "first"])
def test_modes_match_reference(blending):
    rng = np.random.default_rng(4)
    tiles = _mosaic_2d(rng, grid=(2, 3))
    shape = (80, 130)
    fused = _fuse(tiles, origin=(0, 0), spacing=1, shape=shape, chunks=(30, 30), blending=blending,
                  dtype=np.float32, fill_value=-1).compute()
    ref = reference_fuse(tiles, (0, 0), 1, shape, blending=blending, fill=-1)
    np.testing.assert_allclose(fused, ref, rtol=2e-5, atol=2e-3)


def test_modes_on_two_constant_tiles():
    a = np.full((10, 10), 10.0, np.float32)
    b = np.full((10, 10), 20.0, np.float32)
    tiles = [(a, _affine(t=(0, 0)), (1, 0)), (b, _affine(t=(0, 5)), (1, 0))]
    out = {m: _fuse(tiles, origin=(0, 0), spacing=1, shape=(10, 15), blending=m).compute()
           for m in ("average", "max", "first", "cosine")}
    assert out["average"].dtype == np.float32
    np.testing.assert_array_equal(out["average"][:, :5], 10)
    np.testing.assert_array_equal(out["average"][:, 5:10], 15)
    np.testing.assert_array_equal(out["average"][:, 10:], 20)
    np.testing.assert_array_equal(out["max"][:, 5:10], 20)
    np.testing.assert_array_equal(out["first"][:, 5:10], 10)
    np.testing.assert_array_equal(out["first"][:, 10:], 20)
    # cosine with range 40 over a 5-voxel overlap: a monotone hand-over, edges not black
    row = out["cosine"][5]
    # (weights are folded into the interpolation taps, so equal up to float32 rounding)
    np.testing.assert_allclose([row[0], row[-1]], [10, 20], rtol=1e-6)
    assert np.all(np.diff(row) >= -1e-5) and 10.5 < row[7] < 19.5


def test_constant_image_stays_constant():
    """Weights are normalised: overlapping views of a constant scene fuse to that constant."""
    rng = np.random.default_rng(5)
    tiles = []
    for i in range(3):
        for j in range(3):
            arr = np.full((6, 30, 30), 1234.0, np.float32)
            t = (0.0, i * 22 + rng.uniform(-1, 1), j * 22 + rng.uniform(-1, 1))
            tiles.append((arr, _affine(np.diag([2.0, 1, 1]), t), (1.0, 0.0)))
    rot = Rotation.from_euler("z", 0.3).as_matrix()
    tiles.append((np.full((5, 25, 25), 1234.0, np.float32), _affine(rot, (1.0, 20, 20)), (1.0, 0.0)))
    fused = _fuse(tiles, origin=(0, 0, 0), spacing=(2, 1, 1), shape=(6, 75, 75), chunks=(3, 16, 16),
                  dtype=np.uint16, blend_range=15).compute()
    inside = reference_fuse(tiles, (0, 0, 0), (2, 1, 1), (6, 75, 75)) > 0
    assert inside.mean() > 0.8
    np.testing.assert_array_equal(fused[inside], 1234)
    np.testing.assert_array_equal(fused[~inside], 0)


def test_single_tile_edges_are_not_black():
    arr = np.random.default_rng(6).uniform(1, 2, (20, 30)).astype(np.float32)
    fused = _fuse([(arr, _affine(t=(5, 7)), (1, 0))], origin=(5, 7), spacing=1, shape=(20, 30),
                  chunks=(8, 8)).compute()
    np.testing.assert_allclose(fused, arr, rtol=1e-6)


def test_dtype_clipping_never_wraps():
    arr = np.array([[300.0, -5.0, 254.6, 70000.0]], np.float32)
    tiles = [(arr, _affine(t=(0, 0)), (1, 0))]
    u8 = _fuse(tiles, origin=(0, 0), spacing=1, shape=(1, 4), dtype=np.uint8).compute()
    np.testing.assert_array_equal(u8, [[255, 0, 255, 255]])
    assert u8.dtype == np.uint8
    i16 = _fuse(tiles, origin=(0, 0), spacing=1, shape=(1, 4), dtype=np.int16).compute()
    np.testing.assert_array_equal(i16, [[300, -5, 255, 32767]])
    f32 = _fuse(tiles, origin=(0, 0), spacing=1, shape=(1, 4)).compute()  # default: input dtype
    assert f32.dtype == np.float32 and f32[0, 3] == 70000.0 and f32[0, 1] == -5.0
    # intensity correction can also push uint16 data out of range
    u16 = np.array([[60000, 10]], np.uint16)
    out = _fuse([(u16, _affine(t=(0, 0)), (2.0, -100.0))], origin=(0, 0), spacing=1, shape=(1, 2)).compute()
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[65535, 0]])


def test_default_dtype_is_common_input_type_and_probed_without_hint():
    a = np.ones((4, 4), np.uint8)
    b = np.ones((4, 4), np.uint16)
    srcs = [FusionSource(0, a.shape, _affine(t=(0, 0)), ArrayReader(a)),  # no dtype: probed
            FusionSource(1, b.shape, _affine(t=(0, 2)), ArrayReader(b), dtype=np.uint16)]
    assert fuse_sources(srcs, origin=(0, 0), spacing=1, shape=(4, 6)).dtype == np.uint16


def test_singleton_z_views_contribute():
    rng = np.random.default_rng(8)
    tiles2d = _mosaic_2d(rng, grid=(2, 2))
    ref2d = reference_fuse(tiles2d, (0, 0), 1, (72, 91), blend_range=10.0)
    srcs = []
    for k, (arr, aff, _) in enumerate(tiles2d):
        a3 = np.eye(4)
        a3[1:, 1:] = aff
        a3[0, 3] = 0.3  # the plane sits 0.3 off the output plane: still inside (+-0.5)
        srcs.append(FusionSource(k, (1,) + arr.shape, a3, ArrayReader(arr[None]), dtype=arr.dtype))
    for fast in (True, False):
        out = fuse_sources(srcs, origin=(0, 0, 0), spacing=1, shape=(1, 72, 91), chunks=(1, 20, 20),
                           blend_range=10.0, fast_path=fast).compute()
        np.testing.assert_allclose(out[0], ref2d, rtol=2e-5, atol=2e-3)
    # output planes 0.7 away from the data plane get nothing
    out = fuse_sources(srcs, origin=(-1.0, 0, 0), spacing=1, shape=(3, 72, 91), fill_value=-7,
                       dtype=np.float32).compute()
    np.testing.assert_array_equal(out[0], -7)
    np.testing.assert_array_equal(out[2], -7)
    assert (out[1, 5:60, 5:80] > 0).all()


def test_chunk_touching_no_source_is_fill_and_has_no_sources():
    arr = np.ones((16, 16), np.float32)
    srcs = [_source(0, arr, _affine(t=(0, 0)))]
    fused = fuse_sources(srcs, origin=(0, 0), spacing=1, shape=(64, 64), chunks=(16, 16), fill_value=9)
    out = fused.compute()
    np.testing.assert_array_equal(out[:16, :16], 1)
    assert (out[16:] == 9).all() and (out[:, 16:] == 9).all()
    plan = dict(plan_chunks(*source_world_boxes(srcs), fused.chunks, (0, 0), (1, 1)))
    assert list(plan[(0, 0)]) == [0]
    assert all(len(v) == 0 for k, v in plan.items() if k != (0, 0))


def test_graph_tasks_carry_only_intersecting_sources():
    n = 20  # 400 tiles of 32x32 on a 28-voxel step
    srcs = [FusionSource((i, j), (32, 32), _affine(t=(i * 28 + 0.3, j * 28 - 0.2)),
                         PatternReader((i * 28, j * 28)), dtype=np.float32)
            for i in range(n) for j in range(n)]
    shape = (n * 28 + 4, n * 28 + 4)
    fused = fuse_sources(srcs, origin=(0, 0), spacing=1, shape=shape, chunks=(32, 32))
    los, his = source_world_boxes(srcs)
    counts = []
    for idx, hits in plan_chunks(los, his, fused.chunks, (0, 0), (1, 1)):
        lo = np.array([i * 32 for i in idx], float)
        hi = np.minimum(lo + 31, np.array(shape) - 1)
        np.testing.assert_array_equal(hits, boxes_intersecting(los, his, lo, hi))
        counts.append(len(hits))
    assert len(counts) == fused.npartitions
    assert max(counts) <= 9 and min(counts) >= 1
    layer = fused.dask.layers[fused.name]
    sizes = [len(pickle.dumps(layer[k])) for k in list(layer.keys())]
    assert len(sizes) == fused.npartitions
    assert max(sizes) < 8000  # a few sources, no pixels
    # a chunk's result equals the fused whole at that place
    sub = fused[64:96, 128:160].compute()
    assert sub.shape == (32, 32) and np.isfinite(sub).all() and np.abs(sub).max() > 0.1


def test_deterministic_names():
    arr = np.ones((8, 8), np.float32)
    srcs = [_source(0, arr, _affine(t=(0, 0)))]
    kw = dict(origin=(0, 0), shape=(8, 8), chunks=4)
    assert fuse_sources(srcs, spacing=1, **kw).name == fuse_sources(srcs, spacing=1, **kw).name
    assert fuse_sources(srcs, spacing=1, **kw).name != fuse_sources(srcs, spacing=2, **kw).name
    assert fuse_sources(srcs, spacing=1, blending="max", **kw).name != fuse_sources(srcs, spacing=1, **kw).name


class _NullSink:
    def __setitem__(self, key, value):
        pass


def _peak_bytes(size):
    tile, step = 512, 480
    nt = -(-size // step)
    srcs = [FusionSource((i, j), (tile, tile), _affine(t=(i * step + 0.25, j * step + 0.5)),
                         PatternReader((i * step, j * step)), dtype=np.float32)
            for i in range(nt) for j in range(nt)]
    fused = fuse_sources(srcs, origin=(0, 0), spacing=1, shape=(size, size), chunks=(512, 512))
    tracemalloc.start()
    tracemalloc.reset_peak()
    with dask.config.set(scheduler="threads", num_workers=1):
        da.store(fused, _NullSink(), lock=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, fused.nbytes


def test_peak_memory_is_bounded_by_chunks():
    _peak_bytes(512)  # warm-up: first-call imports and caches inflate the first peak
    # One worker thread: the peak is one chunk's working set whatever the scheduling (with two,
    # whether both threads were at their peak at once decided it: 6.6 or 9.8 MB for the same
    # volume).  Take the smaller of two runs, and allow some jitter (a peak that grew with the
    # volume would be ~9x).
    small = min(_peak_bytes(1024)[0] for _ in range(2))
    large, nbytes = min(_peak_bytes(3072) for _ in range(2))  # 9x the voxels, same 512^2 chunks
    assert 0.6 * small < large < 1.5 * small
    assert large < 0.5 * nbytes  # the output (36 MiB) is never held at once


def test_errors_name_the_problem():
    arr = np.ones((8, 8), np.float32)
    src = _source("tileA", arr, _affine(t=(0, 0)))
    with pytest.raises(NotImplementedError, match="blending 'feather'"):
        fuse_sources([src], origin=(0, 0), spacing=1, shape=(8, 8), blending="feather")
    with pytest.raises(TilefuseError, match="interpolation 'cubic'"):
        fuse_sources([src], origin=(0, 0), spacing=1, shape=(8, 8), interpolation="cubic")
    with pytest.raises(FusionError, match="tileA: view is 2D but the output is 3D"):
        fuse_sources([src], origin=(0, 0, 0), spacing=1, shape=(1, 8, 8))
    with pytest.raises(FusionError, match="spacing"):
        fuse_sources([src], origin=(0, 0), spacing=0, shape=(8, 8))
    with pytest.raises(FusionError, match="tileB: affine"):
        FusionSource("tileB", (8, 8), np.zeros((3, 3)), ArrayReader(arr))
    bad = FusionSource("tileC", (8, 8), _affine(t=(0, 0)), lambda r: np.zeros((2, 2)), dtype=np.float32)
    with pytest.raises(ImageDataError, match="tileC: reader returned shape"):
        fuse_sources([bad], origin=(0, 0), spacing=1, shape=(8, 8)).compute()


def test_bad_values_beyond_a_view_do_not_leak():
    """Values outside a view get weight 0 even if its edge holds NaN (edge extension)."""
    a = np.ones((10, 10), np.float32)
    a[:, -1] = np.nan
    b = np.full((10, 10), 5.0, np.float32)
    tiles = [(a, _affine(t=(0, 0)), (1, 0)), (b, _affine(t=(0, 12)), (1, 0))]
    for fast in (True, False):
        out = _fuse(tiles, origin=(0, 0), spacing=1, shape=(10, 22), chunks=(10, 22), fill_value=-1,
                    fast_path=fast).compute()
        assert np.isnan(out[:, 9]).all()  # the view's own NaN stays
        np.testing.assert_array_equal(out[:, 10:12], -1)
        np.testing.assert_allclose(out[:, 12:], 5, rtol=1e-6)  # weights folded into the taps: rounding
    # a slightly rotated view goes through the masked (general) path
    c, s = np.cos(0.01), np.sin(0.01)
    tiles[0] = (a, _affine([[c, -s], [s, c]], (0, 0)), (1, 0))
    for fast in (True, False):
        out = _fuse(tiles, origin=(0, 0), spacing=1, shape=(10, 22), chunks=(10, 22), fill_value=-1,
                    fast_path=fast).compute()
        np.testing.assert_array_equal(out[:, 11], -1)
        np.testing.assert_allclose(out[:, 12:], 5, rtol=1e-6)
