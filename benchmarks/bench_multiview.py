"""Multi-view registration with interest points: accuracy at the beads, time per stage, peers side by side.

Usage::

    python benchmarks/bench_multiview.py [--quick] [--json out.json] [--workdir DIR] [--no-peer]
                                         [--rhapso-python VENV/bin/python [--rhapso-runs 2]]

Data: a 4-angle sample (``make_sample_project(angles=4)``: views rotated 0/45/90/135 degrees
about y, z three times coarser than x/y, a light-sheet PSF, Poisson noise, stage errors of up
to 6 px and 1 degree), one tile per angle (``--quick``) or 2 tiles per angle.

tilefuse: DoG detection, matching (rotation-invariant descriptors, seeded RANSAC) and the
global solve (affine regularised by rigid, lambda 0.1; and a row with a plain rigid model), each
stage timed, run three times in one process to show the result is identical every time.  The error is
``tilefuse.demo.score_multiview``: the same bead mapped from two views by their registered
models, mean and max over all pairs of views and beads (world units = finest voxels).

multiview-stitcher (when installed): its bead registration on the same views - ``detection.
detect_beads`` (LoG, bead size 3 units) on every view, ``registration.register`` with
``pairwise_reg_func=registration_marker_based`` (its RGLDM-like descriptors, RANSAC) and a
rigid, then affine, global optimisation - scored the same way.

Rhapso (``--rhapso-python``, first configuration only: it takes minutes per run): its own
environment, through ``rhapso_runner.py`` (what installing and running it took is there and in
docs/benchmarks.md), on a TIFF twin of the sample (same pixels and truth), run ``--rhapso-runs``
times to see whether the runs agree.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

CONFIGS = {
    "quick": {"angles4_1tile": dict(ndim=3, angles=4, tile_shape=(48, 160, 160))},
    "full": {"angles4_1tile": dict(ndim=3, angles=4, tile_shape=(48, 160, 160)),
             "angles4_2tiles": dict(ndim=3, angles=4, grid=(1, 1, 2), tile_shape=(64, 192, 192), overlap=0.2)},
}


def task_tilefuse(task: dict) -> dict:
    import numpy as np

    import tilefuse
    from tilefuse.demo import score_multiview
    from tilefuse.interestpoints import detect, match
    from tilefuse.interestpoints.options import MatchingOptions
    from tilefuse.registration.global_affine import PointMatches
    from tilefuse.registration.global_points import solve_point_matches

    runs = []
    for _ in range(3):
        project = tilefuse.open_project(task["xml"])
        t0 = time.perf_counter()
        found = detect(project)
        t1 = time.perf_counter()
        matches = match(project, points=found.points)
        t2 = time.perf_counter()
        o = MatchingOptions(**task.get("options", {}))
        links = [PointMatches(p.a, p.b, p.p, p.q, 1.0) for p in matches.matched]
        sol = solve_point_matches(sorted(found.points), links, model=o.model, regularizer=o.regularizer(),
                                  lam=o.lambda_)
        t3 = time.perf_counter()
        for view, m in sol.transforms.items():
            project.preconcatenate(view, m, o.model_name())
        score = score_multiview(project, Path(task["xml"]).with_name("truth.json"))
        runs.append({"detect_s": t1 - t0, "match_s": t2 - t1, "solve_s": t3 - t2, "total_s": t3 - t0,
                     "mean": score["mean"], "max": score["max"], "stage_mean": score["stage_mean"],
                     "stage_max": score["stage_max"], "points": int(np.median([len(p) for p in found.points.values()])),
                     "inliers": int(sum(len(p.ids_a) for p in matches.matched)),
                     "pairs": f"{len(matches.matched)}/{len(matches.pairs)}",
                     "models": np.stack([sol.transforms[v] for v in sorted(sol.transforms)]).tolist()})
    identical = all(r["models"] == runs[0]["models"] for r in runs)
    best = min(runs, key=lambda r: r["total_s"])
    out = {k: v for k, v in best.items() if k != "models"}
    out.update(identical=identical, runs=len(runs), means=[r["mean"] for r in runs])
    return out


def _peer_sims(project):
    """multiview-stitcher images with each view's full affine (physical units) under 'stage'."""
    import numpy as np
    from multiview_stitcher import spatial_image_utils as si_utils

    dims = ["z", "y", "x"]
    min_res = min(min(project.voxel_size(v)) for v in project.views)
    sims = []
    for view in project.views:
        vs = np.asarray(project.voxel_size(view), dtype=float)
        world = np.diag([min_res] * 3 + [1.0]) @ project.model(view) @ np.diag(list(1.0 / vs) + [1.0])
        sims.append(si_utils.get_sim_from_array(
            project.image(view), dims=dims, scale={d: float(s) for d, s in zip(dims, vs)},
            translation={d: 0.0 for d in dims}, affine=world, transform_key="stage"))
    return sims, min_res


def task_peer(task: dict) -> dict:
    import numpy as np
    from multiview_stitcher import detection, msi_utils, registration

    import tilefuse
    from tilefuse.demo import score_multiview

    project = tilefuse.open_project(task["xml"])
    t0 = time.perf_counter()
    sims, min_res = _peer_sims(project)
    msims = [msi_utils.get_msim_from_sim(sim, scale_factors=[]) for sim in sims]
    points = []
    for msim in msims:
        positions = detection.detect_beads(msim, detection_func_kwargs={"target_size_physical": 3.0 * min_res})
        msi_utils.set_point_set(msim, positions)
        points.append(len(positions))
    t1 = time.perf_counter()
    res = registration.register(
        msims, transform_key="stage", new_transform_key="registered", reg_channel_index=0,
        pairwise_reg_func=registration.registration_marker_based,
        pairwise_reg_func_kwargs={"transform_type": "rigid"}, overlap_tolerance=None,
        groupwise_resolution_kwargs={"transform": task.get("transform", "rigid")},
        pre_registration_pruning_method=None, return_dict=True)
    t2 = time.perf_counter()
    scale = np.diag([min_res] * 3 + [1.0])
    for view, p in zip(project.views, res["params"]):
        a = np.asarray(p.squeeze().values if hasattr(p, "values") else p, dtype=float)
        if a.ndim == 3:
            a = a[0]
        project.preconcatenate(view, np.linalg.inv(scale) @ a @ scale, "multiview-stitcher")
    score = score_multiview(project, Path(task["xml"]).with_name("truth.json"))
    return {"detect_s": t1 - t0, "register_s": t2 - t1, "total_s": t2 - t0, "mean": score["mean"],
            "max": score["max"], "stage_mean": score["stage_mean"],
            "points": int(np.median(points))}


TASKS = {"tilefuse": task_tilefuse, "peer": task_peer}


def rhapso_rows(workdir: Path, label: str, kw: dict, python: str, runs: int, timeout: float) -> list[dict]:
    """Rhapso (rigid, then affine as its pipeline chains them) on a TIFF twin of the sample, ``runs`` times.

    The twin is generated with the same parameters (same pixels, same truth.json); Rhapso reads
    BigStitcher TIFF (filemap2) projects and S3/OME-Zarr, not BDV HDF5.  Each run's XML is scored
    by ``score_multiview`` like tilefuse's; 'identical' compares the transforms of the runs.
    """
    import shutil

    import numpy as np

    import tilefuse
    from tilefuse.demo import score_multiview

    xml = C.sample_project(workdir, f"{label}_tiff", **kw, format="tiff")
    truth = xml.with_name("truth.json")
    same = truth.read_bytes() == (workdir / "data" / label / "truth.json").read_bytes()
    project = tilefuse.open_project(xml)
    vmax = max(float(project.image(v).max().compute()) for v in project.views)
    results, models = [], {"rigid": [], "affine": []}
    for i in range(runs):
        out = workdir / "rhapso" / label / f"run{i}"
        shutil.rmtree(out, ignore_errors=True)
        r = C.run_child(HERE / "rhapso_runner.py", {"name": f"{label} rhapso run {i}", "xml": str(xml),
                                                    "outdir": str(out), "max_intensity": vmax},
                        timeout=timeout, python=python)
        for model in models:
            if "error" in r:
                continue
            scored = xml.with_name(f"rhapso_{model}_run{i}.xml")  # beside the data: its paths are relative
            shutil.copy(r["outputs"][model], scored)
            registered = tilefuse.open_project(scored)
            r[model] = score_multiview(registered, truth)
            models[model].append(np.stack([registered.model(v) for v in registered.views]))
        results.append(r)
    rows = []
    for model in models:
        ok = [r for r in results if model in r]
        if not ok:
            rows.append({"tool": f"Rhapso ({model})", "error": (results[0].get("error") or "")[:60]})
            continue
        best = min(ok, key=lambda r: r["total_s"])
        identical = len(models[model]) > 1 and all(np.array_equal(m, models[model][0]) for m in models[model])
        rows.append({"tool": f"Rhapso ({model})", "stage_mean": best[model]["stage_mean"],
                     "mean": best[model]["mean"], "max": best[model]["max"],
                     "means": [r[model]["mean"] for r in ok], "maxes": [r[model]["max"] for r in ok],
                     "detect_s": best["detect_s"], "match_s": best[f"match_{model}_s"],
                     "solve_s": best[f"solve_{model}_s"], "total_s": best["total_s"], "rss": best["peak_rss_mb"],
                     "identical": identical if len(ok) > 1 else None, "patches": best.get("patches"),
                     "error": None if same else "TIFF twin's truth differs"})
    return rows


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--peer-timeout", type=float, default=1800, help="seconds before a peer run is abandoned")
    p.add_argument("--rhapso-python", metavar="PYTHON",
                   help="the python of a virtual environment with Rhapso (see rhapso_runner.py); runs it on the "
                        "first configuration")
    p.add_argument("--rhapso-runs", type=int, default=2, help="Rhapso runs (to see whether they agree)")
    args, workdir, size, info = C.start(p, TASKS)
    peer = C.peer_available() and not args.no_peer
    rows = []
    for label, kw in CONFIGS[size].items():
        xml = C.sample_project(workdir, label, **kw)
        views = 4 * (kw.get("grid") or (1, 1, 1))[2]
        for tool, options in (("tilefuse", {}), ("tilefuse (rigid)", {"model": "rigid", "regularize": "none"})):
            r = C.run_child(SCRIPT, {"kind": "tilefuse", "name": f"{label} {tool}", "xml": str(xml),
                                     "options": options})
            rows.append({"data": label, "tool": tool, "views": views, "rss": r["peak_rss_mb"], **{k: r.get(k) for k in (
                "detect_s", "match_s", "solve_s", "total_s", "mean", "max", "stage_mean", "stage_max",
                "points", "inliers", "pairs", "identical", "error")}})
            print(f"  {label:<16} {tool}  total {C.fmt(r.get('total_s'))} s  mean {C.fmt(r.get('mean'), '.3f')} "
                  f"max {C.fmt(r.get('max'), '.3f')} (stage {C.fmt(r.get('stage_mean'))})  identical "
                  f"{r.get('identical')}  means {r.get('means')}")
        if peer:
            for transform in ("rigid", "affine"):
                q = C.run_child(SCRIPT, {"kind": "peer", "name": f"{label} multiview-stitcher", "xml": str(xml),
                                         "transform": transform}, timeout=args.peer_timeout)
                rows.append({"data": label, "tool": f"multiview-stitcher ({transform})",
                             "views": views, "rss": q["peak_rss_mb"], "detect_s": q.get("detect_s"),
                             "match_s": q.get("register_s"), "total_s": q.get("total_s"), "mean": q.get("mean"),
                             "max": q.get("max"), "stage_mean": q.get("stage_mean"),
                             "points": q.get("points"), "error": (q.get("error") or "")[:60] or None})
                print(f"  {label:<16} mvs ({transform})  total {C.fmt(q.get('total_s'))} s  mean "
                      f"{C.fmt(q.get('mean'), '.3f')} max {C.fmt(q.get('max'), '.3f')} {q.get('error', '')}")
        if args.rhapso_python and label == next(iter(CONFIGS[size])):
            for row in rhapso_rows(workdir, label, kw, args.rhapso_python, args.rhapso_runs, args.peer_timeout):
                rows.append({"data": label, "views": views, **row})
                print(f"  {label:<16} {row['tool']}  total {C.fmt(row.get('total_s'))} s  mean "
                      f"{C.fmt(row.get('mean'), '.3f')} max {C.fmt(row.get('max'), '.3f')}  runs' means "
                      f"{row.get('means')} maxes {row.get('maxes')}  identical {row.get('identical')} "
                      f"{row.get('error') or ''}")
    C.print_table(
        f"Multi-view registration ({size}): error at the beads (world px: same bead from two views), time per "
        "stage; tilefuse best of 3 runs in one process ('identical': the 3 results equal)",
        [("data", "data", ""), ("tool", "tool", ""), ("views", "views", ""), ("stage_mean", "stage mean", ".2f"),
         ("mean", "mean", ".3f"), ("max", "max", ".3f"), ("points", "points/view", ""),
         ("pairs", "pairs matched", ""), ("inliers", "inliers", ""), ("detect_s", "detect s", ".2f"),
         ("match_s", "match s", ".2f"), ("solve_s", "solve s", ".3f"), ("total_s", "total s", ".2f"),
         ("rss", "peak RSS MB", ".0f"), ("identical", "identical", ""), ("error", "note", "")], rows)
    C.write_json(args.json, {"machine": info, "size": size, "configs": CONFIGS[size], "rows": rows})


if __name__ == "__main__":
    main()
