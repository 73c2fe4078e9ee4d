"""The compiled translation kernel and normalisation equal the numpy path they replace, and fusion uses them."""

from __future__ import annotations

import numpy as np
import pytest

from tilefuse.fusion import engine
from tilefuse.fusion.engine import FusionSource, fuse_sources
from tilefuse.fusion.resample import resample_shift
from tilefuse.fusion.shift import blend_shifted, normalise_cast


def _numpy_blend(crop, start, shift, shape, order, profiles, intensity):
    """What the engine's numpy path adds: resample_shift with the weights in its taps, and the weights."""
    values = resample_shift(crop, start, shift, shape, order, axis_weights=profiles)
    w = np.ones(shape, dtype=np.float32)
    for d, p in enumerate(profiles):
        if p is not None:
            w = w * p.reshape((-1,) + (1,) * (len(shape) - d - 1))
    a, b = intensity
    return np.float32(a) * values + np.float32(b) * w, w


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("order", [1, 0])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32])
def test_kernel_equals_numpy_path_on_random_shifts(nd, order, dtype):
    """Random sub-voxel and integral shifts, crops that end before the taps (edge extension at a
    view's edge), boxes at the accumulators' edges and inside them, weights and intensity."""
    rng = np.random.default_rng(nd * 10 + order)
    for trial in range(40):
        crop = rng.integers(0, 3000, size=rng.integers(2, 12, size=nd)).astype(dtype)
        shape = tuple(int(n) for n in rng.integers(1, 14, size=nd))
        start = rng.integers(-3, 4, size=nd)
        shift = rng.uniform(-4.0, 6.0, size=nd)
        if trial % 4 == 0:
            shift = np.round(shift)  # integral: no interpolation on any axis
        elif trial % 4 == 1:
            shift[rng.integers(nd)] = np.round(shift[0])  # integral on one axis only
        profiles = [rng.uniform(0.0, 1.0, n).astype(np.float32) if rng.random() < 0.7 else None for n in shape]
        intensity = (1.0, 0.0) if trial % 3 else (1.5, -20.0)
        want_num, want_den = _numpy_blend(crop, start, shift, shape, order, profiles, intensity)
        # the box at the accumulators' low or high corner or inside, as in a chunk
        pad_lo = rng.integers(0, 3, size=nd)
        pad_hi = rng.integers(0, 3, size=nd)
        big = tuple(int(n + lo + hi) for n, lo, hi in zip(shape, pad_lo, pad_hi))
        box = tuple(slice(int(lo), int(lo) + n) for lo, n in zip(pad_lo, shape))
        num = np.full(big, 5.0, dtype=np.float32)  # accumulated onto, not overwritten
        den = np.full(big, 0.5, dtype=np.float32)
        blend_shifted(crop, start, shift, num, den, box=box, order=order, profiles=profiles, intensity=intensity)
        outside = np.ones(big, dtype=bool)
        outside[box] = False
        assert (num[outside] == 5.0).all() and (den[outside] == 0.5).all(), trial
        np.testing.assert_allclose(num[box] - 5.0, want_num, rtol=1e-5, atol=2e-3, err_msg=str(trial))
        np.testing.assert_allclose(den[box] - 0.5, want_den, rtol=1e-6, atol=1e-7, err_msg=str(trial))


def test_kernel_interpolates_exactly():
    """Ground truth: a linear ramp is reproduced by linear interpolation at any shift."""
    z, y, x = np.meshgrid(np.arange(6.0), np.arange(7.0), np.arange(9.0), indexing="ij")
    crop = (3 * z + 5 * y + 7 * x).astype(np.float32)
    num = np.zeros((3, 4, 5), dtype=np.float32)
    den = np.zeros_like(num)
    blend_shifted(crop, (0, 0, 0), (1.25, 0.5, 2.75), num, den)
    zz, yy, xx = np.meshgrid(np.arange(3) + 1.25, np.arange(4) + 0.5, np.arange(5) + 2.75, indexing="ij")
    np.testing.assert_allclose(num, 3 * zz + 5 * yy + 7 * xx, rtol=1e-6)
    assert (den == 1).all()


def test_kernel_checks_its_arguments():
    crop = np.zeros((4, 4), dtype=np.uint16)
    num = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        blend_shifted(crop, (0, 0), (0.5, 0.5), num[:, :2], np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="order"):
        blend_shifted(crop, (0, 0), (0.5, 0.5), num, num.copy(), order=3)
    with pytest.raises(ValueError, match="profiles"):
        blend_shifted(crop, (0, 0), (0.5, 0.5), num, num.copy(), profiles=[np.ones(2), None])


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_normalise_cast_equals_numpy(dtype):
    rng = np.random.default_rng(3)
    den = rng.uniform(0.0, 2.0, (7, 9, 11)).astype(np.float32)
    den[rng.random(den.shape) < 0.2] = 0.0
    num = (rng.uniform(-500.0, 70000.0, den.shape) * den).astype(np.float32)
    num.flat[:5] = den.flat[:5] * np.array([0.5, 1.5, 2.5, -0.5, 255.5], dtype=np.float32)  # ties: to even
    for fill in (0, 7.6, -3):
        got = normalise_cast(num, den, fill, dtype)
        want = engine._normalise(num.copy(), den.copy(), fill, dtype)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, want)


def test_fusion_takes_the_kernel_and_matches_the_numpy_path(monkeypatch):
    """A translated mosaic fused through the kernel equals the same fusion through the numpy
    slabs (the kernel disabled), and the kernel was really called: once per chunk, all its views at once."""
    from tilefuse.fusion import shift

    rng = np.random.default_rng(5)
    sources = []
    for i in range(2):
        for j in range(2):
            arr = rng.integers(0, 4000, (7, 30, 33)).astype(np.uint16)
            aff = np.eye(4)
            aff[:3, 3] = (rng.uniform(-0.5, 0.5), i * 24 + rng.uniform(-0.5, 0.5), j * 26 + rng.uniform(-0.5, 0.5))
            sources.append(FusionSource((i, j), arr.shape, aff, lambda r, arr=arr: arr[r],
                                        intensity=(1.2, 3.0) if i == j else (1.0, 0.0)))
    kw = dict(origin=(0.0, -1.0, -1.0), spacing=1.0, shape=(7, 56, 61), chunks=(4, 25, 27), blend_range=9.0)
    calls = []
    real = shift.fuse_shifted
    monkeypatch.setattr(shift, "fuse_shifted", lambda *a, **k: (calls.append(len(a[0])), real(*a, **k))[1])
    fused = fuse_sources(sources, **kw).compute(scheduler="sync")
    assert len(calls) == 2 * 3 * 3 and max(calls) == 4  # one call per chunk; the middle ones meet all 4 views
    fused32 = fuse_sources(sources, dtype=np.float32, **kw).compute(scheduler="sync")
    monkeypatch.setattr(engine, "_COMPILED_SHIFT", False)
    monkeypatch.setattr(engine, "_COMPILED_NORMALISE", ())
    ref32 = fuse_sources(sources, dtype=np.float32, **kw).compute(scheduler="sync")
    np.testing.assert_allclose(fused32, ref32, rtol=1e-5, atol=1e-2)
    assert np.abs(fused.astype(np.float64) - ref32).max() <= 0.5 + 1e-3  # uint16: rounded
    assert fused.dtype == np.uint16 and (fused[1:-1, 2:-2, 2:-2] > 0).all()


def _per_view_reference(sources, origin, shape, chunks, blend_range, order, dtype, slab_voxels):
    """The engine's former translation path, view by view: each view's inside box, region and weights
    (inside_box, source_region, cosine_profile), blend_shifted per view and slab, normalise_cast per slab."""
    from tilefuse.fusion.blending import cosine_profile
    from tilefuse.fusion.engine import EDGE_WEIGHT
    from tilefuse.fusion.resample import grid_affine, inside_box, source_region, split_affine

    out = np.empty(shape, dtype=dtype)
    starts = [np.arange(0, n, c) for n, c in zip(shape, chunks)]
    for start in np.array(np.meshgrid(*starts, indexing="ij")).reshape(len(shape), -1).T:
        cshape = tuple(min(c, n - s) for c, n, s in zip(chunks, shape, start))
        out_affine = grid_affine(origin, 1.0, start)
        views = []
        for src in sources:
            m = np.linalg.inv(src.affine) @ out_affine
            box = inside_box(m, cshape, src.shape)
            if box is None:
                continue
            bshape = tuple(b.stop - b.start for b in box)
            offset = split_affine(m)[1] + np.array([b.start for b in box], dtype=np.float64)
            mb = np.eye(len(shape) + 1)
            mb[:-1, -1] = offset
            region = source_region(mb, bshape, src.shape, order)
            profiles = [np.maximum(cosine_profile(np.arange(n, dtype=np.float64) + offset[d], src.shape[d],
                                                  blend_range, 0.0), np.float32(EDGE_WEIGHT))
                        for d, n in enumerate(bshape)]
            views.append((src.reader(region), [r.start for r in region], offset, box, profiles, src.intensity))
        step = max(1, slab_voxels // int(np.prod(cshape[1:])))
        for s0 in range(0, cshape[0], step):
            s1 = min(cshape[0], s0 + step)
            num = np.zeros((s1 - s0,) + cshape[1:], np.float32)
            den = np.zeros_like(num)
            for crop, crop_start, offset, box, profiles, intensity in views:
                z0, z1 = max(box[0].start, s0), min(box[0].stop, s1)
                if z0 >= z1:
                    continue
                shift = offset.copy()
                shift[0] += z0 - box[0].start
                sub = [profiles[0][z0 - box[0].start:z1 - box[0].start]] + profiles[1:]
                blend_shifted(crop, crop_start, shift, num, den, box=(slice(z0 - s0, z1 - s0),) + tuple(box[1:]),
                              order=order, profiles=sub, intensity=intensity)
            region = tuple(slice(int(a), int(a) + n) for a, n in zip(start, cshape))
            out[region][s0:s1] = normalise_cast(num, den, 0, dtype)
    return out


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("order", [1, 0])
def test_one_call_per_chunk_fuses_the_same_bits_as_view_by_view(monkeypatch, nd, order):
    """The chunk kernel (all views in one call, the plan worked out for all views at once) writes exactly
    the bits of the former view-by-view path: many small views per chunk at positions far from the
    origin (float64 rounding in play), several slabs per chunk, intensity corrections, gaps."""
    monkeypatch.setattr(engine, "_SLAB_VOXELS", 700)
    rng = np.random.default_rng(40 + nd + order)
    tile = (5, 23, 26)[-nd:]
    step = (4, 19, 21)[-nd:]
    far = np.array((0.0, 12345.0, -9876.0)[-nd:])
    sources = []
    grid = [(i, j) for i in range(3) for j in range(4)]
    for i, j in grid:
        if (i, j) == (1, 2):
            continue  # a hole: voxels no view covers take the fill value
        arr = rng.integers(0, 60000, tile).astype(np.uint16)
        pos = np.array((rng.uniform(-0.4, 0.4), i * step[-2], j * step[-1])[-nd:]) + rng.uniform(-0.5, 0.5, nd)
        if nd == 3:
            pos[0] = rng.uniform(-0.4, 0.4)
        aff = np.eye(nd + 1)
        aff[:nd, nd] = pos + far
        sources.append(FusionSource((i, j), arr.shape, aff, lambda r, arr=arr: arr[r],
                                    intensity=(1.1, -30.0) if (i + j) % 3 == 0 else (1.0, 0.0)))
    shape = tuple(int(n) for n in (7, 3 * step[-2] + 6, 4 * step[-1] + 6)[-nd:])
    chunks = (4, 17, 19)[-nd:]
    origin = tuple(far - 1.5)
    calls = []
    from tilefuse.fusion import shift

    real = shift.fuse_shifted
    monkeypatch.setattr(shift, "fuse_shifted", lambda *a, **k: (calls.append(len(a[0])), real(*a, **k))[1])
    for dtype in (np.uint16, np.float32):
        calls.clear()
        fused = fuse_sources(sources, origin=origin, spacing=1.0, shape=shape, chunks=chunks, blend_range=6.0,
                             interpolation=("nearest", "linear")[order], dtype=dtype).compute(scheduler="sync")
        n_chunks = int(np.prod([-(-n // c) for n, c in zip(shape, chunks)]))
        assert len(calls) == n_chunks and max(calls) >= 4
        want = _per_view_reference(sources, origin, shape, chunks, 6.0, order, dtype, 700)
        np.testing.assert_array_equal(fused, want)
        assert (fused == 0).any() and (fused > 100).mean() > 0.4  # mostly covered (3D: 5 of 7 planes)
