"""Transformation models fitted to point matches, seeded RANSAC and iterative closest points.

The models are BigStitcher's (mpicbg ``TranslationModel3D``, ``RigidModel3D``,
``AffineModel3D`` and ``InterpolatedAffineModel3D``): a regularised model is
``(1 - lambda) * A + lambda * R`` of the two fits ``A`` (the model) and ``R``
(the regulariser), entry by entry of their matrices.  All matrices are 4x4
``zyx`` and map the first point set onto the second (``M p ≈ q``).

RANSAC (Fischler & Bolles 1981, doi:10.1145/358669.358692) follows mpicbg's
``filterRansac``: the model of a random minimal sample with the most
candidates within ``epsilon`` wins; its inliers are then refitted, dropping
those further than four times the median residual until none is (mpicbg's
``filter`` with ``maxTrust = 4``).  The random generator is given, so the
same input and seed give the same result; samples are drawn in batches and
fitted in one vectorised step per batch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_MATCHES", "fit_model", "apply_model", "ransac", "icp", "remove_inconsistent", "residuals"]

#: Matches a model needs (mpicbg's ``getMinNumMatches``).
MIN_MATCHES = {"translation": 1, "rigid": 3, "affine": 4}
#: mpicbg's ``filter``: inliers further than this times the median residual are dropped.
MAX_TRUST = 4.0
#: RANSAC samples fitted per vectorised batch.
_BATCH = 1000


def apply_model(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(n, 3)`` points through a 4x4 matrix."""
    return np.asarray(points, dtype=np.float64) @ matrix[:3, :3].T + matrix[:3, 3]


def residuals(matrix: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``|M p - q|`` per match."""
    return np.linalg.norm(apply_model(matrix, p) - q, axis=1)


def _homogeneous(linear: np.ndarray, shift: np.ndarray) -> np.ndarray:
    out = np.zeros(linear.shape[:-2] + (4, 4))
    out[..., :3, :3] = linear
    out[..., :3, 3] = shift
    out[..., 3, 3] = 1.0
    return out


def _fit_batch(p: np.ndarray, q: np.ndarray, w: np.ndarray, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares fits of ``model`` to batches of matches ``(b, k, 3)``: ``(matrices, ok)``."""
    sw = w.sum(axis=1, keepdims=True)
    pc = (w[..., None] * p).sum(axis=1) / sw
    qc = (w[..., None] * q).sum(axis=1) / sw
    b = len(p)
    if model == "translation":
        return _homogeneous(np.broadcast_to(np.eye(3), (b, 3, 3)), qc - pc), np.ones(b, dtype=bool)
    dp = p - pc[:, None]
    dq = q - qc[:, None]
    if model == "rigid":
        # Kabsch: the rotation maximising sum w (R dp) . dq
        cov = np.matmul((w[..., None] * dq).transpose(0, 2, 1), dp)
        u, s, vt = np.linalg.svd(cov)
        d = np.sign(np.linalg.det(u @ vt))
        u[:, :, -1] *= d[:, None]
        rot = u @ vt
        ok = s[:, 1] > 1e-9 * np.maximum(s[:, 0], 1e-300)  # three collinear points fix no rotation
        return _homogeneous(rot, qc - np.einsum("bij,bj->bi", rot, pc)), ok
    if model == "affine":
        wdp = (w[..., None] * dp).transpose(0, 2, 1)
        cov_pp = np.matmul(wdp, dp)
        cov_qp = np.matmul((w[..., None] * dq).transpose(0, 2, 1), dp)
        # Points of 2D views all lie in one plane across an axis (z): nothing fixes the affine along it,
        # and a rigid part cannot tilt a plane onto itself either, so that axis is kept as it is (as a
        # 2D affine model would) and the affine is fitted in the plane.
        flat = _flat_axes(p, q)
        if flat.any():
            cov_pp = cov_pp + flat[..., None] * np.eye(3)
            cov_qp = cov_qp + flat[..., None] * np.eye(3)
        det = np.linalg.det(cov_pp)
        scale = np.einsum("bii->b", cov_pp) ** 3
        ok = np.abs(det) > 1e-12 * np.maximum(scale, 1e-300)  # coplanar points fix no affine
        lin = np.broadcast_to(np.eye(3), (b, 3, 3)).copy()
        if ok.any():
            lin[ok] = np.linalg.solve(cov_pp[ok].transpose(0, 2, 1), cov_qp[ok].transpose(0, 2, 1)).transpose(0, 2, 1)
        return _homogeneous(lin, qc - np.einsum("bij,bj->bi", lin, pc)), ok
    raise ValueError(f"model must be one of {tuple(MIN_MATCHES)}, got {model!r}")


def _flat_axes(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``(b, 3)``: axes along which both point sets of a batch ``(b, k, 3)`` do not spread at all."""
    scale = 1.0 + np.maximum(np.abs(p).max(axis=1), np.abs(q).max(axis=1))
    return (np.ptp(p, axis=1) <= 1e-9 * scale) & (np.ptp(q, axis=1) <= 1e-9 * scale)


def _fit(p, q, w, model, regularizer, lam):
    m, ok = _fit_batch(p, q, w, model)
    if regularizer is not None and lam > 0:
        r, ok_r = _fit_batch(p, q, w, regularizer)
        m = (1.0 - lam) * m + lam * r
        ok = ok & ok_r
    return m, ok


def fit_model(p: np.ndarray, q: np.ndarray, model: str = "affine", *, weights: np.ndarray | None = None,
              regularizer: str | None = None, lam: float = 0.1) -> np.ndarray | None:
    """The model (4x4) that maps ``p`` onto ``q`` best in weighted least squares; None if they cannot fix it.

    ``regularizer`` (``"rigid"``, ``"translation"``) with weight ``lam``
    interpolates the two fits as BigStitcher's ``InterpolatedAffineModel3D``.
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(q, dtype=np.float64).reshape(-1, 3)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(p) < _min_matches(model, regularizer):
        return None
    m, ok = _fit(p[None], q[None], w[None], model, regularizer, lam)
    return m[0] if ok[0] else None


def _min_matches(model: str, regularizer: str | None) -> int:
    return max(MIN_MATCHES[model], MIN_MATCHES.get(regularizer, 0) if regularizer else 0)


def remove_inconsistent(ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Which matches use a point no other match uses (BigStitcher's ``removeInconsistentMatches``)."""
    ia, ib = np.asarray(ia), np.asarray(ib)
    _, inv_a, count_a = np.unique(ia, return_inverse=True, return_counts=True)
    _, inv_b, count_b = np.unique(ib, return_inverse=True, return_counts=True)
    return (count_a[inv_a] == 1) & (count_b[inv_b] == 1)


def ransac(
    p: np.ndarray,
    q: np.ndarray,
    model: str = "affine",
    *,
    regularizer: str | None = None,
    lam: float = 0.1,
    epsilon: float = 5.0,
    iterations: int = 10000,
    min_inlier_ratio: float = 0.1,
    min_matches: int = 12,
    rng: np.random.Generator,
) -> tuple[np.ndarray | None, np.ndarray, str]:
    """Seeded RANSAC: the model most candidate matches agree with, and which ones do.

    Parameters
    ----------
    p, q : (n, 3) ndarray
        Candidate matches ``p[i] <-> q[i]`` (world units).
    model, regularizer, lam
        See :func:`fit_model`.
    epsilon : float
        Largest residual of an inlier.
    iterations : int
        Random minimal samples tried.
    min_inlier_ratio, min_matches : float, int
        The model counts only with at least ``min_matches`` inliers (and the
        model's own minimum) making up ``min_inlier_ratio`` of the candidates.
    rng : numpy.random.Generator
        The random generator (seed it for reproducible results).

    Returns
    -------
    matrix : (4, 4) ndarray or None
        The model fitted to the inliers; None when none was found.
    inliers : (n,) bool ndarray
    message : str
        What happened, in words (for summaries).
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(q, dtype=np.float64).reshape(-1, 3)
    n = len(p)
    k = _min_matches(model, regularizer)
    need = max(k, int(min_matches))
    none = np.zeros(n, dtype=bool)
    if n < need:
        return None, none, f"{n} candidates, fewer than the {need} needed"
    best_count, best = -1, None
    w = np.ones((1, k))
    done = 0
    while done < iterations:
        batch = min(_BATCH, iterations - done)
        done += batch
        idx = rng.integers(0, n, size=(batch, k))
        if k > 1:  # a sample must hold k different matches
            srt = np.sort(idx, axis=1)
            idx = idx[np.all(np.diff(srt, axis=1) > 0, axis=1)]
        if not len(idx):
            continue
        m, ok = _fit(p[idx], q[idx], np.broadcast_to(w, idx.shape), model, regularizer, lam)
        m, idx = m[ok], idx[ok]
        if not len(m):
            continue
        # residuals of every candidate under every sample's model, in slabs of bounded size
        step = max(1, 2_000_000 // max(n, 1))
        for s in range(0, len(m), step):
            mm = m[s:s + step]
            moved = np.matmul(p, mm[:, :3, :3].transpose(0, 2, 1))  # (b, n, 3)
            moved += (mm[:, :3, 3])[:, None, :] - q[None]
            count = (np.einsum("bni,bni->bn", moved, moved) < epsilon * epsilon).sum(axis=1)
            j = int(np.argmax(count))
            if count[j] > best_count:
                best_count, best = int(count[j]), mm[j]
    if best is None:
        return None, none, f"no model fits any sample of the {n} candidates"
    inliers = residuals(best, p, q) < epsilon
    if inliers.sum() < need or inliers.sum() < min_inlier_ratio * n:
        return None, none, (f"best model explains {int(inliers.sum())} of {n} candidates (needs {need} and "
                            f"{min_inlier_ratio:.0%})")
    matrix, inliers = _filter(p, q, inliers, model, regularizer, lam, epsilon)
    if matrix is None or inliers.sum() < need:
        return None, none, f"{int(inliers.sum())} inliers remain after refitting, fewer than {need}"
    return matrix, inliers, f"{int(inliers.sum())} of {n} candidates agree"


def _filter(p, q, inliers, model, regularizer, lam, epsilon):
    """Refit on the inliers, dropping those beyond MAX_TRUST times the median residual, until stable."""
    inliers = inliers.copy()
    matrix = None
    for _ in range(100):
        matrix = fit_model(p[inliers], q[inliers], model, regularizer=regularizer, lam=lam)
        if matrix is None:
            return None, inliers
        r = residuals(matrix, p, q)
        keep = inliers & (r <= max(MAX_TRUST * np.median(r[inliers]), 1e-12)) & (r < epsilon)
        if np.array_equal(keep, inliers):
            break
        inliers = keep
    return matrix, inliers


def icp(
    p: np.ndarray,
    q: np.ndarray,
    model: str = "affine",
    *,
    start: np.ndarray | None = None,
    regularizer: str | None = None,
    lam: float = 0.1,
    max_distance: float = 5.0,
    iterations: int = 100,
    min_matches: int = 12,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Iterative closest points: pair each ``p`` (moved by the model) with its nearest ``q``, refit, repeat.

    Pairs further apart than ``max_distance`` are left out; a ``q`` claimed by
    several ``p`` keeps the closest.  Stops when the pairs no longer change or
    after ``iterations``.

    Returns
    -------
    matrix : (4, 4) ndarray or None
    ia, ib : int ndarrays
        The final pairs (indices into ``p`` and ``q``).
    """
    from scipy.spatial import cKDTree

    p = np.asarray(p, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(q, dtype=np.float64).reshape(-1, 3)
    matrix = np.eye(4) if start is None else np.asarray(start, dtype=np.float64)
    empty = np.zeros(0, dtype=np.intp)
    if not len(p) or not len(q):
        return None, empty, empty
    tree = cKDTree(q)
    previous = None
    ia = ib = empty
    for _ in range(int(iterations)):
        dist, nearest = tree.query(apply_model(matrix, p), distance_upper_bound=max_distance)
        close = np.isfinite(dist)
        ia, ib, d = np.flatnonzero(close), nearest[close], dist[close]
        order = np.lexsort((d, ib))  # per q, the closest p first
        ia, ib = ia[order], ib[order]
        first = np.ones(len(ib), dtype=bool)
        first[1:] = ib[1:] != ib[:-1]
        ia, ib = ia[first], ib[first]
        order = np.argsort(ia, kind="stable")
        ia, ib = ia[order], ib[order]
        if len(ia) < max(min_matches, _min_matches(model, regularizer)):
            return None, empty, empty
        fitted = fit_model(p[ia], q[ib], model, regularizer=regularizer, lam=lam)
        if fitted is None:
            return None, empty, empty
        matrix = fitted
        pairs = (ia.tobytes(), ib.tobytes())
        if pairs == previous:
            break
        previous = pairs
    return matrix, ia, ib
