"""Object storage: what a region read costs on S3, and that local reads kept their speed.

Three measurements, side by side in one run:

1. **Local reads, this checkout vs another** (``--baseline SRC``, e.g. the ``src`` folder of a
   ``git archive main``): every block of every view of a local OME-Zarr and N5 project read one
   region per block, in fresh subprocesses alternating between the two, repeated.  Ratio of medians.
2. **Ranged reads on S3**: an S3-compatible server on 127.0.0.1 (moto, from the ``test`` extra, in a
   thread of this process) counts the requests and response bytes it serves for one chunk of a view
   (cold: project just opened; warm: metadata cached) and for the whole view.
3. **Fusion to and from S3 vs local disk**: ``write_fused`` (OME-Zarr 0.5) of the same project,
   local -> local and s3 -> s3, time ratio.  moto is a Python server sharing the machine's cores
   with the client: the ratio bounds the overhead of the storage layer from above, it is not a
   cloud figure.

Run: ``python benchmarks/bench_storage.py [--quick] [--baseline /tmp/tf-main/src]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _make_projects(workdir: Path, quick: bool) -> dict[str, Path]:
    import numpy as np

    import tilefuse

    shape = (32, 128, 128) if quick else (64, 256, 256)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 4000, size=shape, dtype=np.uint16) for _ in range(4)]
    step = shape[2] - shape[2] // 8
    positions = [(0, 0, 0), (0, 0, step), (0, step, 0), (0, step, step)]
    out = {}
    for fmt in ("zarr", "n5"):
        xml = workdir / fmt / "dataset.xml"
        if not xml.is_file():
            tilefuse.write_project(xml, images, positions, format=fmt, chunks=(32, 64, 64),
                                   factors=[(1, 1, 1)], compression="zstd" if fmt == "n5" else "gzip")
        out[fmt] = xml
    return out


_READ_ALL = r"""
import sys, time, itertools
import tilefuse
t0 = time.perf_counter()
project = tilefuse.open_project(sys.argv[1])
loader = project.loader
n = 0
for view in sorted(project.views):
    shape, chunks = loader.shape(view), loader.chunks(view)
    for idx in itertools.product(*[range(0, s, c) for s, c in zip(shape, chunks)]):
        loader.read(view, 0, tuple(slice(i, min(i + c, s)) for i, c, s in zip(idx, chunks, shape)))
        n += 1
print(time.perf_counter() - t0, n)
"""


def _local_reads(projects: dict[str, Path], baseline: str, repeats: int) -> dict:
    results = {}
    for fmt, xml in projects.items():
        times = {"this": [], "baseline": []}
        for _ in range(repeats):
            for name, src in (("this", str(SRC)), ("baseline", baseline)):
                env = dict(os.environ, PYTHONPATH=src)
                done = subprocess.run([sys.executable, "-c", _READ_ALL, str(xml)], env=env, capture_output=True,
                                      text=True, check=True)
                seconds, blocks = done.stdout.split()
                times[name].append(float(seconds))
        results[fmt] = {"blocks": int(blocks), "this_s": statistics.median(times["this"]),
                        "baseline_s": statistics.median(times["baseline"]),
                        "ratio_this_over_baseline": statistics.median(times["this"]) /
                        statistics.median(times["baseline"])}
    return results


def _s3(projects: dict[str, Path], workdir: Path) -> dict:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from s3server import S3Server

    server = S3Server()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=server.endpoint)
    import fsspec

    import tilefuse
    from tilefuse import _storage
    from tilefuse.loaders.base import drop_cached_handles

    fs = fsspec.filesystem("s3", use_listings_cache=False)
    fs.mkdir("bench")
    out: dict = {}
    for fmt, xml in projects.items():
        url = f"s3://bench/{fmt}"
        fs.put(str(xml.parent) + "/", f"bench/{fmt}", recursive=True)
        drop_cached_handles()
        served = server.served
        served.reset()
        project = tilefuse.open_project(f"{url}/dataset.xml")
        view = sorted(project.views)[0]
        chunks = project.loader.chunks(view)
        region = tuple(slice(0, c) for c in chunks)
        project.loader.read(view, 0, region)
        cold = (sum(served.requests.values()), served.gets, served.body_bytes)
        time.sleep(_storage.REMOTE_IDENTITY_SECONDS + 0.1)  # the metadata identities are asked again, once
        served.reset()
        project.loader.read(view, 0, tuple(slice(c, 2 * c) for c in chunks))
        warm = (sum(served.requests.values()), served.gets, served.body_bytes)
        served.reset()
        project.loader.read(view, 0, tuple(slice(c, 2 * c) for c in chunks))
        hot = (sum(served.requests.values()), served.gets, served.body_bytes)
        served.reset()
        project.loader.read(view, 0, (slice(None),) * 3)
        whole = (sum(served.requests.values()), served.gets, served.body_bytes)
        keys = ("requests", "GETs", "bytes")
        out[fmt] = {"chunk_cold": dict(zip(keys, cold)), "chunk_after_identity_expiry": dict(zip(keys, warm)),
                    "chunk_warm": dict(zip(keys, hot)), "whole_view": dict(zip(keys, whole)),
                    "view_shape": list(project.loader.shape(view)), "chunks": list(chunks)}
    # fusion: local -> local and s3 -> s3, alternating
    xml = projects["zarr"]
    times = {"local": [], "s3": []}
    for i in range(2):
        for where in ("local", "s3"):
            drop_cached_handles()
            src = str(xml) if where == "local" else "s3://bench/zarr/dataset.xml"
            dst = str(workdir / f"fused{i}.ome.zarr") if where == "local" else f"s3://bench/fused{i}.ome.zarr"
            t0 = time.perf_counter()
            plan = tilefuse.plan_fusion(tilefuse.open_project(src))
            tilefuse.write_fused(plan, dst, overwrite=True)
            times[where].append(time.perf_counter() - t0)
    out["fusion"] = {"local_s": min(times["local"]), "s3_s": min(times["s3"]),
                     "ratio_s3_over_local": min(times["s3"]) / min(times["local"]),
                     "voxels": int(plan.to_dask().size)}
    server.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--baseline", help="a tilefuse src folder to compare local reads with")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/tfbench-storage")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    workdir = Path(args.workdir) / ("quick" if args.quick else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(SRC))
    projects = _make_projects(workdir, args.quick)
    results = {"load": os.getloadavg(), "cpus": os.cpu_count()}
    if args.baseline:
        results["local_reads"] = _local_reads(projects, args.baseline, args.repeats)
    results["s3"] = _s3(projects, workdir)
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
