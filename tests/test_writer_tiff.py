"""TIFF writer: pixel-exact round trip, ImageJ/OME metadata, streaming, atomic rename."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

from tilefuse._outputs import partial_path
from tilefuse.errors import ImageDataError, OutputExistsError
from tilefuse.writers._atomic import atomic_output
from tilefuse.writers.tiff import write_tiff


def test_3d_imagej_round_trip_and_resolution(tmp_path):
    data = np.random.default_rng(0).integers(0, 65535, (7, 40, 30), dtype=np.uint16)
    path = write_tiff(
        da.from_array(data, chunks=(3, 40, 30)), tmp_path / "v.tif", voxel_size=(2.5, 0.5, 0.25)
    )
    assert not partial_path(path).exists()
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and not tif.is_bigtiff
        meta = tif.imagej_metadata
        assert meta["spacing"] == 2.5 and meta["unit"] == "um" and meta["slices"] == 7
        assert len(tif.pages) == 7
        page = tif.pages[0]
        # pixels per unit: x 1/0.25, y 1/0.5
        x_num, x_den = page.tags["XResolution"].value
        y_num, y_den = page.tags["YResolution"].value
        assert x_num / x_den == pytest.approx(4.0) and y_num / y_den == pytest.approx(2.0)
        np.testing.assert_array_equal(tif.asarray(), data)


def test_2d_and_czyx(tmp_path):
    plane = np.arange(12 * 9, dtype=np.float32).reshape(12, 9)
    write_tiff(plane, tmp_path / "p.tif", voxel_size=0.5)
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        assert len(tif.pages) == 1
        np.testing.assert_array_equal(tif.asarray(), plane)

    czyx = np.random.default_rng(1).integers(0, 255, (2, 5, 16, 12), dtype=np.uint8)
    write_tiff(da.from_array(czyx, chunks=(2, 2, 16, 12)), tmp_path / "c.tif", voxel_size=(3, 1, 1))
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["channels"] == 2 and tif.imagej_metadata["slices"] == 5
        assert tif.series[0].axes == "ZCYX"
        # ImageJ order: z outer, channel inner
        np.testing.assert_array_equal(tif.asarray(), czyx.transpose(1, 0, 2, 3))


def test_ome_fallback_for_other_dtypes_and_bigtiff(tmp_path):
    data = np.random.default_rng(2).integers(-5, 5, (3, 10, 8)).astype(np.int32)
    write_tiff(data, tmp_path / "i.tif", voxel_size=(2.0, 0.5, 0.5), bigtiff=True)
    with tifffile.TiffFile(tmp_path / "i.tif") as tif:
        assert tif.is_bigtiff and tif.is_ome and not tif.is_imagej
        assert 'PhysicalSizeZ="2.0"' in tif.ome_metadata
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1 / 0.5e-4)  # pixels per centimetre
        assert tif.pages[0].tags["ResolutionUnit"].value == 3
        np.testing.assert_array_equal(tif.series[0].asarray(), data)


def test_bigtiff_chosen_by_size(tmp_path, monkeypatch):
    import tilefuse.writers.tiff as tiffmod

    monkeypatch.setattr(tiffmod, "BIGTIFF_THRESHOLD", 1000)
    data = np.ones((4, 20, 20), np.uint16)  # 3200 bytes
    write_tiff(data, tmp_path / "b.tif")
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        assert tif.is_bigtiff
        np.testing.assert_array_equal(tif.series[0].asarray(), data)


def test_streams_one_z_slab_at_a_time(tmp_path):
    computed = []

    def block(x, block_info=None):
        computed.append(block_info[0]["array-location"][0])
        return x

    image = da.ones((8, 16, 16), dtype=np.uint16, chunks=(2, 16, 16)).map_blocks(block, dtype=np.uint16)
    write_tiff(image, tmp_path / "s.tif")
    # every z block computed exactly once, in order
    assert computed == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_failed_write_leaves_no_final_file(tmp_path):
    def fail(x, block_info=None):
        if block_info[0]["array-location"][0][0] >= 4:
            raise RuntimeError("boom")
        return x

    image = da.zeros((8, 8, 8), dtype=np.uint16, chunks=(2, 8, 8)).map_blocks(fail, dtype=np.uint16)
    with pytest.raises(RuntimeError, match="boom"):
        write_tiff(image, tmp_path / "f.tif")
    assert not (tmp_path / "f.tif").exists()
    # a rerun starts from scratch and succeeds
    write_tiff(np.zeros((8, 8, 8), np.uint16), tmp_path / "f.tif")
    assert not partial_path(tmp_path / "f.tif").exists()


def test_overwrite_and_errors(tmp_path):
    path = tmp_path / "o.tif"
    write_tiff(np.zeros((4, 4), np.uint8), path)
    with pytest.raises(OutputExistsError, match="o.tif"):
        write_tiff(np.ones((4, 4), np.uint8), path)
    write_tiff(np.ones((4, 4), np.uint8), path, overwrite=True)
    assert tifffile.imread(path)[0, 0] == 1
    with pytest.raises(ImageDataError, match="yx, zyx or czyx"):
        write_tiff(np.zeros((2, 2, 2, 2, 2)), tmp_path / "x.tif")
    with pytest.raises(ImageDataError, match="voxel_size"):
        write_tiff(np.zeros((2, 4, 4), np.uint8), tmp_path / "x.tif", voxel_size=(1, 1))


def test_atomic_output_directory_and_errors(tmp_path):
    target = tmp_path / "d"
    with atomic_output(target) as tmp:
        assert tmp == tmp_path / "d.partial"
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1" and not tmp.exists()
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "e") as tmp:
            tmp.write_text("half")
            raise RuntimeError("fail")
    assert not (tmp_path / "e").exists() and (tmp_path / "e.partial").read_text() == "half"
    # resume keeps the partial, default discards it
    with atomic_output(tmp_path / "e", resume=True) as tmp:
        assert tmp.read_text() == "half"
    assert (tmp_path / "e").read_text() == "half"
    # A stale partial output is discarded only if tilefuse's marker says tilefuse wrote it.
    (tmp_path / "g.partial").write_text("stale")
    with pytest.raises(OutputExistsError, match="not written by tilefuse"):
        with atomic_output(tmp_path / "g"):
            pass
    assert (tmp_path / "g.partial").read_text() == "stale"
    (tmp_path / "g.partial.tilefuse").write_text("{}")
    with atomic_output(tmp_path / "g") as tmp:
        assert not tmp.exists()
        tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.glob("g*")) == ["g"]
    with atomic_output(target, overwrite=True) as tmp:
        tmp.write_text("file replaces dir")
    assert target.read_text() == "file replaces dir"
