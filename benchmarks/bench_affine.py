"""Fusion of rotated views: the compiled affine resampler vs scipy vs the translation fast path.

Usage::

    python benchmarks/bench_affine.py [--quick] [--json out.json] [--workdir DIR]

Chunk level (one process, one thread, the same data in the same run, best of
3): a uint16 view rotated 45 degrees about y with z three times coarser than
x and y, and one output chunk inside its footprint.

* ``values``: resampling only - ``scipy.ndimage.affine_transform`` on the
  crop (``resample_affine``, the reference) vs ``warp_values``; and the
  translation fast path (``resample_shift``) on the same view merely shifted;
* ``blend``: what a fusion task does with one view (read the crop from
  memory, resample, cosine weights, inside test, accumulate): the engine's
  general path with ``fast_path=False`` (scipy, slab by slab) vs the fused
  compiled pass, and the separable path for the shifted view.

Peak memory per row: tracemalloc's peak of numpy allocations during the call
(the crop excluded: it is read before).  Whole fusion: a 4-angle sample
(``make_sample_project(angles=4)``) fused to zarr level 0 at isotropic
resolution in a fresh subprocess each way (fast vs scipy), time and peak RSS.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

CONFIGS = {
    "quick": {"view": (48, 224, 224), "chunk": (32, 128, 128),
              "sample": dict(ndim=3, grid=(1, 1, 1), angles=4, tile_shape=(48, 160, 160))},
    "full": {"view": (96, 400, 400), "chunk": (64, 256, 256),
             "sample": dict(ndim=3, grid=(1, 1, 1), angles=4, tile_shape=(96, 384, 384))},
}


def _chunk_setup(view_shape, chunk):
    import numpy as np
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    view = rng.integers(100, 4000, view_shape).astype(np.uint16)
    cal = np.diag([3.0, 1.0, 1.0])
    a_view = np.eye(4)
    a_view[:3, :3] = Rotation.from_euler("y", np.pi / 4).as_matrix() @ cal
    centre_world = a_view[:3, :3] @ ((np.asarray(view_shape) - 1) / 2)
    a_out = np.eye(4)
    a_out[:3, 3] = centre_world - (np.asarray(chunk) - 1) / 2  # the chunk at the view's centre
    m = np.linalg.inv(a_view) @ a_out  # chunk voxel -> view voxel
    shifted = np.eye(4)
    shifted[:3, 3] = (np.asarray(view_shape) - np.asarray(chunk)) / 2 + 0.37  # same chunk, a sub-voxel shift
    return view, m, shifted


def _measure(fn, repeat=3):
    import tracemalloc

    best, peak = float("inf"), 0
    for _ in range(repeat):
        tracemalloc.start()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        best = min(best, dt)
    return best, peak


def task_chunk(task: dict) -> dict:
    import numpy as np

    from tilefuse.fusion.blending import adjust_blending
    from tilefuse.fusion.engine import EDGE_WEIGHT, FusionSource, _ChunkJob, _fuse_chunk
    from tilefuse.fusion.resample import resample_affine, resample_shift, source_region
    from tilefuse.fusion.warp import warp_values

    view, m, shifted = _chunk_setup(tuple(task["view"]), tuple(task["chunk"]))
    chunk = tuple(task["chunk"])
    n = int(np.prod(chunk))
    region = source_region(m, chunk, view.shape)
    crop, start = np.ascontiguousarray(view[region]), [r.start for r in region]
    sregion = source_region(shifted, chunk, view.shape)
    scrop, sstart = np.ascontiguousarray(view[sregion]), [r.start for r in sregion]
    warp_values(crop, start, m, chunk)  # compile / load the kernels outside the timing
    rows = []

    def row(kind, name, fn):
        t, peak = _measure(fn)
        rows.append({"level": kind, "path": name, "time_s": t, "mvox_s": n / t / 1e6, "peak_mb": peak / 2**20})

    row("values", "scipy affine_transform", lambda: resample_affine(crop, start, m, chunk))
    row("values", "compiled (warp_values)", lambda: warp_values(crop, start, m, chunk))
    row("values", "translation fast path", lambda: resample_shift(scrop, sstart, shifted[:3, 3], chunk))

    def job(affine_view, fast):
        # the chunk grid is the world here: out_affine = identity, view affine = inv(m)
        src = FusionSource("v", view.shape, np.linalg.inv(affine_view), lambda r: view[r], dtype=view.dtype)
        rng, brd = adjust_blending(40.0, 0.0, src.affine)
        return _ChunkJob(np.eye(4), chunk, ((src, affine_view, rng, brd),), "cosine", 1, 0, np.float32, fast)

    for name, jb in (("scipy general path (fast_path=False)", job(m, False)),
                     ("compiled (blend_warped)", job(m, True)),
                     ("translation fast path", job(shifted, True))):
        row("blend", name, lambda jb=jb: _fuse_chunk(jb))
    assert EDGE_WEIGHT > 0
    err = float(np.abs(warp_values(crop, start, m, chunk) - resample_affine(crop, start, m, chunk)).max())
    a = _fuse_chunk(job(m, True))
    b = _fuse_chunk(job(m, False))
    return {"rows": rows, "chunk": chunk, "crop": list(crop.shape), "max_abs_diff_values": err,
            "max_abs_diff_blend": float(np.abs(a - b).max())}


def task_fuse(task: dict) -> dict:
    import functools

    import dask
    import dask.array as da
    import numpy as np

    import tilefuse
    import tilefuse.fusion.api as api
    from tilefuse.fusion.warp import warp_values

    warp_values(np.zeros((2, 2, 2), np.float32), [0, 0, 0], np.eye(4), (1, 1, 1))  # compile / load first
    if not task["fast"]:
        api.fuse_sources = functools.partial(api.fuse_sources, fast_path=False)
    dask.config.set(scheduler="threads", num_workers=task.get("threads", 1))
    t0 = time.perf_counter()
    project = tilefuse.open_project(task["xml"])
    plan = tilefuse.plan_fusion(project, preserve_anisotropy=False)
    fused = plan.to_dask()[0, 0]
    da.to_zarr(fused, task["out"], overwrite=True)
    t = time.perf_counter() - t0
    return {"time_s": t, "output_voxels": int(np.prod(fused.shape)), "shape": list(fused.shape)}


TASKS = {"chunk": task_chunk, "fuse": task_fuse}


def main() -> None:
    args, workdir, size, info = C.start(C.parser(__doc__.splitlines()[0]), TASKS)
    cfg = CONFIGS[size]
    r = C.run_child(SCRIPT, {"kind": "chunk", "name": "chunk", "view": cfg["view"], "chunk": cfg["chunk"]})
    rows = r.get("rows", [])
    for level in ("values", "blend"):
        base = next((x["time_s"] for x in rows if x["level"] == level and x["path"].startswith("scipy")), None)
        for x in rows:
            if x["level"] == level and base:
                x["x_scipy"] = base / x["time_s"]
    C.print_table(
        f"Chunk {tuple(r.get('chunk', ()))} of a uint16 view rotated 45 deg about y (z x3), crop "
        f"{tuple(r.get('crop', ()))}, one thread, best of 3; max |diff| vs scipy: values "
        f"{r.get('max_abs_diff_values', float('nan')):.2g}, blend {r.get('max_abs_diff_blend', float('nan')):.2g}",
        [("level", "level", ""), ("path", "path", ""), ("mvox_s", "Mvox/s", ".1f"), ("x_scipy", "x scipy", ".2f"),
         ("time_s", "time s", ".3f"), ("peak_mb", "peak MB (numpy)", ".1f")], rows)
    xml = C.sample_project(workdir, "angles4_" + "x".join(map(str, cfg["sample"]["tile_shape"])), **cfg["sample"])
    out_dir = workdir / "out" / "affine"
    out_dir.mkdir(parents=True, exist_ok=True)
    fuse_rows = []
    for fast in (True, False):
        name = "compiled" if fast else "scipy (fast_path=False)"
        f = C.run_child(SCRIPT, {"kind": "fuse", "name": name, "xml": str(xml), "fast": fast,
                                 "out": str(out_dir / f"fused_{int(fast)}.zarr")})
        mvox = f.get("output_voxels", 0) / 1e6
        fuse_rows.append({"path": name, "mvox": mvox, "time_s": f.get("time_s"),
                          "rate": mvox / f["time_s"] if f.get("time_s") else None, "rss": f["peak_rss_mb"],
                          "shape": str(tuple(f.get("shape", ())))})
    C.print_table(
        f"Whole fusion of a 4-angle sample ({cfg['sample']['tile_shape']} per view) to zarr level 0, isotropic, "
        "cosine blending, 1 thread; peak RSS of the process",
        [("path", "path", ""), ("shape", "output", ""), ("mvox", "Mvox", ".1f"), ("time_s", "time s", ".2f"),
         ("rate", "Mvox/s", ".2f"), ("rss", "peak RSS MB", ".0f")], fuse_rows)
    C.write_json(args.json, {"machine": info, "size": size, "config": cfg, "chunk": r, "fusion": fuse_rows})


if __name__ == "__main__":
    main()
