"""A few HDF5 metadata questions asked of libhdf5 directly, without the GIL.

Why: checking a BDV view opens the ``cells`` dataset of each level and asks
its shape, layout, blocks, filters and type.  Through h5py each answer
creates and registers a Python object (a property list, a dataspace, a
type: ~5-20 us each) and all of it holds the GIL, so at 10,000 tiles the
checks ran ~1 ms of GIL per view while the registration threads waited.
The same questions asked of the library h5py loaded, through :mod:`ctypes`
(which releases the GIL during each call), cost ~45 us per level (measured:
4 levels 183 us with every property vs 214 us for h5py's bare opens).

Only what :class:`~tilefuse.loaders._hdf5._Cells` needs, for the common
case: anything unusual (a float or non-standard type, external storage, a
dataset with nothing stored, a failing call, a libhdf5 not found) answers
None and the caller asks h5py, whose messages and conversions are the
reference.  Calls are made holding h5py's own lock (``phil``): HDF5 is not
re-entrant, and h5py's other users wait on that lock as they would on h5py.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import NamedTuple

__all__ = ["DatasetFacts", "dataset_facts", "link_type", "read_factors", "read_name_attribute"]

_hid = ctypes.c_int64  # hid_t since HDF5 1.10
_u64 = ctypes.c_uint64
_LAYOUT = {0: "compact", 1: "contiguous", 2: "chunked", 3: "virtual"}  # H5D_layout_t


class DatasetFacts(NamedTuple):
    """What one probe of a dataset found (numpy order)."""

    shape: tuple[int, ...]
    layout: str
    chunks: tuple[int, ...] | None
    filters: tuple[int, ...]
    dtype: str  # numpy type string, e.g. "<u2"
    empty: bool | None  # None when not asked
    filename: str
    name: str


@functools.lru_cache(maxsize=1)
def _library():
    """libhdf5 as h5py loaded it (the same handle: one library state), with the signatures used; or None."""
    try:
        import h5py
        from h5py._objects import phil
    except ImportError:  # pragma: no cover
        return None
    here = os.path.dirname(h5py.__file__)
    candidates = sorted(glob.glob(os.path.join(here, "..", "h5py.libs", "libhdf5-*.so*")))  # manylinux wheels
    candidates += sorted(glob.glob(os.path.join(here, ".dylibs", "libhdf5.*.dylib")))  # macOS wheels
    if not candidates:  # conda or a system build: the library the extension was linked with
        candidates = _mapped_libhdf5()
    if len(candidates) != 1:
        return None
    try:
        lib = ctypes.CDLL(candidates[0])
        major, minor, release = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
        lib.H5get_libversion(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(release))
        # Exactly the library h5py uses, and hid_t 64-bit (1.10+); H5Dget_num_chunks since 1.10.5.
        if (major.value, minor.value, release.value) != h5py.version.hdf5_version_tuple[:3] or \
                (major.value, minor.value) < (1, 12):
            return None
        for name, res, args in [
            ("H5Dopen2", _hid, [_hid, ctypes.c_char_p, _hid]),
            ("H5Dclose", ctypes.c_int, [_hid]),
            ("H5Dget_space", _hid, [_hid]),
            ("H5Sget_simple_extent_ndims", ctypes.c_int, [_hid]),
            ("H5Sget_simple_extent_dims", ctypes.c_int, [_hid, ctypes.POINTER(_u64), ctypes.POINTER(_u64)]),
            ("H5Sclose", ctypes.c_int, [_hid]),
            ("H5Dget_create_plist", _hid, [_hid]),
            ("H5Pget_layout", ctypes.c_int, [_hid]),
            ("H5Pget_chunk", ctypes.c_int, [_hid, ctypes.c_int, ctypes.POINTER(_u64)]),
            ("H5Pget_nfilters", ctypes.c_int, [_hid]),
            ("H5Pget_filter2", ctypes.c_int, [_hid, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                              ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p, ctypes.c_size_t,
                                              ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint)]),
            ("H5Pget_external_count", ctypes.c_int, [_hid]),
            ("H5Pclose", ctypes.c_int, [_hid]),
            ("H5Dget_type", _hid, [_hid]),
            ("H5Tget_class", ctypes.c_int, [_hid]),
            ("H5Tget_size", ctypes.c_size_t, [_hid]),
            ("H5Tget_sign", ctypes.c_int, [_hid]),
            ("H5Tget_order", ctypes.c_int, [_hid]),
            ("H5Tget_precision", ctypes.c_size_t, [_hid]),
            ("H5Tget_offset", ctypes.c_int, [_hid]),
            ("H5Tclose", ctypes.c_int, [_hid]),
            ("H5Dget_num_chunks", ctypes.c_int, [_hid, _hid, ctypes.POINTER(_u64)]),
            ("H5Dget_storage_size", _u64, [_hid]),
            ("H5Fget_name", ctypes.c_ssize_t, [_hid, ctypes.c_char_p, ctypes.c_size_t]),
            ("H5Iget_name", ctypes.c_ssize_t, [_hid, ctypes.c_char_p, ctypes.c_size_t]),
            ("H5Lget_info2", ctypes.c_int, [_hid, ctypes.c_char_p, ctypes.c_void_p, _hid]),
            ("H5Dread", ctypes.c_int, [_hid, _hid, _hid, _hid, _hid, ctypes.c_void_p]),
            ("H5Aexists_by_name", ctypes.c_int, [_hid, ctypes.c_char_p, ctypes.c_char_p, _hid]),
            ("H5Aopen_by_name", _hid, [_hid, ctypes.c_char_p, ctypes.c_char_p, _hid, _hid]),
            ("H5Aget_type", _hid, [_hid]),
            ("H5Aget_space", _hid, [_hid]),
            ("H5Aread", ctypes.c_int, [_hid, _hid, ctypes.c_void_p]),
            ("H5Aclose", ctypes.c_int, [_hid]),
            ("H5Tis_variable_str", ctypes.c_int, [_hid]),
        ]:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        native_double = _hid.in_dll(lib, "H5T_NATIVE_DOUBLE_g").value
    except (OSError, AttributeError, ValueError):
        return None
    return lib, phil, native_double


def _mapped_libhdf5() -> list[str]:
    """The libhdf5 files mapped into this process (Linux), h5py having loaded one."""
    try:
        with open("/proc/self/maps") as maps:
            found = {line.split()[-1] for line in maps if "/libhdf5." in line or "/libhdf5-" in line}
    except OSError:
        return []
    return sorted(p for p in found if "_hl" not in os.path.basename(p))


def dataset_facts(loc_id: int, name: bytes | None = None, dset_id: int | None = None, *, dapl_id: int = 0,
                  stored: bool = False) -> DatasetFacts | None:
    """Shape, layout, blocks, filters and type of a dataset, or None where h5py must be asked.

    Either ``name`` (opened from ``loc_id`` with ``dapl_id`` and closed again) or an open
    ``dset_id``.  ``stored``: also whether nothing is stored (None when not asked).
    """
    found = _library()
    if found is None:
        return None
    lib, phil, _ = found
    with phil:
        own = dset_id is None
        did = lib.H5Dopen2(loc_id, name, dapl_id) if own else dset_id
        if did < 0:
            return None
        try:
            return _facts(lib, did, stored)
        finally:
            if own:
                lib.H5Dclose(did)


def _shape(lib, did: int, max_rank: int) -> tuple[int, ...] | None:
    """The dataset's shape, or None (no simple dataspace, more than ``max_rank`` axes, a failing call)."""
    sid = lib.H5Dget_space(did)
    if sid < 0:
        return None
    try:
        rank = lib.H5Sget_simple_extent_ndims(sid)
        if not 0 <= rank <= max_rank:
            return None
        dims = (_u64 * max(rank, 1))()
        if lib.H5Sget_simple_extent_dims(sid, dims, None) != rank:
            return None
    finally:
        lib.H5Sclose(sid)
    return tuple(int(d) for d in dims[:rank])


def _facts(lib, did: int, stored: bool) -> DatasetFacts | None:
    shape = _shape(lib, did, 32)
    if shape is None:
        return None
    rank = len(shape)
    pid = lib.H5Dget_create_plist(did)
    if pid < 0:
        return None
    try:
        layout = _LAYOUT.get(lib.H5Pget_layout(pid))
        if layout is None or lib.H5Pget_external_count(pid) != 0:  # external storage: h5py names its files
            return None
        chunks = None
        filters: list[int] = []
        if layout == "chunked":
            cdims = (_u64 * max(rank, 1))()
            if lib.H5Pget_chunk(pid, rank, cdims) != rank:
                return None
            chunks = tuple(int(c) for c in cdims[:rank])
            flags, nelmts, config = ctypes.c_uint(), ctypes.c_size_t(0), ctypes.c_uint()
            for i in range(lib.H5Pget_nfilters(pid)):
                nelmts.value = 0
                code = lib.H5Pget_filter2(pid, i, ctypes.byref(flags), ctypes.byref(nelmts), None, 0, None,
                                          ctypes.byref(config))
                if code < 0:
                    return None
                filters.append(int(code))
    finally:
        lib.H5Pclose(pid)
    tid = lib.H5Dget_type(did)
    if tid < 0:
        return None
    try:
        # Integers only (BDV's usual pixels): floats and anything else as h5py converts them.
        if lib.H5Tget_class(tid) != 0:  # H5T_INTEGER
            return None
        size, sign, order = lib.H5Tget_size(tid), lib.H5Tget_sign(tid), lib.H5Tget_order(tid)
        # Every bit significant: an integer of fewer bits (or shifted by an offset) in its bytes is
        # converted by HDF5 on reading; its chunks' raw bytes are not its values.
        full = lib.H5Tget_precision(tid) == 8 * size and lib.H5Tget_offset(tid) == 0
    finally:
        lib.H5Tclose(tid)
    if size not in (1, 2, 4, 8) or sign not in (0, 1) or order not in (0, 1) or not full:
        return None
    dtype = ("<" if order == 0 else ">") + ("i" if sign == 1 else "u") + str(size)
    empty = None
    if stored:
        if chunks is not None:
            n = _u64()
            if lib.H5Dget_num_chunks(did, 0, ctypes.byref(n)) < 0:  # 0: H5S_ALL
                return None
            empty = n.value == 0
        else:
            empty = lib.H5Dget_storage_size(did) == 0
        if empty:  # the fill value for the message: h5py's conversion
            return None
    buf = ctypes.create_string_buffer(4096)
    n = lib.H5Fget_name(did, buf, len(buf))
    if not 0 < n < len(buf):
        return None
    filename = os.path.abspath(os.fsdecode(buf.value))
    n = lib.H5Iget_name(did, buf, len(buf))
    if not 0 < n < len(buf):
        return None
    return DatasetFacts(shape, layout, chunks, tuple(filters), dtype, empty, filename, buf.value.decode())


#: ``H5L_info2_t`` is an enum (the link type, first), a bool, an int64, an enum and a 16-byte union: 40 bytes.
_LINK_INFO_BYTES = 64


def link_type(loc_id: int, name: bytes) -> int | None:
    """The type of the link at ``name`` (``H5L_TYPE_HARD`` 0, ``SOFT`` 1, ``EXTERNAL`` 64), or None
    when it cannot be told here (missing, an error: the caller asks h5py)."""
    found = _library()
    if found is None:
        return None
    lib, phil, _ = found
    info = ctypes.create_string_buffer(_LINK_INFO_BYTES)
    with phil:
        if lib.H5Lget_info2(loc_id, name, info, 0) < 0:  # 0: H5P_DEFAULT
            return None
    return ctypes.c_int.from_buffer(info).value


def read_factors(loc_id: int, name: bytes):
    """A small numeric dataset (BDV's ``resolutions``) read as float64, or None where h5py must be asked
    (missing, not a dataset, not integers or floats, more than 4,096 values).

    HDF5 converts the stored numbers to doubles as h5py's read then numpy's ``float64`` would.
    """
    import numpy as np

    found = _library()
    if found is None:
        return None
    lib, phil, native_double = found
    with phil:
        did = lib.H5Dopen2(loc_id, name, 0)
        if did < 0:
            return None
        try:
            shape = _shape(lib, did, 2)
            if not shape:  # None, or a scalar
                return None
            tid = lib.H5Dget_type(did)
            if tid < 0:
                return None
            try:
                kind = lib.H5Tget_class(tid)
            finally:
                lib.H5Tclose(tid)
            if kind not in (0, 1) or not 0 < int(np.prod(shape)) <= 4096:  # H5T_INTEGER, H5T_FLOAT
                return None
            values = np.empty(shape, dtype=np.float64)
            if lib.H5Dread(did, native_double, 0, 0, 0, values.ctypes.data) < 0:  # H5S_ALL, H5S_ALL, H5P_DEFAULT
                return None
            return values
        finally:
            lib.H5Dclose(did)


#: What :func:`read_name_attribute` returns for an object without the attribute.
ABSENT = object()


def read_name_attribute(loc_id: int, obj: bytes, attr: bytes):
    """A scalar fixed-length string attribute (BDV's ``dataType``) as text, :data:`ABSENT` if the
    object has no such attribute, or None where h5py must be asked (no such object, another type,
    a variable-length string, an error)."""
    found = _library()
    if found is None:
        return None
    lib, phil, _ = found
    with phil:
        exists = lib.H5Aexists_by_name(loc_id, obj, attr, 0)
        if exists < 0:
            return None
        if exists == 0:
            return ABSENT
        aid = lib.H5Aopen_by_name(loc_id, obj, attr, 0, 0)
        if aid < 0:
            return None
        try:
            sid = lib.H5Aget_space(aid)
            if sid < 0:
                return None
            try:
                if lib.H5Sget_simple_extent_ndims(sid) != 0:  # scalar only
                    return None
            finally:
                lib.H5Sclose(sid)
            tid = lib.H5Aget_type(aid)
            if tid < 0:
                return None
            try:
                if lib.H5Tget_class(tid) != 3 or lib.H5Tis_variable_str(tid) != 0:  # H5T_STRING, fixed length
                    return None
                size = lib.H5Tget_size(tid)
                if not 0 < size <= 256:
                    return None
                buf = ctypes.create_string_buffer(size)
                if lib.H5Aread(aid, tid, buf) < 0:
                    return None
            finally:
                lib.H5Tclose(tid)
        finally:
            lib.H5Aclose(aid)
    raw = buf.raw.rstrip(b"\0")  # as numpy's fixed-length bytes (h5py's reading) strip the padding
    if b"\0" in raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None
