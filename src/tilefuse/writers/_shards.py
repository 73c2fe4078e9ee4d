"""Write Zarr v3 shards whole or not at all, chunk by chunk, at the speed of the codec.

A Zarr v3 array with the ``sharding_indexed`` codec stores many chunks
("inner chunks") in one file per shard: the encoded chunks one after the
other, then an index of ``(offset, nbytes)`` per inner chunk (C order over the
shard's chunk grid; ``2**64 - 1`` twice for a chunk left out, i.e. all fill
value) and the CRC-32C of that index.  This module writes such files itself:

* :func:`append_chunk` encodes one chunk (Blosc, the array's codec) and appends
  the bytes to the shard's temporary file ``<key>.partial`` with one
  ``O_APPEND`` write, so the chunks of one shard can be computed by any
  thread or process in any order, and no chunk is ever held twice in memory
  nor copied again after encoding.  It returns where the bytes went.
* :func:`commit_shard` is given every chunk's ``(offset, nbytes)`` once all
  are appended, writes the index, syncs the file and renames it to its
  key.  A shard file under its key is therefore complete (its data reached the
  disk before the rename), and a run killed earlier leaves only a
  ``.partial`` file that the next run deletes.
* :func:`shard_is_complete` checks a shard file left by an earlier run: its
  index must be whole (CRC-32C) and point inside the file.

On a dask.distributed cluster the workers may be on other machines, where neither
appending nor a local staging folder is safe: ``O_APPEND`` is not atomic between
the clients of an NFS share (two workers' chunks can overwrite each other), and
a staging folder on one worker is not the one on another (a shard assembled
from one host's file with another host's offsets would be silently wrong).
There :func:`write_piece` stores each encoded chunk as a file (or object) of its
own beside the output, and :func:`assemble_shard` - the shard's commit, on
whichever worker - concatenates the pieces in their order, checking each one's
size, and commits the shard as above.  It costs one more write and read of the
encoded bytes per chunk.

In an object store (``final`` a URL, :mod:`tilefuse._storage`) the chunks are
appended to a local ``.partial`` file the same way, and the commit uploads the
finished file to its key in one request (multipart for large shards, which
the store shows only once complete): an object under its key is a whole shard,
as a file is after the rename.  Completeness is checked from the index alone
(one ranged read).

Why our own shard writer rather than zarr-python's: not speed - writing level 0
of the 3D benchmark costs the same CPU either way (13.2 vs 13.4 s, the codec is
numcodecs' Blosc in both; ``benchmarks/bench_writer.py``, docs/benchmarks.md) -
but memory and safety.  zarr-python writes a shard in one call only when given
the whole shard (646 vs 889 MB peak at 128x512x512 shards, and a ~1 GiB shard
per thread at the default size: the output would no longer be larger than
memory) and otherwise reads, decodes and rewrites the shard for every chunk
(not safe from several processes, and quadratic), with no shard-level commit
to resume from; tensorstore is not a dependency and has the same
read-modify-write for partial shards.  Appending encoded chunks keeps memory
at one chunk per thread and costs the codec alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import _storage
from ..errors import ImageDataError, TilefuseError

__all__ = ["append_chunk", "commit_shard", "write_piece", "assemble_shard", "shard_is_complete", "index_nbytes",
           "v3_codecs", "shard_key", "pad_chunk",
           "EMPTY"]

#: Offset and size of an inner chunk that is not stored (it reads as the fill value).
EMPTY = 2**64 - 1
_CRC_BYTES = 4


def index_nbytes(n_chunks: int) -> int:
    """Bytes of a shard's index: two uint64 per inner chunk plus the CRC-32C."""
    return 16 * n_chunks + _CRC_BYTES


def _crc32c(data: bytes) -> bytes:
    import google_crc32c  # a dependency of zarr-python; what its crc32c codec uses

    return int(google_crc32c.value(data)).to_bytes(4, "little")


def shard_key(level_dir: str | os.PathLike, shard_index: Sequence[int]) -> Path | str:
    """Where Zarr v3 (default chunk keys: ``c/i/j/k``) stores a shard of the array in ``level_dir``
    (a file, or an object URL when ``level_dir`` is one)."""
    return _storage.join(level_dir, "c", *(str(int(i)) for i in shard_index))


def pad_chunk(block: np.ndarray, chunk: Sequence[int]) -> np.ndarray:
    """``block`` as a whole chunk: Zarr stores edge chunks whole, padded with the fill value (0)."""
    chunk = tuple(chunk)
    if block.shape == chunk:
        return block
    padded = np.zeros(chunk, dtype=block.dtype)
    padded[tuple(slice(0, n) for n in block.shape)] = block
    return padded


def append_chunk(block: np.ndarray, tmp: str | os.PathLike, codec) -> tuple[int, int] | None:
    """Encode ``block`` with ``codec`` and append it to the shard file ``tmp``.

    Returns ``(offset, nbytes)`` of the stored bytes, or None when the block
    is all zero (the fill value): such a chunk is left out of the shard.
    """
    block = np.ascontiguousarray(block)
    if not block.any():
        return None
    data = codec.encode(block)  # numcodecs: the one copy, straight from the fused block
    view = memoryview(data).cast("B")
    fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # One write: O_APPEND places it at the end of the file atomically, whoever else appends.
        _write_all(fd, view, tmp)
        end = os.lseek(fd, 0, os.SEEK_CUR)  # this descriptor's own position: just after our bytes
    finally:
        os.close(fd)
    return end - len(view), len(view)


def _write_all(fd: int, data: memoryview, path) -> None:
    """One ``write``: a regular file takes all of it, or only part when the disk or a size limit is reached."""
    written = os.write(fd, data)
    if written != len(data):
        # Worded as numpy's short writes, which tilefuse._outputs reports as a full disk or size limit;
        # appending the rest later would not be contiguous when others append to the same file.
        raise OSError(f"{os.fspath(path)}: {len(data)} requested and {written} written")


def _index(n_chunks: int, entries: Sequence[tuple[int, tuple[int, int] | None]]) -> bytes:
    index = np.full((n_chunks, 2), EMPTY, dtype="<u8")
    for rank, where in entries:
        if where is not None:
            index[rank] = where
    raw = index.tobytes()
    return raw + _crc32c(raw)


def commit_shard(tmp: str | os.PathLike, final: str | os.PathLike, n_chunks: int,
                 entries: Sequence[tuple[int, tuple[int, int] | None]]) -> int:
    """Write the index of a shard whose chunks are all appended, and move it to its key.

    Parameters
    ----------
    tmp, final : path-like
        The shard's temporary file (may not exist: every chunk was empty) and
        its key in the array.
    n_chunks : int
        Inner chunks per shard.
    entries : sequence of (rank, (offset, nbytes) or None)
        Every appended chunk: its C-order rank in the shard and where
        :func:`append_chunk` put it.

    Returns
    -------
    int
        The shard file's size.
    """
    remote = _storage.is_url(final)
    tmp, final = Path(tmp), (final if remote else Path(final))
    index = _index(n_chunks, entries)
    # The index is written even for a shard of empty chunks: its file is what says "done" on resume.
    fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, memoryview(index), tmp)
        if not remote:
            os.fsync(fd)  # data before name: a shard under its key survives a machine crash whole
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if remote:
        _storage.put_file(tmp, final, "shard")  # the object appears whole once uploaded
        tmp.unlink()
        return size
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return size


def write_piece(block: np.ndarray, location: str | os.PathLike, codec) -> int | None:
    """Encode ``block`` with ``codec`` and store it whole at ``location`` (a file or an object URL).

    Returns the stored size, or None when the block is all zero (the fill
    value: nothing is stored).  Locally the piece is written under a temporary
    name and renamed; an object appears whole with its one PUT.  A retried task
    writes the same piece again.
    """
    block = np.ascontiguousarray(block)
    if not block.any():
        return None
    data = codec.encode(block)
    _storage.write_file(location, memoryview(data).cast("B"), "shard piece")
    return len(memoryview(data).cast("B"))


def assemble_shard(pieces: Sequence[tuple[int, str | os.PathLike, int | None]], tmp: str | os.PathLike,
                   final: str | os.PathLike, n_chunks: int) -> int:
    """Concatenate a shard's pieces into ``tmp`` in rank order and commit it to ``final``.

    ``pieces`` are ``(rank, location, nbytes)`` as :func:`write_piece` reported
    them (``nbytes`` None: an empty chunk, left out).  A piece whose size is
    not the one reported (changed or truncated since) is refused: the shard is
    not committed.  ``tmp`` is a local file of this process (any previous
    content is discarded).  Returns the shard file's size.
    """
    entries: list[tuple[int, tuple[int, int] | None]] = []
    with open(tmp, "wb") as out:
        for rank, location, nbytes in sorted(pieces, key=lambda p: p[0]):
            if nbytes is None:
                entries.append((rank, None))
                continue
            data = _storage.read_file(location, nbytes, "shard piece")
            if data is None or len(data) != nbytes:
                raise ImageDataError(
                    f"{location}: shard piece of {nbytes} bytes "
                    f"{'is missing' if data is None else f'has {len(data)}'}; the shard {final} is not written"
                )
            entries.append((rank, (out.tell(), nbytes)))
            out.write(data)
    return commit_shard(tmp, final, n_chunks, entries)


def shard_is_complete(path: str | os.PathLike, n_chunks: int) -> bool:
    """Whether a shard file holds a whole index (CRC-32C) whose chunks all lie inside the file."""
    need = index_nbytes(n_chunks)
    if _storage.is_url(path):
        found = _storage.read_tail(path, need)
        if found is None:
            return False
        size, tail = found
        return _index_is_whole(tail, need, n_chunks, size)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < need:
                return False
            f.seek(size - need)
            tail = f.read(need)
    except OSError:
        return False
    return _index_is_whole(tail, need, n_chunks, size)


def _index_is_whole(tail: bytes, need: int, n_chunks: int, size: int) -> bool:
    raw, crc = tail[:-_CRC_BYTES], tail[-_CRC_BYTES:]
    if len(tail) != need or _crc32c(raw) != crc:
        return False
    index = np.frombuffer(raw, dtype="<u8").reshape(n_chunks, 2)
    stored = index[index[:, 0] != EMPTY]
    return bool(np.all(stored[:, 0] + stored[:, 1] <= size - need))


class _RawCodec:
    """The encoder of an array stored without compression: the chunk's bytes as they are."""

    def encode(self, block: np.ndarray):
        return np.ascontiguousarray(block).view(np.uint8).reshape(-1)


def v3_codecs(codec):
    """``(zarr v3 compressors, encoder)`` for a numcodecs codec: the metadata and what encodes the chunks.

    Only Blosc (the default) or no compression: the shard writer encodes the
    chunks itself with numcodecs, so the two must agree byte for byte, which
    tests/test_writer_ome_zarr.py checks by reading the output back with zarr.
    TilefuseError for another codec.
    """
    from zarr.codecs import BloscCodec

    if codec is None:
        return None, _RawCodec()
    config = codec.get_config()
    if config.get("id") != "blosc":
        raise TilefuseError(f"NGFF 0.5 output: compressor {config} is not supported; use Blosc or None "
                            "(or ngff='0.4' for any numcodecs codec)")
    shuffles = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}  # not -1 (auto): zarr v3 has no such setting
    if int(config.get("shuffle", 1)) not in shuffles:
        raise TilefuseError(f"NGFF 0.5 output: Blosc shuffle {config.get('shuffle')} (automatic) cannot be written "
                            "as Zarr v3 metadata; choose Blosc.NOSHUFFLE, SHUFFLE or BITSHUFFLE")
    shuffle = shuffles[int(config.get("shuffle", 1))]
    compressors = BloscCodec(cname=config["cname"], clevel=int(config["clevel"]), shuffle=shuffle,
                             blocksize=int(config.get("blocksize", 0)))
    return compressors, codec
