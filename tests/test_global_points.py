"""The global solve from point matches: models, regularisation, fixed groups, link rejection, two rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tilefuse.errors import RegistrationError
from tilefuse.geometry import Box
from tilefuse.registration.global_affine import PointMatches
from tilefuse.registration.global_opt import ShiftConstraint, solve_translations
from tilefuse.registration.global_points import WeakLink, point_matches_from_links, solve_point_matches
from tilefuse.registration.pairwise import Link
from tilefuse.sample_data import rotation_about_axis


def _apply(m, x):
    return x @ m[:3, :3].T + m[:3, 3]


def _errors(seed, kind):
    """True world corrections of 4 groups (the first none), of the given kind."""
    rng = np.random.default_rng(seed)
    out = [np.eye(4)]
    for _ in range(3):
        m = np.eye(4)
        if kind != "translation":
            m = rotation_about_axis(rng.normal(size=3), rng.uniform(0.5, 2.0))
        if kind == "affine":
            m[:3, :3] = m[:3, :3] @ (np.eye(3) + rng.uniform(-0.01, 0.01, (3, 3)))
        m[:3, 3] = rng.uniform(-5, 5, 3)
        out.append(m)
    return out


def _matches(truth, n=60, noise=0.0, seed=0, pairs=((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))):
    """Point matches between groups whose current positions are off by ``truth`` (inverse: what fixes them)."""
    rng = np.random.default_rng(seed)
    out = []
    for a, b in pairs:
        world = rng.uniform(0, 200, (n, 3))  # where the points truly are
        p = _apply(np.linalg.inv(truth[a]), world) + rng.normal(0, noise, world.shape)
        q = _apply(np.linalg.inv(truth[b]), world) + rng.normal(0, noise, world.shape)
        out.append(PointMatches(a, b, p, q, 1.0))
    return out


@pytest.mark.parametrize("kind", ["translation", "rigid", "affine"])
def test_exact_matches_give_the_true_corrections(kind):
    truth = _errors(1, kind)
    sol = solve_point_matches(range(4), _matches(truth), model=kind, regularizer=None, fixed=[0])
    for g in range(4):
        np.testing.assert_allclose(sol.transforms[g], truth[g], atol=1e-6)
    assert sol.mean_error < 1e-4 and sol.accepted.all()


def test_regularised_affine_lies_between_the_affine_and_the_rigid_solution():
    truth = _errors(2, "affine")
    matches = _matches(truth, noise=0.05)
    affine = solve_point_matches(range(4), matches, model="affine", regularizer=None)
    rigid = solve_point_matches(range(4), matches, model="rigid", regularizer=None)
    regular = solve_point_matches(range(4), matches, model="affine", regularizer="rigid", lam=0.1)
    probe = np.random.default_rng(0).uniform(0, 200, (20, 3))
    for g in (1, 2, 3):
        d_aff = np.abs(_apply(regular.transforms[g], probe) - _apply(affine.transforms[g], probe)).max()
        d_rig = np.abs(_apply(regular.transforms[g], probe) - _apply(rigid.transforms[g], probe)).max()
        assert d_aff < d_rig  # lambda 0.1: mostly affine
        lin = regular.transforms[g][:3, :3]
        assert not np.allclose(lin @ lin.T, np.eye(3), atol=1e-4)  # not a rotation: the shear is kept in part
    assert regular.mean_error < rigid.mean_error


def test_fixed_groups_do_not_move():
    truth = _errors(3, "rigid")
    sol = solve_point_matches(range(4), _matches(truth), model="rigid", regularizer=None, fixed=[2])
    np.testing.assert_allclose(sol.transforms[2], np.eye(4), atol=1e-12)
    # everything else moves so that it agrees with group 2 where it is
    for g in range(4):
        np.testing.assert_allclose(sol.transforms[g], np.linalg.inv(truth[2]) @ truth[g], atol=1e-4)
    with pytest.raises(RegistrationError, match="not one of the groups"):
        solve_point_matches(range(4), _matches(truth), fixed=[9])


def test_a_wrong_link_is_removed_with_bigstitchers_thresholds_and_bridges_are_kept():
    truth = _errors(4, "translation")
    matches = _matches(truth, noise=0.1)
    wrong = matches[3]  # 1 - 2: its points moved by 15 units
    matches[3] = PointMatches(wrong.a, wrong.b, wrong.p, wrong.q + (15.0, 0, 0), 1.0)
    sol = solve_point_matches(range(4), matches, model="translation", regularizer=None, fixed=[0],
                              rel_threshold=2.5, abs_threshold=3.5)
    assert not sol.accepted[3] and sol.accepted.sum() == 5 and sol.n_removed == 1
    assert "iterative rejection" in sol.reasons[3]
    for g in range(4):
        np.testing.assert_allclose(sol.transforms[g], truth[g], atol=0.2)
    # without rejection the wrong link pulls everything
    kept = solve_point_matches(range(4), matches, model="translation", regularizer=None, fixed=[0],
                               rel_threshold=math.inf, abs_threshold=math.inf)
    assert kept.accepted.all() and kept.max_error > 5
    # a chain: every link is a bridge, none may go (nothing would confirm the rest)
    chain = _matches(truth, pairs=((0, 1), (1, 2), (2, 3)))
    chain[1] = PointMatches(1, 2, chain[1].p, chain[1].q + (15.0, 0, 0), 1.0)
    sol = solve_point_matches(range(4), chain, model="translation", regularizer=None, rel_threshold=2.5,
                              abs_threshold=3.5)
    assert sol.accepted.all()


def test_unlinked_sets_keep_their_stage_relative_place_in_the_second_round():
    truth = _errors(5, "translation")
    matches = _matches(truth, pairs=((0, 1), (2, 3)))  # two sets, no link between them
    centre = np.array([100.0, 100.0, 100.0])
    one = solve_point_matches(range(4), matches, model="translation", regularizer=None, fixed=[0])
    two = solve_point_matches(range(4), matches, model="translation", regularizer=None, fixed=[0],
                              weak_links=[WeakLink(1, 2, centre)])
    assert one.components == two.components == ((0, 1), (2, 3))
    np.testing.assert_allclose(one.transforms[2], np.eye(4), atol=1e-9)  # held on its own
    # second round: the set {2, 3} moves as a block so that 1 and 2 agree at their metadata overlap
    np.testing.assert_allclose(_apply(two.transforms[1], centre[None]), _apply(two.transforms[2], centre[None]),
                               atol=1e-6)
    np.testing.assert_allclose(two.transforms[3] @ np.linalg.inv(two.transforms[2]),
                               one.transforms[3] @ np.linalg.inv(one.transforms[2]), atol=1e-9)


def test_phase_correlation_links_enter_the_same_solve():
    """Links of the translation registration, as point matches, give the translation solver's answer."""
    box = Box.from_arrays((0, 0, 90), (50, 100, 100))
    shifts = {(0, 1): (0.5, 1.0, -2.0), (1, 2): (0.0, -1.5, 0.5), (0, 2): (0.5, -0.5, -1.5)}
    links = [Link(a, b, np.array(s), 0.9, box) for (a, b), s in shifts.items()]
    direct = solve_translations(3, [ShiftConstraint(lk.a, lk.b, lk.shift, lk.correlation) for lk in links],
                                fixed=[0], rel_threshold=math.inf, abs_threshold=math.inf)
    sol = solve_point_matches(range(3), point_matches_from_links(links), model="translation", regularizer=None,
                              fixed=[0], rel_threshold=math.inf, abs_threshold=math.inf)
    for g in range(3):
        np.testing.assert_allclose(sol.transforms[g][:3, 3], direct.translations[g], atol=1e-9)
