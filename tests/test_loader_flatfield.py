"""``spimreconstruction.wrapped.flatfield.*``: flat-field correction around another loader."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tifffile
from lxml import etree

import tilefuse
from tilefuse.demo import make_sample_project
from tilefuse.errors import MissingDataError
from tilefuse.loaders._flatfield import FlatFieldLoader
from tilefuse.project.views import ViewId
from xmlcompare import parse, xml_differences

SHAPE = (12, 40, 50)  # z y x of every tile


def _wrap(original_xml, out_xml, fields, fmt="spimreconstruction.wrapped.flatfield.multiresolution",
          active="true"):
    """Wrap a project's loader the way BigStitcher's flat-field correction does."""
    tree = etree.parse(str(original_xml))
    seq = tree.getroot().find("SequenceDescription")
    inner = seq.find("ImageLoader")
    wrap = etree.Element("ImageLoader", format=fmt, Active=active, Cached="true")
    etree.SubElement(wrap, "WrappedImgLoader").append(copy.deepcopy(inner))
    ff_el = etree.SubElement(wrap, "FlatFields")
    for (tp, setup), (bright, dark) in fields.items():
        ff = etree.SubElement(ff_el, "FlatField", Timepoint=str(tp), ViewSetup=str(setup))
        if bright:
            etree.SubElement(ff, "BrightImg", type="relative").text = bright
        if dark:
            etree.SubElement(ff, "DarkImg", type="relative").text = dark
    seq.replace(inner, wrap)
    tree.write(str(out_xml), xml_declaration=True, encoding="UTF-8")


def _reference(raw, bright, dark, factors=(1, 1)):
    """The correction written out directly (float64), per plane; 2D bright/dark at level factors."""
    ny, nx = raw.shape[1:]

    def shrink(img):
        if factors == (1, 1):
            return img
        oy, ox = max(img.shape[0] // factors[0], 1), max(img.shape[1] // factors[1], 1)
        out = np.zeros((oy, ox))
        for i in range(oy):
            for j in range(ox):
                ys = np.clip(np.arange(i * factors[0], (i + 1) * factors[0]), 0, img.shape[0] - 1)
                xs = np.clip(np.arange(j * factors[1], (j + 1) * factors[1]), 0, img.shape[1] - 1)
                out[i, j] = img[np.ix_(ys, xs)].mean()
        return out

    def at(img):  # border-extended to the view's plane
        return img[np.ix_(np.minimum(np.arange(ny), img.shape[0] - 1), np.minimum(np.arange(nx), img.shape[1] - 1))]

    b = shrink(bright) if bright is not None else None
    d = shrink(dark) if dark is not None else None
    # the mean of (bright - dark) over the view's plane, both border-extended to it
    mean = np.mean((at(b) if b is not None else 1.0) - (at(d) if d is not None else 0.0))
    bp = at(b) if b is not None else 1.0
    dp = at(d) if d is not None else 0.0
    out = np.where(bp - dp == 0, 0.0, (raw - dp) * mean / np.where(bp - dp == 0, 1, bp - dp))
    return np.floor(np.clip(out, 0, 65535) + 0.5).astype(np.uint16)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("flat")
    make_sample_project(base, ndim=3, grid=(1, 1, 2), tile_shape=SHAPE, format="hdf5",
                        factors=((1, 1, 1), (1, 2, 2)))
    yy, xx = np.mgrid[0:SHAPE[1], 0:SHAPE[2]]
    bright = 0.6 + 0.4 * np.exp(-((yy - 20) ** 2 + (xx - 25) ** 2) / 600.0)
    dark = 90.0 + (xx % 3)
    bright[0, 0] = dark[0, 0]  # bright == dark: 0 there
    # both smaller than the 40 x 50 plane: their borders repeat, in the correction and its mean
    tifffile.imwrite(base / "bright.tif", bright[:36].astype(np.float32))
    tifffile.imwrite(base / "dark.tif", dark[:30, :45].astype(np.uint16))
    return base, bright[:36].astype(np.float32).astype(np.float64), dark[:30, :45].astype(np.float64)


def test_correction_matches_the_formula_at_every_level(project):
    base, bright, dark = project
    _wrap(base / "dataset.xml", base / "flat.xml", {(0, 0): ("bright.tif", "dark.tif"), (0, 1): (None, "dark.tif")})
    raw = tilefuse.open_project(base / "dataset.xml")
    flat = tilefuse.open_project(base / "flat.xml")
    assert isinstance(flat.loader, FlatFieldLoader)
    for level, factors in ((0, (1, 1)), (1, (2, 2))):
        r0 = raw.image(ViewId(0, 0), level).compute().astype(np.float64)
        np.testing.assert_array_equal(flat.image(ViewId(0, 0), level).compute(), _reference(r0, bright, dark, factors))
        r1 = raw.image(ViewId(0, 1), level).compute().astype(np.float64)
        np.testing.assert_array_equal(flat.image(ViewId(0, 1), level).compute(), _reference(r1, None, dark, factors))
    got = flat.image(ViewId(0, 0)).compute()
    assert (got[:, 0, 0] == 0).all()  # bright == dark there
    # a region read equals the same region of the whole corrected view
    region = (slice(2, 9), slice(5, 37), slice(11, 49))
    np.testing.assert_array_equal(flat.loader.read(ViewId(0, 0), 0, region), got[region])
    # levels, shapes and transforms are the wrapped loader's
    assert flat.loader.levels(ViewId(0, 0)) == raw.loader.levels(ViewId(0, 0))
    np.testing.assert_array_equal(flat.transform(ViewId(0, 1), 1), raw.transform(ViewId(0, 1), 1))


def test_inactive_and_unlisted_views_pass_through_and_xml_round_trips(project, tmp_path):
    base, _, _ = project
    _wrap(base / "dataset.xml", base / "off.xml", {(0, 0): ("bright.tif", None)},
          fmt="spimreconstruction.wrapped.flatfield.default", active="false")
    raw = tilefuse.open_project(base / "dataset.xml")
    off = tilefuse.open_project(base / "off.xml")
    assert off.loader.format == "spimreconstruction.wrapped.flatfield.default" and not off.loader.active
    np.testing.assert_array_equal(off.image(ViewId(0, 0)).compute(), raw.image(ViewId(0, 0)).compute())
    _wrap(base / "dataset.xml", base / "one.xml", {(0, 0): ("bright.tif", None)})
    one = tilefuse.open_project(base / "one.xml")
    np.testing.assert_array_equal(one.image(ViewId(0, 1)).compute(), raw.image(ViewId(0, 1)).compute())
    one.save(base / "one_again.xml")
    assert xml_differences(parse(base / "one.xml"), parse(base / "one_again.xml")) == []
    one.save(tmp_path / "one.xml")  # elsewhere: paths rewritten, pixels the same
    moved = tilefuse.open_project(tmp_path / "one.xml")
    np.testing.assert_array_equal(moved.image(ViewId(0, 0)).compute(), one.image(ViewId(0, 0)).compute())
    assert moved.loader.images[ViewId(0, 0)][0].resolve() == (base / "bright.tif").resolve()
    # built in Python (no XML to keep), the element is written from scratch
    fresh = FlatFieldLoader(raw.loader, {ViewId(0, 1): (None, base / "dark.tif")}, active=True).to_xml(base)
    ff = fresh.find("FlatFields/FlatField")
    assert (fresh.get("Active"), ff.get("Timepoint"), ff.get("ViewSetup")) == ("true", "0", "1")
    assert ff.find("BrightImg") is None and ff.find("DarkImg").text == "dark.tif"
    assert fresh.find("WrappedImgLoader/ImageLoader").get("format") == "bdv.hdf5"


def test_missing_flat_field_image_names_it(project, tmp_path):
    base, _, _ = project
    _wrap(base / "dataset.xml", base / "gone.xml", {(0, 0): ("nothere.tif", None)})
    gone = tilefuse.open_project(base / "gone.xml")
    with pytest.raises(MissingDataError, match="nothere.tif"):
        gone.image(ViewId(0, 0)).compute()
