"""The tools only the views call (MCP Apps visibility ``["app"]``): the model never sees them.

They are plain async functions over pydantic params and results, like the tools in
``multimodal_mcp.tools``, and go through the same registration: unknown arguments refused, bounds
checked, every image read as the calling principal (an ``image://`` id of someone else's is not found).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import Field

from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.imaging.codec import encode_preview
from multimodal_mcp.imaging.store import ImageRecord
from multimodal_mcp.tools.common import (
    ImageArg,
    ImageRef,
    Params,
    Progress,
    Result,
    Services,
    in_thread,
    keep_inputs,
    resolve_image,
)

THUMBNAIL_BYTES = 24_000
"""A gallery thumbnail's budget: 48 of them stay far under a client's result limit."""

GalleryKind = Literal["generated", "input", "control", "diff"]


class GalleryImagesParams(Params):
    limit: Annotated[int, Field(ge=1, le=48, description="How many images, newest first.")] = 24
    kinds: Annotated[
        list[GalleryKind],
        Field(min_length=1, max_length=4, description="Which kinds of stored images to list."),
    ] = ["generated"]  # noqa: RUF012 (pydantic copies defaults)
    thumbnail_side: Annotated[
        int, Field(ge=32, le=256, description="Long side of each thumbnail, in pixels.")
    ] = 128


class GalleryImage(ImageRef):
    kind: str
    created: str
    prompt: str | None
    negative_prompt: str | None
    seed: int | None
    model: str | None
    parameters: dict[str, Any]
    thumbnail: str = Field(description="A small JPEG of the image as a data: URI.")


class GalleryImagesResult(Result):
    images: list[GalleryImage]

    def summary(self) -> str:
        if not self.images:
            return "No stored images of yours yet."
        ids = ", ".join(image.uri for image in self.images)
        return f"{len(self.images)} of your stored images, newest first: {ids}."


async def gallery_images(
    params: GalleryImagesParams, services: Services, progress: Progress | None = None
) -> GalleryImagesResult:
    """The caller's newest stored images with their prompts, seeds and parameters, and thumbnails
    (the gallery view's "earlier images")."""
    store = services.store

    def listing() -> list[GalleryImage]:
        records = store.recent(params.limit, params.kinds)
        return [_gallery_image(record, store.open(record.id), params.thumbnail_side) for record in records]

    return GalleryImagesResult(images=await in_thread(listing))


def _gallery_image(record: ImageRecord, image: Image.Image, side: int) -> GalleryImage:
    preview = encode_preview(image, max_side=side, max_bytes=THUMBNAIL_BYTES, fmt="jpeg")
    return GalleryImage(
        **ImageRef.of(record).model_dump(),
        kind=record.kind,
        created=record.created,
        prompt=record.prompt,
        negative_prompt=record.negative_prompt,
        seed=record.seed,
        model=record.model,
        parameters=record.parameters,
        thumbnail=f"data:{preview.mime_type};base64,{base64.b64encode(preview.data).decode()}",
    )


class SaveMaskParams(Params):
    image: Annotated[ImageArg, Field(description="The image the mask was painted over.")]
    mask: Annotated[
        ImageArg,
        Field(description="The painted mask, the size of image: white = repaint, black = keep."),
    ]


class SaveMaskResult(Result):
    mask: ImageRef
    image: ImageRef
    painted_fraction: float = Field(description="White (repainted) pixels / all pixels.")

    def summary(self) -> str:
        return (
            f"Saved the mask {self.mask.uri} for {self.image.uri} ({self.painted_fraction:.1%} painted). "
            f"Inpaint with controlled_generate(prompt=..., init_image='{self.image.uri}', "
            f"mask_image='{self.mask.uri}')."
        )


async def save_mask(
    params: SaveMaskParams, services: Services, progress: Progress | None = None
) -> SaveMaskResult:
    """Store a mask painted over an image as a black and white PNG with its own image:// id."""
    # 1. Check inputs: both readable by the caller, the same size, something painted
    image = await resolve_image(services, params.image, "image")
    painted = await resolve_image(services, params.mask, "mask")
    if painted.image.size != image.image.size:
        raise InvalidArgument(
            f"mask: {painted.image.width}x{painted.image.height} does not match the image's "
            f"{image.image.width}x{image.image.height}; paint the mask at the image's size"
        )
    mask, fraction = await in_thread(_binary, painted.image)
    if fraction == 0:
        raise InvalidArgument("mask: nothing is painted (all black); paint the part to repaint in white")

    # 2. Store it, owned by the caller, with the image as its parent
    await keep_inputs(services, image)
    record = await in_thread(
        lambda: services.store.put(mask, kind="input", source="mask", parents=[image.record.id])
    )
    return SaveMaskResult(
        mask=ImageRef.of(record), image=ImageRef.of(image.record), painted_fraction=round(fraction, 6)
    )


def _binary(painted: Image.Image) -> tuple[Image.Image, float]:
    """White where the painting is light and opaque, black elsewhere (a transparent pixel is
    unpainted); and the share of white pixels."""
    import numpy as np  # here, not at import: the server starts without numpy (issue 20)

    rgba = np.asarray(painted.convert("RGBA"), dtype=np.uint16)
    light = rgba[..., :3].mean(axis=2) * rgba[..., 3] / 255 > 127
    return Image.fromarray(np.where(light, 255, 0).astype(np.uint8)), float(light.mean())
