"""A readable summary of a project: what ``tilefuse info`` prints."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import TilefuseError
from .project import ATTRIBUTE_KINDS, Project

__all__ = ["project_summary", "registration_state"]


def _fmt_vec(v, fmt="{:g}") -> str:
    return " × ".join(fmt.format(x) for x in v)


def registration_state(project: Project) -> str:
    """One line on how far the project has been registered."""
    names = Counter()
    for chain in project.data.registrations.values():
        for vt in chain:
            names[vt.name or "(unnamed)"] += 1
    n_links = len(project.data.stitching_results or [])
    stitched = names.get("Stitching Transform", 0)
    if stitched:
        return f"stitched ({stitched} views with a Stitching Transform, {n_links} pairwise results)"
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
        fl = project._loader.files()
        files = ", ".join(str(f) for f in fl[:2]) + (f" (+{len(fl) - 2} more)" if len(fl) > 2 else "")
    elif project._loader_error is not None:
        files = f"(unsupported: {project._loader_error})"
    lines.append(f"image loader {fmt}  {files}")
    views = project.views
    lines.append(
        f"views        {len(views)} ({len(project.setups)} setups × {len(project.timepoints)} timepoints"
        f", {len(project.missing_views)} missing)"
    )
    lines.append(f"timepoints   {', '.join(map(str, project.timepoints[:20]))}"
                 + (" …" if len(project.timepoints) > 20 else ""))
    for kind in ATTRIBUTE_KINDS:
        ents = project.entities(kind)
        used = sorted({project.attribute(v, kind) for v in views if project.attribute(v, kind) is not None})
        if not ents and not used:
            continue
        shown = [f"{i}:{ents[i].name}" if i in ents and ents[i].name not in (None, str(i)) else str(i)
                 for i in used[:12]]
        lines.append(f"{kind + 's':<12} {len(used)}  [{', '.join(shown)}{' …' if len(used) > 12 else ''}]")
    sizes = Counter(tuple(s.size) for s in project.setups.values() if s.size is not None)
    vox = Counter((tuple(s.voxel_size), s.unit) for s in project.setups.values() if s.voxel_size is not None)
    for size, n in sizes.most_common(3):
        lines.append(f"view size    {_fmt_vec(size[::-1], '{:d}')} (x × y × z) — {n} setups")
    for (vs, unit), n in vox.most_common(3):
        lines.append(f"voxel size   {_fmt_vec(vs[::-1])} {unit or ''} (x × y × z) — {n} setups")
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
        bbs = data.bounding_boxes or []
        if bbs:
            lines.append("bounding boxes " + ", ".join(f"{b.name} {_fmt_vec(b.lo[::-1], '{:d}')} → "
                                                       f"{_fmt_vec(b.hi[::-1], '{:d}')}" for b in bbs))
        try:
            boxes = [project.world_box(v) for v in views]
            lo = np.min([b.lo for b in boxes], axis=0)
            hi = np.max([b.hi for b in boxes], axis=0)
            lines.append(f"world extent {_fmt_vec((hi - lo + 1)[::-1], '{:.0f}')} (x × y × z, world units)")
            lines.append(_layout_text(project, views))
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


def _layout_text(project: Project, views) -> str:
    """Tile grid as text: tile ids placed by their world y/x position."""
    tiles = {}
    for v in views:
        t = project.attribute(v, "tile")
        if t is not None and t not in tiles and v.timepoint == views[0].timepoint:
            tiles[t] = project.world_box(v)
    if not tiles or len(tiles) > 400:
        return f"layout       {len(tiles)} tiles"
    ys = sorted({round(b.lo[1]) for b in tiles.values()})
    xs = sorted({round(b.lo[2]) for b in tiles.values()})

    def cluster(values):
        groups, last = [], None
        for v in values:
            if last is None or v - last > 8:
                groups.append(v)
            last = v
        return groups

    rows, cols = cluster(ys), cluster(xs)
    if len(rows) * len(cols) > 400:
        return f"layout       {len(tiles)} tiles"
    grid = [["." for _ in cols] for _ in rows]
    for t, b in tiles.items():
        r = max(i for i, y in enumerate(rows) if y <= round(b.lo[1]) + 8)
        c = max(i for i, x in enumerate(cols) if x <= round(b.lo[2]) + 8)
        grid[r][c] = str(t) if grid[r][c] == "." else grid[r][c] + "+" + str(t)
    width = max(len(cell) for row in grid for cell in row)
    body = "\n".join("  " + " ".join(cell.rjust(width) for cell in row) for row in grid)
    return f"layout       {len(rows)} rows × {len(cols)} columns (tile ids, first timepoint; z stacked)\n{body}"
