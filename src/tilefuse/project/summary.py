"""A readable summary of a project: what ``tilefuse info`` prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._text import shortlist
from ..errors import TilefuseError
from ..geometry import Box
from .project import ATTRIBUTE_KINDS, Project
from .views import ViewId

__all__ = ["TilePlacement", "project_summary", "registration_state", "tile_layout"]

#: The text layout is printed up to this many rows and columns (wider would wrap in a terminal).
_MAX_TEXT_ROWS, _MAX_TEXT_COLUMNS = 60, 40


def _fmt_vec(v, fmt="{:g}") -> str:
    return " × ".join(fmt.format(x) for x in v)


def registration_state(project: Project) -> str:
    """One line on how far the project has been registered.

    Counts *views* with a Stitching Transform: a project registered twice has
    two in every view's chain, and that is said separately.
    """
    per_view = [sum(vt.name == "Stitching Transform" for vt in chain)
                for chain in project.data.registrations.values()]
    n_links = len(project.data.stitching_results or [])
    stitched = sum(n > 0 for n in per_view)
    if stitched:
        stacked = max(per_view)
        again = f", up to {stacked} per view from registering {stacked} times" if stacked > 1 else ""
        return (f"stitched ({stitched} of {len(per_view)} views with a Stitching Transform{again}; "
                f"{n_links} pairwise results)")
    if n_links:
        return f"pairwise results only ({n_links} links, no global solve applied)"
    return "not registered (stage/metadata positions only)"


def project_summary(project: Project, detail: int = 1) -> str:
    """Describe a project: loader and files, attributes, sizes, transforms, layout.

    Parameters
    ----------
    project : Project
    detail : int
        0: a few lines; 1: plus attributes and transform chains; 2: plus one
        line per view.
    """
    lines = []
    data = project.data
    fmt = data.image_loader.get("format") if data.image_loader is not None else (
        project._loader.format if project._loader is not None else "none")
    lines.append(f"project      {project.path}")
    lines.append(f"version      SpimData {data.version}; base path {project.data.base_path!r}")
    files = ""
    if project._loader is not None:
        files = shortlist(project._loader.files(), 2)
    elif project._loader_error is not None:
        files = f"(unsupported: {project._loader_error})"
    lines.append(f"image loader {fmt}  {files}")
    views = project.views
    lines.append(
        f"views        {len(views)} ({len(project.setups)} setups × {len(project.timepoints)} timepoints"
        f", {len(project.missing_views)} missing)"
    )
    lines.append(f"timepoints   {shortlist(project.timepoints, 20)}")
    for kind in ATTRIBUTE_KINDS:
        used = sorted({project.attribute(v, kind) for v in views if project.attribute(v, kind) is not None})
        if not project.entities(kind) and not used:
            continue
        shown = shortlist((project.entity_label(kind, i) for i in used), 12)
        lines.append(f"{kind + 's':<12} {len(used)}  [{shown}]")
    sizes = Counter(tuple(s.size) for s in project.setups.values() if s.size is not None)
    vox = Counter((tuple(s.voxel_size), s.unit) for s in project.setups.values() if s.voxel_size is not None)
    for size, n in sizes.most_common(3):
        lines.append(f"view size    {_fmt_vec(size[::-1], '{:d}')} (x × y × z) — {n} setups")
    lines += _more(sizes, 3, "view size", "sizes")
    for (vs, unit), n in vox.most_common(3):
        lines.append(f"voxel size   {_fmt_vec(vs[::-1])} {unit or ''} (x × y × z) — {n} setups")
    lines += _more(vox, 3, "voxel size", "voxel sizes")
    if project._loader is not None and views:
        try:
            v = views[0]
            levels = project.levels(v)
            lines.append(f"levels       {len(levels)}: " + ", ".join(_fmt_vec(f[::-1]) for f in levels)
                         + f"  (dtype {project._loader.dtype(v)})")
        except Exception as exc:  # a summary must not fail on one bad view
            lines.append(f"levels       unavailable ({exc})")
    lines.append(f"registration {registration_state(project)}")
    adjustments = data.intensity_adjustments or {}
    if adjustments:
        gains = [a for a, _ in adjustments.values()]
        lines.append(f"intensities  {len(adjustments)} views adjusted (gain {min(gains):.3f} – {max(gains):.3f}; "
                     "applied by fuse --intensity-adjustment)")
    if detail >= 1:
        chains = Counter(
            " → ".join(vt.name or "(unnamed)" for vt in chain) for chain in data.registrations.values()
        )
        for chain, n in chains.most_common(4):
            lines.append(f"transforms   {chain}  — {n} views")
        lines += _more(chains, 4, "transforms", "transform chains")
        bbs = data.bounding_boxes or []
        if bbs:
            lines.append("bounding boxes " + shortlist((f"{b.name} {_fmt_vec(b.lo[::-1], '{:d}')} → "
                                                        f"{_fmt_vec(b.hi[::-1], '{:d}')}" for b in bbs), 5))
        try:
            boxes = [project.world_box(v) for v in views]
            lo = np.min([b.lo for b in boxes], axis=0)
            hi = np.max([b.hi for b in boxes], axis=0)
            lines.append(f"world extent {_fmt_vec((hi - lo + 1)[::-1], '{:.0f}')} (x × y × z, world units)")
            lines.append(_layout_text(tile_layout(project, views)))
        except Exception as exc:
            lines.append(f"layout       unavailable ({exc})")
    if detail >= 2:
        for v in views:
            try:
                where = "world min " + _fmt_vec(np.asarray(project.world_box(v).lo)[::-1], "{:.1f}")
            except TilefuseError as exc:
                where = f"no position ({exc})"
            lines.append(f"  {v}: {project.attributes(v)} {where}")
    return "\n".join(lines)


def _more(counts: Counter, shown: int, field: str, what: str) -> list[str]:
    """The line saying how many entries of a most-common list were left out (none if nothing was)."""
    rest = len(counts) - shown
    return [f"{field:<12} … and {rest} more {what} ({sum(n for _, n in counts.most_common()[shown:])} setups)"] \
        if rest > 0 else []


@dataclass(frozen=True)
class TilePlacement:
    """One tile of the layout: where its views lie, and its cell in the tile grid."""

    #: the tile id (the setup id when the views have no tile attribute)
    label: int
    #: the tile's views at the first timepoint
    views: tuple[ViewId, ...]
    #: union of the views' world boxes (zyx)
    box: Box
    #: row (by world y) and column (by world x) of the grid, from 0
    row: int
    column: int


def tile_layout(project: Project, views: Sequence[ViewId] | None = None) -> list[TilePlacement]:
    """Where each tile of the first timepoint lies, and its row and column in the tile grid.

    ``tilefuse info`` prints the grid and ``info --plot`` draws the boxes from
    this one function, so text and picture agree.  Rows and columns are
    clusters of the tiles' centres along world y and x: a centre more than
    half the median tile extent beyond the first centre of a cluster starts
    the next one, so the few voxels by which registration moves tiles never
    split a row (a fixed tolerance did: a registered 3×5 grid printed as 4×8).

    Parameters
    ----------
    project : Project
    views : sequence of ViewId, optional
        Views to place (default: all); only those of the first listed
        timepoint are used.

    Returns
    -------
    list of TilePlacement
        One per tile, in the order tiles first appear.
    """
    views = list(project.views if views is None else views)
    if not views:
        return []
    by_tile: dict[int, list[ViewId]] = {}
    for v in views:
        if v.timepoint == views[0].timepoint:
            tile = project.attribute(v, "tile")
            by_tile.setdefault(v.setup if tile is None else tile, []).append(v)
    boxes = {}
    for label, vs in by_tile.items():
        box = project.world_box(vs[0])
        for v in vs[1:]:
            box = box.union(project.world_box(v))
        boxes[label] = box
    centres = np.array([(np.asarray(b.lo) + np.asarray(b.hi)) / 2 for b in boxes.values()])
    extents = np.array([b.size + 1 for b in boxes.values()])
    rows = _cluster(centres[:, 1], 0.5 * float(np.median(extents[:, 1])))
    columns = _cluster(centres[:, 2], 0.5 * float(np.median(extents[:, 2])))
    return [TilePlacement(label, tuple(by_tile[label]), boxes[label], int(r), int(c))
            for label, r, c in zip(boxes, rows, columns)]


def _cluster(values: np.ndarray, tolerance: float) -> np.ndarray:
    """Index of each value's cluster along one axis (sorted, each cluster at most ``tolerance`` wide)."""
    order = np.argsort(values, kind="stable")
    index = np.empty(len(values), dtype=int)
    cluster, start = -1, None
    for i in order:
        if start is None or values[i] - start > tolerance:
            cluster, start = cluster + 1, values[i]
        index[i] = cluster
    return index


def _layout_text(placements: Sequence[TilePlacement]) -> str:
    """The tile grid as text: tile ids in their rows and columns; tiles sharing a cell joined by '+'."""
    if not placements:
        return "layout       no tiles"
    n_rows = max(p.row for p in placements) + 1
    n_cols = max(p.column for p in placements) + 1
    head = f"layout       {n_rows} rows × {n_cols} columns of {len(placements)} tiles"
    if n_rows > _MAX_TEXT_ROWS or n_cols > _MAX_TEXT_COLUMNS:
        return f"{head} (too large to print; draw it with: tilefuse info ... --plot layout.png)"
    grid = [["." for _ in range(n_cols)] for _ in range(n_rows)]
    for p in placements:
        cell = grid[p.row][p.column]
        grid[p.row][p.column] = str(p.label) if cell == "." else f"{cell}+{p.label}"
    width = max(len(cell) for row in grid for cell in row)
    body = "\n".join("  " + " ".join(cell.rjust(width) for cell in row) for row in grid)
    return f"{head} (tile ids by world y and x, first timepoint; tiles along z joined by +)\n{body}"
