"""Write a (fused) volume as an OME-NGFF multiscale image: 0.5 (Zarr v3, sharded) or 0.4 (Zarr v2).

NGFF 0.5, the default, is a Zarr *v3* group (``zarr.json``, the metadata under
its ``"ome"`` attribute) holding one array per resolution level, ``"0"`` the
full resolution.  Every level is *sharded*: chunks (as in 0.4) are grouped
into shard files of about :data:`SHARD_BYTES` (1 GiB uncompressed at level 0),
so a 1 TB volume is ~1000 files instead of a million.  What readers need:
zarr-python >= 3, ome-zarr-py >= 0.12 (napari), ngff-zarr, neuroglancer,
Fiji's n5-ij.  ``ngff="0.4"`` writes the older layout for older viewers: a
Zarr v2 group, one file per chunk, ``/`` as chunk-key separator and the
``multiscales`` entry in the group attributes.

How the pyramid is built
------------------------
* Level 0 is streamed from the dask array block by block; every dask block is
  exactly one zarr chunk (the input is rechunked when needed), so parallel
  writes never touch the same chunk file and no chunk is ever read-modified.
* Every further level is computed from the level *written* just before it,
  read back lazily, by block mean over ``downscale`` voxels (integer types are
  rounded to nearest).  Only spatial axes are reduced.  ``y`` and ``x`` are
  reduced at every level; an anisotropic ``z`` is reduced only when this
  brings the voxel closer to isotropic, i.e. z keeps its resolution until the
  xy spacing has caught up with the z spacing (``z=3, xy=1`` gives factors
  ``(1,2,2), (1,4,4), (2,8,8), (4,16,16)``...).
* Levels are added until the last one spans fewer than two chunks along every
  spatial axis, or ``n_levels`` levels exist.

Coordinates
-----------
``scale`` of level *k* is ``voxel_size * factor_k``.  ``translation`` is the
physical position of the *centre* of the level's first voxel: a block mean of
``f`` level-0 voxels has its centre ``(f - 1) / 2`` level-0 voxels after the
block start, hence ``translation_k = origin + (factor_k - 1) / 2 * voxel_size``.
With this half-voxel shift every level maps a voxel centre to the same
physical point as the level-0 voxels it averages (``origin`` is the centre of
level-0 voxel 0).

Atomic writing and resuming
---------------------------
Everything is written to ``<path>.partial`` and renamed at the end; next to the
arrays the partial group keeps ``.tilefuse/manifest.json``.

* NGFF 0.5: a shard is written whole or not at all.  Its chunks are encoded
  and appended to ``<shard key>.partial`` as they are computed, and once all
  are there the shard's index is written, the file synced to disk and renamed
  to its key (:mod:`._shards`).  A shard under its key is therefore complete,
  even after a machine crash; on resume a run checks each one's index
  (CRC-32C, offsets inside the file), keeps it, and recomputes every shard
  that is missing or damaged (deleting stray ``.partial`` files).  The resume
  state is the shards themselves: no file per chunk.
* NGFF 0.4: one marker file per chunk, created only *after* that chunk has
  been stored, recording the chunk file's size.  A run killed mid-write
  leaves at worst a half-written chunk *without* its marker; a machine that
  crashed before the disk caught up may leave a marker whose chunk file is
  missing or shorter, which a resumed run notices (the size differs) and
  writes again.

In an object store (``path`` a URL such as ``s3://bucket/fused.ome.zarr``;
NGFF 0.5 only) there is no rename: the output is written under its final name
and the *commit point* is the root ``zarr.json`` gaining the image's ``ome``
metadata, written last (before, the prefix holds a plain group without
``multiscales``, which no OME-Zarr reader takes for an image).  Shards are
appended in a local staging folder (``$TMPDIR/tilefuse-staging``: with a
cluster, a folder every worker sees) and each is uploaded to its key whole
once complete; resume keeps the shards under their keys whose index is whole,
as locally, keyed on the same manifest (:func:`~._atomic.remote_output`).

The manifest holds the output layout (NGFF version, shape, dtype, chunks,
shards, pyramid plan, compressor) and a *fingerprint* of the work: for a
fusion (:meth:`tilefuse.FusionPlan.fingerprint`) the tilefuse version, the
output grid, every fusion option, the views with their transform chains,
pyramid levels and intensity adjustments, and the size and modification time
of every input file.  A later run continues the partial output only if both
are equal, and then trusts only complete shards (marked chunks); any
difference means other work, and its pixels are never mixed in: the partial
output is deleted and the write starts over with a warning naming what
differs, or, with ``resume="require"``, the write is refused and the partial
output kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import _storage
from .._outputs import remove_path
from .._progress import Progress, progress_bar, writing
from ..downsample import block_mean
from ..errors import ImageDataError, OutputExistsError, TilefuseError
from ._atomic import atomic_output, remote_output
from ._pyramid import StreamedPyramid, can_stream
from ._shards import (
    append_chunk,
    assemble_shard,
    commit_shard,
    pad_chunk,
    shard_is_complete,
    shard_key,
    v3_codecs,
    write_piece,
)
from .options import NGFF_VERSIONS

__all__ = ["write_ome_zarr", "pyramid_plan", "shard_shape", "PyramidLevel", "ResumeMismatchError", "NGFF_VERSIONS",
           "SHARD_BYTES"]

log = logging.getLogger(__name__)

#: Uncompressed bytes of a level-0 shard (NGFF 0.5).  1 GiB: ~1000 files per TB
#: (parallel file systems and object stores handle that well, and BigStitcher-Spark
#: makes shards of this order), while a shard that a killed run must redo costs
#: seconds, not minutes.  Memory does not depend on it: chunks are appended one by one.
SHARD_BYTES = 2**30
#: Chunks written per compute call, per worker thread: enough to keep
#: every thread busy (a cluster gets proportionally larger batches), small
#: enough to bound the blocks in flight and the work a crash can lose.
BATCH_BLOCKS_PER_THREAD = 4

_DEFAULT_AXES = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
_UNIT_ALIASES = {
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "m": "meter",
    "pixel": None,
    "px": None,
    None: None,
}
_COLORS = ["FFFFFF", "00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00"]
_META_DIR = ".tilefuse"


class ResumeMismatchError(TilefuseError, FileExistsError):
    """A partial output from other work is in the way and resuming was required."""


class PyramidLevel(NamedTuple):
    """One level of the pyramid: its shape and downsampling (per axis, input order)."""

    shape: tuple[int, ...]
    step: tuple[int, ...]  #: factor relative to the previous level
    factor: tuple[int, ...]  #: factor relative to level 0


# ----------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------
def _check_axes(axes: str | Sequence[str] | None, ndim: int, path: Path) -> str:
    if axes is None:
        if ndim not in _DEFAULT_AXES:
            raise ImageDataError(f"{path}: OME-Zarr images have 2 to 5 dimensions, got {ndim}")
        return _DEFAULT_AXES[ndim]
    axes = "".join(axes).lower()
    order = "tczyx"
    positions = [order.find(a) for a in axes]
    if (
        len(axes) != ndim
        or -1 in positions
        or positions != sorted(set(positions))
        or not axes.endswith("yx")
    ):
        raise ImageDataError(
            f"{path}: axes {axes!r} do not fit a {ndim}D image; NGFF 0.4 wants a "
            "subsequence of 'tczyx' ending in 'yx' with one letter per dimension"
        )
    return axes


def _per_spatial(value, n: int, what: str, path: Path) -> tuple[float, ...]:
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.size == 1:
        arr = np.repeat(arr, n)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ImageDataError(
            f"{path}: {what} needs {n} finite numbers (one per spatial axis, numpy order), "
            f"got {value!r}"
        )
    return tuple(float(v) for v in arr)


def _is_regular(chunks: tuple[int, ...]) -> bool:
    return len(chunks) <= 1 or (all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0])


def _choose_chunks(image, axes: str, chunks) -> tuple[int, ...]:
    shape = image.shape
    if chunks is None:
        dask_chunks = getattr(image, "chunks", None)
        if dask_chunks is not None and not isinstance(image, np.ndarray) and all(
            _is_regular(c) for c in dask_chunks
        ):
            chunks = tuple(c[0] if c else 1 for c in dask_chunks)
        else:
            xy = 1024 if "z" not in axes else 256
            default = {"t": 1, "c": 1, "z": 64, "y": xy, "x": xy}
            chunks = tuple(default[a] for a in axes)
    elif np.isscalar(chunks):
        chunks = tuple(int(chunks) if a in "zyx" else 1 for a in axes)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        raise ImageDataError(f"chunks {chunks} do not fit an image of shape {shape}")
    return tuple(max(1, min(c, n)) for c, n in zip(chunks, shape))


def shard_shape(shape: Sequence[int], axes: str, chunks: Sequence[int], itemsize: int,
                target_bytes: int = SHARD_BYTES) -> tuple[int, ...]:
    """A shard shape of whole chunks holding about ``target_bytes`` (never more, unless one chunk is).

    The shard grows along the spatial axes, always along the one it spans
    least (x first on ties), up to the array's extent: shards are then as
    close to cubes of chunks as the image allows, which keeps a region read
    within few shards.  t and c keep one chunk per shard.
    """
    counts = [1] * len(shape)
    extent = [-(-int(n) // int(c)) for n, c in zip(shape, chunks)]  # chunks along each axis
    nbytes = math.prod(int(c) for c in chunks) * itemsize
    spatial = [i for i, a in enumerate(axes) if a in "zyx"]
    while True:
        growable = [i for i in spatial if counts[i] < extent[i]]
        if not growable:
            break
        axis = min(reversed(growable), key=lambda i: counts[i] * chunks[i])
        grown = min(2 * counts[axis], extent[axis])
        if nbytes // counts[axis] * grown > target_bytes:
            break
        nbytes = nbytes // counts[axis] * grown
        counts[axis] = grown
    return tuple(int(c) * n for c, n in zip(chunks, counts))


def pyramid_plan(
    shape: Sequence[int],
    axes: str,
    voxel_size: Sequence[float],
    chunks: Sequence[int],
    *,
    downscale: int = 2,
    n_levels: int | None = None,
) -> list[PyramidLevel]:
    """Decide the levels of the pyramid (see the module notes for the rules).

    Parameters
    ----------
    shape, chunks : sequence of int
        Level-0 shape and chunk shape, one entry per axis of ``axes``.
    axes : str
        Axis letters, e.g. ``"czyx"``.
    voxel_size : sequence of float
        Level-0 spacing of the spatial axes only, numpy order.
    downscale : int
        Reduction factor per level along each reduced axis.
    n_levels : int, optional
        Exact number of levels (fewer only if every spatial axis is already 1).

    Returns
    -------
    list of PyramidLevel
    """
    shape = tuple(int(n) for n in shape)
    spatial = [i for i, a in enumerate(axes) if a in "zyx"]
    spacing = dict(zip(spatial, (float(v) for v in voxel_size)))
    levels = [PyramidLevel(shape, (1,) * len(shape), (1,) * len(shape))]
    while True:
        cur = levels[-1]
        if n_levels is not None:
            if len(levels) >= n_levels:
                break
        elif all(math.ceil(cur.shape[i] / chunks[i]) < 2 for i in spatial):
            break
        step = [1] * len(shape)
        for i in spatial:
            if axes[i] in "yx" and cur.shape[i] > 1:
                step[i] = downscale
        zi = axes.find("z")
        if zi >= 0 and cur.shape[zi] > 1:
            inplane = [spacing[i] * step[i] for i in spatial if axes[i] in "yx" and step[i] > 1]
            if not inplane:
                step[zi] = downscale  # nothing else left to reduce
            else:
                xy_new = min(inplane)
                keep = abs(math.log(spacing[zi] / xy_new))
                reduce = abs(math.log(spacing[zi] * downscale / xy_new))
                if reduce < keep:
                    step[zi] = downscale
        if all(s == 1 for s in step):
            break
        for i in spatial:
            spacing[i] *= step[i]
        new_shape = tuple(-(-n // s) for n, s in zip(cur.shape, step))
        factor = tuple(f * s for f, s in zip(cur.factor, step))
        levels.append(PyramidLevel(new_shape, tuple(step), factor))
    return levels


# ----------------------------------------------------------------------------
# pixels
# ----------------------------------------------------------------------------
def _downsample(previous, step: tuple[int, ...], out_chunks: tuple[int, ...]):
    """Lazy next level from the zarr array of the previous one."""
    import dask.array as da

    in_chunks = tuple(c * s for c, s in zip(out_chunks, step))
    src = da.from_zarr(previous, chunks=in_chunks)
    new_chunks = tuple(tuple(-(-b // s) for b in bc) for bc, s in zip(src.chunks, step))
    return src.map_blocks(block_mean, step, dtype=src.dtype, chunks=new_chunks)


def _marker(block_index: tuple[int, ...]) -> str:
    return ".".join(str(i) for i in block_index)


def _chunk_file(level_dir: Path, block_index: tuple[int, ...]) -> Path:
    """Where zarr (v2 layout, ``/`` separator) stores the chunk of a block."""
    return level_dir.joinpath(*(str(i) for i in block_index))


def _stored_size(chunk: Path) -> int:
    """Bytes of a stored chunk; 0 when zarr left it out (all fill value)."""
    try:
        return chunk.stat().st_size
    except FileNotFoundError:
        return 0


def _store_block(block: np.ndarray, target, region: tuple[slice, ...], marker: str, chunk: str) -> int:
    block = np.asarray(block)
    expected = tuple(s.stop - s.start for s in region)
    if block.shape != expected:
        raise ImageDataError(
            f"{marker}: block of shape {block.shape} computed for a region of shape {expected}"
        )
    if block.any():
        target[region] = block
    else:
        # All fill value (0): let zarr leave the chunk out (and remove a stale one
        # from an interrupted run).  Only here do we pay zarr's emptiness check,
        # a full comparison that cost 35 of 57 ms per 128x256x256 uint16 chunk.
        target.with_config({"write_empty_chunks": False})[region] = block
    # The marker is the only proof that the chunk is complete: written last, it
    # records the size the chunk file has now, so that a resumed run can tell a
    # chunk lost or cut short after the marker was written (a machine that
    # crashed before the disk caught up) and write it again.
    Path(marker).write_text(str(_stored_size(Path(chunk))))
    return 1


def _worker_threads(client=None) -> int:
    """Threads that compute blocks: the cluster's with a client, else this machine's cores."""
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return os.cpu_count() or 1


def _write_level(src, target, done_dir: Path, level_dir: Path, bar: Progress, client=None) -> None:
    import dask

    from .._compute import compute

    done_dir.mkdir(parents=True, exist_ok=True)
    done = set(os.listdir(done_dir))
    blocks = list(np.ndindex(*src.numblocks))
    missing = [b for b in blocks if _marker(b) not in done]
    bar.update(len(blocks) - len(missing))
    if not missing:
        return
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in src.chunks]
    pieces = src.to_delayed(optimize_graph=True)
    store = dask.delayed(_store_block, pure=False)
    batch_size = BATCH_BLOCKS_PER_THREAD * _worker_threads(client)
    missing.sort(key=_curve_rank)  # neighbours one after the other: their input blocks are still cached
    run = uuid.uuid4().hex
    for first in range(0, len(missing), batch_size):
        batch = missing[first : first + batch_size]
        tasks = []
        for b in batch:
            region = tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, b))
            tasks.append(store(pieces[b], target, region, str(done_dir / _marker(b)), str(_chunk_file(level_dir, b)),
                               dask_key_name=(f"tilefuse-store-{run}", _curve_rank(b))))
        compute(*tasks, client=client, progress=bar)  # the bar advances as each chunk is stored


def _append_block(block, tmp: str, rank: int, region: tuple[slice, ...], chunk: tuple[int, ...], codec,
                  pyramid: StreamedPyramid | None = None,
                  index: tuple[int, ...] = ()) -> tuple[int, tuple[int, int] | None]:
    block = np.asarray(block)
    expected = tuple(s.stop - s.start for s in region)
    if block.shape != expected:
        raise ImageDataError(f"{tmp}: block of shape {block.shape} computed for a region of shape {expected}")
    where = append_chunk(pad_chunk(block, chunk), tmp, codec)
    if pyramid is not None:
        pyramid.add(0, index, block)  # the lower levels from the chunk in memory, not read back
    return rank, where


def _curve_rank(index: tuple[int, ...]) -> int:
    """Position of a block on a Z-order (Morton) curve over the block grid: its index bits interleaved.

    Why: the local scheduler runs independent tasks in the order of their
    keys, and neighbouring output chunks read the same decoded input blocks
    (an LRU cache of 128 MiB keeps them).  With random keys (``pure=False``)
    the chunks ran in random order and the cache served 161 of 2304 block
    reads on the 3D benchmark (level 0); in raster order 731, along this curve
    896, and the inputs inflated 2143 -> 1408 times (CPU 14.0 -> 13.1 s, same
    run; ``benchmarks/bench_writer.py`` notes).
    """
    rank = 0
    for bit in range(max((int(i).bit_length() for i in index), default=0)):
        for axis, i in enumerate(index):
            rank |= ((int(i) >> bit) & 1) << (bit * len(index) + axis)
    return rank


def _commit(tmp: str, final: str, n_chunks: int, *entries) -> int:
    return commit_shard(tmp, final, n_chunks, entries)


def _piece_block(block, location: str, rank: int, region: tuple[slice, ...], chunk: tuple[int, ...],
                 codec) -> tuple[int, str, int | None]:
    """A chunk computed on a cluster worker, stored as a piece of its own (see writers/_shards.py)."""
    block = np.asarray(block)
    expected = tuple(s.stop - s.start for s in region)
    if block.shape != expected:
        raise ImageDataError(f"{location}: block of shape {block.shape} computed for a region of shape {expected}")
    if not _storage.is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    return rank, location, write_piece(pad_chunk(block, chunk), location, codec)


def _assemble(folder: str, partial: str | None, final: str, n_chunks: int, *pieces) -> int:
    """Commit a shard from its pieces, on whichever worker runs this; then delete the pieces."""
    import tempfile

    if partial is None:  # an object store: assembled in this worker's own temporary folder
        fd, partial = tempfile.mkstemp(suffix=".shard.partial", prefix="tilefuse-")
        os.close(fd)
    try:
        size = assemble_shard(pieces, partial, final, n_chunks)
    finally:
        Path(partial).unlink(missing_ok=True)
    _storage.remove(folder)
    return size


def _write_sharded_level(src, level_dir: Path | str, shard: tuple[int, ...], codec, bar: Progress, client=None,
                         pyramid: StreamedPyramid | None = None,
                         staging: Path | None = None, pieces: Path | str | None = None) -> tuple[int, int, bool]:
    """Write one level shard by shard (see the module notes); returns ``(shards kept, shards written, streamed)``.

    ``src`` is chunked as the array's chunks.  Shards already under their key
    and complete are kept; the chunks of every other shard are computed,
    appended to its ``.partial`` file and the shard committed once all are in.
    ``level_dir`` may be a URL: the ``.partial`` files are then in the local ``staging`` folder.
    With a ``client`` (workers perhaps on other machines) each chunk is instead
    stored as a piece under ``pieces`` (a folder or prefix beside the output)
    and the shard's commit assembles them (see writers/_shards.py).
    With ``pyramid`` (level 0, local threads) each chunk also feeds the lower
    levels, unless shards were kept (their chunks are not in memory): then
    ``streamed`` is False and the caller reads the level back.
    """
    import dask

    from .._compute import compute

    chunk = tuple(c[0] for c in src.chunks)
    per = tuple(s // c for s, c in zip(shard, chunk))  # chunks per shard along each axis
    n_inner = math.prod(per)
    grid = tuple(-(-nb // p) for nb, p in zip(src.numblocks, per))
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in src.chunks]
    todo, kept = [], 0
    for index in np.ndindex(*grid):
        key = shard_key(level_dir, index)
        partial = Path(shard_key(staging, index) if staging is not None else key)
        partial = partial.with_name(partial.name + ".partial")
        blocks = [tuple(i * p + j for i, p, j in zip(index, per, inner)) for inner in np.ndindex(*per)]
        ranks = [(rank, b) for rank, b in enumerate(blocks) if all(i < n for i, n in zip(b, src.numblocks))]
        if (staging is not None or key.is_file()) and shard_is_complete(key, n_inner):
            kept += 1
            bar.update(len(ranks) + 1)
            continue
        partial.parent.mkdir(parents=True, exist_ok=True)
        if staging is None:
            key.unlink(missing_ok=True)  # damaged (in an object store a new upload replaces it whole)
        partial.unlink(missing_ok=True)  # appended by a killed run
        todo.append((key, partial, ranks, index))
    if kept:
        pyramid = None
    elif pyramid is not None:
        pyramid.start()
    if not todo:
        return kept, 0, pyramid is not None
    if client is not None:
        if pieces is None:
            raise ValueError("a cluster write needs a folder for the shards' pieces")
        _storage.remove(pieces)  # left by a killed run: every shard to write starts from nothing
    blocks_of = src.to_delayed(optimize_graph=True)
    append = dask.delayed(_append_block, pure=False)
    commit = dask.delayed(_commit, pure=False)
    piece = dask.delayed(_piece_block, pure=False)
    assemble = dask.delayed(_assemble, pure=False)
    batch_size = BATCH_BLOCKS_PER_THREAD * _worker_threads(client)
    batch: list = []
    run = uuid.uuid4().hex  # keys unique to this write, ordered along the curve (see _curve_rank)
    for number, (key, partial, ranks, index) in enumerate(todo):
        tmp = str(partial)
        appended = []
        folder = None if client is None else _storage.join(pieces, "_".join(map(str, index)))
        for rank, b in ranks:
            region = tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, b))
            name = (f"tilefuse-append-{run}", _curve_rank(b))
            if client is None:
                appended.append(append(blocks_of[b], tmp, rank, region, chunk, codec, pyramid, b,
                                       dask_key_name=name))
            else:
                appended.append(piece(blocks_of[b], str(_storage.join(folder, str(rank))), rank, region, chunk,
                                      codec, dask_key_name=name))
        # Each chunk and each shard's commit advance the bar by one.
        name = (f"tilefuse-commit-{run}", number)
        if client is None:
            batch += [*appended, commit(tmp, str(key), n_inner, *appended, dask_key_name=name)]
        else:
            local_partial = None if staging is not None else tmp
            batch += [*appended, assemble(str(folder), local_partial, str(key), n_inner, *appended,
                                          dask_key_name=name)]
        if len(batch) >= batch_size or number == len(todo) - 1:
            compute(*batch, client=client, progress=bar)  # whole shards only: each batch commits its shards
            batch = []
            if pyramid is not None:
                bar.update(pyramid.take_done())
    if pyramid is not None:
        pyramid.check_finished()
    return kept, len(todo), pyramid is not None


# ----------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------
def _compressor(compressor):
    if compressor is None:
        return None
    if isinstance(compressor, str):
        if compressor != "default":
            raise TilefuseError(
                f"unknown compressor {compressor!r}; use 'default', None or a numcodecs codec"
            )
        from numcodecs import Blosc

        # LZ4 after bit shuffle: on fused 3D uint16 microscopy chunks it encodes
        # 8x faster than zstd level 5 (1950 vs 240 MB/s on one core) for 4%
        # larger files (ratio 1.78 vs 1.86) - compression was the largest cost
        # of writing.  bioformats2raw also defaults to Blosc LZ4.
        return Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)
    return compressor


def _unit(unit: str | None) -> str | None:
    return _UNIT_ALIASES.get(unit, unit)


def _multiscales(
    axes: str,
    unit: str | None,
    voxel_size: tuple[float, ...],
    origin: tuple[float, ...],
    plan: list[PyramidLevel],
    name: str,
    ngff: str,
) -> dict[str, Any]:
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    axes_meta = []
    for a in axes:
        entry = {"name": a, "type": kinds[a]}
        if kinds[a] == "space" and unit is not None:
            entry["unit"] = unit
        axes_meta.append(entry)
    datasets = []
    for level, lv in enumerate(plan):
        scale, translation = [], []
        s = 0
        for i, a in enumerate(axes):
            if a in "zyx":
                f = lv.factor[i]
                scale.append(voxel_size[s] * f)
                translation.append(origin[s] + (f - 1) / 2 * voxel_size[s])
                s += 1
            else:
                scale.append(1.0)
                translation.append(0.0)
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    multiscale = {
        "name": name,
        "axes": axes_meta,
        "datasets": datasets,
        "type": "mean",
        "metadata": {"method": "tilefuse.downsample.block_mean", "downscale": "block mean"},
    }
    # 0.5 states the version once, in the "ome" attribute around everything (_attributes).
    return {"version": ngff, **multiscale} if ngff == "0.4" else multiscale


def _omero(smallest, axes: str, channel_names, dtype: np.dtype, path: Path, ngff: str, client=None) -> dict:
    """``omero`` channel metadata; display windows from the smallest level's range."""
    import dask.array as da

    from .._compute import compute

    ci = axes.find("c")
    n_channels = smallest.shape[ci] if ci >= 0 else 1
    if channel_names is None:
        channel_names = [f"Channel {i}" for i in range(n_channels)]
    channel_names = [str(n) for n in channel_names]
    if len(channel_names) != n_channels:
        raise ImageDataError(
            f"{path}: {len(channel_names)} channel names for {n_channels} channels"
        )
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo_range, hi_range = float(info.min), float(info.max)
    else:
        lo_range = hi_range = None
    data = da.from_zarr(smallest)
    others = tuple(i for i in range(data.ndim) if i != ci)
    lows, highs = compute(data.min(axis=others), data.max(axis=others), client=client)
    lows, highs = np.atleast_1d(lows), np.atleast_1d(highs)
    channels = []
    for c, label in enumerate(channel_names):
        lo, hi = float(lows[c]), float(highs[c])
        if hi <= lo:
            hi = lo + 1.0
        channels.append(
            {
                "label": label,
                "color": _COLORS[c % len(_COLORS)] if n_channels > 1 else "FFFFFF",
                "active": True,
                "window": {
                    "start": lo,
                    "end": hi,
                    "min": lo if lo_range is None else lo_range,
                    "max": hi if hi_range is None else hi_range,
                },
            }
        )
    model = "greyscale" if n_channels == 1 else "color"
    omero = {"channels": channels, "rdefs": {"model": model}}
    return {"version": ngff, **omero} if ngff == "0.4" else omero


def _attributes(multiscales: dict, omero: dict | None, ngff: str) -> dict:
    """The group attributes: NGFF 0.4 at the top level, 0.5 under ``"ome"`` with the version."""
    attrs = {"multiscales": [multiscales]}
    if omero is not None:
        attrs["omero"] = omero
    return attrs if ngff == "0.4" else {"ome": {"version": ngff, **attrs}}


# ----------------------------------------------------------------------------
# partial output handling
# ----------------------------------------------------------------------------
def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _manifest_differences(old: Any, new: dict) -> list[str]:
    """What differs between the manifest of a partial output and this run's, in words."""
    if not isinstance(old, dict) or old.get("format") != new["format"]:
        return ["it was written by another tilefuse version or its manifest is unreadable"]
    reasons = []
    if old.get("layout") != new["layout"]:
        reasons.append("the output layout differs (shape, dtype, chunks, pyramid or compressor)")
    before, now = old.get("fingerprint") or {}, new["fingerprint"]
    if before.get("tilefuse") != now.get("tilefuse"):
        reasons.append(f"tilefuse {before.get('tilefuse')} wrote it, this is {now.get('tilefuse')}")
    if before.get("options") != now.get("options"):
        a, b = before.get("options") or {}, now.get("options") or {}
        changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        reasons.append("other fusion options (" + ", ".join(changed) + ")")
    labels = {
        "grid": "another output grid (box, spacing or dtype)",
        "views": "other views or view transforms",
        "pixels": "input image files that have changed since",
        "data": "another input array",
    }
    for key, text in labels.items():
        if before.get(key) != now.get(key):
            reasons.append(text)
    return reasons or ["its manifest differs"]


def _open_partial(tmp: Path, manifest: dict, final: Path, resume: str, zarr_format: int):
    """Open ``tmp`` to continue it, or start a fresh group; returns ``(group, resumed)``.

    A partial output is continued only if its manifest equals this run's:
    same layout and same fingerprint of the inputs.  Otherwise it is deleted
    and the write starts over (``resume="auto"``) or the write is refused and
    the partial output kept (``resume="require"``).
    """
    import zarr

    if _storage.is_url(tmp):
        return _open_remote_partial(tmp, manifest, resume, zarr_format)
    meta = tmp / _META_DIR / "manifest.json"
    if tmp.exists():
        if meta.exists():
            try:
                old = json.loads(meta.read_text())
            except (OSError, ValueError):
                old = None
            if old == manifest:
                return zarr.open_group(str(tmp), mode="r+", zarr_format=zarr_format), True
            reasons = "; ".join(_manifest_differences(old, manifest))
            if resume == "require":
                raise ResumeMismatchError(
                    f"{tmp}: cannot resume: the partial output was made from other work ({reasons}). "
                    "It is kept; delete it, or run without resume=\"require\" (--resume) to start over"
                )
            log.warning("%s: partial output made from other work (%s); starting over", tmp, reasons)
            remove_path(tmp)
        elif tmp.is_dir() and not any(tmp.iterdir()):
            tmp.rmdir()
        else:
            raise OutputExistsError(
                f"{tmp}: exists but was not written by tilefuse (no {_META_DIR}/manifest.json); "
                f"delete it to write {final.name}"
            )
    group = zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format)
    (tmp / _META_DIR).mkdir()
    _write_json(meta, manifest)
    return group, False


def _open_remote_partial(url: str, manifest: dict, resume: str, zarr_format: int):
    """:func:`_open_partial` for an output at a URL (:func:`~._atomic.remote_output` has refused objects that
    are not tilefuse's): continue a partial output made from the same work, else start afresh."""
    import zarr

    meta = _storage.join(url, _META_DIR, "manifest.json")
    try:
        old = _storage.read_json(meta, 2**26, "manifest")
    except ImageDataError:
        old = None
    if old is not None or _storage.list_names(url):
        if old == manifest:
            return zarr.open_group(_storage.zarr_store(url, read_only=False), mode="r+",
                                   zarr_format=zarr_format), True
        reasons = "; ".join(_manifest_differences(old, manifest))
        if resume == "require":
            raise ResumeMismatchError(
                f"{url}: cannot resume: the partial output was made from other work ({reasons}). "
                "It is kept; delete it, or run without resume=\"require\" (--resume) to start over"
            )
        log.warning("%s: partial output made from other work (%s); starting over", url, reasons)
        _storage.remove(url)
    # The manifest first: from now on the prefix is tilefuse's partial output.
    _storage.write_file(meta, json.dumps(manifest, indent=1).encode(), "manifest")
    group = zarr.open_group(_storage.zarr_store(url, read_only=False), mode="a", zarr_format=zarr_format)
    return group, False


def _image_is_complete(url: str) -> bool:
    """Whether the root metadata at ``url`` hold an NGFF image (the commit point of a remote output)."""
    for name in ("zarr.json", ".zattrs"):
        try:
            meta = _storage.read_json(_storage.join(url, name), 2**26, "Zarr metadata")
        except ImageDataError:
            return True  # something is there that is not ours to judge: never overwritten silently
        attrs = (meta or {}).get("attributes", meta or {})
        if "multiscales" in attrs or "multiscales" in (attrs.get("ome") or {}):
            return True
    return False


def _staging_dir(url: str) -> Path:
    """The local folder where the shards of a remote output are assembled (one per output URL)."""
    import hashlib
    import tempfile

    return Path(tempfile.gettempdir()) / "tilefuse-staging" / hashlib.sha1(url.encode()).hexdigest()[:16]


def _check_markers(tmp: Path, n_levels: int) -> tuple[int, int]:
    """Keep the markers of chunks stored as recorded; drop the others.  Returns ``(kept, dropped)``.

    A marker records the size its chunk file had when it was written.  After a
    crash of the machine (not of the process) a chunk file may be missing or
    shorter although its marker exists: such a chunk is written again.
    """
    kept = dropped = 0
    for level in range(n_levels):
        folder = tmp / _META_DIR / f"level{level}"
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            try:
                recorded = int(Path(entry.path).read_text() or "-1")
                index = tuple(int(i) for i in entry.name.split("."))
            except (OSError, ValueError):
                recorded, index = -1, ()
            if index and recorded == _stored_size(_chunk_file(tmp / str(level), index)):
                kept += 1
            else:
                os.unlink(entry.path)
                dropped += 1
    return kept, dropped


def _resume_mode(resume: bool | str) -> str:
    modes = {True: "auto", False: "never", "auto": "auto", "never": "never", "require": "require"}
    try:
        return modes[resume]
    except (KeyError, TypeError):
        raise ValueError(f"resume must be True, False, 'auto', 'require' or 'never', got {resume!r}") from None


def _input_fingerprint(image) -> dict[str, str]:
    """Identity of an input given without a fingerprint: its dask name (a hash of its graph) or contents."""
    from dask.base import tokenize

    name = getattr(image, "name", None)
    return {"data": name if isinstance(name, str) else tokenize(np.asarray(image))}


def _sharded_level_array(group, level: int, shape, chunks, shards, dtype, compressors, axes: str):
    """A level of an NGFF 0.5 image: Zarr v3, sharded, named axes (its pixels are written by _shards)."""
    name = str(level)
    chunks = tuple(min(c, max(n, 1)) for c, n in zip(chunks, shape))
    # Shards of whole chunks, no larger than the level needs.
    shards = tuple(min(s, -(-n // c) * c) for s, c, n in zip(shards, chunks, shape))
    if name in group:
        arr = group[name]
        if arr.shape == tuple(shape) and arr.chunks == chunks and arr.shards == shards and arr.dtype == dtype:
            return arr
    return group.create_array(
        name,
        shape=tuple(shape),
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        compressors=compressors,
        fill_value=0,
        dimension_names=list(axes),
        overwrite=True,
    )


def _level_array(group, level: int, shape, chunks, dtype, codec):
    name = str(level)
    chunks = tuple(min(c, max(n, 1)) for c, n in zip(chunks, shape))
    if name in group:
        arr = group[name]
        if arr.shape == tuple(shape) and arr.chunks == chunks and arr.dtype == dtype:
            return arr.with_config({"write_empty_chunks": True})  # _store_block checks emptiness
    return group.create_array(
        name,
        shape=tuple(shape),
        chunks=chunks,
        dtype=dtype,
        compressors=codec,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
        overwrite=True,
        config={"write_empty_chunks": True},  # _store_block checks emptiness itself, faster
    )


# ----------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------
def write_ome_zarr(
    image,
    path: str | os.PathLike,
    *,
    voxel_size: float | Sequence[float],
    origin: Sequence[float] | None = None,
    unit: str | None = "micrometer",
    axes: str | None = None,
    chunks: int | Sequence[int] | None = None,
    n_levels: int | None = None,
    downscale: int = 2,
    channel_names: Sequence[str] | None = None,
    progress: bool = False,
    resume: bool | str = True,
    overwrite: bool = False,
    compressor: Any = "default",
    name: str | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    client: Any = None,
    ngff: str = "0.5",
    shards: int | Sequence[int] | None = None,
    before_commit: Any = None,
) -> Path:
    """Write ``image`` as an OME-NGFF multiscale image: 0.5 (Zarr v3, sharded) or 0.4 (Zarr v2).

    Parameters
    ----------
    image : dask.array.Array or numpy.ndarray
        2 to 5 dimensions laid out as ``axes``.  Computed block by block; a
        dask array is never loaded whole.
    path : path-like or URL
        Output directory, conventionally ending in ``.ome.zarr``; or a URL (``s3://bucket/out.ome.zarr``,
        NGFF 0.5 only), written under its final name with the commit rule of the module notes.
    voxel_size : float or sequence of float
        Level-0 spacing of the spatial axes (numpy order, e.g. ``(z, y, x)``),
        in ``unit``.
    origin : sequence of float, optional
        Physical position of the centre of voxel 0 (spatial axes, numpy
        order).  Defaults to zeros.
    unit : str or None
        NGFF unit of the spatial axes; ``"um"``/``"µm"`` are accepted for
        ``"micrometer"``.
    axes : str, optional
        Axis letters, a subsequence of ``"tczyx"`` ending in ``"yx"``.  By
        default ``"yx"``, ``"zyx"``, ``"czyx"``, ``"tczyx"`` by dimension.
    chunks : int or sequence of int, optional
        Zarr chunk shape (an int applies to spatial axes, others get 1).  By
        default the dask chunks when they are regular, else 1 for t/c, 64 for z
        and 256 for y/x (1024 for 2D images).  Every level uses the same
        chunk shape.
    n_levels : int, optional
        Number of resolution levels.  By default levels are added until the
        smallest spans fewer than two chunks along every spatial axis.
    downscale : int
        Reduction factor between levels along each reduced axis.
    channel_names : sequence of str, optional
        Labels for the ``omero`` channel metadata (written whenever the image
        has a ``c`` axis or names are given).
    progress : bool
        Show a progress bar counting written chunks (of all levels).
    resume : bool or {"auto", "require", "never"}
        What to do with a ``<path>.partial`` left by an interrupted run.
        ``True``/``"auto"``: continue it if it was made from the same work
        (same layout and ``fingerprint``), else delete it and start over
        with a warning; ``"require"``: continue it if it matches, else raise
        :class:`ResumeMismatchError` and keep it; ``False``/``"never"``: start
        over.
    overwrite : bool
        Replace an existing output at ``path``.
    compressor : "default", None or numcodecs codec
        ``"default"`` is Blosc LZ4 level 5 with bit shuffle (fast; pass e.g.
        ``numcodecs.Blosc("zstd", 5, Blosc.BITSHUFFLE)`` for ~5% smaller files).
        NGFF 0.5 takes Blosc or None.
    name : str, optional
        ``multiscales`` name, default the file name without extension.
    fingerprint : mapping, optional
        What determines the pixels (JSON-serialisable), stored in the partial
        output and compared on resume; :func:`tilefuse.write_fused` passes
        :meth:`FusionPlan.fingerprint`.  By default the dask array's name (a
        hash of its graph) or a hash of a numpy array's contents.
    client : distributed.Client, optional
        Compute and write the chunks on this cluster (its workers must see
        ``path``); by default local threads.
    ngff : {"0.5", "0.4"}
        ``"0.5"``: Zarr v3 with sharding (the default); ``"0.4"``: Zarr v2,
        one file per chunk, for viewers that do not read 0.5 yet.
    shards : int or sequence of int, optional
        NGFF 0.5: shard shape, a multiple of ``chunks`` along every axis (an
        int applies to spatial axes).  By default about :data:`SHARD_BYTES`
        of whole chunks (:func:`shard_shape`).
    before_commit : callable, optional
        Called with no arguments once every chunk is written, before the output is committed (renamed, or
        its root metadata written); an exception it raises leaves the output uncommitted (its partial
        name kept).  :func:`tilefuse.write_fused` checks there that the input files did not change.

    Returns
    -------
    Path or str
        ``path`` (a URL as a string).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False, or a partial output not
        written by tilefuse is in the way.
    ResumeMismatchError
        ``resume="require"`` and the partial output was made from other work.
    ImageDataError
        ``image``, ``axes``, ``voxel_size``, ``chunks`` or ``channel_names``
        disagree.

    Notes
    -----
    See the module docstring for the pyramid rules, the half-voxel
    translation of downsampled levels and how resuming decides which chunks
    to trust.
    """
    import dask.array as da

    remote = _storage.is_url(path)
    path = str(path).rstrip("/") if remote else Path(path)
    mode = _resume_mode(resume)
    if ngff not in NGFF_VERSIONS:
        raise ImageDataError(f"{path}: ngff must be one of {', '.join(NGFF_VERSIONS)}, got {ngff!r}")
    if shards is not None and ngff == "0.4":
        raise ImageDataError(f"{path}: shards are a Zarr v3 feature; NGFF 0.4 (Zarr v2) has none")
    if remote and ngff == "0.4":
        raise ImageDataError(f"{path}: NGFF 0.4 (one object per chunk, resumed by one marker per chunk) is "
                             "written to local disks only; write NGFF 0.5 to an object store")
    if not hasattr(image, "ndim") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    axes = _check_axes(axes, image.ndim, path)
    n_spatial = sum(a in "zyx" for a in axes)
    voxel_size = _per_spatial(voxel_size, n_spatial, "voxel_size", path)
    if any(v <= 0 for v in voxel_size):
        raise ImageDataError(f"{path}: voxel_size must be positive, got {voxel_size}")
    origin = _per_spatial(0.0 if origin is None else origin, n_spatial, "origin", path)
    if int(downscale) != downscale or downscale < 2:
        raise ImageDataError(f"{path}: downscale must be an integer >= 2, got {downscale!r}")
    downscale = int(downscale)
    if n_levels is not None and int(n_levels) < 1:
        raise ImageDataError(f"{path}: n_levels must be >= 1, got {n_levels!r}")
    if any(n == 0 for n in image.shape):
        raise ImageDataError(f"{path}: cannot write an empty image of shape {image.shape}")

    if channel_names is not None:
        n_channels = image.shape[axes.index("c")] if "c" in axes else 1
        if len(channel_names) != n_channels:
            raise ImageDataError(
                f"{path}: {len(channel_names)} channel names for {n_channels} channels"
            )
    chunk_shape = _choose_chunks(image, axes, chunks)
    if isinstance(image, da.Array):
        arr = image
        if arr.chunks != da.core.normalize_chunks(chunk_shape, arr.shape):
            arr = arr.rechunk(chunk_shape)
    else:
        arr = da.from_array(np.asarray(image), chunks=chunk_shape)
    dtype = np.dtype(arr.dtype)
    plan = pyramid_plan(
        arr.shape, axes, voxel_size, chunk_shape, downscale=downscale,
        n_levels=None if n_levels is None else int(n_levels),
    )
    codec = _compressor(compressor)
    sharded = ngff != "0.4"
    compressors, encoder = v3_codecs(codec) if sharded else (None, None)
    shard = _check_shards(shards, arr.shape, axes, chunk_shape, dtype, path) if sharded else None
    manifest = {
        "format": "tilefuse-ome-zarr-partial/4",
        "layout": {
            "ngff": ngff,
            "axes": axes,
            "dtype": dtype.str,
            "chunks": list(chunk_shape),
            "shards": None if shard is None else list(shard),
            "levels": [[list(lv.shape), list(lv.step)] for lv in plan],
            "compressor": None if codec is None else codec.get_config(),
        },
        # Round-tripped through JSON so that it compares equal to the stored copy.
        "fingerprint": json.loads(json.dumps(dict(fingerprint) if fingerprint is not None
                                             else _input_fingerprint(image))),
    }

    if remote:
        staging = _staging_dir(path)
        output = remote_output(path, resume=mode != "never", overwrite=overwrite, is_complete=_image_is_complete,
                               commit_keys=["zarr.json", ".zattrs"], manifest=f"{_META_DIR}/manifest.json")
    else:
        staging = None
        output = atomic_output(path, resume=mode != "never", overwrite=overwrite)
    with output as tmp:
        if not remote:
            tmp = tmp.absolute()  # markers and arrays are also reached from dask workers
        group, resumed = _open_partial(tmp, manifest, path, mode, 3 if sharded else 2)
        total = sum(
            math.prod(-(-n // c) for n, c in zip(lv.shape, chunk_shape)) for lv in plan
        )
        if sharded:
            n_shards = sum(math.prod(-(-n // s) for n, s in zip(lv.shape, shard)) for lv in plan)
            total += n_shards  # each shard's commit is a step of its own
        elif resumed:
            kept, dropped = _check_markers(tmp, len(plan))
            log.info("resuming %s: %d of %d chunks already written%s", tmp, kept, total,
                     f" ({dropped} more found damaged, written again)" if dropped else "")
        log.debug("%s: NGFF %s, axes %s, %s, chunks %s, shards %s, %d levels %s, %s", writing(path), ngff, axes,
                  dtype, chunk_shape, shard, len(plan), [lv.shape for lv in plan], codec)
        with progress_bar(writing(path), total, unit="chunk", enabled=progress) as bar:
            target = None
            kept = written = 0
            if sharded:
                targets = [_sharded_level_array(group, level, lv.shape, chunk_shape, shard, dtype, compressors, axes)
                           for level, lv in enumerate(plan)]
                # the streamed pyramid appends to local files: an object store's levels are read back
                pyramid = None if remote else _streamed_pyramid(targets, plan, tmp, encoder, client)
            for level, lv in enumerate(plan):
                if sharded and level > 0 and pyramid is not None:
                    target = targets[level]
                    continue  # written with level 0
                src = arr if level == 0 else _downsample(target, lv.step, chunk_shape)
                if sharded:
                    target = targets[level]
                    k, w, streamed = _write_sharded_level(src, _storage.join(tmp, str(level)), target.shards, encoder,
                                                          bar, client, pyramid if level == 0 else None,
                                                          None if staging is None else staging / str(level),
                                                          _storage.join(tmp, _META_DIR, "pieces", str(level)))
                    kept, written = kept + k, written + w
                    if not streamed:
                        pyramid = None
                else:
                    target = _level_array(group, level, lv.shape, chunk_shape, dtype, codec)
                    _write_level(src, target, tmp / _META_DIR / f"level{level}", tmp / str(level), bar, client)
            if sharded and resumed:
                log.info("resumed %s: %d of %d shards were complete, %d written", tmp, kept, kept + written, written)
        multiscales = _multiscales(axes, _unit(unit), voxel_size, origin, plan,
                                   name if name is not None else _storage.name(path).split(".")[0], ngff)
        omero = None
        if "c" in axes or channel_names is not None:
            omero = _omero(target, axes, channel_names, dtype, path, ngff, client)
        if before_commit is not None:
            before_commit()
        # The commit point of an output in an object store: the root metadata become an image's.
        group.attrs.update(_attributes(multiscales, omero, ngff))
        if remote:
            _storage.remove(_storage.join(tmp, _META_DIR))
            remove_path(staging)
        else:
            remove_path(tmp / _META_DIR)
    return path


def _streamed_pyramid(targets, plan: list[PyramidLevel], tmp: Path, encoder, client) -> StreamedPyramid | None:
    """Levels 1.. fed by level 0's chunks in memory (:mod:`._pyramid`), or None: read back level by level.

    Measured on the 3D benchmark (``benchmarks/bench_writer.py``): reading a
    level back decodes every chunk again through zarr and a dask graph, a
    quarter of the write; the block means of chunks in memory cost a few
    percent.  Local threads only (the buffers live in this process).
    """
    if client is not None or len(plan) < 2:
        return None
    shapes = [t.shape for t in targets]
    if not can_stream(shapes, [t.chunks for t in targets], [lv.step for lv in plan]):
        return None
    return StreamedPyramid([(tmp / str(level), t.shape, t.chunks, t.shards, lv.step)
                            for level, (t, lv) in enumerate(zip(targets, plan))], encoder)


def _check_shards(shards, shape, axes: str, chunks: tuple[int, ...], dtype: np.dtype, path: Path) -> tuple[int, ...]:
    """The level-0 shard shape: given (whole chunks per shard) or chosen by :func:`shard_shape`."""
    if shards is None:
        return shard_shape(shape, axes, chunks, dtype.itemsize)
    if np.isscalar(shards):
        shards = tuple(int(shards) if a in "zyx" else c for a, c in zip(axes, chunks))
    shards = tuple(int(s) for s in shards)
    if len(shards) != len(shape) or any(s < c or s % c for s, c in zip(shards, chunks)):
        raise ImageDataError(f"{path}: shards {shards} must be a multiple of the chunks {chunks} along every axis")
    return shards
