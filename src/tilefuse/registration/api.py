"""Registration of a project: pairwise links, a global solve, and writing it back.

Three steps a user can run separately::

    groups = make_groups(project)                 # which views move together
    links = pairwise(project, groups)             # phase correlation per overlap
    result = solve(links, groups)                 # global least squares + link rejection
    registered = result.apply(project)            # Stitching Transform + StitchingResults

or all at once with :func:`register`.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np

from ..errors import RegistrationError, where
from ..geometry import translation_matrix
from ..project.model import PairwiseResult
from ..project.project import Project
from .global_affine import GLOBAL_MODELS, PointMatches, solve_affine
from .global_opt import PRESETS, ShiftConstraint, bridges, solve_translations
from .options import RegistrationOptions
from .pairwise import Link, RegistrationGroups, make_groups, pairwise

__all__ = ["RegistrationResult", "register", "solve", "links_from_project", "STITCHING_TRANSFORM"]

log = logging.getLogger(__name__)

#: Name of the ViewTransform added by registration (BigStitcher's name).
STITCHING_TRANSFORM = "Stitching Transform"


@dataclass
class RegistrationResult:
    """Links with their fate, and one world translation (``zyx``) per group."""

    groups: RegistrationGroups
    links: list[Link]
    translations: dict[Hashable, np.ndarray]
    mean_residual: float
    max_residual: float
    params: dict = field(default_factory=dict)
    #: Per group, the world transform (4x4, zyx) when a rigid/affine model was solved.
    transforms: dict[Hashable, np.ndarray] = field(default_factory=dict)

    def transform(self, key: Hashable) -> np.ndarray:
        """The world correction of a group as a 4x4 matrix (a translation unless a model was solved)."""
        if key in self.transforms:
            return self.transforms[key]
        return translation_matrix(self.translations[key])

    @property
    def consistency(self) -> dict[tuple[Hashable, Hashable], float]:
        """Per pair ``(a, b)``: the correlation of its overlap at the final positions (see
        :meth:`check_consistency`; empty until it ran)."""
        return {(link.a, link.b): link.info["consistency"] for link in self.links if "consistency" in link.info}

    def check_consistency(self, project: Project, min_consistency: float = 0.5, *, client=None) -> dict:
        """Correlate every pair's overlap at the final positions (:mod:`.consistency`); returns :attr:`consistency`.

        ``project`` is the project as registered (before :meth:`apply`).
        Pairs below ``min_consistency`` that correlated clearly better at their
        own best alignment are named by :meth:`warnings` (ghosting).  The pairs read again run on
        ``client`` (a ``distributed.Client``; default: local threads).
        """
        from .consistency import overlap_consistency

        values = overlap_consistency(project, self.groups, self.links, self.translations, client=client)
        for link, value in zip(self.links, values):
            link.info["consistency"] = value
        self.params["min_consistency"] = float(min_consistency)
        return self.consistency

    def ghosting(self) -> list[Link]:
        """Links whose overlap correlates below ``min_consistency`` at the final positions but at or above
        it, and at least :data:`_GHOST_GAP` better, at the pair's own best alignment (an overlap that
        correlates poorly even there, e.g. background only, is not flagged); empty until
        :meth:`check_consistency`.  Links the solve removed because loops of kept links contradict them
        are not flagged either: the loops are the second opinion, and the pair's "best alignment" was
        the false match (a 24 px corner overlap matched 14.6 px off at r = 0.66 in a test)."""
        floor = self.params.get("min_consistency")
        if floor is None:
            return []
        return [link for link in self.links
                if link.valid and not link.status.startswith(_LOOP_REJECTED)
                and np.isfinite(link.info.get("consistency", np.nan))
                and link.info["consistency"] < floor <= link.correlation
                and link.correlation - link.info["consistency"] >= _GHOST_GAP]

    @property
    def accepted(self) -> list[Link]:
        return [link for link in self.links if link.accepted]

    @property
    def rejected(self) -> list[Link]:
        return [link for link in self.links if not link.accepted]

    def warnings(self) -> list[str]:
        """What a user should check before trusting the result, one sentence each (empty: nothing).

        * no pair of groups overlapped (nothing was registered);
        * groups left without any kept link: they keep their stage positions relative to the
          others, so their error is the stage's;
        * parts of the mosaic that no kept link joins (each part is registered, but the parts are
          placed relative to each other by the stage positions);
        * kept links with a correlation just above the threshold (within 0.1) whose shift is
          large (over three times the pairs' median and 5 world units): a weak match that moves
          a tile far is the classic false positive;
        * pairs whose overlap correlates below ``min_consistency`` at the final positions but
          clearly better at their own best alignment (:meth:`ghosting`): the fused image
          likely shows their content twice there.
        """
        out = []
        n_groups = len(self.groups.members)
        if n_groups > 1 and not self.links:
            out.append(f"no two of the {n_groups} groups overlap (min_overlap "
                       f"{self.params.get('min_overlap', 'default')}): nothing was registered, the stage "
                       "positions are unchanged")
            return out
        linked = {k for link in self.accepted for k in (link.a, link.b)}
        alone = [k for k in self.groups.members if k not in linked]
        if n_groups > 1 and alone:
            shown = ", ".join(map(str, alone[:5])) + (f" and {len(alone) - 5} more" if len(alone) > 5 else "")
            out.append(f"{len(alone)} of {n_groups} groups have no kept link and keep their stage positions "
                       f"relative to their neighbours: {shown}")
        out += self._split_warning(alone)
        # Named whether or not they split the mosaic: in a grid other links hold the tiles, but the
        # user should know which overlaps nothing registered (issue 14: periodic overlaps without a mark).
        undecided = [link for link in self.links
                     if not link.accepted and (link.info.get("ambiguous") or not link.valid)]
        if undecided:
            shown = ", ".join(f"{link.a} - {link.b}" for link in undecided[:10])
            more = f" and {len(undecided) - 10} more" if len(undecided) > 10 else ""
            out.append(f"{len(undecided)} pairs could not be decided and have no link (no valid shift, or no clearly "
                       f"best alignment when every shift is scored: periodic content without a distinct mark in the "
                       f"overlap?); their tiles keep their stage-relative placement there: {shown}{more}")
        if self.accepted:
            floor = float(self.params.get("min_correlation", 0.0)) + 0.1
            typical = float(np.median([np.linalg.norm(link.shift) for link in self.links if link.valid] or [0]))
            for link in self.accepted:
                size = float(np.linalg.norm(link.shift))
                if link.correlation < floor and size > max(_OUTLIER_FACTOR * typical, _OUTLIER_FLOOR):
                    out.append(f"link {link.a} - {link.b} was kept with correlation {link.correlation:.2f} "
                               f"(threshold {floor - 0.1:.2f}) and moves a tile by {size:.1f} world units "
                               f"(pairs' median {typical:.1f}): check it, or raise min_correlation")
        for link in self.ghosting():
            out.append(f"pair {link.a} - {link.b}: its overlap correlates at {link.info['consistency']:.2f} at the "
                       f"final positions but at {link.correlation:.2f} at its best alignment (link "
                       f"{link.status}): the fused image likely ghosts there; see docs/registration.md")
        return out

    def _split_warning(self, alone: list) -> list[str]:
        """Parts of the mosaic (of two or more groups each) that no kept link joins: they are placed
        relative to each other by the stage alone, as a group without links is (a periodic sample had
        its one ambiguous link rejected and the tiles beyond it 21 px off, with no word)."""
        parent = {k: k for k in self.groups.members}

        def root(k):
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        for link in self.accepted:
            parent[root(link.a)] = root(link.b)
        lonely = set(alone)
        cut = [link for link in self.links if not link.accepted and root(link.a) != root(link.b)
               and link.a not in lonely and link.b not in lonely]
        if not cut:
            return []
        sizes: dict = {}
        for k in self.groups.members:
            sizes[root(k)] = sizes.get(root(k), 0) + 1
        parts = sorted((n for n in sizes.values() if n > 1), reverse=True)
        shown = "; ".join(f"{link.a} - {link.b} ({link.status})" for link in cut[:3])
        more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
        return [f"the kept links join the groups into {len(parts)} separate parts ({', '.join(map(str, parts))} "
                f"groups) that are placed relative to each other by the stage positions only; the overlaps between "
                f"them had no link kept: {shown}{more}. Check them, or see docs/registration.md for the options"]

    def apply(self, project: Project, *, inplace: bool = False, name: str = STITCHING_TRANSFORM) -> Project:
        """Add each group's translation to the front of its views' chains.

        Also replaces ``<StitchingResults>`` with this run's pairwise links
        (every link that found a shift), so BigStitcher can open and re-use
        them.  Returns a new project unless ``inplace``; nothing is written to
        disk (call :meth:`Project.save`).
        """
        target = project if inplace else project.copy()
        for key, views in self.groups.members.items():
            if key not in self.translations:
                continue
            matrix = self.transform(key)
            for view in views:
                target.preconcatenate(view, matrix, name)
        target.data.stitching_results = [
            PairwiseResult(
                views_a=tuple(link.views_a), views_b=tuple(link.views_b),
                shift=translation_matrix(link.shift), correlation=float(link.correlation),
                hash=float(link.hash), overlap=link.overlap,
            )
            for link in self.links
            if link.valid
        ]
        return target

    def summary(self) -> str:
        """A short table: links kept and rejected (with reasons), residuals, largest moves."""
        reasons: dict[str, int] = {}
        for link in self.rejected:
            key = link.status.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        moves = np.array([np.linalg.norm(t) for t in self.translations.values()]) if self.translations else np.zeros(1)
        corr = [link.correlation for link in self.accepted]
        lines = [
            f"groups           {len(self.groups.members)}",
            f"links            {len(self.links)} ({len(self.accepted)} kept, {len(self.rejected)} rejected)",
        ]
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  rejected       {n:5d}  {reason}")
        lines += [
            (f"correlation      kept links: min {np.min(corr):.3f}, median {np.median(corr):.3f}" if corr
             else "correlation      no link kept: every group keeps its stage position"),
            f"residual         mean {self.mean_residual:.3f}, max {self.max_residual:.3f} (world units)",
            *self._consistency_lines(),
            f"correction       mean {moves.mean():.2f}, max {moves.max():.2f} (world units)",
        ]
        return "\n".join(lines)

    def _consistency_lines(self) -> list[str]:
        values = np.array([v for v in self.consistency.values() if np.isfinite(v)])
        if not values.size:
            return []
        lines = [f"consistency      overlaps at the final positions: min {values.min():.3f}, median "
                 f"{np.median(values):.3f} ({values.size} pairs)"]
        ghosts = self.ghosting()
        if ghosts:
            shown = ", ".join(f"{link.a} - {link.b} {link.info['consistency']:.2f} (best {link.correlation:.2f})"
                              for link in ghosts[:5])
            lines.append(f"  ghosting?      {len(ghosts):5d}  below {self.params['min_consistency']:.2f}: {shown}"
                         + (f" and {len(ghosts) - 5} more" if len(ghosts) > 5 else ""))
        return lines


#: A pair is flagged as ghosting when its own best alignment correlates at least this much better.
_GHOST_GAP = 0.1
#: Status prefix of links the global solve removed because loops of other links contradict them.
_LOOP_REJECTED = "rejected: removed by iterative rejection"


def solve(
    links: Sequence[Link],
    groups: RegistrationGroups,
    *,
    preset: str = "relaxed",
    rel_threshold: float | None = None,
    abs_threshold: float | None = None,
    min_correlation: float = 0.3,
    max_shift: str | float | Sequence[float] | None = "auto",
    fixed: Sequence[Hashable] | None = None,
    model: str = "translation",
    max_stage_error: float | Sequence[float] | None = None,
) -> RegistrationResult:
    """Global weighted least squares for one translation per group, rejecting bad links.

    Parameters
    ----------
    links : sequence of Link
        From :func:`~tilefuse.registration.pairwise.pairwise` (may be edited).
    groups : RegistrationGroups
    preset : {"strict", "relaxed", "none"}
        BigStitcher's link-removal thresholds (relative, absolute):
        strict (2.5, 3.5), relaxed (5, 7), none (inf, inf).
    rel_threshold, abs_threshold : float, optional
        Override the preset's thresholds.
    min_correlation : float
        Links below it are rejected before solving.  BigStitcher's default is
        0; 0.3 rejects links over empty (background-only) overlaps, whose
        correlation is noise.
    max_shift : "auto", float or (z, y, x) floats, or None
        Reject links that move a group by more than this (world units).
        ``"auto"`` (default) bounds each link by its overlap: along each
        axis a shift may not exceed the overlap's extent (the tiles would no
        longer overlap: the match cannot be real) nor twice the overlap's
        width, its thinnest extent (a stage error that large is implausible
        for tiles acquired to overlap; on thin overlaps over repetitive
        texture such matches are the usual false positives).  ``None``: no
        bound.
    fixed : sequence of group keys, optional
        Groups that do not move (default: the first group of each connected
        set of groups).
    model : {"translation", "rigid", "affine"}
        After the translation solve has decided which links to keep, fit one
        rigid or affine transform per group to the kept links' point matches
        (:mod:`~tilefuse.registration.global_affine`).  Most useful with
        pairs refined by SimpleITK (``pairwise(..., refine="rigid")``).
    max_stage_error : float or (z, y, x) floats, optional
        How far the true step between neighbours may differ from the
        stage's (world units), as given to
        :func:`~tilefuse.registration.pairwise.pairwise`.  With
        ``max_shift="auto"`` it replaces the "twice the overlap's width" bound
        and the check of unconfirmed large shifts: a link within it is
        plausible by the user's account of the stage.
    """
    if preset not in PRESETS:
        raise RegistrationError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if model not in GLOBAL_MODELS:
        raise RegistrationError(f"model must be one of {GLOBAL_MODELS}, got {model!r}")
    # Copies: the statuses set below belong to this result, not to the caller's links.
    links = [replace(link, info=dict(link.info)) for link in links]
    rel, ab = PRESETS[preset]
    rel = rel if rel_threshold is None else float(rel_threshold)
    ab = ab if abs_threshold is None else float(abs_threshold)
    keys = list(groups.members)
    auto = isinstance(max_shift, str)
    stage_error = None
    if max_stage_error is not None:
        from .pairwise import _per_axis_zyx

        stage_error = _per_axis_zyx(max_stage_error)
    for link in links:
        if link.valid and link.info.get("ambiguous"):
            link.status = f"rejected: {link.info['checked']}"
    if auto:
        if max_shift != "auto":
            raise RegistrationError(f"max_shift must be 'auto', None or numbers, got {max_shift!r}")
        for link in links:
            if link.valid and (reason := _implausible(link, stage_error)):
                link.status = f"rejected: {reason}"
        max_shift = None
    weak = [(link.a, link.b) for link in links]  # metadata overlaps: keep stage-relative positions
    while True:
        candidates = [link for link in links if link.valid and link.status == "accepted"]
        solver_links = [
            ShiftConstraint(a=link.a, b=link.b, shift=np.asarray(link.shift, dtype=np.float64),
                            correlation=float(link.correlation))
            for link in candidates
        ]
        solution = solve_translations(
            keys, solver_links, fixed=fixed, min_correlation=min_correlation, max_shift=max_shift,
            rel_threshold=rel, abs_threshold=ab, weak_links=weak,
        )
        for link, status, residual in zip(candidates, solution.status, solution.residuals):
            link.status = status
            link.residual = float(residual)
        # a stated stage error already bounds every link (see _implausible)
        doubtful = _unconfirmed_outliers(keys, candidates) if auto and stage_error is None else []
        if not doubtful:
            break
        for link, reason in doubtful:  # solve again without them: their groups keep stage-relative places
            link.status = f"rejected: {reason}"
        for link in candidates:
            if link.status.startswith("rejected: removed by iterative rejection"):
                link.status = "accepted"  # judged again in the next solve
    for link in links:
        if not link.valid and link.status == "accepted":
            link.status = "no valid shift"
        log.debug("link %s - %s: %s; correlation %.3f, shift %s, residual %.3f", link.a, link.b, link.status,
                  link.correlation, np.round(link.shift, 3).tolist(), link.residual)
    translations = {k: np.asarray(solution.translations[k], dtype=np.float64) for k in keys}
    for key, t in translations.items():
        log.debug("group %s: correction (z y x) %s world units", key, np.round(t, 3).tolist())
    transforms = {}
    if model != "translation":
        matches = [_point_matches(link) for link in links if link.accepted]
        transforms = solve_affine(keys, matches, translations, model=model, fixed=fixed)
    return RegistrationResult(
        groups=groups, links=list(links), translations=translations,
        mean_residual=float(solution.mean_residual), max_residual=float(solution.max_residual),
        params=dict(preset=preset, rel_threshold=rel, abs_threshold=ab, min_correlation=min_correlation,
                    max_shift=max_shift, model=model,
                    max_stage_error=None if stage_error is None else stage_error.tolist()),
        transforms=transforms,
    )


#: An unconfirmed link (a bridge: no loop of links checks it) may not move its group by more than
#: this many times the median shift of the pairs, nor more than _OUTLIER_FLOOR world units.
_OUTLIER_FACTOR = 3.0
_OUTLIER_FLOOR = 5.0


def _unconfirmed_outliers(keys, candidates: Sequence[Link]) -> list[tuple[Link, str]]:
    """Kept links that no loop confirms and whose shift stands far out from the pairs' typical shift.

    In a loop of links a wrong shift shows as a residual, and the solve
    removes it; a bridge (a link on no loop) always fits exactly, so a false
    match there would move its side of the mosaic silently.  Such a link is
    trusted only if its shift is like the others' (stage errors of one
    acquisition are of one size): at most :data:`_OUTLIER_FACTOR` times the
    median shift of all candidate pairs, or :data:`_OUTLIER_FLOOR` world units.
    """
    kept = [link for link in candidates if link.status == "accepted"]
    if not kept:
        return []
    index = {k: i for i, k in enumerate(keys)}
    is_bridge = bridges(len(keys), [index[link.a] for link in kept], [index[link.b] for link in kept])
    typical = float(np.median([np.linalg.norm(link.shift) for link in candidates]))
    limit = max(_OUTLIER_FACTOR * typical, _OUTLIER_FLOOR)
    out = []
    for link, bridge in zip(kept, is_bridge):
        size = float(np.linalg.norm(link.shift))
        if bridge and size > limit:
            out.append((link, f"unconfirmed large shift ({size:.1f} world units, over {_OUTLIER_FACTOR:g}x the "
                              f"pairs' median {typical:.1f}, and no loop of links confirms it; max_shift sets "
                              "another bound)"))
    return out


def _implausible(link: Link, stage_error: np.ndarray | None = None) -> str:
    """Why a link's shift cannot be right for tiles that overlap as its overlap says ("" if it can).

    Along each axis the shift may not exceed the overlap's extent (no common
    content would be left) nor twice the overlap's width, its thinnest extent
    (see :func:`solve`, ``max_shift="auto"``), or instead of the latter the
    stated ``stage_error`` (z, y, x).  Axes along which the overlap is a
    single plane (2D) are left out.
    """
    extent = np.asarray(link.overlap.hi, dtype=np.float64) - np.asarray(link.overlap.lo, dtype=np.float64) + 1
    deep = extent > 1
    if not deep.any():
        return ""
    if stage_error is None:
        bound = np.where(deep, np.minimum(extent, 2 * extent[deep].min()), np.inf)
        hint = "max_shift or max_stage_error sets another bound"
    else:
        bound = np.where(deep, np.minimum(extent, stage_error), np.inf)
        hint = "beyond max_stage_error"
    shift = np.abs(np.asarray(link.shift, dtype=np.float64))
    if np.all(shift <= bound):
        return ""
    return (f"implausible shift ({' '.join(f'{v:.1f}' for v in link.shift)} z y x, more than the overlap "
            f"{' x '.join(f'{v:.0f}' for v in extent)} allows; {hint})")


def _point_matches(link: Link) -> PointMatches:
    """The same content seen from group a and from group b, in their current world coordinates.

    A translation link pairs the overlap corners ``p`` with ``p - shift``.  A
    link refined with SimpleITK maps crop corners through its fitted matrix.
    """
    weight = float(np.clip(link.correlation, 0.01, 1.0)) if np.isfinite(link.correlation) else 0.01
    info = link.info
    if "sitk_matrix" in info:
        f = np.asarray(info["sitk_matrix"])
        shape = np.asarray(info["crop_shape"], dtype=np.float64)
        corners = np.array(list(product(*[(0.0, n - 1.0) for n in shape])))
        moved = corners @ f[:-1, :-1].T + f[:-1, -1]
        p = np.asarray(info["origin_a"]) + corners * info["spacing"]
        q = np.asarray(info["origin_b"]) + moved * info["spacing"]
        return PointMatches(link.a, link.b, p, q, weight)
    p = link.overlap.corners()
    return PointMatches(link.a, link.b, p, p - np.asarray(link.shift), weight)


def _rotated_views(project: Project, views=None) -> tuple | None:
    """Two views whose rotations differ (by more than 0.01 degrees), or None if all are alike."""
    from .global_affine import nearest_rotation

    first = None
    for view in views if views is not None else project.views:
        if view in project.missing_views:
            continue
        rotation = nearest_rotation(project.model(view)[:3, :3])
        if first is None:
            first = (view, rotation)
            continue
        cos = (np.trace(first[1].T @ rotation) - 1.0) / 2.0
        if np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) > 0.01:
            return first[0], view
    return None


def links_from_project(project: Project, groups: RegistrationGroups | None = None) -> list[Link]:
    """Links stored in the project's ``<StitchingResults>`` (stale ones dropped).

    A stored link is stale when its hash no longer matches the current models
    of its two first views (the views moved since), as in BigStitcher.
    """
    from .pairwise import pair_hash

    groups = groups or make_groups(project)
    group_of = {v: k for k, vs in groups.members.items() for v in vs}
    links = []
    for pr in project.data.stitching_results or []:
        a, b = group_of.get(pr.views_a[0]), group_of.get(pr.views_b[0])
        if a is None or b is None:
            continue
        h = pair_hash(project.model(pr.views_a[0]), project.model(pr.views_b[0]))
        if not np.isclose(h, pr.hash, rtol=1e-9, atol=1e-6):
            continue
        links.append(Link(a, b, pr.shift[:-1, -1].copy(), pr.correlation, pr.overlap, pr.views_a, pr.views_b,
                          pr.hash))
    return links


def register(
    project: Project,
    views=None,
    options: RegistrationOptions | None = None,
    *,
    detection=None,
    matching=None,
    label: str = "beads",
    client=None,
    progress: bool = False,
    **changes,
):
    """Refine tile positions: pairwise phase correlation, then a global solve; or interest points.

    With ``method="auto"`` (the default), views rotated relative to each
    other (several angles of a light-sheet acquisition) are registered with
    interest points (:func:`tilefuse.interestpoints.register_interest_points`:
    DoG detection unless points labelled ``label`` are stored, descriptor
    matching, a global solve of one affine per view), and tiles by phase
    correlation; the choice is logged.

    Parameters
    ----------
    project : Project
    views : sequence of ViewId, optional
        Views to register (default: all present views).
    options : RegistrationOptions, optional
        How to register (default: ``RegistrationOptions()``).
    detection, matching : DetectionOptions, MatchingOptions, optional
        Interest points only (:mod:`tilefuse.interestpoints`): how to detect
        and match them, and the model of the solve.
    label : str
        Interest points only: which points to use or detect (default "beads").
    client : distributed.Client, optional
        Register the pairs on this cluster; default: local threads.
    progress : bool
        Show a progress bar.
    **changes
        Fields of :class:`~tilefuse.registration.options.RegistrationOptions`
        to change, e.g. ``register(project, preset="strict", channel="488")``.
        :func:`~tilefuse.registration.pairwise.make_groups`,
        :func:`~tilefuse.registration.pairwise.pairwise` and :func:`solve`,
        the three steps, say what each does.

    Returns
    -------
    RegistrationResult or tilefuse.interestpoints.InterestPointRegistration
        Either has ``summary()``, ``warnings()`` and ``apply(project)``.

    Raises
    ------
    OptionError
        An option has a bad value (the message names it).

    Examples
    --------
    >>> project = tilefuse.open_project("dataset.xml")                 # doctest: +SKIP
    >>> result = tilefuse.register(project)                            # doctest: +SKIP
    >>> print(result.summary())                                        # doctest: +SKIP
    >>> result.apply(project).save("registered.xml")                   # doctest: +SKIP
    """
    o = RegistrationOptions.build(options, **changes)
    method = o.method
    if method == "auto":
        rotated = _rotated_views(project, views)
        method = "interest-points" if rotated else "phase-correlation"
        if rotated:
            log.info("%s: %s is rotated relative to %s: registering with interest points (DoG detection, "
                     "descriptor matching and a global solve), not phase correlation", where(project.path),
                     rotated[1], rotated[0])
    if method == "interest-points":
        from ..interestpoints.register import register_interest_points

        return register_interest_points(project, views, o, detection=detection, matching=matching, label=label,
                                        client=client, progress=progress)
    groups = make_groups(project, views, group_by=o.group_by, channel=o.channel, illumination=o.illumination)
    links = pairwise(project, groups, downsampling=o.downsampling, min_overlap=o.min_overlap,
                     neighbours_only=o.neighbours_only, n_peaks=o.n_peaks, refine=o.refine,
                     max_stage_error=o.max_stage_error, client=client,
                     progress=progress)
    result = solve(links, groups, preset=o.preset, rel_threshold=o.rel_threshold, abs_threshold=o.abs_threshold,
                   min_correlation=o.min_correlation, max_shift=o.max_shift, fixed=o.fixed, model=o.model,
                   max_stage_error=o.max_stage_error)
    result.params["min_overlap"] = o.min_overlap
    if links and not result.accepted and not o.allow_unregistered:
        raise RegistrationError(_nothing_registered(project, result))
    result.check_consistency(project, o.min_consistency, client=client)
    for text in result.warnings():
        log.warning("%s: %s", where(project.path), text)
    return result


def _nothing_registered(project: Project, result: RegistrationResult) -> str:
    """Why a registration that kept no link stops: a result equal to the stage positions is no registration."""
    reasons: dict[str, int] = {}
    for link in result.links:
        key = link.status.removeprefix("rejected: ").split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    why = "; ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return (f"{where(project.path)}: nothing was registered: none of the {len(result.links)} overlapping pairs gave "
            f"a link that could be kept ({why}), so every view would keep its stage position; no XML was written. "
            "Look at the pairs with -v, adjust --min-correlation, --max-shift, --max-stage-error or "
            "--channel, or pass --allow-unregistered (allow_unregistered=True) to go on with the stage positions")
