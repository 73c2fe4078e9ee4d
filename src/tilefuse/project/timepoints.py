"""BigStitcher's three ways of listing timepoints: ``range``, ``list`` and ``pattern``."""

from __future__ import annotations

import re

__all__ = ["parse_integer_pattern", "format_integer_pattern", "MAX_TIMEPOINTS"]

#: The most timepoints a project may list.  A pattern such as ``0-1000000000``
#: would otherwise expand into gigabytes of ids (``info`` took 88 s and 3.4 GB
#: for ``0-10000000``); real time-lapse projects have at most a few thousand.
MAX_TIMEPOINTS = 100_000

# Numbers of at most 18 digits: ids are Java ints, and int() of thousands of digits is refused.
_TERM = re.compile(r"^\s*(-?\d{1,18})\s*(?:-\s*(-?\d{1,18})\s*(?::\s*(\d{1,18})\s*)?)?$")


def _terms(pattern: str) -> list[tuple[int, int, int]]:
    """The ``(first, last, step)`` of each term, checked but not expanded."""
    out = []
    for term in pattern.split(","):
        m = _TERM.match(term)
        if m is None:
            raise ValueError(f"bad term {_short(term)!r} in timepoint pattern {_short(pattern)!r}")
        a = int(m.group(1))
        if m.group(2) is None:
            out.append((a, a, 1))
            continue
        b = int(m.group(2))
        step = int(m.group(3)) if m.group(3) else 1
        if step <= 0:
            raise ValueError(f"step must be positive in {_short(term)!r} of pattern {_short(pattern)!r}")
        out.append((a, b, step))
    return out


def parse_integer_pattern(pattern: str, limit: int | None = None) -> list[int]:
    """Expand a spimdata integer pattern such as ``"0,1-3,40-50:10"``.

    Terms are ``a``, ``a-b`` (inclusive, descending allowed) and ``a-b:step``.
    An empty pattern means ``[0]``, as in spimdata.

    Parameters
    ----------
    pattern : str
        The pattern text.
    limit : int, optional
        Refuse patterns of more than ``limit`` ids; they are counted before
        anything is expanded, so ``"0-1000000000"`` fails at once.

    Raises
    ------
    ValueError
        If a term is not of one of these forms, a step is zero, or the
        pattern has more than ``limit`` ids.
    """
    text = pattern.strip()
    if not text:
        return [0]
    if limit is not None and text.count(",") >= limit:  # before parsing millions of terms
        raise ValueError(f"pattern {_short(pattern)!r} has {text.count(',') + 1:,} terms, more than the "
                         f"{limit:,} timepoints tilefuse accepts")
    terms = _terms(text)
    if limit is not None:
        count = sum(abs(b - a) // step + 1 for a, b, step in terms)
        if count > limit:
            raise ValueError(f"pattern {_short(pattern)!r} lists {count:,} timepoints, more than the "
                             f"{limit:,} tilefuse accepts")
    out: list[int] = []
    for a, b, step in terms:
        if b >= a:
            out.extend(range(a, b + 1, step))
        else:
            out.extend(range(a, b - 1, -step))
    return out


def _short(text: str, n: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 3] + "..."


def format_integer_pattern(ids: list[int]) -> str:
    """Write ids as a compact pattern (runs of step 1 become ``a-b``)."""
    if not ids:
        return ""
    terms = []
    start = prev = ids[0]
    for v in ids[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        terms.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(terms)
