"""Fuzz: damaged projects give a clean TilefuseError or the right pixels — never wrong pixels, never a raw
exception, never a hang.

The corpus is generated here, at test time (tests/damage.py): small valid projects in every format
(BDV HDF5 2D and 3D, N5, OME-Zarr, TIFF) with two pyramid levels and several blocks per tile, each
copied and damaged one way per case: truncated, garbage or folder-replaced blocks and files, N5
block headers, JSON and HDF5 metadata (dtype, block size, dimensions, compression, resolutions,
dataset paths, levels larger than level 0, external storage), and the XML (elements deleted,
duplicated or renamed, numbers and attributes replaced, bad bytes, truncation, huge timepoint
patterns), also on the real projects in ../shared/bigstitcher_examples when present.

Every case is checked the way a user would meet it: open the project, read every view at both
levels, fuse at full and half resolution.  Where the XML is intact (data damage), whatever loads
must equal the undamaged project's pixels exactly.  Where the XML is damaged, whatever loads must
agree with the new XML.  Everything else must be a TilefuseError whose message names a file.
The last test prints the counts.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

import tilefuse
from conftest import EXAMPLES, example_xmls
from damage import copy_project, damage, write_project_zarr_v2
from tilefuse.errors import TilefuseError
from tilefuse.sample_data import make_mosaic

#: Cases per kind of damage; their sum is the size of the corpus.
N_CASES = {"hdf5": 50, "hdf5-3d": 25, "n5": 56, "zarr": 64, "tiff": 30, "xml": 72}
#: Seeds beyond N_CASES that once gave wrong pixels (a level one voxel larger than level 0 / factor,
#: a Zarr dimension_separator that hides every chunk): kept so that they stay caught.
EXTRA_SEEDS = {"hdf5": [117, 211], "hdf5-3d": [207], "zarr": [300]}
#: Cases per real example project (XML damage).
N_REAL = 8
#: No case may take longer (huge timepoint patterns used to take 88 s and 3.4 GB).
MAX_SECONDS = 20.0

OUTCOMES: Counter = Counter()


@dataclass
class Base:
    folder: Path
    xml: Path
    pixels: dict  # (view, level) -> array
    fused: dict  # downsampling -> array


def _reference(xml: Path) -> Base:
    project = tilefuse.open_project(xml)
    pixels = {}
    for view in project.views:
        for level in range(len(project.levels(view))):
            pixels[(view, level)] = project.image(view, level).compute()
    fused = {ds: tilefuse.fuse(project, downsampling=ds).compute() for ds in (1, 2)}
    return Base(xml.parent, xml, pixels, fused)


def _write_base(folder: Path, fmt: str, ndim: int) -> Base:
    if ndim == 2:
        mosaic = make_mosaic((2, 2), (40, 40), 0.25, max_offset=3.0, seed=11)
        chunks, factors, vs = (1, 16, 16), [(1, 1, 1), (1, 2, 2)], (1.0, 1.0, 1.0)
    else:
        mosaic = make_mosaic((1, 1, 2), (6, 32, 32), 0.25, max_offset=2.0, seed=12)
        chunks, factors, vs = (2, 16, 16), [(1, 1, 1), (1, 2, 2)], tuple(mosaic.voxel_size)
    write_project_zarr_v2(folder / "dataset.xml", [mosaic.tile(i) for i in range(mosaic.n_tiles)],
                           mosaic.stage_positions * min(mosaic.voxel_size), voxel_size=vs, format=fmt,
                           factors=factors if fmt != "tiff" else [(1, 1, 1)], chunks=chunks)
    return _reference(folder / "dataset.xml")


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Base]:
    root = tmp_path_factory.mktemp("fuzz-bases")
    out = {fmt: _write_base(root / fmt, fmt, 2) for fmt in ("hdf5", "n5", "zarr", "tiff")}
    out["hdf5-3d"] = _write_base(root / "hdf5-3d", "hdf5", 3)
    return out


def _names_a_file(message: str, folder: Path) -> bool:
    return str(folder) in message or any(p.name in message for p in folder.rglob("*"))


def _check_pixels_against_xml(project, view, level, arr, base: Base) -> None:
    """Damaged XML: what loads must have the XML's size and real pixels from the files."""
    if level == 0:
        size = project.setups[view.setup].size
        assert size is None or arr.shape == tuple(size), (arr.shape, size)
    same_shape = [ref for ref in base.pixels.values() if ref.shape == arr.shape]
    assert any(np.array_equal(arr, ref) for ref in same_shape), "pixels that are in no file"


def _run(xml: Path, base: Base, data_damage: bool, description: str) -> str:
    """Open, read, fuse; returns the outcome (assertion error for wrong pixels, fail for raw exceptions)."""
    refused = loaded = 0
    try:
        project = tilefuse.open_project(xml)
    except TilefuseError as exc:
        assert _names_a_file(str(exc), xml.parent), f"{description}: error names no file: {exc}"
        return "refused when opened"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. missing views skipped
        for view in project.views:
            try:
                n_levels = len(project.levels(view))
            except TilefuseError:
                refused += 1
                continue
            for level in range(n_levels):
                try:
                    arr = project.image(view, level).compute()
                except TilefuseError as exc:
                    assert _names_a_file(str(exc), xml.parent), f"{description}: error names no file: {exc}"
                    refused += 1
                    continue
                loaded += 1
                if data_damage:
                    ref = base.pixels.get((view, level))
                    assert ref is not None, f"{description}: {view} level {level} appeared"
                    np.testing.assert_array_equal(arr, ref,
                                                  err_msg=f"{description}: wrong pixels, {view} level {level}")
                else:
                    _check_pixels_against_xml(project, view, level, arr, base)
        for ds in (1, 2):
            try:
                fused = tilefuse.fuse(project, downsampling=ds).compute()
            except TilefuseError as exc:
                assert _names_a_file(str(exc), xml.parent) or "no views" in str(exc), \
                    f"{description}: error names no file: {exc}"
                refused += 1
                continue
            loaded += 1
            if data_damage:
                np.testing.assert_array_equal(fused, base.fused[ds], err_msg=f"{description}: wrong fusion (ds {ds})")
            else:
                assert not np.issubdtype(fused.dtype, np.floating) or np.isfinite(fused).all()
    if refused and loaded:
        return "partly refused, the rest correct"
    return "refused when read" if refused else "loaded correctly"


def _case(tmp_path, base: Base, kind: str, seed: int, data_damage: bool) -> None:
    folder = copy_project(base.folder, tmp_path / "case")
    xml = folder / base.xml.name
    description = damage(kind, folder, xml, seed)
    if description is None:
        OUTCOMES["not applicable"] += 1
        pytest.skip("mutation does not apply to this project")
    start = time.perf_counter()
    try:
        outcome = _run(xml, base, data_damage, description)
    except AssertionError:
        OUTCOMES["WRONG"] += 1
        raise
    except Exception as exc:  # noqa: BLE001 - the point: nothing but TilefuseError may escape
        OUTCOMES["RAW EXCEPTION"] += 1
        pytest.fail(f"{description}: raw {type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    assert elapsed < MAX_SECONDS, f"{description}: took {elapsed:.1f} s"
    OUTCOMES[outcome] += 1


DATA_CASES = [(fmt, i) for fmt in ("hdf5", "hdf5-3d", "n5", "zarr", "tiff")
              for i in [*range(N_CASES[fmt]), *EXTRA_SEEDS.get(fmt, [])]]


@pytest.mark.parametrize("fmt,seed", DATA_CASES, ids=[f"{f}-{i}" for f, i in DATA_CASES])
def test_damaged_data(tmp_path, bases, fmt, seed):
    kind = "hdf5" if fmt == "hdf5-3d" else fmt
    _case(tmp_path, bases[fmt], kind, seed, data_damage=True)


XML_CASES = [(fmt, i) for i in range(N_CASES["xml"]) for fmt in [("hdf5", "n5", "zarr", "tiff")[i % 4]]]


@pytest.mark.parametrize("fmt,seed", XML_CASES, ids=[f"xml-{f}-{i}" for f, i in XML_CASES])
def test_damaged_xml(tmp_path, bases, fmt, seed):
    _case(tmp_path, bases[fmt], "xml", seed, data_damage=False)


REAL = [p.name for p in example_xmls()]


@pytest.fixture(scope="module")
def real_bases(tmp_path_factory) -> dict[str, Base]:
    """The shared examples, each copied alone into a folder (with its .h5 when it has one)."""
    out = {}
    for name in REAL:
        folder = tmp_path_factory.mktemp(name.replace(".", "_"))
        shutil.copy(EXAMPLES / name, folder / name)
        h5 = EXAMPLES / name.replace(".xml", ".h5")
        hdf5 = etree.parse(str(EXAMPLES / name)).find("SequenceDescription/ImageLoader/hdf5")
        if h5.exists() and hdf5 is not None:
            shutil.copy(h5, folder / hdf5.text.strip())  # under the name its XML gives
            out[name] = _reference(folder / name)
        else:  # no pixels: what can be checked is the XML
            out[name] = Base(folder, folder / name, {}, {})
    return out


@pytest.mark.skipif(not REAL, reason="../shared/bigstitcher_examples is not available")
@pytest.mark.parametrize("name,seed", [(n, i) for n in REAL for i in range(N_REAL)])
def test_damaged_real_xml(tmp_path, real_bases, name, seed):
    _case(tmp_path, real_bases[name], "xml", seed, data_damage=False)


def test_zz_fuzz_summary(capsys):
    """Print the counts (run with -s to see them); every case ended in one of the allowed outcomes."""
    total = sum(OUTCOMES.values())
    if total == 0:
        pytest.skip("run together with the fuzz cases")
    with capsys.disabled():
        print(f"\nfuzz corpus: {total} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
    assert OUTCOMES["WRONG"] == 0 and OUTCOMES["RAW EXCEPTION"] == 0
