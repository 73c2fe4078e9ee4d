"""Acquisition files whose metadata are damaged are refused, never read as something else."""

from __future__ import annotations

import pytest

tifffile = pytest.importorskip("tifffile")

from tilefuse.cli import main  # noqa: E402
from tilefuse.convert import convert_files  # noqa: E402
from tilefuse.errors import ImageDataError  # noqa: E402
from tilefuse.sample_data import make_mosaic  # noqa: E402


def _two_tile_ome_tiff(path):
    mosaic = make_mosaic((1, 2), (32, 48), overlap=0.25, seed=1)
    with tifffile.TiffWriter(path, ome=True) as tif:
        for i in range(2):
            y, x = mosaic.stage_positions[i] * 0.5
            tif.write(mosaic.tile(i), metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                "Plane": {"PositionX": [x], "PositionY": [y]}})


def test_ome_tiff_with_damaged_ome_xml_is_refused(tmp_path, capsys):
    # The OME-XML's end overwritten (same length): tifffile then reads the file as a plain TIFF, and convert
    # made the 2-tile scan one view of 2 planes (z), 1 µm pixels, which `run` fused with exit 0.
    good, bad = tmp_path / "scan.ome.tif", tmp_path / "damaged.ome.tif"
    _two_tile_ome_tiff(good)
    data = good.read_bytes()
    assert data.count(b"</OME>") == 1
    bad.write_bytes(data.replace(b"</OME>", b"</OM  "))
    assert len(convert_files([good], tmp_path / "good.xml", in_place=True).views) == 2
    with pytest.raises(ImageDataError, match=r"damaged\.ome\.tif: the OME-XML metadata are not well-formed"):
        convert_files([bad], tmp_path / "bad.xml", in_place=True)
    assert main(["convert", str(bad), "-o", str(tmp_path / "bad.xml"), "-q"]) == 2
    assert "damaged.ome.tif: the OME-XML metadata are not well-formed" in capsys.readouterr().err
    assert not (tmp_path / "bad.xml").exists()


def test_a_readers_own_warnings_are_details(tmp_path):
    # A truncated OME-TIFF: tifffile logged "<TiffTag.fromfile> raised TiffFileError(...)" twice per open,
    # raw on stderr (Python's last-resort handler) beside tilefuse's own error about the same file.
    # A process of its own: in pytest's, its logging plugin catches what would reach that handler.
    import os
    import subprocess
    import sys
    from pathlib import Path

    import tilefuse

    good, cut = tmp_path / "scan.ome.tif", tmp_path / "cut.ome.tif"
    _two_tile_ome_tiff(good)
    data = good.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(tilefuse.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "tilefuse.cli", "convert", str(cut), "-o", str(tmp_path / "cut.xml"), "-q"]
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    lines = quiet.stderr.strip().splitlines()
    assert quiet.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"tilefuse convert: error: {cut}")
    verbose = subprocess.run([*command, "-v"], capture_output=True, text=True, env=env, timeout=120)
    assert verbose.returncode == 2 and "tifffile: <TiffTag" in verbose.stderr  # with -v, named after the reader


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.8])
def test_in_place_convert_refuses_a_truncated_file(tmp_path, capsys, fraction):
    # `convert --in-place` copies no pixels, so nothing read them: a TIFF cut short converted with exit 0 and
    # only the later `run` refused it.  Now the views are checked as every read checks them, before writing.
    good, cut = tmp_path / "scan.ome.tif", tmp_path / "cut.ome.tif"
    _two_tile_ome_tiff(good)
    data = good.read_bytes()
    cut.write_bytes(data[: int(len(data) * fraction)])
    # Cut before its metadata (at the end) the first page's tags give it away; else the pixel data's end.
    with pytest.raises(ImageDataError, match=r"cut\.ome\.tif: (view .*: pixel data end at byte \d+ but the file "
                                             r"has \d+ bytes; the TIFF is truncated|.* is the file truncated\?)"):
        convert_files([cut], tmp_path / "cut.xml", in_place=True)
    assert not (tmp_path / "cut.xml").exists()
    assert main(["convert", str(cut), "-o", str(tmp_path / "cut.xml"), "--in-place", "-q"]) == 2
    err = capsys.readouterr().err
    assert ("the TIFF is truncated" in err or "is the file truncated?" in err) and not (tmp_path / "cut.xml").exists()
    assert len(convert_files([good], tmp_path / "good.xml", in_place=True).views) == 2


@pytest.mark.parametrize("kept", [0.9, 0.95, 0.99])
def test_ome_tiff_cut_before_its_ome_xml_is_refused(tmp_path, capsys, kept):
    # tifffile writes the OME-XML last; cut there, tifffile skips the ImageDescription tag (value beyond the
    # end of the file) and reads a plain TIFF: convert made the 2-tile scan one 2-plane view at 1 µm, and
    # `run` fused it with exit 0.
    good, cut = tmp_path / "scan.ome.tif", tmp_path / "cut.ome.tif"
    _two_tile_ome_tiff(good)
    data = good.read_bytes()
    assert data.index(b"<?xml") > len(data) * 0.8  # the metadata are at the end: the cut loses them
    cut.write_bytes(data[: int(len(data) * kept)])
    assert main(["convert", str(cut), "-o", str(tmp_path / "cut.xml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "cut.ome.tif: 1 of the 14 TIFF tags of the first page cannot be read" in err
    assert "is the file truncated?" in err and not (tmp_path / "cut.xml").exists()
    assert len(convert_files([good], tmp_path / "good.xml", in_place=True).views) == 2
