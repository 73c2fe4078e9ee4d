"""Path elements of spimdata XML: ``<tag type="relative|absolute">path</tag>``.

One implementation for the project's ``<BasePath>`` and every image loader:
surrounding whitespace is trimmed (real files wrap paths in newlines),
``file:`` URIs become local paths, Windows separators are accepted, other
schemes (``s3://``, ``gs://``, ``https://``) are returned as remote URIs, and a
relative path under a remote base (a project XML read from ``s3://``) is a
remote URI too.  What a URL is, and how it is joined, is decided in one place:
:mod:`tilefuse._storage`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath
from urllib.parse import unquote, urlparse

from lxml import etree

from .. import _storage
from ..errors import ProjectFormatError, UnsupportedFormatError, where

__all__ = ["parse_location", "read_path_element", "path_element", "same_dir", "single_child"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def parse_location(text: str | None, kind: str | None,
                   base_dir: Path | str) -> tuple[Path | None, str | None]:
    """Resolve a path element's text to ``(local_path, remote_uri)``; one of them is None.

    Both are None for empty text.  Relative paths resolve against ``base_dir``
    (a local folder or a URL: then the result is a URL).
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
    if _storage.is_url(base_dir) and kind != "absolute" and not is_windows and not text.startswith("/"):
        return None, _resolve_url(str(base_dir), text)
    path = Path(PureWindowsPath(text).as_posix()) if is_windows else Path(text)
    if kind != "absolute" and not path.is_absolute():
        path = Path(base_dir) / path
    return Path(os.path.normpath(path)), None


def _resolve_url(base: str, relative: str) -> str:
    """``relative`` (``/``-separated, may hold ``.`` and ``..``) under the URL ``base``, kept inside its bucket."""
    scheme, _, rest = base.partition("://")
    bucket, _, prefix = rest.partition("/")
    parts = [p for p in prefix.split("/") if p]
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ProjectFormatError(f"{relative!r} relative to {base!r} leaves the bucket {bucket!r}")
            parts.pop()
        else:
            parts.append(part)
    return f"{scheme}://{bucket}" + "".join("/" + p for p in parts)


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


def path_element(tag: str, path: Path | str, base_dir: Path | str | None):
    """A ``<tag type=...>`` element: relative when ``path`` lies under ``base_dir``, else absolute.

    A URL is written as it is (absolute), or relative when under a URL ``base_dir``.
    """
    el = etree.Element(tag)
    if _storage.is_url(path) or _storage.is_url(base_dir):
        url, base = str(path).rstrip("/"), str(base_dir or "").rstrip("/")
        if _storage.is_url(path) and _storage.is_url(base_dir) and (url == base or url.startswith(base + "/")):
            el.set("type", "relative")
            el.text = url[len(base) + 1:] or "."
            return el
        if not _storage.is_url(path):
            raise ProjectFormatError(f"{path}: a local path cannot be written into a project stored at {base_dir}; "
                                     "copy the data to the object store too, or save the XML locally")
        el.set("type", "absolute")
        el.text = url
        return el
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


def same_dir(a: Path | str | None, b: Path | str | None) -> bool:
    """True if both are given and name the same folder (or URL)."""
    if a is None or b is None:
        return False
    if _storage.is_url(a) or _storage.is_url(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return os.path.normpath(Path(a).absolute()) == os.path.normpath(Path(b).absolute())
