"""Make a new BigStitcher project from tiles and their positions.

The pixels go to BDV HDF5 (default: BigDataViewer and BigStitcher open it
directly), N5 or BigStitcher's OME-Zarr layout, each view with a resolution
pyramid; the XML gets the ViewTransforms BigStitcher's dataset definition
writes: ``Translation to Regular Grid`` (tile position) in front of
``calibration`` (voxel size relative to the finest voxel axis).

The container and then the XML are written under temporary names
(``<name>.partial``) and renamed into place together at the very end
(:func:`~tilefuse.writers._atomic.atomic_outputs`): an interrupted run leaves
no valid-looking project, and with ``overwrite=True`` the previous project
(XML and pixels) stays intact and usable until the new one is complete.
Positions and ids are checked before anything is written, and the written
XML is read back with every check :func:`~tilefuse.open_project` makes before
the renames, so a project tilefuse cannot open never takes the final names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._outputs import check_outputs, remove_path
from ..errors import ProjectFormatError, TilefuseError
from ..geometry import scale_matrix, translation_matrix
from ..loaders import loader_class
from ..loaders.base import drop_cached_handles
from ..opening import open_project
from ..project.checks import MAX_COORDINATE, check_spimdata
from ..project.model import STANDARD_ATTRIBUTES, AttributeBlock, Entity, SpimData, Timepoints, ViewSetup, ViewTransform
from ..project.project import Project
from ..project.timepoints import format_integer_pattern
from ..project.views import ViewId
from ..project.xml_read import read_spimdata
from ._atomic import atomic_outputs

__all__ = ["write_project", "calibration_matrix", "container_path", "FORMATS"]

#: Output formats: name -> suffix of the pixel container written beside the XML
FORMATS = {
    "hdf5": ".h5",
    "n5": ".n5",
    "zarr": ".ome.zarr",
    "tiff": "_tiff",  # a folder of one TIFF per view (spimreconstruction.filemap2), no pyramid
}


def container_path(path: str | Path, format: str = "hdf5") -> Path:
    """The pixel container written beside the project XML ``path``: ``dataset.xml`` -> ``dataset.h5``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".xml") + FORMATS[format])


def calibration_matrix(voxel_size: Sequence[float], min_resolution: float | None = None) -> np.ndarray:
    """BigStitcher's ``calibration``: ``diag(voxel_size) / min_resolution`` (``zyx``).

    One world unit is then one voxel of the finest axis of the whole project.
    """
    vs = np.asarray(voxel_size, dtype=np.float64)
    min_res = float(vs.min()) if min_resolution is None else float(min_resolution)
    return scale_matrix(vs / min_res)


def _as_3d(image):
    if image.ndim == 2:
        return image[None]
    if image.ndim != 3:
        raise TilefuseError(f"tiles must be 2D (y, x) or 3D (z, y, x), got shape {image.shape}")
    return image


#: The range of an id: BigStitcher (Java) reads ids as ``int``.
JAVA_INT = (-(2**31), 2**31 - 1)


def _per_tile(values, n, name, default) -> list[int]:
    """One id per image: integers in Java's ``int`` range, as BigStitcher reads them."""
    if values is None:
        return [default(i) for i in range(n)]
    values = list(values)
    if len(values) != n:
        raise TilefuseError(f"{name} has {len(values)} entries for {n} images")
    ids = []
    for i, value in enumerate(values):
        try:
            number = float(value)
            ok = number.is_integer() and JAVA_INT[0] <= number <= JAVA_INT[1]
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ProjectFormatError(f"{name}[{i}] = {value!r}: ids must be integers from {JAVA_INT[0]} to "
                                     f"{JAVA_INT[1]} (a Java int, as BigStitcher reads them)")
        ids.append(int(number))
    return ids


def _check_positions(positions: np.ndarray, min_res: float) -> None:
    """Refuse positions that are not finite or lie where float64 no longer resolves voxels."""
    world = positions / min_res
    for i, (pos, grid) in enumerate(zip(positions, world)):
        shown = ", ".join(f"{v:.6g}" for v in pos)
        if not np.isfinite(pos).all():
            raise ProjectFormatError(f"image {i}: position (z, y, x) = ({shown}) is not a finite number")
        if np.abs(grid).max() > MAX_COORDINATE:
            raise ProjectFormatError(
                f"image {i}: position (z, y, x) = ({shown}) is {np.abs(grid).max():.3g} finest voxels from "
                f"the origin, beyond the {MAX_COORDINATE:.3g} where float64 still resolves voxels"
            )


def write_project(
    path: str | Path,
    images: Sequence,
    positions,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    unit: str = "µm",
    position_unit: str = "physical",
    tiles: Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
    illuminations: Sequence[int] | None = None,
    angles: Sequence[int] | None = None,
    timepoints: Sequence[int] | None = None,
    names: dict[str, dict[int, str]] | None = None,
    transforms: Sequence[Sequence[tuple[str, np.ndarray]]] | None = None,
    angle_axes: dict[int, tuple[Sequence[float], float]] | None = None,
    format: str = "hdf5",
    factors: Sequence[Sequence[int]] | str = "auto",
    chunks: Sequence[int] | None = None,
    compression: str = "gzip",
    progress: bool = False,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    client=None,
    in_place: Sequence[tuple[str | Path, int, int]] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Project:
    """Write tiles and their positions as a new BigStitcher project.

    Parameters
    ----------
    path : path-like
        The project XML to create (e.g. ``out/dataset.xml``); the pixel
        container is written beside it (``dataset.h5``, ``dataset.n5`` or
        ``dataset.ome.zarr``).
    images : sequence of array-like
        One 2D ``(y, x)`` or 3D ``(z, y, x)`` numpy or dask array per view.
        Dask arrays are written chunk by chunk, so they may exceed memory.
    positions : (n, 2) or (n, 3) array-like
        Position of each image's first voxel, numpy order (``y, x`` or
        ``z, y, x``), in the unit given by ``position_unit``.
    voxel_size : sequence of float
        Voxel size ``(z, y, x)`` (or ``(y, x)`` for 2D) in ``unit``.
    position_unit : {"physical", "voxel"}
        ``"physical"``: positions are in ``unit`` (a stage readout).
        ``"voxel"``: positions are in voxels of each axis (Fiji's
        ``TileConfiguration.txt`` convention).
    tiles, channels, illuminations, angles, timepoints : sequence of int, optional
        Attribute ids per image.  Default: one tile per image, everything else 0.
        Images sharing all attributes but the timepoint share one ViewSetup.
    names : dict, optional
        Entity names, e.g. ``{"channel": {0: "488", 1: "561"}}``; ``"setup"`` maps an
        image's index to the name of its ViewSetup (default ``setup <id>``).
    transforms : sequence of sequences of (str, ndarray), optional
        Per image, its ViewTransforms as ``(name, 4x4 zyx matrix)`` in XML
        order (the first is applied last), replacing the default
        ``Translation to Regular Grid`` + ``calibration``: e.g. a rotation
        in front of them for the views of a multi-angle acquisition.
        ``positions`` still give the tiles' locations.
    angle_axes : dict, optional
        Angle id -> (rotation axis ``(z, y, x)``, degrees), written as the
        Angle's ``<axis>`` and ``<degrees>`` (BigStitcher's angle metadata).
    format : {"hdf5", "n5", "zarr", "tiff"}
        ``"tiff"`` writes one TIFF per view in a folder and a
        ``spimreconstruction.filemap2`` loader (BigStitcher reads it through
        Bio-Formats); it has no resolution pyramid.
    factors : "auto" or sequence of (z, y, x) int
        Resolution pyramid; ``"auto"`` proposes BigStitcher-like levels.
    chunks : (z, y, x) int, optional
        Block shape of the written data.
    overwrite : bool
        Replace an existing project (XML and container).  The old one is
        replaced only once the new one is completely written.
    inputs : sequence of path-like
        Files or containers the images are read from (e.g. the
        :func:`~tilefuse.writers._atomic.input_paths` of a project being
        fused): the XML and the container may not be, contain or lie inside
        any of them.
    client : distributed.Client, optional
        Compute dask images on this cluster.  N5 and OME-Zarr blocks are
        written by its workers; HDF5 and TIFF files are written from this
        process.
    in_place : sequence of (path, series, channel), optional
        Write no pixels: the project reads each image from its original file
        (``spimreconstruction.filelist``, BigStitcher's loader for the files
        of "Define dataset": Bio-Formats series and channel numbers).
        ``images`` then only give shapes and dtypes (lazy arrays of those
        files, never computed); ``format`` and ``factors`` are ignored.  Each
        view's data are checked first (:meth:`Project.check_view`, what every
        read does): a truncated or inconsistent file is refused before the XML
        is written.
    before_commit : callable, optional
        Called once the pixels and the XML are written, before they are renamed
        into place; an error it raises leaves the project uncommitted (as the
        OME-Zarr and TIFF writers do: ``write_fused`` checks there that the
        fused inputs did not change while they were read).

    Returns
    -------
    Project
        The new project, opened from the written XML.

    Raises
    ------
    ProjectFormatError
        A position is not finite or too far from the origin for float64, an
        id is not an integer in Java's ``int`` range, or the project would be
        one :func:`~tilefuse.open_project` refuses; nothing was written.
    OutputExistsError
        The XML or the container exists and ``overwrite`` is False.
    OutputIsInputError
        The output would replace or be written into one of ``inputs``.
    OutputError
        The output folder is not writable, or writing failed (full disk).
    """
    path = Path(path)
    if format not in FORMATS:
        raise TilefuseError(f"unknown output format {format!r}; choose one of {', '.join(FORMATS)}")
    container = container_path(path, format) if in_place is None else None
    check_outputs([path] + ([container] if container else []), inputs, overwrite=overwrite)
    if in_place is not None and len(in_place) != len(images):
        raise TilefuseError(f"in_place has {len(in_place)} entries for {len(images)} images")
    images = [_as_3d(im) for im in images]
    n = len(images)
    if n == 0:
        raise TilefuseError("write_project needs at least one image")
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[0] != n or positions.shape[1] not in (2, 3):
        raise TilefuseError(f"positions must be ({n}, 2) or ({n}, 3), got shape {positions.shape}")
    if positions.shape[1] == 2:
        positions = np.column_stack([np.zeros(n), positions])
    voxel_size = tuple(float(v) for v in voxel_size)
    if len(voxel_size) == 2:
        voxel_size = (1.0,) + voxel_size if all(im.shape[0] == 1 for im in images) else voxel_size
    if len(voxel_size) != 3 or not min(voxel_size) > 0 or not np.isfinite(voxel_size).all():
        raise TilefuseError(f"voxel_size must be 3 positive numbers (z, y, x), got {voxel_size}")
    if position_unit == "voxel":
        positions = positions * np.asarray(voxel_size)
    elif position_unit != "physical":
        raise TilefuseError(f"position_unit must be 'physical' or 'voxel', got {position_unit!r}")
    _check_positions(positions, min(voxel_size))
    dtypes = {np.dtype(im.dtype) for im in images}
    if len(dtypes) != 1:
        raise TilefuseError(f"all images must share one dtype, got {sorted(map(str, dtypes))}")

    attrs = {
        "illumination": _per_tile(illuminations, n, "illuminations", lambda i: 0),
        "channel": _per_tile(channels, n, "channels", lambda i: 0),
        "tile": _per_tile(tiles, n, "tiles", lambda i: i),
        "angle": _per_tile(angles, n, "angles", lambda i: 0),
    }
    tps = _per_tile(timepoints, n, "timepoints", lambda i: 0)
    names = names or {}
    if transforms is not None and len(transforms) != n:
        raise TilefuseError(f"transforms has {len(transforms)} entries for {n} images")

    # One setup per distinct attribute combination, in order of first appearance.
    setup_of: dict[tuple, int] = {}
    views: dict[ViewId, object] = {}
    index_of: dict[ViewId, int] = {}
    data = SpimData()
    min_res = min(voxel_size)
    tile_location: dict[int, tuple] = {}
    for i, image in enumerate(images):
        combo = tuple(attrs[k][i] for k in STANDARD_ATTRIBUTES)
        if combo not in setup_of:
            sid = len(setup_of)
            setup_of[combo] = sid
            data.setups[sid] = ViewSetup(
                id=sid,
                name=names.get("setup", {}).get(i, f"setup {sid}"),
                size=tuple(int(s) for s in image.shape),
                voxel_size=voxel_size,
                unit=unit,
                attributes=dict(zip(STANDARD_ATTRIBUTES, combo)),
            )
        sid = setup_of[combo]
        if tuple(image.shape) != data.setups[sid].size:
            raise TilefuseError(f"image {i}: shape {image.shape} differs from other timepoints of setup {sid}")
        view = ViewId(tps[i], sid)
        if view in views:
            raise TilefuseError(f"image {i}: two images for {view} (same attributes and timepoint)")
        views[view] = image
        index_of[view] = i
        tile = attrs["tile"][i]
        loc = tuple(float(v) for v in positions[i])
        if tile_location.setdefault(tile, loc) != loc:
            raise TilefuseError(f"image {i}: tile {tile} has two different positions")
        if transforms is not None:
            data.registrations[view] = [ViewTransform(str(name), np.array(m, dtype=np.float64))
                                        for name, m in transforms[i]]
        else:
            data.registrations[view] = [
                ViewTransform("Translation to Regular Grid", translation_matrix(np.asarray(loc) / min_res)),
                ViewTransform("calibration", calibration_matrix(voxel_size, min_res)),
            ]
    for kind, tag in STANDARD_ATTRIBUTES.items():
        block = AttributeBlock(name=kind, entity_tag=tag)
        for eid in sorted({int(v) for v in attrs[kind]}):
            ent = Entity(id=eid, name=str(names.get(kind, {}).get(eid, eid)))
            if kind == "tile":
                ent.location = tile_location[eid]
            if kind == "angle" and angle_axes and eid in angle_axes:
                axis, degrees = angle_axes[eid]
                ent.axis = tuple(float(v) for v in axis)
                ent.degrees = float(degrees)
            block.entities[eid] = ent
        data.attribute_blocks[kind] = block
    tp_ids = sorted({int(t) for t in tps})
    data.timepoints = Timepoints(type="pattern", ids=tp_ids, pattern=format_integer_pattern(tp_ids))
    # A (timepoint, setup) with no image (a channel not acquired at some timepoint) is a missing view.
    data.missing_views = {ViewId(t, sid) for t in tp_ids for sid in data.setups} - set(views)
    # BigStitcher's ViewRegistrations are sorted by (timepoint, setup).
    data.registrations = dict(sorted(data.registrations.items()))
    check_spimdata(data, path)  # what open_project would refuse, refused before writing any pixel

    if in_place is not None:
        return _write_in_place(path, data, {view: in_place[i] for view, i in index_of.items()}, overwrite)
    shape0 = next(iter(views.values())).shape
    if format == "tiff":
        factors = [(1, 1, 1)]
    elif factors == "auto":
        from .bdv_hdf5 import propose_factors

        factors = propose_factors(shape0, voxel_size)
    factors = [tuple(int(f) for f in lv) for lv in factors]
    # Pixels first, then the XML, both under temporary names; the old project is
    # replaced only by the final renames.
    with atomic_outputs([container, path], overwrite=overwrite) as (tmp_container, tmp_xml):
        loader = _write_pixels(format, tmp_container, container, views, factors, chunks, compression,
                               progress, voxel_size, client)
        project = Project(data, path=None, loader=loader)
        project.path = path.resolve()
        project.save(tmp_xml, backup=False)
        _read_back(tmp_xml, path, [tmp_container, tmp_xml])
        if before_commit is not None:
            before_commit()
    # Loaders may hold handles on the container this one replaced.
    drop_cached_handles(str(container))
    drop_cached_handles(str(container.resolve()))
    return open_project(path)


def _write_in_place(path: Path, data: SpimData, files: dict, overwrite: bool) -> Project:
    """The XML alone, its views read from the original files (``spimreconstruction.filelist``)."""
    mapping = {view: (Path(file).resolve(), int(series), int(channel))
               for view, (file, series, channel) in files.items()}
    loader = loader_class("spimreconstruction.filelist").for_path(mapping)
    project = Project(data, path=None, loader=loader)
    project.path = path.resolve()
    # No pixels are copied, so nothing read them: check every view's data now, as `run` will (a truncated
    # TIFF converted "successfully" and only the later run refused it).  Before anything is written.
    for view in sorted(mapping):
        project.check_view(view)
    with atomic_outputs([path], overwrite=overwrite) as (tmp_xml,):
        project.save(tmp_xml, backup=False)
        _read_back(tmp_xml, path, [tmp_xml])
    return open_project(path)


def _read_back(tmp_xml: Path, path: Path, partials: list[Path]) -> None:
    """Parse the written XML with open_project's checks; if they refuse it, remove the new project."""
    try:
        read_spimdata(tmp_xml)
    except TilefuseError as exc:
        for partial in partials:
            remove_path(partial)
        raise TilefuseError(
            f"{path}: tilefuse wrote a project it cannot open again, so it was removed and nothing was "
            f"replaced: {exc}. This is a bug in tilefuse; please report it"
        ) from exc


def _write_pixels(format, tmp, container, views, factors, chunks, compression, progress, voxel_size, client=None):
    """Write the views into ``tmp``; return a loader for them once ``tmp`` is renamed ``container``."""
    container = container.resolve()
    kwargs = dict(factors=factors, progress=progress)
    if chunks is not None:
        kwargs["chunks"] = tuple(int(c) for c in chunks)
    if format == "hdf5":
        from .bdv_hdf5 import write_bdv_hdf5

        write_bdv_hdf5(tmp, views, compression=compression, **kwargs)
        return loader_class("bdv.hdf5").for_path(container)
    if format == "n5":
        from .bdv_n5 import write_bdv_n5

        write_bdv_n5(tmp, views, compression=compression, voxel_size=voxel_size, client=client, **kwargs)
        return loader_class("bdv.n5").for_path(container)
    if format == "tiff":
        from .._progress import progress_bar, writing
        from .tiff import write_tiff

        files = {}
        tmp.mkdir()
        with progress_bar(writing(container), len(views), unit="view", enabled=progress) as bar:
            for view, image in views.items():
                name = f"t{view.timepoint}_s{view.setup}.tif"
                write_tiff(image, tmp / name, voxel_size=voxel_size, unit="um", client=client)
                files[view] = container / name
                bar.update(1)
        return loader_class("spimreconstruction.filemap2").for_path(files)
    from .bdv_zarr import write_bdv_omezarr

    written = write_bdv_omezarr(tmp, views, voxel_size=voxel_size, client=client, **kwargs)
    return loader_class("bdv.multimg.zarr").for_path(container, written.zgroups)
