"""Output primitives that nothing may do without: temporary names, checks before work, write errors, renames.

The parts of writing safely that the whole package needs, the project's own
:meth:`~tilefuse.project.Project.save` included: the names an output goes
through (``<name>.partial``, tilefuse's marker ``<name>.partial.tilefuse``, the
lock ``<name>.lock``), :func:`check_outputs` before any work (no output that
is an input, clashes with another output, exists without ``overwrite``, or
lies in a folder that cannot be written), :func:`output_errors` turning a full
disk or a read-only folder into an :class:`~tilefuse.errors.OutputError` that
says what was kept, and :func:`fsync_path` / :func:`rename_all` for
all-or-nothing renames.  The writers' context managers built on them
(``atomic_output``, ``claim_outputs``, locks) live in :mod:`tilefuse.writers._atomic`.
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

from .errors import OutputClashError, OutputError, OutputExistsError, OutputIsInputError, TilefuseError

__all__ = [
    "check_outputs",
    "check_partial",
    "check_target",
    "fsync_path",
    "lexists",
    "lock_path",
    "marker_path",
    "output_errors",
    "partial_path",
    "raise_if_write_error",
    "real_path",
    "remove_path",
    "rename_all",
]


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name used while ``path`` is being written: ``<name>.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def marker_path(partial: str | os.PathLike) -> Path:
    """tilefuse's marker beside a partial output: ``<name>.partial.tilefuse``."""
    partial = Path(partial)
    return partial.with_name(partial.name + ".tilefuse")


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file held beside ``path`` while a run writes it: ``<name>.lock``."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file, symlink or directory tree; do nothing if it does not exist."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def lexists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def check_target(path: Path, overwrite: bool) -> None:
    if lexists(path) and not overwrite:
        raise OutputExistsError(
            f"{path}: output already exists; pass overwrite=True (--overwrite) to replace it"
        )


# -- partial outputs: tilefuse's marker ----------------------------------------------
def _is_ours(partial: Path) -> bool:
    """Whether tilefuse wrote ``partial``, so that it may delete or continue it."""
    if marker_path(partial).is_file():
        return True
    if partial.is_dir() and not partial.is_symlink():
        # Partial OME-Zarr outputs of earlier versions carry only write_ome_zarr's manifest;
        # an empty folder loses nothing when deleted (a run killed right after creating it).
        return (partial / ".tilefuse" / "manifest.json").is_file() or not any(partial.iterdir())
    return False


def check_partial(path: Path) -> None:
    """Refuse a ``<name>.partial`` beside ``path`` that tilefuse did not write."""
    tmp = partial_path(path)
    if lexists(tmp) and not _is_ours(tmp):
        raise OutputExistsError(
            f"{tmp}: exists but was not written by tilefuse (no {marker_path(tmp).name} beside it); "
            f"move or delete it to write {path.name}"
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
    path, root = real_path(path), real_path(root)
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
    detail = f" ({filename})" if filename and real_path(filename) != real_path(output) else ""
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
def real_path(path: str | os.PathLike) -> Path:
    """Absolute path with symlinks of its existing part resolved (``..`` folded)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _check_writable(output: Path) -> None:
    """Create and remove a probe file in the output's folder (or its nearest existing parent)."""
    folder = real_path(output).parent
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


def _clash(out: Path, real: Path, others: list[tuple[Path, Path]]) -> None:
    """Refuse an output that is another output of the run, lies inside one or is one's temporary name."""
    for other, oreal in others:
        if real == oreal:
            why = "is also another output of this run"
        elif real.is_relative_to(oreal):
            why = "lies inside another output of this run"
        elif oreal.is_relative_to(real):
            why = "contains another output of this run"
        elif real in (partial_path(oreal), marker_path(partial_path(oreal)), lock_path(oreal)):
            why = "is a temporary name of another output of this run"
        else:
            continue
        raise OutputClashError(f"{out}: the output {why} ({other}); give each output its own name")


def check_outputs(outputs: Iterable[str | os.PathLike | None],
                  inputs: Iterable[str | os.PathLike | None] = (), *,
                  overwrite: bool | None = None,
                  in_place: Iterable[str | os.PathLike | None] = ()) -> None:
    """Check, before any work, that the outputs can be written without harming an input.

    Parameters
    ----------
    outputs : iterable of path-like or None
        Every file or folder the run will write: main output, pixel
        container, saved XML, previews, plots (``None`` entries are skipped).
    inputs : iterable of path-like or None
        Every file or container the run reads (see :func:`input_paths`).
    overwrite : bool, optional
        When given, an existing output is refused unless ``overwrite`` is
        True.  None leaves that check to the writer (:func:`atomic_outputs`).
    in_place : iterable of path-like or None
        Outputs that are updated in place on purpose and may exist (the input
        XML that ``register`` saves with backups).

    Raises
    ------
    OutputIsInputError
        An output is an input, contains one (replacing it would delete the
        input) or lies inside an input container.
    OutputClashError
        Two outputs are the same path, one lies inside the other, or one is
        the other's temporary name.
    OutputExistsError
        An output exists and ``overwrite`` is False, or a ``<name>.partial``
        beside an output was not written by tilefuse.
    OutputError
        An output folder cannot be created or written (read-only, no
        permission, a file in the way).
    """
    from . import _storage

    inputs, outputs, in_place = list(inputs), list(outputs), list(in_place)
    remote_ins = [str(i).rstrip("/") for i in inputs if _storage.is_url(i)]
    remote_updated = {str(p).rstrip("/") for p in in_place if _storage.is_url(p)}
    for out in outputs:  # in an object store: inputs, and existing outputs (the writer checks partial ones)
        if _storage.is_url(out):
            url = str(out).rstrip("/")
            _storage.check_bucket(url)
            for inp in remote_ins:
                if url == inp or inp.startswith(url + "/") or url.startswith(inp + "/"):
                    raise OutputIsInputError(f"{out}: the output is, contains or lies inside an input of this "
                                             f"run ({inp}); write the output somewhere else")
            if (overwrite is False and url not in remote_updated and _storage.exists(url)
                    and not _storage.exists(_storage.join(url, ".tilefuse", "manifest.json"))):  # not a partial
                raise OutputExistsError(f"{out}: output already exists; pass overwrite=True (--overwrite) to "
                                        "replace it")
    outputs = [o for o in outputs if not _storage.is_url(o)]
    ins = [(Path(i), real_path(i)) for i in inputs if i is not None and not _storage.is_url(i)]
    updated = {real_path(p) for p in in_place if p is not None}
    seen: list[tuple[Path, Path]] = []
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        real = real_path(out)
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
        _clash(out, real, seen)
        seen.append((out, real))
        if overwrite is not None and real not in updated:
            check_target(out, overwrite)
        check_partial(out)
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
