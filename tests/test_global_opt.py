"""solve_translations on synthetic tile graphs with known ground truth."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tilefuse.errors import RegistrationError
from tilefuse.registration.global_opt import PRESETS, GlobalSolution, ShiftConstraint, solve_translations


def _grid_links(ny, nx, truth, rng, noise=0.05, corr=(0.7, 0.95), key=lambda i: i):
    """Links between 4-neighbours of an ny x nx grid, t_b - t_a = truth_b - truth_a + noise."""
    links = []
    for y in range(ny):
        for x in range(nx):
            i = y * nx + x
            for j in ([i + 1] if x + 1 < nx else []) + ([i + nx] if y + 1 < ny else []):
                shift = truth[j] - truth[i] + rng.normal(0, noise, truth.shape[1])
                links.append(ShiftConstraint(key(i), key(j), shift, rng.uniform(*corr)))
    return links


def _as_array(sol, keys):
    return np.array([sol.translations[k] for k in keys])


@pytest.mark.parametrize("dim", [2, 3])
def test_grid_recovers_truth(dim):
    rng = np.random.default_rng(dim)
    truth = rng.normal(0, 4, (100, dim))
    links = _grid_links(10, 10, truth, rng)
    sol = solve_translations(100, links)
    assert isinstance(sol, GlobalSolution)
    t = _as_array(sol, range(100))
    np.testing.assert_array_equal(t[0], 0)  # first group of the component is held
    np.testing.assert_allclose(t, truth - truth[0], atol=0.25)
    assert sol.accepted.all() and sol.n_removed == 0 and sol.converged
    assert sol.mean_residual < 0.1 and sol.max_residual < 0.3
    assert sol.status == ("accepted",) * len(links)
    assert len(sol.components) == 1


def test_noise_free_solution_is_exact_and_keys_are_hashable():
    rng = np.random.default_rng(0)
    keys = [f"tile{i}" for i in range(12)]
    truth = rng.normal(0, 3, (12, 3))
    links = _grid_links(3, 4, truth, rng, noise=0.0, key=lambda i: keys[i])
    sol = solve_translations(keys, links)
    np.testing.assert_allclose(_as_array(sol, keys), truth - truth[0], atol=1e-9)
    np.testing.assert_allclose(sol.residuals, 0, atol=1e-9)


def test_outliers_rejected_and_truth_recovered():
    rng = np.random.default_rng(11)
    truth = rng.normal(0, 4, (100, 3))
    links = _grid_links(10, 10, truth, rng)
    bad = [7, 61, 120, 150]  # far apart; correlations as good as the rest
    for k in bad:
        lk = links[k]
        links[k] = ShiftConstraint(lk.a, lk.b, lk.shift + np.array([9.0, -6.0, 12.0]), 0.9)
    sol = solve_translations(100, links)
    assert sorted(np.flatnonzero(~sol.accepted)) == bad
    for k in bad:
        assert sol.reasons[k].startswith("removed by iterative rejection (residual")
        assert sol.residuals[k] > 10
    np.testing.assert_allclose(_as_array(sol, range(100)), truth - truth[0], atol=0.25)
    assert sol.n_removed == 4 and sol.converged

    # with rejection disabled the outliers drag the solution away
    off = solve_translations(100, links, rel_threshold=math.inf, abs_threshold=math.inf)
    assert off.accepted.all()
    assert np.abs(_as_array(off, range(100)) - (truth - truth[0])).max() > 2


def test_one_outlier_that_inflates_the_mean_is_still_removed():
    # A 2x3 grid with diagonals, small stage errors (residuals ~1) and one diagonal link 14 px off:
    # the outlier drags its neighbours' residuals up, so 'mean * 5 < max' holds no more (masking);
    # beyond the absolute threshold and 5x the median residual it is removed all the same.
    rng = np.random.default_rng(5)
    truth = rng.normal(0, 4, (6, 2))
    pairs = [(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (1, 4), (2, 5), (0, 4), (1, 3), (1, 5), (2, 4)]
    links = [ShiftConstraint(a, b, truth[b] - truth[a] + rng.normal(0, 1.0, 2), rng.uniform(0.85, 0.95))
             for a, b in pairs]
    k = pairs.index((1, 5))
    links[k] = ShiftConstraint(1, 5, truth[5] - truth[1] + np.array([10.0, -10.0]), 0.66)
    sol = solve_translations(6, links)
    assert not sol.accepted[k] and sol.accepted.sum() == len(links) - 1, sol.reasons
    np.testing.assert_allclose(_as_array(sol, range(6)), truth - truth[0], atol=1.5)
    assert sol.residuals[k] > 7 and sol.reasons[k].startswith("removed by iterative rejection")


def test_presets():
    assert PRESETS == {"strict": (2.5, 3.5), "relaxed": (5.0, 7.0),
                       "none": (math.inf, math.inf)}
    rng = np.random.default_rng(2)
    truth = rng.normal(0, 4, (25, 2))
    links = _grid_links(5, 5, truth, rng)
    links[3] = ShiftConstraint(links[3].a, links[3].b, links[3].shift + 2.5, 0.9)  # moderate error
    rel, ab = PRESETS["strict"]
    strict = solve_translations(25, links, rel_threshold=rel, abs_threshold=ab)
    rel, ab = PRESETS["none"]
    none = solve_translations(25, links, rel_threshold=rel, abs_threshold=ab)
    assert not strict.accepted[3] and none.accepted.all()


def test_bridge_outlier_is_kept():
    """A link whose removal disconnects the graph is never removed."""
    rng = np.random.default_rng(4)
    truth = rng.normal(0, 4, (10, 3))
    links = _grid_links(3, 3, truth[:9], rng)  # loopy 3x3 block: groups 0..8
    links.append(ShiftConstraint(8, 9, truth[9] - truth[8] + 25.0, 0.5))  # group 9 hangs on one bad link
    assert (links[7].a, links[7].b) == (4, 5)
    links[7] = ShiftConstraint(4, 5, links[7].shift + 15.0, 0.9)  # and one inside the block
    rel, ab = PRESETS["strict"]  # a 3x3 block spreads the error: relaxed accepts it
    sol = solve_translations(10, links, rel_threshold=rel, abs_threshold=ab)
    assert sol.accepted[-1] and not sol.accepted[7]
    assert sol.accepted.sum() == len(links) - 1
    t = _as_array(sol, range(10))
    np.testing.assert_allclose(t[:9], truth[:9] - truth[0], atol=0.25)
    np.testing.assert_allclose(t[9] - t[8], links[-1].shift, atol=1e-9)  # follows the bridge
    assert sol.residuals[-1] == pytest.approx(0, abs=1e-9)


def test_inconsistent_triangle_cannot_lose_links_below_a_tree():
    """Only bridges left -> stop, report not converged, nothing disconnected."""
    links = [ShiftConstraint(0, 1, [10.0, 0]), ShiftConstraint(1, 2, [0, 10.0]), ShiftConstraint(0, 2, [-30.0, 0])]
    sol = solve_translations(3, links)
    assert sol.accepted.sum() == 2  # one removed, the rest is a tree (all bridges)
    assert sol.converged and len(sol.components) == 1


def test_prefilter_reasons():
    links = [
        ShiftConstraint(0, 1, [1.0, 0.0], 0.2),
        ShiftConstraint(1, 2, [50.0, 0.0], 0.9),
        ShiftConstraint(0, 2, [1.0, 1.0], float("-inf")),
        ShiftConstraint(2, 3, [0.0, 1.0], 0.9),
        ShiftConstraint(3, 3, [0.0, 0.0], 0.9),
    ]
    sol = solve_translations(4, links, min_correlation=0.3, max_shift=20)
    assert sol.reasons[0] == "correlation below 0.3 (r = 0.200)"
    assert sol.reasons[1].startswith("shift above max_shift [20.0, 20.0]")
    assert sol.reasons[2].startswith("correlation is not finite")
    assert sol.reasons[3] == ""
    assert sol.reasons[4] == "links a group to itself"
    assert sol.status[3] == "accepted" and sol.status[0].startswith("rejected: correlation")
    # rejected links are reported against the final solution
    np.testing.assert_allclose(sol.residuals[0], 1.0)
    # per-axis max_shift
    per_axis = solve_translations(4, links, min_correlation=0.0, max_shift=(60, 0.5))
    assert per_axis.accepted[1] and not per_axis.accepted[3]


def test_fixed_groups():
    rng = np.random.default_rng(8)
    truth = rng.normal(0, 4, (16, 3))
    links = _grid_links(4, 4, truth, rng, noise=0.0)
    sol = solve_translations(16, links, fixed=[5])
    t = _as_array(sol, range(16))
    np.testing.assert_array_equal(t[5], 0)
    np.testing.assert_allclose(t, truth - truth[5], atol=1e-9)
    # two fixed groups: both stay at 0, the rest is a compromise
    two = solve_translations(16, links, fixed=[0, 15])
    np.testing.assert_array_equal(two.translations[0], 0)
    np.testing.assert_array_equal(two.translations[15], 0)


def test_link_weight_defaults():
    assert ShiftConstraint(0, 1, [0, 0], 0.5).weight == 0.5
    assert ShiftConstraint(0, 1, [0, 0], 2.0).weight == 1.0
    assert ShiftConstraint(0, 1, [0, 0], -0.3).weight == 0.01
    assert ShiftConstraint(0, 1, [0, 0], 0.5, weight=3.0).weight == 3.0
    # weights matter: two contradicting links, the heavier one wins more
    sol = solve_translations(2, [ShiftConstraint(0, 1, [0.0], 1.0, weight=3.0), ShiftConstraint(0, 1, [4.0], 1.0)],
                             rel_threshold=math.inf, abs_threshold=math.inf)
    np.testing.assert_allclose(sol.translations[1], [1.0])


def test_disconnected_components_without_weak_links_do_not_move():
    rng = np.random.default_rng(9)
    truth = rng.normal(0, 4, (8, 3))
    links = [lk for lk in _grid_links(2, 4, truth, rng, noise=0.0) if {lk.a, lk.b} != {1, 2}
             and {lk.a, lk.b} != {5, 6}]  # split the 2x4 grid into two 2x2 blocks
    sol = solve_translations(list(range(8)) + [8], links)  # group 8: no link at all
    assert len(sol.components) == 3
    t = _as_array(sol, range(9))
    np.testing.assert_allclose(t[[0, 1, 4, 5]], truth[[0, 1, 4, 5]] - truth[0], atol=1e-9)
    np.testing.assert_allclose(t[[2, 3, 6, 7]], truth[[2, 3, 6, 7]] - truth[2], atol=1e-9)
    np.testing.assert_array_equal(t[8], 0)


def test_weak_links_keep_stage_relative_positions():
    rng = np.random.default_rng(10)
    truth = rng.normal(0, 2, (8, 3))
    truth[[2, 3, 6, 7]] += np.array([5.0, -3.0, 1.0])  # block B drifted as a whole
    strong = [lk for lk in _grid_links(2, 4, truth, rng, noise=0.0)
              if {lk.a, lk.b} not in ({1, 2}, {5, 6})]
    weak = [(1, 2), (5, 6), (3, 8)]  # group 8 has no strong link
    sol = solve_translations(9, strong, weak_links=weak)
    t = _as_array(sol, range(9))
    # block A holds group 0; block A and B keep their internal (strong) geometry
    np.testing.assert_allclose(t[[0, 1, 4, 5]], truth[[0, 1, 4, 5]] - truth[0], atol=1e-9)
    np.testing.assert_allclose(t[[3, 6, 7]] - t[2], truth[[3, 6, 7]] - truth[2], atol=1e-9)
    # block B moves rigidly so that weak links are satisfied on average
    mean_weak = np.mean([t[2] - t[1], t[6] - t[5]], axis=0)
    np.testing.assert_allclose(mean_weak, 0, atol=1e-9)
    # the lone group follows its weak neighbour (stage-relative position kept)
    np.testing.assert_allclose(t[8], t[3], atol=1e-9)
    # weak links are not reported as links
    assert sol.residuals.shape == (len(strong),)


def test_weak_links_respect_fixed_blocks():
    strong = [ShiftConstraint(0, 1, [2.0, 0.0]), ShiftConstraint(2, 3, [0.0, 2.0])]
    sol = solve_translations(4, strong, fixed=[3], weak_links=[(1, 2)])
    np.testing.assert_array_equal(sol.translations[3], 0)  # its block stays put
    np.testing.assert_allclose(sol.translations[2], [0.0, -2.0])
    np.testing.assert_allclose(sol.translations[1], sol.translations[2])
    np.testing.assert_allclose(sol.translations[0], [-2.0, -2.0])


def test_large_grid_is_fast():
    rng = np.random.default_rng(12)
    truth = rng.normal(0, 4, (600, 3))
    links = _grid_links(20, 30, truth, rng)
    for k in rng.choice(len(links), 5, replace=False):
        links[k] = ShiftConstraint(links[k].a, links[k].b, links[k].shift + 20.0, 0.8)
    start = time.perf_counter()
    sol = solve_translations(600, links)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert sol.n_removed == 5
    np.testing.assert_allclose(_as_array(sol, range(600)), truth - truth[0], atol=0.4)


def test_bad_input_raises():
    with pytest.raises(RegistrationError, match="unknown group 'x'"):
        solve_translations(3, [ShiftConstraint(0, "x", [1.0, 2.0])])
    with pytest.raises(RegistrationError, match="differ in length"):
        solve_translations(3, [ShiftConstraint(0, 1, [1.0, 2.0]), ShiftConstraint(1, 2, [1.0, 2.0, 3.0])])
    with pytest.raises(RegistrationError, match="fixed group 7"):
        solve_translations(3, [ShiftConstraint(0, 1, [1.0])], fixed=[7])
    with pytest.raises(RegistrationError, match="duplicate"):
        solve_translations([0, 0], [])


def test_no_links():
    sol = solve_translations(["a", "b"], [], ndim=2)
    np.testing.assert_array_equal(sol.translations["a"], [0, 0])
    assert sol.mean_residual == 0 and sol.residuals.shape == (0,)
