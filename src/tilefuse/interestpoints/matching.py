"""Matching interest points between pairs of views: descriptors, seeded RANSAC, optional ICP.

For every pair of views that overlap under their current transforms (of one
timepoint, in different groups), the points of each view that fall inside
the other are taken to world coordinates, described
(:mod:`.descriptors`), paired by the ratio test, and filtered by RANSAC
(:mod:`.models`) with the chosen model.  Each pair is one dask task holding
only point arrays, seeded from the options' seed and the two view ids, so
results do not depend on the order, the scheduler or the number of workers.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._progress import progress_bar
from ..errors import OutputExistsError, RegistrationError, where
from ..project.project import Project
from ..project.views import ViewId
from ..registration.global_affine import nearest_rotation
from .descriptors import describe, descriptor_candidates
from .models import icp, ransac, remove_inconsistent, residuals
from .options import DEFAULT_LABEL, MatchingOptions
from .overlap import inside_view, to_world, views_meet
from .storage import (
    Correspondences,
    InterestPoints,
    container_path,
    load_points,
    points_group,
    read_correspondences,
    write_correspondences,
)

__all__ = ["PairMatches", "Matches", "match", "pair_method"]

log = logging.getLogger(__name__)

#: Views whose current rotations differ by more than this (degrees) are matched rotation-invariantly by "auto".
ROTATION_TOLERANCE = 2.0


@dataclass
class PairMatches:
    """The matches of one pair of views.

    ``p`` and ``q`` are the matched points in world coordinates under the
    views' transforms at matching time (``p`` seen by ``a``, ``q`` by ``b``);
    ``model`` maps ``p`` onto ``q`` (None when the pair did not match).
    """

    a: ViewId
    b: ViewId
    method: str
    candidates: int
    ids_a: np.ndarray
    ids_b: np.ndarray
    p: np.ndarray
    q: np.ndarray
    model: np.ndarray | None
    message: str = ""

    @property
    def matched(self) -> bool:
        return self.model is not None and len(self.ids_a) > 0

    @property
    def error(self) -> float:
        """Mean distance of the inliers under the pair's model (world units); NaN without one."""
        if not self.matched:
            return float("nan")
        return float(np.mean(residuals(self.model, self.p, self.q)))


@dataclass
class Matches:
    """The point matches of every pair of views, and how they were found."""

    pairs: list[PairMatches]
    label: str = DEFAULT_LABEL
    options: MatchingOptions = field(default_factory=MatchingOptions)
    views: list[ViewId] = field(default_factory=list)

    @property
    def matched(self) -> list[PairMatches]:
        return [pair for pair in self.pairs if pair.matched]

    def correspondences(self) -> dict[ViewId, Correspondences]:
        """Per view, BigStitcher's corresponding-points table (both directions of every matched pair)."""
        rows: dict[ViewId, list] = {view: [] for view in self.views}
        for pair in self.matched:
            rows.setdefault(pair.a, []).append((pair.ids_a, pair.ids_b, pair.b))
            rows.setdefault(pair.b, []).append((pair.ids_b, pair.ids_a, pair.a))
        out = {}
        for view, parts in rows.items():
            if not parts:
                out[view] = Correspondences.empty()
                continue
            ids = np.concatenate([p[0] for p in parts])
            other = np.concatenate([p[1] for p in parts])
            views = [p[2] for p in parts for _ in range(len(p[0]))]
            out[view] = Correspondences(ids, other, views, [self.label] * len(ids))
        return out

    def save(self, project: Project, *, overwrite: bool = False) -> None:
        """Write every view's correspondences into the project's ``interestpoints.n5``.

        The points must be stored already (:meth:`Detections.apply`).  Stored
        correspondences of the label that differ from these (matched with
        other options, or in Fiji) are replaced only with ``overwrite``: the
        container belongs to the input project, which is not changed unless
        asked.  All views are checked before any is written.

        Raises
        ------
        OutputExistsError
            A view holds other correspondences and ``overwrite`` is False.
        """
        if not overwrite:
            self.check_replaceable(project)
        container = container_path(project)
        for view, table in sorted(self.correspondences().items()):
            write_correspondences(container, points_group(view, self.label), table)

    def check_replaceable(self, project: Project) -> None:
        """Refuse (before anything is written) to replace other stored correspondences: see :meth:`save`."""
        container = container_path(project)
        for view, table in sorted(self.correspondences().items()):
            group = points_group(view, self.label)
            stored = read_correspondences(container, group)
            if len(stored) and _rows(stored) != _rows(table):
                raise OutputExistsError(
                    f"{container}/{group}/correspondences: {view} holds {len(stored)} correspondences "
                    f"labelled {self.label!r} that differ from these {len(table)} (matched with other "
                    "options or by another program); overwrite them to replace them")

    def summary(self, limit: int = 12) -> str:
        """Pairs tried and matched, and per pair the candidates, inliers and error."""
        good = self.matched
        lines = [f"pairs            {len(self.pairs)} compared, {len(good)} matched "
                 f"({self.options.model_name()})"]
        if good:
            inl = [len(p.ids_a) for p in good]
            lines.append(f"inliers          min {min(inl)}, median {int(np.median(inl))}, max {max(inl)} per pair")
        for pair in self.pairs[:limit]:
            state = (f"{len(pair.ids_a)} inliers of {pair.candidates} candidates, error {pair.error:.2f}"
                     if pair.matched else f"not matched: {pair.message}")
            if pair.matched and "; ICP:" in pair.message:  # ICP pairs points anew: they may outnumber the candidates
                state = (f"{len(pair.ids_a)} pairs after ICP ({pair.candidates} descriptor candidates), "
                         f"error {pair.error:.2f}")
            lines.append(f"  {_short(pair.a)} - {_short(pair.b)}  {pair.method:<21}  {state}")
        if len(self.pairs) > limit:
            lines.append(f"  … and {len(self.pairs) - limit} more")
        return "\n".join(lines)


def _rows(table) -> set[tuple]:
    """A correspondence table as a set of rows (the stored order is not meaningful)."""
    return set(zip(table.ids.tolist(), table.other_ids.tolist(), table.other_views, table.other_labels))


def _short(view: ViewId) -> str:
    return f"t{view.timepoint}s{view.setup}"


def pair_method(project: Project, a: ViewId, b: ViewId, method: str) -> str:
    """The descriptor method for one pair: ``auto`` is rotation-invariant when the views' rotations differ."""
    if method != "auto":
        return method
    ra = nearest_rotation(project.model(a)[:3, :3])
    rb = nearest_rotation(project.model(b)[:3, :3])
    angle = np.degrees(np.arccos(np.clip((np.trace(ra.T @ rb) - 1.0) / 2.0, -1.0, 1.0)))
    return "rotation-invariant" if angle > ROTATION_TOLERANCE else "translation-invariant"


def _match_pair(pa, ids_a, pb, ids_b, method, settings, seed) -> tuple:
    """One pair (a dask task): candidates, RANSAC, ICP; returns (candidates, inlier indices a, b, model, message)."""
    empty = np.zeros(0, dtype=np.intp)
    model, reg, lam = settings["model"], settings["regularizer"], settings["lambda"]
    if method == "icp":
        matrix, ia, ib = icp(pa, pb, model, regularizer=reg, lam=lam, max_distance=settings["icp_distance"],
                             iterations=settings["icp_iterations"], min_matches=settings["min_matches"])
        if matrix is None:
            return 0, empty, empty, None, "ICP found too few pairs of closest points"
        return len(ia), ia, ib, matrix, f"{len(ia)} pairs of closest points"
    da, oa, per = describe(pa, method, neighbours=settings["neighbours"], redundancy=settings["redundancy"])
    db, ob, _ = describe(pb, method, neighbours=settings["neighbours"], redundancy=settings["redundancy"])
    ca, cb = descriptor_candidates(da, oa, db, ob, per, settings["ratio"])
    n_candidates = len(ca)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    matrix, inliers, message = ransac(pa[ca], pb[cb], model, regularizer=reg, lam=lam,
                                      epsilon=settings["epsilon"], iterations=settings["iterations"],
                                      min_inlier_ratio=settings["min_inlier_ratio"],
                                      min_matches=settings["min_matches"], rng=rng)
    if matrix is not None:
        ia, ib = ca[inliers], cb[inliers]
        consistent = remove_inconsistent(ia, ib)
        if consistent.sum() < max(settings["min_matches"], 1):
            # points used twice: clean the candidates and try once more (as BigStitcher)
            keep = remove_inconsistent(ca, cb)
            ca, cb = ca[keep], cb[keep]
            matrix, inliers, message = ransac(pa[ca], pb[cb], model, regularizer=reg, lam=lam,
                                              epsilon=settings["epsilon"], iterations=settings["iterations"],
                                              min_inlier_ratio=settings["min_inlier_ratio"],
                                              min_matches=settings["min_matches"], rng=rng)
            if matrix is None:
                return n_candidates, empty, empty, None, message
            ia, ib = ca[inliers], cb[inliers]
        else:
            ia, ib = ia[consistent], ib[consistent]
    if matrix is None:
        return n_candidates, empty, empty, None, message
    if settings["icp"]:
        refined, ja, jb = icp(pa, pb, model, start=matrix, regularizer=reg, lam=lam,
                              max_distance=settings["icp_distance"], iterations=settings["icp_iterations"],
                              min_matches=settings["min_matches"])
        if refined is not None:
            matrix, ia, ib = refined, ja, jb
            message += f"; ICP: {len(ia)} pairs"
    return n_candidates, ia, ib, matrix, message


def match(
    project: Project,
    views: Sequence[ViewId] | None = None,
    options: MatchingOptions | None = None,
    *,
    label: str = DEFAULT_LABEL,
    points: Mapping[ViewId, InterestPoints] | None = None,
    groups: Mapping[ViewId, Hashable] | None = None,
    client=None,
    progress: bool = False,
    **changes,
) -> Matches:
    """Match the interest points of every overlapping pair of views.

    Parameters
    ----------
    project : Project
    views : sequence of ViewId, optional
        Default: every view with points of ``label``.
    options : MatchingOptions, optional
        Default ``MatchingOptions()`` (BigStitcher's defaults).
    label : str
        Which points (default ``"beads"``).
    points : mapping, optional
        Points per view (default: those the project's XML refers to).
    groups : mapping ViewId -> key, optional
        Views of one group move together and are not matched with each other
        (default: every view alone).
    client : distributed.Client, optional
        Match the pairs on this cluster; default: local threads.
    progress : bool
        Show a progress bar over the pairs.
    **changes
        Fields of :class:`MatchingOptions` to change.

    Returns
    -------
    Matches
        Per pair the inliers and the model; :meth:`Matches.save` stores them as
        BigStitcher's correspondences.
    """
    import dask

    from .._compute import compute

    o = MatchingOptions.build(options, **changes)
    if points is None:
        points = load_points(project, label, views)
    if views is not None:
        missing = [v for v in views if v not in points]
        if missing:
            raise RegistrationError(f"{where(project.path)}: {missing[0]} has no interest points labelled {label!r}")
    views = sorted(points if views is None else views)
    if len(views) < 2:
        if len(project.views) < 2:
            raise RegistrationError(f"{where(project.path)}: the project has {len(project.views)} view; matching "
                                    "interest points needs two or more")
        raise RegistrationError(f"{where(project.path)}: interest points labelled {label!r} exist for "
                                f"{len(views)} view(s); matching needs two or more (detect them first)")
    group = {v: (groups[v] if groups is not None else v) for v in views}
    models = {v: project.model(v) for v in views}
    shapes = {v: project.setup_shape(v) for v in views}
    world = {v: to_world(models[v], points[v].loc) for v in views}
    settings = {"model": o.model, "regularizer": o.regularizer(), "lambda": o.lambda_,
                "epsilon": o.ransac_error, "iterations": o.ransac_iterations, "min_inlier_ratio": o.min_inlier_ratio,
                "min_matches": o.min_matches, "neighbours": o.neighbours, "icp": o.icp,
                "icp_distance": o.icp_distance, "icp_iterations": o.icp_iterations}
    margin = o.ransac_error  # points just outside the other view may still be seen there after correction
    pairs, tasks = [], []
    for i, a in enumerate(views):
        for b in views[i + 1:]:
            if a.timepoint != b.timepoint or group[a] == group[b]:
                continue
            if not o.all_pairs and not views_meet(models[a], shapes[a], models[b], shapes[b], margin):
                continue
            method = pair_method(project, a, b, o.method)
            if o.all_pairs:
                # the current transforms are not trusted to say which points the other view sees (its
                # stage position may be far off): every point takes part, as in BigStitcher's "all views"
                sa = np.ones(len(world[a]), dtype=bool)
                sb = np.ones(len(world[b]), dtype=bool)
            else:
                sa = inside_view(models[b], shapes[b], world[a], margin)
                sb = inside_view(models[a], shapes[a], world[b], margin)
            pair_settings = dict(settings, redundancy=o.descriptor_redundancy(method), ratio=o.descriptor_ratio(method))
            seed = [o.seed, a.timepoint, a.setup, b.timepoint, b.setup]
            pairs.append((a, b, method, np.flatnonzero(sa), np.flatnonzero(sb)))
            tasks.append(dask.delayed(_match_pair, pure=True)(world[a][sa], points[a].ids[sa], world[b][sb],
                                                              points[b].ids[sb], method, pair_settings, seed))
    log.debug("matching %d pairs of %d views (label %r)", len(tasks), len(views), label)
    with progress_bar("matching interest points", len(tasks), unit="pair", enabled=progress) as bar:
        results = compute(*tasks, client=client, progress=bar)
    out = []
    for (a, b, method, sa, sb), (n_candidates, ia, ib, matrix, message) in zip(pairs, results):
        ia, ib = sa[ia], sb[ib]
        pm = PairMatches(a, b, method, int(n_candidates), points[a].ids[ia], points[b].ids[ib], world[a][ia],
                         world[b][ib], matrix, message)
        log.debug("pair %s - %s (%s): %s", a, b, method, message)
        out.append(pm)
    return Matches(out, label, o, list(views))
