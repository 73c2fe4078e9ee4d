"""The SpimData2 project model: plain dataclasses mirroring the XML.

Every vector here is in numpy order ``(z, y, x)``; the XML's ``(x, y, z)`` is
converted by :mod:`tilefuse.project.xml_read` and :mod:`~tilefuse.project.xml_write`
only.  Elements tilefuse does not understand (an ``<xi:include>``, another
tool's additions, comments) are kept as lxml elements in ``extras`` lists of
``(anchor, element)`` pairs, where ``anchor`` is ``(tag, n)``: they followed
the ``n``-th (from 0; ``-1``: the last) known sibling with that tag (``None``:
they came first), so that saving an unchanged project writes them back in place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..geometry import Box
from .views import ViewId

__all__ = [
    "Extras",
    "Entity",
    "AttributeBlock",
    "ViewSetup",
    "ViewTransform",
    "Timepoints",
    "PairwiseResult",
    "InterestPointsFile",
    "BoundingBox",
    "PsfFile",
    "SpimData",
    "STANDARD_ATTRIBUTES",
]

#: ((tag, n) anchor, element) pairs of unknown XML children, see the module docstring.
Extras = list[tuple[Any, Any]]

#: The attribute kinds BigStitcher knows, with the element name of their entities.
STANDARD_ATTRIBUTES = {
    "illumination": "Illumination",
    "channel": "Channel",
    "tile": "Tile",
    "angle": "Angle",
}


# -- copying ------------------------------------------------------------------------
# Project.copy deep-copies the model (RegistrationResult.apply works on a copy).  copy.deepcopy's generic
# path costs ~1.6 s for 10,000 views (930,000 calls: every ViewId, every float of every tuple); this one
# knows the model's shapes - immutable atoms and tuples of them shared, lists/dicts/arrays rebuilt, anything
# else (lxml elements in extras, Box) handed to copy.deepcopy - and takes ~0.3 s.
_ATOMS = (int, float, bool, str, bytes, type(None), complex)


def _copy_value(value, memo):
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is list:
        return [_copy_value(v, memo) for v in value]
    if kind is dict:
        return {_copy_value(k, memo): _copy_value(v, memo) for k, v in value.items()}
    if isinstance(value, tuple) and all(type(v) in _ATOMS for v in value):  # ViewId, shapes, ...: immutable
        return value
    if kind is np.ndarray:
        return value.copy()
    return copy.deepcopy(value, memo)


def _deepcopy_model(self, memo):
    new = object.__new__(type(self))
    memo[id(self)] = new
    for name in self._field_names:
        object.__setattr__(new, name, _copy_value(getattr(self, name), memo))
    return new


def _model(cls):
    """A dataclass of the model, deep-copied by :func:`_deepcopy_model`."""
    cls = dataclass(cls)
    cls._field_names = tuple(f.name for f in fields(cls))
    cls.__deepcopy__ = _deepcopy_model
    return cls


@_model
class Entity:
    """One entity of an attribute block: a channel, tile, illumination, angle..."""

    id: int
    name: str | None = None
    #: Tile location in physical units, ``(z, y, x)``.
    location: tuple[float, float, float] | None = None
    #: Angle rotation axis, ``(z, y, x)``.
    axis: tuple[float, float, float] | None = None
    degrees: float | None = None
    extras: Extras = field(default_factory=list)


@_model
class AttributeBlock:
    """An ``<Attributes name="...">`` block of ViewSetups."""

    name: str
    entity_tag: str
    entities: dict[int, Entity] = field(default_factory=dict)
    extras: Extras = field(default_factory=list)


@_model
class ViewSetup:
    """A ``<ViewSetup>``: the acquisition settings shared by a view across timepoints."""

    id: int
    name: str | None = None
    #: Image size ``(z, y, x)`` in voxels.
    size: tuple[int, int, int] | None = None
    #: Voxel size ``(z, y, x)`` in ``unit``.
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None
    #: Attribute kind -> entity id, in XML order.
    attributes: dict[str, int] = field(default_factory=dict)
    #: Order of the known children as read, so writing keeps it.
    order: tuple[str, ...] = ("id", "name", "size", "voxelSize", "attributes")
    extras: Extras = field(default_factory=list)
    voxel_size_extras: Extras = field(default_factory=list)
    #: Unknown children of ``<attributes>`` (an ``<xi:include>``, comments).
    attributes_extras: Extras = field(default_factory=list)


@_model
class ViewTransform:
    """One ``<ViewTransform>`` of a registration chain.

    ``matrix`` maps ``(z, y, x, 1)`` to ``(z, y, x, 1)``.  Transforms of another
    type than ``affine`` (Java-only ``generic`` ones) keep their raw element
    and have ``matrix = None``.
    """

    name: str | None
    matrix: np.ndarray | None
    type: str = "affine"
    element: Any = None
    #: Unknown children of an affine ``<ViewTransform>``, kept in place.
    extras: Extras = field(default_factory=list)


@_model
class Timepoints:
    """``<Timepoints>`` in one of its three forms."""

    type: str = "pattern"
    ids: list[int] = field(default_factory=lambda: [0])
    #: Names for ``list`` timepoints (id -> name), when given.
    names: dict[int, str] = field(default_factory=dict)
    #: The original integer pattern text, kept to write it back verbatim.
    pattern: str | None = None
    extras: Extras = field(default_factory=list)
    #: Unknown children of each ``list`` entry ``<Timepoint>``, by timepoint id.
    entry_extras: dict[int, Extras] = field(default_factory=dict)


@_model
class PairwiseResult:
    """A ``<PairwiseResult>``: one registration link between two groups of views."""

    views_a: tuple[ViewId, ...]
    views_b: tuple[ViewId, ...]
    #: World-space correction of B, 4x4 ``zyx``.
    shift: np.ndarray
    correlation: float
    hash: float
    #: Overlap box in world coordinates (``zyx``), or None.
    overlap: Box | None = None
    extras: Extras = field(default_factory=list)


@_model
class InterestPointsFile:
    """A ``<ViewInterestPointsFile>`` reference (points are not loaded)."""

    view: ViewId
    label: str
    params: str
    path: str
    attrib: dict[str, str] = field(default_factory=dict)


@_model
class BoundingBox:
    """A named ``<BoundingBoxDefinition>``: integer world box, inclusive, ``zyx``."""

    name: str
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    extras: Extras = field(default_factory=list)

    @property
    def box(self) -> Box:
        return Box.from_arrays(self.lo, self.hi)


@_model
class PsfFile:
    """A point-spread-function reference of ``<PointSpreadFunctions>``."""

    view: ViewId
    file: str
    extras: Extras = field(default_factory=list)


@_model
class SpimData:
    """The whole ``<SpimData>`` document.

    Optional blocks are ``None`` when absent from the file, and empty when
    present but empty, so that an unchanged project saves as it was read.
    """

    version: str = "0.2"
    base_path: str = "."
    base_path_type: str = "relative"
    #: The raw ``<ImageLoader>`` element (interpreted by tilefuse.loaders).
    image_loader: Any = None
    setups: dict[int, ViewSetup] = field(default_factory=dict)
    attribute_blocks: dict[str, AttributeBlock] = field(default_factory=dict)
    timepoints: Timepoints = field(default_factory=Timepoints)
    missing_views: set[ViewId] | None = None
    registrations: dict[ViewId, list[ViewTransform]] = field(default_factory=dict)
    interest_points: list[InterestPointsFile] | None = field(default_factory=list)
    bounding_boxes: list[BoundingBox] | None = field(default_factory=list)
    psfs: list[PsfFile] | None = field(default_factory=list)
    stitching_results: list[PairwiseResult] | None = field(default_factory=list)
    intensity_adjustments: dict[ViewId, tuple[float, float]] | None = field(default_factory=dict)
    #: Unknown children of each container, keyed by the container's tag.
    extras: dict[str, Extras] = field(default_factory=dict)
    #: Unknown children of each ``<ViewRegistration>``, kept in place.
    registration_extras: dict[ViewId, Extras] = field(default_factory=dict)
    #: Unknown children of each ``<MissingView>``.
    missing_view_extras: dict[ViewId, Extras] = field(default_factory=dict)
    #: Unknown children of each ``<IntensityAdjustments>`` entry.
    intensity_extras: dict[ViewId, Extras] = field(default_factory=dict)
