"""Interest points in BigStitcher's own format: ``interestpoints.n5`` and ``<ViewInterestPoints>``.

BigStitcher (multiview-reconstruction >= 0.2, ``InterestPointsN5``) keeps the
points of a project in one N5 container, ``interestpoints.n5`` in the
project's base folder.  Each ``<ViewInterestPointsFile timepoint setup label
params>`` of the XML names a group of it, ``tpId_<t>_viewSetupId_<s>/<label>``,
holding:

* ``interestpoints/`` (attributes ``pointcloud: "1.0.0"``, ``type: "list"``,
  ``list version: "1.0.0"``) with two datasets, ``id`` (uint64, dimensions
  ``[1, N]``) and ``loc`` (float64, ``[n, N]``: x, y, z of each point), both
  gzip, blocks of 300 000 points; an empty list is two datasets of
  dimensions ``[0]``;
* ``correspondences/`` (attributes ``correspondences: "1.0.0"`` and
  ``idMap``: ``"tp,setup,label"`` -> a code) with the dataset ``data``
  (uint64, ``[3, N]``: this point's id, the other point's id, the other
  view and label's code; blocks of one row by 300 000).

Locations are in the view's own voxels at full resolution (before its
registration), x first on disk; here, as everywhere in tilefuse, they are
``(z, y, x)``.  Groups are written under a temporary name and renamed, so a
reader sees the old points or the new ones, never half of them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import (
    MissingDataError,
    OutputExistsError,
    ProjectFormatError,
    TilefuseError,
    UnsupportedFormatError,
    where,
)
from ..formats.n5 import N5Dataset, create_dataset, read_attributes, write_attributes
from ..project.model import InterestPointsFile
from ..project.project import Project
from ..project.views import ViewId

__all__ = [
    "CONTAINER",
    "InterestPoints",
    "Correspondences",
    "points_group",
    "container_path",
    "read_points",
    "write_points",
    "read_correspondences",
    "write_correspondences",
    "labels",
    "load_points",
    "load_correspondences",
    "add_reference",
]

#: Name of the container in the project's base folder (BigStitcher's ``InterestPointsN5.baseN5``).
CONTAINER = "interestpoints.n5"
#: Points per N5 block along the list (BigStitcher's ``defaultBlockSize``).
BLOCK = 300_000
_COMPRESSION = {"type": "gzip", "useZlib": False, "level": -1}  # what N5's GzipCompression() writes


@dataclass
class InterestPoints:
    """The interest points of one view and label.

    Attributes
    ----------
    ids : (n,) int64 ndarray
        Point ids, unique within the view and label.
    loc : (n, 3) float64 ndarray
        Locations ``(z, y, x)`` in the view's voxels at full resolution.
    params : str
        How they were found (the XML's ``params``, e.g. ``"DOG s=1.8 t=0.008 ..."``).
    values : (n,) float64 ndarray, optional
        Detection strength (|DoG| response), when known (not stored by BigStitcher).
    """

    ids: np.ndarray
    loc: np.ndarray
    params: str = ""
    values: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.loc = np.asarray(self.loc, dtype=np.float64).reshape(-1, 3)
        if len(self.ids) != len(self.loc):
            raise ValueError(f"{len(self.ids)} ids for {len(self.loc)} locations")
        if self.values is not None:
            self.values = np.asarray(self.values, dtype=np.float64).reshape(-1)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Correspondences:
    """Matched points of one view and label with points of other views (BigStitcher's ``CorrespondingInterestPoints``).

    Row ``k`` says: point ``ids[k]`` of this view is point ``other_ids[k]`` of
    view ``other_views[k]`` (labelled ``other_labels[k]``).
    """

    ids: np.ndarray
    other_ids: np.ndarray
    other_views: list[ViewId] = field(default_factory=list)
    other_labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.other_ids = np.asarray(self.other_ids, dtype=np.int64).reshape(-1)
        self.other_views = [ViewId(*v) for v in self.other_views]
        self.other_labels = [str(v) for v in self.other_labels]
        n = len(self.ids)
        if not len(self.other_ids) == len(self.other_views) == len(self.other_labels) == n:
            raise ValueError("correspondence columns differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> Correspondences:
        return cls(np.zeros(0), np.zeros(0), [], [])


def points_group(view: ViewId, label: str) -> str:
    """The group of one view's points in ``interestpoints.n5`` (and the XML's text), as BigStitcher names it."""
    return f"tpId_{view.timepoint}_viewSetupId_{view.setup}/{label}"


def container_path(project: Project) -> Path:
    """``interestpoints.n5`` in the project's base folder."""
    return project.base_dir / CONTAINER


def _group_dir(container: Path, group: str, xml: Path | None = None) -> Path:
    """The folder of a group, refusing paths that leave the container or use the legacy text format."""
    text = group.strip().replace("\\", "/")
    if text.startswith(CONTAINER + "/"):  # an early 0.2 layout wrote the container name into the path
        text = text[len(CONTAINER) + 1:]
    if text.startswith("interestpoints/"):
        raise UnsupportedFormatError(
            f"{where(xml)}: interest points {group!r} are in BigStitcher's old text format (.ip.txt), which "
            "current BigStitcher no longer reads either; re-save the project in BigStitcher to convert them")
    parts = [p for p in text.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or os.path.isabs(text):
        raise ProjectFormatError(f"{where(xml)}: interest point group {group!r} does not name a group "
                                 f"inside {CONTAINER}")
    return Path(container).joinpath(*parts)


# -- the two lists ------------------------------------------------------------------------
def _read_2d(path: Path, columns: int, dtype, what: str) -> np.ndarray:
    """A ``[columns, N]`` N5 dataset (``[0]`` when empty) as an ``(N, columns)`` array."""
    ds = N5Dataset(path)
    if ds.ndim == 1 and ds.shape == (0,):
        return np.zeros((0, columns), dtype=dtype)
    if ds.ndim != 2 or ds.shape[1] != columns:
        dims = list(ds.shape[::-1])
        raise ProjectFormatError(f"{path}: {what} must have dimensions [{columns}, N], has {dims}")
    if np.dtype(ds.dtype) != np.dtype(dtype):
        raise ProjectFormatError(f"{path}: {what} must be {np.dtype(dtype).name}, is {ds.dtype}")
    return ds.read()


def _write_2d(path: Path, values: np.ndarray, dtype, block_columns: int) -> None:
    """Write ``(N, columns)`` values as BigStitcher does: ``[columns, N]``, blocks ``[block_columns, 300000]``."""
    values = np.asarray(values, dtype=dtype)
    n, columns = values.shape
    if n == 0:
        create_dataset(path, (0,), (1,), dtype, compression=_COMPRESSION)
        return
    ds = create_dataset(path, (n, columns), (BLOCK, block_columns), dtype, compression=_COMPRESSION)
    for i in range(0, n, BLOCK):
        for j in range(0, columns, block_columns):
            ds.write_block((i // BLOCK, j // block_columns), values[i:i + BLOCK, j:j + block_columns])


def read_points(container: str | os.PathLike, group: str, *, xml: Path | None = None) -> InterestPoints:
    """Read one view's points (``group``: ``tpId_0_viewSetupId_3/beads``) from an ``interestpoints.n5``.

    Raises
    ------
    MissingDataError
        The group or one of its datasets does not exist.
    ProjectFormatError
        The datasets are not what BigStitcher writes (names the file and the problem).
    """
    folder = _group_dir(Path(container), group, xml) / "interestpoints"
    attrs = read_attributes(folder)
    if not attrs:
        raise MissingDataError(f"{where(xml)}: no interest points at {folder} (the XML refers to {group!r})")
    if attrs.get("type", "list") != "list":
        raise UnsupportedFormatError(f"{folder}: point cloud type {attrs.get('type')!r} is not supported "
                                     "(only 'list')")
    ids = _read_2d(folder / "id", 1, np.uint64, "the id dataset")[:, 0]
    loc = _read_2d(folder / "loc", 3, np.float64, "the loc dataset")
    if len(ids) != len(loc):
        raise ProjectFormatError(f"{folder}: {len(ids)} ids but {len(loc)} locations")
    if len(np.unique(ids)) != len(ids):
        raise ProjectFormatError(f"{folder}: point ids repeat")
    if not np.all(np.isfinite(loc)):
        raise ProjectFormatError(f"{folder}: some locations are not finite numbers")
    if ids.size and ids.max() > np.iinfo(np.int64).max:
        raise ProjectFormatError(f"{folder}: point ids beyond 2^63")
    return InterestPoints(ids.astype(np.int64), loc[:, ::-1], params=str(attrs.get("tilefuse params", "")))


def write_points(container: str | os.PathLike, group: str, points: InterestPoints, *,
                 overwrite: bool = False) -> Path:
    """Write one view's points as BigStitcher does; the label's correspondences are dropped (now stale).

    Points equal to those stored (a repeated run) are left as they are, with
    their correspondences.

    The group is written under a temporary name and then takes the place of
    the old one.  An existing group is replaced only with ``overwrite`` or
    when it holds points found with the same parameters (a repeated run).

    Raises
    ------
    OutputExistsError
        The group exists with other points and ``overwrite`` is False.
    """
    final = _group_dir(Path(container), group)
    if _same_points(Path(container), group, points):
        return final  # a repeated run found the same points: their correspondences stay valid, keep them
    if final.exists() and not overwrite:
        old = read_attributes(final / "interestpoints").get("tilefuse params")
        if old is None or old != points.params:
            raise OutputExistsError(
                f"{final}: interest points labelled {final.name!r} exist already (found with other parameters "
                f"or by another program); choose another label or overwrite them")
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    ip = tmp / "interestpoints"
    write_attributes(Path(container), {"n5": "2.5.1"})
    write_attributes(ip, {"pointcloud": "1.0.0", "type": "list", "list version": "1.0.0",
                          "tilefuse params": points.params})
    _write_2d(ip / "id", points.ids.reshape(-1, 1).astype(np.uint64), np.uint64, 1)
    _write_2d(ip / "loc", points.loc[:, ::-1], np.float64, 3)
    _swap(tmp, final)
    return final


def _same_points(container: Path, group: str, points: InterestPoints) -> bool:
    """Whether the group holds exactly these points, found with the same parameters."""
    folder = _group_dir(container, group) / "interestpoints"
    try:
        if read_attributes(folder).get("tilefuse params") != points.params:
            return False
        old = read_points(container, group)
    except TilefuseError:  # damaged or incomplete: write them anew (if allowed)
        return False
    return np.array_equal(old.ids, points.ids) and np.array_equal(old.loc, points.loc)


def _swap(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` in the place of ``final`` (moved aside first, removed after)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def read_correspondences(container: str | os.PathLike, group: str, *,
                         xml: Path | None = None) -> Correspondences:
    """One view's correspondences (empty when the label has none)."""
    folder = _group_dir(Path(container), group, xml) / "correspondences"
    attrs = read_attributes(folder)
    if not attrs:
        return Correspondences.empty()
    id_map = attrs.get("idMap", {})
    if not isinstance(id_map, Mapping):
        raise ProjectFormatError(f"{folder}/attributes.json: idMap must be an object, got {id_map!r}")
    if not id_map:
        return Correspondences.empty()
    codes = {}
    for key, code in id_map.items():
        parts = str(key).split(",", 2)
        try:
            view = ViewId(int(parts[0]), int(parts[1]))
            label = parts[2]
            code = int(round(float(code)))  # BigStitcher notes Longs may come back as doubles
        except (ValueError, IndexError):
            raise ProjectFormatError(f"{folder}/attributes.json: idMap entry {key!r}: {code!r} is not "
                                     "'timepoint,setup,label': code") from None
        codes[code] = (view, label)
    data = _read_2d(folder / "data", 3, np.uint64, "the correspondence dataset")
    unknown = sorted(set(np.unique(data[:, 2]).tolist()) - set(codes))
    if unknown:
        raise ProjectFormatError(f"{folder}/data: view codes {unknown[:5]} are not in the idMap")
    pairs = [codes[int(c)] for c in data[:, 2]]
    return Correspondences(data[:, 0].astype(np.int64), data[:, 1].astype(np.int64),
                           [p[0] for p in pairs], [p[1] for p in pairs])


def write_correspondences(container: str | os.PathLike, group: str, table: Correspondences) -> Path:
    """Replace one view's correspondences (the points must exist)."""
    label_dir = _group_dir(Path(container), group)
    if not (label_dir / "interestpoints").is_dir():
        raise MissingDataError(f"{label_dir}: no interest points to attach correspondences to")
    final = label_dir / "correspondences"
    tmp = label_dir / f".correspondences.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    keys: dict[tuple[ViewId, str], int] = {}
    for view, label in zip(table.other_views, table.other_labels):
        keys.setdefault((view, label), len(keys))
    id_map = {f"{v.timepoint},{v.setup},{label}": code for (v, label), code in keys.items()}
    write_attributes(tmp, {"correspondences": "1.0.0", "idMap": id_map})
    if len(table):
        codes = [keys[(v, label)] for v, label in zip(table.other_views, table.other_labels)]
        data = np.column_stack([table.ids, table.other_ids, codes]).astype(np.uint64)
        _write_2d(tmp / "data", data, np.uint64, 1)
    _swap(tmp, final)
    return final


# -- the project's view of them -------------------------------------------------------------
def labels(project: Project) -> dict[str, list[ViewId]]:
    """Interest point labels the project's XML refers to, with their views."""
    out: dict[str, list[ViewId]] = {}
    for ref in project.data.interest_points or ():
        out.setdefault(ref.label, []).append(ref.view)
    return out


def _references(project: Project, label: str, views: Iterable[ViewId] | None) -> dict[ViewId, InterestPointsFile]:
    refs = {ref.view: ref for ref in project.data.interest_points or () if ref.label == label}
    if views is None:
        return refs
    return {v: refs[v] for v in views if v in refs}


def load_points(project: Project, label: str, views: Sequence[ViewId] | None = None) -> dict[ViewId, InterestPoints]:
    """The points the XML refers to for ``label`` (of ``views``, default all that have some).

    Raises
    ------
    MissingDataError
        The XML refers to points that are not in ``interestpoints.n5``.
    """
    out = {}
    for view, ref in sorted(_references(project, label, views).items()):
        pts = read_points(container_path(project), ref.path, xml=project.path)
        pts.params = ref.params or pts.params
        _check_inside(project, view, ref.path, pts)
        out[view] = pts
    return out


def _check_inside(project: Project, view: ViewId, group: str, pts: InterestPoints) -> None:
    """Refuse points that lie far outside their view: they are not in its full-resolution voxels.

    Sub-voxel fits (at a downsampled level) put points a little beyond the
    edges, so a margin of 10 % of the extent (at least 4 voxels) is allowed;
    points further out were found in another frame (a downsampled or another
    view's image) and would be matched at the wrong place.
    """
    size = project.setups[view.setup].size
    if size is None or not len(pts):
        return
    hi = np.asarray(size, dtype=np.float64) - 1
    margin = np.maximum(4.0, 0.1 * (hi + 1))
    outside = np.any((pts.loc < -margin) | (pts.loc > hi + margin), axis=1)
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        x, y, z = pts.loc[k, ::-1]
        raise ProjectFormatError(
            f"{container_path(project) / group}: {int(outside.sum())} of {len(pts)} interest points of {view} lie "
            f"outside the view's size {' '.join(str(int(v)) for v in size[::-1])} (x y z), e.g. point "
            f"{int(pts.ids[k])} at {x:.6g} {y:.6g} {z:.6g}: they are not in the view's full-resolution voxels")


def load_correspondences(project: Project, label: str,
                         views: Sequence[ViewId] | None = None) -> dict[ViewId, Correspondences]:
    """The stored correspondences of ``label`` per view (empty tables where there are none)."""
    return {view: read_correspondences(container_path(project), ref.path, xml=project.path)
            for view, ref in sorted(_references(project, label, views).items())}


def add_reference(project: Project, view: ViewId, label: str, params: str) -> None:
    """Add (or replace) the XML's ``<ViewInterestPointsFile>`` of one view and label."""
    refs = project.data.interest_points
    if refs is None:
        refs = project.data.interest_points = []
    ref = InterestPointsFile(view=view, label=label, params=params, path=points_group(view, label))
    for i, old in enumerate(refs):
        if old.view == view and old.label == label:
            ref.attrib = dict(old.attrib)
            refs[i] = ref
            return
    refs.append(ref)
    refs.sort(key=lambda r: (r.view.timepoint, r.view.setup, r.label))
