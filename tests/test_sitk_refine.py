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
    with pytest.raises(tilefuse.RegistrationError, match="refine must be one of"):
        tilefuse.register(project, refine="bspline")
