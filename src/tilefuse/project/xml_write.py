"""Write :class:`~tilefuse.project.model.SpimData` back to SpimData2 XML.

Element order follows spimdata's ``XmlIoSpimData2``; unknown elements come
back next to the known sibling they followed.  Numbers are written with
Python's shortest round-trip ``repr``, so every value reads back exactly.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
from lxml import etree

from .. import _storage
from ..geometry import to_xml_affine
from .model import Extras, SpimData, ViewSetup
from .timepoints import format_integer_pattern

__all__ = ["spimdata_bytes", "spimdata_to_element", "write_spimdata", "format_number", "format_numbers"]


def format_number(v) -> str:
    """Shortest text that reads back as the same number (``1.0``, ``-5.7e-04``...); ``-0.0`` is ``0.0``."""
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    return repr(float(v) + 0.0)  # + 0.0 turns -0.0 into 0.0 and leaves every other float as it is


def format_numbers(values) -> str:
    """:func:`format_number` of each float of ``values``, space-separated (a whole affine at once)."""
    # One numpy conversion instead of a Python call per number: saving 10,000 views' chains and 20,000
    # pairwise results formats ~700,000 numbers.
    return " ".join(map(repr, (np.asarray(values, dtype=np.float64).ravel() + 0.0).tolist()))


def _vec(values, kind=float) -> str:
    """A numpy-ordered vector written in XML (x, y, z) order."""
    vals = list(values)[::-1]
    if kind is int:
        return " ".join(str(int(v)) for v in vals)
    return " ".join(format_number(v) for v in vals)


def _sub(parent, tag: str, text: str | None = None, **attrib):
    el = etree.SubElement(parent, tag, {k: str(v) for k, v in attrib.items()})
    if text is not None:
        el.text = text
    return el


def _arrange(parent, known: list, extras: Extras) -> None:
    """Append known children in order, with each unknown child after its anchor.

    An anchor ``(tag, n)`` is the ``n``-th known child with ``tag`` (``-1``: the
    last); when the project now has fewer of them, the last one; when none,
    the end.
    """
    if not extras:  # the common case: nothing unknown to place
        parent.extend(known)
        return
    leading: list = []
    by_anchor: dict = {}
    for anchor, el in extras:
        if anchor is None:
            leading.append(el)
        else:
            by_anchor.setdefault(anchor, []).append(el)
    counts: dict[str, int] = {}
    keys = []
    for el in known:
        keys.append((el.tag, counts.get(el.tag, 0)))
        counts[el.tag] = keys[-1][1] + 1
    placed: dict = {}
    orphans: list = []
    for (tag, n), els in by_anchor.items():
        if tag in counts:
            last = counts[tag] - 1
            placed.setdefault((tag, last if n < 0 else min(n, last)), []).extend(els)
        else:
            orphans.extend(els)
    for el in leading:
        parent.append(copy.deepcopy(el))
    for el, key in zip(known, keys):
        parent.append(el)
        for extra in placed.pop(key, []):
            parent.append(copy.deepcopy(extra))
    for el in orphans:  # anchors that are gone: keep the elements at the end
        parent.append(copy.deepcopy(el))


def _element(tag: str, attrib=None):
    return etree.Element(tag, attrib or {})


def spimdata_to_element(data: SpimData, image_loader=None):
    """Build the ``<SpimData>`` element.  ``image_loader`` overrides ``data.image_loader``."""
    root = _element("SpimData", {"version": data.version})
    base = _element("BasePath", {"type": data.base_path_type})
    base.text = data.base_path
    known = [base, _sequence(data, image_loader), _registrations(data)]
    if data.interest_points is not None:
        known.append(_interest_points(data))
    if data.bounding_boxes is not None:
        known.append(_bounding_boxes(data))
    if data.psfs is not None:
        known.append(_psfs(data))
    if data.stitching_results is not None:
        known.append(_stitching(data))
    if data.intensity_adjustments is not None:
        known.append(_intensities(data))
    _arrange(root, known, data.extras.get("SpimData", []))
    return root


def spimdata_bytes(data: SpimData, image_loader=None) -> bytes:
    """The XML document, UTF-8 encoded, as :func:`write_spimdata` writes it."""
    root = spimdata_to_element(data, image_loader)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def write_spimdata(data: SpimData, path: str | Path, image_loader=None) -> None:
    """Write XML to ``path`` through a temporary file and an atomic rename (at a URL: one whole PUT)."""
    text = spimdata_bytes(data, image_loader)
    if _storage.is_url(path):
        _storage.write_file(path, text, "project XML")
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# -- SequenceDescription ---------------------------------------------------------


def _sequence(data: SpimData, image_loader):
    seq = _element("SequenceDescription")
    known = []
    loader = image_loader if image_loader is not None else data.image_loader
    if loader is not None:
        known.append(copy.deepcopy(loader))
    known.append(_setups(data))
    known.append(_timepoints(data))
    if data.missing_views is not None:
        mv = _element("MissingViews")
        for view in sorted(data.missing_views):
            entry = _sub(mv, "MissingView", timepoint=view.timepoint, setup=view.setup)
            _arrange(entry, [], data.missing_view_extras.get(view, []))
        _arrange(mv, [], data.extras.get("MissingViews", []))
        known.append(mv)
    _arrange(seq, known, data.extras.get("SequenceDescription", []))
    return seq


def _setup(setup: ViewSetup):
    el = _element("ViewSetup")
    parts = {}
    parts["id"] = _element("id")
    parts["id"].text = str(setup.id)
    if setup.name is not None:
        parts["name"] = _element("name")
        parts["name"].text = setup.name
    if setup.size is not None:
        parts["size"] = _element("size")
        parts["size"].text = _vec(setup.size, int)
    if setup.voxel_size is not None or setup.unit is not None:
        vs = _element("voxelSize")
        vknown = []
        if setup.unit is not None:
            u = _element("unit")
            u.text = setup.unit or None
            vknown.append(u)
        if setup.voxel_size is not None:
            s = _element("size")
            s.text = _vec(setup.voxel_size)
            vknown.append(s)
        _arrange(vs, vknown, setup.voxel_size_extras)
        parts["voxelSize"] = vs
    if setup.attributes or "attributes" in setup.order:
        attrs = _element("attributes")
        kinds = []
        for kind, eid in setup.attributes.items():
            kinds.append(_element(kind))
            kinds[-1].text = str(eid)
        _arrange(attrs, kinds, setup.attributes_extras)
        parts["attributes"] = attrs
    order = list(setup.order) + [t for t in ("id", "name", "size", "voxelSize", "attributes") if t not in setup.order]
    _arrange(el, [parts[t] for t in order if t in parts], setup.extras)
    return el


def _setups(data: SpimData):
    el = _element("ViewSetups")
    known = [_setup(setup) for setup in data.setups.values()]  # file order
    for block in data.attribute_blocks.values():
        b = _element("Attributes", {"name": block.name})
        entities = []
        for eid in sorted(block.entities):
            ent = block.entities[eid]
            e = _element(block.entity_tag)
            ek = [_element("id")]
            ek[0].text = str(ent.id)
            if ent.name is not None:
                n = _element("name")
                n.text = ent.name
                ek.append(n)
            if ent.location is not None:
                loc = _element("location")
                loc.text = _vec(ent.location)
                ek.append(loc)
            if ent.axis is not None:
                ax = _element("axis")
                ax.text = _vec(ent.axis)
                ek.append(ax)
            if ent.degrees is not None:
                dg = _element("degrees")
                dg.text = format_number(ent.degrees)
                ek.append(dg)
            _arrange(e, ek, ent.extras)
            entities.append(e)
        _arrange(b, entities, block.extras)
        known.append(b)
    _arrange(el, known, data.extras.get("ViewSetups", []))
    return el


def _timepoints(data: SpimData):
    tp = data.timepoints
    el = _element("Timepoints", {"type": tp.type})
    known = []
    if tp.type == "range":
        first, last = _element("first"), _element("last")
        first.text, last.text = str(min(tp.ids)), str(max(tp.ids))
        known = [first, last]
    elif tp.type == "list":
        for tid in tp.ids:
            t = _element("Timepoint")
            entry = [_element("id")]
            entry[0].text = str(tid)
            if tid in tp.names:
                entry.append(_element("name"))
                entry[1].text = tp.names[tid]
            _arrange(t, entry, tp.entry_extras.get(tid, []))
            known.append(t)
    else:
        p = _element("integerpattern")
        p.text = tp.pattern if tp.pattern is not None else format_integer_pattern(tp.ids)
        known = [p]
    _arrange(el, known, tp.extras)
    return el


# -- ViewRegistrations -----------------------------------------------------------


def _registrations(data: SpimData):
    el = _element("ViewRegistrations")
    known = []
    for view in data.registrations:  # file order, kept for a faithful round trip
        reg = _element("ViewRegistration", {"timepoint": str(view.timepoint), "setup": str(view.setup)})
        chain = []
        for vt in data.registrations[view]:
            if vt.matrix is None:
                chain.append(copy.deepcopy(vt.element))
                continue
            t = _element("ViewTransform", {"type": "affine"})
            parts = []
            if vt.name is not None:
                parts.append(_element("Name"))
                parts[-1].text = vt.name
            parts.append(_element("affine"))
            parts[-1].text = format_numbers(to_xml_affine(vt.matrix))
            _arrange(t, parts, vt.extras)
            chain.append(t)
        _arrange(reg, chain, data.registration_extras.get(view, []))
        known.append(reg)
    _arrange(el, known, data.extras.get("ViewRegistrations", []))
    return el


# -- the five optional blocks ----------------------------------------------------


def _interest_points(data: SpimData):
    el = _element("ViewInterestPoints")
    known = []
    for ip in data.interest_points:
        attrib = {"timepoint": str(ip.view.timepoint), "setup": str(ip.view.setup),
                  "label": ip.label, "params": ip.params, **ip.attrib}
        e = _element("ViewInterestPointsFile", attrib)
        e.text = ip.path
        known.append(e)
    _arrange(el, known, data.extras.get("ViewInterestPoints", []))
    return el


def _bounding_boxes(data: SpimData):
    el = _element("BoundingBoxes")
    known = []
    for bb in data.bounding_boxes:
        e = _element("BoundingBoxDefinition", {"name": bb.name})
        mn, mx = _element("min"), _element("max")
        mn.text, mx.text = _vec(bb.lo, int), _vec(bb.hi, int)
        _arrange(e, [mn, mx], bb.extras)
        known.append(e)
    _arrange(el, known, data.extras.get("BoundingBoxes", []))
    return el


def _psfs(data: SpimData):
    el = _element("PointSpreadFunctions")
    known = []
    for psf in data.psfs:
        e = _element("BoundingBoxDefinition",
                     {"timepoint": str(psf.view.timepoint), "setup": str(psf.view.setup)})
        f = _element("File")
        f.text = psf.file
        _arrange(e, [f], psf.extras)
        known.append(e)
    _arrange(el, known, data.extras.get("PointSpreadFunctions", []))
    return el


def _stitching(data: SpimData):
    el = _element("StitchingResults")
    known = []
    for pr in data.stitching_results:
        e = _element(
            "PairwiseResult",
            {
                "view_setup_a": ",".join(str(v.setup) for v in pr.views_a),
                "view_setup_b": ",".join(str(v.setup) for v in pr.views_b),
                "tp_a": ",".join(str(v.timepoint) for v in pr.views_a),
                "tp_b": ",".join(str(v.timepoint) for v in pr.views_b),
            },
        )
        parts = [_element("shift"), _element("correlation"), _element("hash")]
        parts[0].text = format_numbers(to_xml_affine(pr.shift))
        parts[1].text = format_number(pr.correlation)
        parts[2].text = format_number(pr.hash)
        if pr.overlap is not None:
            ov = _element("overlap_boundingbox")
            ov.text = _vec(pr.overlap.lo) + " " + _vec(pr.overlap.hi)
            parts.append(ov)
        _arrange(e, parts, pr.extras)
        known.append(e)
    _arrange(el, known, data.extras.get("StitchingResults", []))
    return el


def _intensities(data: SpimData):
    el = _element("IntensityAdjustments")
    known = []
    for view in sorted(data.intensity_adjustments):
        m00, m01 = data.intensity_adjustments[view]
        e = _element("IntensityAdjustments", {"timepoint": str(view.timepoint), "setup": str(view.setup)})
        model = _element("model")
        model.text = f"{format_number(m00)} {format_number(m01)}"
        _arrange(e, [model], data.intensity_extras.get(view, []))
        known.append(e)
    _arrange(el, known, data.extras.get("IntensityAdjustments", []))
    return el
