"""Image loaders, one small module per ``<ImageLoader format="...">``.

:func:`loader_from_xml` dispatches on the format attribute; a format without a
loader gives :class:`~tilefuse.errors.UnsupportedFormatError` naming it.
"""

from __future__ import annotations

from pathlib import Path

from .._blockcache import block_cache_info, clear_block_cache, set_block_cache_size
from ..errors import UnsupportedFormatError, where
from .base import ImageLoader

__all__ = [
    "ImageLoader", "LOADERS", "loader_class", "loader_from_xml", "register_loader",
    "set_block_cache_size", "block_cache_info", "clear_block_cache",
]

#: format attribute -> loader class
LOADERS: dict[str, type[ImageLoader]] = {}


def register_loader(cls: type[ImageLoader]) -> type[ImageLoader]:
    """Class decorator adding a loader to :data:`LOADERS` under ``cls.format``."""
    LOADERS[cls.format] = cls
    return cls


def _import_builtin_loaders() -> None:
    # Imported for their registration side effect; each is a small module.
    import importlib

    # _filelist after _tiff: it also takes filemap2 projects over non-TIFF files (CZI, ND2, LIF).
    for name in ("_hdf5", "_n5", "_tiff", "_filelist", "_stack", "_zarr", "_split", "_flatfield"):
        importlib.import_module(f"{__name__}.{name}")


def loader_class(fmt: str, xml_path: Path | None = None) -> type[ImageLoader]:
    """The loader class for an XML format name."""
    _import_builtin_loaders()
    try:
        return LOADERS[fmt]
    except KeyError:
        known = ", ".join(sorted(LOADERS))
        raise UnsupportedFormatError(
            f'{where(xml_path, f"<ImageLoader format={fmt!r}>")}: this image loader format is '
            f"not supported by tilefuse (supported: {known})"
        ) from None


def loader_from_xml(element, base_dir: Path, xml_path: Path | None = None) -> ImageLoader:
    """Build the loader for an ``<ImageLoader>`` element."""
    fmt = element.get("format", "")
    loader = loader_class(fmt, xml_path).from_xml(element, base_dir, xml_path)
    loader.xml_path = xml_path
    return loader
