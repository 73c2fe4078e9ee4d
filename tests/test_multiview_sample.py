"""Multi-angle samples: BigStitcher's angle metadata and transforms, beads where the truth says, and a
score that tells registered views from the stage's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

import tilefuse
from tilefuse.cli import main
from tilefuse.demo import make_sample_project, score_multiview, score_registration
from tilefuse.errors import OptionError
from tilefuse.geometry import Box
from tilefuse.project.views import ViewId
from tilefuse.sample_data import load_multiview_truth, make_multiview, rotation_about_axis, rotation_name


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multiview")
    make_sample_project(out, angles=4, tile_shape=(24, 72, 72), max_offset=4.0, noise=False, n_beads=80)
    return out


def _with_truth(xml: Path) -> tilefuse.Project:
    """The sample with the true transforms, as a perfect registration would leave it."""
    truth = load_multiview_truth(xml.with_name("truth.json"))
    project = tilefuse.open_project(xml)
    for i, setup in enumerate(truth["setup"]):
        view = ViewId(0, int(setup))
        project.preconcatenate(view, truth["true"][i] @ np.linalg.inv(project.model(view)), "truth")
    return project


def test_sample_has_angles_attributes_and_stage_transforms(sample):
    project = tilefuse.open_project(sample / "dataset.xml")
    truth = load_multiview_truth(sample / "truth.json")
    assert len(project.views) == 4
    angles = project.entities("angle")
    assert [(e.name, e.axis, e.degrees) for e in angles.values()] == [
        (f"{d:g}", (0.0, 1.0, 0.0), d) for d in (0.0, 45.0, 90.0, 135.0)]
    xml = (sample / "dataset.xml").read_text()
    assert "<axis>0.0 1.0 0.0</axis>" in xml and "<degrees>135.0</degrees>" in xml
    for i, view in enumerate(project.views):
        assert project.attribute(view, "angle") == truth["angle"][i] == i
        names = [t.name for t in project.transforms(view)]
        assert names == [rotation_name((0, 1, 0), 45.0 * i), "Translation to Regular Grid", "calibration"]
        assert names[0] == f"Rotation around axis (0.0, 1.0, 0.0) by {45.0 * i} degrees"
        np.testing.assert_allclose(project.model(view), truth["nominal"][i], atol=1e-9)
        # the view's z (detection axis) points along world x at 90 degrees, anisotropic z
        lin = project.model(view)[:3, :3]
        np.testing.assert_allclose(np.linalg.norm(lin, axis=0), [3, 1, 1], rtol=1e-9)
        err = truth["true"][i] @ np.linalg.inv(truth["nominal"][i])
        if i == 0:
            np.testing.assert_allclose(err, np.eye(4), atol=1e-12)
        else:  # a rigid error: a rotation (<= 1 degree) and a shift of a few voxels
            np.testing.assert_allclose(err[:3, :3] @ err[:3, :3].T, np.eye(3), atol=1e-12)
            angle = np.degrees(np.arccos((np.trace(err[:3, :3]) - 1) / 2))
            assert 0.2 <= angle <= 1.0
    np.testing.assert_allclose(project.model(project.views[2])[:3, :3] @ [1, 0, 0], [0, 0, -3], atol=1e-12)


def test_rotation_convention_is_bigstitchers(examples_dir):
    """The real 7-angle project (rotations about x) holds exactly the matrices we write for its names."""
    project = tilefuse.open_project(examples_dir / "rhapso_filemap2_7angles_2tp.xml")
    seen = 0
    for view in project.views:
        first = project.transforms(view)[0]
        degrees = project.entities("angle")[project.attribute(view, "angle")].degrees
        assert first.name == rotation_name((0, 0, 1), degrees)
        np.testing.assert_allclose(first.matrix[:3, :3], rotation_about_axis((0, 0, 1), degrees)[:3, :3], atol=1e-12)
        seen += 1
    assert seen >= 7


def test_beads_are_where_the_truth_says_and_blur_along_each_views_z():
    mv = make_multiview(3, tile_shape=(20, 64, 64), noise=False, n_beads=40, seed=4)
    tree = cKDTree(mv.beads)
    isolated = tree.query(mv.beads, 2)[0][:, 1] > 12
    widths = []
    for i in range(mv.n_views):
        image = mv.view(i).astype(float)
        idx, vox = mv.bead_voxels(i, margin=4)
        assert len(idx) >= 5
        for k, v in zip(idx, vox):
            if not isolated[k]:
                continue
            c = np.round(v).astype(int)
            win = image[tuple(slice(a - 1, a + 2) for a in c)]
            peak = np.unravel_index(win.argmax(), win.shape)
            assert np.all(np.abs(np.array(peak) - 1 + c - v) <= 1.0)  # the brightest voxel is the bead's
            assert win.max() > mv.background + 0.5 * mv.bead_signal
            # second moments of the bead along the view's z and x (world units)
            prof_z = image[c[0] - 3:c[0] + 4, c[1], c[2]] - mv.background
            prof_x = image[c[0], c[1], c[2] - 6:c[2] + 7] - mv.background
            widths.append((np.sum(prof_z * (np.arange(7) - 3.0) ** 2) / prof_z.sum() * 9,
                           np.sum(prof_x * (np.arange(13) - 6.0) ** 2) / prof_x.sum()))
    w = np.sqrt(np.median(np.array(widths), axis=0))
    assert w[0] > 2 * w[1]  # light-sheet PSF: ~3 along the detection axis, ~1 across (world units)


def test_views_stream_in_blocks_and_are_deterministic():
    a = make_multiview(2, tile_shape=(12, 32, 40), seed=9)
    b = make_multiview(2, tile_shape=(12, 32, 40), seed=9)
    np.testing.assert_array_equal(a.true, b.true)
    np.testing.assert_array_equal(a.view(1), b.view(1))
    clean = make_multiview(2, tile_shape=(12, 32, 40), seed=9, noise=False)
    np.testing.assert_array_equal(np.concatenate([clean.view(1, slice(0, 5)), clean.view(1, slice(5, 12))]),
                                  clean.view(1))
    assert not np.allclose(make_multiview(2, tile_shape=(12, 32, 40), seed=8).true, a.true)


def _bead_peaks(project, truth, radius=28.0):
    """Fuse a box at the centre; per isolated bead: peak height at its true position, and how many maxima
    near it (> 30 % of that peak) lie where no bead is."""
    lo, hi = np.full(3, -radius), np.full(3, radius)
    plan = tilefuse.plan_fusion(project, bounding_box=Box.from_arrays(lo, hi), preserve_anisotropy=False,
                                dtype=np.float32)
    fused = plan.to_dask()[0, 0].compute()
    beads = truth["beads"]
    isolated = cKDTree(beads).query(beads, 2)[0][:, 1] > 9
    inside = np.all((beads > lo + 4) & (beads < hi - 4), axis=1)
    bg = float(np.median(fused))
    local_max = ndi.maximum_filter(fused, size=3)
    all_beads = cKDTree((beads - plan.origin) / plan.spacing)
    heights, extra = [], []
    for b in beads[isolated & inside]:
        c = (b - plan.origin) / plan.spacing
        ci = np.round(c).astype(int)
        peak = fused[tuple(slice(k - 1, k + 2) for k in ci)].max() - bg
        sl = tuple(slice(max(0, k - 8), k + 9) for k in ci)
        sub = fused[sl]
        maxima = np.argwhere((sub == local_max[sl]) & (sub - bg > 0.3 * peak)) + [s.start for s in sl]
        heights.append(peak)
        extra.append(int(np.sum(all_beads.query(maxima)[0] > 2.5)))  # maxima where no bead is: ghosts
    return np.array(heights), np.array(extra)


def test_true_transforms_fuse_single_beads_and_stage_ones_do_not(sample):
    xml = sample / "dataset.xml"
    truth = load_multiview_truth(sample / "truth.json")
    good, stage = _with_truth(xml), tilefuse.open_project(xml)
    h_good, extra_good = _bead_peaks(good, truth)
    h_stage, extra_stage = _bead_peaks(stage, truth)
    assert len(h_good) >= 5
    assert np.all(extra_good == 0)  # one peak per bead, at its true position
    assert np.all(h_good > 0.6 * 3000)  # the four views' blurs of it add up in place
    assert np.median(h_stage) < 0.6 * np.median(h_good)  # the stage transforms spread it out
    assert np.mean(extra_stage > 0) >= 0.5  # ...into several peaks


def test_score_at_the_beads_reflects_the_perturbation(sample):
    xml = sample / "dataset.xml"
    stage = score_multiview(tilefuse.open_project(xml), sample / "truth.json")
    good = score_multiview(_with_truth(xml), sample / "truth.json")
    assert stage["n_pairs"] == 6 and stage["n_observations"] > 50
    assert 2.0 < stage["mean"] < stage["max"] < 4 * 2 * (4.0 * np.sqrt(3)) + 5
    assert stage["stage_mean"] == pytest.approx(stage["mean"])
    assert good["mean"] < 1e-9 and good["max"] < 1e-9
    assert good["stage_mean"] == pytest.approx(stage["mean"])
    # half the error on one view: its pairs' errors fall
    project = tilefuse.open_project(xml)
    truth = load_multiview_truth(sample / "truth.json")
    view = project.views[2]
    project.preconcatenate(view, truth["true"][2] @ np.linalg.inv(project.model(view)), "truth")
    partial = score_multiview(project, sample / "truth.json")
    assert partial["per_view"][view] < stage["per_view"][view]
    assert score_registration(project, sample / "truth.json")["mean"] == pytest.approx(partial["mean"])
    with pytest.raises(OptionError, match="share a bead"):
        score_multiview(project, sample / "truth.json", views=[view])


def test_cli_sample_angles(tmp_path):
    assert main(["sample", str(tmp_path / "s"), "--angles", "3", "--grid", "1,1,2", "--tile", "12,40,40",
                 "-q"]) == 0
    project = tilefuse.open_project(tmp_path / "s" / "dataset.xml")
    assert len(project.views) == 6
    assert sorted(e.degrees for e in project.entities("angle").values()) == [0.0, 60.0, 120.0]
    assert len(project.entities("tile")) == 2
    truth = load_multiview_truth(tmp_path / "s" / "truth.json")
    assert list(truth["angle"]) == [0, 0, 1, 1, 2, 2] and list(truth["tile"]) == [0, 1, 0, 1, 0, 1]
    assert main(["sample", str(tmp_path / "t"), "--angles", "4", "--grid", "2,1,1", "-q"]) == 2
