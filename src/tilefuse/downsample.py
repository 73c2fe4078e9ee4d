"""Block-mean downsampling, the one implementation every pyramid and crop uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._numeric import cast_to_dtype

__all__ = ["block_mean"]

#: Types the compiled 2x mean reads and writes (the same type in and out, float32 sums).
_COMPILED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

#: Elements averaged at once; larger blocks are processed in slabs (see block_mean).
_SLAB_ELEMENTS = 4 * 2**20


def block_mean(block: np.ndarray, factors: Sequence[int], *, dtype=None, edge: str = "partial") -> np.ndarray:
    """Mean over non-overlapping ``factors``-sized windows.

    Parameters
    ----------
    block : ndarray
    factors : sequence of int
        Window size per axis.
    dtype : dtype, optional
        Output type (default: ``block``'s); integers are rounded and clipped.
        ``np.float32``/``np.float64`` keep the exact mean.
    edge : {"partial", "trim"}
        ``"partial"``: windows cut short by the border average the voxels they
        have, output shape ``ceil(n / f)`` (no padding bias).  ``"trim"``: the
        incomplete last window is dropped, shape ``floor(n / f)`` (at least 1),
        as BigDataViewer's exporters size their levels.
    """
    factors = tuple(int(f) for f in factors)
    dtype = block.dtype if dtype is None else np.dtype(dtype)
    if _compiled_applies(block, factors, dtype):
        return _compiled_mean(block, factors)
    if edge == "trim":
        block = block[tuple(slice(0, max(n // f, 1) * min(f, n)) for n, f in zip(block.shape, factors))]
    elif edge != "partial":
        raise ValueError(f"edge must be 'partial' or 'trim', got {edge!r}")
    axis = next((d for d, (n, f) in enumerate(zip(block.shape, factors)) if n > f), None)
    if axis is not None and block.size > _SLAB_ELEMENTS:
        # Large blocks (3D pyramid levels read 4x an output chunk) are averaged
        # in slabs of whole windows along the first axis longer than its
        # window, so the float working copies stay small instead of two or
        # three times the block.
        plane = block.size // block.shape[axis]
        step = max(1, _SLAB_ELEMENTS // (plane * factors[axis])) * factors[axis]
        index = [slice(None)] * block.ndim
        slabs = []
        for i in range(0, block.shape[axis], step):
            index[axis] = slice(i, i + step)
            slabs.append(block_mean(block[tuple(index)], factors, dtype=dtype, edge="partial"))
        return np.concatenate(slabs, axis=axis)
    # float32 holds every 8/16-bit value and their window sums exactly enough
    # (relative error 6e-8) at half the memory of float64; wider types need float64.
    work = np.float32 if block.dtype.itemsize <= 2 or block.dtype == np.float32 else np.float64
    out = np.asarray(block)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        # Separable: the mean over a box is the mean of per-axis means.  Whole
        # windows add ``f`` strided slices (2.8x faster than np.add.reduceat on
        # a 128x512x512 uint16 block, same sums in the same order); a partial
        # last window is averaged over what it has.
        n = out.shape[axis]
        whole = n // f * f
        at = (slice(None),) * axis
        parts = []
        if whole:
            acc = out[at + (slice(0, whole, f),)].astype(work)
            for j in range(1, f):
                acc += out[at + (slice(j, whole, f),)]
            acc /= work(f)
            parts.append(acc)
        if whole < n:
            parts.append(out[at + (slice(whole, n),)].astype(work).sum(axis=axis, keepdims=True) / work(n - whole))
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
    if out.dtype != work:  # every factor was 1
        out = out.astype(work)
    return cast_to_dtype(out, dtype)


def _compiled_applies(block, factors, dtype) -> bool:
    """The pyramid's case: every factor 1 or 2, whole windows, at most 3 axes averaged, same type out."""
    block = np.asarray(block)
    return (block.dtype in _COMPILED_DTYPES and dtype == block.dtype and block.ndim >= 2 and block.size > 0
            and all(f in (1, 2) for f in factors) and len(factors) == block.ndim
            and all(f == 1 for f in factors[:-3]) and any(f == 2 for f in factors)
            and all(n % f == 0 for n, f in zip(block.shape, factors)))


def _compiled_mean(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """:func:`block_mean` of 2x windows in one compiled pass, bit for bit the numpy form's result.

    The numpy form makes a float32 copy of the block, a pass per axis and the
    rounding passes: on the 3D benchmark's pyramid (128x256x256 uint16
    chunks, 2x2x2) it was 6 % of the whole write.  Here each output voxel
    sums its window axis by axis in the same order and float32 arithmetic,
    then rounds and clips, with nothing stored in between.
    """
    mean2 = _mean2_kernel()
    block = np.ascontiguousarray(block)
    k = min(3, block.ndim)  # the averaged axes (the last three at most); the others are stacked
    shape3 = (1,) * (3 - k) + block.shape[-k:]
    f3 = (1,) * (3 - k) + tuple(factors[-k:])
    reduced = tuple(n // f for n, f in zip(shape3, f3))
    data = block.reshape((-1,) + shape3)
    out = np.empty((data.shape[0],) + reduced, dtype=block.dtype)
    rounding = block.dtype.kind == "u"
    hi = float(np.iinfo(block.dtype).max) if rounding else 0.0
    mean2(data, f3[0] == 2, f3[1] == 2, f3[2] == 2, rounding, np.float32(hi), out)
    return out.reshape(block.shape[:-k] + reduced[3 - k:])


_KERNEL: list = []


def _mean2_kernel():
    """:func:`_mean2` compiled (numba, imported on first use; then cached on disk)."""
    if not _KERNEL:
        import numba

        _KERNEL.append(numba.njit(cache=True, nogil=True, error_model="numpy")(_mean2))
    return _KERNEL[0]


def _mean2(data, fz, fy, fx, rounding, hi, out):  # pragma: no cover - compiled by _mean2_kernel
    """``out[n, i, j, k]``: the mean of ``data``'s window, axis by axis (z, y, x) as the numpy form sums."""
    half = np.float32(2.0)
    nl, nz, ny, nx = out.shape
    row = np.empty(data.shape[3], dtype=np.float32)
    for n in range(nl):
        for i in range(nz):
            z0 = 2 * i if fz else i
            z1 = z0 + 1 if fz else z0
            for j in range(ny):
                y0 = 2 * j if fy else j
                y1 = y0 + 1 if fy else y0
                a0 = data[n, z0, y0]
                a1 = data[n, z1, y0]
                b0 = data[n, z0, y1]
                b1 = data[n, z1, y1]
                for s in range(row.shape[0]):
                    if fz:
                        u = (np.float32(a0[s]) + np.float32(a1[s])) / half
                        v = (np.float32(b0[s]) + np.float32(b1[s])) / half
                    else:
                        u = np.float32(a0[s])
                        v = np.float32(b0[s])
                    row[s] = (u + v) / half if fy else u
                orow = out[n, i, j]
                for k in range(nx):
                    w = (row[2 * k] + row[2 * k + 1]) / half if fx else row[k]
                    if rounding:
                        w = np.rint(w)
                        w = min(max(w, np.float32(0.0)), hi)
                    orow[k] = w
