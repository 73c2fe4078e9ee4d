"""bdv.hdf5 loader and BDV HDF5 writer, checked against h5py / pybdv and real files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
from lxml import etree

from conftest import EXAMPLES, loader_element
from tilefuse.downsample import block_mean
from tilefuse.errors import ImageDataError, MissingDataError, UnsupportedFormatError
from tilefuse.loaders import LOADERS
from tilefuse.loaders._hdf5 import Hdf5Loader, Partition
from tilefuse.loaders.base import drop_cached_handles
from tilefuse.project.views import ViewId
from tilefuse.writers.bdv_hdf5 import propose_factors, write_bdv_hdf5

PYBDV_H5 = EXAMPLES / "pybdv_example.h5"
KIDNEY_H5 = EXAMPLES / "npy2bdv_kidney.h5"
needs_examples = pytest.mark.skipif(
    not (PYBDV_H5.exists() and KIDNEY_H5.exists()), reason="shared BigStitcher examples not present"
)

V0 = ViewId(0, 0)
ALL = (slice(None),) * 3


# -- real example files ---------------------------------------------------------


@needs_examples
def test_pybdv_example_matches_h5py():
    loader = Hdf5Loader.for_path(PYBDV_H5)
    assert LOADERS["bdv.hdf5"] is Hdf5Loader
    assert loader.has_view(V0) and not loader.has_view(ViewId(0, 1)) and not loader.has_view(ViewId(1, 0))
    assert loader.levels(V0) == [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0)]
    assert loader.dtype(V0) == np.uint16
    assert loader.shape(V0, 0) == (6, 512, 512)
    assert loader.shape(V0, 1) == (3, 256, 256)
    # subdivisions [[32,16,8],[32,32,4]] (xyz) are the HDF5 chunks reversed
    assert loader.chunks(V0, 0) == (8, 16, 32)
    assert loader.chunks(V0, 1) == (4, 32, 32)
    with h5py.File(PYBDV_H5, "r") as f:
        for level in (0, 1):
            ref = f[f"t00000/s00/{level}/cells"][()]
            img = loader.image(V0, level)
            # dask blocks follow the HDF5 chunks (clipped to the 6-plane z extent)
            assert img.dtype == np.uint16
            assert img.chunksize == tuple(min(c, n) for c, n in zip(loader.chunks(V0, level), img.shape))
            got = img.compute()
            assert got.dtype == np.uint16
            np.testing.assert_array_equal(got, ref)
        region = (slice(1, 5), slice(100, 237), slice(3, 400))
        np.testing.assert_array_equal(loader.read(V0, 0, region), f["t00000/s00/0/cells"][region])


@needs_examples
def test_kidney_legacy_int16_reads_as_uint16():
    loader = Hdf5Loader.for_path(KIDNEY_H5)
    with h5py.File(KIDNEY_H5, "r") as f:
        assert "dataType" not in f["s00"].attrs and f["t00000/s01/0/cells"].dtype == np.int16
        for setup in range(3):
            view = ViewId(0, setup)
            ref = f[f"t00000/s{setup:02d}/0/cells"][()].view(np.uint16)
            assert loader.dtype(view) == np.uint16
            assert loader.shape(view) == (32, 172, 111)
            assert loader.levels(view) == [(1.0, 1.0, 1.0)]
            got = loader.image(view).compute()
            assert got.dtype == np.uint16
            np.testing.assert_array_equal(got, ref)
    assert not loader.has_view(ViewId(0, 3))


def test_legacy_high_values_are_bit_reinterpreted(tmp_path):
    # int16 storage of uint16 values above 32767: only a bit view gets them back.
    values = np.array([[[0, 1, 32767, 32768, 40000, 65535]]], dtype=np.uint16)
    path = tmp_path / "legacy.h5"
    with h5py.File(path, "w") as f:
        f["s00/resolutions"] = np.ones((1, 3))
        f["s00/subdivisions"] = np.array([[6, 1, 1]], dtype=np.int32)
        f.create_dataset("t00000/s00/0/cells", data=values.view(np.int16), chunks=(1, 1, 6))
    got = Hdf5Loader.for_path(path).read(V0, 0, ALL)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, values)


@needs_examples
def test_from_xml_resolves_relative_paths_and_round_trips(tmp_path):
    # The XMLs name example.h5 / kidney.h5; stage the shared files under those names.
    (tmp_path / "example.h5").symlink_to(PYBDV_H5)
    xml = EXAMPLES / "pybdv_example.xml"
    loader = Hdf5Loader.from_xml(loader_element(xml), tmp_path, xml)
    assert loader.path == tmp_path / "example.h5"
    assert loader.files() == [tmp_path / "example.h5"]
    with h5py.File(PYBDV_H5, "r") as f:
        np.testing.assert_array_equal(loader.read(V0, 1, ALL), f["t00000/s00/1/cells"][()])

    elem = loader.to_xml(tmp_path)
    assert elem.get("format") == "bdv.hdf5"
    assert (elem.find("hdf5").get("type"), elem.find("hdf5").text) == ("relative", "example.h5")
    elem = loader.to_xml(tmp_path / "elsewhere")
    assert elem.find("hdf5").get("type") == "absolute"
    assert Path(elem.find("hdf5").text) == tmp_path / "example.h5"
    # absolute paths are kept as they are
    again = Hdf5Loader.from_xml(elem, Path("/nonexistent"), None)
    assert again.path == tmp_path / "example.h5"


@needs_examples
def test_missing_file_names_file_and_xml(tmp_path):
    xml = EXAMPLES / "pybdv_example.xml"
    loader = Hdf5Loader.from_xml(loader_element(xml), tmp_path, xml)
    with pytest.raises(MissingDataError) as err:
        loader.has_view(V0)
    msg = str(err.value)
    assert str(tmp_path / "example.h5") in msg and "pybdv_example.xml" in msg
    with pytest.raises(FileNotFoundError):  # MissingDataError is also a FileNotFoundError
        loader.read(V0, 0, ALL)


@needs_examples
def test_corrupt_files_raise_image_data_error(tmp_path):
    text = tmp_path / "not.h5"
    text.write_text("this is not HDF5\n" * 100)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(PYBDV_H5.read_bytes()[:50_000])
    for path in (text, truncated):
        with pytest.raises(ImageDataError, match=path.name):
            Hdf5Loader.for_path(path).shape(V0)


@needs_examples
def test_absent_view_and_level(tmp_path):
    path = tmp_path / "partial.h5"
    shutil.copy(PYBDV_H5, path)
    with h5py.File(path, "a") as f:
        del f["t00000/s00/1"]
        f.copy(f["s00"], "s01")  # setup 1 has metadata but no pixels
    loader = Hdf5Loader.for_path(path)
    view = ViewId(0, 1)
    assert not loader.has_view(view)
    with pytest.raises(MissingDataError) as err:
        loader.read(view, 0, ALL)
    msg = str(err.value)
    assert "setup 1" in msg and "t00000/s01/0/cells" in msg and str(path) in msg
    # level 1 is declared in resolutions but its dataset is gone
    with pytest.raises(MissingDataError, match="t00000/s00/1/cells"):
        loader.shape(V0, 1)
    with pytest.raises(ImageDataError, match="level 5"):
        loader.read(V0, 5, ALL)


@needs_examples
def test_metadata_looked_up_once_per_file_identity(tmp_path, monkeypatch):
    # Path lookups in an HDF5 file cost ~0.1-0.3 ms each: checking and reading 600 tiles spent more time
    # there than registering them.  After the first check, reads and metadata calls make none ...
    from tilefuse.loaders.validate import check_view

    path = tmp_path / "copy.h5"
    shutil.copy(PYBDV_H5, path)
    loader = Hdf5Loader.for_path(path)
    region = (slice(1, 5), slice(100, 237), slice(3, 400))
    check_view(loader, V0)
    first = loader.read(V0, 0, region)
    assert loader.has_view(V0)
    calls = []
    for name in ("get", "__contains__", "__getitem__"):
        original = getattr(h5py.Group, name)
        monkeypatch.setattr(h5py.Group, name, lambda self, *a, _o=original, _n=name, **k: calls.append(_n)
                            or _o(self, *a, **k))
    for _ in range(3):
        check_view(loader, V0)
        np.testing.assert_array_equal(loader.read(V0, 0, region), first)
        assert loader.has_view(V0) and loader.dtype(V0) == np.uint16 and loader.shape(V0, 1) == (3, 256, 256)
        assert loader.levels(V0) == [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0)] and loader.chunks(V0, 0) == (8, 16, 32)
    assert calls == []
    # ... keeping only the datasets read last open (HDF5 holds 30-400 KB per open dataset: GBs for 10,000
    # tiles of 4 levels if all were kept): the one level read here, none of the levels only checked
    import gc

    from tilefuse.loaders._hdf5 import _OPEN_DATASETS

    gc.collect()
    assert h5py.h5f.get_obj_count(loader._file(path).id, h5py.h5f.OBJ_DATASET) == 1 <= _OPEN_DATASETS
    # ... and a replaced file is looked at again (new pixels, new shape of level 1)
    new = tmp_path / "new.h5"
    shutil.copy(PYBDV_H5, new)
    with h5py.File(new, "a") as f:
        f["t00000/s00/0/cells"][1:5, 100:237, 3:400] = 7
        del f["t00000/s00/1/cells"]
        f.create_dataset("t00000/s00/1/cells", data=np.zeros((3, 256, 250), np.int16), chunks=(3, 32, 32))
    new.replace(path)
    assert (loader.read(V0, 0, region) == 7).all()
    assert loader.shape(V0, 1) == (3, 256, 250) and calls


@needs_examples
def test_region_read_decodes_only_needed_chunks(tmp_path):
    # Overwrite every chunk the region does not touch with garbage: if the
    # loader decompressed any of them, gzip would fail.
    path = tmp_path / "sabotaged.h5"
    shutil.copy(PYBDV_H5, path)
    region = (slice(2, 7), slice(20, 40), slice(70, 100))  # z 2..6 clips at 6
    with h5py.File(PYBDV_H5, "r") as f:
        ds = f["t00000/s00/0/cells"]
        ref = ds[region]
        chunks = ds.chunks
        needed, garbage = 0, []
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            inside = all(
                o < (sl.stop if sl.stop is not None else n) and o + c > sl.start
                for o, c, sl, n in zip(info.chunk_offset, chunks, region, ds.shape)
            )
            if inside:
                needed += 1
            else:
                garbage.append((info.byte_offset, info.size))
    assert needed == 1 * 2 * 2 and len(garbage) == 508  # chunks (8,16,32): z {0}, y {1,2}, x {2,3}
    with open(path, "r+b") as fh:
        for offset, size in garbage:
            fh.seek(offset)
            fh.write(b"\xff" * size)
    loader = Hdf5Loader.for_path(path)
    np.testing.assert_array_equal(loader.read(V0, 0, region), ref)
    np.testing.assert_array_equal(loader.image(V0)[region].compute(), ref)
    with pytest.raises(ImageDataError, match="sabotaged.h5.*t00000/s00/0/cells"):  # the sabotage is real
        loader.read(V0, 0, ALL)


def _write_partition(path: Path, data: dict[tuple[int, int], np.ndarray]) -> None:
    with h5py.File(path, "w") as f:
        for (tp, setup), arr in data.items():
            g = f.require_group(f"s{setup:02d}")
            if "resolutions" not in g:
                g["resolutions"] = np.ones((1, 3))
                g["subdivisions"] = np.array([[8, 8, 4]], dtype=np.int32)
                g.attrs["dataType"] = np.bytes_(arr.dtype.name)
            f.create_dataset(f"t{tp:05d}/s{setup:02d}/0/cells", data=arr, chunks=(4, 8, 8))


def test_partitioned_dataset(tmp_path):
    rng = np.random.default_rng(1)
    pix = {(tp, s): rng.integers(0, 65535, (5, 12, 9), dtype=np.uint16) for tp in (0, 1) for s in (0, 1, 2)}
    # partition A holds setups 0,1 under their own ids; partition B holds
    # setup 2 of both timepoints, stored inside as timepoints 10,11 / setup 0.
    _write_partition(tmp_path / "a.h5", {k: v for k, v in pix.items() if k[1] < 2})
    _write_partition(tmp_path / "b.h5", {(10 + tp, 0): pix[tp, 2] for tp in (0, 1)})
    with h5py.File(tmp_path / "master.h5", "w") as f:
        for tp in (0, 1):
            for s in (0, 1):
                f[f"t{tp:05d}/s{s:02d}"] = h5py.ExternalLink("a.h5", f"t{tp:05d}/s{s:02d}")
            f[f"t{tp:05d}/s02"] = h5py.ExternalLink("b.h5", f"t{10 + tp:05d}/s00")
        for s in (0, 1):
            f[f"s{s:02d}"] = h5py.ExternalLink("a.h5", f"s{s:02d}")
        f["s02"] = h5py.ExternalLink("b.h5", "s00")

    xml = f"""<ImageLoader format="bdv.hdf5">
      <hdf5 type="relative">master.h5</hdf5>
      <partition><path type="relative">a.h5</path>
        <timepoints>0 1</timepoints><setups>0 1</setups></partition>
      <partition><path type="absolute">{tmp_path / 'b.h5'}</path>
        <timepoints>0 1</timepoints><timepointsMapped>10 11</timepointsMapped>
        <setups>2</setups><setupsMapped>0</setupsMapped></partition>
    </ImageLoader>"""
    loader = Hdf5Loader.from_xml(etree.fromstring(xml), tmp_path, tmp_path / "dataset.xml")
    assert loader.partitions[1] == Partition(tmp_path / "b.h5", (0, 1), (2,), (10, 11), (0,))
    assert loader.files() == [tmp_path / "master.h5", tmp_path / "a.h5", tmp_path / "b.h5"]
    # the master alone, through h5py's external links
    via_master = Hdf5Loader.for_path(tmp_path / "master.h5")
    for (tp, s), ref in pix.items():
        view = ViewId(tp, s)
        for ld in (loader, via_master):
            assert ld.has_view(view) and ld.dtype(view) == np.uint16 and ld.shape(view) == (5, 12, 9)
            np.testing.assert_array_equal(ld.image(view).compute(), ref)
    assert not loader.has_view(ViewId(2, 0))

    out = loader.to_xml(tmp_path)
    parts = out.findall("partition")
    assert [p.findtext("path") for p in parts] == ["a.h5", "b.h5"]
    assert parts[0].find("timepointsMapped") is None and parts[1].findtext("timepointsMapped") == "10 11"
    again = Hdf5Loader.from_xml(out, tmp_path, None)
    assert again.partitions == loader.partitions and again.path == loader.path

    # reading with the partition file missing names that file
    (tmp_path / "b.h5").unlink()
    drop_cached_handles()
    with pytest.raises(MissingDataError, match="b.h5"):
        loader.read(ViewId(0, 2), 0, ALL)
    np.testing.assert_array_equal(loader.read(ViewId(1, 1), 0, ALL), pix[1, 1])


@needs_examples
def test_loader_pickles_small_and_reads_after_unpickling():
    loader = Hdf5Loader.for_path(KIDNEY_H5)
    loader.shape(ViewId(0, 1))  # opens and caches the handle
    blob = pickle.dumps(loader)
    assert len(blob) < 1000
    drop_cached_handles()  # as in a fresh worker process
    clone = pickle.loads(blob)
    with h5py.File(KIDNEY_H5, "r") as f:
        ref = f["t00000/s01/0/cells"][3:9].view(np.uint16)
    np.testing.assert_array_equal(clone.read(ViewId(0, 1), 0, (slice(3, 9),)), ref)


# -- writer -------------------------------------------------------------------------


def _ref_block_mean(arr: np.ndarray, f) -> np.ndarray:
    """Independent reference: NaN-pad to a multiple of f, reshape, nanmean, round."""
    shape = [-(-n // k) * k for n, k in zip(arr.shape, f)]
    pad = np.full(shape, np.nan)
    pad[tuple(slice(0, n) for n in arr.shape)] = arr
    new = []
    for n, k in zip(shape, f):
        new += [n // k, k]
    mean = np.nanmean(pad.reshape(new), axis=(1, 3, 5))
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(arr.dtype)
    return mean.astype(arr.dtype)


def test_block_mean_partial_edges():
    a = np.arange(2 * 5 * 7, dtype=np.float64).reshape(2, 5, 7)
    got = block_mean(a, (2, 2, 3))
    assert got.shape == (1, 3, 3)
    # last x window holds only column 6; last y window only row 4
    assert got[0, 2, 2] == pytest.approx(np.mean(a[:, 4:, 6:]))
    assert got[0, 0, 0] == pytest.approx(np.mean(a[:, 0:2, 0:3]))
    np.testing.assert_allclose(got, _ref_block_mean(a, (2, 2, 3)))
    u = np.array([[[0, 1, 65535, 65535]]], dtype=np.uint16)
    np.testing.assert_array_equal(block_mean(u, (1, 1, 2)), [[[0, 65535]]])  # 0.5 rounds to even


def test_writer_layout_checked_with_pybdv_and_h5py(tmp_path):
    from pybdv.util import get_key, get_number_of_scales, get_scale_factors

    rng = np.random.default_rng(2)
    u16 = rng.integers(0, 65535, (13, 70, 101), dtype=np.uint16)
    f32 = da.from_array(rng.normal(size=(9, 33, 40)).astype(np.float32), chunks=(4, 11, 13))
    factors = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    views = {ViewId(0, 0): u16, ViewId(1, 0): u16[::-1], ViewId(0, 4): f32}
    path = write_bdv_hdf5(tmp_path / "out.h5", views, factors=factors, chunks=(4, 16, 32))
    assert path == tmp_path / "out.h5" and sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]

    for setup in (0, 4):  # pybdv turns BDV's xyz resolutions back into zyx
        assert get_scale_factors(str(path), setup) == [list(map(float, f)) for f in factors]
    assert get_number_of_scales(str(path), 1, 0) == 3
    refs = {
        ViewId(0, 0): u16.astype(np.uint16),
        ViewId(1, 0): u16[::-1],
        ViewId(0, 4): f32.compute(),
    }
    loader = Hdf5Loader.for_path(path)
    with h5py.File(path, "r") as f:
        assert f["s00"].attrs["dataType"] == b"uint16" and f["s04"].attrs["dataType"] == b"float32"
        assert f["s00/resolutions"].dtype == np.float64 and f["s00/subdivisions"].dtype == np.int32
        np.testing.assert_array_equal(f["s00/resolutions"][()], [[1, 1, 1], [2, 2, 1], [4, 4, 2]])
        # subdivisions are the chunk shapes, xyz, clipped to small levels
        np.testing.assert_array_equal(f["s04/subdivisions"][()], [[32, 16, 4], [20, 16, 4], [10, 8, 4]])
        for view, ref in refs.items():
            levels = [ref]
            for a, b in zip(factors[1:], factors[:-1]):
                rel = [x // y for x, y in zip(a, b)]
                # BDV's exporters: max(n // r, 1) voxels, the incomplete last window dropped
                whole = levels[-1][tuple(slice(0, n // r * r if n >= r else n) for n, r in zip(levels[-1].shape, rel))]
                levels.append(_ref_block_mean(whole, rel))
            for level, want in enumerate(levels):
                ds = f[get_key(True, view.timepoint, view.setup, level)]
                assert ds.dtype == ref.dtype and ds.compression == "gzip"
                assert ds.shape == want.shape
                assert ds.shape == tuple(max(n // k, 1) for n, k in zip(ref.shape, factors[level]))
                assert ds.chunks == tuple(min(c, n) for c, n in zip((4, 16, 32), ds.shape))
                if ref.dtype.kind == "f":
                    np.testing.assert_allclose(ds[()], want, rtol=1e-6, atol=1e-6)
                else:
                    np.testing.assert_array_equal(ds[()], want)
                # and the loader reads exactly what is stored
                np.testing.assert_array_equal(loader.image(view, level).compute(), ds[()])
    assert loader.levels(ViewId(0, 4)) == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0), (2.0, 4.0, 4.0)]


class _LazySource:
    """A big array-like that records every read and refuses to be loaded whole."""

    def __init__(self, shape):
        self.shape, self.dtype, self.ndim = shape, np.dtype(np.uint16), len(shape)
        self.largest_read = 0

    def __getitem__(self, key):
        z, y, x = np.ogrid[tuple(slice(*s.indices(n)[:2]) for s, n in zip(key, self.shape))]
        block = ((z * 7 + y * 3 + x) % 1000).astype(np.uint16)
        self.largest_read = max(self.largest_read, block.size)
        return block

    def __array__(self, *args, **kwargs):
        raise AssertionError("the writer loaded a whole view into memory")


def test_writer_streams_blocks(tmp_path):
    src = _LazySource((20, 96, 120))
    path = write_bdv_hdf5(tmp_path / "big.h5", {V0: src}, factors=[(1, 1, 1), (2, 2, 2)], chunks=(8, 32, 32))
    assert src.largest_read <= 8 * 32 * 32
    z, y, x = np.ogrid[:20, :96, :120]
    full = ((z * 7 + y * 3 + x) % 1000).astype(np.uint16)
    loader = Hdf5Loader.for_path(path)
    np.testing.assert_array_equal(loader.read(V0, 0, ALL), full)
    np.testing.assert_array_equal(loader.read(V0, 1, ALL), _ref_block_mean(full, (2, 2, 2)))


def test_writer_goes_in_batches_of_views(tmp_path, monkeypatch):
    # Thousands of views in one dask graph with all their datasets open took GBs: views are written in
    # batches (here one view per batch), each level of a batch by one graph, with the same result.
    import tilefuse._compute
    import tilefuse.writers.bdv_hdf5 as writer

    monkeypatch.setattr(writer, "_BATCH_CHUNKS", 4)  # views of 2x2x2 chunks: one view per batch
    sizes = []
    real_store = tilefuse._compute.store
    monkeypatch.setattr(tilefuse._compute, "store", lambda s, t, **k: sizes.append(len(s)) or real_store(s, t, **k))
    rng = np.random.default_rng(0)
    images = {ViewId(0, s): rng.integers(0, 4000, (8, 64, 64), dtype=np.uint16) for s in range(3)}
    path = write_bdv_hdf5(tmp_path / "batched.h5", images, factors=[(1, 1, 1), (2, 2, 2)], chunks=(4, 32, 32))
    assert sizes == [1] * 6  # 3 batches x 2 levels
    loader = Hdf5Loader.for_path(path)
    for view, img in images.items():
        np.testing.assert_array_equal(loader.read(view, 0, ALL), img)
        np.testing.assert_array_equal(loader.read(view, 1, ALL), _ref_block_mean(img, (2, 2, 2)))


def test_writer_replaces_atomically_and_cleans_up(tmp_path, capsys):
    path = tmp_path / "x.h5"
    a = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    write_bdv_hdf5(path, {V0: a}, progress=True)
    assert "chunk" in capsys.readouterr().err  # tqdm bar
    loader = Hdf5Loader.for_path(path)
    np.testing.assert_array_equal(loader.read(V0, 0, ALL), a)  # handle now cached

    write_bdv_hdf5(path, {V0: a[:, ::-1]})  # overwrite: cached handle must not serve the old file
    np.testing.assert_array_equal(Hdf5Loader.for_path(path).read(V0, 0, ALL), a[:, ::-1])

    def boom(block):
        raise RuntimeError("source failed")

    bad = da.from_array(a, chunks=(2, 8, 8)).map_blocks(boom, dtype=a.dtype)
    with pytest.raises(RuntimeError, match="source failed"):
        write_bdv_hdf5(path, {V0: bad})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]
    np.testing.assert_array_equal(Hdf5Loader.for_path(path).read(V0, 0, ALL), a[:, ::-1])


def test_writer_rejects_bad_input(tmp_path):
    a = np.zeros((2, 4, 4), np.uint16)
    out = tmp_path / "bad.h5"
    with pytest.raises(ImageDataError, match="integer multiple"):
        write_bdv_hdf5(out, {V0: a}, factors=[(1, 1, 1), (1, 2, 2), (2, 3, 4)])
    with pytest.raises(ImageDataError, match=r"start with \(1, 1, 1\)"):
        write_bdv_hdf5(out, {V0: a}, factors=[(2, 2, 2)])
    with pytest.raises(ImageDataError, match="bool"):
        write_bdv_hdf5(out, {V0: a.astype(bool)})
    with pytest.raises(ImageDataError, match="setup 0 mixes"):
        write_bdv_hdf5(out, {V0: a, ViewId(1, 0): a.astype(np.uint8)})
    with pytest.raises(UnsupportedFormatError, match="lzf"):
        write_bdv_hdf5(out, {V0: a}, compression="lzf")
    assert not any(tmp_path.iterdir())


def test_pybdv_written_legacy_file_reads_back(tmp_path):
    import pybdv

    a = np.random.default_rng(3).integers(0, 65535, (6, 20, 24), dtype=np.uint16)
    path = tmp_path / "pb.h5"
    pybdv.make_bdv(a, str(path), downscale_factors=[[1, 2, 2]], downscale_mode="mean", chunks=(3, 10, 12))
    loader = Hdf5Loader.for_path(path)
    assert loader.dtype(V0) == np.uint16
    assert loader.levels(V0) == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0)]
    np.testing.assert_array_equal(loader.image(V0).compute(), a)


def test_propose_factors():
    # anisotropic: xy first until roughly isotropic, then all axes together
    assert propose_factors((100, 1024, 1024), (2.0, 0.73, 0.73)) == [
        (1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8), (8, 16, 16),
    ]
    assert propose_factors((256, 256, 256), (1, 1, 1), min_size=64) == [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    # a single plane is never halved along z
    assert propose_factors((1, 512, 512), (1, 1, 1)) == [(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8)]
    # small z runs out first; its factor stops growing at one voxel
    assert propose_factors((6, 512, 512), (1, 1, 1)) == [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8)]
    assert propose_factors((10, 40, 40), (1, 1, 1)) == [(1, 1, 1)]
    with pytest.raises(ImageDataError):
        propose_factors((10, 40), (1, 1))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dtype", ["uint16", "float32", "uint8"])
def test_direct_chunk_reads_equal_h5py(tmp_path, shuffle, dtype):
    """Regions read through raw chunks + zlib equal h5py's own decoding, edges and unwritten chunks too."""
    from tilefuse.loaders._hdf5 import _read_region
    from tilefuse.loaders.base import normalize_region

    rng = np.random.default_rng(0)
    data = (rng.random((20, 45, 70)) * 200).astype(dtype)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        ds = f.create_dataset("a", shape=data.shape, dtype=dtype, chunks=(8, 16, 32), compression="gzip",
                              shuffle=shuffle, fillvalue=7)
        ds[:16] = data[:16]  # chunks of the last z-slab are never written
        f.create_dataset("plain", data=data, chunks=(8, 16, 32))
        f.create_dataset("lzf", data=data, chunks=(8, 16, 32), compression="lzf")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        ds = f["a"]
        for region in [np.s_[:, :, :], np.s_[3:19, 5:44, 31:69], np.s_[15:20, 0:1, 60:70], np.s_[0:0, :, :]]:
            region = normalize_region(region, data.shape)
            np.testing.assert_array_equal(_read_region(ds, region), ds[region])
            np.testing.assert_array_equal(_read_region(f["plain"], region), data[region])
            np.testing.assert_array_equal(_read_region(f["lzf"], region), data[region])
