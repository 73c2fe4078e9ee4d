"""The lower levels of a sharded OME-Zarr pyramid, computed from level-0 chunks while they are in memory.

Reading level 0 back from its shards to downsample it cost a quarter of the
write on the 3D benchmark (Blosc decoding every chunk again, zarr's
read path and a dask graph per level; ``benchmarks/bench_writer.py``).  Here
each chunk, once appended to its shard, is averaged (:func:`~tilefuse.downsample.block_mean`
with the next level's step) and the small result is put in its place in a
buffer of the next level's chunk.  When every child of that chunk is in, the
chunk is appended to its own shard and averaged in turn for the level after,
and a shard whose chunks are all in is committed (index, fsync, rename), as
level 0's are.  The pixels are the same as reading the level back: every
chunk covers whole averaging windows (the chunk is a multiple of the step),
so averaging by pieces gives the same windows, and each level is averaged
from the previous level's stored (rounded) values.

Memory is the buffers of chunks whose children are not all written yet:
level 0 is computed shard by shard and shards are whole numbers of the next
level's chunks (powers of two of chunks, or the whole extent), so a buffer
rarely outlives the batch of shards that fills it.

Only for the local scheduler (the buffers live in this process) and a fresh
level 0: when some level-0 shards are kept from an interrupted run, their
chunks are not in memory, and the levels are read back as before.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from .._outputs import remove_path
from ..downsample import block_mean
from ._shards import append_chunk, commit_shard, pad_chunk, shard_key

__all__ = ["StreamedPyramid", "can_stream"]


def can_stream(shapes: list[tuple[int, ...]], chunks: list[tuple[int, ...]], steps: list[tuple[int, ...]]) -> bool:
    """Whether each level's chunks cover whole averaging windows of the next: chunk a multiple of the step,
    or the level is one chunk along that axis.  ``steps[k]`` leads from level ``k - 1`` to ``k``."""
    return all(c % s == 0 or c >= n
               for k in range(1, len(shapes))
               for n, c, s in zip(shapes[k - 1], chunks[k - 1], steps[k]))


class _Level:
    def __init__(self, level_dir: Path, shape, chunks, shards, step):
        self.dir = level_dir
        self.shape = tuple(int(n) for n in shape)
        self.chunks = tuple(int(c) for c in chunks)
        self.per = tuple(int(s) // int(c) for s, c in zip(shards, chunks))  # chunks per shard
        self.step = tuple(int(s) for s in step)  # from the level above
        self.numblocks = tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))
        self.pending: dict[tuple[int, ...], list] = {}  # chunk index -> [buffer, children in, children expected]
        self.shards: dict[tuple[int, ...], list] = {}  # shard index -> [entries, chunks expected]

    def region_shape(self, index) -> tuple[int, ...]:
        return tuple(min(c, n - i * c) for i, c, n in zip(index, self.chunks, self.shape))

    def chunks_in_shard(self, shard) -> int:
        return math.prod(min(p, nb - s * p) for s, p, nb in zip(shard, self.per, self.numblocks))

    def place(self, above: _Level, index) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """Chunk ``index`` of the level above, averaged: (our chunk it falls in, its offset there, that chunk's
        number of children)."""
        parent, offset, children = [], [], 1
        for i, c_above, s, c, nb_above, nb in zip(index, above.chunks, self.step, self.chunks, above.numblocks,
                                                  self.numblocks):
            start = i * c_above // s  # where the averaged chunk starts in our voxels (c_above % s == 0 or i == 0)
            p = start // c
            parent.append(p)
            offset.append(start - p * c)
            if nb == 1:
                children *= nb_above
            else:
                ratio = c // (c_above // s)  # chunks above per chunk here, along this axis
                children *= min(ratio, nb_above - p * ratio)
        return tuple(parent), tuple(offset), children


class StreamedPyramid:
    """Levels 1.. of a sharded image, fed with level 0's chunks as they are written (thread-safe).

    Parameters
    ----------
    levels : list of (level_dir, shape, chunks, shards, step)
        Every level from 0; ``step`` is the downsampling from the level above
        (ignored for level 0).  Shards are whole numbers of chunks.
    codec
        Encodes the chunks (as :func:`~tilefuse.writers._shards.append_chunk`).
    """

    def __init__(self, levels, codec):
        self._levels = [_Level(Path(d), shape, chunks, shards, step) for d, shape, chunks, shards, step in levels]
        self._codec = codec
        self._lock = threading.Lock()
        self._done = 0  # chunks and shard commits of levels >= 1, for the progress bar

    def add(self, level: int, index: tuple[int, ...], block: np.ndarray) -> None:
        """Chunk ``index`` of ``level`` (its region, not padded) is written: feed it to the level below."""
        while level + 1 < len(self._levels):
            above, below = self._levels[level], self._levels[level + 1]
            reduced = block_mean(block, below.step)
            parent, offset, children = below.place(above, index)
            at = tuple(slice(o, o + n) for o, n in zip(offset, reduced.shape))
            with self._lock:
                entry = below.pending.get(parent)
                if entry is None:
                    entry = below.pending[parent] = [np.zeros(below.region_shape(parent), block.dtype), 0, children]
                entry[0][at] = reduced
                entry[1] += 1
                if entry[1] < entry[2]:
                    return
                del below.pending[parent]
            # Every child is in: this thread writes the chunk, then carries on one level down.
            level, index, block = level + 1, parent, entry[0]
            self._append(below, index, block)

    def _append(self, lv: _Level, index: tuple[int, ...], block: np.ndarray) -> None:
        shard = tuple(i // p for i, p in zip(index, lv.per))
        inner = tuple(i % p for i, p in zip(index, lv.per))
        key = shard_key(lv.dir, shard)
        tmp = key.with_name(key.name + ".partial")
        key.parent.mkdir(parents=True, exist_ok=True)
        where = append_chunk(pad_chunk(block, lv.chunks), tmp, self._codec)
        rank = int(np.ravel_multi_index(inner, lv.per))
        with self._lock:
            state = lv.shards.setdefault(shard, [[], lv.chunks_in_shard(shard)])
            state[0].append((rank, where))
            complete = len(state[0]) == state[1]
            if complete:
                del lv.shards[shard]
            self._done += 1
        if complete:
            commit_shard(tmp, key, math.prod(lv.per), state[0])
            with self._lock:
                self._done += 1

    def start(self) -> None:
        """Remove what a killed run left in the lower levels: every chunk of theirs is written anew."""
        for lv in self._levels[1:]:
            remove_path(lv.dir / "c")

    def take_done(self) -> int:
        """Chunks and shards of the lower levels written since the last call."""
        with self._lock:
            done, self._done = self._done, 0
        return done

    def check_finished(self) -> None:
        """Raise if a chunk or shard of a lower level was left unwritten (a bug: every level-0 chunk was fed)."""
        left = [(n, len(lv.pending), len(lv.shards)) for n, lv in enumerate(self._levels) if lv.pending or lv.shards]
        if left:
            raise RuntimeError(f"pyramid levels not finished (level, chunks, shards): {left}")
