"""``spimreconstruction.wrapped.flatfield.*``: flat-field correction around another loader.

BigStitcher can correct uneven illumination on the fly: the project wraps its
loader and names, per view, a bright image (the illumination profile) and a
dark image (the camera offset), both 2D::

    <ImageLoader format="spimreconstruction.wrapped.flatfield.multiresolution" Active="true" Cached="true">
      <WrappedImgLoader>
        <ImageLoader format="bdv.hdf5"> ... </ImageLoader>
      </WrappedImgLoader>
      <FlatFields>
        <FlatField Timepoint="0" ViewSetup="0">
          <BrightImg type="relative">bright.tif</BrightImg>
          <DarkImg type="relative">dark.tif</DarkImg>
        </FlatField>
      </FlatFields>
    </ImageLoader>

Every z plane of a view becomes, as in multiview-reconstruction's
``FlatFieldCorrectedRandomAccessibleInterval``::

    out = (raw - dark) * mean(bright - dark) / (bright - dark)      (0 where bright == dark)

clamped to the pixel type's range and, for integer types, rounded half up.
A missing bright image counts as 1, a missing dark image as 0 (a view with
neither is passed through).  The flat-field images index the view's ``(y, x)``
plane from its origin and repeat their border beyond their size.  At a
coarser level they are block-averaged by that level's ``(y, x)`` factors
first (BigDataViewer's exporter: ``max(n // f, 1)`` blocks), and the mean is
taken over the downsampled bright image.  ``Active="false"`` passes every
view through; ``Cached`` only concerns Java's cache and is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lxml import etree

from .._inputs import check_regular_file
from ..errors import ImageDataError, MissingDataError, ProjectFormatError, where
from ..project.paths import path_element, read_path_element
from ..project.views import ViewId
from . import loader_from_xml, register_loader
from .base import ImageLoader, Region, cached_handle, normalize_region

__all__ = ["FlatFieldLoader"]


@register_loader
class FlatFieldLoader(ImageLoader):
    """Flat-field corrected views of a wrapped loader.

    Parameters
    ----------
    wrapped : ImageLoader
        The loader of the raw pixels.
    images : dict of ViewId -> (Path or None, Path or None)
        Bright and dark image of each corrected view.
    active : bool
        False passes every view through uncorrected.
    cached : bool
        Kept for Java (whether it caches corrected planes).
    """

    format = "spimreconstruction.wrapped.flatfield.multiresolution"

    def __init__(self, wrapped: ImageLoader, images: dict, *, active: bool = True, cached: bool = True) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.images = {ViewId(*k): (None if b is None else Path(b), None if d is None else Path(d))
                       for k, (b, d) in images.items()}
        self.active = bool(active)
        self.cached = bool(cached)

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_xml(cls, element, base_dir: Path, xml_path: Path | None = None) -> FlatFieldLoader:
        here = f'<ImageLoader format="{element.get("format", cls.format)}">'
        inner = element.find("WrappedImgLoader/ImageLoader")
        if inner is None:
            raise ProjectFormatError(f"{where(xml_path, here)}: no <WrappedImgLoader><ImageLoader>")
        images = {}
        for i, ff in enumerate(element.findall("FlatFields/FlatField")):
            context = f"{here} <FlatField> #{i + 1}"
            try:
                view = ViewId(int(ff.get("Timepoint")), int(ff.get("ViewSetup")))
            except (TypeError, ValueError):
                raise ProjectFormatError(
                    f"{where(xml_path, context)}: needs integer Timepoint and ViewSetup attributes"
                ) from None
            bright = (read_path_element(ff, "BrightImg", base_dir, xml_path, context)
                      if ff.find("BrightImg") is not None else None)
            dark = (read_path_element(ff, "DarkImg", base_dir, xml_path, context)
                    if ff.find("DarkImg") is not None else None)
            if bright is not None or dark is not None:
                images[view] = (bright, dark)
        loader = cls(loader_from_xml(inner, base_dir, xml_path), images,
                     active=_boolean(element.get("Active", "true")),
                     cached=_boolean(element.get("Cached", "true")))
        loader.xml_path = xml_path
        loader._remember_xml(element, base_dir)
        return loader

    def to_xml(self, base_dir: Path):
        original = self._verbatim_xml(base_dir)
        if original is not None:
            return original
        el = etree.Element("ImageLoader", format=self.format, Active=str(self.active).lower(),
                           Cached=str(self.cached).lower())
        etree.SubElement(el, "WrappedImgLoader").append(self.wrapped.to_xml(base_dir))
        fields = etree.SubElement(el, "FlatFields")
        for view, (bright, dark) in sorted(self.images.items()):
            ff = etree.SubElement(fields, "FlatField", Timepoint=str(view.timepoint), ViewSetup=str(view.setup))
            if bright is not None:
                ff.append(path_element("BrightImg", bright, base_dir))
            if dark is not None:
                ff.append(path_element("DarkImg", dark, base_dir))
        return el

    def __repr__(self) -> str:
        return f"FlatFieldLoader({self.wrapped!r}, {len(self.images)} views, active={self.active})"

    def token(self):
        return (type(self).__name__, self.wrapped.token(), self.active,
                tuple(sorted((v, str(b), str(d)) for v, (b, d) in self.images.items())))

    # -- metadata: the wrapped loader's ---------------------------------------
    def has_view(self, view: ViewId) -> bool:
        return self.wrapped.has_view(view)

    def levels(self, view: ViewId) -> list[tuple[float, float, float]]:
        return self.wrapped.levels(view)

    def shape(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        return self.wrapped.shape(view, level)

    def dtype(self, view: ViewId) -> np.dtype:
        return self.wrapped.dtype(view)

    def chunks(self, view: ViewId, level: int = 0) -> tuple[int, int, int]:
        return self.wrapped.chunks(view, level)

    def mipmap_transform(self, view: ViewId, level: int) -> np.ndarray:
        return self.wrapped.mipmap_transform(view, level)

    def check_view(self, view: ViewId) -> None:
        """The wrapped loader's view passes the whole validation."""
        from .validate import check_view

        check_view(self.wrapped, view)

    def anchor_files(self, view: ViewId) -> list[Path]:
        return self.wrapped.anchor_files(view) + [p for p in self.images.get(ViewId(*view), ()) if p is not None]

    def level_shape_range(self, view: ViewId, level: int, shape0) -> tuple[tuple[int, int], ...]:
        return self.wrapped.level_shape_range(view, level, shape0)

    def files(self) -> list[Path]:
        extra = sorted({p for pair in self.images.values() for p in pair if p is not None})
        return self.wrapped.files() + extra

    def view_files(self, view: ViewId) -> list[Path]:
        own = [p for p in self.images.get(ViewId(*view), (None, None)) if p is not None]
        return self.wrapped.view_files(view) + own

    # -- pixels ---------------------------------------------------------------
    def read(self, view: ViewId, level: int, region: Region, *, cache: bool = False) -> np.ndarray:
        view = ViewId(*view)
        raw = self.wrapped.read(view, level, region, cache=cache)
        if not self.active or view not in self.images:
            return raw
        region = normalize_region(region, self.shape(view, level))
        factors = tuple(int(f) for f in self.levels(view)[level][1:])  # (y, x)
        plane = self.shape(view, level)[1:]
        bright, dark, mean = self._flat(view, factors, plane)
        rows = np.clip(np.arange(region[1].start, region[1].stop), 0, None)
        cols = np.clip(np.arange(region[2].start, region[2].stop), 0, None)
        b = _border_take(bright, rows, cols) if bright is not None else np.float64(1.0)
        d = _border_take(dark, rows, cols) if dark is not None else np.float64(0.0)
        span = b - d
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (raw.astype(np.float64) - d) * mean / span  # Java's order of operations
        out = np.where(span == 0, 0.0, out)
        return _to_type(out, raw.dtype)

    def _flat(self, view: ViewId, factors: tuple[int, int], plane: tuple[int, int]):
        """(bright, dark, mean(bright - dark)) at one level's (y, x) factors; None for a missing image."""
        bright_path, dark_path = self.images[view]
        bright = None if bright_path is None else _downsampled(bright_path, factors, self.xml_path)
        dark = None if dark_path is None else _downsampled(dark_path, factors, self.xml_path)

        def plane_mean():
            # Over the view's plane, both images border-extended to it (Java views them
            # through extendBorder over the source interval).
            rows, cols = np.arange(plane[0]), np.arange(plane[1])
            b = _border_take(bright, rows, cols) if bright is not None else 1.0
            d = _border_take(dark, rows, cols) if dark is not None else 0.0
            return float(np.mean(b - d))

        # Once per (images, level, plane), not per region read: fusion reads many regions.
        key = (str(bright_path), "flatfield-mean", str(dark_path), factors, tuple(plane))
        images = [p for p in (bright_path, dark_path) if p is not None]
        return bright, dark, cached_handle(key, plane_mean, anchors=images)


def _boolean(text: str) -> bool:
    return str(text).strip().lower() == "true"


def _border_take(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``image[rows][:, cols]`` with indices past the edge repeating the border (imglib2's extendBorder)."""
    r = np.clip(rows, 0, image.shape[0] - 1)
    c = np.clip(cols, 0, image.shape[1] - 1)
    return image[np.ix_(r, c)]


def _downsampled(path: Path, factors: tuple[int, int], xml_path) -> np.ndarray:
    """A 2D flat-field image (float64), block-averaged by ``factors`` like BigDataViewer's exporter."""
    def load():
        import tifffile

        if not check_regular_file(path, "flat-field image"):
            raise MissingDataError(f"{where(xml_path, '<FlatField>')}: flat-field image {path} does not exist")
        try:
            image = np.asarray(tifffile.imread(path), dtype=np.float64)
        except Exception as exc:  # tifffile raises several types for damaged files
            raise ImageDataError(f"{path}: cannot read the flat-field image ({exc})") from exc
        image = np.squeeze(image)
        if image.ndim != 2:
            raise ImageDataError(f"{path}: a flat-field image must be 2D (one plane), got shape {image.shape}")
        return image

    image = cached_handle((str(path), "flatfield"), load, anchors=[path])
    if factors == (1, 1):
        return image
    key = (str(path), "flatfield", factors)

    def shrink():
        # max(n // f, 1) blocks per axis; a block past the image's edge repeats its border.
        out_shape = [max(n // f, 1) for n, f in zip(image.shape, factors)]
        rows = np.clip(np.arange(out_shape[0] * factors[0]), 0, image.shape[0] - 1)
        cols = np.clip(np.arange(out_shape[1] * factors[1]), 0, image.shape[1] - 1)
        full = image[np.ix_(rows, cols)]
        return full.reshape(out_shape[0], factors[0], out_shape[1], factors[1]).mean(axis=(1, 3))

    return cached_handle(key, shrink, anchors=[path])


def _to_type(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Clamp to the type's range and, for integers, round half up (imglib2's ``setReal``)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        values = np.floor(np.clip(values, info.min, info.max) + 0.5)
        return np.clip(values, info.min, info.max).astype(dtype)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return np.clip(values, info.min, info.max).astype(dtype)
    return values.astype(dtype)


@register_loader
class _FlatFieldDefault(FlatFieldLoader):
    format = "spimreconstruction.wrapped.flatfield.default"
