"""Global solve of one transform per group from point matches: translation, rigid or (regularised) affine.

The solve BigStitcher runs after interest-point matching (mpicbg
``TileConfiguration`` with BigStitcher's ``GlobalOpt``,
``IterativeConvergenceStrategy`` and ``GlobalOptTwoRound``; Preibisch et al.
2010, doi:10.1038/nmeth0610-418): every group (tile, view...) gets a model
``M_g`` acting on its current world coordinates so that matched points
agree, ``M_a p ≈ M_b q``, with

* **models** translation, rigid or affine; affine (or rigid) optionally
  regularised by a simpler model with weight ``lambda`` (BigStitcher's
  ``InterpolatedAffineModel3D``: the two fits interpolated, default
  affine with rigid, ``lambda = 0.1``);
* **fixed groups** that keep ``M = I`` (default: the first group of each
  connected set);
* **iterative removal of bad links**: while a connected set's link errors
  fail BigStitcher's test ``(mean * relative < max and max > 0.75) or mean
  > absolute`` the worst link that is not a bridge is dropped and the set
  solved again (thresholds as :data:`~tilefuse.registration.global_opt.PRESETS`);
* **two rounds**: sets left unconnected are then placed as rigid blocks by
  their metadata overlaps (BigStitcher's ``TWO_ROUND``), through the
  translation solver of :mod:`.global_opt`.

How: the linear problems (translation; affine) are solved directly as
sparse least squares (:func:`~.global_opt.solve_translations`,
:func:`~.global_affine.solve_affine`); their solution is the start of
mpicbg's own iteration - each free group in turn refits its model to its
matches against its neighbours' current positions - which is what the
rigid and regularised models need, and changes nothing for the others.

Phase-correlation links enter the same solve as point matches (their
overlap corners, see :func:`point_matches_from_links`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import RegistrationError
from .global_affine import PointMatches, solve_affine
from .global_opt import ShiftConstraint, _components, _members, bridges, solve_translations

__all__ = ["PointSolution", "WeakLink", "solve_point_matches", "point_matches_from_links", "fit_points",
           "POINT_MODELS"]

POINT_MODELS = ("translation", "rigid", "affine")
_MIN_MAX_ERROR = 0.75  # BigStitcher: a max error below this never fails the relative test
_MIN_MATCHES = {"translation": 1, "rigid": 3, "affine": 4}


@dataclass(frozen=True)
class WeakLink:
    """Two groups whose views overlap by metadata; ``centre``: a world point of the overlap (second round)."""

    a: Hashable
    b: Hashable
    centre: np.ndarray


@dataclass(frozen=True, eq=False)
class PointSolution:
    """Result of :func:`solve_point_matches`.

    Attributes
    ----------
    transforms : dict
        Group key -> 4x4 world correction (``zyx``), applied on top of the current transforms.
    errors : ndarray, shape (n_links,)
        Per link, the weighted mean distance of its matched points after the solve (world units).
    accepted : ndarray of bool
        Which links the final solve used.
    reasons : tuple of str
        Why each rejected link was rejected ("" for accepted ones).
    mean_error, max_error : float
        Over the accepted links.
    components : tuple of tuple
        Group keys of each set connected by accepted links.
    n_removed : int
        Links removed by iterative rejection.
    """

    transforms: dict
    errors: np.ndarray
    accepted: np.ndarray
    reasons: tuple[str, ...]
    mean_error: float
    max_error: float
    components: tuple[tuple, ...]
    n_removed: int

    def group_errors(self, matches: Sequence[PointMatches]) -> dict:
        """Per group, the mean error of its accepted links."""
        out: dict = {}
        for m, err, ok in zip(matches, self.errors, self.accepted):
            if ok:
                for g in (m.a, m.b):
                    out.setdefault(g, []).append(err)
        return {g: float(np.mean(v)) for g, v in out.items()}


def _apply(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ m[:3, :3].T + m[:3, 3]


def fit_points(p: np.ndarray, q: np.ndarray, w: np.ndarray, model: str, regularizer: str | None = None,
               lam: float = 0.0) -> np.ndarray | None:
    """Weighted least-squares ``M`` (4x4) with ``M p ≈ q``; a regularised model interpolates two fits."""
    m = _fit(p, q, w, model)
    if m is None:
        return None
    if regularizer is not None and lam > 0:
        r = _fit(p, q, w, regularizer)
        if r is None:
            return None
        m = (1.0 - lam) * m + lam * r
    return m


def _fit(p, q, w, model):
    w = np.asarray(w, dtype=np.float64)
    if len(p) < _MIN_MATCHES[model] or w.sum() <= 0:
        return None
    pc = w @ p / w.sum()
    qc = w @ q / w.sum()
    out = np.eye(4)
    if model == "translation":
        out[:3, 3] = qc - pc
        return out
    dp, dq = p - pc, q - qc
    if model == "rigid":
        u, s, vt = np.linalg.svd((w[:, None] * dq).T @ dp)
        if s[1] <= 1e-9 * max(s[0], 1e-300):
            return None
        d = np.sign(np.linalg.det(u @ vt))
        u[:, -1] *= d
        lin = u @ vt
    else:
        cpp = (w[:, None] * dp).T @ dp
        if abs(np.linalg.det(cpp)) <= 1e-12 * max(np.trace(cpp) ** 3, 1e-300):
            return None
        lin = np.linalg.solve(cpp.T, ((w[:, None] * dq).T @ dp).T).T
    out[:3, :3] = lin
    out[:3, 3] = qc - lin @ pc
    return out


def point_matches_from_links(links: Iterable) -> list[PointMatches]:
    """Phase-correlation links (:class:`~tilefuse.registration.pairwise.Link`) as point matches.

    A translation link pairs its overlap's corners ``c`` with ``c - shift``;
    a link refined by SimpleITK maps crop corners through its fitted matrix.
    """
    from .api import _point_matches

    return [_point_matches(link) for link in links if link.accepted]


def solve_point_matches(
    groups: Sequence[Hashable],
    matches: Sequence[PointMatches],
    *,
    model: str = "affine",
    regularizer: str | None = "rigid",
    lam: float = 0.1,
    fixed: Iterable[Hashable] | None = None,
    rel_threshold: float = 5.0,
    abs_threshold: float = 7.0,
    weak_links: Iterable[WeakLink] | None = None,
    max_iterations: int = 2000,
    tolerance: float = 1e-6,
) -> PointSolution:
    """One world correction per group from point matches, rejecting bad links, placing unlinked sets.

    Parameters
    ----------
    groups : sequence of hashable
        Group keys; their order picks each connected set's default fixed group.
    matches : sequence of PointMatches
        Per link, matched points ``p`` (seen by ``a``) and ``q`` (seen by
        ``b``) in current world coordinates, and the link's weight.
    model : {"translation", "rigid", "affine"}
    regularizer : {"translation", "rigid"} or None
        Simpler model interpolated with weight ``lam`` (ignored when not
        simpler than ``model``).
    fixed : iterable of hashable, optional
        Groups that keep their current transform (default: the first group
        of each connected set).
    rel_threshold, abs_threshold : float
        BigStitcher's link-rejection test (``inf`` turns it off).
    weak_links : iterable of WeakLink, optional
        Metadata overlaps for the second round; None: one round only.
    max_iterations : int
        Most sweeps of the per-group refits.
    tolerance : float
        Stop when no point moved by more than this (world units) in a sweep.

    Returns
    -------
    PointSolution

    Raises
    ------
    RegistrationError
        A match names an unknown group, or a parameter is invalid.
    """
    if model not in POINT_MODELS:
        raise RegistrationError(f"model must be one of {POINT_MODELS}, got {model!r}")
    if regularizer is not None and (regularizer not in POINT_MODELS
                                    or POINT_MODELS.index(regularizer) >= POINT_MODELS.index(model)):
        regularizer = None
    keys = list(groups)
    index = {k: i for i, k in enumerate(keys)}
    if len(index) != len(keys):
        raise RegistrationError("groups contains duplicate keys")
    matches = list(matches)
    for i, m in enumerate(matches):
        if m.a not in index or m.b not in index:
            raise RegistrationError(f"match {i} refers to an unknown group ({m.a!r} or {m.b!r})")
    fixed_idx = set()
    for k in fixed or ():
        if k not in index:
            raise RegistrationError(f"fixed group {k!r} is not one of the groups")
        fixed_idx.add(index[k])
    n = len(keys)
    ia = np.array([index[m.a] for m in matches], dtype=np.intp)
    ib = np.array([index[m.b] for m in matches], dtype=np.intp)
    reasons = ["" for _ in matches]
    for e, m in enumerate(matches):
        if ia[e] == ib[e]:
            reasons[e] = "links a group to itself"
        elif len(m.p) == 0 or not (np.all(np.isfinite(m.p)) and np.all(np.isfinite(m.q))):
            reasons[e] = "no finite matched points"
        elif not m.weight > 0:
            reasons[e] = f"weight is not positive (w = {m.weight})"
    accepted = np.array([r == "" for r in reasons], dtype=bool)
    transforms = [np.eye(4) for _ in range(n)]
    errors = np.full(len(matches), np.nan)
    labels = _components(n, ia[accepted], ib[accepted])
    n_removed = 0
    for comp in _members(labels):
        sel = np.flatnonzero(accepted & np.isin(ia, comp))
        if not sel.size:
            continue
        anchors = [int(i) for i in comp if i in fixed_idx] or [int(comp[0])]
        while True:
            solved = _solve_component(keys, comp, anchors, [matches[e] for e in sel], ia[sel], ib[sel], model,
                                      regularizer, lam, max_iterations, tolerance)
            for g in comp:
                transforms[g] = solved[g]
            err = np.array([_link_error(matches[e], transforms[ia[e]], transforms[ib[e]]) for e in sel])
            weights = np.array([matches[e].weight for e in sel])
            avg = float(np.sum(weights * err) / np.sum(weights))
            worst = float(err.max())
            if not ((avg * rel_threshold < worst and worst > _MIN_MAX_ERROR) or avg > abs_threshold):
                break
            victim = _removable(ia[sel], ib[sel], err)
            if victim is None:
                break
            e = sel[victim]
            accepted[e] = False
            reasons[e] = (f"removed by iterative rejection (error {err[victim]:.3g}; set mean {avg:.3g}, "
                          f"max {worst:.3g})")
            sel = np.delete(sel, victim)
            n_removed += 1
            if not sel.size:
                break
    labels = _components(n, ia[accepted], ib[accepted])
    if weak_links is not None:
        _second_round(keys, index, labels, transforms, weak_links, fixed_idx)
    for e, m in enumerate(matches):
        if len(m.p):
            errors[e] = _link_error(m, transforms[ia[e]], transforms[ib[e]])
    if accepted.any():
        w = np.array([m.weight for m in matches])[accepted]
        mean_err = float(np.sum(w * errors[accepted]) / np.sum(w))
        max_err = float(np.max(errors[accepted]))
    else:
        mean_err = max_err = 0.0
    return PointSolution(
        transforms={k: transforms[i] for i, k in enumerate(keys)},
        errors=errors, accepted=accepted, reasons=tuple(reasons), mean_error=mean_err, max_error=max_err,
        components=tuple(tuple(keys[i] for i in comp) for comp in _members(labels)), n_removed=n_removed)


def _link_error(m: PointMatches, ma: np.ndarray, mb: np.ndarray) -> float:
    return float(np.mean(np.linalg.norm(_apply(ma, m.p) - _apply(mb, m.q), axis=1)))


def _removable(ia, ib, errors) -> int | None:
    """The link with the largest error whose removal keeps its set connected (not a bridge)."""
    nodes = np.unique(np.concatenate([ia, ib]))
    local = {int(g): i for i, g in enumerate(nodes)}
    la = np.array([local[int(g)] for g in ia])
    lb = np.array([local[int(g)] for g in ib])
    is_bridge = bridges(len(nodes), la, lb)
    for e in np.argsort(-errors, kind="stable"):
        if not errors[e] > 0:
            return None
        if not is_bridge[e]:
            return int(e)
    return None


def _solve_component(keys, comp, anchors, matches, ia, ib, model, regularizer, lam, max_iterations, tolerance):
    """Models of one connected set: a direct linear start, then mpicbg's per-group refits until still."""
    comp = [int(g) for g in comp]
    free = [g for g in comp if g not in anchors]
    models = {g: np.eye(4) for g in comp}
    if not free:
        return models
    # -- start: the linear least-squares solution (translations, or affines)
    sub = [keys[g] for g in comp]
    fixed = [keys[g] for g in anchors]
    if model == "translation" or regularizer == "translation":
        links = []
        for m in matches:
            w = float(m.weight) * len(m.p)
            links.append(ShiftConstraint(m.a, m.b, np.mean(m.p - m.q, axis=0), weight=w))
        sol = solve_translations(sub, links, fixed=fixed, rel_threshold=math.inf, abs_threshold=math.inf)
        for g in comp:
            models[g][:3, 3] = sol.translations[keys[g]]
    else:
        zero = {k: np.zeros(3) for k in sub}
        start = solve_affine(sub, list(matches), zero, model="affine", fixed=fixed)
        for g in comp:
            models[g] = np.asarray(start[keys[g]], dtype=np.float64)
    if model == "translation" and regularizer is None:
        return models  # the linear solution is the answer
    # -- mpicbg's iteration: each free group refits its model to its neighbours' current points
    own: dict[int, list] = {g: [] for g in free}
    for m, a, b in zip(matches, ia, ib):
        w = np.full(len(m.p), float(m.weight))
        if int(a) in own:
            own[int(a)].append((m.p, b, m.q, w))
        if int(b) in own:
            own[int(b)].append((m.q, a, m.p, w))
    for _ in range(int(max_iterations)):
        moved = 0.0
        for g in free:
            parts = own[g]
            src = np.concatenate([s for s, _, _, _ in parts])
            dst = np.concatenate([_apply(models[int(h)], t) for _, h, t, _ in parts])
            w = np.concatenate([w for _, _, _, w in parts])
            fitted = fit_points(src, dst, w, model, regularizer, lam)
            if fitted is None:
                continue
            moved = max(moved, float(np.max(np.linalg.norm(_apply(fitted, src) - _apply(models[g], src), axis=1))))
            models[g] = fitted
        if moved < tolerance:
            break
    return models


def _second_round(keys, index, labels, transforms, weak_links, fixed_idx) -> None:
    """Place each connected set as a rigid block by translation so that metadata overlaps keep their stage offsets."""
    n_sets = int(labels.max()) + 1 if labels.size else 0
    if n_sets < 2:
        return
    constraints = []
    for wl in weak_links:
        a, b = index.get(wl.a), index.get(wl.b)
        if a is None or b is None or labels[a] == labels[b]:
            continue
        c = np.asarray(wl.centre, dtype=np.float64)
        shift = _apply(transforms[a], c[None])[0] - _apply(transforms[b], c[None])[0]
        constraints.append(ShiftConstraint(int(labels[a]), int(labels[b]), shift))
    if not constraints:
        return
    held = sorted({int(labels[i]) for i in fixed_idx}) or None
    sol = solve_translations(list(range(n_sets)), constraints, fixed=held, rel_threshold=math.inf,
                             abs_threshold=math.inf)
    for g in range(len(keys)):
        t = sol.translations[int(labels[g])]
        if np.any(t):
            move = np.eye(4)
            move[:3, 3] = t
            transforms[g] = move @ transforms[g]
