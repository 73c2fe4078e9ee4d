"""The BDV HDF5 loader's fast paths (issue 14): libhdf5 through ctypes, raw chunk reads, one identity check.

Each fast answer is compared with h5py's (the reference), on the cases the fast path takes and on
those it must hand back to h5py.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from tilefuse.errors import ImageDataError
from tilefuse.loaders import _hdf5, _hdf5_c
from tilefuse.loaders._hdf5 import Hdf5Loader
from tilefuse.loaders.base import drop_cached_handles
from tilefuse.loaders.validate import check_view
from tilefuse.project.views import ViewId

needs_libhdf5 = pytest.mark.skipif(_hdf5_c._library() is None, reason="libhdf5 not reachable through ctypes here")

V0 = ViewId(0, 0)


def _bdv(path, data: np.ndarray, *, levels=3, chunks=(1, 16, 16), fill=0, **kwargs) -> None:
    """A one-view BDV file: ``levels`` levels each half the last in y and x, gzip chunks."""
    with h5py.File(path, "w") as f:
        f["s00/resolutions"] = np.array([[2.0**i, 2.0**i, 1.0] for i in range(levels)])
        f["s00/subdivisions"] = np.array([chunks[::-1]] * levels, dtype=np.int32)
        f["s00"].attrs["dataType"] = np.bytes_(data.dtype.name)
        for level in range(levels):
            arr = data[:, :: 2**level, :: 2**level]
            f.create_dataset(f"t00000/s00/{level}/cells", data=arr, chunks=chunks, fillvalue=fill, **kwargs)


@needs_libhdf5
def test_dataset_facts_equal_h5py(tmp_path):
    path = tmp_path / "d.h5"
    data = np.arange(5 * 40 * 30, dtype=np.uint16).reshape(5, 40, 30)
    with h5py.File(path, "w") as f:
        f.create_dataset("gzip", data=data, chunks=(2, 16, 16), compression="gzip", shuffle=True)
        f.create_dataset("plain", data=data)
        f.create_dataset("be", data=data.astype(">i4"), chunks=(5, 8, 8))
        f.create_dataset("i8", data=data.astype(np.int8), chunks=(5, 8, 8), compression="lzf")
        f.create_dataset("empty", shape=(4, 4, 4), dtype=np.uint16, chunks=(2, 2, 2))
        f.create_dataset("float", data=data.astype(np.float32), chunks=(5, 8, 8))
        f.create_dataset("ext", shape=(4, 4), dtype=np.uint8, external=[(str(tmp_path / "raw.bin"), 0, 16)])
    with h5py.File(path, "r") as f:
        for name in ("gzip", "plain", "be", "i8"):
            ds = f[name]
            facts = _hdf5_c.dataset_facts(f.id.id, name.encode(), stored=True)
            assert facts.shape == ds.shape and facts.chunks == ds.chunks and np.dtype(facts.dtype) == ds.dtype
            assert facts.empty is False and facts.name == ds.name
            assert facts.filename == os.path.abspath(f.filename)
            assert facts.layout == ("chunked" if ds.chunks else "contiguous")
            dcpl = ds.id.get_create_plist()
            assert facts.filters == tuple(dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters()))
            cells = _hdf5._Cells.of_facts(facts)
            assert cells == _hdf5._Cells.of_id(ds.id)  # the same properties either way
        assert _hdf5_c.dataset_facts(f.id.id, b"gzip").filters == (h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE)
        assert _hdf5_c.dataset_facts(f.id.id, b"i8").filters == (32000,)  # lzf: decoded by h5py
        assert _hdf5._Cells.of_facts(_hdf5_c.dataset_facts(f.id.id, b"i8")).codec is None
        # h5py's turn: nothing stored (its fill value), floats, external storage, absent, a group
        assert _hdf5_c.dataset_facts(f.id.id, b"empty", stored=True) is None
        assert _hdf5_c.dataset_facts(f.id.id, b"empty").empty is None
        for name in (b"float", b"ext", b"absent", b"/"):
            assert _hdf5_c.dataset_facts(f.id.id, name) is None


@needs_libhdf5
def test_links_factors_and_names_equal_h5py(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["x"] = np.zeros(3)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["a/res"] = np.array([[1, 1, 1], [2, 2, 1]], dtype=np.int32)
        f["a/f16"] = np.array([1.5, 2, 4], dtype=np.float16)
        f["a/text"] = np.array([b"ab", b"cd"])
        f["soft"] = h5py.SoftLink("/a")
        f["ext"] = h5py.ExternalLink("other.h5", "/x")
        f["a"].attrs["dataType"] = np.bytes_("uint16")
        f["a"].attrs["vlen"] = "uint16"  # a variable-length string: h5py's to decode
        f["a"].attrs["number"] = 3
    with h5py.File(path, "r") as f:
        fid = f.id.id
        for name in ("a", "a/res", "soft", "ext"):
            assert _hdf5_c.link_type(fid, name.encode()) == f.id.links.get_info(name.encode()).type
        assert _hdf5_c.link_type(fid, b"ext") == h5py.h5l.TYPE_EXTERNAL
        assert _hdf5_c.link_type(fid, b"missing") is None
        np.testing.assert_array_equal(_hdf5_c.read_factors(fid, b"a/res"), f["a/res"][()].astype(float))
        np.testing.assert_array_equal(_hdf5_c.read_factors(fid, b"a/f16"), [1.5, 2, 4])
        assert _hdf5_c.read_factors(fid, b"a/text") is None and _hdf5_c.read_factors(fid, b"a") is None
        assert _hdf5_c.read_name_attribute(fid, b"a", b"dataType") == "uint16"
        assert _hdf5_c.read_name_attribute(fid, b"a", b"missing") is _hdf5_c.ABSENT
        for attr in (b"vlen", b"number"):
            assert _hdf5_c.read_name_attribute(fid, b"a", attr) is None
        assert _hdf5_c.read_name_attribute(fid, b"nothing", b"dataType") is None
        assert _hdf5._read_data_type(f, "a") == "uint16"  # either way, the same answer


@needs_libhdf5
def test_check_opens_coarser_levels_without_h5py(tmp_path, monkeypatch):
    """Only level 0 is opened by h5py (it is kept open for the reads that follow); the others are asked of
    libhdf5 directly, and the read after the check opens nothing."""
    path = tmp_path / "v.h5"
    data = np.random.default_rng(0).integers(0, 60000, (1, 64, 48), dtype=np.uint16)
    _bdv(path, data, chunks=(1, 8, 8), compression="gzip")
    drop_cached_handles()
    loader = Hdf5Loader.for_path(path)
    opened = []
    original = h5py.h5d.open
    monkeypatch.setattr(h5py.h5d, "open",
                        lambda loc, name, *a, **k: opened.append(name) or original(loc, name, *a, **k))
    assert loader.has_view(V0)
    layout = check_view(loader, V0, (1, 64, 48))
    assert layout.shapes == ((1, 64, 48), (1, 32, 24), (1, 16, 12)) and layout.chunks == ((1, 8, 8),) * 3
    assert opened == [b"t00000/s00/0/cells"]
    np.testing.assert_array_equal(loader.read(V0, 0, (slice(0, 1), slice(5, 50), slice(3, 40))), data[:, 5:50, 3:40])
    np.testing.assert_array_equal(loader.read(V0, 2, (slice(None),) * 3), data[:, ::4, ::4])
    assert opened == [b"t00000/s00/0/cells", b"t00000/s00/2/cells"]  # level 2 opened for its first read only


def test_one_identity_check_per_read(tmp_path, monkeypatch):
    """A read stats the file once (the state's identity), not once per cached answer."""
    path = tmp_path / "v.h5"
    data = np.random.default_rng(1).integers(0, 60000, (2, 40, 40), dtype=np.uint16)
    _bdv(path, data, levels=1, chunks=(1, 16, 16), compression="gzip")
    drop_cached_handles()
    loader = Hdf5Loader.for_path(path)
    check_view(loader, V0)
    loader.read(V0, 0, (slice(0, 1),) * 3)
    stats = []
    original = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(p) or original(p, *a, **k))
    np.testing.assert_array_equal(loader.read(V0, 0, (slice(0, 2), slice(3, 33), slice(1, 39))), data[:, 3:33, 1:39])
    assert len(stats) == 1


@pytest.mark.parametrize("userblock", [0, 512])
def test_raw_chunk_reads_equal_h5py(tmp_path, userblock):
    """Chunks read by offset (without h5py) equal h5py's reads, unwritten chunks read as the fill value,
    and a file whose offsets are not plain (a user block) is read through h5py, as correctly."""
    path = tmp_path / "v.h5"
    rng = np.random.default_rng(2)
    data = rng.integers(0, 60000, (3, 50, 70), dtype=np.uint16)
    with h5py.File(path, "w", userblock_size=userblock) as f:
        f["s00/resolutions"] = np.ones((1, 3))
        f["s00"].attrs["dataType"] = np.bytes_("uint16")
        ds = f.create_dataset("t00000/s00/0/cells", shape=data.shape, dtype=np.uint16, chunks=(2, 16, 32),
                              compression="gzip", shuffle=True, fillvalue=9)
        ds[:2] = data[:2]  # the chunks of the last z-slab are never written
    drop_cached_handles()
    loader = Hdf5Loader.for_path(path)
    check_view(loader, V0)
    expected = data.copy()
    expected[2:] = 9
    for region in [(slice(None),) * 3, (slice(1, 3), slice(7, 49), slice(30, 65)),
                   (slice(2, 3), slice(0, 1), slice(0, 1))]:
        np.testing.assert_array_equal(loader.read(V0, 0, region), expected[region])
    reader = loader._state(path).open.get((0, 0, 0), None)
    assert (reader.raw is not None) == (userblock == 0)


def test_raw_chunk_read_of_a_cut_file_is_refused(tmp_path):
    """A chunk whose bytes the file no longer holds is an ImageDataError naming the file and the chunk."""
    path = tmp_path / "v.h5"
    data = np.random.default_rng(3).integers(0, 60000, (1, 64, 64), dtype=np.uint16)
    _bdv(path, data, levels=1, chunks=(1, 32, 32), compression="gzip")
    drop_cached_handles()
    loader = Hdf5Loader.for_path(path)
    check_view(loader, V0)
    loader.read(V0, 0, (slice(0, 1), slice(0, 1), slice(0, 1)))  # the chunk index is read
    reader = loader._state(path).open.get((0, 0, 0), None)
    if reader.raw is None:
        pytest.skip("chunks read through h5py here (h5py without chunk_iter)")
    last = max(reader.raw.index.values(), key=lambda info: info.byte_offset)
    with open(path, "r+b") as fh:  # cut the file inside the last chunk, without changing its identity check
        fh.truncate(last.byte_offset + last.size // 2)
    with pytest.raises(ImageDataError, match=r"v\.h5.*cells.*chunk"):
        reader_region = tuple(slice(o, o + 1) for o in last.chunk_offset)
        _hdf5._read_region(reader.ds, reader_region, cells=reader.cells, raw=reader.raw)


def test_reads_after_the_dataset_was_closed_open_nothing(tmp_path, monkeypatch):
    """Once a level was read, where its chunks lie is kept: reading it again after its dataset was closed
    (fusion after registration, more tiles than stay open) opens nothing and reads the same pixels."""
    monkeypatch.setattr(_hdf5, "_OPEN_DATASETS", 1)
    path = tmp_path / "v.h5"
    rng = np.random.default_rng(4)
    with h5py.File(path, "w") as f:
        for s in (0, 1):
            f[f"s{s:02d}/resolutions"] = np.ones((1, 3))
            f[f"s{s:02d}"].attrs["dataType"] = np.bytes_("uint16")
            f.create_dataset(f"t00000/s{s:02d}/0/cells", data=rng.integers(0, 9, (1, 40, 40), dtype=np.uint16),
                             chunks=(1, 16, 16), compression="gzip", fillvalue=3)
    drop_cached_handles()
    loader = Hdf5Loader.for_path(path)
    views = [ViewId(0, 0), ViewId(0, 1)]
    first = [loader.read(v, 0, (slice(None),) * 3) for v in views]
    if _hdf5.Hdf5Loader._state(loader, path).values.get(("raw", 0, 0, 0)) is None:
        pytest.skip("chunks read through h5py here (h5py without chunk_iter)")
    opened = []
    original = h5py.h5d.open
    monkeypatch.setattr(h5py.h5d, "open",
                        lambda loc, name, *a, **k: opened.append(name) or original(loc, name, *a, **k))
    with h5py.File(path, "r") as f:
        for v, got in zip(views, first):
            np.testing.assert_array_equal(got, f[f"t00000/s{v.setup:02d}/0/cells"][()])
            np.testing.assert_array_equal(loader.read(v, 0, (slice(0, 1), slice(3, 37), slice(20, 40))),
                                          f[f"t00000/s{v.setup:02d}/0/cells"][:, 3:37, 20:40])
    assert opened == []


def test_pixels_reached_through_a_soft_link_to_an_unlisted_file_are_refused(tmp_path, monkeypatch):
    """A soft link to an external link passes a look at each link's own type; the file the dataset was
    found in must still be one the project lists (main read these pixels)."""
    with h5py.File(tmp_path / "other.h5", "w") as g:
        g.create_dataset("lvl/cells", data=np.full((1, 8, 8), 7, np.uint16), chunks=(1, 4, 4))
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["s00/resolutions"] = np.ones((1, 3))
        f["s00"].attrs["dataType"] = np.bytes_("uint16")
        f["ext"] = h5py.ExternalLink("other.h5", "/lvl")
        f["t00000/s00/0"] = h5py.SoftLink("/ext")
    drop_cached_handles()
    loader = Hdf5Loader.for_path(tmp_path / "m.h5")
    with pytest.raises(ImageDataError, match=r"m\.h5: view .*cells lies in .*other\.h5, a file the project does not"):
        check_view(loader, V0)
    monkeypatch.setenv("TILEFUSE_ALLOW_EXTERNAL_DATA", "1")
    drop_cached_handles()
    assert check_view(loader, V0).shapes == ((1, 8, 8),)


@pytest.mark.parametrize("stored, declared", [(">u2", "uint16"), (">i2", None), (">u2", None)])
def test_big_endian_pixels_read_as_their_values(tmp_path, stored, declared):
    """A big-endian dataset reads as its values in native order: declared uint16 (main reinterpreted the
    swapped bytes: every pixel wrong, exit 0), or legacy int16 without dataType (uint16 by BDV's rule)."""
    path = tmp_path / "be.h5"
    data = np.random.default_rng(5).integers(0, 30000, (3, 40, 50), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        f["s00/resolutions"] = np.ones((1, 3))
        if declared:
            f["s00"].attrs["dataType"] = np.bytes_(declared)
        f.create_dataset("t00000/s00/0/cells", data=data.astype(stored), chunks=(2, 16, 16), compression="gzip",
                         shuffle=True)
    for cache in (False, True):
        drop_cached_handles()
        loader = Hdf5Loader.for_path(path)
        check_view(loader, V0)
        assert loader.dtype(V0) == np.uint16
        got = loader.read(V0, 0, (slice(1, 3), slice(5, 37), slice(0, 50)), cache=cache)
        assert got.dtype == np.uint16 and got.dtype.isnative
        np.testing.assert_array_equal(got, data[1:3, 5:37, :])


def test_a_file_rewritten_with_its_old_size_and_mtime_is_read_again(tmp_path):
    """A BDV file rewritten in place with the same size, its modification time then set back (``cp -p``,
    ``rsync -t``): the next read in the same process reads the new pixels (main served the decoded blocks
    cached from the old file, exit 0)."""
    path, other = tmp_path / "v.h5", tmp_path / "other.h5"
    rng = np.random.default_rng(6)
    old, new = (rng.integers(0, 60000, (2, 48, 48), dtype=np.uint16) for _ in range(2))
    _bdv(path, old, levels=1, chunks=(1, 16, 16), compression="gzip")
    _bdv(other, new, levels=1, chunks=(1, 16, 16), compression="gzip")
    before = os.stat(path)
    if os.path.getsize(other) != before.st_size:
        pytest.skip("the two files differ in size here")
    drop_cached_handles()
    loader = Hdf5Loader.for_path(path)
    check_view(loader, V0)
    every = (slice(None),) * 3
    np.testing.assert_array_equal(loader.read(V0, 0, every, cache=True), old)
    with open(path, "r+b") as dst:
        dst.write(other.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    np.testing.assert_array_equal(loader.read(V0, 0, every, cache=True), new)


def test_deflate_then_shuffle_is_read_by_h5py(tmp_path):
    """A pipeline that shuffles after compressing (valid HDF5, the reverse of BDV's) is decoded by h5py:
    decoded here in BDV's order it was refused as a damaged chunk."""
    path = tmp_path / "order.h5"
    data = np.random.default_rng(7).integers(0, 60000, (2, 32, 32), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        f["s00/resolutions"] = np.ones((1, 3))
        f["s00"].attrs["dataType"] = np.bytes_("uint16")
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, 16, 16))
        dcpl.set_deflate(4)
        dcpl.set_shuffle()
        dsid = h5py.h5d.create(f.require_group("t00000/s00/0").id, b"cells", h5py.h5t.NATIVE_UINT16,
                               h5py.h5s.create_simple(data.shape), dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, data)
    for cache in (False, True):
        drop_cached_handles()
        loader = Hdf5Loader.for_path(path)
        check_view(loader, V0)
        np.testing.assert_array_equal(loader.read(V0, 0, (slice(None),) * 3, cache=cache), data)


@pytest.mark.parametrize("base, precision, offset", [("STD_U16LE", 12, 4), ("STD_U16LE", 12, 0), ("STD_I32BE", 20, 8)])
def test_integers_of_fewer_bits_read_as_hdf5_converts_them(tmp_path, base, precision, offset):
    """An integer type of fewer bits than its bytes, or at a bit offset, reads as HDF5 converts it
    (h5py's answer): its chunks decoded here gave the stored words (12 bits at offset 4: 16x the values)."""
    path = tmp_path / "bits.h5"
    data = np.random.default_rng(8).integers(0, 2000, (2, 32, 32)).astype(np.uint16 if "U16" in base else np.int32)
    with h5py.File(path, "w") as f:
        f["s00/resolutions"] = np.ones((1, 3))
        f["s00"].attrs["dataType"] = np.bytes_("uint16" if "U16" in base else "int32")
        stored = getattr(h5py.h5t, base).copy()
        stored.set_precision(precision)
        stored.set_offset(offset)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, 16, 16))
        dcpl.set_shuffle()
        dcpl.set_deflate(4)
        dsid = h5py.h5d.create(f.require_group("t00000/s00/0").id, b"cells", stored,
                               h5py.h5s.create_simple(data.shape), dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, data)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["t00000/s00/0/cells"][()], data)  # HDF5's conversion: the values
    for cache in (False, True):
        drop_cached_handles()
        loader = Hdf5Loader.for_path(path)
        check_view(loader, V0)
        np.testing.assert_array_equal(loader.read(V0, 0, (slice(None),) * 3, cache=cache), data)


def test_two_projects_reading_one_master_keep_their_own_state(tmp_path, monkeypatch):
    """One .h5 read by two projects, one listing a partition and one not (two identities for one file):
    each keeps its open file; one state for both was opened again on every read of either."""
    from tilefuse.loaders._hdf5 import Partition

    master, part = tmp_path / "m.h5", tmp_path / "p0.h5"
    data = np.random.default_rng(9).integers(0, 60000, (1, 32, 32), dtype=np.uint16)
    _bdv(master, data, levels=1, chunks=(1, 16, 16), compression="gzip")
    _bdv(part, data[:, ::-1], levels=1, chunks=(1, 16, 16), compression="gzip")
    drop_cached_handles()
    opened = []
    original = _hdf5._open_h5
    monkeypatch.setattr(_hdf5, "_open_h5", lambda *a: opened.append(a[0]) or original(*a))
    listing = Hdf5Loader(master, [Partition(part, (5,), (0,), (5,), (0,))])
    plain = Hdf5Loader(master)
    for _ in range(3):
        for loader in (listing, plain):
            np.testing.assert_array_equal(loader.read(V0, 0, (slice(None),) * 3, cache=True), data)
    assert opened == [master, master]
