"""The image store: every image the server reads or makes, by id, surviving restarts.

Layout (keys of a :class:`~.storage.StoreBackend`, a directory by default, an object store with
``[server.store] url``): ``<id[:2]>/<id>.<ext>`` (the image: ``.png``, ``.jpg`` or ``.webp``) and
``<id>.json`` (the metadata record, whose ``format`` names the image file). The image is written
first, then its record: an id exists exactly when its record exists, so a crash never leaves an id
that points at nothing. Before its first file a write marks its id *pending* in the index
(:mod:`.store_index`); opening a store settles the pending rows a killed server left (removing its
temporary files and an image whose record was never written, or indexing a write that finished),
reading nothing else. Stores written before other formats existed (``.png`` files, records without
``format``) are read as they are; a store without an index is scanned once to build it.

Ids are content addresses: the first 16 hex digits of the SHA-256 of the bytes first stored (for
an input converted in the background, its staged file: :mod:`.staging`; the record's ``sha256`` is
always that of the bytes stored now). Generated images are PNGs embedding their generation
parameters; inputs are stored compactly (see :mod:`.compact`): the client's own bytes with its
metadata stripped where they decode to exactly the pixels used, else a lossless encoding. Storing
the same bytes with the same metadata twice yields the same id and keeps the first record. Inputs
are *prepared* (encoded, hashed, given an id) without being written, and written by
:meth:`ImageStore.commit` once the call that received them goes ahead, so a refused call leaves
nothing behind.

Every image has owners: the principals (see :mod:`multimodal_mcp.principals`) that made or sent it.
The store acts for the current principal: an image it does not own does not exist for it (the same
``NotFound`` as an unknown id, so nothing reveals that someone else has it). When a second principal
stores the same bytes, it is added to the owners with a conditional write (re-read and retried when
another process changed the record meanwhile); the id stays the same.

Retention (``[server.store]``): the index keeps creation times, sizes, parents and a running total,
so enforcing ``max_bytes`` and ``max_age_days`` reads no file. It never removes an image that is held
(see :func:`holding`: the images a live or retained job touched) or that a kept image names among
its parents. On an object store the server enforces no retention (see :mod:`.object_store`).
Decoded images just written or read are cached, up to a byte budget.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError

from multimodal_mcp.config import StoreSettings
from multimodal_mcp.errors import Busy, NotFound, UnsupportedOperation
from multimodal_mcp.imaging.codec import DecodedImage, encode_png, generation_text_chunks
from multimodal_mcp.imaging.compact import EXTENSIONS, Encoded, compact_input, encode_lossless
from multimodal_mcp.imaging.decoded_cache import DecodedCache
from multimodal_mcp.imaging.records import (  # noqa: F401 (re-exported: importers keep using store)
    ID_PATTERN,
    URI_SCHEME,
    WRITE_ATTEMPTS,
    ImageKind,
    ImageRecord,
    PendingImage,
    holding,
    image_key,
    parse_record,
    record_key,
    touch,
    validate_id,
)
from multimodal_mcp.imaging.retention import plan_oldest_first
from multimodal_mcp.imaging.sharing import STALE_SECONDS, StoreLock, writer_gone
from multimodal_mcp.imaging.staging import Staging, decode_stored
from multimodal_mcp.imaging.storage import Conflict, LocalDiskBackend, StoreBackend, Version
from multimodal_mcp.imaging.store_index import INDEX_NAME, StoreIndex
from multimodal_mcp.principals import SINGLE_USER, current_principal

logger = logging.getLogger(__name__)

CACHE_BYTES = 256 * 1024 * 1024
"""Decoded images kept in memory at most (an image over a quarter of it is not cached)."""


class ImageStore:
    """Images and their JSON records, indexed. Methods are blocking; call them from worker threads.

    Args:
        root: the directory (created if missing), for a store on this machine's disk; its index is
            ``<root>/index.sqlite3``.
        fsync: flush each file and its directory (and the index) before reporting an image stored.
        retention: ``[server.store]`` limits, enforced when opening and after writes; None keeps
            everything.
        cache_bytes: decoded images kept in memory, in bytes; an image over a quarter of it is not
            cached.
        backend: where the bytes are instead of ``root`` (an object store: :mod:`.object_store`); its
            index is then this process's cache in memory, and no retention is enforced.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        fsync: bool = True,
        retention: StoreSettings | None = None,
        cache_bytes: int = CACHE_BYTES,
        backend: StoreBackend | None = None,
    ) -> None:
        if (root is None) == (backend is None):
            raise ValueError("give the store a root directory or a backend, not both")
        self.retention = retention
        self._cache = DecodedCache(cache_bytes)
        # Writes of one id (a new image, an owner added to it, its removal) by this process do not
        # interleave; other processes are kept apart by the backend's conditional writes.
        self.write_lock = threading.RLock()
        self.staging = Staging(self)
        self._guards: list[Callable[[], Iterable[str]]] = []
        self._last_sweep = time.monotonic()
        self.root = root
        self._local: LocalDiskBackend | None = None
        if root is not None:
            self._local = LocalDiskBackend(root, fsync=fsync)
            self.backend: StoreBackend = self._local
            self._shared: StoreLock | None = StoreLock(root)  # other processes may share it (sharing.py)
            self.index = StoreIndex(root / INDEX_NAME, durable=fsync)
            self._open_local()
        else:
            assert backend is not None
            self.backend, self._shared = backend, None
            self.index = StoreIndex(None)
            if retention is not None and (retention.byte_limit or retention.max_age_seconds):
                logger.warning(
                    "image store %s: [server.store] max_bytes and max_age_days are not enforced on an "
                    "object store; set a lifecycle rule on the bucket (see the README's store section)",
                    self.backend.location,
                )
        if retention is not None and self._local is not None:
            self.enforce()

    # --- opening and recovery ------------------------------------------------------------------

    def _open_local(self) -> None:
        if self.index.complete:
            self.settle_pending()
            return
        with self.index.transaction():  # one process migrates; the others wait, then find it done
            if self.index.complete:
                return
            removed = self._rebuild()
        logger.info("image store %s: indexed %d image(s) (%s)", self.root, self.index.count(), removed)

    def recover(self) -> dict[str, int]:
        """Read every file of the store, remove what interrupted writes left behind and rebuild the
        index; returns how many of each were removed. Done once by opening a store without an index;
        call it after editing or deleting files by hand.

        Temporary files, images without a record (killed between the two renames) and records whose
        image is missing (deleted by hand, or a disk that lost the unsynced file) are removed; while
        another process has the store open, only those provably stale (:mod:`.sharing`). A record
        that cannot be read is left alone with its image (reading it is an error; it is never
        removed by retention).

        Raises:
            UnsupportedOperation: the store is an object store (its records are the truth; there is
                nothing to rebuild).
        """
        if self._local is None:
            raise UnsupportedOperation("an object store has no local index to rebuild")
        with self.write_lock:
            removed = self._rebuild()
        self._cache = DecodedCache(self._cache.budget)
        return removed

    def _rebuild(self) -> dict[str, int]:
        assert self._local is not None and self._shared is not None
        removed = {"temporary": 0, "image_without_record": 0, "record_without_image": 0}
        self.index.rebuild(self.staging.resuming(self._local.scan(removed, alone=self._shared.alone())))
        if any(removed.values()):
            logger.warning("image store %s: removed leftovers of interrupted writes: %s", self.root, removed)
        return removed

    def settle_pending(self) -> int:
        """Finish or undo the writes a killed process left pending (this process's too, when
        alone); returns how many were settled. Reads the pending ids' files only."""
        assert self._local is not None and self._shared is not None
        alone = self._shared.alone()
        settled = 0
        for image_id, fmt, pid, started in self.index.pending():
            if not (alone or writer_gone(pid) or time.time() - started > STALE_SECONDS):
                continue  # another live process is writing it now
            record = self._read_record_or_none(image_id)
            size = self.backend.size(image_key(image_id, record.format)) if record is not None else None
            if record is not None and size is not None:
                self.index.add(record, size + len(record.dump()))  # the write finished; index it
                self.staging.resume(record)  # a staged input's conversion was cut short
            else:
                self.backend.delete(record_key(image_id))
                self.backend.delete(image_key(image_id, fmt))  # type: ignore[arg-type]
            self._local.discard_leftovers(image_id, alone=alone)
            self.index.clear_pending(image_id, pid)
            settled += 1
        if settled:
            logger.warning("image store %s: settled %d interrupted write(s)", self.root, settled)
        return settled

    def _read_record_or_none(self, image_id: str) -> ImageRecord | None:
        try:
            return self._read_record(image_id)
        except NotFound:
            return None

    def exists(self, image_id: str) -> bool:
        """Whether the current principal can see ``image_id``."""
        if ID_PATTERN.match(image_id) is None:
            return False
        try:
            self.record(image_id)
        except NotFound:
            return False
        return True

    @property
    def total_bytes(self) -> int:
        """Bytes the stored images and their records take (the running total retention enforces)."""
        return self.index.total()

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded images held in memory now."""
        return self._cache.bytes

    # --- writing -------------------------------------------------------------------------------

    def prepare(
        self,
        image: Image.Image,
        *,
        kind: ImageKind,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        model: str | None = None,
        parameters: dict[str, Any] | None = None,
        parents: list[str] | None = None,
        source: str | None = None,
        encoded: Encoded | None = None,
        raw_sha256: str | None = None,
    ) -> PendingImage:
        """Encode and hash an image and make its record, writing nothing.

        ``encoded`` gives the bytes to store (inputs: see :meth:`prepare_input`); by default the image
        is encoded as a PNG, with the generation parameters embedded for generated images. No
        metadata of ``image`` (an ICC profile, a colour key) is ever copied.
        """
        meta: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "model": model,
            "parameters": parameters or {},
            "parents": parents or [],
        }
        if encoded is None:
            text = generation_text_chunks(meta) if kind == "generated" else None
            encoded = Encoded(encode_png(_bare(image), text), "png")
        digest = encoded.sha256 or hashlib.sha256(encoded.data).hexdigest()
        record = ImageRecord(
            id=digest[:16],
            kind=kind,
            width=image.width,
            height=image.height,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            sha256=digest,
            format=encoded.format,
            source=source,
            owners=[current_principal()],
            mode=image.mode if kind == "input" else None,
            raw_sha256=raw_sha256,
            staged=encoded.staged,
            **meta,
        )
        touch(record.id)
        return PendingImage(record, encoded.data, image)

    def prepare_input(
        self,
        decoded: DecodedImage,
        *,
        raw: bytes | None,
        source: str,
        raw_sha256: str | None = None,
        kept: Encoded | None = None,
    ) -> PendingImage:
        """An input as it will be stored (see :mod:`.compact`), not yet written.

        ``raw`` is what the client sent (kept, stripped of metadata, when ``decoded.keeps_original``);
        ``raw_sha256`` its hash, so the same bytes sent again are found by :meth:`prepare_known`;
        ``kept``: that stripped form, made already (:func:`.compact.kept_form`), when it was.
        """
        if raw is not None and raw_sha256 is None:
            raw_sha256 = hashlib.sha256(raw).hexdigest()
        # (``kept`` was made from the header: staged, with the profile, unless that proved ignored.)
        fits = kept is not None and kept.staged == decoded.staged
        encoded = kept if fits and (decoded.keeps_original or decoded.staged) else compact_input(raw, decoded)
        pending = self.prepare(
            decoded.image, kind="input", source=source, encoded=encoded, raw_sha256=raw_sha256
        )
        update: dict[str, Any] = {"notes": list(decoded.notes)}
        if decoded.reduced:  # the stored bytes are the original: record their size, cache nothing
            update["width"], update["height"] = decoded.full_size
        return PendingImage(
            pending.record.model_copy(update=update), pending.data, None if decoded.reduced else pending.image
        )

    def prepare_known(self, raw_sha256: str, *, source: str) -> PendingImage | None:
        """The pending input for bytes stored before (by the SHA-256 of what the client sent), read
        back from the store instead of decoded and encoded again; None when they are not stored.

        Its ``image`` is the cached decoded image, or None: the caller decodes ``data`` (the stored
        bytes) itself, within its own decode limits and at the scale its use needs."""
        image_id = self.index.find_raw(raw_sha256)
        if image_id is None:
            return None
        try:
            record = self._read_record(image_id)
            if record is None or record.kind != "input":
                return None
            data = self.backend.read(image_key(image_id, record.format))
            image = self._cache.get(image_id)
        except (NotFound, OSError):
            return None
        if data is None:
            return None
        touch(image_id)
        own = record.model_copy(
            update={
                "owners": [current_principal()],
                "source": source,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        return PendingImage(own, data, image.copy() if image is not None else None)

    def commit(self, pending: PendingImage) -> ImageRecord:
        """Write a prepared image and its record (atomically; fsynced on a local disk); returns the
        stored record.

        Already stored: nothing is written, except the current principal added to its owners (a
        conditional write, retried on a conflict with another writer). May then remove old images
        (retention), never this one.

        Raises:
            Busy: the record kept changing under ``WRITE_ATTEMPTS`` attempts to write it.
        """
        image_id = pending.record.id
        touch(image_id)
        with self.write_lock:
            for _ in range(WRITE_ATTEMPTS):
                try:
                    stored = self._write(pending)
                except Conflict:
                    continue  # another writer got there first: read again
                break
            else:
                raise Busy(
                    f"image {image_id} was changed by other writers {WRITE_ATTEMPTS} times; call again"
                )
        if pending.image is not None:
            self._cache.remember(image_id, pending.image)
        if stored.staged:
            self.staging.schedule(image_id)
        self.after_write()
        return stored

    def _write(self, pending: PendingImage) -> ImageRecord:
        """One attempt at :meth:`commit`. Raises Conflict when another writer wrote the record first."""
        record, principal = pending.record, current_principal()
        key = record_key(record.id)
        found = self.backend.get(key)
        existing = parse_record(found.data if found is not None else None)
        image_size = self.backend.size(image_key(record.id, existing.format)) if existing else None
        if found is not None and existing is not None and image_size is not None:
            if record.raw_sha256 and self.index.find_raw(record.raw_sha256) != record.id:
                self.index.note_raw(record.raw_sha256, record.id)  # (a read first: no write per upload)
            if existing.visible_to(principal):
                return existing
            # The same bytes from another principal: share the file, not the knowledge.
            owners = existing.owners or sorted(SINGLE_USER)
            updated = existing.model_copy(update={"owners": [*owners, principal]})
            data = updated.dump()
            self._put_record(updated, data, found.version)
            self.index.add(updated, len(data) + image_size)
            return updated
        # New, or replacing a record that is unreadable or whose image is gone.
        record = record.model_copy(update={"owners": [principal]})
        self.index.mark_pending(record.id, record.format)
        try:
            self.backend.put(image_key(record.id, record.format), pending.data)
            data = record.dump()
            self.backend.put(key, data, mode=found.version if found is not None else "create")
        except Conflict:
            self.index.clear_pending(record.id)  # the same bytes are there: the other writer's record
            raise
        # A staged input stays pending until its conversion is in place (see .staging).
        self.index.add(record, len(data) + len(pending.data), keep_pending=record.staged)
        return record

    def _put_record(self, record: ImageRecord, data: bytes, version: Version) -> None:
        """Replace a record if it is still at ``version`` (raises Conflict otherwise), marked pending
        meanwhile so that a kill leaves nothing behind unnoticed; the caller indexes it."""
        self.index.mark_pending(record.id, record.format)
        try:
            self.backend.put(record_key(record.id), data, mode=version)
        except Conflict:
            self.index.clear_pending(record.id)
            raise

    def update_record(self, image_id: str, change: Callable[[ImageRecord], ImageRecord]) -> ImageRecord:
        """Apply ``change`` to an image's record with a conditional write: when another writer changed
        the record between the read and the write, the record is read again and ``change`` applied
        to that, so neither change is lost. Returns the record written.

        Raises:
            NotFound: as :meth:`record`.
            Busy: the record kept changing under ``WRITE_ATTEMPTS`` attempts.
        """
        self.record(image_id)  # the caller must be able to see it
        key = record_key(image_id)
        for _ in range(WRITE_ATTEMPTS):
            found = self.backend.get(key)
            current = parse_record(found.data if found is not None else None)
            if found is None or current is None:
                raise NotFound(f"no image with id {image_id}")
            updated = change(current)
            data = updated.dump()
            try:
                self._put_record(updated, data, found.version)
            except Conflict:
                continue
            size = self.backend.size(image_key(image_id, updated.format)) or 0
            self.index.add(updated, len(data) + size)
            return updated
        raise Busy(f"image {image_id} was changed by other writers {WRITE_ATTEMPTS} times; call again")

    def put(
        self,
        image: Image.Image,
        *,
        kind: ImageKind,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        model: str | None = None,
        parameters: dict[str, Any] | None = None,
        parents: list[str] | None = None,
        source: str | None = None,
    ) -> ImageRecord:
        """Store an image (a PNG) and its record now; generation parameters are embedded in the PNG
        too. :meth:`prepare` then :meth:`commit`."""
        pending = self.prepare(
            image,
            kind=kind,
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            model=model,
            parameters=parameters,
            parents=parents,
            source=source,
        )
        return self.commit(pending)

    def put_input(self, image: Image.Image, *, source: str) -> ImageRecord:
        """Store pixels a client sent, encoded losslessly; the same pixels get the same id."""
        return self.commit(self.prepare(image, kind="input", source=source, encoded=encode_lossless(image)))

    # --- reading -------------------------------------------------------------------------------

    def _read_record(self, image_id: str) -> ImageRecord | None:
        try:
            data = self.backend.read(record_key(image_id))
            return None if data is None else ImageRecord.model_validate_json(data)
        except (ValidationError, OSError) as exc:
            raise NotFound(f"the record of image {image_id} is unreadable") from exc

    def record(self, image_id: str) -> ImageRecord:
        """The record of an image the current principal can see.

        Raises:
            NotFound: not an id, no such image, or one the current principal does not own.
        """
        validate_id(image_id)
        record = self._read_record(image_id)
        if record is None or not record.visible_to(current_principal()):
            raise NotFound(f"no image with id {image_id}; ids come from earlier tool results (image://<id>)")
        touch(image_id)
        return record

    def recent(self, limit: int, kinds: Iterable[str] = (), *, scan: int = 2_000) -> list[ImageRecord]:
        """The current principal's newest images (of ``kinds``; empty: any), newest first, at most
        ``limit``; only the ``scan`` newest images of the store are looked at (on an object store,
        found by listing its records: one request per 1,000 stored images)."""
        if self._local is not None:
            newest = self.index.newest(scan)
        else:
            listed = [info for info in self.backend.list() if info.key.endswith(".json")]
            listed.sort(key=lambda info: info.modified, reverse=True)
            newest = [info.key.rpartition("/")[2].partition(".")[0] for info in listed[:scan]]
        wanted, principal, found = set(kinds), current_principal(), []
        for image_id in newest:
            record = self._read_record_or_none(image_id)
            if record is not None and record.visible_to(principal) and (not wanted or record.kind in wanted):
                found.append(record)
                if len(found) == limit:
                    break
        return found

    def path(self, image_id: str) -> Path:
        """The absolute path of a stored image's file (``.png``, ``.jpg`` or ``.webp``), for clients
        sharing the server's disk.

        Raises:
            NotFound: as :meth:`record`.
            UnsupportedOperation: the store is an object store (no file on this machine).
        """
        record = self._settled(self.record(image_id))
        path = self.backend.local_path(image_key(image_id, record.format))
        if path is None:
            raise UnsupportedOperation(
                "images are kept in an object store ([server.store] url), not on the server's disk: "
                "use delivery 'preview' or 'full', or read the resource image://<id>"
            )
        return path

    def file_size(self, image_id: str) -> int:
        """Bytes of a stored image's file.

        Raises:
            NotFound: as :meth:`read_bytes`.
        """
        record = self._settled(self.record(image_id))
        size = self.backend.size(image_key(image_id, record.format))
        if size is None:
            raise NotFound(f"the file of image {image_id} is missing from the store")
        return size

    def read_bytes(self, image_id: str, *, staged: bool = False) -> tuple[bytes, str]:
        """The stored file's bytes and their MIME type (``image/png``, ``image/jpeg``, ``image/webp``).

        A staged input (:mod:`.staging`) is converted first (waited for, or done now), unless
        ``staged``: then its staged file (with its ICC profile) may come back, for a decode that
        converts it (:func:`.staging.decode_staged`), never to be sent to a client.

        Raises:
            NotFound: as :meth:`record`, or the file is missing.
        """
        record = self.record(image_id)
        if not staged:
            record = self._settled(record)
        data = self.backend.read(image_key(image_id, record.format))
        if data is None and record.staged:  # converted by another process between the two reads
            record = self._settled(self.record(image_id))
            data = self.backend.read(image_key(image_id, record.format))
        if data is None:
            raise NotFound(f"the file of image {image_id} is missing from the store")
        return data, record.mime_type

    def open(self, image_id: str) -> Image.Image:
        """The decoded image (a copy: callers may modify it); an input in the mode it was decoded to.

        Raises:
            NotFound: as :meth:`read_bytes`.
        """
        record = self.record(image_id)
        cached = self._cache.get(image_id)
        if cached is not None:
            return cached.copy()
        data, _ = self.read_bytes(image_id, staged=True)
        image = decode_stored(record, data)
        self._cache.remember(image_id, image)
        return image

    def _settled(self, record: ImageRecord) -> ImageRecord:
        """``record``, or once converted when it is staged."""
        if not record.staged:
            return record
        self.staging.settle(record.id)
        return self.record(record.id)

    def cached(self, image_id: str) -> Image.Image | None:
        """The decoded image held in memory (not a copy: do not modify it), or None."""
        return self._cache.get(image_id)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the staged inputs being converted in the background (see :mod:`.staging`); False
        when ``timeout`` seconds passed first."""
        return self.staging.drain(timeout)

    # --- retention -----------------------------------------------------------------------------

    def guard(self, held: Callable[[], Iterable[str]]) -> None:
        """Never remove the ids ``held()`` returns (asked at each retention pass, from a worker thread)."""
        self._guards.append(held)

    def enforce(self) -> list[str]:
        """Apply ``[server.store]`` now: remove the oldest images until the store is under
        ``max_bytes`` (90% of it when it was over) and none is older than ``max_age_days``, except
        held ones and the parents of kept ones (:func:`.retention.plan_oldest_first`). Reads the
        index only as far as the rules reach. Returns the removed ids (none on an object store)."""
        settings = self.retention
        if settings is None or self._local is None:
            return []
        with self.write_lock:
            total, limit, age = self.index.total(), settings.byte_limit, settings.max_age_seconds
            budget = None if limit is None else (limit - limit // 10 if total > limit else limit)
            cutoff = time.time() - age if age is not None else None
            oldest = self.index.oldest_created()
            self._last_sweep = time.monotonic()
            if not (
                (budget is not None and total > budget)
                or (cutoff is not None and oldest is not None and oldest < cutoff)
            ):
                return []
            held: set[str] = set()
            for guard in self._guards:
                held.update(guard())
            removals = plan_oldest_first(
                self.index.oldest(),
                children=self.index.children,
                total=total,
                budget=budget,
                cutoff=cutoff,
                held=held,
            )
            for image_id in removals:
                self._remove(image_id)
        if removals:
            logger.info(
                "image store %s: removed %d image(s) by [server.store] retention; %d bytes kept",
                self.root,
                len(removals),
                self.index.total(),
            )
        return removals

    def _remove(self, image_id: str) -> None:
        # The record first: the id stops existing before its image goes.
        self.backend.delete(record_key(image_id))
        for fmt in EXTENSIONS:
            self.backend.delete(image_key(image_id, fmt))
        self.index.remove(image_id)
        self._cache.forget(image_id)

    def after_write(self) -> None:
        """Enforce retention when the store went over ``max_bytes`` or a sweep for ``max_age_days`` is
        due (after a write, or a staged input's conversion, grew the store)."""
        settings = self.retention
        if settings is None or self._local is None:
            return
        over = settings.byte_limit is not None and self.index.total() > settings.byte_limit
        due = settings.max_age_seconds is not None and (
            time.monotonic() - self._last_sweep >= settings.sweep_seconds
        )
        if over or due:
            self.enforce()


def open_image_store(store_dir: Path, settings: StoreSettings, *, fsync: bool = True) -> ImageStore:
    """The store ``[server]`` configures: ``store_dir`` on this machine's disk, or the object store at
    ``[server.store] url`` (needs the ``s3`` extra: obstore).

    Raises:
        ConfigError: the object store cannot be opened (unknown option, obstore missing).
    """
    if settings.url is None:
        return ImageStore(store_dir, fsync=fsync, retention=settings)
    from multimodal_mcp.imaging.object_store import ObjectStoreBackend  # only with the s3 extra

    return ImageStore(backend=ObjectStoreBackend.from_url(settings.url, settings.options), retention=settings)


def _bare(image: Image.Image) -> Image.Image:
    """``image`` without the metadata the PNG writer would copy from it (ICC profile, colour key)."""
    if "icc_profile" not in image.info and "transparency" not in image.info:
        return image
    bare = image.copy()
    bare.info = {}
    return bare
