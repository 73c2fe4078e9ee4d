"""Larger than memory: fuse a generated 3D project into OME-Zarr 0.5 with flat peak memory.

Usage::

    python benchmarks/bench_large.py [--output-gb 32] [--sizes 0.5,5] [--keep] [--json out.json] [--workdir DIR]

The full run (not in CI; ~40 GB of disk: 12 x 12 tiles, ~19 GB of compressed
input and ~19 GB of output at ``--output-gb 30``) fuses a grid of 16-bit tiles
whose fused output is at least ``--output-gb`` GB (default 32), more than the
23.5 GB of RAM of the machine it was written on, to ``out.ome.zarr`` with
``tilefuse.write_fused`` defaults (sharded NGFF 0.5, the whole pyramid) and
reports time, CPU seconds, Mvox/s and peak RSS.  ``--sizes`` instead runs
several smaller outputs (GB, comma-separated) in one go, to show that peak
memory does not grow with the size of the output.

The data: tiles of 128x1024x1024 uint16 (10 % overlap, a 1 x n x n grid) whose
pixels are a cheap function of the world position (smooth waves around 400
counts) plus shot noise from a seeded generator, so overlapping tiles agree and
the compression ratio is that of real, noisy data; written chunk by chunk as a
BigStitcher N5 project (Blosc LZ4 with bit shuffle, one level; ``--input-format
hdf5`` for BDV HDF5 with gzip, several times slower to generate), never timed.
Each fusion runs in a fresh process: peak RSS is its ``ru_maxrss``
(``os.wait4``), plus the psutil-sampled RSS of the process tree.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
TILE = (128, 1024, 1024)
OVERLAP = 0.1
SIGNAL = 400.0  # mean counts: a dim fluorescence sample on an sCMOS camera (noise ~20 counts)
BLOCKS = (32, 256, 256)  # generated and stored block shape
# N5 input with Blosc LZ4 + bit shuffle (what n5-blosc reads in BigStitcher): written by parallel threads at
# codec speed. BDV HDF5 (--input-format hdf5, gzip) goes through HDF5's global lock, one block at a time.
N5_BLOSC = {"type": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 2, "blocksize": 0, "nthreads": 1}


def grid_for(output_gb: float) -> int:
    """Tiles per side of a 1 x n x n grid whose fused uint16 output is at least ``output_gb`` GB."""
    step = TILE[1] * (1 - OVERLAP)
    n = 1
    while TILE[0] * (TILE[1] + (n - 1) * step) ** 2 * 2 / 1e9 < output_gb:
        n += 1
    return n


def _signal(z, y, x):
    """Expected counts at world positions ``z, y, x`` (1-D float32 arrays): a ``(z, y, x)`` block."""
    import numpy as np

    # Smooth waves of the world position, so overlapping tiles agree: a (y, x) pattern modulated along z,
    # built from outer products (a full 3D sin per voxel made generation slower than the fusion measured).
    plane = np.sin(x[None, :] / 37.0) * np.cos(y[:, None] / 53.0) + 0.5 * np.sin(x[None, :] / 91.0 + y[:, None] / 71.0)
    return SIGNAL + (SIGNAL / 2.5) * plane[None] * (0.75 + 0.25 * np.cos(z / 17.0))[:, None, None]


def _tile_block(block_info=None, *, origin=(0, 0, 0), seed=0):
    import numpy as np

    loc = block_info[None]["array-location"]
    signal = _signal(*(np.arange(a, b, dtype=np.float32) + o for (a, b), o in zip(loc, origin)))
    rng = np.random.default_rng([seed, *(int(a) for a, _ in loc), *(int(o) for o in origin)])
    noise = rng.standard_normal(signal.shape, dtype=np.float32) * np.sqrt(signal)  # shot noise, ~Poisson
    return np.clip(signal + noise, 0, 65535).astype(np.uint16)


def task_generate(task: dict) -> dict:
    import dask.array as da
    import numpy as np

    import tilefuse

    n = task["n"]
    step = round(TILE[1] * (1 - OVERLAP))
    positions = [(0, i * step, j * step) for i in range(n) for j in range(n)]
    blocks = tuple((c,) * (t // c) for c, t in zip(BLOCKS, TILE))  # generated block by block
    images = [
        da.map_blocks(
            _tile_block, origin=p, seed=k, chunks=blocks, dtype=np.uint16, meta=np.empty((0, 0, 0), np.uint16)
        )
        for k, p in enumerate(positions)
    ]
    fmt = task.get("format", "n5")
    t0 = time.perf_counter()
    tilefuse.write_project(
        task["xml"],
        images,
        positions,
        voxel_size=(1.0, 1.0, 1.0),
        format=fmt,
        factors=[(1, 1, 1)],
        chunks=BLOCKS,
        compression=N5_BLOSC if fmt == "n5" else "gzip",
    )
    files = [p for p in Path(task["xml"]).parent.rglob("*") if p.is_file()]
    return {"time_s": time.perf_counter() - t0, "gb_written": sum(p.stat().st_size for p in files) / 1e9}


def _cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_output(out: Path, shape, patches: int = 24) -> dict:
    """Compare random patches of the written level 0 with the generated signal (not timed).

    Tiles sit at integer positions and are not registered, so every fused voxel is a
    blend of noisy samples of the same world position: the residual has mean ~0 and
    at most the shot noise's spread (less where tiles overlap).  Catches black or missing chunks and shards,
    misplaced tiles and wrong pyramid wiring at a glance.
    """
    import numpy as np
    import zarr

    level0 = zarr.open_array(str(out / "0"), mode="r")
    lead = (0,) * (level0.ndim - len(shape))  # the t and c axes of the image
    if tuple(level0.shape[len(lead) :]) != tuple(shape):
        raise AssertionError(f"level 0 has shape {level0.shape}, the plan {tuple(shape)}")
    rng = np.random.default_rng(0)
    worst_mean, worst_noise = 0.0, 0.0
    for _ in range(patches):
        start = [int(rng.integers(0, n - p + 1)) for n, p in zip(shape, (8, 64, 64))]
        sl = tuple(slice(a, a + p) for a, p in zip(start, (8, 64, 64)))
        got = np.asarray(level0[lead + sl], dtype=np.float32)
        want = _signal(*(np.arange(a.start, a.stop, dtype=np.float32) for a in sl))
        residual = got - want
        worst_mean = max(worst_mean, abs(float(residual.mean())))
        worst_noise = max(worst_noise, float(residual.std() / np.sqrt(want.mean())))  # 1 = shot noise
    if worst_mean > 3.0 or worst_noise > 1.2:
        raise AssertionError(
            f"fused patches disagree with the signal: |mean residual| up to {worst_mean:.2f} counts, "
            f"residual spread up to {worst_noise:.2f} x the shot noise"
        )
    return {"patches": patches, "worst_mean_residual": round(worst_mean, 3), "worst_noise_ratio": round(worst_noise, 3)}


def task_fuse(task: dict) -> dict:
    import numpy as np

    import tilefuse

    t0, cpu0 = time.perf_counter(), _cpu_s()
    project = tilefuse.open_project(task["xml"])
    plan = tilefuse.plan_fusion(project)
    tilefuse.write_fused(plan, task["out"], overwrite=True, resume="never")
    t, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    files = [p for p in Path(task["out"]).rglob("*") if p.is_file()]
    check = check_output(Path(task["out"]), plan.shape)
    return {
        "check": check,
        "time_s": t,
        "cpu_s": cpu,
        "output_voxels": int(np.prod(plan.shape)),
        "shape": list(plan.shape),
        "files": len(files),
        "gb_written": sum(p.stat().st_size for p in files) / 1e9,
    }


TASKS = {"generate": task_generate, "fuse": task_fuse}


def project_for(workdir: Path, n: int, fmt: str) -> Path:
    """The generated project of an n x n grid, made once per work directory."""
    folder = workdir / "data" / f"large_1x{n}x{n}_{'x'.join(map(str, TILE))}_{fmt}_s{SIGNAL:.0f}"
    xml = folder / "dataset.xml"
    if not xml.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"  generating {n}x{n} tiles of {TILE} ({fmt}) ...", end="", flush=True)
        r = C.run_child(
            SCRIPT, {"kind": "generate", "n": n, "xml": str(xml), "format": fmt, "name": f"generate {n}x{n}"}
        )
        if "error" in r:
            sys.exit(f"could not generate the data: {r['error']}")
        print(f" {r['time_s']:.0f} s, {r['gb_written']:.1f} GB on disk, peak RSS {r['peak_rss_mb']:.0f} MB")
    return xml


def main() -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--output-gb", type=float, default=32.0, help="fused output size in GB (default 32)")
    parser.add_argument("--sizes", help="several smaller output sizes in GB, e.g. 0.5,5 (instead of --output-gb)")
    parser.add_argument(
        "--input-format",
        choices=("n5", "hdf5"),
        default="n5",
        help="container of the generated input (default n5: Blosc LZ4, written in parallel)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the outputs (default: delete each once measured)")
    args, workdir, _, info = C.start(parser, TASKS)
    sizes = [float(s) for s in args.sizes.split(",")] if args.sizes else [args.output_gb]
    rows = []
    for gb in sizes:
        n = grid_for(gb)
        xml = project_for(workdir, n, args.input_format)
        load = os.getloadavg()[0]
        out = workdir / "out" / f"large_{n}x{n}.ome.zarr"
        r = C.run_child(SCRIPT, {"kind": "fuse", "xml": str(xml), "out": str(out), "name": f"fuse {n}x{n}"})
        mvox = r.get("output_voxels", 0) / 1e6
        row = {
            "grid": f"1x{n}x{n}",
            "shape": "x".join(map(str, r.get("shape", []))),
            "gb": mvox * 2 / 1e3,
            "time_s": r.get("time_s"),
            "cpu_s": r.get("cpu_s"),
            "rate": mvox / r["time_s"] if r.get("time_s") else None,
            "rss": r["peak_rss_mb"],
            "tree": r["peak_tree_rss_mb"],
            "files": r.get("files"),
            "written": r.get("gb_written"),
            "load": f"{load:.1f}-{os.getloadavg()[0]:.1f}",
            "error": r.get("error"),
        }
        rows.append(row)
        print(
            f"  {row['grid']}: {row['gb']:.1f} GB output in {C.fmt(row['time_s'])} s, {C.fmt(row['rate'])} Mvox/s, "
            f"peak RSS {row['rss']:.0f} MB; check {r.get('check')} {row['error'] or ''}",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    C.print_table(
        f"Larger than memory ({info.get('ram_gb', '?')} GB RAM, {os.cpu_count()} cores); peak RSS from "
        "os.wait4, tree RSS sampled by psutil",
        [
            ("grid", "tiles", ""),
            ("shape", "output (z y x)", ""),
            ("gb", "output GB (uint16)", ".1f"),
            ("time_s", "time s", ".0f"),
            ("cpu_s", "CPU s", ".0f"),
            ("rate", "Mvox/s", ".1f"),
            ("rss", "peak RSS MB", ".0f"),
            ("tree", "tree RSS MB", ".0f"),
            ("files", "files", ""),
            ("written", "GB on disk", ".1f"),
            ("load", "load avg (start-end)", ""),
        ],
        rows,
    )
    C.write_json(
        args.json,
        {
            "machine": info,
            "rows": rows,
            "tile": TILE,
            "ram_gb": info.get("ram_gb"),
            "note": f"{math.prod(TILE) * 2 / 2**20:.0f} MiB per tile",
        },
    )


if __name__ == "__main__":
    main()
