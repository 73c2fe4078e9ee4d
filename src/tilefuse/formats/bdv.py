"""BigDataViewer's storage layouts and pixel types, named once for the loaders and the writers.

HDF5 (bigdataviewer-core ``bdv/img/hdf5``)::

    s{setup:02d}/resolutions                  float64 [levels][3]  downsampling factors, x y z
    s{setup:02d}/subdivisions                 int32   [levels][3]  block shape, x y z
    t{tp:05d}/s{setup:02d}/{level}/cells      the pixels, stored z y x

N5 (``BdvN5Format``)::

    setup{setup}/attributes.json              downsamplingFactors, dataType, ...
    setup{setup}/timepoint{tp}/s{level}/      one N5 dataset per resolution level

OME-Zarr as BigStitcher writes it (``bdv.multimg.zarr``)::

    s{setup}-t{tp}.zarr/                      one OME-Zarr image per view
"""

from __future__ import annotations

import re

__all__ = ["BDV_DATA_TYPES", "ZARR_VIEW_GROUP", "hdf5_cells", "hdf5_setup", "n5_level", "n5_setup", "n5_view",
           "zarr_view"]

#: The pixel types of BDV and N5 (``dataType`` names; numpy spells them identically).
BDV_DATA_TYPES = (
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64",
)

#: A BigStitcher OME-Zarr view group's name; groups 1 and 2 are the setup and the timepoint.
ZARR_VIEW_GROUP = re.compile(r"s(\d+)-t(\d+)\.zarr")


def hdf5_setup(setup: int) -> str:
    """The HDF5 group of a setup (its ``resolutions``, ``subdivisions`` and ``dataType``)."""
    return f"s{setup:02d}"


def hdf5_cells(timepoint: int, setup: int, level: int) -> str:
    """The HDF5 dataset holding one level of one view."""
    return f"t{timepoint:05d}/s{setup:02d}/{level}/cells"


def n5_setup(setup: int) -> str:
    """The N5 group of a setup (its ``attributes.json`` has the factors and the data type)."""
    return f"setup{setup}"


def n5_view(timepoint: int, setup: int) -> str:
    """The N5 group of one view (its levels' datasets; ``multiScale`` and ``resolution`` attributes)."""
    return f"setup{setup}/timepoint{timepoint}"


def n5_level(timepoint: int, setup: int, level: int) -> str:
    """The N5 dataset holding one level of one view."""
    return f"{n5_view(timepoint, setup)}/s{level}"


def zarr_view(timepoint: int, setup: int) -> str:
    """The OME-Zarr group BigStitcher writes one view into."""
    return f"s{setup}-t{timepoint}.zarr"
