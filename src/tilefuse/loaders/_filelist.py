"""``spimreconstruction.filelist``: views read in place from the microscope's own files.

BigStitcher's "Define dataset" with Bio-Formats writes this loader (and, in
newer versions, ``spimreconstruction.filemap2`` with the same
``<FileMapping view_setup timepoint series channel><file/></FileMapping>``
children; multiview-reconstruction ``XmlIoFileListImgLoaderLOCI``): each view
is a file, a Bio-Formats series and a channel.  tilefuse reads those files
through :mod:`tilefuse.formats.acquisition` (CZI, ND2, LIF, OME-TIFF, ImageJ
and plain TIFF), lazily and region by region: a dask block is one CZI/LIF/ND2
plane of a tile or a group of TIFF pages (or tiles).

The timepoint inside a file follows BigStitcher (``LegacyFileMapImgLoaderLOCI``):
when every file holds views of a single timepoint the file's first timepoint
is read, otherwise the view's timepoint id is the index in the file.

``spimreconstruction.filemap2`` projects whose files are not TIFFs (a CZI
mapped by BigStitcher) are read here too; their TIFF files still go through
:class:`~tilefuse.loaders._tiff.FileMap2Loader`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lxml import etree

from ..errors import ImageDataError, MissingDataError
from ..formats.acquisition import open_acquisition
from ..project.views import ViewId
from . import register_loader
from ._tiff import _BLOCK_BYTES, _MAX_Z_BLOCK, FileMap2Loader, TiffEntry, _check_extent, _check_level
from .base import Region, cached_handle, normalize_region

__all__ = ["FileListLoader"]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf")


@register_loader
class FileListLoader(FileMap2Loader):
    """Reads views from acquisition files mapped one ``(file, series, channel)`` per view.

    Parameters
    ----------
    files
        ``ViewId`` -> :class:`~tilefuse.loaders._tiff.TiffEntry` (file, series, channel).
    z_grouped
        The XML ``<ZGrouped>`` flag; True is not supported for reading.
    container
        The XML ``<imglib2container>`` (BigStitcher's in-memory image type), kept as written.
    """

    format = "spimreconstruction.filelist"
    #: TIFF files go through FileMap2Loader (filemap2 projects), or through the acquisition reader (filelist)
    _tiff_by_filemap2 = False

    def __init__(self, files, z_grouped: bool = False, container: str = "ArrayImgFactory") -> None:
        super().__init__(files, z_grouped)
        self.container = container
        per_file: dict[Path, set[int]] = {}
        for view, entry in self.files_map.items():
            per_file.setdefault(entry.path, set()).add(view.timepoint)
        # BigStitcher: one timepoint per file -> read the file's first; else the id is the index.
        self._one_timepoint_per_file = all(len(t) == 1 for t in per_file.values())

    @classmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None = None) -> FileListLoader:
        loader = super().from_xml(element, base_dir, xml_path)
        container = element.findtext("imglib2container")
        if container is not None:
            loader.container = container.strip()
        if cls.format == "spimreconstruction.filelist":
            loader._remember_xml(element, base_dir)  # written back verbatim while the base dir is the same
        return loader

    def to_xml(self, base_dir: Path):
        verbatim = self._verbatim_xml(base_dir)
        if verbatim is not None:
            return verbatim
        elem = super().to_xml(base_dir)
        if type(self).format == "spimreconstruction.filelist":
            container = etree.Element("imglib2container")
            container.text = self.container
            elem.insert(0, container)
        return elem

    # -- which reader -----------------------------------------------------------
    def _by_filemap2(self, view: ViewId) -> bool:
        entry = self.files_map.get(ViewId(*view))
        return (self._tiff_by_filemap2 and entry is not None
                and entry.path.name.lower().endswith(_TIFF_SUFFIXES))

    def _file(self, view: ViewId):
        """The open acquisition file of a view (cached per process) and its indices."""
        entry = self._entry(view)
        key = (str(entry.path), ("acquisition",))
        handle = cached_handle(key, lambda: open_acquisition(entry.path), anchors=[entry.path])
        timepoint = 0 if self._one_timepoint_per_file else ViewId(*view).timepoint
        return handle, entry, timepoint

    def _stack(self, view: ViewId):
        handle, entry, timepoint = self._file(view)
        return handle, handle.stack(entry.series, entry.channel, timepoint), timepoint

    # -- metadata ---------------------------------------------------------
    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        if self._by_filemap2(view):
            return super().levels(view)
        self._entry(view)
        return [(1.0, 1.0, 1.0)]

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        if self._by_filemap2(view):
            return super().shape(view, level)
        _check_level(level, view)
        return tuple(int(n) for n in self._stack(view)[1].shape)

    def dtype(self, view: ViewId) -> np.dtype:
        if self._by_filemap2(view):
            return super().dtype(view)
        return np.dtype(self._stack(view)[1].dtype)

    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        if self._by_filemap2(view):
            return super().chunks(view, level)
        _check_level(level, view)
        stack = self._stack(view)[1]
        cz, cy, cx = stack.chunks
        if cz == 1:  # planes (TIFF pages, CZI/LIF/ND2 planes): several per dask task, as for filemap2
            plane = max(1, cy * cx * np.dtype(stack.dtype).itemsize)
            cz = max(1, min(stack.shape[0], _MAX_Z_BLOCK, _BLOCK_BYTES // plane))
        return (int(cz), int(cy), int(cx))

    def read(self, view: ViewId, level: int, region: Region, *, cache: bool = False) -> np.ndarray:
        if self._by_filemap2(view):
            return super().read(view, level, region, cache=cache)
        _check_level(level, view)
        handle, stack, timepoint = self._stack(view)
        region = normalize_region(region, stack.shape)
        out = handle.read(stack.series, stack.channel, timepoint, region)
        expected = tuple(s.stop - s.start for s in region)
        if out.shape != expected:
            raise ImageDataError(f"{handle.path}: {ViewId(*view)}: the reader returned {out.shape} voxels for a "
                                 f"region of {expected}")
        return out

    def check_view(self, view: ViewId) -> None:
        if self._by_filemap2(view):
            return super().check_view(view)
        handle, entry, timepoint = self._file(view)
        try:
            handle.stack(entry.series, entry.channel, timepoint)
        except MissingDataError as exc:
            raise ImageDataError(f"{exc} (wanted by {ViewId(*view)})") from None
        tif = getattr(handle, "tiff", None)
        if tif is not None:  # a truncated TIFF opens without complaint: check its pages against the file size
            _check_extent(tif, tif.series[entry.series], entry, ViewId(*view))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.files_map)} views)"


@register_loader
class FileMapAnyLoader(FileListLoader):
    """``spimreconstruction.filemap2`` over any acquisition file: TIFFs as before, others (CZI...) here."""

    format = "spimreconstruction.filemap2"
    _tiff_by_filemap2 = True

    def to_xml(self, base_dir: Path):
        return FileMap2Loader.to_xml(self, base_dir)


__all__ += ["FileMapAnyLoader", "TiffEntry"]
