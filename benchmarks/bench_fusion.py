"""Fusion throughput, memory and quality: tilefuse vs a read+write floor vs multiview-stitcher.

Usage::

    python benchmarks/bench_fusion.py [--quick] [--json out.json] [--workdir DIR] [--no-peer]

Throughput (output megavoxels per second) of fusing one sample project, each
configuration in a fresh subprocess (peak RSS from ``os.wait4``; summed
process-tree RSS from psutil sampling), all in the same run:

* ``floor`` / ``floor_zarr0``: read every input pixel once (``project.image(v).compute()`` per
  view) + write an output of the fused size (same chunks, real image
  content) without any resampling: to OME-Zarr with tilefuse's own writer
  (same pyramid as ``write_fused``), resp. level 0 with ``dask.array.to_zarr``;
  each fusion row's "x floor" is relative to the floor with the same writer;
* ``tilefuse -> OME-Zarr``: ``plan_fusion`` + ``write_fused`` (cosine
  blending, linear interpolation; multiscale pyramid included);
* ``tilefuse content-based -> zarr (level 0)``: the same with
  ``content_based=True`` (BigStitcher's local-contrast weights on top of the
  cosine blending: one weights task per view, interpolated per chunk);
* ``tilefuse -> zarr (level 0)`` and ``multiview-stitcher -> zarr (level 0)``:
  the lazy fused array of each tool stored with ``dask.array.to_zarr`` (same
  chunk shape, threaded scheduler) - the like-for-like comparison.  The
  peer uses ``fusion.fuse`` defaults (weighted average with its smooth
  blending weights, ``interpolation_order=1``).

Quality: a project written at the TRUE tile positions without noise or
vignetting is fused (float32) and compared with the mosaic's ground truth:
mean absolute error where tiles overlap (near tile borders) and inside
single tiles, relative to the signal range.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

CONFIGS = {
    # name: (make_sample_project kwargs, quality mosaic kwargs)
    "quick": {
        "2d": dict(C.COMMON, ndim=2, grid=(4, 6), tile_shape=(512, 512)),
        "3d": dict(C.COMMON, ndim=3, grid=(1, 2, 2), tile_shape=(64, 256, 256)),
        "q2d": dict(grid=(2, 3), tile_shape=(256, 256), overlap=0.15, seed=3),
        "q3d": dict(grid=(1, 2, 2), tile_shape=(24, 128, 128), overlap=0.15, seed=3),
    },
    "full": {
        "2d": dict(C.COMMON, ndim=2, grid=(10, 15), tile_shape=(512, 512)),
        "3d": dict(C.COMMON, ndim=3, grid=(1, 4, 4), tile_shape=(128, 512, 512)),
        "q2d": dict(grid=(3, 4), tile_shape=(512, 512), overlap=0.1, seed=3),
        "q3d": dict(grid=(1, 2, 2), tile_shape=(64, 256, 256), overlap=0.1, seed=3),
    },
}


# ----------------------------------------------------------------------------
# children: one measured configuration each
# ----------------------------------------------------------------------------
def _plan(project):
    import tilefuse

    return tilefuse.plan_fusion(project)


def _level0(fused, ndim):
    """(t, c, z, y, x) -> the single (z, y, x) or (y, x) volume of the samples."""
    return fused[0, 0, 0] if ndim == 2 else fused[0, 0]


def task_floor(task: dict) -> dict:
    import dask.array as da
    import numpy as np

    import tilefuse
    from tilefuse.writers.ome_zarr import write_ome_zarr

    t0 = time.perf_counter()
    project = tilefuse.open_project(task["xml"])
    n_in = 0
    template = None
    for view in project.views:
        arr = project.image(view).compute()
        n_in += arr.size
        if template is None:
            template = arr
    t_read = time.perf_counter() - t0
    plan = _plan(project)
    fused = plan.to_dask()
    shape, chunks = fused.shape, fused.chunks

    # an output of the fused size with real image content (a tile repeated),
    # so compression costs what it costs for the fused result
    tmpl = template.astype(fused.dtype)[None, None]

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        idx = [np.arange(a, b) % n for (a, b), n in zip(loc, tmpl.shape)]
        return tmpl[np.ix_(*idx)]

    image = da.map_blocks(block, dtype=fused.dtype, chunks=chunks)
    axes = "tczyx"
    voxel_size = tuple(float(v) for v in plan.voxel_size)
    if plan.ndim == 2:
        image, axes, voxel_size = image[:, :, 0], "tcyx", voxel_size[1:]
    t1 = time.perf_counter()
    if task.get("writer") == "zarr0":
        da.to_zarr(_level0(image if plan.ndim == 3 else image[:, :, None], plan.ndim), task["out"],
                   overwrite=True)
    else:
        write_ome_zarr(image, task["out"], voxel_size=voxel_size, axes=axes, overwrite=True, resume=False)
    t_write = time.perf_counter() - t1
    return {"time_s": t_read + t_write, "read_s": t_read, "write_s": t_write, "input_voxels": n_in,
            "output_voxels": int(np.prod(shape)), "output_shape": list(shape)}


def task_tilefuse_omezarr(task: dict) -> dict:
    import numpy as np

    import tilefuse

    t0 = time.perf_counter()
    project = tilefuse.open_project(task["xml"])
    plan = _plan(project)
    tilefuse.write_fused(plan, task["out"], overwrite=True, resume=False)
    t = time.perf_counter() - t0
    shape = (1, 1) + tuple(plan.shape)
    return {"time_s": t, "output_voxels": int(np.prod(shape)), "output_shape": list(shape)}


def task_tilefuse_zarr0(task: dict) -> dict:
    import dask.array as da
    import numpy as np

    import tilefuse

    t0 = time.perf_counter()
    project = tilefuse.open_project(task["xml"])
    plan = tilefuse.plan_fusion(project, content_based=True) if task.get("content") else _plan(project)
    fused = _level0(plan.to_dask(), plan.ndim)
    da.to_zarr(fused, task["out"], overwrite=True)
    t = time.perf_counter() - t0
    return {"time_s": t, "output_voxels": int(np.prod(fused.shape)), "output_shape": list(fused.shape),
            "chunks": [c[0] for c in fused.chunks]}


def task_peer_zarr0(task: dict) -> dict:
    import dask.array as da
    import numpy as np
    from multiview_stitcher import fusion

    import tilefuse

    t0 = time.perf_counter()
    project = tilefuse.open_project(task["xml"])
    sims, _ = C.peer_sims(project)
    dims = ["z", "y", "x"][-project.ndim:]
    chunks = task["chunks"]
    fused = fusion.fuse(images=sims, transform_key="stage",
                        output_chunksize={d: int(c) for d, c in zip(dims, chunks)})
    data = fused.data
    data = data[(0,) * (data.ndim - project.ndim)]  # drop t, c
    da.to_zarr(data, task["out"], overwrite=True)
    t = time.perf_counter() - t0
    return {"time_s": t, "output_voxels": int(np.prod(data.shape)), "output_shape": list(data.shape)}


def _coverage(mosaic, region, spacing):
    """Number of tiles covering each voxel of ``region`` (grid world = index * spacing)."""
    import numpy as np

    shape = tuple(s.stop - s.start for s in region)
    cov = np.zeros(shape, np.int16)
    last = (np.asarray(mosaic.tile_shape) - 1) * mosaic.calibration
    for p in mosaic.true_positions:
        masks = []
        for ax, s in enumerate(region):
            w = np.arange(s.start, s.stop) * spacing[ax]
            masks.append((w >= p[ax] - 1e-6) & (w <= p[ax] + last[ax] + 1e-6))
        m = masks[0]
        for mk in masks[1:]:
            m = np.multiply.outer(m, mk)
        cov += m
    return cov


def _score(fused, truth, cov) -> dict:
    import numpy as np

    err = np.abs(fused.astype(np.float64) - truth)
    rng = float(truth.max() - truth.min())
    return {"mae_rel": float(err[cov > 0].mean() / rng), "seam_rel": float(err[cov > 1].mean() / rng),
            "inside_rel": float(err[cov == 1].mean() / rng), "signal_range": rng}


def task_quality(task: dict) -> dict:
    import numpy as np

    import tilefuse
    from tilefuse.geometry import Box
    from tilefuse.sample_data import make_mosaic

    mk = dict(task["mosaic"], noise=False, illumination=False, dtype="float32")
    mosaic = make_mosaic(**mk)
    project = tilefuse.open_project(task["xml"])
    cal = mosaic.calibration
    lo, hi = mosaic.bounds()
    # an interior box on the tiles' own voxel grid (world = index * calibration), 2 voxels in from the union
    ilo = np.ceil(lo / cal).astype(int) + 2
    ihi = np.floor(hi / cal).astype(int) - 2
    if mosaic.ndim == 3:  # z: only where every tile has data
        zl = max(p[0] for p in mosaic.true_positions)
        zh = min(p[0] for p in mosaic.true_positions) + (mosaic.tile_shape[0] - 1) * cal[0]
        ilo[0], ihi[0] = int(np.ceil(zl / cal[0])), int(np.floor(zh / cal[0]))
    region = tuple(slice(int(a), int(b) + 1) for a, b in zip(ilo, ihi))
    truth = mosaic.ground_truth(region).astype(np.float64)
    cov = _coverage(mosaic, region, cal)
    wlo, whi = ilo * cal, ihi * cal
    if mosaic.ndim == 2:
        box = Box.from_arrays([0, *wlo], [0, *whi])
    else:
        box = Box.from_arrays(list(wlo), list(whi))
    out = {"shape": list(truth.shape)}
    plan = tilefuse.plan_fusion(project, bounding_box=box, dtype=np.float32)
    fused = _level0(plan.to_dask(), plan.ndim).compute()
    out["tilefuse"] = _score(fused, truth, cov)
    if task.get("peer"):
        from multiview_stitcher import fusion

        sims, min_res = C.peer_sims(project)
        dims = ["z", "y", "x"][-mosaic.ndim:]
        vs = np.asarray(mosaic.voxel_size)
        props = {"spacing": {d: float(s) for d, s in zip(dims, vs)},
                 "origin": {d: float(w * min_res) for d, w in zip(dims, wlo)},
                 "shape": {d: int(n) for d, n in zip(dims, truth.shape)}}
        pf = fusion.fuse(images=sims, transform_key="stage", output_stack_properties=props)
        data = np.asarray(pf.data.compute())
        data = data[(0,) * (data.ndim - mosaic.ndim)]
        out["peer"] = _score(data, truth, cov)
    return out


TASKS = {"floor": task_floor, "floor_zarr0": task_floor, "tilefuse_omezarr": task_tilefuse_omezarr,
         "tilefuse_zarr0": task_tilefuse_zarr0, "tilefuse_content_zarr0": task_tilefuse_zarr0,
         "peer_zarr0": task_peer_zarr0, "quality": task_quality}


# ----------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------
def main() -> None:
    args, workdir, size, info = C.start(C.parser(__doc__.splitlines()[0]), TASKS)
    cfg = CONFIGS[size]
    peer = C.peer_available() and not args.no_peer
    if not peer:
        print("multiview-stitcher not installed (or --no-peer): peer rows skipped")
    out_dir = workdir / "out" / "fusion"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, quality_rows = [], []
    for dim in ("2d", "3d"):
        kw = cfg[dim]
        xml = C.sample_project(workdir, **kw)
        print(f"{dim}: {kw['grid']} tiles of {kw['tile_shape']}")
        results = {}
        order = ["floor", "tilefuse_omezarr", "floor_zarr0", "tilefuse_zarr0", "tilefuse_content_zarr0"] + (
            ["peer_zarr0"] if peer else [])
        for kind in order:
            task = {"kind": kind, "name": f"{dim} {kind}", "xml": str(xml),
                    "out": str(out_dir / f"{dim}_{kind}.zarr"), "writer": kind.partition("_")[2] or "omezarr",
                    "content": "content" in kind}
            if kind == "peer_zarr0":
                task["chunks"] = results["tilefuse_zarr0"].get("chunks")
            r = C.run_child(SCRIPT, task)
            results[kind] = r
            mvox = r.get("output_voxels", 0) / 1e6
            row = {"dim": dim, "config": kind, "mvox": mvox, "time_s": r.get("time_s"),
                   "rate": mvox / r["time_s"] if r.get("time_s") else None,
                   "rss": r["peak_rss_mb"], "tree": r["peak_tree_rss_mb"], "error": r.get("error")}
            if kind.startswith("floor") and "read_s" in r:
                row["note"] = f"read {r['read_s']:.1f} s + write {r['write_s']:.1f} s"
            rows.append(row)
            print(f"  {kind:<18} {C.fmt(row['time_s'])} s  {C.fmt(row['rate'])} Mvox/s  "
                  f"peak {row['rss']:.0f} MB  {row.get('error') or ''}")
        tf_t = results["tilefuse_zarr0"].get("time_s")
        for row in rows:
            if row["dim"] != dim or not row.get("time_s"):
                continue
            floor_t = results["floor_zarr0" if row["config"].endswith("zarr0") else "floor"].get("time_s")
            row["x_floor"] = row["time_s"] / floor_t if floor_t else None
            if row["config"] == "peer_zarr0" and tf_t:
                row["note"] = f"{row['time_s'] / tf_t:.2f}x tilefuse (level 0)"

        qname = f"quality_{size}_{dim}"
        qk = dict(cfg["q" + dim])
        qxml = C.truth_project(workdir, qname, noise=False, illumination=False, dtype="float32", **qk)
        q = C.run_child(SCRIPT, {"kind": "quality", "name": qname, "xml": str(qxml), "mosaic": qk,
                                 "peer": peer})
        for tool in ("tilefuse", "peer"):
            if tool in q:
                quality_rows.append(dict(q[tool], dim=dim, tool=tool if tool == "tilefuse" else
                                         "multiview-stitcher", grid=str(qk["grid"]),
                                         tile=str(qk["tile_shape"])))
        if "error" in q:
            quality_rows.append({"dim": dim, "tool": "error: " + q["error"]})

    C.print_table(
        f"Fusion throughput ({size}); peak RSS from os.wait4 (largest process), tree = psutil-sampled sum",
        [("dim", "dim", ""), ("config", "configuration", ""), ("mvox", "output Mvox", ".1f"),
         ("time_s", "time s", ".2f"), ("rate", "Mvox/s", ".2f"), ("x_floor", "x floor", ".2f"),
         ("rss", "peak RSS MB", ".0f"), ("tree", "tree RSS MB", ".0f"), ("note", "note", "")], rows)
    C.print_table(
        "Fusion quality at the true positions (no noise, no vignetting): mean |error| / signal range",
        [("dim", "dim", ""), ("tool", "tool", ""), ("grid", "grid", ""), ("tile", "tile", ""),
         ("seam_rel", "overlaps", ".5f"), ("inside_rel", "inside tiles", ".5f"), ("mae_rel", "all", ".5f")],
        quality_rows)
    C.write_json(args.json, {"machine": info, "size": size, "configs": cfg, "throughput": rows,
                             "quality": quality_rows})


if __name__ == "__main__":
    main()
