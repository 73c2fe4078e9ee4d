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
