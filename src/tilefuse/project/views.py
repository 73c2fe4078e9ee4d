"""Identifiers shared by the project model and the image loaders."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ViewId"]


class ViewId(NamedTuple):
    """One view: the image of one ViewSetup at one timepoint."""

    timepoint: int
    setup: int

    def __str__(self) -> str:
        return f"view (timepoint {self.timepoint}, setup {self.setup})"
