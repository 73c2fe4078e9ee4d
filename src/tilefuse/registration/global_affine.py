"""Global rigid or affine refinement of tile transforms from point matches.

The translation solve (:mod:`.global_opt`) decides which links are right.
When the data supports more than a translation (pairs refined with SimpleITK
as rigid or affine, or enough overlap around a tile), this step fits one
affine ``x -> A_g x + t_g`` per group to the accepted links' point matches,

    minimise  sum_links w * sum_k | A_a p_k + t_a - A_b q_k - t_b |**2
              + lam * s**2 * sum_g | A_g - I |_F**2,

a sparse linear least-squares problem (``p_k``/``q_k``: the same content
seen in group A's and group B's current world coordinates; ``s``: the spread
of the points, so ``lam`` is unit-free).  The regulariser keeps groups whose
matches cannot determine a full affine (a tile linked along one face only)
close to a translation, in the spirit of BigStitcher's interpolated models.
``"rigid"`` then projects each ``A_g`` to the nearest rotation (polar
decomposition) and re-solves the translations.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from ..errors import RegistrationError

__all__ = ["PointMatches", "solve_affine", "nearest_rotation", "GLOBAL_MODELS"]

GLOBAL_MODELS = ("translation", "rigid", "affine")


@dataclass(frozen=True)
class PointMatches:
    """Corresponding points of two groups, in their current world coordinates (numpy order)."""

    a: Hashable
    b: Hashable
    p: np.ndarray  # (k, nd) seen through group a
    q: np.ndarray  # (k, nd) seen through group b
    weight: float = 1.0


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to ``matrix`` in the Frobenius norm (polar decomposition)."""
    u, _, vt = np.linalg.svd(matrix)
    r = u @ vt
    if np.linalg.det(r) < 0:  # a reflection: flip the weakest axis
        u[:, -1] *= -1
        r = u @ vt
    return r


def solve_affine(
    groups: Sequence[Hashable],
    matches: Sequence[PointMatches],
    translations: Mapping[Hashable, np.ndarray],
    *,
    model: str = "affine",
    fixed: Sequence[Hashable] | None = None,
    regularization: float = 1e-4,
) -> dict[Hashable, np.ndarray]:
    """One homogeneous world transform per group (``(nd+1)``-square, numpy order).

    Parameters
    ----------
    groups : sequence of hashable
    matches : sequence of PointMatches
        From the links the translation solve accepted.
    translations : mapping
        The translation solution: the starting point, and the answer for
        groups without matches.  Fixed groups keep theirs with ``A = I``.
    model : {"rigid", "affine"}
    fixed : sequence of hashable, optional
        Default: the first group of each connected set of matched groups.
    regularization : float
        Weight of ``|A - I|`` relative to the point residuals (unit-free).
    """
    if model not in ("rigid", "affine"):
        raise RegistrationError(f"model must be 'rigid' or 'affine' here, got {model!r}")
    groups = list(groups)
    index = {g: i for i, g in enumerate(groups)}
    if not matches:
        return {g: _homogeneous(np.eye(len(t)), np.asarray(t)) for g, t in translations.items()}
    nd = matches[0].p.shape[1]
    # Axes along which every point is the same (2D data in a 3D world) stay identity.
    pts = np.vstack([m.p for m in matches] + [m.q for m in matches])
    active = np.flatnonzero(np.ptp(pts, axis=0) > 1e-9)
    spread = float(np.sqrt(np.mean(np.var(pts[:, active], axis=0)))) if active.size else 1.0

    # Connected components of matched groups; each gets an anchor.
    from scipy.sparse.csgraph import connected_components

    ia = np.array([index[m.a] for m in matches])
    ib = np.array([index[m.b] for m in matches])
    n = len(groups)
    graph = sp.coo_matrix((np.ones(len(matches)), (ia, ib)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    matched = np.zeros(n, bool)
    matched[ia] = matched[ib] = True
    anchors = set()
    fixed_idx = {index[g] for g in (fixed or []) if g in index}
    for label in np.unique(labels[matched]):
        members = np.flatnonzero((labels == label) & matched)
        chosen = [i for i in members if i in fixed_idx]
        anchors.update(chosen or [members[0]])
    free = [i for i in range(n) if matched[i] and i not in anchors]
    col = {g: k for k, g in enumerate(free)}
    na = active.size
    per = na * na + na  # unknowns per free group: A (active block) and t (active axes)

    lin = {i: np.eye(nd) for i in range(n)}
    trans = {i: np.asarray(translations[groups[i]], dtype=np.float64).copy() for i in range(n)}

    def solve(with_linear: bool) -> None:
        rows, cols, vals, rhs = [], [], [], []
        r = 0

        def add(coeffs: dict[int, float], value: float) -> None:
            nonlocal r
            for c, v in coeffs.items():
                rows.append(r)
                cols.append(c)
                vals.append(v)
            rhs.append(value)
            r += 1

        for m, a, b in zip(matches, ia, ib):
            w = np.sqrt(max(m.weight, 1e-6))
            for p, q in zip(m.p, m.q):
                for k, d in enumerate(active):
                    coeffs: dict[int, float] = {}
                    value = 0.0
                    # +(A_a p + t_a)_d - (A_b q + t_b)_d = 0
                    for g, x, sign in ((a, p, 1.0), (b, q, -1.0)):
                        if g in col and with_linear:
                            base = col[g] * per
                            for j, e in enumerate(active):
                                coeffs[base + k * na + j] = coeffs.get(base + k * na + j, 0.0) + sign * w * x[e]
                            coeffs[base + na * na + k] = coeffs.get(base + na * na + k, 0.0) + sign * w
                        elif g in col:
                            base = col[g] * na
                            coeffs[base + k] = coeffs.get(base + k, 0.0) + sign * w
                            value -= sign * w * (lin[g][d] @ x)
                        else:  # anchor: known transform
                            value -= sign * w * (lin[g][d] @ x + trans[g][d])
                    add(coeffs, value)
        if with_linear:
            lam = np.sqrt(regularization) * spread
            for g in free:
                base = col[g] * per
                for k in range(na):
                    for j in range(na):
                        add({base + k * na + j: lam}, lam * (1.0 if k == j else 0.0))
        n_unknowns = len(free) * (per if with_linear else na)
        if n_unknowns == 0:
            return
        mat = sp.csr_matrix((vals, (rows, cols)), shape=(r, n_unknowns))
        sol = lsqr(mat, np.asarray(rhs), atol=1e-12, btol=1e-12, iter_lim=20 * n_unknowns + 1000)[0]
        for g in free:
            if with_linear:
                block = sol[col[g] * per:(col[g] + 1) * per]
                A = np.eye(nd)
                A[np.ix_(active, active)] = block[: na * na].reshape(na, na)
                lin[g] = A
                trans[g] = np.zeros(nd)
                trans[g][active] = block[na * na:]
            else:
                trans[g] = np.zeros(nd)
                trans[g][active] = sol[col[g] * na:(col[g] + 1) * na]

    solve(with_linear=True)
    if model == "rigid":
        for g in free:
            A = lin[g].copy()
            A[np.ix_(active, active)] = nearest_rotation(A[np.ix_(active, active)])
            lin[g] = A
        solve(with_linear=False)
    return {groups[i]: _homogeneous(lin[i], trans[i]) for i in range(n)}


def _homogeneous(linear: np.ndarray, translation: np.ndarray) -> np.ndarray:
    nd = linear.shape[0]
    m = np.eye(nd + 1)
    m[:nd, :nd] = linear
    m[:nd, nd] = translation
    return m
