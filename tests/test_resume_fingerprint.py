"""Resume keyed on what was fused: a partial output from other work is never mixed in.

Each case interrupts a fusion into ``out.ome.zarr`` part-way, then fuses something else into the
same name: another project of the same shape, other options, a moved tile, changed pixels.  The
output grid is pinned by a bounding box, so the layout (shape, chunks, pyramid) is the same every
time and only the fingerprint can tell the runs apart.  The result must equal a fresh fusion of
the second run, voxel for voxel.

These run on NGFF 0.4, whose per-chunk markers let a test stop a run after any chunk; the
manifest and its fingerprint are the same for 0.5, whose per-shard resume is tested in
tests/test_writer_ome_zarr.py (and one case here).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

import tilefuse
import tilefuse.writers.ome_zarr as oz
from tilefuse.cli import main
from tilefuse.demo import make_sample_project
from tilefuse.geometry import Box
from tilefuse.loaders.base import drop_cached_handles
from tilefuse.writers.ome_zarr import ResumeMismatchError

# Every OME-Zarr image a test here leaves behind is validated (ome-zarr-models) and read back (ome-zarr-py, zarr).
pytestmark = pytest.mark.usefixtures("every_ngff_output_checked")


BOX = Box.from_arrays([0, 0, 0], [0, 150, 150])
CHUNKS = (32, 32)


def _sample(path, seed):
    project = make_sample_project(path, ndim=2, grid=(2, 2), tile_shape=(96, 96), overlap=0.25, seed=seed,
                                  overwrite=True)
    # A sub-pixel registration, as after `tilefuse register`, so that interpolation matters.
    shift = np.eye(4)
    shift[1:3, 3] = 0.37, -0.21
    project.preconcatenate(project.views[0], shift, "Stitching Transform")
    project.save()
    return tilefuse.open_project(project.path)


def _plan(project, **options):
    return tilefuse.plan_fusion(project, bounding_box=BOX, chunks=CHUNKS, **options)


def _interrupt(monkeypatch, plan, out, after=6):
    """Write ``plan`` to ``out`` and 'kill' the run after ``after`` chunks are stored.

    Returns the number of chunks marked complete once the stores still in flight on other
    threads (the scheduler raises while they run) have finished.
    """
    original = oz._store_block
    state = {"started": 0, "in_flight": 0}
    lock = threading.Lock()

    def killed_after(*args, **kwargs):
        with lock:
            if state["started"] >= after:
                raise RuntimeError("killed")
            state["started"] += 1
            state["in_flight"] += 1
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                state["in_flight"] -= 1

    monkeypatch.setattr(oz, "_store_block", killed_after)
    with pytest.raises(RuntimeError, match="killed"):
        tilefuse.write_fused(plan, out, ngff="0.4")
    deadline = time.monotonic() + 10
    while state["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    monkeypatch.undo()
    markers = list((out.with_name(out.name + ".partial") / ".tilefuse" / "level0").iterdir())
    assert 1 <= len(markers) <= after
    return len(markers)


def _level0(out):
    return zarr.open_group(str(out), mode="r")["0"][...]


def _fresh(plan):
    return plan.to_dask().compute()[:, :, 0]  # (t, c, y, x) as the 2D OME-Zarr stores it


@pytest.fixture
def project_a(tmp_path):
    return _sample(tmp_path / "a", seed=1)


def _other_project(tmp_path, project_a):
    return _sample(tmp_path / "b", seed=2)  # same grid and shape, other pixels and stage errors


def _other_blending(tmp_path, project_a):
    return project_a, {"blending": "average"}


def _other_interpolation(tmp_path, project_a):
    return project_a, {"interpolation": "nearest"}


def _other_blend_range(tmp_path, project_a):
    return project_a, {"blend_range": 5.0}


def _moved_tile(tmp_path, project_a):
    moved = project_a.copy()
    shift = np.eye(4)
    shift[2, 3] = 3.0  # 3 px along y
    moved.preconcatenate(moved.views[1], shift, "moved by hand")
    moved.save(tmp_path / "a" / "moved.xml")
    return tilefuse.open_project(tmp_path / "a" / "moved.xml")


def _changed_pixels(tmp_path, project_a):
    import h5py

    view = project_a.views[2]
    drop_cached_handles()
    with h5py.File(project_a.loader.path, "r+") as f:
        cells = f[f"t{view.timepoint:05d}/s{view.setup:02d}/0/cells"]
        cells[...] = cells[...] // 2 + 7
    drop_cached_handles()
    return tilefuse.open_project(project_a.path)


CHANGES = {
    "other project": (_other_project, "other views or view transforms"),
    "blending average": (_other_blending, "blending 'cosine' -> 'average'"),
    "interpolation nearest": (_other_interpolation, "interpolation 'linear' -> 'nearest'"),
    "blend range 5": (_other_blend_range, "blend_range 40.0 -> 5.0"),
    "tile moved 3 px": (_moved_tile, "other views or view transforms"),
    "pixels changed": (_changed_pixels, "input image files that have changed since"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_resume_after_other_work_starts_over(tmp_path, project_a, monkeypatch, caplog, change):
    out = tmp_path / "out.ome.zarr"
    first = _fresh(_plan(project_a))
    _interrupt(monkeypatch, _plan(project_a), out)

    make, reason = CHANGES[change]
    second = make(tmp_path, project_a)
    project_b, options = second if isinstance(second, tuple) else (second, {})
    plan_b = _plan(project_b, **options)
    expected = _fresh(plan_b)
    assert expected.shape == first.shape  # same layout: only the fingerprint tells the runs apart
    assert np.mean(expected != first) > 0.005, "the change must alter the fused image for the test to mean anything"

    with caplog.at_level("INFO", logger="tilefuse"):
        tilefuse.write_fused(plan_b, out, ngff="0.4")
    assert "starting over" in caplog.text and reason in caplog.text, caplog.text
    assert "resuming" not in caplog.text
    np.testing.assert_array_equal(_level0(out), expected)


def test_resume_of_the_same_work_skips_finished_chunks(tmp_path, project_a, monkeypatch, caplog):
    out = tmp_path / "out.ome.zarr"
    done = _interrupt(monkeypatch, _plan(project_a), out)
    total_level0 = int(np.prod([-(-n // c) for n, c in zip((151, 151), CHUNKS)]))

    level0_stores = []
    original = oz._store_block

    def counting(block, target, region, marker, chunk):
        if "level0" in marker:
            level0_stores.append(marker)
        return original(block, target, region, marker, chunk)

    monkeypatch.setattr(oz, "_store_block", counting)
    reopened = tilefuse.open_project(project_a.path)  # as a new process would
    with caplog.at_level("INFO", logger="tilefuse"):
        tilefuse.write_fused(_plan(reopened), out, ngff="0.4")
    assert f": {done} of " in caplog.text and "chunks already written" in caplog.text, caplog.text
    assert len(level0_stores) == total_level0 - done
    np.testing.assert_array_equal(_level0(out), _fresh(_plan(project_a)))


def test_resume_required_refuses_other_work_and_keeps_it(tmp_path, project_a, monkeypatch):
    out = tmp_path / "out.ome.zarr"
    _interrupt(monkeypatch, _plan(project_a), out)
    partial = out.with_name(out.name + ".partial")
    before = sorted(p.name for p in (partial / ".tilefuse" / "level0").iterdir())
    with pytest.raises(ResumeMismatchError, match="blending 'cosine' -> 'max'"):
        tilefuse.write_fused(_plan(project_a, blending="max"), out, resume="require", ngff="0.4")
    assert sorted(p.name for p in (partial / ".tilefuse" / "level0").iterdir()) == before
    assert not out.exists()
    # the same work is accepted under "require"
    tilefuse.write_fused(_plan(project_a), out, resume="require", ngff="0.4")
    np.testing.assert_array_equal(_level0(out), _fresh(_plan(project_a)))


def test_cli_resume_messages(tmp_path, project_a, monkeypatch, capsys):
    out = tmp_path / "out.ome.zarr"
    _interrupt(monkeypatch, tilefuse.plan_fusion(project_a, chunks=CHUNKS), out)
    xml, chunks = str(project_a.path), "32,32"
    # --resume with other options: refused, exit 2, one paragraph naming the option; partial kept
    args = ["--chunks", chunks, "--ngff", "0.4", "-q"]
    assert main(["fuse", xml, str(out), "--blending", "max", "--resume", *args]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "blending 'cosine' -> 'max'" in err and "Traceback" not in err
    assert out.with_name(out.name + ".partial").exists() and not out.exists()
    # the default: starts over with a warning, and the result is a complete fresh fusion
    assert main(["fuse", xml, str(out), "--blending", "max", *args]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "starting over" in err
    fresh = tilefuse.plan_fusion(project_a, blending="max", chunks=CHUNKS).to_dask().compute()[:, :, 0]
    np.testing.assert_array_equal(_level0(out), fresh)


def test_write_ome_zarr_rejects_unknown_resume_mode(tmp_path):
    with pytest.raises(ValueError, match="resume must be"):
        oz.write_ome_zarr(np.zeros((4, 4), np.uint8), tmp_path / "x.ome.zarr", voxel_size=1, resume="maybe")


def test_resume_rewrites_chunks_lost_after_their_marker(tmp_path, project_a, monkeypatch, caplog):
    """A machine crash can lose chunk files whose markers were written: resume must not trust those."""
    out = tmp_path / "out.ome.zarr"
    _interrupt(monkeypatch, _plan(project_a), out, after=8)
    partial = out.with_name(out.name + ".partial")
    markers = sorted((partial / ".tilefuse" / "level0").iterdir())
    stored = [m for m in markers if int(m.read_text()) > 0]
    assert len(stored) >= 3
    chunk = lambda m: partial.joinpath("0", *m.name.split("."))  # noqa: E731
    chunk(stored[0]).unlink()                          # lost
    chunk(stored[1]).write_bytes(b"")                  # cut to nothing
    data = chunk(stored[2]).read_bytes()
    chunk(stored[2]).write_bytes(data[: len(data) // 2])  # cut short
    with caplog.at_level("INFO", logger="tilefuse"):
        tilefuse.write_fused(_plan(project_a), out, ngff="0.4")
    assert "3 more found damaged, written again" in caplog.text, caplog.text
    np.testing.assert_array_equal(_level0(out), _fresh(_plan(project_a)))
