"""``split.*`` loaders: views cut out of another loader's views (BigStitcher's "Split images")."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from lxml import etree

import tilefuse
from tilefuse.demo import make_sample_project
from tilefuse.errors import MissingDataError, ProjectFormatError
from tilefuse.loaders._split import SplitLoader
from tilefuse.project.views import ViewId
from xmlcompare import parse, xml_differences

# Each original setup (numpy order z y x, 20 x 70 x 90 voxels) is cut into two
# overlapping halves along x; boxes are inclusive, as in the XML.  The second
# half starts at an odd x so that its pyramid levels start between voxels.
HALVES = [((0, 0, 0), (19, 69, 51)), ((2, 5, 37), (19, 69, 89))]


def _split_xml(original_xml, out_xml, fmt="split.viewerimgloader"):
    """Rewrite a project as BigStitcher's split would: new setups, wrapped loader, shifted models."""
    tree = etree.parse(str(original_xml))
    root = tree.getroot()
    seq = root.find("SequenceDescription")
    old_loader = seq.find("ImageLoader")
    old_setups = seq.find("ViewSetups")
    split = etree.Element("ImageLoader", format=fmt)
    split.append(copy.deepcopy(old_loader))
    old_sd = etree.SubElement(split, "SequenceDescription")
    old_sd.append(copy.deepcopy(old_setups))
    old_sd.append(copy.deepcopy(seq.find("Timepoints")))
    ids = etree.SubElement(split, "SetupIds")
    new_setups = etree.Element("ViewSetups")
    mapping = {}
    new_id = 0
    for setup in old_setups.findall("ViewSetup"):
        old_id = int(setup.findtext("id"))
        for lo, hi in HALVES:
            d = etree.SubElement(ids, "SetupIdDefinition")
            etree.SubElement(d, "NewId").text = str(new_id)
            etree.SubElement(d, "OldId").text = str(old_id)
            etree.SubElement(d, "min").text = " ".join(str(v) for v in lo[::-1])
            etree.SubElement(d, "max").text = " ".join(str(v) for v in hi[::-1])
            new = copy.deepcopy(setup)
            new.find("id").text = str(new_id)
            new.find("name").text = f"{setup.findtext('name')}-{new_id}"
            new.find("size").text = " ".join(str(b - a + 1) for a, b in zip(lo[::-1], hi[::-1]))
            attrs = new.find("attributes")
            attrs.find("tile").text = str(new_id)
            new_setups.append(new)
            mapping[new_id] = (old_id, lo)
            new_id += 1
    for child in list(old_setups):
        if child.tag != "ViewSetup":  # the <Attributes> lists
            new_setups.append(copy.deepcopy(child))
    tiles = new_setups.find("Attributes[@name='tile']")
    template = tiles.find("Tile")
    for t in list(tiles):
        tiles.remove(t)
    for i in range(new_id):
        tile = copy.deepcopy(template)
        tile.find("id").text = str(i)
        tile.find("name").text = str(i)
        tiles.append(tile)
    seq.replace(old_loader, split)
    seq.replace(old_setups, new_setups)
    # every new view: the old registrations after a translation to its box (x y z)
    regs = root.find("ViewRegistrations")
    old_regs = {int(r.get("setup")): r for r in regs.findall("ViewRegistration")}
    for r in list(regs):
        regs.remove(r)
    for new, (old, lo) in mapping.items():
        reg = copy.deepcopy(old_regs[old])
        reg.set("setup", str(new))
        vt = etree.Element("ViewTransform", type="affine")
        etree.SubElement(vt, "Name").text = "Image Splitting"
        etree.SubElement(vt, "affine").text = (
            f"1.0 0.0 0.0 {lo[2]}.0 0.0 1.0 0.0 {lo[1]}.0 0.0 0.0 1.0 {lo[0]}.0")
        reg.append(vt)  # applied first
        regs.append(reg)
    tree.write(str(out_xml), xml_declaration=True, encoding="UTF-8")
    return mapping


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    base = tmp_path_factory.mktemp("split")
    make_sample_project(base / "orig", ndim=3, grid=(1, 1, 2), tile_shape=(20, 70, 90), format="hdf5",
                        factors=((1, 1, 1), (1, 2, 2), (2, 4, 4)))
    mapping = _split_xml(base / "orig" / "dataset.xml", base / "orig" / "split.xml")
    return base, mapping


def test_split_views_read_their_box_at_every_level(projects):
    base, mapping = projects
    orig = tilefuse.open_project(base / "orig" / "dataset.xml")
    split = tilefuse.open_project(base / "orig" / "split.xml")
    assert isinstance(split.loader, SplitLoader) and len(split.views) == 4
    for new, (old, lo) in mapping.items():
        nv, ov = ViewId(0, new), ViewId(0, old)
        hi = HALVES[new % 2][1]
        full = orig.image(ov).compute()
        np.testing.assert_array_equal(split.image(nv).compute(), full[tuple(slice(a, b + 1) for a, b in zip(lo, hi))])
        assert split.loader.levels(nv) == orig.loader.levels(ov)
        for level, f in enumerate(orig.loader.levels(ov)):
            # multiview-reconstruction's box at a coarser level: floor(min/f) .. floor((max - 0.01)/f)
            lo_l = [int(np.floor(a / s)) for a, s in zip(lo, f)]
            hi_l = [min(int(np.floor((b - 0.01) / s)), n - 1)
                    for b, s, n in zip(hi, f, orig.loader.shape(ov, level))]
            if level == 0:
                hi_l = list(hi)
            want = orig.image(ov, level).compute()[tuple(slice(a, b + 1) for a, b in zip(lo_l, hi_l))]
            got = split.image(nv, level).compute()
            np.testing.assert_array_equal(got, want)
            # the level's voxel 0 sits where the original level's voxel lo_l does, in world space
            p_split = split.transform(nv, level) @ np.array([0.0, 0.0, 0.0, 1.0])
            p_orig = orig.transform(ov, level) @ np.array([*lo_l, 1.0])
            np.testing.assert_allclose(p_split, p_orig, atol=1e-9)
    # the odd x start really gives a fractional offset at level 1 (else the check above is weak)
    m = split.loader.mipmap_transform(ViewId(0, 1), 1)
    assert m[2, 3] == pytest.approx((2 - 1) / 2 + (np.floor(37 / 2) - 37 / 2) * 2)


def test_split_project_round_trips_and_fuses_like_the_original(projects, tmp_path):
    base, _ = projects
    split = tilefuse.open_project(base / "orig" / "split.xml")
    split.save(base / "orig" / "split_again.xml")
    assert xml_differences(parse(base / "orig" / "split.xml"), parse(base / "orig" / "split_again.xml")) == []
    # saved elsewhere, the nested loader's path is rewritten and the pixels still read
    split.save(tmp_path / "moved" / "split.xml")  # the folder is created
    moved = tilefuse.open_project(tmp_path / "moved" / "split.xml")
    np.testing.assert_array_equal(moved.image(ViewId(0, 3)).compute(), split.image(ViewId(0, 3)).compute())
    # fused, the split views give the original fusion inside the shared box
    orig = tilefuse.open_project(base / "orig" / "dataset.xml")
    p_orig, p_split = tilefuse.plan_fusion(orig, blending="average"), tilefuse.plan_fusion(split, blending="average")
    np.testing.assert_allclose(p_split.origin, p_orig.origin)
    assert p_split.shape == p_orig.shape  # the union of the halves is the union of the originals
    f_orig = p_orig.to_dask()[0, 0].compute()
    f_split = p_split.to_dask()[0, 0].compute()
    inner = (slice(3, -3), slice(6, -6), slice(3, -3))
    np.testing.assert_allclose(f_split[inner].astype(float), f_orig[inner].astype(float), atol=1.0)


def test_split_loader_errors_name_the_element(projects, tmp_path):
    base, _ = projects
    text = (base / "orig" / "split.xml").read_text()
    bad = tmp_path / "bad.xml"
    bad.write_text(text.replace("<max>51 69 19</max>", "<max>51 69</max>", 1))
    with pytest.raises(ProjectFormatError, match=r"bad\.xml.*SetupIdDefinition"):
        tilefuse.open_project(bad).image(ViewId(0, 0))
    split = tilefuse.open_project(base / "orig" / "split.xml")
    with pytest.raises(MissingDataError, match="setup 9 is not defined"):
        split.loader.shape(ViewId(0, 9))
    for fmt in ("split.imgloader", "split.multiresolutionimgloader"):
        other = tmp_path / f"{fmt}.xml"
        other.write_text(text.replace('format="split.viewerimgloader"', f'format="{fmt}"'))
        assert tilefuse.open_project(other).loader.format == fmt
