"""Registration accuracy and speed: tilefuse vs ASHLAR and multiview-stitcher on generated ground truth.

Usage::

    python benchmarks/bench_registration.py [--quick] [--json out.json] [--workdir DIR] [--no-peer]
                                            [--peer-large] [--only LABEL] [--baseline SRC]

Accuracy data (``tilefuse.demo.make_sample_project``, BDV HDF5, placed at
the stage positions; tiles displaced from them by 2-8 px per axis): 2D tiles
cut from photographs (``texture="photo"``) and 3D anisotropic procedural
volumes (z spacing 3x xy), with Poisson noise, per-tile vignetting and gain,
and one tile showing only background (``empty_tiles``).  Scores: position
error after removing one global translation, in world px (= full-resolution
px), mean/max over all tiles (``tilefuse.demo.score_registration``) and
over the non-empty tiles; a link counts as *wrong* when its shift differs
from the true difference of the two tiles' offsets by more than 1 px, and
*wrong accepted* when the global solve kept it.

Periodic: issue 14's hard case (``make_sample_project(periodic=True)``: a periodic lattice with a
few distinct marks, 50 % overlap, stage errors up to 20 % of it), tilefuse with its defaults and
with ``max_stage_error=32``, and the peer.

Speed: pairs per second, time of the pairwise step and of the global solve,
and the CPU seconds of the timed part (all threads of the process: on a
loaded machine less noisy than wall time, but blind to parallelism),
on the 600-tile 2D grid (20x30, 512x512) and the 16-tile 3D grid
(1x4x4, 128x512x512).  The 2D grid is registered twice by tilefuse, from
the same tiles written as BDV HDF5 (with a pyramid) and as TIFF files
(``spimreconstruction.filemap2``, one uncompressed TIFF per tile), and once
by ASHLAR from those TIFF files.  Neither tool's import is timed (tilefuse's
registration modules import numba and scipy: ~0.6 CPU s); what numba loads
from its cache at the first call is.  ``--baseline SRC`` also runs another
checkout's tilefuse (its ``src`` directory) on the speed data, next to this one.

ASHLAR (``pip install ashlar``; version 1.20 measured) gets the same TIFF
files and the same stage positions (world px, from the project XML) through
a small ``ashlar.reg.Reader`` that reads each tile with ``tifffile``, and
runs ``EdgeAligner(reader, max_shift=20, filter_sigma=0,
do_make_thumbnail=False).run()`` (its single-cycle defaults except
``max_shift``: 20 px, as neighbours' stage errors differ by up to 16 px per
axis; its default 15 rejects some true links).  Its time is that of
``run()``: reading the tiles, the permutation test for its error threshold,
the pairwise registrations, the spanning tree and the positions; importing
it (which starts a Java VM for Bio-Formats) is not timed.  ASHLAR crops
overlaps at whole-pixel offsets, so it runs a second time with the stage
positions rounded to whole pixels (its best case; the truth of its links is
then taken relative to the rounded positions), and a third time with BLAS
limited to one thread (``threadpoolctl``): its upsampled DFTs are BLAS
products, and BLAS's own threads on a loaded 2-core machine made it 4.6x
slower (38.0 vs 8.2 s).  tilefuse's registration uses no BLAS.

The peer, multiview-stitcher, gets the same tiles (the project's own lazy
arrays), the same stage positions and overlap, built as its quickstart
does (``get_sim_from_array`` with ``scale``/``translation``,
``get_msim_from_sim``), and runs ``registration.register`` with its
defaults (phase correlation, ``alternating_pattern`` pair pruning,
``global_optimization``).  On the 600-tile grid it runs only with
``--peer-large`` (it is much slower; see docs/benchmarks.md).

Every configuration runs in a fresh subprocess; peak RSS from ``os.wait4``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

CONFIGS = {
    "quick": {
        "accuracy": {
            "2d photo": dict(ndim=2, grid=(3, 4), tile_shape=(512, 512), texture="photo", empty_tiles=[6]),
            "3d aniso": dict(ndim=3, grid=(1, 2, 3), tile_shape=(48, 192, 192), empty_tiles=[4]),
        },
        "speed": {
            "2d 5x6": dict(ndim=2, grid=(5, 6), tile_shape=(512, 512)),
            "2d 5x6 tiff": dict(ndim=2, grid=(5, 6), tile_shape=(512, 512), format="tiff"),
            "3d 1x2x2": dict(ndim=3, grid=(1, 2, 2), tile_shape=(64, 256, 256)),
        },
    },
    "full": {
        "accuracy": {
            "2d photo": dict(ndim=2, grid=(6, 8), tile_shape=(512, 512), texture="photo", empty_tiles=[19]),
            "3d aniso": dict(ndim=3, grid=(1, 3, 3), tile_shape=(64, 256, 256), empty_tiles=[5]),
        },
        "speed": {
            "2d 20x30": dict(ndim=2, grid=(20, 30), tile_shape=(512, 512)),
            "2d 20x30 tiff": dict(ndim=2, grid=(20, 30), tile_shape=(512, 512), format="tiff"),
            "3d 1x4x4": dict(ndim=3, grid=(1, 4, 4), tile_shape=(128, 512, 512)),
        },
    },
}
# Issue 14's hard case (tilefuse.sample_periodic): a row of ten 256x256 tiles of a periodic lattice with a
# few distinct marks, 50 % overlap, neighbours' steps off by up to 25.6 px (20 % of the overlap); tilefuse
# runs with its defaults and with --max-stage-error 32, the peer with its defaults.
PERIODIC = {"2d periodic 1x10": dict(ndim=2, periodic=True, grid=(1, 10), tile_shape=(256, 256), overlap=0.5,
                                     max_offset=12.8, format="hdf5", seed=0)}
PERIODIC_OPTIONS = {"tilefuse": {}, "tilefuse --max-stage-error 32": {"max_stage_error": 32.0}}
COMMON = C.COMMON
LARGE = ("2d 20x30", "2d 20x30 tiff")  # multiview-stitcher runs here only with --peer-large
ASHLAR_ON = ("2d 5x6 tiff", "2d 20x30 tiff")  # ASHLAR reads the TIFF files


# ----------------------------------------------------------------------------
# scoring (world units = finest voxels)
# ----------------------------------------------------------------------------
def score_positions(positions, truth: dict) -> dict:
    """Mean/max position error after removing one global translation: all tiles and non-empty tiles."""
    import numpy as np

    true, empty = truth["true_positions"], truth["empty"]
    out = {}
    for label, keep in (("all", np.ones(len(true), bool)), ("nonempty", ~empty)):
        d = positions[keep] - true[keep]
        d -= d.mean(axis=0)
        e = np.linalg.norm(d, axis=1)
        out[f"mean_{label}"], out[f"max_{label}"] = float(e.mean()), float(e.max())
    d = truth["stage_positions"] - true
    d -= d.mean(axis=0)
    out["stage_mean"] = float(np.linalg.norm(d, axis=1).mean())
    return out


def score_links(links, truth: dict) -> dict:
    """``links``: (tile a, tile b, shift b-a world zyx/yx, accepted).  Wrong = off the truth by > 1 px."""
    import numpy as np

    corr = truth["true_positions"] - truth["stage_positions"]
    n = len(links)
    wrong = wrong_acc = acc = 0
    errs = []
    for a, b, shift, accepted in links:
        err = float(np.linalg.norm(np.asarray(shift)[-corr.shape[1]:] - (corr[b] - corr[a])))
        bad = err > 1.0
        wrong += bad
        acc += bool(accepted)
        wrong_acc += bad and bool(accepted)
        if accepted and not bad:
            errs.append(err)
    return {"links": n, "accepted": acc, "wrong": wrong, "wrong_accepted": wrong_acc,
            "link_err_mean": float(np.mean(errs)) if errs else float("nan")}


# ----------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------
def task_tilefuse(task: dict) -> dict:
    if task.get("src"):  # --baseline: another checkout's tilefuse
        sys.path.insert(0, task["src"])
    import tilefuse
    import tilefuse.registration  # noqa: F401  (its libraries' import, ~0.6 CPU s, is not timed: nor is ASHLAR's)
    from tilefuse.demo import score_registration, tile_positions
    from tilefuse.sample_data import load_truth

    truth = load_truth(task["truth"])
    c0 = time.process_time()
    t0 = time.perf_counter()
    project = tilefuse.open_project(task["xml"])
    t_open = time.perf_counter() - t0
    groups = tilefuse.make_groups(project)
    t1 = time.perf_counter()
    options = task.get("options", {})
    links = tilefuse.pairwise(project, groups, **options)
    t2 = time.perf_counter()
    result = tilefuse.solve(links, groups, **options)
    t3 = time.perf_counter()
    c3 = time.process_time()
    registered = result.apply(project)
    official = score_registration(registered, task["truth"])
    views = [registered.select(timepoint=registered.timepoints[0], tile=i)[0] for i in range(len(truth["tile"]))]
    pos = tile_positions(registered, views)
    if truth["true_positions"].shape[1] == 2:
        pos = pos[:, 1:]
    tile_of = {key: project.attribute(vs[0], "tile") for key, vs in groups.members.items()}
    scored = [(tile_of[link.a], tile_of[link.b], link.shift, link.accepted) for link in result.links]
    out = {"open_s": t_open, "pairwise_s": t2 - t1, "solve_s": t3 - t2, "pairs": len(links),
           "official": official, **score_positions(pos, truth), **score_links(scored, truth),
           "summary": result.summary()}
    out["pairs_per_s"] = len(links) / out["pairwise_s"] if out["pairwise_s"] else None
    out["total_s"] = t3 - t0
    out["cpu_s"] = c3 - c0
    return out


def task_peer(task: dict) -> dict:
    import numpy as np
    from multiview_stitcher import msi_utils, registration

    import tilefuse
    from tilefuse.sample_data import load_truth

    truth = load_truth(task["truth"])
    t0 = time.perf_counter()
    project = tilefuse.open_project(task["xml"])
    sims, min_res = C.peer_sims(project)
    msims = [msi_utils.get_msim_from_sim(sim, scale_factors=[]) for sim in sims]
    t1 = time.perf_counter()
    res = registration.register(msims, transform_key="stage", new_transform_key="registered", reg_channel_index=0,
                                return_dict=True)
    t2 = time.perf_counter()
    ndim = truth["true_positions"].shape[1]
    # tile i is view i (make_sample_project writes them in order)
    tiles = [project.attribute(v, "tile") for v in project.views]
    stage_phys = np.array([project.model(v)[:-1, -1][-ndim:] * min_res for v in project.views])
    pos = np.zeros((len(tiles), ndim))
    for i, (p, s) in enumerate(zip(res["params"], stage_phys)):
        a = np.asarray(p.squeeze().values if hasattr(p, "values") else p, dtype=float)
        if a.ndim == 3:  # (t, n+1, n+1)
            a = a[0]
        pos[tiles[i]] = (a @ np.append(s, 1.0))[:-1] / min_res
    graph = res["pairwise_registration"]["graph"]
    used = set()
    for edges in res["groupwise_resolution"]["metrics"].get("used_edges", {}).values():
        used |= {tuple(sorted(e)) for e in edges}
    links = []
    for a, b, data in graph.edges(data=True):
        T = np.asarray(data["transform"].squeeze().values if hasattr(data["transform"], "values")
                       else data["transform"], dtype=float)
        if T.ndim == 3:
            T = T[0]
        # edge transform: affine for view b relative to view a, physical units; the correction
        # of b relative to a is minus its translation (checked against truth: see docs)
        shift = -T[:-1, -1] / min_res
        links.append((tiles[a], tiles[b], shift, tuple(sorted((a, b))) in used))
    return {"register_s": t2 - t1, "build_s": t1 - t0, "pairs": graph.number_of_edges(),
            "pairs_per_s": graph.number_of_edges() / (t2 - t1), "total_s": t2 - t0,
            **score_positions(pos, truth), **score_links(links, truth)}


def task_ashlar(task: dict) -> dict:
    """ASHLAR's EdgeAligner on the project's TIFF files and stage positions (see the module notes)."""
    import numpy as np
    from ashlar import reg  # starts the Java VM: not timed

    import tilefuse
    from tilefuse.sample_data import load_truth

    truth = load_truth(task["truth"])
    project = tilefuse.open_project(task["xml"])
    views = project.views
    paths = [project.loader.files_map[v].path for v in views]
    tiles = np.array([project.attribute(v, "tile") for v in views])
    stage = np.array([project.model(v)[1:3, 3] for v in views])  # world (y, x) = px of these 2D tiles
    if task.get("rounded"):
        stage = np.round(stage)
    size = np.array(project.setup_shape(views[0])[1:])
    reader = _ashlar_reader(reg, paths, stage, size)
    limits = contextlib.nullcontext()
    if task.get("blas1"):  # its upsampled DFTs are BLAS products: BLAS's own threads compete with nothing else
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1, user_api="blas")
    with limits:
        c0 = time.process_time()
        t0 = time.perf_counter()
        aligner = reg.EdgeAligner(reader, channel=0, max_shift=task.get("max_shift", 20), filter_sigma=0,
                                  do_make_thumbnail=False, verbose=False)
        aligner.run()
        t1 = time.perf_counter()
        cpu = time.process_time() - c0
    pos = np.zeros((len(tiles), 2))
    pos[tiles] = aligner.positions
    # its stage positions are what it corrects: the truth of a link is relative to them
    shown = dict(truth, stage_positions=np.zeros_like(pos))
    shown["stage_positions"][tiles] = stage
    used = {tuple(sorted(e)) for e in aligner.spanning_tree.edges}
    links = [(tiles[a], tiles[b], np.asarray(shift), (a, b) in used) for (a, b), (shift, _) in aligner._cache.items()]
    return {"register_s": t1 - t0, "total_s": t1 - t0, "cpu_s": cpu, "pairs": len(aligner._cache),
            "pairs_per_s": len(aligner._cache) / (t1 - t0), **score_positions(pos, truth),
            **score_links(links, shown)}


def _ashlar_reader(reg, paths, stage, size):
    """An ``ashlar.reg.Reader`` over one TIFF per tile at the given (y, x) stage positions."""
    import numpy as np
    import tifffile

    class Metadata(reg.Metadata):
        _num_images = len(paths)
        num_channels = 1
        pixel_size = 1.0
        pixel_dtype = np.dtype(np.uint16)

        def tile_position(self, i):
            return stage[i]

        def tile_size(self, i):
            return size

    class Reader(reg.Reader):
        metadata = Metadata()

        def read(self, series, c):
            return tifffile.imread(paths[series])

    return Reader()


TOOL_NAMES = {"tilefuse": "tilefuse", "tilefuse baseline": "tilefuse (--baseline)",
              "peer": "multiview-stitcher", "ashlar": "ASHLAR",
              "ashlar rounded": "ASHLAR, stage positions rounded",
              "ashlar blas1": "ASHLAR, BLAS on one thread"}
TASKS = {"tilefuse": task_tilefuse, "peer": task_peer, "ashlar": task_ashlar}


# ----------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------
def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--peer-large", action="store_true", help="also run multiview-stitcher on the 600-tile grid")
    p.add_argument("--peer-timeout", type=float, default=1200, help="seconds before a peer run is abandoned")
    p.add_argument("--only", action="append", metavar="LABEL",
                   help="run only the configurations with this label (repeatable), e.g. --only '2d 20x30 tiff'")
    p.add_argument("--baseline", metavar="SRC",
                   help="also run the tilefuse of another checkout's src/ directory (e.g. a git worktree of an "
                        "older commit) on the speed data, alternating with this one")
    args, workdir, size, info = C.start(p, TASKS)
    peer = C.peer_available() and not args.no_peer
    ashlar = C.peer_available("ashlar") and not args.no_peer
    rows = []
    for purpose in ("accuracy", "speed"):
        for label, kw in CONFIGS[size][purpose].items():
            if args.only and label not in args.only:
                continue
            kw = dict(COMMON, **kw)
            xml = C.sample_project(workdir, **kw)
            truth = xml.with_name("truth.json")
            tools = ["tilefuse"]
            if args.baseline and purpose == "speed":
                tools.append("tilefuse baseline")
            if peer and (label not in LARGE or args.peer_large):
                tools.append("peer")
            if ashlar and label in ASHLAR_ON:
                tools += ["ashlar", "ashlar rounded", "ashlar blas1"]
            res = {}
            for tool in tools:
                r = C.run_child(SCRIPT, {"kind": tool.split()[0], "name": f"{label} {tool}", "xml": str(xml),
                                         "truth": str(truth), "rounded": tool.endswith("rounded"),
                                         "blas1": tool.endswith("blas1"),
                                         "src": args.baseline if tool.endswith("baseline") else None},
                                timeout=None if tool.startswith("tilefuse") else args.peer_timeout)
                res[tool] = r
                t = r.get("pairwise_s", r.get("register_s"))
                row = {"data": label, "purpose": purpose, "tool": TOOL_NAMES[tool],
                       "tiles": int(__import__("math").prod(kw["grid"])),
                       "pairs": r.get("pairs"), "pair_s": t, "solve_s": r.get("solve_s"),
                       "pairs_per_s": r.get("pairs_per_s"), "total_s": r.get("total_s"), "cpu_s": r.get("cpu_s"),
                       "rss": r["peak_rss_mb"], **{k: r.get(k) for k in (
                           "mean_all", "max_all", "mean_nonempty", "max_nonempty", "links", "accepted",
                           "wrong", "wrong_accepted", "stage_mean")}}
                if "error" in r:
                    row["note"] = r["error"]
                rows.append(row)
                print(f"  {label:<10} {row['tool']:<18} pairs {row['pairs']}  total {C.fmt(row['total_s'])} s  "
                      f"mean {C.fmt(row['mean_nonempty'], '.3f')} max {C.fmt(row['max_nonempty'], '.3f')} px  "
                      f"wrong accepted {row['wrong_accepted']}  peak {row['rss']:.0f} MB {row.get('note', '')}")
                if tool == "tilefuse" and "summary" in r:
                    print("    " + r["summary"].replace("\n", "\n    "))
            for tool, row in zip(tools[1:], rows[-len(tools) + 1:]):
                if res[tool].get("total_s") and res["tilefuse"].get("total_s"):
                    row["note"] = (f"{res[tool]['total_s'] / res['tilefuse']['total_s']:.1f}x "
                                   "tilefuse's time (open+pairwise+solve)")

    rows += run_periodic(workdir, peer, args.peer_timeout)
    cols_acc = [("data", "data", ""), ("tool", "tool", ""), ("tiles", "tiles", ""),
                ("stage_mean", "stage err mean", ".2f"),
                ("mean_all", "mean (all)", ".3f"), ("max_all", "max (all)", ".3f"),
                ("mean_nonempty", "mean (non-empty)", ".3f"), ("max_nonempty", "max (non-empty)", ".3f"),
                ("links", "links", ""), ("accepted", "accepted", ""), ("wrong", "wrong", ""),
                ("wrong_accepted", "wrong accepted", "")]
    cols_speed = [("data", "data", ""), ("tool", "tool", ""), ("tiles", "tiles", ""), ("pairs", "pairs", ""),
                  ("pair_s", "pairwise s", ".2f"), ("solve_s", "solve s", ".3f"),
                  ("pairs_per_s", "pairs/s", ".1f"), ("total_s", "total s", ".2f"), ("cpu_s", "CPU s", ".2f"),
                  ("rss", "peak RSS MB", ".0f"), ("note", "note", "")]
    C.print_table(f"Registration accuracy ({size}); errors in world px after removing one global translation",
                  cols_acc, rows)
    C.print_table(f"Registration speed ({size}); multiview-stitcher's 'pairwise s' is its whole register() call",
                  cols_speed, rows)
    C.write_json(args.json, {"machine": info, "size": size, "configs": CONFIGS[size], "common": COMMON,
                             "rows": rows})


def run_periodic(workdir, peer: bool, timeout: float) -> list[dict]:
    """The periodic sample: tilefuse with and without --max-stage-error, and the peer, side by side."""
    rows = []
    for label, kw in PERIODIC.items():
        xml = C.sample_project(workdir, "2d_periodic_1x10_256x256_hdf5_s0", **kw)
        runs = [(name, "tilefuse", options) for name, options in PERIODIC_OPTIONS.items()]
        runs += [("multiview-stitcher", "peer", {})] if peer else []
        for name, kind, options in runs:
            r = C.run_child(SCRIPT, {"kind": kind, "name": f"{label} {name}", "xml": str(xml),
                                     "truth": str(xml.with_name("truth.json")), "options": options},
                            timeout=timeout if kind == "peer" else None)
            row = {"data": label, "purpose": "periodic", "tool": name, "tiles": 10, "pairs": r.get("pairs"),
                   "pair_s": r.get("pairwise_s", r.get("register_s")), "solve_s": r.get("solve_s"),
                   "pairs_per_s": r.get("pairs_per_s"), "total_s": r.get("total_s"), "rss": r["peak_rss_mb"],
                   **{k: r.get(k) for k in ("mean_all", "max_all", "mean_nonempty", "max_nonempty", "links",
                                            "accepted", "wrong", "wrong_accepted", "stage_mean")}}
            if "error" in r:
                row["note"] = r["error"]
            rows.append(row)
            print(f"  {label:<10} {name:<30} total {C.fmt(row['total_s'])} s  mean {C.fmt(row['mean_all'], '.3f')} "
                  f"max {C.fmt(row['max_all'], '.3f')} px  wrong accepted {row['wrong_accepted']}")
            if "summary" in r:
                print("    " + r["summary"].replace("\n", "\n    "))
    return rows


if __name__ == "__main__":
    main()
