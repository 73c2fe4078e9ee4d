"""The project model: SpimData2 XML in and out, and the :class:`Project` API."""

from .model import SpimData, ViewSetup, ViewTransform
from .project import ATTRIBUTE_KINDS, Project, open_project, squeeze_z
from .views import ViewId

__all__ = [
    "ATTRIBUTE_KINDS",
    "Project",
    "SpimData",
    "ViewId",
    "ViewSetup",
    "ViewTransform",
    "open_project",
    "squeeze_z",
]
