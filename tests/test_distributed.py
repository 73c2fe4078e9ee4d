"""Registration and fusion on a local dask.distributed cluster of 2 worker processes."""

from __future__ import annotations

import numpy as np
import pytest

import tilefuse
from tilefuse.demo import make_sample_project
from tilefuse.pipeline import cluster_client

distributed = pytest.importorskip("distributed")


def test_cluster_matches_threads(tmp_path):
    project = make_sample_project(tmp_path / "p", ndim=2, grid=(2, 3), tile_shape=(128, 128), overlap=0.2,
                                  seed=11, factors=[(1, 1, 1)])
    local = tilefuse.register(project)
    plan_local = tilefuse.plan_fusion(local.apply(project), chunks=(64, 96))
    fused_local = plan_local.to_dask().compute(scheduler="threads")

    with cluster_client(workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        remote = tilefuse.register(project, client=client)
        plan_remote = tilefuse.plan_fusion(remote.apply(project), chunks=(64, 96))
        out = tilefuse.write_fused(plan_remote, tmp_path / "f.ome.zarr", client=client)
        # The other writers compute on the cluster too (N5/Zarr blocks written by the workers).
        tilefuse.write_fused(plan_remote, tmp_path / "f.tif", client=client)
        for container in ("n5", "zarr"):
            tilefuse.write_fused(plan_remote, tmp_path / f"{container}.xml", container=container, client=client)

    for key in local.translations:
        np.testing.assert_allclose(remote.translations[key], local.translations[key], atol=1e-9)
    import zarr

    written = zarr.open_group(str(out), mode="r")["0"][...]
    np.testing.assert_array_equal(written, fused_local[:, :, 0])  # 2D is written as (t, c, y, x)
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "f.tif"), fused_local[0, 0, 0])
    for container in ("n5", "zarr"):
        fused_project = tilefuse.open_project(tmp_path / f"{container}.xml")
        pixels = fused_project.image(fused_project.views[0]).compute(scheduler="threads")
        np.testing.assert_array_equal(pixels, fused_local[0, 0], err_msg=container)


def _in_process_client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    return cluster, Client(cluster, set_as_default=False)


def test_cluster_shards_are_assembled_from_pieces_not_appended(tmp_path, monkeypatch):
    """Workers may sit on other machines: no two of them append to one shard file (O_APPEND is not atomic
    over NFS) and no shard is built from one host's staging file; each chunk is a piece of its own and the
    shard's commit concatenates them.  The output equals the threads' output, and no piece is left."""
    import zarr

    from tilefuse.writers import _shards, ome_zarr

    rng = np.random.default_rng(3)
    image = rng.integers(1, 3000, size=(16, 64, 96), dtype=np.uint16)
    image[:8, :32, :32] = 0  # an empty chunk: left out of its shard
    here = ome_zarr.write_ome_zarr(image, tmp_path / "threads.ome.zarr", voxel_size=1, chunks=(8, 32, 32),
                                   shards=(16, 64, 64), n_levels=2)

    def no_append(*args, **kwargs):
        raise AssertionError("a cluster worker appended to a shard file")

    monkeypatch.setattr(ome_zarr, "append_chunk", no_append)
    assembled = []
    real = _shards.assemble_shard

    def counting(pieces, tmp, final, n):
        assembled.append(len(pieces))
        return real(pieces, tmp, final, n)

    monkeypatch.setattr(ome_zarr, "assemble_shard", counting)
    cluster, client = _in_process_client()
    with cluster, client:
        there = ome_zarr.write_ome_zarr(image, tmp_path / "cluster.ome.zarr", voxel_size=1, chunks=(8, 32, 32),
                                        shards=(16, 64, 64), n_levels=2, client=client)
    assert sorted(assembled) == [2, 4, 8]  # level 0: shards of 8 and 4 chunks; level 1: one of 2
    a, b = zarr.open_group(str(here), mode="r"), zarr.open_group(str(there), mode="r")
    for level in ("0", "1"):
        np.testing.assert_array_equal(b[level][:], a[level][:])
        assert sorted(p.name for p in (there / level / "c").rglob("*")) == \
            sorted(p.name for p in (here / level / "c").rglob("*"))
    assert not list(there.rglob("*piece*")) and not (there / ".tilefuse").exists()


def test_a_changed_piece_is_refused_not_committed(tmp_path):
    from numcodecs import Blosc

    from tilefuse.errors import ImageDataError
    from tilefuse.writers import _shards

    codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)
    blocks = [np.full((4, 8, 8), v, np.uint16) for v in (1, 0, 7)]
    pieces = []
    for rank, block in enumerate(blocks):
        where = tmp_path / "pieces" / str(rank)
        where.parent.mkdir(exist_ok=True)
        pieces.append((rank, str(where), _shards.write_piece(block, where, codec)))
    assert pieces[1][2] is None and not (tmp_path / "pieces" / "1").exists()  # all fill value: not stored
    final = tmp_path / "c" / "0"
    (tmp_path / "pieces" / "2").write_bytes(b"\0" * 3)  # e.g. a stale piece of another run
    with pytest.raises(ImageDataError, match="shard piece .* has 3"):
        _shards.assemble_shard(pieces, tmp_path / "s.partial", final, 4)
    assert not final.exists()
    _shards.write_piece(blocks[2], tmp_path / "pieces" / "2", codec)
    size = _shards.assemble_shard(pieces, tmp_path / "s.partial", final, 4)
    assert final.stat().st_size == size and _shards.shard_is_complete(final, 4)
