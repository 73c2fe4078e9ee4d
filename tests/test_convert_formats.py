"""Users' own acquisitions: ImageJ TIFF, OME-TIFF, CZI and LIF files converted with their metadata.

Files are written at test time by the formats' own Python writers (tifffile for ImageJ and OME-TIFF,
pylibCZIrw for CZI mosaics: it writes subblocks at stage locations); LIF has no Python writer, so the
real Leica samples of ../shared/vendor_samples are read (skipped when absent).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile

import tilefuse
from conftest import SHARED
from tilefuse import errors
from tilefuse.cli import main
from tilefuse.convert import convert_files, convert_tiffs, layout_warnings
from tilefuse.formats.acquisition import open_acquisition
from tilefuse.opening import open_project
from tilefuse.sample_data import make_mosaic

VENDOR = SHARED / "vendor_samples"


def _views_by_setup_name(project):
    return {project.data.setups[v.setup].name: v for v in project.views}


# -- ImageJ TIFFs: calibration, channels, names --------------------------------------------------
@pytest.fixture
def imagej_tiles(tmp_path):
    """Two 2-channel ImageJ hyperstacks (z=3, c=2), 0.65 µm pixels, 2 µm z spacing, 40 px apart in x."""
    rng = np.random.default_rng(0)
    stacks = [rng.integers(0, 4000, (3, 2, 24, 48), dtype=np.uint16) for _ in range(2)]
    for i, s in enumerate(stacks):
        tifffile.imwrite(tmp_path / f"tile{i}.tif", s, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                         metadata={"unit": "um", "spacing": 2.0, "axes": "ZCYX"})
    (tmp_path / "pos.csv").write_text(f"file,x,y,z\ntile0.tif,0,0,0\ntile1.tif,{40 * 0.65},0,0\n")
    return tmp_path, stacks


def test_imagej_calibration_channels_and_file_names_are_kept(imagej_tiles, tmp_path, caplog):
    folder, stacks = imagej_tiles
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        project = convert_tiffs(folder, folder / "pos.csv", tmp_path / "p" / "d.xml", factors=[(1, 1, 1)])
    assert caplog.text == "", "calibrated files need no warning"
    setup = project.data.setups[0]
    assert setup.voxel_size == pytest.approx((2.0, 0.65, 0.65)) and setup.unit == "µm"
    assert len(project.views) == 4, "2 files x 2 channels, not 2 six-slice stacks"
    by_name = _views_by_setup_name(project)
    assert set(by_name) == {"tile0 0", "tile0 1", "tile1 0", "tile1 1"}
    for (tile, channel), view in [((t, c), by_name[f"tile{t} {c}"]) for t in (0, 1) for c in (0, 1)]:
        assert project.data.setups[view.setup].attributes["channel"] == channel
        np.testing.assert_array_equal(project.image(view).compute(), stacks[tile][:, channel])
    # 40 px of 0.65 µm: 40 world units (one world unit = one 0.65 µm pixel)
    np.testing.assert_allclose(project.model(by_name["tile1 0"])[:3, 3], [0, 0, 40])
    assert project.data.attribute_blocks["tile"].entities[1].name == "tile1"


def test_a_voxel_size_option_overrides_the_files_and_says_so(imagej_tiles, tmp_path, caplog):
    folder, _ = imagej_tiles
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        project = convert_tiffs(folder, folder / "pos.csv", tmp_path / "p" / "d.xml", factors=[(1, 1, 1)],
                                voxel_size=(2.0, 0.5, 0.5))
    assert project.data.setups[0].voxel_size == (2.0, 0.5, 0.5)
    assert "--voxel-size 2,0.5,0.5 µm overrides the voxel size the files give, 2,0.65,0.65 µm" in caplog.text


def test_csv_positions_in_another_unit_than_the_files_calibration(imagej_tiles, tmp_path, caplog):
    folder, _ = imagej_tiles
    (folder / "nm.csv").write_text(f"file,x,y,z\ntile0.tif,0,0,0\ntile1.tif,{40 * 650},0,0\n")
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        project = convert_tiffs(folder, folder / "nm.csv", tmp_path / "d.xml", in_place=True, unit="nm")
    assert caplog.text == ""
    assert project.data.setups[0].voxel_size == pytest.approx((2.0, 0.65, 0.65)) and project.data.setups[0].unit == "µm"
    np.testing.assert_allclose(project.model(project.select(tile=1, channel=0)[0])[:3, 3], [0, 0, 40])


def test_options_that_do_not_apply_to_stage_positions_say_so(tmp_path, caplog):
    mosaic = make_mosaic((1, 2), (32, 40), overlap=0.25, seed=2)
    _write_ome_mosaic(tmp_path / "scan.ome.tif", mosaic)
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        project = convert_files([tmp_path / "scan.ome.tif"], tmp_path / "d.xml", in_place=True, unit="nm",
                                position_unit="voxel")
    assert "--unit nm is ignored without --voxel-size" in caplog.text
    assert "--position-unit voxel is ignored" in caplog.text
    np.testing.assert_allclose(project.model(project.select(tile=1, channel=0)[0])[1:3, 3], mosaic.stage_positions[1])


def test_a_positions_file_overriding_the_files_stage_positions_says_so(tmp_path, caplog):
    mosaic = make_mosaic((1, 2), (32, 40), overlap=0.25, seed=2)
    for i in range(2):  # one OME-TIFF per tile, each with its stage position (0.5 µm pixels)
        y, x = mosaic.stage_positions[i] * 0.5
        tifffile.imwrite(tmp_path / f"t{i}.ome.tif", mosaic.tile(i), metadata={
            "axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "Plane": {"PositionX": [x], "PositionY": [y]}})
    x1 = mosaic.stage_positions[1][1] * 0.5
    (tmp_path / "same.csv").write_text(f"file,x,y\nt0.ome.tif,100,100\nt1.ome.tif,{100 + x1},100\n")
    (tmp_path / "moved.csv").write_text(f"file,x,y\nt0.ome.tif,0,0\nt1.ome.tif,{x1 + 5},0\n")
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        convert_tiffs(tmp_path, tmp_path / "same.csv", tmp_path / "a.xml", in_place=True)
    assert caplog.text == "", "the same layout at another origin needs no word"
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        project = convert_tiffs(tmp_path, tmp_path / "moved.csv", tmp_path / "b.xml", in_place=True)
    assert "the positions file overrides the stage positions recorded in the files: it moves t1.ome.tif by 5 µm" \
        in caplog.text
    np.testing.assert_allclose(project.model(project.select(tile=1)[0])[2, 3], (x1 + 5) / 0.5)


def test_uncalibrated_tiles_with_physical_csv_positions_are_not_silent(tmp_path, capsys):
    for i in range(2):
        tifffile.imwrite(tmp_path / f"t{i}.tif", np.zeros((20, 30), np.uint16))
    (tmp_path / "pos.csv").write_text("file,x,y\nt0.tif,0,0\nt1.tif,25,0\n")
    assert main(["convert", str(tmp_path), str(tmp_path / "pos.csv"), "-o", str(tmp_path / "p" / "d.xml")]) == 0
    err = capsys.readouterr().err
    assert "warning: the files have no pixel size and no --voxel-size was given: assuming 1 µm" in err


# -- OME-TIFF: series, positions, physical sizes, channel names; resaved and in place ---------------
def _write_ome_mosaic(path, mosaic, voxel=0.5, channels=("DAPI", "GFP")):
    """One OME series per tile at its stage position (µm), 2 channels (the second one half as bright)."""
    with tifffile.TiffWriter(path, ome=True) as w:
        for i in range(mosaic.n_tiles):
            tile = mosaic.tile(i)
            data = np.stack([tile, tile // 2])
            y, x = mosaic.stage_positions[i] * voxel
            w.write(data, photometric="minisblack", metadata={
                "axes": "CYX", "PhysicalSizeX": voxel, "PhysicalSizeY": voxel,
                "Channel": {"Name": list(channels)},
                "Plane": {"PositionX": [float(x)] * 2, "PositionY": [float(y)] * 2, "PositionXUnit": ["µm"] * 2,
                          "PositionYUnit": ["µm"] * 2}})


@pytest.mark.parametrize("in_place", [False, True])
def test_ome_tiff_positions_channels_and_pixels(tmp_path, in_place):
    mosaic = make_mosaic((2, 2), (64, 80), overlap=0.2, seed=3)
    _write_ome_mosaic(tmp_path / "scan.ome.tif", mosaic)
    project = convert_files([tmp_path / "scan.ome.tif"], tmp_path / "p" / "d.xml", in_place=in_place,
                            factors=[(1, 1, 1)])
    assert project.data.setups[0].voxel_size == pytest.approx((0.5, 0.5, 0.5))
    assert project.data.attribute_blocks["channel"].entities[1].name == "GFP"
    assert len(project.views) == 8
    xml = (tmp_path / "p" / "d.xml").read_text()
    if in_place:
        assert 'format="spimreconstruction.filelist"' in xml and "scan.ome.tif" in xml
        assert not any(p.suffix == ".h5" for p in (tmp_path / "p").iterdir()), "nothing copied"
    for view in project.views:
        attrs = project.data.setups[view.setup].attributes
        tile = mosaic.tile(attrs["tile"])
        expected = tile if attrs["channel"] == 0 else tile // 2
        np.testing.assert_array_equal(project.image(view).compute()[0], expected)
        np.testing.assert_allclose(project.model(view)[1:3, 3], mosaic.stage_positions[attrs["tile"]])
    region = project.image(project.views[3])[:, 10:20, 5:9].compute()
    np.testing.assert_array_equal(region[0], mosaic.tile(1)[10:20, 5:9] // 2)


def _registers_and_fuses_to_the_truth(project, mosaic):
    """Register + fuse with no option at all: positions within 0.5 world units, fused image within 1% of truth."""
    from tilefuse.geometry import Box

    registered = tilefuse.register(project).apply(project)
    ndim = mosaic.ndim
    got = np.array([registered.model(registered.select(tile=i, channel=0)[0])[3 - ndim:3, 3]
                    for i in range(mosaic.n_tiles)])
    assert np.abs(got - mosaic.true_positions).max() < 0.5, got - mosaic.true_positions
    # A box every voxel of which some tile covers: the tiles' bounds, inside by the stage errors and one voxel.
    lo, hi = (np.r_[np.zeros(3 - ndim), v] for v in mosaic.bounds())
    cal = np.r_[np.ones(3 - ndim), mosaic.calibration]
    error = np.r_[np.zeros(3 - ndim), np.abs(mosaic.true_positions - mosaic.stage_positions).max(axis=0)]
    lo, hi = np.ceil((lo + error) / cal) + 1, np.floor((hi - error) / cal) - 1
    if ndim == 2:
        lo[0] = hi[0] = 0
    box = Box.from_arrays(lo * cal, hi * cal)
    fused = tilefuse.plan_fusion(registered, bounding_box=box, dtype=np.float32).to_dask()[0, 0].compute()
    truth = mosaic.ground_truth(tuple(slice(int(a), int(b) + 1) for a, b in zip(lo[3 - ndim:], hi[3 - ndim:])))
    fused = fused[0] if ndim == 2 else fused
    assert fused.shape == truth.shape
    assert np.abs(fused - truth).mean() < 0.01 * (truth.max() - truth.min())


def _mosaic_3d(seed):
    """2x2 tiles of 8 planes, 2 µm z steps and 0.5 µm pixels, stage errors of up to 5 px in x, y and z."""
    return make_mosaic((1, 2, 2), (8, 64, 80), overlap=0.25, voxel_size=(2.0, 0.5, 0.5), seed=seed, max_offset=5,
                       noise=False, illumination=False)


@pytest.mark.parametrize("kind", ["ome-tiff", "czi", "imagej-folder"])
def test_a_converted_mosaic_registers_and_fuses_to_the_truth(tmp_path, kind):
    """Each format tilefuse can write a test file of: convert, then register + fuse without any option."""
    if kind == "ome-tiff":
        mosaic = make_mosaic((2, 3), (96, 128), overlap=0.25, seed=5, max_offset=6, noise=False,
                             illumination=False)
        _write_ome_mosaic(tmp_path / "scan.ome.tif", mosaic, channels=("a", "b"))
        project = convert_files([tmp_path / "scan.ome.tif"], tmp_path / "d.xml", in_place=True)
    elif kind == "czi":
        pytest.importorskip("aicspylibczi")
        mosaic = _mosaic_3d(6)
        czi = pytest.importorskip("pylibCZIrw.czi")
        with czi.create_czi(str(tmp_path / "scan.czi"), exist_ok=True) as w:
            for i in range(mosaic.n_tiles):
                _, y, x = (int(v) for v in mosaic.stage_positions[i])
                for z, plane in enumerate(mosaic.tile(i)):
                    w.write(plane, location=(x, y), plane={"Z": z})
            w.write_metadata(document_name="t", scale_x=0.5e-6, scale_y=0.5e-6, scale_z=2e-6)
        project = convert_files([tmp_path / "scan.czi"], tmp_path / "d.xml", in_place=True)
    else:  # ImageJ hyperstacks + a CSV of physical positions, through the command line
        mosaic = _mosaic_3d(7)
        rows = ["file,x,y,z"]
        for i in range(mosaic.n_tiles):
            tifffile.imwrite(tmp_path / f"tile{i}.tif", mosaic.tile(i), imagej=True, resolution=(2.0, 2.0),
                             metadata={"unit": "micron", "spacing": 2.0, "axes": "ZYX"})
            z, y, x = mosaic.stage_positions[i] * [0.5, 0.5, 0.5]  # world units are 0.5 µm
            rows.append(f"tile{i}.tif,{x},{y},{z}")
        (tmp_path / "pos.csv").write_text("\n".join(rows) + "\n")
        assert main(["convert", str(tmp_path), str(tmp_path / "pos.csv"), "-o", str(tmp_path / "p" / "d.xml"),
                     "-q"]) == 0
        project = open_project(tmp_path / "p" / "d.xml")
    if mosaic.ndim == 3:
        assert project.data.setups[0].voxel_size == pytest.approx((2.0, 0.5, 0.5))
    _registers_and_fuses_to_the_truth(project, mosaic)


# -- CZI mosaics written by pylibCZIrw ------------------------------------------------------------
def _write_czi_mosaic(path, mosaic, voxel=0.5, nz=2):
    czi = pytest.importorskip("pylibCZIrw.czi")
    with czi.create_czi(str(path), exist_ok=True) as w:
        for i in range(mosaic.n_tiles):
            y, x = (int(v) for v in mosaic.stage_positions[i])
            tile = mosaic.tile(i)
            for c in range(2):
                for z in range(nz):
                    w.write((tile // (c + 1) + z).astype(np.uint16), location=(x, y), plane={"C": c, "Z": z})
        w.write_metadata(document_name="t", channel_names={0: "DAPI", 1: "GFP"}, scale_x=voxel * 1e-6,
                         scale_y=voxel * 1e-6, scale_z=2e-6)


@pytest.mark.parametrize("in_place", [False, True])
def test_czi_mosaic_tiles_are_read_one_by_one_at_their_positions(tmp_path, in_place):
    pytest.importorskip("aicspylibczi")
    mosaic = make_mosaic((2, 2), (48, 64), overlap=0.25, seed=1)
    _write_czi_mosaic(tmp_path / "scan.czi", mosaic)
    project = convert_files([tmp_path / "scan.czi"], tmp_path / "p" / "d.xml", in_place=in_place,
                            factors=[(1, 1, 1)])
    assert project.data.setups[0].voxel_size == pytest.approx((2.0, 0.5, 0.5))
    assert {e.name for e in project.data.attribute_blocks["channel"].entities.values()} == {"DAPI", "GFP"}
    assert len(project.views) == 8
    for view in project.views:
        attrs = project.data.setups[view.setup].attributes
        tile = mosaic.tile(attrs["tile"])
        image = project.image(view).compute()
        assert image.shape == (2, 48, 64)
        for z in range(2):  # each tile whole, overlaps not painted over by its neighbours
            np.testing.assert_array_equal(image[z], (tile // (attrs["channel"] + 1) + z).astype(np.uint16))
        np.testing.assert_allclose(project.model(view)[1:3, 3], np.floor(mosaic.stage_positions[attrs["tile"]]))
    assert project.model(project.views[0])[0, 0] == pytest.approx(4.0), "z calibration 2 µm / 0.5 µm"


def test_a_missing_reader_names_the_extra_to_install(tmp_path, monkeypatch):
    (tmp_path / "scan.czi").write_bytes(b"ZISRAWFILE")
    real = importlib.import_module

    def no_czi(name, *a, **k):
        if name == "aicspylibczi":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_czi)
    with pytest.raises(errors.UnsupportedFormatError, match=r"pip install 'tilefuse\[czi\]'"):
        open_acquisition(tmp_path / "scan.czi")


# -- LIF: real Leica samples ---------------------------------------------------------------------
@pytest.fixture
def lif_sample():
    path = VENDOR / "leica_lasx_wavelength_sweep.lif"
    if not path.is_file():
        pytest.skip("../shared/vendor_samples is not available")
    pytest.importorskip("readlif")
    return path


def test_lif_calibration_stacks_and_pixels(lif_sample, tmp_path, caplog):
    from readlif.reader import LifFile

    from tilefuse.loaders._filelist import FileListLoader
    from tilefuse.project.views import ViewId

    with open_acquisition(lif_sample) as f:
        acq = f.describe()
        # three lambda scans: their wavelengths are channels (readlif's get_frame would ignore them)
        assert sum("read as channels" in n for n in acq.notes) == 3
        counts = {s: len({x.channel for x in acq.stacks if x.series == s}) for s in range(3)}
        assert counts == {0: 20, 1: 15, 2: 10}
        # the first image's sweep: 20 emission bands from 550 nm over 190 nm
        assert acq.channel_names[0] == "em 550 nm" and acq.channel_names[19] == "em 740 nm"
        assert {x.timepoint for x in acq.stacks if x.series == 2} == {0, 1}
        assert next(x for x in acq.stacks if x.series == 2).shape == (11, 64, 64)
        assert acq.voxel_size == pytest.approx((1 / 1.9991895285651198, 1 / 9.54067119984844,
                                                1 / 9.54067119984844))
        img = LifFile(str(lif_sample)).get_image(2)
        expected = np.asarray(img.get_plane(display_dims=(1, 2), requested_dims={3: 4, 4: 1, 5: 3}))
        got = f.read(2, 3, 1, (slice(3, 5), slice(0, 64), slice(10, 20)))
        np.testing.assert_array_equal(got[1], expected[:, 10:20])
    # BigStitcher's rule: a file holding several of the project's timepoints is indexed by timepoint id
    loader = FileListLoader.for_path({ViewId(0, 0): (lif_sample, 2, 3), ViewId(1, 0): (lif_sample, 2, 3)})
    np.testing.assert_array_equal(loader.image(ViewId(1, 0))[4].compute(), expected)
    # Three images, no tile scan: each at its setting's StagePosX/Y (m), which says SwapXY="1" FlipY="1"
    # (Bio-Formats' PositionExtractor: swap, then flip): x = StagePosY, y = -StagePosX.
    positions = [next(x.position for x in acq.stacks if x.series == i) for i in range(3)]
    np.testing.assert_allclose(positions, [(0, -35266.8276465, 10038.58372743), (0, -35311.24656907, 10084.60909449),
                                           (0, -35343.47799788, 10084.60909449)])
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        convert_files([lif_sample], tmp_path / "d.xml", in_place=True)
    assert "no two of the 3 tiles overlap" in caplog.text, "6.7 µm images 45-80 µm apart are not a mosaic"


def test_lif_without_any_xy_stack_is_refused(tmp_path):
    path = VENDOR / "leica_2channel_xz.lif"
    if not path.is_file():
        pytest.skip("../shared/vendor_samples is not available")
    pytest.importorskip("readlif")
    with pytest.raises(errors.ImageDataError, match="no image of this LIF file is a stack of xy planes"):
        convert_files([path], tmp_path / "d.xml")


# -- BigStitcher's filelist XML ------------------------------------------------------------------
def test_a_bigstitcher_filelist_project_is_read_through_the_same_readers(tmp_path):
    data = np.arange(2 * 3 * 16 * 20, dtype=np.uint16).reshape(2, 3, 16, 20)  # t, z, y, x
    tifffile.imwrite(tmp_path / "a.ome.tif", data, metadata={"axes": "TZYX"})
    views = "".join('<ViewSetup><id>0</id><name>a</name><size>20 16 3</size><voxelSize><unit>µm</unit>'
                    '<size>1 1 1</size></voxelSize><attributes><illumination>0</illumination><channel>0</channel>'
                    '<tile>0</tile><angle>0</angle></attributes></ViewSetup>' for _ in range(1))
    regs = "".join(f'<ViewRegistration timepoint="{t}" setup="0"><ViewTransform type="affine"><Name>c</Name>'
                   f'<affine>1 0 0 0 0 1 0 0 0 0 1 0</affine></ViewTransform></ViewRegistration>' for t in (0, 1))
    attrs = "".join(f'<Attributes name="{n}"><{t}><id>0</id><name>0</name></{t}></Attributes>'
                    for n, t in [("illumination", "Illumination"), ("channel", "Channel"), ("tile", "Tile"),
                                 ("angle", "Angle")])
    (tmp_path / "d.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><SpimData version="0.2"><BasePath type="relative">.</BasePath>'
        '<SequenceDescription><ImageLoader format="spimreconstruction.filelist">'
        '<imglib2container>ArrayImgFactory</imglib2container><ZGrouped>false</ZGrouped><files>'
        + "".join(f'<FileMapping view_setup="0" timepoint="{t}" series="0" channel="0">'
                  f'<file type="relative">a.ome.tif</file></FileMapping>' for t in (0, 1))
        + f'</files></ImageLoader><ViewSetups>{views}{attrs}</ViewSetups>'
        '<Timepoints type="pattern"><integerpattern>0-1</integerpattern></Timepoints></SequenceDescription>'
        f'<ViewRegistrations>{regs}</ViewRegistrations></SpimData>')
    project = open_project(tmp_path / "d.xml")
    assert type(project.loader).format == "spimreconstruction.filelist"
    for t in (0, 1):  # one file holds both timepoints: the timepoint id is the index in the file
        np.testing.assert_array_equal(project.image(project.select(timepoint=t)[0]).compute(), data[t])
    project.save(tmp_path / "again.xml")
    assert "<imglib2container>ArrayImgFactory</imglib2container>" in (tmp_path / "again.xml").read_text()


def test_a_filemap2_project_over_a_czi_file_reads_it(tmp_path):
    pytest.importorskip("aicspylibczi")
    mosaic = make_mosaic((1, 2), (32, 40), overlap=0.25, seed=2)
    _write_czi_mosaic(tmp_path / "scan.czi", mosaic, nz=1)
    project = convert_files([tmp_path / "scan.czi"], tmp_path / "d.xml", in_place=True)
    xml = (tmp_path / "d.xml").read_text().replace("spimreconstruction.filelist", "spimreconstruction.filemap2")
    (tmp_path / "d.xml").write_text(xml.replace("<imglib2container>ArrayImgFactory</imglib2container>", ""))
    again = open_project(tmp_path / "d.xml")
    for view in project.views:
        np.testing.assert_array_equal(again.image(view).compute(), project.image(view).compute())


# -- positions that contradict the tiles ---------------------------------------------------------
def test_layout_warnings_name_the_likely_cause():
    extents = np.array([[1, 100, 100]] * 4, dtype=float)
    grid = np.array([[0, 0, 0], [0, 0, 90], [0, 90, 0], [0, 90, 90]], dtype=float)
    assert layout_warnings(grid, extents) == []
    far = layout_warnings(grid * 1000, extents)
    assert len(far) == 1 and "no two of the 4 tiles overlap" in far[0] and "nm read as µm" in far[0]
    close = layout_warnings(grid / 1000, extents)
    assert len(close) == 1 and "overlap by" in close[0] and "mm read as µm" in close[0]
    pixels = layout_warnings(grid / 0.65, extents, voxel_size=(1, 0.65, 0.65))
    assert pixels == [] or "pixels" in pixels[0]
    assert "same position" in layout_warnings(np.zeros((4, 3)), extents)[0]
    wide = np.array([[1, 50, 100]] * 4, dtype=float)
    grid = np.array([[0, 0, 0], [0, 0, 90], [0, 45, 0], [0, 45, 90]], dtype=float)
    assert layout_warnings(grid, wide) == []
    swapped = layout_warnings(grid[:, [0, 2, 1]], wide)
    assert len(swapped) == 1 and "--stage-axes y,x,z" in swapped[0]


def test_convert_warns_about_positions_1000_times_too_large(tmp_path, caplog):
    mosaic = make_mosaic((1, 2), (32, 40), overlap=0.25, seed=2)
    with tifffile.TiffWriter(tmp_path / "scan.ome.tif", ome=True) as w:
        for i in range(2):
            y, x = mosaic.stage_positions[i] * 1000  # nm written as µm
            w.write(mosaic.tile(i), metadata={"axes": "YX", "PhysicalSizeX": 1, "PhysicalSizeY": 1,
                                              "Plane": {"PositionX": [float(x)], "PositionY": [float(y)]}})
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        convert_files([tmp_path / "scan.ome.tif"], tmp_path / "d.xml", in_place=True)
    assert "no two of the 2 tiles overlap" in caplog.text and "nm read as µm" in caplog.text


def test_stage_axes_flip_and_swap_the_positions(tmp_path):
    mosaic = make_mosaic((2, 2), (32, 40), overlap=0.25, seed=2)
    _write_ome_mosaic(tmp_path / "scan.ome.tif", mosaic, voxel=1.0)
    flipped = convert_files([tmp_path / "scan.ome.tif"], tmp_path / "a.xml", in_place=True, stage_axes="-x,y,z")
    for view in flipped.select(channel=0):
        tile = flipped.data.setups[view.setup].attributes["tile"]
        y, x = mosaic.stage_positions[tile]
        np.testing.assert_allclose(flipped.model(view)[1:3, 3], [y, -x])


def test_cli_converts_files_and_folders(tmp_path, capsys):
    mosaic = make_mosaic((1, 2), (32, 40), overlap=0.25, seed=2)
    (tmp_path / "in").mkdir()
    _write_ome_mosaic(tmp_path / "in" / "scan.ome.tif", mosaic)
    assert main(["convert", str(tmp_path / "in"), "-o", str(tmp_path / "p" / "d.xml"), "--in-place", "-q"]) == 0
    project = open_project(tmp_path / "p" / "d.xml")
    assert len(project.views) == 4
    assert main(["convert", str(tmp_path / "in" / "scan.ome.tif"), "-o", str(tmp_path / "q" / "d.xml"),
                 "--format", "zarr", "-q"]) == 0
    assert (tmp_path / "q" / "d.ome.zarr").is_dir()
    (tmp_path / "scan.nd3").write_bytes(b"?")
    assert main(["convert", str(tmp_path / "scan.nd3"), "-o", str(tmp_path / "r.xml"), "-q"]) == 2
    assert "not a file tilefuse can read as an acquisition" in capsys.readouterr().err


# -- ND2: no Python writer and no small public multi-point file: the nd2 API, faked --------------
class _FakeND2File:
    """The part of nd2.ND2File tilefuse uses, for a 2-position, 3-plane, 2-channel acquisition."""

    is_rgb = False
    dtype = np.dtype(np.uint16)

    def __init__(self, path):
        from types import SimpleNamespace as NS

        self.sizes = {"P": 2, "Z": 3, "C": 2, "Y": 16, "X": 20}
        self.data = np.arange(2 * 3 * 2 * 16 * 20, dtype=np.uint16).reshape(2, 3, 2, 16, 20)
        self.loop_indices = tuple({"P": p, "Z": z} for p in range(2) for z in range(3))
        # stage x, y, z of each frame (µm): position 1 is 8 µm to the right; z rises 2 µm per plane
        self._stage = [(100.0 + 8.0 * p, 50.0, 10.0 + 2.0 * z) for p in range(2) for z in range(3)]
        channel = [NS(channel=NS(name=n, emissionLambdaNm=w), volume=NS(cameraTransformationMatrix=(-1, 0, 0, 1)))
                   for n, w in (("DAPI", 450.0), ("", 520.0))]
        self.metadata = NS(channels=channel)
        self._ns = NS

    def voxel_size(self):
        return self._ns(x=0.5, y=0.5, z=2.0)

    def frame_metadata(self, seq):
        x, y, z = self._stage[seq]
        return self._ns(channels=[self._ns(position=self._ns(stagePositionUm=(x, y, z)))])

    def to_dask(self):
        return self.data

    def close(self):
        pass


def test_nd2_positions_channels_and_pixels_through_the_nd2_api(tmp_path, monkeypatch):
    import sys
    from types import ModuleType

    fake = ModuleType("nd2")
    fake.ND2File = _FakeND2File
    monkeypatch.setitem(sys.modules, "nd2", fake)
    (tmp_path / "multi.nd2").write_bytes(b"fake")
    with open_acquisition(tmp_path / "multi.nd2") as f:
        acq = f.describe()
        assert acq.voxel_size == (2.0, 0.5, 0.5) and acq.channel_names == {0: "DAPI", 1: "520"}
        assert any("cameraTransformationMatrix" in n for n in acq.notes)
        first = {s.series: s.position for s in acq.stacks}
        assert first == {0: (10.0, 50.0, 100.0), 1: (10.0, 50.0, 108.0)}, "the first plane's stage z"
        np.testing.assert_array_equal(f.read(1, 1, 0, (slice(1, 3), slice(2, 5), slice(0, 20))),
                                      f._nd2.data[1, 1:3, 1, 2:5])
    project = convert_files([tmp_path / "multi.nd2"], tmp_path / "d.xml", in_place=True)
    view = project.select(tile=1, channel=1)[0]
    # stage µm / 0.5 µm pixels: y 50 -> 100, x 108 -> 216, z 10 -> 20 (the first plane's)
    np.testing.assert_allclose(project.model(view)[:3, 3], [20, 100, 216])
    np.testing.assert_array_equal(project.image(view).compute(), _FakeND2File(None).data[1, :, 1])


def test_a_czi_region_reads_only_its_planes(tmp_path, monkeypatch):
    pytest.importorskip("aicspylibczi")
    mosaic = make_mosaic((1, 2), (32, 40), overlap=0.25, seed=2)
    _write_czi_mosaic(tmp_path / "scan.czi", mosaic, nz=4)
    project = convert_files([tmp_path / "scan.czi"], tmp_path / "d.xml", in_place=True)
    calls = []
    from tilefuse.formats.czi import CziAcquisition

    real = CziAcquisition.read

    def counting(self, series, channel, timepoint, region):
        calls.append(region[0])
        return real(self, series, channel, timepoint, region)

    monkeypatch.setattr(CziAcquisition, "read", counting)
    view = project.select(tile=1, channel=1)[0]
    part = project.loader.read(view, 0, (slice(2, 3), slice(5, 9), slice(0, 40)))
    np.testing.assert_array_equal(part[0], (mosaic.tile(1)[5:9] // 2 + 2).astype(np.uint16))
    assert calls == [slice(2, 3)], "one plane of one tile, not the stack"


# -- BigStitcher's file-pattern loaders ----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["spimreconstruction.stack.loci", "spimreconstruction.stack.ij"])
def test_a_stack_pattern_project_reads_the_named_files(tmp_path, fmt):
    rng = np.random.default_rng(4)
    stacks = {}
    for t in (3, 7):
        for a in ("0", "90"):
            stacks[t, a] = rng.integers(0, 1000, (2, 4, 12, 16), dtype=np.uint16)  # z, c, y, x
            tifffile.imwrite(tmp_path / f"spim_TL{t:02d}_Angle{a}.tif", stacks[t, a], imagej=True,
                             metadata={"axes": "ZCYX"})
    setups = ""
    for sid, (a, c) in enumerate([(a, c) for a in (0, 1) for c in (0, 1)]):
        setups += (f'<ViewSetup><id>{sid}</id><size>16 12 2</size><voxelSize><unit>um</unit><size>1 1 1</size>'
                   f'</voxelSize><attributes><illumination>0</illumination><channel>{c}</channel><tile>0</tile>'
                   f'<angle>{a}</angle></attributes></ViewSetup>')
    attrs = ('<Attributes name="illumination"><Illumination><id>0</id><name>0</name></Illumination></Attributes>'
             '<Attributes name="channel">' + "".join(f"<Channel><id>{c}</id><name>{c}</name></Channel>" for c in (0, 1))
             + '</Attributes><Attributes name="tile"><Tile><id>0</id><name>0</name></Tile></Attributes>'
             '<Attributes name="angle">' + "".join(f"<Angle><id>{i}</id><name>{a}</name></Angle>"
                                                   for i, a in enumerate(("0", "90"))) + "</Attributes>")
    regs = "".join(f'<ViewRegistration timepoint="{t}" setup="{s}"><ViewTransform type="affine"><Name>c</Name>'
                   f'<affine>1 0 0 0 0 1 0 0 0 0 1 0</affine></ViewTransform></ViewRegistration>'
                   for t in (3, 7) for s in range(4))
    (tmp_path / "d.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><SpimData version="0.2"><BasePath type="relative">.</BasePath>'
        f'<SequenceDescription><ImageLoader format="{fmt}"><imagedirectory type="relative">.</imagedirectory>'
        '<filePattern>spim_TL{tt}_Angle{a}.tif</filePattern><layoutTimepoints>1</layoutTimepoints>'
        '<layoutChannels>2</layoutChannels><layoutIlluminations>0</layoutIlluminations>'
        '<layoutAngles>1</layoutAngles><layoutTiles>0</layoutTiles><imglib2container>ArrayImgFactory'
        f'</imglib2container></ImageLoader><ViewSetups>{setups}{attrs}</ViewSetups>'
        '<Timepoints type="pattern"><integerpattern>3,7</integerpattern></Timepoints></SequenceDescription>'
        f'<ViewRegistrations>{regs}</ViewRegistrations></SpimData>')
    project = open_project(tmp_path / "d.xml")
    for view in project.views:
        attrs_ = project.data.setups[view.setup].attributes
        angle = ("0", "90")[attrs_["angle"]]
        expected = stacks[view.timepoint, angle][:, attrs_["channel"]]
        np.testing.assert_array_equal(project.image(view).compute(), expected)
    project.save(tmp_path / "again.xml")
    assert "<filePattern>spim_TL{tt}_Angle{a}.tif</filePattern>" in (tmp_path / "again.xml").read_text()
    (tmp_path / "spim_TL07_Angle90.tif").unlink()
    missing = open_project(tmp_path / "d.xml")
    with pytest.raises(errors.MissingDataError, match="spim_TL07_Angle90.tif"):
        missing.image(missing.select(timepoint=7, angle="90")[0])


def test_a_tiled_ome_tiff_region_reads_only_its_tiles(tmp_path, monkeypatch):
    data = np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64)
    tifffile.imwrite(tmp_path / "t.ome.tif", data, tile=(16, 16), metadata={"axes": "ZYX", "PhysicalSizeX": 0.5,
                                                                             "PhysicalSizeY": 0.5})
    project = convert_files([tmp_path / "t.ome.tif"], tmp_path / "d.xml", in_place=True)
    reads = []
    real = tifffile.FileCache.read  # where tifffile's zarr store reads each tile's bytes

    def counting(self, fh, offset, bytecount, *args, **kwargs):
        reads.append(offset)
        return real(self, fh, offset, bytecount, *args, **kwargs)

    monkeypatch.setattr(tifffile.FileCache, "read", counting)
    part = project.loader.read(project.views[0], 0, (slice(2, 3), slice(20, 30), slice(40, 47)))
    np.testing.assert_array_equal(part, data[2:3, 20:30, 40:47])
    assert len(reads) == 1, "one 16x16 tile of one page, not the 64 tiles of the stack"


def test_tiles_are_named_after_their_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("run.1.ome.tif", "sub/run.2.ome.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((16, 20), np.uint16), metadata={"axes": "YX"})
    (tmp_path / "pos.csv").write_text("file,x,y\nrun.1.ome.tif,0,0\nsub/run.2.ome.tif,15,0\n")
    project = convert_tiffs(tmp_path, tmp_path / "pos.csv", tmp_path / "d.xml", in_place=True)
    assert sorted(s.name for s in project.data.setups.values()) == ["run.1", "sub/run.2"]
    assert sorted(e.name for e in project.data.attribute_blocks["tile"].entities.values()) == ["run.1", "sub/run.2"]
    project = convert_files([tmp_path / "run.1.ome.tif"], tmp_path / "e.xml", in_place=True)
    assert project.data.setups[0].name == "run.1"


def test_a_real_zeiss_mosaic_reads_as_multiview_stitcher_reads_it(tmp_path):
    """ZEN's 2-tile mosaic shipped with multiview-stitcher (its reader: czifile, independent of aicspylibczi)."""
    pytest.importorskip("aicspylibczi")
    spec = importlib.util.find_spec("multiview_stitcher")
    path = None if spec is None else Path(spec.origin).parent / "test-datasets" / "mosaic_test.czi"
    if path is None or not path.is_file():
        pytest.skip("multiview-stitcher's test CZI is not installed (pip install '.[bench]')")
    project = convert_files([path], tmp_path / "d.xml", in_place=True)
    assert [e.name for e in project.data.attribute_blocks["channel"].entities.values()] == ["EGFP"]
    # 1.0833 µm pixels; the file's 1 µm z "Distance" of a single plane must not become the world unit
    assert project.data.setups[0].voxel_size == pytest.approx((13 / 12,) * 3)
    # multiview-stitcher: tile 1 starts at x = 901.333 µm = 832 pixels (92 pixels of overlap), y = 0
    np.testing.assert_allclose(project.model(project.select(tile=1)[0])[:3, 3], [0, 0, 832])
    from multiview_stitcher import io as mvs_io

    for view, sim in zip(project.views, mvs_io.read_mosaic_into_sims(path)):
        np.testing.assert_array_equal(project.image(view).compute()[0], np.asarray(sim.data)[0, 0])
        assert float(sim.coords["x"][0]) == pytest.approx(project.model(view)[2, 3] * 13 / 12)


def test_lif_tile_scan_positions_are_swapped_then_flipped():
    """A LAS X tile scan's TileScanInfo (no small public LIF mosaic exists): Bio-Formats' swap, then flip."""
    import xml.etree.ElementTree as ET
    from types import SimpleNamespace

    from tilefuse.formats.lif import _tile_positions

    xml = ('<LMSDataContainerHeader><Element Name="scan"><Data><Image><Attachment Name="TileScanInfo" '
           'FlipX="1" FlipY="0" SwapXY="1"><Tile FieldX="0" FieldY="0" PosX="0.001" PosY="0.002"/>'
           '<Tile FieldX="1" FieldY="0" PosX="0.0011" PosY="0.002"/></Attachment>'
           '<ATLConfocalSettingDefinition StagePosX="0.5" StagePosY="0.5" FlipX="0" FlipY="0" SwapXY="0"/>'
           '</Image></Data></Element></LMSDataContainerHeader>')
    lif = SimpleNamespace(xml_root=ET.fromstring(xml))
    info = {"name": "scan", "mosaic_position": [(0, 0, 0.001, 0.002), (1, 0, 0.0011, 0.002)]}
    # swapped: x = PosY, y = PosX; then FlipX negates the new x
    np.testing.assert_allclose(_tile_positions(lif, info, 2), [(0, 1000, -2000), (0, 1100, -2000)])
    # one image without a tile scan: its setting's stage position (here unflipped)
    lif = SimpleNamespace(xml_root=ET.fromstring(xml.replace('Name="TileScanInfo"', 'Name="Other"')))
    np.testing.assert_allclose(_tile_positions(lif, {"name": "scan", "mosaic_position": []}, 1), [(0, 5e5, 5e5)])
    # channels named by their LAS X colours when those tell them apart
    from tilefuse.formats.lif import _channel_names

    channels = '<ChannelDescription LUTName="Green"/><ChannelDescription LUTName="Red"/>'
    lif = SimpleNamespace(xml_root=ET.fromstring(xml.replace("<Image>", f"<Image>{channels}")))
    assert _channel_names(lif, {"name": "scan"}, None, 2) == {0: "Green", 1: "Red"}


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_contiguous_tiffs_of_either_byte_order_read_exactly(tmp_path, byteorder):
    data = np.arange(3 * 2 * 20 * 24, dtype=np.uint16).reshape(3, 2, 20, 24) * 7  # z, c, y, x
    tifffile.imwrite(tmp_path / "t.tif", data, imagej=byteorder == "<", byteorder=byteorder,
                     metadata={"axes": "ZCYX"})
    with open_acquisition(tmp_path / "t.tif") as f:
        assert isinstance(f._array(0), np.memmap), "uncompressed and contiguous: read as a memory map"
        region = (slice(1, 3), slice(4, 9), slice(2, 20))
        got = f.read(0, 1, 0, region)
        assert got.dtype == np.dtype(np.uint16) and got.dtype.isnative
        np.testing.assert_array_equal(got, data[1:3, 1, 4:9, 2:20])


@pytest.mark.parametrize("axis, fix", [("x", "-x,y,z"), ("y", "x,-y,z")])
def test_a_stage_axis_against_the_camera_is_named_from_the_overlaps(tmp_path, caplog, axis, fix):
    """A mirrored layout keeps every overlap's size; the overlaps' pixels tell, and name the --stage-axes."""
    mosaic = make_mosaic((2, 2), (64, 80), overlap=0.25, seed=4, max_offset=3)
    with tifffile.TiffWriter(tmp_path / "scan.ome.tif", ome=True) as w:
        for i in range(4):
            y, x = mosaic.stage_positions[i] * 0.5
            y, x = (-y, x) if axis == "y" else (y, -x)  # the stage counts this axis the other way
            w.write(mosaic.tile(i), metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                              "Plane": {"PositionX": [x], "PositionY": [y]}})
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        convert_files([tmp_path / "scan.ome.tif"], tmp_path / "a.xml", in_place=True)
    assert f"agree far better with the stage's {axis} axis flipped" in caplog.text
    assert f"give --stage-axes={fix}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        project = convert_files([tmp_path / "scan.ome.tif"], tmp_path / "b.xml", in_place=True, stage_axes=fix)
    assert caplog.text == ""
    placed = np.array([project.model(project.select(tile=i)[0])[1:3, 3] for i in range(4)])
    np.testing.assert_allclose(placed - placed[0], mosaic.stage_positions - mosaic.stage_positions[0])
