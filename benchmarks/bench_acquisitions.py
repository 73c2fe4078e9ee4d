"""Microscope files: reading their tiles, and ``tilefuse convert`` in place and resaved.

Usage::

    python benchmarks/bench_acquisitions.py [--quick] [--json out.json] [--workdir DIR]

One generated 3D mosaic (``tilefuse.sample_data.make_mosaic``, noise and
vignetting, uint16) is written as a CZI mosaic (pylibCZIrw: one subblock per
tile and plane, at the tile's stage position), as an OME-TIFF (one series per
tile with ``Plane@PositionX/Y``) and as ImageJ hyperstacks + a CSV; writing is
never timed.  Every measured row runs in a fresh subprocess (time inside the
child; peak RSS from ``os.wait4``).

* *read every tile*: each tile whole, plane by plane, through tilefuse's
  reader and through the other Python readers of the format, side by side.
  "exact" says whether every tile came back as written (its overlap with the
  neighbours intact; a reader that composes the mosaic paints one tile over
  the other there, which registration cannot use);
* *convert*: ``tilefuse.convert.convert_files`` / ``convert_tiffs`` in place
  (XML only) and resaved (BDV HDF5 with a pyramid), per format.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

CONFIGS = {
    "quick": dict(grid=(1, 2, 2), tile_shape=(8, 256, 256), overlap=0.15, voxel_size=(2.0, 0.5, 0.5), seed=3),
    "full": dict(grid=(1, 3, 3), tile_shape=(32, 512, 512), overlap=0.15, voxel_size=(2.0, 0.5, 0.5), seed=3),
}


def _digest(array) -> str:
    import numpy as np

    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


# -- data (written once per work directory, never timed) -------------------------------------------
def write_data(workdir: Path, kw: dict) -> Path:
    """The mosaic as CZI, OME-TIFF and ImageJ + CSV under ``workdir``, with each tile's digest."""
    name = "acq_" + "_".join(f"{k}{'x'.join(map(str, v)) if isinstance(v, tuple | list) else v}"
                             for k, v in sorted(kw.items()))
    folder = workdir / "data" / name
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return folder
    import tifffile
    from pylibCZIrw import czi

    from tilefuse.sample_data import make_mosaic

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "imagej").mkdir(exist_ok=True)
    mosaic = make_mosaic(kw["grid"], kw["tile_shape"], kw["overlap"], voxel_size=kw["voxel_size"], seed=kw["seed"])
    vz, vy, vx = kw["voxel_size"]
    digests, rows = [], ["file,x,y,z"]
    with czi.create_czi(str(folder / "scan.czi"), exist_ok=True) as w_czi, \
            tifffile.TiffWriter(folder / "scan.ome.tif", ome=True) as w_ome:
        for i in range(mosaic.n_tiles):
            tile = mosaic.tile(i)
            digests.append(_digest(tile))
            _, y, x = (int(v) for v in mosaic.stage_positions[i])
            for z, plane in enumerate(tile):
                w_czi.write(plane, location=(x, y), plane={"Z": z})
            plane_positions = {"PositionX": [x * vx] * len(tile), "PositionY": [y * vy] * len(tile)}
            w_ome.write(tile, metadata={"axes": "ZYX", "PhysicalSizeX": vx, "PhysicalSizeY": vy,
                                        "PhysicalSizeZ": vz, "Plane": plane_positions})
            tifffile.imwrite(folder / "imagej" / f"tile{i}.tif", tile, imagej=True, resolution=(1 / vx, 1 / vy),
                             metadata={"unit": "um", "spacing": vz, "axes": "ZYX"})
            rows.append(f"tile{i}.tif,{x * vx},{y * vy},0")
        w_czi.write_metadata(document_name="bench", scale_x=vx * 1e-6, scale_y=vy * 1e-6, scale_z=vz * 1e-6)
    (folder / "imagej" / "positions.csv").write_text("\n".join(rows) + "\n")
    positions = [[int(v) for v in p] for p in mosaic.stage_positions]
    manifest.write_text(json.dumps({"digests": digests, "positions": positions, "shape": list(kw["tile_shape"])}))
    return folder


# -- readers (children) ----------------------------------------------------------------------------
def _read_tilefuse(path: Path, n: int, shape) -> list:
    from tilefuse.formats.acquisition import open_acquisition

    with open_acquisition(path) as f:
        f.describe()
        return [f.read(i, 0, 0, tuple(slice(0, s) for s in shape)) for i in range(n)]


def _read_aicspylibczi_mosaic(path: Path, n: int, shape) -> list:
    """aicspylibczi's composed mosaic (``read_mosaic``), cut at the tiles' boxes: the overlaps painted over."""
    import aicspylibczi
    import numpy as np

    czi = aicspylibczi.CziFile(str(path))
    box = czi.get_mosaic_bounding_box()
    planes = [czi.read_mosaic(region=(box.x, box.y, box.w, box.h), scale_factor=1.0, C=0, Z=z)[0]
              for z in range(shape[0])]
    mosaic = np.stack(planes)
    out = []
    for tile in czi.get_all_mosaic_tile_bounding_boxes(C=0, Z=0).items():
        b = tile[1]
        out.append((tile[0].m_index, mosaic[:, b.y - box.y:b.y - box.y + b.h, b.x - box.x:b.x - box.x + b.w]))
    return [a for _, a in sorted(out, key=lambda t: t[0])][:n]


def _read_pylibczirw(path: Path, n: int, shape, positions) -> list:
    """Zeiss' pylibCZIrw: region reads of the scene at each tile's box (composed: overlaps painted over)."""
    import numpy as np
    from pylibCZIrw import czi

    out = []
    with czi.open_czi(str(path)) as doc:
        box = doc.total_bounding_rectangle
        for _, y, x in positions[:n]:
            roi = (box.x + x, box.y + y, shape[2], shape[1])
            out.append(np.stack([doc.read(roi=roi, plane={"Z": z, "C": 0})[..., 0] for z in range(shape[0])]))
    return out


def _read_czifile(path: Path, n: int, shape) -> list:
    """czifile (2019): every subblock of the directory, decoded and grouped by its M index."""
    import czifile
    import numpy as np

    with czifile.CziFile(str(path)) as f:
        tiles = {}
        for entry in f.filtered_subblock_directory:
            dims = {d.dimension: d.start for d in entry.dimension_entries}
            tiles.setdefault(dims.get("M", 0), {})[dims.get("Z", 0)] = entry.data_segment().data().reshape(
                shape[1:])
    return [np.stack([tiles[m][z] for z in range(shape[0])]) for m in sorted(tiles)[:n]]


def _read_tifffile(path: Path, n: int, shape) -> list:
    """tifffile's own ``imread(series=i)``: each series read whole."""
    import tifffile

    return [tifffile.imread(path, series=i) for i in range(n)]


def task_read(task: dict) -> dict:
    folder = Path(task["folder"])
    manifest = json.loads((folder / "manifest.json").read_text())
    n, shape = len(manifest["digests"]), manifest["shape"]
    path = folder / task["file"]
    reader = task["reader"]
    # Imports are not timed (they are paid once per process, not per file).
    for module in _IMPORTS[reader] + (["tilefuse.formats.czi"] if path.suffix == ".czi" else []):
        importlib.import_module(module)
    t0 = time.perf_counter()
    if reader == "tilefuse":
        tiles = _read_tilefuse(path, n, shape)
    elif reader == "aicspylibczi read_mosaic":
        tiles = _read_aicspylibczi_mosaic(path, n, shape)
    elif reader == "pylibCZIrw":
        tiles = _read_pylibczirw(path, n, shape, manifest["positions"])
    elif reader == "czifile":
        tiles = _read_czifile(path, n, shape)
    else:
        tiles = _read_tifffile(path, n, shape)
    elapsed = time.perf_counter() - t0
    exact = sum(_digest(t.astype("uint16", copy=False)) == d for t, d in zip(tiles, manifest["digests"]))
    megabytes = sum(t.nbytes for t in tiles) / 2**20
    return {"time_s": elapsed, "exact": f"{exact}/{n}", "mb_s": megabytes / elapsed}


def task_convert(task: dict) -> dict:
    from tilefuse.convert import convert_files, convert_tiffs

    folder, out = Path(task["folder"]), Path(task["out"])
    for module in ("dask.array", "h5py", "tilefuse.writers.project", "tilefuse.formats.czi", "aicspylibczi", "zarr"):
        importlib.import_module(module)  # not timed
    from tilefuse.loaders import loader_class

    loader_class("spimreconstruction.filelist")
    t0 = time.perf_counter()
    if task["file"] == "imagej":
        project = convert_tiffs(folder / "imagej", folder / "imagej" / "positions.csv", out,
                                in_place=task["in_place"], overwrite=True)
    else:
        project = convert_files([folder / task["file"]], out, in_place=task["in_place"], overwrite=True)
    return {"time_s": time.perf_counter() - t0, "views": len(project.views)}


def task_write(task: dict) -> dict:
    """Write the data in a child: the parent's peak RSS would otherwise pass to every measured child (Linux
    keeps ``ru_maxrss`` across fork and exec)."""
    write_data(Path(task["workdir"]), task["config"])
    return {}


TASKS = {"read": task_read, "convert": task_convert, "write": task_write}

_IMPORTS = {"tilefuse": ["tilefuse.formats.acquisition", "tilefuse.formats.tiff_files", "zarr", "aicspylibczi"],
            "aicspylibczi read_mosaic": ["aicspylibczi"], "pylibCZIrw": ["pylibCZIrw.czi"], "czifile": ["czifile"],
            "tifffile": ["tifffile"]}

READERS = [("scan.czi", "tilefuse"), ("scan.czi", "czifile"), ("scan.czi", "pylibCZIrw"),
           ("scan.czi", "aicspylibczi read_mosaic"), ("scan.ome.tif", "tilefuse"), ("scan.ome.tif", "tifffile")]


def main() -> None:
    args, workdir, size, info = C.start(C.parser(__doc__.splitlines()[0]), TASKS)
    kw = CONFIGS[size]
    r = C.run_child(SCRIPT, {"kind": "write", "name": "write the data", "workdir": str(workdir), "config": kw})
    if "error" in r:
        sys.exit("could not write the data")
    folder = write_data(workdir, kw)  # (already written: only finds the folder)
    # Readers side by side, round-robin three times (the machine is shared: a load spike hits one round, not
    # one reader); the median time of each is reported.
    runs: dict[tuple[str, str], list[dict]] = {row: [] for row in READERS}
    for _ in range(3):
        for file, reader in READERS:
            r = C.run_child(SCRIPT, {"kind": "read", "name": f"{file} {reader}", "folder": str(folder),
                                     "file": file, "reader": reader})
            runs[file, reader].append(r)
            print(f"  read {file:<13} {reader:<24} {C.fmt(r.get('time_s'))} s  exact {r.get('exact')}  "
                  f"{r.get('error') or ''}")
    reads, converts = [], []
    for (file, reader), rs in runs.items():
        rs = sorted(rs, key=lambda r: r.get("time_s", float("inf")))
        r = rs[len(rs) // 2]
        reads.append(dict(r, file=file, reader=reader, rss=r["peak_rss_mb"],
                          mb_s=r.get("mb_s"), times=" / ".join(C.fmt(x.get("time_s")) for x in rs)))
    for file in ("scan.czi", "scan.ome.tif", "imagej"):
        for in_place in (True, False):
            out = workdir / "out" / f"acq_{file.replace('.', '_')}_{'inplace' if in_place else 'resave'}" / "d.xml"
            r = C.run_child(SCRIPT, {"kind": "convert", "name": f"convert {file}", "folder": str(folder),
                                     "file": file, "out": str(out), "in_place": in_place})
            converts.append(dict(r, file=file, mode="in place" if in_place else "resaved (HDF5 + pyramid)",
                                 rss=r["peak_rss_mb"]))
            print(f"  convert {file:<13} {converts[-1]['mode']:<26} {C.fmt(r.get('time_s'))} s  "
                  f"{r.get('error') or ''}")
    n = 1
    for g in kw["grid"]:
        n *= g
    mb = n * kw["tile_shape"][0] * kw["tile_shape"][1] * kw["tile_shape"][2] * 2 / 2**20
    C.print_table(f"Reading every tile whole ({size}: {n} tiles of {kw['tile_shape']} uint16, {mb:.0f} MB)",
                  [("file", "file", ""), ("reader", "reader", ""), ("time_s", "time s (median)", ".2f"),
                   ("times", "3 runs", ""),
                   ("mb_s", "MB/s", ".0f"), ("exact", "tiles exact", ""), ("rss", "peak RSS MB", ".0f")], reads)
    C.print_table(f"tilefuse convert ({size})", [("file", "file", ""), ("mode", "mode", ""),
                                                 ("time_s", "time s", ".2f"), ("rss", "peak RSS MB", ".0f")],
                  converts)
    C.write_json(args.json, {"machine": info, "size": size, "config": kw, "read": reads, "convert": converts})


if __name__ == "__main__":
    main()
