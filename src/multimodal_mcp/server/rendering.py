"""Result rendering: a tool result as MCP content within the client's limits.

A result becomes a text summary, inline images (previews, full PNGs, or none, per ``delivery``) and
resource links; the whole is measured against ``server.client_limits`` (server/delivery.py) and images
are left out, with a note, rather than going over.
"""

from __future__ import annotations

import base64
import io
from typing import Annotated, Any

from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
from PIL import Image
from pydantic import Field

from multimodal_mcp.config import Config, Delivery
from multimodal_mcp.imaging.codec import encode_preview
from multimodal_mcp.imaging.store import URI_SCHEME, ImageStore
from multimodal_mcp.server.delivery import (
    CHARS_PER_TOKEN,
    ENVELOPE_BYTES,
    add_paths,
    image_tokens,
    text_tokens,
)
from multimodal_mcp.tools.common import Params, Result, in_thread

DELIVERY_HELP = "Default 'preview'; 'none': image:// links only."


class RenderOptions(Params):
    """Arguments the server layer handles itself, for tools whose results show images."""

    delivery: Annotated[Delivery | None, Field(description=DELIVERY_HELP)] = None


class Renderer:
    """Turns a tool result into MCP content: a text summary, inline images, and resource links.

    ``delivery`` picks what is inline (see ``DELIVERY_HELP``); the whole result is kept under the
    client's limits (``server.client_limits``: bytes, estimated tokens, image side, see
    server/delivery.py), dropping inline images with a note rather than going over.
    """

    def __init__(self, config: Config, store: ImageStore) -> None:
        self.settings = config.server
        self.store = store
        self.limits = config.server.client_budget()
        self.max_bytes = min(self.settings.result_max_bytes, self.limits.max_result_bytes) - ENVELOPE_BYTES
        self.max_tokens = (
            self.limits.max_result_tokens - text_tokens(ENVELOPE_BYTES)
            if self.limits.max_result_tokens is not None
            else None
        )

    async def render(self, result: Result, delivery: Delivery | None = None) -> CallToolResult:
        delivery = delivery or self.settings.delivery
        structured = result.model_dump(mode="json")
        path_of = (lambda image_id: str(self.store.path(image_id))) if delivery == "path" else None
        paths = await in_thread(add_paths, structured, path_of)
        text = result.summary()
        if paths:
            text += "\nFiles on the server's disk: " + ", ".join(
                f"{URI_SCHEME}{image_id} = {path}" for image_id, path in paths.items()
            )
        ids = result.preview_ids()
        links = [await in_thread(self._link, image_id) for image_id in ids]
        notes: list[str] = []
        images: list[ImageContent] = []
        if ids and delivery != "none":
            fixed = self._measure(text, links, [], structured)
            if delivery == "full":
                images = await in_thread(self._full, ids, fixed)
                if not images:
                    notes.append(
                        "The full images do not fit this client's limits on one result "
                        f"({self._limits_text()}); showing previews. Read the image:// resources for "
                        "the full images, or pass delivery='path' if you share the server's disk."
                    )
            if not images:
                images = await in_thread(self._previews, ids, fixed)
        images = await in_thread(self._fit, text, notes, links, images, structured)
        if ids and delivery != "none" and not images and not any("left out" in n for n in notes):
            notes.append(f"No room for inline images within {self._limits_text()}; read the image:// links.")
        content: list[Any] = [TextContent(type="text", text=self._text(text, notes)), *images, *links]
        return CallToolResult(content=content, structured_content=structured)

    def _fit(
        self,
        text: str,
        notes: list[str],
        links: list[ResourceLink],
        images: list[ImageContent],
        structured: dict[str, Any],
    ) -> list[ImageContent]:
        """Previews are sized to fit; this is the guarantee: leave images out rather than go over."""
        kept = list(images)
        while kept and self._over(self._measure(self._text(text, notes), links, kept, structured)):
            kept.pop()
            if not any("left out" in note for note in notes):
                notes.append(
                    "Some inline images were left out to stay within this client's limits "
                    f"({self._limits_text()}); read the image:// resources instead."
                )
        return kept

    @staticmethod
    def _text(text: str, notes: list[str]) -> str:
        return "\n".join([text, *notes])

    def _limits_text(self) -> str:
        parts = [f"{self.max_bytes + ENVELOPE_BYTES} bytes"]
        if self.limits.max_result_tokens is not None:
            parts.append(f"about {self.limits.max_result_tokens} tokens")
        return " and ".join(parts)

    def _link(self, image_id: str) -> ResourceLink:
        record = self.store.record(image_id)
        return ResourceLink(
            type="resource_link",
            uri=record.uri,
            name=record.id,
            description=f"{record.kind} image, {record.width}x{record.height} {record.format.upper()}",
            mime_type=record.mime_type,
        )

    @staticmethod
    def _measure(
        text: str, links: list[ResourceLink], images: list[ImageContent], structured: dict[str, Any]
    ) -> tuple[int, int]:
        """(bytes of the serialised result, its estimated tokens)."""
        blank = [ImageContent(type="image", data="", mime_type=image.mime_type) for image in images]
        skeleton = CallToolResult(
            content=[TextContent(type="text", text=text), *blank, *links], structured_content=structured
        ).model_dump_json(by_alias=True, exclude_none=True)
        data = sum(len(image.data) for image in images)
        tokens = text_tokens(len(skeleton)) + sum(
            image_tokens(*Image.open(io.BytesIO(base64.b64decode(image.data))).size, len(image.data))
            for image in images
        )
        return len(skeleton.encode()) + data, tokens

    def _over(self, measured: tuple[int, int]) -> bool:
        size, tokens = measured
        return size > self.max_bytes or (self.max_tokens is not None and tokens > self.max_tokens)

    def _room(self, fixed: tuple[int, int], count: int) -> int:
        """Base64 characters each of ``count`` images may take, after the text and JSON."""
        block = 64  # an image block's JSON around its data
        room = (self.max_bytes - fixed[0]) // count - block
        if self.max_tokens is not None:
            room = min(room, (self.max_tokens - fixed[1]) * CHARS_PER_TOKEN // count - block)
        return room

    def _full(self, ids: list[str], fixed: tuple[int, int]) -> list[ImageContent]:
        """The stored files, when all of them fit; else nothing."""
        records = [self.store.record(image_id) for image_id in ids]
        if any(max(r.width, r.height) > self.limits.max_image_side for r in records):
            return []
        on_disk = sum(self.store.file_size(image_id) for image_id in ids)
        if on_disk * 4 // 3 > self.max_bytes - fixed[0]:
            return []  # clearly too big: not worth reading
        files = [self.store.read_bytes(image_id) for image_id in ids]
        images = [
            ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime_type)
            for data, mime_type in files
        ]
        return [] if self._over(_plus(self._measure("", [], images, {}), fixed)) else images

    def _previews(self, ids: list[str], fixed: tuple[int, int]) -> list[ImageContent]:
        per_image = self._room(fixed, len(ids)) * 3 // 4
        if per_image < MIN_PREVIEW_BYTES:
            return []
        out = []
        for image_id in ids:
            preview = encode_preview(
                self.store.open(image_id),
                max_side=min(self.settings.preview_max_side, self.limits.max_image_side),
                max_bytes=per_image,
                fmt=self.settings.preview_format,
            )
            out.append(
                ImageContent(
                    type="image", data=base64.b64encode(preview.data).decode(), mime_type=preview.mime_type
                )
            )
        return out


MIN_PREVIEW_BYTES = 1_500
"""Smaller than this, a preview (64 px, low quality) is not worth its place."""


def _plus(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]
