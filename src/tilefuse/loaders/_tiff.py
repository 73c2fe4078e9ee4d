"""``spimreconstruction.filemap2``: one TIFF file (series, channel) per view.

BigStitcher reads these files through Bio-Formats; here tifffile does the
job.  ``series`` indexes ``TiffFile.series`` and ``channel`` picks an index
along the series' ``C`` axis (or its samples axis ``S`` when there is no
``C``).  A series without a ``Z`` axis but with a generic page axis (``I``,
``Q``) uses that as z; a plain 2D series gives ``z == 1``.

Pixels are read through :meth:`tifffile.TiffPageSeries.aszarr`, whose chunks
are pages (or tiles/strips of pages), so a region reads only the pages of the
z-slices it covers.  There is a single resolution level.

``<ZGrouped>true</ZGrouped>`` (z-slices spread over a Bio-Formats file
pattern) is not supported: such views raise
:class:`~tilefuse.errors.UnsupportedFormatError` when read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lxml import etree

from .._inputs import check_regular_file
from ..errors import (
    ImageDataError,
    MissingDataError,
    ProjectFormatError,
    UnsupportedFormatError,
    where,
)
from ..project.paths import path_element, read_path_element, single_child
from ..project.views import ViewId
from . import register_loader
from .base import ImageLoader, Region, cached_handle, normalize_region

__all__ = ["FileMap2Loader", "TiffEntry"]

#: dask task size aimed at when grouping z-pages into one block (bytes)
_BLOCK_BYTES = 16 * 2**20
_MAX_Z_BLOCK = 64


@dataclass(frozen=True)
class TiffEntry:
    """Where one view's pixels are: a file, a series in it and a channel."""

    path: Path
    series: int = 0
    channel: int = 0


@register_loader
class FileMap2Loader(ImageLoader):
    """Reads views from TIFF files mapped one per view (``spimreconstruction.filemap2``).

    Parameters
    ----------
    files
        ``ViewId`` -> :class:`TiffEntry`.
    z_grouped
        The XML ``<ZGrouped>`` flag; True is not supported for reading.

    Notes
    -----
    :meth:`has_view` is False for a view without mapping or whose file does
    not exist; every other method then raises
    :class:`~tilefuse.errors.MissingDataError` naming the file and the view.
    """

    format = "spimreconstruction.filemap2"

    def __init__(self, files: Mapping[ViewId, TiffEntry], z_grouped: bool = False) -> None:
        super().__init__()
        self.files_map = {ViewId(*v): e for v, e in sorted(files.items())}
        self.z_grouped = bool(z_grouped)

    # -- construction ---------------------------------------------------
    @classmethod
    def for_path(cls, files: Mapping) -> FileMap2Loader:
        """A loader without XML, for the TIFF files of the views.

        ``files`` maps ``ViewId``/``(timepoint, setup)`` to a path, or to a
        ``(path, series, channel)`` tuple, or to a :class:`TiffEntry`.
        """
        entries = {}
        for view, spec in files.items():
            if isinstance(spec, TiffEntry):
                entry = spec
            elif isinstance(spec, (str, os.PathLike)):
                entry = TiffEntry(Path(spec))
            else:
                p, series, channel = spec
                entry = TiffEntry(Path(p), int(series), int(channel))
            entries[ViewId(*view)] = entry
        return cls(entries)

    @classmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None = None) -> FileMap2Loader:
        context = f'<ImageLoader format="{cls.format}">'
        files_elem = single_child(element, "files", xml_path, context)
        mappings = files_elem.findall("FileMapping") if files_elem is not None else []
        if not mappings:
            raise ProjectFormatError(
                f"{where(xml_path, context)}: <files> is missing or holds no <FileMapping>; "
                "the project does not say which TIFF file holds which view"
            )
        z_grouped_el = single_child(element, "ZGrouped", xml_path, context)
        z_grouped = (z_grouped_el is not None and (z_grouped_el.text or "").strip().lower() == "true")
        entries = {}
        for i, m in enumerate(mappings):
            mcontext = f"<FileMapping> #{i}"
            try:
                view = ViewId(int(m.get("timepoint")), int(m.get("view_setup")))
                series = int(m.get("series", "0"))
                channel = int(m.get("channel", "0"))
            except (TypeError, ValueError):
                raise ProjectFormatError(
                    f"{where(xml_path, mcontext)}: timepoint, view_setup, series and channel "
                    f"must be integers, got {dict(m.attrib)}"
                ) from None
            if view in entries:
                raise ProjectFormatError(f"{where(xml_path, mcontext)}: {view} is mapped twice")
            path = read_path_element(m, "file", Path(base_dir), xml_path, context=mcontext)
            entries[view] = TiffEntry(path, series, channel)
        loader = cls(entries, z_grouped)
        loader.xml_path = Path(xml_path) if xml_path is not None else None
        return loader

    def to_xml(self, base_dir: Path):
        elem = etree.Element("ImageLoader", format=self.format)
        etree.SubElement(elem, "ZGrouped").text = "true" if self.z_grouped else "false"
        files = etree.SubElement(elem, "files")
        for view, entry in self.files_map.items():
            m = etree.SubElement(
                files,
                "FileMapping",
                view_setup=str(view.setup),
                timepoint=str(view.timepoint),
                series=str(entry.series),
                channel=str(entry.channel),
            )
            m.append(path_element("file", entry.path, base_dir))
        return elem

    # -- file access ------------------------------------------------------
    def _entry(self, view: ViewId) -> TiffEntry:
        view = ViewId(*view)
        entry = self.files_map.get(view)
        if entry is None:
            raise MissingDataError(f"{where(self.xml_path, self.format)}: no TIFF file is mapped to {view}")
        if self.z_grouped:
            raise UnsupportedFormatError(
                f"{where(self.xml_path, '<ZGrouped>')}: z-grouped file patterns are not supported ({view})"
            )
        if not entry.path.exists():
            raise MissingDataError(f"{entry.path}: TIFF file of {view} does not exist")
        return entry

    def _array(self, view: ViewId):
        """The series of a view as a read-only zarr array, and its axes string."""
        entry = self._entry(view)
        key = (str(entry.path), ("tiff", entry.series))
        handle = cached_handle(key, lambda: _SeriesHandle.open(entry, ViewId(*view)), anchors=[entry.path])
        return handle.array, handle.axes

    def _layout(self, view: ViewId):
        arr, axes = self._array(view)
        entry = self.files_map[ViewId(*view)]
        return arr, _zyx_index(arr.shape, axes, entry, ViewId(*view))

    # -- metadata ---------------------------------------------------------
    def has_view(self, view: ViewId) -> bool:
        entry = self.files_map.get(ViewId(*view))
        return entry is not None and entry.path.exists()

    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        self._entry(view)
        return [(1.0, 1.0, 1.0)]

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        _check_level(level, view)
        arr, (zax, yax, xax, _) = self._layout(view)
        nz = arr.shape[zax] if zax is not None else 1
        return (int(nz), int(arr.shape[yax]), int(arr.shape[xax]))

    def dtype(self, view: ViewId) -> np.dtype:
        return np.dtype(self._array(view)[0].dtype)

    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        # A page is the file's block; several pages are grouped per dask task
        # so that large stacks do not become thousands of tiny tasks.
        _check_level(level, view)
        arr, (zax, yax, xax, _) = self._layout(view)
        cy, cx = int(arr.chunks[yax]), int(arr.chunks[xax])
        nz = arr.shape[zax] if zax is not None else 1
        plane = max(1, cy * cx * arr.dtype.itemsize)
        cz = max(1, min(nz, _MAX_Z_BLOCK, _BLOCK_BYTES // plane))
        return (int(cz), cy, cx)

    def read(self, view: ViewId, level: int, region: Region, *, cache: bool = False) -> np.ndarray:
        _check_level(level, view)
        arr, (zax, yax, xax, fixed) = self._layout(view)
        shape = self.shape(view)
        rz, ry, rx = normalize_region(region, shape)
        index = list(fixed)
        if zax is not None:
            index[zax] = rz
        index[yax], index[xax] = ry, rx
        try:
            out = np.asarray(arr[tuple(index)])
        except Exception as exc:  # codec errors, truncated files: name the file and view
            path = self.files_map[ViewId(*view)].path
            raise ImageDataError(
                f"{path}: cannot read {ViewId(*view)} ({type(exc).__name__}: {exc})"
            ) from exc
        # Remaining axes are in series order; put them in z, y, x order.
        kept = [a for a in (zax, yax, xax) if a is not None]
        out = out.transpose([sorted(kept).index(a) for a in kept])
        if zax is None:
            out = out[None][rz]
        return out

    def files(self) -> list[Path]:
        return sorted({e.path for e in self.files_map.values()})

    def view_files(self, view: ViewId) -> list[Path]:
        entry = self.files_map.get(ViewId(*view))
        return [entry.path] if entry is not None else self.files()

    def __repr__(self) -> str:
        return f"FileMap2Loader({len(self.files_map)} views)"

    def token(self):
        return (type(self).__name__, tuple(self.files_map.items()), self.z_grouped)


def _check_level(level: int, view: ViewId) -> None:
    if level != 0:
        raise ImageDataError(f"{ViewId(*view)}: TIFF file maps have only level 0, level {level} requested")


class _SeriesHandle:
    """An open TIFF file and one of its series as a zarr array (cached per process)."""

    def __init__(self, tif, array, axes: str) -> None:
        self.tif, self.array, self.axes = tif, array, axes

    @classmethod
    def open(cls, entry: TiffEntry, view: ViewId) -> _SeriesHandle:
        import tifffile
        import zarr

        # A FIFO would block tifffile forever, a device would be read without end.
        if not check_regular_file(entry.path, f"TIFF file of {view}"):
            raise MissingDataError(f"{entry.path}: TIFF file of {view} does not exist")
        try:
            tif = tifffile.TiffFile(entry.path)
        except FileNotFoundError:
            raise MissingDataError(f"{entry.path}: TIFF file of {view} does not exist") from None
        except Exception as exc:  # TiffFileError, ValueError, struct.error, ...
            raise ImageDataError(f"{entry.path}: not a readable TIFF file ({exc})") from exc
        if not 0 <= entry.series < len(tif.series):
            n = len(tif.series)
            tif.close()
            raise ImageDataError(
                f"{entry.path}: {view} wants series {entry.series}, the file has {n} series"
            )
        series = tif.series[entry.series]
        try:
            _check_extent(tif, series, entry, view)
        except BaseException:
            tif.close()
            raise
        # Chunks of this store are pages (or tiles/strips of pages).
        array = zarr.open_array(series.aszarr(), mode="r")
        return cls(tif, array, series.axes)

    def close(self) -> None:
        self.tif.close()


def _check_extent(tif, series, entry: TiffEntry, view: ViewId) -> None:
    """Refuse a series whose pixel bytes do not all lie inside the file (a truncated TIFF).

    tifffile opens a truncated file without complaint: an ImageJ stack whose
    later pages are cut off shrinks to its first page, other layouts fail
    only when a missing strip is read (or decompressed).  Checking every
    page's strips or tiles against the file size when the file is opened
    refuses it up front.
    """
    size = tif.filehandle.size
    if series.dataoffset is not None:  # contiguous: one range for the whole series
        ranges = [(series.dataoffset, series.nbytes)]
    else:
        ranges = []
        for i, page in enumerate(series.pages):
            if page is None:
                raise ImageDataError(f"{entry.path}: series {entry.series} of {view} lacks page {i}")
            ranges.extend(zip(page.dataoffsets, page.databytecounts))
    for offset, count in ranges:
        if offset + count > size:
            raise ImageDataError(
                f"{entry.path}: {view}: pixel data end at byte {offset + count} but the file has "
                f"{size} bytes; the TIFF is truncated"
            )


def _zyx_index(shape, axes: str, entry: TiffEntry, view: ViewId):
    """Axis numbers of z, y, x in the series and a template index fixing the rest."""
    axes = axes.upper()
    if "Y" not in axes or "X" not in axes:
        raise ImageDataError(f"{entry.path}: series {entry.series} has axes {axes!r}, no Y and X")
    yax, xax = axes.index("Y"), axes.index("X")
    zax = axes.index("Z") if "Z" in axes else None
    if zax is None:
        # Plain multi-page files carry a generic page axis instead of Z.
        for generic in "IQ":
            if generic in axes:
                zax = axes.index(generic)
                break
    cax = axes.index("C") if "C" in axes else (axes.index("S") if "S" in axes else None)
    fixed: list = [0] * len(axes)
    for i, (a, n) in enumerate(zip(axes, shape)):
        if i in (zax, yax, xax):
            continue
        if i == cax:
            if not 0 <= entry.channel < n:
                raise ImageDataError(
                    f"{entry.path}: {view} wants channel {entry.channel}, series {entry.series} "
                    f"has {n} along {a!r}"
                )
            fixed[i] = entry.channel
        elif n != 1:
            raise ImageDataError(
                f"{entry.path}: series {entry.series} has axes {axes!r} with {n} entries along "
                f"{a!r}; only z, channel, y and x can be selected"
            )
    if cax is None and entry.channel != 0:
        raise ImageDataError(
            f"{entry.path}: {view} wants channel {entry.channel}, series {entry.series} "
            f"(axes {axes!r}) has no channel axis"
        )
    return zax, yax, xax, fixed
