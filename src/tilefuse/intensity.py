"""Match the intensities of overlapping views: one linear model per view, solved globally.

Tiles of one mosaic rarely share a brightness: lamp drift, exposure, gain.
Blending hides the step at a seam but not the tile-sized patches of different
brightness.  BigStitcher stores a per-view correction ``corrected = a * I + b``
(``<IntensityAdjustments>``, an ``AffineModel1D``) that fusion applies
(``plan_fusion(..., intensity_adjustment=True)``).  This module estimates it:

1. every pair of views of the same timepoint and channel whose world boxes
   overlap is rendered onto one coarse grid over the overlap (through the
   fusion engine, from the pyramid level that suits the grid, so only the
   overlap is read);
2. the intensities of the two renderings are matched quantile by quantile
   (robust to a little misregistration and to noise, unlike pixel pairs);
3. one sparse least-squares problem over all ``(a, b)`` asks every pair's
   matched quantiles to agree after correction, with a weak pull of every
   model towards the identity (so views without overlaps, and the global
   scale, stay put); the result is then scaled so that the mean gain is 1
   and the mean offset 0 - the mosaic keeps its overall brightness.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ._options import Options, number, option
from ._progress import progress_bar
from .errors import TilefuseError
from .project.project import Project
from .project.views import ViewId

__all__ = ["IntensityOptions", "IntensityResult", "match_intensities", "INTENSITY_MODELS"]

log = logging.getLogger(__name__)

#: ``a * I + b`` per view, or ``a * I`` alone.
INTENSITY_MODELS = ("affine", "gain")


@dataclass
class IntensityResult:
    """Per-view intensity models and how well overlapping views agree.

    Attributes
    ----------
    models : dict of ViewId -> (float, float)
        ``(a, b)``: the corrected intensity is ``a * I + b``.
    pairs : list of (ViewId, ViewId, int)
        The overlapping pairs used and their number of valid samples.
    mismatch_before, mismatch_after : float
        Mean absolute difference of the pairs' matched quantiles, relative to
        the median intensity, without and with the models.
    """

    models: dict[ViewId, tuple[float, float]]
    pairs: list[tuple[ViewId, ViewId, int]] = field(default_factory=list)
    mismatch_before: float = float("nan")
    mismatch_after: float = float("nan")

    def apply(self, project: Project, *, inplace: bool = False) -> Project:
        """Store the models as the project's ``<IntensityAdjustments>`` (a new project unless ``inplace``)."""
        target = project if inplace else project.copy()
        target.data.intensity_adjustments = dict(self.models)
        return target


@dataclass(frozen=True)
class IntensityOptions(Options):
    """How to match intensities over the overlaps (checked when made; the CLI's flags come from here)."""

    model: str = option("affine", choices=INTENSITY_MODELS, example="gain",
                        help="a*I + b per view (affine, default), or a*I (gain)")
    downsampling: float = option(4.0, check=number(0, lo_open=True), flag="--downsample", metavar="UNITS",
                                 example="8", help="grid spacing of the overlap samples, world units (default 4)")
    n_quantiles: int = option(25, check=number(2, integer=True), flag="--quantiles", metavar="N", example="11",
                              help="quantiles matched per overlap, between the 5th and 95th percentile (25)")
    regularization: float = option(0.1, check=number(0, lo_open=True), metavar="WEIGHT", example="0.5",
                                   help="pull of each view towards no change, relative to one overlap (0.1)")
    min_samples: int = option(200, check=number(1, integer=True), metavar="N", example="50",
                              help="overlaps with fewer valid samples on the grid are ignored (200)")


def match_intensities(
    project: Project,
    views: Sequence[ViewId] | None = None,
    options: IntensityOptions | None = None,
    *,
    progress: bool = False,
    client=None,
    **changes,
) -> IntensityResult:
    """Estimate a linear intensity correction per view from the overlaps.

    Parameters
    ----------
    project : Project
        Registered project (the overlaps are taken from its current transforms).
    views : sequence of ViewId, optional
        Views to match; default every view with pixels.  Only views of the
        same timepoint and channel are compared.
    options : IntensityOptions, optional
        How to match (default ``IntensityOptions()``); ``**changes`` changes fields:

        ``downsampling``
            Grid spacing of the overlap renderings, in world units (finest
            voxels); intensities are smooth at this scale, and coarse pyramid
            levels are read.
        ``model`` : {"affine", "gain"}
            ``a * I + b``, or ``a * I`` alone.
        ``n_quantiles``
            Quantiles (between the 5th and 95th percentile) matched per pair.
        ``regularization``
            Weight of the pull towards the identity, relative to one pair.
        ``min_samples``
            Pairs whose overlap has fewer valid samples on the grid are ignored.
    progress : bool
        Show a progress bar over the overlapping pairs.
    client : distributed.Client, optional
        Render the overlaps on this cluster; by default local threads.

    Returns
    -------
    IntensityResult

    Raises
    ------
    OptionError
        An option has a bad value (the message names it).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import lsqr

    from ._compute import compute
    from .fusion.api import fusion_sources
    from .fusion.engine import fuse_sources
    from .registration.pairs import overlapping_pairs

    o = IntensityOptions.build(options, **changes)
    downsampling, model, n_quantiles = o.downsampling, o.model, o.n_quantiles
    regularization, min_samples = o.regularization, o.min_samples
    views = [ViewId(*v) for v in (views if views is not None else project.views)]
    index = {v: i for i, v in enumerate(views)}
    ndim = project.ndim
    boxes = {v: project.world_box(v) for v in views}
    partition = {v: (v.timepoint, project.attribute(v, "channel")) for v in views}
    pairs = overlapping_pairs(boxes, same=partition)
    spacing = np.full(3, float(downsampling))
    sources = dict(zip(views, fusion_sources(project, views, spacing)))

    levels = np.linspace(0.05, 0.95, int(n_quantiles))

    def renderings(pair):
        """Both views of a pair on one grid over their overlap (lazy, NaN outside a view)."""
        lo, hi = np.asarray(pair.overlap.lo), np.asarray(pair.overlap.hi)
        sp = spacing
        if ndim == 2:
            lo, hi, sp = lo[1:], hi[1:], spacing[1:]
        shape = tuple(int(n) for n in np.floor((hi - lo) / sp).astype(int) + 1)
        return [fuse_sources([sources[v]], origin=lo, spacing=sp, shape=shape, blending="first",
                             dtype=np.float32, fill_value=np.nan, chunks=shape) for v in (pair.a, pair.b)]

    log.debug("matching intensities of %d views over %d overlapping pairs on a grid of %g world units (%s model)",
              len(views), len(pairs), downsampling, model)
    matched = []  # (i, j, qa, qb)
    used = []
    batch = 64  # pairs rendered per compute: parallel, with little in memory at once
    with progress_bar("matching intensities", len(pairs), unit="overlap", enabled=progress) as bar:
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            rendered = compute(*[r for pair in chunk for r in renderings(pair)], client=client)
            for k, pair in enumerate(chunk):
                a, b = rendered[2 * k], rendered[2 * k + 1]
                valid = np.isfinite(a) & np.isfinite(b)
                n = int(valid.sum())
                if n < min_samples:
                    log.debug("%s - %s: %d valid samples, fewer than %d: ignored", pair.a, pair.b, n, min_samples)
                    continue
                matched.append((index[pair.a], index[pair.b], np.quantile(a[valid], levels),
                                np.quantile(b[valid], levels)))
                used.append((pair.a, pair.b, n))
                log.debug("%s - %s: %d samples, middle quantiles %.4g and %.4g", pair.a, pair.b, n,
                          matched[-1][2][len(levels) // 2], matched[-1][3][len(levels) // 2])
            bar.update(len(chunk))

    n_views = len(views)
    if not matched:
        log.debug("no overlap has %d valid samples: every view keeps its intensities", min_samples)
        return IntensityResult({v: (1.0, 0.0) for v in views}, used)
    scale = float(np.median(np.concatenate([np.r_[qa, qb] for _, _, qa, qb in matched]))) or 1.0
    per_view = 2 if model == "affine" else 1
    rows, cols, vals, rhs = [], [], [], []
    r = 0
    w_pair = 1.0 / np.sqrt(len(levels))  # each pair weighs 1 in total
    for i, j, qa, qb in matched:
        for x, y in zip(qa / scale, qb / scale):
            # a_i x + b_i - a_j y - b_j = 0
            rows += [r, r]
            cols += [per_view * i, per_view * j]
            vals += [w_pair * x, -w_pair * y]
            if per_view == 2:
                rows += [r, r]
                cols += [2 * i + 1, 2 * j + 1]
                vals += [w_pair, -w_pair]
            rhs.append(0.0)
            r += 1
    for k in range(n_views):  # the pull towards identity: a = 1, b = 0
        rows.append(r)
        cols.append(per_view * k)
        vals.append(regularization)
        rhs.append(regularization)
        r += 1
        if per_view == 2:
            rows.append(r)
            cols.append(2 * k + 1)
            vals.append(regularization)
            rhs.append(0.0)
            r += 1
    system = coo_matrix((vals, (rows, cols)), shape=(r, per_view * n_views)).tocsr()
    solution = lsqr(system, np.asarray(rhs), atol=1e-12, btol=1e-12, iter_lim=20 * per_view * n_views + 100)[0]
    gains = solution[::per_view]
    offsets = solution[1::2] * scale if per_view == 2 else np.zeros(n_views)
    # Keep the mosaic's overall brightness: mean gain 1, mean offset 0.
    mean_gain = float(np.mean(gains))
    if not np.isfinite(mean_gain) or mean_gain <= 0:
        raise TilefuseError("intensity matching failed: the solved gains are not positive")
    gains = gains / mean_gain
    offsets = (offsets - np.mean(offsets)) / mean_gain
    models = {v: (float(gains[k]), float(offsets[k])) for k, v in enumerate(views)}

    def mismatch(a, b):
        diffs = [np.mean(np.abs((a[i] * qa + b[i]) - (a[j] * qb + b[j]))) for i, j, qa, qb in matched]
        return float(np.mean(diffs) / scale)

    result = IntensityResult(models, used, mismatch(np.ones(n_views), np.zeros(n_views)), mismatch(gains, offsets))
    for view, (a, b) in models.items():
        log.debug("%s: corrected = %.4f * I %+.4g", view, a, b)
    log.debug("intensity mismatch over %d pairs: %.4f before, %.4f after", len(used), result.mismatch_before,
              result.mismatch_after)
    return result
