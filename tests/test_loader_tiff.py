"""spimreconstruction.filemap2 loader, checked against TIFFs written with tifffile."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
from lxml import etree

from conftest import EXAMPLES, loader_element
from tilefuse.errors import ImageDataError, MissingDataError, ProjectFormatError, UnsupportedFormatError
from tilefuse.loaders import LOADERS
from tilefuse.loaders._tiff import FileMap2Loader, TiffEntry
from tilefuse.loaders.base import drop_cached_handles
from tilefuse.project.views import ViewId

RHAPSO = EXAMPLES / "rhapso_filemap2_7angles_2tp.xml"
RHAPSO_EMPTY = EXAMPLES / "rhapso_filemap2_no_filemapping_listtp.xml"
needs_examples = pytest.mark.skipif(not RHAPSO.exists(), reason="shared BigStitcher examples not present")

V0 = ViewId(0, 0)
ALL = (slice(None),) * 3


@pytest.fixture
def stacks(tmp_path):
    """Files of every supported layout and the zyx array each view should give."""
    rng = np.random.default_rng(0)
    zyx = rng.integers(0, 65535, (7, 33, 45), dtype=np.uint16)
    zcyx = rng.integers(0, 255, (5, 3, 20, 26), dtype=np.uint8)
    yx = rng.normal(size=(19, 23)).astype(np.float32)
    files = {
        # minisblack: otherwise tifffile may store 3- or 4-plane stacks as samples
        "zyx.tif": (zyx, dict(photometric="minisblack", metadata={"axes": "ZYX"})),
        "zcyx.tif": (zcyx, dict(photometric="minisblack", metadata={"axes": "ZCYX"})),
        "imagej.tif": (zcyx, dict(imagej=True, metadata={"axes": "ZCYX"})),
        "plane.tif": (yx, dict(photometric="minisblack")),
    }
    for name, (data, kwargs) in files.items():
        tifffile.imwrite(tmp_path / name, data, **kwargs)
    # a plain multi-page file without shape metadata: one generic 'IYX' series
    with tifffile.TiffWriter(tmp_path / "pages.tif") as w:
        for plane in zyx[:4]:
            w.write(plane, photometric="minisblack", metadata=None, contiguous=False)
    # three series: two planes, then a stack
    with tifffile.TiffWriter(tmp_path / "series.tif") as w:
        for plane in zyx[:2]:
            w.write(plane, photometric="minisblack", contiguous=False)
        w.write(zcyx[:, 0], photometric="minisblack")
    mapping = {
        ViewId(0, 0): ((tmp_path / "zyx.tif", 0, 0), zyx),
        ViewId(0, 1): ((tmp_path / "zcyx.tif", 0, 1), zcyx[:, 1]),
        ViewId(1, 1): ((tmp_path / "imagej.tif", 0, 2), zcyx[:, 2]),
        ViewId(0, 2): ((tmp_path / "plane.tif", 0, 0), yx[None]),
        ViewId(0, 3): ((tmp_path / "pages.tif", 0, 0), zyx[:4]),
        ViewId(0, 4): ((tmp_path / "series.tif", 1, 0), zyx[1:2]),
        ViewId(1, 4): ((tmp_path / "series.tif", 2, 0), zcyx[:, 0]),
    }
    return tmp_path, mapping


def test_reads_every_layout_pixel_exact(stacks):
    _, mapping = stacks
    loader = FileMap2Loader.for_path({v: spec for v, (spec, _) in mapping.items()})
    # filemap2 projects over CZI/ND2/LIF files go through a subclass that keeps TIFFs on FileMap2Loader
    assert issubclass(LOADERS["spimreconstruction.filemap2"], FileMap2Loader)
    for view, (_, ref) in mapping.items():
        assert loader.has_view(view)
        assert loader.levels(view) == [(1.0, 1.0, 1.0)]
        assert loader.shape(view) == ref.shape
        assert loader.dtype(view) == ref.dtype
        np.testing.assert_array_equal(loader.image(view).compute(), ref)
        region = (slice(1, 4), slice(3, 17), slice(2, 21))
        got = loader.read(view, 0, region)
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref[region])
        row = (slice(0, 1), slice(5, 6), slice(None))
        np.testing.assert_array_equal(loader.read(view, 0, row), ref[row])
    # whole pages per z block, several pages per dask task
    assert loader.chunks(ViewId(0, 0)) == (7, 33, 45)
    assert not loader.has_view(ViewId(5, 5))
    with pytest.raises(MissingDataError, match="timepoint 5, setup 5"):
        loader.shape(ViewId(5, 5))
    with pytest.raises(ImageDataError, match="level 1"):
        loader.read(V0, 1, ALL)


def test_region_read_decodes_only_needed_pages(tmp_path):
    # zlib-compressed pages; pages outside the region get garbage that would
    # make decompression fail if they were touched.
    data = np.random.default_rng(1).integers(0, 4000, (12, 40, 30), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack", compression="zlib", metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as tif:
        spans = [(p.dataoffsets[0], p.databytecounts[0]) for p in tif.series[0].pages]
    assert len(spans) == 12
    with open(path, "r+b") as fh:
        for z, (offset, size) in enumerate(spans):
            if not 4 <= z < 7:
                fh.seek(offset)
                fh.write(b"\x00\x01" * (size // 2))
    loader = FileMap2Loader.for_path({V0: path})
    region = (slice(4, 7), slice(10, 30), slice(0, 30))
    np.testing.assert_array_equal(loader.read(V0, 0, region), data[region])
    with pytest.raises(ImageDataError, match="stack.tif") as err:  # the sabotage is real
        loader.read(V0, 0, (slice(3, 4), slice(None), slice(None)))
    assert "view (timepoint 0, setup 0)" in str(err.value)


def test_from_xml_with_real_files_and_round_trip(stacks):
    base, mapping = stacks
    files = "".join(
        f'<FileMapping view_setup="{v.setup}" timepoint="{v.timepoint}" series="{s}" channel="{c}">'
        f'<file type="relative">{p.name}</file></FileMapping>'
        for v, ((p, s, c), _) in mapping.items()
    )
    xml = (
        '<ImageLoader format="spimreconstruction.filemap2"><ZGrouped>false</ZGrouped>'
        f"<files>{files}</files></ImageLoader>"
    )
    loader = FileMap2Loader.from_xml(etree.fromstring(xml), base, base / "dataset.xml")
    for view, (_, ref) in mapping.items():
        np.testing.assert_array_equal(loader.read(view, 0, ALL), ref)
    assert loader.files() == sorted({p for (p, _, _), _ in mapping.values()})

    out = loader.to_xml(base)
    assert out.get("format") == "spimreconstruction.filemap2" and out.findtext("ZGrouped") == "false"
    m = out.find("files/FileMapping[@view_setup='1'][@timepoint='1']")
    assert (m.get("series"), m.get("channel")) == ("0", "2")
    assert (m.find("file").get("type"), m.findtext("file")) == ("relative", "imagej.tif")
    again = FileMap2Loader.from_xml(out, base, None)
    assert again.files_map == loader.files_map
    # pickles without open files and reads in a "new process"
    loader.read(ViewId(0, 1), 0, ALL)
    clone = pickle.loads(pickle.dumps(loader))
    drop_cached_handles()
    np.testing.assert_array_equal(clone.read(ViewId(0, 1), 0, ALL), mapping[ViewId(0, 1)][1])


def test_bad_series_channel_and_files(stacks):
    base, _ = stacks
    cases = {
        ViewId(0, 0): TiffEntry(base / "zcyx.tif", 0, 3),  # channel out of range
        ViewId(0, 1): TiffEntry(base / "zyx.tif", 1, 0),  # no series 1
        ViewId(0, 2): TiffEntry(base / "zyx.tif", 0, 1),  # no channel axis
    }
    (base / "junk.tif").write_bytes(b"not a tiff at all" * 10)
    cases[ViewId(0, 3)] = TiffEntry(base / "junk.tif")
    loader = FileMap2Loader(cases)
    for view, pattern in [
        (ViewId(0, 0), "channel 3.*3 along 'C'"),
        (ViewId(0, 1), "series 1.*1 series"),
        (ViewId(0, 2), "no channel axis"),
        (ViewId(0, 3), "junk.tif: not a readable TIFF"),
    ]:
        with pytest.raises(ImageDataError, match=pattern):
            loader.read(view, 0, ALL)
    grouped = FileMap2Loader({V0: TiffEntry(base / "zyx.tif")}, z_grouped=True)
    with pytest.raises(UnsupportedFormatError, match="ZGrouped"):
        grouped.shape(V0)


@needs_examples
def test_rhapso_example_parses_and_reports_missing_tiffs(tmp_path):
    loader = FileMap2Loader.from_xml(loader_element(RHAPSO), tmp_path, RHAPSO)
    assert len(loader.files_map) == 14
    assert {v.timepoint for v in loader.files_map} == {18, 30}
    assert {v.setup for v in loader.files_map} == set(range(7))
    entry = loader.files_map[ViewId(30, 5)]
    assert entry == TiffEntry(tmp_path / "spim_TL30_Angle225.tif", 0, 0)
    assert not loader.has_view(ViewId(30, 5))
    with pytest.raises(MissingDataError) as err:
        loader.read(ViewId(30, 5), 0, ALL)
    msg = str(err.value)
    assert "spim_TL30_Angle225.tif" in msg and "timepoint 30, setup 5" in msg
    with pytest.raises(FileNotFoundError):
        loader.shape(ViewId(18, 0))
    out = loader.to_xml(tmp_path)
    assert len(out.findall("files/FileMapping")) == 14


@needs_examples
def test_empty_files_element_is_a_format_error(tmp_path):
    with pytest.raises(ProjectFormatError) as err:
        FileMap2Loader.from_xml(loader_element(RHAPSO_EMPTY), tmp_path, RHAPSO_EMPTY)
    msg = str(err.value)
    assert "rhapso_filemap2_no_filemapping_listtp.xml" in msg and "<files>" in msg


def test_malformed_mapping_attributes(tmp_path):
    xml = (
        '<ImageLoader format="spimreconstruction.filemap2"><files>'
        '<FileMapping view_setup="x" timepoint="0"><file type="relative">a.tif</file></FileMapping>'
        "</files></ImageLoader>"
    )
    with pytest.raises(ProjectFormatError, match="FileMapping"):
        FileMap2Loader.from_xml(etree.fromstring(xml), tmp_path, tmp_path / "d.xml")


def test_contiguous_series_read_directly_with_any_byte_order(tmp_path):
    # Uncompressed contiguous series are read by pread, compressed ones through zarr: same pixels.
    data = np.random.default_rng(2).integers(0, 65535, (6, 40, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "le.tif", data, photometric="minisblack", metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "be.tif", data, photometric="minisblack", byteorder=">", metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "zlib.tif", data, photometric="minisblack", compression="zlib",
                     metadata={"axes": "ZYX"})
    views = {ViewId(0, i): tmp_path / name for i, name in enumerate(("le.tif", "be.tif", "zlib.tif"))}
    loader = FileMap2Loader.for_path(views)
    region = (slice(2, 5), slice(7, 31), slice(3, 29))
    for view in views:
        got = loader.read(view, 0, region)
        assert got.dtype == np.uint16 and got.dtype.isnative
        np.testing.assert_array_equal(got, data[region])
        assert loader.chunks(view) == (6, 40, 30)
    assert [loader._handle(v).contiguous for v in views] == [True, True, False]


def test_contiguous_read_of_a_file_cut_short_after_opening(tmp_path):
    data = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "ZYX"})
    loader = FileMap2Loader.for_path({V0: path})
    handle = loader._handle(V0)
    assert handle.contiguous
    with open(path, "r+b") as fh:  # the file shrinks while its handle is open: planes 2 and 3 are cut off
        fh.truncate(handle.series.dataoffset + 2 * 16 * 16 * 2 + 10)
    np.testing.assert_array_equal(handle.read_contiguous([slice(0, 2), slice(0, 16), slice(0, 16)]), data[:2])
    with pytest.raises(ImageDataError, match="stack.tif.*truncated"):
        handle.read_contiguous([slice(3, 4), slice(0, 16), slice(0, 16)])
    with pytest.raises(ImageDataError, match="stack.tif"):  # the loader sees the change and re-checks
        loader.read(V0, 0, ALL)


def test_token_of_many_views_is_cheap_and_identifies_the_mapping(tmp_path):
    from dask.base import tokenize

    files = {ViewId(0, i): tmp_path / f"t{i}.tif" for i in range(5000)}
    loader = FileMap2Loader.for_path(files)
    assert loader.token() is loader.token()  # computed once
    assert tokenize(loader.token()) == tokenize(FileMap2Loader.for_path(files).token())
    other = dict(files)
    other[ViewId(0, 7)] = tmp_path / "other.tif"
    assert tokenize(loader.token()) != tokenize(FileMap2Loader.for_path(other).token())
    assert tokenize(pickle.loads(pickle.dumps(loader)).token()) == tokenize(loader.token())
