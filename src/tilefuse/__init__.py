"""tilefuse: read BigStitcher projects, refine tile registration, fuse tiles chunk by chunk.

The data flow, one subpackage per stage (each imports only the ones before it)::

    project (XML model)  ->  formats  ->  loaders (pixels as dask)  ->  opening (open_project)
        ->  registration  ->  fusion  ->  intensity  ->  writers  ->  pipeline  ->  cli

Typical use::

    import tilefuse
    project = tilefuse.open_project("dataset.xml")
    result = tilefuse.register(project)
    registered = result.apply(project)
    registered.save("registered.xml")
    plan = tilefuse.plan_fusion(registered)
    tilefuse.write_fused(plan, "fused.ome.zarr")
"""

from .errors import (
    FusionError,
    ImageDataError,
    MissingDataError,
    OptionError,
    OutputBusyError,
    OutputClashError,
    OutputError,
    OutputExistsError,
    OutputIsInputError,
    ProjectFormatError,
    RegistrationError,
    TilefuseError,
    UnsupportedFormatError,
    WorkerLostError,
)

# Public names are imported on first use (PEP 562), so `import tilefuse` stays
# fast and a stage's dependencies load only when that stage is used.
_LAZY = {
    "IntensityOptions": "intensity",
    "IntensityResult": "intensity",
    "match_intensities": "intensity",
    "FusionPlan": "fusion.api",
    "FusionOptions": "fusion.options",
    "fuse": "fusion.api",
    "plan_fusion": "fusion.api",
    "Project": "project",
    "ViewId": "project",
    "open_project": "opening",
    "squeeze_z": "project",
    "RegistrationResult": "registration.api",
    "RegistrationOptions": "registration.options",
    "links_from_project": "registration.api",
    "register": "registration.api",
    "solve": "registration.api",
    "make_groups": "registration.pairwise",
    "pairwise": "registration.pairwise",
    "write_fused": "writers.fused",
    "OutputOptions": "writers.options",
    "write_project": "writers.project",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilefuse' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


from ._version import __version__  # noqa: E402

__all__ = [
    "FusionError",
    "FusionOptions",
    "FusionPlan",
    "ImageDataError",
    "IntensityOptions",
    "MissingDataError",
    "OptionError",
    "OutputBusyError",
    "OutputClashError",
    "OutputError",
    "OutputExistsError",
    "OutputIsInputError",
    "OutputOptions",
    "Project",
    "ProjectFormatError",
    "RegistrationError",
    "RegistrationOptions",
    "RegistrationResult",
    "TilefuseError",
    "UnsupportedFormatError",
    "ViewId",
    "WorkerLostError",
    "__version__",
    "fuse",
    "links_from_project",
    "make_groups",
    "open_project",
    "pairwise",
    "plan_fusion",
    "register",
    "solve",
    "squeeze_z",
    "write_fused",
    "write_project",
]
