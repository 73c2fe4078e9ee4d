"""Numeric helpers shared by every stage."""

from __future__ import annotations

import numpy as np

__all__ = ["cast_to_dtype"]


def cast_to_dtype(values: np.ndarray, dtype, *, overwrite: bool = False) -> np.ndarray:
    """Cast float results to ``dtype``: integers are rounded and clipped, never wrapped.

    With ``overwrite=True`` the rounding and clipping happen in ``values``
    itself (a float array the caller owns), saving two temporaries.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iub":
        if dtype.kind == "b":
            lo, hi = 0.0, 1.0
        else:
            info = np.iinfo(dtype)
            lo, hi = float(info.min), float(info.max)
            if dtype.itemsize >= 4:
                values = values.astype(np.float64)  # float32 cannot hold 2**31 - 1
                while int(hi) > info.max:  # float(2**63 - 1) rounds up past the range
                    hi = float(np.nextafter(hi, -np.inf))
        if overwrite and values.dtype.kind == "f":
            np.rint(values, out=values)
            np.clip(values, lo, hi, out=values)
        else:
            values = np.clip(np.rint(values), lo, hi)
    return values.astype(dtype, copy=False)
