"""Matching interest points: models, seeded RANSAC, BigStitcher's descriptors, pairs of views, correspondences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tilefuse
from tilefuse.demo import make_sample_project
from tilefuse.interestpoints import detect, load_correspondences, match
from tilefuse.interestpoints.descriptors import descriptor_candidates, rotation_invariant, translation_invariant
from tilefuse.interestpoints.models import apply_model, fit_model, icp, ransac, remove_inconsistent
from tilefuse.interestpoints.options import MatchingOptions
from tilefuse.project.views import ViewId
from tilefuse.sample_data import load_multiview_truth, rotation_about_axis


def _affine(seed=0, shear=0.02):
    rng = np.random.default_rng(seed)
    m = rotation_about_axis(rng.normal(size=3), 20.0)
    m[:3, :3] = m[:3, :3] @ (np.eye(3) + rng.uniform(-shear, shear, (3, 3)))
    m[:3, 3] = rng.uniform(-30, 30, 3)
    return m


def test_models_fit_what_they_can_express():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 100, (40, 3))
    truth = _affine()
    q = apply_model(truth, p)
    np.testing.assert_allclose(fit_model(p, q, "affine"), truth, atol=1e-9)
    rigid = rotation_about_axis((1, 2, 3), 30.0)
    rigid[:3, 3] = (5, -3, 2)
    np.testing.assert_allclose(fit_model(p, apply_model(rigid, p), "rigid"), rigid, atol=1e-9)
    shift = np.eye(4)
    shift[:3, 3] = (1.5, 2.5, -4)
    np.testing.assert_allclose(fit_model(p, apply_model(shift, p), "translation"), shift, atol=1e-12)
    # BigStitcher's regularised model: the affine and the rigid fit interpolated entry by entry
    regular = fit_model(p, q, "affine", regularizer="rigid", lam=0.1)
    np.testing.assert_allclose(regular, 0.9 * fit_model(p, q, "affine") + 0.1 * fit_model(p, q, "rigid"), atol=1e-12)
    # points that cannot fix the model: coplanar for an affine, collinear for a rigid
    flat = p.copy()
    flat[:, 0] = 7
    assert fit_model(flat, q, "affine") is None
    line = np.outer(np.arange(5.0), (1, 2, 3))
    assert fit_model(line, line, "rigid") is None


def test_ransac_is_seeded_and_finds_the_model_among_outliers():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 200, (100, 3))
    truth = _affine(2)
    q = apply_model(truth, p) + rng.normal(0, 0.2, p.shape)
    q[:60] = rng.uniform(0, 200, (60, 3))  # 60 % wrong candidates
    runs = [ransac(p, q, "affine", epsilon=3.0, rng=np.random.default_rng(7)) for _ in range(2)]
    (m1, in1, text), (m2, in2, _) = runs
    np.testing.assert_array_equal(m1, m2)  # the same seed, the same answer
    np.testing.assert_array_equal(in1, in2)
    assert in1[60:].all() and not in1[:60].any(), text
    assert np.max(np.abs(apply_model(m1, p[60:]) - apply_model(truth, p[60:]))) < 0.5
    # another seed: the same inliers (the result does not hinge on luck)
    _, in3, _ = ransac(p, q, "affine", epsilon=3.0, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(in1, in3)
    # nothing to find: no model, and it says why
    noise = rng.uniform(0, 200, (50, 3))
    m, inl, why = ransac(noise, rng.uniform(0, 200, (50, 3)), "affine", rng=np.random.default_rng(0))
    assert m is None and not inl.any() and "candidates" in why
    assert remove_inconsistent(np.array([1, 2, 2, 3]), np.array([5, 6, 7, 8])).tolist() == [True, False, False, True]


def test_descriptors_are_invariant_to_what_they_claim():
    rng = np.random.default_rng(2)
    cloud = rng.uniform(0, 100, (200, 3))
    rigid = rotation_about_axis((0.3, 1, 0.2), 50.0)
    rigid[:3, 3] = (10, -20, 5)
    moved = apply_model(rigid, cloud)
    shifted = cloud + (3.0, -7.0, 11.0)
    for redundancy in (0, 1):
        d, owner, per = rotation_invariant(cloud, redundancy)
        d2, owner2, _ = rotation_invariant(moved, redundancy)
        np.testing.assert_array_equal(owner, owner2)
        np.testing.assert_allclose(d, d2, atol=1e-8)
        assert per == (4 if redundancy else 1) and len(d) == per * len(cloud)
    t, _, per = translation_invariant(cloud, 3, 1)
    np.testing.assert_allclose(translation_invariant(shifted, 3, 1)[0], t, atol=1e-9)
    assert per == 4 and t.shape == (4 * 200, 9)
    assert not np.allclose(translation_invariant(moved, 3, 1)[0], t, atol=1e-3)  # rotation changes offsets
    # matching a rotated, jittered copy with extra points: the candidates are mostly the true partners
    noisy = moved + rng.normal(0, 0.1, moved.shape)
    extra = np.vstack([noisy, apply_model(rigid, rng.uniform(0, 100, (40, 3)))])
    da, oa, per = rotation_invariant(cloud, 0)
    db, ob, _ = rotation_invariant(extra, 0)
    ia, ib = descriptor_candidates(da, oa, db, ob, per, 10.0)
    assert len(ia) > 40 and np.mean(ia == ib) > 0.9


def test_icp_pairs_closest_points_from_a_close_start():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 100, (150, 3))
    truth = rotation_about_axis((0, 1, 0), 1.0)
    truth[:3, 3] = (1.0, -1.5, 0.5)
    q = apply_model(truth, p)[::-1]  # shuffled partners
    m, ia, ib = icp(p, q, "rigid", max_distance=5.0)
    assert len(ia) == 150 and np.all(ib == 149 - ia)
    np.testing.assert_allclose(m, truth, atol=1e-6)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("match")
    project = make_sample_project(out, angles=3, tile_shape=(32, 96, 96), max_offset=4.0)
    detect(project).apply(project).save(out / "dataset.xml")
    return out


def test_views_at_different_angles_match_rotation_invariantly_with_the_true_models(sample):
    project = tilefuse.open_project(sample / "dataset.xml")
    found = match(project)
    truth = load_multiview_truth(sample / "truth.json")
    index = {ViewId(0, int(s)): i for i, s in enumerate(truth["setup"])}
    assert len(found.pairs) == 3 and len(found.matched) == 3
    for pair in found.pairs:
        assert pair.method == "rotation-invariant"
        assert len(pair.ids_a) >= 12 and pair.error < 1.0
        # the pair's model maps a's (stage) world onto b's: N_b T_b^-1 T_a N_a^-1
        a, b = index[pair.a], index[pair.b]
        expected = truth["nominal"][b] @ np.linalg.inv(truth["true"][b]) @ truth["true"][a] @ np.linalg.inv(
            truth["nominal"][a])
        assert np.max(np.linalg.norm(apply_model(pair.model, pair.p) - apply_model(expected, pair.p), axis=1)) < 1.0
    assert "3 compared, 3 matched" in found.summary()


def test_matching_gives_the_same_answer_every_time_and_in_any_order(sample):
    project = tilefuse.open_project(sample / "dataset.xml")
    first = match(project)
    again = match(project, views=project.views[::-1])
    assert [(p.a, p.b) for p in first.pairs] == [(p.a, p.b) for p in again.pairs]
    for x, y in zip(first.pairs, again.pairs):
        np.testing.assert_array_equal(x.ids_a, y.ids_a)
        np.testing.assert_array_equal(x.model, y.model)
    other = match(project, seed=5)
    assert all(len(x.ids_a) > 0 for x in other.pairs)


def test_translation_invariant_and_icp_choices(sample):
    project = tilefuse.open_project(sample / "dataset.xml")
    # with the stage's rotations applied, offsets agree well enough for the translation-invariant descriptor
    found = match(project, method="translation-invariant")
    assert all(p.method == "translation-invariant" and p.matched for p in found.pairs)
    refined = match(project, icp=True)
    plain = match(project)
    for r, p in zip(refined.pairs, plain.pairs):
        assert len(r.ids_a) >= len(p.ids_a) and "ICP" in r.message
        assert f"{len(r.ids_a)} pairs after ICP ({r.candidates} descriptor candidates)" in refined.summary()
    assert all(p.matched for p in match(project, method="icp", icp_distance=12.0).pairs)


def test_correspondences_are_saved_both_ways_in_bigstitchers_layout(sample, tmp_path):
    project = tilefuse.open_project(sample / "dataset.xml")
    found = match(project)
    found.save(project)
    stored = load_correspondences(project, "beads")
    for pair in found.matched:
        table = stored[pair.a]
        rows = [k for k, v in enumerate(table.other_views) if v == pair.b]
        assert table.ids[rows].tolist() == pair.ids_a.tolist()
        assert table.other_ids[rows].tolist() == pair.ids_b.tolist()
        back = stored[pair.b]
        rows = [k for k, v in enumerate(back.other_views) if v == pair.a]
        assert sorted(zip(back.ids[rows].tolist(), back.other_ids[rows].tolist())) == sorted(
            zip(pair.ids_b.tolist(), pair.ids_a.tolist()))
        assert set(table.other_labels) == {"beads"}


def test_a_label_without_points_and_bad_options_are_refused(sample):
    project = tilefuse.open_project(sample / "dataset.xml")
    with pytest.raises(tilefuse.RegistrationError, match="nuclei"):
        match(project, label="nuclei")
    with pytest.raises(tilefuse.OptionError, match="method"):
        MatchingOptions(method="sift")
    assert MatchingOptions().model_name() == "AffineModel3D regularized with an RigidModel3D, lambda = 0.1"
    assert MatchingOptions(model="rigid", regularize="none").model_name() == "RigidModel3D"


def test_all_pairs_matches_views_whose_stage_positions_do_not_overlap(sample):
    """--all-pairs is for views placed too far off to overlap: their points must all take part."""
    project = tilefuse.open_project(sample / "dataset.xml")
    far = np.eye(4)
    far[2, 3] = 1000.0  # world x
    moved = ViewId(0, 2)
    project.preconcatenate(moved, far, "far away")
    assert len(match(project).pairs) == 1  # only the two views that still overlap are compared
    found = match(project, all_pairs=True)
    assert len(found.pairs) == 3 and len(found.matched) == 3, found.summary()
    for pair in found.pairs:
        if moved in (pair.a, pair.b):  # the model carries the 1000 units the view was moved by
            shift = apply_model(pair.model, pair.p).mean(axis=0) - pair.p.mean(axis=0)
            assert abs(abs(shift[2]) - 1000.0) < 20.0


def test_points_of_two_dimensional_views_fit_an_affine_in_their_plane():
    """2D tiles: every point has the same z. The default (regularised) affine model must still fit, in the
    plane, keeping z as it is -- not fail on every sample and leave 2D projects unregistered."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 200, (60, 3))
    p[:, 0] = 0.0
    truth = np.eye(4)
    truth[1:3, 1:3] = [[0.99, 0.05], [-0.04, 1.01]]
    truth[1:3, 3] = [3.0, -7.0]
    q = apply_model(truth, p)
    np.testing.assert_allclose(fit_model(p, q, "affine"), truth, atol=1e-9)
    regularised = fit_model(p, q, "affine", regularizer="rigid", lam=0.1)
    assert regularised is not None
    np.testing.assert_array_equal(regularised[0], [1, 0, 0, 0])  # z stays z
    q[:10] += rng.uniform(20, 40, (10, 3)) * [0, 1, 1]  # outliers in the plane
    found, inliers, _ = ransac(p, q, "affine", epsilon=1.0, rng=np.random.default_rng(0))
    assert found is not None and inliers[10:].all() and not inliers[:10].any()
    np.testing.assert_allclose(found, truth, atol=1e-6)


def test_other_stored_correspondences_are_replaced_only_when_asked(sample, tmp_path):
    # The container belongs to the input project (register -o other.xml writes into it): correspondences
    # matched otherwise (other options, or in Fiji) were silently replaced.
    import shutil

    from tilefuse.errors import OutputExistsError

    shutil.copytree(sample, tmp_path / "p")
    project = tilefuse.open_project(tmp_path / "p" / "dataset.xml")
    first = match(project)
    first.save(project)
    before = load_correspondences(project, "beads")
    first.save(project)  # the same correspondences again: nothing to refuse
    other = match(project, icp=True)
    assert any(len(a.ids_a) != len(b.ids_a) or (a.ids_a != b.ids_a).any()
               for a, b in zip(first.pairs, other.pairs)), "the test needs different correspondences"
    with pytest.raises(OutputExistsError, match=r"correspondences labelled 'beads' that differ"):
        other.save(project)
    after = load_correspondences(project, "beads")
    for view, table in before.items():  # nothing was written
        assert table.ids.tolist() == after[view].ids.tolist()
        assert table.other_ids.tolist() == after[view].other_ids.tolist()
    other.save(project, overwrite=True)
    replaced = load_correspondences(project, "beads")
    assert sum(len(t) for t in replaced.values()) == 2 * sum(len(p.ids_a) for p in other.matched)
