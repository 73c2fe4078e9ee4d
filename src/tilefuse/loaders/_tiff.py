"""``spimreconstruction.filemap2``: one TIFF file (series, channel) per view.

BigStitcher reads these files through Bio-Formats; here tifffile does the
job.  ``series`` indexes ``TiffFile.series`` and ``channel`` picks an index
along the series' ``C`` axis (or its samples axis ``S`` when there is no
``C``).  A series without a ``Z`` axis but with a generic page axis (``I``,
``Q``) uses that as z; a plain 2D series gives ``z == 1``.

Pixels are read through :meth:`tifffile.TiffPageSeries.aszarr`, whose chunks
are pages (or tiles/strips of pages), so a region reads only the pages of the
z-slices it covers.  Uncompressed series stored contiguously (what
:func:`tilefuse.write_project` and most microscopes write) are read directly
instead: one ``pread`` per z-plane of the rows a region covers, about 10x
faster than going through zarr for the small regions registration reads.
There is a single resolution level.

``<ZGrouped>true</ZGrouped>`` (z-slices spread over a Bio-Formats file
pattern) is not supported: such views raise
:class:`~tilefuse.errors.UnsupportedFormatError` when read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product
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
        self._token = None  # token(), computed once: tokenizing 10,000 entries per task or check is slow

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

    def _handle(self, view: ViewId) -> _SeriesHandle:
        """The open series of a view (cached per process while its file is unchanged)."""
        entry = self._entry(view)
        key = (str(entry.path), ("tiff", entry.series))
        return cached_handle(key, lambda: _SeriesHandle.open(entry, ViewId(*view)), anchors=[entry.path])

    # -- metadata ---------------------------------------------------------
    def has_view(self, view: ViewId) -> bool:
        entry = self.files_map.get(ViewId(*view))
        return entry is not None and entry.path.exists()

    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        self._entry(view)
        return [(1.0, 1.0, 1.0)]

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        _check_level(level, view)
        handle = self._handle(view)
        zax, yax, xax, _ = _zyx_index(handle.shape, handle.axes, self.files_map[ViewId(*view)], ViewId(*view))
        nz = handle.shape[zax] if zax is not None else 1
        return (int(nz), int(handle.shape[yax]), int(handle.shape[xax]))

    def dtype(self, view: ViewId) -> np.dtype:
        return self._handle(view).dtype

    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        # A page is the file's block; several pages are grouped per dask task
        # so that large stacks do not become thousands of tiny tasks.
        _check_level(level, view)
        handle = self._handle(view)
        zax, yax, xax, _ = _zyx_index(handle.shape, handle.axes, self.files_map[ViewId(*view)], ViewId(*view))
        cy, cx = handle.chunks_yx(yax, xax)
        nz = handle.shape[zax] if zax is not None else 1
        plane = max(1, cy * cx * handle.dtype.itemsize)
        cz = max(1, min(nz, _MAX_Z_BLOCK, _BLOCK_BYTES // plane))
        return (int(cz), cy, cx)

    def read(self, view: ViewId, level: int, region: Region, *, cache: bool = False) -> np.ndarray:
        _check_level(level, view)
        handle = self._handle(view)
        zax, yax, xax, fixed = _zyx_index(handle.shape, handle.axes, self.files_map[ViewId(*view)], ViewId(*view))
        shape = (handle.shape[zax] if zax is not None else 1, handle.shape[yax], handle.shape[xax])
        rz, ry, rx = normalize_region(region, shape)
        index = list(fixed)
        if zax is not None:
            index[zax] = rz
        index[yax], index[xax] = ry, rx
        try:
            if handle.contiguous:
                out = handle.read_contiguous(index)
            else:
                out = np.asarray(handle.array[tuple(index)])
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
        if self._token is None:
            from dask.base import tokenize

            # Plain strings and ints: tokenizing Paths inside dataclasses is ~100x slower.
            entries = tuple((v.timepoint, v.setup, str(e.path), e.series, e.channel) for v, e in self.files_map.items())
            self._token = (type(self).__name__, tokenize(entries), self.z_grouped)
        return self._token


def _check_level(level: int, view: ViewId) -> None:
    if level != 0:
        raise ImageDataError(f"{ViewId(*view)}: TIFF file maps have only level 0, level {level} requested")


class _SeriesHandle:
    """An open TIFF file and one of its series (cached per process).

    ``array`` is the series as a read-only zarr array (made on first use).
    When the series is uncompressed, contiguous and ends in ``YX``,
    :meth:`read_contiguous` reads its rows straight from the file instead.
    """

    def __init__(self, tif, series, axes: str, contiguous: tuple[int, np.dtype] | None) -> None:
        self.tif, self.series, self.axes = tif, series, axes
        self.shape = tuple(int(n) for n in series.shape)
        self.contiguous = contiguous is not None
        self._array = None
        self._fd = None
        if contiguous is not None:
            self._offset, self._dtype = contiguous
            self._fd = os.open(tif.filehandle.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    @property
    def array(self):
        if self._array is None:
            import zarr

            # Chunks of this store are pages (or tiles/strips of pages).
            self._array = zarr.open_array(self.series.aszarr(), mode="r")
        return self._array

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.series.dtype)

    def chunks_yx(self, yax: int, xax: int) -> tuple[int, int]:
        """The file's block along y and x: a page's strip or tile (what the zarr store chunks by)."""
        page_chunks = tuple(getattr(self.series.keyframe, "chunks", ()))
        if self.contiguous and len(page_chunks) == 2:  # no zarr store needed (making one costs ~5 ms)
            return int(page_chunks[0]), int(page_chunks[1])
        return int(self.array.chunks[yax]), int(self.array.chunks[xax])

    def read_contiguous(self, index: list) -> np.ndarray:
        """``series[index]`` (ints and step-1 slices, one per axis) by one ``pread`` per plane's rows."""
        *lead, ys, xs = index
        ny, nx = self.shape[-2:]
        item = self._dtype.itemsize
        rows = ys.stop - ys.start
        lead_ranges = [range(i, i + 1) if isinstance(i, (int, np.integer)) else range(i.start, i.stop) for i in lead]
        planes = list(product(*lead_ranges))
        out = np.empty((len(planes), rows, xs.stop - xs.start), dtype=self._dtype.newbyteorder("="))
        if out.size:
            for k, plane in enumerate(planes):
                flat = int(np.ravel_multi_index(plane, self.shape[:-2])) if plane else 0
                start = self._offset + ((flat * ny) + ys.start) * nx * item
                want = rows * nx * item
                data = os.pread(self._fd, want, start)
                if len(data) != want:  # the file shrank since it was opened and checked
                    raise ImageDataError(f"{self.tif.filehandle.path}: the file ends at byte {start + len(data)}, "
                                         f"pixel data run to byte {start + want}; the TIFF is truncated")
                out[k] = np.frombuffer(data, dtype=self._dtype).reshape(rows, nx)[:, xs]
        # the shape numpy indexing gives: integer-indexed axes dropped
        keep = [len(r) for i, r in zip(lead, lead_ranges) if not isinstance(i, (int, np.integer))]
        return out.reshape(keep + [rows, xs.stop - xs.start])

    @classmethod
    def open(cls, entry: TiffEntry, view: ViewId) -> _SeriesHandle:
        import tifffile

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
            return cls(tif, series, series.axes, _contiguous_layout(tif, series))
        except BaseException:
            tif.close()
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.tif.close()


def _contiguous_layout(tif, series) -> tuple[int, np.dtype] | None:
    """``(offset, stored dtype)`` of a series whose pixels lie uncompressed and in order in the file, else None.

    Only series ending in ``YX`` (no interleaved samples) whose bytes are
    exactly ``shape x itemsize`` qualify; everything else is read through zarr.
    """
    if not hasattr(os, "pread") or series.dataoffset is None or not series.axes.upper().endswith("YX"):
        return None
    page = series.keyframe
    dtype = np.dtype(series.dtype)
    if getattr(page, "compression", 1) != 1 or dtype.kind not in "uif" or page.fillorder != 1:
        return None
    if series.nbytes != int(np.prod(series.shape)) * dtype.itemsize:
        return None
    return int(series.dataoffset), dtype.newbyteorder(tif.byteorder)


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
