"""The one exception family of tilefuse.

Every error raised on bad input is a :class:`TilefuseError`.  Subclasses also
derive from the matching built-in type, so ``except FileNotFoundError`` keeps
working for callers who do not know tilefuse.  Messages name the file, the
element or view, and what is wrong, e.g.::

    dataset.xml, <ViewRegistration timepoint="0" setup="3">: affine has 11 numbers, expected 12
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "TilefuseError",
    "ProjectFormatError",
    "UnsupportedFormatError",
    "ImageDataError",
    "MissingDataError",
    "RegistrationError",
    "FusionError",
    "OutputError",
    "OutputExistsError",
    "OutputIsInputError",
    "OutputClashError",
    "OutputBusyError",
    "SelectionError",
    "WorkerLostError",
    "OptionError",
    "where",
]


class TilefuseError(Exception):
    """Base class of every error tilefuse raises on bad input or state."""


class ProjectFormatError(TilefuseError, ValueError):
    """The project XML is malformed or inconsistent."""


class UnsupportedFormatError(TilefuseError, NotImplementedError):
    """A format (image loader, file type, option) that tilefuse does not support."""


class ImageDataError(TilefuseError, ValueError):
    """Pixel data disagree with the project (shape, dtype, level) or are corrupt."""


class MissingDataError(TilefuseError, FileNotFoundError):
    """A file, dataset or view that the project refers to does not exist."""


class RegistrationError(TilefuseError, ValueError):
    """Registration cannot run on the given input (no overlap, bad parameters)."""


class FusionError(TilefuseError, ValueError):
    """Fusion cannot run on the given input (empty box, bad parameters)."""


class OutputError(TilefuseError, OSError):
    """An output cannot be written: full disk, read-only or unwritable folder, quota.

    The message names the output, the cause and what was kept, e.g.
    ``out/fused.h5: cannot write: no space left on device; ...``.
    """


class OutputExistsError(TilefuseError, FileExistsError):
    """The output (or a foreign partial output) already exists and may not be replaced."""


class OutputIsInputError(TilefuseError, ValueError):
    """An output path is, contains or lies inside one of the run's inputs."""


class OutputClashError(TilefuseError, ValueError):
    """Two outputs of one run are the same path, or one lies inside the other."""


class OutputBusyError(TilefuseError, BlockingIOError):
    """Another run is writing the same output right now."""


class SelectionError(TilefuseError, ValueError):
    """A selection names a channel, tile, timepoint... that the project does not have.

    The message lists what the project has, e.g.
    ``dataset.xml: no channel '488' (channels: 0 "DAPI", 1 "GFP")``.
    """


class WorkerLostError(TilefuseError, RuntimeError):
    """The dask.distributed workers running a computation died and did not come back."""


class OptionError(ValueError):
    """A bad parameter value (not bad data): names the option and says what is wrong.

    Not a :class:`TilefuseError`: the caller, not the input, is at fault.  ``option`` is the
    Python name (``blend_range``); the command line shows its flag instead (``--blend-range``).
    """

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"{option}: {reason}" if option else reason)

    def __reduce__(self):  # picklable with its two arguments (dask ships errors between processes)
        return type(self), (self.option, self.reason)


def where(path: str | Path | None, element: str | None = None) -> str:
    """Format the location prefix of an error message: ``"file, <element>"``."""
    parts = []
    if path is not None:
        parts.append(str(path))
    if element:
        parts.append(element)
    return ", ".join(parts) if parts else "<input>"
