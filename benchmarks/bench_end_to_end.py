"""End to end (issue 5): open + register + fuse to OME-Zarr, time per stage and peak memory.

Usage::

    python benchmarks/bench_end_to_end.py [--quick] [--json out.json] [--workdir DIR]
                                          [--no-workers] [--no-growth] [--profile OUT.txt]

Data: ``make_sample_project(..., format="hdf5")`` (BDV HDF5 with a pyramid,
uint16, 10 % overlap, tiles off their stage positions by 2-8 px per axis);
generation is not timed.  Configurations, each in a fresh subprocess:

* 2D: 600 tiles of 512x512 (20x30 grid); target <= 60 s wall, <= 2 GB;
* 3D: 16 tiles of 128x512x512 (1x4x4 grid, z spacing 3x xy);
* both again with ``--workers 2`` (a dask.distributed LocalCluster with two
  single-threaded worker processes, ``tilefuse.pipeline.cluster_client``);
* the 2D mosaic growing from 100 to 300 to 600 tiles: peak memory should stay
  flat.

Each run is ``tilefuse.pipeline.run(xml, out.ome.zarr)``; stage times come
from its report's timer (open, register, fuse + write).  The floors, in the
same run and each in its own process: reading every input pixel once
(``project.image(v).compute()`` per view) - the floor of registration, which
must at least look at the overlaps - and reading every input pixel once plus
writing an output of the fused size to OME-Zarr (same writer, chunks and
pyramid, no resampling) - the floor of fuse + write.

Peak memory: ``os.wait4`` ``ru_maxrss`` (the largest single process of the
child's tree) and a psutil-sampled sum over the process tree (the number
that counts with worker processes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

COMMON = C.COMMON
CONFIGS = {
    "quick": {
        "main": {"2d": dict(ndim=2, grid=(6, 10), tile_shape=(512, 512)),
                 "3d": dict(ndim=3, grid=(1, 2, 2), tile_shape=(64, 256, 256))},
        "growth": [(4, 5), (5, 8), (6, 10)],
    },
    "full": {
        "main": {"2d": dict(ndim=2, grid=(20, 30), tile_shape=(512, 512)),
                 "3d": dict(ndim=3, grid=(1, 4, 4), tile_shape=(128, 512, 512))},
        "growth": [(10, 10), (15, 20), (20, 30)],
    },
}
TARGET_2D = {"wall_s": 60.0, "peak_mb": 2048.0}


# ----------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------
def task_run(task: dict) -> dict:
    import tilefuse
    from tilefuse.demo import score_registration
    from tilefuse.pipeline import cluster_client, run
    from tilefuse.writers.options import OutputOptions

    t0 = time.perf_counter()
    with cluster_client(workers=task.get("workers") or None) as client:
        t_cluster = time.perf_counter() - t0
        t1 = time.perf_counter()
        report = run(task["xml"], task["out"], client=client, writing=OutputOptions(overwrite=True, resume="never"))
        wall = time.perf_counter() - t1
    times = dict(report.timer.times)
    out = {"stages": times, "run_s": wall, "cluster_start_s": t_cluster,
           "output_shape": list(report.output_shape)}
    if report.registered_xml is not None:
        truth = Path(task["xml"]).with_name("truth.json")
        out["score"] = score_registration(tilefuse.open_project(report.registered_xml), truth)
        out["links"] = len(report.registration.links)
        out["rejected"] = len(report.registration.rejected)
    return out


def task_floor(task: dict) -> dict:
    from bench_fusion import task_floor as fusion_floor

    return fusion_floor(task)


def task_read(task: dict) -> dict:
    import tilefuse

    t0 = time.perf_counter()
    project = tilefuse.open_project(task["xml"])
    n = 0
    for view in project.views:
        n += project.image(view).compute().size
    return {"read_s": time.perf_counter() - t0, "input_voxels": n}


TASKS = {"run": task_run, "floor": task_floor, "read": task_read}


# ----------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------
def _run_row(label, xml, out_dir, workers=None, prefix=None):
    task = {"kind": "run", "name": label, "xml": str(xml), "out": str(out_dir / f"{label.replace(' ', '_')}.ome.zarr"),
            "workers": workers}
    r = C.run_child(SCRIPT, task, prefix=prefix)
    st = r.get("stages", {})
    row = {"config": label, "open_s": st.get("open"), "register_s": st.get("register"),
           "fuse_s": st.get("fuse + write"), "run_s": r.get("run_s"), "wall_s": r["wall_s"],
           "rss": r["peak_rss_mb"], "tree": r["peak_tree_rss_mb"], "workers": workers or 0}
    if "score" in r:
        row["reg_mean"], row["reg_max"] = r["score"]["mean"], r["score"]["max"]
    if "error" in r:
        row["note"] = r["error"]
    print(f"  {label:<22} open {C.fmt(row['open_s'])}  register {C.fmt(row['register_s'])}  "
          f"fuse+write {C.fmt(row['fuse_s'])}  run {C.fmt(row['run_s'])} s  process {row['wall_s']:.1f} s  "
          f"peak {row['rss']:.0f} MB (tree {row['tree']:.0f} MB) {row.get('note', '')}")
    return row


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--no-workers", action="store_true", help="skip the --workers 2 variant")
    p.add_argument("--no-growth", action="store_true", help="skip the growing-mosaic memory series")
    p.add_argument("--profile", metavar="OUT", help="also run the 2D case under py-spy (raw stacks to OUT)")
    args, workdir, size, info = C.start(p, TASKS)
    cfg = CONFIGS[size]
    out_dir = workdir / "out" / "e2e"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, floors, growth = [], [], []
    for dim, kw in cfg["main"].items():
        kw = dict(COMMON, **kw)
        xml = C.sample_project(workdir, **kw)
        n = 1
        for g in kw["grid"]:
            n *= g
        print(f"{dim}: {kw['grid']} = {n} tiles of {kw['tile_shape']}")
        label = f"{dim} {n} tiles"
        rows.append(_run_row(label, xml, out_dir))
        r_read = C.run_child(SCRIPT, {"kind": "read", "name": f"{dim} read floor", "xml": str(xml)})
        r_floor = C.run_child(SCRIPT, {"kind": "floor", "name": f"{dim} read+write floor", "xml": str(xml),
                                       "out": str(out_dir / f"{dim}_floor.ome.zarr")})
        floors.append({"config": label, "read_s": r_read.get("read_s"), "read_rss": r_read["peak_rss_mb"],
                       "write_s": r_floor.get("write_s"), "readwrite_s": r_floor.get("time_s"),
                       "floor_rss": r_floor["peak_rss_mb"], "note": r_read.get("error") or r_floor.get("error")})
        print(f"  floors: read {C.fmt(r_read.get('read_s'))} s, read+write {C.fmt(r_floor.get('time_s'))} s")
        if not args.no_workers:
            rows.append(_run_row(f"{dim} {n} tiles, 2 workers", xml, out_dir, workers=2))
        if args.profile and dim == "2d":
            import shutil

            pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            raw = str(Path(args.profile).resolve())
            prof_row = _run_row(f"{dim} {n} tiles, py-spy", xml, out_dir,
                                prefix=[pyspy, "record", "-r", "50", "-f", "raw", "-o", raw, "--"])
            prof_row["note"] = "under py-spy (50 Hz sampling), not a timing"
            rows.append(prof_row)
            if Path(raw).exists():
                print(C.summarize_pyspy(raw))

    if not args.no_growth:
        print("growing 2D mosaic:")
        for grid in cfg["growth"]:
            kw = dict(COMMON, ndim=2, grid=grid, tile_shape=(512, 512))
            xml = C.sample_project(workdir, **kw)
            row = _run_row(f"2d {grid[0] * grid[1]} tiles", xml, out_dir)
            row["tiles"] = grid[0] * grid[1]
            growth.append(row)

    for row in rows:
        if row["config"].startswith("2d") and row.get("run_s") and "worker" not in row["config"] \
                        and "py-spy" not in row["config"]:
            ok = row["wall_s"] <= TARGET_2D["wall_s"] and row["tree"] <= TARGET_2D["peak_mb"]
            row["note"] = row.get("note") or ("meets" if ok else "misses") + " the 60 s / 2 GB target"
    cols = [("config", "configuration", ""), ("open_s", "open s", ".2f"), ("register_s", "register s", ".2f"),
            ("fuse_s", "fuse + write s", ".2f"), ("run_s", "run s", ".1f"), ("wall_s", "process wall s", ".1f"),
            ("rss", "peak RSS MB", ".0f"), ("tree", "tree RSS MB", ".0f"), ("reg_mean", "reg err mean px", ".3f"),
            ("reg_max", "reg err max px", ".3f"), ("note", "note", "")]
    C.print_table(f"End to end ({size}): tilefuse.pipeline.run; process wall includes interpreter start + imports",
                  cols, rows)
    C.print_table("Floors in the same run (each its own process)",
                  [("config", "data", ""), ("read_s", "read every pixel s", ".2f"), ("read_rss", "peak MB", ".0f"),
                   ("write_s", "write output s", ".2f"), ("readwrite_s", "read + write s", ".2f"),
                   ("floor_rss", "peak MB", ".0f"), ("note", "note", "")], floors)
    if growth:
        C.print_table("Peak memory as the 2D mosaic grows",
                      [("tiles", "tiles", ""), ("run_s", "run s", ".1f"), ("rss", "peak RSS MB", ".0f"),
                       ("tree", "tree RSS MB", ".0f"), ("note", "note", "")], growth)
    C.write_json(args.json, {"machine": info, "size": size, "configs": cfg, "common": COMMON, "runs": rows,
                             "floors": floors, "growth": growth})


if __name__ == "__main__":
    main()
