"""Fusing projects: against ground truth, multi-channel/timepoint layout, outputs and metadata."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse
from tilefuse import errors, open_project
from tilefuse.geometry import Box
from tilefuse.sample_data import make_mosaic

# Every OME-Zarr image a test here leaves behind is validated (ome-zarr-models) and read back (ome-zarr-py, zarr).
pytestmark = pytest.mark.usefixtures("every_ngff_output_checked")



def _project_at_truth(tmp_path, mosaic, **kw):
    min_res = min(mosaic.voxel_size)
    vs = tuple(mosaic.voxel_size)
    if mosaic.ndim == 2:
        vs = (1.0,) + vs
    return tilefuse.write_project(tmp_path / "dataset.xml", [mosaic.tile(i) for i in range(mosaic.n_tiles)],
                                  mosaic.true_positions * min_res, voxel_size=vs, factors=[(1, 1, 1)], **kw)


def test_2d_fusion_equals_ground_truth_without_seams(tmp_path):
    mosaic = make_mosaic((2, 3), (128, 128), 0.2, max_offset=5.0, noise=False, illumination=False,
                         dtype=np.float32, seed=7)
    project = _project_at_truth(tmp_path, mosaic)
    lo, hi = mosaic.bounds()
    box = Box.from_arrays([0, np.ceil(lo[0]) + 2, np.ceil(lo[1]) + 2], [0, np.floor(hi[0]) - 2, np.floor(hi[1]) - 2])
    plan = tilefuse.plan_fusion(project, bounding_box=box, dtype=np.float32)
    fused = plan.to_dask()[0, 0, 0].compute()
    region = tuple(slice(int(a), int(b) + 1) for a, b in zip(box.lo[1:], box.hi[1:]))
    truth = mosaic.ground_truth(region)
    assert fused.shape == truth.shape
    err = np.abs(fused - truth)
    signal = truth.max() - truth.min()
    # where tiles overlap (near tile borders) vs inside single tiles
    coverage = np.zeros(fused.shape, int)
    for p in mosaic.true_positions:
        y0, x0 = np.ceil(p - np.asarray(box.lo[1:])).astype(int)
        coverage[max(y0, 0): max(y0 + 128, 0), max(x0, 0): max(x0 + 128, 0)] += 1
    seam, inside = err[coverage > 1].mean(), err[coverage == 1].mean()
    assert err.mean() < 0.01 * signal, (err.mean(), signal)
    assert seam < 3 * inside + 0.002 * signal, (seam, inside)


def test_misregistered_fusion_is_worse(tmp_path):
    """The same comparison with stage positions has a clearly larger error: the test can fail."""
    mosaic = make_mosaic((1, 2), (96, 96), 0.25, max_offset=6.0, noise=False, illumination=False,
                         dtype=np.float32, seed=2)
    good = _project_at_truth(tmp_path / "a", mosaic)
    bad = tilefuse.write_project(tmp_path / "b" / "d.xml", [mosaic.tile(i) for i in range(2)],
                                 mosaic.stage_positions, voxel_size=(1, 1, 1), factors=[(1, 1, 1)])
    box = Box.from_arrays([0, 10, 10], [0, 80, 150])
    region = (slice(10, 81), slice(10, 151))
    truth = mosaic.ground_truth(region)
    e_good = np.abs(tilefuse.plan_fusion(good, bounding_box=box, dtype=np.float32).to_dask()[0, 0, 0] - truth).mean()
    e_bad = np.abs(tilefuse.plan_fusion(bad, bounding_box=box, dtype=np.float32).to_dask()[0, 0, 0] - truth).mean()
    assert e_bad > 5 * e_good


def test_multichannel_multitimepoint_layout(tmp_path):
    images, chans, tps, tiles, pos = [], [], [], [], []
    for t in (0, 3):
        for c in (0, 1):
            for tile, x in ((0, 0.0), (1, 30.0)):
                images.append(np.full((4, 20, 40), 100 * (c + 1) + t, np.uint16))
                chans.append(c)
                tps.append(t)
                tiles.append(tile)
                pos.append((0, 0, x))
    project = tilefuse.write_project(tmp_path / "d.xml", images, pos, channels=chans, timepoints=tps,
                                     tiles=tiles, voxel_size=(2, 1, 1), factors=[(1, 1, 1)])
    plan = tilefuse.plan_fusion(project)
    fused = plan.to_dask().compute()
    assert fused.shape == (2, 2, 4, 20, 70)
    assert plan.voxel_size == (2.0, 1.0, 1.0)
    for ti, t in enumerate((0, 3)):
        for c in (0, 1):
            assert np.all(fused[ti, c] == 100 * (c + 1) + t)


def test_dtype_clipping_and_intensity_adjustment(tmp_path):
    image = np.full((1, 16, 16), 200, np.uint8)
    project = tilefuse.write_project(tmp_path / "d.xml", [image], [(0, 0, 0)], factors=[(1, 1, 1)])
    project.data.intensity_adjustments = {project.views[0]: (2.0, 10.0)}
    fused = tilefuse.fuse(project, intensity_adjustment=True).compute()
    assert fused.dtype == np.uint8 and np.all(fused == 255)  # 410 clipped, not wrapped to 154
    fused = tilefuse.fuse(project, intensity_adjustment=True, dtype=np.float32).compute()
    np.testing.assert_allclose(fused, 410, rtol=1e-5)


def test_named_bounding_box_and_errors(tmp_path):
    from tilefuse.project.model import BoundingBox

    image = np.arange(32 * 32, dtype=np.uint16).reshape(1, 32, 32)
    project = tilefuse.write_project(tmp_path / "d.xml", [image], [(0, 0, 0)], factors=[(1, 1, 1)])
    project.data.bounding_boxes = [BoundingBox("crop", (0, 4, 8), (0, 9, 19))]
    project.save()
    project = open_project(tmp_path / "d.xml")
    fused = tilefuse.fuse(project, bounding_box="crop").compute()
    np.testing.assert_array_equal(fused[0, 0, 0], image[0, 4:10, 8:20])
    with pytest.raises(errors.FusionError, match="no bounding box named 'nope'"):
        tilefuse.plan_fusion(project, bounding_box="nope")


def test_write_ome_zarr_tiff_and_bdv(tmp_path):
    mosaic = make_mosaic((1, 2), (64, 64), 0.2, seed=1)
    project = _project_at_truth(tmp_path, mosaic)
    plan = tilefuse.plan_fusion(project)
    expected = plan.to_dask().compute()

    out = tilefuse.write_fused(plan, tmp_path / "f.ome.zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(out)))())
    data = nodes[0].data
    np.testing.assert_array_equal(np.asarray(data[0])[:, :, 0] if data[0].ndim == 5 else np.asarray(data[0]),
                                  expected[:, :, 0])
    ms = nodes[0].metadata
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "y", "x"]

    import tifffile

    tif = tilefuse.write_fused(plan, tmp_path / "f.tif")
    np.testing.assert_array_equal(tifffile.imread(tif), expected[0, 0, 0])

    bdv = tilefuse.write_fused(plan, tmp_path / "fused" / "f.xml")
    fused_project = open_project(bdv)
    np.testing.assert_array_equal(fused_project.image(fused_project.views[0]).compute(), expected[0, 0])
    with pytest.raises(errors.TilefuseError, match="already exists"):
        tilefuse.write_fused(plan, tmp_path / "f.ome.zarr", resume=False)


@pytest.mark.parametrize("fmt", ["hdf5", "n5", "zarr", "tiff"])
def test_fusion_from_every_loader(tmp_path, fmt):
    """3D, anisotropic, sub-voxel positions: every loader gives the same fused volume."""
    mosaic = make_mosaic((1, 1, 2), (12, 48, 48), 0.25, max_offset=3.0, seed=4)
    min_res = min(mosaic.voxel_size)
    tiles = [mosaic.tile(i) for i in range(2)]
    tilefuse.write_project(tmp_path / fmt / "d.xml", tiles, mosaic.true_positions * min_res,
                                     voxel_size=mosaic.voxel_size, format=fmt,
                                     factors=[(1, 1, 1), (1, 2, 2)], chunks=(4, 16, 16))
    reference = tilefuse.write_project(tmp_path / "ref" / "d.xml", [np.asarray(t) for t in tiles],
                                       mosaic.true_positions * min_res, voxel_size=mosaic.voxel_size,
                                       factors=[(1, 1, 1)], chunks=(12, 48, 48))
    fused = tilefuse.fuse(open_project(tmp_path / fmt / "d.xml")).compute()
    expected = tilefuse.fuse(reference).compute()
    assert fused.shape[2] == 12 and fused.shape[-1] > 48
    np.testing.assert_array_equal(fused, expected)
    assert fused[0, 0].mean() > 0.5 * np.mean(tiles[0])


def test_interrupted_fusion_resumes_without_redoing_chunks(tmp_path, monkeypatch):
    from tilefuse.loaders._hdf5 import Hdf5Loader

    mosaic = make_mosaic((2, 2), (64, 64), 0.2, seed=9)
    project = _project_at_truth(tmp_path, mosaic)
    plan = tilefuse.plan_fusion(project, chunks=(32, 32))
    expected = plan.to_dask().compute()
    out = tmp_path / "f.ome.zarr"

    original = Hdf5Loader.read
    calls = {"n": 0}

    def flaky(self, view, level, region, **kwargs):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return original(self, view, level, region, **kwargs)

    monkeypatch.setattr(Hdf5Loader, "read", flaky)
    with pytest.raises(KeyboardInterrupt):
        tilefuse.write_fused(plan, out, shards=32)  # resumed per shard: a chunk each
    assert not out.exists(), "nothing under the final name after an interruption"
    assert (tmp_path / "f.ome.zarr.partial").exists()

    calls["n"] = -10**9  # no more failures; count the reads of the resumed run
    start = calls["n"]
    tilefuse.write_fused(plan, out, shards=32)  # resumed per shard: a chunk each
    resumed_reads = calls["n"] - start
    calls["n"] = -10**9
    tilefuse.write_fused(plan, tmp_path / "fresh.ome.zarr", shards=32)
    fresh_reads = calls["n"] + 10**9
    assert resumed_reads < fresh_reads, (resumed_reads, fresh_reads)
    import zarr

    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][...], expected[:, :, 0])


def test_missing_view_is_skipped_with_a_warning(tmp_path, caplog):
    mosaic = make_mosaic((1, 3), (64, 64), 0.25, seed=5)
    project = _project_at_truth(tmp_path, mosaic)
    gone = project.views[2]
    project.data.missing_views = {gone}
    project.save()
    project = open_project(tmp_path / "dataset.xml")
    assert gone not in project.views
    with caplog.at_level("WARNING", logger="tilefuse"):
        result = tilefuse.register(project)
    assert "1 missing views are skipped" in caplog.text
    assert len(result.groups.members) == 2 and len(result.links) == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="tilefuse"):
        fused = tilefuse.fuse(project).compute()
    assert "1 missing views are skipped" in caplog.text
    assert fused.shape[-1] < 3 * 64  # the missing tile's area is not part of the output


def test_channel_missing_at_one_timepoint_is_filled(tmp_path, caplog):
    images = [np.full((2, 8, 8), v, np.uint8) for v in (10, 20, 30)]
    project = tilefuse.write_project(tmp_path / "d.xml", images, [(0, 0, 0)] * 3, channels=[0, 1, 0],
                                     timepoints=[0, 0, 1], tiles=[0, 0, 0], factors=[(1, 1, 1)])
    assert project.missing_views == {tilefuse.ViewId(1, 1)}
    with caplog.at_level("WARNING", logger="tilefuse"):
        fused = tilefuse.fuse(project).compute()
    assert "1 missing views are skipped" in caplog.text
    assert fused.dtype == np.uint8 and fused.shape == (2, 2, 2, 8, 8)
    assert fused[0, 0].max() == 10 and fused[0, 1].max() == 20 and fused[1, 0].max() == 30
    assert fused[1, 1].max() == 0  # channel 1 was not acquired at timepoint 1


def test_content_based_fusion_of_a_project_prefers_each_views_sharp_side(tmp_path):
    """Two angles of one 3D scene, each blurred on the half far from its side, written as a
    BDV HDF5 project with a pyramid: content-based fusion recovers the scene far better."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    scene = ndi.gaussian_filter(rng.normal(size=(12, 96, 128)), 1.0) * 400 + 1200
    blurred = ndi.gaussian_filter(scene, (0.5, 3.0, 3.0))
    left = np.concatenate([scene[..., :64], blurred[..., 64:]], axis=-1)
    right = np.concatenate([blurred[..., :64], scene[..., 64:]], axis=-1)
    images = [np.round(v).astype(np.uint16) for v in (left, right)]
    project = tilefuse.write_project(tmp_path / "angles.xml", images, [(0, 0, 0), (0, 0, 0)],
                                     voxel_size=(2.0, 1.0, 1.0), angles=[0, 1], tiles=[0, 0],
                                     factors=((1, 1, 1), (1, 2, 2), (1, 4, 4)))
    plain = tilefuse.plan_fusion(project, dtype=np.float32).to_dask()[0, 0].compute()
    plan = tilefuse.plan_fusion(project, dtype=np.float32, content_based=True, content_sigmas=(6.0, 12.0))
    content = plan.to_dask()[0, 0].compute()
    assert content.shape == plain.shape == scene.shape
    inner = (slice(2, 10), slice(12, 84), slice(12, 116))
    err_content = np.abs(content[inner] - scene[inner]).mean()
    err_plain = np.abs(plain[inner] - scene[inner]).mean()
    assert err_content < 0.6 * err_plain, (err_content, err_plain)
    # the weights are computed once per view near 4 world units per voxel: the (1, 2, 2)
    # level, then 2x block means (z voxels are 2 units: 2 planes per weight voxel)
    src = plan.sources(project.views)[0]
    weights, to_source = src.content()
    assert weights.shape == (6, 24, 32)
    np.testing.assert_allclose(to_source @ [0, 0, 0, 1], [0.5, 1.5, 1.5, 1])  # block centres, level-0 voxels


def test_2d_views_in_different_planes_are_refused(tmp_path):
    """A 2D tile moved to z=7 would be fused into the plane of the others: refuse."""
    from tilefuse.demo import make_sample_project

    project = make_sample_project(tmp_path, grid=(1, 2), tile_shape=(32, 32), overwrite=True)
    lift = np.eye(4)
    lift[0, 3] = 7.0
    project.preconcatenate(project.views[1], lift, "moved to another plane")
    with pytest.raises(errors.FusionError, match="2 different z planes"):
        tilefuse.plan_fusion(project)


def test_a_view_far_from_the_others_is_named(tmp_path, caplog):
    """A typo in one transform makes the output enormous and empty: the warning names the view."""
    from tilefuse.demo import make_sample_project

    project = make_sample_project(tmp_path, grid=(2, 2), tile_shape=(32, 32), overwrite=True)
    typo = np.eye(4)
    typo[2, 3] = 5.0e7  # 50 million world units along x
    project.preconcatenate(project.views[3], typo, "typo")
    with caplog.at_level("WARNING", logger="tilefuse"):
        plan = tilefuse.plan_fusion(project)
    assert plan.shape[2] > 5e7
    assert str(project.views[3]) in caplog.text and "far from the others" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tilefuse"):
        tilefuse.plan_fusion(make_sample_project(tmp_path / "ok", grid=(2, 2), tile_shape=(32, 32)))
    assert "far from the others" not in caplog.text


def test_intensity_adjustment_without_adjustments_warns(tmp_path, caplog):
    from tilefuse.demo import make_sample_project

    project = make_sample_project(tmp_path, grid=(1, 2), tile_shape=(32, 32))
    with caplog.at_level("WARNING", logger="tilefuse"):
        tilefuse.plan_fusion(project, intensity_adjustment=True)
    assert "nothing to apply" in caplog.text
    caplog.clear()
    project.data.intensity_adjustments = {project.views[0]: (1.1, 0.0)}
    with caplog.at_level("WARNING", logger="tilefuse"):
        tilefuse.plan_fusion(project, intensity_adjustment=True)
    assert "1 of 2 views have no <IntensityAdjustments>" in caplog.text
