"""Leica LIF: images, tile scans, channels, z-stacks and timepoints, through readlif (``tilefuse[lif]``).

Why readlif: pure Python (no compiled part to install), reads one plane of
one tile at a time (``get_frame(z, t, c, m)``) and parses the tile positions;
liffile (newer) reads whole images.

Conventions (Bio-Formats ``LeicaMicrosystemsMetadata/extract/PositionExtractor.java``,
the reference reader of LAS X files):

* **series**: Bio-Formats splits a tile scan into one series per tile; so
  does tilefuse: series are numbered image by image, tile by tile.
* **voxel size**: each dimension's ``Length`` over ``NumberOfElements - 1``
  (the length runs from the first to the last pixel centre), in metres; a
  negative z length (a stack acquired downwards) gives its absolute value.
* **positions**: ``Attachment[@Name='TileScanInfo']/Tile@PosX/PosY`` in
  metres; with the attachment's ``SwapXY="1"`` x and y are swapped first,
  then ``FlipX="1"``/``FlipY="1"`` negate x/y, as Bio-Formats does.  The
  position is the tile's corner; z is 0 (LAS X stores one z range per tile
  scan).  An image that is not a tile scan is at the ``StagePosX``/``StagePosY``
  (metres) of its hardware setting (``ATLConfocalSettingDefinition`` or
  ``ATLCameraSettingDefinition``), swapped and flipped by that setting's
  flags: Bio-Formats does so, so separate images of one LAS X project (several
  positions saved as images) are placed as BigStitcher places them.
* A wavelength sweep (LAS X lambda scan: DimID 5, emission, or 9,
  excitation) of a one-channel image is read as channels, one per
  wavelength, named by it (``em 550 nm``; other channels by their
  ``LUTName`` colour when those differ); readlif's ``get_frame`` ignores that dimension (it returns the
  wrong plane), so planes are read with ``get_plane``.  Images that are not
  stacks of xy planes (xz or xt line scans) are left out, each with a note.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ImageDataError
from .acquisition import Acquisition, AcquisitionFile, Region, Stack, to_micrometers

__all__ = ["LifAcquisition"]

#: LIF DimID of x, y, z, t and the mosaic (tile) dimension
_XYZTM = {1, 2, 3, 4, 10}
#: LIF DimID of the wavelength sweeps of lambda scans (readlif's list of known dimensions)
_LAMBDA = {5: "emission", 9: "excitation"}


class LifAcquisition(AcquisitionFile):
    """A LIF project file: one series per image and tile."""

    kind = "lif"
    suffixes = (".lif",)
    extra = "lif"

    def __init__(self, path) -> None:
        super().__init__(path)
        self._lif = self._open_reader("readlif.reader", "LifFile")
        self._series: list[tuple[int, int, int | None]] = []  # series -> (image, tile, wavelength DimID)

    def _describe(self) -> Acquisition:
        acq = Acquisition(self.path, "lif", [])
        voxel = None
        for i, info in enumerate(self._lif.image_list):
            name = info["name"]
            dims_n = info["dims_n"]
            other = sorted(set(dims_n) - _XYZTM)
            # A wavelength sweep (LAS X lambda scan, one channel) is read as channels, one per wavelength.
            sweep = other[0] if len(other) == 1 and other[0] in _LAMBDA and info["channels"] == 1 else None
            if info["display_dims"] != (1, 2) or (other and sweep is None):
                why = f"dimensions {other} besides x, y, z, t and tiles" if other else "not a stack of xy planes"
                acq.notes.append(f"image {i} ({name!r}) left out: {why}")
                continue
            if sweep is not None:
                acq.notes.append(f"image {i} ({name!r}): its {dims_n[sweep]} wavelengths ({_LAMBDA[sweep]}) are "
                                 "read as channels")
            dims = info["dims"]
            size = tuple(_pixel_size(info["scale_n"].get(d)) for d in (3, 2, 1))
            if voxel is None:
                voxel = size
            elif any(a is not None and b is not None and not math.isclose(a, b, rel_tol=1e-6)
                     for a, b in zip(size, voxel)):
                acq.notes.append(f"image {i} ({name!r}) left out: voxel size {size} differs from {voxel}")
                continue
            else:
                voxel = tuple(b if a is None else a for a, b in zip(voxel, size))
            depth = max(info["bit_depth"]) if info["bit_depth"] else 8
            dtype = np.dtype(np.uint8 if depth <= 8 else np.uint16)
            positions = _tile_positions(self._lif, info, dims.m)
            channels = dims_n[sweep] if sweep is not None else info["channels"]
            if not acq.channel_names:  # one set of channel names per file: the first image's
                acq.channel_names = _channel_names(self._lif, info, sweep, channels)
            for m in range(dims.m):
                series = len(self._series)
                self._series.append((i, m, sweep))
                label = name if dims.m == 1 else f"{name}/tile {m}"
                acq.series_names[series] = label
                shape = (int(dims.z), int(dims.y), int(dims.x))
                for t in range(dims.t):
                    for c in range(channels):
                        acq.stacks.append(Stack(series, c, t, shape, dtype, (1, shape[1], shape[2]),
                                                positions[m], label))
        acq.voxel_size = voxel or (None, None, None)
        if not acq.stacks:
            raise ImageDataError(f"{self.path}: no image of this LIF file is a stack of xy planes "
                                 f"({'; '.join(acq.notes)})")
        return acq

    def read(self, series: int, channel: int, timepoint: int, region: Region) -> np.ndarray:
        self.describe()
        image, tile, sweep = self._series[series]
        with self._lock:
            img = self._lif.get_image(image)
            dims_n = img.info["dims_n"]
            planes = []
            for z in range(region[0].start, region[0].stop):
                # get_plane, not get_frame: get_frame ignores a wavelength dimension and reads the wrong plane
                wanted = {3: z, 4: timepoint, 10: tile}
                if sweep is not None:
                    wanted[sweep] = channel
                wanted = {d: v for d, v in wanted.items() if d in dims_n}
                plane = img.get_plane(display_dims=(1, 2), c=0 if sweep is not None else channel,
                                      requested_dims=wanted)
                planes.append(np.asarray(plane)[region[1], region[2]])
        dtype = self._acq.stacks[0].dtype
        if not planes:
            return np.zeros((0, region[1].stop - region[1].start, region[2].stop - region[2].start), dtype)
        return np.stack(planes).astype(dtype, copy=False)


def _pixel_size(scale: float | None) -> float | None:
    """readlif's scale (pixels per µm, from ``(n - 1) / Length``) as a pixel size in µm."""
    if not scale:
        return None
    return abs(1.0 / float(scale))


def _tile_positions(lif, info, tiles: int) -> list:
    """The ``(z, y, x)`` µm position of each tile, swapped and flipped as the file says (Bio-Formats' rules).

    A tile scan's positions are its ``TileScanInfo`` tiles, with that attachment's
    flags; any other image has the one stage position of its hardware setting
    (``StagePosX``/``StagePosY``), with the setting's flags.
    """
    image = _image_node(lif, info["name"].split("/")[-1])
    if image is None:
        return [None] * tiles
    tile_scan = image.find("./Attachment[@Name='TileScanInfo']")
    if tiles > 1 or tile_scan is not None:
        if tile_scan is None or not info.get("mosaic_position"):
            return [None] * tiles
        flags, raw = tile_scan, [(pos_x, pos_y) for _, _, pos_x, pos_y in info["mosaic_position"]]
    else:
        setting = next((e for e in image.iter() if e.tag in _SETTINGS and e.get("StagePosX") is not None), None)
        if setting is None:
            return [None]
        try:
            raw = [(float(setting.get("StagePosX")), float(setting.get("StagePosY", "0")))]
        except ValueError:
            return [None]
        flags = setting
    swap, flip_x, flip_y = (flags.get(k, "0") == "1" for k in ("SwapXY", "FlipX", "FlipY"))
    out = []
    for pos_x, pos_y in raw:
        x, y = to_micrometers(pos_x, "m"), to_micrometers(pos_y, "m")
        if x is None or y is None:
            out.append(None)
            continue
        if swap:  # swap first, then flip (PositionExtractor.extractFieldPositions)
            x, y = y, x
        out.append((0.0, -y if flip_y else y, -x if flip_x else x))
    return out + [None] * (tiles - len(out))


#: The hardware settings holding an image's stage position (confocal and widefield/camera systems)
_SETTINGS = ("ATLConfocalSettingDefinition", "ATLCameraSettingDefinition")


def _image_node(lif, name: str):
    """The ``<Data><Image>`` node of the LIF element named ``name`` (None when absent)."""
    for element in lif.xml_root.iter("Element"):
        if element.get("Name") == name:
            image = element.find("./Data/Image")
            if image is not None:
                return image
    return None


def _channel_names(lif, info, sweep: int | None, channels: int) -> dict[int, str]:
    """Channel names: a sweep's wavelengths (``DimensionDescription`` Origin + i·Length/(n−1), metres) as
    ``"em 550 nm"``, else each ``ChannelDescription``'s ``LUTName`` (LAS X's colour for the channel)."""
    image = _image_node(lif, info["name"].split("/")[-1])
    if image is None:
        return {}
    if sweep is not None:
        dim = next((d for d in image.iter("DimensionDescription") if d.get("DimID") == str(sweep)), None)
        try:
            origin, length = float(dim.get("Origin")), float(dim.get("Length"))
        except (AttributeError, TypeError, ValueError):
            return {}
        step = length / (channels - 1) if channels > 1 else 0.0
        prefix = "em" if _LAMBDA[sweep] == "emission" else "ex"
        return {c: f"{prefix} {(origin + c * step) * 1e9:.4g} nm" for c in range(channels)}
    names = [c.get("LUTName") or "" for c in image.iter("ChannelDescription")][:channels]
    if len(set(names)) != len(names) or not all(names):
        return {}  # colours repeated or missing: numbers say more
    return dict(enumerate(names))
