"""Loaders never serve pixels of a file that is no longer there, and never block or read without end.

* Per-process caches (open handles, decoded blocks, the check of each view) are valid only for the
  files they were made from: an input replaced (renamed over, or rewritten in place) between two
  fusions in one process gives the new pixels or a clear error, never the old pixels.
* A FIFO or a device (``/dev/zero``) in place of an image file, block, chunk or metadata file, and a
  block larger than any block of its dataset can be, are refused at once with a message naming the
  file; a guard turns a hang into a failure.
* A view whose level 0 stores no block at all reads as zeros, with a WARNING naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

import tilefuse
from damage import write_project_zarr_v2
from tilefuse.errors import ImageDataError, TilefuseError

SHAPE = (8, 32, 40)  # z y x of each view
FACTORS = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
CHUNKS = (4, 16, 16)
CONTAINER = {"hdf5": "dataset.h5", "n5": "dataset.n5", "zarr": "dataset.ome.zarr", "tiff": "dataset_tiff"}
N5_BLOCK = "dataset.n5/setup0/timepoint0/s0/1/0/0"
ZARR_CHUNK = "dataset.ome.zarr/s0-t0.zarr/0/0/0/0/0/1"


def _write(root: Path, fmt: str, seed: int, shape=SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(300, 60000, shape, dtype=np.uint16) for _ in range(2)]
    write_project_zarr_v2(root / "dataset.xml", images, [(0, 0, 0), (0, 0, 30)], format=fmt,
                           factors=FACTORS if fmt != "tiff" else [(1, 1, 1)], chunks=CHUNKS)
    return images


def _read(xml: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Every view's level 0 (read twice through the decoded-block cache, as fusion of large views reads
    them, and once without), and the fusion."""
    project = tilefuse.open_project(xml)
    views = [project.image(v).compute(scheduler="synchronous") for v in project.views]
    for v, pixels in zip(project.views, views):
        for _ in range(2):
            np.testing.assert_array_equal(project.loader.read(v, 0, (slice(None),) * 3, cache=True), pixels)
    return views, tilefuse.fuse(project).compute(scheduler="synchronous")


def _replace_renamed(new: Path, old: Path) -> None:
    """A re-export: the new file or folder takes the old one's name (new inodes), as ``mv`` does."""
    staged = old.with_name(old.name + ".new")
    if new.is_dir():
        shutil.copytree(new, staged)
        gone = old.with_name(old.name + ".old")
        old.rename(gone)
        staged.rename(old)
        shutil.rmtree(gone)
    else:
        shutil.copyfile(new, staged)
        os.replace(staged, old)


def _replace_in_place(new: Path, old: Path) -> None:
    """Every file overwritten where it is (same inodes), as ``cp new/* old/`` does."""
    files = [p for p in new.rglob("*") if p.is_file()] if new.is_dir() else [new]
    for file in files:
        target = old / file.relative_to(new) if new.is_dir() else old
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)


# -- 1. stale caches ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["renamed", "in place"])
@pytest.mark.parametrize("fmt", sorted(CONTAINER))
def test_a_replaced_input_is_read_anew_in_the_same_process(tmp_path, fmt, how):
    _write(tmp_path / "a", fmt, seed=1)
    new_images = _write(tmp_path / "b", fmt, seed=2)
    _, fused_b = _read(tmp_path / "b" / "dataset.xml")
    views_a, fused_a = _read(tmp_path / "a" / "dataset.xml")  # fills handles, checks and blocks
    assert not np.array_equal(fused_a, fused_b)

    replace = _replace_renamed if how == "renamed" else _replace_in_place
    replace(tmp_path / "b" / CONTAINER[fmt], tmp_path / "a" / CONTAINER[fmt])
    views, fused = _read(tmp_path / "a" / "dataset.xml")
    for got, want in zip(views, new_images):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fused, fused_b)


def test_an_n5_block_rewritten_under_unchanged_attributes_is_decoded_again(tmp_path):
    from tilefuse.project.views import ViewId

    before = _write(tmp_path / "a", "n5", seed=1)[0]
    after = _write(tmp_path / "b", "n5", seed=2)[0]
    _read(tmp_path / "a" / "dataset.xml")
    # Block x 1, y 0, z 0 of view 0; its dataset's attributes.json files stay as they were.
    shutil.copyfile(tmp_path / "b" / N5_BLOCK, tmp_path / "a" / N5_BLOCK)
    project = tilefuse.open_project(tmp_path / "a" / "dataset.xml")
    got = project.loader.read(ViewId(0, 0), 0, (slice(None),) * 3, cache=True)
    np.testing.assert_array_equal(got[0:4, 0:16, 16:32], after[0:4, 0:16, 16:32])
    np.testing.assert_array_equal(got[4:], before[4:])


@pytest.mark.parametrize("fmt", ["hdf5", "n5", "zarr", "tiff"])
def test_a_replaced_input_of_another_shape_is_checked_again(tmp_path, fmt):
    _write(tmp_path / "a", fmt, seed=1)
    _write(tmp_path / "c", fmt, seed=3, shape=(8, 32, 44))
    _read(tmp_path / "a" / "dataset.xml")
    _replace_renamed(tmp_path / "c" / CONTAINER[fmt], tmp_path / "a" / CONTAINER[fmt])
    project = tilefuse.open_project(tmp_path / "a" / "dataset.xml")
    with pytest.raises(ImageDataError, match=r"<size>: the XML says 40 32 8 \(x y z\) but .* is 44 32 8"):
        project.image(project.views[0])


# -- 4. files that are not regular files -----------------------------------------------------------
class Hung(BaseException):
    """Raised by the guard; a BaseException, so that no `except Exception` in the code under test hides it."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fail instead of hanging (the reads run in this thread: the synchronous scheduler)."""
    def expire(signum, frame):
        raise Hung(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fifo(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def _huge(path: Path) -> None:
    with open(path, "r+b") as f:  # a sparse GiB: nothing is written, a reader would allocate it all
        f.truncate(2**30)


NOT_REGULAR = {
    "hdf5 file a FIFO": ("hdf5", "dataset.h5", _fifo, "is a FIFO (named pipe), not a regular file"),
    "hdf5 file -> /dev/zero": ("hdf5", "dataset.h5", _dev_zero, "is a character device"),
    "tiff file a FIFO": ("tiff", "dataset_tiff/t0_s0.tif", _fifo, "is a FIFO"),
    "tiff file -> /dev/zero": ("tiff", "dataset_tiff/t0_s0.tif", _dev_zero, "is a character device"),
    "n5 block a FIFO": ("n5", N5_BLOCK, _fifo, "is a FIFO"),
    "n5 block -> /dev/zero": ("n5", N5_BLOCK, _dev_zero, "is a character device"),
    "n5 block of a GiB": ("n5", N5_BLOCK, _huge, "more than it can hold"),
    "n5 setup attributes a FIFO": ("n5", "dataset.n5/setup0/attributes.json", _fifo, "is a FIFO"),
    "n5 level attributes a FIFO": ("n5", "dataset.n5/setup0/timepoint0/s0/attributes.json", _fifo, "is a FIFO"),
    "zarr chunk a FIFO": ("zarr", ZARR_CHUNK, _fifo, "is a FIFO"),
    "zarr chunk -> /dev/zero": ("zarr", ZARR_CHUNK, _dev_zero, "is a character device"),
    "zarr chunk of a GiB": ("zarr", ZARR_CHUNK, _huge, "more than it can hold"),
    "zarr .zarray a FIFO": ("zarr", "dataset.ome.zarr/s0-t0.zarr/0/.zarray", _fifo, "is a FIFO"),
    "zarr .zattrs a FIFO": ("zarr", "dataset.ome.zarr/s0-t0.zarr/.zattrs", _fifo, "is a FIFO"),
    "zarr .zgroup -> /dev/zero": ("zarr", "dataset.ome.zarr/s0-t0.zarr/.zgroup", _dev_zero, "is a character device"),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for fmt in CONTAINER:
        out[fmt] = tmp_path_factory.mktemp(f"trust-{fmt}")
        _write(out[fmt], fmt, seed=4)
    return out


@pytest.mark.parametrize("name", sorted(NOT_REGULAR))
def test_fifos_devices_and_oversized_blocks_are_refused_at_once(tmp_path, written, name):
    fmt, rel, make, says = NOT_REGULAR[name]
    root = tmp_path / "p"
    shutil.copytree(written[fmt], root)
    make(root / rel)
    try:
        with _deadline(10):
            project = tilefuse.open_project(root / "dataset.xml")
            with pytest.raises(TilefuseError) as info:
                project.image(project.views[0]).compute(scheduler="synchronous")
                tilefuse.fuse(project).compute(scheduler="synchronous")
    finally:
        if (root / rel).exists() and not (root / rel).is_symlink():
            _unblock(root / rel)
    message = str(info.value)
    assert str(root / rel) in message and says in message, message
    # Item 5 of the red team: not "level array missing", not an empty "()".
    assert "missing" not in message and "()" not in message, message


def _unblock(path: Path) -> None:
    """Release a reader stuck on a FIFO (when the guard fired), so the test process can exit."""
    import stat

    if stat.S_ISFIFO(os.stat(path).st_mode):
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("make, says", [(os.mkfifo, "is a FIFO (named pipe), not a regular file"),
                                        (lambda p: p.symlink_to("/dev/zero"), "is a character device")])
def test_info_on_a_fifo_or_device_says_not_a_regular_file(tmp_path, capsys, make, says):
    from tilefuse.cli import main

    xml = tmp_path / "dataset.xml"
    make(xml)
    with _deadline(10):
        rc = main(["info", str(xml)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{xml}: {says}" in err and "not found" not in err, err


# -- 2. a view without any stored block --------------------------------------------------------
def _no_blocks(fmt: str, root: Path) -> None:
    """Remove every stored block of view 0's level 0 (the metadata stay)."""
    if fmt == "hdf5":
        import h5py

        with h5py.File(root / "dataset.h5", "r+") as f:
            key = "t00000/s00/0/cells"
            old = f[key]
            shape, dtype, chunks = old.shape, old.dtype, old.chunks
            del f[key]
            f.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks, compression="gzip")
    elif fmt == "n5":
        level0 = root / "dataset.n5/setup0/timepoint0/s0"
        for child in level0.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
    else:
        shutil.rmtree(root / "dataset.ome.zarr/s0-t0.zarr/0/0")


@pytest.mark.parametrize("fmt", ["hdf5", "n5", "zarr"])
def test_a_view_without_stored_blocks_reads_as_zeros_with_a_warning(tmp_path, written, caplog, fmt):
    root = tmp_path / "p"
    shutil.copytree(written[fmt], root)
    _no_blocks(fmt, root)
    project = tilefuse.open_project(root / "dataset.xml")
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        project.image(project.views[1]).compute()
    assert not caplog.records  # a view with blocks: nothing to say
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        pixels = project.image(project.views[0]).compute()
        project.image(project.views[0]).compute()  # said once
    assert not pixels.any()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(root / CONTAINER[fmt]) in warnings[0] and "setup 0" in warnings[0], warnings
    assert "reads as zeros" in warnings[0], warnings


# -- 2. Zarr chunk keys ---------------------------------------------------------------------------
def _zarr_v3_view(root: Path, encoding: dict | None) -> tuple[Path, np.ndarray]:
    """One OME-Zarr v3 image (NGFF 0.5) written by zarr itself; ``encoding`` then replaces its chunk_key_encoding."""
    import json

    import zarr

    data = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    group = zarr.open_group(root / "c.zarr" / "s0-t0.zarr", mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": a} for a in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]}
    group.create_array("0", data=data, chunks=CHUNKS)
    if encoding is not None:
        meta = root / "c.zarr" / "s0-t0.zarr" / "0" / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["chunk_key_encoding"] = encoding
        meta.write_text(json.dumps(doc))
    return root / "c.zarr", data


def test_zarr_v3_chunks_under_other_keys_than_declared_are_refused(tmp_path):
    from tilefuse.loaders._zarr import OmeZarrLoader
    from tilefuse.loaders.validate import check_view
    from tilefuse.project.views import ViewId

    view = ViewId(0, 0)
    container, data = _zarr_v3_view(tmp_path / "ok", None)
    loader = OmeZarrLoader.for_path(container, [view], indices=None)
    check_view(loader, view)
    np.testing.assert_array_equal(loader.read(view, 0, (slice(None),) * 3), data)

    container, _ = _zarr_v3_view(tmp_path / "bad", {"name": "v2", "configuration": {"separator": "."}})
    loader = OmeZarrLoader.for_path(container, [view], indices=None)
    with pytest.raises(ImageDataError, match=r"s0-t0\.zarr/0: chunks are stored under keys like 'c/\d+/\d+/\d+' but "
                                             r"the metadata declare \"chunk_key_encoding\": \{\"name\": \"v2\""):
        check_view(loader, view)


def test_level_shape_range_is_floor_or_ceil_exactly():
    from tilefuse.loaders.validate import level_shape_range

    assert level_shape_range((1, 256, 255), (1, 2, 2)) == ((1, 1), (128, 128), (127, 128))
    # 11 / 1.1 is 9.999999999999998 in floating point: still exactly 10, not "9 or 10"
    assert level_shape_range((3, 11, 10), (4, 1.1, 3)) == ((1, 1), (10, 10), (3, 4))


def test_a_split_view_keeps_its_own_level_formula(tmp_path):
    """Split views' levels can be one voxel more than box / factor: they state their shape, not the generic rule."""
    from tilefuse.loaders._hdf5 import Hdf5Loader
    from tilefuse.loaders._split import SplitLoader
    from tilefuse.loaders.validate import check_view
    from tilefuse.project.views import ViewId

    images = _write(tmp_path, "hdf5", seed=5)
    view = ViewId(0, 0)
    # x 3..5 (3 voxels) at the level of factor 4: floor(3/4) .. floor(4.99/4) = 0 .. 1, 2 voxels; 3/4 rounds up to 1
    split = SplitLoader(Hdf5Loader.for_path(tmp_path / "dataset.h5"), {0: 0}, {0: ((0, 0, 3), (7, 31, 5))})
    data = check_view(split, view)
    assert data.shapes[2][2] == 2
    level2 = tilefuse.open_project(tmp_path / "dataset.xml").image(view, 2).compute()
    np.testing.assert_array_equal(split.read(view, 2, (slice(None),) * 3), level2[:, :, 0:2])
    assert images  # written
