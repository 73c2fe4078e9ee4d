"""Tiles + a positions file (CSV or Fiji's ``TileConfiguration.txt``) into a BigStitcher project.

The CSV has a header naming ``file,x,y`` (and ``z`` for 3D), in any order,
plus optional integer columns ``tile``, ``channel``, ``illumination``,
``angle`` and ``timepoint``; ``file`` is relative to the folder of tiles.
Each file is read through :mod:`tilefuse.formats.acquisition`, so its
calibration (ImageJ ``unit``/``spacing``, resolution tags, OME physical
sizes) and its channels come along; a multi-channel file becomes one view
per channel.  Files are read lazily, so conversion streams data larger than
memory.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .._options import Options, choice, number, option, optional, parse_numbers, per_axis, text
from ..errors import MissingDataError, ProjectFormatError, TilefuseError
from ..writers.project import FORMATS

__all__ = ["ConvertOptions", "TileEntry", "read_positions_csv", "read_tile_configuration", "read_positions",
           "convert_tiffs", "lazy_tiff"]

#: The CSV format, for ``tilefuse convert --help`` and the docs.
CSV_HELP = ("CSV positions: a header naming file,x,y (and z for 3D) in any order, one row per file (relative to "
            "FOLDER); optional integer columns tile, channel, illumination, angle, timepoint. x,y,z are in --unit "
            "(physical, the default for CSV) or in pixels with --position-unit voxel. Fiji's TileConfiguration.txt "
            "('file; ; (x, y[, z])' lines, pixels) is read too.")


@dataclass
class TileEntry:
    """One input file and where it goes: position in ``x, y, z`` order as written in the file."""

    file: str
    position_xyz: tuple[float, ...]
    attributes: dict[str, int] = field(default_factory=dict)


_ATTRS = ("tile", "channel", "illumination", "angle", "timepoint")


def _text(path: Path) -> str:
    """A positions file as text: UTF-8, with or without the byte-order mark Excel writes."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProjectFormatError(
            f"{path}: not a UTF-8 text file (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as CSV UTF-8 or plain text"
        ) from None
    except OSError as exc:
        raise TilefuseError(f"{path}: cannot read the positions file ({exc.strerror or exc})") from None


def _number(text: str, what: str, where: str) -> float:
    """A finite coordinate, or an error naming the file, line and column."""
    try:
        value = float(text)
    except ValueError:
        raise ProjectFormatError(f"{where}: {what} is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise ProjectFormatError(f"{where}: {what} is {text!r}; positions must be finite numbers")
    return value


def _java_int(text: str, what: str, where: str) -> int:
    """An id as BigStitcher reads it: an integer in Java's ``int`` range."""
    try:
        value = int(text)
    except ValueError:
        raise ProjectFormatError(f"{where}: {what} is {text!r}, not an integer") from None
    from ..writers.project import JAVA_INT

    if not JAVA_INT[0] <= value <= JAVA_INT[1]:
        raise ProjectFormatError(f"{where}: {what} {value} is outside the range of a Java int, which "
                                 "BigStitcher uses for ids")
    return value


def read_positions_csv(path: str | Path) -> list[TileEntry]:
    """Read ``file,x,y[,z]`` rows (header required; extra attribute columns optional).

    The file is UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8").
    Positions must be finite numbers and ids integers in Java's ``int`` range.
    """
    path = Path(path)
    text = _text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if not {"file", "x", "y"} <= set(cols):
            raise ProjectFormatError(f"{path}: the header must name columns file, x, y (and z for 3D); got {cols}")
        entries = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            at = f"{path}, line {line}"
            pos = tuple(_number(row[a], a, at) for a in ("x", "y", "z") if a in row and row[a] != "")
            attrs = {a: _java_int(row[a], a, at) for a in _ATTRS if a in row and row[a] != ""}
            entries.append(TileEntry(row["file"], pos, attrs))
    except csv.Error as exc:  # e.g. a NUL byte: not a CSV file
        raise ProjectFormatError(f"{path}, line {reader.line_num}: not a CSV file ({exc})") from None
    if not entries:
        raise ProjectFormatError(f"{path}: no rows")
    return entries


_TC_LINE = re.compile(r"^\s*([^;]+?)\s*;\s*([^;]*?)\s*;\s*\(([^)]*)\)\s*$")


def read_tile_configuration(path: str | Path) -> list[TileEntry]:
    """Read Fiji's ``TileConfiguration.txt`` (``file; series; (x, y[, z])`` lines, pixels)."""
    path = Path(path)
    entries = []
    dim = None
    for n, raw in enumerate(_text(path).splitlines(), start=1):
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
        pos = tuple(_number(v.strip(), "a coordinate", f"{path}, line {n}") for v in m.group(3).split(","))
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


def _voxel_size(value) -> tuple[float, float, float]:
    sizes = per_axis(number(0, lo_open=True), counts=(2, 3), names="[z,]y,x")(value)
    return sizes if len(sizes) == 3 else (sizes[1],) + sizes  # 2D: z is never used; the pixel size keeps it finest


def _stage_axes(value) -> str:
    from ._build import stage_axes_matrix

    stage_axes_matrix(str(value))
    return ",".join(p.strip().lower() for p in str(value).split(","))


@dataclass(frozen=True)
class ConvertOptions(Options):
    """How to turn acquisitions (or TIFFs and positions) into a project (``tilefuse convert``'s flags)."""

    voxel_size: tuple[float, float, float] | None = option(
        None, check=optional(_voxel_size), parse=parse_numbers, metavar="[Z,]Y,X", example="2,0.65,0.65",
        help="voxel size in --unit, z,y,x (or y,x for 2D tiles); overrides the files' calibration "
             "(default: the files', else 1)")
    unit: str = option("µm", check=text, metavar="UNIT", example="nm",
                       help="unit of --voxel-size and of physical CSV positions (default µm)")
    position_unit: str | None = option(
        None, check=optional(choice(("physical", "voxel"))), parse=str, metavar="{physical,voxel}",
        example="voxel", help="unit of the positions (default: voxel for TileConfiguration, physical for CSV)")
    stage_axes: str = option(
        "x,y,z", check=_stage_axes, metavar="AXES", example="y,x,z",
        help="image axes x,y,z as stage axes, each optionally negated: --stage-axes=-x,y,z when the stage's x "
             "runs against the image's, y,x,z when they are swapped (default x,y,z)")
    in_place: bool = option(False, help="write only the XML: the views are read from the original files "
                                        "(BigStitcher's spimreconstruction.filelist); no pixels are copied")
    format: str = option("hdf5", choices=tuple(FORMATS), example="n5", help="pixel container (default hdf5)")
    chunks: tuple[int, int, int] | None = option(
        None, check=optional(per_axis(number(1, integer=True), counts=(3,))),
        parse=lambda t: parse_numbers(t, int), metavar="Z,Y,X", example="1,64,64", help="block shape of the container")


def convert_tiffs(
    folder: str | Path,
    positions: str | Path,
    output: str | Path,
    options: ConvertOptions | None = None,
    *,
    factors="auto",
    progress: bool = False,
    overwrite: bool = False,
    client=None,
    **changes,
):
    """Make a project from a folder of TIFFs (ImageJ, OME or plain) and a positions file.

    ``options`` (a :class:`ConvertOptions`; ``**changes`` changes its fields)
    gives the voxel size and unit (default: the TIFFs' calibration), the unit
    of the positions, the container and its block shape; ``factors`` the
    pyramid (see :func:`tilefuse.write_project`).  ``position_unit`` defaults
    to ``"voxel"`` for TileConfiguration files (Fiji writes pixels) and
    ``"physical"`` for CSV files.  A file with several channels becomes one
    view per channel (channel ids from the file, unless the CSV has a
    ``channel`` column); view setups are named after the files.
    """
    from ..formats.acquisition import file_stem
    from ..formats.tiff_files import TiffAcquisition
    from ._build import Source, write_sources

    o = ConvertOptions.build(options, **changes)
    folder = Path(folder)
    positions = Path(positions)
    entries = read_positions(positions)
    if o.position_unit is None:
        o = o.replace(position_unit="physical" if positions.suffix.lower() == ".csv" else "voxel")
    ndims = {len(e.position_xyz) for e in entries}
    if len(ndims) != 1:
        raise ProjectFormatError(f"{positions}: rows mix 2D and 3D positions")
    sources, acquisitions = [], []
    for row, e in enumerate(entries):
        path = folder / e.file
        if not path.is_file():
            raise MissingDataError(f"{path}: TIFF not found ({positions}, row {row + 1})")
        with TiffAcquisition(path) as tif:
            acq = tif.describe()
        acquisitions.append(acq)
        zyx = tuple(e.position_xyz[::-1]) if len(e.position_xyz) == 3 else (0.0, *e.position_xyz[::-1])
        stacks = [s for s in acq.stacks if s.series == 0]
        if len({s.channel for s in stacks}) > 1 and "channel" in e.attributes:
            raise ProjectFormatError(f"{positions}, row {row + 1}: {e.file} holds {len({s.channel for s in stacks})} "
                                     "channels but the row gives one channel id; leave out the channel column or "
                                     "split the file")
        key = ("row", e.attributes.get("tile", row)) if "tile" in e.attributes else ("row", row)
        for s in stacks:
            # Named after the file as the CSV gives it (sub/tile0.tif -> sub/tile0), so every tile can be traced back.
            name = str(Path(e.file).with_name(file_stem(e.file)).as_posix())
            sources.append(Source(path, s, zyx, key, name, dict(e.attributes)))
    # The new container may not replace or sit inside the TIFFs or the positions file it is made from.
    return write_sources(sources, acquisitions, output, o, stage_positions=False, factors=factors,
                         progress=progress, overwrite=overwrite, inputs=[positions], client=client)
