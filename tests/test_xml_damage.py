"""Damaged project XML: every case is refused with a TilefuseError naming the file, or opens
and saves back equivalently (nothing silently dropped, nothing guessed).

The corpus is generated here, at test time, from two small sample projects
(2D and 3D, written by ``make_sample_project`` and enriched with the optional
blocks) and from the real XMLs in ``../shared/bigstitcher_examples`` (when
present): truncations, deleted / duplicated / renamed elements, bad numbers,
invalid bytes, huge timepoint patterns, XInclude children.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

from conftest import example_xmls
from tilefuse import errors, open_project
from tilefuse.demo import make_sample_project
from tilefuse.project import ViewId
from xmlcompare import xml_differences

EXAMPLES = {p.name: p for p in example_xmls()}

# The optional blocks our writer leaves empty, filled so that their parsers are exercised too.
_ENRICH_3D = {
    "BoundingBoxes": '<BoundingBoxDefinition name="bb"><min>0 0 0</min><max>60 30 20</max></BoundingBoxDefinition>',
    "StitchingResults": (
        '<PairwiseResult view_setup_a="0" view_setup_b="1" tp_a="0" tp_b="0">'
        "<shift>1.0 0.0 0.0 0.5 0.0 1.0 0.0 -0.25 0.0 0.0 1.0 0.0</shift><correlation>0.9</correlation>"
        "<hash>12.5</hash><overlap_boundingbox>28.0 0.0 0.0 31.0 31.0 21.0</overlap_boundingbox></PairwiseResult>"
    ),
    "IntensityAdjustments": (
        '<IntensityAdjustments timepoint="0" setup="0"><model>1.0 0.0</model></IntensityAdjustments>'
        '<IntensityAdjustments timepoint="0" setup="1"><model>1.1 -2.0</model></IntensityAdjustments>'
    ),
    "ViewInterestPoints": ('<ViewInterestPointsFile timepoint="0" setup="0" label="beads" params="dog">'
                           "interestpoints/tpId_0_viewSetupId_0/beads</ViewInterestPointsFile>"),
    "PointSpreadFunctions": ('<BoundingBoxDefinition timepoint="0" setup="0"><File>psf_0.tif</File>'
                             '</BoundingBoxDefinition>'),
}
_LIST_TIMEPOINTS = '<Timepoints type="list"><Timepoint><id>0</id><name>t0</name></Timepoint></Timepoints>'

SAMPLE_TAGS = [
    "BasePath", "SequenceDescription", "ImageLoader", "hdf5", "ViewSetups", "ViewSetup", "id", "name",
    "size", "voxelSize", "unit", "attributes", "illumination", "channel", "tile", "angle", "Attributes",
    "Illumination", "Channel", "Tile", "location", "Angle", "Timepoints", "MissingViews",
    "ViewRegistrations", "ViewRegistration", "ViewTransform", "Name", "affine", "ViewInterestPoints",
    "BoundingBoxes", "PointSpreadFunctions", "StitchingResults", "IntensityAdjustments",
]
TAGS = {
    "sample2d": SAMPLE_TAGS + ["Timepoint"],
    "sample3d": SAMPLE_TAGS + ["integerpattern", "ViewInterestPointsFile", "BoundingBoxDefinition", "min",
                               "max", "File", "PairwiseResult", "shift", "correlation", "hash",
                               "overlap_boundingbox", "model"],
}


def _tags_of(path: Path) -> list[str]:
    root = etree.parse(str(path)).getroot()
    out = []
    for el in root.iter():
        if isinstance(el.tag, str) and el is not root and el.tag not in out:
            out.append(el.tag)
    return out


for _name, _path in EXAMPLES.items():
    TAGS[_name] = _tags_of(_path)

#: Elements the XML reader interprets; others (another tool's, <ImageLoader>'s content,
#: which the loaders read) are kept as they are, repeated or not.
READER_TAGS = set(TAGS["sample2d"] + TAGS["sample3d"]) - {"hdf5"} | {
    "first", "last", "axis", "degrees", "MissingView"}
#: Elements of which a second copy is legitimate: a chain may repeat a transform.
REPEATABLE = {"ViewTransform"}
#: Path elements inside <ImageLoader> that must not repeat either (project/paths.py).
LOADER_PATHS = {"hdf5", "file"}
#: Numbers that must be integers / finite wherever the XML reader reads them.
INT_TAGS = {"size", "id", "first", "last", "min", "max", "illumination", "channel", "tile", "angle"}
NUMBER_TAGS = INT_TAGS | {"affine", "location", "axis", "degrees", "model", "shift", "hash",
                          "overlap_boundingbox"}
BAD_NUMBERS = ["NaN", "inf", "-1", "0", "1.5", "1e300", "abc"]


def _cases():
    cases = []
    for base, tags in TAGS.items():
        sample = base.startswith("sample")
        for k in range(16 if sample else 6):
            cases.append((base, "truncate", k))
        for tag in tags:
            cases.append((base, "delete", tag))
            cases.append((base, "duplicate", tag))
            if sample:
                cases.append((base, "rename", tag))
        for value in BAD_NUMBERS:
            for k in range(5 if sample else 2):
                cases.append((base, f"number={value}", k))
        for k in range(3 if sample else 1):
            cases.append((base, "bad-bytes", k))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """name -> (folder, XML bytes) of every base project; the samples are built here."""
    out = {}
    root = tmp_path_factory.mktemp("damage")
    for name, ndim, grid, tile in (("sample2d", 2, (1, 2), (32, 32)), ("sample3d", 3, (1, 1, 2), (8, 32, 32))):
        folder = root / name
        make_sample_project(folder, ndim=ndim, grid=grid, tile_shape=tile, seed=1)
        tree = etree.parse(str(folder / "dataset.xml"), etree.XMLParser(remove_blank_text=True))
        if ndim == 3:
            for tag, xml in _ENRICH_3D.items():
                block = tree.getroot().find(tag)
                for child in etree.fromstring(f"<x>{xml}</x>"):
                    block.append(child)
        else:
            old = tree.getroot().find("SequenceDescription/Timepoints")
            old.getparent().replace(old, etree.fromstring(_LIST_TIMEPOINTS))
        data = etree.tostring(tree, xml_declaration=True, encoding="UTF-8", pretty_print=True)
        (folder / "dataset.xml").write_bytes(data)
        out[name] = (folder, data)
    for name, path in EXAMPLES.items():
        folder = root / name.removesuffix(".xml")
        folder.mkdir()
        out[name] = (folder, path.read_bytes())
    return out


def _numeric_tokens(root):
    """(element, token index) of every number the XML reader parses, outside <ImageLoader>."""
    found = []
    for el in root.iter():
        if not isinstance(el.tag, str) or el.tag not in NUMBER_TAGS or len(el):
            continue
        if any(a.tag == "ImageLoader" for a in el.iterancestors()):
            continue
        if el.tag in ("illumination", "channel", "tile", "angle") and el.getparent().tag != "attributes":
            continue
        for i, _ in enumerate((el.text or "").split()):
            found.append((el, i))
    return found


def _damage(data: bytes, op: str, arg):
    """The damaged bytes, and whether the damage must be refused (True) or may open."""
    if op == "truncate":
        # 16 offsets spread over the file, never at its very end
        return data[: int(len(data) * (arg + 0.5) / 16)], True
    if op == "bad-bytes":
        # inside a text value: the bytes are not UTF-8
        text_at = [i for i in range(len(data) - 1) if data[i : i + 1] == b">" and data[i + 1 : i + 2].isalnum()]
        at = text_at[(arg * 7 + 3) % len(text_at)] + 1
        return data[:at] + b"\xff\xfe" + data[at:], True
    root = etree.fromstring(data, etree.XMLParser(remove_blank_text=True))
    must_fail = False
    if op in ("delete", "duplicate", "rename"):
        el = next(e for e in root.iter() if e.tag == arg and e is not root)
        interpreted = all(a.tag in READER_TAGS for a in [el, *el.iterancestors()] if a is not root)
        if op == "delete":
            el.getparent().remove(el)
        elif op == "duplicate":
            el.addnext(copy.deepcopy(el))
            must_fail = (interpreted and arg not in REPEATABLE) or arg in LOADER_PATHS
        else:
            el.tag = arg + "Renamed"
    elif op.startswith("number="):
        value = op.split("=", 1)[1]
        tokens = _numeric_tokens(root)
        el, i = tokens[(arg * 37 + 5) % len(tokens)]
        parts = el.text.split()
        parts[i] = value
        el.text = " ".join(parts)
        strict = {"NaN", "inf", "abc"} if el.tag != "correlation" else {"abc"}
        integer = el.tag in INT_TAGS and el.getparent().tag != "voxelSize"
        must_fail = value in strict or (value in ("1.5", "1e300") and integer)
    else:
        raise AssertionError(op)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8"), must_fail


def _normalised(path: Path):
    """The tree with comments dropped and NaN tokens spelled one way (NaN == NaN here)."""
    root = etree.parse(str(path), etree.XMLParser(remove_blank_text=True, remove_comments=True)).getroot()
    for el in root.iter():
        if isinstance(el.tag, str) and el.text and "nan" in el.text.lower():
            el.text = " ".join("NAN" if t.lower() == "nan" else t for t in el.text.split())
    return root


# Outcome counts, reported at the end of the module (see test_report_counts).
OUTCOMES = {"refused": 0, "opened": 0}


@pytest.mark.parametrize("base, op, arg", CASES, ids=[f"{b}-{o}-{a}" for b, o, a in CASES])
def test_damaged_xml(bases, base, op, arg):
    folder, data = bases[base]
    damaged, must_fail = _damage(data, op, arg)
    name = f"case-{op}-{arg}.xml".replace("=", "_")
    path = folder / name
    path.write_bytes(damaged)
    start = time.perf_counter()
    try:
        project = open_project(path)
    except errors.TilefuseError as exc:
        assert time.perf_counter() - start < 2.0
        assert name in str(exc), f"the message does not name the file: {exc}"
        OUTCOMES["refused"] += 1
        return
    assert not must_fail, f"{op} {arg} of {base} should have been refused"
    OUTCOMES["opened"] += 1
    # Opened: then the model holds exactly what the file says, and saving shows it.
    saved = folder / f"saved-{name}"
    project.save(saved, backup=False)
    before, after = _normalised(path), _normalised(saved)
    for tag in ("BasePath", "ViewRegistrations"):  # the writer always writes these two
        if before.find(tag) is None and after.find(tag) is not None:
            after.remove(after.find(tag))
    assert xml_differences(before, after) == []
    assert open_project(saved).views == project.views


def test_report_counts():
    """Runs last in this module (pytest keeps file order): prints the corpus counts."""
    total = OUTCOMES["refused"] + OUTCOMES["opened"]
    print(f"\nXML damage corpus: {len(CASES)} cases, {OUTCOMES['refused']} refused with a TilefuseError, "
          f"{OUTCOMES['opened']} opened and saved back equivalently")
    if total:  # the whole module ran (not a -k selection)
        assert total == len(CASES)


# -- specific guarantees ------------------------------------------------------------


_PATTERN_TIMEPOINTS = '<Timepoints type="pattern"><integerpattern>0</integerpattern></Timepoints>'


def _project_xml(tmp_path: Path, *, timepoints: str = _PATTERN_TIMEPOINTS,
                 affine: str = "1 0 0 0 0 1 0 0 0 0 1 0", setups: int = 1, inner: str = "") -> Path:
    setup_xml = "".join(f"<ViewSetup><id>{i}</id><size>4 3 2</size></ViewSetup>" for i in range(setups))
    text = f"""<?xml version="1.0" encoding="UTF-8"?>
<SpimData version="0.2"><BasePath type="relative">.</BasePath>
<SequenceDescription><ViewSetups>{setup_xml}</ViewSetups>{timepoints}</SequenceDescription>
<ViewRegistrations><ViewRegistration timepoint="0" setup="0">
<ViewTransform type="affine"><affine>{affine}</affine></ViewTransform>{inner}
</ViewRegistration></ViewRegistrations></SpimData>"""
    path = tmp_path / "dataset.xml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("timepoints, count", [
    ('<Timepoints type="pattern"><integerpattern>0-10000000</integerpattern></Timepoints>', "10,000,001"),
    ('<Timepoints type="pattern"><integerpattern>0-1000000000</integerpattern></Timepoints>', "1,000,000,001"),
    ('<Timepoints type="pattern"><integerpattern>0-5,7-99999999999:2</integerpattern></Timepoints>', "50,000,000,003"),
    ('<Timepoints type="range"><first>0</first><last>2000000000</last></Timepoints>', "2,000,000,001"),
])
def test_huge_timepoint_lists_are_refused_at_once(tmp_path, timepoints, count):
    path = _project_xml(tmp_path, timepoints=timepoints)
    start = time.perf_counter()
    with pytest.raises(errors.ProjectFormatError, match=f"dataset.xml, <Timepoints.*{count} timepoints") as info:
        open_project(path)
    assert time.perf_counter() - start < 0.5
    assert "100,000" in str(info.value)


def test_too_many_views_are_refused(tmp_path):
    # 11 setups x 100,000 timepoints: each count is allowed, their product is not
    path = _project_xml(tmp_path, setups=11,
                        timepoints='<Timepoints type="pattern"><integerpattern>0-99999</integerpattern></Timepoints>')
    with pytest.raises(errors.ProjectFormatError, match=r"11 setups × 100,000 timepoints = 1,100,000 views"):
        open_project(path)


@pytest.mark.parametrize("affine, problem", [
    ("0 0 0 0 0 0 0 0 0 0 0 0", "singular"),
    ("1 0 0 0 2 0 0 0 0 0 1 0", "singular"),  # rank 2: x and y collapse onto one line
    ("1e200 0 0 0 0 1 0 0 0 0 1 0", "not finite"),  # squared by the second transform below
    ("1 0 0 1e300 0 1 0 0 0 0 1 0", "world coordinates"),
])
def test_composed_models_must_be_invertible(tmp_path, affine, problem):
    inner = f'<ViewTransform type="affine"><affine>{affine}</affine></ViewTransform>'
    path = _project_xml(tmp_path, affine=affine, inner=inner)
    with pytest.raises(errors.ProjectFormatError, match=problem) as info:
        open_project(path)
    assert 'dataset.xml, <ViewRegistration timepoint="0" setup="0">' in str(info.value)


def test_duplicates_name_both_occurrences(tmp_path):
    path = _project_xml(tmp_path)
    path.write_text(path.read_text().replace("<size>4 3 2</size>", "<size>4 3 2</size>\n<size>8 3 2</size>"))
    with pytest.raises(errors.ProjectFormatError) as info:
        open_project(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}, <ViewSetup> id 0 <size>: appears twice")
    assert "line 3: <size>4 3 2</size>" in msg and "line 4: <size>8 3 2</size>" in msg


def test_size_without_pixels_may_be_zero_but_never_negative_or_fractional(tmp_path):
    # spimdata's own example has <size>0 0 387</size> in a project without an <ImageLoader>
    path = _project_xml(tmp_path)
    path.write_text(path.read_text().replace("<size>4 3 2</size>", "<size>0 0 2</size>"))
    assert open_project(path).setups[0].size == (2, 0, 0)
    loader = '<ImageLoader format="bdv.hdf5"><hdf5 type="relative">d.h5</hdf5></ImageLoader>'
    with_loader = path.read_text().replace("<ViewSetups>", loader + "<ViewSetups>")
    path.write_text(with_loader)
    with pytest.raises(errors.ProjectFormatError,
                       match=r"<ViewSetup> id 0 <size>: '0 0 2': every number must be at least 1"):
        open_project(path)
    for bad in ("4 -3 2", "4 3 2.5", "4 3 NaN", "4 3"):
        path.write_text(with_loader.replace("<size>0 0 2</size>", f"<size>{bad}</size>"))
        with pytest.raises(errors.ProjectFormatError, match=r"dataset.xml, <ViewSetup> id 0 <size>"):
            open_project(path)


XI = '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="more.xml"/>'


@pytest.mark.parametrize("anchor", [
    '<SpimData version="0.2">', "<ViewSetups>", "<ViewSetup><id>0</id>", "<attributes>", "<tile>0</tile>",
    '<ViewTransform type="affine">', "</affine>", "<Timepoint>", "<MissingViews>", "<ViewRegistrations>",
    '<IntensityAdjustments timepoint="0" setup="0">', "</ViewRegistration>",
])
def test_xinclude_is_kept_where_it_was(tmp_path, anchor):
    """An <xi:include> is neither resolved nor dropped: saving writes it back in place."""
    (tmp_path / "more.xml").write_text("<ViewSetup><id>5</id><size>1 1 1</size></ViewSetup>")
    text = """<?xml version="1.0" encoding="UTF-8"?>
<SpimData version="0.2"><BasePath type="relative">.</BasePath>
<SequenceDescription><ViewSetups><ViewSetup><id>0</id><size>4 3 2</size><attributes><tile>0</tile></attributes></ViewSetup></ViewSetups>
<Timepoints type="list"><Timepoint><id>0</id></Timepoint></Timepoints><MissingViews></MissingViews></SequenceDescription>
<ViewRegistrations><ViewRegistration timepoint="0" setup="0"><ViewTransform type="affine"><affine>1 0 0 0 0 1 0 0 0 0 1 0</affine></ViewTransform></ViewRegistration></ViewRegistrations>
<IntensityAdjustments><IntensityAdjustments timepoint="0" setup="0"><model>1 0</model></IntensityAdjustments></IntensityAdjustments>
</SpimData>"""  # noqa: E501 - one element per line, as written; lines are the document's
    assert anchor in text
    path = tmp_path / "dataset.xml"
    path.write_text(text.replace(anchor, anchor + XI, 1))
    project = open_project(path)
    assert list(project.setups) == [0], "the include is not resolved"
    saved = project.save(tmp_path / "saved.xml", backup=False)
    before, after = _normalised(path), _normalised(saved)
    assert xml_differences(before, after) == []
    assert saved.read_text().count('href="more.xml"') == 1


@pytest.mark.parametrize("where_", ["<size>", "<affine>", '<BasePath type="relative">', "<id>"])
def test_xinclude_in_a_value_is_refused(tmp_path, where_):
    path = _project_xml(tmp_path)
    path.write_text(path.read_text().replace(where_, where_ + XI, 1))
    with pytest.raises(errors.ProjectFormatError, match="contains <xi:include>.*tilefuse does not resolve XInclude"):
        open_project(path)


@pytest.mark.parametrize("raw, problem", [
    (b"", "not well-formed XML"),
    (b"\x00\x01\x02garbage", "not well-formed XML"),
    (b"<?xml version='1.0' encoding='UTF-8'?><SpimData><BasePath>caf\xe9</BasePath></SpimData>",
     "not valid text in its declared encoding"),
    (b"<?xml version='1.0' encoding='UTF-8'?><Project/>", "the root element is not <SpimData>"),
    (b"<?xml version='1.0' encoding='klingon'?><SpimData/>", "Unsupported encoding"),
])
def test_not_a_project(tmp_path, raw, problem):
    path = tmp_path / "dataset.xml"
    path.write_bytes(raw)
    with pytest.raises(errors.ProjectFormatError, match=problem) as info:
        open_project(path)
    assert str(path) in str(info.value)


def test_unreadable_file(tmp_path, monkeypatch):
    path = _project_xml(tmp_path)

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(errors.TilefuseError, match="dataset.xml: cannot read the project XML .Permission denied"):
        open_project(path)


def test_unforeseen_failure_becomes_a_project_format_error(tmp_path, monkeypatch):
    """The safety net: a bug in a parse step is reported against the file, with its cause kept."""
    from tilefuse.project import xml_read

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(xml_read, "_parse_registrations", broken)
    with pytest.raises(errors.ProjectFormatError, match="dataset.xml: cannot be read as a SpimData project") as info:
        open_project(_project_xml(tmp_path))
    assert isinstance(info.value.__cause__, KeyError)


def test_valid_edge_cases_still_open(tmp_path):
    """What must not be refused: a flipped axis, an integral size written as 4.0."""
    path = _project_xml(tmp_path, affine="-1 0 0 0 0 1 0 0 0 0 1 0")
    path.write_text(path.read_text().replace("<size>4 3 2</size>", "<size>4.0 3 2</size>"))
    project = open_project(path)
    assert project.setups[0].size == (2, 3, 4)
    np.testing.assert_array_equal(project.model(ViewId(0, 0))[2, 2], -1.0)


def test_xinclude_stays_after_the_last_transform_when_the_chain_grows(tmp_path):
    path = _project_xml(tmp_path, inner=XI)
    project = open_project(path)
    project.preconcatenate(ViewId(0, 0), np.eye(4), "Stitching Transform")
    saved = project.save(tmp_path / "saved.xml", backup=False)
    reg = etree.parse(str(saved)).getroot().find("ViewRegistrations/ViewRegistration")
    assert [etree.QName(c).localname for c in reg] == ["ViewTransform", "ViewTransform", "include"]


@pytest.mark.parametrize("fmt,tag", [("n5", "n5"), ("zarr", "zarr"), ("zarr", "zgroups"), ("zarr", "zgroups/zgroup"),
                                     ("tiff", "files"), ("tiff", "ZGrouped"), ("tiff", "files/FileMapping")])
def test_duplicated_loader_elements_are_refused(tmp_path, fmt, tag):
    """Inside <ImageLoader> too, an element given twice is ambiguous: which container or file is meant?"""
    project = make_sample_project(tmp_path, grid=(1, 2), tile_shape=(32, 32), format=fmt, overwrite=True)
    tree = etree.parse(str(project.path))
    element = tree.find("SequenceDescription/ImageLoader").find(tag)
    element.addnext(copy.deepcopy(element))
    tree.write(str(project.path))
    with pytest.raises(errors.TilefuseError, match=r"twice|2 times") as err:
        open_project(project.path).image(project.views[0])
    assert "dataset.xml" in str(err.value)
