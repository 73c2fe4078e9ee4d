"""Pure geometry: homogeneous affines and axis-aligned boxes.  No I/O here.

Conventions
-----------
* Every vector and matrix here is in numpy axis order: ``(z, y, x)`` in 3D,
  ``(y, x)`` in 2D.  The XML's ``(x, y, z)`` order is converted in exactly one
  place, :func:`tilefuse.geometry.affine.from_xml_affine` /
  :func:`~tilefuse.geometry.affine.to_xml_affine`.
* A transform is an ``(n+1, n+1)`` homogeneous matrix acting on column vectors:
  ``world = M @ [z, y, x, 1]``.
* Voxel centres sit at integer coordinates (imglib2's convention): a view of
  shape ``n`` covers ``[-0.5, n - 0.5]`` and its voxel centres span ``[0, n-1]``.
"""

from .affine import (
    compose_chain,
    from_xml_affine,
    identity,
    is_translation,
    mipmap_transform,
    scale_matrix,
    to_xml_affine,
    translation_matrix,
    translation_part,
)
from .boxes import Box, boxes_intersecting, intersect_boxes, transform_box, view_box

__all__ = [
    "Box",
    "boxes_intersecting",
    "compose_chain",
    "from_xml_affine",
    "identity",
    "intersect_boxes",
    "is_translation",
    "mipmap_transform",
    "scale_matrix",
    "to_xml_affine",
    "transform_box",
    "translation_matrix",
    "translation_part",
    "view_box",
]
