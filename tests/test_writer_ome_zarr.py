"""OME-Zarr writer: NGFF 0.5 (sharded) and 0.4 metadata read by ome-zarr, exact pixels, atomic and resumable."""

from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from tilefuse._outputs import partial_path
from tilefuse.downsample import block_mean
from tilefuse.errors import OutputExistsError, TilefuseError
from tilefuse.writers.ome_zarr import pyramid_plan, write_ome_zarr

# Every OME-Zarr image a test here leaves behind is validated (ome-zarr-models) and read back (ome-zarr-py, zarr).
pytestmark = pytest.mark.usefixtures("every_ngff_output_checked")



def _read_ngff(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    nodes = list(Reader(parse_url(str(path)))())
    assert nodes, f"ome-zarr found no image in {path}"
    node = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in node.specs)
    return node


def _scales(node):
    return [
        next(t for t in ts if t["type"] == "scale")["scale"]
        for ts in node.metadata["coordinateTransformations"]
    ]


def _translations(node):
    return [
        next(t for t in ts if t["type"] == "translation")["translation"]
        for ts in node.metadata["coordinateTransformations"]
    ]


def _reference_mean(a: np.ndarray, factors) -> np.ndarray:
    """Block mean with partial edge blocks, the slow obvious way."""
    out_shape = tuple(-(-n // f) for n, f in zip(a.shape, factors))
    out = np.empty(out_shape)
    for idx in np.ndindex(*out_shape):
        sl = tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, factors))
        out[idx] = a[sl].mean()
    return out


def test_2d_metadata_levels_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60000, (300, 260), dtype=np.uint16)
    path = write_ome_zarr(
        image, tmp_path / "img.ome.zarr", voxel_size=(0.5, 0.25), origin=(10.0, -4.0), chunks=64, ngff="0.4"
    )
    assert path == tmp_path / "img.ome.zarr" and path.is_dir()
    assert not partial_path(path).exists()
    assert not (path / ".tilefuse").exists()

    node = _read_ngff(path)
    # 300x260 in 64-chunks: 150x130, 75x65 (2x2 chunks), 38x33 (1 chunk) -> 4 levels
    assert len(node.data) == 4
    assert [lvl.shape for lvl in node.data] == [(300, 260), (150, 130), (75, 65), (38, 33)]
    assert [a["name"] for a in node.metadata["axes"]] == ["y", "x"]
    assert node.metadata["axes"][0]["unit"] == "micrometer"
    np.testing.assert_allclose(_scales(node), [[0.5, 0.25], [1, 0.5], [2, 1], [4, 2]])
    # half-voxel shift: level-k voxel centre = centre of the averaged level-0 voxels
    np.testing.assert_allclose(
        _translations(node),
        [[10, -4], [10.25, -3.875], [10.75, -3.625], [11.75, -3.125]],
    )

    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 2
    level0 = group["0"]
    assert level0.chunks == (64, 64) and level0.dtype == np.uint16
    np.testing.assert_array_equal(level0[...], image)
    expected1 = np.rint(_reference_mean(image.astype(float), (2, 2)))
    np.testing.assert_array_equal(group["1"][...], expected1)
    expected2 = np.rint(_reference_mean(expected1, (2, 2)))
    np.testing.assert_array_equal(group["2"][...], expected2)
    np.testing.assert_array_equal(np.asarray(node.data[3]), group["3"][...])


def test_3d_anisotropic_pyramid_keeps_z(tmp_path):
    image = da.from_array(
        np.random.default_rng(1).random((40, 128, 96), dtype=np.float32), chunks=(8, 32, 32)
    )
    path = write_ome_zarr(image, tmp_path / "vol.ome.zarr", voxel_size=(3.0, 1.0, 1.0), unit="um")
    node = _read_ngff(path)
    # z (3 um) is kept until xy (1 um) catches up: factors (1,2,2) (1,4,4) (2,8,8) ...
    scales = _scales(node)
    assert scales[:4] == [[3, 1, 1], [3, 2, 2], [3, 4, 4], [6, 8, 8]]
    assert node.metadata["axes"][0]["unit"] == "micrometer"
    group = zarr.open_group(str(path), mode="r")
    assert group["0"].chunks == (8, 32, 32)
    np.testing.assert_array_equal(group["0"][...], image.compute())
    np.testing.assert_allclose(
        group["3"][...],
        _reference_mean(group["2"][...].astype(float), (2, 2, 2)),
        rtol=1e-6,
    )
    last = group[str(len(node.data) - 1)]
    assert all(n <= c for n, c in zip(last.shape, (8, 32, 32)))  # smallest fits one chunk


def test_tczyx_with_channel_names(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (2, 3, 6, 40, 30), dtype=np.uint8)
    path = write_ome_zarr(
        da.from_array(image, chunks=(1, 1, 3, 16, 16)),
        tmp_path / "t.ome.zarr",
        voxel_size=(2.0, 0.5, 0.5),
        channel_names=["dapi", "gfp", "rfp"],
        n_levels=2,
    )
    node = _read_ngff(path)
    assert len(node.data) == 2
    assert [a["name"] for a in node.metadata["axes"]] == list("tczyx")
    assert [a["type"] for a in node.metadata["axes"]] == ["time", "channel", "space", "space", "space"]
    assert _scales(node) == [[1, 1, 2, 0.5, 0.5], [1, 1, 2, 1, 1]]
    assert node.metadata["channel_names"] == ["dapi", "gfp", "rfp"]
    assert node.metadata["name"] == "t"
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(group["0"][...], image)
    assert group["1"].shape == (2, 3, 6, 20, 15)
    window = group.attrs["ome"]["omero"]["channels"][1]["window"]
    assert window["start"] == group["1"][:, 1].min() and window["end"] == group["1"][:, 1].max()


def test_block_mean_partial_edges():
    a = np.array([1, 2, 3, 4, 5], dtype=np.uint16)
    np.testing.assert_array_equal(block_mean(a, (2,)), [2, 4, 5])  # 1.5 and 3.5 round to even
    b = np.arange(35, dtype=np.float64).reshape(5, 7)
    np.testing.assert_allclose(block_mean(b, (2, 3)), _reference_mean(b, (2, 3)))
    c = np.array([[250, 255], [255, 255]], dtype=np.uint8)
    assert block_mean(c, (2, 2)).dtype == np.uint8


def test_pyramid_plan_rules():
    plan = pyramid_plan((100, 1000, 1000), "zyx", (3, 1, 1), (16, 128, 128))
    assert [lv.factor for lv in plan] == [
        (1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8), (4, 16, 16), (8, 32, 32)
    ]
    assert plan[-1].shape == (13, 32, 32)
    iso = pyramid_plan((64, 64, 64), "zyx", (1, 1, 1), (16, 16, 16))
    assert [lv.step for lv in iso[1:]] == [(2, 2, 2), (2, 2, 2)]
    assert len(pyramid_plan((512, 512), "yx", (1, 1), (64, 64), n_levels=2)) == 2
    # channels are never reduced
    assert pyramid_plan((3, 64, 64), "cyx", (1, 1), (1, 32, 32))[1].shape == (3, 32, 32)


class _FlakyBlocks:
    """Block generator that counts calls and fails after ``fail_after`` calls."""

    def __init__(self, data: np.ndarray, fail_after: int | None):
        self.data = data
        self.fail_after = fail_after
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, block_info=None):
        with self.lock:
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise RuntimeError("simulated crash")
        loc = block_info[None]["array-location"]
        return self.data[tuple(slice(a, b) for a, b in loc)]

    def array(self, chunks):
        chunks = da.core.normalize_chunks(chunks, self.data.shape)
        meta = np.empty((0,) * self.data.ndim, self.data.dtype)  # no meta-inference calls
        return da.map_blocks(self, dtype=self.data.dtype, chunks=chunks, meta=meta)


def test_resume_after_interruption(tmp_path):
    data = np.random.default_rng(3).integers(0, 4000, (64, 96), dtype=np.uint16)
    chunks = ((16,) * 4, (32,) * 3)  # 12 blocks
    path = tmp_path / "r.ome.zarr"
    first = _FlakyBlocks(data, fail_after=5)
    # Two block generators dask cannot tell apart: say they produce the same pixels.
    same = {"data": "the same 64x96 array"}
    with dask.config.set(scheduler="synchronous"):
        with pytest.raises(RuntimeError, match="simulated crash"):
            write_ome_zarr(first.array(chunks), path, voxel_size=1.0, chunks=(16, 32), fingerprint=same, ngff="0.4")
    assert not path.exists()
    partial = partial_path(path)
    done = len(list((partial / ".tilefuse" / "level0").iterdir()))
    assert 1 <= done <= 5  # 5 blocks computed; their stores normally ran right after

    second = _FlakyBlocks(data, fail_after=None)
    write_ome_zarr(second.array(chunks), path, voxel_size=1.0, chunks=(16, 32), fingerprint=same, ngff="0.4")
    assert second.calls == 12 - done
    assert not partial.exists()
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(group["0"][...], data)
    level1 = np.rint(_reference_mean(data.astype(float), (2, 2)))
    np.testing.assert_array_equal(group["1"][...], level1)
    np.testing.assert_array_equal(group["2"][...], np.rint(_reference_mean(level1, (2, 2))))
    node = _read_ngff(path)
    assert len(node.data) == len(group) == 3  # 64x96 -> 32x48 -> 16x24 (one chunk)


def test_resume_trusts_only_marked_chunks(tmp_path):
    data = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    path = tmp_path / "m.ome.zarr"
    with dask.config.set(scheduler="synchronous"):
        with pytest.raises(RuntimeError):
            write_ome_zarr(_FlakyBlocks(data, 2).array((16, 16)), path, voxel_size=1.0, fingerprint={"d": 1},
                           ngff="0.4")
    partial = partial_path(path)
    marked = {m.name for m in (partial / ".tilefuse" / "level0").iterdir()}
    assert 1 <= len(marked) <= 2
    # a chunk killed mid-write: wrong bytes in the chunk file, but no marker
    i, j = next(b for b in np.ndindex(2, 2) if f"{b[0]}.{b[1]}" not in marked)
    g = zarr.open_group(str(partial), mode="r+")
    g["0"][16 * i : 16 * i + 16, 16 * j : 16 * j + 16] = 7
    second = _FlakyBlocks(data, None)
    write_ome_zarr(second.array((16, 16)), path, voxel_size=1.0, fingerprint={"d": 1}, ngff="0.4")
    assert second.calls == 4 - len(marked)
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][...], data)


def test_resume_with_other_image_starts_over(tmp_path, caplog):
    path = tmp_path / "s.ome.zarr"
    with dask.config.set(scheduler="synchronous"):
        with pytest.raises(RuntimeError):
            write_ome_zarr(
                _FlakyBlocks(np.ones((32, 32), np.uint16), 1).array((16, 16)), path, voxel_size=1
            )
    data = np.full((32, 48), 9, np.uint16)
    fresh = _FlakyBlocks(data, None)
    with caplog.at_level("WARNING", logger="tilefuse"):
        write_ome_zarr(fresh.array((16, 16)), path, voxel_size=1)
    assert "starting over" in caplog.text and "output layout differs" in caplog.text
    assert fresh.calls == 6
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][...], data)


def test_no_resume_recomputes_everything(tmp_path):
    data = np.ones((32, 32), np.uint16)
    path = tmp_path / "n.ome.zarr"
    with dask.config.set(scheduler="synchronous"):
        with pytest.raises(RuntimeError):
            write_ome_zarr(_FlakyBlocks(data, 2).array((16, 16)), path, voxel_size=1)
    again = _FlakyBlocks(data, None)
    write_ome_zarr(again.array((16, 16)), path, voxel_size=1, resume=False)
    assert again.calls == 4


def test_overwrite_and_foreign_partial(tmp_path):
    path = tmp_path / "o.ome.zarr"
    write_ome_zarr(np.zeros((8, 8), np.uint8), path, voxel_size=1)
    with pytest.raises(OutputExistsError, match="o.ome.zarr"):
        write_ome_zarr(np.ones((8, 8), np.uint8), path, voxel_size=1)
    write_ome_zarr(np.ones((8, 8), np.uint8), path, voxel_size=1, overwrite=True)
    assert zarr.open_group(str(path), mode="r")["0"][0, 0] == 1
    assert not (tmp_path / "o.ome.zarr.replaced").exists()

    other = tmp_path / "f.ome.zarr"
    partial_path(other).mkdir()
    (partial_path(other) / "something").write_text("not ours")
    with pytest.raises(OutputExistsError, match="not written by tilefuse"):
        write_ome_zarr(np.ones((8, 8), np.uint8), other, voxel_size=1)


def test_irregular_dask_chunks_are_rechunked(tmp_path):
    data = np.random.default_rng(4).random((50, 70)).astype(np.float32)
    image = da.from_array(data, chunks=((10, 30, 10), (35, 35)))
    path = write_ome_zarr(image, tmp_path / "c.ome.zarr", voxel_size=(1, 1), chunks=(32, 32))
    group = zarr.open_group(str(path), mode="r")
    assert group["0"].chunks == (32, 32)
    np.testing.assert_array_equal(group["0"][...], data)


def test_bad_arguments(tmp_path):
    from tilefuse.errors import ImageDataError

    with pytest.raises(ImageDataError, match="axes"):
        write_ome_zarr(np.zeros((4, 4, 4)), tmp_path / "a.zarr", voxel_size=1, axes="xyz")
    with pytest.raises(ImageDataError, match="voxel_size"):
        write_ome_zarr(np.zeros((4, 4, 4)), tmp_path / "a.zarr", voxel_size=(1, 1))
    with pytest.raises(ImageDataError, match="channel names"):
        write_ome_zarr(
            np.zeros((2, 4, 4)), tmp_path / "a.zarr", voxel_size=1, axes="cyx",
            channel_names=["one"],
        )
    assert not (tmp_path / "a.zarr").exists()


def test_progress_bar(tmp_path, capsys):
    write_ome_zarr(np.zeros((64, 64), np.uint16), tmp_path / "p.zarr", voxel_size=1,
                   chunks=16, progress=True)
    err = capsys.readouterr().err
    assert "p.zarr" in err and "chunk" in err


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_crash_in_pyramid_level_keeps_level0(tmp_path, monkeypatch, ngff):
    import tilefuse.writers.ome_zarr as oz

    data = np.random.default_rng(5).integers(0, 100, (64, 64), dtype=np.uint16)
    path = tmp_path / "p.ome.zarr"

    def broken(block, factors):
        raise RuntimeError("crash while downsampling")

    monkeypatch.setattr(oz, "block_mean", broken)  # the levels read back (0.5: without the streamed pyramid)
    monkeypatch.setattr(oz, "_streamed_pyramid", lambda *args: None)
    first = _FlakyBlocks(data, None)
    with pytest.raises(RuntimeError, match="downsampling"):
        write_ome_zarr(first.array((16, 16)), path, voxel_size=1, fingerprint={"d": 1}, ngff=ngff)
    assert first.calls == 16 and not path.exists()
    monkeypatch.undo()
    second = _FlakyBlocks(data, None)
    write_ome_zarr(second.array((16, 16)), path, voxel_size=1, fingerprint={"d": 1}, ngff=ngff)
    assert second.calls == 0  # level 0 was complete: the input is not touched again
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(group["0"][...], data)
    np.testing.assert_array_equal(group["1"][...], np.rint(_reference_mean(data.astype(float), (2, 2))))


def test_empty_chunks_are_left_out_and_stale_ones_removed(tmp_path):
    """All-zero chunks are not stored (zarr reads the fill value); a stale chunk file left by an
    interrupted run is removed when its recomputed block turns out empty."""
    data = np.zeros((64, 64), dtype=np.uint16)
    data[:32, :32] = np.arange(32 * 32).reshape(32, 32)
    path = tmp_path / "e.ome.zarr"
    write_ome_zarr(da.from_array(data, chunks=32), path, voxel_size=1.0, chunks=(32, 32), ngff="0.4")
    level0 = path / "0"
    assert (level0 / "0" / "0").is_file()  # the chunk with data
    assert not (level0 / "1").exists() and not (level0 / "0" / "1").exists()  # empty ones absent
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][...], data)

    from tilefuse.writers.ome_zarr import _store_block

    arr = zarr.open_group(str(path), mode="r+")["0"]
    arr[32:, 32:] = 9  # a stale chunk, as an interrupted run might leave
    assert (level0 / "1" / "1").is_file()
    _store_block(np.zeros((32, 32), np.uint16), arr.with_config({"write_empty_chunks": True}),
                 (slice(32, 64), slice(32, 64)), str(tmp_path / "marker"), str(level0 / "1" / "1"))
    assert not (level0 / "1" / "1").exists() and (tmp_path / "marker").read_text() == "0"
    np.testing.assert_array_equal(arr[32:, 32:], 0)


# -- NGFF 0.5: Zarr v3 with shards -----------------------------------------------------------
def _shard_files(level_dir):
    return sorted(p for p in (level_dir / "c").rglob("*") if p.is_file())


def test_ngff05_is_the_default_valid_sharded_and_read_by_every_reader(tmp_path):
    Image = pytest.importorskip("ome_zarr_models.v05.image", reason="ome-zarr-models needs Python >= 3.11").Image

    rng = np.random.default_rng(6)
    image = rng.integers(0, 4000, (2, 20, 150, 130), dtype=np.uint16)
    image[:, :, :32, :32] = 0  # an all-zero chunk: left out of its shard
    path = write_ome_zarr(da.from_array(image, chunks=(1, 8, 32, 32)), tmp_path / "s.ome.zarr",
                          voxel_size=(2.0, 0.5, 0.5), origin=(1.0, 2.0, 3.0), chunks=(1, 8, 32, 32),
                          shards=(1, 16, 64, 64), channel_names=["a", "b"])
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    model = Image.from_zarr(group)  # validates the metadata and every level array against NGFF 0.5
    assert model.attributes.ome.version == "0.5"
    ome = group.attrs["ome"]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["a", "b"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == list("czyx")

    level0 = group["0"]
    assert level0.chunks == (1, 8, 32, 32) and level0.shards == (1, 16, 64, 64)
    assert list(level0.metadata.dimension_names) == list("czyx")
    np.testing.assert_array_equal(level0[...], image)
    # one file per shard: 2 channels x 2 x 3 x 3 shards at level 0 (not one per chunk: 2 x 3 x 5 x 5)
    assert len(_shard_files(path / "0")) == 2 * 2 * 3 * 3
    assert not list(path.rglob("*.partial")) and not (path / ".tilefuse").exists()
    expected1 = np.rint(_reference_mean(image[1].astype(float), (1, 2, 2)))
    np.testing.assert_array_equal(group["1"][1], expected1)

    node = _read_ngff(path)  # ome-zarr-py
    assert [lvl.shape for lvl in node.data] == [group[str(i)].shape for i in range(len(group))]
    np.testing.assert_allclose(_scales(node)[1], [1, 2, 1, 1])
    np.testing.assert_allclose(_translations(node)[1], [0, 1, 2.25, 3.25])
    np.testing.assert_array_equal(np.asarray(node.data[0]), image)


def test_ngff04_on_request_is_zarr_v2_valid_for_its_version(tmp_path):
    Image = pytest.importorskip("ome_zarr_models.v04.image", reason="ome-zarr-models needs Python >= 3.11").Image

    image = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    path = write_ome_zarr(image, tmp_path / "v4.ome.zarr", voxel_size=1.0, chunks=16, ngff="0.4")
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 2 and group.attrs["multiscales"][0]["version"] == "0.4"
    Image.from_zarr(group)
    np.testing.assert_array_equal(group["0"][...], image)
    with pytest.raises(Exception, match="shards"):
        write_ome_zarr(image, tmp_path / "v4b.ome.zarr", voxel_size=1.0, chunks=16, ngff="0.4", shards=32)


def test_default_shards_hold_about_a_gib_of_whole_chunks():
    from tilefuse.writers.ome_zarr import SHARD_BYTES, shard_shape

    shard = shard_shape((1, 1, 4000, 20000, 20000), "tczyx", (1, 1, 128, 256, 256), 2)
    assert shard == (1, 1, 512, 1024, 1024)  # grown along the axis it spans least: cube-like
    assert np.prod(shard) * 2 == SHARD_BYTES
    assert shard_shape((300, 260), "yx", (64, 64), 2) == (320, 320)  # small image: one shard covers it
    assert shard_shape((50, 9000, 9000), "zyx", (64, 256, 256), 4) == (64, 2048, 2048)


def _interrupt_after_commits(monkeypatch, n, write):
    """Run ``write`` and 'kill' it when the ``n+1``-th shard is about to be committed."""
    import tilefuse.writers.ome_zarr as oz

    original, state = oz._commit, {"n": 0}
    lock = threading.Lock()

    def killed(*args):
        with lock:
            state["n"] += 1
            if state["n"] > n:
                raise RuntimeError("killed")
        return original(*args)

    monkeypatch.setattr(oz, "_commit", killed)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="killed"):
        write()
    monkeypatch.undo()


def _count_appends(monkeypatch):
    import tilefuse.writers.ome_zarr as oz

    calls, original = [], oz._append_block
    monkeypatch.setattr(oz, "_append_block", lambda block, tmp, *a: (calls.append(tmp), original(block, tmp, *a))[1])
    return calls


def test_ngff05_resumes_per_shard_and_redoes_the_killed_one(tmp_path, monkeypatch, caplog):
    data = np.random.default_rng(7).integers(1, 4000, (64, 96), dtype=np.uint16)
    path = tmp_path / "r.ome.zarr"
    args = dict(voxel_size=1.0, chunks=(16, 16), shards=(32, 32), fingerprint={"d": 1}, n_levels=1)
    # 2 x 3 shards of 2 x 2 chunks; killed as the third shard is committed, its chunks all appended
    _interrupt_after_commits(monkeypatch, 2, lambda: write_ome_zarr(da.from_array(data, chunks=16), path, **args))
    partial = partial_path(path)
    assert len(_shard_files(partial / "0")) == 2 + 1  # two shards, and the killed one's .partial
    assert len(list((partial / "0").rglob("*.partial"))) == 1
    assert not path.exists()

    appends = _count_appends(monkeypatch)
    with caplog.at_level("INFO", logger="tilefuse"):
        write_ome_zarr(da.from_array(data, chunks=16), path, **args)
    assert "2 of 6 shards were complete, 4 written" in caplog.text, caplog.text
    assert len(appends) == 4 * 4  # the 4 other shards, 4 chunks each; the killed shard started afresh
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][...], data)
    assert not list(path.rglob("*.partial"))


@pytest.mark.parametrize("damage", ["cut short", "index flipped", "emptied"])
def test_ngff05_resume_rewrites_shards_damaged_after_commit(tmp_path, monkeypatch, caplog, damage):
    """A machine crash (or a copy) can leave a shard under its key that is not whole: never trusted."""
    data = np.random.default_rng(8).integers(1, 4000, (64, 64), dtype=np.uint16)
    path = tmp_path / "d.ome.zarr"
    args = dict(voxel_size=1.0, chunks=(16, 16), shards=(32, 32), fingerprint={"d": 2}, n_levels=1)
    _interrupt_after_commits(monkeypatch, 3, lambda: write_ome_zarr(data, path, **args))
    shards = [p for p in _shard_files(partial_path(path) / "0") if p.suffix != ".partial"]
    assert len(shards) == 3
    raw = shards[1].read_bytes()
    if damage == "cut short":
        shards[1].write_bytes(raw[: len(raw) // 2])
    elif damage == "index flipped":
        shards[1].write_bytes(raw[:-10] + bytes([raw[-10] ^ 1]) + raw[-9:])
    else:
        shards[1].write_bytes(b"")
    appends = _count_appends(monkeypatch)
    with caplog.at_level("INFO", logger="tilefuse"):
        write_ome_zarr(data, path, **args)
    assert "2 of 4 shards were complete, 2 written" in caplog.text, caplog.text
    assert len(appends) == 2 * 4
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][...], data)


def test_shard_writer_matches_zarr_byte_for_byte_semantics(tmp_path):
    """Empty chunks are left out (index entry 2**64-1) and edge chunks padded, as zarr reads them."""
    from tilefuse.writers._shards import EMPTY, index_nbytes, shard_is_complete

    data = np.zeros((40, 40), np.float32)
    data[20:, 20:] = np.random.default_rng(9).random((20, 20), dtype=np.float32)
    path = write_ome_zarr(data, tmp_path / "e.ome.zarr", voxel_size=1.0, chunks=(16, 16), n_levels=1)
    files = _shard_files(path / "0")
    assert len(files) == 1 and shard_is_complete(files[0], 9)
    index = np.frombuffer(files[0].read_bytes()[-index_nbytes(9):-4], "<u8").reshape(9, 2)
    assert (index[0] == EMPTY).all() and (index[1] == EMPTY).all()  # the zero chunks
    assert (index[8] != EMPTY).all()  # the edge chunk, 8x8 of data padded to 16x16
    np.testing.assert_array_equal(zarr.open_array(str(path / "0"), mode="r")[...], data)
    with pytest.raises(TilefuseError, match="Blosc or None"):
        import numcodecs

        write_ome_zarr(data, tmp_path / "z.ome.zarr", voxel_size=1.0, compressor=numcodecs.Zstd())


@pytest.mark.parametrize(("shape", "dtype", "voxel"), [((37, 101, 90), np.uint16, (2.0, 1.0, 1.0)),
                                                      ((20, 50, 77), np.float32, (1.0, 1.0, 1.0))])
def test_streamed_pyramid_equals_reading_the_levels_back(tmp_path, monkeypatch, shape, dtype, voxel):
    """Levels 1.. from level-0 chunks in memory: the same pixels and shards as reading level 0 back."""
    import tilefuse.writers.ome_zarr as oz

    rng = np.random.default_rng(11)
    data = (rng.random(shape) * 3000).astype(dtype)
    data[:, :40, :40] = 0  # chunks of zeros: left out of the shards of every level
    args = dict(voxel_size=voxel, chunks=(8, 16, 16), shards=(16, 32, 32), fingerprint={"d": 3})
    read_back = oz._downsample
    monkeypatch.setattr(oz, "_downsample", lambda *a: pytest.fail("a level was read back"))
    streamed = write_ome_zarr(da.from_array(data, chunks=(8, 16, 16)), tmp_path / "s.ome.zarr", **args)
    monkeypatch.setattr(oz, "_downsample", read_back)
    monkeypatch.setattr(oz, "_streamed_pyramid", lambda *a: None)
    plain = write_ome_zarr(da.from_array(data, chunks=(8, 16, 16)), tmp_path / "r.ome.zarr", **args)
    a, b = zarr.open_group(str(streamed), mode="r"), zarr.open_group(str(plain), mode="r")
    levels = len(pyramid_plan(shape, "zyx", voxel, (8, 16, 16)))
    assert levels >= 4 and sorted(a.array_keys()) == sorted(b.array_keys()) == [str(i) for i in range(levels)]
    for level in range(levels):
        np.testing.assert_array_equal(a[str(level)][...], b[str(level)][...], err_msg=f"level {level}")
        assert [p.relative_to(streamed) for p in _shard_files(streamed / str(level))] == \
               [p.relative_to(plain) for p in _shard_files(plain / str(level))]
    expected1 = _reference_mean(data.astype(float), pyramid_plan(shape, "zyx", voxel, (8, 16, 16))[1].step)
    np.testing.assert_allclose(a["1"][...], expected1.astype(dtype) if dtype == np.float32 else np.rint(expected1),
                               rtol=1e-6)


def test_streamed_pyramid_after_a_crash_resumes_by_reading_back(tmp_path, monkeypatch, caplog):
    """Shards of level 0 kept from a killed run are not in memory: the levels are then read back."""
    import tilefuse.writers._pyramid as pyr

    data = np.random.default_rng(12).integers(1, 4000, (64, 96), dtype=np.uint16)
    path = tmp_path / "k.ome.zarr"
    args = dict(voxel_size=1.0, chunks=(16, 16), shards=(32, 32), fingerprint={"d": 4})
    calls, original = [0], pyr.block_mean

    def crashing(block, step):
        calls[0] += 1
        if calls[0] > 12:
            raise RuntimeError("killed while averaging")
        return original(block, step)

    monkeypatch.setattr(pyr, "block_mean", crashing)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="killed"):
        write_ome_zarr(da.from_array(data, chunks=16), path, **args)
    monkeypatch.undo()
    assert 0 < len([p for p in _shard_files(partial_path(path) / "0") if p.suffix != ".partial"]) < 6
    with caplog.at_level("INFO", logger="tilefuse"):
        write_ome_zarr(da.from_array(data, chunks=16), path, **args)
    assert "shards were complete" in caplog.text
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(group["0"][...], data)
    np.testing.assert_array_equal(group["1"][...], np.rint(_reference_mean(data.astype(float), (2, 2))))
    np.testing.assert_array_equal(group["2"][...], np.rint(_reference_mean(group["1"][...].astype(float), (2, 2))))
