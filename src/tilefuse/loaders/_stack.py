"""``spimreconstruction.stack.loci`` / ``.stack.ij``: views found by a file-name pattern.

The loaders of BigStitcher's older "Define dataset" paths (multiview-reconstruction
``XmlIoStackImgLoader``, ``LegacyStackImgLoader(LOCI)``)::

    <ImageLoader format="spimreconstruction.stack.loci">
      <imagedirectory type="relative">.</imagedirectory>
      <filePattern>spim_TL{tt}_Angle{a}.tif</filePattern>
      <layoutTimepoints>1</layoutTimepoints> <layoutChannels>0</layoutChannels>
      <layoutIlluminations>0</layoutIlluminations> <layoutAngles>1</layoutAngles> <layoutTiles>0</layoutTiles>
      <imglib2container>ArrayImgFactory</imglib2container>
    </ImageLoader>

A view's file is the pattern with ``{t}``, ``{c}``, ``{i}``, ``{a}``, ``{x}``
(the letter repeated for zero-padded digits: ``{tt}`` is ``07``) replaced by
the *names* of its timepoint, channel, illumination, angle and tile.  Layout
``0`` means one entity (not in the name), ``1`` one per file, ``2`` all in one
file: the timepoint, channel and tile are then indices into the file (their
names read as integers; a tile is a series), as in ``LegacyStackImgLoaderLOCI``.
Pixels are read through :mod:`tilefuse.formats.acquisition` like
``spimreconstruction.filelist``; a folder of 2D images standing for one view
is not read.
"""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from ..errors import ProjectFormatError, UnsupportedFormatError, where
from ..project.paths import path_element, read_path_element, single_child
from ..project.views import ViewId
from . import register_loader
from ._filelist import FileListLoader
from ._tiff import TiffEntry

__all__ = ["StackLoader", "StackLoaderIJ"]

#: Pattern letter of each attribute, and the XML element of its layout
_LETTERS = {"timepoint": "t", "channel": "c", "illumination": "i", "angle": "a", "tile": "x"}
_LAYOUT_TAGS = {"timepoint": "layoutTimepoints", "channel": "layoutChannels", "illumination": "layoutIlluminations",
                "angle": "layoutAngles", "tile": "layoutTiles"}


def file_names(pattern: str, names: dict[str, str]) -> list[str]:
    """The candidate file names of one view: each ``{x..}`` replaced by its entity name, padded to the braces' width.

    A name that is not a number is used as is; a padded and an unpadded
    candidate are both returned when they differ (BigStitcher tries both too).
    """
    padded, plain = pattern, pattern
    for kind, letter in _LETTERS.items():
        for match in set(re.findall(r"\{(" + letter + r"+)\}", pattern)):
            name = names.get(kind, "")
            width = len(match)
            value = name.zfill(width) if name.isdigit() else name
            padded = padded.replace("{" + match + "}", value)
            plain = plain.replace("{" + match + "}", name)
    return [padded] if padded == plain else [padded, plain]


@register_loader
class StackLoader(FileListLoader):
    """Views of the files a pattern names (``spimreconstruction.stack.loci``)."""

    format = "spimreconstruction.stack.loci"

    def __init__(self, files, timepoint_index, *, directory: Path, pattern: str, layouts: dict[str, int],
                 container: str = "ArrayImgFactory") -> None:
        super().__init__(files, False, container)
        self._timepoint_index = dict(timepoint_index)
        self.directory, self.pattern, self.layouts = Path(directory), pattern, dict(layouts)

    @classmethod
    def for_path(cls, *args, **kwargs):
        raise NotImplementedError(f"{cls.format}: made from a project's XML only (its views come from the XML)")

    @classmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None = None) -> StackLoader:
        from ..project.xml_read import parse_spimdata

        context = f'<ImageLoader format="{cls.format}">'
        directory = read_path_element(element, "imagedirectory", Path(base_dir), xml_path, context=context)
        pattern_el = single_child(element, "filePattern", xml_path, context)
        pattern = (pattern_el.text or "").strip() if pattern_el is not None else ""
        if not pattern:
            raise ProjectFormatError(f"{where(xml_path, context)}: <filePattern> is missing or empty")
        layouts = {}
        for kind, tag in _LAYOUT_TAGS.items():
            el = single_child(element, tag, xml_path, context)
            try:
                layouts[kind] = int((el.text or "0").strip()) if el is not None else 0
            except ValueError:
                raise ProjectFormatError(f"{where(xml_path, context)}: <{tag}> is {el.text!r}, not 0, 1 or 2") from None
        sequence = element.getparent()
        root = sequence.getparent() if sequence is not None else None
        if root is None or root.getparent() is not None:
            raise UnsupportedFormatError(f"{where(xml_path, context)}: a pattern loader nested in another loader")
        data = parse_spimdata(root, xml_path)
        files, tp_index = {}, {}
        for t in data.timepoints.ids:
            for sid, setup in data.setups.items():
                view = ViewId(t, sid)
                if view in (data.missing_views or ()):
                    continue
                names = {"timepoint": data.timepoints.names.get(t, str(t))}
                for kind in ("channel", "illumination", "angle", "tile"):
                    block = data.attribute_blocks.get(kind)
                    eid = setup.attributes.get(kind, 0)
                    entity = block.entities.get(eid) if block is not None else None
                    names[kind] = entity.name if entity is not None else str(eid)
                candidates = [directory / n for n in file_names(pattern, names)]
                path = next((c for c in candidates if c.exists()), candidates[0])
                index = {k: _index(names[k], k, layouts, xml_path, context) for k in ("timepoint", "channel", "tile")}
                files[view] = TiffEntry(path, index["tile"], index["channel"])
                tp_index[view] = index["timepoint"]
        container = element.findtext("imglib2container") or "ArrayImgFactory"
        loader = cls(files, tp_index, directory=directory, pattern=pattern, layouts=layouts,
                     container=container.strip())
        loader.xml_path = Path(xml_path) if xml_path is not None else None
        loader._remember_xml(element, base_dir)
        return loader

    def to_xml(self, base_dir: Path):
        verbatim = self._verbatim_xml(base_dir)
        if verbatim is not None:
            return verbatim
        elem = etree.Element("ImageLoader", format=self.format)
        elem.append(path_element("imagedirectory", self.directory, base_dir))
        etree.SubElement(elem, "filePattern").text = self.pattern
        for kind, tag in _LAYOUT_TAGS.items():
            etree.SubElement(elem, tag).text = str(self.layouts.get(kind, 0))
        etree.SubElement(elem, "imglib2container").text = self.container
        return elem

    def _file(self, view: ViewId):
        handle, entry, _ = super()._file(view)
        return handle, entry, self._timepoint_index[ViewId(*view)]


@register_loader
class StackLoaderIJ(StackLoader):
    """``spimreconstruction.stack.ij``: the same layout, BigStitcher opens the files with ImageJ."""

    format = "spimreconstruction.stack.ij"


def _index(name: str, kind: str, layouts: dict[str, int], xml_path, context: str) -> int:
    """The index of an entity inside a file holding all of them (layout 2): its name as an integer."""
    if layouts.get(kind) != 2:
        return 0
    try:
        return int(name)
    except ValueError:
        raise ProjectFormatError(
            f"{where(xml_path, context)}: all {kind}s are in one file (layout 2), so their names must be their "
            f"indices in the file; {kind} name {name!r} is not an integer") from None
