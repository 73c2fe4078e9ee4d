"""Views at several angles register with interest points: from the command line, to BigStitcher's format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

import tilefuse
from tilefuse.cli import main
from tilefuse.demo import make_sample_project, score_multiview
from tilefuse.geometry import Box
from tilefuse.interestpoints import detect, labels, load_correspondences, load_points
from tilefuse.interestpoints.dog import detect_blobs
from tilefuse.project.views import ViewId


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """4 angles about y, anisotropic z, a light-sheet PSF, stage errors of up to 6 px and 1 degree."""
    out = tmp_path_factory.mktemp("angles")
    make_sample_project(out, angles=4, tile_shape=(40, 128, 128))
    return out


def _copy(sample: Path, tmp: Path) -> Path:
    for name in ("dataset.xml", "dataset.h5", "truth.json"):
        shutil.copy(sample / name, tmp / name)
    return tmp / "dataset.xml"


def test_register_uses_interest_points_for_rotated_views_and_is_accurate_and_repeatable(sample, tmp_path, capsys):
    xml = _copy(sample, tmp_path)
    assert main(["register", str(xml), "-o", str(tmp_path / "registered.xml"), "--plot",
                 str(tmp_path / "matches.png")]) == 0
    out, err = capsys.readouterr()
    assert "registering with interest points" in err and "rotated relative to" in err
    assert "6 compared, 6 matched" in out and "residual" in out
    registered = tilefuse.open_project(tmp_path / "registered.xml")
    score = score_multiview(registered, tmp_path / "truth.json")
    assert score["stage_mean"] > 4  # the stage transforms are off by pixels and fractions of a degree
    assert score["mean"] <= 0.5 and score["max"] <= 1.5, score
    for view in registered.views:
        assert registered.transforms(view)[0].name == "AffineModel3D regularized with an RigidModel3D, lambda = 0.1"
    assert set(labels(registered)) == {"beads"}
    assert all(len(t) > 12 for t in load_correspondences(registered, "beads").values())
    assert (tmp_path / "matches.png").stat().st_size > 10000
    # the same input gives the same result (seeded RANSAC, deterministic detection)
    assert main(["register", str(xml), "-o", str(tmp_path / "again.xml"), "-q"]) == 0
    again = tilefuse.open_project(tmp_path / "again.xml")
    for view in registered.views:
        np.testing.assert_array_equal(again.model(view), registered.model(view))


def test_phase_correlation_still_refuses_rotated_views(sample, tmp_path, capsys):
    xml = _copy(sample, tmp_path)
    assert main(["register", str(xml), "-o", str(tmp_path / "r.xml"), "--method", "phase-correlation", "-q"]) == 2
    assert "needs axis-aligned views" in capsys.readouterr().err


def test_detect_match_register_step_by_step_reuses_the_stored_points(sample, tmp_path, capsys):
    xml = _copy(sample, tmp_path)
    assert main(["detect", str(xml), "--label", "spots", "--threshold", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "points per view" in out and "interestpoints.n5" in out
    project = tilefuse.open_project(xml)  # detect updated the XML in place (with a ~1 backup)
    assert (tmp_path / "dataset.xml~1").exists()
    points = load_points(project, "spots")
    assert len(points) == 4 and all(len(p) > 50 for p in points.values())
    assert main(["match", str(xml), "--label", "spots", "--plot", str(tmp_path / "m.png")]) == 0
    assert "6 matched" in capsys.readouterr().out
    # other matching options than `match` used: its stored correspondences are replaced only when asked
    register = ["register", str(xml), "--label", "spots", "-o", str(tmp_path / "r.xml"),
                "--match-model", "rigid", "--regularize", "none"]
    assert main(register) == 2
    assert "that differ from these" in capsys.readouterr().err
    assert not (tmp_path / "r.xml").exists()
    assert main(register + ["--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "stored in the project" in out and "RigidModel3D" in out
    registered = tilefuse.open_project(tmp_path / "r.xml")
    assert registered.transforms(registered.views[1])[0].name == "RigidModel3D"
    lin = registered.transforms(registered.views[1])[0].matrix[:3, :3]
    np.testing.assert_allclose(lin @ lin.T, np.eye(3), atol=1e-9)  # a rotation
    assert score_multiview(registered, tmp_path / "truth.json")["mean"] <= 0.5


def _with_truth(xml: Path) -> tilefuse.Project:
    """The sample with its true transforms: what a perfect registration would leave."""
    truth = tilefuse.sample_data.load_multiview_truth(xml.with_name("truth.json"))
    project = tilefuse.open_project(xml)
    for i, setup in enumerate(truth["setup"]):
        view = ViewId(0, int(setup))
        project.preconcatenate(view, truth["true"][i] @ np.linalg.inv(project.model(view)), "truth")
    return project


def _fine_structure(volume: np.ndarray) -> np.ndarray:
    """Beads and texture without the slow background (which even misplaced views get right)."""
    volume = volume.astype(np.float64)
    return volume - ndi.gaussian_filter(volume, 4.0)


def test_python_api_and_a_fused_result_without_doubled_beads(sample, tmp_path):
    """The registered views fuse into the ground-truth volume (the views fused at their true
    transforms, on the same grid): fine structure correlates > 0.98 with it, each bead is found once
    where it truly is; the stage transforms give doubled beads and a poor correlation."""
    xml = _copy(sample, tmp_path)
    project = tilefuse.open_project(xml)
    result = tilefuse.register(project, method="interest-points")
    assert result.detections is not None and result.solution.accepted.all()
    registered = result.apply(project)
    truth = tilefuse.sample_data.load_multiview_truth(tmp_path / "truth.json")
    plan = tilefuse.plan_fusion(_with_truth(xml))
    box = Box(plan.origin, plan.origin + (np.array(plan.shape[-3:]) - 1) * plan.spacing)
    reference = _fine_structure(plan.to_dask()[0, 0].compute())
    found, doubled, correlation = {}, {}, {}
    for name, proj in (("stage", project), ("registered", registered)):
        plan = tilefuse.plan_fusion(proj, bounding_box=box)
        fused = plan.to_dask()[0, 0].compute()
        correlation[name] = np.corrcoef(_fine_structure(fused).ravel(), reference.ravel())[0, 1]
        loc, _ = detect_blobs(fused, 1.8, 0.02)
        world = plan.origin + loc * plan.spacing
        tree = cKDTree(world)
        # beads inside the fused volume (view 0 is held: its stage transform is the true one)
        beads = truth["beads"][np.all((truth["beads"] > world.min(0) + 5) & (truth["beads"] < world.max(0) - 5), 1)]
        found[name] = np.mean(tree.query(beads)[0] < 1.0)
        # a bead seen again 2-8 units away: the same bead from a misplaced view
        near = np.array([len(n) for n in tree.query_ball_point(beads, 2.0)])
        around = np.array([len(n) for n in tree.query_ball_point(beads, 8.0)])
        doubled[name] = np.mean(around > near)
    assert correlation["registered"] > 0.98 and correlation["stage"] < 0.7, correlation
    # (a few beads have a nucleus or another bead that close anyway)
    assert found["registered"] > 0.9 > found["stage"], found
    assert doubled["registered"] < 0.2 and doubled["stage"] > 0.5, doubled


def test_points_of_another_detection_are_not_replaced_unasked(sample, tmp_path, capsys):
    xml = _copy(sample, tmp_path)
    project = tilefuse.open_project(xml)
    detect(project, threshold=0.05).apply(project)  # stored, but not referred to by dataset.xml
    assert main(["register", str(xml), "-o", str(tmp_path / "r.xml"), "-q"]) == 2
    assert "exist already" in capsys.readouterr().err
    assert not (tmp_path / "r.xml").exists()
    assert main(["register", str(xml), "-o", str(tmp_path / "r.xml"), "-q", "--overwrite"]) == 0


def test_a_single_view_is_refused_before_detecting_with_the_reason(tmp_path, capsys):
    """One view: nothing to match with. Say that (not 'detect them first') and write nothing."""
    project = make_sample_project(tmp_path, grid=(1, 1), tile_shape=(48, 48))
    xml = str(project.path)
    assert main(["register", xml, "-o", str(tmp_path / "r.xml"), "--method", "interest-points", "-q"]) == 2
    err = capsys.readouterr().err
    assert "1 group of views to register (1 view(s) in all)" in err and "Traceback" not in err
    assert not (tmp_path / "interestpoints.n5").exists() and not (tmp_path / "r.xml").exists()
    assert main(["match", xml, "-q"]) == 2
    assert "the project has 1 view; matching interest points needs two or more" in capsys.readouterr().err
