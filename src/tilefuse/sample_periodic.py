"""A periodic texture with a few distinct marks: the hard case for registration (issue 14).

Real samples such as calibration grids, woven or crystalline material and
muscle fibres look almost the same after a shift by one period; what tells
the true alignment from its periodic aliases is a few distinct marks (dust, a
defect, a label).  Phase correlation then sees a lattice of near-equal peaks,
and when the stage is off by more than a period the right one is neither the
nearest to the stage position nor, on raw intensities, clearly the highest.

:func:`periodic_texture` is the texture ``"periodic"`` of
:func:`tilefuse.sample_data.make_mosaic`, a function of the world coordinate
like the others (tiles at sub-pixel offsets need no resampling).
:func:`periodic_sample_options` gives the layout that reproduces the failure
of issue 14: a row of ten tiles with 50 % nominal overlap whose stage errors
reach 20 % of the overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["periodic_texture", "PERIOD", "MARK_CELL"]

#: Period of the lattice of dots, world units.
PERIOD = 14.0
#: The lattice is turned by this many degrees (real patterns are rarely square to the camera).
_ANGLE = 7.0
#: One candidate mark per cell of this size (world units); most cells have none.
MARK_CELL = 56.0
_MARK_PROBABILITY = 0.35
_MARK_SIGMA = (3.0, 7.0)
#: Low contrast (a brightfield view of a grid): with the sample's Poisson noise the true alignment of
#: two tiles correlates at ~0.6, as the real tiles of issue 14 did; most of the signal is the lattice.
_BASE = 0.5
_LATTICE = 0.25
#: Mark brightness (the lattice's dots peak at ``_LATTICE``).
_MARK_AMPLITUDE = (0.3, 0.6)


def periodic_texture(coords: Sequence[np.ndarray], key: int) -> np.ndarray:
    """A turned lattice of dots plus sparse Gaussian marks, roughly in [0, 1.5].

    Parameters
    ----------
    coords : sequence of ndarray
        World coordinates of the grid along each axis (numpy order); the
        texture varies along the last two (constant along z in 3D).
    key : int
        Seeds the marks.

    Returns
    -------
    ndarray of float64, shape ``tuple(len(c) for c in coords)``
    """
    from .sample_data import _hash_uniform

    y, x = coords[-2][:, None], coords[-1][None, :]
    theta = math.radians(_ANGLE)
    u = (x * math.cos(theta) + y * math.sin(theta)) * (2 * math.pi / PERIOD)
    v = (-x * math.sin(theta) + y * math.cos(theta)) * (2 * math.pi / PERIOD)
    lattice = ((1 + np.cos(u)) * (1 + np.cos(v)) / 4) ** 2
    plane = _BASE + _LATTICE * lattice

    # sparse marks: one candidate per hashed cell, most cells empty
    margin = 4 * _MARK_SIGMA[1]
    ranges = [np.arange(math.floor((c[0] - margin) / MARK_CELL), math.floor((c[-1] + margin) / MARK_CELL) + 1)
              for c in (coords[-2], coords[-1])]
    iy, ix = (g.ravel() for g in np.meshgrid(*ranges, indexing="ij"))

    def draw(stream: int) -> np.ndarray:
        return _hash_uniform(key, [iy, ix, np.full_like(iy, stream)])

    exists = draw(-1) < _MARK_PROBABILITY
    for cy, cx, s, a in zip((iy + draw(0))[exists] * MARK_CELL, (ix + draw(1))[exists] * MARK_CELL,
                            (_MARK_SIGMA[0] + (_MARK_SIGMA[1] - _MARK_SIGMA[0]) * draw(2))[exists],
                            (_MARK_AMPLITUDE[0] + (_MARK_AMPLITUDE[1] - _MARK_AMPLITUDE[0]) * draw(3))[exists]):
        gy = np.exp(-0.5 * ((coords[-2] - cy) / s) ** 2)
        gx = np.exp(-0.5 * ((coords[-1] - cx) / s) ** 2)
        if gy.max() > 1e-6 and gx.max() > 1e-6:
            plane = plane + a * gy[:, None] * gx[None, :]
    if len(coords) == 2:
        return plane
    return np.broadcast_to(plane, tuple(len(c) for c in coords)).copy()
