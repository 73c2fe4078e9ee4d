"""A corpus of damaged projects, generated at test time (see test_fuzz_damage.py).

Each *mutator* takes a copy of a small, valid project (its folder, its XML and a seeded random
generator), damages it in place in one way, and returns a short description, or ``None`` when it
does not apply to that project.  Mutators say what they damage:

``data``
    the pixel container or files; the XML is untouched, so whatever still loads must give the
    undamaged pixels exactly;
``xml``
    the project XML; what still loads must be consistent with the (new) XML.

Damage that no reader can detect is left out on purpose, because a format defines it as valid:
deleting an N5/Zarr block or an HDF5 chunk (a missing block *is* the fill value); changing bytes
inside uncompressed pixel data, which carries no checksum in any of these formats; and replacing a
file by another valid image of the size the XML gives (e.g. a TIFF saved with another pixel type:
the XML does not record the type of TIFF views).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from lxml import etree

Mutator = Callable[[Path, Path, np.random.Generator], "str | None"]

# Values that damaged numbers and JSON fields take.
BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1.5", "1e300", "abc", "", "2147483648", "-0.0001"]
BAD_JSON = [0, -1, 1.5, "abc", None, [], {}, 1e300, [0, 0, 0], [1, 1], [2**40, 1, 1], True, "../x", "/etc"]


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- helpers ---------------------------------------------------------------------------------------
def _files(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def _pick(rng: np.random.Generator, items):
    items = list(items)
    return items[int(rng.integers(len(items)))] if items else None


def _truncate(path: Path, rng: np.random.Generator) -> str:
    size = path.stat().st_size
    keep = int(rng.integers(0, max(size, 1)))
    with open(path, "r+b") as f:
        f.truncate(keep)
    return f"{path.name} truncated to {keep} of {size} bytes"


def _garbage(path: Path, rng: np.random.Generator) -> str:
    size = path.stat().st_size
    n = int(rng.integers(1, 2 * size + 16))
    if n == size:
        n += 1  # same-length garbage in uncompressed data is undetectable: keep lengths apart
    path.write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    return f"{path.name} replaced by {n} random bytes"


def _to_folder(path: Path) -> str:
    path.unlink()
    path.mkdir()
    (path / "0").write_bytes(b"\x00" * 8)
    return f"{path.name} replaced by a folder"


def _json_paths(obj, prefix=()):
    """Every (key path) inside a JSON object, leaves and containers alike."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _json_paths(v, prefix + (i,))


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    if value is _DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


_DELETE = object()


def _json_value(path: Path, rng: np.random.Generator, plausible: dict[str, list]) -> str:
    """Replace one field of a JSON file by a bad or plausible-but-wrong value, or delete it."""
    doc = json.loads(path.read_text())
    paths = list(_json_paths(doc))
    if not paths:
        return None
    where = _pick(rng, paths)
    key = next((k for k in reversed(where) if isinstance(k, str)), "")
    choices = BAD_JSON + plausible.get(key, []) * 4 + [_DELETE]
    value = _pick(rng, choices)
    _set(doc, where, value)
    path.write_text(json.dumps(doc))
    shown = "deleted" if value is _DELETE else f"= {value!r}"
    return f"{path.parent.name}/{path.name}: {'/'.join(map(str, where))} {shown}"


def _json_corrupt(path: Path, rng: np.random.Generator) -> str:
    text = path.read_bytes()
    cut = int(rng.integers(0, max(len(text), 1)))
    path.write_bytes(text[:cut] + _pick(rng, [b"", b"\xff\xfe", b"}", b"{{", b"\x00"]))
    return f"{path.parent.name}/{path.name}: corrupt JSON (cut at {cut})"


# -- N5 --------------------------------------------------------------------------------------------
_N5_PLAUSIBLE = {
    "dataType": [["uint8"], "uint8", "int16", "float32", "uint32", "int64", "float64"],
    "blockSize": [[8, 8, 1], [16, 16, 2], [32, 32, 1], [0, 16, 1]],
    "dimensions": [[40, 40, 2], [20, 40, 1], [80, 80, 1], [40, 40]],
    "compression": [{"type": "raw"}, {"type": "gzip", "level": 4}, {"type": "bzip2"}, {"type": "zstd"},
                    {"type": "blosc", "cname": "lz4"}],
    "type": ["raw", "gzip", "lz4", "xz"],
    "downsamplingFactors": [[[1, 1, 1], [2, 2, 1], [4, 4, 1]], [[1, 1, 1]], [[2, 2, 1], [1, 1, 1]],
                            [[1, 1, 1], [0.5, 0.5, 1]]],
}


def _n5_block_header(path: Path, rng: np.random.Generator) -> str:
    """Rewrite an N5 block's header: another mode, dimension count or block size."""
    data = bytearray(path.read_bytes())
    if len(data) < 4 + 4 * 3:
        return None
    field = _pick(rng, ["mode", "ndim", "dim"])
    if field == "mode":
        data[0:2] = int(_pick(rng, [1, 2, 7])).to_bytes(2, "big")
    elif field == "ndim":
        data[2:4] = int(_pick(rng, [0, 2, 4, 255])).to_bytes(2, "big")
    else:
        i = int(rng.integers(3))
        old = int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big")
        new = _pick(rng, [0, old + 1, old * 2, max(old // 2, 1) if old > 1 else 3])
        data[4 + 4 * i: 8 + 4 * i] = int(new).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return f"block {path.name}: header {field} changed"


def n5_mutators() -> list[Mutator]:
    def blocks(root):
        return [p for p in _files(root / "dataset.n5") if p.name != "attributes.json"]

    def attrs(root):
        return _files(root / "dataset.n5", "attributes.json")

    return [
        lambda root, xml, rng: _truncate(_pick(rng, blocks(root)), rng),
        lambda root, xml, rng: _garbage(_pick(rng, blocks(root)), rng),
        lambda root, xml, rng: _to_folder(_pick(rng, blocks(root))),
        lambda root, xml, rng: _n5_block_header(_pick(rng, blocks(root)), rng),
        lambda root, xml, rng: _json_value(_pick(rng, attrs(root)), rng, _N5_PLAUSIBLE),
        lambda root, xml, rng: _json_value(_pick(rng, attrs(root)), rng, _N5_PLAUSIBLE),
        lambda root, xml, rng: _json_corrupt(_pick(rng, attrs(root)), rng),
    ]


# -- OME-Zarr (bdv.multimg.zarr) ------------------------------------------------------------------
_ZARR_PLAUSIBLE = {
    "dtype": ["|u1", "<u2", ">u2", "<f4", "<i8", "<u4"],
    "chunks": [[1, 1, 1, 8, 8], [1, 1, 1, 32, 32], [1, 1, 0, 16, 16], [16, 16]],
    "shape": [[1, 1, 1, 40, 41], [1, 1, 1, 80, 80], [1, 1, 2, 40, 40], [1, 1, 1, 20, 20], [40, 40]],
    "compressor": [None, {"id": "zlib", "level": 1}, {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 2},
                   {"id": "nosuchcodec"}],
    "id": ["zlib", "gzip", "lz4", "zstd", "bz2", "nosuch"],
    "path": ["../s0-t0.zarr/0", "/0", "1", "0/../1", "../../dataset.ome.zarr/s0-t0.zarr/0", "..", ""],
    "scale": [[1, 1, 1, 0.5, 0.5], [1, 1, 1, 0, 0], [1, 1, 1, -1, 1], [1, 1, 1, 4, 4], [1, 1]],
    "datasets": [[], [{"path": "1"}, {"path": "0"}], [{"path": "0"}, {"path": "0"}], [{"path": "9"}]],
    "fill_value": [7, None, "NaN"],
    "order": ["F", "X"],
    "zarr_format": [3, 1, "2"],
    "dimension_separator": [".", "/", "x"],
}


def zarr_mutators() -> list[Mutator]:
    def chunks(root):
        return [p for p in _files(root / "dataset.ome.zarr") if not p.name.startswith(".")]

    def meta(root, name=None):
        return [p for p in _files(root / "dataset.ome.zarr") if p.name.startswith(".z")
                and (name is None or p.name == name) and len(p.read_bytes()) > 2]  # not the empty "{}"

    return [
        lambda root, xml, rng: _truncate(_pick(rng, chunks(root)), rng),
        lambda root, xml, rng: _garbage(_pick(rng, chunks(root)), rng),
        lambda root, xml, rng: _to_folder(_pick(rng, chunks(root))),
        lambda root, xml, rng: _json_value(_pick(rng, meta(root, ".zarray")), rng, _ZARR_PLAUSIBLE),
        lambda root, xml, rng: _json_value(_pick(rng, meta(root, ".zarray")), rng, _ZARR_PLAUSIBLE),
        lambda root, xml, rng: _json_value(_pick(rng, meta(root, ".zattrs")), rng, _ZARR_PLAUSIBLE),
        lambda root, xml, rng: _json_value(_pick(rng, meta(root, ".zattrs")), rng, _ZARR_PLAUSIBLE),
        lambda root, xml, rng: _json_corrupt(_pick(rng, meta(root)), rng),
    ]


# -- BDV HDF5 --------------------------------------------------------------------------------------
def _h5_cells(f) -> list[str]:
    out = []
    f.visititems(lambda name, obj: out.append(name) if name.endswith("/cells") else None)
    return sorted(out)


def _h5_edit(root: Path, rng: np.random.Generator) -> str:
    import h5py

    path = root / "dataset.h5"
    with h5py.File(path, "r+") as f:
        cells = _h5_cells(f)
        setups = sorted(k for k in f if k.startswith("s"))
        kind = _pick(rng, ["cells-group", "cells-shape", "cells-dtype", "level-bigger", "level-missing",
                           "resolutions", "subdivisions", "dataType", "external", "cells-2d"])
        if kind == "cells-group":
            name = _pick(rng, cells)
            del f[name]
            f.create_group(name)
            return f"{name} replaced by a group"
        if kind in ("cells-shape", "cells-dtype", "cells-2d", "level-bigger"):
            name = _pick(rng, cells if kind != "level-bigger" else [c for c in cells if "/1/" in c] or cells)
            old = f[name]
            data = old[...]
            if kind == "cells-shape":
                grow = _pick(rng, [(0, 1, 0), (0, -3, 2), (1, 0, 0)])
                shape = tuple(int(n) + int(d) for n, d in zip(old.shape, grow))
                new = np.resize(data, shape)
            elif kind == "level-bigger":
                new = np.resize(data, (old.shape[0], old.shape[1] * 2 + 1, old.shape[2] * 2 + 1))
            elif kind == "cells-2d":
                new = data[0]
            else:
                new = data.astype(_pick(rng, [np.uint8, np.float32, np.int32, np.float64]))
            attrs = dict(old.attrs)
            del f[name]
            ds = f.create_dataset(name, data=new, chunks=True, compression="gzip")
            ds.attrs.update(attrs)
            return f"{name}: rewritten as {new.dtype} {new.shape}"
        if kind == "level-missing":
            name = _pick(rng, cells)
            del f[name]
            return f"{name} deleted"
        if kind in ("resolutions", "subdivisions"):
            setup = _pick(rng, setups)
            name = f"{setup}/{kind}"
            old = f[name][...]
            value = _pick(rng, [old[:1, :2], np.array(["1 1 1"], dtype="S5"), np.full_like(old, np.nan, dtype=float),
                                np.zeros_like(old), -old, old[::-1], np.vstack([old, old[-1:] * 2]),
                                np.array([[1, 1, 1], [0.5, 0.5, 1]])[: len(old)], old * 1e300])
            del f[name]
            f.create_dataset(name, data=value)
            return f"{name} = {np.asarray(value).tolist()!r}"
        if kind == "dataType":
            setup = _pick(rng, setups)
            value = _pick(rng, ["uint8", "float32", "int64", "garbage", 7, "uint16 "])
            f[setup].attrs["dataType"] = value
            return f"{setup}.attrs['dataType'] = {value!r}"
        # external storage: the cells of one view read from another file
        name = _pick(rng, cells)
        old = f[name]
        shape, dtype = old.shape, old.dtype
        victim = _pick(rng, [p for p in root.rglob("*") if p.is_file() and p.name != "dataset.h5"])
        del f[name]
        f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(victim), 0, h5py.h5f.UNLIMITED)])
        return f"{name}: external storage in {victim.name}"


def _h5_chunk_bytes(root: Path, rng: np.random.Generator) -> str:
    """Flip bytes inside one compressed chunk (deflate's checksum must catch it)."""
    import h5py

    path = root / "dataset.h5"
    with h5py.File(path, "r") as f:
        name = _pick(rng, _h5_cells(f))
        ds = f[name]
        n = ds.id.get_num_chunks()
        if not n or ds.compression != "gzip":
            return None
        info = ds.id.get_chunk_info(int(rng.integers(n)))
        start, size = info.byte_offset, info.size
    with open(path, "r+b") as fh:
        at = start + int(rng.integers(2, max(size, 3)))
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return f"{name}: a byte flipped inside a compressed chunk"


def hdf5_mutators() -> list[Mutator]:
    return [
        lambda root, xml, rng: _truncate(root / "dataset.h5", rng),
        lambda root, xml, rng: _h5_edit(root, rng),
        lambda root, xml, rng: _h5_edit(root, rng),
        lambda root, xml, rng: _h5_edit(root, rng),
        lambda root, xml, rng: _h5_chunk_bytes(root, rng),
    ]


# -- TIFF (spimreconstruction.filemap2) -----------------------------------------------------------
def _tiff_replace(root: Path, rng: np.random.Generator) -> str:
    """Replace a view's TIFF by a valid TIFF of another shape."""
    import tifffile

    path = _pick(rng, _files(root, "*.tif"))
    data = tifffile.imread(path)
    kind = _pick(rng, ["shape", "pages", "rgb"])
    if kind == "shape":
        new = np.resize(data, (data.shape[-2] + 3, data.shape[-1] - 2))
    elif kind == "pages":
        new = np.stack([data] * 3)
    else:
        new = np.stack([data[:, :-1]] * 3, axis=-1).astype(np.uint8)
    tifffile.imwrite(path, new, photometric="rgb" if kind == "rgb" else "minisblack")
    return f"{path.name}: rewritten as {new.dtype} {new.shape}"


def tiff_mutators() -> list[Mutator]:
    return [
        lambda root, xml, rng: _truncate(_pick(rng, _files(root, "*.tif")), rng),
        lambda root, xml, rng: _garbage(_pick(rng, _files(root, "*.tif")), rng),
        lambda root, xml, rng: _tiff_replace(root, rng),
    ]


# -- the XML ---------------------------------------------------------------------------------------
def _xml_elements(xml: Path):
    tree = etree.parse(str(xml))
    return tree, [e for e in tree.getroot().iter() if isinstance(e.tag, str) and e is not tree.getroot()]


def _xml_delete(root, xml, rng):
    tree, els = _xml_elements(xml)
    el = _pick(rng, els)
    el.getparent().remove(el)
    tree.write(str(xml))
    return f"<{el.tag}> deleted"


def _xml_duplicate(root, xml, rng):
    import copy

    tree, els = _xml_elements(xml)
    el = _pick(rng, els)
    el.addnext(copy.deepcopy(el))
    tree.write(str(xml))
    return f"<{el.tag}> duplicated"


def _xml_rename(root, xml, rng):
    tree, els = _xml_elements(xml)
    el = _pick(rng, els)
    old = el.tag
    el.tag = old + "X"
    tree.write(str(xml))
    return f"<{old}> renamed"


def _xml_number(root, xml, rng):
    tree, els = _xml_elements(xml)
    numeric = [e for e in els if e.text and any(ch.isdigit() for ch in e.text) and len(e) == 0]
    el = _pick(rng, numeric)
    tokens = el.text.split()
    i = int(rng.integers(len(tokens)))
    tokens[i] = _pick(rng, BAD_NUMBERS)
    old = el.text
    el.text = " ".join(tokens)
    tree.write(str(xml))
    return f"<{el.tag}> {old.strip()!r} -> {el.text!r}"


def _xml_attribute(root, xml, rng):
    tree, els = _xml_elements(xml)
    with_attrs = [e for e in els if e.attrib]
    el = _pick(rng, with_attrs)
    if el is None:
        return None
    name = _pick(rng, list(el.attrib))
    el.attrib[name] = _pick(rng, ["-1", "abc", "99", "", "1.5", "0", "1e9"])
    tree.write(str(xml))
    return f"<{el.tag} {name}={el.attrib[name]!r}>"


def _xml_truncate(root, xml, rng):
    return _truncate(xml, rng)


def _xml_bytes(root, xml, rng):
    data = xml.read_bytes()
    at = int(rng.integers(len(data)))
    xml.write_bytes(data[:at] + _pick(rng, [b"\xff\xfe", b"\xc3", b"\x00", b"<", b"&"]) + data[at:])
    return f"bad bytes inserted at offset {at}"


def _xml_timepoints(root, xml, rng):
    tree, els = _xml_elements(xml)
    tps = tree.getroot().find("SequenceDescription/Timepoints")
    if tps is None:
        return None
    for child in list(tps):
        tps.remove(child)
    tps.attrib["type"] = "pattern"
    pattern = _pick(rng, ["0-10000000", "0-1000000000", "0-5:0", "5-0", "0-3,a", "", "0-2:-1"])
    etree.SubElement(tps, "integerpattern").text = pattern
    tree.write(str(xml))
    return f"<Timepoints> pattern {pattern!r}"


def xml_mutators() -> list[Mutator]:
    return [_xml_delete, _xml_duplicate, _xml_rename, _xml_number, _xml_number, _xml_attribute, _xml_truncate,
            _xml_bytes, _xml_timepoints]


MUTATORS: dict[str, tuple[str, Callable[[], list[Mutator]]]] = {
    "hdf5": ("data", hdf5_mutators),
    "n5": ("data", n5_mutators),
    "zarr": ("data", zarr_mutators),
    "tiff": ("data", tiff_mutators),
    "xml": ("xml", xml_mutators),
}


def damage(kind: str, root: Path, xml: Path, seed: int) -> str | None:
    """Apply the ``seed``-th mutator of ``kind`` (cycling, with a seeded generator)."""
    rng = np.random.default_rng(seed)
    mutators = MUTATORS[kind][1]()
    # Cycle deterministically through the mutators, so every one is exercised.
    mutate = mutators[seed % len(mutators)]
    return mutate(root, xml, rng)


def write_project_zarr_v2(*args, **kwargs):
    """``tilefuse.write_project`` with BigStitcher OME-Zarr containers in the Zarr v2 layout.

    The damage cases name v2 files (``.zarray``, ``.zattrs``, a file per chunk);
    Zarr v3 with shards is the default layout now, whose own damage cases are
    in tests/test_writer_ome_zarr.py (shards cut short, index flipped, emptied).
    """
    import functools

    import pytest

    import tilefuse
    import tilefuse.writers.bdv_zarr as bdv_zarr

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bdv_zarr, "write_bdv_omezarr", functools.partial(bdv_zarr.write_bdv_omezarr, zarr_format=2))
        return tilefuse.write_project(*args, **kwargs)
