"""BigStitcher's three ways of listing timepoints: ``range``, ``list`` and ``pattern``."""

from __future__ import annotations

import re

__all__ = ["parse_integer_pattern", "format_integer_pattern"]

_TERM = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*(?::\s*(\d+)\s*)?)?$")


def parse_integer_pattern(pattern: str) -> list[int]:
    """Expand a spimdata integer pattern such as ``"0,1-3,40-50:10"``.

    Terms are ``a``, ``a-b`` (inclusive, descending allowed) and ``a-b:step``.
    An empty pattern means ``[0]``, as in spimdata.

    Raises
    ------
    ValueError
        If a term is not of one of these forms or a step is zero.
    """
    text = pattern.strip()
    if not text:
        return [0]
    out: list[int] = []
    for term in text.split(","):
        m = _TERM.match(term)
        if m is None:
            raise ValueError(f"bad term {term.strip()!r} in timepoint pattern {pattern!r}")
        a = int(m.group(1))
        if m.group(2) is None:
            out.append(a)
            continue
        b = int(m.group(2))
        step = int(m.group(3)) if m.group(3) else 1
        if step <= 0:
            raise ValueError(f"step must be positive in {term.strip()!r} of pattern {pattern!r}")
        if b >= a:
            out.extend(range(a, b + 1, step))
        else:
            out.extend(range(a, b - 1, -step))
    return out


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
