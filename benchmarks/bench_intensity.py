"""Intensity matching: how well per-view models undo tile gains, and what it costs.

Usage::

    python benchmarks/bench_intensity.py [--quick] [--json out.json] [--workdir DIR]

Two generated 2D projects (``tilefuse.demo.make_sample_project``, BDV HDF5),
each registered first (not timed), then ``tilefuse.match_intensities`` in a
fresh subprocess (time and peak RSS from ``os.wait4``):

* *gains*: tiles that differ only by a random gain in [0.85, 1.15] (no
  vignetting), so the truth is known: after correction every tile should
  have the same signal scale ``a_i * g_i``;
* *vignetting*: the registration benchmark's 600-tile grid (gain and
  vignetting; only the gain part is a per-view linear model).

Reported: overlaps matched, the mismatch of the pairs' matched quantiles
(mean |difference| / median intensity) before and after, and on the gain
data the tile-to-tile spread (coefficient of variation) of the true gains
and of ``a_i * g_i``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

CONFIGS = {
    "quick": {
        "gains": dict(C.COMMON, ndim=2, grid=(3, 4), tile_shape=(512, 512), vignetting=0.0, seed=5),
        "vignetting": dict(C.COMMON, ndim=2, grid=(5, 6), tile_shape=(512, 512)),
    },
    "full": {
        "gains": dict(C.COMMON, ndim=2, grid=(6, 8), tile_shape=(512, 512), vignetting=0.0, seed=5),
        "vignetting": dict(C.COMMON, ndim=2, grid=(20, 30), tile_shape=(512, 512)),
    },
}


def task_match(task: dict) -> dict:
    import numpy as np

    import tilefuse
    from tilefuse.sample_data import make_mosaic

    project = tilefuse.open_project(task["xml"])
    project = tilefuse.register(project).apply(project)  # not timed: the overlaps must be right
    t0 = time.perf_counter()
    result = tilefuse.match_intensities(project)
    elapsed = time.perf_counter() - t0
    out = {"time_s": elapsed, "pairs": len(result.pairs), "views": len(result.models),
           "mismatch_before": result.mismatch_before, "mismatch_after": result.mismatch_after}
    kw = task["mosaic"]
    if kw.get("vignetting", 0.35) == 0.0:
        mosaic = make_mosaic(kw["grid"], kw["tile_shape"], kw["overlap"], seed=kw["seed"],
                             max_offset=kw["max_offset"], vignetting=0.0)
        true = mosaic._gains
        views = [project.select(timepoint=project.timepoints[0], tile=i)[0] for i in range(len(true))]
        scale = np.array([result.models[v][0] for v in views]) * true
        out["cv_true_gain"] = float(np.std(true) / np.mean(true))
        out["cv_corrected"] = float(np.std(scale) / np.mean(scale))
    return out


TASKS = {"match": task_match}


def main() -> None:
    args, workdir, size, info = C.start(C.parser(__doc__.splitlines()[0]), TASKS)
    rows = []
    for name, kw in CONFIGS[size].items():
        xml = C.sample_project(workdir, C.dataset_name(kw) + ("_gains" if "vignetting" in kw else ""), **kw)
        r = C.run_child(SCRIPT, {"kind": "match", "name": name, "xml": str(xml), "mosaic": kw})
        row = dict(r, data=f"{name} {kw['grid'][0]}x{kw['grid'][1]}", rss=r["peak_rss_mb"])
        rows.append(row)
        print(f"  {row['data']:<16} {C.fmt(r.get('time_s'))} s  pairs {r.get('pairs')}  mismatch "
              f"{C.fmt(r.get('mismatch_before'), '.4f')} -> {C.fmt(r.get('mismatch_after'), '.4f')}  "
              f"{r.get('error') or ''}")
    C.print_table(
        f"Intensity matching ({size}); time excludes opening and registering; peak RSS of the whole child",
        [("data", "data", ""), ("views", "views", ""), ("pairs", "overlaps", ""), ("time_s", "time s", ".2f"),
         ("mismatch_before", "mismatch before", ".4f"), ("mismatch_after", "after", ".4f"),
         ("cv_true_gain", "gain spread (true)", ".4f"), ("cv_corrected", "after correction", ".4f"),
         ("rss", "peak RSS MB", ".0f")], rows)
    C.write_json(args.json, {"machine": info, "size": size, "configs": CONFIGS[size], "rows": rows})


if __name__ == "__main__":
    main()
