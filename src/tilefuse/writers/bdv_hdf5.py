"""Write views as a BigDataViewer HDF5 file with a resolution pyramid.

The layout follows current bigdataviewer-core / pybdv: pixels are stored in
their native dtype and the group ``s{setup:02d}`` carries a ``dataType``
attribute, so BDV >= 10.4.6, pybdv and :class:`~tilefuse.loaders._hdf5.Hdf5Loader`
read them back unchanged (older BDV versions only read uint16 files this way).

Everything is streamed with dask, block by block: level 0 is copied from the
input array (numpy or dask), and each further level is computed from the
level just written, one output chunk from one aligned input block, so views
larger than memory never need to fit in memory.

Downsampling is a block mean, sized as BigDataViewer's exporters size their
levels: each level is ``max(n // r, 1)`` voxels of the previous one along an
axis downsampled by ``r``, so an incomplete last window is dropped and every
voxel ``i`` of a level is exactly the block that BDV's mipmap transform
centres at ``f*i + (f-1)/2`` (the N5 and OME-Zarr project writers do the
same).  Integer types are rounded to nearest and clipped to the type's range.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .._outputs import raise_if_write_error
from .._progress import Progress, progress_bar, writing
from ..downsample import block_mean
from ..errors import ImageDataError, UnsupportedFormatError
from ..formats.bdv import BDV_DATA_TYPES, hdf5_cells, hdf5_setup
from ..formats.deflate import deflate
from ..loaders.base import drop_cached_handles
from ..project.views import ViewId

__all__ = ["write_bdv_hdf5", "propose_factors"]

Factors = tuple[int, int, int]

log = logging.getLogger(__name__)


def write_bdv_hdf5(
    path: str | os.PathLike,
    images: Mapping[ViewId, object],
    *,
    factors: Sequence[Sequence[int]] = ((1, 1, 1),),
    chunks: Sequence[int] = (32, 128, 128),
    compression: str | None = "gzip",
    progress: bool = False,
) -> Path:
    """Write views to a BDV HDF5 file with a downsampled pyramid.

    Parameters
    ----------
    path
        Output ``.h5`` file.  It is written as ``<name>.tmp`` next to it and
        renamed at the end; an existing file is replaced.  A failed write
        (full disk, read-only folder) removes ``<name>.tmp`` and raises
        :class:`~tilefuse.errors.OutputError`.
    images
        ``ViewId`` (or ``(timepoint, setup)``) -> 3D array ``(z, y, x)``
        (numpy, dask or anything :func:`dask.array.asarray` accepts; 2D arrays
        become ``z == 1``).  All timepoints of a setup must share a dtype.
    factors
        Absolute downsampling factors ``(z, y, x)`` of each level, level 0 =
        ``(1, 1, 1)``; each level's factors must be integer multiples of the
        previous level's.  The same pyramid is used for every setup.
    chunks
        HDF5 chunk shape ``(z, y, x)``, clipped to each level's shape.
    compression
        ``"gzip"`` (deflate level 4, plus byte shuffle for floats) or None.
        These are the filters BDV's Java reader supports.
    progress
        Show one progress bar over the chunks of all views and levels.

    Returns
    -------
    Path
        ``path``.
    """
    import h5py

    from .._compute import store

    path = Path(path)
    levels = _check_factors(factors)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 3 or min(chunks) < 1:
        raise ImageDataError(f"{path}: chunks must be three positive integers, got {chunks}")
    if compression not in ("gzip", None):
        raise UnsupportedFormatError(
            f"{path}: compression {compression!r} is not readable by BigDataViewer; use 'gzip' or None"
        )
    views = {ViewId(*v): _as_dask3d(img, path, ViewId(*v), chunks) for v, img in images.items()}
    if not views:
        raise ImageDataError(f"{path}: no views to write")
    setup_dtypes = _setup_dtypes(views, path)

    tmp = path.with_name(path.name + ".tmp")
    drop_cached_handles(str(tmp))
    if tmp.exists():
        tmp.unlink()
    write_lock = threading.Lock()
    total = sum(_n_chunks(shape, _level_chunks(shape, chunks))
                for arr in views.values() for shape in _level_shapes(arr.shape, levels))
    log.debug("%s: %d views, %d levels (factors z y x %s), chunks %s, %s compression, %d chunks",
              writing(path), len(views), len(levels), levels, chunks, compression, total)
    try:
        with h5py.File(tmp, "w") as f, progress_bar(writing(path), total, unit="chunk", enabled=progress) as bar:
            for setup, dtype in sorted(setup_dtypes.items()):
                group = f.require_group(hdf5_setup(setup))
                # Fixed-length ASCII, as pybdv and JHDF5 write it.
                group.attrs["dataType"] = np.bytes_(dtype.name)
                # Views of one setup may differ in shape; declare the largest one's blocks.
                shape0 = np.max([a.shape for v, a in views.items() if v.setup == setup], axis=0)
                level_chunks = [_level_chunks(s, chunks) for s in _level_shapes(shape0, levels)]
                # BDV metadata is x y z.
                group.create_dataset(
                    "resolutions", data=np.array([fl[::-1] for fl in levels], dtype=np.float64)
                )
                group.create_dataset(
                    "subdivisions", data=np.array([c[::-1] for c in level_chunks], dtype=np.int32)
                )

            # Views go in batches of about _BATCH_CHUNKS level-0 chunks: one dask graph per batch and
            # level, and only the batch's datasets open (HDF5 holds ~0.4 MB per open dataset).  All
            # 10,000 views of 512x512 in one graph took 4.3 GB and had written nothing after 10 min.
            for batch in _batches(sorted(views), views, chunks):
                datasets = {}
                for view in batch:
                    arr = views[view]
                    for level, shape in enumerate(_level_shapes(arr.shape, levels)):
                        kwargs = {}
                        if compression == "gzip":
                            kwargs = {"compression": "gzip", "compression_opts": _GZIP_LEVEL}
                            if arr.dtype.kind == "f":
                                kwargs["shuffle"] = True
                        datasets[view, level] = f.create_dataset(
                            hdf5_cells(view.timepoint, view.setup, level),
                            shape=shape,
                            dtype=arr.dtype,
                            chunks=_level_chunks(shape, chunks),
                            **kwargs,
                        )

                # One store per level: level l reads the level l-1 just written.
                for level, fl in enumerate(levels):
                    sources, targets = [], []
                    for view in batch:
                        target = datasets[view, level]
                        if level == 0:
                            # Align dask blocks with HDF5 chunks: every chunk is written once, whole.
                            src = views[view].rechunk(target.chunks)
                        else:
                            rel = tuple(a // b for a, b in zip(fl, levels[level - 1]))
                            src = _downsample_dataset(datasets[view, level - 1], rel, target.chunks)
                        sources.append(src)
                        targets.append(_ChunkTarget(target, compression, write_lock, bar))
                    # Local threads, deliberately, even when fusing on a cluster: one HDF5 file takes writes
                    # from one process only.  The targets lock only around the write; compression runs in
                    # parallel.
                    store(sources, targets, client=None)
                del datasets, sources, targets
    except BaseException as exc:
        if tmp.exists():
            tmp.unlink()
        # A full disk or read-only folder: say so in one line, not a traceback from inside HDF5.
        raise_if_write_error(exc, path, f"removed the incomplete {tmp.name}; an existing {path.name} is "
                             "untouched", watch=[tmp])
        raise
    # Loaders may hold a handle on an older file of that name.
    drop_cached_handles(str(path))
    os.replace(tmp, path)
    return path


#: Level-0 chunks per batch of views written by one dask graph (see write_bdv_hdf5).
_BATCH_CHUNKS = 4096


def _batches(order: list[ViewId], views: Mapping[ViewId, object], chunks) -> list[list[ViewId]]:
    """``order`` cut into runs of views holding about :data:`_BATCH_CHUNKS` level-0 chunks each."""
    out, current, n = [], [], 0
    for view in order:
        shape = views[view].shape
        current.append(view)
        n += _n_chunks(shape, _level_chunks(shape, chunks))
        if n >= _BATCH_CHUNKS:
            out.append(current)
            current, n = [], 0
    if current:
        out.append(current)
    return out


def propose_factors(
    shape_zyx: Sequence[int], voxel_size_zyx: Sequence[float], min_size: int = 64
) -> list[Factors]:
    """Propose a BigStitcher-like resolution pyramid.

    Each step doubles the factor of every axis whose current (downsampled)
    voxel size is within sqrt(2) of the finest one, so anisotropic data are
    first made roughly isotropic and then halved on all axes together.  An
    axis already down to one voxel is not halved further.  Levels are added
    while the new level is at least ``min_size`` along some axis.

    Parameters
    ----------
    shape_zyx
        Level-0 shape.
    voxel_size_zyx
        Physical voxel size (any unit).
    min_size
        Stop before the level whose largest side would drop below this.

    Returns
    -------
    list of (z, y, x) int tuples
        Absolute factors, level 0 first (always ``(1, 1, 1)``).

    Examples
    --------
    >>> propose_factors((100, 1024, 1024), (2.0, 0.73, 0.73))
    [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8), (8, 16, 16)]
    """
    shape = np.asarray(shape_zyx, dtype=np.int64)
    vox = np.asarray(voxel_size_zyx, dtype=np.float64)
    if shape.shape != (3,) or vox.shape != (3,) or np.any(vox <= 0) or np.any(shape < 1):
        raise ImageDataError(
            f"propose_factors needs a positive 3D shape and voxel size, got {shape_zyx}, {voxel_size_zyx}"
        )
    f = np.ones(3, dtype=np.int64)
    out = [(1, 1, 1)]
    while True:
        size = -(-shape // f)
        can = size > 1
        if not can.any():
            break
        current = vox * f
        finest = current[can].min()
        step = np.where(can & (current <= finest * math.sqrt(2)), 2, 1)
        nxt = f * step
        if (-(-shape // nxt)).max() < min_size:
            break
        f = nxt
        out.append(tuple(int(v) for v in f))
    return out


# -- helpers -----------------------------------------------------------------


def _downsample_dataset(ds, rel: Sequence[int], out_chunks: Sequence[int]):
    """Dask array of ``ds`` block-mean downsampled by ``rel``, chunked ``out_chunks``.

    The incomplete last window of an axis is dropped (``max(n // r, 1)``
    voxels, as BDV sizes levels); an axis shorter than its window keeps one
    voxel, the mean of what there is.
    """
    import dask.array as da

    usable = tuple(n // r * r if n >= r else n for n, r in zip(ds.shape, rel))
    # Input blocks of out_chunk * rel voxels map onto exactly one output chunk.
    in_chunks = tuple(min(c * r, n) for c, r, n in zip(out_chunks, rel, usable))
    src = da.from_array(ds, chunks=in_chunks, lock=False, asarray=True)
    src = src[tuple(slice(0, n) for n in usable)]
    chunks = tuple(tuple(-(-c // r) for c in cs) for cs, r in zip(src.chunks, rel))
    return src.map_blocks(block_mean, tuple(rel), chunks=chunks, dtype=ds.dtype)


def _check_factors(factors) -> list[Factors]:
    levels = []
    for i, fl in enumerate(factors):
        fl = tuple(fl)
        if len(fl) != 3 or any(int(v) != v or v < 1 for v in fl):
            raise ImageDataError(f"factors[{i}] = {fl}: expected three positive integers (z, y, x)")
        levels.append(tuple(int(v) for v in fl))
    if not levels or levels[0] != (1, 1, 1):
        raise ImageDataError(f"factors must start with (1, 1, 1), got {list(factors)[:1]}")
    for i in range(1, len(levels)):
        if any(a % b for a, b in zip(levels[i], levels[i - 1])):
            raise ImageDataError(
                f"factors[{i}] = {levels[i]} is not an integer multiple of factors[{i - 1}] = {levels[i - 1]}"
            )
    return levels


def _as_dask3d(img, path: Path, view: ViewId, chunks):
    import dask.array as da

    if isinstance(img, da.Array):
        arr = img
    elif hasattr(img, "shape") and hasattr(img, "dtype") and hasattr(img, "__getitem__"):
        # numpy, h5py, zarr or any lazy array-like: sliced block by block, never loaded whole.
        arr = da.from_array(img, chunks=tuple(chunks)[-len(img.shape):] or (), asarray=True)
    else:
        arr = da.asarray(np.asarray(img))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ImageDataError(f"{path}: {view} must be a non-empty 2D or 3D array, got shape {arr.shape}")
    if arr.dtype.name not in BDV_DATA_TYPES:
        raise ImageDataError(
            f"{path}: {view} has dtype {arr.dtype}, which BDV cannot store "
            f"(supported: {', '.join(BDV_DATA_TYPES)})"
        )
    return arr


def _setup_dtypes(views, path: Path) -> dict[int, np.dtype]:
    dtypes: dict[int, np.dtype] = {}
    for view, arr in sorted(views.items()):
        if dtypes.setdefault(view.setup, arr.dtype) != arr.dtype:
            raise ImageDataError(
                f"{path}: setup {view.setup} mixes dtypes {dtypes[view.setup]} and {arr.dtype}; "
                "BDV stores one dataType per setup"
            )
    return dtypes


def _level_shapes(shape, levels) -> list[tuple[int, int, int]]:
    """Every level's shape: ``max(n // r, 1)`` of the previous level per axis (BDV's exporters)."""
    shapes = [tuple(int(n) for n in shape)]
    for prev, fl in zip(levels, levels[1:]):
        rel = [b // a for a, b in zip(prev, fl)]
        shapes.append(tuple(max(n // r, 1) for n, r in zip(shapes[-1], rel)))
    return shapes


def _level_chunks(shape, chunks) -> tuple[int, int, int]:
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))


def _n_chunks(shape, chunks) -> int:
    return int(np.prod([-(-n // c) for n, c in zip(shape, chunks)]))


_GZIP_LEVEL = 4


class _ChunkTarget:
    """A ``da.store`` target writing whole, pre-compressed HDF5 chunks.

    h5py compresses under its global lock, i.e. on one core; compressing in
    the dask worker threads (the codec releases the GIL) and handing HDF5 the
    finished bytes with ``write_direct_chunk`` uses all of them; ISA-L
    (:mod:`tilefuse.formats.deflate`) encodes 7.5x faster than zlib.  Every block
    must be exactly one chunk of the dataset, which the writer guarantees by
    chunking its sources like the dataset.  The byte layout is what HDF5's
    own shuffle + deflate filters produce, so any reader decodes it.
    """

    def __init__(self, ds, compression, lock, bar: Progress) -> None:
        self.ds, self.lock, self.bar = ds, lock, bar
        self.shape, self.dtype, self.chunks = ds.shape, ds.dtype, ds.chunks
        self.compress = compression == "gzip"
        self.shuffle = bool(ds.shuffle)

    def __setitem__(self, key, value) -> None:
        offset = tuple(int(k.start or 0) for k in key)
        value = np.ascontiguousarray(value, dtype=self.dtype)
        if any(o % c for o, c in zip(offset, self.chunks)):
            raise AssertionError(f"block at {offset} is not aligned with chunks {self.chunks}")
        if value.shape != self.chunks:
            # Edge chunks are stored full size; HDF5 ignores the padding.
            full = np.zeros(self.chunks, dtype=self.dtype)
            full[tuple(slice(0, n) for n in value.shape)] = value
            value = full
        raw = value.view(np.uint8)
        if self.shuffle:
            raw = raw.reshape(-1, self.dtype.itemsize).T
        data = raw.tobytes()
        if self.compress:
            data = deflate(data, _GZIP_LEVEL)
        with self.lock:
            self.ds.id.write_direct_chunk(offset, data)
        self.bar.update(1)
