"""Where the image store's bytes live: the :class:`StoreBackend` protocol and the local disk.

A backend stores opaque bytes under keys (``<id[:2]>/<id>.json``, ``<id[:2]>/<id>.png``, see
:mod:`.records`) and knows nothing of images. It offers the three write modes of object stores
(obstore's ``PutMode``): ``"overwrite"``, ``"create"`` (fails with :class:`Conflict` when the key
exists) and an update conditional on the :class:`Version` read before (fails with :class:`Conflict`
when someone wrote the key since). The store updates records only with the last two, re-reading and
retrying on a conflict, so two processes adding themselves to a record's owners never lose either
change.

:class:`LocalDiskBackend` is the default: a directory. Every write goes to a temporary file, is
flushed (``fsync``, unless turned off), then renamed into place (``os.replace``; ``os.link`` for
"create", which fails if the name exists); a conditional update compares and renames while holding
an exclusive ``flock`` on the key's folder, so it is atomic across processes on the machine (the
version is the SHA-256 of the bytes: records are small).
:mod:`.object_store` is the other implementation (S3, GCS, Azure, in-memory, on obstore).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import ValidationError

from multimodal_mcp.imaging.compact import EXTENSIONS
from multimodal_mcp.imaging.records import ImageRecord, id_of_key
from multimodal_mcp.imaging.sharing import stale_stray, stale_temporary, temp_prefix

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


class Conflict(Exception):
    """A conditional write lost: the key exists ("create") or changed since it was read (update)."""


@dataclass(frozen=True)
class Version:
    """What a write is conditional on: the ETag and, where the store has one, the version id of the
    object as it was read (local disk: the SHA-256 of its bytes)."""

    e_tag: str | None
    version: str | None = None


PutMode = Literal["overwrite", "create"] | Version


@dataclass(frozen=True)
class Stored:
    """An object's bytes and the version they were read at."""

    data: bytes
    version: Version


@dataclass(frozen=True)
class ObjectInfo:
    """One key as a listing reports it."""

    key: str
    size: int
    """Bytes."""
    modified: float
    """Last written, in seconds since the epoch."""


@runtime_checkable
class StoreBackend(Protocol):
    """Bytes under keys, with conditional writes. Methods are blocking (call them from worker
    threads); keys are relative, ``/``-separated."""

    location: str
    """Where the bytes are, for logs (a directory or a URL without credentials)."""

    def get(self, key: str) -> Stored | None:
        """The bytes at ``key`` and their version; None when there is nothing there."""
        ...

    def read(self, key: str) -> bytes | None:
        """The bytes at ``key`` (no version: cheaper where the version costs a hash); None when there
        is nothing there."""
        ...

    def put(self, key: str, data: bytes, *, mode: PutMode = "overwrite") -> None:
        """Write ``data`` at ``key``. Its new version is not returned (on a local disk it costs a hash
        of the bytes, 2.3 ms for a 4 MB photo, which no write of the store needs): :meth:`get` it.

        Raises:
            Conflict: ``mode="create"`` and the key exists, or ``mode`` is a :class:`Version` and the
                key was written (or removed) since.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is not there."""
        ...

    def size(self, key: str) -> int | None:
        """Bytes at ``key``; None when there is nothing there."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every key that starts with ``prefix``, in no particular order."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The absolute path of ``key`` on this machine's disk; None for a remote store."""
        ...


class LocalDiskBackend:
    """A directory on this machine (see the module docstring).

    Args:
        root: the directory (created if missing).
        fsync: flush each file and its folder before a write returns (survives a power cut).
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.fsync = fsync
        self.location = str(root)
        self._fallback_lock = threading.Lock()  # where flock does not exist

    def _path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Stored | None:
        data = self.read(key)
        return None if data is None else Stored(data, _version(data))

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
            return None

    def put(self, key: str, data: bytes, *, mode: PutMode = "overwrite") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temporary(path, data)
        try:
            if mode == "overwrite":
                os.replace(tmp, path)
            elif mode == "create":
                try:
                    os.link(tmp, path)  # atomic: fails when the name exists
                except FileExistsError:
                    raise Conflict(key) from None
                tmp.unlink()
            else:
                with self._folder_lock(path.parent):
                    try:
                        current = _version(path.read_bytes())
                    except FileNotFoundError:
                        raise Conflict(key) from None
                    if current != mode:
                        raise Conflict(key)
                    os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(path.parent)

    def _write_temporary(self, path: Path, data: bytes) -> Path:
        # The rename that follows is atomic: a killed server never leaves a half-written file under
        # the real name. With fsync, the data is on disk before the name points at it, and the
        # folder entry is on disk before the write returns (surviving a power cut too).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if not path.parent.is_dir():
            return
        with self._folder_lock(path.parent):  # never between a conditional update's check and rename
            path.unlink(missing_ok=True)

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for folder in self._folders():
            for path in folder.iterdir():
                key = f"{folder.name}/{path.name}"
                if key.startswith(prefix) and not path.name.startswith("."):
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(key, stat.st_size, stat.st_mtime)

    def local_path(self, key: str) -> Path:
        return self._path(key).absolute()

    def _folders(self) -> Iterator[Path]:
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                yield folder

    @contextmanager
    def _folder_lock(self, folder: Path) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - Windows: one process at a time
            with self._fallback_lock:
                yield
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
            yield
        finally:
            os.close(fd)

    # --- what interrupted writes leave behind -------------------------------------------------

    def discard_leftovers(self, image_id: str, *, alone: bool) -> int:
        """Remove the temporary files of ``image_id`` a dead writer left (all of them when
        ``alone``); returns how many. Reads one folder, not the store."""
        folder = self.root / image_id[:2]
        removed = 0
        if folder.is_dir():
            for path in folder.glob(f".{image_id}.*.tmp"):
                if stale_temporary(path, alone=alone):
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def scan(self, removed: dict[str, int], *, alone: bool) -> Iterator[tuple[ImageRecord, int]]:
        """Every readable record with the bytes its image and record take, reading every file once;
        removes what interrupted writes left behind on the way, counting it in ``removed``
        (``temporary``, ``image_without_record``, ``record_without_image``).

        With other processes using the store (``alone`` False) only what is provably stale goes (see
        :mod:`.sharing`). A record that cannot be read is left alone with its image.
        """
        for folder in self._folders():
            yield from self._scan_folder(folder, removed, alone=alone)

    def _scan_folder(
        self, folder: Path, removed: dict[str, int], *, alone: bool
    ) -> Iterator[tuple[ImageRecord, int]]:
        files: dict[str, dict[str, Path]] = {}
        for path in folder.iterdir():
            name = path.name
            if name.startswith(".") and name.endswith(".tmp"):
                if stale_temporary(path, alone=alone):
                    path.unlink(missing_ok=True)
                    removed["temporary"] += 1
                continue
            found = id_of_key(name)
            if found is not None:
                files.setdefault(found[0], {})[found[1]] = path
        for image_id, by_ext in files.items():
            record_path = by_ext.pop("json", None)
            record = None
            if record_path is not None:
                try:
                    raw_record = record_path.read_bytes()
                    record = ImageRecord.model_validate_json(raw_record)
                except (ValidationError, OSError):
                    logger.warning("image store: the record of %s is unreadable; left as it is", image_id)
                    continue
            image_path = by_ext.pop(EXTENSIONS[record.format], None) if record is not None else None
            for stray in by_ext.values():
                if stale_stray(stray, alone=alone):
                    stray.unlink(missing_ok=True)
                    removed["image_without_record"] += 1
                    logger.warning("image store: removed %s (an image without its record)", stray)
            if record is None or record_path is None:
                continue
            if image_path is None:
                record_path.unlink(missing_ok=True)
                removed["record_without_image"] += 1
                logger.warning("image store: removed %s (a record whose image is missing)", record_path)
                continue
            yield record, image_path.stat().st_size + len(raw_record)


def _version(data: bytes) -> Version:
    # The content itself: a write based on bytes that are still there is based on the current state,
    # whatever happened in between (no ABA, unlike inode numbers and coarse modification times).
    return Version(hashlib.sha256(data).hexdigest())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
