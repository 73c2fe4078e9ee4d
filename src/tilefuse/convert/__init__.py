"""Users' own acquisitions into BigStitcher projects: ``tilefuse convert``.

* :func:`convert_files` — microscope files (CZI, OME-TIFF, ND2, LIF, ImageJ
  or plain TIFF) with the stage positions, calibration and channels of their
  metadata, resaved (BDV HDF5 / N5 / OME-Zarr with a pyramid) or in place
  (an XML reading the original files);
* :func:`convert_tiffs` — a folder of TIFFs and a positions file (CSV or
  Fiji's ``TileConfiguration.txt``);
* :func:`~tilefuse.convert.layout.layout_warnings` — positions that
  contradict the tiles (wrong unit, swapped axes), caught before registration;
  :func:`~tilefuse.convert.flips.flip_warning` — a stage axis running against
  the camera, seen in the overlaps' pixels.
"""

from .files import convert_files
from .layout import layout_warnings
from .tables import (
    CSV_HELP,
    ConvertOptions,
    TileEntry,
    convert_tiffs,
    lazy_tiff,
    read_positions,
    read_positions_csv,
    read_tile_configuration,
)

__all__ = ["ConvertOptions", "TileEntry", "read_positions_csv", "read_tile_configuration", "read_positions",
           "convert_tiffs", "convert_files", "lazy_tiff", "layout_warnings", "CSV_HELP"]
