"""Resolving an image argument (``image://<id>``, a data URI, bare base64, or a file path)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from multimodal_mcp.config import Limits
from multimodal_mcp.errors import ImageInputError, NotFound
from multimodal_mcp.imaging.codec import decode_base64_payload, decode_image, looks_like_data_uri
from multimodal_mcp.imaging.store import URI_SCHEME, ImageRecord, ImageStore

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_BASE64ISH = re.compile(r"^[A-Za-z0-9+/_=\s-]+$")

HOW_TO_PASS = (
    "Pass an image as image://<id> (from an earlier result), a data: URI, bare base64, "
    "or an absolute file path under an allowed directory."
)


@dataclass(frozen=True)
class ResolvedImage:
    record: ImageRecord
    image: Image.Image


class ImageResolver:
    """Turns untrusted image arguments into stored images. Blocking; run it in a worker thread."""

    def __init__(self, store: ImageStore, allowed_roots: tuple[Path, ...], limits: Limits) -> None:
        self.store = store
        self.allowed_roots = tuple(root.resolve() for root in allowed_roots)
        self.limits = limits

    def resolve(self, value: str, *, argument: str = "image") -> ResolvedImage:
        """Resolve and store one image argument.

        Raises:
            ImageInputError: the argument names the limit or the accepted forms.
            NotFound: an ``image://`` id the store does not have.
        """
        try:
            return self._resolve(value.strip())
        except (ImageInputError, NotFound) as exc:
            raise type(exc)(f"{argument}: {exc}") from exc

    def _resolve(self, value: str) -> ResolvedImage:
        if not value:
            raise ImageInputError(f"the image argument is empty. {HOW_TO_PASS}")
        if value.startswith(URI_SCHEME):
            image_id = value[len(URI_SCHEME) :].strip("/")
            record = self.store.record(image_id)
            return ResolvedImage(record, self.store.open(image_id))
        if looks_like_data_uri(value):
            return self._from_bytes(
                decode_base64_payload(value, max_bytes=self.limits.max_input_bytes), "data"
            )
        if _SCHEME.match(value):
            raise ImageInputError(
                f"URLs are not fetched by this server ({value.split('://', 1)[0]}://...). "
                "Download the image yourself and pass it as base64 or a file path."
            )
        if _looks_like_base64(value):
            return self._from_bytes(
                decode_base64_payload(value, max_bytes=self.limits.max_input_bytes), "base64"
            )
        return self._from_path(value)

    def _from_bytes(self, raw: bytes, source: str) -> ResolvedImage:
        decoded = decode_image(raw, max_pixels=self.limits.max_input_pixels)
        record = self.store.put_input(decoded.image, source=source)
        return ResolvedImage(record, decoded.image)

    def _from_path(self, value: str) -> ResolvedImage:
        if "\x00" in value:
            raise ImageInputError("the file path contains a NUL byte")
        if len(value) > 4096:
            raise ImageInputError(f"the value is {len(value)} characters: too long for a path and not base64")
        path = Path(value)
        if not path.is_absolute():
            raise ImageInputError(
                f"{value[:200]!r} is neither an absolute file path nor base64. {HOW_TO_PASS}"
            )
        if not self.allowed_roots:
            raise ImageInputError(
                "reading files is disabled on this server (no allowed roots are configured). "
                "Pass the image as base64 or image://<id> instead."
            )
        try:
            resolved = path.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise ImageInputError(f"no such file: {value[:200]}") from None
        except (OSError, RuntimeError) as exc:
            raise ImageInputError(f"cannot resolve the path {value[:200]!r}") from exc
        if not any(resolved.is_relative_to(root) for root in self.allowed_roots):
            roots = ", ".join(str(r) for r in self.allowed_roots)
            raise ImageInputError(
                f"the path {value[:200]!r} is outside the directories this server may read ({roots}). "
                "Pass the image as base64 instead."
            )
        if not resolved.is_file():
            raise ImageInputError(f"{value[:200]!r} is not a regular file")
        size = resolved.stat().st_size
        if size > self.limits.max_input_bytes:
            raise ImageInputError(
                f"the file is {size} bytes; the limit is {self.limits.max_input_bytes} bytes"
            )
        try:
            raw = resolved.read_bytes()
        except OSError as exc:
            raise ImageInputError(f"cannot read {value[:200]!r}: {exc.strerror}") from exc
        return self._from_bytes(raw, "path")


def _looks_like_base64(value: str) -> bool:
    # JPEG base64 starts with "/9j/", so a leading slash alone does not make a path; a real path
    # almost always has a '.' or a character outside the base64 alphabet.
    if _BASE64ISH.match(value) is None:
        return False
    if not value.startswith("/"):
        return True
    compact = "".join(value.split())
    return len(compact) >= 64 and len(compact) % 4 == 0
