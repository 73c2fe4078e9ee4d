"""Convert plain tiles + positions into a BigStitcher project.

Positions come from a CSV (``file,x,y[,z]`` plus optional ``tile``,
``channel``, ``illumination``, ``angle``, ``timepoint`` columns) or from
Fiji's ``TileConfiguration.txt``.  TIFFs are opened lazily (tifffile's zarr
view wrapped in dask), so conversion streams data larger than memory.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MissingDataError, ProjectFormatError, TilefuseError

__all__ = ["TileEntry", "read_positions_csv", "read_tile_configuration", "read_positions", "convert_tiffs",
           "lazy_tiff"]


@dataclass
class TileEntry:
    """One input file and where it goes: position in ``x, y, z`` order as written in the file."""

    file: str
    position_xyz: tuple[float, ...]
    attributes: dict[str, int] = field(default_factory=dict)


_ATTRS = ("tile", "channel", "illumination", "angle", "timepoint")


def read_positions_csv(path: str | Path) -> list[TileEntry]:
    """Read ``file,x,y[,z]`` rows (header required; extra attribute columns optional)."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if not {"file", "x", "y"} <= set(cols):
            raise ProjectFormatError(f"{path}: the header must name columns file, x, y (and z for 3D); got {cols}")
        entries = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            try:
                pos = tuple(float(row[a]) for a in ("x", "y", "z") if a in row and row[a] != "")
                attrs = {a: int(row[a]) for a in _ATTRS if a in row and row[a] != ""}
            except ValueError as exc:
                raise ProjectFormatError(f"{path}, line {line}: {exc}") from None
            entries.append(TileEntry(row["file"], pos, attrs))
    if not entries:
        raise ProjectFormatError(f"{path}: no rows")
    return entries


_TC_LINE = re.compile(r"^\s*([^;]+?)\s*;\s*([^;]*?)\s*;\s*\(([^)]*)\)\s*$")


def read_tile_configuration(path: str | Path) -> list[TileEntry]:
    """Read Fiji's ``TileConfiguration.txt`` (``file; series; (x, y[, z])`` lines, pixels)."""
    path = Path(path)
    entries = []
    dim = None
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("dim"):
            try:
                dim = int(line.split("=")[1])
            except (IndexError, ValueError):
                raise ProjectFormatError(f"{path}, line {n}: bad dimension line {raw!r}") from None
            continue
        m = _TC_LINE.match(line)
        if m is None:
            raise ProjectFormatError(f"{path}, line {n}: expected 'file; ; (x, y[, z])', got {raw!r}")
        try:
            pos = tuple(float(v) for v in m.group(3).split(","))
        except ValueError:
            raise ProjectFormatError(f"{path}, line {n}: non-numeric position {m.group(3)!r}") from None
        if dim is not None and len(pos) != dim:
            raise ProjectFormatError(f"{path}, line {n}: {len(pos)} coordinates but dim = {dim}")
        entries.append(TileEntry(m.group(1), pos))
    if not entries:
        raise ProjectFormatError(f"{path}: no tile lines")
    return entries


def read_positions(path: str | Path) -> list[TileEntry]:
    """Dispatch on the file: ``.csv`` or a TileConfiguration text file."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: positions file not found")
    return read_positions_csv(path) if path.suffix.lower() == ".csv" else read_tile_configuration(path)


def lazy_tiff(path: str | Path):
    """A TIFF as a lazy dask array (pages read on demand through tifffile's zarr store)."""
    import dask.array as da
    import tifffile
    import zarr

    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"{path}: TIFF not found")
    try:
        store = tifffile.imread(path, aszarr=True)
    except Exception as exc:
        raise TilefuseError(f"{path}: cannot read as TIFF ({exc})") from None
    arr = zarr.open(store, mode="r")
    if hasattr(arr, "shape") is False or isinstance(arr, zarr.Group):
        arr = arr["0"]  # pyramidal TIFF: level 0
    return da.from_zarr(arr)


def convert_tiffs(
    folder: str | Path,
    positions: str | Path,
    output: str | Path,
    *,
    voxel_size=(1.0, 1.0, 1.0),
    unit: str = "µm",
    position_unit: str | None = None,
    format: str = "hdf5",
    progress: bool = False,
    overwrite: bool = False,
    **kwargs,
):
    """Make a project from a folder of TIFFs and a positions file.

    ``position_unit`` defaults to ``"voxel"`` for TileConfiguration files
    (Fiji writes pixels) and ``"physical"`` for CSV files.
    """
    from .writers.project import write_project

    folder = Path(folder)
    positions = Path(positions)
    entries = read_positions(positions)
    if position_unit is None:
        position_unit = "physical" if positions.suffix.lower() == ".csv" else "voxel"
    images = [lazy_tiff(folder / e.file) for e in entries]
    ndims = {len(e.position_xyz) for e in entries}
    if len(ndims) != 1:
        raise ProjectFormatError(f"{positions}: rows mix 2D and 3D positions")
    pos = np.array([e.position_xyz[::-1] for e in entries])  # xyz -> zyx
    attrs = {a: [e.attributes.get(a) for e in entries] for a in _ATTRS}
    extra = {}
    for a in _ATTRS:
        if all(v is not None for v in attrs[a]):
            extra[a + "s"] = attrs[a]
    # The new container may not replace or sit inside the TIFFs or the positions file it is made from.
    inputs = [positions] + [folder / e.file for e in entries]
    return write_project(output, images, pos, voxel_size=voxel_size, unit=unit, position_unit=position_unit,
                         format=format, progress=progress, overwrite=overwrite, inputs=inputs, **extra, **kwargs)
