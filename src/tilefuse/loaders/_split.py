"""``split.*`` image loaders: views that are sub-regions of another loader's views.

BigStitcher's "Split images" turns each large view into several smaller,
overlapping ones (for finer registration).  The new project keeps the pixels
where they were and wraps the original loader::

    <ImageLoader format="split.viewerimgloader">
      <ImageLoader format="bdv.hdf5"> ... </ImageLoader>     the original loader
      <SequenceDescription> ... </SequenceDescription>       the original setups
      <SetupIds>
        <SetupIdDefinition>
          <NewId>3</NewId>                                   a setup of this project
          <OldId>1</OldId>                                   the setup it is cut from
          <min>0 0 0</min>                                   inclusive voxel box, x y z,
          <max>1023 511 99</max>                             at full resolution
        </SetupIdDefinition>
        ...
      </SetupIds>
    </ImageLoader>

(``split.imgloader`` and ``split.multiresolutionimgloader`` are the same
element around loaders without BigDataViewer caching.)  Level 0 is the box
itself.  Coarser levels follow multiview-reconstruction's
``SplitViewerSetupImgLoader``: at a level downsampled by ``f`` the box is
``floor(min / f) .. floor((max - 0.01) / f)``, clipped to the original
level, and because ``min / f`` need not be an integer the level's mipmap
transform gains a translation ``floor(min / f) - min / f``
(:meth:`SplitLoader.mipmap_transform`).  (Java applies that formula at level
0 too, which drops the last voxel of every axis there; we keep the whole box
that the view's ``<size>`` declares.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from lxml import etree

from ..errors import ImageDataError, MissingDataError, ProjectFormatError, UnsupportedFormatError, where
from ..geometry.affine import mipmap_transform
from ..project.views import ViewId
from . import loader_from_xml, register_loader
from .base import ImageLoader, Region, describe_files, normalize_region

__all__ = ["SplitLoader"]


@register_loader
class SplitLoader(ImageLoader):
    """Views cut out of the views of an underlying loader.

    Parameters
    ----------
    underlying : ImageLoader
        The loader of the original (unsplit) setups.
    new_to_old : dict of int -> int
        Setup id of this project -> setup id of the original.
    boxes : dict of int -> (min, max)
        Setup id of this project -> inclusive full-resolution voxel box
        ``(min_zyx, max_zyx)`` inside the original setup.
    """

    format = "split.viewerimgloader"

    def __init__(self, underlying: ImageLoader, new_to_old: dict[int, int],
                 boxes: dict[int, tuple[tuple[int, int, int], tuple[int, int, int]]]) -> None:
        super().__init__()
        self.underlying = underlying
        self.new_to_old = {int(k): int(v) for k, v in new_to_old.items()}
        self.boxes = {int(k): (tuple(int(v) for v in lo), tuple(int(v) for v in hi)) for k, (lo, hi) in boxes.items()}

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None = None) -> SplitLoader:
        fmt = element.get("format", cls.format)
        here = f'<ImageLoader format="{fmt}">'
        inner = element.find("ImageLoader")
        if inner is None:
            raise ProjectFormatError(f"{where(xml_path, here)}: no nested <ImageLoader> of the original views")
        setup_ids = element.find("SetupIds")
        if setup_ids is None:
            raise ProjectFormatError(f"{where(xml_path, here)}: no <SetupIds>")
        new_to_old, boxes = {}, {}
        for i, definition in enumerate(setup_ids.findall("SetupIdDefinition")):
            context = f"{here} <SetupIdDefinition> #{i + 1}"
            try:
                new = int(definition.findtext("NewId").strip())
                old = int(definition.findtext("OldId").strip())
                lo = [int(v) for v in definition.findtext("min").split()]
                hi = [int(v) for v in definition.findtext("max").split()]
            except (AttributeError, ValueError):
                raise ProjectFormatError(
                    f"{where(xml_path, context)}: needs integer <NewId>, <OldId> and 3-number <min>, <max>"
                ) from None
            if len(lo) != 3 or len(hi) != 3 or any(a > b or a < 0 for a, b in zip(lo, hi)):
                raise ProjectFormatError(f"{where(xml_path, context)}: bad box min {lo} max {hi}")
            if new in new_to_old:
                raise ProjectFormatError(f"{where(xml_path, context)}: setup {new} is defined twice")
            new_to_old[new] = old
            boxes[new] = (tuple(lo[::-1]), tuple(hi[::-1]))  # XML x y z -> numpy z y x
        loader = cls(loader_from_xml(inner, base_dir, xml_path), new_to_old, boxes)
        loader.xml_path = xml_path
        loader._remember_xml(element, base_dir)
        return loader

    def to_xml(self, base_dir: Path):
        if self._xml_text is None:
            raise UnsupportedFormatError(
                f"{self!r}: only split loaders read from a project XML can be written back "
                "(the original <SequenceDescription> they wrap is kept verbatim)"
            )
        element = etree.fromstring(self._xml_text)
        # The nested loader writes itself: verbatim, or with its paths relative to a new base.
        element.replace(element.find("ImageLoader"), self.underlying.to_xml(base_dir))
        return element

    def __repr__(self) -> str:
        return f"SplitLoader({self.underlying!r}, {len(self.new_to_old)} setups)"

    def token(self):
        return (type(self).__name__, self.underlying.token(), tuple(sorted(self.new_to_old.items())),
                tuple(sorted(self.boxes.items())))

    # -- mapping ------------------------------------------------------------
    def _old(self, view: ViewId) -> ViewId:
        view = ViewId(*view)
        try:
            return ViewId(view.timepoint, self.new_to_old[view.setup])
        except KeyError:
            raise MissingDataError(
                f"{where(self.xml_path, '<SetupIds>')}: setup {view.setup} is not defined ({view})"
            ) from None

    def level_box(self, view: ViewId, level: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The inclusive voxel box ``(min, max)`` (z y x) of a view inside the original's level."""
        old = self._old(view)
        lo, hi = self.boxes[ViewId(*view).setup]
        if level == 0:  # the box itself, as the view's <size> says (Java's getImage(timepoint))
            return lo, hi
        factors = self.underlying.levels(old)[level]
        old_shape = self.underlying.shape(old, level)
        lo_l = tuple(math.floor(a / f) for a, f in zip(lo, factors))
        # 0.01: multiview-reconstruction's margin, so a max on a block border stays in the block
        hi_l = tuple(min(math.floor((b - 0.01) / f), n - 1) for b, f, n in zip(hi, factors, old_shape))
        return lo_l, hi_l

    # -- metadata ---------------------------------------------------------
    def has_view(self, view: ViewId) -> bool:
        view = ViewId(*view)
        return view.setup in self.new_to_old and self.underlying.has_view(self._old(view))

    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        return self.underlying.levels(self._old(view))

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        lo, hi = self.level_box(view, level)
        return tuple(max(0, b - a + 1) for a, b in zip(lo, hi))

    def dtype(self, view: ViewId) -> np.dtype:
        return self.underlying.dtype(self._old(view))

    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        return self.underlying.chunks(self._old(view), level)

    def mipmap_transform(self, view: ViewId, level: int) -> np.ndarray:
        """Level voxel -> full-resolution voxel of this (split) view.

        The original's mipmap transform after a shift by ``floor(min/f) - min/f``:
        the level's box starts at a whole voxel of the original level, which
        sits a fraction of a voxel away from where this view's origin falls.
        """
        factors = np.asarray(self.levels(view)[level], dtype=np.float64)  # checks the view
        lo = np.asarray(self.boxes[ViewId(*view).setup][0], dtype=np.float64)
        shift = np.eye(4)
        shift[:3, 3] = np.floor(lo / factors) - lo / factors
        return mipmap_transform(factors) @ shift

    def read(self, view: ViewId, level: int, region: Region, *, cache: bool = False) -> np.ndarray:
        region = normalize_region(region, self.shape(view, level))
        lo, _ = self.level_box(view, level)
        moved = tuple(slice(s.start + a, s.stop + a) for s, a in zip(region, lo))
        return self.underlying.read(self._old(view), level, moved, cache=cache)

    def check_view(self, view: ViewId) -> None:
        """The original view passes the whole validation and the box lies inside its level 0."""
        from .validate import check_view

        old = self._old(view)
        data = check_view(self.underlying, old)
        lo, hi = self.boxes[ViewId(*view).setup]
        if any(b >= n for b, n in zip(hi, data.shapes[0])):
            raise ImageDataError(
                f"{where(self.xml_path, '<SetupIds>')}: setup {ViewId(*view).setup} is the box "
                f"{' '.join(map(str, lo[::-1]))} .. {' '.join(map(str, hi[::-1]))} (x y z) of {old}, which is "
                f"only {' '.join(map(str, data.shapes[0][::-1]))} (x y z) in {describe_files(self.underlying, old)}"
            )

    def level_shape_range(self, view: ViewId, level: int, shape0) -> tuple[tuple[int, int], ...]:
        """Exactly the shape of :meth:`level_box` at that level.

        A split view's coarser levels are cut from the original's levels
        (``floor(min / f) .. floor((max - 0.01) / f)``), which can be one voxel
        more than ``level 0 / f`` of the box; the original's levels themselves
        pass the generic rule in :meth:`check_view`.
        """
        return tuple((n, n) for n in self.shape(view, level))

    def anchor_files(self, view: ViewId) -> list[Path]:
        return self.underlying.anchor_files(self._old(view))

    def files(self) -> list[Path]:
        return self.underlying.files()

    def view_files(self, view: ViewId) -> list[Path]:
        return self.underlying.view_files(self._old(view))


@register_loader
class _SplitImgLoader(SplitLoader):
    format = "split.imgloader"


@register_loader
class _SplitMultiResolutionImgLoader(SplitLoader):
    format = "split.multiresolutionimgloader"
