"""Sample projects with known truth, and the end-to-end demo.

:func:`make_sample_project` writes a generated mosaic
(:mod:`tilefuse.sample_data`) as a BigStitcher project placed at the *stage*
positions, with the true positions saved beside it (``truth.json``) so that
registration can be scored with :func:`score_registration`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ._options import Options, choice, number, option, optional, parse_numbers, per_axis
from .errors import OptionError
from .project.project import Project
from .project.views import ViewId
from .sample_data import TEXTURES, make_mosaic
from .writers.project import FORMATS

__all__ = ["SampleOptions", "make_sample_project", "sample_outputs", "score_registration", "tile_positions"]


def _whole_numbers(text: str) -> tuple[int, ...]:
    return parse_numbers(text, int)


def _tile_list(value) -> tuple[int, ...]:
    items = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    return tuple(number(0, integer=True)(v) for v in items)


@dataclass(frozen=True)
class SampleOptions(Options):
    """What sample to generate (checked when made; ``tilefuse sample`` and ``demo`` build their flags here)."""

    ndim: int = option(2, check=choice((2, 3)), flags={"--3d": 3},
                       help="a 3D anisotropic light-sheet sample (default: a 2D slide-scanner mosaic)")
    grid: tuple[int, ...] | None = option(
        None, check=optional(per_axis(number(1, integer=True), counts=(2, 3), names="[z,]y,x")),
        parse=_whole_numbers, metavar="[Z,]Y,X", example="2,2",
        help="tiles per axis (default 3,4 in 2D, 1,2,2 in 3D)")
    tile_shape: tuple[int, ...] | None = option(
        None, check=optional(per_axis(number(8, integer=True), counts=(2, 3), names="[z,]y,x")),
        parse=_whole_numbers, flag="--tile", metavar="[Z,]Y,X", example="64,64",
        help="voxels per tile (default 512,512 in 2D, 64,256,256 in 3D)")
    overlap: float = option(0.1, check=number(0, 0.9, lo_open=True), metavar="FRACTION", example="0.2",
                            help="overlap of neighbouring tiles, a fraction of the tile (default 0.1)")
    max_offset: float = option(8.0, check=number(0), metavar="UNITS", example="4",
                               help="largest stage error, world units (default 8)")
    empty_tiles: tuple[int, ...] = option((), check=_tile_list, parse=_whole_numbers, metavar="I,J,...",
                                          example="1", help="tile indices holding only background")
    texture: str = option("procedural", choices=TEXTURES, example="photo", help="what the tiles show")
    format: str = option("hdf5", choices=tuple(FORMATS), example="n5",
                         help="pixel container of the project (default hdf5)")
    seed: int = option(0, check=number(0, integer=True), metavar="N", example="3",
                       help="random seed (the same seed gives the same sample)")

    def _check_together(self) -> None:
        for name in ("grid", "tile_shape"):
            value = getattr(self, name)
            if value is not None and len(value) != self.ndim:
                raise OptionError(name, f"a {self.ndim}D sample needs {self.ndim} numbers, got {value}")


def sample_outputs(outdir: str | Path, format: str = "hdf5") -> list[Path]:
    """The files :func:`make_sample_project` writes: the XML, its pixel container and ``truth.json``."""
    from .writers.project import container_path

    xml = Path(outdir) / "dataset.xml"
    return [xml, container_path(xml, format), xml.with_name("truth.json")]


def make_sample_project(
    outdir: str | Path,
    options: SampleOptions | None = None,
    *,
    factors="auto",
    progress: bool = False,
    overwrite: bool = False,
    **changes,
) -> Project:
    """Generate a tiled sample and write it as ``outdir/dataset.xml`` (+ pixels, ``truth.json``).

    One channel, named ``"488"``; one tile per mosaic tile, numbered row by row.

    Parameters
    ----------
    outdir : path-like
    options : SampleOptions, optional
        What to generate (default ``SampleOptions()``).
    factors : "auto" or sequence
        Pyramid levels (see :func:`tilefuse.write_project`).
    progress, overwrite : bool
        Show a progress bar; replace an existing project and ``truth.json`` in
        ``outdir`` (without it they are refused before anything is generated).
    **changes
        Fields of :class:`SampleOptions` to change (``ndim``, ``grid``,
        ``tile_shape``, ``overlap``, ``max_offset``, ``empty_tiles``,
        ``texture``, ``format``, ``seed``); other keywords are passed to
        :func:`tilefuse.sample_data.make_mosaic` (e.g. ``noise=False``).
    """
    names = {f.name for f in fields(SampleOptions)}
    mosaic_options = {k: changes.pop(k) for k in list(changes) if k not in names}
    o = SampleOptions.build(options, **changes)
    ndim, grid, tile_shape, format = o.ndim, o.grid, o.tile_shape, o.format
    from ._outputs import check_outputs

    outdir = Path(outdir)
    check_outputs(sample_outputs(outdir, format), overwrite=overwrite)
    outdir.mkdir(parents=True, exist_ok=True)
    if grid is None:
        grid = (3, 4) if ndim == 2 else (1, 2, 2)
    if tile_shape is None:
        tile_shape = (512, 512) if ndim == 2 else (64, 256, 256)
    mosaic = make_mosaic(grid, tile_shape, o.overlap, max_offset=o.max_offset, empty_tiles=o.empty_tiles,
                         texture=o.texture, seed=o.seed, **mosaic_options)
    min_res = float(min(mosaic.voxel_size))
    images = [mosaic.tile_dask(i) for i in range(mosaic.n_tiles)]
    voxel_size = tuple(mosaic.voxel_size)
    if ndim == 2:
        voxel_size = (1.0,) + voxel_size
    from .writers.project import write_project

    project = write_project(outdir / "dataset.xml", images, mosaic.stage_positions * min_res,
                            voxel_size=voxel_size, unit="µm", format=format, factors=factors,
                            # a channel named like a real one (its laser line), so that examples
                            # selecting channel="488" run on the sample as written
                            names={"channel": {0: "488"}}, progress=progress, overwrite=overwrite)
    mosaic.save_truth(outdir / "truth.json")
    return project


def tile_positions(project: Project, views: Sequence[ViewId] | None = None) -> np.ndarray:
    """World position (``zyx``) of voxel 0 of each view under its current model."""
    views = list(project.views if views is None else views)
    return np.array([project.model(v)[:-1, -1] for v in views])


def score_registration(project: Project, truth_path: str | Path) -> dict:
    """Position errors against a sample's truth, after removing one global translation.

    Returns mean and max error (world units = finest voxels) over tiles, for
    the stage positions and for the project's current positions.
    """
    truth = json.loads(Path(truth_path).read_text())
    tiles = truth["tiles"]
    true = np.array([t["true_zyx"] for t in tiles], dtype=np.float64)
    stage = np.array([t["stage_zyx"] for t in tiles], dtype=np.float64)
    views = [project.select(timepoint=project.timepoints[0], tile=i)[0] for i in range(len(tiles))]
    current = tile_positions(project, views)
    if true.shape[1] == 2:
        current = current[:, 1:]

    def errors(pos):
        d = pos - true
        d -= d.mean(axis=0)
        e = np.linalg.norm(d, axis=1)
        return float(e.mean()), float(e.max())

    stage_mean, stage_max = errors(stage)
    mean, mx = errors(current)
    return {"stage_mean": stage_mean, "stage_max": stage_max, "mean": mean, "max": mx, "n_tiles": len(tiles)}
