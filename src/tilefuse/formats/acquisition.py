"""Microscopes' own files: what they hold (stacks, calibration, stage positions) and their pixels.

An acquisition file (a CZI, an OME-TIFF, an ND2, a LIF, an ImageJ or plain
TIFF) holds *stacks*: one ``(z, y, x)`` image per series (a position, a tile
of a mosaic, an image of a LIF project), channel and timepoint.  The numbering
follows Bio-Formats' where BigStitcher's ``spimreconstruction.filelist``
loader depends on it (``series`` is Bio-Formats' series index, ``channel`` its
channel index), so a project written by tilefuse over such files opens in
BigStitcher too.

Each format is one module (:mod:`.tiff_files`, :mod:`.czi`, :mod:`.lif`,
:mod:`.nd2`) with one :class:`AcquisitionFile` subclass; :func:`open_acquisition`
picks it by file name.  Vendor readers are optional extras: a missing one is
an :class:`~tilefuse.errors.UnsupportedFormatError` naming the extra to install.

Positions are the stage's, converted to image axes (``z, y, x``) and to the
unit of the voxel size; each module's docstring says which conventions it
applied (corner or centre, flipped axes, units), with the reader or
specification that defines them.
"""

from __future__ import annotations

import importlib
import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ImageDataError, MissingDataError, UnsupportedFormatError

__all__ = ["Stack", "Acquisition", "AcquisitionFile", "open_acquisition", "acquisition_class", "ACQUISITION_KINDS",
           "to_micrometers", "unit_factor", "is_acquisition_file", "file_stem"]

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Stack:
    """One ``(z, y, x)`` image of a file: a series, a channel, a timepoint.

    ``position`` is where its first voxel lies, ``(z, y, x)`` in the
    acquisition's :attr:`Acquisition.unit`, or None when the file does not say.
    """

    series: int
    channel: int
    timepoint: int
    shape: tuple[int, int, int]
    dtype: np.dtype
    chunks: tuple[int, int, int]
    position: tuple[float, float, float] | None = None
    name: str = ""
    illumination: int = 0
    angle: int = 0


@dataclass
class Acquisition:
    """What a file says about its stacks: calibration, names, positions."""

    path: Path
    kind: str
    stacks: list[Stack]
    #: ``(z, y, x)`` in :attr:`unit`; None where the file has no calibration for an axis
    voxel_size: tuple[float | None, float | None, float | None] = (None, None, None)
    unit: str = "µm"
    channel_names: dict[int, str] = field(default_factory=dict)
    series_names: dict[int, str] = field(default_factory=dict)
    #: conventions applied while reading (logged by the converter, documented per format)
    notes: list[str] = field(default_factory=list)


#: Units to micrometres (the names OME, ImageJ and the vendors write).
_UNITS = {
    "m": 1e6, "meter": 1e6, "metre": 1e6, "cm": 1e4, "centimeter": 1e4, "mm": 1e3, "millimeter": 1e3,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "pm": 1e-6, "å": 1e-4, "angstrom": 1e-4,
}


def unit_factor(unit: str | None) -> float | None:
    """Micrometres per ``unit`` (None for an unknown unit or a pixel "unit")."""
    if unit is None:
        return None
    return _UNITS.get(unit.strip().lower().replace("\u00b5", "µ"))


def to_micrometers(value: float | None, unit: str | None) -> float | None:
    """``value`` in ``unit`` as micrometres; None when either is unknown or not finite."""
    factor = unit_factor(unit)
    if value is None or factor is None or not math.isfinite(float(value)):
        return None
    return float(value) * factor


class AcquisitionFile(ABC):
    """An open acquisition file: its metadata and region reads of its stacks.

    Subclasses set :attr:`kind`, :attr:`suffixes` and :attr:`extra` (the pip
    extra holding their reader, None for core) and implement :meth:`_describe`
    (called once, its result kept by :meth:`describe`) and :meth:`read`.
    Instances hold an open file: one per process, cached by the loaders
    (:func:`tilefuse.loaders.base.cached_handle`); reads from several threads
    are serialised by the subclasses whose readers are not thread-safe.
    """

    kind: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingDataError(f"{self.path}: file not found")
        # One reader handle per file: describing it, and reading where the reader is not thread-safe,
        # is serialised by this lock.
        self._lock = threading.Lock()
        self._acq: Acquisition | None = None

    def _open_reader(self, module: str, opener: str) -> Any:
        """The vendor reader's handle of this file, ``module.opener(path)``: a missing package names the
        extra to install, a file the reader refuses is an :class:`ImageDataError` naming it."""
        reader = require(module, self.extra, self.path)
        try:
            return getattr(reader, opener)(str(self.path))
        except Exception as exc:
            raise ImageDataError(f"{self.path}: not a readable {self.kind.upper()} file ({exc})") from exc

    def describe(self) -> Acquisition:
        """The file's stacks and metadata (cheap: no pixels are read; worked out once per file handle)."""
        if self._acq is None:
            with self._lock:
                if self._acq is None:
                    self._acq = self._describe()
        return self._acq

    @abstractmethod
    def _describe(self) -> Acquisition:
        """Read the file's stacks and metadata (see :meth:`describe`)."""

    @abstractmethod
    def read(self, series: int, channel: int, timepoint: int, region: Region) -> np.ndarray:
        """The pixels of one stack in ``region`` (three slices inside its shape), ``(z, y, x)``."""

    def close(self) -> None:  # noqa: B027 - readers without handles have nothing to close
        """Close the file."""

    def stack(self, series: int, channel: int, timepoint: int) -> Stack:
        """The stack with these indices, or an error naming what the file has."""
        for s in self.describe().stacks:
            if (s.series, s.channel, s.timepoint) == (series, channel, timepoint):
                return s
        acq = self.describe()
        have = sorted({s.series for s in acq.stacks})
        raise MissingDataError(
            f"{self.path}: no series {series}, channel {channel}, timepoint {timepoint} in this {self.kind} file "
            f"(series {_ranges(have)}, channels {_ranges(sorted({s.channel for s in acq.stacks}))}, "
            f"timepoints {_ranges(sorted({s.timepoint for s in acq.stacks}))})")

    def __enter__(self) -> AcquisitionFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ranges(values: list[int]) -> str:
    return f"{values[0]}-{values[-1]}" if len(values) > 3 else ", ".join(map(str, values)) or "none"


#: kind -> (module, class name, suffixes); modules are imported on first use.
ACQUISITION_KINDS = {
    "czi": ("czi", "CziAcquisition", (".czi",)),
    "nd2": ("nd2", "Nd2Acquisition", (".nd2",)),
    "lif": ("lif", "LifAcquisition", (".lif",)),
    "tiff": ("tiff_files", "TiffAcquisition", (".ome.tif", ".ome.tiff", ".ome.btf", ".tif", ".tiff", ".btf")),
}


def acquisition_class(path: str | Path) -> type[AcquisitionFile]:
    """The :class:`AcquisitionFile` class reading ``path``, by its name."""
    name = Path(path).name.lower()
    for module, cls, suffixes in ACQUISITION_KINDS.values():
        if name.endswith(suffixes):
            return getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    known = ", ".join(s for *_, suffixes in ACQUISITION_KINDS.values() for s in suffixes)
    raise UnsupportedFormatError(f"{path}: not a file tilefuse can read as an acquisition (known: {known})")


def is_acquisition_file(path: str | Path) -> bool:
    """True when ``path``'s name is one :func:`acquisition_class` reads."""
    name = Path(path).name.lower()
    return any(name.endswith(suffixes) for *_, suffixes in ACQUISITION_KINDS.values())


def file_stem(path: str | Path) -> str:
    """``path``'s name without its acquisition suffix: ``scan.ome.tif`` -> ``scan``, ``pos.1.5.tif`` -> ``pos.1.5``.

    Tiles and view setups are named after their files so that they can be traced back to them.
    """
    name = Path(path).name
    lower = name.lower()
    for *_, suffixes in ACQUISITION_KINDS.values():
        for suffix in sorted(suffixes, key=len, reverse=True):  # .ome.tif before .tif
            if lower.endswith(suffix):
                return name[: -len(suffix)] or name
    return Path(path).stem


def open_acquisition(path: str | Path) -> AcquisitionFile:
    """Open an acquisition file with the reader for its kind (close it, or use ``with``)."""
    return acquisition_class(path)(path)


def require(module: str, extra: str, path: Path):
    """Import a vendor reader, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UnsupportedFormatError(
            f"{path}: reading this file needs the optional reader {module.split('.')[0]!r}: "
            f"pip install 'tilefuse[{extra}]' (or 'tilefuse[formats]' for every vendor format)") from None


def crop(plane_stack: np.ndarray, region: Region) -> np.ndarray:
    """``region``'s y and x slices of a ``(z, y, x)`` array already holding its z slice."""
    return plane_stack[:, region[1], region[2]]
