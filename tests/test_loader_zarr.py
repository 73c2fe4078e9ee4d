"""The bdv.multimg.zarr (BigStitcher OME-Zarr) loader and writer."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from lxml import etree

from conftest import example_loader_element
from tilefuse.errors import ImageDataError, MissingDataError, ProjectFormatError
from tilefuse.loaders import LOADERS
from tilefuse.loaders._zarr import OmeZarrLoader, ZGroup
from tilefuse.project.views import ViewId
from tilefuse.writers.bdv_zarr import ngff_multiscales, write_bdv_omezarr

# Every OME-Zarr image a test here leaves behind is validated (ome-zarr-models) and read back (ome-zarr-py, zarr).
pytestmark = pytest.mark.usefixtures("every_ngff_output_checked")


FULL = (slice(None),) * 3


def ramp(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    return rng.integers(0, min(np.iinfo(dtype).max, 60000), shape, dtype=dtype)




# -- XML ---------------------------------------------------------------------------
def test_parse_v1_example(tmp_path):
    el = example_loader_element("pydbs_multimgzarr_v1_15tiles.xml")
    loader = OmeZarrLoader.from_xml(el, tmp_path, None)
    assert loader.version == "1.0"
    assert loader.path == Path("/data/foo_dataset/SPIM.ome.zarr")
    assert len(loader.zgroups) == 15
    assert loader.zgroups[ViewId(0, 0)] == ZGroup("tile_x_0000_y_0000_z_0000_ch_488.zarr", None)
    assert loader.zgroups[ViewId(0, 1)].path == "tile_x_0000_y_0001_z_0000_ch_488.zarr"
    assert not loader.has_view(ViewId(0, 0)) and not loader.has_view(ViewId(0, 99))
    with pytest.raises(MissingDataError, match=r"SPIM\.ome\.zarr/tile_x_0000_y_0000_z_0000_ch_488\.zarr.*setup 0"):
        loader.read(ViewId(0, 0), 0, FULL)
    assert etree.tostring(loader.to_xml(tmp_path)) == etree.tostring(el, with_tail=False)


def test_parse_v3_example(tmp_path):
    el = example_loader_element("pydbs_multimgzarr_v3_mesospim_2x2_2ch_2illum.xml")
    loader = OmeZarrLoader.from_xml(el, tmp_path, None)
    assert loader.version == "3.0"
    assert loader.path == tmp_path / "Reuss-MousBrain2x2tiles-2ch.ome.zarr"
    n = len(el.findall("zgroups/zgroup"))
    assert n > 1 and len(loader.zgroups) == n
    assert loader.zgroups[ViewId(0, 3)] == ZGroup("s3-t0.zarr", (0, 0))
    assert not loader.has_view(ViewId(0, 3))
    with pytest.raises(MissingDataError, match=r"s3-t0\.zarr.*timepoint 0, setup 3"):
        loader.read(ViewId(0, 3), 0, FULL)
    with pytest.raises(MissingDataError, match=r"s3-t0\.zarr"):
        loader.levels(ViewId(0, 3))
    # Saved elsewhere: regenerated as version 3.0, same groups and indices.
    el2 = loader.to_xml(tmp_path / "sub")
    assert el2.get("version") == "3.0" and el2.find("zarr").get("type") == "absolute"
    zg = el2.find("zgroups/zgroup[@setup='3']")
    assert (zg.get("tp"), zg.get("path"), zg.get("indicies")) == ("0", "s3-t0.zarr", "0 0")


def test_v2_and_unversioned_and_bad_xml(tmp_path):
    for version in ('version="2.0"', ""):
        el = etree.fromstring(
            f'<ImageLoader format="bdv.multimg.zarr" {version}><zarr type="relative"> a.ome.zarr\n</zarr>'
            '<zgroups><zgroup setup="4" tp="2" path="x.zarr"/></zgroups></ImageLoader>'
        )
        loader = OmeZarrLoader.from_xml(el, tmp_path, None)
        assert loader.path == tmp_path / "a.ome.zarr"
        assert loader.zgroups == {ViewId(2, 4): ZGroup("x.zarr", None)}
    bad = etree.fromstring('<ImageLoader format="bdv.multimg.zarr" version="3.0"><zarr type="relative">a</zarr>'
                           '<zgroups><zgroup setup="x" tp="0" path="p"/></zgroups></ImageLoader>')
    with pytest.raises(ProjectFormatError, match="setup"):
        OmeZarrLoader.from_xml(bad, tmp_path, Path("p.xml"))
    with pytest.raises(ProjectFormatError, match="<zarr>"):
        OmeZarrLoader.from_xml(etree.fromstring('<ImageLoader format="bdv.multimg.zarr"/>'), tmp_path, None)


def test_s3_bucket_form_parses_to_a_url(tmp_path):
    """Version 1.0's <s3bucket> names s3://bucket/<zarr>/ (read in tests/test_storage_s3.py); kept verbatim."""
    el = etree.fromstring(
        '<ImageLoader format="bdv.multimg.zarr" version="1.0"><s3bucket>aind-open-data</s3bucket>'
        '<zarr type="absolute">exaSPIM/SPIM.ome.zarr</zarr><zgroups><zgroup setup="0" timepoint="0">'
        "<path>tile0.zarr</path></zgroup></zgroups></ImageLoader>"
    )
    loader = OmeZarrLoader.from_xml(el, tmp_path, None)  # parsing works
    assert loader.uri == "s3://aind-open-data/exaSPIM/SPIM.ome.zarr/"
    assert loader.files() == ["s3://aind-open-data/exaSPIM/SPIM.ome.zarr"]
    assert etree.tostring(loader.to_xml(tmp_path / "x")) == etree.tostring(el)


def test_container_at_any_fsspec_url(tmp_path):
    """An OME-Zarr container at a URL (fsspec's in-memory file system: no network) reads as the local one."""
    fsspec = pytest.importorskip("fsspec")
    a = ramp((9, 20, 17), "uint16", seed=3)
    write_bdv_omezarr(tmp_path / "d.ome.zarr", {ViewId(0, 0): a}, factors=[(1, 1, 1), (1, 2, 2)], chunks=(4, 8, 8))
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path / "d.ome.zarr") + "/", "/zarrtest/d.ome.zarr", recursive=True)
    try:
        loader = OmeZarrLoader.for_path("memory://zarrtest/d.ome.zarr")
        assert loader.uri == "memory://zarrtest/d.ome.zarr" and list(loader.zgroups) == [ViewId(0, 0)]
        loader.check_view(ViewId(0, 0))
        np.testing.assert_array_equal(loader.read(ViewId(0, 0), 0, FULL), a)
        assert loader.levels(ViewId(0, 0)) == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0)]
        el = loader.to_xml(tmp_path)
        assert el.find("zarr").text == "memory://zarrtest/d.ome.zarr" and el.find("zarr").get("type") == "absolute"
    finally:
        fs.rm("/zarrtest", recursive=True)


# -- writer + loader ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_write_read_roundtrip(tmp_path, dtype):
    import dask.array as da

    a = ramp((19, 35, 41), dtype, seed=1)
    b = ramp((6, 20, 17), dtype, seed=2)
    loader = write_bdv_omezarr(
        tmp_path / "d.ome.zarr", {ViewId(0, 0): a, ViewId(1, 3): da.from_array(b, chunks=(4, 9, 9))},
        factors=[(1, 1, 1), (1, 2, 2), (2, 4, 4)], chunks=(8, 16, 16),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.ome.zarr"]
    v = ViewId(0, 0)
    assert loader.has_view(v) and loader.has_view(ViewId(1, 3)) and not loader.has_view(ViewId(0, 3))
    assert loader.levels(v) == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0), (2.0, 4.0, 4.0)]
    assert [loader.shape(v, lv) for lv in range(3)] == [(19, 35, 41), (19, 17, 20), (9, 8, 10)]
    assert loader.dtype(v) == np.dtype(dtype) and loader.chunks(v) == (8, 16, 16)
    np.testing.assert_array_equal(loader.read(v, 0, FULL), a)
    np.testing.assert_array_equal(loader.read(ViewId(1, 3), 0, FULL), b)
    region = (slice(5, 19), slice(15, 35), slice(10, 41))
    np.testing.assert_array_equal(loader.read(v, 0, region), a[region])
    np.testing.assert_array_equal(loader.image(v, 1).compute(), loader.read(v, 1, FULL))
    l1 = a[:, :34, :40].astype(np.float64).reshape(19, 17, 2, 20, 2).mean(axis=(2, 4))
    expected = l1.astype(dtype) if dtype == "float32" else np.rint(l1).astype(dtype)
    np.testing.assert_allclose(loader.read(v, 1, FULL), expected, rtol=1e-6)

    # The arrays as zarr sees them: 5D, v3 format, chunks (1, 1, bz, by, bx) in shards of 1 x 4 x 4 chunks.
    arr = zarr.open_array(str(tmp_path / "d.ome.zarr" / "s0-t0.zarr" / "0"), mode="r")
    assert arr.metadata.zarr_format == 3
    assert arr.shape == (1, 1, 19, 35, 41) and arr.chunks == (1, 1, 8, 16, 16) and arr.shards == (1, 1, 8, 48, 48)
    np.testing.assert_array_equal(arr[0, 0], a)
    assert json.loads((tmp_path / "d.ome.zarr" / "zarr.json").read_text())["zarr_format"] == 3
    assert sorted(p.name for p in (tmp_path / "d.ome.zarr" / "s0-t0.zarr" / "0" / "c" / "0" / "0" / "2").iterdir()) \
        == ["0"], "one shard file holds the 3 x 3 chunks of z block 2"


def test_ngff_metadata_is_valid(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    a = ramp((8, 20, 24), "uint16")
    factors = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    write_bdv_omezarr(tmp_path / "d.ome.zarr", {(0, 2): a}, factors=factors, chunks=(4, 8, 8), zarr_format=2)
    group = tmp_path / "d.ome.zarr" / "s2-t0.zarr"
    ms = zarr.open_group(str(group), mode="r").attrs["multiscales"]
    assert ms == ngff_multiscales(factors)
    assert [ax["name"] for ax in ms[0]["axes"]] == ["t", "c", "z", "y", "x"]
    level2 = ms[0]["datasets"][2]["coordinateTransformations"]
    assert level2 == [{"type": "scale", "scale": [1, 1, 2, 4, 4]},
                      {"type": "translation", "translation": [0, 0, 0.5, 1.5, 1.5]}]
    FormatV04().validate_coordinate_transformations(
        5, 3, [d["coordinateTransformations"] for d in ms[0]["datasets"]])

    nodes = list(Reader(parse_url(str(group), fmt=FormatV04()))())
    assert nodes, "ome_zarr found no image"
    image = nodes[0]
    assert [d.shape for d in image.data] == [(1, 1, 8, 20, 24), (1, 1, 8, 10, 12), (1, 1, 4, 5, 6)]
    assert [ax["name"] for ax in image.metadata["axes"]] == ["t", "c", "z", "y", "x"]
    np.testing.assert_array_equal(np.asarray(image.data[0][0, 0]), a)


def test_bigstitcher_container_is_valid_ngff_05(tmp_path):
    Image = pytest.importorskip("ome_zarr_models.v05.image", reason="ome-zarr-models needs Python >= 3.11").Image

    a = ramp((8, 20, 24), "uint16")
    write_bdv_omezarr(tmp_path / "d.ome.zarr", {(0, 2): a}, factors=[(1, 1, 1), (1, 2, 2)], chunks=(4, 8, 8))
    group = zarr.open_group(str(tmp_path / "d.ome.zarr" / "s2-t0.zarr"), mode="r")
    image = Image.from_zarr(group)
    assert image.attributes.ome.version == "0.5"
    assert [a.name for a in image.attributes.ome.multiscales[0].axes] == list("tczyx")
    np.testing.assert_array_equal(group["0"][0, 0], a)


def test_voxel_size_and_xml(tmp_path):
    a = ramp((4, 6, 8), "uint8")
    loader = write_bdv_omezarr(tmp_path / "p" / "d.ome.zarr", {(0, 1): a}, factors=[(1, 1, 1), (1, 2, 2)],
                               voxel_size=(2.0, 0.5, 0.5))
    ome = json.loads((tmp_path / "p" / "d.ome.zarr" / "s1-t0.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"]
    assert ms[0]["datasets"][1]["coordinateTransformations"][0]["scale"] == [1, 1, 2.0, 1.0, 1.0]
    assert ms[0]["datasets"][1]["coordinateTransformations"][1]["translation"] == [0, 0, 0, 0.25, 0.25]
    assert loader.levels(ViewId(0, 1)) == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0)]  # ratio to level 0

    el = loader.to_xml(tmp_path / "p")
    assert LOADERS["bdv.multimg.zarr"] is OmeZarrLoader
    assert (el.get("format"), el.get("version")) == ("bdv.multimg.zarr", "3.0")
    assert (el.find("zarr").get("type"), el.find("zarr").text) == ("relative", "d.ome.zarr")
    zg = el.find("zgroups/zgroup")
    assert dict(zg.attrib) == {"setup": "1", "tp": "0", "path": "s1-t0.zarr", "indicies": "0 0"}
    again = OmeZarrLoader.from_xml(el, tmp_path / "p", None)
    np.testing.assert_array_equal(again.read(ViewId(0, 1), 0, FULL), a)
    clone = pickle.loads(pickle.dumps(again))
    np.testing.assert_array_equal(clone.read(ViewId(0, 1), 1, FULL), loader.read(ViewId(0, 1), 1, FULL))
    scanned = OmeZarrLoader.for_path(tmp_path / "p" / "d.ome.zarr")
    assert scanned.zgroups == {ViewId(0, 1): ZGroup("s1-t0.zarr", (0, 0))}


# -- external OME-Zarr: indicies, NGFF 0.5, scales -----------------------------------------
def _external(tmp_path, data, scales, zarr_format=3):
    """An OME-Zarr image with one level per scale, axes matching data.ndim."""
    root = zarr.open_group(str(tmp_path / "ext.zarr" / "img"), mode="w", zarr_format=zarr_format)
    names = ["t", "c", "z", "y", "x"][-data.ndim:]
    axes = [{"name": n, "type": {"t": "time", "c": "channel"}.get(n, "space")} for n in names]
    datasets = []
    for level, scale in enumerate(scales):
        step = [1] * (data.ndim - 3) + [2 ** level] * 3
        level_data = data[tuple(slice(None, None, s) for s in step)]
        named = {"dimension_names": names} if zarr_format == 3 else {}  # NGFF 0.5 requires them
        root.create_array(str(level), data=level_data, chunks=(1,) * (data.ndim - 3) + (2, 3, 4), **named)
        full_scale = [1.0] * (data.ndim - 3) + list(scale)
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": full_scale}]})
    ms = [{"version": "0.5" if zarr_format == 3 else "0.4", "axes": axes, "datasets": datasets}]
    root.attrs.update({"ome": {"version": "0.5", "multiscales": ms}} if zarr_format == 3 else {"multiscales": ms})
    return tmp_path / "ext.zarr"


def _xml(indicies):
    return etree.fromstring(
        '<ImageLoader format="bdv.multimg.zarr" version="3.0"><zarr type="relative">ext.zarr</zarr>'
        f'<zgroups><zgroup setup="0" tp="0" path="img" indicies="{indicies}"/></zgroups></ImageLoader>'
    )


def test_indicies_select_channel_then_time(tmp_path):
    data = ramp((2, 3, 5, 6, 8), "uint16")  # (t, c, z, y, x)
    _external(tmp_path, data, [(0.5, 0.3, 0.3), (1.0, 0.6, 0.6)])
    v = ViewId(0, 0)
    loader = OmeZarrLoader.from_xml(_xml("2 1"), tmp_path, None)  # channel 2, time 1
    np.testing.assert_array_equal(loader.read(v, 0, FULL), data[1, 2])
    assert loader.shape(v) == (5, 6, 8) and loader.chunks(v) == (2, 3, 4)
    assert loader.levels(v) == [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0)]
    np.testing.assert_array_equal(loader.read(v, 1, FULL), data[1, 2, ::2, ::2, ::2])
    np.testing.assert_array_equal(
        OmeZarrLoader.from_xml(_xml("0 1"), tmp_path, None).read(v, 0, FULL), data[1, 0])
    with pytest.raises(ImageDataError, match="no indicies"):
        OmeZarrLoader.from_xml(_xml("[]"), tmp_path, None).read(v, 0, FULL)
    with pytest.raises(ImageDataError, match="out of range"):
        OmeZarrLoader.from_xml(_xml("3 0"), tmp_path, None).read(v, 0, FULL)


def test_3d_and_4d_external_arrays(tmp_path):
    data3 = ramp((5, 6, 8), "float32")
    _external(tmp_path / "a", data3, [(1, 1, 1)], zarr_format=2)
    loader = OmeZarrLoader.from_xml(_xml("[]"), tmp_path / "a", None)
    np.testing.assert_array_equal(loader.read(ViewId(0, 0), 0, (slice(1, 4), slice(2, 6), slice(3, 8))),
                                  data3[1:4, 2:6, 3:8])
    data4 = ramp((3, 5, 6, 8), "uint8")  # (c, z, y, x)
    _external(tmp_path / "b", data4, [(1, 1, 1)])
    np.testing.assert_array_equal(
        OmeZarrLoader.from_xml(_xml("1"), tmp_path / "b", None).read(ViewId(0, 0), 0, FULL), data4[1])


def test_partial_read_fetches_only_needed_chunks(tmp_path, monkeypatch):
    a = ramp((8, 16, 16), "uint16")
    loader = write_bdv_omezarr(tmp_path / "d.ome.zarr", {(0, 0): a}, chunks=(4, 8, 8), zarr_format=2)
    v = ViewId(0, 0)
    loader.shape(v)  # open metadata first
    keys = []
    real_get = zarr.storage.LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        keys.append(key)
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    np.testing.assert_array_equal(loader.read(v, 0, (slice(1, 3), slice(9, 12), slice(2, 5))), a[1:3, 9:12, 2:5])
    assert [k.rsplit("/", 5)[-5:] for k in keys] == [["0", "0", "0", "1", "0"]]
    keys.clear()
    np.testing.assert_array_equal(loader.read(v, 0, (slice(3, 5), slice(7, 9), slice(0, 4))), a[3:5, 7:9, 0:4])
    assert sorted("/".join(k.split("/")[-3:]) for k in keys) == ["0/0/0", "0/1/0", "1/0/0", "1/1/0"]


def test_partial_read_of_a_shard_fetches_byte_ranges(tmp_path, monkeypatch):
    # Zarr v3: a region read gets the shard's index and the chunks it needs, never the whole shard file.
    a = np.random.default_rng(0).integers(0, 4000, (8, 32, 32), dtype="uint16")
    loader = write_bdv_omezarr(tmp_path / "d.ome.zarr", {(0, 0): a}, chunks=(4, 8, 8))
    v = ViewId(0, 0)
    loader.shape(v)
    shard = tmp_path / "d.ome.zarr" / "s0-t0.zarr" / "0" / "c" / "0" / "0" / "0" / "0" / "0"
    assert shard.is_file(), "chunks (4, 8, 8) in shards of 1 x 4 x 4 chunks: (4, 32, 32) per shard"
    fetched = []
    real_get = zarr.storage.LocalStore.get

    async def counting_get(self, key, prototype, byte_range=None):
        buf = await real_get(self, key, prototype, byte_range)
        fetched.append((key, byte_range, 0 if buf is None else len(buf)))
        return buf

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    np.testing.assert_array_equal(loader.read(v, 0, (slice(1, 3), slice(9, 12), slice(2, 5))), a[1:3, 9:12, 2:5])
    assert {tuple(k.split("/")[-6:]) for k, _, _ in fetched} == {("c", "0", "0", "0", "0", "0")}
    assert all(r is not None for _, r, _ in fetched), fetched
    # the index (16 chunks x 16 bytes + CRC) and one chunk of 4 x 8 x 8 uint16 (512 bytes + Blosc's header)
    assert len(fetched) == 2 and sum(n for _, _, n in fetched) < 16 * 16 + 4 + 512 + 64 < shard.stat().st_size


def test_for_path_with_view_list(tmp_path):
    # The form writers/project.py uses: just the views, BigStitcher group names.
    loader = OmeZarrLoader.for_path(tmp_path / "c.ome.zarr", [ViewId(1, 4), ViewId(0, 2)])
    assert loader.zgroups == {ViewId(1, 4): ZGroup("s4-t1.zarr", (0, 0)), ViewId(0, 2): ZGroup("s2-t0.zarr", (0, 0))}
    assert not loader.has_view(ViewId(1, 4))
    with pytest.raises(MissingDataError, match=r"s4-t1\.zarr.*timepoint 1, setup 4"):
        loader.shape(ViewId(1, 4))
