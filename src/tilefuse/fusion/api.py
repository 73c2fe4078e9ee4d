"""Fuse the views of a project: from a :class:`Project` to a lazy ``(t, c, z, y, x)`` array.

This module turns views into :class:`~tilefuse.fusion.engine.FusionSource`
objects (loader + view + level + transform, nothing heavier) and decides the
output grid; :func:`~tilefuse.fusion.engine.fuse_sources` does the work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import FusionError, OptionError, where
from ..geometry import Box
from ..geometry.affine import axis_scales, linear_part
from ..geometry.boxes import view_box
from ..project.project import Project
from ..project.views import ViewId
from .content import content_weights
from .engine import FusionSource, fuse_sources, output_chunks
from .options import FusionOptions

__all__ = ["FusionPlan", "plan_fusion", "fuse", "fusion_sources"]

log = logging.getLogger(__name__)


@dataclass
class FusionPlan:
    """Everything needed to fuse: the output grid and the views of each (timepoint, channel).

    ``origin`` and ``spacing`` are in world units (BigStitcher's: one unit is
    one voxel of the finest axis); ``voxel_size`` is the physical size of an
    output voxel in ``unit``.
    """

    project: Project
    #: (timepoint, channel) -> views fused into that volume (illuminations and angles combined)
    volumes: dict[tuple[int, int], list[ViewId]]
    timepoints: list[int]
    channels: list[int]
    origin: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    unit: str
    ndim: int
    options: FusionOptions = field(default_factory=FusionOptions)
    #: The output chunk shape used (``options.chunks``, or the default chosen for the grid).
    chunks: tuple[int, ...] | None = None
    #: view -> (checked layout, pyramid level read, that level's voxel -> world matrix), worked out once per
    #: plan: the graph and the fingerprint both need them (at 10,000 views each lookup cost ~1 s of client time).
    _views: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def _view_info(self, view: ViewId):
        got = self._views.get(view)
        if got is None:
            # Checked against the XML first: a view whose data cannot be trusted is refused, not fused.
            data = self.project.check_view(view)
            model = self.project.model(view)
            level = _choose_fusion_level(self.project, view, self.spacing, data.levels, model)
            affine = model if level == 0 else self.project.transform(view, level)
            got = self._views[view] = (data, level, affine)
        return got

    @property
    def channel_names(self) -> list[str]:
        ents = self.project.entities("channel")
        return [str(ents[c].name) if c in ents and ents[c].name else str(c) for c in self.channels]

    @property
    def dtype(self) -> np.dtype:
        """The output type: the one asked for, else the common type of the views."""
        if self.options.dtype is not None:
            return self.options.dtype
        loader = self.project.loader
        return np.result_type(*{loader.dtype(v) for views in self.volumes.values() for v in views})

    def sources(self, views: Sequence[ViewId], chunk_world: Sequence[float] | None = None,
                grid: tuple | None = None) -> list[FusionSource]:
        """Fusion sources of some views, reading the pyramid level that suits the spacing.

        ``chunk_world``: the output chunk's extent in world units (numpy order,
        the output's axes), which decides whether a view's reads go through the
        decoded-block cache (see :func:`_block_cache_pays`).  ``grid``: the
        output's ``(origin, spacing, shape, chunks)`` (its axes), from which the
        regions of each view that the chunks will read are told to the cache.
        """
        content = self.options.content_sigmas if self.options.content_based else None
        return [_source(self.project, v, self.spacing, self.ndim, self.options.intensity_adjustment,
                        chunk_world, content, grid, known=self._view_info(v)) for v in views]

    def volume(self, timepoint: int, channel: int):
        """The lazy fused ``(z, y, x)`` volume of one timepoint and channel."""
        views = self.volumes.get((timepoint, channel), [])
        if not views:  # e.g. a channel not acquired at this timepoint: fill_value, like uncovered voxels
            import dask.array as da

            return da.zeros(self.shape, dtype=self.dtype, chunks=self.chunks or "auto")
        grid_shape = self.shape if self.ndim == 3 else self.shape[1:]
        origin = self.origin if self.ndim == 3 else self.origin[1:]
        spacing = self.spacing if self.ndim == 3 else self.spacing[1:]
        chunks = self.chunks
        if chunks is not None and self.ndim == 2 and len(chunks) == 3:
            chunks = chunks[1:]
        chunks = output_chunks(chunks, grid_shape)
        chunk_world = np.array([max(c) for c in chunks], dtype=np.float64) * spacing
        o = self.options
        fused = fuse_sources(self.sources(views, chunk_world, (origin, spacing, grid_shape, chunks)), origin=origin,
                             spacing=spacing,
                             shape=grid_shape, chunks=chunks, blending=o.blending, blend_range=o.blend_range,
                             blend_border=o.blend_border, interpolation=o.interpolation, dtype=o.dtype)
        return fused if self.ndim == 3 else fused[None]

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the fused pixels, for keying resumable outputs.

        Sections (a resumed write names the ones that differ):

        ``tilefuse``
            the version that fuses;
        ``grid``
            origin, spacing, shape, dtype, timepoints and channels of the output;
        ``options``
            blending, ramp, border, interpolation, chunks, intensity and content options;
        ``views``
            per output volume, the views with the pyramid level read, the full
            voxel -> world matrix of that level (the transform chain and
            mipmap), the level's shape, the intensity adjustment applied, and
            the loader (its files and, for split views, their boxes);
        ``pixels``
            per view, :meth:`ImageLoader.data_identity` (size and modification
            time of the files holding it).

        ``grid``, ``views`` and ``pixels`` are sha1 digests (a project of
        10,000 views would otherwise store megabytes); ``options`` is kept as
        is so that a message can say which option changed.
        """
        loader = self.project.loader
        use_intensity = self.options.intensity_adjustment and bool(self.project.data.intensity_adjustments)
        volumes, pixels = [], []
        for (t, c), views in sorted(self.volumes.items()):
            entries = []
            for v in views:
                data, level, affine = self._view_info(v)
                adjust = self.project.data.intensity_adjustments.get(v, (1.0, 0.0)) if use_intensity else None
                entries.append([list(v), level, affine.tolist(), list(data.shapes[level]),
                                adjust and [float(a) for a in adjust]])
                pixels.append([list(v), loader.data_identity(v)])
            volumes.append([t, c, entries])
        grid = {"origin": self.origin.tolist(), "spacing": self.spacing.tolist(), "shape": list(self.shape),
                "ndim": self.ndim, "dtype": self.dtype.str, "timepoints": list(self.timepoints),
                "channels": list(self.channels)}
        options = self.options.as_dict()
        options["chunks"] = None if self.chunks is None else list(self.chunks)
        return {"tilefuse": __version__, "grid": _digest(grid), "options": options,
                "views": _digest([repr(loader.token()), volumes]), "pixels": _digest(pixels)}

    def to_dask(self):
        """The whole result, ``(t, c, z, y, x)``."""
        import dask.array as da

        return da.stack(
            [da.stack([self.volume(t, c) for c in self.channels]) for t in self.timepoints]
        )


def _digest(obj) -> str:
    """sha1 of the canonical JSON of ``obj`` (floats written exactly, as ``repr``)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def fusion_sources(project: Project, views: Sequence[ViewId], spacing: Sequence[float]) -> list[FusionSource]:
    """Fusion sources of ``views`` for an output grid of ``spacing`` (world units, z y x).

    Each reads the pyramid level that suits the spacing; 2D projects give 2D
    sources.  For resampling single views onto grids of one's own (e.g.
    :func:`tilefuse.intensity.match_intensities` renders overlaps with them).
    """
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    return [_source(project, ViewId(*v), spacing, project.ndim, False) for v in views]


def _read_region(loader, view, level, ndim, cache, region):
    if ndim == 2:
        return loader.read(view, level, (slice(0, 1),) + tuple(region), cache=cache)[0]
    return loader.read(view, level, tuple(region), cache=cache)


#: Cache a view's decoded blocks when output chunks would decode them this many times on average.
_CACHE_REDUNDANCY = 1.5


def _block_cache_pays(block: Sequence[int], shape: Sequence[int], chunk_vox: Sequence[float]) -> bool:
    """Whether neighbouring output chunks would decode the view's blocks repeatedly.

    A chunk spanning ``c`` view voxels along an axis, placed anywhere over
    blocks of ``b`` voxels, touches ``1 + c / b`` blocks on average where
    ``c / b`` would do, so each block is decoded ``1 + b / c`` times per axis
    (an axis the whole view fits in one chunk along costs nothing).  3D
    benchmark, chunks 128x256x256 over blocks 32x128x128: 2.8 (measured 2.25);
    2D benchmark, 512² tiles inside 1448² chunks: 1, and the cache gained
    nothing there but memory.
    """
    factor = 1.0
    for b, n, c in zip(block, shape, chunk_vox):
        if n > c:
            factor *= 1.0 + min(b, n) / max(c, 1.0)
    return bool(factor >= _CACHE_REDUNDANCY)


def _content(loader, view, level, ndim, factor, sigma1, sigma2, to_source):
    """One view's content-based weights (a task of its own): whole level read, block-averaged by ``factor``."""
    from ..downsample import block_mean

    image = loader.read(view, level, (slice(None),) * 3).astype(np.float32)
    if ndim == 2:
        image = image[0]
    if any(f > 1 for f in factor):
        image = block_mean(image, factor, dtype=np.float32, edge="trim")
    return content_weights(image, sigma1, sigma2), to_source


def _content_source(project: Project, view: ViewId, source_affine: np.ndarray, ndim: int, sigmas):
    """A picklable callable computing ``view``'s content weights near 4 world units per voxel."""
    loader = project.loader
    levels = [np.asarray(f, dtype=np.float64) for f in project.check_view(view).levels]
    scales0 = axis_scales(project.transform(view, 0))
    target = 4.0 / scales0  # source voxels per weight voxel wanted, per axis (4 world units)
    ok = [i for i, f in enumerate(levels) if np.all(f <= np.maximum(target, 1.0) + 1e-9)]
    level = max(ok, key=lambda i: float(np.prod(levels[i]))) if ok else 0
    factor = np.maximum(np.floor(np.maximum(target, 1.0) / levels[level]), 1).astype(int)
    if ndim == 2:
        factor[0] = 1
    # weight voxel -> world: the level's transform after the block means (f*i + (f-1)/2)
    grid = np.diag(np.append(factor.astype(np.float64), 1.0))
    grid[:3, 3] = (factor - 1) / 2.0
    to_world = project.transform(view, level) @ grid
    scales = axis_scales(to_world)
    sigma1, sigma2 = (float(s) / scales for s in sigmas)
    if ndim == 2:
        to_world = np.delete(np.delete(to_world, 0, axis=0), 0, axis=1)
        sigma1, sigma2, factor = sigma1[1:], sigma2[1:], factor[1:]
    to_source = np.linalg.inv(source_affine) @ to_world
    return partial(_content, loader, view, level, ndim, tuple(int(f) for f in factor), tuple(sigma1),
                   tuple(sigma2), to_source)


#: Most chunk regions per view told to the block cache (a view under more chunks is cached plainly).
_MAX_PLANNED_REGIONS = 256


def _chunk_regions(affine: np.ndarray, shape: Sequence[int], grid: tuple, ndim: int):
    """The regions of a view (3D, its level's voxels) that the output chunks will read, or True.

    The same regions as the fusion engine's cosine/average path reads for a
    translated or axis-aligned scaled view (the chunk's inside box
    back-projected by :func:`~tilefuse.fusion.resample.source_region`).  Told
    to the block cache (``loader.read(cache=regions)``), they say how many
    reads will want each decoded block, so that a block is let go right after
    its last read (:func:`tilefuse._blockcache.cached_block`).  True (cache
    without that knowledge) for a view rotated or sheared against the grid.
    """
    from .resample import grid_affine, inside_box, is_diagonal, source_region

    origin, spacing, out_shape, chunks = grid
    m = np.linalg.inv(affine) @ grid_affine(origin, spacing)
    if not is_diagonal(m):
        return True
    box = inside_box(m, out_shape, shape)
    if box is None:
        return True
    bounds = [np.concatenate([[0], np.cumsum(c)]) for c in chunks]
    ranges = [range(int(np.searchsorted(e, b.start, side="right")) - 1, int(np.searchsorted(e, b.stop, side="left")))
              for e, b in zip(bounds, box)]
    if math.prod(len(r) for r in ranges) > _MAX_PLANNED_REGIONS:
        return True  # every task would carry them, every block read scan them: plain LRU instead
    regions = []
    for index in np.ndindex(*(len(r) for r in ranges)):
        idx = [r[i] for r, i in zip(ranges, index)]
        start = [int(e[i]) for e, i in zip(bounds, idx)]
        stop = [int(e[i + 1]) for e, i in zip(bounds, idx)]
        m_chunk = m @ grid_affine(np.zeros(len(out_shape)), 1.0, start)
        sub = inside_box(m_chunk, [b - a for a, b in zip(start, stop)], shape)  # as the engine's task does
        if sub is None:
            continue
        m_box = m_chunk @ grid_affine(np.zeros(len(out_shape)), 1.0, [b.start for b in sub])
        region = source_region(m_box, [b.stop - b.start for b in sub], shape, 1)
        if region is not None:
            regions.append(((slice(0, 1),) + region) if ndim == 2 else region)
    return tuple(regions) or True


def _source(project: Project, view: ViewId, spacing: np.ndarray, ndim: int, intensity: bool,
            chunk_world: Sequence[float] | None = None, content: tuple[float, float] | None = None,
            grid: tuple | None = None, known: tuple | None = None) -> FusionSource:
    """A view's source; ``known``: its ``(checked layout, level, affine)`` when the caller has them."""
    loader = project.loader
    if known is None:
        # Checked against the XML first: a view whose data cannot be trusted is refused, not fused.
        data = project.check_view(view)
        level = _choose_fusion_level(project, view, spacing, data.levels)
        affine = project.transform(view, level)
    else:
        data, level, affine = known
    shape, block = data.shapes[level], data.chunks[level]
    adjust = (1.0, 0.0)
    if intensity and project.data.intensity_adjustments:
        adjust = project.data.intensity_adjustments.get(view, (1.0, 0.0))
    if ndim == 2:
        affine = np.delete(np.delete(affine, 0, axis=0), 0, axis=1)
        shape, block = shape[1:], block[1:]
    cache = chunk_world is not None and _block_cache_pays(
        block, shape, np.asarray(chunk_world, dtype=np.float64) / axis_scales(affine))
    log.debug("%s: reads pyramid level %d (factors z y x %s, shape %s)%s", view, level,
              tuple(data.levels[level]), tuple(data.shapes[level]),
              "" if chunk_world is None else f", decoded-block cache {'on' if cache else 'off'}")
    if cache and grid is not None:
        cache = _chunk_regions(affine, shape, grid, ndim)
    return FusionSource(key=view, shape=shape, affine=affine,
                        reader=partial(_read_region, loader, view, level, ndim, cache),
                        intensity=adjust, dtype=data.dtype,
                        content=None if content is None else _content_source(project, view, affine, ndim, content))


def _choose_fusion_level(project: Project, view: ViewId, spacing: np.ndarray, levels=None, model=None) -> int:
    """The coarsest pyramid level whose voxels are still no larger than the output's.

    ``levels``, ``model``: the view's factors (its checked layout) and model when the caller has them,
    saving the loader's lookups and composing the transform chain again.
    """
    levels = project.levels(view) if levels is None else levels
    if len(levels) == 1:
        return 0
    scales = axis_scales(project.model(view) if model is None else model)
    limit = np.asarray(spacing, dtype=np.float64) * (1 + 1e-6)
    best, best_prod = 0, math.prod(levels[0])
    for i, factors in enumerate(levels):
        prod = math.prod(factors)
        if prod > best_prod and all(f * s <= m for f, s, m in zip(factors, scales, limit)):
            best, best_prod = i, prod
    return best


def _union_box(boxes: Sequence[Box]) -> Box:
    box = None
    for b in boxes:
        box = b if box is None else box.union(b)
    return box


def _check_one_plane(project: Project, views, models: Sequence[np.ndarray]) -> None:
    """2D views must lie in one z plane and not mix z with y/x, or a 2D fusion would be wrong."""
    planes = {}
    lins = np.stack([linear_part(m) for m in models])
    # as np.allclose(lin[0, 1:], 0) and np.allclose(lin[1:, 0], 0) per view, for all views at once
    mixed = ~(np.all(np.abs(lins[:, 0, 1:]) <= 1e-8, axis=1) & np.all(np.abs(lins[:, 1:, 0]) <= 1e-8, axis=1))
    if mixed.any():
        view = views[int(np.argmax(mixed))]
        raise FusionError(f"{where(project.path)}: {view} mixes z with y/x; cannot fuse it as 2D")
    for v, model in zip(views, models):
        planes.setdefault(round(float(model[0, 3]), 6), v)
    if len(planes) > 1:
        shown = ", ".join(f"{v} at z={z:g}" for z, v in sorted(planes.items())[:4])
        raise FusionError(
            f"{where(project.path)}: the 2D views lie in {len(planes)} different z planes ({shown}); fusing them "
            "into one plane would be wrong: check the views' transforms"
        )


#: Warn when the output would be this many times larger than the views' data (mostly empty).
_EMPTY_RATIO = 1000
#: ... and at least this many voxels (small sparse outputs are harmless).
_EMPTY_MIN_VOXELS = 10**9


def _warn_if_mostly_empty(project: Project, views, boxes: Sequence[Box], shape, spacing) -> None:
    """A view far from the others (a typo in a transform) makes the union box enormous: say which."""
    out = float(np.prod(shape, dtype=np.float64))
    data = sum(float(np.prod((np.asarray(b.hi) - np.asarray(b.lo)) / spacing + 1)) for b in boxes)
    if out < _EMPTY_MIN_VOXELS or out < _EMPTY_RATIO * data:
        return
    centres = np.array([(np.asarray(b.lo) + np.asarray(b.hi)) / 2 for b in boxes])
    median = np.median(centres, axis=0)
    far = int(np.argmax(np.linalg.norm(centres - median, axis=1)))
    log.warning(
        "%s: the output spans %s voxels (z y x), %.0f times the views' data; %s lies at %s (z y x, world), "
        "far from the others (median %s): check its transform, or fuse a bounding box",
        where(project.path), " x ".join(map(str, shape)), out / data, views[far],
        np.round(centres[far], 1).tolist(), np.round(median, 1).tolist())


def _warn_if_nothing_to_adjust(project: Project, views) -> None:
    """``intensity_adjustment`` asked for, but views without adjustments would be fused unchanged."""
    adjusted = project.data.intensity_adjustments or {}
    missing = [v for v in views if v not in adjusted]
    if len(missing) == len(views):
        log.warning("%s: intensity adjustment asked for, but the project has no <IntensityAdjustments> for its "
                    "views: nothing to apply (run 'tilefuse intensity' first)", where(project.path))
    elif missing:
        log.warning("%s: %d of %d views have no <IntensityAdjustments> and are fused unchanged (e.g. %s)",
                    where(project.path), len(missing), len(views), missing[0])


def _warn_missing(project: Project, views) -> None:
    missing = project.missing_views
    if missing:
        log.warning("%s: %d missing views are skipped", where(project.path, "<MissingViews>"), len(missing))


def plan_fusion(
    project: Project,
    views: Sequence[ViewId] | None = None,
    options: FusionOptions | None = None,
    **changes,
) -> FusionPlan:
    """Decide the output grid and group the views by (timepoint, channel).

    Parameters
    ----------
    project : Project
    views : sequence of ViewId, optional
        Views to fuse (default: all present views).
    options : FusionOptions, optional
        How to fuse (default: ``FusionOptions()``).
    **changes
        Fields of :class:`~tilefuse.fusion.options.FusionOptions` to change,
        e.g. ``plan_fusion(project, downsampling=2, blending="average")``:

        ``bounding_box``
            A ``<BoundingBoxDefinition>`` name from the project, or a world
            box (``zyx``, inclusive).  Default: the union of the views' boxes.
        ``downsampling``
            Output voxel size in world units relative to
            ``preserve_anisotropy``'s base grid (2 halves the resolution).
        ``preserve_anisotropy``
            Keep the data's z spacing (default; BigStitcher's Spark fusion
            option) instead of resampling z to the finest axis (BigStitcher's
            GUI default, which multiplies the output size by the anisotropy).
        ``blending``, ``blend_range``, ``blend_border``, ``interpolation``, ``dtype``, ``chunks``
            Passed to :func:`~tilefuse.fusion.engine.fuse_sources`.  Default
            chunks: ``(128, 256, 256)`` in 3D (large enough to decompress each
            input block about once), about 8 MiB of float32 in 2D.
        ``intensity_adjustment``
            Apply the project's ``<IntensityAdjustments>`` per view.
        ``content_based``, ``content_sigmas``
            Multiply the blending weights by BigStitcher's content-based weights
            (local contrast, :mod:`tilefuse.fusion.content`; sigmas in world
            units, 20 and 40), so that where views overlap the sharper one
            dominates.  Computed once per view on a pyramid level about 4 world
            units per voxel (or 4x block means of the finest).

    Raises
    ------
    OptionError
        An option has a bad value (the message names it).
    FusionError
        Nothing to fuse, an unknown bounding box, views that cannot be fused together.
    """
    options = FusionOptions.build(options, **changes)
    bounding_box = options.bounding_box
    views = list(project.views if views is None else views)
    _warn_missing(project, views)
    views = [v for v in views if v not in project.missing_views]
    if not views:
        raise FusionError(f"{where(project.path)}: no views to fuse")
    ndim = project.ndim
    # Each view's model and world box once (compose_chain per view was ~40 % of planning at 10,000 views).
    models = [project.model(v) for v in views]
    boxes = [view_box(m, project.setup_shape(v)) for v, m in zip(views, models)]  # as Project.world_box
    if ndim == 2:
        _check_one_plane(project, views, models)
    if bounding_box is None:
        box = _union_box(boxes)
    elif isinstance(bounding_box, str):
        named = {bb.name: bb for bb in project.data.bounding_boxes or []}
        if bounding_box not in named:
            raise FusionError(
                f"{where(project.path, '<BoundingBoxes>')}: no bounding box named {bounding_box!r} "
                f"(known: {', '.join(named) or 'none'})"
            )
        box = named[bounding_box].box
    else:
        box = bounding_box
    if box.is_empty:
        raise FusionError(f"bounding box {box} is empty")

    base = np.ones(3)
    if options.preserve_anisotropy:
        base[0] = min(axis_scales(m)[0] for m in models)
    spacing = base * np.asarray(options.downsampling, dtype=np.float64)
    origin = np.asarray(box.lo, dtype=np.float64)
    shape = tuple(int(n) for n in np.floor((np.asarray(box.hi) - origin) / spacing + 1e-9) + 1)
    if ndim == 2:
        shape = (1,) + shape[1:]
        spacing[0] = 1.0

    volumes: dict[tuple[int, int], list[ViewId]] = {}
    for v in views:
        volumes.setdefault((v.timepoint, project.attribute(v, "channel") or 0), []).append(v)
    timepoints = sorted({t for t, _ in volumes})
    channels = sorted({c for _, c in volumes})
    first = views[0]
    vs = project.voxel_size(first)
    unit = project.setups[first.setup].unit or "pixel"
    min_res = min(min(project.voxel_size(v) or (1.0,)) for v in views)
    voxel_size = tuple(float(s) * min_res for s in spacing) if vs is not None else tuple(spacing)
    if bounding_box is None:
        _warn_if_mostly_empty(project, views, boxes, shape, spacing)
    if options.intensity_adjustment:
        _warn_if_nothing_to_adjust(project, views)
    chunks = options.chunks
    if chunks is not None and len(chunks) == 2 and ndim == 3:
        raise OptionError("chunks", f"a 3D fusion needs 3 chunk sizes (z, y, x), got {chunks}")
    if chunks is None and ndim == 3:
        # Output chunks much smaller than a few input blocks per axis decompress
        # the same blocks again and again (BDV HDF5 blocks are 32x128x128,
        # N5 64x128x128).  Measured on 16 tiles of 128x512x512: 127^3 chunks
        # 35 s, (128, 256, 256) 19 s, (128, 512, 512) 16.5 s but 2x the memory.
        chunks = (min(shape[0], 128), 256, 256)
    log.debug("fusion plan: %d views into %d timepoints x %d channels; grid (z y x) %s voxels of %s world units "
              "(%s %s) from %s; chunks %s; blending %s, interpolation %s", len(views), len(timepoints),
              len(channels), shape, spacing.tolist(), tuple(round(v, 6) for v in voxel_size), unit,
              np.round(origin, 3).tolist(), chunks or "auto", options.blending, options.interpolation)
    return FusionPlan(project, volumes, timepoints, channels, origin, spacing, shape, voxel_size, unit, ndim,
                      options, chunks)


def fuse(project: Project, views: Sequence[ViewId] | None = None, options: FusionOptions | None = None,
         **changes):
    """Fuse a project into a lazy ``(t, c, z, y, x)`` dask array.

    Each (timepoint, channel) is one volume; illuminations and angles of a
    channel are blended together.  See :func:`plan_fusion` for the options;
    use the plan directly for the output grid's origin and voxel size.

    Examples
    --------
    >>> import tilefuse
    >>> project = tilefuse.open_project("dataset.xml")      # doctest: +SKIP
    >>> fused = tilefuse.fuse(project, downsampling=2)      # doctest: +SKIP
    >>> fused[0, 0, 10].compute()                           # doctest: +SKIP
    """
    return plan_fusion(project, views, options, **changes).to_dask()


