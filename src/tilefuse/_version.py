"""The package version, in one place (core: imported by the stages and the package)."""

__version__ = "0.1.0"
