"""The :class:`Project`: a BigStitcher project a user can work with.

It wraps the parsed :class:`~tilefuse.project.model.SpimData`, resolves paths,
holds the image loader it is given, and answers the questions the rest of
tilefuse asks: which views exist, how they group, where each voxel lands in
world space, and what its pixels are (as lazy dask arrays).  It knows no pixel
format: :func:`tilefuse.open_project` (:mod:`tilefuse.opening`) reads the XML
and builds the loader its ``<ImageLoader>`` describes.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .. import _storage
from .._outputs import check_outputs, fsync_path, output_errors, rename_all
from .._text import shortlist
from ..errors import (
    ImageDataError,
    MissingDataError,
    ProjectFormatError,
    SelectionError,
    TilefuseError,
    UnsupportedFormatError,
    where,
)
from ..geometry import Box, compose_chain, mipmap_transform, view_box
from .model import Entity, SpimData, ViewTransform
from .paths import parse_location, same_dir
from .views import ViewId
from .xml_write import spimdata_bytes, write_spimdata

__all__ = ["Project", "squeeze_z", "ATTRIBUTE_KINDS"]

#: Attribute kinds usable in :meth:`Project.select` and :meth:`Project.group_views`.
ATTRIBUTE_KINDS = ("channel", "illumination", "tile", "angle")

_MAX_BACKUPS = 5


def squeeze_z(image):
    """Drop the singleton ``z`` axis of a 2D view (``(1, y, x)`` -> ``(y, x)``)."""
    if image.ndim >= 3 and image.shape[-3] == 1:
        return image[..., 0, :, :]
    return image


def _as_set(value) -> set | None:
    if value is None:
        return None
    if isinstance(value, (str, int, np.integer)):
        return {value}
    return set(value)


class Project:
    """A SpimData2 project: views, their transforms and their pixels.

    Most users get one from :func:`tilefuse.open_project`, which builds the
    loader.  The object is not thread-safe for modification; reading pixels
    through :meth:`image` is.

    Parameters
    ----------
    data : SpimData
        The parsed document.
    path : Path, optional
        Where the XML lives (relative paths resolve against its folder).
    loader : ImageLoader, optional
        The loader of the pixels: the one ``data.image_loader`` describes, or
        another (then see :meth:`set_loader`).  Without one the project has no
        pixels.
    loader_error : TilefuseError, optional
        Why there is no loader (e.g. an image format tilefuse cannot read):
        raised when pixels are asked for, so that the XML and the transforms
        stay usable.
    """

    def __init__(self, data: SpimData, path: str | Path | None = None, loader=None, *,
                 loader_error: TilefuseError | None = None):
        self.data = data
        # A URL (the XML in an object store) stays a string: Path would fold "s3://b" into "s3:/b".
        self.path = None if path is None else str(path) if _storage.is_url(path) else Path(path).resolve()
        self._loader = loader
        self._loader_error = loader_error

    def copy(self) -> Project:
        """A deep copy (the loader is shared: it holds no state worth copying)."""
        new = Project.__new__(Project)
        new.data = copy.deepcopy(self.data)
        new.path = self.path
        new._loader = self._loader
        new._loader_error = self._loader_error
        return new

    # -- paths ----------------------------------------------------------------------
    @property
    def base_dir(self) -> Path | str:
        """The resolved ``<BasePath>``: the folder image loader paths are relative to (a URL for a project
        stored in, or pointing into, an object store)."""
        root = _storage.parent(self.path) if self.path is not None else Path.cwd()
        try:
            path, uri = parse_location(self.data.base_path or ".", self.data.base_path_type, root)
        except ProjectFormatError as exc:
            raise ProjectFormatError(f"{where(self.path, '<BasePath>')}: {exc}") from None
        if uri is not None:
            if not _storage.is_url(uri):
                raise UnsupportedFormatError(f"{where(self.path, '<BasePath>')}: base path {uri!r} is not a URL "
                                             "tilefuse can open")
            return uri.rstrip("/")
        return path.resolve()

    @property
    def loader(self):
        """The image loader, or raise why there is none."""
        if self._loader_error is not None:
            raise self._loader_error
        if self._loader is None:
            if self.data.image_loader is not None:
                raise MissingDataError(f"{where(self.path, '<ImageLoader>')}: the image loader was not built "
                                       "(open the project with tilefuse.open_project)")
            raise MissingDataError(f"{where(self.path, '<ImageLoader>')}: the project has no image loader")
        return self._loader

    def set_loader(self, loader) -> None:
        """Use ``loader`` for pixels; :meth:`save` then writes its XML."""
        self._loader = loader
        self._loader_error = None
        self.data.image_loader = None

    # -- views and attributes -------------------------------------------------------
    @property
    def setups(self):
        return self.data.setups

    @property
    def timepoints(self) -> list[int]:
        return list(self.data.timepoints.ids)

    @property
    def missing_views(self) -> set[ViewId]:
        return set(self.data.missing_views or ())

    @property
    def views(self) -> list[ViewId]:
        """Every present view, sorted by (timepoint, setup); missing views are left out."""
        missing = self.missing_views
        return [
            ViewId(t, s)
            for t in sorted(self.timepoints)
            for s in sorted(self.setups)
            if ViewId(t, s) not in missing
        ]

    def entities(self, kind: str) -> dict[int, Entity]:
        """The entities of one attribute kind (``"channel"``, ``"tile"``...) by id."""
        block = self.data.attribute_blocks.get(kind)
        return dict(block.entities) if block is not None else {}

    def attribute(self, view: ViewId | int, kind: str) -> int | None:
        """The entity id of attribute ``kind`` of a view (or setup id)."""
        setup = view.setup if isinstance(view, ViewId) else int(view)
        return self.setups[setup].attributes.get(kind)

    def attributes(self, view: ViewId | int) -> dict[str, int]:
        setup = view.setup if isinstance(view, ViewId) else int(view)
        return dict(self.setups[setup].attributes)

    def describe_entities(self, kind: str, limit: int = 20) -> str:
        """The values of one attribute kind as a user would name them: ``0 "DAPI", 1 "GFP"``.

        ``kind`` is an attribute kind, ``"timepoint"`` or ``"setup"``; lists
        longer than ``limit`` end with ``… and N more``.
        """
        if kind == "timepoint":
            return shortlist(self.timepoints, limit)
        if kind == "setup":
            return shortlist(sorted(self.setups), limit)
        ids = sorted(set(self.entities(kind)) | {s.attributes[kind] for s in self.setups.values()
                                                 if kind in s.attributes})
        return shortlist((self.entity_label(kind, i) for i in ids), limit) if ids else "none"

    def entity_label(self, kind: str, eid: int | None) -> str:
        """One attribute value as a user names it: ``0 "DAPI"``, or the id alone when the name adds nothing."""
        ent = self.entities(kind).get(eid)
        return f'{eid} "{ent.name}"' if ent is not None and ent.name not in (None, str(eid)) else str(eid)

    def _resolve(self, kind: str, wanted: set) -> set[int]:
        """Entity ids of ``kind`` that the wanted ids or names stand for; unknown values raise.

        A string is a name first, then a decimal id (the command line passes
        ``--channel 0`` as text); a number is an id.
        """
        if kind == "timepoint":
            known = set(self.timepoints)
        elif kind == "setup":
            known = set(self.setups)
        else:
            known = set(self.entities(kind)) | {
                s.attributes[kind] for s in self.setups.values() if kind in s.attributes}
        by_name: dict[str, set[int]] = {}
        if kind not in ("timepoint", "setup"):
            for eid, ent in self.entities(kind).items():
                if ent.name is not None:
                    by_name.setdefault(ent.name, set()).add(eid)
        ids: set[int] = set()
        unknown = []
        for value in wanted:
            if isinstance(value, str) and value in by_name:
                ids |= by_name[value]
                continue
            is_id = isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.isdecimal())
            if is_id and int(value) in known:
                ids.add(int(value))
            else:
                unknown.append(value)
        if unknown:
            plural = {"illumination": "illuminations", "setup": "setups"}.get(kind, f"{kind}s")
            asked = f"{kind} {unknown[0]!r}" if len(unknown) == 1 else f"{plural} {shortlist(map(repr, unknown), 5)}"
            raise SelectionError(f"{where(self.path)}: no {asked} ({plural}: {self.describe_entities(kind)})")
        return ids

    def select(
        self,
        views: Iterable[ViewId] | None = None,
        *,
        timepoint=None,
        setup=None,
        channel=None,
        illumination=None,
        tile=None,
        angle=None,
        **other_attributes,
    ) -> list[ViewId]:
        """Views matching every given criterion.

        Each criterion is an id, an entity name, or a collection of them, e.g.
        ``project.select(channel="488", tile=[0, 1])``.  A value the project
        does not have at all raises :class:`~tilefuse.errors.SelectionError`
        listing the values it has; values that exist but match no view
        together give an empty list.
        """
        wanted = {"channel": channel, "illumination": illumination, "tile": tile, "angle": angle}
        wanted.update(other_attributes)
        wanted = {k: self._resolve(k, _as_set(v)) for k, v in wanted.items() if v is not None}
        tps = None if timepoint is None else self._resolve("timepoint", _as_set(timepoint))
        sus = None if setup is None else self._resolve("setup", _as_set(setup))
        out = []
        for view in self.views if views is None else views:
            if tps is not None and view.timepoint not in tps:
                continue
            if sus is not None and view.setup not in sus:
                continue
            attrs = self.setups[view.setup].attributes
            if all(attrs.get(k) in ids for k, ids in wanted.items()):
                out.append(view)
        return out

    def group_views(
        self, views: Iterable[ViewId] | None = None, by: Iterable[str] = ("timepoint", "tile", "angle")
    ) -> dict[tuple, list[ViewId]]:
        """Group views that share the values of ``by``.

        The default groups all channels and illuminations of one tile and angle
        at one timepoint, BigStitcher's default for stitching.  Keys are tuples
        of the ``by`` values, in order.
        """
        by = tuple(by)
        groups: dict[tuple, list[ViewId]] = {}
        for view in self.views if views is None else views:
            key = tuple(
                view.timepoint if k == "timepoint" else view.setup if k == "setup" else self.attribute(view, k)
                for k in by
            )
            groups.setdefault(key, []).append(view)
        return groups

    # -- geometry ------------------------------------------------------------------
    def transforms(self, view: ViewId) -> list[ViewTransform]:
        """The ViewTransform chain of a view, first-listed (applied last) first."""
        try:
            return self.data.registrations[view]
        except KeyError:
            raise TilefuseError(f"{where(self.path)}: {view} has no <ViewRegistration>") from None

    def model(self, view: ViewId) -> np.ndarray:
        """The full 4x4 ``zyx`` model, voxel -> world: ``T0 @ T1 @ ... @ Tn``."""
        chain = self.transforms(view)
        for vt in chain:
            if vt.matrix is None:
                raise UnsupportedFormatError(
                    f"{where(self.path)}: {view} has a ViewTransform of type {vt.type!r}, "
                    "which only BigStitcher's Java code can evaluate"
                )
        return compose_chain([vt.matrix for vt in chain])

    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        """Downsampling factors ``(z, y, x)`` of the view's resolution levels."""
        if self._loader is None:
            return [(1.0, 1.0, 1.0)]
        return [tuple(float(f) for f in lv) for lv in self.loader.levels(view)]

    def transform(self, view: ViewId, level: int = 0) -> np.ndarray:
        """Voxel -> world matrix of a resolution level: ``model @ mipmap``.

        ``mipmap`` is BigDataViewer's transform for the level's downsampling
        factors, or the loader's own (:meth:`ImageLoader.mipmap_transform`).
        """
        model = self.model(view)
        if level == 0:
            return model
        if self._loader is not None:
            return model @ self._loader.mipmap_transform(view, level)
        return model @ mipmap_transform(self.levels(view)[level])

    def preconcatenate(self, view: ViewId, matrix: np.ndarray, name: str) -> None:
        """Add ``matrix`` at the front of the chain (applied last), as BigStitcher does."""
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f"expected a 4x4 zyx matrix, got shape {matrix.shape}")
        self.data.registrations.setdefault(view, []).insert(0, ViewTransform(name=name, matrix=matrix))

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        """Voxel shape ``(z, y, x)``: from the image file when there is one (checked, see :meth:`check_view`),
        else the XML size."""
        if self._loader is not None and self._loader.has_view(view):
            levels = self.check_view(view).shapes
            if not 0 <= level < len(levels):
                raise ImageDataError(f"{where(self.path)}: {view} has {len(levels)} levels, level {level} asked")
            return levels[level]
        size = self.setups[view.setup].size
        if size is None:
            raise ImageDataError(f"{where(self.path)}: {view} has no <size> and no pixels")
        if level:
            f = np.asarray(self.levels(view)[level])
            return tuple(int(v) for v in np.maximum(1, np.floor(np.asarray(size) / f)))
        return tuple(int(v) for v in size)

    def voxel_size(self, view: ViewId | int) -> tuple[float, float, float] | None:
        setup = view.setup if isinstance(view, ViewId) else int(view)
        return self.setups[setup].voxel_size

    def world_box(self, view: ViewId) -> Box:
        """World box of a view's voxel centres under its current model."""
        return view_box(self.model(view), self.setup_shape(view))

    def setup_shape(self, view: ViewId) -> tuple[int, int, int]:
        """The size written in the XML (cheap: no file access); falls back to the file."""
        size = self.setups[view.setup].size
        return tuple(size) if size is not None else self.shape(view)

    @property
    def ndim(self) -> int:
        """2 if every view is a single plane (``z == 1``), else 3."""
        sizes = [self.setup_shape(v) for v in self.views]
        return 2 if sizes and all(s[0] == 1 for s in sizes) else 3

    # -- pixels -----------------------------------------------------------------------
    def image(self, view: ViewId, level: int = 0, chunks=None):
        """The pixels of a view as a lazy dask array ``(z, y, x)``.

        Chunks follow the file's own blocks unless ``chunks`` is given; 2D
        views keep a singleton ``z`` (see :func:`squeeze_z`).  The view's data
        are checked first (:meth:`check_view`).

        Raises
        ------
        MissingDataError
            The view is missing (``<MissingViews>``) or absent from the file.
        ImageDataError
            The data disagree with the XML ``<size>`` or cannot be trusted (see :meth:`check_view`).
        """
        data = self.check_view(view)
        if not 0 <= level < len(data.levels):
            raise ImageDataError(f"{where(self.path)}: {view} has {len(data.levels)} levels, level {level} asked")
        return self.loader.image(view, level, chunks=chunks)

    def check_view(self, view: ViewId):
        """Check a view's pixel data against the project before reading them; return their layout.

        Every path that reads pixels (:meth:`image`, registration, intensity
        matching, fusion) calls this.  It runs once per view per process (the
        loader's :meth:`~tilefuse.loaders.base.ImageLoader.checked_layout`; see
        :func:`tilefuse.loaders.validate.check_view` for what is checked).

        Returns
        -------
        tilefuse.loaders.validate.ViewData
            Per level factors, shapes and blocks ``(z, y, x)``, and the dtype;
            level 0's shape equals the XML ``<size>``.

        Raises
        ------
        MissingDataError
            The view is missing (``<MissingViews>``), not part of the project, or absent from the file.
        ImageDataError
            The data disagree with the XML or with themselves; the message names the file, the view
            and what is wrong.
        """
        view = ViewId(*view)
        loader = self.loader
        if view in self.missing_views:
            raise MissingDataError(f"{where(self.path)}: {view} is listed in <MissingViews>")
        if view.setup not in self.setups or view.timepoint not in self.timepoints:
            raise MissingDataError(f"{where(self.path)}: {view} is not part of the project")
        if not loader.has_view(view):
            raise MissingDataError(f"{where(self.path)}: {view} has no pixels in {loader.describe_files(view)}")
        return loader.checked_layout(view, self.setups[view.setup].size, xml_path=self.path)

    def check_size(self, view: ViewId) -> None:
        """Raise :class:`ImageDataError` if the view's data disagree with the XML (see :meth:`check_view`)."""
        self.check_view(view)

    # -- saving ---------------------------------------------------------------------
    def save(self, path: str | Path | None = None, *, backup: bool = True) -> Path:
        """Write the project XML.

        The new XML is first written completely (flushed and synced to disk)
        under a temporary name beside the target.  Only then does an existing
        file become ``dataset.xml~1`` (older backups shift to ``~2``...``~5``,
        as BigStitcher names them) and the new file take its name.  A failure
        at any point (full disk, read-only folder) leaves the target and every
        backup exactly as they were; a crash may leave a stray temporary file
        but never loses the current file.  Saving into another folder keeps
        the pixels reachable by rewriting a relative ``<BasePath>``; the
        folder is created if needed.

        Raises
        ------
        OutputError
            The XML cannot be written (no space, read-only, no permission);
            nothing was changed.
        """
        target = path if path is not None else self.path
        if target is None:
            raise TilefuseError("the project has no path: give save() one")
        if _storage.is_url(target) or (path is None and _storage.is_url(self.path)):
            return self._save_remote(str(target), backup=backup)
        target = Path(target).resolve()
        data = self.data
        old_base = self.base_dir if (self.path is not None or self._loader is not None) else None
        if _storage.is_url(old_base) and data.base_path_type == "relative":
            # Pixels in an object store, the XML saved locally: point at them by URL.
            data = copy.copy(data)
            data.base_path, data.base_path_type = str(old_base), "absolute"
        elif (
            old_base is not None
            and data.base_path_type == "relative"
            and not Path(data.base_path).is_absolute()
            and target.parent != (self.path.parent if self.path else None)
        ):
            data = copy.copy(data)
            data.base_path = os.path.relpath(old_base, target.parent)
            if data.base_path in ("", "."):
                data.base_path = "."
        loader_element = None
        if self._loader is not None and self.data.image_loader is None:
            loader_element = self._loader.to_xml(old_base if old_base is not None else target.parent)
        if not target.parent.is_dir():
            check_outputs([target])  # a clear error when the folder cannot be created
        staged = target.with_name(f".{target.name}.saving-{os.getpid()}")
        nothing = f"nothing was changed ({target.name} and its backups are as they were)"
        with output_errors(target, nothing, watch=[staged]):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_spimdata(data, staged, image_loader=loader_element)
                fsync_path(staged)
                if backup and target.exists():
                    _rotate_backups(target, staged)
                else:
                    os.replace(staged, target)
                fsync_path(target.parent)
            finally:
                if staged.exists():
                    staged.unlink()
        if self.path is None:
            self.path = target
        return target

    def _save_remote(self, target: str, *, backup: bool) -> str:
        """:meth:`save` to a URL: one PUT of the whole document (an object store shows an object whole or not
        at all, so no temporary name is needed); the object it replaces is first copied to ``~1`` (``~1`` ->
        ``~2`` ... ``~5``), server side."""
        data = self.data
        old_base = self.base_dir if (self.path is not None or self._loader is not None) else None
        moved = old_base is not None and not same_dir(old_base, _storage.parent(target))
        if moved and data.base_path_type == "relative":
            # Saved elsewhere: the pixels stay where they are, named absolutely.
            data = copy.copy(data)
            data.base_path, data.base_path_type = str(old_base), "absolute"
        loader_element = None
        if self._loader is not None and self.data.image_loader is None:
            loader_element = self._loader.to_xml(old_base if old_base is not None else _storage.parent(target))
        text = spimdata_bytes(data, image_loader=loader_element)
        if backup and _storage.exists(target):
            fs, key = _storage.filesystem(target)
            for i in range(4, 0, -1):
                if fs.exists(f"{key}~{i}"):
                    fs.copy(f"{key}~{i}", f"{key}~{i + 1}")
            fs.copy(key, f"{key}~1")
        _storage.write_file(target, text, "project XML")
        if self.path is None:
            self.path = target
        return target

    # -- display ----------------------------------------------------------------------
    def __repr__(self) -> str:
        name = _storage.name(self.path) if self.path else "<unsaved>"
        fmt = self.data.image_loader.get("format") if self.data.image_loader is not None else (
            self._loader.format if self._loader is not None else "none")
        return (
            f"<Project {name}: {len(self.views)} views, {len(self.setups)} setups, "
            f"{len(self.timepoints)} timepoints, loader {fmt}>"
        )


def _rotate_backups(target: Path, new: Path) -> None:
    """Install ``new`` as ``target``, which becomes ``target~1`` (``~1`` -> ``~2`` ... ``~5``).

    All or nothing: the renames are undone if one fails, and the oldest
    backup is deleted only after the new file is in place.  ``target`` keeps
    its name throughout (the new ``~1`` starts as a hard link to it), so even a
    crash half-way never leaves the project without its current XML.
    """
    def name(i: int) -> Path:
        return target.with_name(f"{target.name}~{i}")

    pid = os.getpid()
    first = target.with_name(f".{target.name}~1.saving-{pid}")
    dropped = target.with_name(f".{target.name}~{_MAX_BACKUPS}.dropping-{pid}")
    try:
        try:
            os.link(target, first)
        except OSError:  # no hard links here (FAT, some network shares): a copy, synced
            shutil.copy2(target, first)
            fsync_path(first)
        # ~4 -> ~5 replaces the oldest backup: keep it aside until the new file is in place.
        full = name(_MAX_BACKUPS - 1).exists() and name(_MAX_BACKUPS).exists()
        moves = [(name(_MAX_BACKUPS), dropped)] if full else []
        moves += [(name(i), name(i + 1)) for i in range(_MAX_BACKUPS - 1, 0, -1) if name(i).exists()]
        moves += [(first, name(1)), (new, target)]
        rename_all(moves)
    finally:
        for leftover in (first, dropped):
            if leftover.exists():
                leftover.unlink()
