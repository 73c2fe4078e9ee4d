"""Registration of periodic samples: right, or left unlinked and named, never silently wrong (issue 14).

Usage::

    python benchmarks/bench_periodic.py [--quick] [--json out.json] [--workdir DIR]
                                        [--tiles 64,128,256] [--seeds N] [--baseline SRC]

The sweep: ``make_sample_project(periodic=True, tile_shape=(t, t), seed=s)``
(``tilefuse sample --periodic --tile t,t --seed s``: a row of ten tiles of a
turned lattice of dots, period 14 px, with a few distinct marks, 50 %
overlaps, each tile up to a tenth of the overlap off its stage position)
for tile sizes 64, 128 and 256 and seeds 0-9, registered with tilefuse's
defaults and with ``max_stage_error`` = tile / 8 (1.25x the largest error of a
neighbour's step).  A 32 px overlap of 64 px tiles holds a mark (one per 56 px
cell at most, in 35 % of cells) in well under half of the pairs: such a pair
cannot be decided, whatever the method.

Each registration is classed as

* **right**: every tile within 0.5 px of the truth (after removing one global
  translation, ``tilefuse.demo.score_registration``);
* **named**: every kept link within 0.5 px of its true shift, and every pair
  without a link named in a warning (by the pair, or by a group left without
  links): the tiles keep their stage-relative placement there, and the user
  is told where;
* **refused**: no link could be kept; ``register`` stops with an error (exit 2
  from the command line) and writes nothing;
* **wrong**: a kept link off by more than 0.5 px, or a pair without a link that no
  warning names: the result is wrong with no word (the failures of issue 14).

``--baseline SRC`` also runs another checkout's tilefuse (its ``src``
directory), side by side.  Each tile size runs in a fresh subprocess; the
samples are generated once per work directory.  Not timed: the sweep is about
correctness (registration takes 0.1-0.5 s per sample).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
MODES = ("defaults", "max_stage_error")
#: A kept link (or a tile) further than this from the truth is wrong.
TOLERANCE = 0.5


def task_sweep(task: dict) -> dict:
    """Child: generate (once) and register every seed of one tile size in both modes."""
    if task.get("src"):
        sys.path.insert(0, task["src"])
    import numpy as np

    import tilefuse
    from tilefuse.demo import make_sample_project, score_registration
    from tilefuse.errors import RegistrationError
    from tilefuse.sample_data import load_truth

    tile = int(task["tile"])
    rows = []
    for seed in range(int(task["seeds"])):
        outdir = Path(task["datadir"]) / f"periodic_t{tile}_s{seed}"
        if not (outdir / "truth.json").exists():
            make_sample_project(outdir, periodic=True, tile_shape=(tile, tile), seed=seed, overwrite=True)
        truth = load_truth(outdir / "truth.json")
        offsets = truth["true_positions"] - truth["stage_positions"]
        for mode in MODES:
            project = tilefuse.open_project(outdir / "dataset.xml")
            options = {"max_stage_error": tile / 8} if mode == "max_stage_error" else {}
            row = {"tile": tile, "seed": seed, "mode": mode}
            try:
                result = tilefuse.register(project, **options)
            except RegistrationError as exc:
                if "nothing was registered" not in str(exc):
                    raise
                rows.append(dict(row, outcome="refused", links=9, kept=0, wrong_kept=0, unnamed=0))
                continue
            texts = result.warnings()
            tile_of = {key: project.attribute(views[0], "tile") for key, views in result.groups.members.items()}
            wrong = unnamed = 0
            for link in result.links:
                a, b = tile_of[link.a], tile_of[link.b]
                if link.accepted:
                    wrong += float(np.linalg.norm(link.shift[1:] - (offsets[b] - offsets[a]))) > TOLERANCE
                elif not any(f"{link.a} - {link.b}" in t or ("no kept link" in t and (str(link.a) in t
                                                                                       or str(link.b) in t))
                             for t in texts):
                    unnamed += 1
            score = score_registration(result.apply(project), outdir / "truth.json")
            outcome = ("right" if score["max"] < TOLERANCE else "wrong" if wrong or unnamed else "named")
            rows.append(dict(row, outcome=outcome, links=len(result.links), kept=len(result.accepted),
                             wrong_kept=wrong, unnamed=unnamed, mean=score["mean"], max=score["max"],
                             stage_mean=score["stage_mean"], stage_max=score["stage_max"]))
    return {"rows": rows}


def summarize(rows: list[dict], tool: str) -> list[dict]:
    """One line per tile size and mode: how many samples came out right / named / refused / wrong."""
    out = []
    for tile in sorted({r["tile"] for r in rows}):
        for mode in MODES:
            sel = [r for r in rows if r["tile"] == tile and r["mode"] == mode]
            if not sel:
                continue
            count = {k: sum(r["outcome"] == k for r in sel) for k in ("right", "named", "refused", "wrong")}
            wrong_max = [r["max"] for r in sel if r["outcome"] == "wrong"]
            named_max = [r["max"] for r in sel if r["outcome"] == "named"]
            out.append({"tool": tool, "tile": tile, "mode": mode, "samples": len(sel), **count,
                        "links": sum(r["links"] for r in sel), "kept": sum(r["kept"] for r in sel),
                        "wrong_kept": sum(r["wrong_kept"] for r in sel),
                        "stage_max": max((r.get("stage_max", 0.0) for r in sel), default=0.0),
                        "named_max": max(named_max) if named_max else None,
                        "wrong_max": max(wrong_max) if wrong_max else None})
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--tiles", default="64,128,256", help="tile sizes (default 64,128,256)")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per tile size (default 10)")
    p.add_argument("--baseline", metavar="SRC", help="also run this checkout's tilefuse (its src directory)")
    args, workdir, size, info = C.start(p, {"sweep": task_sweep})
    tiles = [int(v) for v in args.tiles.split(",")]
    seeds = 3 if args.quick else args.seeds
    datadir = workdir / "data" / "periodic_sweep"
    datadir.mkdir(parents=True, exist_ok=True)
    tools = [("tilefuse", None)] + ([("tilefuse (--baseline)", args.baseline)] if args.baseline else [])
    summary, rows = [], []
    for tile in tiles:
        for tool, src in tools:
            r = C.run_child(SCRIPT, {"kind": "sweep", "name": f"{tool} {tile} px", "tile": tile, "seeds": seeds,
                                     "datadir": str(datadir), "src": src})
            if "error" in r:
                continue
            for row in r["rows"]:
                row["tool"] = tool
                if row["outcome"] == "wrong":
                    print(f"  WRONG {tool} {tile} px seed {row['seed']} {row['mode']}: max {row['max']:.2f} px "
                          f"(stage {row['stage_max']:.2f}), wrong kept links {row['wrong_kept']}, "
                          f"unnamed {row['unnamed']}")
            rows += r["rows"]
            summary += summarize(r["rows"], tool)
    C.print_table(f"Periodic samples ({seeds} seeds per tile size): right = every tile within {TOLERANCE} px; "
                  "named = kept links right, every pair without a link named; wrong = silently wrong",
                  [("tool", "tool", ""), ("tile", "tile px", ""), ("mode", "options", ""),
                   ("samples", "samples", ""), ("right", "right", ""), ("named", "named", ""),
                   ("refused", "refused", ""), ("wrong", "wrong", ""), ("kept", "links kept", ""),
                   ("links", "of", ""), ("wrong_kept", "wrong kept", ""), ("stage_max", "stage max px", ".1f"),
                   ("named_max", "max px (named)", ".1f"), ("wrong_max", "max px (wrong)", ".1f")], summary)
    C.write_json(args.json, {"machine": info, "size": size, "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
