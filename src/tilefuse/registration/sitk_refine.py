"""Optional intensity-based refinement of a pairwise shift with SimpleITK.

Phase correlation gives a translation; some pairs (slightly rotated stages,
sheared scans) are better described by a rigid or affine transform.  This
refines the phase-correlation result by maximising the normalised correlation
of the two overlap crops with SimpleITK's registration framework, starting
from the phase-correlation shift.  It is slower than phase correlation and
only runs where the user asks for it (``pairwise(..., refine="rigid")``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RegistrationError

__all__ = ["SitkRefinement", "refine_with_sitk", "SITK_TRANSFORMS"]

SITK_TRANSFORMS = ("translation", "rigid", "affine")


@dataclass(frozen=True)
class SitkRefinement:
    """Result of :func:`refine_with_sitk` (numpy axis order, crop voxel units).

    ``matrix`` maps a point of ``fixed`` to the matching point of ``moving``
    (``(n+1)``-square, homogeneous); ``shift`` is the translation at the crop
    centre in the convention of :func:`~tilefuse.registration.pairwise_shift`
    (``fixed[x] ≈ moving[x - shift]``); ``correlation`` is SimpleITK's final
    normalised correlation (-1 is a perfect match in its sign convention,
    reported here as +1).
    """

    shift: np.ndarray
    matrix: np.ndarray
    correlation: float
    iterations: int


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - depends on the environment
        raise RegistrationError("refinement with SimpleITK needs it: pip install 'tilefuse[sitk]'") from None
    return sitk


def refine_with_sitk(
    fixed: np.ndarray,
    moving: np.ndarray,
    initial_shift,
    *,
    transform: str = "translation",
    spacing=None,
    iterations: int = 200,
) -> SitkRefinement:
    """Refine a shift between two same-shape crops by normalised correlation.

    Parameters
    ----------
    fixed, moving : ndarray
        Same-shape crops (2D or 3D; singleton axes are dropped).
    initial_shift : array_like
        Starting shift, ``fixed[x] ≈ moving[x - shift]`` (numpy order).
    transform : {"translation", "rigid", "affine"}
    spacing : array_like, optional
        Voxel spacing of the crops (numpy order), so rotations are computed in
        physical space for anisotropic data.
    iterations : int
        Maximum optimiser iterations.
    """
    sitk = _sitk()
    if transform not in SITK_TRANSFORMS:
        raise RegistrationError(f"transform must be one of {SITK_TRANSFORMS}, got {transform!r}")
    fixed = np.asarray(fixed, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    if fixed.shape != moving.shape:
        raise RegistrationError(f"crops differ in shape: {fixed.shape} vs {moving.shape}")
    keep = [d for d, n in enumerate(fixed.shape) if n > 1]
    nd = len(keep)
    if nd not in (2, 3):
        raise RegistrationError(f"SimpleITK refinement needs 2D or 3D crops, got shape {fixed.shape}")
    sq = tuple(n for n in fixed.shape if n > 1)
    spacing = np.ones(fixed.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    sp = spacing[keep]
    shift0 = np.asarray(initial_shift, dtype=np.float64)[keep]

    def image(a):
        img = sitk.GetImageFromArray(a.reshape(sq))
        img.SetSpacing(tuple(float(v) for v in sp[::-1]))  # SimpleITK is x, y, z
        return img

    f_img, m_img = image(fixed), image(moving)
    # SimpleITK maps fixed points to moving points: x_m = x_f - shift (physical, xyz).
    offset_xyz = tuple(float(v) for v in (-shift0 * sp)[::-1])
    centre_xyz = tuple(float(v) for v in ((np.asarray(sq) - 1) / 2 * sp)[::-1])
    if transform == "translation":
        tx = sitk.TranslationTransform(nd, offset_xyz)
    elif transform == "rigid":
        tx = sitk.Euler3DTransform() if nd == 3 else sitk.Euler2DTransform()
        tx.SetCenter(centre_xyz)
        tx.SetTranslation(offset_xyz)
    else:
        tx = sitk.AffineTransform(nd)
        tx.SetCenter(centre_xyz)
        tx.SetTranslation(offset_xyz)

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=0.5, minStep=1e-4,
                                                 numberOfIterations=int(iterations),
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(tx, inPlace=True)
    reg.SetNumberOfThreads(1)  # pairs already run in parallel
    try:
        reg.Execute(f_img, m_img)
    except RuntimeError as exc:
        raise RegistrationError(f"SimpleITK registration failed: {exc}") from None

    # The fitted map as a homogeneous matrix in numpy order (crop voxel units).
    lin_xyz = np.eye(nd)
    if transform != "translation":
        lin_xyz = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(nd, nd)
    c = np.asarray(centre_xyz)
    if transform == "translation":
        t_xyz = np.asarray(tx.GetOffset(), dtype=np.float64)
    else:
        t_xyz = np.asarray(tx.GetTranslation(), dtype=np.float64) + c - lin_xyz @ c
    lin = lin_xyz[::-1, ::-1]
    t = t_xyz[::-1]
    # physical -> voxel: x_vox = x_phys / sp
    lin_vox = (lin * sp[None, :]) / sp[:, None]
    t_vox = t / sp
    matrix_nd = np.eye(nd + 1)
    matrix_nd[:nd, :nd] = lin_vox
    matrix_nd[:nd, nd] = t_vox
    centre = (np.asarray(sq) - 1) / 2
    shift_kept = centre - (lin_vox @ centre + t_vox)
    shift = np.zeros(fixed.ndim)
    shift[keep] = shift_kept
    full = np.eye(fixed.ndim + 1)
    idx = np.asarray(keep)
    full[np.ix_(idx, idx)] = lin_vox
    full[idx, -1] = t_vox
    return SitkRefinement(shift=shift, matrix=full, correlation=-float(reg.GetMetricValue()),
                          iterations=int(reg.GetOptimizerIteration()))
