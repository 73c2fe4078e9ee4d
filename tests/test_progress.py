"""One progress bar per stage, silence without progress, and logging instead of prints and warnings."""

from __future__ import annotations

import logging
import pickle
import re
import warnings

import dask
import dask.array as da
import numpy as np
import pytest

import tilefuse
from tilefuse._compute import compute
from tilefuse._progress import Progress, progress_bar
from tilefuse.cli import main
from tilefuse.demo import make_sample_project
from tilefuse.intensity import match_intensities

#: One state of a tqdm bar as drawn on stderr: "desc:  50%|#####     | 6/12 [00:00<...]" or "desc: 3task [...".
_STATE = re.compile(r"^(?P<desc>.+?): +(?:\d+%\|[^|]*\| *)?(?P<n>\d+)(?:/(?P<total>\d+))?[a-z]* \[")


def bars(err: str) -> dict[str, tuple[int, int | None]]:
    """Each bar drawn in ``err`` (description -> its last ``(n, total)``)."""
    out = {}
    for piece in re.split(r"[\r\n]", err):
        m = _STATE.match(piece.strip())
        if m:
            out[m["desc"]] = (int(m["n"]), None if m["total"] is None else int(m["total"]))
    return out


def assert_one_finished_bar(err: str, description: str) -> None:
    drawn = bars(err)
    assert list(drawn) == [description], err
    n, total = drawn[description]
    assert total is not None and n == total > 0, drawn


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A small registered 2D project: 2x3 tiles of 96x96 with wide overlaps and a 2-level pyramid."""
    base = tmp_path_factory.mktemp("progress")
    sample = make_sample_project(base / "s", ndim=2, grid=(2, 3), tile_shape=(96, 96), overlap=0.25, seed=3,
                                 factors=[(1, 1, 1), (1, 2, 2)])
    registered = tilefuse.register(sample).apply(sample)
    registered.save(base / "registered.xml")
    return tilefuse.open_project(base / "registered.xml")


# -- one bar per stage ---------------------------------------------------------------------------
@pytest.mark.parametrize("format, name", [("n5", "dataset.n5"), ("zarr", "dataset.ome.zarr"),
                                          ("hdf5", "dataset.h5"), ("tiff", "dataset_tiff")])
def test_writing_a_project_draws_one_bar_over_all_views_and_levels(tmp_path, capsys, format, name):
    # 4 views x 3 levels, several blocks per level: the N5 and Zarr writers used to draw a bar per view and level.
    images = [da.from_array(np.full((8, 48, 40), i, np.uint16), chunks=(8, 24, 40)) for i in range(4)]
    positions = [(0, 0, 0), (0, 0, 36), (0, 44, 0), (0, 44, 36)]
    tilefuse.write_project(tmp_path / "dataset.xml", images, positions, format=format, progress=True,
                           factors=[(1, 1, 1), (1, 2, 2), (2, 4, 4)], chunks=(4, 16, 16))
    err = capsys.readouterr().err
    assert_one_finished_bar(err, f"writing {name}")
    if format != "tiff":  # every chunk (Zarr v3: every shard) of every view and level is counted once
        per_view = (2 * 3 * 3) + (2 * 2 * 2) + (1 * 1 * 1)  # levels (8, 48, 40), (8, 24, 20), (4, 12, 10)
        if format == "zarr":  # shards of 1 x 4 x 4 chunks, no larger than the level: 2 + 2 + 1
            per_view = (2 * 1 * 1) + (2 * 1 * 1) + (1 * 1 * 1)
        assert bars(err)[f"writing {name}"] == (4 * per_view, 4 * per_view)


def test_sample_command_draws_one_bar(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "s"), "--format", "n5", "--grid", "3,4", "--tile", "64,64"]) == 0
    err = capsys.readouterr().err
    assert_one_finished_bar(err, "writing dataset.n5")
    assert err.count("\n") == 1, err  # the bar's one line, nothing else


def test_registration_draws_one_bar_over_the_pairs(project, capsys):
    result = tilefuse.register(project, progress=True)
    err = capsys.readouterr().err
    assert_one_finished_bar(err, "registering pairs")
    assert bars(err)["registering pairs"] == (len(result.links), len(result.links))


def test_intensity_matching_draws_one_bar_over_the_overlaps(project, capsys):
    result = match_intensities(project, progress=True, min_samples=50)
    err = capsys.readouterr().err
    assert_one_finished_bar(err, "matching intensities")
    assert bars(err)["matching intensities"][1] >= len(result.pairs) > 0  # every overlap, used or not


@pytest.mark.parametrize("output, container, name", [
    ("f.ome.zarr", "hdf5", "f.ome.zarr"), ("f.tif", "hdf5", "f.tif"), ("f.xml", "hdf5", "f.h5"),
    ("f.xml", "n5", "f.n5"), ("f.xml", "zarr", "f.ome.zarr"),
])
def test_fusing_and_writing_draws_one_bar(project, tmp_path, capsys, output, container, name):
    plan = tilefuse.plan_fusion(project, chunks=(48, 64))
    tilefuse.write_fused(plan, tmp_path / output, container=container, progress=True)
    assert_one_finished_bar(capsys.readouterr().err, f"writing {name}")


# -- nothing on stderr without progress ------------------------------------------------------------
@pytest.mark.parametrize("stage", ["sample-hdf5", "sample-n5", "sample-zarr", "sample-tiff", "register", "intensity",
                                   "fuse-ome.zarr", "fuse-tif", "fuse-hdf5", "fuse-n5", "fuse-zarr"])
def test_without_progress_nothing_is_written_to_stderr(project, tmp_path, capfd, stage):
    kind, _, what = stage.partition("-")
    capfd.readouterr()
    if kind == "sample":
        make_sample_project(tmp_path, ndim=2, grid=(1, 2), tile_shape=(64, 64), format=what, progress=False)
    elif kind == "register":
        tilefuse.register(project, progress=False)
    elif kind == "intensity":
        match_intensities(project, progress=False)
    else:
        plan = tilefuse.plan_fusion(project, chunks=(48, 64))
        out = tmp_path / (f"f.{what}" if what in ("ome.zarr", "tif") else "f.xml")
        tilefuse.write_fused(plan, out, container=what if out.suffix == ".xml" else "hdf5", progress=False)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


# -- the one progress path -------------------------------------------------------------------------
def test_a_bar_opened_inside_another_stays_hidden(capsys):
    with progress_bar("outer", 2, unit="step", enabled=True) as outer:
        with progress_bar("inner", 5, unit="step", enabled=True) as inner:
            inner.update(5)
            assert not inner.enabled
        outer.update(2)
    with progress_bar("off", 1, unit="step", enabled=False) as off:
        off.update(1)
    err = capsys.readouterr().err
    assert bars(err) == {"outer": (2, 2)}


def test_a_bar_sent_to_a_worker_arrives_disabled():
    with progress_bar("here", 1, unit="step", enabled=True) as bar:
        assert bar.enabled
        copy = pickle.loads(pickle.dumps(bar))
        assert isinstance(copy, Progress) and not copy.enabled
        copy.update(1)  # does nothing, and does not fail
        bar.update(1)


def test_compute_progress_true_counts_tasks_locally(capsys):
    total = da.ones(12, chunks=3).sum()
    assert compute(total, progress=True, description="summing")[0] == 12
    n, count = bars(capsys.readouterr().err)["summing"]
    assert n == count and count >= 4  # at least the 4 chunks


def test_compute_advances_a_stage_bar_once_per_result(capsys):
    items = [dask.delayed(lambda i: i * i)(i) for i in range(5)]
    with progress_bar("squares", 6, unit="item", enabled=True) as bar:
        # 5 delayed results and one plain value: each counts once, whatever the number of tasks
        assert compute(*items, 7, progress=bar) == (0, 1, 4, 9, 16, 7)
    assert bars(capsys.readouterr().err) == {"squares": (6, 6)}


def test_on_a_cluster_the_bar_counts_arrived_results(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        items = [dask.delayed(lambda i: i + 1)(i) for i in range(4)]
        assert compute(*items, client=client, progress=True, description="on the cluster") == (1, 2, 3, 4)
        assert bars(capsys.readouterr().err)["on the cluster"] == (4, 4)
        # The N5 writer's blocks are written by the workers; the bar still ends complete.
        images = {(0, 0): da.ones((4, 32, 32), dtype=np.uint8, chunks=(4, 16, 16))}
        from tilefuse.writers.bdv_n5 import write_bdv_n5

        write_bdv_n5(tmp_path / "c.n5", images, factors=[(1, 1, 1), (1, 2, 2)], chunks=(4, 16, 16),
                     progress=True, client=client)
    assert bars(capsys.readouterr().err) == {"writing c.n5": (5, 5)}


# -- logging -------------------------------------------------------------------------------------
def test_registration_logs_each_pair_and_its_fate_at_debug(project, caplog):
    with caplog.at_level(logging.DEBUG, logger="tilefuse"):
        result = tilefuse.register(project)
    text = caplog.text
    assert re.search(r"overlapping pairs of 6 groups .* downsampling \(z y x\) \(1, 1, 1\) \(auto\)", text), text
    for link in result.links:
        assert re.search(rf"pair {re.escape(str(link.a))} - {re.escape(str(link.b))}: shift \(z y x\) "
                         rf"\[.*\] world units, correlation {link.correlation:.3f}", text), text
        assert f"link {link.a} - {link.b}: {link.status}; correlation {link.correlation:.3f}" in text
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name.startswith("tilefuse.registration"))


def test_fusion_logs_the_grid_the_levels_and_the_writer_at_debug(project, tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="tilefuse"):
        plan = tilefuse.plan_fusion(project, downsampling=2, chunks=(48, 64))
        tilefuse.write_fused(plan, tmp_path / "f.xml", container="n5")
    text = caplog.text
    assert f"grid (z y x) {plan.shape} voxels of [1.0, 2.0, 2.0] world units" in text, text
    assert "chunks (48, 64)" in text
    for view in project.views:  # downsampling 2 reads the 2x level of every view
        assert f"{view}: reads pyramid level 1 (factors z y x (1.0, 2.0, 2.0)" in text, text
    assert re.search(r"writing f\.n5: 1 views, \d+ levels .* blocks", text), text
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("tilefuse")]


def test_missing_views_are_one_logged_warning_not_a_python_warning(project, tmp_path, caplog, capsys):
    damaged = project.copy()
    gone = damaged.views[2]
    damaged.data.missing_views = {gone}
    damaged.save(tmp_path / "missing.xml")
    damaged = tilefuse.open_project(tmp_path / "missing.xml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Python warning would fail here
        with caplog.at_level(logging.WARNING, logger="tilefuse"):
            tilefuse.register(damaged)
            tilefuse.plan_fusion(damaged)
    records = [r for r in caplog.records if "missing views are skipped" in r.getMessage()]
    assert [(r.name, r.levelno) for r in records] == [("tilefuse.registration.pairwise", logging.WARNING),
                                                       ("tilefuse.fusion.api", logging.WARNING)]
    assert records[0].getMessage().endswith("<MissingViews>: 1 missing views are skipped")
    capsys.readouterr()
    # On the command line: one line, no Python source line or warning class.
    assert main(["fuse", str(tmp_path / "missing.xml"), str(tmp_path / "f.tif"), "-q"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [f"warning: {records[1].getMessage()}"], err
