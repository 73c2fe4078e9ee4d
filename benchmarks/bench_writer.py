"""OME-Zarr writer throughput: NGFF 0.5 (sharded) vs today's NGFF 0.4 vs the codec floor, side by side.

Usage::

    python benchmarks/bench_writer.py [--quick] [--repeat N] [--baseline SRC] [--only TEXT] [--json OUT]
                                       [--workdir DIR]

On the 3D sample (16 tiles of 128x512x512 uint16, BDV HDF5, as ``bench_fusion.py``),
each configuration in a fresh subprocess, all in the same run (``--repeat`` runs
the whole list again, interleaved, so that every configuration sees the same load):

* ``floor``: the codecs alone - inflate every input block (the raw HDF5 chunks,
  ISA-L as the loader does) and Blosc-LZ4-encode every level-0 output chunk of the
  fused size (real image content, same chunk shape), on 2 threads; no resampling,
  no file written;
* ``fusion only``: every fused level-0 chunk computed and dropped (the resampler's
  cost, no writer);
* ``write_fused -> NGFF 0.5``: ``write_fused`` with its defaults (sharded, pyramid
  from the level-0 chunks in memory);
* ``... pyramid read back``: the same, the levels read back from level 0's shards
  (what a resumed or distributed write does);
* ``write_fused -> NGFF 0.4``: ``ngff="0.4"`` (the Zarr v2 layout: a file and a
  marker per chunk, levels read back);
* writer library, level 0 only, same shards (128x512x512 of 128x256x256 chunks):
  ``zarr-python shards`` stores the fused array with ``dask.array.store`` into a
  sharded Zarr v3 array (zarr-python must be handed whole shards, so dask rechunks
  to the shard shape); ``tilefuse shards`` is ``write_fused(n_levels=1, shards=512)``.

With ``--baseline SRC`` (the ``src`` folder of another checkout, e.g. ``git worktree add
/tmp/base <commit>``), "fusion only" and the default ``write_fused`` also run with that
tilefuse (``PYTHONPATH=SRC``), interleaved with the others: before and after side by side.

Reports output Mvox/s (level 0 voxels over the time from opening the project to
the finished output), the ratio to the floor and peak RSS; and, since a shared
machine's wall times swing with its load, the CPU time of the process (user +
system, all threads) and Mvox per CPU second with its ratio to the floor's:
the work done, which the load changes far less.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
CONFIGS = {
    "quick": dict(C.COMMON, ndim=3, grid=(1, 2, 2), tile_shape=(64, 256, 256)),
    "full": dict(C.COMMON, ndim=3, grid=(1, 4, 4), tile_shape=(128, 512, 512)),
}


def task_floor(task: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import h5py
    import numpy as np
    from numcodecs import Blosc

    import tilefuse
    from tilefuse.formats.deflate import inflate

    project = tilefuse.open_project(task["xml"])
    plan = tilefuse.plan_fusion(project)
    fused = plan.to_dask()
    chunk = tuple(c[0] for c in fused.chunks)
    h5 = h5py.File(project.loader.path, "r")
    raws, template = [], None
    for name in h5:  # every level-0 dataset's raw chunks, read before timing (the floor is the codecs)
        if not name.startswith("t"):
            continue
        for setup in h5[name]:
            ds = h5[name][setup]["0"]["cells"]
            for info in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())):
                raws.append(ds.id.read_direct_chunk(info.chunk_offset)[1])
            if template is None:
                template = ds[...]
    n_chunks = int(np.prod(fused.numblocks))
    block = np.ascontiguousarray(np.resize(template, chunk[2:]).astype(fused.dtype))[None, None]
    codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE)
    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(2) as pool:
        inflated = sum(len(b) for b in pool.map(inflate, raws))
        t_in = time.perf_counter() - t0
        encoded = sum(len(b) for b in pool.map(lambda _: codec.encode(block), range(n_chunks)))
    t = time.perf_counter() - t0
    return {"time_s": t, "cpu_s": time.process_time() - c0, "inflate_s": t_in, "encode_s": t - t_in,
            "output_voxels": int(np.prod(fused.shape)),
            "inflated_mb": inflated / 1e6, "encoded_mb": encoded / 1e6, "blocks": len(raws), "chunks": n_chunks}


def _warm_up() -> None:
    """A small fusion of the same kind before the timer ("warmed" rows): the imports (~970 modules:
    dask.array, zarr, numba, ome-zarr-models...), numba's cached kernels and the first HDF5 and zarr
    calls, which a process pays once and not per voxel (~1.7 s of the default row's CPU)."""
    import tempfile

    import tilefuse
    from tilefuse.demo import make_sample_project

    with tempfile.TemporaryDirectory() as folder:
        project = make_sample_project(Path(folder) / "warm", ndim=3, grid=(1, 2, 2), tile_shape=(32, 64, 64),
                                      overwrite=True)
        tilefuse.write_fused(tilefuse.plan_fusion(project), Path(folder) / "warm.ome.zarr")


def task_fusion_only(task: dict) -> dict:
    import numpy as np

    import tilefuse
    from tilefuse._compute import compute

    if task.get("warm"):
        _warm_up()
    t0, c0 = time.perf_counter(), time.process_time()
    project = tilefuse.open_project(task["xml"])
    plan = tilefuse.plan_fusion(project)
    fused = plan.to_dask()
    compute(fused.map_blocks(lambda b: np.zeros((1,) * b.ndim, b.dtype), chunks=(1,) * fused.ndim).sum())
    t = time.perf_counter() - t0
    return {"time_s": t, "cpu_s": time.process_time() - c0, "output_voxels": int(np.prod(plan.shape))}


def task_write_fused(task: dict) -> dict:
    import numpy as np

    import tilefuse

    if task.get("read_back"):
        import tilefuse.writers.ome_zarr as oz

        oz._streamed_pyramid = lambda *args: None
    if task.get("warm"):
        _warm_up()
    t0, c0 = time.perf_counter(), time.process_time()
    project = tilefuse.open_project(task["xml"])
    plan = tilefuse.plan_fusion(project)
    tilefuse.write_fused(plan, task["out"], overwrite=True, resume="never", **task.get("options", {}))
    t, cpu = time.perf_counter() - t0, time.process_time() - c0
    files = sum(1 for p in Path(task["out"]).rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in Path(task["out"]).rglob("*") if p.is_file())
    return {"time_s": t, "cpu_s": cpu, "output_voxels": int(np.prod(plan.shape)), "files": files, "mb": size / 1e6}


def task_zarr_shards(task: dict) -> dict:
    import dask.array as da
    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec

    import tilefuse
    from tilefuse._compute import compute

    t0, c0 = time.perf_counter(), time.process_time()
    project = tilefuse.open_project(task["xml"])
    plan = tilefuse.plan_fusion(project)
    fused = plan.to_dask()
    chunk = tuple(c[0] for c in fused.chunks)
    shard = chunk[:3] + tuple(min(-(-n // c) * c, 2 * c) for n, c in zip(fused.shape[3:], chunk[3:]))
    arr = zarr.create_array(task["out"], shape=fused.shape, chunks=chunk, shards=shard, dtype=fused.dtype,
                            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), fill_value=0,
                            overwrite=True)
    compute(da.store(fused.rechunk(shard), arr, lock=False, compute=False))
    t = time.perf_counter() - t0
    return {"time_s": t, "cpu_s": time.process_time() - c0, "output_voxels": int(np.prod(fused.shape)),
            "shard": list(shard)}


TASKS = {"floor": task_floor, "fusion_only": task_fusion_only, "write_fused": task_write_fused,
         "zarr_shards": task_zarr_shards,
         "generate": C._generate}


RUNS = [
    ("floor (inflate inputs + encode outputs)", {"kind": "floor"}),
    ("fusion only, nothing written", {"kind": "fusion_only"}),
    ("write_fused -> NGFF 0.5 (default)", {"kind": "write_fused", "options": {}}),
    ("fusion only, warmed process", {"kind": "fusion_only", "warm": True}),
    ("write_fused -> NGFF 0.5 (default), warmed process", {"kind": "write_fused", "options": {}, "warm": True}),
    ("write_fused -> NGFF 0.5, pyramid read back", {"kind": "write_fused", "options": {}, "read_back": True}),
    ("write_fused -> NGFF 0.4 (Zarr v2)", {"kind": "write_fused", "options": {"ngff": "0.4"}}),
    ("level 0, zarr-python shards", {"kind": "zarr_shards"}),
    ("level 0, tilefuse shards", {"kind": "write_fused", "options": {"n_levels": 1, "shards": 512}}),
]


def main() -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="run the whole list N times, interleaved")
    parser.add_argument("--baseline", metavar="SRC", help="another tilefuse's src folder to compare with")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="run only the rows whose name contains TEXT (repeatable; the floor always runs)")
    args, workdir, size, info = C.start(parser, TASKS)
    runs = list(RUNS)
    if args.only:
        runs = [r for r in runs if r[1]["kind"] == "floor" or any(t in r[0] for t in args.only)]
    if args.baseline:
        src = str(Path(args.baseline).resolve())
        runs[2:2] = [(f"baseline: {name}", dict(task, src=src)) for name, task in RUNS[1:3]]
    xml = C.sample_project(workdir, **CONFIGS[size])
    out = workdir / "out" / "writer"
    out.mkdir(parents=True, exist_ok=True)
    load = []
    results: dict[str, list[dict]] = {name: [] for name, _ in runs}
    for repeat in range(args.repeat):
        for number, (name, task) in enumerate(runs):
            task = dict(task, name=name, xml=str(xml), out=str(out / f"run{number}.zarr"))
            load.append(os.getloadavg()[0])
            prefix = ["env", f"PYTHONPATH={task['src']}"] if task.get("src") else None
            r = C.run_child(SCRIPT, task, prefix=prefix)
            results[name].append(r)
            rate = r["output_voxels"] / 1e6 / r["time_s"] if r.get("time_s") else None
            print(f"  [{repeat + 1}] {name:<44} {C.fmt(r.get('time_s'))} s  {C.fmt(rate)} Mvox/s  "
                  f"CPU {C.fmt(r.get('cpu_s'))} s  peak {r['peak_rss_mb']:.0f} MB {r.get('error') or ''}", flush=True)
    rows, floor, floor_cpu = [], None, None
    for name, task in runs:
        done = [r for r in results[name] if r.get("time_s")]
        best = min(done, key=lambda r: r["time_s"]) if done else results[name][0]
        cpu = min((r["cpu_s"] for r in done), default=None)
        mvox = best.get("output_voxels", 0) / 1e6
        row = {"config": name, "mvox": mvox, "time_s": best.get("time_s"),
               "rss": max(r["peak_rss_mb"] for r in results[name]),
               "rate": mvox / best["time_s"] if best.get("time_s") else None, "error": best.get("error"),
               "times": [round(r["time_s"], 1) for r in done], "cpu_s": cpu,
               "per_core": mvox / cpu if cpu else None}
        if task["kind"] == "floor":
            floor, floor_cpu = row["rate"], row["per_core"]
            row["note"] = f"inflate {best['inflate_s']:.2f} s + encode {best['encode_s']:.2f} s"
        elif "files" in best:
            row["note"] = f"{best['files']} files, {best['mb']:.0f} MB"
        row["of_floor"] = row["rate"] / floor if floor and row["rate"] else None
        row["of_floor_cpu"] = row["per_core"] / floor_cpu if floor_cpu and row["per_core"] else None
        rows.append(row)
    C.print_table(f"OME-Zarr writer ({size}, best of {args.repeat}; load average {min(load):.1f}-{max(load):.1f} "
                  f"on {os.cpu_count()} cores); peak RSS from os.wait4; CPU = user + system time of all threads",
                  [("config", "configuration", ""), ("mvox", "output Mvox", ".1f"), ("time_s", "wall s", ".2f"),
                   ("rate", "Mvox/s", ".1f"), ("of_floor", "of floor", ".2f"), ("cpu_s", "CPU s", ".1f"),
                   ("per_core", "Mvox per CPU s", ".1f"), ("of_floor_cpu", "of floor (CPU)", ".2f"),
                   ("rss", "peak RSS MB", ".0f"), ("note", "note", ""), ("times", "all wall times s", "")], rows)
    C.write_json(args.json, {"machine": info, "size": size, "load_average": load, "rows": rows})


if __name__ == "__main__":
    main()
