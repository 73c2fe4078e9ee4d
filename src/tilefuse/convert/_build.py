"""From stacks of acquisition files and their positions to a project: resaved or in place.

One path for ``tilefuse convert FOLDER positions.csv`` and ``tilefuse convert
FILE...``: every view is a stack of a file (:class:`~tilefuse.formats.acquisition.Stack`)
with a position; calibration comes from the files unless an option overrides
it (said in a warning); the layout is checked before anything is written.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ProjectFormatError, TilefuseError
from ..formats.acquisition import Acquisition, Stack, unit_factor
from ..project.checks import MAX_COORDINATE
from .flips import flip_warning
from .layout import layout_warnings

log = logging.getLogger(__name__)

__all__ = ["Source", "write_sources", "stage_axes_matrix"]


@dataclass
class Source:
    """One view to be: a stack of a file, where it is and which ids it gets."""

    file: Path
    stack: Stack
    #: ``(z, y, x)``; in µm for stage positions, else in the unit of ``position_unit``
    position: tuple[float, float, float] | None
    tile_key: tuple
    tile_name: str
    #: ids given by a positions file (tile, channel, illumination, angle, timepoint)
    ids: dict[str, int] = field(default_factory=dict)


def stage_axes_matrix(spec: str) -> np.ndarray:
    """``"x,y,z"``-like text (a permutation, each axis optionally negated) as a 3x3 ``(z, y, x)`` matrix.

    Row ``i`` of the result picks (and signs) the stage axis that image axis
    ``i`` follows: ``"-x,y,z"`` flips x, ``"y,x,z"`` swaps x and y.
    """
    parts = [p.strip().lower() for p in spec.split(",")]
    axes = [p.lstrip("+-") for p in parts]
    if sorted(axes) != ["x", "y", "z"]:
        raise ValueError(f"stage axes must name x, y and z once each, optionally with '-', got {spec!r}")
    col = {"z": 0, "y": 1, "x": 2}
    m = np.zeros((3, 3))
    for image_axis, (part, axis) in zip("xyz", zip(parts, axes)):
        m[col[image_axis], col[axis]] = -1.0 if part.startswith("-") else 1.0
    return m


def merge_voxel_sizes(acquisitions: list[Acquisition]) -> tuple[tuple, list[str]]:
    """One ``(z, y, x)`` voxel size in µm from the files (None where none says); differing files are refused."""
    merged: list[float | None] = [None, None, None]
    source: list[Path | None] = [None, None, None]
    for acq in acquisitions:
        for a in range(3):
            v = acq.voxel_size[a]
            if v is None:
                continue
            if merged[a] is None:
                merged[a], source[a] = v, acq.path
            elif not math.isclose(v, merged[a], rel_tol=1e-5):
                raise ProjectFormatError(
                    f"{acq.path}: voxel size {'zyx'[a]} = {v:g} µm, but {source[a]} says {merged[a]:g} µm; convert "
                    "files of one calibration together (or give --voxel-size)")
    return tuple(merged), []


def write_sources(sources: list[Source], acquisitions: list[Acquisition], output, options, *, stage_positions: bool,
                  factors="auto", progress=False, overwrite=False, inputs=(), client=None):
    """Write the project of ``sources`` (see :func:`tilefuse.convert.convert_files` for the options)."""
    from ..loaders import loader_class
    from ..project.views import ViewId
    from ..writers.project import write_project

    if not sources:
        raise TilefuseError("nothing to convert: the files hold no image stack")
    for acq in acquisitions:
        for note in acq.notes:
            log.info("%s: %s", acq.path, note)
    nz = max(s.stack.shape[0] for s in sources)
    # Warnings are said once the project is written: a refused input gets its one-line error alone.
    warnings: list[str] = []
    voxel, unit = _voxel_size(acquisitions, options, warnings, is_3d=nz > 1)
    if stage_positions:
        # Options that only apply to positions files: given here, they would otherwise be ignored without a word.
        if options.position_unit is not None:
            warnings.append(f"--position-unit {options.position_unit} is ignored: the stage positions come from the "
                            "files, in their own unit")
        if options.voxel_size is None and unit_factor(options.unit) != 1.0:
            warnings.append(f"--unit {options.unit} is ignored without --voxel-size: the voxel size and the stage "
                            "positions come from the files, in their own unit (the project is in µm)")
    positions, position_unit = _positions(sources, options, unit, stage_positions, voxel)

    tiles: dict[tuple, int] = {}
    for s in sources:
        tiles.setdefault(s.tile_key, len(tiles))
    ids = {k: [] for k in ("tiles", "channels", "illuminations", "angles", "timepoints")}
    names: dict[str, dict[int, str]] = {"tile": {}, "channel": {}, "setup": {}}
    channel_names = {}
    for acq in acquisitions:
        for c, n in acq.channel_names.items():
            channel_names.setdefault(c, n)
    n_channels = len({s.stack.channel for s in sources})
    for i, s in enumerate(sources):
        tile = s.ids.get("tile", tiles[s.tile_key])
        channel = s.ids.get("channel", s.stack.channel)
        ids["tiles"].append(tile)
        ids["channels"].append(channel)
        ids["illuminations"].append(s.ids.get("illumination", s.stack.illumination))
        ids["angles"].append(s.ids.get("angle", s.stack.angle))
        ids["timepoints"].append(s.ids.get("timepoint", s.stack.timepoint))
        names["tile"].setdefault(tile, s.tile_name)
        if s.stack.channel in channel_names:
            names["channel"].setdefault(channel, channel_names[s.stack.channel])
        cname = names["channel"].get(channel, str(channel))
        names["setup"][i] = s.tile_name + (f" {cname}" if n_channels > 1 else "")

    extents = np.array([np.array(s.stack.shape) * voxel for s in sources])
    physical = positions * (voxel if position_unit == "voxel" else 1.0)
    first = {}
    for i, t in enumerate(ids["tiles"]):
        first.setdefault(t, i)
    layout_ok = False
    if np.isfinite(physical).all() and np.abs(physical / voxel.min()).max() <= MAX_COORDINATE:
        # (positions beyond that are refused by write_project with a message of their own)
        found = layout_warnings(physical[list(first.values())], extents[list(first.values())], unit, voxel)
        warnings += found
        layout_ok = not found
    if not stage_positions:
        warnings += _overridden_stage_positions(sources, physical, unit, voxel)

    # Lazy views over the files (one temporary view id per source): resaving streams them block by block.
    mapping = {ViewId(s.stack.timepoint, i): (s.file, s.stack.series, s.stack.channel) for i, s in enumerate(sources)}
    reader = loader_class("spimreconstruction.filelist").for_path(mapping)
    images = [reader.image(ViewId(s.stack.timepoint, i)) for i, s in enumerate(sources)]
    kwargs = {"factors": factors} if options.chunks is None else {"factors": factors, "chunks": options.chunks}
    in_place = [(s.file, s.stack.series, s.stack.channel) for s in sources] if options.in_place else None
    project = write_project(output, images, positions, voxel_size=voxel, unit=unit, position_unit=position_unit,
                            format=options.format, progress=progress, overwrite=overwrite,
                            inputs=[*inputs, *{s.file for s in sources}], names=names, client=client,
                            in_place=in_place, **ids, **kwargs)
    if layout_ok and len(first) > 1:
        # A flipped stage axis keeps every overlap's size: only the overlaps' pixels can tell.
        flipped = flip_warning(project, _one_view_per_tile(project), options.stage_axes, client=client)
        if flipped:
            warnings.append(flipped)
    for warning in warnings:
        log.warning("%s", warning)
    return project


def _voxel_size(acquisitions, options, warnings: list[str], *, is_3d: bool) -> tuple[np.ndarray, str]:
    """The voxel size ``(z, y, x)`` and its unit: the option's, else the files', else 1 (with a warning)."""
    from_files, _ = merge_voxel_sizes(acquisitions)
    if options.voxel_size is not None:
        given = np.asarray(options.voxel_size, dtype=float)
        if None not in from_files[1:]:
            factor = unit_factor(options.unit)
            shown = tuple(round(v / factor, 6) if v is not None and factor else v for v in from_files)
            if factor is None or not np.allclose(
                    [g * factor for g, f in zip(given, from_files) if f is not None],
                    [f for f in from_files if f is not None], rtol=1e-5):
                warnings.append("--voxel-size {} {} overrides the voxel size the files give, {} {}".format(
                    ",".join(f"{v:g}" for v in given), options.unit,
                    ",".join("?" if v is None else f"{v:g}" for v in shown), options.unit if factor else "µm"))
        return given, options.unit
    z, y, x = from_files
    if y is None or x is None:
        warnings.append(f"the files have no pixel size and no --voxel-size was given: assuming 1 {options.unit} "
                        "per pixel; give --voxel-size if that is wrong")
        return np.array([z if z is not None else 1.0, 1.0, 1.0]), options.unit
    if z is None and is_3d:
        warnings.append(f"the files have no z step and no --voxel-size was given: assuming {x:g} µm (the "
                        "pixel size); give --voxel-size Z,Y,X if that is wrong")
    if z is None or not is_3d:
        # Single planes: a z step is never used, but a smaller one than the pixel (a CZI's 1 µm "Distance Z"
        # beside 1.08 µm pixels) would become the world unit and fusion would upsample the mosaic to it.
        z = min(x, y)
    return np.array([z, y, x]), "µm"


def _positions(sources, options, unit: str, stage_positions: bool, voxel) -> tuple[np.ndarray, str]:
    """Positions ``(n, 3)`` in the unit of the voxel size (or in voxels), with the stage axes applied."""
    m = stage_axes_matrix(options.stage_axes)
    if stage_positions:
        missing = [s for s in sources if s.stack.position is None]
        if missing and len({s.tile_key for s in sources}) > 1:
            s = missing[0]
            raise ProjectFormatError(
                f"{s.file}: series {s.stack.series} ({s.tile_name}) has no stage position in the file's metadata; "
                "give the positions in a file: tilefuse convert FOLDER positions.csv")
        factor = unit_factor(unit)
        if factor is None:
            raise ProjectFormatError(f"the stage positions are in µm but the voxel size is in {unit!r}; give "
                                     "--unit as a length unit")
        pos = np.array([s.stack.position or (0.0, 0.0, 0.0) for s in sources], dtype=float) / factor
        return pos @ m.T, "physical"
    pos = np.array([s.position for s in sources], dtype=float)
    position_unit = options.position_unit
    if position_unit is None:
        raise ValueError("position_unit must be known for positions from a file")
    if position_unit == "physical" and unit != options.unit:
        # Physical positions are in --unit; the project's unit is the files' (µm) when they give the voxel size.
        given, project = unit_factor(options.unit), unit_factor(unit)
        if given is None or project is None:
            raise ProjectFormatError(f"the positions are in {options.unit!r} and the files' voxel size in {unit!r}; "
                                     "give --voxel-size in the unit of the positions, or the positions in pixels "
                                     "(--position-unit voxel)")
        pos = pos * (given / project)
    return pos @ m.T, position_unit


def _overridden_stage_positions(sources, physical: np.ndarray, unit: str, voxel: np.ndarray) -> list[str]:
    """A warning when a positions file moves tiles away from the stage positions their files record.

    Only the layout is compared (both relative to the first tile): the stage's origin is arbitrary.
    """
    factor = unit_factor(unit)
    if factor is None or any(s.stack.position is None for s in sources) or len(sources) < 2:
        return []
    recorded = np.array([s.stack.position for s in sources], dtype=float) / factor
    moved = np.abs((physical - physical[0]) - (recorded - recorded[0])).max(axis=1)
    worst = int(np.argmax(moved))
    if moved[worst] <= voxel.max():
        return []
    return [f"the positions file overrides the stage positions recorded in the files: it moves "
            f"{sources[worst].file.name} by {moved[worst]:.4g} {unit} from where its file's metadata put it "
            f"(relative to the first tile); the positions file is used"]


def _one_view_per_tile(project) -> list:
    """The view of each tile at the first timepoint and the lowest channel id (tiles in id order)."""
    chosen = {}
    for view in project.views:
        attrs = project.data.setups[view.setup].attributes
        key = (view.timepoint, attrs.get("channel", 0), attrs.get("illumination", 0), attrs.get("angle", 0))
        tile = attrs.get("tile", 0)
        if tile not in chosen or key < chosen[tile][0]:
            chosen[tile] = (key, view)
    return [chosen[t][1] for t in sorted(chosen)]
