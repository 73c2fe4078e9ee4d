"""TIFF acquisitions: OME-TIFF, ImageJ hyperstacks and plain TIFFs, through tifffile (a core dependency).

What is read, per flavour:

* **OME-TIFF** (the OME-XML in the first page's ImageDescription; OME data
  model, https://www.openmicroscopy.org/Schemas/Documentation/Generated/OME-2016-06/ome.html):
  one series per ``<Image>``; voxel size from ``Pixels@PhysicalSizeX/Y/Z`` and
  their ``...Unit`` attributes (default µm); channel names from
  ``Channel@Name`` (else ``EmissionWavelength`` nm); the stage position of each
  (series, channel, timepoint) from its first plane's ``Plane@PositionX/Y/Z``
  (``TheZ=0``) with ``PositionXUnit`` etc.  The schema defaults those units to
  "reference frame"; Bio-Formats, Micro-Manager and tifffile write µm, which is
  assumed when the unit is absent.  The position is taken as the image's first
  voxel (BigStitcher's "Define dataset" does the same with Bio-Formats'
  ``getPlanePositionX``); whether the microscope meant the corner or the centre
  of the field does not change a mosaic of equal tiles, only its origin.
  Without ``PhysicalSizeZ`` the z step is the distance between the first two
  planes' ``PositionZ``.
* **ImageJ** (ImageJ's ``ImageDescription``: ``unit=``, ``spacing=``,
  ``channels=``, ``slices=``, ``frames=``; ``ij.io.FileSaver``): pixel size
  from the ``XResolution``/``YResolution`` tags (pixels per unit), unit from
  ``unit`` (``micron`` and ``\\u00B5m`` included), z step from ``spacing``;
  channels and frames split by the hyperstack's axes (tifffile's series axes),
  so a ``CYX`` file is two channels, not a two-slice stack.
* **plain TIFF**: pixel size from the resolution tags only when
  ``ResolutionUnit`` is centimetre; inch resolutions are nearly always a
  display default (72 or 300 dpi, 0.35 mm or 85 µm per pixel), so they are
  ignored and said so.  A generic page axis (tifffile's ``I``/``Q``) is z.
  No positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageDataError
from .acquisition import Acquisition, AcquisitionFile, Region, Stack, to_micrometers, unit_factor

__all__ = ["TiffAcquisition", "tiff_calibration"]

#: TIFF ResolutionUnit values (TIFF 6.0, tag 296)
_RES_NONE, _RES_INCH, _RES_CM = 1, 2, 3


class TiffAcquisition(AcquisitionFile):
    """A TIFF file (OME, ImageJ or plain): one stack per series, channel and timepoint."""

    kind = "tiff"
    suffixes = (".ome.tif", ".ome.tiff", ".ome.btf", ".tif", ".tiff", ".btf")
    extra = None

    def __init__(self, path) -> None:
        super().__init__(path)
        import tifffile

        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as exc:  # TiffFileError, struct.error, ...
            raise ImageDataError(f"{self.path}: not a readable TIFF file ({exc})") from exc
        self._arrays: dict[int, object] = {}

    def close(self) -> None:
        self._tif.close()

    @property
    def tiff(self):
        """The :class:`tifffile.TiffFile` (for checks of its pages)."""
        return self._tif

    # -- metadata ---------------------------------------------------------
    def _describe(self) -> Acquisition:
        tif = self._tif
        _check_first_page_tags(tif, self.path)
        kind = "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff"
        acq = Acquisition(self.path, kind, [])
        ome = _OmeMetadata.parse(tif.ome_metadata, self.path) if tif.is_ome else None
        if ome is None and _damaged_ome(tif):
            # tifffile reads a file whose OME-XML it cannot take (truncated, not well-formed) as a plain TIFF:
            # every page of every position one plane of a single stack.  Converted that way, a 2-tile scan
            # became one 2-plane 3D view and fused with exit 0.
            _OmeMetadata.parse(tif.pages.first.description, self.path)  # raises with the parser's words
            raise ImageDataError(f"{self.path}: the first page holds OME-XML metadata that tifffile does not "
                                 "accept as OME (damaged or of another schema); the file is refused rather than "
                                 "read as a plain TIFF")
        if ome is None:
            voxel, unit, notes = tiff_calibration(tif)
            acq.voxel_size, acq.unit = voxel, unit
            acq.notes.extend(notes)
        else:
            acq.voxel_size = ome.voxel_size(0)
            acq.notes.extend(ome.notes)
            acq.channel_names = ome.channel_names(0)
        for s, series in enumerate(tif.series):
            axes = _Axes(series.axes, series.shape, self.path, s)
            chunks = _page_chunks(series)
            if ome is not None:
                if ome.voxel_size(s) != acq.voxel_size:
                    raise ImageDataError(f"{self.path}: OME <Image> {s} has voxel size {ome.voxel_size(s)}, "
                                         f"<Image> 0 has {acq.voxel_size}; tilefuse needs one voxel size per file")
                acq.series_names[s] = ome.image_name(s)
            for t in range(axes.size("T")):
                for c in range(axes.channels):
                    position = ome.position(s, c, t) if ome is not None else None
                    acq.stacks.append(Stack(s, c, t, axes.zyx_shape, np.dtype(series.dtype),
                                            (1, *chunks), position, acq.series_names.get(s, "")))
        return acq

    # -- pixels -----------------------------------------------------------
    def _array(self, series: int):
        """The series as a memory map (uncompressed, contiguous in this file) or else a zarr array over its pages."""
        with self._lock:
            if series not in self._arrays:
                s = self._tif.series[series]
                offset = s.dataoffset
                end = None if offset is None else offset + int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
                if (end is not None and end <= self.path.stat().st_size  # (a truncated file: zarr says where)
                        and all(p is not None and p.parent is self._tif for p in s.pages)):
                    # What microscopes and ImageJ mostly write: a region is then a plain slice of the file,
                    # read by the OS page by page, without zarr's per-chunk overhead and without a lock.
                    dtype = np.dtype(s.dtype).newbyteorder(self._tif.byteorder)
                    self._arrays[series] = np.memmap(self.path, dtype=dtype, mode="r", offset=offset,
                                                     shape=tuple(s.shape))
                else:
                    import zarr

                    self._arrays[series] = zarr.open_array(s.aszarr(), mode="r")
            return self._arrays[series]

    def read(self, series: int, channel: int, timepoint: int, region: Region) -> np.ndarray:
        s = self._tif.series[series]
        axes = _Axes(s.axes, s.shape, self.path, series)
        index, order = axes.index(channel, timepoint, region)
        array = self._array(series)
        if isinstance(array, np.memmap):
            out = np.array(array[index], dtype=array.dtype.newbyteorder("="), copy=True).transpose(order)
        else:
            with self._lock:  # one file handle is shared by the series' stores
                out = np.asarray(array[index]).transpose(order)
        return out if axes.z is not None else out[None][region[0]]


def _page_chunks(series) -> tuple[int, int]:
    """The (y, x) block of a series' pages: tiles when tiled, else whole planes (strips are read together)."""
    page = series.pages[0] if series.pages else None
    shape = series.shape
    yx = (int(shape[series.axes.index("Y")]), int(shape[series.axes.index("X")])) if "Y" in series.axes else (1, 1)
    if page is not None and getattr(page, "is_tiled", False):
        return (min(int(page.tilelength), yx[0]), min(int(page.tilewidth), yx[1]))
    return yx


class _Axes:
    """Where z, y, x, channel and time are along a tifffile series' axes."""

    def __init__(self, axes: str, shape, path: Path, series: int) -> None:
        self.axes, self.shape = axes.upper(), tuple(int(n) for n in shape)
        if "Y" not in self.axes or "X" not in self.axes:
            raise ImageDataError(f"{path}: series {series} has axes {axes!r}, no Y and X")
        self.y, self.x = self.axes.index("Y"), self.axes.index("X")
        self.z = next((self.axes.index(a) for a in "ZIQ" if a in self.axes), None)
        self.c = self.axes.index("C") if "C" in self.axes else (self.axes.index("S") if "S" in self.axes else None)
        self.t = self.axes.index("T") if "T" in self.axes else None
        for i, (a, n) in enumerate(zip(self.axes, self.shape)):
            if i not in (self.z, self.y, self.x, self.c, self.t) and n != 1:
                raise ImageDataError(f"{path}: series {series} has axes {axes!r} with {n} entries along {a!r}; "
                                     "tilefuse reads z, channels, timepoints, y and x")

    def size(self, axis: str) -> int:
        i = {"T": self.t, "C": self.c, "Z": self.z}[axis]
        return self.shape[i] if i is not None else 1

    @property
    def channels(self) -> int:
        return self.size("C")

    @property
    def zyx_shape(self) -> tuple[int, int, int]:
        return (self.size("Z"), self.shape[self.y], self.shape[self.x])

    def index(self, channel: int, timepoint: int, region: Region):
        """The zarr index of one stack's region, and the transpose putting the result in z, y, x order."""
        index: list = [0] * len(self.axes)
        if self.z is not None:
            index[self.z] = region[0]
        index[self.y], index[self.x] = region[1], region[2]
        if self.c is not None:
            index[self.c] = channel
        if self.t is not None:
            index[self.t] = timepoint
        kept = [a for a in (self.z, self.y, self.x) if a is not None]
        return tuple(index), [sorted(kept).index(a) for a in kept]


def tiff_calibration(tif) -> tuple[tuple, str, list[str]]:
    """Voxel size ``(z, y, x)`` (None where unknown), its unit and notes, from ImageJ metadata and resolution tags."""
    notes: list[str] = []
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    tags = page.tags
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit")
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else _RES_INCH
    if unit is not None:
        unit = str(unit).encode("ascii", "backslashreplace").decode().replace("\\xb5", "\\u00b5")
        if unit_factor(unit) is None:
            notes.append(f"ImageJ unit {ij.get('unit')!r} is not a length: the resolution is ignored")
            return (None, None, None), "µm", notes
    elif res_unit == _RES_CM:
        unit = "cm"
    else:
        if "XResolution" in tags and res_unit == _RES_INCH:
            notes.append("resolution tags in dots per inch (a display setting, not a pixel size) ignored")
        return (None, None, None), "µm", notes

    def size(tag):
        if tag not in tags:
            return None
        num, den = tags[tag].value
        return to_micrometers(den / num, unit) if num else None

    y, x = size("YResolution"), size("XResolution")
    z = to_micrometers(float(ij["spacing"]), unit) if "spacing" in ij else None
    return (z, y, x), "µm", notes


def _check_first_page_tags(tif, path: Path) -> None:
    """Refuse a file whose first page lists tags tifffile could not read.

    tifffile skips a tag whose value lies beyond the end of the file (with a
    log line) and reads on.  In a truncated OME-TIFF that tag is the
    ImageDescription holding the OME-XML, written last: the file then read as
    a plain TIFF, its tiles as the planes of one stack, and fused with exit 0.
    The first page carries the metadata (OME, ImageJ, calibration), so its
    IFD's entry count is compared with the tags tifffile kept.
    """
    import struct

    page = tif.pages.first
    header = tif.tiff
    try:
        with tif.filehandle.lock:
            tif.filehandle.seek(page.offset)
            listed = struct.unpack(header.tagnoformat, tif.filehandle.read(header.tagnosize))[0]
    except (struct.error, OSError, AttributeError):  # nothing to compare with: tifffile's reading stands
        return
    lost = listed - len(page.tags)
    if lost > 0:
        raise ImageDataError(f"{path}: {lost} of the {listed} TIFF tags of the first page cannot be read (their "
                             "values lie beyond the end of the file or are damaged: is the file truncated?); its "
                             "metadata (OME-XML, ImageJ, calibration) would be lost, so the file is refused")


def _damaged_ome(tif) -> bool:
    """Whether the first page's ImageDescription is meant as OME-XML although tifffile did not take it."""
    try:
        text = tif.pages.first.description or ""
    except Exception:  # noqa: BLE001 - no readable first page: nothing to say about its metadata
        return False
    head = text.lstrip()[:2000]
    return head.startswith("<") and ("<OME" in head or ":OME" in head)


class _OmeMetadata:
    """The parts of OME-XML tilefuse uses, per ``<Image>``."""

    def __init__(self, images, path: Path) -> None:
        self.images, self.path, self.notes = images, path, []

    @classmethod
    def parse(cls, text: str | None, path: Path) -> _OmeMetadata | None:
        if not text:
            return None
        from lxml import etree

        try:
            root = etree.fromstring(text.encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True,
                                                                             huge_tree=True))
        except etree.XMLSyntaxError as exc:
            raise ImageDataError(f"{path}: the OME-XML metadata are not well-formed XML ({exc})") from None
        return cls(root.findall("{*}Image"), path)

    def _pixels(self, s: int):
        if s >= len(self.images):
            return None
        return self.images[s].find("{*}Pixels")

    def image_name(self, s: int) -> str:
        return self.images[s].get("Name", "") if s < len(self.images) else ""

    def voxel_size(self, s: int) -> tuple:
        px = self._pixels(s)
        if px is None:
            return (None, None, None)
        sizes = [to_micrometers(_float(px.get(f"PhysicalSize{a}")), px.get(f"PhysicalSize{a}Unit", "µm"))
                 for a in "ZYX"]
        if sizes[0] is None:
            z0 = self._plane(s, 0, 0, 0)
            z1 = self._plane(s, 1, 0, 0)
            if z0 is not None and z1 is not None:
                p0, p1 = (to_micrometers(_float(p.get("PositionZ")), p.get("PositionZUnit", "µm")) for p in (z0, z1))
                if p0 is not None and p1 is not None and p1 != p0:
                    sizes[0] = abs(p1 - p0)
                    self.notes.append("no PhysicalSizeZ: z step from the planes' PositionZ")
        return tuple(sizes)

    def channel_names(self, s: int) -> dict[int, str]:
        px = self._pixels(s)
        names = {}
        for c, ch in enumerate(px.findall("{*}Channel") if px is not None else []):
            name = ch.get("Name") or (f"{float(ch.get('EmissionWavelength')):g}" if ch.get("EmissionWavelength")
                                      else None)
            if name:
                names[c] = name
        return names

    def _plane(self, s: int, z: int, c: int, t: int):
        px = self._pixels(s)
        if px is None:
            return None
        for plane in px.findall("{*}Plane"):
            if (int(plane.get("TheZ", 0)), int(plane.get("TheC", 0)), int(plane.get("TheT", 0))) == (z, c, t):
                return plane
        return None

    def position(self, s: int, c: int, t: int) -> tuple | None:
        """The stage position ``(z, y, x)`` in µm of the first plane of (series, channel, timepoint)."""
        # (lxml elements without children are falsy: compare with None, never `or`)
        for z, cc, tt in ((0, c, t), (0, 0, t), (0, 0, 0)):
            plane = self._plane(s, z, cc, tt)
            if plane is not None:
                break
        else:
            return None
        pos = [to_micrometers(_float(plane.get(f"Position{a}")), plane.get(f"Position{a}Unit", "µm")) for a in "ZYX"]
        if pos[1] is None and pos[2] is None:
            return None
        return tuple(0.0 if p is None else p for p in pos)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
