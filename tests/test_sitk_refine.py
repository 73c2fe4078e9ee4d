"""Optional SimpleITK refinement: recovers translations and small rotations; works inside pairwise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import tilefuse
from tilefuse.demo import make_sample_project, score_registration

sitk = pytest.importorskip("SimpleITK")
from tilefuse.registration.sitk_refine import refine_with_sitk  # noqa: E402


def _texture(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 2.0) * 1000


def test_translation_from_a_rough_start():
    img = _texture((300, 300))
    true = np.array([2.4, -3.7])
    moved = ndimage.shift(img, true, order=3)
    fixed, moving = img[50:250, 50:250], moved[50:250, 50:250]
    r = refine_with_sitk(fixed, moving, [-2.0, 4.0], transform="translation")
    np.testing.assert_allclose(r.shift, -true, atol=0.05)
    assert r.correlation > 0.99


def test_rigid_finds_a_rotation():
    img = _texture((320, 320), 1)
    rotated = ndimage.rotate(img, 1.5, reshape=False, order=3)
    r = refine_with_sitk(img[60:260, 60:260][None], rotated[60:260, 60:260][None], [0, 0, 0], transform="rigid")
    angle = np.degrees(np.arctan2(r.matrix[1, 2], r.matrix[1, 1]))
    assert abs(abs(angle) - 1.5) < 0.1
    assert r.matrix.shape == (4, 4) and r.shift[0] == 0


def test_refine_in_pairwise(tmp_path):
    project = make_sample_project(tmp_path, ndim=2, grid=(1, 3), tile_shape=(128, 128), overlap=0.25, seed=6,
                                  factors=[(1, 1, 1)])
    result = tilefuse.register(project, refine="translation")
    assert all("sitk_matrix" in link.info for link in result.links)
    score = score_registration(result.apply(project), tmp_path / "truth.json")
    assert score["mean"] < 0.2, score
    with pytest.raises(tilefuse.OptionError, match="refine: must be one of 'translation', 'rigid', 'affine'"):
        tilefuse.register(project, refine="bspline")


def test_global_rigid_model_recovers_a_rotated_tile(tmp_path):
    """Three tiles cut from one image, the middle one rotated by 1 degree about its centre."""
    big = _texture((200, 360), 3)
    th = np.radians(1.0)
    tiles, positions = [], []
    for i, x0 in enumerate((0.0, 110.0, 220.0)):
        yy, xx = np.mgrid[0:140, 0:140].astype(np.float64)
        if i == 1:  # rotate sampling coordinates about the tile centre
            cy, cx = 69.5, 69.5
            y2 = cy + np.cos(th) * (yy - cy) - np.sin(th) * (xx - cx)
            x2 = cx + np.sin(th) * (yy - cy) + np.cos(th) * (xx - cx)
            yy, xx = y2, x2
        tile = ndimage.map_coordinates(big, [yy + 30, xx + x0], order=3)
        tiles.append(tile.astype(np.float32)[None])
        positions.append((0, 30, x0))
    project = tilefuse.write_project(tmp_path / "d.xml", tiles, positions, voxel_size=(1, 1, 1),
                                     factors=[(1, 1, 1)])
    plain = tilefuse.register(project)
    rigid = tilefuse.register(project, refine="rigid", model="rigid")
    m = rigid.transform((0, 1, 0))
    angle = np.degrees(np.arctan2(m[1, 2], m[1, 1]))
    assert abs(abs(angle) - 1.0) < 0.15, angle
    assert np.allclose(plain.transform((0, 1, 0))[1:3, 1:3], np.eye(2))
    # the rigid result maps the middle tile's corners where the truth puts them (< 0.5 px)
    registered = rigid.apply(project)
    model = registered.model(registered.views[1])
    model0 = registered.model(registered.views[0])
    for corner in ([0, 0, 0], [0, 139, 0], [0, 0, 139], [0, 139, 139]):
        c = np.asarray(corner, float)
        y, x = c[1], c[2]
        cy = cx = 69.5
        true_y = 30 + cy + np.cos(th) * (y - cy) - np.sin(th) * (x - cx)
        true_x = 110 + cx + np.sin(th) * (y - cy) + np.cos(th) * (x - cx)
        got = (model @ np.append(c, 1))[:3] - model0[:3, 3] + [0, 30, 0]
        assert np.hypot(got[1] - true_y, got[2] - true_x) < 0.5, (corner, got, true_y, true_x)
