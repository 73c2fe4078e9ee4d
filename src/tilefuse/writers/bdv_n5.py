"""Write views as a BigDataViewer / BigStitcher N5 container.

The layout is the one :class:`tilefuse.loaders._n5.N5Loader` reads::

    dataset.n5/setup{s}/attributes.json            downsamplingFactors, dataType, blockSize, ...
    dataset.n5/setup{s}/timepoint{t}/attributes.json   multiScale, resolution
    dataset.n5/setup{s}/timepoint{t}/s{level}/    N5 datasets

Level 0 is streamed from the input block by block; each further level is the
block mean of the level written just before it, computed output block by
output block, so no view is ever held in memory whole.  The container is
written as ``<name>.partial`` and renamed when complete.

The pyramid helpers (:func:`level_shapes`, :func:`write_level0`,
:func:`write_downsampled`) are shared with :mod:`tilefuse.writers.bdv_zarr`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import Progress, progress_bar, writing
from ..downsample import block_mean
from ..errors import ImageDataError
from ..formats.bdv import n5_setup, n5_view
from ..formats.n5 import N5_DTYPES, N5_VERSION, create_dataset, normalize_compression, write_attributes
from ..loaders import loader_class
from ..loaders.base import block_slices, drop_cached_handles
from ..project.views import ViewId
from ._atomic import atomic_output

__all__ = ["write_bdv_n5", "level_shapes", "write_level0", "write_downsampled"]

log = logging.getLogger(__name__)

Region = tuple[slice, slice, slice]


# -- pyramid helpers -------------------------------------------------------------
def check_factors(factors: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """Validate per-level ``(z, y, x)`` factors: level 0 is (1,1,1), each level an integer
    multiple of the one before."""
    out = []
    for level, f in enumerate(factors):
        f = tuple(f)
        if len(f) != 3 or any(float(v) != int(v) or int(v) < 1 for v in f):
            raise ValueError(f"factors[{level}] = {f!r}: expected three positive integers (z, y, x)")
        out.append(tuple(int(v) for v in f))
    if not out or out[0] != (1, 1, 1):
        raise ValueError(f"factors must start with (1, 1, 1), got {factors!r}")
    for level in range(1, len(out)):
        if any(b % a for a, b in zip(out[level - 1], out[level])):
            raise ValueError(
                f"factors[{level}] = {out[level]} is not a multiple of factors[{level - 1}] = {out[level - 1]}"
            )
    return out


def level_shapes(shape: Sequence[int], factors: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """Shape of every level: each level floors the previous by the relative factor (at least 1),
    as BigDataViewer's exporters do."""
    factors = check_factors(factors)
    shapes = [tuple(int(n) for n in shape)]
    for prev_f, f in zip(factors, factors[1:]):
        rel = [b // a for a, b in zip(prev_f, f)]
        shapes.append(tuple(max(1, n // r) for n, r in zip(shapes[-1], rel)))
    return shapes


def n_blocks(shape: Sequence[int], chunks: Sequence[int]) -> int:
    """Blocks of ``chunks`` covering ``shape``: what a bar counts for one pyramid level."""
    return math.prod(-(-int(n) // int(c)) for n, c in zip(shape, chunks))


def _run_blocks(func: Callable[[Region], None], regions: list[Region], bar: Progress) -> None:
    # Block codecs (zlib, zstd, blosc) release the GIL, so threads overlap I/O and compression.
    workers = max(1, min(len(regions), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(func, regions):
            bar.update(1)


def write_level0(
    image: Any,
    write: Callable[[Region, np.ndarray], None],
    chunks: Sequence[int],
    dtype: np.dtype,
    *,
    bar: Progress = Progress(),
    client: Any = None,
) -> None:
    """Stream ``image`` (numpy, dask or any sliceable array) block by block into ``write``.

    ``write(region, block)`` receives chunk-aligned regions of the block grid
    ``chunks``; ``bar`` advances by one per block written.  Dask arrays are
    rechunked to that grid and stored with :func:`tilefuse._compute.store`,
    so their graph runs once per block - on ``client``'s workers when given
    (``write`` is then pickled to them).
    """
    shape = tuple(int(n) for n in image.shape)
    chunks = tuple(int(c) for c in chunks)
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None
    if da is not None and isinstance(image, da.Array):
        from .._compute import store

        arr = image.rechunk(tuple(min(c, max(n, 1)) for c, n in zip(chunks, shape)))
        # On a cluster the writes happen in the workers, which cannot draw this process's bar:
        # the level counts once it is stored.
        target = _RegionTarget(write, dtype, bar if client is None else Progress())
        store([arr], [target], client=client)
        if client is not None:
            bar.update(n_blocks(shape, chunks))
        return

    def one(region: Region) -> None:
        write(region, np.asarray(image[region]).astype(dtype, copy=False))

    _run_blocks(one, [r for _, r in block_slices(shape, chunks)], bar)


class _RegionTarget:
    """A ``__setitem__`` target for :func:`dask.array.store` that forwards to ``write``."""

    def __init__(self, write: Callable[[Region, np.ndarray], None], dtype: np.dtype, bar: Progress) -> None:
        self.write = write
        self.dtype = dtype
        self.bar = bar

    def __setitem__(self, key: Region, value: np.ndarray) -> None:
        self.write(tuple(key), np.asarray(value).astype(self.dtype, copy=False))
        self.bar.update(1)


def write_downsampled(
    read: Callable[[Region], np.ndarray],
    write: Callable[[Region, np.ndarray], None],
    src_shape: Sequence[int],
    dst_shape: Sequence[int],
    rel: Sequence[int],
    chunks: Sequence[int],
    dtype: np.dtype,
    *,
    bar: Progress = Progress(),
) -> None:
    """Write one pyramid level as the block mean of the previous one, output block by block.

    ``bar`` advances by one per block written.
    """

    def one(region: Region) -> None:
        # Output voxel i averages source voxels [i*r, (i+1)*r); an axis shorter
        # than r (a single output voxel) averages what there is.
        src = tuple(slice(s.start * r, min(s.stop * r, n)) for s, r, n in zip(region, rel, src_shape))
        write(region, block_mean(read(src), rel, dtype=dtype, edge="trim"))

    _run_blocks(one, [r for _, r in block_slices(tuple(dst_shape), tuple(chunks))], bar)


def as_view_images(images: Mapping[Any, Any], supported: Mapping[str, Any] | None = None) -> dict[ViewId, Any]:
    """Check the ``{ViewId: 3D array}`` input and normalize keys to :class:`ViewId`."""
    out: dict[ViewId, Any] = {}
    for key, image in images.items():
        view = ViewId(*key)
        if len(getattr(image, "shape", ())) != 3:
            raise ImageDataError(f"{view}: expected a 3D (z, y, x) array, got shape {getattr(image, 'shape', None)}")
        dtype = np.dtype(image.dtype)
        if supported is not None and dtype.name not in supported:
            raise ImageDataError(f"{view}: sample type {dtype} cannot be stored (supported: {', '.join(supported)})")
        out[view] = image
    if not out:
        raise ImageDataError("no images to write")
    return out


def voxel_size_of(voxel_size: Any, setup: int) -> tuple[float, float, float]:
    if voxel_size is None:
        return (1.0, 1.0, 1.0)
    if isinstance(voxel_size, Mapping):
        voxel_size = voxel_size.get(setup, (1.0, 1.0, 1.0))
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3:
        raise ValueError(f"voxel_size must be (z, y, x), got {voxel_size!r}")
    return vs


# -- the writer --------------------------------------------------------------------
def write_bdv_n5(
    path: str | os.PathLike,
    images: Mapping[ViewId, Any],
    *,
    factors: Sequence[Sequence[int]] = ((1, 1, 1),),
    chunks: Sequence[int] = (64, 128, 128),
    compression: str | Mapping[str, Any] = "gzip",
    voxel_size: Sequence[float] | Mapping[int, Sequence[float]] | None = None,
    progress: bool = False,
    overwrite: bool = False,
    client: Any = None,
):
    """Write 3D views into a BDV N5 container and return its :class:`~tilefuse.loaders._n5.N5Loader`.

    Parameters
    ----------
    path
        The container directory to create (e.g. ``dataset.n5``).
    images
        ``{ViewId(timepoint, setup): array}``; arrays are ``(z, y, x)`` numpy,
        dask or any object supporting ``shape``, ``dtype`` and slicing.
    factors
        Downsampling factors ``(z, y, x)`` per level, starting with ``(1, 1, 1)``;
        each level must be an integer multiple of the previous one.  The same
        pyramid is used for every setup (BDV stores it per setup).
    chunks
        N5 block shape ``(z, y, x)``.
    compression
        ``"gzip"`` (default), ``"zstd"``, ``"raw"``, or an N5 compression dict.
    voxel_size
        ``(z, y, x)`` voxel size, or ``{setup: (z, y, x)}``; stored as the
        timepoint's ``resolution`` attribute (x y z) for viewers such as Paintera.
    progress
        Show one progress bar over the blocks of all views and levels.
    overwrite
        Replace an existing output; otherwise an existing ``path`` raises
        :class:`~tilefuse.errors.OutputExistsError`.  The container is
        written as ``<path>.partial`` and renamed when complete.
    client
        Compute and write the level-0 blocks of dask inputs on this
        ``distributed.Client`` (its workers must see ``path``).

    Returns
    -------
    N5Loader
        A loader for the written container.
    """
    path = Path(os.path.normpath(Path(path).absolute()))
    views = as_view_images(images, N5_DTYPES)
    factors = check_factors(factors)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 3 or min(chunks) < 1:
        raise ValueError(f"chunks must be three positive integers (z, y, x), got {chunks!r}")
    comp = normalize_compression(compression)

    # Setup-level attributes are shared by all timepoints: check they agree.
    setups: dict[int, tuple[np.dtype, tuple[int, ...]]] = {}
    for view, image in sorted(views.items()):
        dtype = np.dtype(image.dtype)
        if view.setup in setups and setups[view.setup][0] != dtype:
            raise ImageDataError(
                f"{view}: sample type {dtype} differs from {setups[view.setup][0]} of another timepoint "
                f"of setup {view.setup} (BDV stores one type per setup)"
            )
        setups.setdefault(view.setup, (dtype, tuple(image.shape)))

    total = sum(n_blocks(shape, chunks) for image in views.values() for shape in level_shapes(image.shape, factors))
    log.debug("%s: %d views, %d levels (factors z y x %s), blocks %s, %s compression, %d blocks", writing(path),
              len(views), len(factors), factors, chunks, comp.get("type"), total)
    with atomic_output(path, overwrite=overwrite) as tmp, \
            progress_bar(writing(path), total, unit="chunk", enabled=progress) as bar:
        write_attributes(tmp, {"n5": N5_VERSION})
        for setup, (dtype, shape0) in sorted(setups.items()):
            write_attributes(tmp / n5_setup(setup), {
                "downsamplingFactors": [list(f[::-1]) for f in factors],
                "dataType": dtype.name,
                "blockSize": list(chunks[::-1]),
                "dimensions": [int(n) for n in shape0[::-1]],
                "compression": comp,
            })
        for view, image in sorted(views.items()):
            _write_view(tmp, view, image, factors, chunks, comp, voxel_size_of(voxel_size, view.setup), bar,
                        client)
    # Loaders may have cached metadata of an older container at this path.
    drop_cached_handles(str(path))
    return loader_class("bdv.n5").for_path(path)


def _write_view(root: Path, view: ViewId, image: Any, factors: list[tuple[int, int, int]],
                chunks: tuple[int, int, int], comp: dict, voxel_size: tuple[float, float, float],
                bar: Progress, client: Any = None) -> None:
    dtype = np.dtype(image.dtype)
    group = root / n5_view(view.timepoint, view.setup)
    write_attributes(group, {"multiScale": True, "resolution": list(voxel_size[::-1])})
    shapes = level_shapes(image.shape, factors)
    log.debug("%s -> setup%d/timepoint%d: %s, level shapes (z y x) %s", view, view.setup, view.timepoint, dtype,
              shapes)
    previous = None
    for level, (shape, f) in enumerate(zip(shapes, factors)):
        ds = create_dataset(group / f"s{level}", shape, chunks, dtype, comp,
                            attributes={"downsamplingFactors": list(f[::-1])})

        def write(region: Region, block: np.ndarray, ds=ds) -> None:
            ds.write_block(tuple(s.start // c for s, c in zip(region, ds.chunks)), block)

        if level == 0:
            write_level0(image, write, chunks, dtype, bar=bar, client=client)
        else:
            rel = [b // a for a, b in zip(factors[level - 1], f)]
            write_downsampled(previous.read, write, previous.shape, shape, rel, chunks, dtype, bar=bar)
        previous = ds
