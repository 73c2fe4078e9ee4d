"""Write outputs so that nothing is lost: temporary names, all-or-nothing renames, clear errors.

A reader never sees a half-written output under its final name: writers fill
``<name>.partial`` beside the target and :func:`atomic_output` renames it when
the ``with`` block finishes without error.  An output made of several paths
(a BigStitcher project: the pixel container and its XML) goes through
:func:`atomic_outputs`, which renames all of them at the very end, or none.
An existing output is replaced only then, so a run killed part-way leaves the
old output as it was.  On error the partial output is left where it is, so a
resumable writer (OME-Zarr) can continue from it on the next run; a
non-resumable one (TIFF) simply starts over.

Before any work :func:`check_outputs` refuses an output that is, contains or
lies inside one of the run's inputs, and checks that each output folder can
be written.  A full disk, a read-only folder or a missing permission while
writing becomes an :class:`~tilefuse.errors.OutputError` naming the output,
the cause and what was kept.

Works for single files and for directory outputs (zarr groups) alike.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError, TilefuseError

__all__ = [
    "OutputExistsError",
    "OutputIsInputError",
    "atomic_output",
    "atomic_outputs",
    "check_outputs",
    "fsync_path",
    "input_paths",
    "output_errors",
    "partial_path",
    "raise_if_write_error",
    "remove_path",
    "rename_all",
]


class OutputExistsError(TilefuseError, FileExistsError):
    """The output (or a foreign partial output) already exists and may not be replaced."""


class OutputIsInputError(TilefuseError, ValueError):
    """An output path is, contains or lies inside one of the run's inputs."""


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


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove_all(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            remove_path(path)
        except OSError:  # best effort: the error being reported matters more
            pass


def _check_target(path: Path, overwrite: bool) -> None:
    if _exists(path) and not overwrite:
        raise OutputExistsError(
            f"{path}: output already exists; pass overwrite=True (--overwrite) to replace it"
        )


# -- write errors -----------------------------------------------------------------
#: Errors that can only come from writing: full disk, quota, file size limit, read-only mount.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS} | (
    {errno.EDQUOT} if hasattr(errno, "EDQUOT") else set()
)
#: Errors that are about writing only when the failing file is one of the outputs
#: (an unreadable *input* gives the same errno and must not be blamed on the output).
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM}
# h5py reports HDF5's failed writes as RuntimeError/OSError whose text carries the errno.
_HDF5_ERRNO = re.compile(r"errno = (\d+)")
_HDF5_NAME = re.compile(r"name = '([^']*)'")
# numpy's tofile (used by tifffile) reports a short write without an errno.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
_SHORT_WRITE_REASON = "the disk took only part of the data (full disk, quota or file size limit)"


def _write_failure(exc: BaseException) -> tuple[int | None, str | None, str | None]:
    """``(errno, reason, file name)`` behind ``exc`` or the exceptions that caused it.

    ``reason`` is None when nothing in the chain says why an I/O call failed.
    """
    code = reason = filename = None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, OSError) and filename is None and exc.filename:
            filename = os.fsdecode(exc.filename)
        if code is None and reason is None:
            if isinstance(exc, OSError) and exc.errno:
                code = exc.errno
            elif isinstance(exc, (OSError, RuntimeError)) and _HDF5_ERRNO.search(text):
                code = int(_HDF5_ERRNO.search(text).group(1))
                name = _HDF5_NAME.search(text)
                filename = filename or (name.group(1) if name else None)
            elif isinstance(exc, OSError) and _SHORT_WRITE.search(text):
                reason = _SHORT_WRITE_REASON
        exc = exc.__cause__ or exc.__context__
    if code is not None:
        reason = _reason(code)
    return code, reason, filename


def _reason(code: int) -> str:
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def _inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    path, root = _real(path), _real(root)
    return path == root or path.is_relative_to(root)


def raise_if_write_error(exc: BaseException, output: str | os.PathLike, kept: str,
                         watch: Iterable[str | os.PathLike] = ()) -> None:
    """Raise :class:`OutputError` from ``exc`` if it is a failure to write ``output``.

    Parameters
    ----------
    exc : BaseException
        The error caught while writing.
    output : path-like
        The output being written, named in the message.
    kept : str
        What was kept (or removed) and what a rerun does, appended to the message.
    watch : iterable of path-like
        The paths actually written (temporary names); a permission error on a
        file inside them is the output's fault, on any other file it is not.

    Returns
    -------
    None
        When ``exc`` is not a write failure (the caller re-raises it).
    """
    if isinstance(exc, TilefuseError) and not isinstance(exc, OutputError):
        return
    code, reason, filename = _write_failure(exc)
    if reason is None:
        return
    if code in _ACCESS_ERRNOS:
        if filename is None or not any(_inside(filename, p) for p in [output, *watch]):
            return  # e.g. an unreadable input: not the output's problem
    elif code is not None and code not in _WRITE_ERRNOS:
        return
    detail = f" ({filename})" if filename and _real(filename) != _real(output) else ""
    err = OutputError(f"{output}: cannot write: {reason}{detail}; {kept}")
    err.errno = code
    raise err from exc


@contextmanager
def output_errors(output: str | os.PathLike, kept: str,
                  watch: Iterable[str | os.PathLike] = ()) -> Iterator[None]:
    """Context manager turning a failure to write ``output`` into :class:`OutputError`.

    See :func:`raise_if_write_error`; other errors pass through unchanged.
    """
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise_if_write_error(exc, output, kept, watch)
        raise


# -- before any work ----------------------------------------------------------------
def _real(path: str | os.PathLike) -> Path:
    """Absolute path with symlinks of its existing part resolved (``..`` folded)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def input_paths(project, *, xml: bool = True) -> list[Path]:
    """The files a project reads: its XML (unless ``xml=False``) and every file or
    container of its image loader (``project.loader.files()``)."""
    paths = [Path(project.path)] if xml and project.path is not None else []
    try:
        paths += [Path(p) for p in project.loader.files()]
    except TilefuseError:  # no usable loader: only the XML is read
        pass
    return paths


def _check_writable(output: Path) -> None:
    """Create and remove a probe file in the output's folder (or its nearest existing parent)."""
    folder = _real(output).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(
            f"{output}: cannot create the output folder: {folder} is a file, not a folder; "
            "stopped before any work"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".tilefuse-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        code = exc.errno or errno.EACCES
        err = OutputError(
            f"{output}: the output folder {folder} is not writable: {_reason(code)}; "
            "stopped before any work"
        )
        err.errno = code
        raise err from exc


def check_outputs(outputs: Iterable[str | os.PathLike | None],
                  inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Check, before any work, that the outputs can be written without harming an input.

    Parameters
    ----------
    outputs : iterable of path-like or None
        Every file or folder the run will write (``None`` entries are skipped).
    inputs : iterable of path-like or None
        Every file or container the run reads (see :func:`input_paths`).

    Raises
    ------
    OutputIsInputError
        An output is an input, contains one (replacing it would delete the
        input) or lies inside an input container.
    OutputError
        An output folder cannot be created or written (read-only, no
        permission, a file in the way).
    """
    ins = [(Path(i), _real(i)) for i in inputs if i is not None]
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        real = _real(out)
        for given, inp in ins:
            if real == inp:
                why = "is an input of this run"
            elif inp.is_relative_to(real):
                why = "contains an input of this run, which replacing it would delete"
            elif real.is_relative_to(inp):
                why = "lies inside an input container of this run"
            else:
                continue
            raise OutputIsInputError(
                f"{out}: the output {why} ({given}); write the output somewhere else"
            )
        _check_writable(out)


# -- renames ----------------------------------------------------------------------------
def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to the disk.

    Folders cannot be opened on some platforms (Windows); there the rename
    itself is as durable as the platform makes it.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # e.g. a folder on some filesystems
            raise
    finally:
        os.close(fd)


def rename_all(moves: Sequence[tuple[Path, Path]]) -> None:
    """Rename each ``(src, dst)`` in order; if one fails, undo those done and re-raise.

    Every ``dst`` must be free when its turn comes, so undoing restores every
    name exactly: all renames happen or none does.
    """
    done: list[tuple[Path, Path]] = []
    try:
        for src, dst in moves:
            os.replace(src, dst)
            done.append((src, dst))
    except BaseException as exc:
        for src, dst in reversed(done):
            try:
                os.replace(dst, src)
            except OSError as undo:  # pragma: no cover - the disk went away mid-rename
                exc.add_note(f"could not move {dst} back to {src}: {undo}")
        raise


def _swap(paths: list[Path], tmps: list[Path]) -> None:
    """Move the new outputs into place, all or none.

    The old outputs move aside first (the last path, a project's XML, first),
    then the new ones come in (the XML last): a crash in between leaves no XML
    under the final name rather than an XML paired with the other run's pixels,
    and the old files under ``<name>.replaced``.
    """
    olds = {}
    for path in paths:
        old = path.with_name(path.name + ".replaced")
        if _exists(path):
            remove_path(old)  # left by an earlier crash, and the target is there
            olds[path] = old
    moves = [(p, olds[p]) for p in reversed(paths) if p in olds] + list(zip(tmps, paths))
    rename_all(moves)
    for folder in {p.parent for p in paths}:
        fsync_path(folder)
    for old in olds.values():
        remove_path(old)


@contextmanager
def atomic_outputs(
    paths: Sequence[str | os.PathLike], *, resume: bool = False, overwrite: bool = False
) -> Iterator[list[Path]]:
    """Context manager yielding the temporary paths to write several outputs through.

    Like :func:`atomic_output`, for an output made of several paths that must
    change together (a project's pixel container, then its XML): every
    ``<name>.partial`` is renamed into place only when the block finishes
    without error, existing targets are replaced only then, and if a rename
    fails the ones done are undone.

    Parameters
    ----------
    paths : sequence of path-like
        The final outputs, in the order they are moved into place (the one
        readers open first, e.g. the XML, last).
    resume, overwrite : bool
        See :func:`atomic_output`.

    Yields
    ------
    list of Path
        ``<name>.partial`` of each path.  The writer creates them.
    """
    paths = [Path(p) for p in paths]
    tmps = [partial_path(p) for p in paths]
    for path in reversed(paths):  # name the one users see (a project's XML) first
        _check_target(path, overwrite)
    with output_errors(paths[-1], "nothing was written", watch=tmps):
        for tmp in tmps:
            if not resume and _exists(tmp):
                remove_path(tmp)
            tmp.parent.mkdir(parents=True, exist_ok=True)

    old = "; any existing output is untouched"
    try:
        yield tmps
    except (OSError, RuntimeError) as exc:
        present = [t for t in tmps if _exists(t)]
        if resume:
            kept = (f"kept the incomplete {', '.join(map(str, present))}: the same command resumes from it "
                    "once the problem is fixed" if present else "nothing was written")
            raise_if_write_error(exc, paths[-1], kept + old, watch=tmps)
            raise
        # A failed write makes the partial output useless, and it holds the space a rerun needs.
        try:
            raise_if_write_error(exc, paths[-1], "removed the incomplete output" + old, watch=tmps)
        except OutputError:
            _remove_all(present)
            raise
        raise

    for tmp in tmps:
        if not _exists(tmp):
            raise TilefuseError(f"{tmp}: the writer finished without creating its output")
    for path in paths:
        _check_target(path, overwrite)
    with output_errors(paths[-1], f"the new output stays under {', '.join(map(str, tmps))}" + old,
                       watch=paths + tmps):
        _swap(paths, tmps)


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
        writer can continue it (and keep it when writing fails).  When False a
        stale partial output is deleted before the block runs.
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
    OutputError
        Writing failed for lack of space or permission; the message says what
        was kept.

    Notes
    -----
    On success the partial output is renamed to ``path``; an existing target
    is first moved aside to ``<name>.replaced`` and deleted only after the
    rename, so a crash in between never loses both.  On error the partial
    output is kept and the exception propagates, except after a write
    failure of a non-resumable output, whose partial output is removed to
    give the space back.
    """
    with atomic_outputs([path], resume=resume, overwrite=overwrite) as (tmp,):
        yield tmp
