"""The options of registration, checked once: :class:`RegistrationOptions`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._options import Options, choice, number, option, optional, parse_number, parse_numbers, per_axis
from ..errors import OptionError
from ..project.project import ATTRIBUTE_KINDS
from .global_affine import GLOBAL_MODELS
from .global_opt import PRESETS
from .sitk_refine import SITK_TRANSFORMS

__all__ = ["RegistrationOptions", "GROUP_BY_KINDS", "METHODS"]

#: What views can be grouped by (views sharing all of them move together).
GROUP_BY_KINDS = ("timepoint", "setup") + ATTRIBUTE_KINDS
#: How to register: "auto" uses interest points when views are rotated relative to each other.
METHODS = ("auto", "phase-correlation", "interest-points")


def _flag(value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OptionError("", f"must be True or False, got {value!r}")
    return bool(value)


def _entity(value):
    """An attribute id or name (channel "488" or 0), or None for all."""
    if value is None or isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise OptionError("", f"must be an id or a name, got {value!r}")


def _group_by(value) -> tuple[str, ...]:
    kinds = (value,) if isinstance(value, str) else tuple(value)
    for kind in kinds:
        choice(GROUP_BY_KINDS)(kind)
    if len(set(kinds)) != len(kinds):
        raise OptionError("", f"names a kind twice: {kinds}")
    return kinds


def _downsampling(value):
    if value == "auto":
        return value
    return per_axis(number(1, integer=True))(value)


def _max_shift(value):
    if value == "auto":
        return value
    return optional(per_axis(number(0, lo_open=True)))(value)


@dataclass(frozen=True)
class RegistrationOptions(Options):
    """How to register: which views move together, the pairwise step and the global solve.

    Every field is checked when the options are made (an :class:`~tilefuse.errors.OptionError`
    names the field); ``tilefuse register`` and ``tilefuse run`` build their flags from these fields.
    See :func:`~tilefuse.registration.pairwise.make_groups`,
    :func:`~tilefuse.registration.pairwise.pairwise` and :func:`~tilefuse.registration.api.solve`
    for what each does.

    Examples
    --------
    >>> from tilefuse.registration.options import RegistrationOptions
    >>> RegistrationOptions(preset="strict", downsampling=2).downsampling
    (2, 2, 2)
    """

    method: str = option("auto", choices=METHODS, example="interest-points",
                         help="phase-correlation (tiles), interest-points (views at several angles: DoG detection, "
                              "descriptor matching, global solve) or auto (default: interest points when views are "
                              "rotated relative to each other)")
    channel: Any = option(None, check=_entity, parse=str, metavar="ID|NAME", example="0",
                          help="register on this channel (id or name); default: the average of all")
    illumination: Any = option(None, check=_entity, parse=str, metavar="ID|NAME", example="0",
                               help="register on this illumination (id or name); default: the average of all")
    group_by: tuple[str, ...] = option(
        ("timepoint", "tile", "angle"), check=_group_by,
        flags={"--all-timepoints-together": ("tile", "angle")},
        help="views sharing these move together (default: timepoint, tile, angle)")
    downsampling: Any = option(
        "auto", check=_downsampling, parse=lambda text: text if text == "auto" else parse_numbers(text, int),
        metavar="auto|Z,Y,X", example="1,2,2",
        help="downsampling of the overlap crops (default auto: 1 in 2D; 1,2,2 in 3D unless an overlap is "
             "narrower than 40 voxels)")
    min_overlap: float = option(0.05, check=number(0, 1, lo_open=True), metavar="FRACTION", example="0.1",
                                help="minimum overlap of a pair, a fraction of the smaller view (default 0.05)")
    neighbours_only: bool = option(False, check=_flag, help="only face neighbours, no diagonal pairs")
    n_peaks: int = option(5, check=number(1, integer=True), flag="--peaks", metavar="N", example="3",
                          help="phase-correlation peaks to check (default 5)")
    refine: str | None = option(None, check=optional(choice(SITK_TRANSFORMS)), choices=None, parse=str,
                                metavar="|".join(SITK_TRANSFORMS), example="translation",
                                help="also refine every pair with SimpleITK (normalised correlation)")
    model: str = option("translation", choices=GLOBAL_MODELS, example="rigid",
                        help="global model per tile with phase correlation (rigid/affine: best with --refine "
                             "rigid/affine; interest points use --match-model)")
    preset: str = option("relaxed", choices=tuple(PRESETS), example="strict",
                         help="link rejection thresholds (BigStitcher's presets; default relaxed)")
    rel_threshold: float | None = option(None, check=optional(number(0, lo_open=True)), parse=parse_number,
                                         metavar="RATIO", example="3",
                                         help="reject links whose error exceeds this times the mean (preset's)")
    abs_threshold: float | None = option(None, check=optional(number(0, lo_open=True)), parse=parse_number,
                                         metavar="UNITS", example="4",
                                         help="reject links whose error exceeds this, world units (preset's)")
    min_correlation: float = option(0.3, check=number(0, 1), metavar="R", example="0.5",
                                    help="reject links below this correlation (default 0.3)")
    max_shift: Any = option(
        "auto", check=_max_shift,
        parse=lambda text: text if text == "auto" else None if text == "none" else parse_numbers(text),
        metavar="auto|none|UNITS|Z,Y,X", example="20",
        help="reject links that move a tile more than this, world units (default auto: more than the overlap "
             "allows, or twice its width; none: no bound)")
    max_stage_error: Any = option(
        None, check=optional(per_axis(number(0, lo_open=True))), parse=parse_numbers,
        metavar="UNITS|Z,Y,X", example="30",
        help="how far the true step between neighbouring tiles may differ from the stage's, world units "
             "(default: small errors); search within it, check every pair exhaustively (periodic content) and "
             "accept links up to it: see docs/registration.md")
    min_consistency: float = option(0.5, check=number(0, 1), metavar="R", example="0.6",
                                    help="warn about pairs whose overlap correlates below this at the final "
                                         "positions but clearly better at their own best alignment (ghosting; "
                                         "default 0.5)")
    allow_unregistered: bool = option(
        False, check=_flag,
        help="when no link (or interest-point match) is kept, keep every view where the stage put it and go on "
             "(default: stop with an error, nothing written)")
    fixed: tuple | None = option(None, cli=False,
                                 help="group keys that do not move (default: the first of each connected set)")

    def __post_init__(self) -> None:
        if self.fixed is not None:
            object.__setattr__(self, "fixed", tuple(self.fixed))
        super().__post_init__()
