"""The image store on an object store (S3, GCS, Azure Blob, in memory) through obstore, so that
several servers on several machines share one store (``[server.store] url``; the ``s3`` extra).

Keys are the local layout's (``<id[:2]>/<id>.json`` and ``<id[:2]>/<id>.<ext>`` under the URL's
prefix). Every object is written whole in one request, so no temporary object is ever visible. A new
record is written with ``PutMode.Create`` (S3 ``If-None-Match: *``), an owner added to a record with
an update conditional on the ETag and version read (``If-Match``); a lost race raises
:class:`~.storage.Conflict` and the store re-reads and retries (:meth:`.store.ImageStore.commit`).

What is the truth, and what is only a cache (the design choice, measured against the local store):

- **The records in the bucket are the truth.** Lookups read the record object, as on disk; nothing a
  process keeps can make another process see a stale owner list.
- **The index is this process's cache in memory** (the same :class:`~.store_index.StoreIndex`):
  bytes sent by clients and already stored are found there (a miss only costs a decode and an
  encode; the content address gives the same id). No local SQLite file can be the truth for a store
  that servers on other machines write to, and rebuilding one by reading every record would make
  opening cost grow with the store, which is what the index exists to avoid.
- **Listing by prefix** answers what needs every image: :meth:`.store.ImageStore.recent` (the gallery)
  lists the records (one request per 1,000 objects) and reads the newest.
- **Retention belongs to the bucket**: ``max_bytes`` and ``max_age_days`` need a view of every image
  that no single server has; set a lifecycle rule (S3 and GCS lifecycle expiration, Azure lifecycle
  management) to expire objects after N days. An image whose record expired no longer exists; one
  whose parents expired keeps working (its parents' ids then answer "no image").
- An interrupted write can leave an image object without its record: invisible (an id exists only
  through its record) and expired by the lifecycle rule like the rest.

obstore's ``LocalStore`` (``file://``) does not implement conditional updates: a directory is served by
:class:`~.storage.LocalDiskBackend` (``server.store_dir``) instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from multimodal_mcp.errors import UnsupportedOperation
from multimodal_mcp.imaging.storage import Conflict, ObjectInfo, PutMode, Stored, Version

try:
    import obstore
    from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
    from obstore.store import from_url
except ImportError as exc:  # pragma: no cover - the s3 extra is not installed
    raise ImportError(
        "[server.store] url needs obstore: pip install 'multimodal-mcp[s3]' (or leave url out to keep "
        "images in server.store_dir)"
    ) from exc


class ObjectStoreBackend:
    """A :class:`~.storage.StoreBackend` over any obstore store (``S3Store``, ``GCSStore``,
    ``AzureStore``, ``MemoryStore``; ``LocalStore`` for everything but conditional updates).

    Args:
        store: the obstore store, its prefix already applied.
        location: where it is, for logs (never credentials).
    """

    def __init__(self, store: Any, *, location: str) -> None:
        self.store = store
        self.location = location

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, str] | None = None) -> ObjectStoreBackend:
        """The store at ``url`` (``s3://bucket/prefix``, ``gs://...``, ``az://...``, ``memory://``),
        ``options`` passed to obstore's ``from_url`` as the store's configuration.

        Raises:
            ValueError: obstore refused the URL or an option (the message names it).
        """
        try:
            store = from_url(url, config=dict(options)) if options else from_url(url)  # type: ignore[call-overload]
        except Exception as exc:  # obstore raises its own error classes per problem
            raise ValueError(f"[server.store] url {url.split('?')[0]!r}: {str(exc).splitlines()[0]}") from exc
        return cls(store, location=url.split("?")[0])

    def get(self, key: str) -> Stored | None:
        try:
            result = obstore.get(self.store, key)
        except (FileNotFoundError, NotFoundError):
            return None
        meta = result.meta
        return Stored(bytes(result.bytes()), Version(meta.get("e_tag"), meta.get("version")))

    def read(self, key: str) -> bytes | None:
        found = self.get(key)
        return None if found is None else found.data

    def put(self, key: str, data: bytes, *, mode: PutMode = "overwrite") -> None:
        put_mode: Any
        if isinstance(mode, Version):
            put_mode = {k: v for k, v in (("e_tag", mode.e_tag), ("version", mode.version)) if v is not None}
        else:
            put_mode = mode
        try:
            obstore.put(self.store, key, data, mode=put_mode)
        except (AlreadyExistsError, PreconditionError, FileNotFoundError, NotFoundError):
            raise Conflict(key) from None
        except NotImplementedError:
            raise UnsupportedOperation(
                f"the object store at {self.location} cannot update an object conditionally; use a "
                "store that can (S3, GCS, Azure) or server.store_dir for a directory"
            ) from None

    def delete(self, key: str) -> None:
        with suppress(FileNotFoundError, NotFoundError):
            obstore.delete(self.store, key)

    def size(self, key: str) -> int | None:
        try:
            return int(obstore.head(self.store, key)["size"])
        except (FileNotFoundError, NotFoundError):
            return None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for batch in obstore.list(self.store, prefix or None):
            for meta in batch:
                yield ObjectInfo(str(meta["path"]), int(meta["size"]), meta["last_modified"].timestamp())

    def local_path(self, key: str) -> Path | None:
        return None
