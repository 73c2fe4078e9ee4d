"""Homogeneous affine matrices in numpy axis order.

The XML stores a ViewTransform as 12 numbers: the row-major 3x4 matrix
``m00 m01 m02 t0 m10 m11 m12 t1 m20 m21 m22 t2`` acting on ``(x, y, z)``.
tilefuse keeps 4x4 matrices acting on ``(z, y, x, 1)``.  Reversing the axes is
a permutation ``P`` (its own inverse), so ``M_zyx = P @ M_xyz @ P``; this module
is the only place that does it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "identity",
    "translation_matrix",
    "scale_matrix",
    "from_xml_affine",
    "to_xml_affine",
    "compose_chain",
    "mipmap_transform",
    "is_translation",
    "translation_part",
    "linear_part",
    "axis_scales",
]

# Reverses (x, y, z) <-> (z, y, x) and keeps the homogeneous coordinate.
_REVERSE_XYZ = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)


def identity(ndim: int = 3) -> np.ndarray:
    """Return the ``(ndim+1, ndim+1)`` identity matrix."""
    return np.eye(ndim + 1)


def translation_matrix(offset: Sequence[float]) -> np.ndarray:
    """Return the homogeneous matrix translating by ``offset`` (numpy axis order)."""
    offset = np.asarray(offset, dtype=np.float64)
    m = np.eye(offset.size + 1)
    m[:-1, -1] = offset
    return m


def scale_matrix(scale: Sequence[float]) -> np.ndarray:
    """Return the homogeneous matrix scaling axis ``i`` by ``scale[i]``."""
    scale = np.asarray(scale, dtype=np.float64)
    m = np.eye(scale.size + 1)
    m[np.arange(scale.size), np.arange(scale.size)] = scale
    return m


def from_xml_affine(numbers: Sequence[float]) -> np.ndarray:
    """Convert the 12 numbers of an XML ``<affine>`` into a 4x4 ``zyx`` matrix.

    Parameters
    ----------
    numbers : sequence of 12 float
        Row-major 3x4 matrix acting on ``(x, y, z)``, as BigStitcher writes it.

    Returns
    -------
    matrix : (4, 4) ndarray
        The same transform acting on ``(z, y, x, 1)``.
    """
    values = np.asarray(numbers, dtype=np.float64)
    if values.shape != (12,):
        raise ValueError(f"an affine has 12 numbers, got {values.size}")
    m_xyz = np.eye(4)
    m_xyz[:3, :] = values.reshape(3, 4)
    return _REVERSE_XYZ @ m_xyz @ _REVERSE_XYZ


def to_xml_affine(matrix: np.ndarray) -> list[float]:
    """Convert a 4x4 ``zyx`` matrix into the 12 XML numbers (row-major, ``xyz``).

    The inverse of :func:`from_xml_affine`.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {matrix.shape}")
    m_xyz = _REVERSE_XYZ @ matrix @ _REVERSE_XYZ
    return [float(v) for v in m_xyz[:3, :].ravel()]


def compose_chain(chain: Iterable[np.ndarray], ndim: int = 3) -> np.ndarray:
    """Compose a ViewTransform chain the way BigStitcher does.

    ``model = T0 @ T1 @ ... @ Tn``: the **last-listed** transform is applied
    first to a voxel coordinate, the first-listed is applied last
    (spimdata ``ViewRegistration.updateModel``).  An empty chain is identity.
    """
    model = np.eye(ndim + 1)
    for t in chain:
        model = model @ t
    return model


def mipmap_transform(factors: Sequence[float]) -> np.ndarray:
    """Map voxel ``i`` of a downsampled level to full-resolution voxel coordinates.

    A level downsampled by ``f`` places its voxel ``i`` at ``f*i + (f-1)/2`` in
    the full-resolution grid (bigdataviewer's ``MipmapTransforms``): the centre
    of the block of ``f`` full-resolution voxels it averages.
    """
    f = np.asarray(factors, dtype=np.float64)
    m = scale_matrix(f)
    m[:-1, -1] = (f - 1.0) / 2.0
    return m


def linear_part(matrix: np.ndarray) -> np.ndarray:
    """The ``(n, n)`` linear block of a homogeneous matrix."""
    return np.asarray(matrix)[:-1, :-1]


def translation_part(matrix: np.ndarray) -> np.ndarray:
    """The translation column of a homogeneous matrix."""
    return np.asarray(matrix)[:-1, -1].copy()


def axis_scales(matrix: np.ndarray) -> np.ndarray:
    """Length of each voxel axis in world units: column norms of the linear part."""
    return np.linalg.norm(linear_part(matrix), axis=0)


def is_translation(matrix: np.ndarray, atol: float = 1e-9) -> bool:
    """True if the linear part of ``matrix`` is the identity."""
    lin = linear_part(matrix)
    return bool(np.allclose(lin, np.eye(lin.shape[0]), rtol=0.0, atol=atol))
