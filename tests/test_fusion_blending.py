"""BigStitcher cosine blending weights."""

from __future__ import annotations

import numpy as np
import pytest

from tilefuse.fusion.blending import adjust_blending, cosine_profile, cosine_weights


def test_ramp_values_1d():
    n, r = 101, 10.0
    w = cosine_profile(np.arange(n), n, r, 0.0)
    assert w[0] == 0.0 and w[-1] == 0.0  # zero exactly at the border voxel
    assert w[5] == pytest.approx(0.5)  # half way up the ramp
    assert w[95] == pytest.approx(0.5)
    assert w[2] == pytest.approx(0.5 * (1 + np.cos(0.8 * np.pi)), abs=1e-7)
    assert np.all(w[10:91] == 1.0)
    assert np.all(np.diff(w[:11]) > 0)  # monotone ramp
    np.testing.assert_allclose(w, w[::-1], atol=1e-7)  # symmetric


def test_border_shifts_the_ramp():
    n, r, b = 60, 8.0, 3.0
    w = cosine_profile(np.arange(n, dtype=float), n, r, b)
    assert np.all(w[:4] == 0.0) and np.all(w[-4:] == 0.0)  # dist <= 0 up to l = 3
    assert w[7] == pytest.approx(0.5)  # dist = 4 = r / 2
    assert w[11] == pytest.approx(1.0) and w[10] < 1.0
    # negative border (deconvolution uses -8): the edge voxel already has weight
    wn = cosine_profile(np.arange(n, dtype=float), n, 12.0, -8.0)
    assert wn[0] == pytest.approx(0.5 * (1 + np.cos((1 - 8 / 12) * np.pi)))


def test_subvoxel_coordinates_and_hard_edge():
    w = cosine_profile(np.array([-0.2, 0.0, 0.5, 1.0, 19.0, 19.3]), 20, 2.0, 0.0)
    np.testing.assert_allclose(w, [0, 0, 0.5 * (1 + np.cos(0.75 * np.pi)), 0.5, 0, 0], atol=1e-7)
    hard = cosine_profile(np.array([0.0, 0.1, 10.0, 18.9, 19.0]), 20, 0.0, 0.0)
    np.testing.assert_array_equal(hard, [0, 1, 1, 1, 0])


def test_weights_on_shape_are_outer_product():
    shape = (7, 30, 41)
    rng, brd = (2.0, 6.0, 9.5), (0.0, 1.0, 0.5)
    w = cosine_weights(shape, rng, brd)
    assert w.shape == shape and w.dtype == np.float32
    expect = np.einsum(
        "i,j,k->ijk",
        *[cosine_profile(np.arange(n), n, r, b) for n, r, b in zip(shape, rng, brd)],
    )
    np.testing.assert_allclose(w, expect, rtol=1e-6)
    assert w.max() == pytest.approx(1.0)


def test_open_grid_and_full_coordinates_agree():
    shape = (25, 33)
    rng = np.random.default_rng(0)
    ys = rng.uniform(-1, 26, 12)
    xs = rng.uniform(-1, 34, 9)
    w_open = cosine_weights([ys[:, None], xs[None, :]], 5.0, 1.0, view_shape=shape)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    w_full = cosine_weights([yy, xx], 5.0, 1.0, view_shape=shape)
    assert w_open.shape == (12, 9)
    np.testing.assert_array_equal(w_open, w_full)
    with pytest.raises(ValueError):
        cosine_weights([yy, xx], 5.0, 1.0)


def test_singleton_axis_does_not_blend():
    w = cosine_weights((1, 20, 20), 4.0, 0.0)
    np.testing.assert_allclose(w[0], cosine_weights((20, 20), 4.0, 0.0))
    assert w[0, 10, 10] == 1.0


def test_two_tiles_partition_of_weights():
    """Normalised weights of two overlapping 1D tiles sum to 1 and ramp smoothly."""
    n, offset, r = 100, 70, 20.0
    x = np.arange(offset + n, dtype=float)
    w1 = cosine_profile(x, n, r)
    w2 = cosine_profile(x - offset, n, r)
    both = (w1 + w2) > 0
    f1 = np.where(both, w1 / np.where(both, w1 + w2, 1), 0)
    # in the 30-voxel overlap tile 1 hands over to tile 2 monotonically
    assert np.all(np.diff(f1[offset:n]) <= 1e-7)
    assert f1[offset + 1] > 0.99 and f1[n - 2] < 0.01


def test_adjust_blending_divides_by_axis_scale():
    a = np.diag([2.7357, 1.0, 1.0, 1.0])
    rng, brd = adjust_blending(40.0, 5.0, a)
    np.testing.assert_allclose(rng, [40 / 2.7357, 40, 40])
    np.testing.assert_allclose(brd, [5 / 2.7357, 5, 5])
    # a rotation does not change the column norms
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.eye(3)
    rot[:2, :2] = [[2 * c, -s], [2 * s, c]]
    rng2, _ = adjust_blending(40.0, 0.0, rot)
    np.testing.assert_allclose(rng2, [20, 40])


def test_profiles_of_many_views_equal_each_views_profile_bit_for_bit():
    """cosine_profiles (all the views of a chunk in one call) gives, element by element, exactly
    cosine_profile's value for that element's view: ramps, hard edges, borders, singleton axes."""
    from tilefuse.fusion.blending import cosine_profiles

    rng = np.random.default_rng(3)
    coords, ns, ranges, borders, want = [], [], [], [], []
    for n, r, b in [(512, 40.0, 0.0), (300, 12.5, 3.0), (64, 0.0, 0.0), (1, 40.0, 0.0), (90, 7.0, -8.0),
                    (2, 40.0, 0.0), (700, 40.0 / 3.0, 0.5)]:
        c = rng.uniform(-2.0, n + 1.0, 257) + rng.integers(0, 2) * 1e4  # far from 0: float64 rounding in play
        c -= rng.integers(0, 2) * 1e4
        coords.append(c)
        ns.append(np.full(c.size, n))
        ranges.append(np.full(c.size, r))
        borders.append(np.full(c.size, b))
        want.append(cosine_profile(c, n, r, b))
    got = cosine_profiles(np.concatenate(coords), np.concatenate(ns), np.concatenate(ranges),
                          np.concatenate(borders))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.concatenate(want))
    assert 0.0 < got.mean() < 1.0 and (got == 0.0).any() and (got == 1.0).any()
