"""``<ImageLoader format="bdv.multimg.zarr">``: BigStitcher's multi-image OME-Zarr loader.

One OME-Zarr image (a group with NGFF ``multiscales``) per view, inside one
container.  The XML comes in three versions (multiview-reconstruction
``XmlIoAllenOMEZarrLoader``)::

    version="1.0"   <zgroup setup="0" timepoint="0"><path>tile0.zarr</path></zgroup>
                    optionally <s3bucket>bucket</s3bucket> (the container is then s3://bucket/<zarr>)
    version="2.0"   <zgroup setup="0" tp="0" path="s0-t0.zarr"/>          (also: no version attribute)
    version="3.0"   <zgroup setup="0" tp="0" path="s0-t0.zarr" indicies="0 0"/>

``indicies`` (sic) selects a 3D volume from an array with more than three
dimensions.  In Java the array is ``x, y, z, c, t``; ``indicies[i]`` slices
Java dimension ``3 + i``, so the first index is the **channel** and the
second the **time point** (``AllenOMEZarrLoader.OMEZARREntry.extract3DVolume``).
In numpy order, where the on-disk array is ``(t, c, z, y, x)``, index ``i``
applies to axis ``ndim - 4 - i``.  ``[]`` or no attribute means: the array is
3D, or all its higher dimensions have size 1.

Resolution levels come from the group's NGFF ``multiscales`` (v0.4 in the
attributes, v0.5 under ``"ome"``): the factor of a level is its spatial
``scale`` divided by that of level 0, rounded to 4 decimals as BigStitcher
does.  Arrays are opened with zarr-python 3 (Zarr v2 and v3).

The container may be local or at any fsspec URL (``s3://bucket/dataset.ome.zarr``,
also version 1.0's ``<s3bucket>``): :mod:`tilefuse._storage` gives the store
(zarr's ``LocalStore`` for local folders, ``FsspecStore`` for URLs) and reads
the metadata files; a region read fetches only the chunks it touches.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from lxml import etree

from .. import _storage
from .._inputs import MAX_METADATA_BYTES, block_byte_limit, check_regular_file
from ..errors import (
    ImageDataError,
    MissingDataError,
    ProjectFormatError,
    TilefuseError,
    UnsupportedFormatError,
    where,
)
from ..formats.bdv import ZARR_VIEW_GROUP, zarr_view
from ..project.paths import parse_location, path_element, single_child
from ..project.views import ViewId
from . import register_loader
from .base import ImageLoader, Region, cached_handle, normalize_region

__all__ = ["OmeZarrLoader", "ZGroup"]

_ELEMENT = '<ImageLoader format="bdv.multimg.zarr">'


class ZGroup(NamedTuple):
    """Where one view lives: a group path inside the container and the higher-dimension
    indices (channel, time) selecting its 3D volume, or ``None``."""

    path: str
    indices: tuple[int, ...] | None = None


#: The metadata files of a Zarr group or array (v2 and v3); what cached entries are anchored on.
_METADATA = (".zgroup", ".zattrs", ".zarray", "zarr.json")


class _Level(NamedTuple):
    """One open level array (cached per process, valid while its metadata files are unchanged)."""

    array: Any  # a zarr array
    path: Path | str  # a local folder or a URL
    meta: dict[str, dict]  # its parsed metadata files


class _Image(NamedTuple):
    """One view's levels with their downsampling factors, put together from the cached group and levels."""

    levels: list[_Level]  # level 0 first
    factors: list[tuple[float, float, float]]  # scale ratios rounded to 4 decimals, as BigStitcher
    ratios: list[tuple[float, float, float]]  # the same, unrounded (for checking level shapes)

    @property
    def arrays(self) -> list[Any]:
        return [level.array for level in self.levels]


def _parse_indices(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    text = text.strip()
    if text in ("", "[]"):
        return None
    try:
        return tuple(int(v) for v in text.strip("[]").replace(",", " ").split())
    except ValueError:
        raise ProjectFormatError(f"bad indicies {text!r}: expected integers such as \"0 0\" or \"[]\"") from None


@register_loader
class OmeZarrLoader(ImageLoader):
    """Reads the per-view OME-Zarr images of BigStitcher's ``bdv.multimg.zarr`` loader.

    Build it from XML with :meth:`from_xml` or from Python with :meth:`for_path`.
    """

    format = "bdv.multimg.zarr"

    def __init__(self, path: Path | None, zgroups: Mapping[ViewId, ZGroup], *,
                 version: str = "3.0", uri: str | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.uri = uri
        self.version = version
        self.zgroups: dict[ViewId, ZGroup] = {ViewId(*k): ZGroup(*v) for k, v in zgroups.items()}

    # -- construction ---------------------------------------------------------
    @classmethod
    def for_path(
        cls,
        path: str | Path,
        views: Mapping[ViewId, str | ZGroup | tuple] | Iterable[ViewId] | None = None,
        indices: Sequence[int] | None = (0, 0),
    ) -> OmeZarrLoader:
        """A version-3.0 loader for a container (no XML needed).

        Parameters
        ----------
        path
            The container directory (e.g. ``dataset.ome.zarr``) or URL (``s3://bucket/dataset.ome.zarr``).
        views
            ``{ViewId: group path}`` (or :class:`ZGroup`), or just the views,
            which then live in BigStitcher's ``s{setup}-t{tp}.zarr`` groups.
            By default the container is scanned for such groups.
        indices
            The (channel, time) indices for views given without them;
            ``(0, 0)`` as BigStitcher writes, ``None`` for 3D arrays.
        """
        uri = None
        if _storage.is_url(path):
            path, uri = None, str(path).rstrip("/")
        else:
            path = Path(os.path.normpath(Path(path).absolute()))
        if views is None:
            views = _scan_bigstitcher_groups(uri or path)
        elif not isinstance(views, Mapping):
            views = {ViewId(*v): zarr_view(ViewId(*v).timepoint, ViewId(*v).setup) for v in views}
        idx = tuple(int(i) for i in indices) if indices else None
        groups = {
            ViewId(*k): (ZGroup(v, idx) if isinstance(v, str) else ZGroup(*v)) for k, v in views.items()
        }
        return cls(path, groups, version="3.0", uri=uri)

    @classmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None = None) -> OmeZarrLoader:
        version = (element.get("version") or "").strip()
        zarr_el = single_child(element, "zarr", xml_path, _ELEMENT)
        if zarr_el is None or not (zarr_el.text or "").strip():
            raise ProjectFormatError(f"{where(xml_path, _ELEMENT)}: missing <zarr> path")
        bucket = single_child(element, "s3bucket", xml_path, _ELEMENT)
        groups_el = single_child(element, "zgroups", xml_path, _ELEMENT)
        if version == "1.0" and bucket is not None:
            # The container is s3://<bucket>/<zarr>; kept, but not readable locally.
            folder = "/" + zarr_el.text.strip().strip("/") + "/"
            path, uri = None, f"s3://{(bucket.text or '').strip()}{folder}"
        else:
            path, uri = parse_location(zarr_el.text, zarr_el.get("type"), base_dir)
        zgroups: dict[ViewId, ZGroup] = {}
        for zg in (groups_el.iterfind("zgroup") if groups_el is not None else ()):
            desc = f"{_ELEMENT} <zgroup setup={zg.get('setup')!r}>"
            try:
                setup = int(zg.get("setup"))
                if version == "1.0":
                    tp = int(zg.get("timepoint"))
                    gpath = zg.findtext("path")
                    indices = None
                else:
                    tp = int(zg.get("tp", zg.get("timepoint")))
                    gpath = zg.get("path", zg.findtext("path"))
                    indices = _parse_indices(zg.get("indicies")) if version == "3.0" else None
            except (TypeError, ValueError) as exc:
                raise ProjectFormatError(f"{where(xml_path, desc)}: bad setup/timepoint ({exc})") from None
            except ProjectFormatError as exc:
                raise ProjectFormatError(f"{where(xml_path, desc)}: {exc}") from None
            if not gpath or not gpath.strip():
                raise ProjectFormatError(f"{where(xml_path, desc)}: missing group path")
            if ViewId(tp, setup) in zgroups:
                raise ProjectFormatError(f"{where(xml_path, desc)}: a <zgroup> for {ViewId(tp, setup)} appears twice "
                                         f"(line {zg.sourceline}); tilefuse refuses an ambiguous project")
            zgroups[ViewId(tp, setup)] = ZGroup(gpath.strip(), indices)
        loader = cls(path, zgroups, version=version or "2.0", uri=uri)
        loader.xml_path = xml_path
        loader._remember_xml(element, base_dir)
        return loader

    def to_xml(self, base_dir: Path):
        original = self._verbatim_xml(base_dir, remote=self.uri is not None)
        if original is not None:
            return original
        # Written as version 3.0, the form current BigStitcher writes.
        el = etree.Element("ImageLoader", format=self.format, version="3.0")
        el.append(path_element("zarr", self.root, base_dir))
        groups = etree.SubElement(el, "zgroups")
        for view in sorted(self.zgroups):
            zg = self.zgroups[view]
            etree.SubElement(
                groups, "zgroup", setup=str(view.setup), tp=str(view.timepoint), path=zg.path,
                indicies=" ".join(str(i) for i in zg.indices) if zg.indices else "[]",
            )
        return el

    def __repr__(self) -> str:
        return f"OmeZarrLoader({str(self.uri or self.path)!r}, {len(self.zgroups)} views)"

    def token(self):
        # The zgroups too: two projects may map the same container's groups to views differently.
        return (type(self).__name__, str(self.uri or self.path), tuple(sorted(self.zgroups.items())))

    # -- helpers --------------------------------------------------------------
    @property
    def root(self) -> Path | str | None:
        """The container: a local folder or a URL."""
        return self.uri.rstrip("/") if self.uri is not None else self.path

    def _group_path(self, view: ViewId) -> Path | str:
        root = self.root
        if root is None:
            raise ProjectFormatError(f"{where(self.xml_path, _ELEMENT)}: no <zarr> path")
        if self.uri is not None and not _storage.is_url(self.uri):
            raise UnsupportedFormatError(
                f"{where(self.xml_path, _ELEMENT)}: OME-Zarr container {self.uri!r} is not a URL tilefuse can "
                f"open ({view})"
            )
        zg = self.zgroups.get(ViewId(*view))
        if zg is None:
            raise MissingDataError(f"{root}: the loader has no zgroup for {view}")
        return _storage.join(root, _inside_path(zg.path, f"{where(self.xml_path, _ELEMENT)}: <zgroup> of {view}"))

    def _datasets(self, view: ViewId) -> list[tuple[str, list[float] | None]]:
        """``(path, scale)`` of each level, from the group's NGFF metadata (cached, anchored on them)."""
        group = self._group_path(view)
        return cached_handle((str(group), "omezarr-multiscales"), lambda: _open_group(group, view),
                             anchors=_metadata_files(group))

    def _open_level(self, view: ViewId, sub: str) -> _Level:
        path = _storage.join(self._group_path(view), sub)
        return cached_handle((str(path), "omezarr-array"), lambda: _open_level(path, view),
                             anchors=_metadata_files(path))

    def _image(self, view: ViewId) -> _Image:
        datasets = self._datasets(view)
        levels = [self._open_level(view, sub) for sub, _ in datasets]
        return _compose(self._group_path(view), view, datasets, levels)

    def _level(self, view: ViewId, level: int):
        # One level without the others: a read re-stats only its own metadata and the group's.
        datasets = self._datasets(view)
        if not 0 <= level < len(datasets):
            raise ImageDataError(f"{self._group_path(view)}: level {level} does not exist "
                                 f"({len(datasets)} levels, {view})")
        return self._open_level(view, datasets[level][0]).array

    def _select(self, view: ViewId, arr, region: Region) -> tuple:
        """The zarr index of a 3D region, fixing the higher dimensions."""
        ndim = arr.ndim
        if ndim == 3:
            return tuple(region)
        zg = self.zgroups[ViewId(*view)]
        higher = [0] * (ndim - 3)  # numpy order: ..., t, c
        if zg.indices:
            if len(zg.indices) != ndim - 3:
                raise ImageDataError(
                    f"{self._group_path(view)}: {len(zg.indices)} indicies {list(zg.indices)} for a "
                    f"{ndim}D array ({view})"
                )
            for i, value in enumerate(zg.indices):
                axis = ndim - 4 - i  # indicies[0] = channel (just before z), [1] = time
                if not 0 <= value < arr.shape[axis]:
                    raise ImageDataError(f"{self._group_path(view)}: index {value} out of range for "
                                         f"axis {axis} of shape {arr.shape} ({view})")
                higher[axis] = value
        elif any(n != 1 for n in arr.shape[:-3]):
            raise ImageDataError(
                f"{self._group_path(view)}: array of shape {arr.shape} has non-singleton higher "
                f"dimensions but the XML gives no indicies to select a 3D volume ({view})"
            )
        return (*higher, *region)

    # -- metadata -------------------------------------------------------------
    def has_view(self, view: ViewId) -> bool:
        if ViewId(*view) not in self.zgroups:
            return False
        group = self._group_path(view)
        if _storage.is_url(group):
            return any(name in (".zattrs", ".zgroup", "zarr.json") for name, _ in _storage.list_names(group))
        # exists(), not is_file(): a FIFO or folder there is refused when opened, not "no pixels"
        return group.is_dir() and any((group / m).exists() for m in (".zattrs", ".zgroup", "zarr.json"))

    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        return list(self._image(view).factors)

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        return tuple(int(n) for n in self._level(view, level).shape[-3:])

    def dtype(self, view: ViewId) -> np.dtype:
        return np.dtype(self._level(view, 0).dtype)

    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        return tuple(int(c) for c in self._level(view, level).chunks[-3:])

    def read(self, view: ViewId, level: int, region: Region, *, cache: bool = False) -> np.ndarray:
        arr = self._level(view, level)
        region = normalize_region(region, arr.shape[-3:])
        return np.asarray(arr[self._select(view, arr, region)])

    def check_view(self, view: ViewId) -> None:
        """Every level selects a 3D volume with the XML's ``indicies`` and has its chunks under its declared keys.

        (The metadata were parsed on opening.)  Chunk files stored under another
        key encoding than the metadata declare (``"0/0/0"`` folders under a
        ``.zarray`` without ``dimension_separator``, whose default is ``"."``)
        would all read as missing, i.e. as the fill value: refused.  A level 0
        without any chunk is logged (:func:`~.validate.warn_reads_as_fill`).
        """
        view = ViewId(*view)
        image = self._image(view)
        for number, level in enumerate(image.levels):
            self._select(view, level.array, (slice(0, 0),) * 3)
            if not _check_chunk_keys(level, view) and number == 0:
                from .validate import warn_reads_as_fill

                warn_reads_as_fill(str(level.path), view, level.array.fill_value)

    def level_shape_range(self, view: ViewId, level: int, shape0) -> tuple[tuple[int, int], ...]:
        """Floor or ceiling of level 0 / the *unrounded* scale ratio (the factors are rounded to 4 decimals)."""
        from .validate import level_shape_range

        return level_shape_range(shape0, self._image(view).ratios[level])

    def anchor_files(self, view: ViewId) -> list[Path]:
        """The metadata files of the view's group and of every level array."""
        group = self._group_path(view)
        try:
            subs = [sub for sub, _ in self._datasets(view)]
        except Exception:  # noqa: BLE001 - damaged: the check reports it
            subs = []
        return _metadata_files(group) + [f for sub in subs for f in _metadata_files(_storage.join(group, sub))]

    def files(self) -> list[Path | str]:
        return [self.root] if self.root is not None else []

    def view_files(self, view: ViewId) -> list[Path | str]:
        zg = self.zgroups.get(ViewId(*view))
        if self.root is None or zg is None:
            return self.files()
        return [_storage.join(self.root, zg.path)]  # the view's whole multiscale group: metadata and every level


# -- opening one view's image ---------------------------------------------------
def _multiscales(attrs: Mapping[str, Any]) -> list | None:
    if "multiscales" in attrs:
        return attrs["multiscales"]
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:  # NGFF 0.5 (Zarr v3)
        return ome["multiscales"]
    return None


def _metadata_files(folder: Path | str) -> list[Path | str]:
    return [_storage.join(folder, name) for name in _METADATA]


def _open_group(group_path: Path | str, view: ViewId) -> list[tuple[str, list[float] | None]]:
    """The checked ``(path, scale)`` of each level of a view's NGFF multiscale group."""
    import zarr

    remote = _storage.is_url(group_path)
    if not remote and not group_path.is_dir():
        raise MissingDataError(f"{group_path}: OME-Zarr group for {view} does not exist")
    if not _check_json(group_path) and remote:  # a prefix without objects does not exist
        raise MissingDataError(f"{group_path}: OME-Zarr group for {view} does not exist (no .zgroup, .zattrs or "
                               "zarr.json there)")
    try:
        # Through the checking store, so that no metadata file zarr looks at can block or be huge;
        # consolidated metadata (.zmetadata) are not read: a stale copy would describe other arrays.
        store = _checking_store_class()(_storage.zarr_store(group_path, read_only=True))
        group = zarr.open_group(store, mode="r", use_consolidated=False)
    except TilefuseError:
        raise
    except Exception as exc:  # zarr raises several types for a non-group
        raise MissingDataError(f"{group_path}: cannot open OME-Zarr group for {view} "
                               f"({type(exc).__name__}: {exc})") from None
    return _parse_multiscales(dict(group.attrs), f"{group_path}: {view}")


def _open_level(array_path: Path | str, view: ViewId) -> _Level:
    """One level array, read through a store that checks its chunks (see :func:`_checking_store_class`)."""
    import zarr

    meta = _check_json(array_path)
    if not any(name in meta for name in (".zarray", "zarr.json")):
        raise MissingDataError(f"{array_path}: level array missing for {view} (no .zarray or zarr.json)")
    try:
        store = _checking_store_class()(_storage.zarr_store(array_path, read_only=True),
                                        blosc=_uses_blosc(meta))
        arr = zarr.open_array(store, mode="r")
    except TilefuseError:
        raise
    except Exception as exc:  # zarr's own metadata checks (zero chunks, unknown dtype or codec...)
        raise ImageDataError(f"{array_path}: cannot open the level array of {view} ({exc})") from exc
    if arr.ndim < 3:
        raise ImageDataError(f"{array_path}: {arr.ndim}D array, expected at least 3D ({view})")
    # No stored chunk (a shard, with sharding) can be larger than a full one, compressed.
    store.max_bytes = block_byte_limit(arr.shards or arr.chunks, arr.dtype)
    return _Level(arr, array_path, meta)


def _compose(group_path: Path | str, view: ViewId, datasets, levels: list[_Level]) -> _Image:
    """The view's levels with their factors: NGFF scales relative to level 0, else shape ratios."""
    scales = []
    for (sub, scale), level in zip(datasets, levels):
        if scale is not None and len(scale) != level.array.ndim:
            raise ImageDataError(
                f"{group_path}: {view}: the scale of dataset {sub!r} has {len(scale)} values for a "
                f"{level.array.ndim}D array"
            )
        scales.append(None if scale is None else scale[-3:])
    ratios = []
    for level, scale in zip(levels, scales):
        if scale is not None and scales[0] is not None:
            ratios.append(tuple(s / s0 for s, s0 in zip(scale, scales[0])))
        else:
            # No scale transform: infer the factor from the shapes.
            shape0 = levels[0].array.shape[-3:]
            ratios.append(tuple(n0 / max(n, 1) for n0, n in zip(shape0, level.array.shape[-3:])))
    factors = [tuple(round(r, 4) for r in ratio) for ratio in ratios]
    return _Image(levels, factors, ratios)


def _check_json(folder: Path | str) -> dict[str, dict]:
    """The Zarr metadata files of a folder, parsed: refused here when corrupt or not regular files, before
    zarr reports them as something else (a missing array) or blocks on them (a FIFO)."""
    found = {}
    for name in _METADATA:
        meta = _storage.read_json(_storage.join(folder, name), MAX_METADATA_BYTES, "Zarr metadata file")
        if meta is not None:
            found[name] = meta
    return found


def _uses_blosc(meta: Mapping[str, dict]) -> bool:
    """Whether an array's chunks are Blosc frames (Zarr v2 ``compressor`` or a v3 top-level codec)."""
    compressor = meta.get(".zarray", {}).get("compressor")
    codecs = meta.get("zarr.json", {}).get("codecs")
    return (isinstance(compressor, Mapping) and compressor.get("id") == "blosc") or (
        isinstance(codecs, list) and any(isinstance(c, Mapping) and c.get("name") == "blosc" for c in codecs))


# -- chunk keys ------------------------------------------------------------------
def _key_encoding(meta: Mapping[str, dict]) -> tuple[str, str, str]:
    """``(prefix, separator, setting)`` of an array's chunk keys, as its metadata declare them.

    Zarr v2: ``"0.0.0"`` or, with ``"dimension_separator": "/"``, ``"0/0/0"`` (the
    default is ``"."``: older zarr-python did not write the key).  Zarr v3:
    ``"c/0/0/0"`` by default, ``"c.0.0.0"``, or the v2 forms with the ``"v2"``
    encoding.
    """
    if ".zarray" in meta:
        declared = meta[".zarray"].get("dimension_separator")
        setting = (f'"dimension_separator": "{declared}" in .zarray' if declared is not None
                   else '.zarray without "dimension_separator" (default ".")')
        return "", declared or ".", setting
    encoding = meta.get("zarr.json", {}).get("chunk_key_encoding") or {"name": "default"}
    name = encoding.get("name", "default") if isinstance(encoding, Mapping) else str(encoding)
    config = encoding.get("configuration") or {} if isinstance(encoding, Mapping) else {}
    separator = config.get("separator", "/" if name == "default" else ".")
    setting = f'"chunk_key_encoding": {json.dumps(encoding)} in zarr.json'
    return ("c" if name == "default" else ""), separator, setting


def _find_chunk(folder: Path | str, prefix: str, separator: str, ndim: int) -> str | None:
    """The key of one stored chunk file under an encoding, or None; stops at the first one found."""
    if separator == "/":
        parts = ([re.escape(prefix)] if prefix else []) + [r"\d+"] * ndim
    else:
        parts = [(re.escape(prefix) + r"\." if prefix else "") + r"\.".join([r"\d+"] * ndim)]
    patterns = [re.compile(p) for p in parts]

    def search(path: Path | str, depth: int) -> str | None:
        last = depth == len(patterns) - 1
        for name, is_folder in _storage.list_names(path):
            if not patterns[depth].fullmatch(name):
                continue
            if last and not is_folder:
                return name
            if not last and is_folder:
                found = search(_storage.join(path, name), depth + 1)
                if found is not None:
                    return f"{name}/{found}"
        return None

    return search(folder, 0)


def _check_chunk_keys(level: _Level, view: ViewId) -> bool:
    """Whether a level stores chunks under its declared keys; refuse chunks stored only under other keys."""
    ndim = level.array.ndim
    prefix, separator, setting = _key_encoding(level.meta)
    if separator not in (".", "/"):
        raise ImageDataError(f"{level.path}: {setting}: chunk key separator {separator!r} is not '.' or '/' ({view})")
    if _find_chunk(level.path, prefix, separator, ndim) is not None:
        return True
    for other in [("", "."), ("", "/"), ("c", "."), ("c", "/")]:
        if other == (prefix, separator):
            continue
        found = _find_chunk(level.path, *other, ndim)
        if found is not None:
            fix = (f'; if they are this level\'s chunks, write "dimension_separator": "{other[1]}" into .zarray'
                   if ".zarray" in level.meta and not other[0] else "")
            raise ImageDataError(
                f"{level.path}: chunks are stored under keys like {found!r} but the metadata declare "
                f"{setting}, under which zarr finds none and would read the whole level ({view}) as its fill "
                f"value{fix}"
            )
    return False


#: Blosc frame header: version, versionlz, flags, typesize, then little-endian uint32 nbytes, blocksize, cbytes.
_BLOSC_HEADER = 16


@functools.cache
def _checking_store_class():
    """A zarr store that refuses chunks zarr would otherwise misread (built on first use: zarr loads lazily).

    * A chunk key that is a folder (a plain store reports it missing, and the
      chunk would read as the fill value), a FIFO (it would block) or a device
      (``/dev/zero`` would be read without end); and a chunk larger than any
      chunk of the array can be (:func:`~.base.block_byte_limit`).
    * A Blosc frame whose length differs from the ``cbytes`` in its header: the
      Blosc 1 decoder trusts the header and decodes a truncated chunk into
      garbage without an error (measured: half a zstd chunk "decodes" to a full
      chunk of wrong values).
    """
    from zarr.storage import WrapperStore

    class ChunkCheckingStore(WrapperStore):
        def __init__(self, store, *, blosc: bool = False, max_bytes: int = MAX_METADATA_BYTES) -> None:
            super().__init__(store)
            self.blosc = blosc
            self.max_bytes = max_bytes  # set to the largest possible chunk once the array is open

        def _with_store(self, store):
            return type(self)(store, blosc=self.blosc, max_bytes=self.max_bytes)

        async def get(self, key, prototype, byte_range=None):
            local = hasattr(self._store, "root")  # a LocalStore; an FsspecStore has a URL ``path``
            file = (Path(self._store.root) / key if local
                    else f"{self._store.fs.unstrip_protocol(self._store.path)}/{key}")
            metadata = key.rsplit("/", 1)[-1] in (*_METADATA, ".zmetadata")
            limit = MAX_METADATA_BYTES if metadata else self.max_bytes
            if local:
                # A stat before the plain store opens the file: a FIFO would block it, /dev/zero exhaust
                # the memory, and no stored chunk can be larger than a full one, compressed.
                check_regular_file(file, "Zarr metadata file" if metadata else "Zarr chunk", limit)
            buf = await self._store.get(key, prototype, byte_range)
            if not local and buf is not None and len(buf) > limit:
                # An object store has no FIFOs or devices; an oversized object is refused once fetched (a HEAD
                # first would double the requests of every chunk).
                raise ImageDataError(f"{file}: Zarr {'metadata file' if metadata else 'chunk'} of {len(buf):,} "
                                     f"bytes is larger than it can be ({limit:,} bytes)")
            if metadata:
                return buf
            if buf is not None and byte_range is None and self.blosc:
                data = buf.to_bytes()
                cbytes = struct.unpack_from("<I", data, 12)[0] if len(data) >= _BLOSC_HEADER else None
                if cbytes != len(data):
                    raise ImageDataError(
                        f"{file}: Blosc chunk of {len(data)} bytes, its header says {cbytes}; the chunk is "
                        "truncated or damaged"
                    )
            return buf

    return ChunkCheckingStore


def _parse_multiscales(attrs: Mapping[str, Any], here: str) -> list[tuple[str, list[float] | None]]:
    """``(path, scale)`` of each dataset of the first NGFF multiscale, checked for type and sense."""
    ms = _multiscales(attrs)
    if ms is None:
        raise ImageDataError(f"{here}: no NGFF 'multiscales' metadata")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], Mapping):
        raise ImageDataError(f"{here}: malformed 'multiscales' (expected a list of objects, got {ms!r:.80})")
    datasets = ms[0].get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise ImageDataError(f"{here}: 'multiscales' lists no datasets")
    out = []
    for i, ds in enumerate(datasets):
        what = f"{here}: 'multiscales' dataset {i}"
        if not isinstance(ds, Mapping) or not isinstance(ds.get("path"), str):
            raise ImageDataError(f"{what}: expected an object with a 'path' string, got {ds!r:.80}")
        # BigStitcher writes dataset paths like "/0"; NGFF paths are relative.
        sub = _inside_path(ds["path"], what)
        transforms = ds.get("coordinateTransformations") or []
        if not isinstance(transforms, list) or not all(isinstance(t, Mapping) for t in transforms):
            raise ImageDataError(f"{what}: malformed coordinateTransformations {transforms!r:.80}")
        scale = None
        for t in transforms:
            if t.get("type") == "scale" and "scale" in t:
                values = t["scale"]
                if (not isinstance(values, list) or len(values) < 3
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                        or not all(np.isfinite(v) and v > 0 for v in values)):
                    raise ImageDataError(f"{what}: scale {values!r:.80} must be positive finite numbers")
                scale = [float(v) for v in values]
        out.append((sub, scale))
    return out


def _inside_path(path: str, what: str) -> str:
    """A container-relative path that cannot leave its container (no ``..``; leading ``/`` ignored)."""
    rel = path.strip().strip("/")
    if not rel or ".." in rel.replace("\\", "/").split("/"):
        raise ImageDataError(f"{what}: path {path!r} is empty or leaves its folder; Zarr paths must stay inside it")
    return rel


def _scan_bigstitcher_groups(path: Path | str) -> dict[ViewId, str]:
    """Find ``s{setup}-t{tp}.zarr`` groups in a container written by BigStitcher/tilefuse."""
    found = {}
    for name, is_folder in _storage.list_names(path):
        m = ZARR_VIEW_GROUP.fullmatch(name)
        if m and is_folder:
            found[ViewId(int(m.group(2)), int(m.group(1)))] = name
    if not found:
        raise MissingDataError(f"{path}: no s{{setup}}-t{{tp}}.zarr groups found")
    return dict(sorted(found.items()))
