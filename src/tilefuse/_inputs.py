"""Reading input files that may be damaged: regular files only, bounded sizes, identities for caches.

Libraries that open files by name (h5py, tifffile, zarr's store) would block
forever on a FIFO and read a device such as ``/dev/zero`` without end, and a
block file larger than its shape and type allow cannot be that block: these
are refused with :class:`~tilefuse.errors.ImageDataError` before anything is
read.  :func:`file_identity` is what the per-process caches (file handles,
decoded blocks, checked views) key on, so nothing cached from a file is used
for the file that replaced it.  Used by the format codecs (:mod:`tilefuse.formats`)
and the loaders alike.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

import numpy as np

from .errors import ImageDataError

__all__ = ["MAX_METADATA_BYTES", "file_identity", "check_regular_file", "read_regular_file", "block_byte_limit"]

#: What a metadata file (JSON attributes, ``.zarray``...) may weigh before it is refused unread.
MAX_METADATA_BYTES = 64 * 2**20


def file_identity(paths: Iterable[str | os.PathLike]) -> tuple:
    """``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of each path (``None`` for a missing one).

    What the per-process caches key on: a file replaced by another (new inode)
    or rewritten in place (new size or modification time) has another
    identity, so whatever was cached from the old file is not used for the new
    one.  One ``stat`` per path (a few microseconds), cheap next to decoding a
    block.  The status-change time is part of it because no one can set it
    back: a file rewritten with the same size whose modification time was then
    restored (``os.utime``, ``touch -r``, ``cp -p``, ``rsync -t``) kept its cached
    decoded blocks and chunk offsets before.  Only a rewrite within one tick of
    the file system's clock goes unnoticed.  A ``chmod`` or rename changes it too:
    that costs one reopen.  The resume fingerprint
    (:func:`tilefuse.loaders.base.path_identity`) keeps to size + modification time,
    which a copy of the inputs keeps.
    """
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # missing, unreadable folder, NUL in the name
            out.append(None)
        else:
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def check_regular_file(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> bool:
    """False if ``path`` does not exist; raise :class:`ImageDataError` unless it is a regular file.

    For libraries that open files by name (h5py, tifffile, zarr's store): a
    FIFO would block them forever and a device such as ``/dev/zero`` would be
    read without end.  Symbolic links are followed (a link to a regular file is
    fine).  With ``max_bytes``, a larger file is refused too (a block that
    cannot be what its shape and type allow).
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False
    _check_stat(st, path, what, max_bytes)
    return True


def _check_stat(st: os.stat_result, path, what: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageDataError(f"{path}: {what} is {_file_kind(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ImageDataError(
            f"{path}: {what} has {st.st_size:,} bytes, more than it can hold ({max_bytes:,}); "
            "the file is damaged or not what the project describes"
        )


def read_regular_file(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes | None:
    """The bytes of a regular file of at most ``max_bytes``, or None if it does not exist.

    Anything else is refused with :class:`ImageDataError` without blocking or
    reading on: a folder, a FIFO (opened non-blocking, then refused), a device
    (``/dev/zero`` would be read until memory runs out), or a file larger than
    what it can possibly hold (a block of known shape and type).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except IsADirectoryError:  # pragma: no cover - Linux opens folders read-only; other systems may not
        raise ImageDataError(f"{path}: {what} is a folder, not a regular file") from None
    with os.fdopen(fd, "rb") as f:
        _check_stat(os.fstat(f.fileno()), path, what, max_bytes)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since the stat
        raise ImageDataError(f"{path}: {what} is larger than it can be ({max_bytes:,} bytes)")
    return data


def block_byte_limit(shape: Iterable[int], dtype: np.dtype) -> int:
    """The most bytes a stored block of ``shape`` and ``dtype`` may take, whatever its compression.

    Twice the raw size plus 64 KiB: codecs expand incompressible data by a
    fraction of a percent (deflate, zstd, blosc, bzip2, xz), and headers are
    small; a file beyond that is not such a block.
    """
    raw = int(np.prod([int(n) for n in shape], dtype=np.int64)) * np.dtype(dtype).itemsize
    return 2 * raw + 64 * 2**10
