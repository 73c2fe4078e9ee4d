"""Interest points: BigStitcher's multi-view registration (detection, matching, global solve).

Storage in BigStitcher's own format (:mod:`.storage`).
"""

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
    "Correspondences",
    "InterestPoints",
    "add_reference",
    "container_path",
    "labels",
    "load_correspondences",
    "load_points",
    "points_group",
    "read_correspondences",
    "read_points",
    "write_correspondences",
    "write_points",
]
