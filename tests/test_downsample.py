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
