"""Fusion: registered views resampled chunk by chunk into one volume.

:mod:`.engine` works on abstract sources (shape, affine, reader) and knows no
file format; :mod:`.api` turns a project's views into sources and decides the
output grid.
"""

from .api import FusionPlan, fuse, plan_fusion
from .engine import FusionSource, fuse_sources
from .options import FusionOptions

__all__ = ["FusionOptions", "FusionPlan", "FusionSource", "fuse", "fuse_sources", "plan_fusion"]
