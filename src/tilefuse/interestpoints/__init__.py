"""Interest points: BigStitcher's multi-view registration, in BigStitcher's own format.

The steps, each usable on its own::

    found = detect(project)                    # DoG blobs per view, block by block (dask)
    project = found.apply(project)             # -> interestpoints.n5 + <ViewInterestPoints>
    matches = match(project)                   # descriptors + seeded RANSAC per overlapping pair
    matches.save(project)                      # -> correspondences in interestpoints.n5

and :func:`tilefuse.register` on a project whose views are rotated relative
to each other runs them all and solves one transform per view
(:func:`register_interest_points`).  Modules: :mod:`.storage` (the N5 and
XML format), :mod:`.dog` and :mod:`.detection`, :mod:`.descriptors`,
:mod:`.models` (fits, RANSAC, ICP) and :mod:`.matching`, :mod:`.options`.
"""

from .detection import Detections, detect, detection_factors
from .matching import Matches, PairMatches, match
from .options import DEFAULT_LABEL, DetectionOptions, MatchingOptions
from .register import InterestPointRegistration, register_interest_points
from .storage import (
    CONTAINER,
    Correspondences,
    InterestPoints,
    add_reference,
    container_path,
    labels,
    load_correspondences,
    load_points,
    points_group,
    read_correspondences,
    read_points,
    write_correspondences,
    write_points,
)

__all__ = [
    "CONTAINER",
    "DEFAULT_LABEL",
    "Correspondences",
    "DetectionOptions",
    "Detections",
    "InterestPointRegistration",
    "InterestPoints",
    "Matches",
    "MatchingOptions",
    "PairMatches",
    "add_reference",
    "container_path",
    "detect",
    "detection_factors",
    "labels",
    "load_correspondences",
    "load_points",
    "match",
    "points_group",
    "read_correspondences",
    "read_points",
    "register_interest_points",
    "write_correspondences",
    "write_points",
]
