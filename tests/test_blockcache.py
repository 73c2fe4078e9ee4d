"""The per-process cache of decoded storage blocks, alone and behind the HDF5 loader."""

from __future__ import annotations

import numpy as np
import pytest

from tilefuse import _blockcache as bc
from tilefuse.formats.deflate import BACKEND, inflate
from tilefuse.loaders._hdf5 import Hdf5Loader
from tilefuse.project.views import ViewId
from tilefuse.writers.bdv_hdf5 import write_bdv_hdf5


@pytest.fixture
def cache():
    info = bc.block_cache_info()
    bc.clear_block_cache()
    bc.set_block_cache_size(1.0)  # MiB
    yield bc
    bc.clear_block_cache()
    bc.set_block_cache_size(info["budget"] / 2**20)


def test_hits_skip_decoding_and_blocks_are_read_only(cache):
    calls = []
    hits = cache.block_cache_info()["hits"]

    def decode(value):
        def f():
            calls.append(value)
            return np.full(1000, value, np.float32)
        return f

    a = cache.cached_block(("f.h5", "x", 0), decode(1), identity=1)
    b = cache.cached_block(("f.h5", "x", 0), decode(99), identity=1)  # hit: the decoder is not called
    assert calls == [1] and b is a and b[0] == 1
    with pytest.raises(ValueError):
        a[0] = 5
    info = cache.block_cache_info()
    assert (info["hits"] - hits, info["blocks"], info["bytes"]) == (1, 1, 4000)


def test_a_block_cached_for_another_file_identity_is_decoded_again(cache):
    first = cache.cached_block(("/data/a.h5", "x", 0), lambda: np.zeros(10), identity=(1, 2, 30, 400))
    again = cache.cached_block(("/data/a.h5", "x", 0), lambda: np.ones(10), identity=(1, 2, 30, 400))
    changed = cache.cached_block(("/data/a.h5", "x", 0), lambda: np.ones(10), identity=(1, 2, 31, 401))
    assert again is first and changed[0] == 1
    assert cache.block_cache_info()["blocks"] == 1  # replaced, not kept beside it
    cache.forget_file("/data/a.h5")
    assert cache.block_cache_info()["blocks"] == 0


def test_budget_evicts_least_recently_used(cache):
    cache.set_block_cache_size(3 * 400_000 / 2**20)  # room for 3 blocks of 400 kB
    for i in range(3):
        cache.cached_block(("f", i), lambda: np.zeros(100_000, np.float32), identity=1)
    cache.cached_block(("f", 0), lambda: pytest.fail("block 0 is still cached"), identity=1)  # now most recent
    cache.cached_block(("f", 3), lambda: np.zeros(100_000, np.float32), identity=1)  # evicts block 1
    info = cache.block_cache_info()
    assert info["blocks"] == 3 and info["bytes"] == 1_200_000
    evicted = []
    cache.cached_block(("f", 1), lambda: evicted.append(1) or np.zeros(100_000, np.float32), identity=1)
    assert evicted == [1]


def test_zero_budget_disables_and_prefix_clears(cache):
    cache.cached_block(("/data/a.h5", 0), lambda: np.zeros(10), identity=1)
    cache.cached_block(("/data/b.h5", 0), lambda: np.zeros(10), identity=1)
    cache.clear_block_cache("/data/a")
    assert cache.block_cache_info()["blocks"] == 1
    cache.set_block_cache_size(0)
    assert cache.block_cache_info()["blocks"] == 0
    calls = []
    for _ in range(2):
        cache.cached_block(("/data/b.h5", 0), lambda: calls.append(1) or np.zeros(10), identity=1)
    assert calls == [1, 1]


def test_hdf5_reads_reuse_blocks_and_see_rewritten_files(cache, tmp_path):
    """Neighbouring regions share decoded blocks; rewriting the file through a writer drops them."""
    cache.set_block_cache_size(64)
    rng = np.random.default_rng(0)
    first = rng.integers(0, 60000, (20, 40, 50)).astype(np.uint16)
    path = tmp_path / "data.h5"
    write_bdv_hdf5(path, {ViewId(0, 0): first}, chunks=(8, 16, 16))
    loader = Hdf5Loader.for_path(path)
    view = ViewId(0, 0)
    region_a = (slice(0, 20), slice(0, 20), slice(0, 30))
    region_b = (slice(0, 20), slice(10, 40), slice(20, 50))
    np.testing.assert_array_equal(loader.read(view, 0, region_a), first[region_a])
    assert cache.block_cache_info()["blocks"] == 0  # plain reads do not fill the cache
    before = cache.block_cache_info()
    np.testing.assert_array_equal(loader.read(view, 0, region_a, cache=True), first[region_a])
    middle = cache.block_cache_info()
    assert middle["misses"] - before["misses"] == 3 * 2 * 2  # z blocks 0-2, y 0-1, x 0-1
    np.testing.assert_array_equal(loader.read(view, 0, region_b, cache=True), first[region_b])
    after = cache.block_cache_info()
    # region b: z 0-2, y 0-2, x 1-3 = 27 blocks, of which z 0-2, y 0-1, x 1 were decoded for region a
    assert (after["hits"] - middle["hits"], after["misses"] - middle["misses"]) == (6, 21)
    second = first[::-1].copy()
    write_bdv_hdf5(path, {ViewId(0, 0): second}, chunks=(8, 16, 16))
    np.testing.assert_array_equal(Hdf5Loader.for_path(path).read(view, 0, region_a, cache=True),
                                  second[region_a])


def test_inflate_backend_decodes_zlib_streams():
    import zlib

    raw = np.arange(50_000, dtype=np.uint16).tobytes()
    assert inflate(zlib.compress(raw, 4)) == raw
    assert BACKEND in ("isal", "zlib")


def test_n5_reads_reuse_blocks_and_see_rewritten_blocks(cache, tmp_path):
    from tilefuse.formats.n5 import create_dataset

    cache.set_block_cache_size(64)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, (12, 30, 40)).astype(np.uint16)
    ds = create_dataset(tmp_path / "s0", data.shape, (6, 10, 10), "uint16", compression="gzip")
    for index in np.ndindex(2, 3, 4):
        ds.write_block(index, data[ds.block_region(index)])
    before = cache.block_cache_info()
    np.testing.assert_array_equal(ds.read((slice(0, 12), slice(0, 20), slice(0, 15)), cache=True),
                                  data[:, :20, :15])  # blocks z 0-1, y 0-1, x 0-1: 8
    np.testing.assert_array_equal(ds.read((slice(0, 12), slice(5, 30), slice(12, 40)), cache=True),
                                  data[:, 5:, 12:])  # z 0-1, y 0-2, x 1-3: 18, of which 4 cached
    after = cache.block_cache_info()
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (8 + 14, 4)
    # rewriting a block drops its decoded copy
    ds.write_block((0, 0, 0), np.zeros((6, 10, 10), np.uint16))
    assert ds.read((slice(0, 6), slice(0, 10), slice(0, 10)), cache=True).max() == 0


def test_fusion_caches_only_views_whose_blocks_chunks_would_decode_repeatedly():
    from tilefuse.fusion.api import _block_cache_pays

    # 3D benchmark layout: chunks 128x256x256 over 128x512x512 views in 32x128x128 blocks
    assert _block_cache_pays((32, 128, 128), (128, 512, 512), (128, 256, 256))
    # a whole 512² tile inside one 1448² chunk: each block is decoded once per chunk it meets
    assert not _block_cache_pays((128, 128), (512, 512), (1448, 1448))
    # huge chunks over small blocks: 1 + 64/2048 per axis
    assert not _block_cache_pays((64, 64, 64), (4096, 4096, 4096), (2048, 2048, 2048))
    # chunk extents in view voxels, not output voxels: a 4x-downsampled output of 64-voxel chunks
    assert _block_cache_pays((128, 128), (2048, 2048), (256, 256))


def test_deflate_streams_are_standard():
    """What the writers encode decodes with the standard library, zlib and gzip containers."""
    import gzip
    import zlib

    from tilefuse.formats.deflate import deflate, isal_level

    raw = np.random.default_rng(2).integers(0, 300, 200_000).astype(np.uint16).tobytes()
    for level in (0, 1, 4, 6, 9):
        z = deflate(raw, level)
        assert zlib.decompress(z) == raw and inflate(z) == raw
        g = deflate(raw, level, gzip=True)
        assert gzip.decompress(g) == raw
        if level:
            assert len(z) < 0.8 * len(raw)  # it compresses
    assert [isal_level(v) for v in (1, 2, 4, 6, 7, 9)] == [1, 2, 2, 2, 3, 3]


def test_a_block_after_its_last_planned_read_goes_first(cache):
    """share = (1, n): after the n-th read of a block it is the first evicted, while a block with
    reads still to come stays; counts survive an eviction and start again after n."""
    cache.set_block_cache_size(2 * 400_000 / 2**20)  # room for 2 blocks of 400 kB

    def block():
        return np.zeros(100_000, np.float32)

    cache.cached_block(("f", 0), block, identity=1, share=(1, 2))
    cache.cached_block(("f", 1), block, identity=1, share=(1, 3))
    cache.cached_block(("f", 0), lambda: pytest.fail("block 0 is cached"), identity=1, share=(1, 2))  # its last
    cache.cached_block(("f", 2), block, identity=1, share=(1, 2))  # evicts block 0, not the older block 1
    cache.cached_block(("f", 1), lambda: pytest.fail("block 1 was kept"), identity=1, share=(1, 3))
    assert list(bc._BLOCKS) == [("f", 2), ("f", 1)]
    cache.cached_block(("f", 3), block, identity=1, share=(1, 4))  # evicts block 2 (least recent)
    decoded = []
    cache.cached_block(("f", 2), lambda: decoded.append(2) or block(), identity=1, share=(1, 2))
    assert decoded == [2] and ("f", 2) not in bc._BLOCKS  # its 2nd read, counted across the eviction: not kept
    cache.cached_block(("f", 0), lambda: decoded.append(0) or block(), identity=1, share=(1, 2))
    assert decoded == [2, 0] and list(bc._BLOCKS)[-1] == ("f", 0)  # a new round of reads: kept
    cache.clear_block_cache()
    assert not bc._USED and not bc._BLOCKS


def test_threads_missing_one_block_decode_it_once(cache):
    import threading
    import time

    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return np.ones(10, np.float32)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.cached_block(("f", 9), slow, identity=1)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(results) == 3 and all(r is results[0] for r in results)


@pytest.mark.parametrize("fmt", ["hdf5", "n5"])
def test_fusion_chunks_inflate_each_block_about_once(cache, tmp_path, fmt):
    """Fusion reads tell the cache how many chunks will read each block: with a budget of 48 of
    the 128 blocks, less than a row of chunks' inputs, each block is decoded once (a plain LRU of
    that budget decoded 178 times: blocks no chunk wanted again pushed out their neighbours')."""
    import tilefuse

    rng = np.random.default_rng(4)
    tiles = [rng.integers(0, 4000, (16, 64, 64)).astype(np.uint16) for _ in range(4)]
    positions = [(0.3, 0.0, 0.0), (0.0, 0.6, 55.2), (0.0, 54.7, 0.4), (0.2, 55.1, 55.3)]  # z y x
    tilefuse.write_project(tmp_path / "dataset.xml", tiles, positions, format=fmt, chunks=(8, 16, 16))
    plan = tilefuse.plan_fusion(tilefuse.open_project(tmp_path / "dataset.xml"), chunks=(16, 24, 24))
    cache.set_block_cache_size(48 * 8 * 16 * 16 * 2 / 2**20)  # 48 blocks; 4 views x 2 x 4 x 4 = 128 blocks
    before = cache.block_cache_info()
    plan.to_dask().compute(scheduler="sync")
    misses = cache.block_cache_info()["misses"] - before["misses"]
    assert misses == 128
    plan.to_dask().compute(scheduler="sync")  # once more: no worse (the counts start anew)
    assert cache.block_cache_info()["misses"] - before["misses"] <= 2 * 128
