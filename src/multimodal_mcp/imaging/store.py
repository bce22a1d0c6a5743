"""The image store: every image the server reads or makes, by id, surviving restarts.

Layout: ``<root>/<id[:2]>/<id>.png`` (full resolution) and ``<id>.json`` (the metadata record).
Both are written to a temporary file, flushed to disk (``fsync``, unless turned off) and renamed into
place, PNG first: an id exists exactly when its record exists, so a crash never leaves an id that
points at nothing. Opening a store removes what a killed server can leave behind: temporary files, a
PNG whose record was never written, a record whose PNG is gone.

Ids are content addresses: the first 16 hex digits of the SHA-256 of the stored PNG, which embeds
the generation parameters. Storing the same image with the same metadata twice yields the same id
and keeps the first record.

Every image has owners: the principals (see :mod:`multimodal_mcp.principals`) that made or sent it.
The store acts for the current principal: an image it does not own does not exist for it (the same
``NotFound`` as an unknown id, so nothing reveals that someone else has it). When a second principal
stores the same bytes, it is added to the owners; the id stays the same.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from multimodal_mcp.errors import NotFound
from multimodal_mcp.imaging.codec import encode_png, generation_text_chunks
from multimodal_mcp.principals import SINGLE_USER, current_principal

logger = logging.getLogger(__name__)

ImageKind = Literal["generated", "input", "control", "diff", "overlay"]
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
URI_SCHEME = "image://"


class ImageRecord(BaseModel):
    """What the store knows about one image."""

    model_config = ConfigDict(extra="ignore")

    id: str
    kind: ImageKind
    width: int
    height: int
    created: str
    sha256: str = Field(description="SHA-256 of the stored PNG bytes.")
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

    def visible_to(self, principal: str) -> bool:
        # Records without owners predate them: they belong to the machine's single user.
        return principal in self.owners if self.owners else principal in SINGLE_USER

    @property
    def uri(self) -> str:
        return f"{URI_SCHEME}{self.id}"


def validate_id(image_id: str) -> str:
    if not ID_PATTERN.match(image_id):
        raise NotFound(f"{image_id[:40]!r} is not an image id; ids are 16 lowercase hex characters")
    return image_id


class ImageStore:
    """A directory of PNGs and JSON records. Methods are blocking; call them from worker threads."""

    def __init__(self, root: Path, *, recent: int = 16, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)
        self.recover()
        # Images just written or read are kept decoded: a result's previews and the next tool in a
        # chain (classify, compare) read them right away.
        self._recent: OrderedDict[str, Image.Image] = OrderedDict()
        self._recent_size = recent
        self._lock = threading.Lock()
        # Writes of one id (a new image, or an owner added to it) must not interleave.
        self._write_lock = threading.Lock()

    def _remember(self, image_id: str, image: Image.Image) -> None:
        with self._lock:
            self._recent[image_id] = image
            self._recent.move_to_end(image_id)
            while len(self._recent) > self._recent_size:
                self._recent.popitem(last=False)

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        folder = self.root / image_id[:2]
        return folder / f"{image_id}.png", folder / f"{image_id}.json"

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
        """Remove what an interrupted write leaves behind; returns how many of each were removed.

        Temporary files, PNGs without a record (killed between the two renames) and records whose
        PNG is missing (deleted by hand, or a disk that lost the unsynced PNG) are removed.
        """
        removed = {"temporary": 0, "png_without_record": 0, "record_without_png": 0}
        for folder in self.root.iterdir():
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for path in folder.iterdir():
                name = path.name
                if name.startswith(".") and name.endswith(".tmp"):
                    kind = "temporary"
                elif name.endswith(".png") and not path.with_suffix(".json").exists():
                    kind = "png_without_record"
                elif name.endswith(".json") and not path.with_suffix(".png").exists():
                    kind = "record_without_png"
                else:
                    continue
                path.unlink(missing_ok=True)
                removed[kind] += 1
        if any(removed.values()):
            logger.warning("image store %s: removed leftovers of interrupted writes: %s", self.root, removed)
        return removed

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
        """Store an image and its record; generation parameters are embedded in the PNG too."""
        meta: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "model": model,
            "parameters": parameters or {},
            "parents": parents or [],
        }
        text = generation_text_chunks(meta) if kind == "generated" else None
        png = encode_png(image, text)
        digest = hashlib.sha256(png).hexdigest()
        image_id = digest[:16]
        principal = current_principal()
        png_path, json_path = self._paths(image_id)
        png_path.parent.mkdir(parents=True, exist_ok=True)
        with self._write_lock:
            try:
                existing = self._read_record(image_id)
            except NotFound:
                existing = None  # an unreadable record is replaced below
            if existing is not None and png_path.is_file():
                if not existing.visible_to(principal):
                    # The same bytes from another principal: share the file, not the knowledge.
                    owners = existing.owners or sorted(SINGLE_USER)
                    existing = existing.model_copy(update={"owners": [*owners, principal]})
                    _atomic_write(json_path, existing.model_dump_json(indent=1).encode(), fsync=self.fsync)
                return existing
            record = ImageRecord(
                id=image_id,
                kind=kind,
                width=image.width,
                height=image.height,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                sha256=digest,
                source=source,
                owners=[principal],
                **meta,
            )
            _atomic_write(png_path, png, fsync=self.fsync)
            _atomic_write(json_path, record.model_dump_json(indent=1).encode(), fsync=self.fsync)
        self._remember(record.id, image.copy())
        return record

    def put_input(self, image: Image.Image, *, source: str) -> ImageRecord:
        """Store an image a client sent; the same pixels sent twice get the same id."""
        return self.put(image, kind="input", source=source)

    def _read_record(self, image_id: str) -> ImageRecord | None:
        json_path = self._paths(image_id)[1]
        try:
            return ImageRecord.model_validate_json(json_path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValidationError, OSError) as exc:
            raise NotFound(f"the record of image {image_id} is unreadable") from exc

    def record(self, image_id: str) -> ImageRecord:
        """The record of an image the current principal can see."""
        validate_id(image_id)
        record = self._read_record(image_id)
        if record is None or not record.visible_to(current_principal()):
            raise NotFound(f"no image with id {image_id}; ids come from earlier tool results (image://<id>)")
        return record

    def png_path(self, image_id: str) -> Path:
        """The absolute path of a stored image's PNG (for clients sharing the server's disk)."""
        self.record(image_id)
        return self._paths(image_id)[0].absolute()

    def read_png(self, image_id: str) -> bytes:
        self.record(image_id)
        try:
            return self._paths(image_id)[0].read_bytes()
        except FileNotFoundError:
            raise NotFound(f"the PNG of image {image_id} is missing from the store") from None

    def open(self, image_id: str) -> Image.Image:
        """The decoded image (a copy: callers may modify it)."""
        with self._lock:
            cached = self._recent.get(image_id)
        if cached is not None and self.exists(image_id):
            return cached.copy()
        with Image.open(io.BytesIO(self.read_png(image_id)), formats=["PNG"]) as img:
            img.load()
            image = img.copy()
        self._remember(image_id, image.copy())
        return image


def _atomic_write(path: Path, data: bytes, *, fsync: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
