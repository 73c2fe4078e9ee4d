"""``<ImageLoader format="bdv.n5">``: BigDataViewer / BigStitcher N5 containers.

Layout (bigdataviewer-core ``BdvN5Format``)::

    dataset.n5/
      attributes.json                      {"n5": "..."}
      setup{s}/attributes.json             {"downsamplingFactors": [[1,1,1], [2,2,1], ...],  (x y z)
                                            "dataType": "uint16", ...}
      setup{s}/timepoint{t}/s{level}/      one N5 dataset per resolution level

XML::

    <ImageLoader format="bdv.n5" version="1.1">
      <n5 type="relative">dataset.n5</n5>
    </ImageLoader>

The container may be local or at any fsspec URL (``s3://bucket/dataset.n5``;
:mod:`tilefuse._storage`): attributes and the blocks a region needs are read
one object each.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree

from .. import _storage
from ..errors import ImageDataError, MissingDataError, ProjectFormatError, where
from ..formats.bdv import n5_level, n5_setup, n5_view
from ..formats.n5 import N5_DTYPES, N5Dataset, read_attributes
from ..project.paths import parse_location, path_element, single_child
from ..project.views import ViewId
from . import register_loader
from .base import ImageLoader, Region, cached_handle, normalize_region

__all__ = ["N5Loader"]

_ELEMENT = '<ImageLoader format="bdv.n5">'


@register_loader
class N5Loader(ImageLoader):
    """Reads BDV N5 containers written by BigDataViewer, BigStitcher or tilefuse.

    Build it from XML with :meth:`from_xml` or from Python with :meth:`for_path`.
    """

    format = "bdv.n5"

    def __init__(self, path: Path | None, *, version: str = "1.1", uri: str | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.uri = uri
        self.version = version

    # -- construction ---------------------------------------------------------
    @classmethod
    def for_path(cls, path: str | Path, version: str = "1.1") -> N5Loader:
        """A loader for the N5 container at ``path``, a local folder or a URL (no XML needed)."""
        if _storage.is_url(path):
            return cls(None, version=version, uri=str(path).rstrip("/"))
        return cls(Path(os.path.normpath(Path(path).absolute())), version=version)

    @classmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None = None) -> N5Loader:
        n5 = single_child(element, "n5", xml_path, _ELEMENT)
        if n5 is None or not (n5.text or "").strip():
            raise ProjectFormatError(f"{where(xml_path, _ELEMENT)}: missing <n5> path")
        path, uri = parse_location(n5.text, n5.get("type"), base_dir)
        loader = cls(path, version=element.get("version", "1.0"), uri=uri)
        loader.xml_path = xml_path
        loader._remember_xml(element, base_dir)
        return loader

    def to_xml(self, base_dir: Path):
        original = self._verbatim_xml(base_dir, remote=self.uri is not None)
        if original is not None:
            return original
        el = etree.Element("ImageLoader", format=self.format, version=self.version)
        el.append(path_element("n5", self.root, base_dir))
        return el

    def __repr__(self) -> str:
        return f"N5Loader({str(self.uri or self.path)!r})"

    def __getstate__(self) -> dict:
        return dict(self.__dict__)

    # -- helpers --------------------------------------------------------------
    def _where(self, view: ViewId | None = None) -> str:
        loc = self.uri or str(self.path)
        return f"{loc}, {view}" if view is not None else loc

    @property
    def root(self) -> Path | str | None:
        """The container: a local folder or a URL."""
        return self.uri.rstrip("/") if self.uri is not None else self.path

    def _check_local(self, view: ViewId | None = None) -> Path | str:
        if self.root is None:
            raise ProjectFormatError(f"{where(self.xml_path, _ELEMENT)}: no <n5> path")
        return self.root

    def _container(self, view: ViewId) -> Path | str:
        path = self._check_local(view)
        # Locally a stat; on object storage a listing per read would cost a round trip: a missing container
        # shows there as a missing setup attributes.json instead.
        if not _storage.is_url(path) and not path.is_dir():
            raise MissingDataError(f"{path}: N5 container does not exist (needed for {view})")
        return path

    def _setup_attributes(self, view: ViewId) -> dict[str, Any]:
        path = _storage.join(self._container(view), n5_setup(view.setup))
        attrs = cached_handle((str(path), "n5-setup-attributes"), lambda: read_attributes(path),
                              anchors=[_storage.join(path, "attributes.json")])
        if not attrs:
            raise MissingDataError(f"{path}: setup group missing or without attributes.json ({view})")
        return attrs

    def _dataset(self, view: ViewId, level: int) -> N5Dataset:
        nlev = len(self.levels(view))
        if not 0 <= level < nlev:
            raise ImageDataError(f"{self._where(view)}: level {level} does not exist ({nlev} levels)")
        path = _storage.join(self._container(view), n5_level(view.timepoint, view.setup, level))

        def opener() -> N5Dataset:
            try:
                ds = N5Dataset(path)
            except MissingDataError:
                raise MissingDataError(f"{path}: N5 dataset missing for {view}, level {level}") from None
            if ds.ndim != 3:
                raise ImageDataError(f"{path}: expected a 3D dataset, found {ds.ndim}D ({view})")
            return ds

        return cached_handle((str(path), "n5-dataset"), opener, anchors=[_storage.join(path, "attributes.json")])

    # -- metadata -------------------------------------------------------------
    def has_view(self, view: ViewId) -> bool:
        path = self._check_local(view)
        s0 = _storage.join(path, n5_level(view.timepoint, view.setup, 0), "attributes.json")
        return _storage.exists(s0)  # not is_file(): a FIFO or folder there is refused when read, not "no pixels"

    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        attrs = self._setup_attributes(view)
        factors = attrs.get("downsamplingFactors")
        if factors is None:
            return [(1.0, 1.0, 1.0)]
        try:
            out = [tuple(float(f) for f in reversed(level)) for level in factors]
        except (TypeError, ValueError):
            raise ImageDataError(
                f"{self._container(view)}/setup{view.setup}/attributes.json: bad downsamplingFactors {factors!r}"
            ) from None
        if not out or any(len(f) != 3 for f in out):
            raise ImageDataError(
                f"{self._container(view)}/setup{view.setup}/attributes.json: bad downsamplingFactors {factors!r}"
            )
        return out

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        return tuple(self._dataset(view, level).shape)

    def dtype(self, view: ViewId) -> np.dtype:
        name = self._setup_attributes(view).get("dataType")
        if name in N5_DTYPES:
            return N5_DTYPES[name]
        return self._dataset(view, 0).dtype

    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        return tuple(self._dataset(view, level).chunks)

    def read(self, view: ViewId, level: int, region: Region, *, cache: bool = False) -> np.ndarray:
        ds = self._dataset(view, level)
        region = normalize_region(region, ds.shape)
        return ds.read(region, cache=cache).astype(self.dtype(view), copy=False)

    def check_view(self, view: ViewId) -> None:
        """Every level a readable 3D N5 dataset of the setup's ``dataType``.

        The setup's ``dataType`` is what :meth:`dtype` reports and what reads are
        cast to; a level stored in another type would be silently converted.
        """
        view = ViewId(*view)
        declared = self._setup_attributes(view).get("dataType")
        for level in range(len(self.levels(view))):
            ds = self._dataset(view, level)
            if declared is not None and declared != ds.dtype.name:
                raise ImageDataError(
                    f"{self._container(view)}/setup{view.setup}/attributes.json: dataType {declared!r} but "
                    f"{ds.path}/attributes.json says {ds.dtype.name!r} ({view}, level {level})"
                )
        level0 = self._dataset(view, 0)
        if not _any_block(level0.path, level0.ndim):
            from .validate import warn_reads_as_fill

            warn_reads_as_fill(str(level0.path), view)

    def anchor_files(self, view: ViewId) -> list[Path]:
        """The setup's and every level's ``attributes.json`` (a folder's time does not follow its files)."""
        root = self.root
        if root is None:
            return []
        view = ViewId(*view)
        try:
            n_levels = len(self.levels(view))
        except Exception:  # noqa: BLE001 - damaged: the check reports it
            n_levels = 1
        return [_storage.join(root, n5_setup(view.setup), "attributes.json")] + [
            _storage.join(root, n5_level(view.timepoint, view.setup, level), "attributes.json")
            for level in range(n_levels)]

    def files(self) -> list[Path | str]:
        return [self.root] if self.root is not None else []

    def view_files(self, view: ViewId) -> list[Path | str]:
        root = self.root
        if root is None:
            return []
        view = ViewId(*view)
        return [_storage.join(root, n5_setup(view.setup), "attributes.json"),
                _storage.join(root, n5_view(view.timepoint, view.setup))]


def _any_block(dataset: Path | str, ndim: int) -> bool:
    """Whether an N5 dataset stores at least one block: a file ``ndim`` numbered folders deep.

    Stops at the first block found, so a dataset with blocks costs a few
    directory listings; only an empty one is walked through (and it is empty).
    """
    def search(folder: Path | str, depth: int) -> bool:
        for name, is_folder in _storage.list_names(folder):
            if not name.isdigit():
                continue
            if depth == ndim:
                if not is_folder:
                    return True
            elif is_folder and search(_storage.join(folder, name), depth + 1):
                return True
        return False

    return search(dataset, 1)
