"""Write a fused result: multiscale OME-Zarr (default), TIFF, or a new BDV project.

The output format follows the path: ``*.zarr`` -> OME-Zarr, ``*.tif``/``*.tiff``
-> TIFF, ``*.xml`` -> a BigStitcher project (BDV HDF5 by default, N5 or
OME-Zarr with ``container=``) holding one view per (timepoint, channel), so
the fused volume opens in BigDataViewer/BigStitcher.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import _storage
from .._outputs import check_outputs
from ..errors import FusionError, ImageDataError, where
from ..fusion.api import FusionPlan
from ._atomic import input_paths
from .options import OutputOptions

__all__ = ["write_fused", "output_format"]


def output_format(path: str | Path) -> str:
    """``"ome-zarr"``, ``"tiff"`` or ``"bdv"`` from the output path's suffix."""
    name = str(path).rstrip("/").lower()
    if name.endswith(".zarr"):
        return "ome-zarr"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".xml"):
        return "bdv"
    raise FusionError(f"{path}: unknown output type; use .ome.zarr, .tif or .xml (BigStitcher project)")


def write_fused(
    plan: FusionPlan,
    path: str | Path,
    options: OutputOptions | None = None,
    *,
    progress: bool = False,
    client=None,
    **changes,
) -> Path:
    """Compute a fusion plan chunk by chunk and write it.

    Parameters
    ----------
    plan : FusionPlan
        From :func:`tilefuse.plan_fusion`.
    path : path-like or URL
        ``.ome.zarr`` (multiscale NGFF 0.5, or 0.4 with ``ngff="0.4"``), ``.tif`` or ``.xml``; an OME-Zarr
        0.5 may be written to an object store (``s3://bucket/fused.ome.zarr``, any fsspec URL).
    options : OutputOptions, optional
        How to write (default ``OutputOptions()``); ``**changes`` changes fields:

        ``container`` : {"hdf5", "n5", "zarr"}
            Pixel container when writing a BigStitcher project.
        ``overwrite`` : bool
            Replace an existing output (only once the new one is complete).
        ``resume`` : {"auto", "require", "never"} (or True / False)
            OME-Zarr only: continue an interrupted run, skipping finished
            chunks, if it was fusing the same thing
            (:meth:`FusionPlan.fingerprint`); a partial output from other work
            is deleted (``"auto"``) or refused (``"require"``), never mixed in.
            See :func:`~tilefuse.writers.ome_zarr.write_ome_zarr`.
        ``n_levels`` : int, optional
            Number of pyramid levels (default: until the image is small).
        ``ngff`` : {"0.5", "0.4"}
            OME-Zarr version: 0.5 (Zarr v3 with shards, the default) or 0.4
            (Zarr v2, one file per chunk).
        ``shards`` : int, optional
            OME-Zarr 0.5: shard side in voxels along each spatial axis (a
            multiple of the chunks); default about 1 GiB of chunks per shard.
    progress : bool
        Show a progress bar.
    client : distributed.Client, optional
        Compute on this cluster (passed down explicitly; dask's global
        scheduler is never changed).  A BDV HDF5 project is still written from
        this process: one HDF5 file cannot take writes from several processes.
    """
    o = OutputOptions.build(options, **changes)
    container, resume, overwrite, n_levels = o.container, o.resume, o.overwrite, o.n_levels
    remote = _storage.is_url(path)
    path = str(path).rstrip("/") if remote else Path(path)
    kind = output_format(path)
    if remote and kind != "ome-zarr":
        raise FusionError(f"{path}: only OME-Zarr (NGFF 0.5) is written to an object store; write the "
                          f"{'TIFF' if kind == 'tiff' else 'BigStitcher project'} to a local disk")
    inputs = input_paths(plan.project)
    check_outputs([path], inputs)  # before any work: never replace or write into an input
    fused = plan.to_dask()  # (t, c, z, y, x)
    voxel_size = tuple(float(v) for v in plan.voxel_size)
    scale = np.asarray(voxel_size) / plan.spacing
    origin = tuple(float(v) for v in plan.origin * scale)
    if kind == "ome-zarr":
        from .ome_zarr import write_ome_zarr

        image, axes = fused, "tczyx"
        if plan.ndim == 2:
            image, axes = fused[:, :, 0], "tcyx"
            voxel_size, origin = voxel_size[1:], origin[1:]
        return write_ome_zarr(image, path, voxel_size=voxel_size, origin=origin, unit=plan.unit, axes=axes,
                              channel_names=plan.channel_names, progress=progress, resume=resume,
                              overwrite=overwrite, n_levels=n_levels, fingerprint=plan.fingerprint(),
                              client=client, ngff=o.ngff, shards=o.shards,
                              before_commit=_inputs_unchanged(plan, path))
    if kind == "tiff":
        from .tiff import write_tiff

        if len(plan.timepoints) != 1:
            raise FusionError(f"{path}: TIFF holds one timepoint; this fusion has {len(plan.timepoints)}")
        image = fused[0]
        if len(plan.channels) == 1:
            image = image[0]
            if plan.ndim == 2:
                image = image[0]
        return write_tiff(image, path, voxel_size=voxel_size if plan.ndim == 3 else voxel_size[1:],
                          unit=plan.unit.replace("µ", "u"),  # ImageJ metadata is ASCII
                          progress=progress, overwrite=overwrite, client=client,
                          before_commit=_inputs_unchanged(plan, path))
    from .project import write_project

    images, tps, chans = [], [], []
    for ti, t in enumerate(plan.timepoints):
        for ci, c in enumerate(plan.channels):
            images.append(fused[ti, ci])
            tps.append(t)
            chans.append(c)
    positions = np.tile(np.asarray(origin), (len(images), 1))
    names = {"channel": dict(zip(plan.channels, plan.channel_names))}
    write_project(path, images, positions, voxel_size=voxel_size, unit=plan.unit, tiles=[0] * len(images),
                  channels=chans, timepoints=tps, names=names, format=container, progress=progress,
                  overwrite=overwrite, inputs=inputs, client=client, before_commit=_inputs_unchanged(plan, path))
    return path


def _inputs_unchanged(plan: FusionPlan, path) -> Callable[[], None]:
    """A check, for just before the output is committed, that no view's files changed since now.

    The fingerprint keys a *resumed* run on the inputs' identity (size, modification time, or ETag), taken
    when the run starts; without this second look, a file changed or deleted while the fusion read it (a
    Zarr chunk deleted mid-run reads as zeros) was fused half old, half new, and committed with exit 0.
    """
    loader = plan.project.loader
    views = sorted({v for views in plan.volumes.values() for v in views})
    before = {v: loader.data_identity(v) for v in views}

    def check() -> None:
        changed = [v for v in views if loader.data_identity(v) != before[v]]
        if changed:
            files = ", ".join(str(f) for f in list(loader.view_files(changed[0]))[:2])
            more = f" and {len(changed) - 1} more views" if len(changed) > 1 else ""
            raise ImageDataError(
                f"{where(plan.project.path)}: the files of {changed[0]}{more} changed while the fusion read them "
                f"({files}); {path} was not committed (it keeps its partial state). Run again once they are "
                "final: the next run starts over")

    return check
