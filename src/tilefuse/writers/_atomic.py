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

Before any work :func:`~tilefuse._outputs.check_outputs` refuses an output that is, contains or
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

An object store (``s3://``...) has no rename, so an output there is written
under its final name and :func:`remote_output` defines the commit point
instead: the writer writes the data first and, last, the one object that makes
it an image (an OME-Zarr's root metadata with its ``multiscales``); until then
a manifest (``.tilefuse/manifest.json``) marks the prefix as tilefuse's partial
output, resumed only for the same work.  ``overwrite`` there means: the old
image's root metadata is deleted first (it is never read half old, half new),
then the rest of it, then the new one is written; there is no old copy to fall
back on while the new one is being written.  The
primitives these are built on (temporary names, checks, write errors,
renames) are core (:mod:`tilefuse._outputs`): the project's own ``save`` uses
them too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .. import _storage
from .._outputs import (
    check_outputs,
    check_partial,
    check_target,
    fsync_path,
    lexists,
    lock_path,
    marker_path,
    output_errors,
    partial_path,
    raise_if_write_error,
    real_path,
    remove_path,
    rename_all,
)
from ..errors import OutputBusyError, OutputError, OutputExistsError, TilefuseError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None

log = logging.getLogger(__name__)

__all__ = ["atomic_output", "atomic_outputs", "claim_outputs", "input_paths", "output_lock", "remote_output"]


def _remove_all(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            remove_path(path)
        except OSError:  # best effort: the error being reported matters more
            pass


def input_paths(project, *, xml: bool = True) -> list[Path]:
    """The files a project reads: its XML (unless ``xml=False``) and every file or
    container of its image loader (``project.loader.files()``)."""
    def location(p):
        return p if _storage.is_url(p) else Path(p)  # a URL stays a string (Path folds "s3://" into "s3:/")

    paths = [location(project.path)] if xml and project.path is not None else []
    try:
        paths += [location(p) for p in project.loader.files()]
    except TilefuseError:  # no usable loader: only the XML is read
        pass
    return paths


def _mark(partial: Path) -> None:
    """Write the marker of a partial output (before the output itself)."""
    from .._version import __version__

    marker = marker_path(partial)
    marker.write_text(json.dumps({"partial output of": partial.name.removesuffix(".partial"),
                                  "tilefuse": __version__, "pid": os.getpid()}) + "\n")


def _unmark(partials: Iterable[Path]) -> None:
    """Remove the markers of partial outputs that are gone (renamed into place or removed)."""
    for tmp in partials:
        if not lexists(tmp):
            try:
                marker_path(tmp).unlink(missing_ok=True)
            except OSError:  # best effort: a stale marker beside nothing is harmless
                pass


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
    lock = lock_path(real_path(path.parent) / path.name)  # one lock whatever symlinks name the folder
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
                if _storage.is_url(path):
                    continue  # an object store has no locks: see remote_output
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
        if lexists(path):
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
        check_target(path, overwrite)
        check_partial(path)
    with output_lock(paths):
        with output_errors(paths[-1], "nothing was written", watch=tmps):
            for tmp in tmps:
                if not resume and lexists(tmp):
                    remove_path(tmp)  # ours: check_partial refused any other
                tmp.parent.mkdir(parents=True, exist_ok=True)
                _mark(tmp)

        old = "; any existing output is untouched"
        try:
            yield tmps
        except (OSError, RuntimeError) as exc:
            present = [t for t in tmps if lexists(t)]
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
            if not lexists(tmp):
                _unmark(tmps)
                raise TilefuseError(f"{tmp}: the writer finished without creating its output")
        for path in paths:
            check_target(path, overwrite)
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


@contextmanager
def remote_output(url: str, *, resume: bool, overwrite: bool, is_complete, commit_keys: Sequence[str],
                  manifest: str) -> Iterator[str]:
    """Context manager for an output at a URL prefix of an object store, which has no rename.

    Parameters
    ----------
    url : str
        The output (a prefix: the writer writes the objects under it).
    resume : bool
        Keep tilefuse's partial output there (its ``manifest`` object exists) for the writer to continue;
        when False it is deleted first.
    overwrite : bool
        Delete a complete output there first (its commit object first, see the module notes).
    is_complete : callable
        ``is_complete(url)``: whether a complete output is there (the writer's commit object).
    commit_keys : sequence of str
        The objects, under ``url``, that make an output complete: deleted first when replacing it.
    manifest : str
        The key, under ``url``, of the object marking a partial output as tilefuse's.

    Yields
    ------
    str
        ``url``: the writer writes under its final name and commits by writing its root object last.

    Raises
    ------
    OutputExistsError
        A complete output is there and ``overwrite`` is False, or objects tilefuse did not write.
    """
    names = [name for name, _ in _storage.list_names(url)]
    if names:
        if is_complete(url):
            if not overwrite:
                raise OutputExistsError(f"{url}: exists; pass overwrite=True (--overwrite) to replace it")
            log.warning("%s: deleting the existing output to replace it (an object store has no rename: "
                        "the old image is gone before the new one is complete)", url)
            for key in commit_keys:  # first: from now on no reader takes what is left for an image
                _storage.remove(_storage.join(url, key))
            _storage.remove(url)
        elif _storage.exists(_storage.join(url, manifest)):
            if not resume:
                _storage.remove(url)
        else:
            shown = ", ".join(sorted(names)[:5])
            raise OutputExistsError(f"{url}: holds objects tilefuse did not write ({shown}); delete them or "
                                    "write somewhere else")
    yield url
