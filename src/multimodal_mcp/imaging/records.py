"""What the image store keeps about each image: the record, its id, and the ids a job holds.

Split from :mod:`.store` so that the store's backends (:mod:`.storage`, :mod:`.object_store`) and its
index (:mod:`.store_index`) share one definition of a record and of where it lives.

Keys (paths relative to the store's root or prefix): ``<id[:2]>/<id>.json`` (the record) and
``<id[:2]>/<id>.<ext>`` (the image, ``ext`` from the record's ``format``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from multimodal_mcp.errors import NotFound
from multimodal_mcp.imaging.compact import EXTENSIONS, MIME_TYPES, StoredFormat
from multimodal_mcp.principals import SINGLE_USER

ImageKind = Literal["generated", "input", "control", "diff", "overlay"]
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
URI_SCHEME = "image://"
WRITE_ATTEMPTS = 20
"""Conditional writes of one record tried before giving up (each lost one is re-read first)."""

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


def touch(image_id: str) -> None:
    """Note ``image_id`` as used by the code running now (see :func:`holding`)."""
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
    staged: bool = Field(
        default=False,
        description="For inputs: stored for now as the client's JPEG with its colour profile, converted "
        "to sRGB in the background (see imaging.staging); the id stays the same.",
    )
    notes: list[str] = Field(
        default_factory=list,
        description="For inputs: what reading the client's bytes changed (bit depth, colour profile), "
        "reported again whenever the same input is used (by the same bytes or its id).",
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

    def dump(self) -> bytes:
        """The record as stored (JSON)."""
        return self.model_dump_json(indent=1).encode()


@dataclass(frozen=True)
class PendingImage:
    """An image encoded, hashed and given its id, not yet written: :meth:`ImageStore.commit` writes it."""

    record: ImageRecord
    data: bytes
    image: Image.Image | None
    """The decoded pixels (what :meth:`ImageStore.open` will return for the id); None when only a
    reduced-scale decode exists (nothing is cached then)."""


def parse_record(data: bytes | None) -> ImageRecord | None:
    """A record's JSON, or None when there is none or it cannot be read."""
    if data is None:
        return None
    try:
        return ImageRecord.model_validate_json(data)
    except ValidationError:
        return None


def validate_id(image_id: str) -> str:
    if not ID_PATTERN.match(image_id):
        raise NotFound(f"{image_id[:40]!r} is not an image id; ids are 16 lowercase hex characters")
    return image_id


def record_key(image_id: str) -> str:
    """Where the record of ``image_id`` lives, relative to the store's root."""
    return f"{image_id[:2]}/{image_id}.json"


def image_key(image_id: str, fmt: StoredFormat) -> str:
    """Where the image of ``image_id`` stored as ``fmt`` lives, relative to the store's root."""
    return f"{image_id[:2]}/{image_id}.{EXTENSIONS[fmt]}"


def id_of_key(key: str) -> tuple[str, str] | None:
    """``(id, extension)`` of a record or image key, or None for any other name."""
    name = key.rpartition("/")[2]
    stem, _, ext = name.partition(".")
    if ID_PATTERN.match(stem) and ext in ("json", *EXTENSIONS.values()):
        return stem, ext
    return None
