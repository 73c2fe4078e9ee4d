"""Cross-element checks of a parsed project: counts, references and view geometry.

:func:`check_spimdata` runs after the XML is parsed (so :func:`open_project`
refuses a damaged project at once, not hours later in fusion).  Each check
names the file and the element at fault.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np

from ..errors import ProjectFormatError, where
from ..geometry import compose_chain
from .model import SpimData
from .views import ViewId

__all__ = ["check_spimdata", "MAX_VIEWS", "MAX_CONDITION", "MAX_COORDINATE"]

#: The most views (setups × timepoints) a project may have; beyond it every
#: listing of views costs gigabytes.  The largest published BigStitcher
#: projects have about 10^5 views; a listing of 10^6 takes about a second.
MAX_VIEWS = 1_000_000

#: Largest accepted condition number of a view's composed model: beyond it
#: the world -> voxel inverse that fusion needs has lost almost every digit.
MAX_CONDITION = 1e12

#: Largest accepted world coordinate of a view's corner: 2**50 ≈ 1.1e15, where
#: float64 still resolves a quarter voxel.
MAX_COORDINATE = 2.0**50


def check_spimdata(data: SpimData, path: str | Path | None = None) -> None:
    """Refuse a project whose elements disagree with each other.

    Parameters
    ----------
    data : SpimData
        A parsed document.
    path : str or Path, optional
        The file, for the messages.

    Raises
    ------
    ProjectFormatError
        Too many views; a registration, missing view, interest-point file,
        PSF, pairwise result or intensity adjustment that refers to a setup or
        timepoint the project does not have; a view whose composed model is
        not finite, (nearly) singular, or places it beyond ``MAX_COORDINATE``.
    """
    n_views = len(data.setups) * len(data.timepoints.ids)
    if n_views > MAX_VIEWS:
        raise ProjectFormatError(
            f"{where(path, '<SequenceDescription>')}: {len(data.setups):,} setups × "
            f"{len(data.timepoints.ids):,} timepoints = {n_views:,} views, more than the "
            f"{MAX_VIEWS:,} tilefuse accepts"
        )
    _check_references(data, path)
    _check_models(data, path)


def _view_label(tag: str, view: ViewId) -> str:
    return f'<{tag} timepoint="{view.timepoint}" setup="{view.setup}">'


def _check_references(data: SpimData, path) -> None:
    tps = set(data.timepoints.ids)

    def check(tag: str, view: ViewId) -> None:
        if view.setup not in data.setups:
            raise ProjectFormatError(f"{where(path, _view_label(tag, view))}: refers to setup {view.setup}, "
                                     "which has no <ViewSetup>")
        if view.timepoint not in tps:
            raise ProjectFormatError(f"{where(path, _view_label(tag, view))}: refers to timepoint "
                                     f"{view.timepoint}, which <Timepoints> does not list")

    for view in data.registrations:
        check("ViewRegistration", view)
    for view in sorted(data.missing_views or ()):
        check("MissingView", view)
    for ip in data.interest_points or ():
        check("ViewInterestPointsFile", ip.view)
    for psf in data.psfs or ():
        check("BoundingBoxDefinition", psf.view)
    for view in data.intensity_adjustments or {}:
        check("IntensityAdjustments", view)
    for result in data.stitching_results or ():
        for view in result.views_a + result.views_b:
            check("PairwiseResult", view)
    # Setups may name attribute ids that no <Attributes> block defines (real
    # BigStitcher files do, e.g. tiles of an N5 project): spimdata tolerates it, so do we.


def _check_models(data: SpimData, path) -> None:
    """Every evaluable model is finite, invertible and places its view at representable coordinates.

    Individual ``<affine>`` entries are already finite; their product need not
    be (1e300 × 1e300), and an all-zero or rank-deficient affine has no inverse,
    which fusion needs for every output voxel.  Done for all views at once:
    a project of 10^5 views is checked in well under a second.
    """
    views, models, sizes = [], [], []
    with np.errstate(over="ignore", invalid="ignore"):
        for view, chain in data.registrations.items():
            if any(vt.matrix is None for vt in chain):
                continue  # Java-only transforms: refused when evaluated (Project.model)
            views.append(view)
            models.append(compose_chain([vt.matrix for vt in chain]))
            setup = data.setups.get(view.setup)
            size = setup.size if setup is not None and setup.size is not None else (1, 1, 1)
            sizes.append(size)
        if not views:
            return
        models = np.stack(models)
        lin = models[:, :3, :3]
        finite = np.isfinite(models).all(axis=(1, 2))
        # Condition numbers are scale-free: normalise first so the SVD cannot overflow.
        scale = np.abs(np.where(np.isfinite(lin), lin, 0.0)).max(axis=(1, 2))
        safe = np.where(finite & (scale > 0), scale, 1.0)
        sv = np.linalg.svd(np.where(finite[:, None, None], lin, 0.0) / safe[:, None, None], compute_uv=False)
        cond = np.where(sv[:, -1] > 0, sv[:, 0] / np.where(sv[:, -1] > 0, sv[:, -1], 1.0), np.inf)
        # World coordinates of the 8 corners of each view's voxel grid.
        extent = np.maximum(np.asarray(sizes, dtype=np.float64) - 1.0, 0.0)
        unit = np.array(list(product((0.0, 1.0), repeat=3)))  # (8, 3)
        corners = unit[None] * extent[:, None, :]  # (n, 8, 3)
        world = np.einsum("nij,nkj->nki", lin, corners) + models[:, None, :3, 3]
        reach = np.abs(world).max(axis=(1, 2))
    for i in np.flatnonzero(~finite | (scale == 0) | ~(cond <= MAX_CONDITION) | ~(reach <= MAX_COORDINATE)):
        view = views[i]
        chain = data.registrations[view]
        what = f"the model composed of its {len(chain)} <ViewTransform>{'s' if len(chain) != 1 else ''}"
        if not finite[i]:
            problem = f"{what} is not finite (its entries overflow when the chain is composed)"
        elif scale[i] == 0 or not np.isfinite(cond[i]):
            problem = f"{what} is singular (no inverse: an all-zero or degenerate <affine>)"
        elif not cond[i] <= MAX_CONDITION:
            problem = (f"{what} is singular or nearly so (condition number {cond[i]:.3g}, "
                       f"limit {MAX_CONDITION:.0e})")
        else:
            problem = (f"{what} places the view at world coordinates up to {reach[i]:.3g}, beyond the "
                       f"{MAX_COORDINATE:.3g} where float64 still resolves voxels")
        raise ProjectFormatError(f"{where(path, _view_label('ViewRegistration', view))}: {problem}")
