"""tilefuse: read BigStitcher projects, refine tile registration, fuse tiles chunk by chunk."""

from .errors import TilefuseError

__version__ = "0.1.0"

__all__ = ["TilefuseError", "__version__"]
