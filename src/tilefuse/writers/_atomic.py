"""Write outputs under a temporary name and rename them into place at the end.

A reader never sees a half-written output under its final name: writers fill
``<name>.partial`` beside the target and :func:`atomic_output` renames it when
the ``with`` block finishes without error.  On error the partial output is left
where it is, so a resumable writer (OME-Zarr) can continue from it on the next
run; a non-resumable one (TIFF) simply starts over.

Works for single files and for directory outputs (zarr groups) alike.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import TilefuseError

__all__ = ["OutputExistsError", "atomic_output", "partial_path", "remove_path"]


class OutputExistsError(TilefuseError, FileExistsError):
    """The output (or a foreign partial output) already exists and may not be replaced."""


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name used while ``path`` is being written: ``<name>.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file, symlink or directory tree; do nothing if it does not exist."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _check_target(path: Path, overwrite: bool) -> None:
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(
            f"{path}: output already exists; pass overwrite=True to replace it"
        )


@contextmanager
def atomic_output(
    path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False
) -> Iterator[Path]:
    """Context manager yielding the temporary path to write ``path`` through.

    Parameters
    ----------
    path : path-like
        The final output (file or directory).
    resume : bool
        Keep an existing ``<name>.partial`` left by an interrupted run so the
        writer can continue it.  When False a stale partial output is deleted
        before the block runs.
    overwrite : bool
        Replace an existing output at ``path``.  Checked before the block runs
        (so no work is wasted) and again before the rename.

    Yields
    ------
    Path
        ``<name>.partial``, beside ``path``.  The writer creates it.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.

    Notes
    -----
    On success the partial output is renamed to ``path``; an existing target
    is first moved aside to ``<name>.replaced`` and deleted only after the
    rename, so a crash in between never loses both.  On error the partial
    output is kept and the exception propagates.
    """
    path = Path(path)
    tmp = partial_path(path)
    _check_target(path, overwrite)
    if not resume and (tmp.exists() or tmp.is_symlink()):
        remove_path(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)

    yield tmp

    if not (tmp.exists() or tmp.is_symlink()):
        raise TilefuseError(f"{tmp}: the writer finished without creating its output")
    _check_target(path, overwrite)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(path.name + ".replaced")
        remove_path(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        remove_path(old)
