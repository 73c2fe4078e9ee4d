"""Microscope files with their own metadata into a project (``tilefuse convert FILE...``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import MissingDataError
from ..formats.acquisition import file_stem, open_acquisition
from ._build import Source, write_sources
from .tables import ConvertOptions

__all__ = ["convert_files"]


def convert_files(
    files: Sequence[str | Path],
    output: str | Path,
    options: ConvertOptions | None = None,
    *,
    factors="auto",
    progress: bool = False,
    overwrite: bool = False,
    client=None,
    **changes,
):
    """Make a project from acquisition files: their stacks, stage positions, calibration and channels.

    Parameters
    ----------
    files : sequence of path-like
        CZI, OME-TIFF, ND2, LIF, ImageJ or plain TIFF files.  Every series
        (position, mosaic tile, LIF image) of every file is a tile; channels
        and timepoints come from the files.
    output : path-like
        The project XML to write.
    options : ConvertOptions, optional
        ``**changes`` change its fields.  ``voxel_size`` overrides the files'
        calibration (a warning says so); ``stage_axes`` maps stage axes onto
        image axes; ``in_place=True`` writes only the XML, reading the views
        from ``files`` (BigStitcher's ``spimreconstruction.filelist``);
        otherwise the pixels are resaved in ``format`` with a pyramid.
    factors, progress, overwrite, client
        As for :func:`tilefuse.write_project`.

    Returns
    -------
    Project
        The new project.

    Raises
    ------
    UnsupportedFormatError
        A file of a kind tilefuse does not read, or whose reader is an
        extra that is not installed (the message names it).
    ProjectFormatError
        Tiles without stage positions, files of different calibrations.
    """
    o = ConvertOptions.build(options, **changes)
    sources, acquisitions = [], []
    for path in map(Path, files):
        if not path.is_file():
            raise MissingDataError(f"{path}: file not found")
        with open_acquisition(path) as f:
            acq = f.describe()
        acquisitions.append(acq)
        series = sorted({s.series for s in acq.stacks})
        for s in acq.stacks:
            name = file_stem(path)
            if len(series) > 1:
                name += f" {acq.series_names.get(s.series) or f'series {s.series}'}"
            sources.append(Source(path, s, None, (str(path), s.series), name))
    return write_sources(sources, acquisitions, output, o, stage_positions=True, factors=factors,
                         progress=progress, overwrite=overwrite, client=client)
