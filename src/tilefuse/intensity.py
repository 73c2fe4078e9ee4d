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

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import TilefuseError
from .project.project import Project
from .project.views import ViewId

__all__ = ["IntensityResult", "match_intensities"]


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


def match_intensities(
    project: Project,
    views: Sequence[ViewId] | None = None,
    *,
    downsampling: float = 4.0,
    model: str = "affine",
    n_quantiles: int = 25,
    regularization: float = 0.1,
    min_samples: int = 200,
    progress: bool = False,
    client=None,
) -> IntensityResult:
    """Estimate a linear intensity correction per view from the overlaps.

    Parameters
    ----------
    project : Project
        Registered project (the overlaps are taken from its current transforms).
    views : sequence of ViewId, optional
        Views to match; default every view with pixels.  Only views of the
        same timepoint and channel are compared.
    downsampling : float
        Grid spacing of the overlap renderings, in world units (finest voxels);
        intensities are smooth at this scale, and coarse pyramid levels are read.
    model : {"affine", "gain"}
        ``a * I + b``, or ``a * I`` alone.
    n_quantiles : int
        Quantiles (between the 5th and 95th percentile) matched per pair.
    regularization : float
        Weight of the pull towards the identity, relative to one pair.
    min_samples : int
        Pairs whose overlap has fewer valid samples on the grid are ignored.
    progress : bool
        Show a progress bar over the pairs.
    client : distributed.Client, optional
        Render the overlaps on this cluster; by default local threads.

    Returns
    -------
    IntensityResult

    Raises
    ------
    TilefuseError
        Unknown ``model`` or bad parameters.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import lsqr

    from ._compute import compute
    from .fusion.api import fusion_sources
    from .fusion.engine import fuse_sources
    from .registration.pairs import overlapping_pairs

    if model not in ("affine", "gain"):
        raise TilefuseError(f"intensity model {model!r} is not supported; use 'affine' or 'gain'")
    if not (downsampling > 0 and n_quantiles >= 2 and regularization > 0):
        raise TilefuseError(
            f"need downsampling > 0, n_quantiles >= 2, regularization > 0; got {downsampling}, "
            f"{n_quantiles}, {regularization}"
        )
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

    matched = []  # (i, j, qa, qb)
    used = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="matching intensities", unit="pair")
    batch = 64  # pairs rendered per compute: parallel, with little in memory at once
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        rendered = compute(*[r for pair in chunk for r in renderings(pair)], client=client)
        for k, pair in enumerate(chunk):
            a, b = rendered[2 * k], rendered[2 * k + 1]
            valid = np.isfinite(a) & np.isfinite(b)
            n = int(valid.sum())
            if n < min_samples:
                continue
            matched.append((index[pair.a], index[pair.b], np.quantile(a[valid], levels),
                            np.quantile(b[valid], levels)))
            used.append((pair.a, pair.b, n))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()

    n_views = len(views)
    if not matched:
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

    return IntensityResult(models, used, mismatch(np.ones(n_views), np.zeros(n_views)), mismatch(gains, offsets))
