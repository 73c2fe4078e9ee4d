"""Chunk-by-chunk fusion of transformed views into one dask array.

The output is a regular grid: voxel ``i`` (numpy order) sits at world
``origin + i * spacing``.  Output chunks drive the graph (like dask-image's
``affine_transform``): for every chunk, one vectorised box test picks the
views whose world footprint meets it, and one task fuses only those.  A task
holds the chunk's grid and the few :class:`FusionSource` records it needs —
never the full list of views, never pixels.  When it runs, each view's
``reader`` reads only the region the chunk back-projects onto (plus one voxel
of interpolation reach), which is resampled onto the chunk and blended:

    fused = sum_i w_i * I_i / sum_i w_i      (where sum_i w_i > 0, else fill_value)

accumulated in float32.  Blending modes:

``"cosine"``
    BigStitcher's weights (:mod:`tilefuse.fusion.blending`); range and border
    are world units, converted per view and axis into its voxels.
``"average"``
    ``w = 1`` wherever a view has data.
``"max"``
    the maximum over the views that have data.
``"first"``
    the first view, in the order given, that has data.

Edge voxels.  BigStitcher's cosine weight is exactly 0 on a view's outermost
voxel centres, so a voxel that only one view covers, at that view's very edge,
would come out as ``fill_value``.  We floor each axis's profile at
:data:`EDGE_WEIGHT`, so every sample inside a view weighs at least
``EDGE_WEIGHT ** ndim`` (> 0 in float32): where other views have real weight
it changes the result by less than float32 rounding, and where the view is
alone its value is kept.  The same floor makes ``blend_border > 0``
*de-weight* border voxels rather than punch holes where no other view covers
them.  Flooring per axis, not the product, keeps the weights separable, so
the fast paths for translated and axis-aligned scaled views fold them into
their interpolation taps (:func:`~tilefuse.fusion.resample.resample_shift`,
:func:`~tilefuse.fusion.resample.resample_diagonal`) instead of building and
multiplying a chunk-sized weight array.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from scipy import ndimage

from .._numeric import cast_to_dtype
from ..errors import FusionError, ImageDataError, UnsupportedFormatError
from .blending import adjust_blending, cosine_profile, cosine_profiles, cosine_weights
from .resample import (
    INSIDE_TOL,
    grid_affine,
    inside_box,
    inside_mask,
    is_diagonal,
    resample,
    resample_diagonal,
    resample_shift,
    source_coordinates,
    source_region,
    split_affine,
)

__all__ = [
    "FusionSource",
    "output_chunks",
    "fuse_sources",
    "source_world_boxes",
    "plan_chunks",
    "cast_to_dtype",
    "BLENDING_MODES",
    "INTERPOLATIONS",
    "EDGE_WEIGHT",
]

BLENDING_MODES = ("cosine", "average", "max", "first")
INTERPOLATIONS = {"nearest": 0, "linear": 1}

#: Least weight of a sample inside a view (see the module notes).
EDGE_WEIGHT = 1e-6

#: Voxels per slab of the translation fast path (float32: 2 MiB per temporary).
_SLAB_VOXELS = 2**19

#: Translated views go through the compiled :func:`~tilefuse.fusion.shift.blend_shifted`
#: (False: the numpy slabs below, kept for content-based weights and other dimensions).
_COMPILED_SHIFT = True

#: Output types normalised by the compiled :func:`~tilefuse.fusion.shift.normalise_cast`
#: (its NORMALISE_DTYPES; repeated so that choosing does not import numba).
_COMPILED_NORMALISE = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

#: Default chunk budget when ``chunks`` is not given (float32 voxels).
_DEFAULT_CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True, eq=False)
class FusionSource:
    """One view to fuse.

    Attributes
    ----------
    key : hashable
        Identifies the view in messages (e.g. a ``ViewId``).
    shape : tuple of int
        Voxel shape, numpy order; same number of axes as the output.
    affine : ndarray
        ``(ndim+1, ndim+1)`` homogeneous matrix, voxel -> world (numpy order).
    reader : callable
        ``reader(region)`` returns the pixels of a tuple of slices (step 1,
        inside ``shape``).  Must pickle cheaply for distributed schedulers.
    intensity : (float, float)
        Intensity correction ``a * I + b`` applied before blending.
    dtype : numpy dtype, optional
        The view's pixel type; picks the default output dtype without reading.
    content : callable, optional
        For content-based fusion: ``content()`` returns ``(weights, matrix)``,
        a small float array of weights in ``[0, 1]`` and the homogeneous
        matrix from its voxels to this view's voxels
        (:mod:`tilefuse.fusion.content`).  Called once per view, in its own
        task; cosine and average blending multiply their weights by it.
    """

    key: Hashable
    shape: tuple[int, ...]
    affine: np.ndarray
    reader: Callable[[tuple[slice, ...]], np.ndarray]
    intensity: tuple[float, float] = (1.0, 0.0)
    dtype: Any = field(default=None)
    content: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if any(n < 1 for n in shape):
            raise FusionError(f"{self.key}: view shape {shape} has an empty axis")
        affine = np.array(self.affine, dtype=np.float64)
        nd = len(shape)
        if affine.shape != (nd + 1, nd + 1):
            raise FusionError(
                f"{self.key}: affine has shape {affine.shape}, expected {(nd + 1, nd + 1)} for a {nd}D view"
            )
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:-1, :-1])) < 1e-12:
            raise FusionError(f"{self.key}: affine is not finite and invertible:\n{affine}")
        a, b = (float(v) for v in self.intensity)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "intensity", (a, b))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", np.dtype(self.dtype))


# --------------------------------------------------------------------------
# planning: which sources meet which chunk


def source_world_boxes(sources: Sequence[FusionSource]) -> tuple[np.ndarray, np.ndarray]:
    """World bounding boxes of every view's voxel *footprint*, as ``(n, ndim)`` arrays.

    The footprint ``[-0.5, n - 0.5]`` contains every point where the view can
    be sampled (``[0, n-1]``, and ``+-0.5`` around a singleton axis), so it is
    the interpolation reach already dilated for both linear and nearest.
    """
    if not sources:
        return np.zeros((0, 0)), np.zeros((0, 0))
    nd = len(sources[0].shape)
    corners01 = np.array(np.meshgrid(*[[0.0, 1.0]] * nd, indexing="ij")).reshape(nd, -1).T  # (2**nd, nd)
    shapes = np.array([s.shape for s in sources], dtype=np.float64)  # (n, nd)
    affines = np.stack([s.affine for s in sources])  # (n, nd+1, nd+1)
    # voxel corners per view: -0.5 + c * n   -> (n, 2**nd, nd)
    vox = -0.5 + corners01[None, :, :] * shapes[:, None, :]
    world = np.einsum("nij,nkj->nki", affines[:, :-1, :-1], vox) + affines[:, None, :-1, -1]
    los, his = world.min(axis=1), world.max(axis=1)
    slack = 1e-9 * (1.0 + np.maximum(np.abs(los), np.abs(his)))
    return los - slack, his + slack


def plan_chunks(
    los: np.ndarray, his: np.ndarray, chunks: tuple[tuple[int, ...], ...], origin, spacing
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """For every output chunk, the indices (ascending) of the boxes it meets.

    Boxes ``[los[i], his[i]]`` are tested against each chunk's world box (its
    voxel centres ``origin + [start, stop-1] * spacing``).  Overlap along one
    axis depends only on that axis's chunk index, so we precompute one
    ``(n_chunks_d, n_boxes)`` table per axis and walk the chunk grid axis by
    axis, filtering the surviving candidates: the work is proportional to the
    number of (chunk, candidate) pairs that survive, not chunks x boxes.

    Yields
    ------
    index : tuple of int
        Chunk index in the dask grid.
    sources : int ndarray
        Box indices meeting that chunk, in input order.
    """
    nd = len(chunks)
    origin = np.asarray(origin, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    tables = []
    for d in range(nd):
        stops = np.cumsum(chunks[d])
        starts = stops - np.asarray(chunks[d])
        lo = origin[d] + starts * spacing[d]
        hi = origin[d] + (stops - 1) * spacing[d]
        if los.shape[0]:
            tables.append((los[None, :, d] <= hi[:, None]) & (his[None, :, d] >= lo[:, None]))
        else:
            tables.append(np.zeros((len(chunks[d]), 0), dtype=bool))

    def walk(d: int, prefix: tuple[int, ...], cand: np.ndarray):
        for c in range(len(chunks[d])):
            sub = cand[tables[d][c, cand]]
            if d == nd - 1:
                yield prefix + (c,), sub
            else:
                yield from walk(d + 1, prefix + (c,), sub)

    yield from walk(0, (), np.arange(los.shape[0]))


# --------------------------------------------------------------------------
# one chunk


class _ChunkJob:
    """Everything one task needs.  A plain class so dask does not traverse it."""

    __slots__ = ("out_affine", "out_shape", "items", "mode", "order", "fill_value", "dtype", "fast", "shifted")

    def __init__(self, out_affine, out_shape, items, mode, order, fill_value, dtype, fast, shifted=None):
        self.out_affine = out_affine
        self.out_shape = out_shape
        self.items = items  # tuple of (FusionSource, inverse affine, range_vox, border_vox)
        self.mode = mode
        self.order = order
        self.fill_value = fill_value
        self.dtype = dtype
        self.fast = fast
        # When every view only translates (cosine/average, compiled): the items' inverse affines, shapes,
        # ramps, borders and intensities stacked, for the one-call path (_fuse_shifted_chunk); else None.
        self.shifted = shifted

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)


def _read(src: FusionSource, region: tuple[slice, ...]) -> np.ndarray:
    data = np.asarray(src.reader(region))
    expected = tuple(s.stop - s.start for s in region)
    if data.shape != expected:
        raise ImageDataError(
            f"{src.key}: reader returned shape {data.shape} for region {region}, expected {expected}"
        )
    return data


def _sample_view(job: _ChunkJob, src: FusionSource, inv: np.ndarray):
    """Sample one view on the chunk grid.

    Returns ``(box, values, coords, valid)`` or ``None`` if the view has no
    sample in the chunk.  ``box`` is the part of the chunk the other three
    refer to.  Without rotation (diagonal ``L``, the common case) the inside
    region is a box, so only that box is resampled and ``valid`` is ``None``
    (all inside); otherwise ``box`` is the whole chunk and ``valid`` a mask.
    """
    m = inv @ job.out_affine  # chunk voxel -> view voxel
    shape = job.out_shape
    diagonal = is_diagonal(m)
    if diagonal:
        box = inside_box(m, shape, src.shape)
        if box is None:
            return None
        m = m @ grid_affine(np.zeros(len(shape)), 1.0, [b.start for b in box])
        shape = tuple(b.stop - b.start for b in box)
    else:
        box = tuple(slice(0, n) for n in shape)
    region = source_region(m, shape, src.shape, job.order)
    if region is None:
        return None
    crop = _read(src, region)
    values = resample(crop, [r.start for r in region], m, shape, job.order, fast=job.fast)
    coords = source_coordinates(m, shape)
    valid = None
    if not diagonal:
        valid = np.broadcast_to(inside_mask(coords, src.shape), shape)
        if not valid.any():
            return None
    a, b = src.intensity
    if (a, b) != (1.0, 0.0):
        values *= np.float32(a)
        values += np.float32(b)
    return box, values, coords, valid


def _content_task(content: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    weights, matrix = content()
    return np.asarray(weights, dtype=np.float32), np.asarray(matrix, dtype=np.float64)


def _content_on_grid(content, m: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Content weights (floored at EDGE_WEIGHT) at the voxels of a grid mapped to the view by ``m``."""
    weights, to_view = content
    mw = np.linalg.inv(to_view) @ m  # grid voxel -> weights voxel
    if is_diagonal(mw):
        lin, offset = split_affine(mw)
        c = resample_diagonal(weights, np.zeros(weights.ndim), np.diag(lin), offset, shape, 1)
    else:
        coords = np.array(np.broadcast_arrays(*source_coordinates(mw, shape)))
        c = ndimage.map_coordinates(weights, coords, order=1, mode="nearest", output=np.float32)
    return np.maximum(c, np.float32(EDGE_WEIGHT))


def _blend_separable_view(job: _ChunkJob, src: FusionSource, m: np.ndarray, range_vox, border_vox,
                          num: np.ndarray, den: np.ndarray, content=None) -> None:
    """Cosine/average blending of a view that only translates or scales along the chunk's axes.

    With a diagonal ``m`` (chunk voxel -> view voxel) the inside region is a
    box, the weights are a product of per-axis profiles, and both are folded
    into the separable taps of :func:`resample_shift` (translation) or
    :func:`resample_diagonal` (scaling): ``num[box] += w * I`` and
    ``den[box] += w`` with no chunk-sized coordinate or weight arrays beyond
    ``w`` itself.
    """
    box = inside_box(m, job.out_shape, src.shape)
    if box is None:
        return
    nd = len(job.out_shape)
    shape = tuple(b.stop - b.start for b in box)
    lin, offset = split_affine(m)
    scale = np.diag(lin).copy()
    offset = offset + scale * np.array([b.start for b in box], dtype=np.float64)
    m = np.diag(np.append(scale, 1.0))  # box voxel -> view voxel
    m[:-1, -1] = offset
    region = source_region(m, shape, src.shape, job.order)
    if region is None:
        return
    shift_only = bool(np.allclose(scale, 1.0, rtol=0.0, atol=1e-9))  # as resample.is_shift
    profiles = []
    for d, n in enumerate(shape):
        if job.mode == "average" or src.shape[d] == 1:
            profiles.append(None)
            continue
        coords = scale[d] * np.arange(n, dtype=np.float64) + offset[d]
        p = cosine_profile(coords, src.shape[d], float(range_vox[d]), float(border_vox[d]))
        profiles.append(np.maximum(p, np.float32(EDGE_WEIGHT)))
    crop = _read(src, region)
    crop_start = np.array([r.start for r in region])
    a, b = src.intensity
    if _COMPILED_SHIFT and shift_only and content is None and nd in (2, 3):
        from .shift import blend_shifted  # compiled with numba: imported when first needed

        # One compiled pass: interpolation, weight and both sums, nothing chunk-sized in
        # between (the numpy slabs below cost 2.4x more on the 3D benchmark's chunks).
        blend_shifted(crop, crop_start, offset, num, den, box=box, order=job.order, profiles=profiles,
                      intensity=(a, b))
        return
    # Cross-section weight (all axes but the first), shared by every slab.
    plane_weight = np.ones((1,) * (nd - 1), dtype=np.float32)
    for d, p in enumerate(profiles[1:], start=1):
        if p is not None:
            plane_weight = plane_weight * p.reshape((-1,) + (1,) * (nd - d - 1))
    num_box, den_box = num[box], den[box]
    # Slabs along the first axis keep every temporary of the separable passes
    # small enough to stay in cache and be reused by the allocator, instead of
    # chunk-sized arrays that each cost fresh pages.  Measured on 20 chunks
    # (128x256x256) of the 3D benchmark, one thread, everything but reading:
    # 2.7 s (2**ndim corners, weight arrays) -> 1.5 s (folded taps, slabs).
    step = max(1, _SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    for s0 in range(0, shape[0], step):
        s1 = min(shape[0], s0 + step)
        slab_offset = offset.copy()
        slab_offset[0] += scale[0] * s0
        ends = slab_offset[0] + scale[0] * np.array([0.0, s1 - s0 - 1])
        lo = int(np.floor(ends.min())) - int(crop_start[0])
        hi = int(np.floor(ends.max())) + 2 - int(crop_start[0])
        lo = min(max(lo, 0), crop.shape[0] - 1)
        hi = max(min(hi, crop.shape[0]), lo + 1)
        sub_start = crop_start.copy()
        sub_start[0] += lo
        weights = [None if profiles[0] is None else profiles[0][s0:s1], *profiles[1:]]
        slab_shape = (s1 - s0,) + shape[1:]
        if shift_only:
            values = resample_shift(crop[lo:hi], sub_start, slab_offset, slab_shape, job.order,
                                    axis_weights=weights)
        else:
            values = resample_diagonal(crop[lo:hi], sub_start, scale, slab_offset, slab_shape, job.order,
                                       axis_weights=weights)
        weight = plane_weight if profiles[0] is None else profiles[0][s0:s1].reshape(
            (-1,) + (1,) * (nd - 1)) * plane_weight
        if content is not None:  # not separable: one more factor on the slab
            m_slab = np.diag(np.append(scale, 1.0))
            m_slab[:-1, -1] = slab_offset
            c = _content_on_grid(content, m_slab, slab_shape)
            values *= c
            weight = weight * c
        if (a, b) != (1.0, 0.0):  # sum w * (a I + b) = a * sum w I + b * w
            values *= np.float32(a)
            values += np.float32(b) * weight
        num_box[s0:s1] += values
        den_box[s0:s1] += weight


def _blend_general_view(job: _ChunkJob, src: FusionSource, m: np.ndarray, range_vox, border_vox,
                        num: np.ndarray, den: np.ndarray, content=None) -> None:
    """Cosine/average blending of any view (rotated, sheared).

    The crop the chunk needs is read once.  With ``job.fast`` (2D, 3D) one
    compiled pass over the chunk (:func:`~tilefuse.fusion.warp.blend_warped`)
    tests, weighs, interpolates and accumulates every sample with nothing
    stored per voxel.  Otherwise (the reference) slab by slab along the
    chunk's first axis: each slab is resampled with
    ``scipy.ndimage.affine_transform``, and its coordinates, inside mask and
    weights are slab-sized (measured: two 128x256x256 chunks of two rotated
    views on one thread, 6.6 -> 4.1 s and peak traced memory 643 -> 142 MiB
    against chunk-sized arrays; scipy's resampling is most of it).
    """
    shape = job.out_shape
    region = source_region(m, shape, src.shape, job.order)
    if region is None:
        return
    crop = _read(src, region)
    crop_start = [r.start for r in region]
    nd = len(shape)
    a, b = src.intensity
    if job.fast and nd in (2, 3):
        from .warp import blend_warped  # compiled with numba: imported when a rotated view needs it

        if content is not None:
            weights, to_view = content
            content = (weights, np.linalg.inv(to_view) @ m)  # chunk voxel -> weights voxel
        blend_warped(crop, crop_start, m, src.shape, num, den, order=job.order,
                     cosine=(range_vox, border_vox) if job.mode == "cosine" else None, floor=EDGE_WEIGHT,
                     intensity=(a, b), content=content)
        return
    step = max(1, _SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    for s0 in range(0, shape[0], step):
        s1 = min(shape[0], s0 + step)
        slab_shape = (s1 - s0,) + tuple(shape[1:])
        m_slab = m @ grid_affine(np.zeros(nd), 1.0, [s0] + [0] * (nd - 1))
        coords = source_coordinates(m_slab, slab_shape)
        valid = np.broadcast_to(inside_mask(coords, src.shape), slab_shape)
        if not valid.any():
            continue
        values = resample(crop, crop_start, m_slab, slab_shape, job.order, fast=job.fast)
        if job.mode == "cosine":
            w = cosine_weights(coords, range_vox, border_vox, view_shape=src.shape, floor=EDGE_WEIGHT)
            w = np.array(np.broadcast_to(w, slab_shape))
        else:
            w = np.ones(slab_shape, dtype=np.float32)
        if content is not None:
            w *= _content_on_grid(content, m_slab, slab_shape)
        w[~valid] = 0.0
        if (a, b) != (1.0, 0.0):
            values *= np.float32(a)
            values += np.float32(b)
        values *= w
        values[~valid] = 0.0  # edge-extended values, or NaN input, must not leak
        num[s0:s1] += values
        den[s0:s1] += w


def _shift_plan(job: _ChunkJob):
    """Where every view of an all-translated chunk lands, for all views at once (numpy, no per-view Python).

    Returns ``(kept, box, offset, crop_start, crop_stop)``: the views with a
    sample in the chunk, their inside boxes ``(n, ndim, 2)``, the view voxel
    of each box's first voxel, and the region of the view to read.  These
    are, value for value, what :func:`inside_box` and :func:`source_region`
    give view by view (the same float64 operations on the same matrices):
    the one-call path must fuse the same bits as the per-view one did.
    """
    invs, shapes = job.shifted[0], job.shifted[1]
    shape = job.out_shape
    nd = len(shape)
    m = invs @ job.out_affine  # stacked: as ``inv @ out_affine`` view by view
    lin = np.diagonal(m[:, :-1, :-1], axis1=1, axis2=2)
    off = m[:, :-1, -1]
    n_views = len(invs)
    first = np.zeros((n_views, nd), dtype=np.int64)
    stop = np.zeros((n_views, nd), dtype=np.int64)
    keep = np.ones(n_views, dtype=bool)
    for d in range(nd):
        # inside_box: the output voxels whose coordinate (source_coordinates) passes inside_mask
        c = lin[:, d, None] * np.arange(shape[d], dtype=np.float64) + off[:, d, None]
        n = shapes[:, d, None]
        inside = np.where(n == 1, np.abs(c) <= 0.5 + INSIDE_TOL, (c >= -INSIDE_TOL) & (c <= (n - 1) + INSIDE_TOL))
        keep &= inside.any(axis=1)
        first[:, d] = inside.argmax(axis=1)
        stop[:, d] = shape[d] - inside[:, ::-1].argmax(axis=1)
    offset = off + first.astype(np.float64)  # box voxel 0 -> view voxel (the box maps by the identity)
    # source_region of the box under that identity map: corners 0 and n - 1, one voxel of reach
    cmin = offset
    cmax = (stop - first - 1).astype(np.float64) + offset
    keep &= ~np.any(cmax < np.where(shapes == 1, -0.5, 0.0) - INSIDE_TOL, axis=1)
    keep &= ~np.any(cmin > np.where(shapes == 1, 0.5, shapes - 1.0) + INSIDE_TOL, axis=1)
    lo = np.clip(np.floor(cmin).astype(np.int64) - 1, 0, shapes)
    hi = np.clip(np.ceil(cmax).astype(np.int64) + 2, 0, shapes)
    keep &= np.all(hi > lo, axis=1)
    kept = np.flatnonzero(keep)
    return kept, np.stack([first[kept], stop[kept]], axis=-1), offset[kept], lo[kept], hi[kept]


def _shift_profiles(job: _ChunkJob, kept: np.ndarray, box: np.ndarray, offset: np.ndarray):
    """Every kept view's per-axis weights over its box, concatenated, and where each starts.

    :func:`~tilefuse.fusion.blending.cosine_profiles` evaluates all of them in
    one call per axis, each value as ``cosine_profile(arange(n) + offset)``
    view by view gave it, floored at :data:`EDGE_WEIGHT`; an axis of one
    voxel, and ``average`` blending, weigh 1.
    """
    _, shapes, ranges, borders, _ = job.shifted
    shapes, ranges, borders = shapes[kept], ranges[kept], borders[kept]
    lengths = box[..., 1] - box[..., 0]
    n_views, nd = lengths.shape
    starts = np.zeros((n_views, nd), dtype=np.int64)
    parts, base = [], 0
    for d in range(nd):
        ln = lengths[:, d]
        ends = np.cumsum(ln)
        starts[:, d] = base + ends - ln
        total = int(ends[-1]) if n_views else 0
        if job.mode == "average":
            parts.append(np.ones(total, dtype=np.float32))
        else:
            k = np.arange(total, dtype=np.int64) - np.repeat(ends - ln, ln)  # index inside its view's box
            coords = k.astype(np.float64) + np.repeat(offset[:, d], ln)
            p = cosine_profiles(coords, np.repeat(shapes[:, d], ln), np.repeat(ranges[:, d], ln),
                                np.repeat(borders[:, d], ln))
            parts.append(np.maximum(p, np.float32(EDGE_WEIGHT)))
        base += total
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), starts


def _fuse_shifted_chunk(job: _ChunkJob) -> np.ndarray:
    """Cosine/average fusion of a chunk whose views all only translate: one compiled call.

    The chunk's plan (each view's box, shift, region to read and weights) is
    worked out for all its views at once with numpy (:func:`_shift_plan`,
    :func:`_shift_profiles`), each view's crop is read, and
    :func:`~tilefuse.fusion.shift.fuse_shifted` does the rest with the GIL
    released: taps, slab-sized sums that stay in the processor's cache
    (rather than two chunk-sized arrays written, faulted in and read back:
    on the 3D benchmark they cost more than the arithmetic), and the
    normalisation.  A 2D mosaic chunk meets ~17 small views: done view by
    view in Python, this plan held the GIL for ~0.8 ms per view (issue 14).
    """
    from .shift import fuse_shifted

    kept, box, offset, lo, hi = _shift_plan(job)
    profiles, profile_start = _shift_profiles(job, kept, box, offset)
    crops = [_read(job.items[i][0], tuple(slice(int(a), int(b)) for a, b in zip(lo[k], hi[k])))
             for k, i in enumerate(kept)]
    return fuse_shifted(crops, lo, offset, box, profiles, profile_start, job.shifted[4][kept], job.out_shape,
                        order=job.order, slab_voxels=_SLAB_VOXELS, fill_value=job.fill_value, dtype=job.dtype)


def _shift_views(items, origin, spacing, mode: str, fast: bool, nd: int):
    """Per view, stacked: whether it only translates against the output grid, and what the one-call path needs.

    The linear part of ``inv @ out_affine`` is the same for every chunk (the
    chunks differ only in translation), so the test is made once per view,
    not per chunk.  Returns ``(ok, (invs, shapes, ranges, borders, intensities))``
    or ``None`` when the one-call path does not apply to this fusion.
    """
    if not (_COMPILED_SHIFT and fast and mode in ("cosine", "average") and nd in (2, 3) and items):
        return None
    invs = np.stack([inv for _src, inv, _rng, _brd in items])
    lin = (invs @ grid_affine(origin, spacing))[:, :-1, :-1]
    diag = np.diagonal(lin, axis1=1, axis2=2)
    off_diag = np.abs(lin - diag[:, :, None] * np.eye(nd)).max(axis=(1, 2))
    ok = (off_diag <= 1e-12) & np.all(np.abs(diag - 1.0) <= 1e-9, axis=1)  # as is_diagonal, then is_shift
    ok &= np.array([src.content is None for src, _inv, _rng, _brd in items])
    arrays = (invs, np.array([src.shape for src, _i, _r, _b in items], dtype=np.int64),
              np.stack([np.asarray(r, dtype=np.float64) for _s, _i, r, _b in items]),
              np.stack([np.asarray(b, dtype=np.float64) for _s, _i, _r, b in items]),
              np.array([src.intensity for src, _i, _r, _b in items], dtype=np.float64))
    return ok, arrays


def _fuse_chunk(job: _ChunkJob, contents: Sequence | None = None) -> np.ndarray:
    if job.shifted is not None and (contents is None or all(c is None for c in contents)):
        return _fuse_shifted_chunk(job)
    shape = job.out_shape
    mode = job.mode
    if mode in ("cosine", "average"):
        num = np.zeros(shape, dtype=np.float32)
        den = np.zeros(shape, dtype=np.float32)
    else:
        acc = np.full(shape, -np.inf if mode == "max" else np.nan, dtype=np.float32)
        hit = np.zeros(shape, dtype=bool)
    if contents is None:
        contents = [None] * len(job.items)
    for (src, inv, range_vox, border_vox), content in zip(job.items, contents):
        if mode in ("cosine", "average"):
            m = inv @ job.out_affine
            if job.fast and is_diagonal(m):
                _blend_separable_view(job, src, m, range_vox, border_vox, num, den, content)
            else:
                _blend_general_view(job, src, m, range_vox, border_vox, num, den, content)
            continue
        sampled = _sample_view(job, src, inv)
        if sampled is None:
            continue
        box, values, coords, valid = sampled
        # max / first
        sub_acc, sub_hit = acc[box], hit[box]
        inside = np.ones(values.shape, dtype=bool) if valid is None else valid
        if mode == "max":
            np.maximum(sub_acc, values, out=sub_acc, where=inside)
        else:  # first
            take = inside & ~sub_hit
            sub_acc[take] = values[take]
        sub_hit |= inside
        if mode == "first" and hit.all():
            break
    if mode in ("cosine", "average"):
        if job.fast and np.dtype(job.dtype) in _COMPILED_NORMALISE:
            from .shift import normalise_cast

            return normalise_cast(num, den, job.fill_value, job.dtype)
        return _normalise(num, den, job.fill_value, job.dtype)
    out = np.where(hit, acc, np.float32(job.fill_value))
    return cast_to_dtype(out, job.dtype)


def _normalise(num: np.ndarray, den: np.ndarray, fill_value, dtype) -> np.ndarray:
    """``num / den`` (``fill_value`` where ``den == 0``) cast to ``dtype``, slab by slab in place."""
    out = np.empty(num.shape, dtype=dtype)
    step = max(1, _SLAB_VOXELS // max(1, int(np.prod(num.shape[1:]))))
    for s0 in range(0, num.shape[0], step):
        n, d = num[s0:s0 + step], den[s0:s0 + step]
        covered = d > 0
        np.divide(n, d, out=n, where=covered)
        if not covered.all():
            n[~covered] = fill_value
        out[s0:s0 + step] = cast_to_dtype(n, dtype, overwrite=True)
    return out


# --------------------------------------------------------------------------
# the public entry point


def output_chunks(chunks, shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Normalised dask chunks of a fused output; ``None`` gives about 8 MiB of float32 per chunk."""
    import dask.array as da

    return da.core.normalize_chunks("auto" if chunks is None else chunks, shape=tuple(shape),
                                    limit=_DEFAULT_CHUNK_BYTES, dtype=np.float32)


def _probe_dtype(src: FusionSource) -> np.dtype:
    return _read(src, tuple(slice(0, 1) for _ in src.shape)).dtype


def _plain(obj) -> bool:
    """Whether ``repr(obj)`` identifies ``obj`` by value: numbers, text, slices, None, and tuples of them."""
    if obj is None or isinstance(obj, (bool, int, float, str, slice, np.integer, np.floating)):
        return True
    return isinstance(obj, tuple) and all(_plain(o) for o in obj)


def _sources_token(sources: Sequence[FusionSource]) -> str:
    """What identifies the sources for the graph's name: a digest, with each shared object tokenized once.

    Every view's reader and content callables are partials over the same
    loader: tokenizing the sources as they are pickled that loader once per
    view (~0.6 ms per source, 6 s of the client's time at 10,000 tiles
    before any chunk ran), so objects are memoised by identity while the
    sources hold them.  Keys and plain arguments (a view's id, its level,
    its planned regions) are identified by their ``repr`` and the matrices by
    their bytes: dask's tokenize of 10,000 view ids and their nested tuples
    still cost ~1 s at 10,000 tiles.
    """
    import hashlib

    from dask.base import tokenize

    memo: dict[int, str] = {}

    def once(obj) -> str:
        if _plain(obj):
            return repr(obj)
        got = memo.get(id(obj))
        if got is None:
            got = memo[id(obj)] = tokenize(obj)
        return got

    def callable_token(fn):
        if fn is None:
            return None
        if isinstance(fn, partial):
            return ("partial", once(fn.func), [once(a) for a in fn.args],
                    sorted((k, once(v)) for k, v in fn.keywords.items()))
        return once(fn)

    digest = hashlib.sha1()
    if sources:
        digest.update(np.stack([src.affine for src in sources]).tobytes())
        digest.update(np.array([src.intensity for src in sources], dtype=np.float64).tobytes())
    digest.update(repr([(once(src.key), src.shape, str(src.dtype), callable_token(src.reader),
                         callable_token(src.content)) for src in sources]).encode())
    return digest.hexdigest()


def fuse_sources(
    sources: Iterable[FusionSource],
    *,
    origin: Sequence[float],
    spacing: Sequence[float] | float,
    shape: Sequence[int],
    chunks=None,
    blending: str = "cosine",
    blend_range: float = 40.0,
    blend_border: float = 0.0,
    interpolation: str = "linear",
    dtype=None,
    fill_value: float = 0,
    fast_path: bool = True,
):
    """Fuse transformed views into a lazy dask array on a regular world grid.

    Parameters
    ----------
    sources : iterable of FusionSource
        The views, in priority order (matters for ``blending="first"``).
    origin : sequence of float
        World position of output voxel 0 (numpy order).
    spacing : float or sequence of float
        World distance between output voxels per axis; ``> 1`` downsamples.
    shape : sequence of int
        Output shape (numpy order).
    chunks : dask chunks, optional
        Output chunking; default about 8 MiB of float32 per chunk.
    blending : {"cosine", "average", "max", "first"}
    blend_range, blend_border : float
        Cosine ramp width and border in world units (BigStitcher: 40 and 0).
    interpolation : {"linear", "nearest"}
    dtype : numpy dtype, optional
        Output type; default the common type of the views (``np.result_type``).
        Integer outputs are rounded and clipped to the type's range.
    fill_value : scalar
        Value where no view has data.
    fast_path : bool
        Use the separable resamplers where a view only translates or scales
        along the output's axes, and the compiled one
        (:mod:`tilefuse.fusion.warp`) for rotated and sheared views; ``False``
        forces ``scipy.ndimage.affine_transform`` (the reference).

    Returns
    -------
    fused : dask.array.Array
        One task per chunk; deterministic name from all inputs.

    Raises
    ------
    FusionError
        Inconsistent shapes or parameters.
    UnsupportedFormatError
        Unknown blending mode or interpolation.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    sources = list(sources)
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if nd == 0 or any(n < 1 for n in shape):
        raise FusionError(f"output shape {shape} is empty")
    origin = np.asarray(origin, dtype=np.float64)
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (nd,)).copy()
    if origin.shape != (nd,):
        raise FusionError(f"origin {tuple(origin)} does not match the {nd}D output shape {shape}")
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0) and np.all(np.isfinite(origin))):
        raise FusionError(f"spacing must be finite and positive, origin finite; got {spacing}, {origin}")
    if blending not in BLENDING_MODES:
        raise UnsupportedFormatError(f"blending {blending!r} is not supported; use one of {BLENDING_MODES}")
    if interpolation not in INTERPOLATIONS:
        raise UnsupportedFormatError(
            f"interpolation {interpolation!r} is not supported; use one of {tuple(INTERPOLATIONS)}"
        )
    if not (np.isfinite(blend_range) and blend_range >= 0 and np.isfinite(blend_border)):
        raise FusionError(f"blend_range must be >= 0 and blend_border finite; got {blend_range}, {blend_border}")
    for src in sources:
        if not isinstance(src, FusionSource):
            raise FusionError(f"expected FusionSource objects, got {type(src).__name__}")
        if len(src.shape) != nd:
            raise FusionError(f"{src.key}: view is {len(src.shape)}D but the output is {nd}D")

    if dtype is None:
        types = [s.dtype if s.dtype is not None else _probe_dtype(s) for s in sources]
        dtype = np.result_type(*types) if types else np.dtype(np.float32)
    dtype = np.dtype(dtype)

    chunks = output_chunks(chunks, shape)

    order = INTERPOLATIONS[interpolation]
    items = []
    for src in sources:
        rng, brd = adjust_blending(blend_range, blend_border, src.affine)
        items.append((src, np.linalg.inv(src.affine), rng, brd))
    los, his = source_world_boxes(sources)
    shift_views = _shift_views(items, origin, spacing, blending, bool(fast_path), nd)

    name = "fuse-" + tokenize(
        _sources_token(sources), origin, spacing, shape, chunks, blending, float(blend_range), float(blend_border),
        interpolation, str(dtype), fill_value, bool(fast_path),
    )
    offsets = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]
    dsk = {}
    # Content-based weights: one task per view that has them, shared by its chunks.
    content_keys = [None] * len(sources)
    if blending in ("cosine", "average"):
        for i, src in enumerate(sources):
            if src.content is not None:
                content_keys[i] = ("content-" + name, i)
                dsk[content_keys[i]] = (_content_task, src.content)
    for idx, hits in plan_chunks(los, his, chunks, origin, spacing):
        start = tuple(int(offsets[d][i]) for d, i in enumerate(idx))
        cshape = tuple(int(chunks[d][i]) for d, i in enumerate(idx))
        shifted = None
        if shift_views is not None and shift_views[0][hits].all():
            shifted = tuple(a[hits] for a in shift_views[1])
        job = _ChunkJob(
            grid_affine(origin, spacing, start), cshape, tuple(items[i] for i in hits),
            blending, order, fill_value, dtype, bool(fast_path), shifted,
        )
        keys = [content_keys[i] for i in hits]
        dsk[(name, *idx)] = (_fuse_chunk, job, keys) if any(k is not None for k in keys) else (_fuse_chunk, job)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks, dtype=dtype)
