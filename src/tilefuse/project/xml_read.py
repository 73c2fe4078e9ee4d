"""Parse a SpimData2 XML document into :class:`~tilefuse.project.model.SpimData`.

Every error names the file and the element, e.g.
``dataset.xml, <ViewRegistration timepoint="0" setup="3"> <affine>: has 0 numbers, expected 12``.
This module and :mod:`.xml_write` are the only places where ``x, y, z`` vectors
of the XML are turned into numpy's ``z, y, x``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lxml import etree

from ..errors import MissingDataError, ProjectFormatError, where
from ..geometry import Box, from_xml_affine
from .model import (
    STANDARD_ATTRIBUTES,
    AttributeBlock,
    BoundingBox,
    Entity,
    Extras,
    InterestPointsFile,
    PairwiseResult,
    PsfFile,
    SpimData,
    Timepoints,
    ViewSetup,
    ViewTransform,
)
from .timepoints import parse_integer_pattern
from .views import ViewId

__all__ = ["read_spimdata", "parse_spimdata"]


class _Ctx:
    """Carries the file name into error messages."""

    def __init__(self, path: Path | str | None):
        self.path = path

    def error(self, element: str, problem: str) -> ProjectFormatError:
        return ProjectFormatError(f"{where(self.path, element)}: {problem}")


def _xyz_to_zyx(values):
    return tuple(values[::-1])


def _numbers(ctx: _Ctx, text: str | None, n: int | None, element: str, kind=float) -> list:
    """Whitespace-separated numbers (Java writes them across lines sometimes)."""
    parts = (text or "").split()
    if n is not None and len(parts) != n:
        raise ctx.error(element, f"has {len(parts)} numbers, expected {n}")
    try:
        if kind is int:
            return [int(float(p)) if ("." in p or "E" in p.upper()) else int(p) for p in parts]
        return [float(p) for p in parts]
    except ValueError:
        raise ctx.error(element, f"is not numeric: {(text or '').strip()!r}") from None


def _int(ctx: _Ctx, text: str | None, element: str) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise ctx.error(element, f"expected an integer, got {text!r}") from None


def _attr_int(ctx: _Ctx, el, name: str, element: str) -> int:
    value = el.get(name)
    if value is None:
        raise ctx.error(element, f"missing attribute {name!r}")
    return _int(ctx, value, f"{element} attribute {name!r}")


def _is_element(child) -> bool:
    return isinstance(child.tag, str)


def _split_children(el, known: set[str]) -> tuple[list, Extras]:
    """Known children in order, and unknown ones anchored to their previous known sibling."""
    found = []
    extras: Extras = []
    anchor = None
    for child in el:
        if _is_element(child) and child.tag in known:
            found.append(child)
            anchor = child.tag
        else:
            extras.append((anchor, child))
    return found, extras


def read_spimdata(path: str | Path) -> SpimData:
    """Read and parse a ``dataset.xml`` file.

    Raises
    ------
    MissingDataError
        If the file does not exist.
    ProjectFormatError
        If it is not well-formed XML or not a SpimData document, or an element
        is malformed (the message names the element).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: project XML not found")
    try:
        tree = etree.parse(str(path), etree.XMLParser(remove_blank_text=True))
    except etree.XMLSyntaxError as exc:
        raise ProjectFormatError(f"{path}: not well-formed XML ({exc})") from None
    return parse_spimdata(tree.getroot(), path)


def parse_spimdata(root, path: str | Path | None = None) -> SpimData:
    """Parse a ``<SpimData>`` root element (``path`` is used in error messages)."""
    ctx = _Ctx(path)
    if root.tag != "SpimData":
        raise ctx.error(f"<{root.tag}>", "the root element is not <SpimData>")
    data = SpimData(version=root.get("version", "0.2"))
    data.interest_points = data.bounding_boxes = data.psfs = None
    data.stitching_results = data.intensity_adjustments = None

    known = {
        "BasePath", "SequenceDescription", "ViewRegistrations", "ViewInterestPoints",
        "BoundingBoxes", "PointSpreadFunctions", "StitchingResults", "IntensityAdjustments",
    }
    children, data.extras["SpimData"] = _split_children(root, known)
    by_tag = {}
    for child in children:
        if child.tag in by_tag:
            raise ctx.error(f"<{child.tag}>", "appears more than once in <SpimData>")
        by_tag[child.tag] = child

    if "SequenceDescription" not in by_tag:
        raise ctx.error("<SpimData>", "has no <SequenceDescription>")
    base = by_tag.get("BasePath")
    if base is not None:
        data.base_path = (base.text or ".").strip()
        data.base_path_type = base.get("type", "relative")

    _parse_sequence(ctx, by_tag["SequenceDescription"], data)
    if "ViewRegistrations" in by_tag:
        _parse_registrations(ctx, by_tag["ViewRegistrations"], data)
    if "ViewInterestPoints" in by_tag:
        data.interest_points = _parse_interest_points(ctx, by_tag["ViewInterestPoints"], data)
    if "BoundingBoxes" in by_tag:
        data.bounding_boxes = _parse_bounding_boxes(ctx, by_tag["BoundingBoxes"], data)
    if "PointSpreadFunctions" in by_tag:
        data.psfs = _parse_psfs(ctx, by_tag["PointSpreadFunctions"], data)
    if "StitchingResults" in by_tag:
        data.stitching_results = _parse_stitching(ctx, by_tag["StitchingResults"], data)
    if "IntensityAdjustments" in by_tag:
        data.intensity_adjustments = _parse_intensities(ctx, by_tag["IntensityAdjustments"], data)
    _check_consistency(ctx, data)
    return data


# -- SequenceDescription ---------------------------------------------------------


def _parse_sequence(ctx: _Ctx, seq, data: SpimData) -> None:
    known = {"ImageLoader", "ViewSetups", "Timepoints", "MissingViews"}
    children, data.extras["SequenceDescription"] = _split_children(seq, known)
    by_tag = {c.tag: c for c in children}
    if "ViewSetups" not in by_tag:
        raise ctx.error("<SequenceDescription>", "has no <ViewSetups> (empty or truncated project)")
    if "Timepoints" not in by_tag:
        raise ctx.error("<SequenceDescription>", "has no <Timepoints>")
    data.image_loader = by_tag.get("ImageLoader")
    _parse_setups(ctx, by_tag["ViewSetups"], data)
    data.timepoints = _parse_timepoints(ctx, by_tag["Timepoints"])
    if "MissingViews" in by_tag:
        data.missing_views = set()
        mv_children, data.extras["MissingViews"] = _split_children(by_tag["MissingViews"], {"MissingView"})
        for mv in mv_children:
            elem = "<MissingView>"
            data.missing_views.add(
                ViewId(_attr_int(ctx, mv, "timepoint", elem), _attr_int(ctx, mv, "setup", elem))
            )


def _parse_setups(ctx: _Ctx, el, data: SpimData) -> None:
    children, data.extras["ViewSetups"] = _split_children(el, {"ViewSetup", "Attributes"})
    for child in children:
        if child.tag == "ViewSetup":
            setup = _parse_setup(ctx, child)
            if setup.id in data.setups:
                raise ctx.error(f"<ViewSetup> id {setup.id}", "duplicate ViewSetup id")
            data.setups[setup.id] = setup
        else:
            block = _parse_attribute_block(ctx, child)
            data.attribute_blocks[block.name] = block
    if not data.setups:
        raise ctx.error("<ViewSetups>", "contains no <ViewSetup>")


def _text(el, tag):
    child = el.find(tag)
    return None if child is None else (child.text or "")


def _parse_setup(ctx: _Ctx, el) -> ViewSetup:
    known = {"id", "name", "size", "voxelSize", "attributes"}
    children, extras = _split_children(el, known)
    by_tag = {c.tag: c for c in children}
    if "id" not in by_tag:
        raise ctx.error("<ViewSetup>", "has no <id>")
    sid = _int(ctx, by_tag["id"].text, "<ViewSetup> <id>")
    name_elem = f"<ViewSetup> id {sid}"
    setup = ViewSetup(id=sid, order=tuple(c.tag for c in children), extras=extras)
    if "name" in by_tag:
        setup.name = by_tag["name"].text or ""
    if "size" in by_tag:
        setup.size = _xyz_to_zyx(_numbers(ctx, by_tag["size"].text, 3, f"{name_elem} <size>", int))
    if "voxelSize" in by_tag:
        vs = by_tag["voxelSize"]
        vchildren, setup.voxel_size_extras = _split_children(vs, {"unit", "size"})
        vby = {c.tag: c for c in vchildren}
        setup.unit = (vby["unit"].text or "") if "unit" in vby else None
        if "size" in vby:
            setup.voxel_size = _xyz_to_zyx(
                _numbers(ctx, vby["size"].text, 3, f"{name_elem} <voxelSize><size>")
            )
    if "attributes" in by_tag:
        for a in by_tag["attributes"]:
            if _is_element(a):
                setup.attributes[a.tag] = _int(ctx, a.text, f"{name_elem} <attributes><{a.tag}>")
    return setup


def _parse_attribute_block(ctx: _Ctx, el) -> AttributeBlock:
    name = el.get("name")
    if not name:
        raise ctx.error("<Attributes>", "has no name attribute")
    entity_tag = STANDARD_ATTRIBUTES.get(name)
    if entity_tag is None:
        # Unknown kinds: spimdata names the entity after the kind, capitalised.
        tags = {c.tag for c in el if _is_element(c)}
        entity_tag = tags.pop() if len(tags) == 1 else name[:1].upper() + name[1:]
    block = AttributeBlock(name=name, entity_tag=entity_tag)
    children, block.extras = _split_children(el, {entity_tag})
    for child in children:
        elem = f'<Attributes name="{name}"> <{entity_tag}>'
        known = {"id", "name", "location", "axis", "degrees"}
        parts, extras = _split_children(child, known)
        by_tag = {c.tag: c for c in parts}
        if "id" not in by_tag:
            raise ctx.error(elem, "has no <id>")
        entity = Entity(id=_int(ctx, by_tag["id"].text, f"{elem} <id>"), extras=extras)
        elem = f"{elem} id {entity.id}"
        if "name" in by_tag:
            entity.name = by_tag["name"].text or ""
        if "location" in by_tag:
            entity.location = _xyz_to_zyx(_numbers(ctx, by_tag["location"].text, 3, f"{elem} <location>"))
        if "axis" in by_tag:
            entity.axis = _xyz_to_zyx(_numbers(ctx, by_tag["axis"].text, 3, f"{elem} <axis>"))
        if "degrees" in by_tag:
            entity.degrees = _numbers(ctx, by_tag["degrees"].text, 1, f"{elem} <degrees>")[0]
        block.entities[entity.id] = entity
    return block


def _parse_timepoints(ctx: _Ctx, el) -> Timepoints:
    kind = el.get("type", "")
    tp = Timepoints(type=kind)
    if kind == "range":
        children, tp.extras = _split_children(el, {"first", "last"})
        by_tag = {c.tag: c for c in children}
        if "first" not in by_tag or "last" not in by_tag:
            raise ctx.error('<Timepoints type="range">', "needs <first> and <last>")
        first = _int(ctx, by_tag["first"].text, "<Timepoints> <first>")
        last = _int(ctx, by_tag["last"].text, "<Timepoints> <last>")
        if last < first:
            raise ctx.error('<Timepoints type="range">', f"last ({last}) is before first ({first})")
        tp.ids = list(range(first, last + 1))
    elif kind == "list":
        children, tp.extras = _split_children(el, {"Timepoint"})
        tp.ids = []
        for child in children:
            tid = _int(ctx, _text(child, "id"), "<Timepoints> <Timepoint> <id>")
            tp.ids.append(tid)
            name = _text(child, "name")
            if name is not None:
                tp.names[tid] = name
    elif kind == "pattern":
        children, tp.extras = _split_children(el, {"integerpattern"})
        tp.pattern = children[0].text or "" if children else ""
        try:
            tp.ids = parse_integer_pattern(tp.pattern)
        except ValueError as exc:
            raise ctx.error('<Timepoints type="pattern"> <integerpattern>', str(exc)) from None
    else:
        raise ctx.error("<Timepoints>", f"unknown type {kind!r} (expected range, list or pattern)")
    if len(set(tp.ids)) != len(tp.ids):
        raise ctx.error("<Timepoints>", f"repeats timepoint ids: {tp.ids}")
    return tp


# -- ViewRegistrations -----------------------------------------------------------


def _parse_registrations(ctx: _Ctx, el, data: SpimData) -> None:
    children, data.extras["ViewRegistrations"] = _split_children(el, {"ViewRegistration"})
    for reg in children:
        elem = (
            f'<ViewRegistration timepoint="{reg.get("timepoint")}" setup="{reg.get("setup")}">'
        )
        view = ViewId(_attr_int(ctx, reg, "timepoint", elem), _attr_int(ctx, reg, "setup", elem))
        if view in data.registrations:
            raise ctx.error(elem, "duplicate ViewRegistration")
        transforms_el, extras = _split_children(reg, {"ViewTransform"})
        if extras:
            data.registration_extras[view] = extras
        chain = []
        for vt in transforms_el:
            kind = vt.get("type", "affine")
            name = _text(vt, "Name")
            if kind != "affine":
                chain.append(ViewTransform(name=name, matrix=None, type=kind, element=vt))
                continue
            affine = vt.find("affine")
            if affine is None:
                raise ctx.error(f"{elem} <ViewTransform>", "has no <affine>")
            label = f"{elem} <ViewTransform>{' ' + repr(name) if name else ''} <affine>"
            numbers = _numbers(ctx, affine.text, 12, label)
            if not np.all(np.isfinite(numbers)):
                raise ctx.error(label, "contains non-finite numbers")
            chain.append(ViewTransform(name=name, matrix=from_xml_affine(numbers)))
        data.registrations[view] = chain


# -- the five optional blocks ----------------------------------------------------


def _parse_interest_points(ctx: _Ctx, el, data: SpimData) -> list[InterestPointsFile]:
    children, data.extras["ViewInterestPoints"] = _split_children(el, {"ViewInterestPointsFile"})
    out = []
    for child in children:
        elem = "<ViewInterestPointsFile>"
        view = ViewId(_attr_int(ctx, child, "timepoint", elem), _attr_int(ctx, child, "setup", elem))
        attrib = {k: v for k, v in child.attrib.items() if k not in ("timepoint", "setup", "label", "params")}
        out.append(
            InterestPointsFile(
                view=view,
                label=child.get("label", ""),
                params=child.get("params", ""),
                path=(child.text or "").strip(),
                attrib=attrib,
            )
        )
    return out


def _parse_bounding_boxes(ctx: _Ctx, el, data: SpimData) -> list[BoundingBox]:
    children, data.extras["BoundingBoxes"] = _split_children(el, {"BoundingBoxDefinition"})
    out = []
    for child in children:
        name = child.get("name", "")
        elem = f'<BoundingBoxDefinition name="{name}">'
        parts, extras = _split_children(child, {"min", "max"})
        by_tag = {c.tag: c for c in parts}
        if "min" not in by_tag or "max" not in by_tag:
            raise ctx.error(elem, "needs <min> and <max>")
        lo = _xyz_to_zyx(_numbers(ctx, by_tag["min"].text, 3, f"{elem} <min>", int))
        hi = _xyz_to_zyx(_numbers(ctx, by_tag["max"].text, 3, f"{elem} <max>", int))
        out.append(BoundingBox(name=name, lo=lo, hi=hi, extras=extras))
    return out


def _parse_psfs(ctx: _Ctx, el, data: SpimData) -> list[PsfFile]:
    # A spimdata quirk: PSF entries are also called <BoundingBoxDefinition>.
    children, data.extras["PointSpreadFunctions"] = _split_children(el, {"BoundingBoxDefinition"})
    out = []
    for child in children:
        elem = "<PointSpreadFunctions> <BoundingBoxDefinition>"
        view = ViewId(_attr_int(ctx, child, "timepoint", elem), _attr_int(ctx, child, "setup", elem))
        parts, extras = _split_children(child, {"File"})
        file = (parts[0].text or "").strip() if parts else ""
        out.append(PsfFile(view=view, file=file, extras=extras))
    return out


def _view_list(ctx: _Ctx, setups: str | None, tps: str | None, elem: str) -> tuple[ViewId, ...]:
    if setups is None or tps is None:
        raise ctx.error(elem, "needs view_setup and tp attributes")
    try:
        s = [int(v) for v in setups.split(",")]
        t = [int(v) for v in tps.split(",")]
    except ValueError:
        raise ctx.error(elem, f"bad view list setups={setups!r} timepoints={tps!r}") from None
    if len(s) != len(t):
        raise ctx.error(elem, f"{len(s)} setups but {len(t)} timepoints")
    return tuple(ViewId(tp, su) for tp, su in zip(t, s))


def _parse_stitching(ctx: _Ctx, el, data: SpimData) -> list[PairwiseResult]:
    children, data.extras["StitchingResults"] = _split_children(el, {"PairwiseResult"})
    out = []
    for child in children:
        elem = (
            f'<PairwiseResult view_setup_a="{child.get("view_setup_a")}" '
            f'view_setup_b="{child.get("view_setup_b")}">'
        )
        a = _view_list(ctx, child.get("view_setup_a"), child.get("tp_a"), elem)
        b = _view_list(ctx, child.get("view_setup_b"), child.get("tp_b"), elem)
        parts, extras = _split_children(
            child, {"shift", "correlation", "hash", "overlap_boundingbox"}
        )
        by_tag = {c.tag: c for c in parts}
        if "shift" not in by_tag:
            raise ctx.error(elem, "has no <shift>")
        shift_numbers = _numbers(ctx, by_tag["shift"].text, None, f"{elem} <shift>")
        if len(shift_numbers) == 3:  # legacy: a pure translation
            shift_numbers = [1, 0, 0, shift_numbers[0], 0, 1, 0, shift_numbers[1], 0, 0, 1, shift_numbers[2]]
        elif len(shift_numbers) != 12:
            raise ctx.error(f"{elem} <shift>", f"has {len(shift_numbers)} numbers, expected 12 or 3")
        corr = _numbers(ctx, _text(child, "correlation") or "nan", 1, f"{elem} <correlation>")[0]
        hsh = _numbers(ctx, _text(child, "hash") or "0", 1, f"{elem} <hash>")[0]
        overlap = None
        if "overlap_boundingbox" in by_tag:
            ov = _numbers(ctx, by_tag["overlap_boundingbox"].text, 6, f"{elem} <overlap_boundingbox>")
            overlap = Box(_xyz_to_zyx(tuple(ov[:3])), _xyz_to_zyx(tuple(ov[3:])))
        out.append(
            PairwiseResult(
                views_a=a,
                views_b=b,
                shift=from_xml_affine(shift_numbers),
                correlation=corr,
                hash=hsh,
                overlap=overlap,
                extras=extras,
            )
        )
    return out


def _parse_intensities(ctx: _Ctx, el, data: SpimData) -> dict[ViewId, tuple[float, float]]:
    # A spimdata quirk: each entry is again called <IntensityAdjustments>.
    children, data.extras["IntensityAdjustments"] = _split_children(el, {"IntensityAdjustments"})
    out = {}
    for child in children:
        elem = "<IntensityAdjustments> <IntensityAdjustments>"
        view = ViewId(_attr_int(ctx, child, "timepoint", elem), _attr_int(ctx, child, "setup", elem))
        m = _numbers(ctx, _text(child, "model"), 2, f"{elem} {view} <model>")
        out[view] = (m[0], m[1])
    return out


def _check_consistency(ctx: _Ctx, data: SpimData) -> None:
    """Cross-element checks: registrations refer to known setups and timepoints."""
    tps = set(data.timepoints.ids)
    for view in data.registrations:
        if view.setup not in data.setups:
            raise ctx.error(
                f'<ViewRegistration timepoint="{view.timepoint}" setup="{view.setup}">',
                f"refers to setup {view.setup}, which has no <ViewSetup>",
            )
        if view.timepoint not in tps:
            raise ctx.error(
                f'<ViewRegistration timepoint="{view.timepoint}" setup="{view.setup}">',
                f"refers to timepoint {view.timepoint}, which <Timepoints> does not list",
            )
    # Setups may name attribute ids that no <Attributes> block defines (real
    # BigStitcher files do, e.g. tiles of an N5 project): spimdata tolerates it, so do we.
