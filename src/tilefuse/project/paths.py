"""Path elements of spimdata XML: ``<tag type="relative|absolute">path</tag>``.

One implementation for the project's ``<BasePath>`` and every image loader:
surrounding whitespace is trimmed (real files wrap paths in newlines),
``file:`` URIs become local paths, Windows separators are accepted, other
schemes (``s3://``, ``gs://``, ``https://``) are returned as remote URIs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath
from urllib.parse import unquote, urlparse

from lxml import etree

from ..errors import ProjectFormatError, UnsupportedFormatError, where

__all__ = ["parse_location", "read_path_element", "path_element", "same_dir", "single_child"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def parse_location(text: str | None, kind: str | None, base_dir: Path) -> tuple[Path | None, str | None]:
    """Resolve a path element's text to ``(local_path, remote_uri)``; one of them is None.

    Both are None for empty text.  Relative paths resolve against ``base_dir``.
    """
    text = (text or "").strip()
    if not text:
        return None, None
    is_windows = re.match(r"^[A-Za-z]:[\\/]", text) is not None or "\\" in text
    if not is_windows and _SCHEME.match(text):
        parsed = urlparse(text)
        if parsed.scheme.lower() == "file":
            return Path(unquote(parsed.path)), None
        return None, text
    path = Path(PureWindowsPath(text).as_posix()) if is_windows else Path(text)
    if kind != "absolute" and not path.is_absolute():
        path = Path(base_dir) / path
    return Path(os.path.normpath(path)), None


def single_child(parent, tag: str, xml_path: Path | None, context: str):
    """The one ``<tag>`` child of ``parent``, or None; refuses two (a reader taking the first would guess)."""
    found = parent.findall(tag)
    if len(found) > 1:
        raise ProjectFormatError(
            f"{where(xml_path, context)}: <{tag}> appears {len(found)} times (lines "
            f"{', '.join(str(c.sourceline) for c in found)}); tilefuse refuses an ambiguous project"
        )
    return found[0] if found else None


def read_path_element(parent, tag: str, base_dir: Path, xml_path: Path | None, context: str | None = None) -> Path:
    """The local path of a ``<tag>`` child of ``parent``.

    Raises
    ------
    ProjectFormatError
        The child is missing, empty or given twice.
    UnsupportedFormatError
        It names a remote URI.
    """
    if context is None:
        context = f'<ImageLoader format="{parent.get("format", "")}">'
    child = single_child(parent, tag, xml_path, context)
    path, uri = parse_location(None if child is None else child.text, None if child is None else child.get("type"),
                               base_dir)
    if uri is not None:
        raise UnsupportedFormatError(
            f"{where(xml_path, context)}: <{tag}> {uri!r} is a remote URI; only local files are supported"
        )
    if path is None:
        raise ProjectFormatError(f"{where(xml_path, context)}: missing or empty <{tag}> path")
    return path


def path_element(tag: str, path: Path, base_dir: Path | None):
    """A ``<tag type=...>`` element: relative when ``path`` lies under ``base_dir``, else absolute."""
    el = etree.Element(tag)
    path = Path(os.path.normpath(Path(path).absolute()))
    if base_dir is not None:
        base = Path(os.path.normpath(Path(base_dir).absolute()))
        try:
            rel = path.relative_to(base)
        except ValueError:
            rel = None
        if rel is not None:
            el.set("type", "relative")
            el.text = rel.as_posix() if rel.parts else "."
            return el
    el.set("type", "absolute")
    el.text = path.as_posix()
    return el


def same_dir(a: Path | None, b: Path | None) -> bool:
    """True if both are given and name the same folder."""
    if a is None or b is None:
        return False
    return os.path.normpath(Path(a).absolute()) == os.path.normpath(Path(b).absolute())
