"""The command line, called in-process through ``main(argv)``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from tilefuse import open_project
from tilefuse.cli import main

# Every OME-Zarr image a test here leaves behind is validated (ome-zarr-models) and read back (ome-zarr-py, zarr).
pytestmark = pytest.mark.usefixtures("every_ngff_output_checked")



@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    assert main(["sample", str(out), "--grid", "2,2", "--tile", "128,128", "--overlap", "0.2", "-q"]) == 0
    return out


def test_info(sample, capsys, tmp_path):
    assert main(["info", str(sample / "dataset.xml"), "--plot", str(tmp_path / "layout.png")]) == 0
    text = capsys.readouterr().out
    assert "bdv.hdf5" in text and "4 (4 setups × 1 timepoints" in text
    assert "Translation to Regular Grid → calibration" in text
    assert "not registered" in text
    assert (tmp_path / "layout.png").stat().st_size > 1000


def test_register_fuse_and_run(sample, capsys, tmp_path):
    xml = sample / "dataset.xml"
    before = xml.read_bytes()
    out = tmp_path / "registered.xml"
    assert main(["register", str(xml), "-o", str(out), "--plot", str(tmp_path / "links.png")]) == 0
    text = capsys.readouterr().out
    assert "links" in text and "kept" in text
    assert xml.read_bytes() == before, "the input XML is untouched"
    assert "Stitching Transform" in out.read_text()
    assert (tmp_path / "links.png").exists()

    assert main(["fuse", str(out), str(tmp_path / "f.ome.zarr"), "--preview", str(tmp_path / "f.png"),
                 "--downsample", "2", "-q"]) == 0
    assert (tmp_path / "f.ome.zarr" / "zarr.json").exists() and (tmp_path / "f.png").exists()
    attrs = json.loads((tmp_path / "f.ome.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    assert attrs["version"] == "0.5"
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[-1] == pytest.approx(2.0)

    assert main(["run", str(xml), str(tmp_path / "run.ome.zarr")]) == 0
    assert (tmp_path / "run.registered.xml").exists()
    assert "time per stage" in capsys.readouterr().out

    # the options that change the weights: content-based fusion and matched intensities
    assert main(["run", str(xml), str(tmp_path / "cb.ome.zarr"), "--content-based", "--match-intensity",
                 "--downsample", "2"]) == 0
    text = capsys.readouterr().out
    assert "intensities" in text and "mismatch" in text
    assert "IntensityAdjustments" in (tmp_path / "cb.registered.xml").read_text()
    plain = zarr.open_group(str(tmp_path / "f.ome.zarr"), mode="r")["0"][...]
    weighted = zarr.open_group(str(tmp_path / "cb.ome.zarr"), mode="r")["0"][...]
    assert plain.shape == weighted.shape and not np.array_equal(plain, weighted)


def test_convert_command(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(tmp_path / f"t{i}.tif", rng.integers(0, 1000, (30, 40), dtype=np.uint16))
    (tmp_path / "pos.csv").write_text("file,x,y\nt0.tif,0,0\nt1.tif,17.5,0\n")
    assert main(["convert", str(tmp_path), str(tmp_path / "pos.csv"), "-o", str(tmp_path / "p" / "d.xml"),
                 "--voxel-size", "0.5,0.5", "--format", "zarr", "-q"]) == 0
    project = open_project(tmp_path / "p" / "d.xml")
    assert project.ndim == 2
    np.testing.assert_allclose(project.model(project.views[1])[:3, 3], [0, 0, 35.0])


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.xml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tilefuse info: error:") and "missing.xml" in err and err.count("\n") == 1


def test_run_report_names_the_options_that_differ(sample, tmp_path, capsys):
    assert main(["run", str(sample / "dataset.xml"), str(tmp_path / "o.ome.zarr"), "--blending", "average",
                 "--preset", "strict"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("options") and "preset=strict" in first and "blending=average" in first
    assert "interpolation" not in first  # defaults are not listed


def test_run_writes_the_container_asked_for(sample, tmp_path):
    """`run --container n5` once wrote HDF5: the option was dropped on its way to the writer."""
    assert main(["run", str(sample / "dataset.xml"), str(tmp_path / "out.xml"), "--container", "n5",
                 "--downsample", "4", "-q"]) == 0
    assert (tmp_path / "out.n5").is_dir() and not (tmp_path / "out.h5").exists()
    assert 'format="bdv.n5"' in (tmp_path / "out.xml").read_text()


def test_a_closed_pipe_is_not_an_error(sample, monkeypatch):
    """`tilefuse info x.xml | head -1`: the reader leaves early; no traceback, exit 0."""
    import sys

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", str(sample / "dataset.xml")]) == 0
