"""The image store: every image the server reads or makes, by id, surviving restarts.

Layout: ``<root>/<id[:2]>/<id>.png`` (full resolution) and ``<id>.json`` (the metadata record).
Both are written to a temporary file and renamed into place, PNG first: an id exists exactly when
its record exists, so a crash never leaves an id that points at nothing.

Ids are content addresses: the first 16 hex digits of the SHA-256 of the stored PNG, which embeds
the generation parameters. Storing the same image with the same metadata twice yields the same id
and keeps the first record.
"""

from __future__ import annotations

import hashlib
import io
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

ImageKind = Literal["generated", "input", "control", "diff"]
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

    @property
    def uri(self) -> str:
        return f"{URI_SCHEME}{self.id}"


def validate_id(image_id: str) -> str:
    if not ID_PATTERN.match(image_id):
        raise NotFound(f"{image_id[:40]!r} is not an image id; ids are 16 lowercase hex characters")
    return image_id


class ImageStore:
    """A directory of PNGs and JSON records. Methods are blocking; call them from worker threads."""

    def __init__(self, root: Path, *, recent: int = 16) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # Images just written or read are kept decoded: a result's previews and the next tool in a
        # chain (classify, compare) read them right away.
        self._recent: OrderedDict[str, Image.Image] = OrderedDict()
        self._recent_size = recent
        self._lock = threading.Lock()

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
        return ID_PATTERN.match(image_id) is not None and self._paths(image_id)[1].is_file()

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
        if self.exists(image_id):
            return self.record(image_id)
        record = ImageRecord(
            id=image_id,
            kind=kind,
            width=image.width,
            height=image.height,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            sha256=digest,
            source=source,
            **meta,
        )
        png_path, json_path = self._paths(record.id)
        png_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(png_path, png)
        _atomic_write(json_path, record.model_dump_json(indent=1).encode())
        self._remember(record.id, image.copy())
        return record

    def put_input(self, image: Image.Image, *, source: str) -> ImageRecord:
        """Store an image a client sent; the same pixels sent twice get the same id."""
        return self.put(image, kind="input", source=source)

    def record(self, image_id: str) -> ImageRecord:
        validate_id(image_id)
        json_path = self._paths(image_id)[1]
        try:
            return ImageRecord.model_validate_json(json_path.read_bytes())
        except FileNotFoundError:
            raise NotFound(
                f"no image with id {image_id}; ids come from earlier tool results (image://<id>)"
            ) from None
        except (ValidationError, OSError) as exc:
            raise NotFound(f"the record of image {image_id} is unreadable") from exc

    def png_path(self, image_id: str) -> Path:
        """The absolute path of a stored image's PNG (for clients sharing the server's disk)."""
        self.record(image_id)
        return self._paths(image_id)[0].absolute()

    def read_png(self, image_id: str) -> bytes:
        self.record(image_id)
        return self._paths(image_id)[0].read_bytes()

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


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # The rename is atomic: a killed server never leaves a half-written file under the real
        # name. (No fsync: surviving a power cut is not worth its cost on every image.)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
