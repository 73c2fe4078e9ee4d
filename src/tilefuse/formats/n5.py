"""A small reader and writer for the N5 file-system format.

zarr-python 3 dropped its ``N5Store``, and the remaining Python N5 libraries
are heavy or unmaintained, so tilefuse implements the (simple) format itself,
following the specification in the README of https://github.com/saalfeldlab/n5:

* a container is a directory; every directory is a group; a group's metadata
  live in its ``attributes.json``;
* a dataset is a group whose attributes hold ``dimensions`` and ``blockSize``
  (both **x first**), ``dataType`` and ``compression`` (``{"type": ...}``);
* block ``(i, j, k)`` (x index first) is the file ``dataset/i/j/k``; missing
  blocks read as zeros;
* a block file is: uint16 mode (0 default, 1 varlength), uint16 ndim, ndim x
  uint32 block size (x first; edge blocks may be smaller), for mode 1 a uint32
  element count, then the compressed **big-endian** samples, x fastest,
  which is C order over the reversed dimensions, i.e. a ``(z, y, x)`` array.

A container may also live at an fsspec URL (``s3://bucket/dataset.n5``): paths
are then URL strings, and attributes and blocks are read through
:mod:`tilefuse._storage` (one object per block, so a region read fetches only
its blocks).  Writing stays local.

All header integers are big-endian.  Public shapes, chunks and block indices
here are in numpy order (slowest axis first); the reversal to N5's x-first
order happens only when reading or writing JSON and block headers.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import struct
from collections.abc import Mapping
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from .. import _storage
from .._blockcache import cached_block, forget_block, planned_share
from .._inputs import MAX_METADATA_BYTES, block_byte_limit
from ..errors import ImageDataError, MissingDataError, UnsupportedFormatError
from .bdv import BDV_DATA_TYPES
from .deflate import DeflateError, deflate, inflate_members

__all__ = [
    "N5_DTYPES",
    "N5_VERSION",
    "N5Dataset",
    "create_dataset",
    "read_attributes",
    "write_attributes",
    "encode_block",
    "decode_block",
    "normalize_compression",
]

#: N5 ``dataType`` names and their numpy types.
N5_DTYPES: dict[str, np.dtype] = {name: np.dtype(name) for name in BDV_DATA_TYPES}

_MODE_DEFAULT = 0
_MODE_VARLENGTH = 1
_MODE_OBJECT = 2

#: N5 version written to a new container's root (format unchanged since 2.x;
#: Java readers accept any major version up to their own).
N5_VERSION = "2.5.1"


# -- attributes ----------------------------------------------------------------
def read_attributes(path: str | Path) -> dict[str, Any]:
    """The ``attributes.json`` of a group or dataset (``{}`` when it has none); ``path`` may be a URL."""
    file = _storage.join(_storage.as_location(path), "attributes.json")
    try:
        raw = _storage.read_file(file, MAX_METADATA_BYTES, "N5 attributes")
        if raw is None:
            return {}
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImageDataError(f"{file}: not valid JSON ({exc})") from None
    try:
        attrs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImageDataError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(attrs, dict):
        raise ImageDataError(f"{file}: expected a JSON object, got {type(attrs).__name__}")
    return attrs


def write_attributes(path: str | Path, attributes: Mapping[str, Any], *, merge: bool = True) -> None:
    """Write (by default: merge into) the ``attributes.json`` of a group."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    attrs = read_attributes(path) if merge else {}
    attrs.update(attributes)
    tmp = path / f".attributes.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(attrs, indent=1), encoding="utf-8")
    os.replace(tmp, path / "attributes.json")


# -- compression ---------------------------------------------------------------
def normalize_compression(compression: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn ``"gzip"``/``"zstd"``/``"raw"``/... or a dict into an N5 compression dict."""
    if compression is None:
        compression = "raw"
    if isinstance(compression, str):
        defaults: dict[str, dict[str, Any]] = {
            "raw": {"type": "raw"},
            "gzip": {"type": "gzip", "level": 6, "useZlib": False},
            "zstd": {"type": "zstd", "level": 3},
            "bzip2": {"type": "bzip2", "blockSize": 9},
            "xz": {"type": "xz", "preset": 6},
            "blosc": {"type": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 1, "blocksize": 0,
                      "nthreads": 1},
        }
        if compression not in defaults:
            raise UnsupportedFormatError(
                f"N5 compression {compression!r} cannot be written (choose from {', '.join(defaults)})"
            )
        return dict(defaults[compression])
    comp = dict(compression)
    if "type" not in comp:
        raise ImageDataError(f"N5 compression {comp!r} has no 'type'")
    return comp


def _compress(raw: bytes, comp: Mapping[str, Any], itemsize: int = 1) -> bytes:
    kind = comp["type"]
    if kind == "raw":
        return raw
    if kind == "gzip":
        # gzip container, or zlib's with N5's "useZlib"
        return deflate(raw, int(comp.get("level", 6)), gzip=not comp.get("useZlib", False))
    if kind == "zstd":
        from numcodecs import Zstd

        return bytes(Zstd(level=int(comp.get("level", 3))).encode(raw))
    if kind == "bzip2":
        return bz2.compress(raw, int(comp.get("blockSize", 9)))
    if kind == "xz":
        return lzma.compress(raw, format=lzma.FORMAT_XZ, preset=int(comp.get("preset", 6)))
    if kind == "blosc":
        from numcodecs import Blosc

        codec = Blosc(cname=comp.get("cname", "zstd"), clevel=int(comp.get("clevel", 5)),
                      shuffle=int(comp.get("shuffle", 1)), blocksize=int(comp.get("blocksize", 0)))
        # Blosc shuffles by the buffer's item size (recorded in its header, which every decoder reads):
        # handed plain bytes it shuffled bytes of 1, and bit shuffle left 16-bit samples ~0.9 of raw
        # instead of ~0.5 (measured on noisy uint16 blocks, benchmarks/bench_large.py).
        items = np.frombuffer(raw, dtype=f"u{itemsize}") if itemsize in (2, 4, 8) else raw
        return bytes(codec.encode(items))
    raise UnsupportedFormatError(f"N5 compression type {kind!r} cannot be written")


def _decompress(data: bytes, comp: Mapping[str, Any]) -> bytes:
    kind = comp.get("type", "raw")
    if kind == "raw":
        return data
    if kind == "gzip":  # gzip or zlib header (N5's "useZlib" flag)
        return inflate_members(data)
    if kind == "zstd":
        from numcodecs import Zstd

        return bytes(Zstd().decode(data))
    if kind == "blosc":
        from numcodecs import Blosc

        return bytes(Blosc().decode(data))
    if kind == "bzip2":
        return bz2.decompress(data)
    if kind == "xz":
        return lzma.decompress(data)
    if kind == "lz4":
        return _decode_lz4_block_stream(data)
    raise UnsupportedFormatError(f"N5 compression type {kind!r} is not supported")


#: The compression types this module decodes.
_DECODERS = ("raw", "gzip", "zstd", "blosc", "bzip2", "xz", "lz4")


def _int_list(values: Any, where: str, name: str, minimum: int) -> tuple[int, ...]:
    """An attribute holding a list of integers >= ``minimum`` (``dimensions``, ``blockSize``)."""
    if not isinstance(values, list) or not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise ImageDataError(f"{where}: {name} must be a list of integers >= {minimum}, got {values!r}")
    return tuple(values)


def _decode_lz4_block_stream(data: bytes) -> bytes:
    """Decode lz4-java's ``LZ4BlockOutputStream`` framing, which N5's lz4 uses.

    Each frame: magic ``LZ4Block``, a token byte (high nibble 1 = stored,
    2 = LZ4), little-endian int32 compressed and decompressed lengths, an
    int32 checksum (not verified), then the payload.  A frame with
    decompressed length 0 ends the stream.
    """
    from numcodecs import LZ4

    out = bytearray()
    pos = 0
    while pos < len(data):
        if data[pos:pos + 8] != b"LZ4Block":
            raise ImageDataError("corrupt N5 lz4 block: missing LZ4Block magic")
        token = data[pos + 8]
        clen, dlen, _checksum = struct.unpack_from("<iii", data, pos + 9)
        pos += 21
        payload = data[pos:pos + clen]
        pos += clen
        if dlen == 0:
            break
        method = token & 0xF0
        if method == 0x10:
            out += payload
        elif method == 0x20:
            # numcodecs' LZ4 expects its own 4-byte little-endian size prefix.
            out += LZ4().decode(struct.pack("<i", dlen) + payload)
        else:
            raise ImageDataError(f"corrupt N5 lz4 block: unknown method {method:#x}")
    return bytes(out)


# -- blocks --------------------------------------------------------------------
def encode_block(array: np.ndarray, compression: Mapping[str, Any]) -> bytes:
    """Serialize one block (numpy order) into N5's default-mode block bytes."""
    array = np.asarray(array)
    header = struct.pack(f">HH{array.ndim}I", _MODE_DEFAULT, array.ndim, *array.shape[::-1])
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes()
    return header + _compress(raw, compression, array.dtype.itemsize)


def decode_block(data: bytes, dtype: np.dtype, compression: Mapping[str, Any],
                 source: str | Path = "<block>") -> np.ndarray:
    """Parse N5 block bytes into a numpy-order array of the block's own shape."""
    if len(data) < 4:
        raise ImageDataError(f"{source}: N5 block is truncated ({len(data)} bytes)")
    mode, ndim = struct.unpack_from(">HH", data, 0)
    if mode == _MODE_OBJECT:
        raise UnsupportedFormatError(f"{source}: N5 block mode {mode} (object blocks) is not supported")
    if mode not in (_MODE_DEFAULT, _MODE_VARLENGTH):
        raise ImageDataError(f"{source}: N5 block header has mode {mode} (expected 0 or 1); the block is damaged")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ImageDataError(f"{source}: N5 block header is truncated")
    size_xyz = struct.unpack_from(f">{ndim}I", data, 4)
    shape = tuple(int(n) for n in size_xyz[::-1])
    count = int(np.prod(shape, dtype=np.int64))
    if mode == _MODE_VARLENGTH:
        if len(data) < offset + 4:
            raise ImageDataError(f"{source}: N5 block header is truncated")
        (count,) = struct.unpack_from(">I", data, offset)
        offset += 4
    try:
        raw = _decompress(data[offset:], compression)
    except UnsupportedFormatError as exc:
        raise UnsupportedFormatError(f"{source}: {exc}") from None
    except ImageDataError as exc:
        raise ImageDataError(f"{source}: {exc}") from None
    except (*DeflateError, OSError, lzma.LZMAError, ValueError, RuntimeError) as exc:
        raise ImageDataError(f"{source}: cannot decompress N5 block ({exc})") from None
    big = np.dtype(dtype).newbyteorder(">")
    # Exactly the header's samples: more bytes means another data type or block size than
    # the attributes say (uint16 blocks read as uint8 would double the block), fewer a damaged block.
    if len(raw) != count * big.itemsize:
        raise ImageDataError(
            f"{source}: N5 block holds {len(raw)} bytes, expected {count * big.itemsize} "
            f"({count} x {np.dtype(dtype).name} for shape {shape})"
        )
    if count != int(np.prod(shape, dtype=np.int64)):
        raise ImageDataError(f"{source}: N5 block of shape {shape} holds {count} samples")
    return np.frombuffer(raw, dtype=big, count=count).reshape(shape).astype(dtype)


def _read_bytes(path: Path | str, max_bytes: int) -> bytes | None:
    """Bytes of a block file or object, or ``None`` if it does not exist (a sparse block).

    A folder, FIFO or device in its place, or a file larger than any block of
    the dataset can be (``max_bytes``), is refused without reading on.
    """
    return _storage.read_file(path, max_bytes, "N5 block")


# -- datasets ------------------------------------------------------------------
class N5Dataset:
    """One N5 dataset on the local file system or at a URL.

    Parameters
    ----------
    path
        The dataset directory (holding ``attributes.json`` and block folders), or its URL.

    Attributes
    ----------
    shape, chunks : tuple of int
        Dataset and block shape in numpy order (slowest axis first).
    dtype : numpy.dtype
        Native-endian sample type.
    compression : dict
        The N5 compression attribute.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = _storage.as_location(path)
        remote = _storage.is_url(self.path)
        self._cache_key = self.path if remote else os.path.abspath(self.path)  # for the decoded-block cache
        # Taken before reading: cached blocks are valid for these attributes only.
        self._identity = _storage.identity([_storage.join(self.path, "attributes.json")])
        attrs = read_attributes(self.path)
        if not attrs:
            if not _storage.exists(self.path):
                raise MissingDataError(f"{self.path}: N5 dataset does not exist")
            raise MissingDataError(f"{self.path}: not an N5 dataset (no attributes.json)")
        where = f"{self.path}/attributes.json"
        missing = [k for k in ("dimensions", "blockSize", "dataType") if k not in attrs]
        if missing:
            raise ImageDataError(f"{where}: not an N5 dataset, missing {missing}")
        dtype_name = attrs["dataType"]
        if not isinstance(dtype_name, str) or dtype_name not in N5_DTYPES:
            raise UnsupportedFormatError(f"{where}: N5 dataType {dtype_name!r} is not supported")
        self.shape: tuple[int, ...] = _int_list(attrs["dimensions"], where, "dimensions", 0)[::-1]
        self.chunks: tuple[int, ...] = _int_list(attrs["blockSize"], where, "blockSize", 1)[::-1]
        if len(self.shape) != len(self.chunks):
            raise ImageDataError(f"{where}: dimensions and blockSize differ in length")
        self.dtype: np.dtype = N5_DTYPES[dtype_name]
        # Very old N5 files store compression as a plain string ("compressionType").
        comp = attrs.get("compression", {"type": attrs.get("compressionType", "raw")})
        comp = dict(comp) if isinstance(comp, Mapping) else {"type": comp}
        if comp.get("type") not in _DECODERS:
            raise UnsupportedFormatError(
                f"{where}: N5 compression {comp!r} is not supported (readable: {', '.join(_DECODERS)})"
            )
        self.compression: dict[str, Any] = comp
        self.attributes = attrs
        # A block is at most a full block of samples, compressed (codecs expand noise a little) behind its header.
        self._max_block_bytes = block_byte_limit(self.chunks, self.dtype) + 4 * (len(self.chunks) + 2)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"N5Dataset({str(self.path)!r}, shape={self.shape}, chunks={self.chunks}, dtype={self.dtype})"

    def block_path(self, index: tuple[int, ...]) -> Path | str:
        """File (or object URL) of the block at ``index`` (numpy order); N5 paths are x first."""
        return _storage.join(self.path, *(str(int(i)) for i in reversed(tuple(index))))

    def block_region(self, index: tuple[int, ...]) -> tuple[slice, ...]:
        """The region a block covers, clipped at the dataset edge."""
        return tuple(
            slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, self.chunks, self.shape)
        )

    def read_block(self, index: tuple[int, ...]) -> np.ndarray | None:
        """One block, clipped to the dataset edge; ``None`` if its file is absent."""
        file = self.block_path(index)
        data = _read_bytes(file, self._max_block_bytes)
        if data is None:
            return None
        block = decode_block(data, self.dtype, self.compression, file)
        want = tuple(s.stop - s.start for s in self.block_region(index))
        if block.ndim != self.ndim:
            raise ImageDataError(f"{file}: block has {block.ndim} dimensions, dataset has {self.ndim}")
        if block.shape == want:
            return block
        if block.shape == self.chunks:
            # Some writers pad edge blocks to the full block size: keep the inside.
            return block[tuple(slice(0, w) for w in want)]
        # Any other size means the header or the attributes are wrong: the samples
        # would land in the wrong voxels.
        raise ImageDataError(
            f"{file}: N5 block header says {'x'.join(map(str, block.shape[::-1]))} (x y z), expected "
            f"{'x'.join(map(str, want[::-1]))} (or the full block size "
            f"{'x'.join(map(str, self.chunks[::-1]))}) from {self.path}/attributes.json"
        )

    def read(self, region: tuple[slice, ...] | None = None, *, cache: bool | tuple = False) -> np.ndarray:
        """Read a region (tuple of step-1 slices, numpy order), opening only the blocks it needs.

        ``cache=True`` keeps decoded blocks in the per-process block cache
        (for neighbouring reads that share edge blocks), each valid only while
        its block file and the dataset's ``attributes.json`` keep their identity.
        ``cache`` may be the tuple of every region a plan reads: each block is
        then let go after its last planned read (:func:`~tilefuse._blockcache.planned_share`).
        """
        if region is None:
            region = (slice(None),) * self.ndim
        region = tuple(region) + (slice(None),) * (self.ndim - len(region))
        bounds = []
        for sl, n in zip(region, self.shape):
            start, stop, step = sl.indices(n)
            if step != 1:
                raise ValueError("N5 regions must have step 1")
            bounds.append((start, max(start, stop)))
        out = np.zeros(tuple(b - a for a, b in bounds), dtype=self.dtype)
        if out.size == 0:
            return out
        ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(bounds, self.chunks)]
        remote = _storage.is_url(self.path)
        for index in product(*ranges):
            if cache:
                parts = [str(int(i)) for i in reversed(index)]  # as block_path
                file = (_storage.join(self._cache_key, *parts) if remote else os.path.join(self._cache_key, *parts))
                identity = (self._identity, _storage.identity([file]))
                share = planned_share(cache, [i * c for i, c in zip(index, self.chunks)], self.chunks)
                block = cached_block((self._cache_key, index), lambda index=index: self.read_block(index),
                                     identity=identity, share=share)
            else:
                block = self.read_block(index)
            if block is None:
                continue
            src, dst = [], []
            for i, c, (a, b) in zip(index, self.chunks, bounds):
                lo, hi = max(a, i * c), min(b, (i + 1) * c)
                src.append(slice(lo - i * c, hi - i * c))
                dst.append(slice(lo - a, hi - a))
            out[tuple(dst)] = block[tuple(src)]
        return out

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        return self.read(region)

    def write_block(self, index: tuple[int, ...], array: np.ndarray) -> None:
        """Write the block at ``index``; ``array`` must have the (edge-clipped) block shape."""
        index = tuple(int(i) for i in index)
        want = tuple(s.stop - s.start for s in self.block_region(index))
        array = np.asarray(array)
        if array.shape != want or any(s.start >= s.stop for s in self.block_region(index)):
            raise ImageDataError(
                f"{self.path}: block {index} must have shape {want}, got {array.shape}"
            )
        file = self.block_path(index)
        file.parent.mkdir(parents=True, exist_ok=True)
        forget_block((self._cache_key, index))
        file.write_bytes(encode_block(array.astype(self.dtype, copy=False), self.compression))


def create_dataset(
    path: str | Path,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    compression: str | Mapping[str, Any] | None = "gzip",
    attributes: Mapping[str, Any] | None = None,
) -> N5Dataset:
    """Create (or overwrite the metadata of) an N5 dataset.

    Parameters
    ----------
    path
        Dataset directory; parents are created.
    shape, chunks
        Dataset and block shape in numpy order.
    dtype
        One of the ten N5 types.
    compression
        ``"raw"``, ``"gzip"``, ``"zstd"``, ``"bzip2"``, ``"xz"``, ``"blosc"`` or an
        N5 compression dict.
    attributes
        Extra attributes stored next to the dataset's own.
    """
    dtype = np.dtype(dtype)
    if dtype.name not in N5_DTYPES:
        raise UnsupportedFormatError(f"{path}: N5 cannot store {dtype} samples")
    if len(shape) != len(chunks) or any(int(c) < 1 for c in chunks):
        raise ValueError(f"bad N5 shape/chunks {shape}/{chunks}")
    attrs: dict[str, Any] = dict(attributes or {})
    attrs.update(
        dimensions=[int(n) for n in shape[::-1]],
        blockSize=[int(c) for c in chunks[::-1]],
        dataType=dtype.name,
        compression=normalize_compression(compression),
    )
    write_attributes(path, attrs, merge=True)
    return N5Dataset(path)
