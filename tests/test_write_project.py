"""Making projects: write_project in every format, checked by independent readers; TIFF conversion."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import tifffile

import tilefuse
from tilefuse import errors, open_project
from tilefuse.convert import convert_tiffs, read_tile_configuration
from tilefuse.project import ViewId

# Every OME-Zarr image a test here leaves behind is validated (ome-zarr-models) and read back (ome-zarr-py, zarr).
pytestmark = pytest.mark.usefixtures("every_ngff_output_checked")



@pytest.fixture
def tiles():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 65535, (6, 40, 52), dtype=np.uint16) for _ in range(4)]


POSITIONS = [(0, 0, 0), (0, 0, 20.0), (0, 17.5, 0), (0, 17.5, 20.0)]  # physical, zyx


@pytest.mark.parametrize("fmt", ["hdf5", "n5", "zarr"])
def test_write_project_round_trip(tmp_path, tiles, fmt):
    project = tilefuse.write_project(
        tmp_path / "dataset.xml", tiles, POSITIONS, voxel_size=(2.0, 0.5, 0.5), format=fmt,
        factors=[(1, 1, 1), (1, 2, 2), (2, 4, 4)], chunks=(4, 16, 16), names={"channel": {0: "488"}},
    )
    assert len(project.views) == 4
    for tile, view in zip(tiles, project.views):
        np.testing.assert_array_equal(project.image(view).compute(), tile)
        # level 1 is the 2x2 block mean of level 0 (x, y only)
        lvl1 = project.image(view, 1).compute().astype(np.float64)
        expect = tile[:, :40, :52].reshape(6, 20, 2, 26, 2).mean(axis=(2, 4))
        np.testing.assert_allclose(lvl1, expect, atol=0.5 + 1e-9)
    # BigStitcher's chain: Translation to Regular Grid in front of calibration
    chain = project.transforms(ViewId(0, 1))
    assert [vt.name for vt in chain] == ["Translation to Regular Grid", "calibration"]
    np.testing.assert_allclose(np.diag(chain[1].matrix)[:3], [4.0, 1.0, 1.0])
    np.testing.assert_allclose(chain[0].matrix[:3, 3], [0, 0, 40.0])  # 20 µm / 0.5 µm
    np.testing.assert_allclose(project.transform(ViewId(0, 0), 2) @ [0, 0, 0, 1], [0.5 * 4, 1.5, 1.5, 1])
    assert project.entities("tile")[1].location == (0.0, 0.0, 20.0)
    assert project.entities("channel")[0].name == "488"
    text = (tmp_path / "dataset.xml").read_text()
    assert "<location>20.0 0.0 0.0</location>" in text  # written x y z


def test_hdf5_output_read_by_independent_readers(tmp_path, tiles):
    pytest.importorskip("pybdv")
    from pybdv.metadata import get_data_path, get_resolution

    tilefuse.write_project(tmp_path / "dataset.xml", tiles, POSITIONS, voxel_size=(2.0, 0.5, 0.5),
                           factors=[(1, 1, 1), (1, 2, 2)], chunks=(4, 16, 16))
    xml = str(tmp_path / "dataset.xml")
    assert get_resolution(xml, 0) == [2.0, 0.5, 0.5]  # pybdv reports z, y, x
    with h5py.File(tmp_path / "dataset.h5", "r") as f:
        np.testing.assert_array_equal(f["t00000/s02/0/cells"][...], tiles[2])
        np.testing.assert_array_equal(f["s00/resolutions"][...], [[1, 1, 1], [2, 2, 1]])  # x y z
    assert get_data_path(xml, return_absolute_path=True).endswith("dataset.h5")


def test_n5_and_zarr_read_by_zarr(tmp_path, tiles):
    import zarr

    tilefuse.write_project(tmp_path / "z" / "dataset.xml", tiles, POSITIONS, format="zarr",
                           factors=[(1, 1, 1)], chunks=(4, 16, 16))
    group = zarr.open_group(str(tmp_path / "z" / "dataset.ome.zarr" / "s3-t0.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][0, 0], tiles[3])
    assert group.attrs["ome"]["version"] == "0.5"  # Zarr v3, as BigStitcher-Spark writes it
    assert group.attrs["ome"]["multiscales"][0]["axes"][-1]["name"] == "x"


def test_read_projects_written_by_npy2bdv_and_pybdv(tmp_path):
    npy2bdv = pytest.importorskip("npy2bdv")
    pybdv = pytest.importorskip("pybdv")
    rng = np.random.default_rng(2)
    stacks = [rng.integers(0, 4000, (8, 32, 48), dtype=np.uint16) for _ in range(2)]
    h5 = tmp_path / "npy.h5"
    w = npy2bdv.BdvWriter(str(h5), nchannels=2, subsamp=((1, 1, 1), (1, 2, 2)), blockdim=((4, 16, 16),) * 2)
    for c, s in enumerate(stacks):
        w.append_view(s, time=0, channel=c, voxel_size_xyz=(0.5, 0.5, 2.0), voxel_units="um",
                      calibration=(1, 1, 4))
    w.write_xml()
    w.close()
    project = open_project(tmp_path / "npy.xml")
    assert len(project.views) == 2
    for view, s in zip(project.views, stacks):
        np.testing.assert_array_equal(project.image(view).compute(), s)
    assert len(project.levels(project.views[0])) == 2

    data = rng.integers(0, 255, (10, 30, 20), dtype=np.uint8)
    pybdv.make_bdv(data, str(tmp_path / "py.h5"), downscale_factors=[[2, 2, 2]], resolution=[3.0, 1.0, 1.0],
                   unit="micrometer")
    project = open_project(tmp_path / "py.xml")
    np.testing.assert_array_equal(project.image(project.views[0]).compute(), data)
    assert project.image(project.views[0]).dtype == np.uint8


def test_shared_examples_pixels(tmp_path, examples_dir):
    for xml, h5, name in [("pybdv_example.xml", "pybdv_example.h5", "example.h5"),
                          ("npy2bdv_kidney.xml", "npy2bdv_kidney.h5", "kidney.h5")]:
        shutil.copy(examples_dir / xml, tmp_path / xml)
        shutil.copy(examples_dir / h5, tmp_path / name)
        project = open_project(tmp_path / xml)
        with h5py.File(tmp_path / name, "r") as f:
            for view in project.views:
                image = project.image(view)
                assert image.dtype == np.uint16
                raw = f[f"t{view.timepoint:05d}/s{view.setup:02d}/0/cells"][...].view(np.uint16)
                np.testing.assert_array_equal(image.compute(), raw)
                # a region touches only its blocks and equals the same slice
                np.testing.assert_array_equal(image[1:3, 5:40, 7:30].compute(), raw[1:3, 5:40, 7:30])


def test_size_mismatch_is_reported(tmp_path, tiles):
    tilefuse.write_project(tmp_path / "dataset.xml", tiles, POSITIONS, factors=[(1, 1, 1)])
    xml = tmp_path / "dataset.xml"
    xml.write_text(xml.read_text().replace("<size>52 40 6</size>", "<size>52 41 6</size>", 1))
    project = open_project(xml)
    with pytest.raises(errors.ImageDataError, match=r"dataset.xml.*<size>.*52 41 6.*52 40 6"):
        project.image(project.views[0])


def test_missing_pixels_file(tmp_path, tiles):
    tilefuse.write_project(tmp_path / "dataset.xml", tiles, POSITIONS, factors=[(1, 1, 1)])
    (tmp_path / "dataset.h5").unlink()
    project = open_project(tmp_path / "dataset.xml")
    with pytest.raises(errors.MissingDataError, match="dataset.h5"):
        project.image(project.views[0]).compute()


def test_write_project_refuses_overwrite(tmp_path, tiles):
    tilefuse.write_project(tmp_path / "dataset.xml", tiles, POSITIONS, factors=[(1, 1, 1)])
    with pytest.raises(errors.TilefuseError, match="already exists"):
        tilefuse.write_project(tmp_path / "dataset.xml", tiles, POSITIONS, factors=[(1, 1, 1)])


def test_larger_than_chunk_dask_input_streams(tmp_path):
    import dask.array as da

    big = da.random.randint(0, 1000, size=(16, 256, 256), chunks=(8, 64, 64)).astype(np.uint16)
    project = tilefuse.write_project(tmp_path / "d.xml", [big], [(0, 0, 0)], chunks=(8, 64, 64))
    np.testing.assert_array_equal(project.image(project.views[0]).compute(), big.compute())


def test_convert_tiffs_with_tile_configuration_and_csv(tmp_path, tiles):
    folder = tmp_path / "tiffs"
    folder.mkdir()
    for i, t in enumerate(tiles):
        tifffile.imwrite(folder / f"tile_{i}.tif", t)
    (folder / "TileConfiguration.txt").write_text(
        "# Define the number of dimensions we are working on\ndim = 3\n\n# Define the image coordinates\n"
        + "".join(f"tile_{i}.tif; ; ({p[2] / 0.5}, {p[1] / 0.5}, {p[0]})\n" for i, p in enumerate(POSITIONS))
    )
    entries = read_tile_configuration(folder / "TileConfiguration.txt")
    assert entries[1].position_xyz == (40.0, 0.0, 0.0)
    project = convert_tiffs(folder, folder / "TileConfiguration.txt", tmp_path / "a" / "dataset.xml",
                            voxel_size=(2.0, 0.5, 0.5), factors=[(1, 1, 1)])
    for view, t in zip(project.views, tiles):
        np.testing.assert_array_equal(project.image(view).compute(), t)
    np.testing.assert_allclose(project.model(ViewId(0, 3))[:3, 3], [0, 35, 40])

    csv = folder / "positions.csv"
    csv.write_text("file,x,y,z,channel\n" + "".join(
        f"tile_{i}.tif,{p[2]},{p[1]},{p[0]},0\n" for i, p in enumerate(POSITIONS)))
    project = convert_tiffs(folder, csv, tmp_path / "b" / "dataset.xml", voxel_size=(2.0, 0.5, 0.5),
                            factors=[(1, 1, 1)], format="n5")
    np.testing.assert_allclose(project.model(ViewId(0, 3))[:3, 3], [0, 35, 40])


def test_convert_bad_positions(tmp_path):
    bad = tmp_path / "TileConfiguration.txt"
    bad.write_text("dim = 2\ntile.tif; ; (1.0, x)\n")
    with pytest.raises(errors.ProjectFormatError, match=r"TileConfiguration.txt, line 2"):
        read_tile_configuration(bad)
