"""The options of writing a fused result, checked once: :class:`OutputOptions`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._options import Options, choice, number, option, optional, parse_whole
from ..errors import OptionError

__all__ = ["OutputOptions", "CONTAINERS", "RESUME_MODES", "NGFF_VERSIONS"]

#: Pixel containers of a BigStitcher project output (``.xml``).
CONTAINERS = ("hdf5", "n5", "zarr")
#: What to do with a partial output left by an interrupted run (see :func:`~tilefuse.writers.write_fused`).
RESUME_MODES = ("auto", "require", "never")
#: OME-Zarr outputs: NGFF 0.5 (Zarr v3, sharded; the default) or 0.4 (Zarr v2, a file per chunk).
NGFF_VERSIONS = ("0.5", "0.4")


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
    ngff: str = option("0.5", choices=NGFF_VERSIONS, parse=str, example="0.4",
                       help="OME-Zarr version: 0.5 (Zarr v3 with shards, default) or 0.4 (Zarr v2, a file per chunk, "
                            "for older viewers)")
    shards: int | None = option(None, check=optional(number(1, integer=True)), parse=parse_whole, metavar="N",
                                example="512",
                                help="OME-Zarr 0.5 shard side in voxels along each spatial axis, a multiple of the "
                                     "chunks (default: about 1 GiB of chunks per shard)")
