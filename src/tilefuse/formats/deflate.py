"""Deflate (zlib and gzip streams), through ISA-L when it is installed.

BDV HDF5 and N5 files are usually gzip/deflate compressed, and inflating
their blocks is the largest cost of reading them.  ``isal`` (python-isal,
Intel's ISA-L) decodes the same streams 2.2x faster than :mod:`zlib`
(measured: 32x128x128 uint16 blocks, 424 vs 193 MB/s on one core) and, like
zlib, releases the GIL.  Decoding is byte-identical.

Encoding is 7.5x faster too, at a slightly better ratio: the same blocks at
zlib level 4 (BDV's writers' usual level) 49 MB/s, ratio 1.53; ISA-L level 2
371 MB/s, ratio 1.55.  ISA-L has levels 0-3 only, so zlib levels map onto
them (:func:`isal_level`); the streams are standard deflate, which every
HDF5 and N5 reader decodes.  Where isal is not available we fall back on
zlib.
"""

from __future__ import annotations

import zlib

try:  # pragma: no cover - depends on the platform's wheels
    from isal import isal_zlib as _impl
except ImportError:  # pragma: no cover
    _impl = zlib

__all__ = ["inflate", "inflate_members", "deflate", "isal_level", "DeflateError", "BACKEND"]

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
    written in pieces), so we do too.  Each member must be complete (raises
    one of :data:`DeflateError` otherwise).
    """
    out = b""
    while True:
        d = _impl.decompressobj(47)  # wbits 32 + 15: detect the gzip or zlib header
        out += d.decompress(data)
        if not d.eof:  # a stream cut short may still yield every sample: refuse it anyway
            raise zlib.error("incomplete or truncated stream")
        if not d.unused_data:
            return out
        data = d.unused_data


def isal_level(level: int) -> int:
    """The ISA-L level (0-3) standing in for a zlib level (1-9): 1 -> 1, 2-6 -> 2, 7-9 -> 3."""
    return 1 if level <= 1 else 2 if level <= 6 else 3


def deflate(raw: bytes, level: int, *, gzip: bool = False) -> bytes:
    """Encode ``raw`` as one zlib-wrapped (or, with ``gzip=True``, gzip) deflate stream.

    ``level`` is a zlib level; 0 stores without compression (zlib does that).
    """
    wbits = 31 if gzip else 15
    if level <= 0 or _impl is zlib:
        c = zlib.compressobj(level, zlib.DEFLATED, wbits)
    else:
        c = _impl.compressobj(isal_level(level), _impl.DEFLATED, wbits)
    return c.compress(raw) + c.flush()
