"""Where bytes live: a local path or any fsspec URL (``s3://``, ``gs://``, ``memory://``, ...).

The one place that tells a URL from a local path and talks to object storage.
Everything else asks it: the project paths (:mod:`tilefuse.project.paths`), the
XML reader and writer, the N5 and OME-Zarr loaders and the writers.  Local paths
never reach fsspec: :func:`read_file`, :func:`identity` and :func:`zarr_store`
hand them to the same direct-I/O code as before (``os.open`` / ``os.stat`` /
zarr's ``LocalStore``), so local reads keep their speed and their checks.

A URL is kept as a ``str`` (``pathlib.Path`` would fold ``s3://b`` into
``s3:/b``); :func:`join` appends to either kind.  Credentials and endpoints come
from where the storage's own library looks: for S3 (s3fs/botocore) the
``AWS_*`` variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``
...) and ``~/.aws/config``; any fsspec option from fsspec's configuration
(``FSSPEC_S3_ENDPOINT_URL=...`` style variables or ``~/.config/fsspec/*.json``),
see :func:`filesystem`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._inputs import file_identity, read_regular_file
from .errors import ImageDataError, MissingDataError, OutputError, TilefuseError

__all__ = ["is_url", "as_location", "join", "parent", "name", "filesystem", "read_file", "read_json", "read_tail",
           "write_file", "put_file", "exists", "list_names", "identity", "tree_identity", "zarr_store",
           "remove", "close_sessions", "check_bucket", "Location"]

log = logging.getLogger(__name__)

#: A local path or a URL string.
Location = Path | str

# "s3://...", "gs://...", "memory://..."; not "C:\..." (a Windows drive) and not "file://" (a local path).
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+)://")

#: Which extra installs the fsspec back end of a protocol (the error names it).
_EXTRAS = {"s3": "s3", "s3a": "s3"}

#: How long a remote object's identity (ETag, size) is trusted before asking the server again.  Locally a
#: ``stat`` costs microseconds and is done on every use; on object storage it is a round trip, done at most
#: this often per object, so that a cached handle is not re-validated by one HEAD request per block read.
REMOTE_IDENTITY_SECONDS = 2.0

_IDENTITY_CACHE: dict[str, tuple[float, Any]] = {}
_IDENTITY_LOCK = threading.Lock()


def is_url(location: Any) -> bool:
    """True for a ``scheme://...`` string other than ``file://`` (a ``Path`` is always local)."""
    if not isinstance(location, str):
        return False
    m = _URL.match(location)
    return m is not None and m.group("scheme").lower() != "file"


def as_location(location: str | os.PathLike) -> Location:
    """A URL string as it is (``file://`` URLs and plain strings become a ``Path``)."""
    if is_url(location):
        return location.rstrip("/") if location.count("/") > 3 else location
    text = os.fspath(location)
    if text.lower().startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(text).path))
    return Path(text)


def join(base: Location, *parts: str) -> Location:
    """``base / part / ...`` for a local path or a URL (``/``-separated, no ``..`` resolution)."""
    if not is_url(base):
        return Path(base).joinpath(*parts)
    out = str(base).rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def parent(location: Location) -> Location:
    """The folder holding ``location`` (a URL keeps its scheme and bucket)."""
    if not is_url(location):
        return Path(location).parent
    head, _, _ = str(location).rstrip("/").rpartition("/")
    return head if not head.endswith(":/") else str(location)


def name(location: Location) -> str:
    """The last part of a path or URL."""
    return Path(location).name if not is_url(location) else str(location).rstrip("/").rpartition("/")[2]


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a URL.

    Options come from fsspec's configuration (``fsspec.config.conf``: the
    ``FSSPEC_<PROTOCOL>_<OPTION>`` environment variables and
    ``~/.config/fsspec/*.json``) and, below them, from the back end's own
    (botocore: ``AWS_*`` variables, ``~/.aws/config``).  Instances are cached by
    fsspec per options, so every call after the first is cheap.

    Raises
    ------
    TilefuseError
        The protocol's fsspec back end is not installed (the message names the extra).
    """
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - dask brings fsspec
        raise TilefuseError(f"{url}: reading or writing URLs needs fsspec: pip install 'tilefuse[s3]'") from None
    protocol = _URL.match(url).group("scheme").lower()
    try:
        fs, path = url_to_fs(url, **_options(protocol))
    except ImportError as exc:
        extra = _EXTRAS.get(protocol)
        hint = f"pip install 'tilefuse[{extra}]'" if extra else f"install the fsspec back end for {protocol}://"
        raise TilefuseError(f"{url}: {protocol}:// needs a package that is not installed ({exc}); {hint}") from None
    except ValueError as exc:  # an unknown protocol
        known = ", ".join(sorted(p for p in fsspec.available_protocols() if len(p) > 1)[:12])
        raise TilefuseError(f"{url}: {exc} (fsspec knows {known}, ...)") from None
    _close_at_exit(fs)
    return fs, path


def _options(protocol: str) -> dict[str, Any]:
    """What tilefuse asks of every file system instance (its own and zarr's), beyond the user's configuration."""
    # No listings cache: zarr writes through its own (asynchronous) instance, and a listing cached here
    # would then describe objects as they were (a stale identity keeps a stale handle).
    options: dict[str, Any] = {"use_listings_cache": False}
    if protocol in ("s3", "s3a"):
        # s3fs asks for an object's size (a HEAD) before every whole-object read when it may split the read
        # into concurrent ranges: for chunks of a few MB that doubles the requests.  Uploads pass their own.
        options["max_concurrency"] = 1
    return options


#: Concurrent parts of a large upload (a shard of ~1 GiB).
UPLOAD_CONCURRENCY = 8


def _remote_error(url: str, what: str, exc: BaseException) -> TilefuseError:
    """A storage failure in the project's terms: the URL, what was being done, the server's words."""
    if isinstance(exc, FileNotFoundError):
        return MissingDataError(f"{url}: {what}: not found")
    if isinstance(exc, PermissionError):
        return TilefuseError(f"{url}: {what}: access denied ({exc}); check the credentials (AWS_* variables, "
                             "~/.aws/config) and the bucket's policy")
    return TilefuseError(f"{url}: {what}: {type(exc).__name__}: {exc}")


#: Protocols whose first path component is a bucket (container) that must exist before anything is written.
_BUCKETED = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def check_bucket(url: str) -> None:
    """Refuse an output URL whose bucket does not exist: found before any work, not at the first write.

    Raises
    ------
    OutputError
        The bucket does not exist, the credentials may not see it, or the store cannot be asked.
    """
    protocol = _URL.match(url).group("scheme").lower()
    if protocol not in _BUCKETED:
        return
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    # info, not exists: exists() answers False for a bucket these credentials may not see, so a wrong key
    # read as "no such bucket"; info() (a HEAD of the bucket) tells the two apart.
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise OutputError(f"{url}: the bucket '{bucket}' does not exist; create it first or write somewhere "
                          "else") from None
    except PermissionError as exc:
        raise OutputError(f"{url}: access to the bucket '{bucket}' denied ({exc}); check the credentials "
                          "(AWS_* variables, ~/.aws/config) and the bucket's policy") from None
    except Exception as exc:  # noqa: BLE001 - any back end's error, reported with the URL
        raise OutputError(f"{url}: cannot look up the bucket '{bucket}': {type(exc).__name__}: {exc}") from exc


def read_file(location: Location, max_bytes: int, what: str = "file") -> bytes | None:
    """The bytes of a file or object of at most ``max_bytes``; None if it does not exist.

    Local files go through :func:`tilefuse._inputs.read_regular_file` (no FIFO,
    device or folder).  An object larger than ``max_bytes`` is refused from its
    listed size, before its bytes are fetched.
    """
    if not is_url(location):
        return read_regular_file(location, max_bytes, what)
    fs, path = filesystem(location)
    try:
        # One ranged GET of at most max_bytes + 1 bytes: the object, or proof that it is too large.
        data = fs.cat_file(path, start=0, end=max_bytes + 1)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - e.g. no range on an empty object: ask for the size first
        data = None
    if data is not None:
        if len(data) > max_bytes:
            raise ImageDataError(f"{location}: {what} is larger than it can be ({max_bytes:,} bytes)")
        return bytes(data)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any back end's error, reported with the URL
        raise _remote_error(location, f"cannot read the {what}", exc) from exc
    if info.get("type") == "directory":
        raise ImageDataError(f"{location}: {what} is a folder (a prefix), not an object")
    size = info.get("size") or 0
    if size > max_bytes:
        raise ImageDataError(f"{location}: {what} of {size:,} bytes is larger than it can be ({max_bytes:,} bytes)")
    try:
        # A ranged GET of the listed size: one request (cat_file alone would ask for the size again).
        data = fs.cat_file(path, start=0, end=size) if size else b""
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(location, f"cannot read the {what}", exc) from exc
    return data


def write_file(location: Location, data: bytes, what: str = "file") -> None:
    """Write a whole file under its final name in one step.

    Locally: a temporary name in the same folder, ``fsync``, ``os.replace``.
    On object storage: one PUT, which the store makes visible whole or not at
    all (S3 and its kin have no partial objects), so no temporary name is needed.
    """
    if not is_url(location):
        path = Path(location)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None
        return
    fs, path = filesystem(location)
    try:
        fs.pipe_file(path, bytes(data))
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(location, f"cannot write the {what}", exc) from exc
    with _IDENTITY_LOCK:
        _IDENTITY_CACHE.pop(str(location), None)


def put_file(local: str | os.PathLike, url: str, what: str = "file") -> None:
    """Upload a local file to an object in one step (the back end uses a multipart upload for large files;
    the store shows the object only once it is complete)."""
    fs, path = filesystem(url)
    protocol = _URL.match(url).group("scheme").lower()
    try:
        fs.put_file(os.fspath(local), path,
                    **({"max_concurrency": UPLOAD_CONCURRENCY} if protocol in ("s3", "s3a") else {}))
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(url, f"cannot upload the {what}", exc) from exc
    with _IDENTITY_LOCK:
        _IDENTITY_CACHE.pop(str(url), None)


def read_tail(url: str, nbytes: int) -> tuple[int, bytes] | None:
    """``(object size, its last nbytes)`` (fewer if it is smaller), or None if the object does not exist."""
    fs, path = filesystem(url)
    try:
        size = int(fs.info(path).get("size") or 0)
        return size, (fs.cat_file(path, start=max(0, size - nbytes), end=size) if size else b"")
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(url, "cannot read it", exc) from exc


def exists(location: Location) -> bool:
    """Whether a file, folder, object or prefix exists there."""
    if not is_url(location):
        return os.path.exists(location)
    fs, path = filesystem(location)
    try:
        return bool(fs.exists(path))
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(location, "cannot look it up", exc) from exc


def list_names(location: Location) -> list[tuple[str, bool]]:
    """``(name, is_folder)`` of the entries directly inside a folder or prefix (``[]`` if there is none)."""
    if not is_url(location):
        try:
            return [(e.name, e.is_dir()) for e in os.scandir(location)]
        except OSError:
            return []
    fs, path = filesystem(location)
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(location, "cannot list it", exc) from exc
    return [(e["name"].rstrip("/").rpartition("/")[2], e.get("type") == "directory") for e in entries]


def _remote_identity(url: str) -> Any:
    now = time.monotonic()
    with _IDENTITY_LOCK:
        hit = _IDENTITY_CACHE.get(url)
    if hit is not None and now - hit[0] < REMOTE_IDENTITY_SECONDS:
        return hit[1]
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        value = None
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(url, "cannot look it up", exc) from exc
    else:
        value = (info.get("ETag") or info.get("etag") or info.get("md5Hash") or "", info.get("size"),
                 str(info.get("LastModified") or info.get("mtime") or info.get("updated") or ""))
    with _IDENTITY_LOCK:
        _IDENTITY_CACHE[url] = (now, value)
    return value


def identity(locations: Iterable[Location]) -> tuple:
    """What the per-process caches key on: :func:`tilefuse._inputs.file_identity` for local files; for an
    object its ETag, size and time (re-asked at most every :data:`REMOTE_IDENTITY_SECONDS`); None if missing."""
    locations = list(locations)
    if not any(is_url(p) for p in locations):
        return file_identity(locations)
    return tuple(_remote_identity(p) if is_url(p) else file_identity([p])[0] for p in locations)


def tree_identity(url: str) -> list[str]:
    """``relative name \\0 size \\0 ETag`` of every object under a URL (a prefix) or of the object itself.

    The remote counterpart of walking a folder for the resume fingerprint: one
    listing (paged by the server), no object read.
    """
    fs, path = filesystem(url)
    try:
        found = fs.find(path, detail=True, withdirs=False)
    except FileNotFoundError:
        return ["\0missing"]
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(url, "cannot list it", exc) from exc
    if not found:
        return ["\0missing"]
    root = path.rstrip("/")
    out = []
    for key, info in found.items():
        rel = key[len(root):].lstrip("/") if key.startswith(root) else key
        out.append(f"{rel}\0{info.get('size')}\0{info.get('ETag') or info.get('md5Hash') or ''}")
    return sorted(out)


def remove(location: Location) -> None:
    """Delete a file or object, or a folder or prefix with everything in it (nothing if absent)."""
    if not is_url(location):
        import shutil

        path = Path(location)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(location, "cannot delete it", exc) from exc
    fs.invalidate_cache(path)


def read_json(location: Location, max_bytes: int, what: str) -> dict | None:
    """A JSON object from a file or object (None if absent); damage is an :class:`ImageDataError` naming it."""
    raw = read_file(location, max_bytes, what)
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageDataError(f"corrupt JSON in {location} ({exc})") from None
    if not isinstance(value, dict):
        raise ImageDataError(f"{location}: expected a JSON object, got {type(value).__name__}")
    return value


def zarr_store(location: Location, *, read_only: bool) -> Any:
    """A zarr-python 3 store rooted at a folder or URL: ``LocalStore`` for local paths (direct file I/O),
    ``FsspecStore`` (its own asynchronous file system instance, as zarr requires) for URLs."""
    import zarr

    if not is_url(location):
        return zarr.storage.LocalStore(location, read_only=read_only)
    filesystem(location)  # a missing back end is reported with the extra to install
    from zarr.storage import FsspecStore

    protocol = _URL.match(str(location)).group("scheme").lower()
    try:
        store = FsspecStore.from_url(str(location), storage_options=_options(protocol), read_only=read_only)
    except Exception as exc:  # noqa: BLE001
        raise _remote_error(str(location), "cannot open it as a Zarr store", exc) from exc
    _close_at_exit(store.fs)
    return store


#: The file systems made here and for zarr (fsspec caches one instance per set of options and thread).
_FILESYSTEMS: dict[int, Any] = {}


def _close_at_exit(fs: Any) -> None:
    """Close ``fs``'s HTTP session when the process exits (or at :func:`close_sessions`).

    s3fs leaves closing an asynchronous instance (zarr's) to its owner, and closes a synchronous one
    from a finalizer that waits 0.1 s for fsspec's event loop (fsspec makes one instance per thread, so
    a cluster's worker threads leave several): dropped or finalized at exit, their aiohttp sessions
    printed "Unclosed client session".  The instances are kept here (fsspec keeps them too).
    """
    import atexit

    if getattr(fs, "_s3creator", "absent") == "absent" and not hasattr(fs, "set_session"):
        return  # not an s3fs-like file system with a session to close
    with _IDENTITY_LOCK:
        if not _FILESYSTEMS:
            # Registered after zarr's and fsspec's own exit handlers (both are imported by now), so it runs
            # first, while the event loops where the sessions live still run.
            atexit.register(close_sessions)
        _FILESYSTEMS.setdefault(id(fs), fs)  # held here, so the id stays unique


def close_sessions() -> None:
    """Close the HTTP sessions of the S3 file systems in use (they reopen when used again)."""
    with _IDENTITY_LOCK:
        filesystems = list(_FILESYSTEMS.values())  # kept: one used again is closed again at exit
    for fs in filesystems:
        creator = getattr(fs, "_s3creator", None)  # s3fs: the client context its session lives in
        if creator is None:
            continue
        try:
            if fs.asynchronous:  # zarr's: its session lives in zarr's event loop
                from zarr.core.sync import sync

                sync(creator.__aexit__(None, None, None), timeout=5)
            else:
                from fsspec.asyn import sync

                sync(fs.loop, creator.__aexit__, None, None, None, timeout=5)
        except Exception:  # noqa: BLE001 - a session that cannot close cleanly is no reason to fail an exit
            log.debug("closing the session of %r failed", fs, exc_info=True)
        fs._s3 = fs._s3creator = None  # s3fs makes a new client on its next use
