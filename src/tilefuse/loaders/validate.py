"""One check of a view's pixel data against the project, before anything reads them.

Every path that reads pixels (``Project.image``, registration, intensity
matching, fusion) goes through :func:`check_view` first, so a view whose
data disagree with the XML, or whose pyramid cannot be right, is refused
with an :class:`~tilefuse.errors.ImageDataError` naming the file, the view
and what is wrong, instead of being fused into a wrong image.

Checked, once per view per process:

* the loader's own structure checks (:meth:`ImageLoader.check_view`: dataset
  paths that leave the container, HDF5 external storage, metadata types...);
* level 0 has the shape of the XML ``<size>``;
* the levels' downsampling factors are finite and >= 1, level 0 is
  ``(1, 1, 1)`` and no factor decreases from one level to the next;
* every level's shape is positive, no larger than the previous level's, and
  on each axis the floor or the ceiling of ``level 0 / factor`` (BDV's
  ``max(n // f, 1)`` is the floor, other writers round up), or whatever the
  loader's :meth:`~tilefuse.loaders.base.ImageLoader.level_shape_range` says
  for levels built by another formula (split views);
* the pixel type is one of the ten BDV / N5 numeric types and every level's
  block shape is positive.

What can only be seen when reading (a block's header, a chunk's decoded
size, a truncated TIFF) is checked by the loaders at read time.  A view
without any stored block at level 0 is legal (every format reads absent
blocks as the fill value) but logged as a warning
(:func:`warn_reads_as_fill`), as it usually means a broken export.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageDataError, where
from ..formats.bdv import BDV_DATA_TYPES
from ..project.views import ViewId
from .base import ImageLoader, cached_value, describe_files

__all__ = ["ViewData", "check_view", "allow_external_data", "level_shape_range", "warn_reads_as_fill",
           "ALLOW_EXTERNAL_ENV", "SUPPORTED_DTYPES"]

log = logging.getLogger(__name__)

#: The pixel types every format can hold and every writer of tilefuse can write (BDV / N5 names).
SUPPORTED_DTYPES = BDV_DATA_TYPES

#: Set to ``1`` to read HDF5 external storage and external links to files the XML does not list.
ALLOW_EXTERNAL_ENV = "TILEFUSE_ALLOW_EXTERNAL_DATA"

#: ``n / f`` this close (relative) to an integer is that integer: float factors such as 1.1 carry rounding noise.
_RATIO_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ViewData:
    """The checked layout of one view: per level factors ``(z, y, x)``, shapes and blocks, and the dtype."""

    levels: tuple[tuple[float, float, float], ...]
    shapes: tuple[tuple[int, int, int], ...]
    chunks: tuple[tuple[int, int, int], ...]
    dtype: np.dtype


def allow_external_data() -> bool:
    """Whether the user allowed data outside the containers the XML names (``TILEFUSE_ALLOW_EXTERNAL_DATA=1``)."""
    return os.environ.get(ALLOW_EXTERNAL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_view(loader: ImageLoader, view: ViewId, size: tuple[int, int, int] | None = None, *,
               xml_path: str | Path | None = None) -> ViewData:
    """Check one view's data against the project and return its checked layout.

    Parameters
    ----------
    loader : ImageLoader
        The loader holding the view (which must have it: see ``has_view``).
    view : ViewId
    size : (z, y, x) int, optional
        The XML ``<size>`` of the view's setup; level 0 must have this shape.
    xml_path : path, optional
        The project XML, for messages about ``<size>``.

    Returns
    -------
    ViewData

    Raises
    ------
    ImageDataError
        The data cannot be trusted; the message names the file, the view and what is wrong.
    MissingDataError
        A level or file the loader needs is absent.

    Notes
    -----
    The result is cached per process, keyed on the view's file, the loader, the
    view and ``size``, and valid only while the loader's
    :meth:`~tilefuse.loaders.base.ImageLoader.anchor_files` of the view keep
    their identity (size, modification time, inode): a file replaced or
    rewritten since is checked again.  Writers that rewrite a file also drop it
    with the file's handles (:func:`~tilefuse.loaders.base.drop_cached_handles`).
    Failures are not cached.
    """
    from dask.base import tokenize

    view = ViewId(*view)
    size = None if size is None else tuple(int(n) for n in size)
    try:
        files = loader.view_files(view)
        anchors = loader.anchor_files(view)
    except Exception:  # noqa: BLE001 - the check itself reports what is wrong, uncached
        return _check(loader, view, size, xml_path)
    # Keyed on the view's file, so that writers dropping its handles drop the check; tokenized, as tokens need not hash.
    anchor = str(files[0]) if files else repr(loader)
    key = (anchor, ("check_view", type(loader).__name__, tokenize(loader.token()), view, size))
    return cached_value(key, lambda: _check(loader, view, size, xml_path), anchors=anchors)


def _check(loader: ImageLoader, view: ViewId, size, xml_path) -> ViewData:
    here = f"{describe_files(loader, view)}, {view}"
    loader.check_view(view)
    # What the loader kept while checking, in one call (each method below may stat its files); else method by method.
    layout = loader.view_layout(view)
    if layout is not None and not len(layout[0]) == len(layout[2]) == len(layout[3]):
        layout = None
    levels = _check_levels(layout[0] if layout is not None else loader.levels(view), here)
    dtype = np.dtype(layout[1] if layout is not None else loader.dtype(view))
    if dtype.name not in SUPPORTED_DTYPES:
        raise ImageDataError(
            f"{here}: pixel type {dtype} is not supported (expected one of {', '.join(SUPPORTED_DTYPES)})"
        )
    # The default bounds need only the factors at hand; a loader's own (split views) is asked.
    default_bounds = type(loader).level_shape_range is ImageLoader.level_shape_range
    shapes, chunks = [], []
    for level, factors in enumerate(levels):
        shape = _positive_triple(layout[2][level] if layout is not None else loader.shape(view, level),
                                 f"{here}, level {level}: shape")
        block = _positive_triple(layout[3][level] if layout is not None else loader.chunks(view, level),
                                 f"{here}, level {level}: block shape")
        if level == 0 and size is not None and shape != size:
            raise ImageDataError(
                f"{where(xml_path, f'<ViewSetup> id {view.setup} <size>')}: the XML says "
                f"{_xyz(size)} (x y z) but {view} in {describe_files(loader, view)} is {_xyz(shape)} (x y z)"
            )
        if level > 0:
            bounds = (level_shape_range(shapes[0], factors) if default_bounds
                      else loader.level_shape_range(view, level, shapes[0]))
            _check_level_shape(shape, shapes[0], shapes[-1], factors, bounds, f"{here}, level {level}")
        shapes.append(shape)
        chunks.append(block)
    return ViewData(tuple(levels), tuple(shapes), tuple(chunks), dtype)


def _check_levels(levels, here: str) -> list[tuple[float, float, float]]:
    """Factors finite, >= 1, level 0 == (1, 1, 1), none decreasing from level to level."""
    try:
        out = [tuple(float(f) for f in lv) for lv in levels]
    except (TypeError, ValueError):
        raise ImageDataError(f"{here}: downsampling factors {levels!r} are not numbers") from None
    if not out:
        raise ImageDataError(f"{here}: no resolution levels")
    for i, factors in enumerate(out):
        if len(factors) != 3:
            raise ImageDataError(f"{here}, level {i}: {len(factors)} downsampling factors, expected 3")
        if not all(math.isfinite(f) and f >= 1 for f in factors):
            raise ImageDataError(
                f"{here}, level {i}: downsampling factors {_xyz(factors)} (x y z) must be finite and >= 1"
            )
    if out[0] != (1.0, 1.0, 1.0):
        raise ImageDataError(f"{here}: level 0 has downsampling factors {_xyz(out[0])} (x y z), expected 1 1 1")
    for i in range(1, len(out)):
        if any(b < a for a, b in zip(out[i - 1], out[i])):
            raise ImageDataError(
                f"{here}: downsampling factors decrease from level {i - 1} ({_xyz(out[i - 1])}) to "
                f"level {i} ({_xyz(out[i])}) (x y z)"
            )
    return out


def level_shape_range(shape0, factors) -> tuple[tuple[int, int], ...]:
    """Per axis, the floor and the ceiling of ``shape0 / factors`` (at least 1): the sizes a level may have.

    BigDataViewer's writers floor (``max(n // f, 1)``), others round up; both
    are right, anything else is not (a level padded by one voxel shifts every
    coarser pixel).  A ratio within a relative 1e-9 of an integer counts as
    that integer, so float factors (1.1, or Zarr scale ratios) do not widen
    the range by rounding noise.
    """
    out = []
    for n0, f in zip(shape0, factors):
        ratio = n0 / f
        nearest = round(ratio)
        if abs(ratio - nearest) <= _RATIO_TOLERANCE * max(1.0, ratio):
            lo = hi = nearest
        else:
            lo, hi = math.floor(ratio), math.ceil(ratio)
        out.append((max(lo, 1), max(hi, 1)))
    return tuple(out)


def _check_level_shape(shape, shape0, previous, factors, bounds, here: str) -> None:
    """A coarser level holds level 0 shrunk by its factors (``bounds`` per axis), no larger than the level before."""
    for axis, (n, prev, (lo, hi)) in enumerate(zip(shape, previous, bounds)):
        name = "zyx"[axis]
        if not lo <= n <= hi:
            expected = f"{lo}" if lo == hi else f"{lo} or {hi}" if hi == lo + 1 else f"{lo}..{hi}"
            raise ImageDataError(
                f"{here}: shape {_xyz(shape)} (x y z) does not fit downsampling factors {_xyz(factors)} of "
                f"level 0 ({_xyz(shape0)}): {name} should be {expected}; the pyramid is damaged"
            )
        if n > prev:
            raise ImageDataError(
                f"{here}: shape {_xyz(shape)} (x y z) is larger along {name} than the level before "
                f"({_xyz(previous)}); the pyramid is damaged"
            )


def warn_reads_as_fill(files: str, view: ViewId, fill=0) -> None:
    """Log (WARNING) that a view has no stored block at level 0, so it reads as its fill value everywhere.

    Not an error: an all-empty tile is valid in every format, and writers skip
    blocks equal to the fill value.  But it is also what a broken export or a
    wrong path looks like, so it is said once per view.
    """
    value = "zeros" if fill is None or fill == 0 else f"the fill value {fill!r}"
    log.warning("%s: %s has no stored blocks at level 0; it reads as %s", files, ViewId(*view), value)


def _positive_triple(values, what: str) -> tuple[int, int, int]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ImageDataError(f"{what} {values!r} is not 3 integers") from None
    if len(out) != 3 or min(out) < 1:
        raise ImageDataError(f"{what} {_xyz(out)} (x y z) must be 3 positive integers")
    return out


def _xyz(values) -> str:
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in tuple(values)[::-1])
