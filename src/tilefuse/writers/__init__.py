"""Writers: new BigStitcher projects (BDV HDF5, N5, OME-Zarr, TIFF) and fused outputs.

Every writer writes under a temporary name and renames at the end
(:mod:`._atomic`); the multiscale OME-Zarr writer also resumes interrupted runs.
"""

from .fused import write_fused
from .ome_zarr import write_ome_zarr
from .options import OutputOptions
from .project import write_project
from .tiff import write_tiff

__all__ = ["OutputOptions", "write_fused", "write_ome_zarr", "write_project", "write_tiff"]
