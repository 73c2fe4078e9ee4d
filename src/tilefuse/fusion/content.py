"""Content-based fusion weights (BigStitcher's "content-based" fusion).

Where views overlap, the sharper one should win: multiview-reconstruction's
``ContentBasedRealRandomAccessible`` weighs every voxel of a view by its
local contrast, an approximation of local entropy (Preibisch et al. 2008)::

    w = G_sigma2 * (I - G_sigma1 * I)^2,   then scaled to [0, 1] per view

with ``sigma1 = 20`` and ``sigma2 = 40`` (world units, converted per axis to
the view's voxels).  Fusion multiplies these weights with the blending
weights.  The weights are smooth (``sigma2`` wide), so we compute them once
per view on a coarse pyramid level (``sigma / f`` there) and interpolate
them linearly onto each output chunk; contrast finer than that level's
voxels does not count (Java computes at the fused resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["content_weights", "CONTENT_SIGMAS"]

#: BigStitcher's default (sigma1, sigma2), world units.
CONTENT_SIGMAS = (20.0, 40.0)


def content_weights(image: np.ndarray, sigma1: float | Sequence[float], sigma2: float | Sequence[float]) -> np.ndarray:
    """Local-contrast weights of one view, scaled to ``[0, 1]``.

    Parameters
    ----------
    image : ndarray
        The view (any real dtype), numpy axis order.
    sigma1, sigma2 : float or sequence of float
        Gaussian widths in voxels of ``image`` (per axis, or one for all):
        the background estimate and the contrast averaging.

    Returns
    -------
    weights : float32 ndarray, same shape
        ``(G2 * (I - G1 * I)**2)`` minus its minimum, over its range (all 1
        for a constant image, which then weighs like any flat view).
    """
    image = np.asarray(image, dtype=np.float32)
    # Axes of length 1 (2D planes stored as 3D) are not smoothed.
    s1 = [0.0 if n == 1 else s for n, s in zip(image.shape, np.broadcast_to(sigma1, (image.ndim,)))]
    s2 = [0.0 if n == 1 else s for n, s in zip(image.shape, np.broadcast_to(sigma2, (image.ndim,)))]
    detail = image - ndimage.gaussian_filter(image, s1, mode="reflect", truncate=3.0)
    detail *= detail
    contrast = ndimage.gaussian_filter(detail, s2, mode="reflect", truncate=3.0)
    lo, hi = float(contrast.min()), float(contrast.max())
    if not hi > lo:
        return np.ones(image.shape, dtype=np.float32)
    contrast -= lo
    contrast /= hi - lo
    return contrast
