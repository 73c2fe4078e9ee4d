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

from ._options import Options, choice, number, option, optional, parse_number, parse_numbers, per_axis
from .errors import OptionError
from .project.project import Project
from .project.views import ViewId
from .sample_data import STAGE_AXIS, TEXTURES, load_multiview_truth, make_mosaic, make_multiview
from .writers.project import FORMATS

__all__ = ["SampleOptions", "make_sample_project", "sample_outputs", "score_registration", "score_multiview",
           "tile_positions"]


def _whole_numbers(text: str) -> tuple[int, ...]:
    return parse_numbers(text, int)


def _flag(value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OptionError("", f"must be True or False, got {value!r}")
    return bool(value)


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
    overlap: float | None = option(None, check=optional(number(0, 0.9, lo_open=True)), parse=parse_number,
                                   metavar="FRACTION",
                                   example="0.2",
                                   help="overlap of neighbouring tiles, a fraction of the tile (default 0.1; 0.5 "
                                        "with --periodic)")
    max_offset: float | None = option(None, check=optional(number(0)), parse=parse_number, metavar="UNITS",
                                      example="4",
                                      help="largest stage error of a tile, world units (default 8; with --periodic "
                                           "a tenth of the overlap, so that neighbours' steps differ by up to a fifth "
                                           "of it)")
    empty_tiles: tuple[int, ...] = option((), check=_tile_list, parse=_whole_numbers, metavar="I,J,...",
                                          example="1", help="tile indices holding only background")
    texture: str = option("procedural", choices=TEXTURES, example="photo", help="what the tiles show")
    format: str = option("hdf5", choices=tuple(FORMATS), example="n5",
                         help="pixel container of the project (default hdf5)")
    seed: int = option(0, check=number(0, integer=True), metavar="N", example="3",
                       help="random seed (the same seed gives the same sample)")
    angles: int = option(0, check=number(0, 36, integer=True), metavar="N", example="4",
                         help="a multi-angle 3D light-sheet sample with beads: N views rotated about y, 180/N "
                              "degrees apart (4: 0/45/90/135); grid is then the tiles per angle (1,Y,X)")
    max_rotation: float = option(1.0, check=number(0, 20), metavar="DEGREES", example="0.5",
                                 help="largest rotation error of an angle, degrees (with --angles; default 1)")
    periodic: bool = option(False, check=_flag,
                            help="a 2D row of tiles showing a periodic lattice with a few distinct marks, half-tile "
                                 "overlaps and stage errors up to a fifth of them: the hard case of "
                                 "docs/registration.md (default grid 1,10, tile 256,256)")

    def _check_together(self) -> None:
        ndim = 3 if self.angles else self.ndim
        for name in ("grid", "tile_shape"):
            value = getattr(self, name)
            if value is not None and len(value) != ndim:
                raise OptionError(name, f"a {ndim}D sample needs {ndim} numbers, got {value}")
        if self.angles == 1:
            raise OptionError("angles", "a multi-angle sample needs at least 2 angles (0: a tiled mosaic)")
        if self.angles and self.grid is not None and self.grid[0] != 1:
            raise OptionError("grid", f"a multi-angle sample has tiles along y and x only: use 1,Y,X, got {self.grid}")
        if self.angles and self.texture != "procedural":
            raise OptionError("texture", "a multi-angle sample shows procedural tissue and beads")
        if self.periodic and (self.ndim != 2 or self.angles):
            raise OptionError("periodic", "the periodic sample is a 2D mosaic (not --3d or --angles)")
        if self.periodic and self.texture not in ("procedural", "periodic"):
            raise OptionError("texture", "the periodic sample shows its own texture (a lattice with marks)")

    def layout(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None, float, float, str]:
        """``(grid, tile_shape, overlap, max_offset, texture)`` with this sample's defaults filled in
        (grid and tile stay None where the kind of sample decides)."""
        if not self.periodic:
            return (self.grid, self.tile_shape, 0.1 if self.overlap is None else self.overlap,
                    8.0 if self.max_offset is None else self.max_offset, self.texture)
        grid = (1, 10) if self.grid is None else self.grid
        tile = (256, 256) if self.tile_shape is None else self.tile_shape
        overlap = 0.5 if self.overlap is None else self.overlap
        # each tile off by up to a tenth of the overlap: neighbours' steps differ by up to a fifth
        offset = 0.1 * overlap * min(tile) if self.max_offset is None else self.max_offset
        return grid, tile, overlap, offset, "periodic"


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
    With ``angles=N`` a multi-angle 3D light-sheet sample instead
    (:func:`tilefuse.sample_data.make_multiview`): one view per angle and
    tile, the Angle entities with BigStitcher's ``<axis>``/``<degrees>``, the
    stage's transforms in the XML (``Rotation around axis (0.0, 1.0, 0.0) by
    45.0 degrees``, ``Translation to Regular Grid``, ``calibration``) and the
    true ones and the beads in ``truth.json`` (score with
    :func:`score_multiview`).

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
        ``texture``, ``format``, ``seed``, ``angles``, ``max_rotation``, ``periodic``);
        other keywords are passed to :func:`tilefuse.sample_data.make_mosaic`
        (or :func:`~tilefuse.sample_data.make_multiview`; e.g. ``noise=False``).
    """
    names = {f.name for f in fields(SampleOptions)}
    mosaic_options = {k: changes.pop(k) for k in list(changes) if k not in names}
    o = SampleOptions.build(options, **changes)
    grid, tile_shape, overlap, max_offset, texture = o.layout()
    ndim, format = o.ndim, o.format
    from ._outputs import check_outputs

    outdir = Path(outdir)
    check_outputs(sample_outputs(outdir, format), overwrite=overwrite)
    outdir.mkdir(parents=True, exist_ok=True)
    if o.angles:
        return _multiview_project(outdir, o, mosaic_options, factors, progress, overwrite)
    if grid is None:
        grid = (3, 4) if ndim == 2 else (1, 2, 2)
    if tile_shape is None:
        tile_shape = (512, 512) if ndim == 2 else (64, 256, 256)
    mosaic = make_mosaic(grid, tile_shape, overlap, max_offset=max_offset, empty_tiles=o.empty_tiles,
                         texture=texture, seed=o.seed, **mosaic_options)
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


def _multiview_project(outdir: Path, o: SampleOptions, extra: dict, factors, progress: bool,
                       overwrite: bool) -> Project:
    """The ``angles`` sample: one view per angle and tile, the stage's transforms in the XML."""
    from .writers.project import write_project

    grid = (1, 1) if o.grid is None else tuple(o.grid[1:])
    tile_shape = (48, 160, 160) if o.tile_shape is None else o.tile_shape
    _, _, overlap, max_offset, _ = o.layout()
    mv = make_multiview(o.angles, grid, tile_shape, overlap, max_offset=max_offset,
                        max_rotation=o.max_rotation, empty_views=o.empty_tiles, seed=o.seed, **extra)
    min_res = float(min(mv.voxel_size))
    tile_pos = mv.tile_positions()
    project = write_project(
        outdir / "dataset.xml", [mv.view_dask(i) for i in range(mv.n_views)],
        [tile_pos[t] * min_res for t in mv.view_tile], voxel_size=mv.voxel_size, unit="µm",
        tiles=[int(t) for t in mv.view_tile], angles=[int(a) for a in mv.view_angle],
        transforms=[mv.transform_chain(i) for i in range(mv.n_views)],
        names={"channel": {0: "488"}, "angle": {a: f"{d:g}" for a, d in enumerate(mv.angles)}},
        angle_axes={a: (STAGE_AXIS, d) for a, d in enumerate(mv.angles)},
        format=o.format, factors=factors, progress=progress, overwrite=overwrite)
    setups = [project.select(timepoint=0, tile=int(mv.view_tile[i]), angle=int(mv.view_angle[i]))[0].setup
              for i in range(mv.n_views)]
    mv.save_truth(outdir / "truth.json", setups)
    return project


def score_multiview(project: Project, truth_path: str | Path, views: Sequence[ViewId] | None = None) -> dict:
    """Registration error at the beads of a multi-angle sample (:func:`make_sample_project` with ``angles``).

    Every bead that two views both see (1 voxel in from their edges) is
    mapped from each view's voxels (where it truly is) to world by that
    view's *current* model; the distance between the two is the error of
    that pair at that bead.  Perfect registration gives 0 (up to a transform
    common to all views, which does not count); the stage transforms give
    about the errors the sample was made with.

    Parameters
    ----------
    project : Project
        The sample project, registered or not.
    truth_path : path-like
        Its ``truth.json``.
    views : sequence of ViewId, optional
        Score only these views (default: every view of the truth).

    Returns
    -------
    dict
        ``mean`` and ``max`` distance (world units = finest voxels) over all
        (pair, bead) observations under the project's models,
        ``stage_mean`` / ``stage_max`` the same under the stage transforms,
        ``n_pairs`` (view pairs sharing beads), ``n_observations`` and
        ``per_view`` (view -> mean error of the pairs it is in).
    """
    truth = load_multiview_truth(truth_path)
    ids = [ViewId(int(t), int(s)) for t, s in zip(truth["timepoint"], truth["setup"])]
    wanted = set(ids if views is None else views)
    index = [i for i, v in enumerate(ids) if v in wanted]
    beads = truth["beads"]
    size = None
    voxels = {}
    for i in index:
        size = np.asarray(project.setup_shape(ids[i]), dtype=float)
        inv = np.linalg.inv(truth["true"][i])
        vox = beads @ inv[:3, :3].T + inv[:3, 3]
        voxels[i] = (vox, np.all((vox >= 1.0) & (vox <= size - 2.0), axis=1))
    current = {i: project.model(ids[i]) for i in index}
    errors = {"current": [], "stage": []}
    per_view: dict[ViewId, list[float]] = {ids[i]: [] for i in index}
    n_pairs = 0
    for k, a in enumerate(index):
        for b in index[k + 1:]:
            both = voxels[a][1] & voxels[b][1]
            if not both.any():
                continue
            n_pairs += 1
            for kind, models in (("current", current), ("stage", None)):
                ma = truth["nominal"][a] if models is None else models[a]
                mb = truth["nominal"][b] if models is None else models[b]
                pa = voxels[a][0][both] @ ma[:3, :3].T + ma[:3, 3]
                pb = voxels[b][0][both] @ mb[:3, :3].T + mb[:3, 3]
                d = np.linalg.norm(pa - pb, axis=1)
                errors[kind].append(d)
                if kind == "current":
                    per_view[ids[a]].append(float(d.mean()))
                    per_view[ids[b]].append(float(d.mean()))
    if not n_pairs:
        raise OptionError("views", "no two of these views share a bead: nothing to score")
    cur, stage = np.concatenate(errors["current"]), np.concatenate(errors["stage"])
    return {"mean": float(cur.mean()), "max": float(cur.max()), "stage_mean": float(stage.mean()),
            "stage_max": float(stage.max()), "n_pairs": n_pairs, "n_observations": int(cur.size),
            "per_view": {v: float(np.mean(e)) for v, e in per_view.items() if e}}


def tile_positions(project: Project, views: Sequence[ViewId] | None = None) -> np.ndarray:
    """World position (``zyx``) of voxel 0 of each view under its current model."""
    views = list(project.views if views is None else views)
    return np.array([project.model(v)[:-1, -1] for v in views])


def score_registration(project: Project, truth_path: str | Path) -> dict:
    """Position errors against a sample's truth, after removing one global translation.

    Returns mean and max error (world units = finest voxels) over tiles, for
    the stage positions and for the project's current positions.  A
    multi-angle sample's truth is scored at its beads (:func:`score_multiview`).
    """
    truth = json.loads(Path(truth_path).read_text())
    if truth.get("format", "").startswith("tilefuse-multiview-truth"):
        return score_multiview(project, truth_path)  # rotated views: scored at the beads
    tiles = truth["tiles"]
    true = np.array([t["true_zyx"] for t in tiles], dtype=np.float64)
    stage = np.array([t["stage_zyx"] for t in tiles], dtype=np.float64)
    # One pass over the views (a select per tile scans them all: 10,000 tiles took minutes).
    first = {}
    for view in project.select(timepoint=project.timepoints[0]):
        first.setdefault(project.attribute(view, "tile"), view)
    views = [first[i] for i in range(len(tiles))]
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
