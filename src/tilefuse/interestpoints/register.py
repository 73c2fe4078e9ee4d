"""Registration with interest points: detect (or reuse), match, solve, write back as BigStitcher does.

:func:`tilefuse.register` calls :func:`register_interest_points` when the
views are rotated relative to each other (or when asked with
``method="interest-points"``).  Views are grouped as for phase correlation
(all channels and illuminations of a tile and angle move together; one
channel or illumination may carry the points); the points of the group's
views are matched with those of other groups, and one transform per group
is solved (:func:`~tilefuse.registration.global_points.solve_point_matches`).
The result is written back as BigStitcher writes it: a ViewTransform named
after the model (``AffineModel3D regularized with an RigidModel3D, lambda =
0.1``) at the front of every view's chain, the points and the
correspondences in ``interestpoints.n5``, and ``<ViewInterestPoints>`` in the
XML.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import RegistrationError, where
from ..project.project import Project
from ..project.views import ViewId
from ..registration.global_affine import PointMatches
from ..registration.global_opt import PRESETS
from ..registration.global_points import PointSolution, WeakLink, solve_point_matches
from ..registration.options import RegistrationOptions
from ..registration.pairwise import RegistrationGroups, make_groups
from .detection import Detections, detect
from .matching import Matches, match
from .options import DEFAULT_LABEL, DetectionOptions, MatchingOptions
from .overlap import to_world, views_meet
from .storage import InterestPoints, add_reference, labels, load_points

__all__ = ["InterestPointRegistration", "register_interest_points"]

log = logging.getLogger(__name__)


@dataclass
class InterestPointRegistration:
    """What :func:`register_interest_points` found: points, matches, and one world correction per group."""

    groups: RegistrationGroups
    points: dict[ViewId, InterestPoints]
    matches: Matches
    links: list[PointMatches]
    solution: PointSolution
    label: str = DEFAULT_LABEL
    #: New detections (stored by :meth:`apply`); None when every view's points came from the project.
    detections: Detections | None = None
    transform_name: str = ""
    params: dict = field(default_factory=dict)

    @property
    def transforms(self) -> dict[Hashable, np.ndarray]:
        return self.solution.transforms

    def transform(self, key: Hashable) -> np.ndarray:
        """The world correction of a group (4x4, ``zyx``)."""
        return self.solution.transforms[key]

    def view_errors(self) -> dict[ViewId, float]:
        """Per view, the mean distance of its matched points after the solve (world units)."""
        per: dict[ViewId, list[float]] = {}
        for pair, link in zip(self.matches.matched, self.links):
            err = np.linalg.norm(_apply(self.transform(link.a), link.p) - _apply(self.transform(link.b), link.q),
                                 axis=1)
            for view in (pair.a, pair.b):
                per.setdefault(view, []).extend(err.tolist())
        return {v: float(np.mean(e)) for v, e in sorted(per.items())}

    def warnings(self) -> list[str]:
        """What to check before trusting the result, one sentence each."""
        out = []
        n_groups = len(self.groups.members)
        linked = {k for link, ok in zip(self.links, self.solution.accepted) if ok for k in (link.a, link.b)}
        alone = [k for k in self.groups.members if k not in linked]
        if n_groups > 1 and alone:
            shown = ", ".join(map(str, alone[:5])) + (f" and {len(alone) - 5} more" if len(alone) > 5 else "")
            out.append(f"{len(alone)} of {n_groups} groups have no matched interest points and keep their stage "
                       f"positions relative to their neighbours: {shown}")
        empty = [v for v, pts in self.points.items() if len(pts) < self.matches.options.min_matches]
        if empty:
            out.append(f"{len(empty)} views have fewer than {self.matches.options.min_matches} interest points "
                       f"labelled {self.label!r} (e.g. {empty[0]}): lower the detection threshold or sigma")
        return out

    def apply(self, project: Project, *, inplace: bool = False, overwrite: bool = False,
              name: str | None = None) -> Project:
        """Write the result back as BigStitcher does; returns the registered project (new unless ``inplace``).

        Adds a ViewTransform named after the model (``name`` overrides it) at
        the front of every view's chain; stores new points and every view's
        correspondences in the project's ``interestpoints.n5`` (points and
        correspondences already stored under the label that differ from these
        are replaced only with ``overwrite``) and refers to them from ``<ViewInterestPoints>``.
        Save the returned project to keep the XML part.
        """
        target = project if inplace else project.copy()
        if not overwrite:  # refuse before any point is written
            self.matches.check_replaceable(target)
        if self.detections is not None:
            self.detections.apply(target, overwrite=overwrite, inplace=True)
        for view, pts in self.points.items():
            if not any(r.view == view and r.label == self.label for r in target.data.interest_points or ()):
                add_reference(target, view, self.label, pts.params)
        self.matches.save(target, overwrite=overwrite)
        for key, views in self.groups.members.items():
            matrix = self.transform(key)
            for view in views:
                target.preconcatenate(view, matrix, name or self.transform_name)
        return target

    def summary(self) -> str:
        """Points per view, matches per pair, links kept, residual per view, the corrections."""
        counts = [len(p) for p in self.points.values()]
        sol = self.solution
        rejected = [r.split(" (")[0] for r in sol.reasons if r]
        moves = []
        for key in self.groups.members:
            centre = np.array(self.params.get("centres", {}).get(key, np.zeros(3)))
            moves.append(float(np.linalg.norm(_apply(self.transform(key), centre[None])[0] - centre)))
        lines = [
            f"method           interest points, label {self.label!r} "
            f"({'detected now' if self.detections is not None else 'stored in the project'})",
            f"groups           {len(self.groups.members)}",
            f"points per view  min {min(counts)}, median {int(np.median(counts))}, max {max(counts)}"
            if counts else "points per view  none",
            self.matches.summary(limit=8),
            f"links            {len(self.links)} ({int(sol.accepted.sum())} kept, {len(rejected)} rejected)",
        ]
        for reason in sorted(set(rejected)):
            lines.append(f"  rejected       {rejected.count(reason):5d}  {reason}")
        lines.append(f"residual         mean {sol.mean_error:.3f}, max {sol.max_error:.3f} (world units; "
                     f"{self.transform_name})")
        errors = self.view_errors()
        shown = list(errors.items())[:8]
        if shown:
            lines.append("  per view       " + ", ".join(f"t{v.timepoint}s{v.setup} {e:.3f}" for v, e in shown)
                         + (f" … and {len(errors) - 8} more" if len(errors) > 8 else ""))
        if moves:
            lines.append(f"correction       mean {np.mean(moves):.2f}, max {np.max(moves):.2f} "
                         "(world units, at the view centres)")
        return "\n".join(lines)


def _apply(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(x) @ m[:3, :3].T + m[:3, 3]


def register_interest_points(
    project: Project,
    views: Sequence[ViewId] | None = None,
    options: RegistrationOptions | None = None,
    *,
    detection: DetectionOptions | None = None,
    matching: MatchingOptions | None = None,
    label: str = DEFAULT_LABEL,
    client=None,
    progress: bool = False,
) -> InterestPointRegistration:
    """Register views with interest points: detect (unless stored), match, solve.

    Parameters
    ----------
    project : Project
    views : sequence of ViewId, optional
        Views to register (default: all present views).
    options : RegistrationOptions, optional
        Grouping (``group_by``, ``channel``, ``illumination``), link rejection
        (``preset``, ``rel_threshold``, ``abs_threshold``) and ``fixed``
        groups; the phase-correlation fields are not used.
    detection : DetectionOptions, optional
        How to find points in views that have none labelled ``label``.
    matching : MatchingOptions, optional
        How to match them, and the model of the matches and the solve.
    label : str
        Which points (default ``"beads"``): stored ones are used as they are.
    client, progress
        As for :func:`tilefuse.register`.
    """
    o = RegistrationOptions.build(options)
    detection = DetectionOptions.build(detection)
    matching = MatchingOptions.build(matching)
    groups = make_groups(project, views, group_by=o.group_by, channel=o.channel, illumination=o.illumination)
    if len(groups.members) < 2:  # refuse before detecting: there is nothing to match the points with
        raise RegistrationError(f"{where(project.path)}: {len(groups.members)} group of views to register "
                                f"({len(project.views)} view(s) in all); interest points are matched between two "
                                "or more")
    used = sorted({v for vs in groups.used.values() for v in vs})
    stored = set(labels(project).get(label, ()))
    points = load_points(project, label, [v for v in used if v in stored])
    todo = [v for v in used if v not in points]
    found = None
    if todo:
        log.info("%s: detecting interest points %r in %d views", where(project.path), label, len(todo))
        found = detect(project, todo, detection, label=label, client=client, progress=progress)
        points.update(found.points)
    else:
        log.info("%s: using the stored interest points %r of %d views", where(project.path), label, len(used))
    group_of = {v: k for k, vs in groups.used.items() for v in vs}
    matches = match(project, used, matching, label=label, points=points, groups=group_of, client=client,
                    progress=progress)
    links = [PointMatches(group_of[p.a], group_of[p.b], p.p, p.q, 1.0) for p in matches.matched]
    keys = list(groups.members)
    rel, ab = PRESETS[o.preset]
    rel = rel if o.rel_threshold is None else o.rel_threshold
    ab = ab if o.abs_threshold is None else o.abs_threshold
    fixed = list(o.fixed) if o.fixed is not None else None
    if fixed is not None:
        unknown = [k for k in fixed if k not in groups.members]
        if unknown:
            raise RegistrationError(f"{where(project.path)}: fixed group {unknown[0]!r} is not one of the groups "
                                    f"({', '.join(map(str, keys[:5]))}{' …' if len(keys) > 5 else ''})")
    solution = solve_point_matches(keys, links, model=matching.model, regularizer=matching.regularizer(),
                                   lam=matching.lambda_, fixed=fixed, rel_threshold=rel, abs_threshold=ab,
                                   weak_links=_weak_links(project, groups))
    centres = {}
    for key, vs in groups.members.items():
        shape = np.asarray(project.setup_shape(vs[0]), dtype=np.float64)
        centres[key] = to_world(project.model(vs[0]), ((shape - 1) / 2)[None])[0]
    result = InterestPointRegistration(
        groups=groups, points=points, matches=matches, links=links, solution=solution, label=label,
        detections=found, transform_name=matching.model_name(),
        params=dict(preset=o.preset, rel_threshold=rel, abs_threshold=ab, centres=centres))
    for key, t in solution.transforms.items():
        log.debug("group %s: correction (4x4 zyx) %s", key, np.round(t, 4).tolist())
    for text in result.warnings():
        log.warning("%s: %s", where(project.path), text)
    if matches.pairs and not np.any(solution.accepted) and not o.allow_unregistered:
        # As with phase correlation: stage positions returned as a registration would be no registration.
        raise RegistrationError(
            f"{where(project.path)}: nothing was registered: of the {len(matches.pairs)} pairs of views compared, "
            f"{len(matches.matched)} had matching interest points labelled {label!r} and no match was kept, so "
            "every view would keep its stage position; no XML was written. See the warnings above (-v for each "
            "pair), change the detection (--threshold, --sigma) or matching (--ratio, --ransac-error) options, or "
            "pass --allow-unregistered (allow_unregistered=True) to go on with the stage positions")
    return result


def _weak_links(project: Project, groups: RegistrationGroups) -> list[WeakLink]:
    """Groups whose first views overlap under the current transforms, with a point of their overlap."""
    first = {k: vs[0] for k, vs in groups.members.items()}
    keys = list(first)
    out = []
    for i, a in enumerate(keys):
        va = first[a]
        for b in keys[i + 1:]:
            vb = first[b]
            if groups.timepoint[a] != groups.timepoint[b]:
                continue
            ma, mb = project.model(va), project.model(vb)
            sa, sb = project.setup_shape(va), project.setup_shape(vb)
            if not views_meet(ma, sa, mb, sb):
                continue
            ba, bb = project.world_box(va), project.world_box(vb)
            lo = np.maximum(np.asarray(ba.lo), np.asarray(bb.lo))
            hi = np.minimum(np.asarray(ba.hi), np.asarray(bb.hi))
            out.append(WeakLink(a, b, (lo + hi) / 2))
    return out
