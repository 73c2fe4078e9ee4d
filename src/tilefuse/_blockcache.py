"""A per-process, size-bounded cache of decoded storage blocks.

Fusion tasks read the region each output chunk back-projects onto; chunk
boundaries rarely coincide with the file's block boundaries, so neighbouring
output chunks need the same edge blocks.  On the 3D benchmark (output chunks
128x256x256, HDF5 blocks 32x128x128) every block was inflated 2.25 times on
average.  Keeping recently decoded blocks removes most of that repetition.
Readers opt in per read (``loader.read(..., cache=True)``; the fusion engine
does), so registration and whole-view reads, which rarely come back to a
block, do not fill it.

The budget trades memory for speed.  Fusing the 3D benchmark (16 views of
128x512x512) into memory on 2 threads: no cache 5.7-6.2 s, 64 MiB 5.1-5.3 s,
128 MiB 4.9-5.1 s, 256 MiB 4.8-4.9 s, for a peak RSS 125, 215 and 400 MB
higher than without.

Keys are tuples whose first item is the absolute path of the file or
dataset the block comes from.  Each block is stored with the *identity* of
the file(s) it was decoded from (:func:`tilefuse._inputs.file_identity`:
device, inode, size, modification and status-change times, or the identity of the handle it
was read through); a lookup with another identity is a miss, so a file that
was replaced or rewritten is decoded again instead of served from memory.
The cache lives in the module (one per process, like the file handles of
:func:`tilefuse.loaders.base.cached_handle`), holds read-only arrays, and
evicts least recently used blocks beyond its byte budget - first those past
their last planned read, when the reader says how many reads a plan makes of
each block (fusion's HDF5 reads; see :func:`cached_block`).  The budget is
``TILEFUSE_BLOCK_CACHE_MB`` (default 128; 0 disables it) or
:func:`set_block_cache_size`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

__all__ = ["cached_block", "planned_share", "forget_block", "forget_file", "set_block_cache_size", "block_cache_info",
           "clear_block_cache"]


def _default_budget() -> int:
    try:
        return max(0, int(float(os.environ.get("TILEFUSE_BLOCK_CACHE_MB", "128")) * 2**20))
    except ValueError:
        return 128 * 2**20


_LOCK = threading.Lock()
_BLOCKS: OrderedDict[Hashable, tuple[Hashable, np.ndarray]] = OrderedDict()  # key -> (identity, block)
#: Planned reads made so far of blocks read with a ``share``: (key, identity) -> count.
_USED: OrderedDict[tuple[Hashable, Hashable], int] = OrderedDict()
_MAX_COUNTS = 2**20
_DECODING: dict[tuple[Hashable, Hashable], threading.Event] = {}  # (key, identity) being decoded -> done
_STATE = {"budget": _default_budget(), "bytes": 0, "hits": 0, "misses": 0}


def cached_block(key: Hashable, decode: Callable[[], np.ndarray | None], *,
                 identity: Hashable, share: tuple[int, int] | None = None) -> np.ndarray | None:
    """The decoded block for ``key``, decoding it with ``decode()`` on a miss.

    ``identity`` is that of the file(s) the block is read from now; a block
    cached under another identity (the file has changed since) is not
    returned but decoded again and replaced.  A thread missing a block that
    another thread is decoding waits for that one (then takes it from the
    cache, or decodes it itself if it was not kept).  Decoding happens
    outside the lock, so codecs that release the GIL run in parallel.  A
    ``None`` from ``decode`` (a block that does not exist) is returned but
    not cached.

    ``share = (1, n)``: this is one of the ``n`` reads that a plan (fusion's
    output chunks) will make of this block.  After the last of them the
    block is the first to be evicted instead of the most recently used,
    leaving the budget to blocks that reads are still to come for.  Why: on
    the 3D benchmark a 128 MiB LRU held less than two output chunks' inputs
    and inflated 1408 times for 1024 blocks (chunks read their neighbours'
    blocks after those had been pushed out by blocks no chunk needed again);
    see docs/benchmarks.md for the figures with this rule.  A block read
    more often than planned starts a new count.  The counts outlive
    evictions (a few bytes per block, the oldest forgotten beyond
    :data:`_MAX_COUNTS`) and go with :func:`clear_block_cache`.
    """
    if _STATE["budget"] <= 0:
        return decode()
    while True:
        with _LOCK:
            entry = _BLOCKS.get(key)
            if entry is not None and entry[0] == identity:
                _STATE["hits"] += 1
                # its last planned read: first to go
                _BLOCKS.move_to_end(key, last=not (share is not None and _used_up(key, identity, share)))
                return entry[1]
            busy = _DECODING.get((key, identity))
            if busy is None:  # nobody decodes it now: we do
                _DECODING[(key, identity)] = done = threading.Event()
                _STATE["misses"] += 1
                break
        # Another thread is decoding this very block (neighbouring chunks run at the same
        # time and share their edge blocks): wait for it rather than decode it twice.
        busy.wait()
    try:
        block = decode()
    finally:
        with _LOCK:
            _DECODING.pop((key, identity), None)
        done.set()
    if block is None:
        return None
    block.setflags(write=False)
    with _LOCK:
        _pop(key)  # a copy under another identity, if any
        _BLOCKS[key] = (identity, block)
        _STATE["bytes"] += block.nbytes
        if share is not None and _used_up(key, identity, share):
            _BLOCKS.move_to_end(key, last=False)
        while _STATE["bytes"] > _STATE["budget"] and _BLOCKS:
            _pop(next(iter(_BLOCKS)))
    return block


def planned_share(plan, offset, chunks) -> tuple[int, int] | None:
    """The ``share`` of one read of the block at ``offset`` (block shape ``chunks``) under ``plan``.

    ``plan`` is what a loader's ``read(cache=...)`` got: the tuple of every
    region the plan reads (``(1, number of them meeting the block)``), or a
    plain ``True`` (None: no count).
    """
    if not isinstance(plan, tuple):
        return None
    return 1, sum(1 for region in plan
                  if all(r.start < o + c and r.stop > o for r, o, c in zip(region, offset, chunks)))


def _used_up(key: Hashable, identity: Hashable, share: tuple[int, int]) -> bool:
    """Count one more planned read of the block; True once all of them have been made.  Lock held."""
    used = _USED.pop((key, identity), 0) + share[0]
    if used >= share[1]:
        return True  # and counting starts again: the same plan computed once more reads it as often
    _USED[(key, identity)] = used
    if len(_USED) > _MAX_COUNTS:
        _USED.popitem(last=False)
    return False


def _pop(key: Hashable) -> None:
    """Drop one block; the caller holds the lock."""
    old = _BLOCKS.pop(key, None)
    if old is not None:
        _STATE["bytes"] -= old[1].nbytes


def forget_block(key: Hashable) -> None:
    """Drop one block (its file is being rewritten)."""
    with _LOCK:
        _pop(key)


def forget_file(path: str) -> None:
    """Drop every block whose key starts with exactly ``path`` (made absolute): its file has changed."""
    path = os.path.abspath(path)
    with _LOCK:
        for key in [k for k in _BLOCKS if str(k[0]) == path]:
            _pop(key)


def set_block_cache_size(megabytes: float) -> None:
    """Set this process's cache budget in MiB (0 disables and empties it)."""
    with _LOCK:
        _STATE["budget"] = max(0, int(megabytes * 2**20))
        while _STATE["bytes"] > _STATE["budget"] and _BLOCKS:
            _pop(next(iter(_BLOCKS)))


def clear_block_cache(prefix: str | None = None) -> None:
    """Drop cached blocks whose key starts with a path starting with ``prefix`` (all if None).

    Keys are tuples whose first item is the file's absolute path, so the
    writers' :func:`~tilefuse.loaders.base.drop_cached_handles` drops a
    rewritten file's blocks too.
    """
    if prefix is not None:
        prefix = os.path.abspath(prefix)
    with _LOCK:
        for key in list(_BLOCKS):
            if prefix is None or str(key[0]).startswith(prefix):
                _pop(key)
        for counted in list(_USED):
            if prefix is None or str(counted[0][0]).startswith(prefix):
                del _USED[counted]


def block_cache_info() -> dict:
    """Budget, bytes held, blocks held, hits and misses of this process's cache."""
    with _LOCK:
        return dict(_STATE, blocks=len(_BLOCKS))
