"""Pairwise registration of overlapping groups of views in a project.

For every overlapping pair of groups, only the overlap region is read (at the
requested downsampling, from the file's pyramid when it has the level), phase
correlation finds the shift, and the result is expressed in world
coordinates as the correction of group B relative to group A.

Pairs run in dask tasks of up to :data:`_BATCH` pairs each that carry only the
view ids and two small regions per pair (the loader, which holds the paths, is
one node of the graph that every task shares), so they run on threads or on a
dask.distributed cluster alike, and memory is bounded by a few overlap crops
at a time.  Planning is linear in the pairs: what each view looks like comes
from its checked layout (:meth:`Project.check_view`, once per view), not from
the files, and the graph is built directly instead of tokenizing every task's
arguments (which made 600 TIFF tiles cost 40 s of planning: the loader holds
one entry per view).  At full resolution the layout is the XML's (level 0,
``<size>``) and each task checks the views it reads before reading them, so
that no serial per-view phase precedes the pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._progress import Progress, progress_bar
from ..downsample import block_mean
from ..errors import RegistrationError, where
from ..geometry import Box
from ..geometry.affine import linear_part, to_xml_affine
from ..project.project import Project
from ..project.views import ViewId
from .pairs import OverlapPair, overlapping_pairs
from .phase_correlation import AMBIGUOUS, pairwise_shift

__all__ = ["Link", "RegistrationGroups", "make_groups", "pairwise", "choose_level", "pair_hash"]

log = logging.getLogger(__name__)


@dataclass
class RegistrationGroups:
    """Groups of views that move together, and the views used to register each."""

    #: group key -> all views that move with the group
    members: dict[Hashable, list[ViewId]]
    #: group key -> views whose pixels are averaged for registration
    used: dict[Hashable, list[ViewId]]
    #: group key -> timepoint (groups pair only within a timepoint)
    timepoint: dict[Hashable, int]


@dataclass
class Link:
    """One pairwise registration result between groups ``a`` and ``b``.

    ``shift`` is the world-space (``zyx``) correction of ``b`` relative to
    ``a``: the global solve wants ``t_b - t_a == shift``.
    """

    a: Hashable
    b: Hashable
    shift: np.ndarray
    correlation: float
    overlap: Box
    views_a: tuple[ViewId, ...] = ()
    views_b: tuple[ViewId, ...] = ()
    hash: float = 0.0
    valid: bool = True
    #: "accepted", or why the link was rejected (set by the global solve)
    status: str = "accepted"
    residual: float = float("nan")
    info: dict = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.valid and self.status == "accepted"


def make_groups(
    project: Project,
    views: Sequence[ViewId] | None = None,
    *,
    group_by: Sequence[str] = ("timepoint", "tile", "angle"),
    channel=None,
    illumination=None,
) -> RegistrationGroups:
    """Group views for registration (default: all channels and illuminations of a tile).

    ``channel``/``illumination`` restrict the views whose pixels are used (by
    id or name); the other views of a group still move with it.
    """
    views = list(project.views if views is None else views)
    missing = project.missing_views
    if missing:
        log.warning("%s: %d missing views are skipped", where(project.path, "<MissingViews>"), len(missing))
        views = [v for v in views if v not in missing]
    groups = project.group_views(views, by=group_by)
    asked = {kind: value for kind, value in (("channel", channel), ("illumination", illumination))
             if value is not None}
    members, used, tps = {}, {}, {}
    # One selection over every view (a channel or illumination the project lacks raises SelectionError here,
    # listing those it has): selecting per group resolved the names against every setup for each group,
    # O(groups x setups) with channel= or illumination= given.
    selected = set(project.select(views, **asked)) if asked else None
    for key, vs in groups.items():
        chosen = list(vs) if selected is None else [v for v in vs if v in selected]
        if not chosen:
            has = "; ".join(f"{kind}s " + ", ".join(sorted({project.entity_label(kind, project.attribute(v, kind))
                                                          for v in vs}))
                            for kind in asked)
            raise RegistrationError(
                f"{where(project.path)}: the views of group ({', '.join(f'{k} {v}' for k, v in zip(group_by, key))}) "
                f"have no {' and '.join(f'{k} {v!r}' for k, v in asked.items())} to register on (they have {has})"
            )
        members[key] = vs
        used[key] = chosen
        tps[key] = vs[0].timepoint
        log.debug("group %s: %d views, registered on %s", key, len(vs), ", ".join(map(str, chosen)))
    return RegistrationGroups(members, used, tps)


def choose_level(levels: Sequence[Sequence[float]], factors: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """The coarsest pyramid level that divides ``factors``, and the factor still to apply.

    BigStitcher snaps to the nearest existing level; we take the coarsest
    level whose factors divide the requested ones exactly and block-average the
    rest, so the effective downsampling is always what the user asked for.
    """
    factors = tuple(int(f) for f in factors)
    best, best_prod = 0, 1.0
    for i, lv in enumerate(levels):
        lv_int = [int(round(f)) for f in lv]
        if any(abs(f - r) > 1e-9 for f, r in zip(lv, lv_int)):
            continue
        if all(w % f == 0 for w, f in zip(factors, lv_int)) and np.prod(lv_int) > best_prod:
            best, best_prod = i, float(np.prod(lv_int))
    lv = [int(round(f)) for f in levels[best]]
    return best, tuple(w // f for w, f in zip(factors, lv))


def pair_hash(model_a: np.ndarray, model_b: np.ndarray) -> float:
    """BigStitcher's link hash: Σ (A_i + 13·B_i) over the 12 XML-ordered model entries."""
    a = np.asarray(to_xml_affine(model_a))
    b = np.asarray(to_xml_affine(model_b))
    return float(np.sum(a + 13.0 * b))


def _axis_aligned(matrix: np.ndarray) -> bool:
    lin = linear_part(matrix)
    return bool(np.allclose(lin - np.diag(np.diag(lin)), 0.0, atol=1e-9) and np.all(np.diag(lin) > 0))


def _crop_region(transform: np.ndarray, box: Box, shape) -> tuple[tuple[slice, ...], np.ndarray]:
    """Voxel region of an axis-aligned view covering world ``box``, and its first voxel in world."""
    s = np.diag(transform)[:-1]
    t = transform[:-1, -1]
    lo = np.ceil((np.asarray(box.lo) - t) / s - 1e-6).astype(int)
    hi = np.floor((np.asarray(box.hi) - t) / s + 1e-6).astype(int)
    lo = np.clip(lo, 0, np.asarray(shape) - 1)
    hi = np.clip(hi, lo, np.asarray(shape) - 1)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi)), t + s * lo


def _read_group(loader, views, level, region, factors) -> np.ndarray:
    """Average the views of a group over one region (float32), block-mean downsampled."""
    if len(views) == 1:  # (the usual case: no sum to divide, and nothing below writes into the crop)
        acc = loader.read(views[0], level, region).astype(np.float32, copy=False)
    else:
        acc = None
        for view in views:
            crop = loader.read(view, level, region).astype(np.float32)
            acc = crop if acc is None else acc + crop
        acc /= len(views)
    if all(f == 1 for f in factors):
        return acc
    return block_mean(acc, factors, edge="trim")


@dataclass(frozen=True)
class _PairRead:
    """What one pair's task reads: the views of both groups, a level, two regions and a block-mean factor."""

    views_a: tuple[ViewId, ...]
    views_b: tuple[ViewId, ...]
    level: int
    region_a: tuple[slice, ...]
    region_b: tuple[slice, ...]
    factors: tuple[int, ...]


def _register_pair(loader, read: _PairRead, options, refine=None):
    """Read two overlap crops and phase-correlate them.

    Returns the :class:`PairwiseShift` and, when ``refine`` is given as
    ``(transform, spacing)``, the SimpleITK refinement (or None).
    """
    fixed = _read_group(loader, read.views_a, read.level, read.region_a, read.factors)
    moving = _read_group(loader, read.views_b, read.level, read.region_b, read.factors)
    shape = tuple(min(p, q) for p, q in zip(fixed.shape, moving.shape))
    fixed = fixed[tuple(slice(0, n) for n in shape)]
    moving = moving[tuple(slice(0, n) for n in shape)]
    if min(shape) == 0:
        return None, None
    result = pairwise_shift(fixed, moving, **options)
    refinement = None
    if refine is not None and result.valid:
        from .sitk_refine import refine_with_sitk

        transform, spacing = refine
        refinement = refine_with_sitk(fixed, moving, result.shift, transform=transform, spacing=spacing)
    return result, refinement


class _Batch:
    """The pairs of one task (an object, so that dask does not walk its contents looking for keys).

    ``checks``: ``(view, XML size)`` of the views the task must check against the project
    (:func:`~tilefuse.loaders.validate.check_view`) before reading them, when the client planned the
    pairs from the XML alone (see :func:`pairwise`); ``xml_path`` names the project in messages.
    """

    def __init__(self, pairs: list[tuple[_PairRead, dict, tuple | None]], checks=(), xml_path=None) -> None:
        self.pairs = pairs
        self.checks = checks
        self.xml_path = xml_path


def _check_in_task(loader, checks, xml_path) -> None:
    """Check views against the project in the task that reads them (once per process: the check is cached)."""
    for view, size in checks:
        if not loader.has_view(view):
            raise RegistrationError(f"{where(xml_path)}: {view} has no pixels to register")
        loader.checked_layout(view, size, xml_path=xml_path)


def _register_batch(loader, batch: _Batch) -> list:
    """One dask task: :func:`_register_pair` for each pair of the batch, in order."""
    _check_in_task(loader, batch.checks, batch.xml_path)
    return [_register_pair(loader, read, options, refine) for read, options, refine in batch.pairs]


#: Most pairs per dask task: ~0.1-0.3 s of work, few enough tasks for 20,000 pairs (and a cluster).
_BATCH = 32


def _batch_size(n_pairs: int) -> int:
    """Pairs per task: one per task for small jobs (the progress bar moves), up to :data:`_BATCH`."""
    return max(1, min(_BATCH, n_pairs // 64))


class _PairsDone(Progress):
    """Counts pairs on ``bar`` while the computation counts finished batches of ``per`` pairs."""

    def __init__(self, bar: Progress, per: int, total: int) -> None:
        super().__init__()
        self.bar, self.per, self.left = bar, per, total

    @property
    def enabled(self) -> bool:
        return self.bar.enabled

    def update(self, n: int = 1) -> None:
        done = min(n * self.per, self.left)
        self.left -= done
        self.bar.update(done)


def _run_batches(loader, work: list, *, client, progress: bool, sizes: dict | None = None,
                 xml_path=None) -> list:
    """Compute ``work`` (one ``(read, options, refine)`` per pair) in batches; one result per pair, in order.

    ``sizes`` (view -> XML size): the views were not checked yet; each task checks those it reads first.
    """
    from .._compute import batched_tasks, compute

    per = _batch_size(len(work))
    batches = []
    for i in range(0, len(work), per):
        batch = work[i : i + per]
        checks = ()
        if sizes is not None:
            views = dict.fromkeys(v for read, _, _ in batch for v in read.views_a + read.views_b)
            checks = tuple((v, sizes[v]) for v in views)
        batches.append(_Batch(batch, checks, xml_path))
    with progress_bar("registering pairs", len(work), unit="pair", enabled=progress) as bar:
        results = compute(*batched_tasks("tilefuse-pairs", loader, _register_batch, batches), client=client,
                          progress=_PairsDone(bar, per, len(work)))
    return [r for batch in results for r in batch]


def pairwise(
    project: Project,
    groups: RegistrationGroups | None = None,
    *,
    downsampling: Sequence[int] | str = "auto",
    min_overlap: float = 0.05,
    neighbours_only: bool = False,
    n_peaks: int = 5,
    subpixel: bool = True,
    refine: str | None = None,
    max_stage_error: float | Sequence[float] | None = None,
    client=None,
    progress: bool = False,
) -> list[Link]:
    """Register every overlapping pair of groups by phase correlation.

    Parameters
    ----------
    project : Project
    groups : RegistrationGroups, optional
        Default: :func:`make_groups` (channels and illuminations of a tile
        together, registered on their average).
    downsampling : (z, y, x) int or "auto"
        Downsampling of the overlap crops.  ``"auto"``: full resolution in 2D;
        ``(1, 2, 2)`` in 3D unless an overlap is narrower than 40 voxels in y
        or x.  Uses the file's pyramid level when one matches.
    min_overlap : float
        Minimum overlap (fraction of the smaller group's volume) for a pair.
    neighbours_only : bool
        Only face neighbours (no diagonal pairs).
    n_peaks : int
        Phase-correlation peaks checked by cross-correlation.
    subpixel : bool
        Refine shifts to sub-pixel precision.
    refine : {None, "translation", "rigid", "affine"}
        Also refine each pair with SimpleITK (normalised correlation), starting
        from the phase-correlation shift.  The global solve uses the
        translation at the overlap centre; the fitted matrix is kept in
        ``link.info["sitk_matrix"]`` (crop voxel units, numpy order).
    max_stage_error : float or (z, y, x) floats, optional
        How far (world units, per axis) the true step between two neighbours
        may differ from the stage's.  Candidate shifts are searched within
        it, and every pair is also checked exhaustively within it
        (:mod:`.exhaustive`), not only doubtful ones.
    client : distributed.Client, optional
        Run the pairs on this cluster; default: local threads.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of Link
        One per overlapping pair; pairs whose crops had no valid shift have
        ``valid=False``.
    """
    groups = groups or make_groups(project)
    loader = project.loader
    boxes, first, layouts, xml_models = {}, {}, {}, {}
    for key, views in groups.used.items():
        view = views[0]
        model = project.model(view)
        xml_models[key] = np.asarray(to_xml_affine(model))  # for the links' hashes, once per group
        if not _axis_aligned(model):
            raise RegistrationError(
                f"{where(project.path)}: {view} is rotated or sheared; phase correlation on overlaps "
                "needs axis-aligned views (translation and scaling)"
            )
        first[key] = view
        boxes[key] = project.world_box(view)
    pairs = overlapping_pairs(boxes, min_fraction=min_overlap, neighbours_only=neighbours_only,
                              same=groups.timepoint)
    ndim = project.ndim
    auto = isinstance(downsampling, str) and downsampling == "auto"
    if auto:
        downsampling = _auto_downsampling(project, first, pairs, ndim)
    downsampling = tuple(int(f) for f in downsampling)
    if len(downsampling) == 2:
        downsampling = (1,) + downsampling
    if len(downsampling) != 3 or min(downsampling) < 1:
        raise RegistrationError(f"downsampling must be 3 positive integers (z, y, x), got {downsampling}")
    used = [v for views in groups.used.values() for v in views]
    sizes = {v: project.setups[v.setup].size for v in used}
    if downsampling == (1, 1, 1) and all(size is not None for size in sizes.values()):
        # Full resolution: every crop comes from level 0, whose shape is the XML <size> once checked, so
        # the pairs are planned from the XML and each task checks the views it reads before reading them.
        # Checking here first was a serial phase of ~1.5 ms per view (HDF5) before any pair ran: 15 s of
        # the client's time at 10,000 tiles, now spread over the workers next to the pairs.
        layouts = {v: _XmlLayout(((1.0, 1.0, 1.0),), (tuple(int(n) for n in sizes[v]),)) for v in used}
    else:
        sizes = None
        for views in groups.used.values():
            if not loader.has_view(views[0]):
                raise RegistrationError(f"{where(project.path)}: {views[0]} has no pixels to register")
            for v in views:  # every view whose pixels are read, checked against the XML first
                layouts[v] = project.check_view(v)
    options = dict(n_peaks=n_peaks, subpixel=subpixel)
    log.debug("%d overlapping pairs of %d groups (min overlap %g%s), downsampling (z y x) %s%s, %d peaks%s",
              len(pairs), len(boxes), min_overlap, ", face neighbours only" if neighbours_only else "",
              downsampling, " (auto)" if auto else "", n_peaks, f", refined ({refine})" if refine else "")

    if refine is not None:
        from .sitk_refine import SITK_TRANSFORMS

        if refine not in SITK_TRANSFORMS:
            raise RegistrationError(f"refine must be one of {SITK_TRANSFORMS} or None, got {refine!r}")
    plan = _Plan(project, layouts, downsampling)
    stage_error = None if max_stage_error is None else _per_axis_zyx(max_stage_error)
    work, metas = [], []
    for pair in pairs:
        read, meta = plan.pair(groups, first, pair)
        pair_options = options
        if stage_error is not None:  # in crop voxels, +1 for the crops' rounding to whole voxels
            pair_options = dict(options, max_shift=tuple(stage_error / meta[0] + 1), exhaustive="always")
        work.append((read, pair_options, None if refine is None else (refine, meta[0])))
        metas.append(meta)
    results = _run_batches(loader, work, client=client, progress=progress, sizes=sizes, xml_path=project.path)
    links = []
    debug = log.isEnabledFor(logging.DEBUG)
    for pair, (read, _, _), meta, (res, refinement) in zip(pairs, work, metas, results):
        spacing, w0_a, w0_b = meta[:3]
        va, vb = tuple(groups.used[pair.a]), tuple(groups.used[pair.b])
        h = float(np.sum(xml_models[pair.a] + 13.0 * xml_models[pair.b]))  # pair_hash, models converted once
        if res is None or not res.valid:
            links.append(Link(pair.a, pair.b, np.zeros(3), float("nan") if res is None else float(res.correlation),
                              pair.overlap, va, vb, h, valid=False, status="no valid shift"))
            log.debug("pair %s - %s: no valid shift (correlation %.3f; level %d, crop %s)", pair.a, pair.b,
                      links[-1].correlation, read.level, meta[3])
            continue
        info = {"shift_voxels": np.asarray(res.shift), "spacing": spacing, "origin_a": w0_a, "origin_b": w0_b,
                "crop_shape": meta[3]}
        if res.checked:
            info["checked"] = res.checked
            info["ambiguous"] = res.checked == AMBIGUOUS
            log.debug("pair %s - %s: %s", pair.a, pair.b, res.checked)
        d = np.asarray(res.shift, dtype=np.float64)
        if refinement is not None:
            info.update(pc_shift_voxels=d, sitk_matrix=refinement.matrix, sitk_correlation=refinement.correlation)
            d = np.asarray(refinement.shift, dtype=np.float64)
        # A_crop[x] ≈ B_crop[x - d]  =>  t_b - t_a = w0_a - w0_b + spacing * d
        shift = (w0_a - w0_b) + spacing * d
        if res.undetermined:
            # The overlap does not change along these axes (a stack of identical planes): nothing to
            # correct there.  0, not w0_a - w0_b: the crops' rounding to whole voxels is no measurement.
            shift[list(res.undetermined)] = 0.0
            info["undetermined_axes"] = tuple("zyx"[d] for d in res.undetermined)
        links.append(Link(pair.a, pair.b, shift, float(res.correlation), pair.overlap, va, vb, h, info=info))
        if debug:  # the arguments cost more than the rest of the loop: built only when logged
            log.debug("pair %s - %s: shift (z y x) %s world units, correlation %.3f (level %d, crop %s)%s",
                      pair.a, pair.b, np.round(shift, 3).tolist(), res.correlation, read.level, meta[3],
                      "" if refinement is None else f", SimpleITK correlation {refinement.correlation:.3f}")
    return links


def _per_axis_zyx(value) -> np.ndarray:
    """A scalar or (z, y, x) / (y, x) values as three floats (z, y, x); 2 values leave z unbounded."""
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if v.size == 1:
        return np.repeat(v, 3)
    if v.size == 2:
        return np.concatenate([[np.inf], v])
    if v.size != 3:
        raise RegistrationError(f"max_stage_error needs 1, 2 (y, x) or 3 (z, y, x) values, got {value!r}")
    return v


#: In 3D, overlaps at least this many voxels wide in y and x are registered at half resolution.
_AUTO_MIN_WIDTH = 40


def _auto_downsampling(project: Project, first, pairs, ndim: int) -> tuple[int, int, int]:
    """Full resolution in 2D; in 3D half resolution in y/x unless an overlap is narrow.

    Measured on the 3D samples: 16 tiles of 128x512x512 with 51 px overlaps
    register 4.5x faster at (1, 2, 2) for 0.010 instead of 0.006 px mean
    error, but 26 px overlaps lose too much at half resolution (0.122 against
    0.022 px), so narrow overlaps keep full resolution.
    """
    if ndim == 2 or not pairs:
        return (1, 1, 1)
    widths = []
    for pair in pairs:
        scale = np.diag(project.model(first[pair.a]))[:3]
        extent = (np.asarray(pair.overlap.hi) - np.asarray(pair.overlap.lo)) / scale + 1
        widths.append(min(extent[1], extent[2]))
    return (1, 2, 2) if min(widths) >= _AUTO_MIN_WIDTH else (1, 1, 1)


@dataclass(frozen=True)
class _XmlLayout:
    """Level 0 of a view as the XML describes it (what :class:`_Plan` reads of a checked layout)."""

    levels: tuple[tuple[float, float, float], ...]
    shapes: tuple[tuple[int, int, int], ...]


class _Plan:
    """What each pair reads, from the views' checked layouts (no file access; per-view values computed once)."""

    def __init__(self, project: Project, layouts: dict, downsampling) -> None:
        self.project, self.layouts, self.downsampling = project, layouts, tuple(downsampling)
        self._views: dict = {}

    def view(self, view: ViewId):
        """(level, remaining factors, level transform, level shape) of a view."""
        got = self._views.get(view)
        if got is None:
            data = self.layouts[view]
            level, rest = choose_level(data.levels, self.downsampling)
            transform = self.project.transform(view, level)
            got = self._views[view] = (level, rest, transform, tuple(data.shapes[level]))
        return got

    def pair(self, groups: RegistrationGroups, first, pair: OverlapPair):
        va, vb = first[pair.a], first[pair.b]
        level_a, rest_a, ta, shape_a = self.view(va)
        level_b, rest_b, tb, shape_b = self.view(vb)
        if (level_a, rest_a) != (level_b, rest_b):
            raise RegistrationError(f"{va} and {vb} have different pyramids; cannot register them together")
        if not np.allclose(np.diag(ta), np.diag(tb)):
            raise RegistrationError(f"{va} and {vb} have different voxel sizes in world units")
        if any(r > n for r, n in zip(rest_a, shape_a)):
            raise RegistrationError(
                f"downsampling {self.downsampling} is larger than {va} (shape {shape_a} at level {level_a})"
            )
        region_a, w0_a = _crop_region(ta, pair.overlap, shape_a)
        region_b, w0_b = _crop_region(tb, pair.overlap, shape_b)
        spacing = np.diag(ta)[:-1] * np.asarray(rest_a)
        # block-averaged crop voxel i sits at w0 + spacing * i + (level spacing) * (r - 1) / 2
        w0_a = w0_a + np.diag(ta)[:-1] * (np.asarray(rest_a) - 1) / 2
        w0_b = w0_b + np.diag(tb)[:-1] * (np.asarray(rest_a) - 1) / 2
        # the crops as _register_pair will see them: common size, then block-averaged
        crop_shape = tuple(max(min(p.stop - p.start, q.stop - q.start) // r, 1)
                           for p, q, r in zip(region_a, region_b, rest_a))
        read = _PairRead(tuple(groups.used[pair.a]), tuple(groups.used[pair.b]), level_a, region_a, region_b,
                         tuple(rest_a))
        return read, (spacing, w0_a, w0_b, crop_shape)
