"""The shared block mean: exact means, partial or trimmed edges, slab processing of large blocks."""

from __future__ import annotations

import numpy as np
import pytest

from tilefuse import downsample
from tilefuse.downsample import block_mean


def test_means_and_edges():
    a = np.arange(5 * 6, dtype=np.float64).reshape(5, 6)
    np.testing.assert_allclose(block_mean(a, (2, 3)), [[4.0, 7.0], [16.0, 19.0], [25.0, 28.0]])
    np.testing.assert_allclose(block_mean(a, (2, 3), edge="trim"), [[4.0, 7.0], [16.0, 19.0]])
    u = np.array([[0, 65535, 65535, 65535]], dtype=np.uint16)
    assert block_mean(u, (1, 2)).tolist() == [[32768, 65535]]  # rounded, not wrapped


@pytest.mark.parametrize("edge", ["partial", "trim"])
@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 2, 2), (3, 4, 4), (1, 1, 2, 2)])
def test_slabs_give_the_same_result(monkeypatch, edge, factors):
    shape = (37, 60, 61) if len(factors) == 3 else (1, 37, 60, 61)  # e.g. OME-Zarr's leading c axis
    a = np.random.default_rng(0).integers(0, 60000, shape).astype(np.uint16)
    whole = block_mean(a, factors, edge=edge)
    monkeypatch.setattr(downsample, "_SLAB_ELEMENTS", 5000)
    np.testing.assert_array_equal(block_mean(a, factors, edge=edge), whole)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
@pytest.mark.parametrize(("shape", "factors"), [
    ((32, 48, 64), (2, 2, 2)), ((1, 1, 16, 32, 64), (1, 1, 2, 2, 2)), ((16, 32, 64), (1, 2, 2)),
    ((48, 64), (2, 2)), ((8, 6, 10), (2, 1, 2)), ((2, 3, 8, 6, 10), (1, 1, 2, 2, 1)),
])
def test_compiled_2x_mean_is_the_numpy_mean_bit_for_bit(monkeypatch, dtype, shape, factors):
    """The pyramid's case (2x windows, same type out) goes through one compiled pass: same values."""
    from tilefuse import downsample

    rng = np.random.default_rng(sum(shape))
    if dtype == np.float32:
        block = rng.normal(100.0, 50.0, shape).astype(np.float32)
    else:
        block = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
        block.flat[:4] = [np.iinfo(dtype).max] * 2 + [0, 1]  # windows at the ends of the range, a .5 tie
    assert downsample._compiled_applies(block, factors, block.dtype)
    got = block_mean(block, factors)
    monkeypatch.setattr(downsample, "_compiled_applies", lambda *args: False)
    want = block_mean(block, factors)
    assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    # ground truth on one window
    window = block[tuple(slice(0, f) for f in factors)].astype(np.float64)
    expect = window.mean() if dtype == np.float32 else np.clip(np.rint(window.mean()), 0, np.iinfo(dtype).max)
    assert abs(float(got.flat[0]) - expect) <= (1e-4 * abs(expect) if dtype == np.float32 else 0.5)
