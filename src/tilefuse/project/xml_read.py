"""Parse a SpimData2 XML document into :class:`~tilefuse.project.model.SpimData`.

Every error names the file and the element, e.g.
``dataset.xml, <ViewRegistration timepoint="0" setup="3"> <affine>: has 0 numbers, expected 12``.
This module and :mod:`.xml_write` are the only places where ``x, y, z`` vectors
of the XML are turned into numpy's ``z, y, x``.

Damaged input is refused, never guessed at (the rules are listed in
``docs/format.md``, "What is refused"): an element that may appear once but
appears twice, two entries with one id, numbers that are not finite or not of
the expected kind, element children where a value is expected.  Cross-element
checks (references, composed models, counts) live in :mod:`.checks`.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

from lxml import etree

from .. import _storage
from ..errors import ImageDataError, MissingDataError, ProjectFormatError, TilefuseError, where
from ..geometry import Box, from_xml_affine
from .checks import check_spimdata
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
from .timepoints import MAX_TIMEPOINTS, parse_integer_pattern
from .views import ViewId

__all__ = ["read_spimdata", "parse_spimdata", "MAX_XML_BYTES"]

#: Larger files are refused before being read (a project XML of 100,000 views is ~100 MB).
MAX_XML_BYTES = 2**31

#: Ids and sizes are Java ``int`` in BigStitcher.
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1

_INTEGER = re.compile(r"[+-]?\d+(?:\.0*)?")  # "512" or "512.0", not "5.12e2" nor "1_0"
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_XINCLUDE = "{http://www.w3.org/2001/XInclude}"


class _Ctx:
    """Carries the file name into error messages."""

    def __init__(self, path: Path | str | None):
        self.path = path

    def error(self, element: str, problem: str) -> ProjectFormatError:
        return ProjectFormatError(f"{where(self.path, element)}: {problem}")


def _xyz_to_zyx(values):
    return tuple(values[::-1])


def _is_element(child) -> bool:
    return isinstance(child.tag, str)


def _tag(el) -> str:
    """A tag as written in the file (``xi:include``, not ``{namespace}include``)."""
    qname = etree.QName(el)
    return f"{el.prefix}:{qname.localname}" if el.prefix else qname.localname


def _line(el) -> str:
    return f"line {el.sourceline}" if el.sourceline else "same document"


def _show(el, width: int = 60) -> str:
    """``<tag a="1">text</tag>`` of an element, shortened, for error messages."""
    attrs = "".join(f' {k}="{v}"' for k, v in el.attrib.items())
    text = " ".join((el.text or "").split())
    body = f"<{_tag(el)}{attrs}>" + (f"{text}</{_tag(el)}>" if len(el) == 0 else "...")
    return body if len(body) <= width else body[: width - 3] + "..."


def _value(ctx: _Ctx, el, label: str) -> str:
    """The text of an element that holds a value; element children are refused.

    Text split by comments is joined.  An element child (typically an
    unresolved ``<xi:include>``) would supply the value we cannot see, so
    reading around it would be silently wrong.
    """
    for child in el:
        if _is_element(child):
            hint = "; tilefuse does not resolve XInclude" if child.tag.startswith(_XINCLUDE) else ""
            raise ctx.error(label, f"contains <{_tag(child)}> ({_line(child)}) where a value is expected{hint}")
    return "".join([el.text or ""] + [child.tail or "" for child in el])


def _int_token(ctx: _Ctx, token: str, label: str, text: str) -> int:
    if not _INTEGER.fullmatch(token):
        raise ctx.error(label, f"expected an integer, got {_short(text)!r}")
    integral = token.split(".")[0]
    # Length first: int() of thousands of digits is slow, then refused by Python itself.
    if len(integral.lstrip("+-").lstrip("0")) > 10 or not _INT_MIN <= int(integral) <= _INT_MAX:
        raise ctx.error(label, f"{_short(integral, 30)} is outside the range of a Java int")
    return int(integral)


def _int(ctx: _Ctx, text: str | None, label: str) -> int:
    parts = (text or "").split()
    if len(parts) != 1:
        raise ctx.error(label, f"expected an integer, got {_short(text or '')!r}")
    return _int_token(ctx, parts[0], label, text or "")


def _ints(ctx: _Ctx, text: str | None, n: int, label: str, *, minimum: int | None = None) -> list[int]:
    parts = (text or "").split()
    if len(parts) != n:
        raise ctx.error(label, f"has {len(parts)} numbers, expected {n}")
    values = [_int_token(ctx, p, label, text or "") for p in parts]
    if minimum is not None and min(values) < minimum:
        raise ctx.error(label, f"{_short(text or '')!r}: every number must be at least {minimum}")
    return values


def _floats(ctx: _Ctx, text: str | None, n: int | None, label: str, *, allow_nan: bool = False,
            positive: bool = False) -> list[float]:
    """Whitespace-separated numbers (Java writes them across lines sometimes), finite by default."""
    parts = (text or "").split()
    if n is not None and len(parts) != n:
        raise ctx.error(label, f"has {len(parts)} numbers, expected {n}")
    if not all(_FLOAT.fullmatch(p) for p in parts):
        raise ctx.error(label, f"is not numeric: {_short(text or '')!r}")
    values = [float(p) for p in parts]
    for v in values:
        if v != v and allow_nan:
            continue
        if v != v or v in (float("inf"), float("-inf")):
            raise ctx.error(label, f"contains a non-finite number: {_short(text or '')!r}")
        if positive and not v > 0:
            raise ctx.error(label, f"{_short(text or '')!r}: every number must be positive")
    return values


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _attr_int(ctx: _Ctx, el, name: str, label: str) -> int:
    value = el.get(name)
    if value is None:
        raise ctx.error(label, f"missing attribute {name!r}")
    return _int(ctx, value, f"{label} attribute {name!r}")


def _view_attrs(ctx: _Ctx, el, label: str) -> ViewId:
    return ViewId(_attr_int(ctx, el, "timepoint", label), _attr_int(ctx, el, "setup", label))


def _split_children(el, known: set[str]) -> tuple[list, Extras]:
    """Known children in order, and unknown ones anchored to their previous known sibling."""
    found = []
    extras: Extras = []
    anchor = None
    counts: dict[str, int] = {}
    for child in el:
        if _is_element(child) and child.tag in known:
            found.append(child)
            anchor = (child.tag, counts.get(child.tag, 0))
            counts[child.tag] = anchor[1] + 1
        else:
            extras.append((anchor, child))
    # After the last of its tag: -1, so that it stays there when the list grows.
    extras = [(a if a is None or a[1] + 1 < counts[a[0]] else (a[0], -1), e) for a, e in extras]
    return found, extras


def _singletons(ctx: _Ctx, children: list, label: str) -> dict:
    """Children by tag, refusing a tag that appears twice (ambiguous: which one is meant?)."""
    by_tag: dict = {}
    for child in children:
        first = by_tag.get(child.tag)
        if first is not None:
            raise _duplicate(ctx, f"{label} <{child.tag}>", first, child)
        by_tag[child.tag] = child
    return by_tag


def _duplicate(ctx: _Ctx, label: str, first, second, what: str = "appears twice") -> ProjectFormatError:
    return ctx.error(
        label,
        f"{what} ({_line(first)}: {_show(first)} and {_line(second)}: {_show(second)}); "
        "tilefuse refuses an ambiguous project (BigStitcher would silently use the first)",
    )


def _optional_value(ctx: _Ctx, by_tag: dict, tag: str, label: str) -> str | None:
    el = by_tag.get(tag)
    return None if el is None else _value(ctx, el, f"{label} <{tag}>")


# -- reading ------------------------------------------------------------------------


def read_spimdata(path: str | Path) -> SpimData:
    """Read and parse a ``dataset.xml`` file.

    Raises
    ------
    MissingDataError
        If the file does not exist.
    ProjectFormatError
        If it is not well-formed XML, not a SpimData document, or damaged:
        an element is malformed, ambiguous or inconsistent (the message names
        the file and the element).
    TilefuseError
        If the file cannot be read.
    """
    if _storage.is_url(path):
        return _read_remote(str(path))
    path = Path(path)
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the name
        raise MissingDataError(f"{path}: project XML not found") from None
    except OSError as exc:
        raise TilefuseError(f"{path}: cannot read the project XML ({exc.strerror or exc})") from None
    # Checked before opening: a FIFO would block the read forever, a device (/dev/zero) never end.
    if stat.S_ISDIR(info.st_mode):
        raise MissingDataError(f"{path}: is a folder, not a file (a project XML was expected)")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a character device" if stat.S_ISCHR(info.st_mode) else "a special file")
        raise ProjectFormatError(f"{path}: is {kind}, not a regular file; a project XML was expected")
    if info.st_size > MAX_XML_BYTES:
        raise ProjectFormatError(f"{path}: {info.st_size:,} bytes is larger than any project XML "
                                 f"(limit {MAX_XML_BYTES:,}); is it the right file?")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:  # deleted since
        raise MissingDataError(f"{path}: project XML not found") from None
    except OSError as exc:
        raise TilefuseError(f"{path}: cannot read the project XML ({exc.strerror or exc})") from None
    return _parse_bytes(raw, path)


def _read_remote(url: str) -> SpimData:
    """The project XML from an object store (any fsspec URL): one object of bounded size."""
    try:
        raw = _storage.read_file(url, MAX_XML_BYTES, "project XML")
    except ImageDataError as exc:  # a prefix, or larger than any project XML
        raise ProjectFormatError(f"{exc}; is it the right object?") from None
    if raw is None:
        raise MissingDataError(f"{url}: project XML not found")
    return _parse_bytes(raw, url)


def _parse_bytes(raw: bytes, path: Path | str) -> SpimData:
    try:
        # From bytes, not from the file name: then every damage (bad bytes
        # for the declared encoding too) is an XMLSyntaxError with its line.
        # Entities: lxml resolves only internal ones and caps their expansion.
        root = etree.fromstring(raw, etree.XMLParser(remove_blank_text=True, no_network=True),
                                base_url=str(path))
    except etree.XMLSyntaxError as exc:
        raise ProjectFormatError(f"{path}: not well-formed XML ({_syntax_message(exc)})") from None
    return parse_spimdata(root, path)


def _syntax_message(exc: etree.XMLSyntaxError) -> str:
    message = str(exc.msg if getattr(exc, "msg", None) else exc)
    if "Invalid bytes in character encoding" in message or "not proper UTF-8" in message:
        message += "; the file is not valid text in its declared encoding (UTF-8 unless declared)"
    return message


def parse_spimdata(root, path: str | Path | None = None) -> SpimData:
    """Parse a ``<SpimData>`` root element (``path`` is used in error messages).

    Raises
    ------
    ProjectFormatError
        On any damage; an unexpected failure is also reported as one, naming
        the file, with the original exception as ``__cause__``.
    """
    ctx = _Ctx(path)
    try:
        data = _parse_root(ctx, root)
        check_spimdata(data, path)
        return data
    except TilefuseError:
        raise
    except Exception as exc:  # the last safety net: a damage no check above foresaw
        raise ProjectFormatError(
            f"{where(path)}: cannot be read as a SpimData project ({type(exc).__name__}: {exc})"
        ) from exc


def _parse_root(ctx: _Ctx, root) -> SpimData:
    if not _is_element(root) or root.tag != "SpimData":
        raise ctx.error(f"<{_tag(root) if _is_element(root) else root.tag}>",
                        "the root element is not <SpimData>")
    data = SpimData(version=root.get("version", "0.2"))
    data.interest_points = data.bounding_boxes = data.psfs = None
    data.stitching_results = data.intensity_adjustments = None

    known = {
        "BasePath", "SequenceDescription", "ViewRegistrations", "ViewInterestPoints",
        "BoundingBoxes", "PointSpreadFunctions", "StitchingResults", "IntensityAdjustments",
    }
    children, data.extras["SpimData"] = _split_children(root, known)
    by_tag = _singletons(ctx, children, "<SpimData>")

    if "SequenceDescription" not in by_tag:
        raise ctx.error("<SpimData>", "has no <SequenceDescription>")
    base = by_tag.get("BasePath")
    if base is not None:
        data.base_path = (_value(ctx, base, "<BasePath>") or ".").strip()
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
    return data


# -- SequenceDescription ---------------------------------------------------------


def _parse_sequence(ctx: _Ctx, seq, data: SpimData) -> None:
    known = {"ImageLoader", "ViewSetups", "Timepoints", "MissingViews"}
    children, data.extras["SequenceDescription"] = _split_children(seq, known)
    by_tag = _singletons(ctx, children, "<SequenceDescription>")
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
        first_seen = {}
        for mv in mv_children:
            view = _view_attrs(ctx, mv, "<MissingView>")
            if view in first_seen:
                raise _duplicate(ctx, f'<MissingView timepoint="{view.timepoint}" setup="{view.setup}">',
                                 first_seen[view], mv)
            first_seen[view] = mv
            data.missing_views.add(view)
            _, extras = _split_children(mv, set())
            if extras:
                data.missing_view_extras[view] = extras


def _parse_setups(ctx: _Ctx, el, data: SpimData) -> None:
    children, data.extras["ViewSetups"] = _split_children(el, {"ViewSetup", "Attributes"})
    setup_elements, block_elements = {}, {}
    for child in children:
        if child.tag == "ViewSetup":
            setup = _parse_setup(ctx, child, has_pixels=data.image_loader is not None)
            if setup.id in data.setups:
                raise _duplicate(ctx, f"<ViewSetup> id {setup.id}", setup_elements[setup.id], child,
                                 "two <ViewSetup> have this id")
            setup_elements[setup.id] = child
            data.setups[setup.id] = setup
        else:
            block = _parse_attribute_block(ctx, child)
            if block.name in data.attribute_blocks:
                raise _duplicate(ctx, f'<Attributes name="{block.name}">', block_elements[block.name], child)
            block_elements[block.name] = child
            data.attribute_blocks[block.name] = block
    if not data.setups:
        raise ctx.error("<ViewSetups>", "contains no <ViewSetup>")


def _parse_setup(ctx: _Ctx, el, has_pixels: bool) -> ViewSetup:
    known = {"id", "name", "size", "voxelSize", "attributes"}
    children, extras = _split_children(el, known)
    ids = _singletons(ctx, [c for c in children if c.tag == "id"], f"<ViewSetup> ({_line(el)})")
    if "id" not in ids:
        raise ctx.error(f"<ViewSetup> ({_line(el)})", "has no <id>")
    id_label = f"<ViewSetup> ({_line(el)}) <id>"
    sid = _int(ctx, _value(ctx, ids["id"], id_label), id_label)
    label = f"<ViewSetup> id {sid}"
    by_tag = _singletons(ctx, children, label)
    setup = ViewSetup(id=sid, order=tuple(c.tag for c in children), extras=extras)
    setup.name = _optional_value(ctx, by_tag, "name", label)
    if "size" in by_tag:
        size_label = f"{label} <size>"
        # spimdata's own example has a 0 extent in a project without pixels;
        # a view with pixels needs at least one voxel per axis.
        size = _ints(ctx, _value(ctx, by_tag["size"], size_label), 3, size_label, minimum=1 if has_pixels else 0)
        setup.size = _xyz_to_zyx(size)
    if "voxelSize" in by_tag:
        vs = by_tag["voxelSize"]
        vchildren, setup.voxel_size_extras = _split_children(vs, {"unit", "size"})
        vby = _singletons(ctx, vchildren, f"{label} <voxelSize>")
        setup.unit = _optional_value(ctx, vby, "unit", f"{label} <voxelSize>")
        if "size" in vby:
            vlabel = f"{label} <voxelSize><size>"
            setup.voxel_size = _xyz_to_zyx(_floats(ctx, _value(ctx, vby["size"], vlabel), 3, vlabel, positive=True))
    if "attributes" in by_tag:
        anchor = None
        first_seen = {}
        for a in by_tag["attributes"]:
            if not _is_element(a) or a.tag.startswith("{"):  # comments, <xi:include>: kept as they are
                setup.attributes_extras.append((anchor, a))
                continue
            alabel = f"{label} <attributes><{a.tag}>"
            if a.tag in first_seen:
                raise _duplicate(ctx, alabel, first_seen[a.tag], a)
            first_seen[a.tag] = a
            setup.attributes[a.tag] = _int(ctx, _value(ctx, a, alabel), alabel)
            anchor = (a.tag, 0)
    return setup


def _parse_attribute_block(ctx: _Ctx, el) -> AttributeBlock:
    name = el.get("name")
    if not name:
        raise ctx.error(f"<Attributes> ({_line(el)})", "has no name attribute")
    entity_tag = STANDARD_ATTRIBUTES.get(name)
    if entity_tag is None:
        # Unknown kinds: spimdata names the entity after the kind, capitalised.
        tags = {c.tag for c in el if _is_element(c) and not c.tag.startswith("{")}
        entity_tag = tags.pop() if len(tags) == 1 else name[:1].upper() + name[1:]
    block = AttributeBlock(name=name, entity_tag=entity_tag)
    children, block.extras = _split_children(el, {entity_tag})
    first_seen = {}
    for child in children:
        label = f'<Attributes name="{name}"> <{entity_tag}>'
        known = {"id", "name", "location", "axis", "degrees"}
        parts, extras = _split_children(child, known)
        by_tag = _singletons(ctx, parts, f"{label} ({_line(child)})")
        if "id" not in by_tag:
            raise ctx.error(f"{label} ({_line(child)})", "has no <id>")
        entity = Entity(id=_int(ctx, _value(ctx, by_tag["id"], f"{label} <id>"), f"{label} <id>"), extras=extras)
        label = f"{label} id {entity.id}"
        if entity.id in first_seen:
            raise _duplicate(ctx, label, first_seen[entity.id], child, f"two <{entity_tag}> have this id")
        first_seen[entity.id] = child
        entity.name = _optional_value(ctx, by_tag, "name", label)
        for tag, n in (("location", 3), ("axis", 3), ("degrees", 1)):
            if tag in by_tag:
                values = _floats(ctx, _value(ctx, by_tag[tag], f"{label} <{tag}>"), n, f"{label} <{tag}>")
                setattr(entity, tag, values[0] if n == 1 else _xyz_to_zyx(values))
        block.entities[entity.id] = entity
    return block


def _parse_timepoints(ctx: _Ctx, el) -> Timepoints:
    kind = el.get("type", "")
    tp = Timepoints(type=kind)
    label = f'<Timepoints type="{kind}">'
    too_many = f"more than the {MAX_TIMEPOINTS:,} timepoints tilefuse accepts"
    if kind == "range":
        children, tp.extras = _split_children(el, {"first", "last"})
        by_tag = _singletons(ctx, children, label)
        if "first" not in by_tag or "last" not in by_tag:
            raise ctx.error(label, "needs <first> and <last>")
        first = _int(ctx, _value(ctx, by_tag["first"], f"{label} <first>"), f"{label} <first>")
        last = _int(ctx, _value(ctx, by_tag["last"], f"{label} <last>"), f"{label} <last>")
        if last < first:
            raise ctx.error(label, f"last ({last}) is before first ({first})")
        if last - first + 1 > MAX_TIMEPOINTS:  # counted before anything is allocated
            raise ctx.error(label, f"{first}..{last} is {last - first + 1:,} timepoints, {too_many}")
        tp.ids = list(range(first, last + 1))
    elif kind == "list":
        children, tp.extras = _split_children(el, {"Timepoint"})
        if len(children) > MAX_TIMEPOINTS:
            raise ctx.error(label, f"lists {len(children):,} timepoints, {too_many}")
        tp.ids = []
        first_seen = {}
        for child in children:
            parts, extras = _split_children(child, {"id", "name"})
            by_tag = _singletons(ctx, parts, f"{label} <Timepoint> ({_line(child)})")
            if "id" not in by_tag:
                raise ctx.error(f"{label} <Timepoint> ({_line(child)})", "has no <id>")
            tid = _int(ctx, _value(ctx, by_tag["id"], f"{label} <Timepoint> <id>"), f"{label} <Timepoint> <id>")
            if tid in first_seen:
                raise _duplicate(ctx, f"{label} <Timepoint> id {tid}", first_seen[tid], child,
                                 "two <Timepoint> have this id")
            first_seen[tid] = child
            tp.ids.append(tid)
            name = _optional_value(ctx, by_tag, "name", f"{label} <Timepoint> id {tid}")
            if name is not None:
                tp.names[tid] = name
            if extras:
                tp.entry_extras[tid] = extras
    elif kind == "pattern":
        children, tp.extras = _split_children(el, {"integerpattern"})
        by_tag = _singletons(ctx, children, label)
        if "integerpattern" not in by_tag:
            raise ctx.error(label, "has no <integerpattern>")
        plabel = f"{label} <integerpattern>"
        tp.pattern = _value(ctx, by_tag["integerpattern"], plabel)
        try:
            tp.ids = parse_integer_pattern(tp.pattern, limit=MAX_TIMEPOINTS)
        except ValueError as exc:
            raise ctx.error(plabel, str(exc)) from None
    else:
        raise ctx.error("<Timepoints>", f"unknown type {kind!r} (expected range, list or pattern)")
    for tid in tp.ids:  # at most MAX_TIMEPOINTS
        if not _INT_MIN <= tid <= _INT_MAX:
            raise ctx.error(label, f"timepoint {tid} is outside the range of a Java int")
    if len(set(tp.ids)) != len(tp.ids):
        seen, repeated = set(), []
        for tid in tp.ids:
            if tid in seen:
                repeated.append(tid)
            seen.add(tid)
        raise ctx.error(label, f"repeats timepoint ids {repeated[:10]}")
    return tp


# -- ViewRegistrations -----------------------------------------------------------


def _parse_registrations(ctx: _Ctx, el, data: SpimData) -> None:
    children, data.extras["ViewRegistrations"] = _split_children(el, {"ViewRegistration"})
    first_seen = {}
    for reg in children:
        label = f'<ViewRegistration timepoint="{reg.get("timepoint")}" setup="{reg.get("setup")}">'
        view = _view_attrs(ctx, reg, label)
        if view in first_seen:
            raise _duplicate(ctx, label, first_seen[view], reg, "two <ViewRegistration> for this view")
        first_seen[view] = reg
        transforms_el, extras = _split_children(reg, {"ViewTransform"})
        if extras:
            data.registration_extras[view] = extras
        data.registrations[view] = [_parse_transform(ctx, vt, label) for vt in transforms_el]


def _parse_transform(ctx: _Ctx, vt, reg_label: str) -> ViewTransform:
    kind = vt.get("type", "affine")
    if kind != "affine":
        # Java-only transforms: kept verbatim, refused when evaluated.
        return ViewTransform(name=vt.findtext("Name"), matrix=None, type=kind, element=vt)
    parts, extras = _split_children(vt, {"Name", "affine"})
    by_tag = _singletons(ctx, parts, f"{reg_label} <ViewTransform> ({_line(vt)})")
    name = _optional_value(ctx, by_tag, "Name", f"{reg_label} <ViewTransform>")
    label = f"{reg_label} <ViewTransform>{' ' + repr(name) if name else ''}"
    if "affine" not in by_tag:
        raise ctx.error(label, "has no <affine>")
    numbers = _floats(ctx, _value(ctx, by_tag["affine"], f"{label} <affine>"), 12, f"{label} <affine>")
    return ViewTransform(name=name, matrix=from_xml_affine(numbers), extras=extras)


# -- the five optional blocks ----------------------------------------------------


def _parse_interest_points(ctx: _Ctx, el, data: SpimData) -> list[InterestPointsFile]:
    children, data.extras["ViewInterestPoints"] = _split_children(el, {"ViewInterestPointsFile"})
    out = []
    first_seen = {}
    for child in children:
        label = "<ViewInterestPointsFile>"
        view = _view_attrs(ctx, child, label)
        key = (view, child.get("label", ""))
        label = (f'<ViewInterestPointsFile timepoint="{view.timepoint}" setup="{view.setup}" '
                 f'label="{key[1]}">')
        if key in first_seen:
            raise _duplicate(ctx, label, first_seen[key], child)
        first_seen[key] = child
        attrib = {k: v for k, v in child.attrib.items() if k not in ("timepoint", "setup", "label", "params")}
        out.append(
            InterestPointsFile(
                view=view,
                label=key[1],
                params=child.get("params", ""),
                path=_value(ctx, child, label).strip(),
                attrib=attrib,
            )
        )
    return out


def _parse_bounding_boxes(ctx: _Ctx, el, data: SpimData) -> list[BoundingBox]:
    children, data.extras["BoundingBoxes"] = _split_children(el, {"BoundingBoxDefinition"})
    out = []
    first_seen = {}
    for child in children:
        name = child.get("name", "")
        label = f'<BoundingBoxDefinition name="{name}">'
        if name in first_seen:
            raise _duplicate(ctx, label, first_seen[name], child, "two bounding boxes have this name")
        first_seen[name] = child
        parts, extras = _split_children(child, {"min", "max"})
        by_tag = _singletons(ctx, parts, label)
        if "min" not in by_tag or "max" not in by_tag:
            raise ctx.error(label, "needs <min> and <max>")
        lo = _xyz_to_zyx(_ints(ctx, _value(ctx, by_tag["min"], f"{label} <min>"), 3, f"{label} <min>"))
        hi = _xyz_to_zyx(_ints(ctx, _value(ctx, by_tag["max"], f"{label} <max>"), 3, f"{label} <max>"))
        if any(a > b for a, b in zip(lo, hi)):
            raise ctx.error(label, "<min> is above <max> on some axis: the box is empty")
        out.append(BoundingBox(name=name, lo=lo, hi=hi, extras=extras))
    return out


def _parse_psfs(ctx: _Ctx, el, data: SpimData) -> list[PsfFile]:
    # A spimdata quirk: PSF entries are also called <BoundingBoxDefinition>.
    children, data.extras["PointSpreadFunctions"] = _split_children(el, {"BoundingBoxDefinition"})
    out = []
    first_seen = {}
    for child in children:
        label = "<PointSpreadFunctions> <BoundingBoxDefinition>"
        view = _view_attrs(ctx, child, label)
        label = f'{label[:-1]} timepoint="{view.timepoint}" setup="{view.setup}">'
        if view in first_seen:
            raise _duplicate(ctx, label, first_seen[view], child, "two PSFs for this view")
        first_seen[view] = child
        parts, extras = _split_children(child, {"File"})
        by_tag = _singletons(ctx, parts, label)
        if "File" not in by_tag:
            raise ctx.error(label, "has no <File>")
        file = _value(ctx, by_tag["File"], f"{label} <File>").strip()
        out.append(PsfFile(view=view, file=file, extras=extras))
    return out


def _view_list(ctx: _Ctx, setups: str | None, tps: str | None, label: str) -> tuple[ViewId, ...]:
    if setups is None or tps is None:
        raise ctx.error(label, "needs view_setup and tp attributes")
    s = [_int(ctx, v, f"{label} setups {setups!r}") for v in setups.split(",")]
    t = [_int(ctx, v, f"{label} timepoints {tps!r}") for v in tps.split(",")]
    if len(s) != len(t):
        raise ctx.error(label, f"{len(s)} setups but {len(t)} timepoints")
    return tuple(ViewId(tp, su) for tp, su in zip(t, s))


def _parse_stitching(ctx: _Ctx, el, data: SpimData) -> list[PairwiseResult]:
    children, data.extras["StitchingResults"] = _split_children(el, {"PairwiseResult"})
    out = []
    first_seen = {}
    for child in children:
        label = (
            f'<PairwiseResult view_setup_a="{child.get("view_setup_a")}" '
            f'view_setup_b="{child.get("view_setup_b")}">'
        )
        a = _view_list(ctx, child.get("view_setup_a"), child.get("tp_a"), label)
        b = _view_list(ctx, child.get("view_setup_b"), child.get("tp_b"), label)
        if (a, b) in first_seen:
            raise _duplicate(ctx, label, first_seen[(a, b)], child, "two results for this pair")
        first_seen[(a, b)] = child
        parts, extras = _split_children(child, {"shift", "correlation", "hash", "overlap_boundingbox"})
        by_tag = _singletons(ctx, parts, label)
        if "shift" not in by_tag:
            raise ctx.error(label, "has no <shift>")
        shift_numbers = _floats(ctx, _value(ctx, by_tag["shift"], f"{label} <shift>"), None, f"{label} <shift>")
        if len(shift_numbers) == 3:  # legacy: a pure translation
            shift_numbers = [1, 0, 0, shift_numbers[0], 0, 1, 0, shift_numbers[1], 0, 0, 1, shift_numbers[2]]
        elif len(shift_numbers) != 12:
            raise ctx.error(f"{label} <shift>", f"has {len(shift_numbers)} numbers, expected 12 or 3")
        for tag in ("correlation", "hash"):  # BigStitcher cannot read a result without them either
            if tag not in by_tag:
                raise ctx.error(label, f"has no <{tag}>")
        # A correlation may be NaN (unknown); the hash is a sum of model entries.
        corr = _floats(ctx, _value(ctx, by_tag["correlation"], f"{label} <correlation>"), 1,
                       f"{label} <correlation>", allow_nan=True)[0]
        hsh = _floats(ctx, _value(ctx, by_tag["hash"], f"{label} <hash>"), 1, f"{label} <hash>")[0]
        overlap = None
        if "overlap_boundingbox" in by_tag:
            olabel = f"{label} <overlap_boundingbox>"
            ov = _floats(ctx, _value(ctx, by_tag["overlap_boundingbox"], olabel), 6, olabel)
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
    first_seen = {}
    for child in children:
        label = "<IntensityAdjustments> <IntensityAdjustments>"
        view = _view_attrs(ctx, child, label)
        label = f'{label[:-1]} timepoint="{view.timepoint}" setup="{view.setup}">'
        if view in first_seen:
            raise _duplicate(ctx, label, first_seen[view], child, "two adjustments for this view")
        first_seen[view] = child
        parts, extras = _split_children(child, {"model"})
        by_tag = _singletons(ctx, parts, label)
        if "model" not in by_tag:
            raise ctx.error(label, "has no <model>")
        m = _floats(ctx, _value(ctx, by_tag["model"], f"{label} <model>"), 2, f"{label} <model>")
        out[view] = (m[0], m[1])
        if extras:
            data.intensity_extras[view] = extras
    return out
