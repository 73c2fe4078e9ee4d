"""The project model: SpimData2 XML in and out, and the :class:`Project` API.

Opening a project with its pixels is :func:`tilefuse.open_project`
(:mod:`tilefuse.opening`): it builds the image loader, which this package,
below the loaders, does not know.
"""

from .model import SpimData, ViewSetup, ViewTransform
from .project import ATTRIBUTE_KINDS, Project, squeeze_z
from .views import ViewId

__all__ = [
    "ATTRIBUTE_KINDS",
    "Project",
    "SpimData",
    "ViewId",
    "ViewSetup",
    "ViewTransform",
    "squeeze_z",
]
