"""DoG detection: blobs where they are, BigStitcher's parameters, block by block equal to the whole view."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

import tilefuse
from tilefuse.cli import main
from tilefuse.demo import make_sample_project
from tilefuse.errors import OptionError, OutputExistsError
from tilefuse.interestpoints import DetectionOptions, detect, detection, labels, load_points
from tilefuse.interestpoints.detection import detection_factors
from tilefuse.interestpoints.dog import detect_blobs, dog_sigmas
from tilefuse.interestpoints.overlap import inside_view, to_world
from tilefuse.project.views import ViewId
from tilefuse.sample_data import load_multiview_truth


def _blobs(shape, centres, sigma=1.5, peak=1000.0, background=100.0, dark=False, seed=0, noise=True):
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    image = np.full(shape, background)
    for c in centres:
        r2 = sum((g - v) ** 2 for g, v in zip(grids, c))
        image += (-1 if dark else 1) * peak * np.exp(-r2 / (2 * sigma**2))
    if not noise:
        return image.astype(np.float32)
    return np.random.default_rng(seed).poisson(np.maximum(image, 0)).astype(np.float32)


@pytest.fixture(scope="module")
def centres():
    """Blobs on a jittered lattice (10 voxels apart), so that none touch."""
    lattice = np.stack(np.meshgrid(*[np.arange(6, n - 5, 10.0) for n in (36, 60, 60)], indexing="ij"), -1)
    lattice = lattice.reshape(-1, 3)
    return lattice + np.random.default_rng(3).uniform(-1.5, 1.5, lattice.shape)


def test_blobs_are_found_at_sub_voxel_precision(centres):
    image = _blobs((36, 60, 60), centres)
    loc, value = detect_blobs(image, 1.8, 0.008)
    dist, _ = cKDTree(loc).query(centres)
    assert np.all(dist < 0.3) and len(loc) == len(centres)
    assert np.median(dist) < 0.08, np.median(dist)
    assert np.all(value > 0.008)
    # without the quadratic fit the points sit on voxels: the fit is what gives sub-voxel precision
    loc0, _ = detect_blobs(image, 1.8, 0.008, localization="none")
    np.testing.assert_array_equal(loc0, np.round(loc0))
    assert np.median(cKDTree(loc0).query(centres)[0]) > 2 * np.median(dist)


def test_threshold_and_minima_follow_bigstitchers_meaning(centres):
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in (36, 60, 60)], indexing="ij")
    bright = np.full((36, 60, 60), 100.0)
    peaks = np.linspace(50, 1000, len(centres))
    for c, peak in zip(centres, peaks):
        bright += peak * np.exp(-sum((g - v) ** 2 for g, v in zip(grids, c)) / (2 * 1.5**2))
    # the threshold is a fraction of the intensity range: the weak blobs fall below a high one
    few, _ = detect_blobs(bright, 1.8, 0.05)
    many, _ = detect_blobs(bright, 1.8, 0.008)
    assert len(many) == len(centres) and 0 < len(few) < len(many)
    dark = _blobs((36, 60, 60), centres, peak=60.0, background=100.0, dark=True, noise=False)
    loc, value = detect_blobs(dark, 1.8, 0.008, find_maxima=False, find_minima=True)
    assert len(loc) == len(centres) and np.all(value < 0)
    assert np.all(cKDTree(loc).query(centres)[0] < 0.3)
    # maxima only (BigStitcher's default) finds no dark blob, only the bright rims between them
    rims, value = detect_blobs(dark, 1.8, 0.008)
    assert np.all(value > 0) and np.all(cKDTree(rims).query(centres)[0] > 2)
    # BigStitcher's sigmas: k = 2^(1/4), both reduced by the image's own 0.5 px blur
    s1, s2 = dog_sigmas(1.8)
    assert s1 == pytest.approx(np.sqrt(1.8**2 - 0.25)) and s2 == pytest.approx(np.sqrt((1.8 * 2**0.25) ** 2 - 0.25))


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("detect")
    make_sample_project(out, angles=2, tile_shape=(32, 96, 96), max_offset=3.0)
    return out


def test_views_are_detected_block_by_block_as_a_whole(sample):
    project = tilefuse.open_project(sample / "dataset.xml")
    whole = detect(project, block=(64, 128, 128))
    blocks = detect(project, block=(8, 16, 16))
    assert whole.points.keys() == blocks.points.keys()
    for view, pts in whole.points.items():
        assert len(pts) > 30
        np.testing.assert_allclose(blocks.points[view].loc, pts.loc, atol=1e-9)
        np.testing.assert_array_equal(blocks.points[view].ids, np.arange(len(pts)))
    # the beads are found where they truly are (view voxels at full resolution, z y x)
    truth = load_multiview_truth(sample / "truth.json")
    for i, setup in enumerate(truth["setup"]):
        view = ViewId(0, int(setup))
        inv = np.linalg.inv(truth["true"][i])
        beads = truth["beads"] @ inv[:3, :3].T + inv[:3, 3]
        inside = np.all((beads >= 3) & (beads <= np.array(project.setup_shape(view)) - 4), axis=1)
        dist = cKDTree(whole.points[view].loc).query(beads[inside])[0]
        assert np.mean(dist < 1.0) > 0.6, np.mean(dist < 1.0)
        assert np.median(dist[dist < 1.0]) < 0.35


def test_downsampling_matches_z_and_points_stay_in_full_resolution_voxels(sample):
    project = tilefuse.open_project(sample / "dataset.xml")
    view = project.views[0]
    assert project.voxel_size(view) == (3.0, 1.0, 1.0)
    # BigStitcher's "match z resolution (less downsampling)": 2 in x/y for z voxels 3x as large
    assert detection_factors(project, view, DetectionOptions()) == (1, 2, 2)
    assert detection_factors(project, view, DetectionOptions(downsample_xy=1, downsample_z=2)) == (2, 1, 1)
    fine = detect(project, [view], downsample_xy=1, sigma=2.5).points[view].loc
    coarse = detect(project, [view]).points[view].loc
    dist = cKDTree(fine).query(coarse)[0]
    assert np.median(dist) < 0.5  # the same beads, in the same (full-resolution) coordinates


def test_overlapping_only_keeps_points_another_view_sees(tmp_path):
    project = make_sample_project(tmp_path, grid=(1, 2), tile_shape=(96, 128), overlap=0.25)
    found = detect(project, overlapping_only=True, sigma=2.0, threshold=0.02)
    everything = detect(project, sigma=2.0, threshold=0.02)
    a, b = project.views
    for view, other in ((a, b), (b, a)):
        world = to_world(project.model(view), found.points[view].loc)
        assert len(world) > 0
        assert inside_view(project.model(other), project.setup_shape(other), world).all()
        kept = inside_view(project.model(other), project.setup_shape(other),
                           to_world(project.model(view), everything.points[view].loc))
        assert len(found.points[view]) == kept.sum() < len(everything.points[view])
    assert "overlappingOnly=true" in found.params


def test_points_are_stored_for_bigstitcher_and_not_replaced_unasked(sample, tmp_path):
    project = tilefuse.open_project(sample / "dataset.xml")
    found = detect(project, label="beads")
    registered = found.apply(project)
    assert labels(project) == {}  # apply returns a new project
    assert found.params.startswith("DOG s=1.8 t=0.008 min=false max=true")
    registered.save(tmp_path / "with_points.xml")
    xml = (tmp_path / "with_points.xml").read_text()
    assert 'label="beads" params="DOG s=1.8 t=0.008' in xml and ">tpId_0_viewSetupId_1/beads<" in xml
    again = tilefuse.open_project(tmp_path / "with_points.xml")
    back = load_points(again, "beads")
    for view, pts in found.points.items():
        np.testing.assert_allclose(back[view].loc, pts.loc)
    # the same detection again is fine; other parameters are refused unless asked
    found.apply(project)
    other = detect(project, threshold=0.05)
    with pytest.raises(OutputExistsError, match="beads"):
        other.apply(project)
    np.testing.assert_allclose(load_points(again, "beads")[project.views[0]].loc, found.points[project.views[0]].loc)
    other.apply(project, overwrite=True)
    assert len(load_points(again, "beads")[project.views[0]]) == len(other.points[project.views[0]])


def test_two_dimensional_views_are_detected_in_their_plane(tmp_path):
    project = make_sample_project(tmp_path, grid=(1, 2), tile_shape=(96, 96))
    found = detect(project, project.views[:1], sigma=2.0, threshold=0.02)
    loc = found.points[project.views[0]].loc
    assert len(loc) > 5 and np.all(loc[:, 0] == 0)


def test_bad_options_name_the_option():
    with pytest.raises(OptionError, match="downsample_xy"):
        DetectionOptions(downsample_xy=3)
    with pytest.raises(OptionError, match="find"):
        DetectionOptions(find="blobs")
    assert DetectionOptions(find="both").find_minima and DetectionOptions(find="both").find_maxima
    with pytest.raises(OptionError, match="intensity_range"):
        DetectionOptions(intensity_range=(10, 5))
    assert "minIntensity=0.0 maxIntensity=4000.0" in DetectionOptions(intensity_range=(0, 4000)).params()


def test_views_left_without_points_are_named_in_a_warning(sample, caplog):
    """A threshold no blob reaches gives empty views: detect must say so, not report success silently."""
    project = tilefuse.open_project(sample / "dataset.xml")
    with caplog.at_level("WARNING", logger="tilefuse"):
        found = detect(project, threshold=0.9)
    assert all(len(p) == 0 for p in found.points.values())
    text = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "2 of 2 views have no interest points labelled 'beads'" in text and "threshold (now 0.9)" in text
    assert str(sample / "dataset.xml") in text


def test_detect_refuses_to_replace_other_points_before_detecting(sample, tmp_path, monkeypatch, capsys):
    for name in ("dataset.xml", "dataset.h5"):
        shutil.copy(sample / name, tmp_path / name)
    xml = str(tmp_path / "dataset.xml")
    assert main(["detect", xml, "-q"]) == 0

    def no_detection(*args, **kwargs):
        raise AssertionError("detected before refusing")

    monkeypatch.setattr(detection, "detect", no_detection)
    assert main(["detect", xml, "--sigma", "2.5", "-q"]) == 2
    err = capsys.readouterr().err
    assert "interest points labelled 'beads' exist already" in err and "tpId_0_viewSetupId_0" in err
