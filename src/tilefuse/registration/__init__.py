"""Registration: phase correlation on overlaps, a global solve, and write-back.

Array-level functions (:func:`pairwise_shift`, :func:`solve_translations`) know
nothing of projects; :mod:`.pairwise` and :mod:`.api` apply them to a project.
"""

from .api import STITCHING_TRANSFORM, RegistrationResult, links_from_project, register, solve
from .global_opt import PRESETS, GlobalSolution, ShiftConstraint, solve_translations
from .options import RegistrationOptions
from .pairwise import Link, RegistrationGroups, make_groups, pairwise
from .phase_correlation import PairwiseShift, pairwise_shift

__all__ = [
    "PRESETS",
    "STITCHING_TRANSFORM",
    "GlobalSolution",
    "Link",
    "PairwiseShift",
    "RegistrationGroups",
    "RegistrationOptions",
    "RegistrationResult",
    "ShiftConstraint",
    "links_from_project",
    "make_groups",
    "pairwise",
    "pairwise_shift",
    "register",
    "solve",
    "solve_translations",
]
