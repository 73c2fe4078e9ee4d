"""The options of fusion, checked once: :class:`FusionOptions`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._options import Options, number, numeric_dtype, option, optional, parse_numbers, per_axis
from ..errors import OptionError
from ..geometry import Box
from .content import CONTENT_SIGMAS
from .engine import BLENDING_MODES, INTERPOLATIONS

__all__ = ["FusionOptions"]


def _flag(value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OptionError("", f"must be True or False, got {value!r}")
    return bool(value)


def _box(value):
    if value is None or isinstance(value, Box):
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise OptionError("", f"must be the name of a <BoundingBoxDefinition> or a Box, got {value!r}")


@dataclass(frozen=True)
class FusionOptions(Options):
    """How to fuse: the output grid, blending, interpolation, type and chunks.

    Every field is checked when the options are made (an :class:`~tilefuse.errors.OptionError`
    names the field); ``tilefuse fuse`` and ``tilefuse run`` build their flags from these fields.

    Examples
    --------
    >>> from tilefuse.fusion.options import FusionOptions
    >>> FusionOptions(downsampling=2, blending="average").downsampling
    (2.0, 2.0, 2.0)
    """

    bounding_box: str | Box | None = option(
        None, check=_box, parse=str, metavar="NAME", example="cropped",
        help="fuse this <BoundingBoxDefinition> of the XML (default: the union of the views)")
    downsampling: tuple[float, float, float] = option(
        (1.0, 1.0, 1.0), check=per_axis(number(0, lo_open=True)), parse=parse_numbers, flag="--downsample",
        metavar="F|Z,Y,X", example="2",
        help="output voxel size relative to the data's, one number or z,y,x (default 1)")
    preserve_anisotropy: bool = option(
        True, check=_flag, flag="--isotropic",
        help="resample z to the xy spacing (default: keep the data's anisotropy)")
    blending: str = option("cosine", choices=BLENDING_MODES, example="average",
                           help="how overlapping views are combined (default cosine, BigStitcher's ramp)")
    blend_range: float = option(40.0, check=number(0), metavar="UNITS", example="5",
                                help="width of the cosine ramp, world units (default 40)")
    blend_border: float = option(0.0, check=number(0), metavar="UNITS", example="3",
                                 help="views' borders left out of the blend, world units (default 0)")
    interpolation: str = option("linear", choices=tuple(INTERPOLATIONS), example="nearest",
                                help="resampling of the views (default linear)")
    dtype: np.dtype | None = option(
        None, check=optional(numeric_dtype), parse=str, metavar="TYPE", example="float32",
        help="output pixel type, e.g. uint16 or float32 (default: the views'; values are clipped)")
    chunks: tuple[int, ...] | None = option(
        None, check=optional(per_axis(number(1, integer=True), counts=(2, 3))),
        parse=lambda text: parse_numbers(text, int), metavar="Z,Y,X", example="1,64,64",
        help="output chunk shape (default 128,256,256 in 3D, about 8 MiB in 2D)")
    intensity_adjustment: bool = option(False, check=_flag,
                                        help="apply the project's <IntensityAdjustments>")
    content_based: bool = option(False, check=_flag,
                                 help="also weigh views by local contrast (BigStitcher's content-based fusion)")
    content_sigmas: tuple[float, float] = option(
        tuple(float(s) for s in CONTENT_SIGMAS), check=per_axis(number(0, lo_open=True), counts=(2,),
                                                                names="sigma1,sigma2"),
        parse=parse_numbers, metavar="S1,S2", example="10,30",
        help="sigmas of the content-based weights, world units (default 20,40)")

