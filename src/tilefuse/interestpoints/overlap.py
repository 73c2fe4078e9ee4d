"""Which views overlap, for views at any angle: boxes tested in each other's voxel frames."""

from __future__ import annotations

from itertools import product

import numpy as np

__all__ = ["to_world", "to_voxels", "inside_view", "views_meet"]


def to_world(model: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """``(n, 3)`` voxel coordinates ``(z, y, x)`` through a 4x4 model."""
    voxels = np.asarray(voxels, dtype=np.float64).reshape(-1, 3)
    return voxels @ model[:3, :3].T + model[:3, 3]


def to_voxels(model: np.ndarray, world: np.ndarray) -> np.ndarray:
    """World points into a view's voxel coordinates (the model inverted)."""
    return to_world(np.linalg.inv(model), world)


def inside_view(model: np.ndarray, shape, world: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Which world points fall inside a view (its voxel centres' box, grown by ``margin`` voxels)."""
    vox = to_voxels(model, world)
    hi = np.asarray(shape, dtype=np.float64) - 1.0 + margin
    return np.all((vox >= -margin) & (vox <= hi), axis=1)


def _corners(lo, hi) -> np.ndarray:
    return np.array(list(product(*zip(lo, hi))), dtype=np.float64)


def views_meet(model_a: np.ndarray, shape_a, model_b: np.ndarray, shape_b, margin: float = 0.0) -> bool:
    """Whether two views (voxel boxes under their models) may overlap.

    Each box's corners are mapped into the other's voxel frame; the views are
    taken to meet when both bounding boxes there cut the other view (a
    separating-axis test on the two boxes' own axes: exact for boxes that
    are axis-aligned in one frame, conservative otherwise).
    """
    for m1, s1, m2, s2 in ((model_a, shape_a, model_b, shape_b), (model_b, shape_b, model_a, shape_a)):
        corners = to_world(m1, _corners(np.zeros(3), np.asarray(s1, dtype=np.float64) - 1.0))
        vox = to_voxels(m2, corners)
        lo, hi = vox.min(axis=0), vox.max(axis=0)
        if np.any(hi < -margin) or np.any(lo > np.asarray(s2, dtype=np.float64) - 1.0 + margin):
            return False
    return True
