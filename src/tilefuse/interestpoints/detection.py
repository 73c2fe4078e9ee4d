"""DoG detection over a project's views, block by block with dask.

Each view is read at the downsampling the options ask for (from the file's
pyramid when a level divides it, block-averaged for the rest), in blocks of
``options.block`` voxels plus a halo wide enough that every block's response
equals the whole view's.  A block is one dask task holding only the loader,
the view id and its region, so memory is bounded by a few blocks whatever
the size of the views, and the tasks run on threads or on a dask.distributed
cluster alike.  A first pass finds each view's intensity range (unless
given), a second one the points.  Points are stored, as BigStitcher stores
them, in the view's full-resolution voxels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from .._progress import progress_bar
from ..downsample import block_mean
from ..errors import RegistrationError, where
from ..project.project import Project
from ..project.views import ViewId
from ..registration.pairwise import choose_level
from .dog import difference_of_gaussian, dog_halo, peaks_of_response
from .options import DEFAULT_LABEL, DetectionOptions
from .overlap import inside_view, to_world, views_meet
from .storage import InterestPoints, add_reference, container_path, points_group, write_points

__all__ = ["Detections", "check_replaceable", "detect", "detection_factors"]

log = logging.getLogger(__name__)


@dataclass
class Detections:
    """The points found in each view (full-resolution voxels ``zyx``), and how."""

    points: dict[ViewId, InterestPoints]
    label: str = DEFAULT_LABEL
    options: DetectionOptions = field(default_factory=DetectionOptions)

    @property
    def params(self) -> str:
        return self.options.params()

    def apply(self, project: Project, *, overwrite: bool = False, inplace: bool = False) -> Project:
        """Store the points in the project's ``interestpoints.n5`` and refer to them from its XML.

        Every view's group ``tpId_<t>_viewSetupId_<s>/<label>`` is written
        under a temporary name and renamed; a label that already holds other
        points (found with other parameters) is refused before anything is
        written, unless ``overwrite``.  Returns a new project with the
        ``<ViewInterestPointsFile>`` entries unless ``inplace``; save it to
        keep them.
        """
        container = container_path(project)
        if not overwrite:
            check_replaceable(project, list(self.points), self.label, self.options)
        target = project if inplace else project.copy()
        for view, pts in sorted(self.points.items()):
            write_points(container, points_group(view, self.label), pts, overwrite=True)
            add_reference(target, view, self.label, pts.params)
        return target

    def summary(self) -> str:
        counts = [len(p) for p in self.points.values()]
        lines = [f"label            {self.label!r}: {self.params}",
                 f"views            {len(counts)}",
                 (f"points per view  min {min(counts)}, median {int(np.median(counts))}, max {max(counts)}"
                  if counts else "points per view  (no views)")]
        for view, pts in sorted(self.points.items())[:8]:
            lines.append(f"  {view}: {len(pts)} points")
        if len(counts) > 8:
            lines.append(f"  … and {len(counts) - 8} more")
        return "\n".join(lines)


def check_replaceable(project: Project, views: Sequence[ViewId], label: str, options: DetectionOptions) -> None:
    """Refuse (before anything is computed or written) to replace points found otherwise under ``label``.

    The same checks as :func:`~tilefuse.interestpoints.storage.write_points`,
    for all views at once.

    Raises
    ------
    OutputExistsError
        A view holds points labelled so that were found with other
        parameters or by another program.
    """
    from ..errors import OutputExistsError
    from .storage import _group_dir, read_attributes

    container = container_path(project)
    params = DetectionOptions.build(options).params()
    for view in views:
        folder = _group_dir(container, points_group(view, label.strip()))
        if folder.exists() and read_attributes(folder / "interestpoints").get("tilefuse params") != params:
            raise OutputExistsError(
                f"{folder}: interest points labelled {label.strip()!r} exist already for {view} (found with "
                "other parameters or by another program); choose another label or overwrite them")


def detection_factors(project: Project, view: ViewId, options: DetectionOptions) -> tuple[int, int, int]:
    """Downsampling ``(z, y, x)`` of the image the detector sees for one view.

    ``downsample_xy="auto"`` is BigStitcher's "match z resolution (less
    downsampling)": the largest power of two that keeps the x/y voxels no
    coarser than the (downsampled) z voxels.
    """
    dz = int(options.downsample_z)
    if options.downsample_xy != "auto":
        return dz, int(options.downsample_xy), int(options.downsample_xy)
    vs = project.voxel_size(view)
    if vs is None or project.setup_shape(view)[0] == 1:
        return dz, 1, 1
    ratio = vs[0] * dz / min(vs[1], vs[2])
    xy = 2 ** max(0, int(math.floor(math.log2(ratio) + 1e-9))) if ratio >= 1 else 1
    return dz, xy, xy


def _read(loader, view, level, rest, lo, hi) -> np.ndarray:
    """Detection voxels ``[lo, hi)`` (three axes) of a view, float32: level voxels block-averaged by ``rest``."""
    region = tuple(slice(a * r, b * r) for a, b, r in zip(lo, hi, rest))
    block = loader.read(view, level, region).astype(np.float32, copy=False)
    if any(r > 1 for r in rest):
        block = block_mean(block, rest, dtype=np.float32, edge="trim")
    return block


def _range_task(loader, view, level, rest, lo, hi) -> tuple[float, float]:
    block = _read(loader, view, level, rest, lo, hi)
    return float(block.min()), float(block.max())


def _detect_task(loader, view, level, rest, to_full, lo, hi, shape, halo, intensity, settings):
    """One block: DoG response of the block and its halo, its extrema, refined; full-resolution voxels."""
    lo, hi, shape = np.asarray(lo), np.asarray(hi), np.asarray(shape)
    flat = shape[0] == 1  # a 2D view: detect in the plane
    pad = np.where(shape > 1, halo, 0)
    ext_lo = np.maximum(lo - pad, 0)
    ext_hi = np.minimum(hi + pad, shape)
    block = _read(loader, view, level, rest, ext_lo, ext_hi)
    # mirror beyond the image (without repeating the edge, as BigStitcher's extendMirrorSingle)
    before = ext_lo - (lo - pad)
    after = (hi + pad) - ext_hi
    if np.any(before > 0) or np.any(after > 0):
        block = _mirror_pad(block, before, after)
    lo_i, hi_i = float(intensity[0]), float(intensity[1])
    block -= np.float32(lo_i)
    block *= np.float32(1.0 / (hi_i - lo_i) if hi_i > lo_i else 1.0)
    if flat:
        block = block[0]
    dog = difference_of_gaussian(block, settings["sigma"])
    # extrema only in this block's core, and never in the image's outermost layer
    axes = range(1, 3) if flat else range(3)
    region = tuple(slice(int(max(lo[d], 1) - (lo[d] - pad[d])), int(min(hi[d], shape[d] - 1) - (lo[d] - pad[d])))
                   for d in axes)
    loc, value = peaks_of_response(dog, settings["threshold"], find_maxima=settings["find_maxima"],
                                   find_minima=settings["find_minima"], localization=settings["localization"],
                                   region=region)
    if flat:
        loc = np.column_stack([np.zeros(len(loc)), loc])
    loc = loc + (lo - pad)  # detection voxels of the view
    level_vox = loc * np.asarray(rest) + (np.asarray(rest) - 1) / 2.0
    return to_world(to_full, level_vox), value


def _mirror_pad(block: np.ndarray, before, after) -> np.ndarray:
    """Pad by mirroring without repeating the edge voxel (numpy's "reflect", repeated as often as needed)."""
    return np.pad(block, [(int(b), int(a)) for b, a in zip(before, after)], mode="reflect")


def _others(project: Project, view: ViewId, candidates: Sequence[ViewId]) -> list[ViewId]:
    """Views of the same timepoint at another tile or angle (channels of one tile overlap themselves)."""
    def place(v):
        return (project.attribute(v, "tile"), project.attribute(v, "angle"))

    return [v for v in candidates if v != view and v.timepoint == view.timepoint and place(v) != place(view)]


def detect(
    project: Project,
    views: Sequence[ViewId] | None = None,
    options: DetectionOptions | None = None,
    *,
    label: str = DEFAULT_LABEL,
    client=None,
    progress: bool = False,
    **changes,
) -> Detections:
    """Find interest points (DoG blobs) in each view, as BigStitcher's detector does.

    Parameters
    ----------
    project : Project
    views : sequence of ViewId, optional
        Default: every view with pixels (missing views are skipped).
    options : DetectionOptions, optional
        Default ``DetectionOptions()`` (BigStitcher's defaults).
    label : str
        Name of the points (``"beads"``, ``"nuclei"``...), as in BigStitcher.
    client : distributed.Client, optional
        Run the blocks on this cluster; default: local threads.
    progress : bool
        Show a progress bar over the blocks.
    **changes
        Fields of :class:`DetectionOptions` to change (``sigma=2``, ``threshold=0.01``...).

    Returns
    -------
    Detections
        The points per view; :meth:`Detections.apply` stores them.

    Examples
    --------
    >>> found = tilefuse.interestpoints.detect(project, threshold=0.01)     # doctest: +SKIP
    >>> print(found.summary())                                               # doctest: +SKIP
    >>> found.apply(project).save("dataset.xml")                             # doctest: +SKIP
    """
    import dask

    from .._compute import compute

    o = DetectionOptions.build(options, **changes)
    if not isinstance(label, str) or not label.strip() or "/" in label or label.strip() in (".", ".."):
        raise RegistrationError(f"interest point label must be a name without '/', got {label!r}")
    views = [v for v in (project.views if views is None else views) if v not in project.missing_views]
    if not views:
        raise RegistrationError(f"{where(project.path)}: no views to detect interest points in")
    loader = project.loader
    settings = {"sigma": o.sigma, "threshold": o.threshold, "find_maxima": o.find_maxima,
                "find_minima": o.find_minima, "localization": o.localization}
    halo = dog_halo(o.sigma)
    plans = {}
    for view in views:
        project.check_view(view)  # before any pixels are read
        factors = detection_factors(project, view, o)
        if project.setup_shape(view)[0] == 1:
            factors = (1,) + factors[1:]
        level, rest = choose_level(loader.levels(view), factors)
        level_shape = np.asarray(loader.shape(view, level))
        shape = np.maximum(level_shape // np.asarray(rest), 1)
        rest = tuple(int(min(r, n)) for r, n in zip(rest, level_shape))
        to_full = np.asarray(loader.mipmap_transform(view, level))
        blocks = [(tuple(int(v) for v in lo), tuple(int(v) for v in np.minimum(np.asarray(lo) + o.block, shape)))
                  for lo in product(*[range(0, int(n), int(b)) for n, b in zip(shape, o.block)])]
        plans[view] = dict(level=level, rest=rest, shape=tuple(int(n) for n in shape), to_full=to_full,
                           blocks=blocks, factors=factors)
        log.debug("%s: detecting at downsampling (z y x) %s (level %d, then block mean %s), %d blocks",
                  view, factors, level, rest, len(blocks))
    if o.overlapping_only:
        _keep_overlapping_blocks(project, views, plans)

    with progress_bar("detecting interest points", None, unit="block", enabled=progress) as bar:
        intensity = {}
        if o.intensity_range is None:
            tasks, owners = [], []
            for view, plan in plans.items():
                for lo, hi in plan["blocks"]:
                    tasks.append(dask.delayed(_range_task, pure=True)(loader, view, plan["level"], plan["rest"],
                                                                      lo, hi))
                    owners.append(view)
            bar.add_total(len(tasks))
            ranges = compute(*tasks, client=client, progress=bar)
            for view, (lo, hi) in zip(owners, ranges):
                old = intensity.get(view, (math.inf, -math.inf))
                intensity[view] = (min(old[0], lo), max(old[1], hi))
        else:
            intensity = {view: o.intensity_range for view in plans}
        tasks, owners = [], []
        for view, plan in plans.items():
            for lo, hi in plan.get("detect", plan["blocks"]):
                tasks.append(dask.delayed(_detect_task, pure=True)(
                    loader, view, plan["level"], plan["rest"], plan["to_full"], lo, hi, plan["shape"], halo,
                    intensity[view], settings))
                owners.append(view)
        bar.add_total(len(tasks))
        found = compute(*tasks, client=client, progress=bar)
    per_view: dict[ViewId, list] = {view: [] for view in plans}
    for view, result in zip(owners, found):
        per_view[view].append(result)
    points = {}
    for view in plans:
        parts = per_view[view]
        loc = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 3))
        value = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        loc, value = _dedupe(loc, value)
        if o.overlapping_only:
            keep = _in_other_views(project, view, views, loc)
            loc, value = loc[keep], value[keep]
        if o.max_detections is not None and len(loc) > o.max_detections:
            strongest = np.sort(np.argsort(-np.abs(value), kind="stable")[: o.max_detections])
            loc, value = loc[strongest], value[strongest]
        points[view] = InterestPoints(np.arange(len(loc)), loc, params=o.params(), values=value)
        log.debug("%s: %d interest points (intensity range %.6g - %.6g)", view, len(loc), *intensity[view])
    empty = [view for view, pts in points.items() if not len(pts)]
    if empty:  # nothing to match there: say so now, not only when matching finds no pairs
        log.warning("%s: %d of %d views have no interest points labelled %r (e.g. %s): lower the threshold "
                    "(now %g) or change sigma (now %g)", where(project.path), len(empty), len(points),
                    label.strip(), empty[0], o.threshold, o.sigma)
    return Detections(points, label.strip(), o)


def _dedupe(loc: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort points by location and drop those within 0.001 voxels of another (a fit moved two peaks together)."""
    if not len(loc):
        return loc, value
    order = np.lexsort(loc.T[::-1])
    loc, value = loc[order], value[order]
    key = np.round(loc / 1e-3).astype(np.int64)
    _, first = np.unique(key, axis=0, return_index=True)
    first = np.sort(first)
    return loc[first], value[first]


def _in_other_views(project: Project, view: ViewId, views: Sequence[ViewId], loc: np.ndarray) -> np.ndarray:
    world = to_world(project.model(view), loc)
    keep = np.zeros(len(loc), dtype=bool)
    for other in _others(project, view, views):
        keep |= inside_view(project.model(other), project.setup_shape(other), world)
    return keep


def _keep_overlapping_blocks(project: Project, views: Sequence[ViewId], plans: dict) -> None:
    """Detect only in blocks that may overlap a view of another tile or angle ("overlapping only")."""
    for view, plan in plans.items():
        others = [(project.model(o), project.setup_shape(o)) for o in _others(project, view, views)]
        model = project.model(view)
        keep = []
        for lo, hi in plan["blocks"]:
            lv = np.asarray(plan["to_full"])
            a = to_world(lv, np.asarray(lo, dtype=float) * plan["rest"])[0]
            b = to_world(lv, (np.asarray(hi, dtype=float)) * plan["rest"] - 1)[0]
            shape = np.maximum(b - a + 1, 1)
            box = np.eye(4)
            box[:3, 3] = a
            if any(views_meet(model @ box, shape, m, s) for m, s in others):
                keep.append((lo, hi))
        plan["detect"] = keep
