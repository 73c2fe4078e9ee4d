"""Write a (fused) 2D/3D/multichannel volume as a TIFF stack.

Pages are streamed: a dask input is computed one z-slab (one block row along
z) at a time and its planes handed to :mod:`tifffile` as an iterator, so the
whole volume is never in memory.

Flavour
-------
* ImageJ hyperstack (``ZCYX`` page order, spacing and unit in the ImageJ
  description, pixel size in the X/YResolution tags) when ImageJ can read it:
  uint8, uint16 or float32 data below ~3.9 GB.
* Otherwise an OME-TIFF (BigTIFF when large) with ``PhysicalSize*`` metadata
  and X/YResolution in pixels per centimetre.

The file is written as ``<name>.partial`` and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .._progress import Progress, progress_bar, writing
from ..errors import ImageDataError
from ._atomic import atomic_output

__all__ = ["write_tiff", "BIGTIFF_THRESHOLD"]

log = logging.getLogger(__name__)

#: Above this many bytes of pixels classic TIFF offsets (32 bit) may overflow.
BIGTIFF_THRESHOLD = int(3.9e9)
_IMAGEJ_DTYPES = {np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32")}
_TO_MICROMETER = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "micrometer": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3,
}
_OME_UNIT = {1.0: "µm", 1e-3: "nm", 1e3: "mm"}


def _slabs(image, bar: Progress, client=None) -> Iterator[np.ndarray]:
    """Yield (z, c, y, x) slabs, computing one dask block row along z at a time; ``bar`` counts planes."""
    import dask.array as da

    from .._compute import compute

    nz = image.shape[0]
    lazy = isinstance(image, da.Array)
    chunks = getattr(image, "chunks", None)
    if chunks is not None and not isinstance(image, np.ndarray):
        bounds = np.concatenate([[0], np.cumsum(chunks[0])])
    else:
        step = max(1, min(nz, 16))
        bounds = np.append(np.arange(0, nz, step), nz)
    for z0, z1 in zip(bounds[:-1], bounds[1:]):
        slab = image[int(z0) : int(z1)]
        slab = compute(slab, client=client)[0] if lazy else np.asarray(slab)
        yield slab
        bar.update(int(z1 - z0))


def _pages(image, bar: Progress, client=None) -> Iterator[np.ndarray]:
    for slab in _slabs(image, bar, client):
        for plane in slab:  # (c, y, x)
            yield from plane


def write_tiff(
    image,
    path: str | os.PathLike,
    *,
    voxel_size: float | Sequence[float] | None = None,
    unit: str = "um",
    bigtiff: bool | None = None,
    progress: bool = False,
    overwrite: bool = False,
    compression: str | None = None,
    client=None,
    before_commit=None,
) -> Path:
    """Write a ``yx``, ``zyx`` or ``czyx`` array as a TIFF stack.

    Parameters
    ----------
    image : dask.array.Array or numpy.ndarray
        2D ``(y, x)``, 3D ``(z, y, x)`` or 4D ``(c, z, y, x)``.
    path : path-like
        Output file.
    voxel_size : float or sequence of float, optional
        Spacing of the spatial axes in numpy order (``(y, x)`` or
        ``(z, y, x)``; a scalar applies to all).  Stored as resolution tags and
        ImageJ ``spacing`` / OME ``PhysicalSize*``.
    unit : str
        Unit of ``voxel_size`` (``"um"``, ``"nm"``, ``"mm"``...).
    bigtiff : bool, optional
        Force BigTIFF on or off; by default on when the pixels exceed
        :data:`BIGTIFF_THRESHOLD` bytes.  BigTIFF files are written as OME-TIFF
        since ImageJ hyperstacks cannot be BigTIFF.
    progress : bool
        Show a progress bar over the z planes.
    overwrite : bool
        Replace an existing file at ``path``.
    compression : str, optional
        tifffile compression (e.g. ``"zlib"``); none by default, which every
        reader (ImageJ included) handles.
    client : distributed.Client, optional
        Compute the slabs on this cluster (the file is written here); by
        default local threads.
    before_commit : callable, optional
        Called with no arguments once the file is written, before it is renamed into place; an
        exception it raises leaves nothing under ``path`` (see :func:`tilefuse.write_fused`).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ImageDataError
        ``image`` has an unsupported number of dimensions or ``voxel_size``
        does not fit it.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    import tifffile

    path = Path(path)
    if not hasattr(image, "ndim") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if image.ndim not in (2, 3, 4):
        raise ImageDataError(
            f"{path}: TIFF output takes yx, zyx or czyx arrays, got {image.ndim} dimensions"
        )
    n_spatial = min(image.ndim, 3)
    if image.ndim == 2:
        image = image[None]
    if image.ndim == 3:
        image = image[None]  # c
    # page order z outer, c inner (ImageJ's TZCYX): a z-slab streams contiguously
    image = image.transpose(1, 0, 2, 3)
    nz, nc, ny, nx = image.shape
    dtype = np.dtype(image.dtype)

    if voxel_size is None:
        spacing = None
    else:
        spacing = np.atleast_1d(np.asarray(voxel_size, dtype=float))
        if spacing.size == 1:
            spacing = np.repeat(spacing, n_spatial)
        if spacing.shape != (n_spatial,) or np.any(spacing <= 0):
            raise ImageDataError(
                f"{path}: voxel_size needs {n_spatial} positive numbers (numpy order), "
                f"got {voxel_size!r}"
            )
        if n_spatial == 2:
            spacing = np.concatenate([[1.0], spacing])
    to_um = _TO_MICROMETER.get(unit)

    nbytes = nz * nc * ny * nx * dtype.itemsize
    if bigtiff is None:
        bigtiff = nbytes > BIGTIFF_THRESHOLD
    imagej = not bigtiff and dtype in _IMAGEJ_DTYPES

    kwargs: dict = {"photometric": "minisblack", "compression": compression}
    if imagej:
        metadata: dict = {"axes": "ZCYX"}
        if spacing is not None:
            metadata["spacing"] = float(spacing[0])
            metadata["unit"] = unit
            kwargs["resolution"] = (1.0 / spacing[2], 1.0 / spacing[1])
    else:
        metadata = {"axes": "ZCYX"}
        if spacing is not None:
            if to_um is not None:
                ome_unit = _OME_UNIT.get(to_um, "µm")
                for ax, v in zip("ZYX", spacing):
                    metadata[f"PhysicalSize{ax}"] = float(v)
                    metadata[f"PhysicalSize{ax}Unit"] = ome_unit
                # TIFF resolution in pixels per centimetre
                cm = 1e-4 * to_um
                kwargs["resolution"] = (1.0 / (spacing[2] * cm), 1.0 / (spacing[1] * cm))
                kwargs["resolutionunit"] = "CENTIMETER"
            else:
                kwargs["resolution"] = (1.0 / spacing[2], 1.0 / spacing[1])
    kwargs["metadata"] = metadata
    log.debug("%s: %s %s (z c y x) %s, %s, compression %s", writing(path), "BigTIFF" if bigtiff else "TIFF",
              (nz, nc, ny, nx), dtype, "ImageJ hyperstack" if imagej else "OME-TIFF", compression)

    with atomic_output(path, overwrite=overwrite) as tmp, \
            progress_bar(writing(path), nz, unit="plane", enabled=progress) as bar:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff, imagej=imagej, ome=not imagej) as tif:
            tif.write(
                _pages(image, bar, client),
                shape=(nz, nc, ny, nx),
                dtype=dtype,
                **kwargs,
            )
        if before_commit is not None:
            before_commit()
    return path
