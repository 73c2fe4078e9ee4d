"""Pictures: the tile layout, the registration link graph, and fused previews.

Layout and link plots need matplotlib (``pip install tilefuse[plot]``);
previews only need imageio (installed with scikit-image).  Every picture is
written as ``<name>.partial`` and renamed when complete
(:func:`~tilefuse.writers._atomic.atomic_output`); an existing file is
replaced only with ``overwrite=True``.  The format follows the file's suffix
(PNG when it has none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import TilefuseError
from .writers._atomic import atomic_output

__all__ = ["plot_layout", "plot_links", "plot_matches", "save_preview", "to_uint8"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise TilefuseError("plots need matplotlib: pip install 'tilefuse[plot]'") from None
    return plt


def _save_figure(fig, path: str | Path, overwrite: bool) -> Path:
    """Write a figure through a temporary name (its format from the final name) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_output(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, format=path.suffix[1:].lower() or "png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _tile_rects(project, views):
    from matplotlib.patches import Rectangle

    rects = []
    for v in views:
        b = project.world_box(v)
        rects.append((v, Rectangle((b.lo[2], b.lo[1]), b.hi[2] - b.lo[2], b.hi[1] - b.lo[1])))
    return rects


def plot_layout(project, path: str | Path, views=None, *, overwrite: bool = False) -> Path:
    """Draw every tile's world box (x right, y down) with its tile id, to a PNG.

    The tiles and their grid are :func:`tilefuse.project.summary.tile_layout`'s,
    the same that ``tilefuse info`` prints as text.  ``overwrite=True``
    replaces an existing file (else :class:`~tilefuse.errors.OutputExistsError`).
    """
    from .project.summary import tile_layout

    plt = _pyplot()
    from matplotlib.patches import Rectangle

    placements = tile_layout(project, views)
    fig, ax = plt.subplots(figsize=(8, 8))
    for tile in placements:
        (_, y0, x0), (_, y1, x1) = tile.box.lo, tile.box.hi
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="tab:blue"))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, str(tile.label), ha="center", va="center", fontsize=7)
    ax.autoscale_view()
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (world)")
    ax.set_ylabel("y (world)")
    rows = max((t.row for t in placements), default=-1) + 1
    columns = max((t.column for t in placements), default=-1) + 1
    ax.set_title(f"{project.path.name if project.path else 'project'}: {len(placements)} tiles, "
                 f"{rows} rows × {columns} columns")
    return _save_figure(fig, path, overwrite)


def plot_links(project, links, path: str | Path, groups=None, *, overwrite: bool = False) -> Path:
    """Draw the tile graph: one line per link, coloured by correlation; rejected links dashed red.

    ``overwrite=True`` replaces an existing file.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 8))
    centre = {}
    members = groups.members if groups is not None else None
    for link in links:
        for key, views in ((link.a, link.views_a), (link.b, link.views_b)):
            if key not in centre:
                vs = members[key] if members is not None else views
                b = project.world_box(vs[0])
                centre[key] = ((b.lo[2] + b.hi[2]) / 2, (b.lo[1] + b.hi[1]) / 2)
                rect_views = vs[:1]
                for _, rect in _tile_rects(project, rect_views):
                    rect.set_fill(False)
                    rect.set_edgecolor("0.8")
                    ax.add_patch(rect)
    cmap = plt.get_cmap("viridis")
    for link in links:
        (x0, y0), (x1, y1) = centre[link.a], centre[link.b]
        if link.accepted:
            r = link.correlation if np.isfinite(link.correlation) else 0.0
            ax.plot([x0, x1], [y0, y1], color=cmap(np.clip(r, 0, 1)), lw=2)
        else:
            ax.plot([x0, x1], [y0, y1], color="red", lw=1.5, ls="--")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, label="correlation (red dashed: rejected)")
    ax.autoscale_view()
    ax.set_aspect("equal")
    ax.invert_yaxis()
    n_bad = sum(not link.accepted for link in links)
    ax.set_title(f"{len(links)} links, {n_bad} rejected")
    return _save_figure(fig, path, overwrite)


def plot_matches(project, matches, path: str | Path, *, overwrite: bool = False) -> Path:
    """Draw matched interest points: the views' outlines and each pair's inliers, seen along y and along z.

    ``matches`` is a :class:`tilefuse.interestpoints.Matches`; points are
    drawn at their world positions under the transforms they were matched
    with (x across, z or y down), one colour per pair of views.
    """
    from itertools import product

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 7))
    views = sorted({v for pair in matches.pairs for v in (pair.a, pair.b)})
    for view in views:
        model = project.model(view)
        n = np.asarray(project.setup_shape(view), dtype=np.float64) - 1
        corners = np.array(list(product(*[(0.0, s) for s in n])))
        world = corners @ model[:3, :3].T + model[:3, 3]
        for i, j in product(range(8), range(8)):
            if i < j and bin(i ^ j).count("1") == 1:  # the 12 edges of the box
                for ax, down in zip(axes, (0, 1)):
                    ax.plot(world[[i, j], 2], world[[i, j], down], color="0.8", lw=0.8)
    cmap = plt.get_cmap("tab20")
    total = 0
    for k, pair in enumerate(matches.matched):
        total += len(pair.p)
        for ax, down in zip(axes, (0, 1)):
            ax.scatter(pair.p[:, 2], pair.p[:, down], s=6, color=cmap(k % 20),
                       label=f"t{pair.a.timepoint}s{pair.a.setup}-t{pair.b.timepoint}s{pair.b.setup} ({len(pair.p)})"
                       if down == 0 else None)
    for ax, name in zip(axes, ("z", "y")):
        ax.set_xlabel("x (world)")
        ax.set_ylabel(f"{name} (world)")
        ax.set_aspect("equal")
        ax.invert_yaxis()
    if matches.matched:
        axes[0].legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle(f"{len(matches.matched)} of {len(matches.pairs)} pairs matched, {total} matched points "
                 f"(label {matches.label!r}); seen along y (left) and along z (right)")
    return _save_figure(fig, path, overwrite)


def to_uint8(image: np.ndarray, percentiles=(0.5, 99.8)) -> np.ndarray:
    """Contrast-stretch an image to uint8 between two percentiles of its non-zero pixels."""
    image = np.asarray(image, dtype=np.float32)
    values = image[image != 0]
    if values.size == 0:
        return np.zeros(image.shape, np.uint8)
    lo, hi = np.percentile(values, percentiles)
    scaled = (image - lo) / max(hi - lo, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def save_preview(image, path: str | Path, max_size: int = 2048, *, overwrite: bool = False) -> Path:
    """Save a 2D picture (a middle plane or a maximum projection is the caller's choice) as PNG.

    ``overwrite=True`` replaces an existing file.
    """
    import imageio.v3 as iio
    from skimage.transform import downscale_local_mean

    image = np.asarray(image)
    if image.ndim != 2:
        raise TilefuseError(f"a preview is a 2D image, got shape {image.shape}")
    step = int(np.ceil(max(image.shape) / max_size))
    if step > 1:
        image = downscale_local_mean(image.astype(np.float32), (step, step))
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        iio.imwrite(tmp, to_uint8(image), extension=path.suffix.lower() or ".png")
    return path
