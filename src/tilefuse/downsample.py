"""Block-mean downsampling, the one implementation every pyramid and crop uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._numeric import cast_to_dtype

__all__ = ["block_mean"]

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
