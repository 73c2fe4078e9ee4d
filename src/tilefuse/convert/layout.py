"""Positions that contradict the tiles: caught before registration, with the likely cause.

A stage readout in the wrong unit (nm read as µm: tiles 1000× too far apart;
pixels read as µm: tiles piled up) or with x and y swapped still makes a
project, and registration then searches for shifts that no overlap allows.
:func:`layout_warnings` compares the overlaps the positions imply with the
tiles' size and names what probably went wrong.  Flipped stage axes leave a
grid's overlaps unchanged and cannot be seen this way: :mod:`.flips` looks at
the overlaps' pixels for them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["layout_warnings"]


def _overlaps(origins: np.ndarray, extents: np.ndarray) -> np.ndarray:
    """Pairwise overlap along each axis, ``(n, n, 3)``; negative is a gap."""
    lo, hi = origins, origins + extents
    return np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None])


def _pieces(origins: np.ndarray, extents: np.ndarray) -> int:
    """How many separate groups of overlapping tiles the positions make (1 for a mosaic)."""
    from scipy.sparse.csgraph import connected_components

    touching = (_overlaps(origins, extents) > 0).all(axis=2)
    return int(connected_components(touching, directed=False)[0])


def layout_warnings(origins, extents, unit: str = "µm", voxel_size=None) -> list[str]:
    """Warnings (with the likely cause) when tile positions contradict the tiles' size.

    Parameters
    ----------
    origins, extents : (n, 3) array-like
        Each tile's first corner and size, ``(z, y, x)``, in one physical unit.
    unit : str
        For the messages.
    voxel_size : (3,) array-like, optional
        ``(z, y, x)``: lets the messages recognise positions in pixels.

    Returns
    -------
    list of str
        Empty when the layout looks like a mosaic (or has fewer than two tiles).
    """
    origins = np.asarray(origins, dtype=float)
    extents = np.asarray(extents, dtype=float)
    n = len(origins)
    if n < 2:
        return []
    if np.ptp(origins, axis=0).max() == 0:
        return [f"all {n} tiles are at the same position: the files hold no stage positions (give a positions "
                "file) or the positions are in a unit far too large"]
    ov = _overlaps(origins, extents)
    np.einsum("iij->ij", ov)[:] = -np.inf  # a tile does not overlap itself
    touching = (ov > 0).all(axis=2)
    width = float(np.median(extents[:, 1:].max(axis=1)))
    centres = origins + extents / 2
    dist = np.linalg.norm(centres[:, None, 1:] - centres[None, :, 1:], axis=2)
    np.fill_diagonal(dist, np.inf)
    nearest = float(np.median(dist.min(axis=1)))
    out = []
    if not touching.any():
        ratio = nearest / width
        cause = _unit_cause(ratio, voxel_size, "far")
        out.append(f"no two of the {n} tiles overlap: neighbours are {nearest:.4g} {unit} apart for tiles "
                   f"{width:.4g} {unit} wide ({ratio:.3g}×){cause}")
    else:
        vol = np.prod(extents, axis=1)
        inter = np.where(touching[..., None], ov, 0).clip(min=0).prod(axis=2)
        most = float(np.median((inter / vol[:, None]).max(axis=1)))
        if most > 0.9:
            ratio = nearest / width
            cause = _unit_cause(ratio, voxel_size, "close")
            out.append(f"the tiles overlap by {100 * most:.0f}% (median): neighbours are {nearest:.4g} {unit} "
                       f"apart for tiles {width:.4g} {unit} wide{cause}")
    if not out and extents[0, 1] != extents[0, 2]:
        # Tiles wider than tall: swapped stage axes leave gaps along one axis and pile tiles up along the other.
        here, there = _pieces(origins, extents), _pieces(origins[:, [0, 2, 1]], extents)
        if here > 1 and there == 1:
            out.append(f"the tiles fall apart into {here} separate groups as placed, but form one mosaic with x "
                       "and y swapped: the stage axes are probably swapped; give --stage-axes y,x,z")
    return out


def _unit_cause(ratio: float, voxel_size, how: str) -> str:
    """The likely cause of neighbours ``ratio`` tile widths apart."""
    hints = []
    if how == "far":
        if 200 < ratio < 5000:
            hints.append("positions about 1000× too large: nm read as µm (or µm as mm)?")
        if voxel_size is not None:
            inv = 1 / min(float(v) for v in voxel_size)
            if inv > 1.5:
                hints.append(f"positions in pixels read as physical units? (--position-unit voxel; "
                             f"1 pixel = {1 / inv:.3g})")
        if not hints:
            hints.append("positions in another unit, or tiles not from one mosaic?")
    else:
        if ratio < 0.01:
            hints.append("positions about 1000× too small: mm read as µm (or µm as nm)?")
        if voxel_size is not None and min(float(v) for v in voxel_size) < 0.7:
            hints.append("physical positions read as pixels? (--position-unit physical)")
        if not hints:
            hints.append("positions in another unit?")
    return "; likely cause: " + " or ".join(hints)
