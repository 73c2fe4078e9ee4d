"""Axis-aligned boxes in world or voxel space, and overlap tests.

Boxes are closed intervals ``[lo, hi]`` per axis in numpy axis order.  A view's
world box is the box around its transformed voxel *centres* ``[0, n-1]``, the
convention BigStitcher uses for overlaps and bounding boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

__all__ = ["Box", "transform_box", "view_box", "intersect_boxes", "boxes_intersecting"]


@dataclass(frozen=True)
class Box:
    """A closed axis-aligned box ``[lo, hi]`` (numpy axis order)."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.lo) != len(self.hi):
            raise ValueError(f"box corners differ in length: {self.lo} vs {self.hi}")

    @classmethod
    def from_arrays(cls, lo, hi) -> Box:
        return cls(tuple(float(v) for v in lo), tuple(float(v) for v in hi))

    @property
    def ndim(self) -> int:
        return len(self.lo)

    @property
    def size(self) -> np.ndarray:
        """Extent ``hi - lo`` per axis (negative where the box is empty)."""
        return np.asarray(self.hi) - np.asarray(self.lo)

    @property
    def is_empty(self) -> bool:
        return bool(np.any(self.size < 0))

    @property
    def volume(self) -> float:
        return 0.0 if self.is_empty else float(np.prod(self.size))

    def intersect(self, other: Box) -> Box:
        return Box.from_arrays(np.maximum(self.lo, other.lo), np.minimum(self.hi, other.hi))

    def union(self, other: Box) -> Box:
        return Box.from_arrays(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def grow(self, margin) -> Box:
        m = np.broadcast_to(np.asarray(margin, dtype=np.float64), (self.ndim,))
        return Box.from_arrays(np.asarray(self.lo) - m, np.asarray(self.hi) + m)

    def corners(self) -> np.ndarray:
        """The ``2**ndim`` corners as an ``(2**ndim, ndim)`` array."""
        return np.array(list(product(*zip(self.lo, self.hi))), dtype=np.float64)


def transform_box(matrix: np.ndarray, box: Box) -> Box:
    """Bounding box of ``box`` mapped through the homogeneous ``matrix``."""
    corners = box.corners()
    mapped = corners @ matrix[:-1, :-1].T + matrix[:-1, -1]
    return Box.from_arrays(mapped.min(axis=0), mapped.max(axis=0))


def view_box(matrix: np.ndarray, shape) -> Box:
    """World box of the voxel centres of an image of ``shape`` under ``matrix``."""
    shape = np.asarray(shape, dtype=np.float64)
    return transform_box(matrix, Box.from_arrays(np.zeros_like(shape), shape - 1.0))


def intersect_boxes(a: Box, b: Box) -> Box | None:
    """The intersection of two boxes, or ``None`` if they do not meet."""
    box = a.intersect(b)
    return None if box.is_empty else box


def boxes_intersecting(los: np.ndarray, his: np.ndarray, lo, hi) -> np.ndarray:
    """Vectorised box test: indices of the boxes ``[los[i], his[i]]`` meeting ``[lo, hi]``.

    Parameters
    ----------
    los, his : (n, ndim) ndarray
        Lower and upper corners of ``n`` boxes.
    lo, hi : (ndim,) array_like
        The query box.
    """
    los = np.asarray(los, dtype=np.float64)
    his = np.asarray(his, dtype=np.float64)
    hit = np.all((los <= np.asarray(hi)) & (his >= np.asarray(lo)), axis=1)
    return np.flatnonzero(hit)
