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

__all__ = ["Mosaic", "make_mosaic", "load_truth", "TEXTURES"]

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


#: What a sample's tiles show: a procedural texture of blobs and lines, or a photograph.
TEXTURES = ("procedural", "photo")


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
    texture : {"procedural", "photo"}
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
        raise TilefuseError(f"texture must be 'procedural' or 'photo', got {texture!r}")
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
