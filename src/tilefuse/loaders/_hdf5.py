"""``bdv.hdf5``: BigDataViewer HDF5 files, single-file and partitioned.

Layout inside the file (bigdataviewer-core ``bdv/img/hdf5``)::

    s{setup:02d}/resolutions     float64 [levels][3]  downsampling factors, x y z
    s{setup:02d}/subdivisions    int32   [levels][3]  block shape, x y z
    t{tp:05d}/s{setup:02d}/{level}/cells              the pixels, stored z y x

Legacy files (no ``dataType`` attribute on ``s{setup:02d}``) store unsigned
16-bit data as int16; the loader reinterprets those bits as uint16.  Files
written since bigdataviewer-core 10.4.6 carry ``dataType`` (an N5 type name)
and store that type natively.

A partitioned project lists ``<partition>`` elements next to the master
``<hdf5>`` path; each partition file holds some timepoints x setups, possibly
under other ("mapped") ids.  Views covered by a partition are read straight
from the partition file; all other views are read through the master file,
whose external links h5py follows.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from lxml import etree

from .. import _storage
from .._blockcache import cached_block, planned_share
from .._inputs import check_regular_file
from ..errors import (
    ImageDataError,
    MissingDataError,
    ProjectFormatError,
    where,
)
from ..formats.bdv import BDV_DATA_TYPES, hdf5_cells, hdf5_setup
from ..formats.deflate import DeflateError, inflate
from ..project.paths import path_element, read_path_element
from ..project.views import ViewId
from . import register_loader
from ._hdf5_c import ABSENT, DatasetFacts, dataset_facts, link_type, read_factors, read_name_attribute
from .base import ImageLoader, Region, cached_entry, normalize_region

__all__ = ["Hdf5Loader", "Partition"]


@dataclass(frozen=True)
class Partition:
    """One partition file of a partitioned BDV HDF5 dataset.

    ``timepoints``/``setups`` are the project ids the file holds (every
    combination of them); ``timepoints_mapped``/``setups_mapped`` are the ids
    used inside the file, element by element.
    """

    path: Path
    timepoints: tuple[int, ...]
    setups: tuple[int, ...]
    timepoints_mapped: tuple[int, ...]
    setups_mapped: tuple[int, ...]

    def locate(self, view: ViewId) -> tuple[int, int] | None:
        """``(timepoint, setup)`` inside the partition file, or None if not covered."""
        try:
            t = self.timepoints.index(view.timepoint)
            s = self.setups.index(view.setup)
        except ValueError:
            return None
        return self.timepoints_mapped[t], self.setups_mapped[s]


@register_loader
class Hdf5Loader(ImageLoader):
    """Reads views from a BigDataViewer HDF5 file (``format="bdv.hdf5"``).

    Parameters
    ----------
    path
        The (master) ``.h5`` file.
    partitions
        Partition files for a partitioned dataset; empty for a single file.

    Notes
    -----
    A missing master file raises :class:`~tilefuse.errors.MissingDataError`
    from every method that needs the file, including :meth:`has_view`: the
    whole dataset is absent, which is an error rather than a missing view.
    A present file without a view's ``cells`` dataset gives ``has_view ==
    False``.
    """

    format = "bdv.hdf5"

    def __init__(self, path: str | os.PathLike, partitions: Iterable[Partition] = ()) -> None:
        super().__init__()
        self.path = Path(path)
        self.partitions = tuple(partitions)

    # -- construction ---------------------------------------------------
    @classmethod
    def for_path(
        cls, path: str | os.PathLike, partitions: Iterable[Partition] = ()
    ) -> Hdf5Loader:
        """A loader for an HDF5 file, without any XML (e.g. one just written)."""
        return cls(path, partitions)

    @classmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None = None) -> Hdf5Loader:
        base_dir = base_dir if _storage.is_url(base_dir) else Path(base_dir)  # a URL: refused by read_path_element
        path = read_path_element(element, "hdf5", base_dir, xml_path)
        partitions = [
            _partition_from_xml(p, base_dir, xml_path, i)
            for i, p in enumerate(element.findall("partition"))
        ]
        loader = cls(path, partitions)
        loader.xml_path = Path(xml_path) if xml_path is not None else None
        return loader

    def to_xml(self, base_dir: Path):
        elem = etree.Element("ImageLoader", format=self.format)
        elem.append(path_element("hdf5", self.path, base_dir))
        for part in self.partitions:
            p = etree.SubElement(elem, "partition")
            p.append(path_element("path", part.path, base_dir))
            # Java writes the *Mapped vectors only when they differ.
            _int_element(p, "timepoints", part.timepoints)
            if part.timepoints_mapped != part.timepoints:
                _int_element(p, "timepointsMapped", part.timepoints_mapped)
            _int_element(p, "setups", part.setups)
            if part.setups_mapped != part.setups:
                _int_element(p, "setupsMapped", part.setups_mapped)
        return elem

    # -- file access ------------------------------------------------------
    def _locate(self, view: ViewId) -> tuple[Path, int, int]:
        """The file holding ``view`` and the (timepoint, setup) ids inside it."""
        view = ViewId(*view)
        for part in self.partitions:
            ids = part.locate(view)
            if ids is not None:
                return part.path, ids[0], ids[1]
        return self.path, view.timepoint, view.setup

    def _anchors(self, path: Path) -> list[Path]:
        """The files whose identity stands for an open ``path``.

        The master file of a partitioned dataset reaches partitions through
        external links, so its handle is valid only while they are unchanged too.
        """
        return self.files() if path == self.path else [path]

    def _file(self, path: Path):
        """The open file (per process), opened on first use."""
        return self._state(path).file

    def _state_entry(self, path: Path):
        """What this process learnt of ``path`` (:class:`_FileState`, its open file included) and the identity
        of the files it reads.

        One identity check (a ``stat`` per anchor) per call: every metadata
        question and every read asks it once, then looks its answers up in the
        state's dicts.  Everything in it is dropped with the file's handles.
        """
        xml_path = self.xml_path
        anchors = self._anchors(path)
        # Keyed on the anchors too: a master read by two projects, one listing its partitions and one not,
        # has two identities; one entry for both was opened again on every read of either (and dropped the
        # file's decoded blocks each time).
        return cached_entry((str(path), ("h5state", *map(str, anchors))),
                            lambda: _FileState(lambda: _open_h5(path, xml_path)), anchors=anchors)

    def _state(self, path: Path) -> _FileState:
        return self._state_entry(path).value

    def _cells(self, view: ViewId, level: int) -> _Cells:
        """What reading the ``cells`` dataset of one level needs, or raise MissingDataError.

        Only its properties are kept, not the open dataset: HDF5 holds ~0.4 MB per open
        dataset (checking 2,500 views of 4 levels with their datasets kept took 990 MB
        instead of 105 MB).
        """
        path, tp, setup = self._locate(view)
        return self._cells_in(self._state(path), view, level, path, tp, setup)

    def _cells_in(self, state: _FileState, view: ViewId, level: int, path: Path, tp: int, setup: int) -> _Cells:
        key = ("cells", tp, setup, level)
        cells = state.values.get(key)
        if cells is None:
            name = hdf5_cells(tp, setup, level)
            if level > 0:  # only its properties are asked (level 0 is kept open for reading, below)
                facts = dataset_facts(state.file.id.id, name.encode(), dapl_id=_no_chunk_cache().id)
                if facts is not None:
                    cells = state.values[key] = _Cells.of_facts(facts)
                    return cells
            # Only its properties are asked: no chunk cache.
            dsid = _open_dataset_id(state.file, name, chunk_cache=False)
            if dsid is None:  # absent, a group, a dangling link...: the slower lookup says which
                dsid = self._find_cells(view, level).id
            # Whether anything is stored matters for level 0 only (see check_view); asked while it is open.
            cells = state.values[key] = _Cells.of_id(dsid, stored=level == 0)
            if level == 0:
                self._keep_for_reading(state, (tp, setup, level), dsid, cells)
        return cells

    def _find_cells(self, view: ViewId, level: int):
        import h5py

        path, tp, setup = self._locate(view)
        f = self._file(path)
        key = hdf5_cells(tp, setup, level)
        dsid = _open_dataset_id(f, key)
        if dsid is not None:
            return h5py.Dataset(dsid)
        try:
            ds = f.get(key)
        except KeyError:  # an external link whose target file is gone
            ds = None
        if ds is None:
            n = len(self._resolutions(view))
            if not 0 <= level < n:
                raise ImageDataError(
                    f"{path}: {ViewId(*view)} has {n} resolution level(s), level {level} requested"
                )
            raise MissingDataError(
                f"{path}: {ViewId(*view)} has no pixel data (dataset {key} is missing)"
            )
        if not _is_dataset(ds):
            raise ImageDataError(f"{path}: {ViewId(*view)}: {key} is a {type(ds).__name__}, not a dataset")
        return ds

    def _resolutions(self, view: ViewId) -> np.ndarray:
        path, tp, setup = self._locate(view)
        return self._resolutions_in(self._state(path), view, path, setup).copy()

    def _resolutions_in(self, state: _FileState, view: ViewId, path: Path, setup: int) -> np.ndarray:
        """The setup's factors ``[levels][3]`` (x y z), read once per process: not to be modified."""
        key = ("resolutions", setup)
        res = state.values.get(key)
        if res is None:
            res = state.values[key] = self._read_resolutions(view, state.file)
            res.flags.writeable = False
        return res

    def _read_resolutions(self, view: ViewId, f) -> np.ndarray:
        import h5py

        path, tp, setup = self._locate(view)
        key = f"{hdf5_setup(setup)}/resolutions"
        values = read_factors(f.id.id, key.encode())  # from libhdf5 without the GIL; None: h5py's path below
        if values is not None and (values.shape[-1] == 3 and (values.ndim == 1 or values.shape[0] >= 1)):
            return values.reshape(-1, 3)
        dsid = _open_dataset_id(f, key, chunk_cache=False)  # `key in f` walks the groups: ~0.4 ms per setup
        if dsid is None:
            try:
                present = key in f
            except KeyError:  # an external link whose target file is gone
                present = False
            if not present:
                raise MissingDataError(f"{path}: {ViewId(*view)}: dataset {key} is missing")
            ds = f[key]
            if not _is_dataset(ds):
                raise ImageDataError(
                    f"{path}: {ViewId(*view)}: {key} must be a numeric [levels][3] dataset, "
                    f"found {type(ds).__name__}"
                )
            dsid = ds.id
        # BDV writes double[levels][3]; anything else would be silently reshaped into other factors.
        shape, dtype = dsid.shape, dsid.dtype
        if dtype.kind not in "iuf" or not ((len(shape) == 2 and shape[1] == 3 and shape[0] >= 1) or shape == (3,)):
            raise ImageDataError(
                f"{path}: {ViewId(*view)}: {key} must be a numeric [levels][3] dataset, found {dtype} {shape}"
            )
        # The low-level read (~4x cheaper than h5py's Dataset[()]) into the stored type, converted by numpy.
        values = np.empty(shape, dtype=dtype)
        dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
        return np.asarray(values, dtype=np.float64).reshape(-1, 3)

    # -- metadata ---------------------------------------------------------
    def has_view(self, view: ViewId) -> bool:
        path, tp, setup = self._locate(view)
        state = self._state(path)
        key = ("has", tp, setup)
        has = state.values.get(key)
        if has is None:
            f = state.file
            name = hdf5_cells(tp, setup, 0)
            dsid = _open_dataset_id(f, name, chunk_cache=False)
            if dsid is not None:  # the usual case, without `in` walking the groups
                has = True
                # Its properties, while it is open: the check of the view that follows needs them.
                cells = state.values.setdefault(("cells", tp, setup, 0), _Cells.of_id(dsid, stored=True))
                self._keep_for_reading(state, (tp, setup, 0), dsid, cells)
            else:
                try:
                    has = name in f
                except KeyError:  # a dangling external link
                    has = False
            state.values[key] = has
        return has

    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        return [tuple(float(v) for v in row[::-1]) for row in self._resolutions(view)]

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        return self._cells(view, level).shape

    def dtype(self, view: ViewId) -> np.dtype:
        path, tp, setup = self._locate(view)
        return self._dtype_in(self._state(path), view, path, tp, setup)

    def _dtype_in(self, state: _FileState, view: ViewId, path: Path, tp: int, setup: int) -> np.dtype:
        key = ("dtype", tp, setup)
        dtype = state.values.get(key)
        if dtype is None:
            dtype = state.values[key] = self._read_dtype(state, view, path, tp, setup)
        return dtype

    def _read_dtype(self, state: _FileState, view: ViewId, path: Path, tp: int, setup: int) -> np.dtype:
        key = ("dataType", setup)  # shared by the setup's timepoints
        if key not in state.values:
            state.values[key] = _read_data_type(state.file, hdf5_setup(setup))
        name = state.values[key]
        if name is not None:
            if name not in BDV_DATA_TYPES:
                raise ImageDataError(
                    f"{path}: group s{setup:02d} has unknown dataType {name!r} "
                    f"(expected one of {', '.join(BDV_DATA_TYPES)})"
                )
            return np.dtype(name)
        # Legacy BDV: no attribute; int16 storage means uint16 pixels.
        try:
            stored = self._cells_in(state, view, 0, path, tp, setup).dtype
        except MissingDataError:
            return np.dtype(np.uint16)
        # In native byte order: a big-endian int16 is legacy uint16 too, and pixels are handed out native.
        stored = stored.newbyteorder("=")
        return np.dtype(np.uint16) if stored == np.int16 else stored

    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        cells = self._cells(view, level)
        if cells.chunks is not None:
            return cells.chunks
        # Contiguous storage: fall back on BDV's declared block shape.
        path, _, setup = self._locate(view)
        key = f"{hdf5_setup(setup)}/subdivisions"
        sub = self._file(path).get(key)
        if not _is_dataset(sub) or sub.dtype.kind not in "iu" or sub.size < 3 * (level + 1):
            raise ImageDataError(
                f"{path}: {ViewId(*view)} level {level} is stored contiguously and {key} gives no "
                f"integer block shape for it"
            )
        return tuple(int(c) for c in np.asarray(sub[()]).reshape(-1, 3)[level][::-1])

    def view_layout(self, view: ViewId):
        """Factors, dtype, shapes and blocks of every level from what :meth:`check_view` kept: one identity check.

        None when any of it is not at hand (the caller then asks method by method, which raises in order).
        """
        try:
            view = ViewId(*view)
            path, tp, setup = self._locate(view)
            state = self._state(path)
            res = state.values.get(("resolutions", setup))
            dtype = state.values.get(("dtype", tp, setup))
            cells = [state.values.get(("cells", tp, setup, level)) for level in range(0 if res is None else len(res))]
            if res is None or dtype is None or not all(c is not None and c.chunks is not None for c in cells):
                return None
            return ([tuple(float(v) for v in row[::-1]) for row in res], dtype,
                    [c.shape for c in cells], [c.chunks for c in cells])
        except Exception:  # noqa: BLE001 - the caller's method-by-method path reports it
            return None

    def read(self, view: ViewId, level: int, region: Region, *, cache: bool | Region = False) -> np.ndarray:
        path, tp, setup = self._locate(view)
        entry = self._state_entry(path)
        state = entry.value
        # The open dataset and its properties, looked up together: one identity check per read.
        raw = state.values.get(("raw", tp, setup, level))
        if raw is not None:  # where its chunks lie is known: no dataset to open (~0.1 ms of GIL saved per open)
            ds, cells = None, state.values[("cells", tp, setup, level)]
        else:
            reader = state.open.get((tp, setup, level), lambda: self._open_for_reading(view, level))
            if not reader.indexed:  # where its chunks lie, on its first read (not for views only checked)
                reader.raw = _RawChunks.of(reader.ds, reader.cells, state)
                reader.indexed = True
                # Kept for the next reads (fusion after registration) when small: ~0.2 KB per chunk.
                if reader.raw is not None and not reader.raw.masked and len(reader.raw.index) <= _KEEP_INDEX:
                    state.values[("raw", tp, setup, level)] = reader.raw
            ds, cells, raw = reader.ds, reader.cells, reader.raw
        want = state.values.get(("dtype", tp, setup))
        if want is None:
            want = self._dtype_in(state, view, path, tp, setup)
        region = normalize_region(region, cells.shape)
        # Only the chunks the region touches are read and decompressed.  Cached blocks are keyed on
        # the identity of the files when read (the dataset is dropped with the handle when they change).
        identity = entry.identity if cache else None
        try:
            arr = _read_region(ds, region, identity=identity, cells=cells,
                               plan=cache if isinstance(cache, tuple) else None, raw=raw)
        except (OSError, *DeflateError) as exc:  # a damaged chunk or truncated file
            raise ImageDataError(
                f"{path}: cannot read {ViewId(*view)} level {level} from {cells.name} ({exc})"
            ) from exc
        if not arr.dtype.isnative:
            # Big-endian storage: swapped to native first, else the reinterpretation below (or the caller)
            # would read swapped bytes as pixels (a >u2 dataset declared uint16 read as garbage, exit 0).
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.dtype != want:
            if arr.dtype.itemsize != want.itemsize or arr.dtype.kind not in "iu":
                raise ImageDataError(
                    f"{path}: {ViewId(*view)} is stored as {arr.dtype} but declared {want}"
                )
            # Same-width integers: reinterpret the bits (legacy int16 -> uint16).
            arr = arr.view(want)
        return arr

    def _open_for_reading(self, view: ViewId, level: int) -> _Reader:
        """One level's dataset opened for :meth:`read` (kept in :class:`_OpenDatasets`)."""
        import h5py

        cells = self._cells(view, level)
        path, tp, setup = self._locate(view)
        # Chunks decoded here are read raw: HDF5's chunk cache would only cost memory and time.
        dsid = _open_dataset_id(self._file(path), hdf5_cells(tp, setup, level), chunk_cache=cells.codec is None)
        return _Reader(h5py.Dataset(dsid) if dsid is not None else self._find_cells(view, level), cells)

    @staticmethod
    def _keep_for_reading(state: _FileState, key: tuple[int, int, int], dsid, cells: _Cells) -> None:
        """Keep a level just opened to check it open for the reads that usually follow in the same task
        (registration checks, then reads, each tile): opening it again would cost as much as checking it."""
        import h5py

        if cells.codec is not None:  # opened without chunk cache: fine for raw chunk reads only
            state.open.put(key, lambda: _Reader(h5py.Dataset(dsid), cells))

    def check_view(self, view: ViewId) -> None:
        """Every level's ``cells`` a 3D dataset in the file; no data outside the files the XML lists.

        HDF5 can store a dataset's bytes in any other file (*external storage*,
        virtual datasets) or link to objects of other files (*external links*).
        BDV uses only external links from a partitioned master file to its
        partitions, so anything else would read pixels the project does not
        name, and is refused unless ``TILEFUSE_ALLOW_EXTERNAL_DATA=1``.

        Each level's dataset is opened once per process: its properties (those
        checked here and those reads need) are kept in the file's state, the
        dataset is closed.  Links already found not to be external are not
        asked again for the next view of the same file.
        """
        from .validate import ALLOW_EXTERNAL_ENV, allow_external_data

        view = ViewId(*view)
        path, tp, setup = self._locate(view)
        state = self._state(path)
        f = state.file
        n_levels = len(self._resolutions_in(state, view, path, setup))
        external_ok = allow_external_data()
        if not external_ok:
            listed = {os.path.normpath(p.absolute()) for p in self.files()}
            for key in [f"{hdf5_setup(setup)}/resolutions"] + [hdf5_cells(tp, setup, i) for i in range(n_levels)]:
                _check_links(f, path, key, listed, view, state.not_external)
        first = None
        for level in range(n_levels):
            cells = self._cells_in(state, view, level, path, tp, setup)
            first = cells if first is None else first
            if len(cells.shape) != 3:
                raise ImageDataError(f"{path}: {view}: {cells.name} is {len(cells.shape)}D, expected 3D (z y x)")
            if external_ok:
                continue
            if not _listed(cells.filename, listed):  # reached through a soft link to an external link, say
                raise ImageDataError(
                    f"{path}: {view}: {cells.name} lies in {cells.filename}, a file the project does not list "
                    f"(reached through links); refused (set {ALLOW_EXTERNAL_ENV}=1 to allow)"
                )
            if cells.external:
                raise ImageDataError(
                    f"{path}: {view}: {cells.name} keeps its bytes in other file(s) "
                    f"({', '.join(cells.external)}: HDF5 external storage); refused because "
                    f"it reads files the project does not list (set {ALLOW_EXTERNAL_ENV}=1 to allow)"
                )
            if cells.virtual:
                raise ImageDataError(
                    f"{path}: {view}: {cells.name} is a virtual dataset mapping other files; refused because "
                    f"it reads files the project does not list (set {ALLOW_EXTERNAL_ENV}=1 to allow)"
                )
        # Pixels stored in another type than the declared one would be misread (same-width
        # integers are fine: legacy BDV stores uint16 as int16).
        cells = first if first is not None else self._cells_in(state, view, 0, path, tp, setup)
        stored, want = cells.dtype.newbyteorder("="), self._dtype_in(state, view, path, tp, setup)
        if stored != want and not (stored.kind in "iu" and want.kind in "iu" and stored.itemsize == want.itemsize):
            raise ImageDataError(f"{path}: {view} is stored as {stored} but declared {want}")
        if cells.empty:
            from .validate import warn_reads_as_fill

            warn_reads_as_fill(f"{path}: {cells.name}", view, cells.fillvalue)

    def files(self) -> list[Path]:
        return [self.path, *(p.path for p in self.partitions)]

    def view_files(self, view: ViewId) -> list[Path]:
        located = self._locate(view)[0]
        # The master file too: its external links decide which file a view is read from.
        return [located] if located == self.path else [located, self.path]

    def __repr__(self) -> str:
        parts = f", partitions={len(self.partitions)}" if self.partitions else ""
        return f"Hdf5Loader({str(self.path)!r}{parts})"

    def token(self):
        return (type(self).__name__, str(self.path), self.partitions)


#: HDF5's filter ids (``H5Z_FILTER_DEFLATE``, ``H5Z_FILTER_SHUFFLE``): the encodings decoded here.
_FILTER_DEFLATE, _FILTER_SHUFFLE = 1, 2

#: The filter pipelines (in HDF5's order, applied first on writing listed first) decoded here: BDV's.
#: Deflate listed before shuffle (valid HDF5, shuffled after compressing) must be undone in the
#: other order than :func:`_decode_chunk`'s, so h5py decodes it (it was refused as a damaged chunk).
_OWN_PIPELINES = ((), (_FILTER_DEFLATE,), (_FILTER_SHUFFLE,), (_FILTER_SHUFFLE, _FILTER_DEFLATE))

#: Most chunks of a dataset whose index (:class:`_RawChunks`) is kept per process once read (~0.2 KB each):
#: a 2D tile has 16 at level 0; a large 3D volume's stays with its open dataset only.
_KEEP_INDEX = 4096

#: ``cells`` datasets kept open per file by :class:`_OpenDatasets`.
_OPEN_DATASETS = 256


class _OpenDatasets:
    """The ``cells`` datasets of one file read last, kept open (per process; dropped with the file's handles).

    Opening a dataset costs ~0.1 ms (``h5d.open`` and h5py's wrapper), as much
    as decoding one 128x128 chunk, and a mosaic's tiles are read several times
    close together (four overlap strips each for the pairs, then fusion).
    HDF5 holds ~30-80 KB per open dataset, so only the last
    :data:`_OPEN_DATASETS` stay open (~20 MB), never all of them (see :class:`_Cells`).
    """

    def __init__(self) -> None:
        import threading
        from collections import OrderedDict

        self._open: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, opener):
        with self._lock:
            ds = self._open.get(key)
            if ds is not None:
                self._open.move_to_end(key)
                return ds
        ds = opener()
        with self._lock:
            self._open[key] = ds
            while len(self._open) > _OPEN_DATASETS:
                self._open.popitem(last=False)  # closed when no reader holds it any more
        return ds

    def put(self, key, opener) -> None:
        """Keep ``opener()`` under ``key`` unless something is kept there already."""
        with self._lock:
            if key in self._open:
                return
        value = opener()
        with self._lock:
            self._open.setdefault(key, value)
            while len(self._open) > _OPEN_DATASETS:
                self._open.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            self._open.clear()


class _Reader:
    """One open ``cells`` dataset, its properties, and where its chunks lie (:class:`_RawChunks`, once read)."""

    __slots__ = ("ds", "cells", "raw", "indexed")

    def __init__(self, ds, cells: _Cells) -> None:
        self.ds, self.cells = ds, cells
        self.raw: _RawChunks | None = None
        self.indexed = False


class _FileState:
    """What one process learnt of one HDF5 file, and the open file; dropped (closed) with the file's handles.

    ``file``: the h5py File, opened on first use.  ``values``: answers read
    from it once, keyed like ``("cells", tp, setup, level)``,
    ``("resolutions", setup)``, ``("dtype", tp, setup)``; only successes are
    kept (a failure is asked again).  ``not_external``: link paths found not to
    be external links.  ``open``: the datasets read last (:class:`_OpenDatasets`).

    Why one object per file instead of one cache entry per answer: each entry is valid only
    while the file keeps its identity, which costs a ``stat`` per lookup; checking one view
    asked ~20 of them, reading a region 3-4.
    """

    def __init__(self, opener) -> None:
        import threading

        self._opener = opener
        self._file = None
        self._lock = threading.Lock()
        self.values: dict = {}
        self.not_external: set[str] = set()
        self.open = _OpenDatasets()
        self._raw: dict = {}
        self._verified: dict[str, bool] = {}

    @property
    def file(self):
        f = self._file
        if f is None:
            with self._lock:  # one handle per file and process, even when threads ask at once
                if self._file is None:
                    self._file = self._opener()
                f = self._file
        return f

    def raw_file(self, filename: str):
        """``filename`` opened for reading chunk bytes by offset (:class:`_RawChunks`), or None where HDF5's
        addresses may not be file offsets (a user block, a driver other than a plain file)."""
        if filename not in self._raw:
            file = None
            try:
                import h5py

                owner = self.file if os.path.abspath(self.file.filename) == filename else None
                fid = owner.id if owner is not None else h5py.h5f.open(os.fsencode(filename), h5py.h5f.ACC_RDONLY)
                plain = (fid.get_create_plist().get_userblock() == 0
                         and fid.get_access_plist().get_driver() == h5py.h5fd.SEC2)
                if owner is None:
                    fid.close()
                if plain:
                    file = open(filename, "rb", buffering=0)  # noqa: SIM115 - kept open while readers hold it
            except Exception:  # noqa: BLE001 - h5py's reads then
                file = None
            self._raw[filename] = file
        return self._raw[filename]

    def raw_verified(self, filename: str, file, dsid, index: dict) -> bool:
        """Whether byte offsets from HDF5's chunk index read the same bytes as HDF5 in ``filename``
        (asked once per file, on one chunk: the offsets are the file's own)."""
        verified = self._verified.get(filename)
        if verified is None:
            offset, info = next(iter(index.items()))
            verified = os.pread(file.fileno(), info.size, info.byte_offset) == dsid.read_direct_chunk(offset)[1]
            self._verified[filename] = verified
        return verified

    def close(self) -> None:
        self.open.close()
        self._raw = {}  # each file closes when the last reader holding it is done
        with self._lock:
            f, self._file = self._file, None
        if f is not None:
            f.close()


@dataclass(frozen=True)
class _Cells:
    """The properties of a ``cells`` dataset, each read from HDF5 once.

    ``external``: the files of its HDF5 external storage; ``virtual``: a
    virtual dataset; ``empty``: nothing stored (reads as ``fillvalue``), asked
    for level 0 only (False for the others).
    """

    shape: tuple[int, ...]
    chunks: tuple[int, ...] | None
    dtype: np.dtype
    codec: tuple[bool, bool] | None
    filename: str
    name: str
    external: tuple[str, ...] = ()
    virtual: bool = False
    empty: bool = False
    fillvalue: object = None

    @classmethod
    def of(cls, ds) -> _Cells:
        return cls.of_id(ds.id)

    @classmethod
    def of_facts(cls, facts: DatasetFacts) -> _Cells:
        """From what :func:`~._hdf5_c.dataset_facts` found (no external storage, something stored)."""
        codec = None
        if facts.chunks is not None and tuple(facts.filters) in _OWN_PIPELINES:
            codec = _FILTER_DEFLATE in facts.filters, _FILTER_SHUFFLE in facts.filters
        return cls(facts.shape, facts.chunks, np.dtype(facts.dtype), codec, facts.filename, facts.name,
                   (), facts.layout == "virtual", bool(facts.empty), None)

    @classmethod
    def of_id(cls, dsid, *, stored: bool = False) -> _Cells:
        """From a low-level dataset id; ``stored``: also ask whether anything is stored (one index lookup).

        Asked of libhdf5 directly where it can (:mod:`._hdf5_c`: no GIL, no Python object per
        answer), else by low-level h5py calls on one creation property list: h5py's ``Dataset``
        wrapper and its properties (``chunks``, ``compression``, ``external``, ``is_virtual``...)
        each fetch and parse it again, ~0.1 ms per dataset in all.
        """
        import h5py

        facts = dataset_facts(0, dset_id=dsid.id, stored=stored)
        if facts is not None:
            return cls.of_facts(facts)

        dcpl = dsid.get_create_plist()
        layout = dcpl.get_layout()
        chunks = tuple(int(c) for c in dcpl.get_chunk()) if layout == h5py.h5d.CHUNKED else None
        codec = None
        if chunks is not None:
            # Only BDV's own encodings (deflate, optionally after byte shuffle) are decoded here; anything else
            # (fletcher32, scale-offset, lzf, szip, plugins) goes through h5py.
            filters = tuple(dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters()))
            if filters in _OWN_PIPELINES and _full_precision(dsid):
                codec = h5py.h5z.FILTER_DEFLATE in filters, h5py.h5z.FILTER_SHUFFLE in filters
        external = tuple(os.fsdecode(dcpl.get_external(i)[0]) for i in range(dcpl.get_external_count()))
        virtual = layout == h5py.h5d.VIRTUAL
        dtype = dsid.dtype
        empty, fill = False, None
        if stored and not (external or virtual):
            empty = (dsid.get_num_chunks() if chunks is not None else dsid.get_storage_size()) == 0
            if empty:
                value = np.zeros((1,), dtype=dtype)
                dcpl.get_fill_value(value)
                fill = value[0]
        # h5f.get_name: the file holding the dataset (a partition, through an external link) without
        # building an h5py File object (~0.07 ms)
        return cls(tuple(int(n) for n in dsid.shape), chunks, dtype, codec,
                   os.path.abspath(os.fsdecode(h5py.h5f.get_name(dsid))), h5py.h5i.get_name(dsid).decode(),
                   external, virtual, empty, fill)


def _full_precision(dsid) -> bool:
    """Whether every bit of the stored numbers is significant, so that a chunk's decoded bytes are its
    values.  A type of fewer bits, or shifted by an offset (e.g. 12 bits at offset 4 in 16), is converted
    by HDF5 on reading: decoded here it read as other numbers (exit 0, on main too).
    """
    import h5py

    tid = dsid.get_type()
    if not isinstance(tid, h5py.h5t.TypeAtomicID):
        return False
    return tid.get_precision() == 8 * tid.get_size() and tid.get_offset() == 0


def _read_data_type(f, group: str) -> str | None:
    """The ``dataType`` attribute of a setup's group, or None if it has none (legacy BDV files).

    Low-level calls for a fixed-length string (~3x cheaper than ``f.get(group).attrs.get``);
    h5py's high-level path for anything else, which decodes every string kind.
    """
    import h5py

    found = read_name_attribute(f.id.id, group.encode(), b"dataType")  # libhdf5 without the GIL
    if found is not None:
        return None if found is ABSENT else found
    try:
        obj = h5py.h5o.open(f.id, group.encode())
    except Exception:  # noqa: BLE001 - absent (legacy) or unusual: h5py's lookup below decides
        obj = None
    if obj is not None:
        if not h5py.h5a.exists(obj, b"dataType"):
            return None
        attr = h5py.h5a.open(obj, b"dataType")
        if attr.dtype.kind == "S" and attr.shape == ():
            value = np.empty((), dtype=attr.dtype)
            attr.read(value)
            return value.item().decode()
    node = f.get(group)
    name = node.attrs.get("dataType") if node is not None else None
    if name is None:
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


class _RawChunks:
    """Where each stored chunk of one dataset lies in its file, to read its bytes without h5py.

    Why: ``read_direct_chunk`` holds the GIL (and h5py's lock) while HDF5 looks
    the chunk up and reads it, ~25 us per 128x128 chunk: with 16 chunks per
    tile's overlaps and more for fusion, dask's threads queued on it.  The
    dataset's chunk index is read once (``chunk_iter``: one HDF5 call for all
    chunks), then each chunk is one ``os.pread`` of the file, which releases
    the GIL.  Used only where HDF5's addresses are plain file offsets: a
    plain file without user block, whose first chunk read reads identically
    both ways (:meth:`_FileState.raw_verified`); else (or without
    ``chunk_iter``, h5py < 3.8) reads go through ``read_direct_chunk``.
    """

    __slots__ = ("file", "index", "fill", "masked")

    def __init__(self, file, index: dict, fill, masked: bool) -> None:
        self.file = file  # kept open while a reader holds this (closing would let the fd number be reused)
        self.index = index  # chunk offset -> h5py StoreInfo (byte offset, size, filter mask)
        self.fill = fill  # what a chunk never written reads as
        self.masked = masked  # some chunk skipped a filter: HDF5 must decode it (the dataset is needed)

    @classmethod
    def of(cls, ds, cells: _Cells, state: _FileState) -> _RawChunks | None:
        dsid = ds.id
        if cells.codec is None or not hasattr(dsid, "chunk_iter"):
            return None
        file = state.raw_file(cells.filename)
        if file is None:
            return None
        index: dict = {}

        def add(info) -> None:  # h5py's StoreInfo: chunk_offset, filter_mask, byte_offset, size
            index[info.chunk_offset] = info

        try:
            dsid.chunk_iter(add)
            if index and not state.raw_verified(cells.filename, file, dsid, index):
                return None
            # Asked of h5py only when some chunk was never written (~0.1 ms: h5py parses the creation list again).
            every = math.prod(-(-n // c) for n, c in zip(cells.shape, cells.chunks))
            fill = ds.fillvalue if len(index) < every else None
        except Exception:  # noqa: BLE001 - whatever it is, read_direct_chunk reports it per chunk
            return None
        return cls(file, index, fill, any(info.filter_mask for info in index.values()))

    def read(self, offset) -> tuple[int, bytes] | None:
        """``(filter mask, raw bytes)`` of the chunk at ``offset``, None if it was never written."""
        info = self.index.get(offset)
        if info is None:
            return None
        raw = os.pread(self.file.fileno(), info.size, info.byte_offset)
        if len(raw) != info.size:
            raise OSError(f"{info.size} bytes expected at byte {info.byte_offset}, the file ends after {len(raw)}")
        return info.filter_mask, raw


def _read_region(ds, region, *, identity=None, cells: _Cells | None = None,
                 plan: tuple[tuple[slice, ...], ...] | None = None, raw: _RawChunks | None = None) -> np.ndarray:
    """Read a region of a chunked dataset, decompressing chunks outside h5py's lock.

    h5py decompresses inside its global lock, so with several dask threads
    reading deflate-compressed BDV files, decompression runs on one core at a
    time.  Reading the raw chunks (``read_direct_chunk``, cheap) and inflating
    them ourselves (:mod:`tilefuse.formats.deflate` releases the GIL) lets the threads decompress
    in parallel: measured on 2 cores, reading all 16 views of 128x512x512 (gzip,
    32x128x128 blocks) 7.0 -> 4.2 s, and the 3D fusion + OME-Zarr write 25.4 -> 21.0 s.
    Small 2D blocks (1x128x128) gain nothing and lose nothing.

    With an ``identity`` (that of the open file, see :func:`~.base.cached_entry`) decoded
    chunks go through the per-process block cache, valid for that identity only.  ``cells``
    (the dataset's properties, read once per process) saves asking h5py for them again.
    ``plan``: every region that reads like this one will ask for (``loader.read(cache=regions)``,
    fusion's chunks); the number of them that meet a block is the number of reads
    :func:`~tilefuse._blockcache.cached_block` counts down before letting the block go.
    ``raw``: where the chunks lie in the file (:class:`_RawChunks`), to read them without h5py.
    """
    cells = cells if cells is not None else _Cells.of(ds)
    codec = cells.codec
    if codec is None:
        return ds[region]
    deflate, shuffle = codec
    chunks = cells.chunks
    dtype = cells.dtype
    shape = tuple(s.stop - s.start for s in region)
    out = np.empty(shape, dtype=dtype)
    if 0 in shape:
        return out
    # Per axis, each chunk the region meets: (its offset, the part inside it, where that part goes); the
    # chunks are their combinations (slices worked out once per axis, not once per chunk and axis).
    axes = []
    for s, c in zip(region, chunks):
        pieces = []
        for o in range(s.start // c * c, s.stop, c):
            a, b = max(s.start - o, 0), min(s.stop - o, c)
            pieces.append((o, slice(a, b), slice(o + a - s.start, o + b - s.start)))
        axes.append(pieces)
    cache = identity is not None
    key = (cells.filename, cells.name) if cache else None  # dropped with the file's handle
    for parts in product(*axes):
        offset, src, dst = zip(*parts)
        if cache:
            share = planned_share(plan, offset, chunks)  # one of the planned reads that meet this block
            block = cached_block(key + (offset,), lambda offset=offset: _decode_chunk(ds, offset, deflate, shuffle,
                                                                                      cells, raw),
                                 identity=identity, share=share)
        else:
            block = _decode_chunk(ds, offset, deflate, shuffle, cells, raw)
        out[dst] = block[src]
    return out


def _decode_chunk(ds, offset, deflate: bool, shuffle: bool, cells: _Cells | None = None,
                  chunk_file: _RawChunks | None = None) -> np.ndarray:
    """The whole chunk at ``offset`` (chunk-shaped, edge chunks padded as HDF5 stores them).

    Its bytes are read through ``chunk_file`` when given (without the GIL), else by h5py.
    """
    chunks, dtype = (cells.chunks, cells.dtype) if cells is not None else (ds.chunks, ds.dtype)
    n_items = math.prod(chunks)

    def where_() -> str:  # only for messages: ds.file builds a File object (~0.01 ms, 16 times per 2D tile)
        if ds is None:
            return f"{cells.filename}: {cells.name} chunk at {offset}"
        return f"{ds.file.filename}: {ds.name} chunk at {offset}"

    try:
        if chunk_file is not None:
            found = chunk_file.read(offset)
            if found is None:  # never written: reads as the fill value
                return np.full(chunks, chunk_file.fill, dtype=dtype)
            mask, raw = found
        else:
            mask, raw = ds.id.read_direct_chunk(offset)
    except (KeyError, RuntimeError, ValueError, OSError, MemoryError) as exc:  # MemoryError: some absent chunks
        # Asked only now (a second index lookup per chunk otherwise): a chunk never written reads as the
        # fill value, one allocated but unreadable is an error.
        if chunk_file is None and ds.id.get_chunk_info_by_coord(offset).byte_offset is None:
            return np.full(chunks, ds.fillvalue, dtype=dtype)
        raise ImageDataError(f"{where_()}: cannot read the chunk ({exc})") from exc
    if mask:  # a filter was skipped for this chunk: let HDF5 decode it
        edge = tuple(slice(o, min(o + c, n)) for o, c, n in zip(offset, chunks, ds.shape))
        block = np.zeros(chunks, dtype=dtype)
        block[tuple(slice(0, s.stop - s.start) for s in edge)] = ds[edge]
        return block
    data = inflate(raw) if deflate else raw
    # Exactly one chunk of samples: more or fewer bytes means the chunk is not what the dataset says.
    if len(data) != n_items * dtype.itemsize:
        raise ImageDataError(
            f"{where_()}: decodes to {len(data)} bytes, expected {n_items * dtype.itemsize} "
            f"({'x'.join(map(str, chunks))} {dtype}); the file is damaged"
        )
    if shuffle and dtype.itemsize > 1:
        data = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, n_items).T.tobytes()
    return np.frombuffer(data, dtype=dtype, count=n_items).reshape(chunks)



def _open_dataset_id(f, key: str, *, chunk_cache: bool = True):
    """The low-level id of dataset ``key`` opened directly, or None when that fails (absent, a group, a
    dangling link: the caller's slower lookup says which).

    ``h5d.open`` is ~5x faster than ``f.get`` or ``key in f``, which check each path component in turn.
    ``chunk_cache=False`` opens it without HDF5's chunk cache, for datasets whose chunks are read raw
    (``read_direct_chunk``) or not at all: setting the cache up (a zeroed table of 521 slots) and
    tearing it down took half of each open (4 levels of a 2D tile: 0.36 -> 0.19 ms).
    """
    import h5py

    try:
        return h5py.h5d.open(f.id, key.encode(), dapl=None if chunk_cache else _no_chunk_cache())
    except Exception:  # noqa: BLE001 - whatever it is, the caller's checks say what is wrong
        return None


@functools.lru_cache(maxsize=1)
def _no_chunk_cache():
    """A dataset access property list without chunk cache (made once per process)."""
    import h5py

    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(0, 0, 0.75)
    return dapl


def _listed(filename: str, listed: set[str]) -> bool:
    """Whether ``filename`` (the file HDF5 found a dataset in) is one of the ``listed`` files, by name or,
    failing that, as the same file on disk (another path to it)."""
    if filename in listed:
        return True
    for other in listed:
        try:
            if os.path.samefile(filename, other):
                return True
        except OSError:
            continue
    return False


def _is_dataset(obj) -> bool:
    import h5py

    return isinstance(obj, h5py.Dataset)


def _check_links(f, path: Path, key: str, listed: set[str], view: ViewId,
                 not_external: set[str] | None = None) -> None:
    """Refuse an external link on the way to ``key`` that leads to a file the XML does not list.

    ``not_external``: paths found not to be external links (by an earlier call on the same open
    file): skipped, and those found now are added.  Only that answer is shared, as whether an
    external link is allowed depends on the files the loader lists.
    """
    import h5py

    from .validate import ALLOW_EXTERNAL_ENV

    parts = key.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if not_external is not None and sub in not_external:
            continue
        # The link's type alone first, from libhdf5 without the GIL where it can (else h5py's low-level
        # call): ~6x faster than f.get(getlink=True), which checks the path.
        kind = link_type(f.id.id, sub.encode())
        if kind is None:
            try:
                kind = f.id.links.get_info(sub.encode()).type
            except Exception:  # noqa: BLE001 - missing or unusual: f.get below decides, as before
                kind = None
        if kind is not None and kind != h5py.h5l.TYPE_EXTERNAL:
            if not_external is not None:
                not_external.add(sub)
            continue
        try:
            link = f.get(sub, getlink=True)
        except (KeyError, OSError):  # a dangling link further up: reported as missing data later
            return
        if isinstance(link, h5py.ExternalLink):
            target = Path(link.filename)
            if not target.is_absolute():
                target = path.parent / target
            if os.path.normpath(target.absolute()) not in listed:
                raise ImageDataError(
                    f"{path}: {view}: {sub} is an external link to {link.filename}:{link.path}, a file "
                    f"the project does not list; refused (set {ALLOW_EXTERNAL_ENV}=1 to allow)"
                )


def _open_h5(path: Path, xml_path: Path | None):
    import h5py

    # A FIFO would block h5py forever, a device would be read without end.
    if not check_regular_file(path, "HDF5 file"):
        context = where(xml_path, '<ImageLoader format="bdv.hdf5">')
        raise MissingDataError(f"{context}: HDF5 file {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ImageDataError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _int_element(parent, tag: str, values: Sequence[int]) -> None:
    etree.SubElement(parent, tag).text = " ".join(str(int(v)) for v in values)


def _int_list(elem, tag: str, xml_path, context: str, default=None) -> tuple[int, ...]:
    child = elem.find(tag)
    if child is None:
        if default is not None:
            return default
        raise ProjectFormatError(f"{where(xml_path, context)}: missing <{tag}>")
    try:
        return tuple(int(v) for v in (child.text or "").split())
    except ValueError:
        raise ProjectFormatError(
            f"{where(xml_path, context)}: <{tag}> must hold integers, got {child.text!r}"
        ) from None


def _partition_from_xml(elem, base_dir: Path, xml_path, index: int) -> Partition:
    context = f"<partition> #{index}"
    path = read_path_element(elem, "path", base_dir, xml_path, context=context)
    tps = _int_list(elem, "timepoints", xml_path, context)
    setups = _int_list(elem, "setups", xml_path, context)
    tps_m = _int_list(elem, "timepointsMapped", xml_path, context, default=tps)
    setups_m = _int_list(elem, "setupsMapped", xml_path, context, default=setups)
    if len(tps_m) != len(tps) or len(setups_m) != len(setups):
        raise ProjectFormatError(
            f"{where(xml_path, context)}: mapped id lists differ in length from "
            f"<timepoints>/<setups> ({len(tps_m)} vs {len(tps)}, {len(setups_m)} vs {len(setups)})"
        )
    return Partition(path, tps, setups, tps_m, setups_m)


# -- path elements (shared with the TIFF loader) ------------------------------
