"""The interface every image loader implements, and the dask array built on it.

A loader answers, for one view and resolution level, its shape, dtype, block
shape and downsampling factors, and reads any region as a numpy array.  It
holds only paths and small metadata, so it pickles cheaply: file handles are
opened lazily in each process (see :func:`cached_handle`) and dropped on
pickling, which lets dask.distributed workers reopen them.

All shapes, regions and factors are in numpy order ``(z, y, x)``; a 2D view
has ``z == 1``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from itertools import product
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._storage import identity as _identity
from ..errors import ImageDataError, TilefuseError
from ..project.views import ViewId

__all__ = ["ImageLoader", "cached_handle", "cached_entry", "cached_value", "block_slices", "normalize_region",
           "describe_files", "path_identity"]

Region = tuple[slice, slice, slice]

_HANDLES: dict[tuple[str, Any], _Entry] = {}
_HANDLES_LOCK = threading.Lock()


class _Entry(NamedTuple):
    """A cached handle or value and the identity of the files it was made from."""

    value: Any
    identity: tuple


def cached_entry(key: tuple[str, Any], opener: Callable[[], Any], *,
                 anchors: Iterable[str | os.PathLike]) -> _Entry:
    """Like :func:`cached_handle`, returning the handle with the identity of its anchors (for keying blocks)."""
    identity = _identity(anchors)  # before opening: a change while opening shows on the next use
    entry = _HANDLES.get(key)
    if entry is not None and entry.identity == identity:
        return entry
    with _HANDLES_LOCK:
        entry = _HANDLES.get(key)
        if entry is not None and entry.identity == identity:
            return entry
        if entry is not None:  # the file changed: nothing made from the old one may be used
            _forget_path(str(key[0]))
        entry = _Entry(opener(), identity)
        _HANDLES[key] = entry
    return entry


def cached_handle(key: tuple[str, Any], opener: Callable[[], Any], *,
                  anchors: Iterable[str | os.PathLike]) -> Any:
    """Return a per-process cached file handle, opening it on first use.

    Handles live in a module-level dict, never on the loader, so loaders stay
    small and picklable and every worker process opens its own files once.

    An entry is valid only for the files it was made from: ``anchors`` are the
    files whose identity (:func:`file_identity`) stands for the handle's
    content, re-``stat``-ed on every use.  When one was replaced or rewritten,
    the old handle is closed, everything cached from files under ``key[0]``
    (other handles, decoded blocks) is dropped, and the file is opened again.
    Anchors must be files: a folder's modification time does not change when a
    file inside it is rewritten (N5 and Zarr entries anchor on their metadata
    files).
    """
    return cached_entry(key, opener, anchors=anchors).value


def cached_value(key: tuple[str, Any], compute: Callable[[], Any], *,
                 anchors: Iterable[str | os.PathLike]) -> Any:
    """Like :func:`cached_handle`, for values whose computation itself opens handles.

    ``compute`` runs outside the lock (it may call :func:`cached_handle`); two
    threads missing at once both compute and the first result is kept.  The
    value is dropped with the handles of ``key[0]`` (:func:`drop_cached_handles`)
    and recomputed when an anchor's identity changes.
    """
    identity = _identity(anchors)
    entry = _HANDLES.get(key)
    if entry is not None and entry.identity == identity:
        return entry.value
    value = compute()
    with _HANDLES_LOCK:
        entry = _HANDLES.get(key)
        if entry is not None and entry.identity == identity:
            return entry.value
        _HANDLES[key] = _Entry(value, identity)
    return value


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # pragma: no cover - best effort
            pass


def _forget_path(path: str) -> None:
    """Drop (closing) the entries and decoded blocks of exactly ``path``; the caller holds the lock."""
    from .._blockcache import forget_file

    forget_file(path)
    for key in [k for k in _HANDLES if str(k[0]) == path]:
        _close(_HANDLES.pop(key).value)


def drop_cached_handles(prefix: str | None = None) -> None:
    """Forget (and close when possible) cached handles whose key starts with ``prefix``.

    Decoded blocks cached from those files are dropped too.
    """
    from .._blockcache import clear_block_cache

    clear_block_cache(prefix)
    with _HANDLES_LOCK:
        for key in list(_HANDLES):
            if prefix is None or str(key[0]).startswith(prefix):
                _close(_HANDLES.pop(key).value)


def path_identity(paths: Iterable[str | os.PathLike]) -> str:
    """Hash of name, size and modification time of files, and of every file inside folders.

    A missing path hashes as missing, so a deleted file changes the identity too.
    """
    from .. import _storage

    digest = hashlib.sha1()
    paths = list(paths)
    for url in sorted({str(p) for p in paths if _storage.is_url(p)}):  # objects: size and ETag, from a listing
        digest.update(url.encode("utf-8") + b"\n" + "\n".join(_storage.tree_identity(url)).encode("utf-8") + b"\n")
    for root in sorted({os.path.abspath(p) for p in paths if not _storage.is_url(p)}):
        entries = []
        if os.path.isdir(root):
            for folder, _, names in os.walk(root):
                for name in names:
                    full = os.path.join(folder, name)
                    st = os.stat(full)
                    entries.append(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}")
            entries.sort()
        elif os.path.exists(root):
            st = os.stat(root)
            entries.append(f"\0{st.st_size}\0{st.st_mtime_ns}")
        else:
            entries.append("\0missing")
        digest.update(root.encode("utf-8", "surrogateescape") + b"\n")
        digest.update("\n".join(entries).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def normalize_region(region, shape) -> Region:
    """Turn ``None``/``Ellipsis``/partial slices into three explicit, clipped slices."""
    if region is None or region is Ellipsis:
        region = ()
    region = tuple(region) + (slice(None),) * (len(shape) - len(tuple(region)))
    out = []
    for sl, n in zip(region, shape):
        if not isinstance(sl, slice):
            raise TypeError(f"regions are tuples of slices, got {sl!r}")
        start, stop, step = sl.indices(n)
        if step != 1:
            raise ValueError("regions must have step 1")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


def block_slices(shape, chunks) -> list[tuple[tuple[int, ...], Region]]:
    """All blocks of a chunk grid: ``(block_index, region)`` pairs."""
    ranges = [range(0, max(n, 1), c) for n, c in zip(shape, chunks)]
    out = []
    for starts in product(*ranges):
        idx = tuple(s // c for s, c in zip(starts, chunks))
        region = tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunks, shape))
        out.append((idx, region))
    return out


class ImageLoader(ABC):
    """Reads the pixels of a project's views.

    Subclasses set :attr:`format` to the XML ``<ImageLoader format="...">``
    value they handle and implement the abstract methods.  A loader built from
    the XML keeps the element it came from, so an unchanged project writes it
    back verbatim.
    """

    #: The XML ``format`` attribute handled by this class.
    format: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        # The safety net: whatever a subclass's file access raises that is not a
        # TilefuseError (h5py's KeyError, blosc's RuntimeError, a ZeroDivisionError
        # from a zero block size...) becomes an ImageDataError naming the files,
        # the view and the level.  One mechanism here instead of try/except in
        # every loader, so damage nobody thought of still gets a clear message.
        super().__init_subclass__(**kwargs)
        for name in _GUARDED:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "_tilefuse_guarded", False):
                setattr(cls, name, _guarded(method))

    def __init__(self) -> None:
        self.xml_path: Path | None = None
        # The element this loader came from (as text, so the loader pickles) and
        # the base dir it was resolved against; see _remember_xml.
        self._xml_text: bytes | None = None
        self._xml_base: Path | None = None

    # -- construction ---------------------------------------------------
    @classmethod
    def for_path(cls, *args, **kwargs) -> ImageLoader:
        """A loader for data on disk without any XML (e.g. just written); each format's own arguments.

        ``bdv.hdf5``: the ``.h5`` file; ``bdv.n5`` and ``bdv.multimg.zarr``: the
        container folder; ``spimreconstruction.filemap2``: the file of each view.
        """
        raise NotImplementedError(f"{cls.format}: a loader of this format is made from XML only")

    @classmethod
    @abstractmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None) -> ImageLoader:
        """Build the loader from its ``<ImageLoader>`` element.

        ``base_dir`` is the project's resolved BasePath; ``xml_path`` is only
        used in error messages.
        """

    @abstractmethod
    def to_xml(self, base_dir: Path):
        """Return a new ``<ImageLoader>`` lxml element describing this loader."""

    # -- metadata ---------------------------------------------------------
    @abstractmethod
    def has_view(self, view: ViewId) -> bool:
        """True if the file holds pixels for ``view``."""

    @abstractmethod
    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        """Downsampling factors ``(z, y, x)`` of each resolution level, level 0 first."""

    @abstractmethod
    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        """Shape ``(z, y, x)`` of one level."""

    @abstractmethod
    def dtype(self, view: ViewId) -> np.dtype:
        """The pixel type the user sees (e.g. uint16 for legacy int16 BDV files)."""

    @abstractmethod
    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        """The file's own block shape ``(z, y, x)`` for one level."""

    def mipmap_transform(self, view: ViewId, level: int) -> np.ndarray:
        """Level voxel -> full-resolution voxel, ``(z, y, x, 1)`` 4x4.

        BigDataViewer's convention from the level's downsampling factors;
        loaders whose levels are offset otherwise (split views) override it.
        """
        from ..geometry.affine import mipmap_transform

        return mipmap_transform(self.levels(view)[level])

    @abstractmethod
    def read(self, view: ViewId, level: int, region: Region, *, cache: bool | tuple = False) -> np.ndarray:
        """Read ``region`` (three slices, step 1, inside the shape) of one level.

        ``cache=True`` hints that overlapping reads will follow (neighbouring
        fusion chunks): loaders that decode compressed blocks then keep them
        in the per-process cache of :mod:`tilefuse._blockcache`.
        Loaders without such blocks ignore it.  ``cache`` may also be the
        tuple of every region the plan will read (fusion's chunks): a loader
        may then count the reads of each block and let it go after its last
        (the HDF5 loader does; others treat it as ``True``).
        """

    def check_view(self, view: ViewId) -> None:  # noqa: B027 - a hook: by default nothing to check
        """Check the format-specific structure of one view's data; raise if it cannot be trusted.

        Called once per view (and process) by :func:`tilefuse.loaders.validate.check_view`
        before the generic checks of shapes, levels, dtype and blocks.  Loaders
        override it for what only they can see (dataset paths leaving the
        container, HDF5 external storage, metadata types...); the default has
        nothing to check.
        """

    def view_layout(self, view: ViewId):
        """``(levels, dtype, shapes, chunks)`` of every level at once, or None (the default).

        A shortcut for :func:`~tilefuse.loaders.validate.check_view`, asked
        right after :meth:`check_view`: a loader that kept these while checking
        returns them in one call (each of :meth:`levels`, :meth:`shape` and
        :meth:`chunks` may cost a ``stat`` of its files).  None makes the
        caller ask method by method, in the order its checks need, so errors
        are raised as without it; a loader returns None rather than raise.
        """
        return None

    def view_files(self, view: ViewId) -> list[Path]:
        """The files and folders holding one view's pixels (every level); by default all of :meth:`files`.

        Named in error messages, and what :meth:`data_identity` looks at.
        Loaders narrow it to the view where the layout allows (one TIFF, one
        N5 timepoint folder, one OME-Zarr group), so that messages point at
        the right file and fingerprinting a fusion of thousands of views does
        not walk a whole container per view.
        """
        return self.files()

    def anchor_files(self, view: ViewId) -> list[Path]:
        """The files whose identity stands for what :func:`~tilefuse.loaders.validate.check_view` saw of one view.

        The check's result is reused (per process) only while none of these
        changed (:func:`file_identity`: device, inode, size, modification and status-change times).
        They should be files: a folder's modification time does not change when
        a file inside it is rewritten.  By default :meth:`view_files`; loaders
        whose views are folders (N5, OME-Zarr) name their metadata files.
        """
        return self.view_files(view)

    def checked_layout(self, view: ViewId, size: tuple[int, int, int] | None = None, *,
                       xml_path: str | os.PathLike | None = None):
        """One view's data checked against the project (its XML ``<size>``); the checked layout.

        What :meth:`tilefuse.project.Project.check_view` asks before anything
        reads pixels: :func:`tilefuse.loaders.validate.check_view` (cached per
        process while the view's files keep their identity).

        Returns
        -------
        tilefuse.loaders.validate.ViewData
        """
        from .validate import check_view

        return check_view(self, view, size, xml_path=xml_path)

    def describe_files(self, view: ViewId | None = None) -> str:
        """The files of this loader (of one view when given) for a message: see :func:`describe_files`."""
        return describe_files(self, view)

    def level_shape_range(self, view: ViewId, level: int,
                          shape0: tuple[int, int, int]) -> tuple[tuple[int, int], ...]:
        """Smallest and largest size, per axis ``(z, y, x)``, a coarser level may have given level 0's shape.

        :func:`~tilefuse.loaders.validate.check_view` refuses a level outside
        this range.  By default each axis is the floor or the ceiling of level
        0's size divided by the level's factor (BigDataViewer floors, other
        writers round up; see :func:`~tilefuse.loaders.validate.level_shape_range`).
        Loaders whose levels follow another formula (split views) override it.
        """
        from .validate import level_shape_range

        return level_shape_range(shape0, self.levels(view)[level])

    # -- the element a loader came from ------------------------------------------
    def _remember_xml(self, element, base_dir: Path) -> None:
        """Keep the ``<ImageLoader>`` element (as text, so the loader pickles) for :meth:`_verbatim_xml`."""
        from lxml import etree

        from .. import _storage

        self._xml_text = etree.tostring(element, with_tail=False)
        self._xml_base = base_dir if _storage.is_url(base_dir) else Path(base_dir)

    def _verbatim_xml(self, base_dir: Path | str, *, remote: bool = False):
        """The remembered element if it is still valid against ``base_dir`` (or it names a URL from a local
        project, which no base folder changes), else None."""
        from lxml import etree

        from .. import _storage
        from ..project.paths import same_dir

        remote = remote and not _storage.is_url(getattr(self, "_xml_base", None))
        if self._xml_text is not None and (remote or same_dir(base_dir, self._xml_base)):
            return etree.fromstring(self._xml_text)
        return None

    # -- derived ------------------------------------------------------------
    def files(self) -> list[Path]:
        """The files or containers this loader reads (for ``tilefuse info``)."""
        return []

    def data_identity(self, view: ViewId) -> str:
        """A cheap identity of one view's pixels: changes when their files change.

        Size and modification time (ns) of every file of :meth:`view_files`
        (folders walked), hashed; used to key resumable outputs
        (:meth:`tilefuse.FusionPlan.fingerprint`).  Reading the pixels would be
        the only proof, and costs as much as the fusion itself.
        """
        return path_identity(self.view_files(view))

    def image(self, view: ViewId, level: int = 0, chunks=None):
        """A lazy dask array of one level, chunked like the file's blocks.

        Each dask task reads one block through :meth:`read`; slicing the array
        therefore touches only the blocks the slice needs.
        """
        import dask.array as da
        from dask.base import tokenize
        from dask.highlevelgraph import HighLevelGraph

        shape = self.shape(view, level)
        dtype = self.dtype(view)
        chunks = tuple(chunks) if chunks is not None else self.chunks(view, level)
        chunks = tuple(max(1, min(int(c), max(n, 1))) for c, n in zip(chunks, shape))
        name = f"tilefuse-read-{tokenize(self.token(), view, level, chunks)}"
        dsk = {
            (name, *idx): (_read_block, self, view, level, region)
            for idx, region in block_slices(shape, chunks)
        }
        dask_chunks = da.core.normalize_chunks(chunks, shape=shape)
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
        return da.Array(graph, name, dask_chunks, dtype=dtype)

    def token(self) -> Any:
        """A value identifying the loader's data, for deterministic dask names."""
        return (type(self).__name__, repr(self))

    def __getstate__(self) -> dict:
        # Loaders keep no handles on themselves; subclasses with caches drop them here.
        return dict(self.__dict__)


def _read_block(loader: ImageLoader, view: ViewId, level: int, region: Region) -> np.ndarray:
    return loader.read(view, level, region)


#: Loader methods whose unexpected exceptions become ImageDataError (see ImageLoader.__init_subclass__).
_GUARDED = ("has_view", "levels", "shape", "dtype", "chunks", "read", "check_view")


def _guarded(method: Callable) -> Callable:
    """``method`` with any non-Tilefuse exception turned into an ImageDataError (original chained)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except TilefuseError:
            raise
        except Exception as exc:
            raise ImageDataError(_failure_message(self, method.__name__, args, kwargs, exc)) from exc

    wrapper._tilefuse_guarded = True
    return wrapper


def _failure_message(loader: ImageLoader, name: str, args, kwargs, exc: BaseException) -> str:
    """``"<files>, <view>, level <n>: <method>() failed (<original>); ..."``."""
    view = args[0] if args else kwargs.get("view")
    try:
        view = ViewId(*view)
    except (TypeError, ValueError):
        pass
    parts = [describe_files(loader, view if isinstance(view, ViewId) else None)]
    if view is not None:
        parts.append(str(view))
    level = args[1] if len(args) > 1 else kwargs.get("level")
    if level is not None or name in ("shape", "chunks"):
        parts.append(f"level {0 if level is None else level}")
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return (f"{', '.join(parts)}: {name}() failed ({detail}); "
            "the image data are damaged or not what the project describes")


def describe_files(loader: ImageLoader, view: ViewId | None = None) -> str:
    """The files of a loader (of one view when given) for a message: at most three, comma-separated."""
    try:
        files = loader.view_files(view) if view is not None else loader.files()
    except Exception:  # a view the loader does not know: name all its files
        files = loader.files()
    return ", ".join(str(f) for f in files[:3]) or repr(loader)
