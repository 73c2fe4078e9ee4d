"""Zeiss CZI: scenes, mosaic tiles, channels, z-stacks and timepoints, through aicspylibczi (``tilefuse[czi]``).

Why aicspylibczi: a CZI mosaic stores each tile as its own subblocks, and
stitching needs each tile with its overlap intact.  aicspylibczi (libCZI
underneath) reads one tile (``M`` index) of one plane at a time and reports
its bounding box; pylibCZIrw, Zeiss' own wrapper, reads only composed regions
of the scene (the overlaps of neighbouring tiles painted over each other), so
it serves the tests as a *writer* of mosaics.  czifile reads the subblocks
exactly too, at the same speed (``benchmarks/bench_acquisitions.py``, in
docs/acquisitions.md); aicspylibczi wraps Zeiss' own libCZI.

Conventions (libCZI's documentation "CZI coordinate systems"; the CZI
specification's subblock directory ``DimensionEntryDV``):

* **series** are numbered scene by scene, tile by tile (scene 0's tiles,
  then scene 1's), one per (scene, tile): Bio-Formats' ``ZeissCZIReader``
  numbering when it does not stitch the tiles (``zeissczi.autostitch=false``).
* **positions**: a tile's subblocks start at ``X``/``Y`` pixel coordinates
  of the mosaic ("raw subblock coordinate system", origin arbitrary and
  possibly negative).  ZEN computes them from the stage positions already
  rotated and flipped into the image's axes, so they need no axis
  correction; the position is ``start × pixel size`` (the tile's corner).
  z is 0 for every tile (the ``Z`` index of a subblock is a plane number;
  per-tile focus offsets in the metadata are not read).
* **voxel size**: ``Metadata/Scaling/Items/Distance[@Id]/Value``, in metres,
  converted to µm.  Channel names from ``Information/Image/Dimensions/Channels``.
* Pyramid subblocks (zoomed-out copies ZEN keeps for large mosaics) are not
  read: tiles are read at full resolution.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedFormatError
from .acquisition import Acquisition, AcquisitionFile, Region, Stack, to_micrometers

__all__ = ["CziAcquisition"]


class CziAcquisition(AcquisitionFile):
    """A CZI file: one series per scene and mosaic tile."""

    kind = "czi"
    suffixes = (".czi",)
    extra = "czi"

    def __init__(self, path) -> None:
        super().__init__(path)
        self._czi = self._open_reader("aicspylibczi", "CziFile")
        self._tiles: list[tuple[int, int | None]] = []  # series -> (scene, tile or None)

    def _describe(self) -> Acquisition:
        czi = self._czi
        acq = Acquisition(self.path, "czi", [])
        meta = czi.meta
        acq.voxel_size = tuple(_scaling(meta, a) for a in "ZYX")
        for c, ch in enumerate(meta.findall(".//Information/Image/Dimensions/Channels/Channel")):
            name = ch.get("Name") or ch.findtext("EmissionWavelength")
            if name:
                acq.channel_names[c] = name
        if "A" in czi.dims and czi.size[czi.dims.index("A")] > 1:
            raise UnsupportedFormatError(f"{self.path}: RGB CZI files (pixel type {czi.pixel_type}) are not read "
                                         "by tilefuse; export the channels as grey images")
        dtype = {"gray8": np.uint8, "gray16": np.uint16, "gray32float": np.float32,
                 "gray32": np.uint32}.get(czi.pixel_type)
        if dtype is None:
            raise UnsupportedFormatError(f"{self.path}: CZI pixel type {czi.pixel_type!r} is not read by tilefuse")
        mosaic = czi.is_mosaic()
        for dims in czi.get_dims_shape():
            scenes = range(*dims["S"]) if "S" in dims else range(1)
            tiles = range(*dims["M"]) if mosaic and "M" in dims else [None]
            nz = dims["Z"][1] - dims["Z"][0] if "Z" in dims else 1
            for s in scenes:
                for m in tiles:
                    series = len(self._tiles)
                    self._tiles.append((s, m))
                    box = self._box(s, m)
                    shape = (nz, int(box.h), int(box.w))
                    sy, sx = acq.voxel_size[1] or 1.0, acq.voxel_size[2] or 1.0
                    position = (0.0, float(box.y) * sy, float(box.x) * sx)
                    name = f"S{s}" + (f"_M{m}" if m is not None else "")
                    acq.series_names[series] = name
                    for t in range(*dims.get("T", (0, 1))):
                        for c in range(*dims.get("C", (0, 1))):
                            acq.stacks.append(Stack(series, c, t, shape, np.dtype(dtype), (1, shape[1], shape[2]),
                                                    position, name))
        if None in acq.voxel_size[1:]:
            acq.notes.append("no Scaling in the CZI metadata: positions are in pixels")
        return acq

    def _box(self, scene: int, tile: int | None):
        if tile is None:
            return self._czi.get_scene_bounding_box(S=scene) if "S" in self._czi.dims else \
                self._czi.get_mosaic_bounding_box()
        # libCZI wants every dimension of the subblock named: the first plane stands for the tile
        dims = self._czi.get_dims_shape()[0]
        fixed = {d: dims[d][0] for d in "CZT" if d in dims}
        if "S" in self._czi.dims:
            fixed["S"] = scene
        return self._czi.get_mosaic_tile_bounding_box(M=tile, **fixed)

    def read(self, series: int, channel: int, timepoint: int, region: Region) -> np.ndarray:
        self.describe()
        scene, tile = self._tiles[series]
        planes = []
        with self._lock:
            for z in range(region[0].start, region[0].stop):
                index = {"C": channel, "T": timepoint, "Z": z}
                if "S" in self._czi.dims:
                    index["S"] = scene
                if tile is not None:
                    index["M"] = tile
                index = {k: v for k, v in index.items() if k in self._czi.dims}
                data, _ = self._czi.read_image(**index)
                plane = data.reshape(data.shape[-2:])  # every other axis was fixed to one entry
                planes.append(plane[region[1], region[2]])
        if not planes:
            dtype = self._acq.stacks[0].dtype
            return np.zeros((0, region[1].stop - region[1].start, region[2].stop - region[2].start), dtype)
        return np.stack(planes)


def _scaling(meta, axis: str) -> float | None:
    value = meta.findtext(f".//Scaling/Items/Distance[@Id='{axis}']/Value")
    try:
        return to_micrometers(float(value), "m") if value else None
    except ValueError:
        return None
