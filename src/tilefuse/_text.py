"""Short lists in messages and summaries that say when they are cut."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["shortlist"]


def shortlist(items: Iterable[object], limit: int = 12, sep: str = ", ") -> str:
    """Join ``items``, keeping the first ``limit`` and saying how many were left out.

    >>> shortlist(range(20), limit=3)
    '0, 1, 2 … and 17 more'
    """
    items = [str(item) for item in items]
    shown = sep.join(items[:limit])
    # A list cut without a word reads as complete: always say what was left out.
    return shown if len(items) <= limit else f"{shown} … and {len(items) - limit} more"
