"""Damaged image data never gives wrong pixels: a TilefuseError naming the file, or the right pixels.

For each format (hdf5, n5, zarr, tiff) one small two-view project is written at
test time.  Each case copies it, damages the copy (truncated or garbage blocks,
wrong shapes, types, block sizes, pyramid factors, paths leaving the container,
HDF5 external data, corrupt JSON...) and reads it every way tilefuse reads
pixels: ``Project.image`` at every level and fusions whose grids use pyramid
levels 0, 1 and 2.  Every one of those reads must either raise a
:class:`~tilefuse.errors.TilefuseError` whose message names the damaged file
(or its container), or return exactly the undamaged project's pixels.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

import tilefuse
import tilefuse.loaders  # the _Faulty loader below subclasses it at import
from damage import write_project_zarr_v2
from tilefuse.errors import TilefuseError
from tilefuse.formats.n5 import decode_block, encode_block

SHAPE = (8, 32, 40)  # z y x of each view
FACTORS = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
CHUNKS = (4, 16, 16)
DOWNSAMPLINGS = (1, 2, 4)  # fusion grids reading levels 0, 1 and 2
CONTAINER = {"hdf5": "dataset.h5", "n5": "dataset.n5", "zarr": "dataset.ome.zarr", "tiff": "dataset_tiff"}

H5_CELLS = "t00000/s00/{level}/cells"
N5_S = "dataset.n5/setup0/timepoint0/s{level}"
ZARR_V0 = "dataset.ome.zarr/s0-t0.zarr"
TIFF_V0 = "dataset_tiff/t0_s0.tif"


# -- the undamaged projects ------------------------------------------------------
def _images():
    rng = np.random.default_rng(9)
    # Values above 255 everywhere, so uint16 data misread as 8-bit cannot look right.
    return [rng.integers(300, 60000, SHAPE, dtype=np.uint16) for _ in range(2)]


def _read_all(xml: Path, readers=None) -> dict:
    """``{reader: pixels or the TilefuseError raised}`` for every read a case checks."""
    out = {}
    try:
        project = tilefuse.open_project(xml)
    except TilefuseError as exc:
        return {"open": exc}
    if readers is None:  # the undamaged project: every view and level, fusions reading levels 0, 1, 2
        readers = [("image", v, level) for v in project.views for level in range(len(FACTORS))]
        readers += [("fuse", ds) for ds in DOWNSAMPLINGS]
    for reader in readers:
        if reader[0] == "image":
            out[reader] = _attempt(lambda reader=reader: project.image(reader[1], reader[2]).compute())
        else:
            out[reader] = _attempt(
                lambda reader=reader: tilefuse.plan_fusion(project, downsampling=reader[1]).to_dask().compute())
    return out


def _attempt(read: Callable[[], np.ndarray]):
    try:
        return read()
    except TilefuseError as exc:
        return exc


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Per format: the undamaged project's folder and its pixels, read every way."""
    from tilefuse.loaders.base import drop_cached_handles

    out = {}
    images = _images()
    for fmt in CONTAINER:
        root = tmp_path_factory.mktemp(f"pristine-{fmt}")
        write_project_zarr_v2(root / "dataset.xml", images, [(0, 0, 0), (0, 0, 30)], format=fmt,
                               factors=FACTORS, chunks=CHUNKS)
        reference = _read_all(root / "dataset.xml")
        # TIFF maps have one level: Project.image(view, 1) is refused there, damaged or not.
        bad = {k: v for k, v in reference.items() if isinstance(v, Exception)}
        assert not bad or (fmt == "tiff" and all(k[0] == "image" and k[2] > 0 for k in bad)), bad
        out[fmt] = (root, {k: v for k, v in reference.items() if k not in bad})
    drop_cached_handles()
    return out


# -- damage helpers --------------------------------------------------------------
def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    """Change a JSON file in place (``edit`` mutates the parsed object)."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set_json(rel: str, key: str, value) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        _edit_json(root / rel, lambda d: d.__setitem__(key, value))
    return damage


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / rel).write_bytes(data)
    return damage


def _truncate(rel: str, keep: float | int) -> Callable[[Path], None]:
    """Keep a fraction (float) of the file, or drop ``-keep`` bytes (negative int), or keep ``keep`` bytes."""
    def damage(root: Path) -> None:
        file = root / rel
        data = file.read_bytes()
        n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
        file.write_bytes(data[:n])
    return damage


def _garbage(rel: str, n: int | None = None) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        file = root / rel
        size = n if n is not None else file.stat().st_size
        file.write_bytes(np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8).tobytes())
    return damage


def _folder(rel: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        file = root / rel
        if file.is_dir():
            shutil.rmtree(file)
        else:
            file.unlink()
        (file / "x").mkdir(parents=True)
    return damage


def _remove(rel: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / rel).unlink()
    return damage


def _xml_size(xyz: str, setup: int = 0) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        tree = etree.parse(str(root / "dataset.xml"))
        for vs in tree.getroot().iter("ViewSetup"):
            if vs.findtext("id").strip() == str(setup):
                vs.find("size").text = xyz
        tree.write(str(root / "dataset.xml"))
    return damage


def _xml_loader(edit: Callable) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        tree = etree.parse(str(root / "dataset.xml"))
        edit(tree.getroot().find("SequenceDescription/ImageLoader"))
        tree.write(str(root / "dataset.xml"))
    return damage


# -- HDF5 ------------------------------------------------------------------------
def _h5(edit: Callable) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        import h5py

        with h5py.File(root / "dataset.h5", "r+") as f:
            edit(f, root)
    return damage


def _h5_replace(key: str, make: Callable[[np.ndarray], np.ndarray] = lambda a: a, **options):
    """Replace dataset ``key`` by ``make(old data)`` stored with ``options``."""
    def edit(f, root):
        data = make(f[key][()])
        attrs = dict(f[key].attrs)
        del f[key]
        ds = f.create_dataset(key, data=data, **options)
        ds.attrs.update(attrs)
    return _h5(edit)


def _h5_group(key: str):
    def edit(f, root):
        del f[key]
        f.create_group(key)
    return _h5(edit)


def _h5_attr(name: str, value):
    return _h5(lambda f, root: f["s00"].attrs.__setitem__(name, value))


def _h5_external_storage(f, root):
    key = H5_CELLS.format(level=0)
    data = f[key][()]
    raw = root / "cells.raw"
    raw.write_bytes(data.tobytes())
    del f[key]
    f.create_dataset(key, shape=data.shape, dtype=data.dtype, external=[(str(raw), 0, data.nbytes)])


def _h5_external_link(f, root):
    import h5py

    key = H5_CELLS.format(level=0)
    with h5py.File(root / "other.h5", "w") as other:
        other.create_dataset("cells", data=f[key][()], chunks=CHUNKS)
    del f[key]
    f[key] = h5py.ExternalLink("other.h5", "/cells")


def _h5_chunk(make: Callable[[bytes, int], bytes], offset=(0, 0, 0)):
    """Rewrite one stored chunk of level 0 with ``make(raw chunk, uncompressed size)``."""
    def edit(f, root):
        ds = f[H5_CELLS.format(level=0)]
        _, raw = ds.id.read_direct_chunk(offset)
        ds.id.write_direct_chunk(offset, make(raw, int(np.prod(ds.chunks)) * ds.dtype.itemsize))
    return _h5(edit)


def _h5_chunk_bytes_garbage(f, root):
    ds = f[H5_CELLS.format(level=0)]
    info = ds.id.get_chunk_info_by_coord((4, 16, 16))
    path = f.filename
    f.flush()
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 2)
        fh.write(b"\xff\x00\x13\x37" * ((info.size - 2) // 4))


def _h5_contiguous(f, key: str = H5_CELLS.format(level=0)) -> None:
    data = f[key][()]
    del f[key]
    f.create_dataset(key, data=data)


def _h5_res(values):
    return _h5_replace("s00/resolutions", lambda a: np.asarray(values))


HDF5_CASES = {
    "cells shorter in z": _h5_replace(H5_CELLS.format(level=0), lambda a: a[:7], chunks=CHUNKS),
    "cells wider in x": _h5_replace(H5_CELLS.format(level=0), lambda a: np.pad(a, ((0, 0), (0, 0), (0, 1))),
                                    chunks=CHUNKS),
    "cells smaller everywhere": _h5_replace(H5_CELLS.format(level=0), lambda a: a[:4, :16, :20]),
    "level 1 as large as level 0": _h5(lambda f, root: (f.__delitem__(H5_CELLS.format(level=1)),
                                                        f.create_dataset(H5_CELLS.format(level=1),
                                                                         data=f[H5_CELLS.format(level=0)][()]))),
    "level 1 too small": _h5_replace(H5_CELLS.format(level=1), lambda a: a[:, :8, :10]),
    # A writer padding a level by one voxel: 32 / 2 is 16, not 17 (every coarser fused pixel would shift).
    "level 1 one row more than level 0 / factor": _h5_replace(H5_CELLS.format(level=1),
                                                              lambda a: np.pad(a, ((0, 0), (0, 1), (0, 0)))),
    "level 2 deeper than level 1": _h5_replace(H5_CELLS.format(level=2), lambda a: np.concatenate([a, a, a])),
    "cells is a group": _h5_group(H5_CELLS.format(level=0)),
    "level 1 cells is a group": _h5_group(H5_CELLS.format(level=1)),
    "cells 2D": _h5_replace(H5_CELLS.format(level=0), lambda a: a[0]),
    "cells 4D": _h5_replace(H5_CELLS.format(level=0), lambda a: a[None]),
    "level 2 missing": _h5(lambda f, root: f.__delitem__("t00000/s00/2")),
    "resolutions a string": _h5_replace("s00/resolutions", lambda a: np.array(b"1 1 1 2 2 1")),
    "resolutions 4 columns": _h5_res(np.ones((3, 4))),
    "resolutions 7 numbers": _h5_res(np.ones(7)),
    "resolutions a group": _h5_group("s00/resolutions"),
    "resolutions more rows than levels": _h5_res([[1, 1, 1], [2, 2, 1], [4, 4, 2], [8, 8, 4]]),
    "resolutions NaN": _h5_res([[1, 1, 1], [np.nan, 2, 1], [4, 4, 2]]),
    "resolutions zero": _h5_res([[1, 1, 1], [0, 2, 1], [4, 4, 2]]),
    "resolutions negative": _h5_res([[1, 1, 1], [2, 2, 1], [-4, 4, 2]]),
    "resolutions below 1": _h5_res([[1, 1, 1], [0.5, 0.5, 1], [4, 4, 2]]),
    "resolutions inf": _h5_res([[1, 1, 1], [2, 2, 1], [4, np.inf, 2]]),
    "resolutions level 0 not 1": _h5_res([[2, 2, 1], [2, 2, 1], [4, 4, 2]]),
    "resolutions decreasing": _h5_res([[1, 1, 1], [4, 4, 2], [2, 2, 1]]),
    "resolutions not matching level shapes": _h5_res([[1, 1, 1], [4, 4, 1], [8, 8, 2]]),
    "dataType uint8 over uint16 cells": _h5_attr("dataType", "uint8"),
    "dataType float32 over uint16 cells": _h5_attr("dataType", "float32"),
    "dataType unknown": _h5_attr("dataType", "complex64"),
    "cells float16": _h5_replace(H5_CELLS.format(level=0), lambda a: a.astype(np.float16)),
    "cells bool without dataType": _h5(lambda f, root: (f["s00"].attrs.__delitem__("dataType"),
                                                        f.__delitem__(H5_CELLS.format(level=0)),
                                                        f.create_dataset(H5_CELLS.format(level=0),
                                                                         shape=SHAPE, dtype=bool))),
    "external storage": _h5(_h5_external_storage),
    "external link to an unlisted file": _h5(_h5_external_link),
    "chunk decodes to half a chunk": _h5_chunk(lambda raw, n: zlib.compress(zlib.decompress(raw)[: n // 2])),
    "chunk decodes to two chunks": _h5_chunk(lambda raw, n: zlib.compress(zlib.decompress(raw) * 2)),
    "chunk decodes to one byte more": _h5_chunk(lambda raw, n: zlib.compress(zlib.decompress(raw) + b"\0")),
    "chunk not deflate": _h5_chunk(lambda raw, n: b"\0" * n),
    "chunk truncated": _h5_chunk(lambda raw, n: raw[: len(raw) // 2]),
    "chunk bytes overwritten in the file": _h5(_h5_chunk_bytes_garbage),
    "file truncated to half": _truncate("dataset.h5", 0.5),
    "file truncated by 100 bytes": _truncate("dataset.h5", -100),
    "file truncated to 100 bytes": _truncate("dataset.h5", 100),
    "file garbage": _garbage("dataset.h5"),
    "file empty": _write("dataset.h5", b""),
    "file is a folder": _folder("dataset.h5"),
    "contiguous cells, subdivisions zero": _h5(lambda f, root: (
        _h5_contiguous(f), f["s00/subdivisions"].__setitem__(Ellipsis, 0))),
    "contiguous cells, no subdivisions": _h5(lambda f, root: (
        _h5_contiguous(f), f.__delitem__("s00/subdivisions"))),
    # Not damage: other valid layouts of the same pixels must read back exactly.
    "ok: contiguous cells": _h5_replace(H5_CELLS.format(level=0)),
    "ok: lzf compressed cells": _h5_replace(H5_CELLS.format(level=0), chunks=(8, 8, 8), compression="lzf"),
    "ok: shuffled gzip cells": _h5_replace(H5_CELLS.format(level=0), chunks=(3, 7, 9), compression="gzip",
                                           shuffle=True),
    "ok: fletcher32 cells": _h5_replace(H5_CELLS.format(level=0), chunks=CHUNKS, fletcher32=True),
    "ok: cells stored as int16 (legacy BDV)": _h5_replace(H5_CELLS.format(level=0), lambda a: a.view(np.int16),
                                                          chunks=CHUNKS),
}


# -- N5 --------------------------------------------------------------------------
def _n5_block(level: int = 0, x: int = 0, y: int = 0, z: int = 0) -> str:
    return f"{N5_S.format(level=level)}/{x}/{y}/{z}"


def _n5_attrs(level: int | None = None) -> str:
    base = "dataset.n5/setup0" if level is None else N5_S.format(level=level)
    return f"{base}/attributes.json"


def _n5_rewrite_block(make: Callable[[np.ndarray], bytes], level=0, x=2, y=0, z=0):
    """Decode a block of view 0 and write ``make(block)`` in its place."""
    def damage(root: Path) -> None:
        file = root / _n5_block(level, x, y, z)
        comp = json.loads((root / _n5_attrs(level)).read_text())["compression"]
        file.write_bytes(make(decode_block(file.read_bytes(), np.dtype(np.uint16), comp)))
    return damage


def _n5_header(xyz: tuple[int, int, int]):
    """Rewrite a block's header dimensions, keeping its data."""
    def damage(root: Path) -> None:
        file = root / _n5_block(0, 0, 0, 0)
        data = file.read_bytes()
        file.write_bytes(data[:4] + struct.pack(">3I", *xyz) + data[16:])
    return damage


def _n5_both(key: str, value):
    """Set an attribute in the setup group and every level (consistently damaged)."""
    def damage(root: Path) -> None:
        for rel in [_n5_attrs()] + [_n5_attrs(level) for level in range(3)]:
            _edit_json(root / rel, lambda d: d.__setitem__(key, value))
    return damage


def _n5_padded_edge(block: np.ndarray) -> bytes:
    padded = np.zeros(CHUNKS, np.uint16)
    padded[tuple(slice(0, n) for n in block.shape)] = block
    padded[:, :, block.shape[2]:] = 7  # outside the dataset: must be ignored
    return encode_block(padded, {"type": "gzip"})


def _n5_recompress_raw(root: Path) -> None:
    level0 = root / N5_S.format(level=0)
    comp = json.loads((level0 / "attributes.json").read_text())["compression"]
    for file in level0.rglob("*"):
        if file.is_file() and file.name != "attributes.json":
            block = decode_block(file.read_bytes(), np.dtype(np.uint16), comp)
            file.write_bytes(encode_block(block, {"type": "raw"}))
    _edit_json(level0 / "attributes.json", lambda d: d.__setitem__("compression", {"type": "raw"}))


N5_CASES = {
    "dimensions x + 1": _set_json(_n5_attrs(0), "dimensions", [41, 32, 8]),
    "dimensions z - 1": _set_json(_n5_attrs(0), "dimensions", [40, 32, 7]),
    "dimensions 2 values": _set_json(_n5_attrs(0), "dimensions", [40, 32]),
    "dimensions strings": _set_json(_n5_attrs(0), "dimensions", ["40", "32", "8"]),
    "dimensions fractional": _set_json(_n5_attrs(0), "dimensions", [40.5, 32, 8]),
    "dimensions not a list": _set_json(_n5_attrs(0), "dimensions", 40),
    "level 1 dimensions of level 0": _set_json(_n5_attrs(1), "dimensions", [40, 32, 8]),
    "level 1 dimensions one more than level 0 / factor": _set_json(_n5_attrs(1), "dimensions", [21, 16, 8]),
    "level 2 dimensions too small": _set_json(_n5_attrs(2), "dimensions", [5, 8, 4]),
    "dataType uint8 in level 0 only": _set_json(_n5_attrs(0), "dataType", "uint8"),
    "dataType uint8 over uint16 blocks": _n5_both("dataType", "uint8"),
    "dataType int8 over uint16 blocks": _n5_both("dataType", "int8"),
    "dataType uint32 over uint16 blocks": _n5_both("dataType", "uint32"),
    "dataType float64 over uint16 blocks": _n5_both("dataType", "float64"),
    "dataType unknown": _set_json(_n5_attrs(0), "dataType", "complex64"),
    "dataType not a string": _n5_both("dataType", ["uint16"]),
    "blockSize zero": _set_json(_n5_attrs(0), "blockSize", [16, 0, 4]),
    "blockSize negative": _set_json(_n5_attrs(0), "blockSize", [16, 16, -4]),
    "blockSize smaller than the blocks": _set_json(_n5_attrs(0), "blockSize", [8, 8, 2]),
    "blockSize larger than the blocks": _set_json(_n5_attrs(0), "blockSize", [32, 32, 8]),
    "blockSize 2 values": _set_json(_n5_attrs(0), "blockSize", [16, 16]),
    "compression unknown": _set_json(_n5_attrs(0), "compression", {"type": "snappy"}),
    "compression raw over gzip blocks": _set_json(_n5_attrs(0), "compression", {"type": "raw"}),
    "compression zstd over gzip blocks": _set_json(_n5_attrs(0), "compression", {"type": "zstd"}),
    "compression xz over gzip blocks": _set_json(_n5_attrs(0), "compression", {"type": "xz"}),
    "compression a number": _set_json(_n5_attrs(0), "compression", 5),
    "block is a folder": _folder(_n5_block(0, 1, 1, 1)),
    "block truncated to 2 bytes": _truncate(_n5_block(0, 1, 0, 1), 2),
    "block truncated to its header": _truncate(_n5_block(0, 1, 0, 1), 16),
    "block truncated to half": _truncate(_n5_block(0, 1, 0, 1), 0.5),
    "block truncated by 1 byte": _truncate(_n5_block(0, 1, 0, 1), -1),
    "block garbage": _garbage(_n5_block(0, 0, 1, 0)),
    "block empty": _write(_n5_block(0, 0, 1, 0), b""),
    "block with trailing bytes": lambda root: (root / _n5_block(0, 0, 0, 1)).write_bytes(
        (root / _n5_block(0, 0, 0, 1)).read_bytes() + b"\x1f\x8b junk"),
    "block header says other dims, same count": _n5_header((32, 8, 4)),
    "block header says half the block": _n5_header((16, 16, 2)),
    "block header has 2 dimensions": lambda root: (root / _n5_block()).write_bytes(
        struct.pack(">HH2I", 0, 2, 16, 16) + (root / _n5_block()).read_bytes()[16:]),
    "block header unknown mode": lambda root: (root / _n5_block()).write_bytes(
        b"\x00\x07" + (root / _n5_block()).read_bytes()[2:]),
    "edge block shorter than clipped": _n5_rewrite_block(lambda b: encode_block(b[:, :, :5], {"type": "gzip"})),
    "downsamplingFactors NaN": _set_json(_n5_attrs(), "downsamplingFactors",
                                         [[1, 1, 1], [2, float("nan"), 1], [4, 4, 2]]),
    "downsamplingFactors zero": _set_json(_n5_attrs(), "downsamplingFactors", [[1, 1, 1], [0, 2, 1], [4, 4, 2]]),
    "downsamplingFactors strings": _set_json(_n5_attrs(), "downsamplingFactors", [[1, 1, 1], ["a", 2, 1], [4, 4, 2]]),
    "downsamplingFactors 2 values": _set_json(_n5_attrs(), "downsamplingFactors", [[1, 1, 1], [2, 2], [4, 4, 2]]),
    "downsamplingFactors level 0 not 1": _set_json(_n5_attrs(), "downsamplingFactors",
                                                   [[2, 2, 1], [2, 2, 1], [4, 4, 2]]),
    "downsamplingFactors decreasing": _set_json(_n5_attrs(), "downsamplingFactors", [[1, 1, 1], [4, 4, 2], [2, 2, 1]]),
    "downsamplingFactors not a list": _set_json(_n5_attrs(), "downsamplingFactors", "2,2,1"),
    "downsamplingFactors more levels than datasets": _set_json(
        _n5_attrs(), "downsamplingFactors", [[1, 1, 1], [2, 2, 1], [4, 4, 2], [8, 8, 4]]),
    "level 1 attributes missing": _remove(_n5_attrs(1)),
    "level 0 attributes corrupt JSON": _write(_n5_attrs(0), b'{"dimensions": [40, 32, 8], "blockSi'),
    "setup attributes corrupt JSON": _write(_n5_attrs(), b"{\"downsamplingFactors\": [[1,1,1],"),
    "setup attributes a list": _write(_n5_attrs(), b"[1, 2, 3]"),
    "level 0 attributes a list": _write(_n5_attrs(0), b"[]"),
    "level 0 attributes invalid UTF-8": _write(_n5_attrs(0), b'{"dataType": "uint\xff16"}'),
    "setup folder is a file": lambda root: (shutil.rmtree(root / "dataset.n5/setup0"),
                                           (root / "dataset.n5/setup0").write_bytes(b"x")),
    # Not damage: other valid layouts of the same pixels must read back exactly.
    "ok: edge block padded to the full block size": _n5_rewrite_block(_n5_padded_edge),
    "ok: root attributes corrupt": _write("dataset.n5/attributes.json", b"{nope"),
    "ok: level 0 recompressed raw": _n5_recompress_raw,
}


# -- OME-Zarr --------------------------------------------------------------------
def _zarray(level: int = 0, view: str = ZARR_V0) -> str:
    return f"{view}/{level}/.zarray"


def _zchunk(level: int = 0, z: int = 0, y: int = 0, x: int = 0) -> str:
    return f"{ZARR_V0}/{level}/0/0/{z}/{y}/{x}"


def _zattrs(view: str = ZARR_V0) -> str:
    return f"{view}/.zattrs"


def _multiscale(edit: Callable[[dict], object], view: str = ZARR_V0):
    def damage(root: Path) -> None:
        _edit_json(root / _zattrs(view), lambda d: edit(d["multiscales"][0]))
    return damage


def _dataset_path(level: int, path: str, view: str = ZARR_V0):
    return _multiscale(lambda m: m["datasets"][level].__setitem__("path", path), view)


def _scale(level: int, scale):
    return _multiscale(lambda m: m["datasets"][level]["coordinateTransformations"][0].__setitem__("scale", scale))


def _zgroup_path(setup: int, path: str):
    def edit(loader):
        for zg in loader.iter("zgroup"):
            if zg.get("setup") == str(setup):
                zg.set("path", path)
    return _xml_loader(edit)


ZARR_CASES = {
    "shape z - 1": _set_json(_zarray(0), "shape", [1, 1, 7, 32, 40]),
    "shape x + 1": _set_json(_zarray(0), "shape", [1, 1, 8, 32, 41]),
    "shape 2D": _set_json(_zarray(0), "shape", [32, 40]),
    "level 1 shape of level 0": _set_json(_zarray(1), "shape", [1, 1, 8, 32, 40]),
    "level 1 shape one more than level 0 / factor": _set_json(_zarray(1), "shape", [1, 1, 8, 16, 21]),
    # Older zarr-python wrote no dimension_separator, whose default is "."; the chunks are under "/".
    ".zarray without dimension_separator": lambda root: _edit_json(
        root / _zarray(0), lambda d: d.pop("dimension_separator")),
    "level 1 .zarray dimension_separator '.'": _set_json(_zarray(1), "dimension_separator", "."),
    "level 0 .zarray dimension_separator 'x'": _set_json(_zarray(0), "dimension_separator", "x"),
    "level 2 shape too small": _set_json(_zarray(2), "shape", [1, 1, 4, 8, 5]),
    "chunks zero": _set_json(_zarray(0), "chunks", [1, 1, 4, 0, 16]),
    "chunks negative": _set_json(_zarray(0), "chunks", [1, 1, 4, -16, 16]),
    "chunks strings": _set_json(_zarray(0), "chunks", ["a", 1, 4, 16, 16]),
    "chunks not matching the stored chunks": _set_json(_zarray(0), "chunks", [1, 1, 4, 8, 8]),
    "dtype uint8 over uint16 chunks": _set_json(_zarray(0), "dtype", "|u1"),
    "dtype uint32 over uint16 chunks": _set_json(_zarray(0), "dtype", "<u4"),
    "dtype float16": _set_json(_zarray(0), "dtype", "<f2"),
    "dtype bool": _set_json(_zarray(0), "dtype", "|b1"),
    "dtype garbage": _set_json(_zarray(0), "dtype", "<q9"),
    "compressor none over blosc chunks": _set_json(_zarray(0), "compressor", None),
    "compressor zlib over blosc chunks": _set_json(_zarray(0), "compressor", {"id": "zlib", "level": 1}),
    "compressor unknown": _set_json(_zarray(0), "compressor", {"id": "nope"}),
    "chunk truncated to half": _truncate(_zchunk(0, 1, 1, 1), 0.5),
    "chunk truncated by 1 byte": _truncate(_zchunk(0, 1, 1, 1), -1),
    "chunk garbage": _garbage(_zchunk(0, 0, 1, 2)),
    "chunk empty": _write(_zchunk(0, 0, 1, 2), b""),
    "chunk is a folder": _folder(_zchunk(0, 1, 0, 0)),
    "level 1 chunk garbage": _garbage(_zchunk(1, 0, 0, 0)),
    ".zattrs corrupt JSON": _write(_zattrs(), b'{"multiscales": [{"datasets": '),
    ".zarray corrupt JSON": _write(_zarray(0), b'{"shape": [1, 1, 8, 32'),
    "level 2 .zarray corrupt JSON": _write(_zarray(2), b"\x00\x01"),
    ".zgroup corrupt JSON": _write(f"{ZARR_V0}/.zgroup", b"zarr_format 2"),
    ".zattrs a list": _write(_zattrs(), b"[]"),
    "multiscales an object": _set_json(_zattrs(), "multiscales", {"datasets": []}),
    "multiscales empty": _set_json(_zattrs(), "multiscales", []),
    "multiscales missing": lambda root: _edit_json(root / _zattrs(), lambda d: d.pop("multiscales")),
    "datasets missing": _multiscale(lambda m: m.pop("datasets")),
    "datasets empty": _multiscale(lambda m: m.__setitem__("datasets", [])),
    "datasets not objects": _multiscale(lambda m: m.__setitem__("datasets", ["0", "1", "2"])),
    "dataset path missing": _multiscale(lambda m: m["datasets"][1].pop("path")),
    "dataset path a number": _dataset_path(0, 0),
    "dataset path into another view": _dataset_path(0, "../s1-t0.zarr/0"),
    "dataset path ../ of the other view's group": _dataset_path(0, "../s0-t0.zarr/0",
                                                               f"{CONTAINER['zarr']}/s1-t0.zarr"),
    "dataset path absolute elsewhere": lambda root: _dataset_path(
        0, str(root / CONTAINER["zarr"] / "s1-t0.zarr" / "0"))(root),
    "dataset path of a missing level": _dataset_path(1, "7"),
    "datasets reordered": _multiscale(lambda m: m["datasets"].reverse()),
    "level 1 path of level 0": _dataset_path(1, "0"),
    "coordinateTransformations not a list": _multiscale(
        lambda m: m["datasets"][1].__setitem__("coordinateTransformations", "scale")),
    "scale NaN": _scale(1, [1, 1, 3, float("nan"), 2]),
    "scale zero": _scale(0, [1, 1, 0, 1, 1]),
    "scale negative": _scale(1, [1, 1, 3, -2, 2]),
    "scale strings": _scale(1, [1, 1, "3", 2, 2]),
    "scale 2 values": _scale(1, [2, 2]),
    "scale of level 1 equal to level 0": _scale(1, [1, 1, 3, 1, 1]),
    "scale of level 2 below level 1": _scale(2, [1, 1, 3, 1.5, 1.5]),
    "level 1 .zarray missing": _remove(_zarray(1)),
    "zgroup path leaves the container": _zgroup_path(0, "../other/s0-t0.zarr"),
    "zgroup path absolute": lambda root: _zgroup_path(1, str(root / CONTAINER["zarr"] / "s0-t0.zarr"))(root),
    "zgroup indicies out of range": _xml_loader(lambda el: el.find("zgroups/zgroup").set("indicies", "0 3")),
    "zgroup indicies too many": _xml_loader(lambda el: el.find("zgroups/zgroup").set("indicies", "0 0 0")),
    # Not damage: other valid layouts of the same pixels must read back exactly.
    "ok: dataset paths with a leading slash": _multiscale(
        lambda m: [d.__setitem__("path", "/" + d["path"]) for d in m["datasets"]]),
    "ok: other multiscale metadata": _multiscale(lambda m: m.__setitem__("name", 17)),
}


# -- TIFF ------------------------------------------------------------------------
def _tiff(make: Callable[[np.ndarray], tuple[np.ndarray, dict]]):
    def damage(root: Path) -> None:
        import tifffile

        file = root / TIFF_V0
        data, options = make(tifffile.imread(file))
        file.unlink()
        tifffile.imwrite(file, data, **options)
    return damage


def _tiff_corrupt_strip(root: Path) -> None:
    import tifffile

    file = root / TIFF_V0
    tifffile.imwrite(file, tifffile.imread(file), compression="zlib")
    with tifffile.TiffFile(file) as tif:
        page = tif.pages[5]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(file, "r+b") as f:
        f.seek(offset + 2)
        f.write(b"\x13\x37" * ((count - 2) // 2))


def _mapping(**attrs):
    return _xml_loader(lambda el: [el.find("files/FileMapping").set(k, v) for k, v in attrs.items()])


TIFF_CASES = {
    "truncated by 10 bytes": _truncate(TIFF_V0, -10),
    "truncated by 1000 bytes": _truncate(TIFF_V0, -1000),
    "truncated to half": _truncate(TIFF_V0, 0.5),
    "truncated to 10%": _truncate(TIFF_V0, 0.1),
    "truncated to 300 bytes": _truncate(TIFF_V0, 300),
    "truncated to 8 bytes": _truncate(TIFF_V0, 8),
    "empty": _write(TIFF_V0, b""),
    "garbage": _garbage(TIFF_V0),
    "a folder": _folder(TIFF_V0),
    "fewer planes": _tiff(lambda a: (a[:7], {"imagej": True})),
    "wider": _tiff(lambda a: (np.pad(a, ((0, 0), (0, 0), (0, 1))), {})),
    "one plane": _tiff(lambda a: (a[0], {})),
    "compressed strip corrupt": _tiff_corrupt_strip,
    "compressed, truncated by 10 bytes": lambda root: (_tiff(lambda a: (a, {"compression": "zlib"}))(root),
                                                       _truncate(TIFF_V0, -10)(root)),
    "tiled, truncated by 10 bytes": lambda root: (_tiff(lambda a: (a, {"tile": (16, 16)}))(root),
                                                  _truncate(TIFF_V0, -10)(root)),
    "series out of range": _mapping(series="1"),
    "channel out of range": _mapping(channel="2"),
    "extra time axis": _tiff(lambda a: (np.stack([a, a // 2]), {"imagej": True, "metadata": {"axes": "TZYX"}})),
    # Not damage: other valid layouts of the same pixels must read back exactly.
    "ok: zlib compressed": _tiff(lambda a: (a, {"compression": "zlib"})),
    "ok: tiled": _tiff(lambda a: (a, {"tile": (16, 16)})),
    "ok: big-endian": _tiff(lambda a: (a.astype(">u2"), {})),
    "ok: channel 0 of two": _tiff(lambda a: (np.stack([a, a // 2], axis=1),
                                             {"imagej": True, "metadata": {"axes": "ZCYX"}})),
}


# -- damage to the XML that the data contradict (every format) ------------------------
XML_CASES = {
    "<size> x + 1": _xml_size("41 32 8"),
    "<size> z - 1": _xml_size("40 32 7"),
    "<size> of the other axis order": _xml_size("8 32 40"),
    "<size> zero": _xml_size("0 32 8"),
    "<size> negative": _xml_size("40 -32 8"),
    "<size> of setup 1 smaller": _xml_size("20 16 4", setup=1),
}


@dataclass
class Case:
    fmt: str
    name: str
    damage: Callable[[Path], object]
    names: tuple[str, ...] = field(default=())
    env: dict = field(default_factory=dict)


#: Damage done in the XML's <ImageLoader>: the error may name the XML rather than the container.
IN_XML = {"zgroup path leaves the container", "zgroup path absolute", "zgroup indicies out of range",
          "zgroup indicies too many", "series out of range", "channel out of range"}


def _cases() -> list[Case]:
    cases = []
    for fmt, table in (("hdf5", HDF5_CASES), ("n5", N5_CASES), ("zarr", ZARR_CASES), ("tiff", TIFF_CASES)):
        cases += [Case(fmt, name, damage, (CONTAINER[fmt],) + (("dataset.xml",) if name in IN_XML else ()))
                  for name, damage in table.items()]
    for fmt in CONTAINER:
        cases += [Case(fmt, name, damage, ("dataset.xml",)) for name, damage in XML_CASES.items()]
    # Opting in to external data reads the same pixels through it.
    allow = {"TILEFUSE_ALLOW_EXTERNAL_DATA": "1"}
    cases += [Case("hdf5", f"ok: {name}, allowed", HDF5_CASES[name], (CONTAINER["hdf5"],), allow)
              for name in ("external storage", "external link to an unlisted file")]
    return cases


CASES = _cases()


def run_case(case: Case, pristine, tmp_path: Path, monkeypatch) -> str:
    """Damage a copy, read it every way; return ``"error"`` or ``"equal"`` (assert on anything else)."""
    root, reference = pristine[case.fmt]
    work = tmp_path / "p"
    shutil.copytree(root, work)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    case.damage(work)
    got = _read_all(work / "dataset.xml", list(reference))
    outcomes = set()
    for reader, result in got.items():
        if isinstance(result, TilefuseError):
            message = str(result)
            assert any(name in message for name in case.names), f"{reader}: {message!r} names none of {case.names}"
            outcomes.add("error")
            continue
        want = reference[reader]
        assert result.shape == want.shape and np.array_equal(result, want), (
            f"{reader}: wrong pixels (shape {result.shape} vs {want.shape})")
        outcomes.add("equal")
    if case.name.startswith("ok:"):
        assert outcomes == {"equal"}, f"valid layout refused: {got}"
    return "error" if outcomes == {"error"} else "equal" if outcomes == {"equal"} else "mixed"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.fmt}-{c.name}" for c in CASES])
def test_damage_gives_error_or_right_pixels(case, pristine, tmp_path, monkeypatch):
    run_case(case, pristine, tmp_path, monkeypatch)


def test_case_count():
    by_format = {fmt: sum(c.fmt == fmt for c in CASES) for fmt in CONTAINER}
    assert len(CASES) >= 100 and min(by_format.values()) >= 20, by_format


# -- every path that reads pixels checks the view first ---------------------------------
PIXEL_PATHS = {
    "register": lambda project: tilefuse.register(project, downsampling=(1, 2, 2)),
    "register at level 0": lambda project: tilefuse.register(project, downsampling=(1, 1, 1)),
    "match_intensities": lambda project: tilefuse.match_intensities(project, downsampling=2.0),
    "content-based fusion": lambda project: tilefuse.plan_fusion(project, content_based=True).to_dask().compute(),
}
PATH_DAMAGE = {
    "resolutions NaN": ("hdf5", HDF5_CASES["resolutions NaN"]),
    "resolutions zero": ("hdf5", HDF5_CASES["resolutions zero"]),
    "level 1 as large as level 0": ("zarr", ZARR_CASES["level 1 shape of level 0"]),
    "cells shorter than <size>": ("n5", N5_CASES["dimensions z - 1"]),
}


@pytest.mark.parametrize("damage", sorted(PATH_DAMAGE))
@pytest.mark.parametrize("path", sorted(PIXEL_PATHS))
def test_registration_and_intensity_refuse_damaged_views(path, damage, pristine, tmp_path):
    fmt, make = PATH_DAMAGE[damage]
    work = tmp_path / "p"
    shutil.copytree(pristine[fmt][0], work)
    make(work)
    project = tilefuse.open_project(work / "dataset.xml")
    with pytest.raises(TilefuseError, match=CONTAINER[fmt].replace(".", r"\.")):
        PIXEL_PATHS[path](project)


# -- the safety net and the cache -------------------------------------------------------
class _Faulty(tilefuse.loaders.ImageLoader):
    """A loader whose file access fails the way third-party libraries do."""

    format = "test.faulty"

    @classmethod
    def from_xml(cls, element, base_dir, xml_path=None):  # pragma: no cover - not built from XML
        return cls()

    def to_xml(self, base_dir):  # pragma: no cover
        return None

    def files(self):
        return [Path("/data/faulty.h5")]

    def has_view(self, view):
        return True

    def levels(self, view):
        return [(1.0, 1.0, 1.0)]

    def shape(self, view, level=0):
        raise ZeroDivisionError("division by zero")

    def dtype(self, view):
        from tilefuse.errors import MissingDataError

        raise MissingDataError("/data/faulty.h5: gone")

    def chunks(self, view, level=0):
        return (1, 1, 1)

    def read(self, view, level, region, *, cache=False):
        raise KeyError("Unable to open object (component not found)")


def test_safety_net_names_files_view_and_level_and_keeps_tilefuse_errors():
    import pickle

    from tilefuse.errors import ImageDataError, MissingDataError
    from tilefuse.project.views import ViewId

    loader = _Faulty()
    view = ViewId(0, 3)
    with pytest.raises(ImageDataError, match=r"/data/faulty\.h5, view \(timepoint 0, setup 3\), level 2: read\(\) "
                                             r"failed \(KeyError: .*component not found") as info:
        loader.read(view, 2, (slice(0, 1),) * 3)
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(ImageDataError, match=r"level 0: shape\(\) failed \(ZeroDivisionError"):
        loader.shape(view)
    with pytest.raises(MissingDataError, match="gone"):  # not wrapped: already a clear TilefuseError
        loader.dtype(view)
    assert isinstance(pickle.loads(pickle.dumps(loader)), _Faulty)


def test_each_view_is_checked_once_per_process(pristine, tmp_path, monkeypatch):
    from tilefuse.loaders._n5 import N5Loader

    work = tmp_path / "p"
    shutil.copytree(pristine["n5"][0], work)
    calls = []
    original = N5Loader.check_view
    monkeypatch.setattr(N5Loader, "check_view", lambda self, view: calls.append(view) or original(self, view))
    project = tilefuse.open_project(work / "dataset.xml")
    for _ in range(3):
        tilefuse.plan_fusion(project, downsampling=2).to_dask().compute()
        [project.image(v).compute() for v in project.views]
    assert sorted(calls) == sorted(project.views)
    # A writer replacing the files drops the checks with the handles.
    tilefuse.loaders.base.drop_cached_handles(str(work))
    project.image(project.views[0])
    assert len(calls) == 3


def test_split_box_outside_the_original_view_is_refused(pristine):
    from tilefuse.errors import ImageDataError
    from tilefuse.loaders._hdf5 import Hdf5Loader
    from tilefuse.loaders._split import SplitLoader
    from tilefuse.loaders.validate import check_view
    from tilefuse.project.views import ViewId

    root, reference = pristine["hdf5"]
    original = Hdf5Loader.for_path(root / "dataset.h5")
    view = ViewId(0, 0)
    inside = SplitLoader(original, {0: 0}, {0: ((0, 4, 10), (7, 31, 39))})
    assert check_view(inside, view).shapes[0] == (8, 28, 30)
    np.testing.assert_array_equal(inside.read(view, 0, (slice(None),) * 3), reference[("image", view, 0)][:, 4:, 10:])
    beyond = SplitLoader(original, {0: 0}, {0: ((0, 4, 10), (7, 31, 45))})  # x up to 45 in a 40-wide view
    with pytest.raises(ImageDataError, match=r"setup 0 is the box 10 4 0 \.\. 45 31 7 .*only 40 32 8 .*dataset\.h5"):
        check_view(beyond, view)
