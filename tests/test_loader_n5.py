"""N5 format, the bdv.n5 loader and the BDV N5 writer."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

from conftest import EXAMPLES, example_loader_element
from tilefuse.errors import ImageDataError, MissingDataError, OutputExistsError, UnsupportedFormatError
from tilefuse.formats import n5 as _n5format
from tilefuse.formats.n5 import N5Dataset, create_dataset, decode_block, encode_block, read_attributes
from tilefuse.loaders import LOADERS
from tilefuse.loaders._n5 import N5Loader
from tilefuse.project.views import ViewId
from tilefuse.writers.bdv_n5 import level_shapes, write_bdv_n5

FULL = (slice(None),) * 3

# The 1x2x3 uint16 block (values 1..6) of the N5 specification's README
# (github.com/saalfeldlab/n5), as raw, gzip, bzip2 and xz block files.
SPEC_HEADER = bytes.fromhex("0000 0003 00000001 00000002 00000003")
SPEC_PAYLOADS = {
    "raw": "0001 0002 0003 0004 0005 0006",
    "gzip": "1f8b0800 00000000 00006360 64606260 66606160 65600300 aaea6dbf 0c000000",
    "bzip2": "425a6839 31415926 5359023e 0dd20000 0040007f 00200031 0c010d31 a8739433 7c5dc914 e1424008 f83748",
    "xz": "fd377a58 5a000004 e6d6b446 02002101 16000000 742fe5a3 01000b00 01000200 03000400 05000600"
          "0d0309ca 34ec15a7 0001240c a618d8d8 1fb6f37d 01000000 0004595a",
}


def ramp(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    hi = min(np.iinfo(dtype).max, 60000)
    return rng.integers(0, hi, shape, dtype=dtype)


# -- the byte format -----------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(SPEC_PAYLOADS))
def test_decode_spec_example_blocks(kind):
    data = SPEC_HEADER + bytes.fromhex(SPEC_PAYLOADS[kind].replace(" ", ""))
    block = decode_block(data, np.dtype("uint16"), {"type": kind})
    # dims (x, y, z) = (1, 2, 3) -> numpy (z, y, x) = (3, 2, 1), x fastest.
    assert block.shape == (3, 2, 1)
    np.testing.assert_array_equal(block.ravel(), np.arange(1, 7))


def test_encode_matches_spec_bytes():
    block = np.arange(1, 7, dtype=np.uint16).reshape(3, 2, 1)
    expected = SPEC_HEADER + bytes.fromhex(SPEC_PAYLOADS["raw"].replace(" ", ""))
    assert encode_block(block, {"type": "raw"}) == expected


def test_block_file_decoded_by_hand(tmp_path):
    ds = create_dataset(tmp_path / "d", (5, 7, 9), (2, 3, 4), "uint16", "gzip")
    attrs = json.loads((tmp_path / "d" / "attributes.json").read_text())
    assert attrs["dimensions"] == [9, 7, 5] and attrs["blockSize"] == [4, 3, 2]
    assert attrs["dataType"] == "uint16" and attrs["compression"]["type"] == "gzip"
    # Edge block at numpy index (z=2, y=0, x=1): z [4,5), y [0,3), x [4,8).
    block = np.arange(12, dtype=np.uint16).reshape(1, 3, 4) * 1000 + 7
    ds.write_block((2, 0, 1), block)
    raw = (tmp_path / "d" / "1" / "0" / "2").read_bytes()  # x/y/z
    mode, ndim, bx, by, bz = struct.unpack(">HHIII", raw[:16])
    assert (mode, ndim, bx, by, bz) == (0, 3, 4, 3, 1)
    samples = struct.unpack(">12H", gzip.decompress(raw[16:]))  # independent gzip reader
    assert samples == tuple(int(v) for v in block.ravel())
    np.testing.assert_array_equal(ds.read((slice(4, 5), slice(0, 3), slice(4, 8))), block)


@pytest.mark.parametrize("comp", ["raw", "gzip", "zstd", "bzip2", "xz", "blosc",
                                  {"type": "gzip", "level": 1, "useZlib": True}])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint64", "float32", "float64"])
def test_dataset_roundtrip_all_codecs(tmp_path, comp, dtype):
    data = ramp((5, 7, 9), dtype)
    ds = create_dataset(tmp_path / "d", data.shape, (2, 3, 4), dtype, comp)
    for idx, region in _blocks(ds):
        ds.write_block(idx, data[region])
    again = N5Dataset(tmp_path / "d")
    assert again.shape == (5, 7, 9) and again.chunks == (2, 3, 4) and again.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(again.read(), data)
    np.testing.assert_array_equal(again.read((slice(1, 4), slice(2, 7), slice(3, 9))), data[1:4, 2:7, 3:9])


def _blocks(ds):
    from tilefuse.loaders.base import block_slices

    return block_slices(ds.shape, ds.chunks)


def test_lz4_block_stream(tmp_path):
    from numcodecs import LZ4

    data = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    payload = data.astype(">u2").tobytes()
    first, second = payload[:20], payload[20:]
    lz = bytes(LZ4().encode(second))[4:]  # strip numcodecs' size prefix -> bare LZ4 block
    def frame(token, body, n):
        return b"LZ4Block" + bytes([token]) + struct.pack("<iii", len(body), n, 0) + body

    stream = frame(0x10, first, len(first)) + frame(0x20, lz, len(second)) + frame(0x10, b"", 0)
    header = struct.pack(">HH3I", 0, 3, 4, 3, 2)
    np.testing.assert_array_equal(decode_block(header + stream, np.dtype("uint16"), {"type": "lz4"}), data)


def test_sparse_and_padded_blocks(tmp_path):
    ds = create_dataset(tmp_path / "d", (5, 7, 9), (2, 3, 4), "uint8", "raw")
    # Another writer pads edge blocks to the full block size: keep only the inside.
    padded = np.full((2, 3, 4), 9, dtype=np.uint8)
    (tmp_path / "d" / "2" / "2").mkdir(parents=True)
    (tmp_path / "d" / "2" / "2" / "2").write_bytes(encode_block(padded, {"type": "raw"}))
    out = ds.read()
    expected = np.zeros((5, 7, 9), np.uint8)
    expected[4:5, 6:7, 8:9] = 9
    np.testing.assert_array_equal(out, expected)


def test_corrupt_and_unsupported_blocks(tmp_path):
    ds = create_dataset(tmp_path / "d", (4, 4, 4), (2, 2, 2), "uint16", "gzip")
    (tmp_path / "d" / "0" / "0").mkdir(parents=True)
    (tmp_path / "d" / "0" / "0" / "0").write_bytes(struct.pack(">HH3I", 0, 3, 2, 2, 2) + b"garbage")
    with pytest.raises(ImageDataError, match=r"d/0/0/0"):
        ds.read()
    with pytest.raises(UnsupportedFormatError, match="snappy"):
        decode_block(SPEC_HEADER + b"xx", np.dtype("uint16"), {"type": "snappy"})
    with pytest.raises(MissingDataError, match="nothere"):
        N5Dataset(tmp_path / "nothere")


def test_read_touches_only_needed_blocks(tmp_path, monkeypatch):
    data = ramp((8, 12, 16), "uint16")
    ds = create_dataset(tmp_path / "d", data.shape, (4, 4, 4), "uint16", "gzip")
    for idx, region in _blocks(ds):
        ds.write_block(idx, data[region])
    opened = []
    real = _n5format._read_bytes
    monkeypatch.setattr(_n5format, "_read_bytes", lambda p, *a: (opened.append(Path(p)), real(p, *a))[1])

    np.testing.assert_array_equal(ds.read((slice(1, 3), slice(5, 7), slice(9, 11))), data[1:3, 5:7, 9:11])
    assert opened == [tmp_path / "d" / "2" / "1" / "0"]  # x/y/z of block (0, 1, 2)
    opened.clear()
    # Crosses one y and one x border -> 2 x 2 blocks.
    np.testing.assert_array_equal(ds.read((slice(5, 6), slice(3, 5), slice(7, 9))), data[5:6, 3:5, 7:9])
    assert sorted(p.relative_to(tmp_path / "d").as_posix() for p in opened) == ["1/0/1", "1/1/1", "2/0/1", "2/1/1"]


# -- the writer and loader -----------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_write_read_roundtrip(tmp_path, dtype):
    import dask.array as da

    a = ramp((21, 37, 45), dtype, seed=1)
    b = ramp((9, 16, 30), dtype, seed=2)
    images = {ViewId(0, 0): a, ViewId(0, 1): da.from_array(b, chunks=(5, 7, 11)), ViewId(2, 0): a[::-1]}
    factors = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    loader = write_bdv_n5(tmp_path / "out.n5", images, factors=factors, chunks=(8, 16, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.n5"]

    v = ViewId(0, 0)
    assert loader.has_view(v) and loader.has_view(ViewId(2, 0)) and not loader.has_view(ViewId(1, 0))
    assert loader.levels(v) == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0), (2.0, 4.0, 4.0)]
    assert loader.dtype(v) == np.dtype(dtype)
    assert loader.chunks(v) == (8, 16, 16)
    assert [loader.shape(v, lv) for lv in range(3)] == [(21, 37, 45), (21, 18, 22), (10, 9, 11)]
    np.testing.assert_array_equal(loader.read(v, 0, FULL), a)
    np.testing.assert_array_equal(loader.read(ViewId(2, 0), 0, FULL), a[::-1])
    np.testing.assert_array_equal(loader.read(ViewId(0, 1), 0, FULL), b)
    # Region crossing block borders in all axes, ending in edge blocks.
    region = (slice(7, 21), slice(15, 37), slice(14, 45))
    np.testing.assert_array_equal(loader.read(v, 0, region), a[region])
    np.testing.assert_array_equal(loader.image(v).compute(), a)

    # Level 1 = 1x2x2 block mean of level 0 (floor shape); level 2 = 2x2x2 mean of level 1.
    l1 = a[:, :36, :44].astype(np.float64).reshape(21, 18, 2, 22, 2).mean(axis=(2, 4))
    l2 = _round(l1, dtype)[:20, :18, :22].astype(np.float64).reshape(10, 2, 9, 2, 11, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(loader.read(v, 1, FULL), _round(l1, dtype), rtol=1e-6)
    np.testing.assert_allclose(loader.read(v, 2, FULL), _round(l2, dtype), rtol=1e-6)


def _round(x, dtype):
    if np.dtype(dtype).kind == "f":
        return x.astype(dtype)
    return np.rint(x).astype(dtype)


def test_written_attributes(tmp_path):
    a = ramp((10, 20, 30), "uint16")
    write_bdv_n5(tmp_path / "x.n5", {ViewId(3, 5): a}, factors=[(1, 1, 1), (1, 2, 2)], chunks=(4, 8, 16),
                 compression="zstd", voxel_size=(2.0, 0.5, 0.25))
    root = tmp_path / "x.n5"
    assert "n5" in read_attributes(root)
    setup = read_attributes(root / "setup5")
    assert setup["downsamplingFactors"] == [[1, 1, 1], [2, 2, 1]]  # x y z
    assert setup["dataType"] == "uint16"
    assert setup["blockSize"] == [16, 8, 4] and setup["dimensions"] == [30, 20, 10]
    assert setup["compression"]["type"] == "zstd"
    assert read_attributes(root / "setup5" / "timepoint3") == {"multiScale": True, "resolution": [0.25, 0.5, 2.0]}
    s1 = read_attributes(root / "setup5" / "timepoint3" / "s1")
    assert s1["dimensions"] == [15, 10, 10] and s1["downsamplingFactors"] == [2, 2, 1]
    assert (root / "setup5" / "timepoint3" / "s0" / "1" / "2" / "2").is_file()  # x=1 y=2 z=2


class _Recording:
    """An array-like that records every region the writer reads from it."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.sizes = data, data.shape, data.dtype, []

    def __getitem__(self, region):
        out = self.data[region]
        self.sizes.append(out.size)
        return out


def test_writer_streams_blocks(tmp_path, monkeypatch):
    src = _Recording(ramp((20, 40, 40), "uint16"))
    reads = []
    real_read = N5Dataset.read
    monkeypatch.setattr(N5Dataset, "read", lambda self, region=None: (reads.append(region), real_read(self, region))[1])
    write_bdv_n5(tmp_path / "s.n5", {ViewId(0, 0): src}, factors=[(1, 1, 1), (2, 2, 2)], chunks=(5, 10, 10))
    assert max(src.sizes) == 5 * 10 * 10 and len(src.sizes) == 4 * 4 * 4
    # Each output block of level 1 reads one 2x2x2-times larger region of level 0.
    assert reads and max(np.prod([s.stop - s.start for s in r]) for r in reads) == 8 * 500


def test_tiny_axis_and_errors(tmp_path):
    a = ramp((1, 3, 8), "uint8")
    loader = write_bdv_n5(tmp_path / "t.n5", {(0, 0): a}, factors=[(1, 1, 1), (2, 4, 4)], chunks=(4, 4, 4))
    assert level_shapes(a.shape, [(1, 1, 1), (2, 4, 4)])[1] == (1, 1, 2)
    expected = _round(a.astype(float).reshape(1, 1, 3, 2, 4).mean(axis=(2, 4)), "uint8")
    np.testing.assert_array_equal(loader.read(ViewId(0, 0), 1, FULL), expected)

    with pytest.raises(OutputExistsError, match="exists"):
        write_bdv_n5(tmp_path / "t.n5", {(0, 0): a}, factors=[(1, 1, 1)])
    b = np.ones((2, 2, 2), np.uint8)
    loader = write_bdv_n5(tmp_path / "t.n5", {(0, 0): b}, factors=[(1, 1, 1)], overwrite=True)
    np.testing.assert_array_equal(loader.read(ViewId(0, 0), 0, FULL), b)  # no stale cached metadata
    with pytest.raises(ValueError, match="start with"):
        write_bdv_n5(tmp_path / "u.n5", {(0, 0): a}, factors=[(2, 2, 2)])
    with pytest.raises(ValueError, match="multiple"):
        write_bdv_n5(tmp_path / "u.n5", {(0, 0): a}, factors=[(1, 1, 1), (1, 2, 2), (1, 3, 3)])
    with pytest.raises(ImageDataError, match="3D"):
        write_bdv_n5(tmp_path / "u.n5", {(0, 0): np.zeros((4, 4), np.uint8)})
    with pytest.raises(ImageDataError, match="complex"):
        write_bdv_n5(tmp_path / "u.n5", {(0, 0): np.zeros((2, 2, 2), np.complex64)})
    with pytest.raises(ImageDataError, match="differs"):
        write_bdv_n5(tmp_path / "u.n5", {(0, 0): a, (1, 0): a.astype(np.uint16)})
    assert not list(tmp_path.glob("u.n5*"))  # validation fails before anything is written
    with pytest.raises(ImageDataError, match="level 5"):
        loader.read(ViewId(0, 0), 5, FULL)


def test_loader_pickles_and_xml(tmp_path):
    a = ramp((6, 10, 12), "uint16")
    loader = write_bdv_n5(tmp_path / "proj" / "data.n5", {(0, 0): a}, factors=[(1, 1, 1)], chunks=(4, 4, 4))
    assert LOADERS["bdv.n5"] is N5Loader
    clone = pickle.loads(pickle.dumps(loader))
    np.testing.assert_array_equal(clone.read(ViewId(0, 0), 0, FULL), a)
    el = loader.to_xml(tmp_path / "proj")
    assert el.tag == "ImageLoader" and el.get("format") == "bdv.n5" and el.get("version") == "1.1"
    assert el.find("n5").get("type") == "relative" and el.find("n5").text == "data.n5"
    el2 = loader.to_xml(tmp_path / "elsewhere")
    assert el2.find("n5").get("type") == "absolute" and el2.find("n5").text == str(tmp_path / "proj" / "data.n5")
    again = N5Loader.from_xml(el, tmp_path / "proj", None)
    np.testing.assert_array_equal(again.read(ViewId(0, 0), 0, (slice(2, 5), slice(3, 9), slice(0, 12))),
                                  a[2:5, 3:9])
    assert loader.files() == [tmp_path / "proj" / "data.n5"]


# -- XML parsing -------------------------------------------------------------------


def test_real_xml_with_whitespace_path(tmp_path):
    el = example_loader_element("pydbs_n5_15tiles_interestpoints.xml")
    loader = N5Loader.from_xml(el, tmp_path, EXAMPLES / "x.xml")
    assert loader.path == tmp_path / "dataset.n5" and loader.version == "1.0"
    assert etree.tostring(loader.to_xml(tmp_path)) == etree.tostring(el, with_tail=False)  # verbatim when unchanged
    assert not loader.has_view(ViewId(0, 0))
    with pytest.raises(MissingDataError, match=r"dataset\.n5.*setup 0"):
        loader.read(ViewId(0, 0), 0, FULL)
    with pytest.raises(MissingDataError, match=r"dataset\.n5"):
        loader.shape(ViewId(0, 3))
    regenerated = loader.to_xml(tmp_path / "sub")
    assert regenerated.get("version") == "1.0" and regenerated.find("n5").get("type") == "absolute"


def test_any_fsspec_url_is_read(tmp_path):
    """A container at a URL (here fsspec's in-memory file system: no network) reads as the local one,
    and the XML keeps the URL."""
    fsspec = pytest.importorskip("fsspec")
    data = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    write_bdv_n5(tmp_path / "d.n5", {(0, 0): data})
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path / "d.n5") + "/", "/n5test/d.n5", recursive=True)
    try:
        uri = "memory://n5test/d.n5"
        el = etree.fromstring(f'<ImageLoader format="bdv.n5" version="1.1"><n5 type="absolute">{uri}</n5>'
                              "</ImageLoader>")
        loader = N5Loader.from_xml(el, tmp_path, None)
        assert loader.uri == uri and loader.has_view(ViewId(0, 0)) and not loader.has_view(ViewId(0, 1))
        np.testing.assert_array_equal(loader.read(ViewId(0, 0), 0, FULL), data)
        assert etree.tostring(loader.to_xml(tmp_path / "other")) == etree.tostring(el)
    finally:
        fs.rm("/n5test", recursive=True)


def test_url_without_its_package_names_the_extra(tmp_path):
    from tilefuse.errors import TilefuseError

    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    el = etree.fromstring('<ImageLoader format="bdv.n5" version="1.1"><n5 type="absolute">gs://b/x.n5</n5>'
                          "</ImageLoader>")
    loader = N5Loader.from_xml(el, tmp_path, None)
    with pytest.raises(TilefuseError, match=r"gs://b/x\.n5.*gs:// needs a package that is not installed"):
        loader.read(ViewId(0, 0), 0, FULL)


def test_file_uri_is_local(tmp_path):
    write_bdv_n5(tmp_path / "d.n5", {(0, 0): np.ones((2, 3, 4), np.uint8)})
    el = etree.fromstring(f'<ImageLoader format="bdv.n5" version="1.1"><n5 type="absolute">'
                          f'file:{tmp_path}/d.n5</n5></ImageLoader>')
    loader = N5Loader.from_xml(el, Path("/nonexistent"), None)
    assert loader.shape(ViewId(0, 0)) == (2, 3, 4)


def test_blosc_blocks_are_shuffled_by_sample_size(tmp_path):
    """Blosc shuffles by the item size it is given: uint16 blocks must go in as 2-byte items (bytes made bit
    shuffle useless: 0.9 of raw instead of 0.5 on noisy data) and still read back exactly."""
    from tilefuse.formats.n5 import N5Dataset, create_dataset

    rng = np.random.default_rng(1)
    block = rng.normal(400, 20, (16, 64, 64)).astype(np.uint16)
    comp = {"type": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 2, "blocksize": 0, "nthreads": 1}
    ds = create_dataset(tmp_path / "b.n5" / "s0", block.shape, block.shape, "uint16", compression=comp)
    ds.write_block((0, 0, 0), block)
    stored = (tmp_path / "b.n5" / "s0" / "0" / "0" / "0").read_bytes()
    payload = stored[4 + 4 * 3:]  # mode, ndim, 3 dimensions
    flags, typesize = payload[2], payload[3]  # Blosc's header: version, version of the codec, flags, typesize
    assert typesize == 2 and flags & 0x4  # 0x4: bit shuffle
    assert len(payload) < 0.6 * block.nbytes
    back = N5Dataset(tmp_path / "b.n5" / "s0").read((slice(0, 16), slice(0, 64), slice(0, 64)))
    np.testing.assert_array_equal(back, block)
