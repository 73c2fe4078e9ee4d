"""Difference-of-Gaussian blob detection on arrays, as BigStitcher's DoG detector computes it.

BigStitcher (multiview-reconstruction ``DoGImgLib2``; Preibisch et al. 2010,
doi:10.1038/nmeth0610-418) normalises the image to ``[0, 1]`` by its minimum
and maximum, blurs it with two Gaussians ``sigma`` and ``k * sigma``
(``k = 2 ** (1/4)``), each reduced by the image's own blur of 0.5 pixels
(``sqrt(s**2 - 0.5**2)``), and scales their difference by ``1 / (k - 1)`` so
that the response does not depend on ``k``.  Local extrema over the 3x3x3
neighbourhood (the image's outermost layer excluded) above a third of the
threshold are refined by a quadratic fit of the response and kept when the
fitted extremum passes the threshold.  Here the response is ``(G_sigma -
G_ksigma) / (k - 1)``, so bright blobs are maxima (BigStitcher's "find
maxima") and dark ones minima.

These functions know nothing of projects; :mod:`.detection` runs them
block by block over views.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["K", "IMAGE_SIGMA", "dog_sigmas", "dog_halo", "difference_of_gaussian", "find_extrema",
           "localize_quadratic", "detect_blobs", "peaks_of_response"]

#: Scale step between the two Gaussians (BigStitcher: ``LaPlaceFunctions.computeK(4)``).
K = 2.0 ** 0.25
#: The blur the image already has, in pixels (BigStitcher's ``imageSigma``).
IMAGE_SIGMA = 0.5
#: Moves of the quadratic fit to a neighbouring voxel before a peak is given up.
MAX_MOVES = 4
#: The quadratic fit moves to the neighbouring voxel when its offset exceeds this (voxels).
MOVE_BEYOND = 0.6
#: Gaussian kernels reach this many sigmas.
_TRUNCATE = 4.0


def dog_sigmas(sigma: float, image_sigma: float = IMAGE_SIGMA) -> tuple[float, float]:
    """The two Gaussian widths actually applied: ``sigma`` and ``K * sigma`` minus the image's own blur."""
    sigma = float(sigma)
    if not sigma > image_sigma:
        raise ValueError(f"sigma must exceed the image's own blur {image_sigma}, got {sigma}")
    return tuple(math.sqrt(s * s - image_sigma * image_sigma) for s in (sigma, K * sigma))


def dog_halo(sigma: float) -> int:
    """Voxels a block needs around it so that its response, extrema and fits equal the whole image's."""
    return int(_TRUNCATE * dog_sigmas(sigma)[1] + 0.5) + MAX_MOVES + 2


def difference_of_gaussian(image: np.ndarray, sigma: float, *, mode: str = "mirror") -> np.ndarray:
    """``(G_s1 - G_s2) / (K - 1)`` of a float image (already normalised), float32.

    ``mode="mirror"`` extends the image by mirroring without repeating the
    edge voxel (ImgLib2's ``extendMirrorSingle``, which BigStitcher uses).
    """
    s1, s2 = dog_sigmas(sigma)
    image = np.asarray(image, dtype=np.float32)
    g1 = ndimage.gaussian_filter(image, s1, mode=mode, truncate=_TRUNCATE)
    g2 = ndimage.gaussian_filter(image, s2, mode=mode, truncate=_TRUNCATE)
    g1 -= g2
    g1 *= np.float32(1.0 / (K - 1.0))
    return g1


def find_extrema(dog: np.ndarray, threshold: float, *, find_maxima: bool = True, find_minima: bool = False,
                 region: tuple[slice, ...] | None = None) -> np.ndarray:
    """Voxels that are the largest (or smallest) of their 3x3x3 neighbourhood with ``|response| >= threshold``.

    Only voxels inside ``region`` (default: all but the outermost layer) are
    reported; their neighbourhoods must lie inside ``dog``.  Returns an
    ``(n, ndim)`` int array in C order.
    """
    dog = np.asarray(dog)
    if region is None:
        region = tuple(slice(1, n - 1) for n in dog.shape)
    found = []
    footprint = np.ones((3,) * dog.ndim, dtype=bool)
    for wanted, pick, sign in ((find_maxima, ndimage.maximum_filter, 1.0), (find_minima, ndimage.minimum_filter, -1.0)):
        if not wanted:
            continue
        extreme = pick(dog, footprint=footprint, mode="nearest")
        hit = (dog == extreme) & (sign * dog >= threshold)
        inside = np.zeros_like(hit)
        inside[region] = True
        found.append(np.argwhere(hit & inside))
    if not found:
        return np.zeros((0, dog.ndim), dtype=np.intp)
    out = np.concatenate(found)
    return out[np.lexsort(out.T[::-1])] if len(out) else out


def localize_quadratic(dog: np.ndarray, peaks: np.ndarray, *, max_moves: int = MAX_MOVES,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-voxel extremum of a quadratic fitted to each peak's 3x3x3 neighbourhood (SIFT-style).

    The gradient and Hessian come from central differences; the offset
    ``-H^-1 g`` moves the peak to the neighbouring voxel when it exceeds
    :data:`MOVE_BEYOND` voxels along an axis (at most ``max_moves`` times,
    staying one voxel inside ``dog``).  A little over half a voxel: an
    extremum half-way between two voxels would otherwise send the fit back and
    forth between them.

    Returns
    -------
    location : (n, ndim) float ndarray
    value : (n,) float ndarray
        The fitted response at the location.
    ok : (n,) bool ndarray
        False where the fit is singular or did not settle within ``max_moves``.
    """
    dog = np.asarray(dog, dtype=np.float64)
    nd = dog.ndim
    pos = np.array(peaks, dtype=np.intp).reshape(-1, nd).copy()
    n = len(pos)
    offset = np.zeros((n, nd))
    value = np.zeros(n)
    ok = np.zeros(n, dtype=bool)
    todo = np.arange(n)
    hi = np.asarray(dog.shape) - 2
    eye = np.eye(nd, dtype=np.intp)
    for _ in range(max_moves + 1):
        if not todo.size:
            break
        p = pos[todo]

        def at(shift, p=p):
            q = p + shift
            return dog[tuple(q.T)]

        v0 = at(np.zeros(nd, dtype=np.intp))
        grad = np.stack([(at(eye[d]) - at(-eye[d])) / 2.0 for d in range(nd)], axis=1)
        hess = np.empty((len(todo), nd, nd))
        for d in range(nd):
            hess[:, d, d] = at(eye[d]) + at(-eye[d]) - 2.0 * v0
            for e in range(d + 1, nd):
                h = (at(eye[d] + eye[e]) - at(eye[d] - eye[e]) - at(-eye[d] + eye[e]) + at(-eye[d] - eye[e])) / 4.0
                hess[:, d, e] = hess[:, e, d] = h
        det = np.linalg.det(hess)
        good = np.abs(det) > 1e-12
        step = np.zeros((len(todo), nd))
        if good.any():
            step[good] = -np.linalg.solve(hess[good], grad[good][..., None])[..., 0]
        move = np.where(np.abs(step) > MOVE_BEYOND, np.sign(step), 0).astype(np.intp)
        settled = good & ~move.any(axis=1)
        idx = todo[settled]
        offset[idx] = step[settled]
        value[idx] = v0[settled] + 0.5 * np.sum(grad[settled] * step[settled], axis=1)
        ok[idx] = True
        moving = good & move.any(axis=1)
        new = p[moving] + move[moving]
        inside = np.all((new >= 1) & (new <= hi), axis=1)
        keep = todo[moving][inside]
        pos[keep] = new[inside]
        todo = keep
    return pos + offset, value, ok


def detect_blobs(image: np.ndarray, sigma: float = 1.8, threshold: float = 0.008, *, find_maxima: bool = True,
                 find_minima: bool = False, localization: str = "quadratic",
                 intensity_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DoG blobs of a whole array: ``(locations (n, ndim) in voxels, responses (n,))``.

    The image is normalised to ``[0, 1]`` by ``intensity_range`` (default its
    own minimum and maximum), as BigStitcher does, so ``threshold`` is a
    fraction of the intensity range.  :func:`tilefuse.interestpoints.detect`
    does the same block by block on a project's views.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = intensity_range if intensity_range is not None else (float(image.min()), float(image.max()))
    norm = (image - np.float32(lo)) * np.float32(1.0 / (hi - lo) if hi > lo else 1.0)
    dog = difference_of_gaussian(norm, sigma)
    return peaks_of_response(dog, threshold, find_maxima=find_maxima, find_minima=find_minima,
                             localization=localization)


def peaks_of_response(dog: np.ndarray, threshold: float, *, find_maxima: bool, find_minima: bool,
                      localization: str, region: tuple[slice, ...] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Extrema of a DoG response, refined when ``localization == "quadratic"``: ``(locations, responses)``.

    Candidates pass a third of the threshold before the fit (BigStitcher's
    ``minInitialPeakValue``) and the threshold after it.
    """
    if localization not in ("quadratic", "none"):
        raise ValueError(f"localization must be 'quadratic' or 'none', got {localization!r}")
    first = threshold / 3.0 if localization == "quadratic" else threshold
    peaks = find_extrema(dog, first, find_maxima=find_maxima, find_minima=find_minima, region=region)
    if localization == "none" or not len(peaks):
        values = dog[tuple(peaks.T)].astype(np.float64) if len(peaks) else np.zeros(0)
        return peaks.astype(np.float64), values
    loc, value, ok = localize_quadratic(dog, peaks)
    # a maximum must stay a maximum (positive response), a minimum a minimum
    sign = np.sign(dog[tuple(peaks.T)])
    keep = ok & (np.abs(value) >= threshold) & (np.sign(value) == sign)
    return loc[keep], value[keep]
