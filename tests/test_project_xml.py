"""SpimData2 XML: every shared example parses and round-trips; negatives fail clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import example_xmls
from tilefuse import errors, open_project
from tilefuse.geometry import from_xml_affine, to_xml_affine
from tilefuse.project import ViewId
from tilefuse.project.timepoints import parse_integer_pattern
from xmlcompare import parse, xml_differences

POSITIVE = example_xmls()
NEGATIVE = example_xmls(negative=True)


@pytest.mark.parametrize("path", POSITIVE, ids=lambda p: p.name)
def test_example_parses_and_round_trips(path, tmp_path):
    project = open_project(path)
    assert project.views, "every example has views"
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    open_project(copy).save()  # unchanged project, saved over itself
    assert (tmp_path / f"{path.name}~1").read_bytes() == path.read_bytes(), "backup is the original"
    assert xml_differences(parse(path), parse(copy)) == []
    # and it reads back to the same model
    again = open_project(copy)
    assert again.views == project.views
    for view in project.views:
        chain = project.data.registrations.get(view)
        if chain and all(vt.matrix is not None for vt in chain):
            np.testing.assert_array_equal(again.model(view), project.model(view))


@pytest.mark.parametrize("path", NEGATIVE, ids=lambda p: p.name)
def test_negative_examples_fail_with_clear_error(path):
    with pytest.raises(errors.TilefuseError) as info:
        open_project(path)
    message = str(info.value)
    assert path.name in message
    assert "<" in message, "the message names the element"


def test_shared_examples_present_or_skipped(examples_dir):
    assert len(POSITIVE) >= 7 and len(NEGATIVE) == 2


def test_example_contents(examples_dir):
    p = open_project(examples_dir / "spimdata_example_timepointpattern.xml")
    assert p.timepoints == [0, 1, 2, 3, 40, 50]
    assert ViewId(0, 2) in p.missing_views and ViewId(0, 2) not in p.views
    angle = p.entities("angle")[1]
    assert angle.degrees == 120.0 and angle.axis == (0.0, 0.0, 1.0)  # xml "1 0 0" is x -> zyx
    assert p.setups[3].size == (387, 0, 0)

    k = open_project(examples_dir / "npy2bdv_kidney.xml")
    assert sorted(k.entities("channel")) == [0, 1, 2]
    assert [vt.name for vt in k.transforms(ViewId(0, 0))][-1] == "calibration"
    assert k.setups[0].voxel_size[0] == pytest.approx(160.0)  # z

    m = open_project(examples_dir / "pydbs_multimgzarr_v3_mesospim_2x2_2ch_2illum.xml")
    assert len(m.select(channel=0, illumination=1)) == 4
    groups = m.group_views()
    assert len(groups) == 4 and all(len(v) == 4 for v in groups.values())


def test_axis_order_is_pinned():
    # x translation 10, y 20, z 30; x scale 2, z scale 5
    m = from_xml_affine([2, 0, 0, 10, 0, 1, 0, 20, 0, 0, 5, 30])
    zyx_point = np.array([1.0, 1.0, 1.0, 1.0])  # z=1, y=1, x=1
    np.testing.assert_allclose(m @ zyx_point, [35, 21, 12, 1])
    assert to_xml_affine(m) == [2, 0, 0, 10, 0, 1, 0, 20, 0, 0, 5, 30]


def _write(tmp_path: Path, registrations: str, extra_setup: str = "", timepoints=None) -> Path:
    timepoints = timepoints or '<Timepoints type="pattern"><integerpattern>0</integerpattern></Timepoints>'
    text = f"""<?xml version="1.0" encoding="UTF-8"?>
<SpimData version="0.2"><BasePath type="relative">.</BasePath>
<SequenceDescription><ViewSetups><ViewSetup><id>0</id><size>4 3 2</size>{extra_setup}</ViewSetup></ViewSetups>
{timepoints}</SequenceDescription>
<ViewRegistrations>{registrations}</ViewRegistrations></SpimData>"""
    path = tmp_path / "dataset.xml"
    path.write_text(text)
    return path


def test_chain_order_last_listed_is_applied_first(tmp_path):
    reg = """<ViewRegistration timepoint="0" setup="0">
      <ViewTransform type="affine"><Name>translate</Name><affine>1 0 0 100 0 1 0 0 0 0 1 0</affine></ViewTransform>
      <ViewTransform type="affine"><Name>scale</Name><affine>2 0 0 0 0 1 0 0 0 0 1 0</affine></ViewTransform>
    </ViewRegistration>"""
    p = open_project(_write(tmp_path, reg))
    # voxel x=1: scale first (x=2), then translate (x=102). Reversed order would give 202.
    world = p.model(ViewId(0, 0)) @ np.array([0, 0, 1.0, 1])
    assert world[2] == 102
    assert p.setups[0].size == (2, 3, 4)
    box = p.world_box(ViewId(0, 0))
    assert box.lo == (0, 0, 100) and box.hi == (1, 2, 106)


def test_preconcatenate_goes_to_the_front(tmp_path):
    reg = """<ViewRegistration timepoint="0" setup="0"><ViewTransform type="affine"><Name>calibration</Name>
    <affine>1 0 0 0 0 1 0 0 0 0 3 0</affine></ViewTransform></ViewRegistration>"""
    path = _write(tmp_path, reg)
    p = open_project(path)
    shift = np.eye(4)
    shift[0, 3] = 0.5  # z
    p.preconcatenate(ViewId(0, 0), shift, "Stitching Transform")
    p.save()
    again = open_project(path)
    assert [vt.name for vt in again.transforms(ViewId(0, 0))] == ["Stitching Transform", "calibration"]
    np.testing.assert_allclose(again.model(ViewId(0, 0)) @ [1, 0, 0, 1], [3.5, 0, 0, 1])


@pytest.mark.parametrize(
    "affine, problem",
    [("", "has 0 numbers, expected 12"), ("1 0 0 0 0 1 0 0 0 0 1", "has 11 numbers"),
     ("1 0 0 a 0 1 0 0 0 0 1 0", "not numeric")],
)
def test_bad_affine_names_file_and_view(tmp_path, affine, problem):
    reg = f"""<ViewRegistration timepoint="0" setup="0"><ViewTransform type="affine">
    <affine>{affine}</affine></ViewTransform></ViewRegistration>"""
    with pytest.raises(errors.ProjectFormatError) as info:
        open_project(_write(tmp_path, reg))
    msg = str(info.value)
    assert "dataset.xml" in msg and 'timepoint="0" setup="0"' in msg and problem in msg


def test_missing_truncated_and_unknown(tmp_path):
    with pytest.raises(errors.MissingDataError, match="nothere.xml"):
        open_project(tmp_path / "nothere.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<SpimData><SequenceDescription><ViewSetups>")
    with pytest.raises(errors.ProjectFormatError, match="bad.xml.*not well-formed"):
        open_project(bad)
    reg = ('<ViewRegistration timepoint="0" setup="7">'
           '<ViewTransform type="affine"><affine>1 0 0 0 0 1 0 0 0 0 1 0</affine></ViewTransform></ViewRegistration>')
    with pytest.raises(errors.ProjectFormatError, match="setup 7"):
        open_project(_write(tmp_path, reg))


def test_unknown_elements_are_kept(tmp_path):
    reg = ('<Foo a="1"><bar/></Foo><ViewRegistration timepoint="0" setup="0">'
           '<ViewTransform type="affine"><affine>1 0 0 0 0 1 0 0 0 0 1 0</affine></ViewTransform></ViewRegistration>')
    path = _write(tmp_path, reg, extra_setup="<camera><name>c</name></camera>")
    before = parse(path)
    open_project(path).save()
    assert xml_differences(before, parse(path)) == []
    text = path.read_text()
    assert "<camera>" in text and '<Foo a="1">' in text


def test_unknown_loader_fails_only_for_pixels(tmp_path):
    path = _write(tmp_path, "")
    loader = '<ImageLoader format="spimreconstruction.lightsheetz1"/>'
    text = path.read_text().replace("<ViewSetups>", loader + "<ViewSetups>")
    path.write_text(text)
    p = open_project(path)
    with pytest.raises(errors.UnsupportedFormatError, match="lightsheetz1"):
        p.image(ViewId(0, 0))


def test_backups_rotate(tmp_path):
    reg = ('<ViewRegistration timepoint="0" setup="0">'
           '<ViewTransform type="affine"><affine>1 0 0 0 0 1 0 0 0 0 1 0</affine></ViewTransform></ViewRegistration>')
    path = _write(tmp_path, reg)
    p = open_project(path)
    for _ in range(7):
        p.save()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dataset.xml"] + [f"dataset.xml~{i}" for i in range(1, 6)]


@pytest.mark.parametrize(
    "pattern, ids",
    [("0", [0]), ("0,1-3,40-50:10", [0, 1, 2, 3, 40, 50]), ("5-3", [5, 4, 3]), ("", [0]), ("1-7:3", [1, 4, 7])],
)
def test_integer_pattern(pattern, ids):
    assert parse_integer_pattern(pattern) == ids


def test_timepoint_forms(tmp_path):
    reg = ""
    p = open_project(_write(tmp_path, reg,
                            timepoints='<Timepoints type="range"><first>2</first><last>4</last></Timepoints>'))
    assert p.timepoints == [2, 3, 4]
    p = open_project(_write(tmp_path, reg, timepoints='<Timepoints type="list"><Timepoint><id>7</id><name>a</name>'
                                                      '</Timepoint><Timepoint><id>3</id></Timepoint></Timepoints>'))
    assert p.timepoints == [7, 3]
    with pytest.raises(errors.ProjectFormatError, match="unknown type"):
        open_project(_write(tmp_path, reg, timepoints='<Timepoints type="weird"/>'))


@pytest.mark.parametrize("path", POSITIVE, ids=lambda p: p.name)
def test_summary_of_every_example(path):
    from tilefuse.project.summary import project_summary

    text = project_summary(open_project(path), detail=2)
    assert "views" in text and "registration" in text
