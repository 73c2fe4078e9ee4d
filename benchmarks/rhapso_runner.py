"""Run Rhapso's alignment on a BigStitcher TIFF project: the peer row of ``bench_multiview.py``.

Runs in Rhapso's own environment (its pins - numpy 1.26, dask 2024.12, scipy 1.13, zarr 3.1.5,
ray 2.9 - cannot share tilefuse's), started by ``bench_multiview.py --rhapso-python
/path/to/venv/bin/python``; it imports nothing from tilefuse.  What installing and running
Rhapso 0.4.5 took (also in docs/benchmarks.md)::

    python3.11 -m venv rhapso-venv
    rhapso-venv/bin/pip install rhapso "pyarrow<18"   # ray imports pyarrow; pyarrow 26 needs numpy 2

plus the run-time patches in :func:`_patch` (each says why), and Ray in local mode so that the
patches apply inside its tasks.

Steps, as Rhapso's local alignment pipeline chains them: DoG detection (sigma 1.8, threshold
0.008, no downsampling: BigStitcher's values), then rigid matching + rigid solve, then affine
matching + affine solve (regularised by rigid), each matching with 3 neighbours, redundancy 1,
significance 3, RANSAC 10 000 iterations, error 5 px, >= 12 inliers.  Writes ``rigid.xml`` and
``affine.xml`` into ``task["outdir"]``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


class _Tiff:
    """Stands in for Rhapso's ``CustomBioImage`` on local TIFF files: the whole stack via tifffile."""

    def __init__(self, path, reader=None):
        self.path = path

    def get_dask_stack(self):
        import dask.array as da
        import tifffile

        return da.from_array(tifffile.imread(self.path))[None, None, None]


def _patch() -> list[str]:
    """Rhapso 0.4.5 as released does not run on a 4-view single-timepoint TIFF project."""
    import Rhapso.data_prep.xml_to_dataframe as xd
    import Rhapso.detection.image_reader as ir
    import Rhapso.detection.overlap_detection as od
    import Rhapso.matching.ransac_matching as rm
    import Rhapso.matching.xml_parser as xp
    import Rhapso.solver.xml_to_dataframe_solver as xs

    done = []
    # 1. three copies of a check that the XML has exactly half as many ViewSetups as
    #    ViewRegistrations (true only with 2 timepoints): "The amount of view setups, view
    #    registrations, and tiles do not match"
    for module in (xd, xp, xs):
        for obj in vars(module).values():
            if isinstance(obj, type) and "check_length" in vars(obj):
                obj.check_length = lambda self, root: True
                done.append(f"{module.__name__}.{obj.__name__}.check_length always true")
    # 2. bioio-tifffile's dask reader hands zarr 3.1.5 a tifffile ZarrTiffStore, which zarr 3 refuses
    #    ("Unsupported type for store_like"); bioio 1.3.0 pins tifffile < 2025.2.18, whose store is
    #    zarr-2 only, and the errors are swallowed inside Ray tasks: detection finds 0 points
    for module in (ir, od, rm):
        module.CustomBioImage = _Tiff
    done.append("CustomBioImage -> tifffile.imread (detection, overlap, matching)")
    return done


def run(task: dict) -> dict:
    import ray

    patches = _patch()
    from Rhapso.pipelines.ray.interest_point_detection import InterestPointDetection
    from Rhapso.pipelines.ray.interest_point_matching import InterestPointMatching
    from Rhapso.pipelines.ray.solver import Solver

    src, out = Path(task["xml"]), Path(task["outdir"])
    out.mkdir(parents=True, exist_ok=True)
    # local mode: tasks run in this process, so the patches above apply inside them
    ray.init(local_mode=True, include_dashboard=False, log_to_driver=False)
    prefix, n5 = str(src.parent) + "/", str(out) + "/"
    detected = str(out / "detected.xml")
    times = {}
    t0 = time.perf_counter()
    InterestPointDetection(
        dsxy=1, dsz=1, min_intensity=0, max_intensity=float(task["max_intensity"]), sigma=1.8, threshold=0.008,
        file_type="tiff", xml_file_path=str(src), image_file_prefix=prefix, xml_output_file_path=detected,
        n5_output_file_prefix=n5, combine_distance=0.5, chunks_per_bound=1, run_type="ray", max_spots=0,
        median_filter=0, overlap_only=False,
    ).run()
    times["detect_s"] = time.perf_counter() - t0
    previous = detected
    for model in ("rigid", "affine"):
        t = time.perf_counter()
        InterestPointMatching(
            xml_input_path=previous, n5_output_path=n5, input_type="tiff", match_type=model, num_neighbors=3,
            redundancy=1, significance=3, search_radius=100, num_required_neighbors=3, model_min_inliers=12,
            ransac_sample_size=4, inlier_threshold=5, min_inlier_ratio=0.1, num_iterations=10000,
            regularization_weight=0.1, image_file_prefix=prefix,
        ).run()
        t2 = time.perf_counter()
        result = str(out / f"{model}.xml")
        Solver(
            xml_file_path_output=result, n5_input_path=n5, xml_file_path=previous, run_type=model,
            relative_threshold=3.5, absolute_threshold=7.0, max_cleanup_rounds=3, min_matches=3, damp=1.0,
            regularization_weight=0.1, max_iterations=10000, max_allowed_error=float("inf"), max_plateauwidth=200,
            metrics_output_path=str(out / f"metrics_{model}.json"), fixed_tile=None,
        ).run()
        times[f"match_{model}_s"] = t2 - t
        times[f"solve_{model}_s"] = time.perf_counter() - t2
        previous = result
    times["total_s"] = time.perf_counter() - t0
    return {**times, "patches": patches, "outputs": {m: str(out / f"{m}.xml") for m in ("rigid", "affine")}}


def main() -> None:
    task = json.loads(sys.argv[sys.argv.index("--child") + 1])
    try:
        result = run(task)
    except Exception as exc:  # report, do not hide
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    Path(task["result_path"]).write_text(json.dumps(result))
    sys.exit(0 if "error" not in result else 1)


if __name__ == "__main__":
    main()
