"""The options of writing a fused result, checked once: :class:`OutputOptions`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._options import Options, choice, number, option, optional, parse_whole
from ..errors import OptionError

__all__ = ["OutputOptions", "CONTAINERS", "RESUME_MODES"]

#: Pixel containers of a BigStitcher project output (``.xml``).
CONTAINERS = ("hdf5", "n5", "zarr")
#: What to do with a partial output left by an interrupted run (see :func:`~tilefuse.writers.write_fused`).
RESUME_MODES = ("auto", "require", "never")


def _flag(value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OptionError("", f"must be True or False, got {value!r}")
    return bool(value)


def _resume(value) -> str:
    if isinstance(value, (bool, np.bool_)):  # the older spelling: True = "auto", False = "never"
        return "auto" if value else "never"
    return choice(RESUME_MODES)(value)


@dataclass(frozen=True)
class OutputOptions(Options):
    """How to write a fused result (checked when made; ``fuse``/``run`` build their flags from here)."""

    container: str = option("hdf5", choices=CONTAINERS, example="n5",
                            help="pixel container when the output is a .xml project (default hdf5)")
    overwrite: bool = option(False, check=_flag, help="replace an existing output, once the new one is complete")
    resume: str = option(
        "auto", check=_resume, flags={"--resume": "require", "--no-resume": "never"},
        help="--resume: continue a partial output of the same work and refuse one of other work; "
             "--no-resume: start over (default: continue the same work, start over otherwise)")
    n_levels: int | None = option(None, check=optional(number(1, integer=True)), parse=parse_whole, flag="--levels",
                                  metavar="N", example="2",
                                  help="OME-Zarr pyramid levels (default: until the image spans one chunk)")
