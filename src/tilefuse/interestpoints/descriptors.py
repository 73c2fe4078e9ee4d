"""Geometric local descriptors of point clouds and candidate matches between two clouds.

Two of BigStitcher's descriptor families (Preibisch et al. 2010,
doi:10.1038/nmeth0610-418), rewritten with numpy and scipy's KD-tree:

* **rotation-invariant** (BigStitcher's "fast descriptor-based, rotation
  invariant", geometric hashing): a point and three of its nearest
  neighbours span a local frame - x towards the farthest of the three, z
  normal to the plane of the nearest and x (on the side of the second), y
  completing it; the descriptor is the farthest neighbour's distance and the
  other two neighbours in that frame (6 numbers), unchanged by any rotation
  and translation of the cloud;
* **translation-invariant** (BigStitcher's "fast descriptor-based,
  translation invariant", RGLDM): the offsets of ``n`` nearest neighbours,
  nearest first (``3 n`` numbers), unchanged by a translation only.

With redundancy ``r`` every point gets one descriptor per choice of the
neighbours among its ``n + r`` nearest (robust to a missing or extra
neighbour).  A point of cloud A is a candidate for the point of B whose
descriptor is nearest to one of its descriptors when that distance
(squared) is ``ratio`` times smaller than the nearest descriptor of any
*other* point of B (the nearest ``C + 1`` descriptors, ``C`` per point,
always hold one).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

__all__ = ["rotation_invariant", "translation_invariant", "descriptor_candidates", "describe"]


def _neighbours(points: np.ndarray, k: int) -> np.ndarray | None:
    """Indices of each point's ``k`` nearest other points, nearest first; None if there are too few points."""
    from scipy.spatial import cKDTree

    if len(points) < k + 1:
        return None
    _, idx = cKDTree(points).query(points, k=k + 1)
    return idx[:, 1:]


def _subsets(total: int, size: int) -> np.ndarray:
    return np.array(list(combinations(range(total), size)), dtype=np.intp)


def rotation_invariant(points: np.ndarray, redundancy: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Local-frame descriptors: ``(descriptors (m, 6), owner point of each (m,), descriptors per point)``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    subsets = _subsets(3 + redundancy, 3)
    near = _neighbours(points, 3 + redundancy)
    if near is None:
        return np.zeros((0, 6)), np.zeros(0, dtype=np.intp), len(subsets)
    out, owner = [], []
    for subset in subsets:
        rel = points[near[:, subset]] - points[:, None, :]  # (n, 3 neighbours, 3); nearest first
        b, c, d = rel[:, 0], rel[:, 1], rel[:, 2]
        length = np.linalg.norm(d, axis=1)
        x = d / np.maximum(length, 1e-300)[:, None]
        z = np.cross(b, x)
        zn = np.linalg.norm(z, axis=1)
        ok = (length > 1e-9) & (zn > 1e-9 * np.maximum(np.linalg.norm(b, axis=1), 1e-300))
        z = z / np.maximum(zn, 1e-300)[:, None]
        z *= np.where(np.sum(z * c, axis=1) < 0, -1.0, 1.0)[:, None]
        y = np.cross(z, x)
        desc = np.column_stack([length, np.sum(b * x, 1), np.sum(b * y, 1),
                                np.sum(c * x, 1), np.sum(c * y, 1), np.sum(c * z, 1)])
        out.append(desc[ok])
        owner.append(np.flatnonzero(ok))
    return np.concatenate(out), np.concatenate(owner), len(subsets)


def translation_invariant(points: np.ndarray, neighbours: int = 3, redundancy: int = 1,
                          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Neighbour-offset descriptors: ``(descriptors (m, 3 n), owner (m,), descriptors per point)``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    subsets = _subsets(neighbours + redundancy, neighbours)
    near = _neighbours(points, neighbours + redundancy)
    if near is None:
        return np.zeros((0, 3 * neighbours)), np.zeros(0, dtype=np.intp), len(subsets)
    out = []
    for subset in subsets:
        rel = points[near[:, subset]] - points[:, None, :]
        out.append(rel.reshape(len(points), -1))
    owner = np.tile(np.arange(len(points)), len(subsets))
    return np.concatenate(out), owner, len(subsets)


def describe(points: np.ndarray, method: str, *, neighbours: int = 3, redundancy: int = 0):
    """The descriptors of ``method`` (``"rotation-invariant"`` or ``"translation-invariant"``)."""
    if method == "rotation-invariant":
        return rotation_invariant(points, redundancy)
    if method == "translation-invariant":
        return translation_invariant(points, neighbours, redundancy)
    raise ValueError(f"no descriptors for method {method!r}")


def descriptor_candidates(desc_a: np.ndarray, owner_a: np.ndarray, desc_b: np.ndarray, owner_b: np.ndarray,
                          per_point: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate matches ``(points of A, points of B)`` that pass the ratio test, each pair once, sorted."""
    from scipy.spatial import cKDTree

    empty = np.zeros(0, dtype=np.intp)
    if not len(desc_a) or len(np.unique(owner_b)) < 2:
        return empty, empty
    k = min(per_point + 1, len(desc_b))
    dist, idx = cKDTree(desc_b).query(desc_a, k=k)
    dist, idx = dist.reshape(len(desc_a), k), idx.reshape(len(desc_a), k)
    best_owner = owner_b[idx[:, 0]]
    other = owner_b[idx] != best_owner[:, None]
    has_other = other.any(axis=1)
    second = np.where(has_other, dist[np.arange(len(dist)), np.argmax(other, axis=1)], np.inf)
    good = has_other & (dist[:, 0] ** 2 * ratio <= second ** 2)
    pairs = np.unique(np.column_stack([owner_a[good], best_owner[good]]), axis=0)
    if not len(pairs):
        return empty, empty
    return pairs[:, 0].astype(np.intp), pairs[:, 1].astype(np.intp)
