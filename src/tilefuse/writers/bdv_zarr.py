"""Write views as a BigStitcher OME-Zarr container (``bdv.multimg.zarr``).

Layout, as multiview-reconstruction's ``N5ApiTools.setupBdvDatasetsOMEZARR``
writes it (BigStitcher-Spark's resave: Zarr v3 with shards, NGFF 0.5)::

    dataset.ome.zarr/                     Zarr v3 root group
      s{setup}-t{tp}.zarr/                one OME-Zarr image per view, NGFF 0.5 multiscales (under "ome")
        0/  1/  ...                       5D arrays (t=1, c=1, z, y, x), chunks (1, 1, bz, by, bx),
                                          shards of SHARD_CHUNKS chunks (1, 1, bz, 4 by, 4 bx)

``zarr_format=2`` writes the older layout: Zarr v2, NGFF 0.4, a file per chunk.
Each shard is written in one piece (the blocks handed to zarr are whole
shards, so zarr never reads a shard back to add a chunk to it): memory is
one shard per thread, 32 MiB for uint16 at the default chunks.

Each level's ``coordinateTransformations`` are ``scale = voxel_size * factor``
(1 for t and c) and ``translation = (factor - 1) / 2 * voxel_size``: the
centre of a level voxel in level-0 voxel units, scaled to physical units.
BigStitcher writes voxel size 1 (the calibration lives in the XML), which is
also the default here.  Level 0 is streamed from the input block by block,
further levels are block means of the level before; the container is written
as ``<name>.partial`` and renamed at the end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import Progress, progress_bar, writing
from ..formats.bdv import zarr_view
from ..loaders import loader_class
from ..loaders.base import drop_cached_handles
from ..project.views import ViewId
from ._atomic import atomic_output
from ._shards import v3_codecs
from .bdv_n5 import (
    as_view_images,
    check_factors,
    level_shapes,
    n_blocks,
    voxel_size_of,
    write_downsampled,
    write_level0,
)

__all__ = ["write_bdv_omezarr", "ngff_multiscales", "SHARD_CHUNKS"]

#: Chunks per shard along (z, y, x) in Zarr v3 containers: 16 files become one, and a shard of the
#: default chunks (64, 512, 512) is a view-sized piece that a thread encodes at once.
SHARD_CHUNKS = (1, 4, 4)

log = logging.getLogger(__name__)

_ZARR_DTYPES = {
    name: None
    for name in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")
}


def ngff_multiscales(
    factors: Sequence[Sequence[int]],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    unit: str = "micrometer",
    name: str = "/",
    version: str = "0.4",
) -> list[dict[str, Any]]:
    """NGFF ``multiscales`` for 5D ``(t, c, z, y, x)`` levels named ``0``, ``1``, ...

    ``version="0.5"`` leaves the version out of the multiscale: NGFF 0.5
    states it once, beside ``multiscales`` under the ``"ome"`` attribute.

    Parameters
    ----------
    factors
        Downsampling factors ``(z, y, x)`` per level.
    voxel_size
        Level-0 voxel size ``(z, y, x)`` in ``unit``.
    """
    vs = [float(v) for v in voxel_size]
    datasets = []
    for level, f in enumerate(factors):
        datasets.append({
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 1.0] + [v * fi for v, fi in zip(vs, f)]},
                {"type": "translation", "translation": [0.0, 0.0] + [(fi - 1) / 2 * v for v, fi in zip(vs, f)]},
            ],
        })
    return [{
        **({"version": version} if version == "0.4" else {}),
        "name": name,
        "axes": [
            {"name": "t", "type": "time", "unit": "millisecond"},
            {"name": "c", "type": "channel"},
            {"name": "z", "type": "space", "unit": unit},
            {"name": "y", "type": "space", "unit": unit},
            {"name": "x", "type": "space", "unit": unit},
        ],
        "datasets": datasets,
        "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 5}],
    }]


def write_bdv_omezarr(
    path: str | os.PathLike,
    images: Mapping[ViewId, Any],
    *,
    factors: Sequence[Sequence[int]] = ((1, 1, 1),),
    chunks: Sequence[int] = (64, 128, 128),
    progress: bool = False,
    voxel_size: Sequence[float] | Mapping[int, Sequence[float]] | None = None,
    compressor: Any = None,
    overwrite: bool = False,
    client: Any = None,
    zarr_format: int = 3,
):
    """Write 3D views as BigStitcher's OME-Zarr layout and return its
    :class:`~tilefuse.loaders._zarr.OmeZarrLoader` (XML version 3.0, ``indicies="0 0"``).

    Parameters
    ----------
    path
        The container directory to create (e.g. ``dataset.ome.zarr``).
    images
        ``{ViewId(timepoint, setup): array}`` of ``(z, y, x)`` numpy, dask or
        sliceable arrays.
    factors
        Downsampling factors ``(z, y, x)`` per level, starting with ``(1, 1, 1)``.
    chunks
        Block shape ``(z, y, x)``; arrays are chunked ``(1, 1, *chunks)``.
    progress
        Show one progress bar over the chunks of all views and levels.
    voxel_size
        ``(z, y, x)`` or ``{setup: (z, y, x)}``; default 1 as BigStitcher writes.
    compressor
        A numcodecs codec; default Blosc/zstd with byte shuffle.
    overwrite
        Replace an existing output; otherwise an existing ``path`` raises
        :class:`~tilefuse.errors.OutputExistsError`.
    client
        Compute and write the level-0 blocks of dask inputs on this
        ``distributed.Client`` (its workers must see ``path``).
    zarr_format
        3 (default): Zarr v3, sharded, NGFF 0.5, as BigStitcher-Spark writes;
        2: Zarr v2, NGFF 0.4.
    """
    import zarr
    from numcodecs import Blosc

    path = Path(os.path.normpath(Path(path).absolute()))
    views = as_view_images(images, _ZARR_DTYPES)
    factors = check_factors(factors)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 3 or min(chunks) < 1:
        raise ValueError(f"chunks must be three positive integers (z, y, x), got {chunks!r}")
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if compressor is None:
        compressor = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)

    zgroups = {}
    total = sum(n_blocks(shape, _write_blocks(shape, chunks, zarr_format))
                for image in views.values() for shape in level_shapes(image.shape, factors))
    log.debug("%s: %d views, %d levels (factors z y x %s), chunks %s, %s, %d chunks", writing(path), len(views),
              len(factors), factors, chunks, compressor, total)
    with atomic_output(path, overwrite=overwrite) as tmp, \
            progress_bar(writing(path), total, unit="chunk", enabled=progress) as bar:
        zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format)
        for view, image in sorted(views.items()):
            name = zarr_view(view.timepoint, view.setup)
            vs = voxel_size_of(voxel_size, view.setup)
            _write_view(tmp / name, view, image, factors, chunks, compressor, vs, bar, client, zarr_format)
            zgroups[view] = name
    drop_cached_handles(str(path))
    return loader_class("bdv.multimg.zarr").for_path(path, zgroups, indices=(0, 0))


def _write_blocks(shape, chunks, zarr_format: int) -> tuple[int, ...]:
    """What one write hands to zarr: a chunk (Zarr v2), or a whole shard (v3: never read back to add to it)."""
    inner = tuple(min(c, max(n, 1)) for c, n in zip(chunks, shape))
    if zarr_format == 2:
        return inner
    return tuple(min(c * k, -(-n // c) * c) for c, k, n in zip(inner, SHARD_CHUNKS, shape))


def _write_view(group_path: Path, view: ViewId, image: Any, factors: list[tuple[int, int, int]],
                chunks: tuple[int, int, int], compressor: Any, voxel_size: tuple[float, float, float],
                bar: Progress, client: Any = None, zarr_format: int = 3) -> None:
    import zarr

    dtype = np.dtype(image.dtype)
    group = zarr.open_group(str(group_path), mode="w", zarr_format=zarr_format)
    if zarr_format == 2:
        group.attrs["multiscales"] = ngff_multiscales(factors, voxel_size)
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": ngff_multiscales(factors, voxel_size, version="0.5")}
    shapes = level_shapes(image.shape, factors)
    log.debug("%s -> %s: %s, level shapes (z y x) %s", view, group_path.name, dtype, shapes)
    previous = None
    for level, shape in enumerate(shapes):
        inner = tuple(min(c, max(n, 1)) for c, n in zip(chunks, shape))
        blocks = _write_blocks(shape, chunks, zarr_format)
        layout: dict[str, Any] = {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
        if zarr_format == 3:
            layout = {"shards": (1, 1, *blocks), "dimension_names": list("tczyx")}
        arr = group.create_array(
            str(level),
            shape=(1, 1, *shape),
            chunks=(1, 1, *inner),
            dtype=dtype,
            compressors=compressor if zarr_format == 2 else v3_codecs(compressor)[0],
            fill_value=0,
            **layout,
        )

        def write(region, block, arr=arr) -> None:
            arr[(0, 0, *region)] = block

        if level == 0:
            write_level0(image, write, blocks, dtype, bar=bar, client=client)
        else:
            rel = [b // a for a, b in zip(factors[level - 1], factors[level])]

            def read(region, src=previous):
                return src[(0, 0, *region)]

            write_downsampled(read, write, previous.shape[2:], shape, rel, blocks, dtype, bar=bar)
        previous = arr
