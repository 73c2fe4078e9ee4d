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
lies inside one of the run's inputs or another output of the run, an output
that exists (unless it may be replaced), and a ``<name>.partial`` that
tilefuse did not write; it also checks that each output folder can be
written.  :func:`claim_outputs` adds an exclusive lock on every output for the
whole run (:func:`output_lock`), so two runs never write the same output.  A
full disk, a read-only folder or a missing permission while writing becomes an
:class:`~tilefuse.errors.OutputError` naming the output, the cause and what
was kept.

Every partial output carries tilefuse's marker, ``<name>.partial.tilefuse``,
written before the partial output itself: tilefuse deletes or continues only
partial outputs carrying it (or an OME-Zarr manifest, ``.tilefuse/``), never
a file or folder someone else named ``<name>.partial``.

Works for single files and for directory outputs (zarr groups) alike.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import OutputError, TilefuseError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None

log = logging.getLogger(__name__)

__all__ = [
    "OutputBusyError",
    "OutputClashError",
    "OutputExistsError",
    "OutputIsInputError",
    "atomic_output",
    "atomic_outputs",
    "check_outputs",
    "claim_outputs",
    "fsync_path",
    "input_paths",
    "lock_path",
    "marker_path",
    "output_errors",
    "output_lock",
    "partial_path",
    "raise_if_write_error",
    "remove_path",
    "rename_all",
]


class OutputExistsError(TilefuseError, FileExistsError):
    """The output (or a foreign partial output) already exists and may not be replaced."""


class OutputIsInputError(TilefuseError, ValueError):
    """An output path is, contains or lies inside one of the run's inputs."""


class OutputClashError(TilefuseError, ValueError):
    """Two outputs of one run are the same path, or one lies inside the other."""


class OutputBusyError(TilefuseError, BlockingIOError):
    """Another run is writing the same output right now."""


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


def _check_partial(path: Path) -> None:
    """Refuse a ``<name>.partial`` beside ``path`` that tilefuse did not write."""
    tmp = partial_path(path)
    if _exists(tmp) and not _is_ours(tmp):
        raise OutputExistsError(
            f"{tmp}: exists but was not written by tilefuse (no {marker_path(tmp).name} beside it); "
            f"move or delete it to write {path.name}"
        )


def _mark(partial: Path) -> None:
    """Write the marker of a partial output (before the output itself)."""
    from .._version import __version__

    marker = marker_path(partial)
    marker.write_text(json.dumps({"partial output of": partial.name.removesuffix(".partial"),
                                  "tilefuse": __version__, "pid": os.getpid()}) + "\n")


def _unmark(partials: Iterable[Path]) -> None:
    """Remove the markers of partial outputs that are gone (renamed into place or removed)."""
    for tmp in partials:
        if not _exists(tmp):
            try:
                marker_path(tmp).unlink(missing_ok=True)
            except OSError:  # best effort: a stale marker beside nothing is harmless
                pass


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
    ins = [(Path(i), _real(i)) for i in inputs if i is not None]
    updated = {_real(p) for p in in_place if p is not None}
    seen: list[tuple[Path, Path]] = []
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
        _clash(out, real, seen)
        seen.append((out, real))
        if overwrite is not None and real not in updated:
            _check_target(out, overwrite)
        _check_partial(out)
        _check_writable(out)


# -- one run per output: locks ---------------------------------------------------------
_held: dict[Path, list] = {}  # lock file -> [fd, count, folders created]: this process's locks
_held_guard = threading.Lock()


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").split()
    except OSError:
        pid = []
    return f"another tilefuse run (pid {pid[0]})" if pid and pid[0].isdigit() else "another tilefuse run"


def _lock_one(path: Path) -> Path | None:
    """Take the lock of ``path``; returns its lock file, or None where locking is not possible."""
    lock = lock_path(_real(path.parent) / path.name)  # one lock whatever symlinks name the folder
    with _held_guard:
        if lock in _held:
            _held[lock][1] += 1
            return lock
        if fcntl is None:  # pragma: no cover - Windows
            return None
        with output_errors(path, "nothing was written", watch=[lock]):
            created = _missing_folders(lock.parent)  # removed again at the end if still empty
            lock.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(100):
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    who = _holder(fd)
                    os.close(fd)
                    raise OutputBusyError(
                        f"{path}: {who} is writing this output (lock {lock.name}); wait for it to finish "
                        "or write somewhere else"
                    ) from None
                except OSError as exc:  # e.g. ENOLCK: a network filesystem without locks
                    os.close(fd)
                    log.warning("%s: cannot lock (%s); runs writing it at the same time would not be "
                                "noticed", path, exc.strerror or exc)
                    return None
                # The run that held it may have removed the file meanwhile: then lock the new one.
                try:
                    if os.path.samestat(os.fstat(fd), os.stat(lock)):
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            else:  # pragma: no cover - 100 runs finishing in turn while this one waits
                raise OutputBusyError(f"{path}: other runs keep taking its lock {lock.name}; try again")
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # named by a run that finds it locked
        _held[lock] = [fd, 1, created]
        return lock


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _unlock_one(lock: Path | None) -> None:
    if lock is None:
        return
    with _held_guard:
        entry = _held[lock]
        entry[1] -= 1
        if entry[1]:
            return
        del _held[lock]
        try:
            lock.unlink()  # while still locked: a run waiting on this file then takes a fresh one
        except OSError:
            pass
        os.close(entry[0])  # releases the lock
        for folder in entry[2]:  # a run that stopped early leaves no empty output folder behind
            try:
                folder.rmdir()
            except OSError:  # not empty: it holds outputs
                break


@contextmanager
def output_lock(paths: Iterable[str | os.PathLike | None]) -> Iterator[None]:
    """Context manager holding an exclusive lock on each output for the whole block.

    The lock is ``flock`` on ``<name>.lock`` beside the output, which records
    the process id and is removed at the end.  It is taken without waiting:
    if another process holds it, :class:`OutputBusyError` names that process.
    A process that dies releases its locks, so a lock file left by a killed
    run blocks nothing.  Within one process the lock is re-entrant (a command
    holds it while the writer it calls takes it again).

    Raises
    ------
    OutputBusyError
        Another run is writing one of the outputs.
    """
    with ExitStack() as stack:
        for path in paths:
            if path is not None:
                stack.callback(_unlock_one, _lock_one(Path(path)))
        yield


@contextmanager
def claim_outputs(outputs: Sequence[str | os.PathLike | None],
                  inputs: Iterable[str | os.PathLike | None] = (), *,
                  overwrite: bool = False,
                  in_place: Iterable[str | os.PathLike | None] = ()) -> Iterator[None]:
    """Check every output of a run before any work, then hold its lock until the block ends.

    The one entry point for commands: :func:`check_outputs` (against the
    inputs, against each other, existing outputs only with ``overwrite``,
    writable folders), then :func:`output_lock`.  The writers called inside
    write through :func:`atomic_output` / :func:`atomic_outputs`.

    Parameters
    ----------
    outputs, inputs, overwrite, in_place
        See :func:`check_outputs`.

    Raises
    ------
    OutputIsInputError, OutputClashError, OutputExistsError, OutputError, OutputBusyError
        See :func:`check_outputs` and :func:`output_lock`.
    """
    outputs = [o for o in outputs if o is not None]
    in_place = [p for p in in_place if p is not None]
    check_outputs(outputs, inputs, overwrite=overwrite, in_place=in_place)
    with output_lock(outputs):
        yield


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
        ``<name>.partial`` of each path.  The writer creates them; their
        markers exist already and the paths are locked.
    """
    paths = [Path(p) for p in paths]
    tmps = [partial_path(p) for p in paths]
    for path in reversed(paths):  # name the one users see (a project's XML) first
        _check_target(path, overwrite)
        _check_partial(path)
    with output_lock(paths):
        with output_errors(paths[-1], "nothing was written", watch=tmps):
            for tmp in tmps:
                if not resume and _exists(tmp):
                    remove_path(tmp)  # ours: _check_partial refused any other
                tmp.parent.mkdir(parents=True, exist_ok=True)
                _mark(tmp)

        old = "; any existing output is untouched"
        try:
            yield tmps
        except (OSError, RuntimeError) as exc:
            present = [t for t in tmps if _exists(t)]
            if resume:
                kept = (f"kept the incomplete {', '.join(map(str, present))}: the same command resumes from it "
                        "once the problem is fixed" if present else "nothing was written")
                _unmark(tmps)
                raise_if_write_error(exc, paths[-1], kept + old, watch=tmps)
                raise
            # A failed write makes the partial output useless, and it holds the space a rerun needs.
            try:
                raise_if_write_error(exc, paths[-1], "removed the incomplete output" + old, watch=tmps)
            except OutputError:
                _remove_all(present)
                raise
            finally:
                _unmark(tmps)
            raise
        except BaseException:  # the writer's own error, or Ctrl-C: partial outputs stay, marked
            _unmark(tmps)
            raise

        for tmp in tmps:
            if not _exists(tmp):
                _unmark(tmps)
                raise TilefuseError(f"{tmp}: the writer finished without creating its output")
        for path in paths:
            _check_target(path, overwrite)
        with output_errors(paths[-1], f"the new output stays under {', '.join(map(str, tmps))}" + old,
                           watch=paths + tmps):
            _swap(paths, tmps)
        _unmark(tmps)


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
        stale partial output is deleted before the block runs.  Either way
        only a partial output carrying tilefuse's marker
        (``<name>.partial.tilefuse``, written before the block runs) is
        touched; any other is refused.
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
        ``path`` exists and ``overwrite`` is False, or ``<name>.partial``
        exists without tilefuse's marker.
    OutputBusyError
        Another process is writing ``path`` (:func:`output_lock`, held for
        the whole block).
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
