"""Opening a project: read ``dataset.xml`` and build the image loader its ``<ImageLoader>`` describes.

Where the project model (:mod:`tilefuse.project`, which knows no pixel
format) and the loaders (:mod:`tilefuse.loaders`, which know no project) meet:
above both, so that neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from . import _storage
from .errors import UnsupportedFormatError
from .loaders import loader_from_xml
from .project.project import Project
from .project.xml_read import read_spimdata

__all__ = ["open_project"]


def open_project(path: str | Path) -> Project:
    """Open a BigStitcher project (``dataset.xml``).

    Parameters
    ----------
    path : str or Path
        The SpimData2 XML file, or its URL (``s3://bucket/dataset.xml``, any fsspec URL; see
        :mod:`tilefuse._storage` for credentials).

    Returns
    -------
    Project
        With the loader of its ``<ImageLoader>``.  An image format tilefuse
        cannot read leaves the project usable (XML, transforms): asking for
        pixels raises :class:`~tilefuse.errors.UnsupportedFormatError`.

    Raises
    ------
    MissingDataError
        The file does not exist.
    ProjectFormatError
        The XML is malformed; the message names the file and element.
    """
    path = path if _storage.is_url(path) else Path(path)
    project = Project(read_spimdata(path), path)
    if project.data.image_loader is None:
        return project
    try:
        loader = loader_from_xml(project.data.image_loader, project.base_dir, project.path)
    except UnsupportedFormatError as exc:
        # Keep the project usable (XML, transforms); fail only when pixels are asked for.
        return Project(project.data, project.path, loader_error=exc)
    return Project(project.data, project.path, loader=loader)
