"""Registration of whole projects against ground truth, link rejection, write-back, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse
from tilefuse import errors, open_project
from tilefuse.demo import make_sample_project, score_registration
from tilefuse.geometry import Box
from tilefuse.project import ViewId
from tilefuse.registration.api import STITCHING_TRANSFORM
from tilefuse.registration.pairs import overlapping_pairs


@pytest.fixture(scope="module")
def sample_2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2d")
    # tile 5 holds only background: its links must be rejected, and it must not drift
    project = make_sample_project(out, ndim=2, grid=(3, 4), tile_shape=(256, 256), overlap=0.15,
                                  max_offset=8.0, empty_tiles=(5,), seed=3, factors=[(1, 1, 1), (1, 2, 2)])
    return project, out / "truth.json"


def test_2d_positions_recovered(sample_2d):
    project, truth = sample_2d
    result = tilefuse.register(project)
    registered = result.apply(project)
    score = score_registration(registered, truth)
    before = score_registration(project, truth)
    assert before["mean"] > 3.0  # the stage positions really are off
    assert score["mean"] < before["mean"] / 3, (score, before)
    # tile 5 is empty: the others are scored on their own...
    errors_by_tile = _tile_errors(registered, truth)
    good = np.delete(errors_by_tile, 5)
    assert good.mean() < 0.15 and good.max() < 0.5, errors_by_tile
    empty_links = [link for link in result.links if 5 in (link.a[1], link.b[1])]
    assert empty_links and not any(link.accepted for link in empty_links)
    assert all(link.accepted for link in result.links if 5 not in (link.a[1], link.b[1]) and link.valid)
    # ...and the empty tile keeps its stage position relative to its neighbours (no drift)
    t = {key[1]: v for key, v in result.translations.items()}
    np.testing.assert_allclose(t[5], np.mean([t[1], t[4], t[6], t[9]], axis=0), atol=1e-6)


def _tile_errors(project, truth_path):
    import json

    truth = json.loads(open(truth_path).read())["tiles"]
    true = np.array([t["true_zyx"] for t in truth])[:, -2:]
    cur = np.array([project.model(project.select(tile=i)[0])[1:3, 3] for i in range(len(truth))])
    d = cur - true
    ok = [i for i in range(len(truth)) if i != 5]
    d -= d[ok].mean(axis=0)
    return np.linalg.norm(d, axis=1)


def test_write_back_and_reopen(sample_2d, tmp_path):
    project, _ = sample_2d
    result = tilefuse.register(project)
    out = tmp_path / "registered.xml"
    result.apply(project).save(out)
    again = open_project(out)
    chain = again.transforms(ViewId(0, 1))
    assert [vt.name for vt in chain] == [STITCHING_TRANSFORM, "Translation to Regular Grid", "calibration"]
    stored = again.data.stitching_results
    assert len(stored) == sum(link.valid for link in result.links)
    first = stored[0]
    assert first.overlap is not None and -1 <= first.correlation <= 1
    # pixels are still reachable from the new location, and the input XML is untouched
    assert again.image(ViewId(0, 0)).shape == project.image(ViewId(0, 0)).shape
    assert STITCHING_TRANSFORM not in project.path.read_text()
    # links can be re-read from the registered project only while their hash matches (stale here)
    assert tilefuse.links_from_project(again) == []


def test_separate_steps_equal_register(sample_2d):
    project, _ = sample_2d
    groups = tilefuse.make_groups(project)
    links = tilefuse.pairwise(project, groups)
    stepwise = tilefuse.solve(links, groups)
    direct = tilefuse.register(project)
    for key in groups.members:
        np.testing.assert_allclose(stepwise.translations[key], direct.translations[key], atol=1e-9)


def test_3d_anisotropic(tmp_path):
    project = make_sample_project(tmp_path, ndim=3, grid=(1, 2, 2), tile_shape=(24, 128, 128), overlap=0.2,
                                  max_offset=6.0, seed=5, factors=[(1, 1, 1), (1, 2, 2)])
    assert project.setups[0].voxel_size[0] > project.setups[0].voxel_size[1]
    result = tilefuse.register(project, downsampling=(1, 1, 1))
    score = score_registration(result.apply(project), tmp_path / "truth.json")
    assert score["mean"] < 0.3 and score["max"] < 0.6, score


def test_no_overlap_and_bad_downsampling(tmp_path):
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 1000, (1, 64, 64), dtype=np.uint16) for _ in range(2)]
    p = tilefuse.write_project(tmp_path / "far.xml", tiles, [(0, 0, 0), (0, 0, 500)], factors=[(1, 1, 1)])
    result = tilefuse.register(p)
    assert result.links == []  # no pair overlaps: nothing to register, positions kept
    assert all(np.allclose(t, 0) for t in result.translations.values())
    p = tilefuse.write_project(tmp_path / "near.xml", tiles, [(0, 0, 0), (0, 0, 50)], factors=[(1, 1, 1)])
    with pytest.raises(errors.RegistrationError, match="larger than"):
        tilefuse.register(p, downsampling=(1, 128, 128))


def test_view_without_pixels(tmp_path):
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 1000, (1, 64, 64), dtype=np.uint16) for _ in range(2)]
    p = tilefuse.write_project(tmp_path / "d.xml", tiles, [(0, 0, 0), (0, 0, 50)], factors=[(1, 1, 1)])
    import h5py

    with h5py.File(tmp_path / "d.h5", "a") as f:
        del f["t00000/s01"]
    p = open_project(tmp_path / "d.xml")
    with pytest.raises(errors.RegistrationError, match="setup 1.*no pixels"):
        tilefuse.register(p)


def test_overlapping_pairs_sweep_matches_brute_force():
    rng = np.random.default_rng(4)
    boxes = {}
    for i in range(200):
        lo = rng.uniform(0, 1000, 3)
        boxes[i] = Box.from_arrays(lo, lo + rng.uniform(10, 120, 3))
    fast = {(p.a, p.b) for p in overlapping_pairs(boxes)}
    brute = {(i, j) for i in boxes for j in boxes if i < j and not boxes[i].intersect(boxes[j]).is_empty}
    assert fast == brute


def test_channels_move_together_and_timepoints_separately(tmp_path):
    from tilefuse.sample_data import make_mosaic

    mosaic = make_mosaic((1, 3), (96, 96), 0.3, max_offset=5.0, seed=8)
    tiles = [mosaic.tile(i) for i in range(3)]
    images, chans, tps, tile_ids = [], [], [], []
    for t in (0, 1):
        for i, tile in enumerate(tiles):
            for c in (0, 1):
                images.append(tile if c == 0 else (tile // 2).astype(tile.dtype))
                chans.append(c)
                tps.append(t)
                tile_ids.append(i)
    positions = [mosaic.stage_positions[i] for i in tile_ids]
    project = tilefuse.write_project(tmp_path / "d.xml", images, np.asarray(positions), channels=chans,
                                     timepoints=tps, tiles=tile_ids, voxel_size=(1, 1), factors=[(1, 1, 1)])
    for kwargs in ({}, {"channel": 1}):
        result = tilefuse.register(project, **kwargs)
        assert len(result.groups.members) == 6  # 3 tiles x 2 timepoints, channels together
        assert all(link.a[0] == link.b[0] for link in result.links), "no link across timepoints"
        registered = result.apply(project)
        for i in range(3):
            models = [registered.model(v) for v in registered.select(tile=i)]
            assert len(models) == 4
            assert all(np.allclose(m, models[0]) for m in models), "channels and timepoints agree here"
        got = [registered.model(registered.select(tile=i, timepoint=0, channel=0)[0])[1:3, 3] for i in range(3)]
        d = np.asarray(got) - mosaic.true_positions
        d -= d.mean(axis=0)
        assert np.abs(d).max() < 0.3


def test_timepoints_registered_together_on_request(tmp_path):
    from tilefuse.sample_data import make_mosaic

    mosaic = make_mosaic((1, 2), (96, 96), 0.3, max_offset=5.0, seed=12)
    tiles = [mosaic.tile(i) for i in range(2)]
    project = tilefuse.write_project(tmp_path / "d.xml", tiles * 2, np.vstack([mosaic.stage_positions] * 2),
                                     tiles=[0, 1, 0, 1], timepoints=[0, 0, 5, 5], voxel_size=(1, 1),
                                     factors=[(1, 1, 1)])
    result = tilefuse.register(project, group_by=("tile", "angle"))
    assert len(result.groups.members) == 2 and len(result.links) == 1
    assert all(len(views) == 2 for views in result.groups.members.values())
    registered = result.apply(project)
    for tile in (0, 1):
        models = [registered.model(v) for v in registered.select(tile=tile)]
        np.testing.assert_allclose(models[0], models[1])


def test_solve_does_not_change_the_callers_links(sample_2d):
    project, _ = sample_2d
    groups = tilefuse.make_groups(project)
    links = tilefuse.pairwise(project, groups)
    before = [link.status for link in links]
    strict = tilefuse.solve(links, groups, preset="strict", min_correlation=0.99)
    assert [link.status for link in links] == before
    assert any(not link.accepted for link in strict.links)
    relaxed = tilefuse.solve(links, groups)
    assert sum(link.accepted for link in relaxed.links) > sum(link.accepted for link in strict.links)


def test_photo_mosaic_with_repetitive_content_and_an_empty_tile(tmp_path):
    """The benchmark's quick photo mosaic: a mirrored, repetitive photo sheet, vignetting, one
    background-only tile.  Two links here went wrong once (one 60 px off accepted at r = 0.31,
    one 1.7 px off); every tile with content must land within half a pixel."""
    import json

    from tilefuse.demo import tile_positions

    project = make_sample_project(tmp_path, ndim=2, grid=(3, 4), tile_shape=(512, 512), texture="photo",
                                  empty_tiles=[6], overlap=0.1, max_offset=8.0, seed=0)
    registered = tilefuse.register(project).apply(project)
    truth = json.loads((tmp_path / "truth.json").read_text())["tiles"]
    views = [registered.select(tile=i)[0] for i in range(len(truth))]
    err = tile_positions(registered, views)[:, 1:] - np.array([t["true_zyx"] for t in truth])
    err = np.delete(err, 6, axis=0)  # the empty tile keeps its stage position by design
    err -= err.mean(axis=0)
    assert np.linalg.norm(err, axis=1).max() < 0.5, np.round(np.linalg.norm(err, axis=1), 3)


def test_register_warns_about_unlinked_groups_and_weak_far_links(tmp_path, caplog):
    """Registration says what to check: tiles left without links, weak links moving a tile far."""
    from tilefuse.demo import make_sample_project

    project = make_sample_project(tmp_path / "far", grid=(1, 3), tile_shape=(64, 64), overlap=0.25)
    apart = np.eye(4)
    apart[2, 3] = 200.0  # the last tile far from the others: it overlaps nothing
    project.preconcatenate(project.views[2], apart, "moved away")
    with caplog.at_level("WARNING", logger="tilefuse"):
        result = tilefuse.register(project)
    assert any("1 of 3 groups have no kept link" in w for w in result.warnings())
    assert "no kept link" in caplog.text and "dataset.xml" in caplog.text
    caplog.clear()
    lonely = make_sample_project(tmp_path / "lonely", grid=(1, 2), tile_shape=(32, 32), overlap=0.2)
    for view in lonely.views[1:]:
        lonely.preconcatenate(view, apart, "moved away")
    with caplog.at_level("WARNING", logger="tilefuse"):
        result = tilefuse.register(lonely)
    assert result.warnings() and "nothing was registered" in result.warnings()[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="tilefuse"):
        good = tilefuse.register(make_sample_project(tmp_path / "good", grid=(2, 2), tile_shape=(96, 96),
                                                     overlap=0.25))
    assert good.warnings() == [] and "no kept link" not in caplog.text


def test_a_false_corner_link_that_masks_itself_is_removed(tmp_path):
    # 2x3 tiles of 96 px, 24 px overlaps: the diagonal pair (0,1)-(0,5) matches its 24x24 corner 14.6 px
    # off at r = 0.66.  Among ten good links its residual inflated the mean enough to pass BigStitcher's
    # 'mean * 5 < max' test, and the mosaic registered 2.4 px mean / 5.9 px max off (exit 0).
    sample = make_sample_project(tmp_path / "s", ndim=2, grid=(2, 3), tile_shape=(96, 96), overlap=0.25, seed=3)
    result = tilefuse.register(sample)
    bad = next(link for link in result.links if {link.a[1], link.b[1]} == {1, 5})
    assert bad.status.startswith("rejected: removed by iterative rejection"), bad.status
    score = score_registration(result.apply(sample), tmp_path / "s" / "truth.json")
    assert score["max"] < 0.5 < score["stage_max"], score
    assert result.max_residual < 0.5
    assert result.ghosting() == []  # the loops contradict the removed link: no ghost is claimed for it
