"""compare_images: how two images differ, in numbers, boxes, a heat map and (optionally) words."""

from __future__ import annotations

from typing import Annotated, Any

from PIL import Image
from pydantic import BaseModel, Field

from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.handles import Usage
from multimodal_mcp.imaging.analysis import Comparison, align_sizes, compare
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.tools.common import (
    Clock,
    DetailArg,
    ImageArg,
    ImageRef,
    ModelArg,
    Params,
    Progress,
    Result,
    Services,
    Timings,
    approve_spending,
    concurrently,
    given_arguments,
    in_thread,
    keeping_inputs,
    resolve_image,
)

NARRATIVE_PROMPT = (
    "The left half of this picture is the first image and the right half is the second. "
    "Compare them and describe what changed."
)
PAIR_NARRATIVE_PROMPT = (
    "Compare these two images and describe what changed from the first image to the second."
)


class CompareImagesParams(Params):
    image_a: ImageArg
    image_b: ImageArg
    describe: Annotated[
        bool, Field(description="Also ask a vision-language model to describe what changed (slower).")
    ] = False
    model: ModelArg = None
    detail: DetailArg = None
    clip_model: Annotated[
        str | None, Field(max_length=64, description="CLIP model for clip_similarity; omit for the default.")
    ] = None
    threshold: Annotated[
        int,
        Field(
            ge=0, le=255, description="A pixel counts as changed when a channel differs by more than this."
        ),
    ] = 16


class Region(BaseModel):
    x: int
    y: int
    width: int
    height: int
    area_fraction: float = Field(description="Changed pixels in the box / all pixels.")


class CompareImagesResult(Result):
    ssim: float = Field(description="Structural similarity of the luminance, 1 = identical.")
    pixel_difference: float = Field(description="Fraction of pixels that changed (0 = none, 1 = all).")
    clip_similarity: float = Field(
        description="Cosine similarity of CLIP image embeddings (semantic likeness)."
    )
    changed_regions: list[Region] = Field(
        description="Boxes around changed areas, in image_a's pixels, largest first."
    )
    diff_image: ImageRef = Field(description="Heat map of the per-pixel difference (bright = changed).")
    resized: bool = Field(description="True when image_b was resized to image_a's size before comparing.")
    resize: str | None = Field(
        default=None,
        description="What resizing was done before comparing, in words: both sizes, and whether image_b's "
        "aspect ratio changed (then it was stretched, and the distortion counts as change); null when none.",
    )
    narrative: str | None = Field(description="What changed, in words (describe=True only).")
    image_a: ImageRef
    image_b: ImageRef
    clip_model: str
    model: str | None = Field(description="The vision-language model that wrote the narrative.")
    usage: Usage | None = Field(
        default=None, description="Metered (hosted) narrative models: tokens the narrative used."
    )
    timings: Timings

    def summary(self) -> str:
        text = (
            f"{self.image_a.uri} vs {self.image_b.uri}: SSIM {self.ssim:.3f}, "
            f"{self.pixel_difference:.1%} of pixels changed, CLIP similarity {self.clip_similarity:.3f}, "
            f"{len(self.changed_regions)} changed region(s). Difference heat map: {self.diff_image.uri}."
        )
        if self.resize:
            text += f" {self.resize}"
        if self.narrative:
            text += f"\nWhat changed ({self.model}): {self.narrative}"
        else:
            text += " Pass describe=True for a vision-language model's account of what changed."
        return text

    def preview_ids(self) -> list[str]:
        return [self.diff_image.id]


def resize_note(size_a: tuple[int, int], size_b: tuple[int, int]) -> str | None:
    """What comparing images of these sizes does to image_b, in words (``None`` for equal sizes)."""
    if size_a == size_b:
        return None
    (wa, ha), (wb, hb) = size_a, size_b
    note = f"image_b ({wb}x{hb}) was resized to image_a's {wa}x{ha} before comparing"
    if abs(wa * hb - wb * ha) > 0.01 * wa * hb:  # aspect ratios more than 1% apart
        note += (
            f"; its aspect ratio changed from {wb / hb:.2f} to {wa / ha:.2f} (stretched, not cropped), so "
            "the distortion counts as change too: crop one to the other's shape first to compare content"
        )
    return note + ". changed_regions are in image_a's pixels."


def side_by_side(a: Image.Image, b: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), (255, 255, 255))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    return canvas


async def compare_images(
    params: CompareImagesParams, services: Services, progress: Progress | None = None
) -> CompareImagesResult:
    """Compare two images (e.g. before and after an edit): SSIM, share of changed pixels, CLIP
    similarity, boxes around changed regions and a difference heat map.
    """
    # 1. Check inputs
    clock = Clock()
    hub = services.hub
    clip_name = hub.pick(params.clip_model, "clip", "clip")
    vlm_name = hub.pick(params.model, "vlm", "vlm") if params.describe else None
    if params.detail is not None and vlm_name is None:
        raise InvalidArgument("detail applies to the narrative: pass describe=True with it, or omit detail")
    if vlm_name is not None:
        hub.check(vlm_name, given_arguments(params, "detail"))
    a = await resolve_image(services, params.image_a, "image_a")
    b = await resolve_image(services, params.image_b, "image_b")
    await approve_spending(services, clip_name, "image embeddings of 2 images")
    max_tokens = (hub.spec(vlm_name).defaults.max_tokens or 256) if vlm_name is not None else 0
    if vlm_name is not None:
        await approve_spending(
            services, vlm_name, f"one answer comparing two images (up to {max_tokens} tokens)"
        )

    # 2. Pixel statistics and the heat map
    def analyse() -> tuple[Comparison, bool, ImageRef]:
        img_a, img_b, resized = align_sizes(a.image, b.image)
        comparison = compare(img_a, img_b, threshold=params.threshold)
        record = services.store.put(
            comparison.heatmap,
            kind="diff",
            parents=[a.record.id, b.record.id],
            parameters={"threshold": params.threshold},
        )
        return comparison, resized, ImageRef.of(record)

    # 3. Semantic similarity (both embeddings in one batched pass), alongside step 2
    rgb_a, rgb_b = picture(a.image), picture(b.image)

    async def embed() -> list[Any]:
        async with clock.infer():
            return list(await hub.embedder(clip_name).embed_images([rgb_a, rgb_b]))

    # The inputs are stored meanwhile too (off the critical path), and before the result is returned.
    async with keeping_inputs(services, a, b):
        (comparison, resized, diff_ref), (emb_a, emb_b) = await concurrently(
            [lambda: in_thread(analyse), embed]
        )
    clip_similarity = float(emb_a @ emb_b)

    # 4. Narrative: both images in one request where the model takes several, else side by side
    narrative, usage = None, None
    if vlm_name is not None:
        chat = hub.vision_chat(vlm_name)
        if hub.capabilities(vlm_name).images_per_request >= 2:
            pictures, question = [rgb_a, rgb_b], PAIR_NARRATIVE_PROMPT
        else:
            pictures = [side_by_side(rgb_a, rgb_b.resize(rgb_a.size) if resized else rgb_b)]
            question = NARRATIVE_PROMPT
        async with clock.infer():
            answer = await chat.answer(
                pictures, question, max_tokens=max_tokens, detail=params.detail, progress=progress
            )
        clock.loaded(answer.load_seconds)
        narrative, usage = answer.text, answer.usage

    return CompareImagesResult(
        ssim=round(comparison.ssim, 6),
        pixel_difference=round(comparison.pixel_difference, 6),
        clip_similarity=round(clip_similarity, 6),
        changed_regions=[
            Region(x=r.x, y=r.y, width=r.width, height=r.height, area_fraction=round(r.area_fraction, 6))
            for r in comparison.changed_regions
        ],
        diff_image=diff_ref,
        resized=resized,
        resize=resize_note(a.image.size, b.image.size),
        narrative=narrative,
        image_a=ImageRef.of(a.record),
        image_b=ImageRef.of(b.record),
        clip_model=clip_name,
        model=vlm_name,
        usage=usage,
        timings=clock.timings(),
    )
