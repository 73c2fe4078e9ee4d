"""Interest points in BigStitcher's format: interestpoints.n5 and <ViewInterestPoints>, read and written."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import tilefuse
from tilefuse.demo import make_sample_project
from tilefuse.errors import MissingDataError, OutputExistsError, ProjectFormatError, UnsupportedFormatError
from tilefuse.interestpoints import (
    Correspondences,
    InterestPoints,
    add_reference,
    container_path,
    labels,
    load_correspondences,
    load_points,
    read_correspondences,
    read_points,
    write_correspondences,
    write_points,
)
from tilefuse.interestpoints.storage import points_group
from tilefuse.project.views import ViewId


def _java_dataset(folder: Path, values_xn: np.ndarray, dtype: str, block: list[int]) -> None:
    """An N5 dataset as N5's Java writer lays it out: dims x-first, big-endian blocks, gzip.

    Written without tilefuse's N5 code, so that reading it checks our codec against the format.
    ``values_xn`` has shape (columns, N) in Java's order (x = column index).
    """
    folder.mkdir(parents=True)
    cols, n = values_xn.shape
    (folder / "attributes.json").write_text(json.dumps({
        "dimensions": [cols, n], "blockSize": block, "dataType": dtype,
        "compression": {"type": "gzip", "useZlib": False, "level": -1}}))
    for bx in range(0, cols, block[0]):
        for by in range(0, n, block[1]):
            part = values_xn[bx:bx + block[0], by:by + block[1]]
            header = struct.pack(">HHII", 0, 2, part.shape[0], part.shape[1])
            # x fastest: C order over (N, columns)
            raw = np.ascontiguousarray(part.T).astype(np.dtype(dtype).newbyteorder(">")).tobytes()
            f = folder / str(bx // block[0]) / str(by // block[1])
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(header + gzip.compress(raw))


def _java_points(container: Path, group: str, ids, xyz) -> None:
    ip = container / group / "interestpoints"
    ip.mkdir(parents=True)
    (ip / "attributes.json").write_text(json.dumps({"pointcloud": "1.0.0", "type": "list",
                                                    "list version": "1.0.0"}))
    _java_dataset(ip / "id", np.asarray(ids, dtype=np.uint64).reshape(1, -1), "uint64", [1, 300000])
    _java_dataset(ip / "loc", np.asarray(xyz, dtype=np.float64).T, "float64", [3, 300000])


def test_reads_the_layout_bigstitcher_writes(tmp_path):
    xyz = np.array([[10.5, 20.25, 3.0], [1.0, 2.0, 3.0], [7.0, 8.0, 9.5]])
    _java_points(tmp_path, "tpId_0_viewSetupId_4/beads", [7, 3, 11], xyz)
    pts = read_points(tmp_path, "tpId_0_viewSetupId_4/beads")
    assert pts.ids.tolist() == [7, 3, 11]
    np.testing.assert_array_equal(pts.loc, xyz[:, ::-1])  # zyx here
    # correspondences: point 7 of this view is point 2 of view (0, 5) "beads", 11 is point 9 of (1, 2) "nuclei"
    corr = tmp_path / "tpId_0_viewSetupId_4/beads/correspondences"
    corr.mkdir()
    (corr / "attributes.json").write_text(json.dumps({"correspondences": "1.0.0",
                                                      "idMap": {"0,5,beads": 0, "1,2,nuclei": 1.0}}))
    _java_dataset(corr / "data", np.array([[7, 11], [2, 9], [0, 1]], dtype=np.uint64), "uint64", [1, 300000])
    table = read_correspondences(tmp_path, "tpId_0_viewSetupId_4/beads")
    assert table.ids.tolist() == [7, 11] and table.other_ids.tolist() == [2, 9]
    assert table.other_views == [ViewId(0, 5), ViewId(1, 2)] and table.other_labels == ["beads", "nuclei"]


def test_points_and_correspondences_round_trip_in_bigstitchers_layout(tmp_path):
    rng = np.random.default_rng(1)
    loc = rng.uniform(0, 500, (1000, 3))
    pts = InterestPoints(np.arange(1000) * 2, loc, params="DOG s=1.8")
    write_points(tmp_path, "tpId_2_viewSetupId_1/beads", pts)
    ip = tmp_path / "tpId_2_viewSetupId_1/beads/interestpoints"
    attrs = json.loads((ip / "attributes.json").read_text())
    assert attrs["pointcloud"] == "1.0.0" and attrs["type"] == "list" and attrs["list version"] == "1.0.0"
    loc_attrs = json.loads((ip / "loc/attributes.json").read_text())
    assert loc_attrs["dimensions"] == [3, 1000] and loc_attrs["blockSize"] == [3, 300000]
    assert loc_attrs["dataType"] == "float64" and loc_attrs["compression"]["type"] == "gzip"
    assert json.loads((ip / "id/attributes.json").read_text())["dimensions"] == [1, 1000]
    back = read_points(tmp_path, "tpId_2_viewSetupId_1/beads")
    np.testing.assert_array_equal(back.ids, pts.ids)
    np.testing.assert_array_equal(back.loc, loc)
    # the first stored number is x of point 0 (BigStitcher's order)
    raw = gzip.decompress((ip / "loc/0/0").read_bytes()[12:])
    assert np.frombuffer(raw[:8], ">f8")[0] == loc[0, 2]

    table = Correspondences([0, 2, 4], [5, 6, 7], [ViewId(2, 0), ViewId(2, 0), ViewId(2, 3)],
                            ["beads", "beads", "beads"])
    write_correspondences(tmp_path, "tpId_2_viewSetupId_1/beads", table)
    attrs = json.loads((tmp_path / "tpId_2_viewSetupId_1/beads/correspondences/attributes.json").read_text())
    assert attrs["correspondences"] == "1.0.0" and set(attrs["idMap"]) == {"2,0,beads", "2,3,beads"}
    back = read_correspondences(tmp_path, "tpId_2_viewSetupId_1/beads")
    assert back.ids.tolist() == [0, 2, 4] and back.other_ids.tolist() == [5, 6, 7]
    assert back.other_views == table.other_views
    # an empty list is two datasets of dimensions [0], as BigStitcher writes it
    write_points(tmp_path, "tpId_0_viewSetupId_0/beads", InterestPoints([], np.zeros((0, 3))))
    assert json.loads((tmp_path / "tpId_0_viewSetupId_0/beads/interestpoints/loc/attributes.json")
                      .read_text())["dimensions"] == [0]
    assert len(read_points(tmp_path, "tpId_0_viewSetupId_0/beads")) == 0


def test_existing_points_are_replaced_only_when_asked(tmp_path):
    group = "tpId_0_viewSetupId_0/beads"
    write_points(tmp_path, group, InterestPoints([1], [[1, 2, 3]], params="DOG s=1.8"))
    write_correspondences(tmp_path, group, Correspondences([1], [4], [ViewId(0, 1)], ["beads"]))
    # a repeated run that finds the very same points keeps them and their (still valid) correspondences
    write_points(tmp_path, group, InterestPoints([1], [[1, 2, 3]], params="DOG s=1.8"))
    assert len(read_correspondences(tmp_path, group)) == 1
    # the same parameters, other points (the image changed): replaced, the now stale correspondences dropped
    write_points(tmp_path, group, InterestPoints([1, 2], [[1, 2, 3], [4, 5, 6]], params="DOG s=1.8"))
    assert len(read_points(tmp_path, group)) == 2 and len(read_correspondences(tmp_path, group)) == 0
    with pytest.raises(OutputExistsError, match="beads"):
        write_points(tmp_path, group, InterestPoints([1], [[0, 0, 0]], params="DOG s=3"))
    assert len(read_points(tmp_path, group)) == 2
    write_points(tmp_path, group, InterestPoints([1], [[0, 0, 0]], params="DOG s=3"), overwrite=True)
    # damaged points can be overwritten
    (tmp_path / group / "interestpoints/attributes.json").write_text('{"pointcloud": "1.0')
    write_points(tmp_path, group, InterestPoints([1], [[0, 0, 0]], params="DOG s=3"), overwrite=True)
    assert len(read_points(tmp_path, group)) == 1
    assert not [p for p in (tmp_path / "tpId_0_viewSetupId_0").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage, error, words", [
    ("ids_vs_loc", ProjectFormatError, "2 ids but 3 locations"),
    ("loc_2d", ProjectFormatError, "dimensions [3, N]"),
    ("repeat", ProjectFormatError, "ids repeat"),
    ("nan", ProjectFormatError, "not finite"),
    ("missing", MissingDataError, "no interest points"),
])
def test_damaged_points_are_refused_with_the_file(tmp_path, damage, error, words):
    group = "tpId_0_viewSetupId_0/beads"
    xyz = np.arange(9.0).reshape(3, 3)
    ids = [0, 1, 2]
    if damage == "ids_vs_loc":
        ids = [0, 1]
    if damage == "repeat":
        ids = [0, 1, 1]
    if damage == "nan":
        xyz[1, 1] = np.nan
    if damage != "missing":
        _java_points(tmp_path, group, ids, xyz)
    if damage == "loc_2d":
        shutil.rmtree(tmp_path / group / "interestpoints/loc")
        _java_dataset(tmp_path / group / "interestpoints/loc", xyz[:, :2].T.copy(), "float64", [2, 300000])
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        read_points(tmp_path, group)


def test_paths_leaving_the_container_and_legacy_text_files_are_refused(tmp_path):
    with pytest.raises(ProjectFormatError, match="inside interestpoints.n5"):
        read_points(tmp_path, "../../etc/beads")
    with pytest.raises(UnsupportedFormatError, match="old text format"):
        read_points(tmp_path, "interestpoints/tpId_0_viewSetupId_0.beads")


def test_a_real_bigstitcher_xml_refers_to_its_points(examples_dir, tmp_path):
    """The pydantic-bigstitcher fixture (BigStitcher-Spark DoG points): its reference resolves into
    interestpoints.n5 beside the XML; with the points there (in BigStitcher's layout) they load, and
    saving the project keeps the reference and its parameters."""
    xml = tmp_path / "dataset.xml"
    shutil.copy(examples_dir / "pydbs_n5_15tiles_interestpoints.xml", xml)
    project = tilefuse.open_project(xml)
    assert labels(project) == {"beads": [ViewId(0, 0)]}
    with pytest.raises(MissingDataError, match="tpId_0_viewSetupId_0/beads"):
        load_points(project, "beads")
    _java_points(container_path(project), "tpId_0_viewSetupId_0/beads", [0, 1], [[1.0, 2.0, 3.0], [4, 5, 6]])
    pts = load_points(project, "beads")[ViewId(0, 0)]
    assert pts.loc.tolist() == [[3, 2, 1], [6, 5, 4]]
    assert pts.params.startswith("DOG (Spark) s=1.8 t=0.003")
    assert load_correspondences(project, "beads")[ViewId(0, 0)].ids.size == 0
    add_reference(project, ViewId(0, 1), "beads", "DOG s=2")
    project.save(tmp_path / "out" / "saved.xml")
    again = tilefuse.open_project(tmp_path / "out" / "saved.xml")
    assert labels(again) == {"beads": [ViewId(0, 0), ViewId(0, 1)]}
    assert load_points(again, "beads", [ViewId(0, 0)])[ViewId(0, 0)].loc.tolist() == [[3, 2, 1], [6, 5, 4]]


def _examples_with_points() -> list[str]:
    from conftest import EXAMPLES

    if not EXAMPLES.is_dir():
        return ["(none: ../shared is absent)"]
    return sorted(p.name for p in EXAMPLES.glob("*.xml") if "<ViewInterestPointsFile" in p.read_text())


@pytest.mark.parametrize("name", _examples_with_points())
def test_every_real_project_with_points_lists_them_and_they_load_once_written(name, examples_dir, tmp_path):
    """Each real XML that refers to interest points (parsed here with ElementTree, independently of
    tilefuse): tilefuse lists the same labels, views, params and groups; the missing container is
    named; points written where the XML says (by a Java-layout writer) load in z y x, and tilefuse's
    own writer round-trips them through the same reference."""
    import xml.etree.ElementTree as ET

    xml = tmp_path / name
    shutil.copy(examples_dir / name, xml)
    refs = [(int(e.get("timepoint")), int(e.get("setup")), e.get("label"), e.get("params"), e.text.strip())
            for e in ET.parse(xml).iter("ViewInterestPointsFile")]
    assert refs, name
    project = tilefuse.open_project(xml)
    listed = labels(project)
    assert {lab: sorted(v) for lab, v in listed.items()} == {
        lab: sorted(ViewId(t, s) for t, s, la, _, _ in refs if la == lab) for lab in {r[2] for r in refs}}
    for t, s, label, params, group in refs:
        view = ViewId(t, s)
        with pytest.raises(MissingDataError, match=group):
            load_points(project, label, [view])
        xyz = np.array([[10.5, 20.25, 3.0], [1.0, 2.0, 4.5], [7.0, 8.0, 9.0]])
        _java_points(container_path(project), group, [5, 6, 9], xyz)
        pts = load_points(project, label, [view])[view]
        assert pts.ids.tolist() == [5, 6, 9]
        np.testing.assert_array_equal(pts.loc, xyz[:, ::-1])  # stored x y z, read z y x
        assert pts.params == params
        shutil.rmtree(container_path(project) / group)
        write_points(container_path(project), group, InterestPoints(pts.ids[::-1], pts.loc[::-1], params))
        again = load_points(project, label, [view])[view]
        assert again.ids.tolist() == [9, 6, 5]
        np.testing.assert_array_equal(again.loc, pts.loc[::-1])
        assert read_points(container_path(project), group).params == params


def test_points_far_outside_their_view_are_refused(tmp_path):
    """Points in another frame (a downsampled image's voxels, another view's) disagree with the XML."""
    project = make_sample_project(tmp_path, grid=(1, 2), tile_shape=(48, 64))  # views of x 64, y 48, z 1
    view = ViewId(0, 0)
    near = [[0.0, -1.2, 3.0], [0.0, 47.9, 64.5]]  # sub-voxel fits just beyond the edges are fine
    write_points(container_path(project), points_group(view, "beads"), InterestPoints([0, 1], near, params="p"))
    add_reference(project, view, "beads", "p")
    assert len(load_points(project, "beads")[view]) == 2
    write_points(container_path(project), points_group(view, "beads"),
                 InterestPoints([0, 1, 2], near + [[0.0, 10.0, 250.0]], params="p"), overwrite=True)
    with pytest.raises(ProjectFormatError, match=r"1 of 3 interest points of view \(timepoint 0, setup 0\) lie "
                       r"outside the view's size 64 48 1 \(x y z\), e\.g\. point 2 at 250 10 0"):
        load_points(project, "beads")
