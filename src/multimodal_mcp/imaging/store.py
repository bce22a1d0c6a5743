"""The image store: every image the server reads or makes, by id, surviving restarts.

Layout: ``<root>/<id[:2]>/<id>.<ext>`` (the image: ``.png``, ``.jpg`` or ``.webp``) and ``<id>.json``
(the metadata record, whose ``format`` names the image file). Both are written to a temporary file,
flushed to disk (``fsync``, unless turned off) and renamed into place, image first: an id exists
exactly when its record exists, so a crash never leaves an id that points at nothing. Opening a store
removes what a killed server can leave behind: temporary files, an image whose record was never
written, a record whose image is gone. Stores written before other formats existed (``.png`` files,
records without ``format``) are read as they are.

Ids are content addresses: the first 16 hex digits of the SHA-256 of the stored bytes. Generated
images are PNGs embedding their generation parameters; inputs are stored compactly (see
:mod:`.compact`): the client's own bytes with its metadata stripped where they decode to exactly the
pixels used, else a lossless encoding. Storing the same bytes with the same metadata twice yields the
same id and keeps the first record. Inputs are *prepared* (encoded, hashed, given an id) without being
written, and written by :meth:`ImageStore.commit` once the call that received them goes ahead, so a
refused call leaves nothing behind.

Every image has owners: the principals (see :mod:`multimodal_mcp.principals`) that made or sent it.
The store acts for the current principal: an image it does not own does not exist for it (the same
``NotFound`` as an unknown id, so nothing reveals that someone else has it). When a second principal
stores the same bytes, it is added to the owners; the id stays the same.

Retention (``[server.store]``): the store keeps an in-memory index (creation time, bytes, parents) and a
running total, so enforcing ``max_bytes`` and ``max_age_days`` reads no file. It never removes an image
that is held (see :func:`holding`: the images a live or retained job touched) or that a kept image
names among its parents. Decoded images just written or read are cached, up to a byte budget.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from multimodal_mcp.config import StoreSettings
from multimodal_mcp.errors import NotFound
from multimodal_mcp.imaging.codec import DecodedImage, encode_png, generation_text_chunks
from multimodal_mcp.imaging.compact import (
    EXTENSIONS,
    MIME_TYPES,
    PIL_FORMATS,
    Encoded,
    StoredFormat,
    compact_input,
    encode_lossless,
)
from multimodal_mcp.imaging.retention import Entry, plan_removals
from multimodal_mcp.imaging.sharing import StoreLock, stale_stray, stale_temporary, temp_prefix
from multimodal_mcp.principals import SINGLE_USER, current_principal

logger = logging.getLogger(__name__)

ImageKind = Literal["generated", "input", "control", "diff", "overlay"]
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
URI_SCHEME = "image://"
CACHE_BYTES = 256 * 1024 * 1024
"""Decoded images kept in memory at most (an image over a quarter of it is not cached)."""

_held: ContextVar[set[str] | None] = ContextVar("multimodal_mcp_held_images", default=None)


@contextmanager
def holding(ids: set[str]) -> Iterator[set[str]]:
    """Collect in ``ids`` every image id the store prepares, writes or looks up for the code run in
    the block (worker threads started from it included). The job manager holds each job's images
    this way and reports them to the store's retention, which never removes them."""
    token = _held.set(ids)
    try:
        yield ids
    finally:
        _held.reset(token)


def _touch(image_id: str) -> None:
    held = _held.get()
    if held is not None:
        held.add(image_id)


class ImageRecord(BaseModel):
    """What the store knows about one image."""

    model_config = ConfigDict(extra="ignore")

    id: str
    kind: ImageKind
    width: int
    height: int
    created: str
    sha256: str = Field(description="SHA-256 of the stored bytes.")
    format: StoredFormat = Field(default="png", description="How the image file is encoded.")
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    model: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    parents: list[str] = Field(default_factory=list)
    source: str | None = Field(
        default=None, description="For inputs: how the image arrived (path, data, base64)."
    )
    owners: list[str] = Field(
        default_factory=list,
        description="Principals that may see the image; empty in records written before owners existed.",
    )
    mode: str | None = Field(
        default=None,
        description="For inputs: the mode the server decoded it to (RGB, RGBA); reading it back converts "
        "the stored file's own mode (e.g. a grayscale JPEG's L) to this.",
    )
    raw_sha256: str | None = Field(
        default=None, description="For inputs: the SHA-256 of the bytes the client sent, when known."
    )

    def visible_to(self, principal: str) -> bool:
        # Records without owners predate them: they belong to the machine's single user.
        return principal in self.owners if self.owners else principal in SINGLE_USER

    @property
    def uri(self) -> str:
        return f"{URI_SCHEME}{self.id}"

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.format]

    @property
    def file_name(self) -> str:
        return f"{self.id}.{EXTENSIONS[self.format]}"


@dataclass(frozen=True)
class PendingImage:
    """An image encoded, hashed and given its id, not yet written: :meth:`ImageStore.commit` writes it."""

    record: ImageRecord
    data: bytes
    image: Image.Image | None
    """The decoded pixels (what :meth:`ImageStore.open` will return for the id); None when only a
    reduced-scale decode exists (nothing is cached then)."""


def validate_id(image_id: str) -> str:
    if not ID_PATTERN.match(image_id):
        raise NotFound(f"{image_id[:40]!r} is not an image id; ids are 16 lowercase hex characters")
    return image_id


class ImageStore:
    """A directory of images and JSON records. Methods are blocking; call them from worker threads.

    Args:
        root: the directory (created if missing).
        fsync: flush each file and its directory before reporting an image stored.
        retention: ``[server.store]`` limits, enforced when opening and after writes; None keeps
            everything.
        cache_bytes: decoded images kept in memory, in bytes; an image over a quarter of it is not
            cached.
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        retention: StoreSettings | None = None,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.retention = retention
        root.mkdir(parents=True, exist_ok=True)
        # Images just written or read are kept decoded: a result's previews and the next tool in a
        # chain (classify, compare) read them right away.
        self._recent: OrderedDict[str, tuple[Image.Image, int]] = OrderedDict()
        self._recent_bytes = 0
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()
        # Writes of one id (a new image, an owner added to it, its removal) must not interleave.
        self._write_lock = threading.RLock()
        self._index: dict[str, Entry] = {}
        self._total = 0
        self._raw: dict[str, str] = {}  # SHA-256 of bytes a client sent -> the id they were stored as
        self._guards: list[Callable[[], Iterable[str]]] = []
        self._last_sweep = time.monotonic()
        self._shared = StoreLock(root)  # other processes may use this directory too (sharing.py)
        self.recover()
        if retention is not None:
            self.enforce()

    # --- the decoded-image cache ---------------------------------------------------------------

    def _remember(self, image_id: str, image: Image.Image) -> None:
        """Cache a copy of ``image`` unless it is over a quarter of the budget; evict the least
        recently used images until the cache fits."""
        size = _footprint(image)
        if size > self._cache_bytes // 4:
            return
        copy = image.copy()
        with self._lock:
            old = self._recent.pop(image_id, None)
            if old is not None:
                self._recent_bytes -= old[1]
            self._recent[image_id] = (copy, size)
            self._recent_bytes += size
            while self._recent_bytes > self._cache_bytes:
                _, (_, evicted) = self._recent.popitem(last=False)
                self._recent_bytes -= evicted

    def _cached(self, image_id: str) -> Image.Image | None:
        with self._lock:
            hit = self._recent.get(image_id)
            if hit is not None:
                self._recent.move_to_end(image_id)
        return hit[0] if hit is not None else None

    def _forget(self, image_id: str) -> None:
        with self._lock:
            old = self._recent.pop(image_id, None)
            if old is not None:
                self._recent_bytes -= old[1]

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded images held in memory now."""
        return self._recent_bytes

    # --- layout and recovery -------------------------------------------------------------------

    def _record_path(self, image_id: str) -> Path:
        return self.root / image_id[:2] / f"{image_id}.json"

    def _image_path(self, image_id: str, fmt: StoredFormat) -> Path:
        return self.root / image_id[:2] / f"{image_id}.{EXTENSIONS[fmt]}"

    def exists(self, image_id: str) -> bool:
        """Whether the current principal can see ``image_id``."""
        if ID_PATTERN.match(image_id) is None:
            return False
        try:
            self.record(image_id)
        except NotFound:
            return False
        return True

    def recover(self) -> dict[str, int]:
        """Remove what an interrupted write leaves behind and rebuild the index; returns how many of
        each were removed.

        Temporary files, images without a record (killed between the two renames) and records whose
        image is missing (deleted by hand, or a disk that lost the unsynced file) are removed; while
        another process has the store open, only those provably stale (:mod:`.sharing`). A record
        that cannot be read is left alone with its image (reading it is an error; it is never
        removed by retention).
        """
        removed = {"temporary": 0, "image_without_record": 0, "record_without_image": 0}
        self._alone = self._shared.alone()
        with self._write_lock:
            self._index.clear()
            self._raw.clear()
            self._total = 0
            for folder in self.root.iterdir():
                if folder.is_dir() and len(folder.name) == 2:
                    self._recover_folder(folder, removed)
        if any(removed.values()):
            logger.warning("image store %s: removed leftovers of interrupted writes: %s", self.root, removed)
        return removed

    def _recover_folder(self, folder: Path, removed: dict[str, int]) -> None:
        files: dict[str, dict[str, Path]] = {}
        for path in folder.iterdir():
            name = path.name
            if name.startswith(".") and name.endswith(".tmp"):
                if stale_temporary(path, alone=self._alone):
                    path.unlink(missing_ok=True)
                    removed["temporary"] += 1
                continue
            stem, _, ext = name.partition(".")
            if ID_PATTERN.match(stem) and ext in ("json", *EXTENSIONS.values()):
                files.setdefault(stem, {})[ext] = path
        for image_id, found in files.items():
            record_path = found.pop("json", None)
            record = None
            if record_path is not None:
                try:
                    raw_record = record_path.read_bytes()
                    record = ImageRecord.model_validate_json(raw_record)
                except (ValidationError, OSError):
                    logger.warning("image store: the record of %s is unreadable; left as it is", image_id)
                    continue
            image_path = found.pop(EXTENSIONS[record.format], None) if record is not None else None
            for stray in found.values():
                if stale_stray(stray, alone=self._alone):
                    stray.unlink(missing_ok=True)
                    removed["image_without_record"] += 1
            if record is None or record_path is None:
                continue
            if image_path is None:
                record_path.unlink(missing_ok=True)
                removed["record_without_image"] += 1
                continue
            self._add_to_index(record, image_path.stat().st_size + len(raw_record))

    def _add_to_index(self, record: ImageRecord, size: int) -> None:
        try:
            created = datetime.fromisoformat(record.created).timestamp()
        except ValueError:
            created = time.time()
        old = self._index.get(record.id)
        if old is not None:
            self._total -= old.size
        self._index[record.id] = Entry(created=created, size=size, parents=tuple(record.parents))
        self._total += size
        if record.raw_sha256:
            self._raw[record.raw_sha256] = record.id

    @property
    def total_bytes(self) -> int:
        """Bytes the stored images and their records take (the running total retention enforces)."""
        return self._total

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
        digest = hashlib.sha256(encoded.data).hexdigest()
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
            **meta,
        )
        _touch(record.id)
        return PendingImage(record, encoded.data, image)

    def prepare_input(
        self, decoded: DecodedImage, *, raw: bytes | None, source: str, raw_sha256: str | None = None
    ) -> PendingImage:
        """An input as it will be stored (see :mod:`.compact`), not yet written.

        ``raw`` is what the client sent (kept, stripped of metadata, when ``decoded.keeps_original``);
        ``raw_sha256`` its hash, so the same bytes sent again are found by :meth:`prepare_known`.
        """
        if raw is not None and raw_sha256 is None:
            raw_sha256 = hashlib.sha256(raw).hexdigest()
        encoded = compact_input(raw, decoded)
        pending = self.prepare(
            decoded.image, kind="input", source=source, encoded=encoded, raw_sha256=raw_sha256
        )
        if decoded.reduced:  # the stored bytes are the original: record their size, cache nothing
            width, height = decoded.full_size
            record = pending.record.model_copy(update={"width": width, "height": height})
            return PendingImage(record, pending.data, None)
        return pending

    def prepare_known(self, raw_sha256: str, *, source: str) -> PendingImage | None:
        """The pending input for bytes stored before (by the SHA-256 of what the client sent), read
        back from the store instead of decoded and encoded again; None when they are not stored.

        Its ``image`` is the cached decoded image, or None: the caller decodes ``data`` (the stored
        bytes) itself, within its own decode limits and at the scale its use needs."""
        image_id = self._raw.get(raw_sha256)
        if image_id is None or image_id not in self._index:
            return None
        try:
            record = self._read_record(image_id)
            if record is None or record.kind != "input":
                return None
            data = self._image_path(image_id, record.format).read_bytes()
            image = self._cached(image_id)
        except (NotFound, OSError):
            return None
        _touch(image_id)
        own = record.model_copy(
            update={
                "owners": [current_principal()],
                "source": source,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        return PendingImage(own, data, image.copy() if image is not None else None)

    def commit(self, pending: PendingImage) -> ImageRecord:
        """Write a prepared image and its record (fsynced, atomically); returns the stored record.

        Already stored: nothing is written, except the current principal added to its owners.
        May then remove old images (retention), never this one.
        """
        record = pending.record
        image_id = record.id
        principal = current_principal()
        _touch(image_id)
        with self._write_lock:
            try:
                existing = self._read_record(image_id)
            except NotFound:
                existing = None  # an unreadable record is replaced below
            if existing is not None and self._image_path(image_id, existing.format).is_file():
                if not existing.visible_to(principal):
                    # The same bytes from another principal: share the file, not the knowledge.
                    owners = existing.owners or sorted(SINGLE_USER)
                    existing = existing.model_copy(update={"owners": [*owners, principal]})
                    self._write_record(existing)
                if record.raw_sha256:
                    self._raw.setdefault(record.raw_sha256, image_id)
                return existing
            record = record.model_copy(update={"owners": [principal]})
            image_path = self._image_path(image_id, record.format)
            image_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(image_path, pending.data, fsync=self.fsync)
            self._write_record(record)
        if pending.image is not None:
            self._remember(image_id, pending.image)
        self._after_write()
        return record

    def _write_record(self, record: ImageRecord) -> None:
        data = record.model_dump_json(indent=1).encode()
        _atomic_write(self._record_path(record.id), data, fsync=self.fsync)
        self._add_to_index(record, len(data) + self._image_size(record))

    def _image_size(self, record: ImageRecord) -> int:
        try:
            return self._image_path(record.id, record.format).stat().st_size
        except OSError:
            return 0

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
            return ImageRecord.model_validate_json(self._record_path(image_id).read_bytes())
        except FileNotFoundError:
            return None
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
        _touch(image_id)
        return record

    def recent(self, limit: int, kinds: Iterable[str] = (), *, scan: int = 2_000) -> list[ImageRecord]:
        """The current principal's newest images (of ``kinds``; empty: any), newest first, at most
        ``limit``; only the ``scan`` newest images of the store are looked at."""
        with self._write_lock:
            # Creation times are in whole seconds: of two in the same second, the later written first.
            newest = sorted(self._index.items(), key=lambda item: item[1].created)[::-1][:scan]
        wanted, principal, found = set(kinds), current_principal(), []
        for image_id, _ in newest:
            record = self._read_record(image_id)
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
        """
        record = self.record(image_id)
        return self._image_path(image_id, record.format).absolute()

    def read_bytes(self, image_id: str) -> tuple[bytes, str]:
        """The stored file's bytes and their MIME type (``image/png``, ``image/jpeg``, ``image/webp``).

        Raises:
            NotFound: as :meth:`record`, or the file is missing.
        """
        record = self.record(image_id)
        try:
            return self._image_path(image_id, record.format).read_bytes(), record.mime_type
        except FileNotFoundError:
            raise NotFound(f"the file of image {image_id} is missing from the store") from None

    def open(self, image_id: str) -> Image.Image:
        """The decoded image (a copy: callers may modify it); an input in the mode it was decoded to.

        Raises:
            NotFound: as :meth:`read_bytes`.
        """
        record = self.record(image_id)
        cached = self._cached(image_id)
        if cached is not None:
            return cached.copy()
        data, _ = self.read_bytes(image_id)
        image = self._decode(record, data)
        self._remember(image_id, image)
        return image

    @staticmethod
    def _decode(record: ImageRecord, data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[record.format]]) as img:
            img.load()
            return img.convert(record.mode or img.mode)

    # --- retention -----------------------------------------------------------------------------

    def guard(self, held: Callable[[], Iterable[str]]) -> None:
        """Never remove the ids ``held()`` returns (asked at each retention pass, from a worker thread)."""
        self._guards.append(held)

    def enforce(self) -> list[str]:
        """Apply ``[server.store]`` now: remove the oldest images until the store is under
        ``max_bytes`` (90% of it when it was over) and none is older than ``max_age_days``, except
        held ones and the parents of kept ones (:func:`.retention.plan_removals`). Returns the
        removed ids."""
        settings = self.retention
        if settings is None:
            return []
        with self._write_lock:
            limit = settings.byte_limit
            budget = None if limit is None else (limit - limit // 10 if self._total > limit else limit)
            age = settings.max_age_seconds
            held: set[str] = set()
            for guard in self._guards:
                held.update(guard())
            removals = plan_removals(
                self._index,
                total=self._total,
                budget=budget,
                cutoff=time.time() - age if age is not None else None,
                held=held,
            )
            for image_id in removals:
                self._remove(image_id)
            self._last_sweep = time.monotonic()
        if removals:
            logger.info(
                "image store %s: removed %d image(s) by [server.store] retention; %d bytes kept",
                self.root,
                len(removals),
                self._total,
            )
        return removals

    def _remove(self, image_id: str) -> None:
        entry = self._index.pop(image_id)
        self._total -= entry.size
        # The record first: the id stops existing before its image goes (recover removes the rest).
        self._record_path(image_id).unlink(missing_ok=True)
        for ext in EXTENSIONS.values():
            (self.root / image_id[:2] / f"{image_id}.{ext}").unlink(missing_ok=True)
        self._forget(image_id)

    def _after_write(self) -> None:
        settings = self.retention
        if settings is None:
            return
        over = settings.byte_limit is not None and self._total > settings.byte_limit
        due = settings.max_age_seconds is not None and (
            time.monotonic() - self._last_sweep >= settings.sweep_seconds
        )
        if over or due:
            self.enforce()


def _bare(image: Image.Image) -> Image.Image:
    """``image`` without the metadata the PNG writer would copy from it (ICC profile, colour key)."""
    if "icc_profile" not in image.info and "transparency" not in image.info:
        return image
    bare = image.copy()
    bare.info = {}
    return bare


def _footprint(image: Image.Image) -> int:
    """Bytes Pillow holds for ``image``'s pixels (RGB is kept as 4 bytes a pixel)."""
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    return image.width * image.height * per_pixel


def _atomic_write(path: Path, data: bytes, *, fsync: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        # The rename is atomic: a killed server never leaves a half-written file under the real
        # name. With fsync, the data is on disk before the name points at it, and the directory
        # entry is on disk before the image is reported as made (surviving a power cut too).
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
