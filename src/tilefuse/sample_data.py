"""Synthetic tiled acquisitions with known ground truth.

:func:`make_mosaic` describes a grid of overlapping tiles cut from one
continuous texture defined at every world coordinate.  Each tile is displaced
from its nominal stage position by a random sub-pixel offset, so registration
has something to find and its result can be scored against
:attr:`Mosaic.true_positions`.

Coordinates
-----------
Everything is numpy order (``(y, x)`` or ``(z, y, x)``).  World units are the
*finest* voxel spacing, as in BigStitcher: with ``voxel_size=(3, 1, 1)`` the
calibration is ``(3, 1, 1)`` and voxel ``v`` of tile ``i`` sits at world
``true_positions[i] + v * calibration``.  Physical units are world units times
``min(voxel_size)``.

How the texture is evaluated
----------------------------
The texture is a function of the world coordinate, sampled *directly* at each
tile's voxel centres, so a sub-pixel offset costs no resampling error and
overlapping tiles agree to float precision (before illumination, noise and
rounding to the output dtype).

* ``"procedural"``: a few octaves of value noise (random lattice values from a
  hash of the lattice index, interpolated with cubic B-splines) plus
  Gaussian "cells" (one candidate per cell of a hashed lattice).  Because a
  tile is an axis-aligned grid, the B-spline interpolation is separable: the
  tile is ``W_y @ V @ W_x.T`` with small banded weight matrices - the same
  result as ``scipy.ndimage.map_coordinates(order=3, prefilter=False)`` on the
  lattice, an order of magnitude faster.  Lattice values are hashed, not
  stored, so memory does not grow with the mosaic.
* ``"photo"``: photographs bundled with scikit-image (no download), arranged
  into one mirrored, endlessly repeating sheet, upscaled ``photo_scale``
  times and sampled with cubic B-spline interpolation the same way (the
  spline coefficients of the sheet are computed once per process).  In 3D the
  photo is constant along z and a procedural 3D texture is added so that z
  has structure too.

Acquisition effects, per tile: vignetting and a random gain (multiplying the
signal, not the constant background), Poisson noise, rounding to ``dtype``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ProjectFormatError, TilefuseError

__all__ = ["Mosaic", "make_mosaic", "load_truth", "TEXTURES", "MultiView", "make_multiview",
           "load_multiview_truth", "rotation_about_axis", "rotation_name", "STAGE_AXIS"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)

#: value-noise octaves: (lattice spacing in world units, amplitude)
_OCTAVES = ((256.0, 1.0), (64.0, 0.6), (16.0, 0.35), (5.0, 0.2))
#: procedural cells: lattice cell size (world units), sigma range, amplitude range
_CELL_SIZE = {2: 24.0, 3: 24.0}
_CELL_SIGMA = (1.5, 4.0)
_CELL_PROBABILITY = 0.7
_PHOTOS = ("camera", "astronaut", "coffee", "gravel", "cell", "brick")


# ----------------------------------------------------------------------------
# hashing: reproducible random values for integer lattice points
# ----------------------------------------------------------------------------
def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    return h ^ (h >> np.uint64(31))


def _hash_uniform(key: int, coords: Sequence[np.ndarray]) -> np.ndarray:
    """Uniform [0, 1) values for the broadcast integer ``coords`` under ``key``."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray([key], dtype=np.uint64) * _GOLD + _GOLD)
        for c in coords:
            h = _mix(h ^ (np.asarray(c, dtype=np.int64).astype(np.uint64) + _GOLD))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


# ----------------------------------------------------------------------------
# separable cubic B-spline evaluation
# ----------------------------------------------------------------------------
# Weight matrices are sparse (4 taps per point) and applied with scipy.sparse:
# single-threaded, so tiles generated in parallel threads do not fight over
# BLAS threads, and cheaper than a dense product for fine lattices.
def _bspline_weights(u: np.ndarray):
    """Sparse weight matrix ``W`` (len(u) x n_nodes) and first node index for ``u``.

    ``W @ c`` evaluates the cubic B-spline with coefficients ``c`` on nodes
    ``first, first + 1, ...`` at the lattice coordinates ``u``.
    """
    from scipy import sparse

    base = np.floor(u).astype(np.int64)
    t = u - base
    t2, t3 = t * t, t * t * t
    w = np.stack(
        [(1 - t) ** 3 / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6],
        axis=1,
    )
    first = int(base.min()) - 1
    n_nodes = int(base.max()) + 3 - first
    cols = (base - first - 1)[:, None] + np.arange(4)
    indptr = np.arange(0, 4 * u.size + 1, 4)
    W = sparse.csr_matrix((w.ravel(), cols.ravel(), indptr), shape=(u.size, n_nodes))
    return W, first


def _apply(W, values: np.ndarray, axis: int) -> np.ndarray:
    """Contract ``values`` along ``axis`` with the (sparse) matrix ``W``."""
    moved = np.moveaxis(values, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = np.asarray(W @ flat)
    return np.moveaxis(out.reshape((W.shape[0],) + moved.shape[1:]), 0, axis)


def _axis_coords(origin: Sequence[float], shape: Sequence[int], spacing: Sequence[float]):
    return [o + np.arange(n) * s for o, n, s in zip(origin, shape, spacing)]


def _value_noise(coords: Sequence[np.ndarray], octaves, key: int) -> np.ndarray:
    """Sum of value-noise octaves ``(lattice spacing, amplitude)`` at the grid ``coords``.

    Every octave is contracted along all axes but the last; the octaves are
    then stacked along the lattice axis so that the largest contraction (to
    full tile size) is done once for all of them.
    """
    from scipy import sparse

    partial, last = [], []
    for k, (spacing, amp) in enumerate(octaves):
        weights, nodes = [], []
        for c in coords:
            W, first = _bspline_weights(c / spacing)
            weights.append(W)
            nodes.append(np.arange(first, first + W.shape[1]))
        lattice = amp * (2.0 * _hash_uniform(key + 101 * k, np.ix_(*nodes)) - 1.0)
        for axis, W in enumerate(weights[:-1]):
            lattice = _apply(W, lattice, axis)
        partial.append(lattice)
        last.append(weights[-1])
    stacked = np.concatenate(partial, axis=-1)
    return _apply(sparse.hstack(last, format="csr"), stacked, len(coords) - 1)


def _cells(coords: Sequence[np.ndarray], key: int, cell: float) -> np.ndarray:
    """Sum of Gaussian blobs, one candidate per hashed lattice cell of size ``cell``."""
    from scipy import sparse

    ndim = len(coords)
    margin = 4 * _CELL_SIGMA[1]
    ranges = [
        np.arange(math.floor((c[0] - margin) / cell), math.floor((c[-1] + margin) / cell) + 1)
        for c in coords
    ]
    idx = [g.ravel() for g in np.meshgrid(*ranges, indexing="ij")]

    def draw(stream: int) -> np.ndarray:
        return _hash_uniform(key, idx + [np.full_like(idx[0], stream)])

    exists = draw(-1) < _CELL_PROBABILITY
    idx = [g[exists] for g in idx]
    shape = tuple(c.size for c in coords)
    nb = idx[0].size
    if not nb:
        return np.zeros(shape)
    sigma = _CELL_SIGMA[0] + (_CELL_SIGMA[1] - _CELL_SIGMA[0]) * draw(-2)
    amp = 0.5 + 0.5 * draw(-3)
    # per axis: each blob's Gaussian profile on a window of voxels, cut at ~4 sigma
    vox, val = [], []
    for a in range(ndim):
        c = coords[a]
        step = c[1] - c[0] if c.size > 1 else 1.0
        centre = (idx[a] + draw(a)) * cell
        # slightly elongated cells: per-axis sigma in [0.75, 1.25] * sigma
        s = sigma * (0.75 + 0.5 * draw(10 + a))
        reach = int(math.ceil(4 * _CELL_SIGMA[1] * 1.25 / step))
        start = np.floor((centre - c[0]) / step).astype(np.int64) - reach
        v = start[:, None] + np.arange(2 * reach + 2)
        d = (c[0] + v * step - centre[:, None]) / s[:, None]
        g = np.exp(-0.5 * d * d)
        g[(v < 0) | (v >= c.size)] = 0.0
        vox.append(np.clip(v, 0, c.size - 1))
        val.append(g)
    # dense (blobs x nx) profile along x, scaled by the amplitude
    gx = np.zeros((nb, shape[-1]))
    blob = np.broadcast_to(np.arange(nb)[:, None], vox[-1].shape)
    np.add.at(gx, (blob, vox[-1]), val[-1] * amp[:, None])
    # sparse (voxels of the other axes, raveled) x blobs outer product of the rest
    rows = np.zeros((nb, 1), dtype=np.int64)
    vals = np.ones((nb, 1))
    for a in range(ndim - 1):
        rows = (rows[:, :, None] * shape[a] + vox[a][:, None, :]).reshape(nb, -1)
        vals = (vals[:, :, None] * val[a][:, None, :]).reshape(nb, -1)
    keep = vals > 1e-6
    blobs = np.broadcast_to(np.arange(nb)[:, None], rows.shape)
    n_rows = math.prod(shape[:-1])
    left = sparse.csr_matrix((vals[keep], (rows[keep], blobs[keep])), shape=(n_rows, nb))
    return np.asarray(left @ gx).reshape(shape)


def _procedural(coords: Sequence[np.ndarray], key: int) -> np.ndarray:
    """Procedural texture in roughly [0, 1.5] at the grid ``coords``."""
    # B-splined uniform[-1, 1] lattice values have std ~0.28: /1.4 maps to ~[-1, 1]
    noise = np.clip(_value_noise(coords, _OCTAVES, key) / 1.4, -1.0, 1.0)
    density = np.clip(0.7 + 0.8 * _value_noise(coords, _OCTAVES[:1], key + 7), 0.2, 1.0)
    cells = _cells(coords, key + 13, _CELL_SIZE[len(coords)])
    return 0.3 * (1.0 + 0.8 * noise) + cells * density


@lru_cache(maxsize=1)
def _photo_sheet() -> np.ndarray:
    """B-spline coefficients of a sheet of bundled photographs (computed once)."""
    import skimage.data
    from scipy.ndimage import spline_filter
    from skimage.color import rgb2gray
    from skimage.exposure import equalize_adapthist
    from skimage.transform import resize

    side = 512
    images = []
    for name in _PHOTOS:
        img = getattr(skimage.data, name)()
        if img.ndim == 3:
            img = rgb2gray(img[..., :3])
        img = img.astype(np.float64)
        img = (img - img.min()) / max(np.ptp(img), 1e-12)
        h, w = img.shape
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        img = resize(img, (side, side), order=1, anti_aliasing=True)
        # local contrast everywhere: photos have large flat areas (sky, walls)
        images.append(equalize_adapthist(np.clip(img, 0, 1), kernel_size=64))
    sheet = np.block([images[:3], images[3:]])
    return spline_filter(sheet, order=3, mode="mirror")


def _mirror_index(i: np.ndarray, n: int) -> np.ndarray:
    """Whole-sample symmetric extension of indices into ``range(n)``."""
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


def _photo(coords: Sequence[np.ndarray], key: int, scale: float) -> np.ndarray:
    """The photo sheet upscaled ``scale`` times, cubic B-spline sampled at ``(y, x)``."""
    sheet = _photo_sheet()
    rng = np.random.default_rng(key)
    shift = rng.uniform(0, sheet.shape)
    weights, nodes = [], []
    for c, n, sh in zip(coords, sheet.shape, shift):
        W, first = _bspline_weights(c / scale + sh)
        weights.append(W)
        nodes.append(_mirror_index(np.arange(first, first + W.shape[1]), n))
    out = sheet[np.ix_(*nodes)]
    for axis, W in enumerate(weights):
        out = _apply(W, out, axis)
    return out


# ----------------------------------------------------------------------------
# the mosaic
# ----------------------------------------------------------------------------
@dataclass(eq=False)
class Mosaic:
    """A grid of overlapping synthetic tiles with known positions.

    Build it with :func:`make_mosaic`.  Tiles are generated on demand by
    :meth:`tile`; the object itself holds only positions and parameters (it
    pickles cheaply, e.g. to dask workers).

    Attributes
    ----------
    grid : tuple of int
        Tiles per axis, numpy order.  Tile ``i`` has grid index
        ``np.unravel_index(i, grid)``.
    tile_shape : tuple of int
        Voxels per tile, numpy order.
    voxel_size : tuple of float
        Physical voxel spacing, numpy order.
    stage_positions : ndarray, shape (n_tiles, ndim)
        Nominal grid positions (world units), what a microscope would report.
    true_positions : ndarray, shape (n_tiles, ndim)
        Where the tiles really are: stage position plus a random offset (tile
        0 has none).  World position of voxel ``v`` of tile ``i`` is
        ``true_positions[i] + v * calibration``.
    """

    grid: tuple[int, ...]
    tile_shape: tuple[int, ...]
    voxel_size: tuple[float, ...]
    overlap: tuple[float, ...]
    stage_positions: np.ndarray
    true_positions: np.ndarray
    empty_tiles: frozenset[int] = frozenset()
    texture: str = "procedural"
    dtype: np.dtype = np.dtype("uint16")
    seed: int = 0
    noise: bool = True
    photons_per_count: float = 1.0
    illumination: bool = True
    vignetting: float = 0.35
    background: float = 100.0
    signal: float = 2000.0
    photo_scale: float = 2.0
    max_offset: float = 8.0
    _gains: np.ndarray = field(default=None, repr=False)
    _vignette_centres: np.ndarray = field(default=None, repr=False)

    # -- geometry --------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.tile_shape)

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return len(self.stage_positions)

    def __len__(self) -> int:
        return self.n_tiles

    @property
    def calibration(self) -> np.ndarray:
        """World units per voxel along each axis: ``voxel_size / min(voxel_size)``."""
        vs = np.asarray(self.voxel_size, dtype=float)
        return vs / vs.min()

    @property
    def offsets(self) -> np.ndarray:
        """``true_positions - stage_positions`` (world units)."""
        return self.true_positions - self.stage_positions

    def grid_index(self, i: int) -> tuple[int, ...]:
        """Grid index (numpy order) of tile ``i``."""
        return tuple(int(v) for v in np.unravel_index(int(i), self.grid))

    def tile_extent(self) -> np.ndarray:
        """World extent of one tile: ``tile_shape * calibration``."""
        return np.asarray(self.tile_shape) * self.calibration

    def bounds(self, positions: str = "true") -> tuple[np.ndarray, np.ndarray]:
        """World box ``(lo, hi)`` covering all voxel centres of all tiles."""
        pos = self.true_positions if positions == "true" else self.stage_positions
        last = (np.asarray(self.tile_shape) - 1) * self.calibration
        return pos.min(axis=0), pos.max(axis=0) + last

    # -- pixels ---------------------------------------------------------------
    def _texture(self, origin: Sequence[float], shape: Sequence[int], spacing) -> np.ndarray:
        coords = _axis_coords(origin, shape, spacing)
        key = int(self.seed) * 7919 + 17
        if self.texture == "procedural":
            return _procedural(coords, key)
        if self.texture == "periodic":
            from .sample_periodic import periodic_texture

            return periodic_texture(coords, key)
        photo = _photo(coords[-2:], key, self.photo_scale)
        if self.ndim == 2:
            return 0.15 + 1.1 * photo
        return 0.1 + 0.8 * photo[None] + 0.4 * _procedural(coords, key)

    def _illumination(self, i: int) -> np.ndarray:
        """Per-tile vignetting times gain, over the tile's y/x plane."""
        ny, nx = self.tile_shape[-2:]
        cy, cx = self._vignette_centres[i]
        y = (np.arange(ny) - cy) / (ny / 2)
        x = (np.arange(nx) - cx) / (nx / 2)
        r2 = (y[:, None] ** 2 + x[None, :] ** 2) / 2
        return self._gains[i] * (1.0 - self.vignetting * np.clip(r2, 0, 1.5))

    def tile(self, i: int) -> np.ndarray:
        """Generate the pixels of tile ``i`` (deterministic for a given seed)."""
        i = int(i)
        if not 0 <= i < self.n_tiles:
            raise IndexError(f"tile {i} out of range for a mosaic of {self.n_tiles} tiles")
        if i in self.empty_tiles:
            expected = np.full(self.tile_shape, self.background)
        else:
            signal = self._texture(self.true_positions[i], self.tile_shape, self.calibration)
            signal *= self.signal
            if self.illumination:
                signal *= self._illumination(i)
            expected = signal + self.background
        if self.noise:
            rng = np.random.default_rng([int(self.seed), i, 1])
            ppc = self.photons_per_count
            expected = rng.poisson(np.maximum(expected, 0) * ppc) / ppc
        return _cast(expected, self.dtype)

    def tiles(self) -> Iterator[np.ndarray]:
        """Iterate over all tiles, generating one at a time."""
        for i in range(self.n_tiles):
            yield self.tile(i)

    def tile_dask(self, i: int):
        """Tile ``i`` as a single-chunk dask array generated when computed."""
        import dask
        import dask.array as da

        delayed = dask.delayed(self.tile, pure=True)(int(i))
        return da.from_delayed(delayed, shape=self.tile_shape, dtype=self.dtype)

    def ground_truth(
        self, region: Sequence[slice] | None = None, spacing: Sequence[float] | None = None
    ) -> np.ndarray:
        """The clean image (background + texture; no vignetting, noise, empty tiles).

        Parameters
        ----------
        region : tuple of slice, optional
            Voxels of the grid ``world = index * spacing`` (numpy order, steps
            of 1, negative indices allowed).  By default the bounding box of
            all tiles at their true positions.
        spacing : sequence of float, optional
            Grid spacing in world units; default :attr:`calibration` (the
            tiles' own voxel grid).

        Returns
        -------
        ndarray of float32
            In the tiles' intensity units (before rounding to ``dtype``).
        """
        spacing = self.calibration if spacing is None else np.asarray(spacing, dtype=float)
        if region is None:
            lo, hi = self.bounds()
            region = tuple(
                slice(int(math.floor(a / s)), int(math.ceil(b / s)) + 1)
                for a, b, s in zip(lo, hi, spacing)
            )
        region = tuple(region)
        if len(region) != self.ndim or any(
            s.start is None or s.stop is None or s.step not in (None, 1) for s in region
        ):
            raise TilefuseError(f"ground_truth region needs {self.ndim} slices with start and stop")
        shape = tuple(max(0, s.stop - s.start) for s in region)
        origin = [s.start * sp for s, sp in zip(region, spacing)]
        out = self._texture(origin, shape, spacing) * self.signal + self.background
        return out.astype(np.float32)

    # -- ground truth files -----------------------------------------------------
    def params(self) -> dict:
        """The :func:`make_mosaic` arguments that regenerate this mosaic."""
        return {
            "grid": list(self.grid),
            "tile_shape": list(self.tile_shape),
            "overlap": list(self.overlap),
            "voxel_size": list(self.voxel_size),
            "max_offset": self.max_offset,
            "noise": self.noise,
            "photons_per_count": self.photons_per_count,
            "illumination": self.illumination,
            "empty_tiles": sorted(self.empty_tiles),
            "texture": self.texture,
            "dtype": np.dtype(self.dtype).name,
            "seed": self.seed,
            "background": self.background,
            "signal": self.signal,
            "photo_scale": self.photo_scale,
            "vignetting": self.vignetting,
        }

    def save_truth(self, path: str | os.PathLike) -> Path:
        """Write tile positions for scoring: ``.json`` (with parameters) or ``.csv``.

        Positions are in world units (finest voxel).  Every row/record has
        axis-labelled columns: ``stage_z, stage_y, stage_x`` and ``true_z,
        true_y, true_x`` (no z for 2D), plus ``stage_xyz`` / ``true_xyz`` and
        ``stage_zyx`` / ``true_zyx`` lists in the JSON file.  The file is
        written under a temporary name and renamed.
        """
        path = Path(path)
        axes = "zyx"[-self.ndim :]
        tmp = path.with_name(path.name + ".partial")
        if path.suffix.lower() == ".json":
            tiles = []
            for i in range(self.n_tiles):
                s, t = self.stage_positions[i], self.true_positions[i]
                rec = {"tile": i, "grid_index_zyx": list(self.grid_index(i))}
                rec.update({f"stage_{a}": float(v) for a, v in zip(axes, s)})
                rec.update({f"true_{a}": float(v) for a, v in zip(axes, t)})
                rec["stage_zyx"] = [float(v) for v in s]
                rec["true_zyx"] = [float(v) for v in t]
                rec["stage_xyz"] = [float(v) for v in s[::-1]]
                rec["true_xyz"] = [float(v) for v in t[::-1]]
                rec["empty"] = i in self.empty_tiles
                tiles.append(rec)
            doc = {
                "format": "tilefuse-mosaic-truth/1",
                "units": "world units = finest voxel spacing; voxel v of tile i is at "
                "true_zyx[i] + v * calibration_zyx",
                "calibration_zyx": [float(v) for v in self.calibration],
                "voxel_size_zyx": [float(v) for v in self.voxel_size],
                "params": self.params(),
                "tiles": tiles,
            }
            tmp.write_text(json.dumps(doc, indent=1))
        elif path.suffix.lower() == ".csv":
            header = ["tile"] + [f"grid_{a}" for a in axes]
            header += [f"stage_{a}" for a in axes] + [f"true_{a}" for a in axes] + ["empty"]
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                for i in range(self.n_tiles):
                    w.writerow(
                        [i, *self.grid_index(i)]
                        + [repr(float(v)) for v in self.stage_positions[i]]
                        + [repr(float(v)) for v in self.true_positions[i]]
                        + [int(i in self.empty_tiles)]
                    )
        else:
            raise TilefuseError(f"{path}: ground truth files end in .json or .csv")
        os.replace(tmp, path)
        return path


def load_truth(path: str | os.PathLike) -> dict:
    """Read a file written by :meth:`Mosaic.save_truth`.

    Returns
    -------
    dict
        ``tile`` (int array), ``stage_positions`` and ``true_positions``
        (n_tiles x ndim, numpy order, world units), ``empty`` (bool array) and,
        for JSON files, ``params`` (pass to :func:`make_mosaic` to regenerate
        the tiles) and ``calibration``.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        doc = json.loads(path.read_text())
        tiles = doc.get("tiles")
        if not isinstance(tiles, list):
            raise ProjectFormatError(f"{path}: no 'tiles' list")
        return {
            "tile": np.array([t["tile"] for t in tiles], dtype=int),
            "stage_positions": np.array([t["stage_zyx"] for t in tiles], dtype=float),
            "true_positions": np.array([t["true_zyx"] for t in tiles], dtype=float),
            "empty": np.array([t.get("empty", False) for t in tiles], dtype=bool),
            "params": doc.get("params"),
            "calibration": np.array(doc.get("calibration_zyx"), dtype=float),
        }
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ProjectFormatError(f"{path}: no tiles")
    axes = [a for a in "zyx" if f"true_{a}" in rows[0]]
    if not axes:
        raise ProjectFormatError(f"{path}: no true_<axis> columns")
    try:
        return {
            "tile": np.array([int(r["tile"]) for r in rows]),
            "stage_positions": np.array([[float(r[f"stage_{a}"]) for a in axes] for r in rows]),
            "true_positions": np.array([[float(r[f"true_{a}"]) for a in axes] for r in rows]),
            "empty": np.array([bool(int(r.get("empty", 0) or 0)) for r in rows]),
        }
    except (KeyError, ValueError) as exc:
        raise ProjectFormatError(f"{path}: malformed ground-truth row ({exc})") from None


def _cast(values: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _per_axis(value, ndim: int, what: str) -> tuple[float, ...]:
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.shape != (ndim,):
        raise TilefuseError(f"{what} needs 1 or {ndim} values, got {value!r}")
    return tuple(float(v) for v in arr)


#: What a sample's tiles show: a procedural texture of blobs and lines, a photograph, or a periodic
#: lattice with a few distinct marks (:mod:`tilefuse.sample_periodic`).
TEXTURES = ("procedural", "photo", "periodic")


def make_mosaic(
    grid: Sequence[int] = (2, 3),
    tile_shape: Sequence[int] | None = None,
    overlap: float | Sequence[float] = 0.1,
    *,
    voxel_size: Sequence[float] | None = None,
    max_offset: float = 8.0,
    noise: bool = True,
    photons_per_count: float = 1.0,
    illumination: bool = True,
    empty_tiles: Iterable[int | Sequence[int]] = (),
    texture: str = "procedural",
    dtype=np.uint16,
    seed: int = 0,
    background: float | None = None,
    signal: float | None = None,
    photo_scale: float = 2.0,
    vignetting: float = 0.35,
) -> Mosaic:
    """Describe a synthetic tiled acquisition with known tile positions.

    Parameters
    ----------
    grid : sequence of int
        Tiles per axis: ``(rows, cols)`` for 2D or ``(nz, ny, nx)`` for 3D.
    tile_shape : sequence of int, optional
        Voxels per tile; default ``(512, 512)`` in 2D, ``(64, 256, 256)`` in 3D.
    overlap : float or sequence of float
        Nominal overlap fraction between neighbours along each axis.
    voxel_size : sequence of float, optional
        Physical spacing, numpy order; default ``(1, 1)`` / ``(3, 1, 1)``.
    max_offset : float
        Largest offset of a tile from its stage position per axis, in world
        units (finest voxels).  Each offset has magnitude in
        ``[max_offset / 4, max_offset]`` and a random sign; tile 0 has none.
    noise : bool
        Add Poisson noise.
    photons_per_count : float
        Photons per grey level: smaller is noisier.
    illumination : bool
        Apply per-tile vignetting (signal falls to ~65 % at the corners) and a
        random gain in [0.85, 1.15].
    empty_tiles : iterable of int or grid index
        Tiles showing only the background level (plus noise).
    texture : {"procedural", "photo", "periodic"}
        See the module notes.
    dtype : numpy dtype
        Output pixel type (integers are rounded and clipped).
    seed : int
        Seeds texture, offsets, illumination and noise.
    background, signal : float, optional
        Constant background and signal scale in grey levels; defaults 100 and
        2000 (10 and 150 for uint8).
    photo_scale : float
        World units per photo pixel for ``texture="photo"``.
    vignetting : float
        Depth of the vignetting when ``illumination`` is on (0: the random
        per-tile gain alone).

    Returns
    -------
    Mosaic
    """
    grid = tuple(int(g) for g in grid)
    ndim = len(grid)
    if ndim not in (2, 3) or any(g < 1 for g in grid):
        raise TilefuseError(f"grid must be 2 or 3 positive counts, got {grid}")
    if tile_shape is None:
        tile_shape = (512, 512) if ndim == 2 else (64, 256, 256)
    tile_shape = tuple(int(n) for n in tile_shape)
    if len(tile_shape) != ndim or any(n < 2 for n in tile_shape):
        raise TilefuseError(f"tile_shape {tile_shape} does not fit a {ndim}D grid {grid}")
    if voxel_size is None:
        voxel_size = (1.0, 1.0) if ndim == 2 else (3.0, 1.0, 1.0)
    voxel_size = _per_axis(voxel_size, ndim, "voxel_size")
    if min(voxel_size) <= 0:
        raise TilefuseError(f"voxel_size must be positive, got {voxel_size}")
    overlap = _per_axis(overlap, ndim, "overlap")
    if any(not 0 <= o < 1 for o in overlap):
        raise TilefuseError(f"overlap must be in [0, 1), got {overlap}")
    if texture not in TEXTURES:
        raise TilefuseError(f"texture must be one of {', '.join(TEXTURES)}, got {texture!r}")
    dtype = np.dtype(dtype)
    small = dtype.itemsize == 1
    if background is None:
        background = 10.0 if small else 100.0
    if signal is None:
        signal = 150.0 if small else 2000.0

    vs = np.asarray(voxel_size)
    calibration = vs / vs.min()
    step = np.asarray(tile_shape) * calibration * (1 - np.asarray(overlap))
    index = np.stack(np.unravel_index(np.arange(math.prod(grid)), grid), axis=1)
    stage = index * step

    rng = np.random.default_rng([int(seed), 0])
    magnitude = rng.uniform(0.25, 1.0, size=stage.shape) * float(max_offset)
    sign = rng.choice([-1.0, 1.0], size=stage.shape)
    offsets = magnitude * sign
    offsets[0] = 0.0  # the reference tile sits exactly at its stage position
    gains = rng.uniform(0.85, 1.15, size=len(stage))
    centres = (np.asarray(tile_shape[-2:]) - 1) / 2 + rng.uniform(
        -0.1, 0.1, size=(len(stage), 2)
    ) * np.asarray(tile_shape[-2:])

    empty = set()
    for e in empty_tiles:
        if np.ndim(e) == 0:
            k = int(e)
        else:
            k = int(np.ravel_multi_index(tuple(int(v) for v in e), grid))
        if not 0 <= k < len(stage):
            raise TilefuseError(f"empty tile {e!r} is outside the {grid} grid")
        empty.add(k)

    return Mosaic(
        grid=grid,
        tile_shape=tile_shape,
        voxel_size=voxel_size,
        overlap=overlap,
        stage_positions=stage,
        true_positions=stage + offsets,
        empty_tiles=frozenset(empty),
        texture=texture,
        dtype=dtype,
        seed=int(seed),
        noise=bool(noise),
        photons_per_count=float(photons_per_count),
        illumination=bool(illumination),
        background=float(background),
        signal=float(signal),
        photo_scale=float(photo_scale),
        max_offset=float(max_offset),
        vignetting=float(vignetting),
        _gains=gains,
        _vignette_centres=centres,
    )


# ----------------------------------------------------------------------------
# multi-angle light-sheet acquisitions
# ----------------------------------------------------------------------------
#: Rotation axis of the sample stage, ``(z, y, x)``: BigStitcher's ``<axis>0 1 0</axis>``.
STAGE_AXIS = (0.0, 1.0, 0.0)
#: Value-noise octaves of the multi-view tissue (lattice spacing in world units, amplitude):
#: coarse only, so that the PSF (a few world units) does not change them.
_TISSUE_OCTAVES = ((48.0, 1.0), (16.0, 0.5))
#: Nuclei: one candidate per lattice cell of this size (world units), radius range.
_NUCLEUS_CELL = 14.0
_NUCLEUS_SIGMA = (2.0, 3.5)


def rotation_about_axis(axis: Sequence[float], degrees: float) -> np.ndarray:
    """BigStitcher's ``Rotation around axis (..) by .. degrees`` as a 4x4 ``zyx`` matrix.

    ``axis`` is ``(z, y, x)``.  BigStitcher writes the transpose of the
    right-handed rotation (the real 7-angle project in
    ``bigstitcher_examples/rhapso_filemap2_7angles_2tp.xml``: about x by 90
    degrees, ``y' = z`` and ``z' = -y``); so do we.
    """
    from scipy.spatial.transform import Rotation

    axis_xyz = np.asarray(axis, dtype=np.float64)[::-1]
    axis_xyz = axis_xyz / np.linalg.norm(axis_xyz)
    r_xyz = Rotation.from_rotvec(-np.deg2rad(degrees) * axis_xyz).as_matrix()
    m = np.eye(4)
    m[:3, :3] = r_xyz[::-1, ::-1]  # xyz -> zyx: reverse rows and columns
    return m


def rotation_name(axis: Sequence[float], degrees: float) -> str:
    """The ViewTransform name BigStitcher gives a rotation about ``axis`` (``(z, y, x)``)."""
    x, y, z = (float(v) for v in list(axis)[::-1])
    return f"Rotation around axis ({x}, {y}, {z}) by {float(degrees)} degrees"


def _translation(t) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def _gauss_splat(out: np.ndarray, centre, sigma, amp: float, z0: int = 0) -> None:
    """Add ``amp * exp(-|v - centre|^2 / 2 sigma^2)`` (separable, per-axis sigma in voxels) to ``out``.

    ``out`` holds planes ``z0 .. z0 + len(out)`` of the volume; the Gaussian
    is cut at 4 sigma.
    """
    lo, hi, profiles = [], [], []
    offsets = (z0, 0, 0)
    for d in range(3):
        a = max(int(math.floor(centre[d] - 4 * sigma[d])), offsets[d])
        b = min(int(math.ceil(centre[d] + 4 * sigma[d])) + 1, offsets[d] + out.shape[d])
        if b <= a:
            return
        x = np.arange(a, b, dtype=np.float64)
        profiles.append(np.exp(-0.5 * ((x - centre[d]) / sigma[d]) ** 2))
        lo.append(a - offsets[d])
        hi.append(b - offsets[d])
    block = amp * profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += block


@dataclass(eq=False)
class MultiView:
    """Views of one synthetic sample taken at several angles about the y axis, with known truth.

    Build it with :func:`make_multiview`.  View ``i`` shows angle
    ``view_angle[i]`` and tile ``view_tile[i]`` (angle-major); its pixels are
    generated on demand by :meth:`view`.  All transforms are 4x4 ``zyx``
    matrices from the view's voxels to world units (the finest voxel).

    Attributes
    ----------
    angles : tuple of float
        Rotation of each angle about y, degrees.
    grid : (int, int)
        Tiles per angle along the view's y and x.
    tile_shape : (int, int, int)
        Voxels per view, ``(z, y, x)``; z is the detection axis.
    voxel_size : (float, float, float)
        Physical voxel size (anisotropic z).
    nominal : (n_views, 4, 4) ndarray
        What the stage reports (written to the XML): rotation about y, the
        tile's place, calibration.
    true : (n_views, 4, 4) ndarray
        Where the views really are: ``nominal`` after a rigid error (a
        rotation per angle about the view's centre, a translation per view;
        view 0 has none).
    beads : (n_beads, 3) ndarray
        World positions of the sub-resolution beads.
    psf_sigma : (float, float)
        Gaussian PSF sigma along the detection axis and across it, world units.
    """

    angles: tuple[float, ...]
    grid: tuple[int, int]
    tile_shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    overlap: float
    nominal: np.ndarray
    true: np.ndarray
    beads: np.ndarray
    nuclei: np.ndarray = field(repr=False, default=None)
    nucleus_sigma: np.ndarray = field(repr=False, default=None)
    tissue_axes: np.ndarray = field(repr=False, default=None)
    psf_sigma: tuple[float, float] = (3.0, 1.0)
    max_offset: float = 6.0
    max_rotation: float = 1.0
    empty_views: frozenset[int] = frozenset()
    dtype: np.dtype = np.dtype("uint16")
    seed: int = 0
    noise: bool = True
    background: float = 100.0
    signal: float = 600.0
    bead_signal: float = 3000.0

    @property
    def ndim(self) -> int:
        return 3

    @property
    def n_views(self) -> int:
        return len(self.nominal)

    def __len__(self) -> int:
        return self.n_views

    @property
    def calibration(self) -> np.ndarray:
        """World units per voxel along each axis: ``voxel_size / min(voxel_size)``."""
        vs = np.asarray(self.voxel_size, dtype=float)
        return vs / vs.min()

    @property
    def view_angle(self) -> np.ndarray:
        """Angle index of every view."""
        return np.arange(self.n_views) // (self.grid[0] * self.grid[1])

    @property
    def view_tile(self) -> np.ndarray:
        """Tile index (within its angle) of every view."""
        return np.arange(self.n_views) % (self.grid[0] * self.grid[1])

    def tile_positions(self) -> np.ndarray:
        """Stage position of every tile of one angle (world units, the view frame before rotation)."""
        return _multiview_tiles(self.grid, self.tile_shape, self.calibration, self.overlap)

    def transform_chain(self, i: int) -> list[tuple[str, np.ndarray]]:
        """View ``i``'s nominal ViewTransforms in XML order, as BigStitcher names them."""
        degrees = self.angles[self.view_angle[i]]
        return [
            (rotation_name(STAGE_AXIS, degrees), rotation_about_axis(STAGE_AXIS, degrees)),
            ("Translation to Regular Grid", _translation(self.tile_positions()[self.view_tile[i]])),
            ("calibration", np.diag([*self.calibration, 1.0])),
        ]

    def bead_voxels(self, i: int, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Beads inside view ``i`` (``margin`` voxels in from its edges): indices and voxel coordinates.

        Coordinates are ``(z, y, x)`` voxels of the view under its true transform.
        """
        inv = np.linalg.inv(self.true[i])
        vox = self.beads @ inv[:3, :3].T + inv[:3, 3]
        hi = np.asarray(self.tile_shape) - 1 - margin
        keep = np.all((vox >= margin) & (vox <= hi), axis=1)
        return np.flatnonzero(keep), vox[keep]

    # -- pixels ---------------------------------------------------------------
    def _psf_voxels(self) -> np.ndarray:
        sz, sxy = self.psf_sigma
        return np.array([sz, sxy, sxy])

    def view(self, i: int, planes: slice | None = None) -> np.ndarray:
        """Generate the pixels of view ``i`` (or some of its z planes); deterministic for a given seed.

        Tissue (smooth density plus nuclei) and beads are evaluated at the
        view's voxel centres under its true transform; nuclei and beads are
        Gaussians convolved analytically with the PSF, which is elongated
        along the view's own z (the detection axis), so every angle blurs
        the sample differently.  Poisson noise, rounding to ``dtype``.
        """
        i = int(i)
        if not 0 <= i < self.n_views:
            raise IndexError(f"view {i} out of range for {self.n_views} views")
        nz = self.tile_shape[0]
        planes = slice(0, nz) if planes is None else planes
        z0, z1 = max(0, planes.start or 0), min(nz, nz if planes.stop is None else planes.stop)
        shape = (max(0, z1 - z0),) + tuple(self.tile_shape[1:])
        expected = np.full(shape, self.background, dtype=np.float64)
        if i not in self.empty_views and shape[0]:
            expected += self.signal * self._tissue(i, z0, shape)
            inv = np.linalg.inv(self.true[i])
            cal = self.calibration
            psf = self._psf_voxels()
            # a bead or nucleus convolved with the PSF: Gaussian sigma^2 = s^2 + psf^2 per view axis
            for centre, s, amp in self._blobs(i):
                v = inv[:3, :3] @ centre + inv[:3, 3]
                sigma = np.sqrt(s**2 + psf**2)
                # a nucleus keeps its integrated intensity (its peak falls as the PSF spreads
                # it); a bead's image is the PSF itself, with peak ``bead_signal``
                peak = amp if s == 0 else amp * s**3 / np.prod(sigma)
                _gauss_splat(expected, v, sigma / cal, peak, z0)
        if self.noise:
            rng = np.random.default_rng([int(self.seed), i, z0, 2])
            expected = rng.poisson(np.maximum(expected, 0)).astype(np.float64)
        return _cast(expected, self.dtype)

    def _blobs(self, i: int):
        """(world centre, sigma, amplitude) of the nuclei and beads near view ``i``."""
        lo, hi = self.view_box(i)
        reach = 5 * (max(self.psf_sigma) + _NUCLEUS_SIGMA[1])
        for pts, sig, amp in ((self.nuclei, self.nucleus_sigma, self.signal), (self.beads, None, self.bead_signal)):
            near = np.all((pts >= lo - reach) & (pts <= hi + reach), axis=1)
            for k in np.flatnonzero(near):
                yield pts[k], (0.0 if sig is None else float(sig[k])), amp

    def _tissue(self, i: int, z0: int, shape) -> np.ndarray:
        """Smooth tissue density in [0, ~1] inside an ellipsoid, at the voxels of view ``i``."""
        from scipy.ndimage import map_coordinates

        # The density varies over >= 16 world units: evaluate it every ~4 and interpolate linearly.
        step = np.maximum(1, np.floor(4.0 / self.calibration)).astype(int)
        first = [(a // s) * s for a, s in zip((z0, 0, 0), step)]  # nodes on multiples of the step:
        # every block of planes interpolates the same nodes
        axes = [np.arange(f, a + n + s, s, dtype=np.float64)[: (a + n - 1 - f) // s + 2]
                for f, a, n, s in zip(first, (z0, 0, 0), shape, step)]
        coarse_shape = tuple(len(a) for a in axes)
        grid = np.meshgrid(*axes, indexing="ij")
        vox = np.stack([g.ravel() for g in grid])
        world = self.true[i][:3, :3] @ vox + self.true[i][:3, 3:4]
        total = np.zeros(world.shape[1])
        for k, (spacing, amp) in enumerate(_TISSUE_OCTAVES):
            u = world / spacing
            lo = np.floor(u.min(axis=1)).astype(np.int64) - 2
            hi = np.floor(u.max(axis=1)).astype(np.int64) + 3
            nodes = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
            lattice = 2.0 * _hash_uniform(self.seed + 501 + 101 * k, np.ix_(*nodes)) - 1.0
            total += amp * map_coordinates(lattice, u - lo[:, None], order=3, prefilter=False, mode="nearest")
        density = np.clip(0.55 + total / 1.2, 0.05, 1.0)
        r = np.sqrt(np.sum((world / self.tissue_axes[:, None]) ** 2, axis=0))
        density *= 0.5 * (1.0 - np.tanh((r - 1.0) * 8.0))  # a soft edge, ~1/8 of the radius
        fine = np.meshgrid(*[(np.arange(n) + a - f) / s for n, a, f, s in zip(shape, (z0, 0, 0), first, step)],
                           indexing="ij", sparse=True)
        fine = np.broadcast_arrays(*fine)
        return map_coordinates(density.reshape(coarse_shape), fine, order=1, mode="nearest")

    def view_box(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """World bounding box of view ``i``'s voxel centres under its true transform."""
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in self.tile_shape], indexing="ij")).reshape(3, -1)
        world = self.true[i][:3, :3] @ corners + self.true[i][:3, 3:4]
        return world.min(axis=1), world.max(axis=1)

    def view_dask(self, i: int):
        """View ``i`` as a dask array generated when computed, one block of z planes at a time."""
        import dask
        import dask.array as da

        nz, ny, nx = self.tile_shape
        step = max(1, (1 << 22) // (ny * nx))  # ~4 M voxels per block: streamed, bounded memory
        blocks = [da.from_delayed(dask.delayed(self.view, pure=True)(int(i), slice(z, min(nz, z + step))),
                                  shape=(min(nz, z + step) - z, ny, nx), dtype=self.dtype)
                  for z in range(0, nz, step)]
        return da.concatenate(blocks, axis=0)

    # -- ground truth files -----------------------------------------------------
    def params(self) -> dict:
        """The :func:`make_multiview` arguments that regenerate this acquisition."""
        return {"angles": list(self.angles), "grid": list(self.grid), "tile_shape": list(self.tile_shape),
                "voxel_size": list(self.voxel_size), "overlap": self.overlap, "n_beads": len(self.beads),
                "psf_sigma": list(self.psf_sigma), "max_offset": self.max_offset,
                "max_rotation": self.max_rotation, "empty_views": sorted(self.empty_views),
                "dtype": np.dtype(self.dtype).name, "seed": self.seed, "noise": self.noise,
                "background": self.background, "signal": self.signal, "bead_signal": self.bead_signal}

    def save_truth(self, path: str | os.PathLike, setups: Sequence[int] | None = None) -> Path:
        """Write the transforms and bead positions for scoring (JSON, under a temporary name then renamed).

        ``setups`` are the ViewSetup ids of the views in the project (default
        ``0 .. n_views - 1``).  Matrices are 4x4 ``zyx``, view voxel -> world
        (finest voxel); bead positions are world ``zyx``.
        """
        path = Path(path)
        setups = list(range(self.n_views)) if setups is None else [int(s) for s in setups]
        views = []
        for i in range(self.n_views):
            err = self.true[i] @ np.linalg.inv(self.nominal[i])
            angle = float(np.degrees(np.arccos(np.clip((np.trace(err[:3, :3]) - 1) / 2, -1, 1))))
            views.append({
                "view": i, "setup": setups[i], "timepoint": 0, "angle": int(self.view_angle[i]),
                "degrees": float(self.angles[self.view_angle[i]]), "tile": int(self.view_tile[i]),
                "nominal_zyx": self.nominal[i].tolist(), "true_zyx": self.true[i].tolist(),
                "error_rotation_degrees": angle, "empty": i in self.empty_views,
            })
        doc = {
            "format": "tilefuse-multiview-truth/1",
            "units": "world units = finest voxel spacing; matrices map view voxels (z, y, x, 1) to world",
            "calibration_zyx": [float(v) for v in self.calibration],
            "voxel_size_zyx": [float(v) for v in self.voxel_size],
            "params": self.params(),
            "views": views,
            "beads_zyx": self.beads.tolist(),
        }
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
        return path


def load_multiview_truth(path: str | os.PathLike) -> dict:
    """Read a file written by :meth:`MultiView.save_truth`.

    Returns
    -------
    dict
        ``setup``, ``timepoint``, ``angle``, ``tile`` (int arrays per view),
        ``degrees`` (float array), ``nominal`` and ``true`` ((n_views, 4, 4)
        ``zyx`` matrices), ``beads`` ((n, 3) world ``zyx``), ``calibration``
        and ``params``.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        views = doc["views"]
        return {
            "setup": np.array([v["setup"] for v in views], dtype=int),
            "timepoint": np.array([v["timepoint"] for v in views], dtype=int),
            "angle": np.array([v["angle"] for v in views], dtype=int),
            "tile": np.array([v["tile"] for v in views], dtype=int),
            "degrees": np.array([v["degrees"] for v in views], dtype=float),
            "nominal": np.array([v["nominal_zyx"] for v in views], dtype=float).reshape(-1, 4, 4),
            "true": np.array([v["true_zyx"] for v in views], dtype=float).reshape(-1, 4, 4),
            "beads": np.array(doc["beads_zyx"], dtype=float).reshape(-1, 3),
            "calibration": np.array(doc["calibration_zyx"], dtype=float),
            "params": doc.get("params"),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ProjectFormatError(f"{path}: not a multi-view truth file ({exc})") from None


def _multiview_tiles(grid, tile_shape, calibration, overlap) -> np.ndarray:
    """Stage positions of one angle's tiles (world ``zyx``), centred on the rotation axis."""
    extent = (np.asarray(tile_shape) - 1) * calibration
    step = np.asarray(tile_shape[1:]) * calibration[1:] * (1 - overlap)
    pos = []
    for iy in range(grid[0]):
        for ix in range(grid[1]):
            yx = np.array([iy, ix]) * step
            total = (np.asarray(grid) - 1) * step + extent[1:]
            pos.append([-extent[0] / 2, *(yx - total / 2)])
    return np.array(pos)


def make_multiview(
    angles: int | Sequence[float] = 4,
    grid: Sequence[int] = (1, 1),
    tile_shape: Sequence[int] = (48, 160, 160),
    overlap: float = 0.15,
    *,
    voxel_size: Sequence[float] = (3.0, 1.0, 1.0),
    n_beads: int | None = None,
    psf_sigma: Sequence[float] = (3.0, 1.0),
    max_offset: float = 6.0,
    max_rotation: float = 1.0,
    empty_views: Iterable[int] = (),
    noise: bool = True,
    dtype=np.uint16,
    seed: int = 0,
    background: float = 100.0,
    signal: float = 600.0,
    bead_signal: float = 3000.0,
) -> MultiView:
    """Describe a multi-angle light-sheet acquisition of a synthetic sample with beads.

    The sample - tissue (a smooth density and nuclei inside an ellipsoid)
    with sub-resolution beads in and around it - sits at the world origin on
    the stage's rotation axis (y).  Each angle images it with the same tiles;
    the stage's transforms (``nominal``) are off from the true ones by a
    rotation per angle and a translation per view, both of known size.

    Parameters
    ----------
    angles : int or sequence of float
        Number of angles spread over 180 degrees (4: 0, 45, 90, 135) or the
        angles themselves, degrees about y.
    grid : (int, int)
        Tiles per angle along y and x.
    tile_shape : (int, int, int)
        Voxels per view ``(z, y, x)``.
    overlap : float
        Overlap of neighbouring tiles of one angle, a fraction of the tile.
    voxel_size : (float, float, float)
        Physical voxel size; z coarser than x and y as in light-sheet stacks.
    n_beads : int, optional
        Number of beads; default about one per 24^3 world units of the
        imaged cylinder.
    psf_sigma : (float, float)
        Gaussian PSF sigma along the detection axis (each view's z) and
        across it, world units (finest voxels).
    max_offset : float
        Largest translation error per axis, world units; each has magnitude
        in ``[max_offset / 4, max_offset]`` and a random sign (view 0: none).
    max_rotation : float
        Largest rotation error of an angle, degrees, about a random axis
        through each view's centre; magnitude in ``[max_rotation / 4,
        max_rotation]`` (angle 0: none).
    empty_views : iterable of int
        Views showing only the background (plus noise).
    noise : bool
        Add Poisson noise.
    dtype : numpy dtype
        Pixel type (integers are rounded and clipped).
    seed : int
        Seeds sample, errors and noise.
    background, signal, bead_signal : float
        Constant background, tissue and bead brightness in grey levels.

    Returns
    -------
    MultiView
    """
    if np.ndim(angles) == 0:
        count = int(angles)
        if count < 1:
            raise TilefuseError(f"angles must be at least 1, got {angles!r}")
        angles = tuple(180.0 * k / count for k in range(count))
    angles = tuple(float(a) for a in angles)
    grid = tuple(int(g) for g in grid)
    tile_shape = tuple(int(n) for n in tile_shape)
    if len(grid) != 2 or min(grid) < 1:
        raise TilefuseError(f"grid must be 2 positive counts (tiles along y, x per angle), got {grid}")
    if len(tile_shape) != 3 or min(tile_shape) < 4:
        raise TilefuseError(f"tile_shape must be 3 sizes of at least 4 voxels, got {tile_shape}")
    voxel_size = _per_axis(voxel_size, 3, "voxel_size")
    if min(voxel_size) <= 0:
        raise TilefuseError(f"voxel_size must be positive, got {voxel_size}")
    if not 0 <= overlap < 1:
        raise TilefuseError(f"overlap must be in [0, 1), got {overlap}")
    psf_sigma = tuple(float(s) for s in psf_sigma)
    if len(psf_sigma) != 2 or min(psf_sigma) <= 0:
        raise TilefuseError(f"psf_sigma must be 2 positive widths (detection axis, across), got {psf_sigma}")
    vs = np.asarray(voxel_size)
    cal = vs / vs.min()
    tiles = _multiview_tiles(grid, tile_shape, cal, overlap)
    extent = (np.asarray(tile_shape) - 1) * cal
    span_x = tiles[:, 2].max() - tiles[:, 2].min() + extent[2]
    span_y = tiles[:, 1].max() - tiles[:, 1].min() + extent[1]
    radius = 0.5 * min(extent[0], span_x)  # every angle sees this cylinder about y

    rng = np.random.default_rng([int(seed), 10])
    n_views = len(angles) * len(tiles)
    nominal = np.empty((n_views, 4, 4))
    true = np.empty((n_views, 4, 4))
    centre_vox = np.append((np.asarray(tile_shape) - 1) / 2, 1.0)
    rot_errors = []
    for a in range(len(angles)):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        mag = 0.0 if a == 0 else rng.uniform(0.25, 1.0) * float(max_rotation)
        rot_errors.append(rotation_about_axis(axis, mag))
    for i in range(n_views):
        a, t = divmod(i, len(tiles))
        nominal[i] = rotation_about_axis(STAGE_AXIS, angles[a]) @ _translation(tiles[t]) @ np.diag([*cal, 1.0])
        q = (nominal[i] @ centre_vox)[:3]
        shift = rng.uniform(0.25, 1.0, 3) * float(max_offset) * rng.choice([-1.0, 1.0], 3)
        if i == 0:
            shift = np.zeros(3)
        true[i] = _translation(q + shift) @ rot_errors[a] @ _translation(-q) @ nominal[i]

    # beads: uniform in the cylinder every angle sees, kept off its very edge
    volume = math.pi * radius**2 * span_y
    count = int(round(volume / 24.0**3)) if n_beads is None else int(n_beads)
    brng = np.random.default_rng([int(seed), 11])
    r = 0.9 * radius * np.sqrt(brng.uniform(0, 1, count))
    phi = brng.uniform(0, 2 * math.pi, count)
    beads = np.column_stack([r * np.cos(phi), brng.uniform(-0.45, 0.45, count) * span_y, r * np.sin(phi)])
    # tissue: an ellipsoid inside the cylinder, nuclei on a jittered lattice within it
    axes = np.array([0.8 * radius, 0.42 * span_y, 0.65 * radius])
    cell = _NUCLEUS_CELL
    ranges = [np.arange(math.floor(-h / cell), math.floor(h / cell) + 1) for h in axes]
    idx = np.stack([g.ravel() for g in np.meshgrid(*ranges, indexing="ij")], axis=1)
    nrng = np.random.default_rng([int(seed), 12])
    centres = (idx + nrng.uniform(0, 1, idx.shape)) * cell
    keep = (np.sum((centres / axes) ** 2, axis=1) < 0.85) & (nrng.uniform(0, 1, len(centres)) < 0.7)
    nuclei = centres[keep]
    sig = nrng.uniform(*_NUCLEUS_SIGMA, len(centres))[keep]

    dtype = np.dtype(dtype)
    empty = frozenset(int(e) for e in empty_views)
    if any(not 0 <= e < n_views for e in empty):
        raise TilefuseError(f"empty views {sorted(empty)} are outside 0..{n_views - 1}")
    return MultiView(
        angles=angles, grid=grid, tile_shape=tile_shape, voxel_size=voxel_size, overlap=float(overlap),
        nominal=nominal, true=true, beads=beads, nuclei=nuclei, nucleus_sigma=sig, tissue_axes=axes,
        psf_sigma=psf_sigma, max_offset=float(max_offset), max_rotation=float(max_rotation),
        empty_views=empty, dtype=dtype, seed=int(seed), noise=bool(noise), background=float(background),
        signal=float(signal), bead_signal=float(bead_signal),
    )
